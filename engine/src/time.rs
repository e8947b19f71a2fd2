//! Event time, watermarks and durations.
//!
//! Event time is milliseconds since the Unix epoch (`ts_ms`, a `u64`), as in Flink. A watermark `W`
//! says "no more records with event time below `W` are expected"; it is the maximum event time seen
//! minus the allowed out-of-orderness ([`OutOfOrder`]). Internally the watermark *is* timely's
//! frontier: sources hold a capability at their watermark, so every operator sees the minimum
//! watermark over all sources and workers as its input frontier.

/// A span of event or processing time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    ms: u64,
}

impl Duration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration { ms }
    }
    /// The duration in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.ms
    }
    /// As a `std::time::Duration`, for processing-time uses.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ms)
    }
}

/// `n` milliseconds.
pub const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}
/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_millis(n * 1_000)
}
/// `n` minutes.
pub const fn minutes(n: u64) -> Duration {
    Duration::from_millis(n * 60_000)
}

/// The watermark strategy of a source: bounded out-of-orderness, as Flink's
/// `WatermarkStrategy.forBoundedOutOfOrderness`, with an optional idleness timeout
/// (`withIdleness`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfOrder {
    /// How far behind the maximum event time seen a record may be and still count as on time.
    pub bound_ms: u64,
    /// A source partition that yields nothing for this long (processing time) stops holding back
    /// the watermark until it yields again. `None`: partitions never count as idle.
    pub idle_timeout: Option<std::time::Duration>,
    /// How far ahead of the later of its partition's watermark and the wall clock a record's
    /// event time may be: a record further ahead goes to dead letters and moves no watermark, so
    /// one bad producer cannot make every later record late. A replay of past data never meets
    /// it; data ahead of the wall clock (synthetic, in the future) needs a larger bound or none.
    /// `None`: no bound. Default [`DEFAULT_MAX_FUTURE_MS`].
    pub max_future_ms: Option<u64>,
}

/// The default far-future bound of [`OutOfOrder`]: one day.
pub const DEFAULT_MAX_FUTURE_MS: u64 = 86_400_000;

impl OutOfOrder {
    /// Records may arrive up to `ms` milliseconds behind the maximum event time seen.
    pub const fn millis(ms: u64) -> Self {
        OutOfOrder { bound_ms: ms, idle_timeout: None, max_future_ms: Some(DEFAULT_MAX_FUTURE_MS) }
    }
    /// Records arrive in event-time order (a bound of zero).
    pub const fn ordered() -> Self {
        OutOfOrder::millis(0)
    }
    /// Marks a partition idle after `timeout` without data, so it does not stall the watermark.
    pub fn idle_after(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout.to_std());
        self
    }
    /// Refuses records more than `bound` ahead of their partition's watermark (see
    /// [`OutOfOrder::max_future_ms`]; a source URI's `max_future=` option overrides it).
    pub fn max_future(mut self, bound: Duration) -> Self {
        self.max_future_ms = Some(bound.as_millis().max(1));
        self
    }
    /// Accepts records however far ahead of the watermark they are.
    pub fn no_max_future(mut self) -> Self {
        self.max_future_ms = None;
        self
    }
    /// The watermark that follows from a maximum event time seen.
    pub fn watermark(&self, max_event_time_ms: u64) -> u64 {
        max_event_time_ms.saturating_sub(self.bound_ms)
    }
}

/// The watermark after the end of a bounded input: every window fires.
pub const END_OF_TIME: u64 = u64::MAX;

/// Whether `watermark` has passed event time `t_ms`: it is above it, or it is [`END_OF_TIME`]. A
/// timer, record or expiry at `u64::MAX` (a saturated `ts + delay`) is then due when the input
/// ends; `t_ms < watermark` alone would never hold it due, and its step would wait for it forever.
pub fn passed(t_ms: u64, watermark: u64) -> bool {
    t_ms < watermark || watermark == END_OF_TIME
}

/// The largest event time a source accepts: `i64::MAX` ms, Flink's largest timestamp (a Java
/// `long`). A record above it goes to dead letters (see [`refused_event_time`]): it leaves `2^63`
/// ms of headroom, so that a window end, an allowed lateness, a timer or a watermark computed from
/// an accepted event time and a duration below `2^63` ms never overflows `u64`, and the watermark
/// never reaches [`END_OF_TIME`] before the input ends.
pub const MAX_EVENT_TIME_MS: u64 = i64::MAX as u64;

/// Why a source refuses event time `ts_ms`, or `None` when it accepts it (at most
/// [`MAX_EVENT_TIME_MS`]).
pub fn refused_event_time(ts_ms: u64) -> Option<String> {
    (ts_ms > MAX_EVENT_TIME_MS).then(|| {
        format!(
            "event time {ts_ms} ms is above the largest accepted, {MAX_EVENT_TIME_MS} (i64::MAX, Flink's largest \
             timestamp): window ends, timers and watermarks past it would overflow"
        )
    })
}

/// Formats an event time (ms since the epoch) as an RFC 3339 UTC timestamp, for progress output.
pub fn format_ts_ms(ts_ms: u64) -> String {
    if ts_ms == END_OF_TIME {
        return "end".to_string();
    }
    let secs = ts_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mth = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mth <= 2 { 1 } else { 0 };
    format!("{y:04}-{mth:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(format_ts_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts_ms(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(format_ts_ms(951_782_400_000 + 86_399_999), "2000-02-29T23:59:59Z");
    }

    #[test]
    fn event_times_above_i64_max_are_refused() {
        assert_eq!(refused_event_time(0), None);
        assert_eq!(refused_event_time(1_767_225_600_000), None);
        assert_eq!(refused_event_time(i64::MAX as u64), None);
        assert!(refused_event_time(i64::MAX as u64 + 1).is_some_and(|r| r.contains("9223372036854775808")));
        assert!(refused_event_time(18_446_744_073_709_550_000).is_some());
        assert!(refused_event_time(u64::MAX).is_some());
        // The headroom: an accepted event time plus any duration below 2^63 ms stays below the end of time.
        assert!(MAX_EVENT_TIME_MS.checked_add(i64::MAX as u64).is_some_and(|t| t < END_OF_TIME));
    }

    #[test]
    fn the_end_of_time_passes_every_time() {
        assert!(passed(5, 6));
        assert!(!passed(6, 6));
        assert!(!passed(u64::MAX, u64::MAX - 1));
        assert!(passed(u64::MAX, END_OF_TIME));
    }

    #[test]
    fn watermark_saturates() {
        assert_eq!(OutOfOrder::millis(2_000).watermark(1_500), 0);
        assert_eq!(OutOfOrder::millis(2_000).watermark(10_000), 8_000);
    }
}

/// The timely timestamp of every paystream message: a checkpoint epoch and a watermark.
///
/// Ordered as a product (`a <= b` iff both coordinates are `<=`), never lexicographically, for
/// progress: a window fires when no frontier element has a watermark below its end, and epoch `k`
/// is complete when every frontier element has an epoch above `k`. The derived `Ord` is
/// lexicographic and serves only sorting and grouping. Without checkpoints the epoch stays 0 and
/// the watermark alone orders time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Time {
    /// Checkpoint epoch: sources start epoch `k + 1` when they take their part of checkpoint `k`.
    pub epoch: u64,
    /// Watermark, ms since the Unix epoch.
    pub wm: u64,
}

impl Time {
    /// The time `(epoch, wm)`.
    pub const fn new(epoch: u64, wm: u64) -> Self {
        Time { epoch, wm }
    }
}

impl timely::order::PartialOrder for Time {
    fn less_equal(&self, other: &Self) -> bool {
        self.epoch <= other.epoch && self.wm <= other.wm
    }
}

/// Paths in paystream dataflows never advance time (there are no loops), so the only summary is
/// the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeSummary;

impl timely::order::PartialOrder for TimeSummary {
    fn less_equal(&self, _other: &Self) -> bool {
        true
    }
}

impl timely::progress::PathSummary<Time> for TimeSummary {
    fn results_in(&self, src: &Time) -> Option<Time> {
        Some(*src)
    }
    fn followed_by(&self, _other: &Self) -> Option<Self> {
        Some(TimeSummary)
    }
}

impl timely::progress::Timestamp for Time {
    type Summary = TimeSummary;
    fn minimum() -> Self {
        Time::new(0, 0)
    }
}

impl timely::progress::timestamp::Refines<()> for Time {
    fn to_inner(_: ()) -> Self {
        Time::minimum_time()
    }
    fn to_outer(self) {}
    fn summarize(_: TimeSummary) {}
}

impl Time {
    fn minimum_time() -> Self {
        Time::new(0, 0)
    }
}

/// The least watermark and the least epoch over a frontier (`END_OF_TIME` for an empty one).
pub fn frontier_bounds<'a>(frontier: impl IntoIterator<Item = &'a Time>) -> (u64, u64) {
    frontier.into_iter().fold((END_OF_TIME, END_OF_TIME), |(e, w), t| (e.min(t.epoch), w.min(t.wm)))
}
