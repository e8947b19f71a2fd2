//! Pacing and end-to-end latency.
//!
//! **Pacing** (`--rate N`): the sources of a process share one budget of `N` events per second.
//! Event `k` of the process (counted over all its sources, in the order they read) is *due* at
//! `start + k / N`; a source reads only events that are due, and the due instant is the event's
//! *ingestion instant*. Stamping the schedule rather than the moment of reading means a run that
//! falls behind shows it as latency instead of hiding it (no coordinated omission).
//!
//! **Latency**: a result (a window's aggregate, an alert, a joined row) can be written once the
//! watermark has passed its timestamp; the record that moved the watermark there is the one that
//! completed it. Sources report each advance of their worker's watermark with the ingestion instant
//! of the record that caused it; [`LatencyClock`] combines them into the process's watermark (the
//! least over its workers) and remembers when it passed each value. A sink, when it writes the
//! results of timestamp `t`, looks up the instant the watermark first passed `t` and records
//! `now − that instant` for every result line in an HdrHistogram. For a window that is the ingestion
//! of the record whose watermark closed it, as the benchmarks issue defines it; for an alert raised
//! by a record it is at least the time since that record's ingestion would be, minus nothing: the
//! alert could not be written before the watermark passed it. Only one process's workers are
//! combined, so latency is measured in single-process runs. File sinks with checkpoints count a
//! result when it is staged, not when the checkpoint publishes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A process-wide budget of events per second, shared by its sources.
#[derive(Debug)]
pub struct Pacing {
    rate: f64,
    start: Instant,
    issued: AtomicU64,
}

impl Pacing {
    /// A budget of `rate` events per second from now on.
    pub fn new(rate: f64) -> Self {
        Pacing { rate, start: Instant::now(), issued: AtomicU64::new(0) }
    }

    /// Reserves up to `max` events that are due now: returns the index of the first and how many.
    pub fn take(&self, max: usize) -> (u64, usize) {
        let due = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
        let mut issued = self.issued.load(Ordering::Relaxed);
        loop {
            let n = due.saturating_sub(issued).min(max as u64);
            if n == 0 {
                return (issued, 0);
            }
            match self.issued.compare_exchange_weak(issued, issued + n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (issued, n as usize),
                Err(now) => issued = now,
            }
        }
    }

    /// The instant event `index` is due: its ingestion instant.
    pub fn due(&self, index: u64) -> Instant {
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// How long until the next event is due.
    pub fn wait(&self) -> Duration {
        self.due(self.issued.load(Ordering::Relaxed)).saturating_duration_since(Instant::now())
    }
}

/// When the process's watermark passed each value, and the latencies sinks measured.
#[derive(Debug)]
pub struct LatencyClock {
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    /// The watermark of each source on each local worker (`worker * sources + source`).
    slots: Vec<u64>,
    sources: usize,
    /// The least of them.
    watermark: u64,
    /// `(watermark, instant)`: the watermark rose to this value at this instant; both increase.
    history: VecDeque<(u64, Instant)>,
    /// Microseconds from completing record's ingestion to the result's write, per result line.
    histogram: Histogram<u64>,
}

/// How long the clock remembers watermark advances: results later than this after the watermark
/// passed them are recorded as this late (they are off the chart of any sane job anyway).
const HORIZON: Duration = Duration::from_secs(120);

/// The largest latency the histogram tells apart, in microseconds: an hour.
const MAX_MICROS: u64 = 3_600_000_000;

impl LatencyClock {
    /// A clock for `workers` local workers with `sources` sources each.
    pub fn new(workers: usize, sources: usize) -> Self {
        // 1 µs to an hour, 3 significant digits; slower results are counted as an hour.
        let histogram = Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds");
        let slots = vec![0; (workers * sources).max(1)];
        LatencyClock { state: Mutex::new(ClockState { slots, sources, watermark: 0, history: VecDeque::new(), histogram }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Source number `source` (in the order the job builds them) on local worker `worker` moved
    /// its watermark to `watermark`; the record that did it was ingested at `instant`.
    pub fn advance(&self, worker: usize, source: usize, watermark: u64, instant: Instant) {
        let mut s = self.lock();
        let index = worker * s.sources + source;
        let Some(slot) = s.slots.get_mut(index) else { return };
        if watermark <= *slot {
            return;
        }
        *slot = watermark;
        let least = s.slots.iter().copied().min().unwrap_or(u64::MAX);
        if least > s.watermark {
            s.watermark = least;
            // Instants normally increase; a worker whose batch was stamped earlier cannot make the
            // process's watermark pass a value before an earlier advance did.
            let instant = s.history.back().map_or(instant, |(_, last)| instant.max(*last));
            s.history.push_back((least, instant));
            while s.history.front().is_some_and(|(_, at)| instant.duration_since(*at) > HORIZON) {
                s.history.pop_front();
            }
        }
    }

    /// Records that `lines` results of timestamp `time` were written now.
    pub fn record(&self, time: u64, lines: usize) {
        if lines == 0 {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        let i = s.history.partition_point(|(wm, _)| *wm <= time);
        let since = match s.history.get(i) {
            Some((_, at)) => now.saturating_duration_since(*at),
            // Written before any recorded advance passed it (the end of input drops the
            // capabilities without an advance): measure from the latest advance.
            None => s.history.back().map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at)),
        };
        let micros = (since.as_micros().min(MAX_MICROS as u128) as u64).max(1);
        s.histogram.saturating_record_n(micros, lines as u64);
    }

    /// The latencies recorded so far, in microseconds.
    pub fn histogram(&self) -> Histogram<u64> {
        self.lock().histogram.clone()
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Results measured.
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    /// The percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_hands_out_only_due_events() {
        let p = Pacing::new(1000.0);
        std::thread::sleep(Duration::from_millis(20));
        let (first, n) = p.take(10_000);
        let elapsed_ms = p.start.elapsed().as_millis() as usize;
        assert_eq!(first, 0);
        assert!(n >= 20 && n <= elapsed_ms + 1, "one event per elapsed ms is due at 1000/s: {n} after {elapsed_ms} ms");
        let (next, m) = p.take(10_000);
        assert_eq!(next, n as u64);
        assert!(m <= 2, "nothing more is due right away, got {m}");
        assert_eq!(p.due(500), p.due(0) + Duration::from_millis(500));
    }

    #[test]
    fn latency_is_measured_from_the_advance_that_passed_the_time() {
        let c = LatencyClock::new(2, 1);
        let t0 = Instant::now() - Duration::from_millis(50);
        c.advance(0, 0, 100, t0);
        // Worker 1 still holds the process's watermark at 0.
        c.advance(1, 0, 200, t0 + Duration::from_millis(10));
        // Now the least is 100, at 10 ms.
        c.advance(0, 0, 300, t0 + Duration::from_millis(20));
        // Now 200, at 20 ms.
        c.record(99, 1); // passed by the advance to 100 (at 10 ms): about 40 ms ago
        c.record(150, 1); // passed by the advance to 200 (at 20 ms): about 30 ms ago
        let h = c.histogram();
        assert_eq!(h.len(), 2);
        let (lo, hi) = (h.min(), h.max());
        assert!(lo >= 30_000, "{lo}");
        assert!((9_800..10_200).contains(&(hi - lo)), "the two results were completed 10 ms apart: {lo} and {hi}");
    }
}
