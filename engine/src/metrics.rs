//! Counters shared by the workers of one process: events read, watermarks, and named counts such
//! as `late_dropped` and `dead_lettered`. The progress line and the end-of-run summary read them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::latency::{LatencyClock, Pacing};

/// Counters of one process.
#[derive(Debug)]
pub struct Metrics {
    events_read: AtomicU64,
    /// Each local worker's source watermark (ms), `u64::MAX` once its sources are done.
    watermarks: Vec<AtomicU64>,
    counters: Mutex<BTreeMap<String, u64>>,
    /// Named per-worker levels, such as `state:STEP` (entries of state held).
    gauges: Mutex<BTreeMap<String, Gauge>>,
    /// Per stateful step, the checkpoint part with the most entries any worker wrote.
    state_parts: Mutex<BTreeMap<String, PartSize>>,
    /// The events-per-second budget of this process's sources, when paced.
    pacing: Option<Pacing>,
    /// End-to-end latency measurement, when on.
    latency: Option<LatencyClock>,
    /// Set when the job halts before its input ends (a failure, a stop, a cancel): sources stop
    /// reading and sinks publish no more.
    halted: std::sync::atomic::AtomicBool,
    /// Why it halted (the first reason given).
    halt: Mutex<Option<Halt>>,
}

/// Why a job halted before the end of its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Halt {
    /// A source or sink failed; the message names it and the cause.
    Failed(String),
    /// Stopped after a savepoint.
    Stopped,
    /// Cancelled: output not yet committed is abandoned.
    Cancelled,
}

/// A gauge: each local worker's level, and the highest their sum reached.
#[derive(Debug, Default)]
struct Gauge {
    levels: Vec<u64>,
    peak: u64,
}

/// The size of a stateful step's checkpoint part: its bytes, and the state entries it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartSize {
    /// Bytes of the part as written (bincode, before the file's header and checksum).
    pub bytes: u64,
    /// State entries the step held (its `state:STEP` gauge) when it wrote the part.
    pub entries: u64,
}

impl Metrics {
    /// Counters for `workers` local worker threads.
    pub fn new(workers: usize) -> Self {
        Metrics {
            events_read: AtomicU64::new(0),
            watermarks: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            counters: Mutex::new(BTreeMap::new()),
            gauges: Mutex::new(BTreeMap::new()),
            state_parts: Mutex::new(BTreeMap::new()),
            pacing: None,
            latency: None,
            halted: Default::default(),
            halt: Mutex::new(None),
        }
    }
    /// Paces the sources at `rate` events per second in all (when given) and measures latency;
    /// the job has `sources` sources on each worker.
    pub fn with_latency(mut self, rate: Option<f64>, sources: usize) -> Self {
        self.pacing = rate.map(Pacing::new);
        self.latency = Some(LatencyClock::new(self.watermarks.len(), sources));
        self
    }
    /// The sources' shared budget, when paced.
    pub fn pacing(&self) -> Option<&Pacing> {
        self.pacing.as_ref()
    }
    /// The latency clock, when latency is measured.
    pub fn latency(&self) -> Option<&LatencyClock> {
        self.latency.as_ref()
    }
    /// Adds to the count of events read by sources.
    pub fn add_events_read(&self, n: u64) {
        self.events_read.fetch_add(n, Ordering::Relaxed);
    }
    /// Events read by this process's sources so far.
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }
    /// Records a local worker's source watermark.
    pub fn set_watermark(&self, local_worker: usize, watermark: u64) {
        if let Some(w) = self.watermarks.get(local_worker) {
            w.store(watermark, Ordering::Relaxed);
        }
    }
    /// The least source watermark over this process's workers.
    pub fn watermark(&self) -> u64 {
        self.watermarks.iter().map(|w| w.load(Ordering::Relaxed)).min().unwrap_or(u64::MAX)
    }
    /// Adds `n` to the named counter (created at zero).
    pub fn add(&self, name: &str, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match c.get_mut(name) {
            Some(v) => *v += n,
            None => {
                c.insert(name.to_string(), n);
            }
        }
    }
    /// Sets a local worker's level of the named gauge.
    pub fn set_gauge(&self, name: &str, local_worker: usize, value: u64) {
        let workers = self.watermarks.len().max(1);
        let mut g = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = g.entry(name.to_string()).or_insert_with(|| Gauge { levels: vec![0; workers], peak: 0 });
        if let Some(slot) = gauge.levels.get_mut(local_worker) {
            *slot = value;
        }
        gauge.peak = gauge.peak.max(gauge.levels.iter().sum());
    }
    /// Each named gauge summed over this process's workers.
    pub fn gauges(&self) -> BTreeMap<String, u64> {
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, g)| (k.clone(), g.levels.iter().sum())).collect()
    }
    /// The highest each named gauge's sum over this process's workers reached.
    pub fn gauge_peaks(&self) -> BTreeMap<String, u64> {
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, g)| (k.clone(), g.peak)).collect()
    }
    /// Notes a checkpoint part a stateful step wrote; the one with the most entries is kept.
    pub fn record_state_part(&self, step: &str, part: PartSize) {
        let mut parts = self.state_parts.lock().unwrap_or_else(|e| e.into_inner());
        let kept = parts.entry(step.to_string()).or_default();
        if part.entries > kept.entries || kept.bytes == 0 {
            *kept = part;
        }
    }
    /// Per stateful step, the largest checkpoint part (by entries) written in this process.
    pub fn state_parts(&self) -> BTreeMap<String, PartSize> {
        self.state_parts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// A snapshot of the named counters.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Metrics {
    /// Halts the job (the first reason is kept): sources stop, sinks abort what is not committed.
    pub fn halt(&self, why: Halt) {
        let mut h = self.halt.lock().unwrap_or_else(|e| e.into_inner());
        h.get_or_insert(why);
        self.halted.store(true, Ordering::Release);
    }
    /// Fails the job with `message` (the first failure is the run's error).
    pub fn fail(&self, message: String) {
        self.halt(Halt::Failed(message));
    }
    /// Whether the job halted.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }
    /// Why the job halted, if it did.
    pub fn halt_reason(&self) -> Option<Halt> {
        self.halt.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The number of local worker threads these counters were made for.
    pub fn local_workers(&self) -> usize {
        self.watermarks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_peaks_are_of_the_sum_over_workers() {
        let m = Metrics::new(2);
        m.set_gauge("state:w", 0, 5);
        m.set_gauge("state:w", 1, 7);
        m.set_gauge("state:w", 0, 1);
        m.set_gauge("state:w", 1, 9);
        assert_eq!(m.gauges()["state:w"], 10);
        // 5 + 7 = 12 was the highest sum; 9 + 5 never held at once.
        assert_eq!(m.gauge_peaks()["state:w"], 12);
    }

    #[test]
    fn the_state_part_with_the_most_entries_is_kept() {
        let m = Metrics::new(1);
        m.record_state_part("w", PartSize { bytes: 0, entries: 0 });
        m.record_state_part("w", PartSize { bytes: 900, entries: 50 });
        m.record_state_part("w", PartSize { bytes: 100, entries: 4 });
        m.record_state_part("w", PartSize { bytes: 0, entries: 0 });
        assert_eq!(m.state_parts()["w"], PartSize { bytes: 900, entries: 50 });
    }
}
