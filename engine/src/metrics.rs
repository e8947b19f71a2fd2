//! Counters shared by the workers of one process: events read, watermarks, and named counts such
//! as `late_dropped` and `dead_lettered`. The progress line, the end-of-run summary and the
//! metrics endpoint (`crate::observe`) read them.
//!
//! Counts bumped on a worker's hot path (records in and out of each step, late records) are
//! [`WorkerCounter`]s, registered once per step and worker when the step is built; counts of rare
//! events go through [`Metrics::add`], which takes a lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::latency::{LatencyClock, Pacing};

/// Counters of one process.
#[derive(Debug)]
pub struct Metrics {
    events_read: AtomicU64,
    sink_activity: AtomicU64,
    sinks_busy: Arc<AtomicU64>,
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
    /// Per-worker counters registered by steps as they are built.
    registered: Mutex<Registered>,
    /// Per source split, the position and backlog last reported.
    splits: Mutex<BTreeMap<(String, String), SplitLevel>>,
    /// A [`RunState`].
    run_state: std::sync::atomic::AtomicU8,
    /// Per source, each local worker's watermark over its splits that are neither idle nor done
    /// (`None` while it has none): see [`Metrics::follow_active`].
    active_watermarks: Mutex<BTreeMap<String, Vec<Option<u64>>>>,
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

/// A sink writing: see [`Metrics::sink_busy`].
pub struct SinkBusy(Arc<AtomicU64>);

impl Drop for SinkBusy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
            sink_activity: AtomicU64::new(0),
            sinks_busy: Arc::default(),
            watermarks: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            counters: Mutex::new(BTreeMap::new()),
            gauges: Mutex::new(BTreeMap::new()),
            state_parts: Mutex::new(BTreeMap::new()),
            pacing: None,
            latency: None,
            halted: Default::default(),
            halt: Mutex::new(None),
            registered: Mutex::default(),
            splits: Mutex::default(),
            run_state: std::sync::atomic::AtomicU8::new(RunState::Starting as u8),
            active_watermarks: Mutex::default(),
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
    /// A sink of this process received or wrote records (flow control tells a slow sink from a
    /// stall on the watermark by it).
    pub fn sink_activity(&self) {
        self.sink_activity.fetch_add(1, Ordering::Relaxed);
    }
    /// How often this process's sinks received or wrote records so far, and `u64::MAX` while
    /// one is writing (a slow write is activity too).
    pub fn sink_activity_count(&self) -> u64 {
        if self.sinks_busy.load(Ordering::Relaxed) > 0 {
            return u64::MAX;
        }
        self.sink_activity.load(Ordering::Relaxed)
    }
    /// Marks a sink as writing until the guard drops.
    pub fn sink_busy(&self) -> SinkBusy {
        self.sinks_busy.fetch_add(1, Ordering::Relaxed);
        SinkBusy(self.sinks_busy.clone())
    }
    /// Records a local worker's source watermark.
    pub fn set_watermark(&self, local_worker: usize, watermark: u64) {
        if let Some(w) = self.watermarks.get(local_worker) {
            w.store(watermark, Ordering::Relaxed);
        }
    }
    /// Records local worker `local_worker`'s watermark over the splits of `source` that are
    /// neither idle nor done (`None`: it has none), and answers the least such watermark of the
    /// process's other workers, if any has live splits: a worker whose splits are all idle
    /// follows it instead of holding the job's watermark where its quiet splits left it.
    /// (Workers of other processes are not seen: there, a worker whose splits are all idle
    /// holds the watermark as [`crate::source`] explains.)
    pub fn follow_active(&self, source: &str, local_worker: usize, active: Option<u64>) -> Option<u64> {
        let mut all = self.active_watermarks.lock().unwrap_or_else(|e| e.into_inner());
        let slots = all.entry(source.to_string()).or_insert_with(|| vec![None; self.watermarks.len().max(local_worker + 1)]);
        if let Some(slot) = slots.get_mut(local_worker) {
            *slot = active;
        }
        slots.iter().enumerate().filter(|(w, _)| *w != local_worker).filter_map(|(_, wm)| *wm).min()
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
    /// The named counters counted through [`Metrics::add`] alone (not those kept per worker).
    pub fn shared_counters(&self) -> BTreeMap<String, u64> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// A snapshot of the named counters (those kept per worker summed over the workers).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, _, n) in self.worker_counts() {
            *counters.entry(name).or_default() += n;
        }
        counters
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

/// A count kept by one worker: registered once when its step is built, then bumped once per batch
/// with a relaxed add on an atomic of its own cache line (no lock, no name to format, and no
/// cache line shared with another worker's counter). Read by the summary and the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct WorkerCounter(Arc<PaddedCount>);

#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedCount(AtomicU64);

impl WorkerCounter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0 .0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0 .0.load(Ordering::Relaxed)
    }
}

/// The records a step took in and sent on, on one worker (see [`Metrics::step_records`]).
#[derive(Clone, Debug, Default)]
pub struct StepRecords {
    /// Records the step received.
    pub input: WorkerCounter,
    /// Records the step emitted.
    pub output: WorkerCounter,
}

/// One step's record counts on one worker, as read by the metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepCount {
    /// The step's name.
    pub step: String,
    /// The worker's index among all workers of the run.
    pub worker: usize,
    /// Records in.
    pub records_in: u64,
    /// Records out.
    pub records_out: u64,
}

/// Where a worker is in one split (partition) of a source: the position it reads from next and,
/// when the connector knows it, how much is left to read behind that position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitLevel {
    /// The source's name.
    pub source: String,
    /// The split's name within the source (a partition index, `topic-partition`, a file).
    pub split: String,
    /// The worker reading it, among all workers of the run.
    pub worker: usize,
    /// The position last reported (byte offset, generator index, broker offset).
    pub position: Option<u64>,
    /// Records or bytes still to read, when the connector knows.
    pub backlog: Option<u64>,
}

/// The state of a run, for `/healthz`: one place sets it (`crate::runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// Checked, workers starting.
    Starting = 0,
    /// Workers running.
    Running = 1,
    /// Every worker finished without error.
    Finished = 2,
    /// A worker failed.
    Failed = 3,
}

/// Per-worker counters of steps and named counts, registered at build time.
#[derive(Debug, Default)]
struct Registered {
    steps: Vec<(String, usize, StepRecords)>,
    /// Named counts kept per worker (`late_dropped:STEP`, ...), summed into [`Metrics::counters`].
    named: Vec<(String, usize, WorkerCounter)>,
}

impl Metrics {
    /// The record counters of `step` on `worker` (its index among all workers), registered on
    /// first use: call it when the step is built and keep the handles.
    pub fn step_records(&self, step: &str, worker: usize) -> StepRecords {
        let mut r = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = r.steps.iter().find(|(s, w, _)| s == step && *w == worker) {
            return c.clone();
        }
        let c = StepRecords::default();
        r.steps.push((step.to_string(), worker, c.clone()));
        c
    }
    /// A per-worker share of the named counter `name` (as [`Metrics::add`] counts, and summed
    /// with it in [`Metrics::counters`]), registered on first use: for counts bumped per batch.
    pub fn worker_counter(&self, name: &str, worker: usize) -> WorkerCounter {
        let mut r = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = r.named.iter().find(|(n, w, _)| n == name && *w == worker) {
            return c.clone();
        }
        let c = WorkerCounter::default();
        r.named.push((name.to_string(), worker, c.clone()));
        c
    }
    /// Every step's record counts, per worker.
    pub fn step_counts(&self) -> Vec<StepCount> {
        let r = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        r.steps
            .iter()
            .map(|(step, worker, c)| StepCount {
                step: step.clone(),
                worker: *worker,
                records_in: c.input.get(),
                records_out: c.output.get(),
            })
            .collect()
    }
    /// The named counts kept per worker: `(name, worker, count)`.
    pub fn worker_counts(&self) -> Vec<(String, usize, u64)> {
        let r = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        r.named.iter().map(|(name, worker, c)| (name.clone(), *worker, c.get())).collect()
    }
    /// Each named gauge's level per local worker.
    pub fn gauge_levels(&self) -> BTreeMap<String, Vec<u64>> {
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, g)| (k.clone(), g.levels.clone())).collect()
    }
    /// Each local worker's source watermark (ms; `u64::MAX` once its sources are done).
    pub fn watermarks(&self) -> Vec<u64> {
        self.watermarks.iter().map(|w| w.load(Ordering::Relaxed)).collect()
    }
    /// Notes the position `worker` reads split `split` of source `source` from next. Connectors
    /// call it when they know a position (at the latest at each checkpoint).
    pub fn set_split_position(&self, source: &str, split: &str, worker: usize, position: u64) {
        self.with_split(source, split, worker, |s| s.position = Some(position));
    }
    /// Notes how much is left to read in split `split` of source `source` (records or bytes, as
    /// the connector counts), for connectors that know it.
    pub fn set_split_backlog(&self, source: &str, split: &str, worker: usize, backlog: u64) {
        self.with_split(source, split, worker, |s| s.backlog = Some(backlog));
    }
    fn with_split(&self, source: &str, split: &str, worker: usize, f: impl FnOnce(&mut SplitLevel)) {
        let mut splits = self.splits.lock().unwrap_or_else(|e| e.into_inner());
        let level = splits.entry((source.to_string(), split.to_string())).or_insert_with(|| SplitLevel {
            source: source.to_string(),
            split: split.to_string(),
            ..SplitLevel::default()
        });
        level.worker = worker;
        f(level);
    }
    /// Every split's last reported position and backlog.
    pub fn split_levels(&self) -> Vec<SplitLevel> {
        self.splits.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
    /// Sets the run's state.
    pub fn set_run_state(&self, state: RunState) {
        self.run_state.store(state as u8, Ordering::Release);
    }
    /// The run's state.
    pub fn run_state(&self) -> RunState {
        match self.run_state.load(Ordering::Acquire) {
            0 => RunState::Starting,
            1 => RunState::Running,
            2 => RunState::Finished,
            _ => RunState::Failed,
        }
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

    #[test]
    fn worker_counters_are_registered_once_and_summed_into_the_counters() {
        let m = Metrics::new(2);
        let a = m.worker_counter("late_dropped:w", 0);
        let b = m.worker_counter("late_dropped:w", 1);
        m.worker_counter("late_dropped:w", 0).add(2);
        a.add(3);
        b.add(4);
        m.add("late_dropped:w", 1);
        assert_eq!(m.counters()["late_dropped:w"], 10);
        let mut per_worker = m.worker_counts();
        per_worker.sort();
        assert_eq!(per_worker, vec![("late_dropped:w".to_string(), 0, 5), ("late_dropped:w".to_string(), 1, 4)]);

        let s = m.step_records("map", 1);
        s.input.add(7);
        s.output.add(6);
        m.step_records("map", 1).output.add(1);
        assert_eq!(m.step_counts(), vec![StepCount { step: "map".into(), worker: 1, records_in: 7, records_out: 7 }]);
    }

    #[test]
    fn split_levels_keep_position_and_backlog() {
        let m = Metrics::new(1);
        m.set_split_position("payments", "0", 0, 10);
        m.set_split_backlog("payments", "0", 0, 90);
        m.set_split_position("payments", "0", 0, 20);
        let levels = m.split_levels();
        assert_eq!(levels.len(), 1);
        assert_eq!((levels[0].position, levels[0].backlog), (Some(20), Some(90)));
        assert_eq!(m.run_state(), RunState::Starting);
        m.set_run_state(RunState::Failed);
        assert_eq!(m.run_state(), RunState::Failed);
    }
}
