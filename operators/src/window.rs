//! Keyed event-time windows with Flink's semantics.
//!
//! * A tumbling window of size `s` covers `[start, start + s)` with `start` a multiple of `s`
//!   counted from the Unix epoch (Flink's alignment, no offset).
//! * A window fires once, when the watermark reaches its end (`W >= end`), and its state is freed.
//!   Its result carries the event time `end - 1` (Flink's `maxTimestamp`).
//! * A record is late when its window's end is at or below the watermark it arrives at (see
//!   `paystream_engine::source` for which watermark that is). Late records are counted
//!   (`late_dropped:STEP`) and dropped, or sent to a sink with [`WindowedStream::late_records_to`]
//!   (counted as `late_side_output:STEP`).
//! * At the end of a bounded input the watermark goes to +infinity and every open window fires.

use std::collections::{BTreeMap, HashMap};

use paystream_engine::{CsvRecord, Data, Duration, Key, KeyedLogic, KeyedStream, Stream};
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;

/// Tumbling (fixed, non-overlapping) windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tumbling {
    size_ms: u64,
}

impl Tumbling {
    /// Windows of `size`, aligned to the epoch.
    ///
    /// ```
    /// use paystream_operators::Tumbling;
    /// use paystream_engine::secs;
    /// let w = Tumbling::of(secs(10));
    /// assert_eq!(w.window_of(12_345), (10_000, 20_000));
    /// assert_eq!(w.window_of(20_000), (20_000, 30_000));
    /// ```
    pub fn of(size: Duration) -> Self {
        assert!(size.as_millis() > 0, "a window size must be positive");
        Tumbling { size_ms: size.as_millis() }
    }

    /// The window size in milliseconds.
    pub fn size_ms(&self) -> u64 {
        self.size_ms
    }

    /// The window `[start, end)` that holds event time `ts_ms`.
    pub fn window_of(&self, ts_ms: u64) -> (u64, u64) {
        let start = ts_ms - ts_ms % self.size_ms;
        (start, start.saturating_add(self.size_ms))
    }
}

/// One window's result for one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowResult<K, O> {
    /// Inclusive start of the window, ms since the epoch.
    pub start_ms: u64,
    /// Exclusive end of the window.
    pub end_ms: u64,
    /// The key.
    pub key: K,
    /// The aggregate's result.
    pub value: O,
}

/// Windows over a keyed stream: `key_by(..).window(name, Tumbling::of(secs(10)))`.
pub trait WindowExt<'scope, K, V> {
    /// Groups each key's records into windows; finish with [`WindowedStream::aggregate`].
    fn window(self, name: &str, windows: Tumbling) -> WindowedStream<'scope, K, V>;
}

impl<'scope, K: Key, V: Data> WindowExt<'scope, K, V> for KeyedStream<'scope, K, V> {
    fn window(self, name: &str, windows: Tumbling) -> WindowedStream<'scope, K, V> {
        WindowedStream { input: self, name: name.to_string(), windows, late_sink: None }
    }
}

/// A keyed stream cut into windows, waiting for its aggregate.
pub struct WindowedStream<'scope, K, V> {
    input: KeyedStream<'scope, K, V>,
    name: String,
    windows: Tumbling,
    late_sink: Option<LateSink<'scope, V>>,
}

/// Writes late records to a sink; boxed so that only jobs that ask for it need `V: CsvRecord`.
type LateSink<'scope, V> = Box<dyn FnOnce(Stream<'scope, V>) -> paystream_engine::Result<()>>;

impl<'scope, K: Key, V: Data> WindowedStream<'scope, K, V> {
    /// Sends late records to the declared sink `sink` instead of dropping them (they are counted
    /// either way).
    pub fn late_records_to(mut self, sink: &str) -> Self
    where
        V: CsvRecord,
    {
        let sink = sink.to_string();
        self.late_sink = Some(Box::new(move |late: Stream<'scope, V>| late.sink(&sink)));
        self
    }

    /// Folds each window of each key with `aggregate`, emitting one [`WindowResult`] per key and
    /// window when the watermark passes the window's end.
    ///
    /// ```
    /// use paystream_engine::{secs, testing::run_collect};
    /// use paystream_operators::{Count, Tumbling, WindowExt, WindowResult};
    /// // (event time, card) pairs; 10 s windows per card.
    /// let input = vec![(1_000, 7u64), (4_000, 7), (9_999, 8), (10_000, 7)];
    /// let out = run_collect(input, |s| {
    ///     s.key_by("by-card", |card| *card).window("count", Tumbling::of(secs(10))).aggregate(Count)
    /// });
    /// let rows: Vec<_> = out.into_iter().map(|(_, w)| (w.start_ms, w.key, w.value)).collect();
    /// assert_eq!(rows, vec![(0, 7, 2), (0, 8, 1), (10_000, 7, 1)]);
    /// ```
    pub fn aggregate<A: Aggregate<V>>(self, aggregate: A) -> Stream<'scope, WindowResult<K, A::Out>>
    where
        V: Data,
        A::Out: Data,
    {
        let windows = self.windows;
        let name = self.name;
        let (on_time, late) =
            self.input.divert(&format!("{name}:lateness"), move |message_time, ts, _| windows.window_of(ts).1 <= message_time);
        match self.late_sink {
            Some(write_late) => {
                let late = late.count_as(&format!("{name}:late"), &format!("late_side_output:{name}"));
                if let Err(e) = write_late(late) {
                    on_time.report_error(format!("window {name}: late records: {e}"));
                }
            }
            None => {
                let _ = late.count_as(&format!("{name}:late"), &format!("late_dropped:{name}"));
            }
        }
        on_time.process(&name, TumblingLogic { windows, aggregate, open: BTreeMap::new() })
    }
}

/// Open tumbling windows of one worker, by end time, then key.
struct TumblingLogic<K, V, A: Aggregate<V>> {
    windows: Tumbling,
    aggregate: A,
    open: BTreeMap<u64, HashMap<K, A::Acc>>,
}

impl<K: Key, V: Data, A: Aggregate<V>> KeyedLogic<K, V> for TumblingLogic<K, V, A> {
    type Out = WindowResult<K, A::Out>;

    fn on_record(&mut self, _message_time: u64, ts_ms: u64, key: K, value: V) {
        let (_, end) = self.windows.window_of(ts_ms);
        let acc = self.open.entry(end).or_default().entry(key).or_insert_with(|| self.aggregate.init());
        self.aggregate.add(acc, &value);
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        while let Some(entry) = self.open.first_entry() {
            let end = *entry.key();
            if end > watermark {
                break;
            }
            let start = end.saturating_sub(self.windows.size_ms);
            for (key, acc) in entry.remove() {
                out.push((end - 1, WindowResult { start_ms: start, end_ms: end, key, value: self.aggregate.result(&acc) }));
            }
        }
    }

    fn next_emit_time(&self) -> Option<u64> {
        self.open.keys().next().map(|end| end - 1)
    }
}
