//! Keyed event-time windows with Flink's semantics: tumbling, sliding and session windows,
//! allowed lateness, late-record side outputs and early results.
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
//! * **Early results** (tumbling and sliding windows): with [`WindowedStream::emit_every_records`]
//!   `K`, a key's window emits its partial result each time it has counted `K` more records (as
//!   Flink's `CountTrigger`); with [`WindowedStream::emit_every`] `N`, every `N` ms of wall-clock
//!   time (at multiples of `N` from the epoch, as Flink's `ContinuousProcessingTimeTrigger`),
//!   every key's window that counted records since its last emission emits its partial result.
//!   Set together, each counts from the key and window's last row, whichever fired it. Both
//!   fire without purging, and the window still fires when the watermark reaches its end,
//!   always, even when nothing changed since its last early result: a consumer that keeps the
//!   latest row per window and key ends with exactly the on-time result (then late updates, if
//!   any). `is_update` is `false` on the first row of a key and window, early or on time, and
//!   `true` on every later one, so the on-time result is an update exactly when early rows came
//!   before it. A record counts once the watermark passes its event time (records behind their
//!   partition's watermark: that watermark), in event-time order, so an early result holds
//!   exactly the key's records in the window up to some event time. Early results carry the
//!   event time they were emitted at, not `end - 1`: the event time of the record that completed
//!   the count, or the watermark at a processing-time firing. (Sinks publish a timestamp's rows
//!   once the watermark passes it; at `end - 1`, an early row would wait for the window to end.)
//!   Count-triggered results depend on the input alone, like on-time ones; processing-time ones
//!   on when the wall clock ticks, so a restored run may emit other early rows than an
//!   uninterrupted one (never another on-time result). Cost: every record waits, as a late one
//!   does, until the watermark passes its event time, instead of being added where it lies.
//!   Session windows refuse early results: a session's bounds change as it grows, so an early
//!   row would not be superseded by the session's on-time row.
//!
//! Sliding windows keep one accumulator per key and *pane* (`gcd(size, slide)` long) and merge the
//! panes of a window when it fires, so a record is added once, not once per window that covers it.

mod aligned;
mod early;
mod session;

use paystream_engine::{CsvRecord, Data, Duration, Key, KeyedStream, Stream};
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use early::EarlyFiring;

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
    /// `true` when this result supersedes one emitted earlier for the same key and window: an
    /// early result came before it (see [`WindowedStream::emit_every_records`]), late records
    /// (within the allowed lateness) changed it, or, for sessions, late records extended a session
    /// whose result was already out. Consumers upsert by key and window start.
    pub is_update: bool,
}

/// Windows over a keyed stream: `key_by(..).window(name, Tumbling::of(secs(10)))`.
pub trait WindowExt<'scope, K, V> {
    /// Groups each key's records into windows; finish with [`WindowedStream::aggregate`].
    fn window(self, name: &str, windows: impl Into<Windows>) -> WindowedStream<'scope, K, V>;
}

impl<'scope, K: Key, V: Data> WindowExt<'scope, K, V> for KeyedStream<'scope, K, V> {
    fn window(self, name: &str, windows: impl Into<Windows>) -> WindowedStream<'scope, K, V> {
        WindowedStream {
            input: self,
            name: name.to_string(),
            windows: windows.into(),
            lateness_ms: 0,
            late_sink: None,
            early: EarlyFiring::default(),
        }
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
    early: EarlyFiring,
}

/// Why `windows` cannot emit early results as `early` asks, if they cannot.
fn refuse_early_firing(name: &str, windows: Windows, early: EarlyFiring) -> Option<String> {
    match windows {
        Windows::Session { .. } if early.is_on() => Some(format!(
            "window {name}: {} is not supported for session windows (a session's bounds change as it grows, so an \
             early row would never be superseded by its on-time row); use tumbling or sliding windows, or drop the option",
            early.options()
        )),
        _ => None,
    }
}

impl<'scope, K: Key, V: Data> WindowedStream<'scope, K, V> {
    /// Keeps each window's state for `lateness` after it fires; late records within it fire the
    /// window again with an updated result (`is_update`). Default: zero, as in Flink.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness_ms = lateness.as_millis();
        self
    }

    /// Emits each key's partial result every `interval` of processing time (wall clock) before the
    /// window ends, when records counted since its last emission (Flink's
    /// `ContinuousProcessingTimeTrigger`); the on-time result still comes, marked `is_update`.
    /// Which early rows a run emits depends on timing. Zero turns it off (the default). Tumbling
    /// and sliding windows only; see the module doc for the rules.
    pub fn emit_every(mut self, interval: Duration) -> Self {
        self.early.every_ms = Some(interval.as_millis()).filter(|ms| *ms > 0);
        self
    }

    /// Emits a key's partial result each time its window has counted `records` more records
    /// (Flink's `CountTrigger`, without purging); the on-time result still comes, marked
    /// `is_update` after an early one. Records count in event-time order once the watermark
    /// passes them, so the early rows depend on the input alone. Zero turns it off (the default).
    /// Tumbling and sliding windows only; see the module doc for the rules.
    ///
    /// ```
    /// use paystream_engine::{secs, testing::run_collect};
    /// use paystream_operators::{Count, Tumbling, WindowExt};
    /// // (event time, card) pairs; 10 s windows per card, a partial count every 2 payments.
    /// let input = vec![(1_000, 7u64), (2_000, 7), (3_000, 7), (4_000, 7), (5_000, 7), (12_000, 7)];
    /// let out = run_collect(input, |s| {
    ///     s.key_by("by-card", |card| *card).window("count", Tumbling::of(secs(10))).emit_every_records(2).aggregate(Count)
    /// });
    /// let rows: Vec<_> = out.into_iter().map(|(ts, w)| (ts, w.start_ms, w.value, w.is_update)).collect();
    /// // Early rows at the event time of the 2nd and 4th payment, then the on-time results.
    /// assert_eq!(rows, vec![(2_000, 0, 2, false), (4_000, 0, 4, true), (9_999, 0, 5, true), (19_999, 10_000, 1, false)]);
    /// ```
    pub fn emit_every_records(mut self, records: u64) -> Self {
        self.early.every_records = Some(records).filter(|k| *k > 0);
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
        let (windows, lateness, name, early) = (self.windows, self.lateness_ms, self.name, self.early);
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
        if let Some(refusal) = refuse_early_firing(&name, windows, early) {
            kept.report_error(refusal);
        }
        match windows {
            Windows::Aligned { size_ms, slide_ms } => kept.keyed_logic(
                &name,
                aligned::AlignedLogic::new(aligned::Shape { size: size_ms, slide: slide_ms }, lateness, aggregate).with_early_firing(early),
            ),
            Windows::Session { gap_ms } => kept.keyed_logic(&name, session::SessionLogic::new(gap_ms, lateness, aggregate)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_windows_refuse_early_firing_by_the_option_named() {
        let session = Windows::from(Session::with_gap(paystream_engine::secs(5)));
        let counted = EarlyFiring { every_ms: None, every_records: Some(3) };
        let refusal = refuse_early_firing("visits", session, counted).expect("refused");
        assert!(refusal.starts_with("window visits: emit_every_records(3) is not supported for session windows"), "{refusal}");
        let timed = EarlyFiring { every_ms: Some(500), every_records: None };
        assert!(refuse_early_firing("visits", session, timed).expect("refused").contains("emit_every(500 ms)"));
        assert_eq!(refuse_early_firing("visits", session, EarlyFiring::default()), None);
        let tumbling = Windows::from(Tumbling::of(paystream_engine::secs(5)));
        assert_eq!(refuse_early_firing("visits", tumbling, counted), None);
    }
}
