//! Keyed event-time windows with Flink's semantics: tumbling, sliding and session windows,
//! allowed lateness and late-record side outputs.
//!
//! * **Tumbling** windows of size `s` are `[start, start + s)` with `start` a multiple of `s` from the
//!   Unix epoch. **Sliding** windows of size `s` every `d` are `[start, start + s)` with `start` a
//!   multiple of `d`; a record belongs to every window that covers it (`s` need not be a multiple of
//!   `d`). **Session** windows of gap `g` give each record the window `[ts, ts + g)` and merge a key's
//!   overlapping windows.
//! * A window fires once, when the watermark reaches its end (`W >= end`); its result carries the
//!   event time `end - 1` (Flink's `maxTimestamp`). Windows without records produce nothing.
//! * A record is *late* for a window when the window's end is at or below the watermark the record
//!   arrives at: the watermark its own partition had reached just before it (see
//!   `paystream_engine::source`). With [`WindowedStream::allowed_lateness`] `L`, a late record whose
//!   window ends after `W - L` still counts: the window fires again with an updated result marked
//!   [`WindowResult::is_update`], once per key and watermark step that brought late records.
//!   Records later than that are dropped and counted (`late_dropped:STEP`), or sent to a sink with
//!   [`WindowedStream::late_records_to`] (counted as `late_side_output:STEP`). A sliding-window record
//!   is dropped only when it is too late for every window that covers it; a session record when its
//!   own window `[ts, ts + g)` ends too late (Flink would first merge it into an open session, but
//!   whether that session is still open depends on timing; this rule does not).
//! * Window state is freed when the watermark passes `end + L`. At the end of a bounded input the
//!   watermark goes to +infinity and every open window fires.
//!
//! Sliding windows keep one accumulator per key and *pane* (`gcd(size, slide)` long) and merge the
//! panes of a window when it fires, so a record is added once, not once per window that covers it.

mod aligned;
mod session;

use paystream_engine::{CsvRecord, Data, Duration, Key, KeyedStream, Stream};
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

/// Sliding (hopping) windows: `Sliding::of(secs(60)).every(secs(10))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sliding {
    size_ms: u64,
    slide_ms: u64,
}

impl Sliding {
    /// Windows of `size`; give the slide with [`Sliding::every`] (by default it equals the size,
    /// which makes them tumbling).
    pub fn of(size: Duration) -> Self {
        assert!(size.as_millis() > 0, "a window size must be positive");
        Sliding { size_ms: size.as_millis(), slide_ms: size.as_millis() }
    }

    /// A new window starts every `slide`.
    ///
    /// ```
    /// use paystream_operators::Sliding;
    /// use paystream_engine::secs;
    /// let w = Sliding::of(secs(30)).every(secs(10));
    /// assert_eq!(w.windows_of(25_000), vec![(0, 30_000), (10_000, 40_000), (20_000, 50_000)]);
    /// ```
    pub fn every(mut self, slide: Duration) -> Self {
        assert!(slide.as_millis() > 0, "a window slide must be positive");
        self.slide_ms = slide.as_millis();
        self
    }

    /// Every window `[start, end)` that covers `ts_ms`, earliest first.
    pub fn windows_of(&self, ts_ms: u64) -> Vec<(u64, u64)> {
        aligned::Shape { size: self.size_ms, slide: self.slide_ms }.windows_of(ts_ms).collect()
    }
}

/// Session windows: a key's records closer than the gap form one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    gap_ms: u64,
}

impl Session {
    /// Sessions that close after `gap` without a record for the key.
    pub fn with_gap(gap: Duration) -> Self {
        assert!(gap.as_millis() > 0, "a session gap must be positive");
        Session { gap_ms: gap.as_millis() }
    }
}

/// Any window kind, as taken by [`WindowExt::window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Fixed windows of `size_ms` every `slide_ms` (tumbling when they are equal).
    Aligned {
        /// Window length.
        size_ms: u64,
        /// Distance between window starts.
        slide_ms: u64,
    },
    /// Session windows with a gap.
    Session {
        /// Inactivity that closes a session.
        gap_ms: u64,
    },
}

impl From<Tumbling> for Windows {
    fn from(w: Tumbling) -> Self {
        Windows::Aligned { size_ms: w.size_ms, slide_ms: w.size_ms }
    }
}

impl From<Sliding> for Windows {
    fn from(w: Sliding) -> Self {
        Windows::Aligned { size_ms: w.size_ms, slide_ms: w.slide_ms }
    }
}

impl From<Session> for Windows {
    fn from(w: Session) -> Self {
        Windows::Session { gap_ms: w.gap_ms }
    }
}

impl Windows {
    /// The end of the last window a record at `ts_ms` can count in (before allowed lateness).
    fn last_end(&self, ts_ms: u64) -> u64 {
        match *self {
            Windows::Aligned { size_ms, slide_ms } => (ts_ms - ts_ms % slide_ms).saturating_add(size_ms),
            Windows::Session { gap_ms } => ts_ms.saturating_add(gap_ms),
        }
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
    /// `true` when this result supersedes one emitted earlier for the same key and window: late
    /// records (within the allowed lateness) changed it, or, for sessions, late records extended a
    /// session whose result was already out. Consumers upsert by key and window start.
    pub is_update: bool,
}

/// Windows over a keyed stream: `key_by(..).window(name, Tumbling::of(secs(10)))`.
pub trait WindowExt<'scope, K, V> {
    /// Groups each key's records into windows; finish with [`WindowedStream::aggregate`].
    fn window(self, name: &str, windows: impl Into<Windows>) -> WindowedStream<'scope, K, V>;
}

impl<'scope, K: Key, V: Data> WindowExt<'scope, K, V> for KeyedStream<'scope, K, V> {
    fn window(self, name: &str, windows: impl Into<Windows>) -> WindowedStream<'scope, K, V> {
        WindowedStream { input: self, name: name.to_string(), windows: windows.into(), lateness_ms: 0, late_sink: None }
    }
}

/// Writes late records to a sink; boxed so that only jobs that ask for it need `V: CsvRecord`.
type LateSink<'scope, V> = Box<dyn FnOnce(Stream<'scope, V>) -> paystream_engine::Result<()>>;

/// A keyed stream cut into windows, waiting for its aggregate.
pub struct WindowedStream<'scope, K, V> {
    input: KeyedStream<'scope, K, V>,
    name: String,
    windows: Windows,
    lateness_ms: u64,
    late_sink: Option<LateSink<'scope, V>>,
}

impl<'scope, K: Key, V: Data> WindowedStream<'scope, K, V> {
    /// Keeps each window's state for `lateness` after it fires; late records within it fire the
    /// window again with an updated result (`is_update`). Default: zero, as in Flink.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness_ms = lateness.as_millis();
        self
    }

    /// Sends records too late for any window to the declared sink `sink` instead of dropping them
    /// (they are counted either way).
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
        K: Key,
    {
        let (windows, lateness, name) = (self.windows, self.lateness_ms, self.name);
        let (kept, late) = self.input.divert(&format!("{name}:lateness"), move |message_time, ts, _| {
            // Only a record behind its partition's watermark travels above its event time; an on-time
            // one travels at the worker's watermark, which depends on timing, and is never late.
            ts < message_time && windows.last_end(ts).saturating_add(lateness) <= message_time
        });
        match self.late_sink {
            Some(write_late) => {
                let late = late.count_as(&format!("{name}:late"), &format!("late_side_output:{name}"));
                if let Err(e) = write_late(late) {
                    kept.report_error(format!("window {name}: late records: {e}"));
                }
            }
            None => {
                let _ = late.count_as(&format!("{name}:late"), &format!("late_dropped:{name}"));
            }
        }
        match windows {
            Windows::Aligned { size_ms, slide_ms } => {
                kept.keyed_logic(&name, aligned::AlignedLogic::new(aligned::Shape { size: size_ms, slide: slide_ms }, lateness, aggregate))
            }
            Windows::Session { gap_ms } => kept.keyed_logic(&name, session::SessionLogic::new(gap_ms, lateness, aggregate)),
        }
    }
}
