//! Running a job: on worker threads of one process, or on several processes with timely's cluster
//! mode; with a progress line while it runs and a summary when it ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context};

use crate::checkpoint::{choose_restore, CheckpointConfig, CommitState, Coordinator, Participant, Restore};
use crate::job::ParticipantKind;

use crate::job::{JobBuilder, RunPlan};
use crate::metrics::Metrics;
use crate::time::format_ts_ms;
use crate::Result;

/// How to run: threads, processes, progress output.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes (1: a single process).
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// `host:port` of every process, in process order (only with `processes > 1`).
    pub hosts: Vec<String>,
    /// Print a progress line to stderr every `progress_every`.
    pub progress: bool,
    /// How often the progress line is printed.
    pub progress_every: Duration,
    /// Checkpointing, when on.
    pub checkpoint: Option<CheckpointConfig>,
    /// `latest` or a checkpoint directory to resume from.
    pub restore: Option<String>,
    /// Restore even when the checkpoint holds state no step of the job owns (it is discarded).
    pub allow_dropped_state: bool,
    /// Flow control: how many read batches a source worker may have on their way to the sinks
    /// before it waits; 0 turns flow control off.
    pub max_in_flight: usize,
    /// Pace all sources together at this many events per second (and measure latency).
    pub rate: Option<f64>,
    /// Measure end-to-end latency (see `crate::latency`); implied by `rate`.
    pub measure_latency: bool,
    /// Event-time granularity, in ms, at which keyed steps (windows, joins, process functions)
    /// stamp their results: results whose event times fall in one granule travel, and reach the
    /// sinks, together. Every distinct timestamp costs progress tracking in every step after it,
    /// so a join emitting a result at nearly every millisecond of event time would spend most of
    /// its time there (figures in BENCHMARKS.md, "Joins" and "Figures behind choices in the code").
    /// The price: a result waits until the watermark passes the end of its granule (up to this
    /// much event time later than at 1 ms). The results and their lateness are the same at any
    /// granularity; a file lists them sorted within each granule, so its line order depends on
    /// the granularity (never on timing or worker count).
    pub time_granularity_ms: u64,
    /// Serve Prometheus metrics and a health check on this address while the run lasts (see
    /// `crate::observe::endpoint`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long the processes of a multi-process run wait for each other before failing (see
    /// `crate::cluster`).
    pub cluster_timeout: Duration,
    /// The job's secret for the cluster handshake (multi-process runs), if any.
    pub cluster_secret: Option<crate::cluster::Secret>,
}

pub use crate::context::DEFAULT_TIME_GRANULARITY_MS;

/// The default of [`RunOptions::max_in_flight`]; see `BENCHMARKS.md` for how it was chosen.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            processes: 1,
            process: 0,
            hosts: Vec::new(),
            progress: false,
            progress_every: Duration::from_secs(2),
            checkpoint: None,
            restore: None,
            allow_dropped_state: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            rate: None,
            measure_latency: false,
            time_granularity_ms: DEFAULT_TIME_GRANULARITY_MS,
            metrics_addr: None,
            cluster_timeout: crate::cluster::DEFAULT_TIMEOUT,
            cluster_secret: None,
        }
    }
}

/// How the processes of a run talk: threads of one process, or a cluster about to form.
enum Network {
    Local(timely::CommunicationConfig),
    Cluster(crate::cluster::Formation),
}

impl RunOptions {
    /// Checks the options and gets the network ready: in a multi-process run, binds this
    /// process's address.
    fn network(&self, job: &str) -> Result<Network> {
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if self.time_granularity_ms == 0 {
            bail!("--time-granularity-ms must be at least 1 (1: every result at its own millisecond)");
        }
        let total = self.workers * self.processes;
        if total as u64 > crate::keygroup::KEY_GROUPS {
            bail!(
                "{total} workers in all exceed the {} key groups; use at most {} workers",
                crate::keygroup::KEY_GROUPS,
                crate::keygroup::KEY_GROUPS
            );
        }
        if self.processes <= 1 {
            Ok(Network::Local(timely::CommunicationConfig::Process(self.workers)))
        } else {
            if self.process >= self.processes {
                bail!(
                    "--process {} is out of range: with --processes {} it must be 0..{}",
                    self.process,
                    self.processes,
                    self.processes - 1
                );
            }
            if self.hosts.len() < self.processes {
                bail!(
                    "the hosts file lists {} addresses but --processes is {}; list one host:port per process",
                    self.hosts.len(),
                    self.processes
                );
            }
            if self.cluster_timeout.is_zero() {
                bail!("--cluster-timeout must be above 0");
            }
            // A taken port is a configuration error, found before anything starts.
            let formation = crate::cluster::Formation::bind(crate::cluster::ClusterSpec {
                job: job.to_string(),
                process: self.process,
                addresses: self.hosts[..self.processes].to_vec(),
                workers: self.workers,
                timeout: self.cluster_timeout,
                secret: self.cluster_secret.clone(),
            })?;
            Ok(Network::Cluster(formation))
        }
    }
}

/// What a run did, as seen by this process.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Events read by this process's sources.
    pub events_read: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Named counters (`written:SINK`, `dead_lettered`, `late_dropped:STEP`, ...).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Named levels at the end (`state:STEP`: entries of state held), summed over workers.
    pub gauges: std::collections::BTreeMap<String, u64>,
    /// The highest each of those levels reached during the run.
    pub gauge_peaks: std::collections::BTreeMap<String, u64>,
    /// Per stateful step, its largest checkpoint part (by entries): bytes and entries.
    pub state_parts: std::collections::BTreeMap<String, crate::metrics::PartSize>,
    /// The process's peak resident memory so far, in bytes (Linux; `None` elsewhere).
    pub peak_rss_bytes: Option<u64>,
    /// Ingestion-to-sink latency of the results, when measured.
    pub latency: Option<crate::latency::LatencySummary>,
}

/// The process's peak resident set size (`VmHWM` of `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Builds the job once on one thread without running it, to report a bad parameter, source or
/// job structure before any worker starts. Returns the job's checkpoint participants.
pub fn check(plan: &RunPlan) -> Result<Vec<ParticipantKind>> {
    check_with(plan, None)
}

/// [`check`] for a run with these checkpoint settings (some steps refuse checkpoints).
pub fn check_with(plan: &RunPlan, checkpoint: Option<&CheckpointConfig>) -> Result<Vec<ParticipantKind>> {
    let plan = Arc::new(plan.clone());
    let checkpoint = checkpoint.cloned();
    timely::execute_directly(move |worker| {
        let metrics = Arc::new(Metrics::new(1));
        worker.dataflow::<crate::time::Time, _, _>(|scope| {
            let mut ctx = plan.build_context(metrics, true);
            ctx.checkpoint = checkpoint.clone();
            let mut builder = JobBuilder::new(scope, plan.clone(), ctx);
            let params = plan.params.clone();
            (plan.spec.build)(&mut builder, &params).and_then(|_| builder.finish()).map_err(|e| e.to_string())
        })
    })
    .map_err(|e| anyhow!(e))
}

/// Checks that a checkpoint fits the job: every saved state belongs to a step of the job.
fn check_restore(plan: &RunPlan, participants: &[ParticipantKind], restore: &Restore, allow_dropped_state: bool) -> Result<()> {
    if restore.manifest.job != plan.spec.name {
        bail!("checkpoint {} belongs to job {}, not {}", restore.dir.display(), restore.manifest.job, plan.spec.name);
    }
    let steps: BTreeSet<&str> = participants
        .iter()
        .filter_map(|p| match p {
            ParticipantKind::State(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let sources: BTreeSet<&str> = participants
        .iter()
        .filter_map(|p| match p {
            ParticipantKind::Source(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let mut unmapped = BTreeSet::new();
    for part in &restore.manifest.parts {
        if let Some(rest) = part.strip_prefix("state-") {
            let step = rest.rsplit_once("-w").map_or(rest, |(s, _)| s);
            if !steps.contains(step) {
                unmapped.insert(format!("state of step {step:?}"));
            }
        } else if let Some(rest) = part.strip_prefix("source-") {
            let name = rest.rsplit_once("-w").map_or(rest, |(s, _)| s);
            if !sources.contains(name) {
                unmapped.insert(format!("positions of source {name:?}"));
            }
        }
    }
    if !unmapped.is_empty() && !allow_dropped_state {
        let list: Vec<String> = unmapped.into_iter().collect();
        bail!(
            "checkpoint {} holds {} that job {} has no step for (its stateful steps: {}); \
             give the step its old name again, or pass --allow-dropped-state to discard that state",
            restore.dir.display(),
            list.join(", "),
            plan.spec.name,
            steps.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The checkpoint parts every epoch needs, for a run with `workers` workers in all.
fn expected_parts(participants: &[ParticipantKind], workers: usize) -> BTreeSet<Participant> {
    let mut expected = BTreeSet::new();
    for p in participants {
        match p {
            ParticipantKind::Source(name) => expected.extend((0..workers).map(|worker| Participant::Source { name: name.clone(), worker })),
            ParticipantKind::State(step) => expected.extend((0..workers).map(|worker| Participant::State { step: step.clone(), worker })),
            ParticipantKind::Sink(name) => {
                expected.insert(Participant::Sink { name: name.clone() });
            }
            ParticipantKind::ParallelSink(name) => {
                expected.extend((0..workers).map(|worker| Participant::ParallelSink { name: name.clone(), worker }))
            }
        }
    }
    expected
}

/// Gets the checkpoint directory ready: a fresh run needs one without checkpoints; a restore
/// removes what the abandoned run wrote after the checkpoint it resumes from.
fn prepare_checkpoint_dir(config: &CheckpointConfig, restore: Option<&Restore>, is_first_process: bool) -> Result<()> {
    std::fs::create_dir_all(&config.dir).with_context(|| format!("cannot create checkpoint directory {}", config.dir.display()))?;
    let mut later = Vec::new();
    for entry in std::fs::read_dir(&config.dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if let Some(epoch) = name.strip_prefix("chk-").and_then(|e| e.parse::<u64>().ok()) {
            match restore {
                // An incomplete checkpoint (no MANIFEST) cannot be restored: a fresh run clears it.
                None if !path.join("MANIFEST").is_file() => later.push(path),
                None => bail!(
                    "checkpoint directory {} already holds checkpoints of an earlier run; resume it with --restore latest, \
                     or use an empty directory",
                    config.dir.display()
                ),
                Some(r) if epoch > r.manifest.epoch || (epoch == r.manifest.epoch && path != r.dir) => later.push(path),
                Some(_) => {}
            }
        }
    }
    if is_first_process {
        for path in later {
            std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        std::fs::remove_file(config.dir.join(crate::checkpoint::SAVEPOINT_REQUEST)).ok();
    }
    Ok(())
}

/// A run that passed every check and is ready to start: see [`prepare`].
pub struct Prepared {
    plan: RunPlan,
    options: RunOptions,
    network: Network,
    participants: Vec<ParticipantKind>,
    restore: Option<Arc<Restore>>,
    /// The metrics endpoint's listener, bound early so a taken port stops the run before it starts.
    metrics_listener: Option<std::net::TcpListener>,
    /// The checkpoint directory's lock, held until the run ends (process 0).
    lock: Option<crate::checkpoint::DirLock>,
}

/// Runs a job to completion: [`prepare`], then [`run_prepared`].
pub fn run(plan: &RunPlan, options: &RunOptions) -> Result<Summary> {
    run_prepared(prepare(plan, options)?)
}

/// Checks a run before anything starts: the job builds, the options fit, the checkpoint to restore
/// exists, verifies and fits the job; and gets the checkpoint directory and sinks ready.
pub fn prepare(plan: &RunPlan, options: &RunOptions) -> Result<Prepared> {
    let network = options.network(plan.spec.name)?;
    let participants = check_with(plan, options.checkpoint.as_ref())?;
    let restore = match &options.restore {
        Some(what) => {
            let r = choose_restore(options.checkpoint.as_ref().map(|c| c.dir.as_path()), what)?;
            check_restore(plan, &participants, &r, options.allow_dropped_state)?;
            Some(Arc::new(r))
        }
        None => None,
    };
    let is_first_process = options.process == 0;
    let restored_epoch = restore.as_ref().map(|r| r.manifest.epoch);
    // Process 0 holds the checkpoint directory for the whole run: a second run on it would clean
    // up and publish what the first one is writing.
    let lock = match (&options.checkpoint, is_first_process) {
        (Some(c), true) => Some(crate::checkpoint::lock_dir(&c.dir)?),
        _ => None,
    };
    if let Some(c) = &options.checkpoint {
        prepare_checkpoint_dir(c, restore.as_deref(), is_first_process)?;
        if is_first_process {
            for (name, sink) in &plan.sinks {
                let committables = match &restore {
                    Some(r) => sink_committables(r, name)?,
                    None => Vec::new(),
                };
                let recovery = crate::connector::Recovery {
                    job: plan.spec.name.to_string(),
                    sink: name.clone(),
                    restored: restored_epoch,
                    committables,
                    workers: options.workers * options.processes.max(1),
                };
                sink.target.recover(&recovery).map_err(|e| e.context(format!("sink {name}: cannot recover {}", sink.target.describe())))?;
            }
        }
    }
    let metrics_listener = options.metrics_addr.map(crate::observe::endpoint::bind).transpose()?;
    Ok(Prepared { plan: plan.clone(), options: options.clone(), network, participants, restore, metrics_listener, lock })
}

/// The pre-commits a checkpoint holds for sink `name`: its single part (`sink-NAME.part`) or
/// its parallel parts (`sink-NAME-wW.part`).
fn sink_committables(restore: &Restore, name: &str) -> Result<Vec<crate::connector::Committable>> {
    let single = format!("sink-{name}.part");
    let worker_prefix = format!("sink-{name}-w");
    let mut all = Vec::new();
    for part in &restore.manifest.parts {
        let parallel = part
            .strip_prefix(&worker_prefix)
            .and_then(|rest| rest.strip_suffix(".part"))
            .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()));
        if *part == single || parallel {
            let payload = crate::checkpoint::read_part(&restore.dir.join(part))?;
            let committables: Vec<crate::connector::Committable> = crate::checkpoint::decode(&payload)
                .with_context(|| format!("checkpoint {}: part {part} of sink {name}", restore.dir.display()))?;
            all.extend(committables);
        }
    }
    Ok(all)
}

/// Runs a prepared job to completion. A job that halts before its input ends (a sink failed, it
/// was stopped or cancelled) is an error.
pub fn run_prepared(prepared: Prepared) -> Result<Summary> {
    match start(prepared)?.join()? {
        Outcome::Finished(summary) => Ok(summary),
        Outcome::Stopped { savepoint, .. } => match savepoint {
            Some(path) => bail!("stopped after savepoint {}", path.display()),
            None => bail!("stopped"),
        },
        Outcome::Cancelled(_) => bail!("cancelled before the input ended; no output was published"),
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The input ended and every sink finished.
    Finished(Summary),
    /// Stopped after a savepoint (`paystream savepoint --stop`, or SIGTERM with checkpoints):
    /// resume with `--restore SAVEPOINT`.
    Stopped {
        /// What ran until then.
        summary: Summary,
        /// The savepoint to resume from.
        savepoint: Option<std::path::PathBuf>,
    },
    /// Cancelled: output not yet committed was abandoned (a file sink without checkpoints
    /// publishes nothing).
    Cancelled(Summary),
}

/// A running job: cancel it, take a savepoint, read its metrics, wait for its outcome.
pub struct JobHandle {
    metrics: Arc<Metrics>,
    checkpoint: Option<CheckpointConfig>,
    started: Instant,
    thread: std::thread::JoinHandle<Result<Outcome>>,
}

impl JobHandle {
    /// Stops the job without a savepoint: sources stop, sinks abandon what is not committed.
    pub fn cancel(&self) {
        self.metrics.halt(crate::metrics::Halt::Cancelled);
    }

    /// Takes a savepoint (and stops the job after it, with `stop`); waits up to `timeout` for it.
    pub fn savepoint(&self, stop: bool, timeout: Duration) -> Result<std::path::PathBuf> {
        crate::checkpoint::request_savepoint(self.checkpoint_dir()?, stop, timeout)
    }

    /// Asks for a savepoint after which the job stops, without waiting: [`JobHandle::join`] then
    /// yields [`Outcome::Stopped`] with the savepoint.
    pub fn stop_with_savepoint(&self) -> Result<()> {
        crate::checkpoint::ask_for_savepoint(self.checkpoint_dir()?, true)
    }

    fn checkpoint_dir(&self) -> Result<&std::path::Path> {
        match &self.checkpoint {
            Some(c) => Ok(&c.dir),
            None => bail!("this run takes no checkpoints: start it with --checkpoint-dir DIR to take savepoints"),
        }
    }

    /// What the job has done so far.
    pub fn metrics(&self) -> Summary {
        summary_of(&self.metrics, self.started)
    }

    /// Whether the job has ended (its outcome is ready for [`JobHandle::join`]).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the job to end.
    pub fn join(self) -> Result<Outcome> {
        self.thread.join().map_err(|_| anyhow!("the job's control thread panicked"))?
    }
}

fn summary_of(metrics: &Metrics, start: Instant) -> Summary {
    Summary {
        events_read: metrics.events_read(),
        elapsed: start.elapsed(),
        counters: metrics.counters(),
        gauges: metrics.gauges(),
        gauge_peaks: metrics.gauge_peaks(),
        state_parts: metrics.state_parts(),
        peak_rss_bytes: peak_rss_bytes(),
        latency: metrics.latency().map(|c| crate::latency::LatencySummary::of(&c.histogram())),
    }
}

/// Starts a prepared job on its worker threads and returns its handle at once.
pub fn start(prepared: Prepared) -> Result<JobHandle> {
    let mut metrics = Metrics::new(prepared.options.workers);
    if prepared.options.measure_latency || prepared.options.rate.is_some() {
        let sources = prepared.participants.iter().filter(|p| matches!(p, ParticipantKind::Source(_))).count();
        metrics = metrics.with_latency(prepared.options.rate, sources);
    }
    let metrics = Arc::new(metrics);
    let started = Instant::now();
    let checkpoint = prepared.options.checkpoint.clone();
    let job_metrics = metrics.clone();
    let thread = std::thread::Builder::new()
        .name(format!("paystream-job-{}", prepared.plan.spec.name))
        .spawn(move || execute(prepared, job_metrics, started))
        .map_err(|e| anyhow!("cannot start the job: {e}"))?;
    Ok(JobHandle { metrics, checkpoint, started, thread })
}

/// Runs the job on this thread until it ends.
fn execute(prepared: Prepared, metrics: Arc<Metrics>, start: Instant) -> Result<Outcome> {
    let Prepared { plan, options, network, participants, restore, metrics_listener, lock: _lock } = prepared;
    let options = &options;
    let is_first_process = options.process == 0;
    let first_epoch = restore.as_ref().map_or(0, |r| r.manifest.epoch + 1);
    let plan = Arc::new(plan);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = options.progress.then(|| {
        let (metrics, done, every) = (metrics.clone(), done.clone(), options.progress_every);
        let name = plan.spec.name;
        std::thread::spawn(move || report_progress(name, &metrics, &done, start, every))
    });
    let commit = Arc::new(CommitState::default());
    // --- observability hooks: the run's I/O runtime and its metrics endpoint.
    let io = crate::io::IoRuntime::new()?;
    if let Some(listener) = metrics_listener {
        let commit = (is_first_process && options.checkpoint.is_some()).then(|| commit.clone());
        let registry =
            crate::observe::exporter::RunCollector::new(plan.spec.name, options.process, metrics.clone(), commit).into_registry();
        crate::observe::endpoint::serve(io.handle(), listener, registry, metrics.clone())?;
    }
    // `paystream savepoint` reaches the job through a socket in the checkpoint directory.
    let _control = match (&options.checkpoint, is_first_process) {
        (Some(c), true) => crate::control::serve(io.handle(), &c.dir, Duration::from_secs(300)),
        _ => None,
    };
    let io_handle = io.handle().clone();
    // ---
    let coordinator = match (&options.checkpoint, is_first_process) {
        (Some(c), true) => {
            let workers = options.workers * options.processes.max(1);
            let expected = expected_parts(&participants, workers);
            let coordinator = Coordinator::new(c.clone(), plan.spec.name, workers, expected, first_epoch, commit.clone());
            let done = done.clone();
            Some(std::thread::spawn(move || coordinator.run(&done)))
        }
        _ => None,
    };

    // A savepoint with stop halts the job once the coordinator has written it; a coordinator that
    // cannot write checkpoints fails it.
    let control = match (&options.checkpoint, is_first_process) {
        (Some(_), true) => {
            let (commit, metrics, done) = (commit.clone(), metrics.clone(), done.clone());
            Some(std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    if commit.stop_requested() {
                        metrics.halt(crate::metrics::Halt::Stopped);
                        break;
                    }
                    if let Some(failure) = commit.failure() {
                        metrics.fail(failure);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }))
        }
        _ => None,
    };
    let finished_plan = plan.clone();
    let worker_metrics = metrics.clone();
    let watched_commit = commit.clone();
    let checkpoint = options.checkpoint.clone();
    let max_in_flight = options.max_in_flight;
    let time_granularity_ms = options.time_granularity_ms;
    let communication = match network {
        Network::Local(config) => config.try_build().map(Some).map_err(|e| anyhow!("cannot set up the workers: {e}")),
        // Waits for the other processes (up to --cluster-timeout, or until the run is cancelled);
        // see `crate::cluster`.
        Network::Cluster(formation) => formation.connect(&|| metrics.halt_reason().is_some()).and_then(|sockets| {
            sockets.map(|sockets| crate::cluster::communication(sockets, options.process, options.workers)).transpose()
        }),
    };
    let (builders, others) = match communication {
        Ok(Some(c)) => c,
        // Halted before the processes were connected: nothing ran.
        Ok(None) => {
            done.store(true, Ordering::Release);
            if let Some(crate::metrics::Halt::Failed(failure)) = metrics.halt_reason() {
                bail!("{failure}");
            }
            return Ok(Outcome::Cancelled(summary_of(&metrics, start)));
        }
        Err(e) => {
            // The progress, coordinator and control threads end on `done`.
            done.store(true, Ordering::Release);
            return Err(e);
        }
    };
    metrics.set_run_state(crate::metrics::RunState::Running);
    let guards = timely::execute::execute_from(builders, others, timely::WorkerConfig::default(), move |worker| {
        // Connectors on this worker find the run's I/O runtime (`crate::io::handle`).
        let _io = io_handle.enter();
        let plan = plan.clone();
        let mut ctx = plan.build_context(worker_metrics.clone(), false);
        ctx.checkpoint = checkpoint.clone();
        ctx.flow = crate::flow::FlowControl::new(max_in_flight);
        ctx.time_granularity_ms = time_granularity_ms;
        ctx.restore = restore.clone();
        ctx.commit = Some(commit.clone());
        let built = worker.dataflow::<crate::time::Time, _, _>(|scope| {
            let mut builder = JobBuilder::new(scope, plan.clone(), ctx);
            let params = plan.params.clone();
            (plan.spec.build)(&mut builder, &params).and_then(|_| builder.finish()).map(|_| ()).map_err(|e| e.to_string())
        });
        // Run the dataflow here rather than after returning, so the I/O context stays entered.
        while worker.has_dataflows() {
            worker.step_or_park(None);
        }
        built
    })
    .map_err(|e| anyhow!("cannot start the workers: {e}"))?;
    // Processes other than the first learn of completed checkpoints from their manifests. Started
    // only now that every process is connected, hence past its preparation: by then process 0 has
    // removed what a crashed run left after the checkpoint this run resumes from.
    let watcher = match (&options.checkpoint, is_first_process) {
        (Some(c), false) => {
            let (dir, commit, done) = (c.dir.clone(), watched_commit.clone(), done.clone());
            Some(std::thread::spawn(move || crate::checkpoint::watch_commits(&dir, &commit, &done)))
        }
        _ => None,
    };
    let results = guards.join();
    done.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    if let Some(c) = coordinator {
        let _ = c.join();
    }
    if let Some(w) = watcher {
        let _ = w.join();
    }
    // A peer lost mid-run made timely's threads panic; the panics printed nothing, and this is
    // the one report (see `crate::cluster::lost`).
    let lost = if options.processes > 1 { crate::cluster::lost::lost_peer() } else { None };
    let failed = lost.is_some()
        || results.iter().any(|r| !matches!(r, Ok(Ok(()))))
        || matches!(metrics.halt_reason(), Some(crate::metrics::Halt::Failed(_)));
    metrics.set_run_state(if failed { crate::metrics::RunState::Failed } else { crate::metrics::RunState::Finished });
    if let Some(lost) = lost {
        // A peer that left after this process's workers finished took nothing from the run.
        if results.iter().any(|r| !matches!(r, Ok(Ok(())))) {
            let address = options.hosts.get(lost.process).map_or("?", String::as_str);
            bail!(
                "process {} ({address}) was lost mid-run ({}); the job did not finish: start it again{}",
                lost.process,
                lost.cause,
                if options.checkpoint.is_some() { " with --restore latest" } else { "" }
            );
        }
    }
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(panic) => bail!("a worker failed: {panic}"),
        }
    }
    if let Some(control) = control {
        let _ = control.join();
    }
    // A halted job keeps its checkpoints: it can resume from the last one.
    match metrics.halt_reason() {
        Some(crate::metrics::Halt::Failed(failure)) => bail!("{failure}"),
        Some(crate::metrics::Halt::Stopped) => {
            return Ok(Outcome::Stopped { summary: summary_of(&metrics, start), savepoint: watched_commit.savepoint() })
        }
        Some(crate::metrics::Halt::Cancelled) => return Ok(Outcome::Cancelled(summary_of(&metrics, start))),
        None => {}
    }
    if let (Some(c), true) = (&options.checkpoint, is_first_process) {
        // A finished job's checkpoints are of no more use (as in Flink); savepoints stay.
        crate::checkpoint::discard_checkpoints(&c.dir);
        // Only now, with no checkpoint left to restore, may the sinks drop what a restore needs
        // (a file sink's per-epoch parts).
        for (name, sink) in &finished_plan.sinks {
            if let Err(e) = sink.target.after_finish() {
                tracing::warn!(sink = %name, "sink {name}: {e:#}");
            }
        }
    }
    Ok(Outcome::Finished(summary_of(&metrics, start)))
}

fn report_progress(job: &str, metrics: &Metrics, done: &AtomicBool, start: Instant, every: Duration) {
    let mut last = (start, 0u64);
    let tick = Duration::from_millis(50);
    let mut next = start + every;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = Instant::now();
        if now < next {
            continue;
        }
        next = now + every;
        let events = metrics.events_read();
        let rate = (events - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, events);
        eprintln!(
            "[{job}] {:>7.1}s  {} events read  {}/s  watermark {}",
            now.duration_since(start).as_secs_f64(),
            group_digits(events),
            group_digits(rate as u64),
            format_ts_ms(metrics.watermark())
        );
    }
}

/// Formats a count with thousands separators: `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The end-of-run report, for stderr.
pub fn describe(plan: &RunPlan, options: &RunOptions, summary: &Summary) -> String {
    let secs = summary.elapsed.as_secs_f64();
    let mut out = format!(
        "{} finished in {:.2} s: {} events read ({}/s)",
        plan.spec.name,
        secs,
        group_digits(summary.events_read),
        group_digits((summary.events_read as f64 / secs.max(1e-9)) as u64)
    );
    if options.processes > 1 {
        out.push_str(&format!(" by process {} of {}", options.process, options.processes));
    }
    if let Some(bytes) = summary.peak_rss_bytes {
        out.push_str(&format!(", peak memory {} MiB", bytes.div_ceil(1 << 20)));
    }
    if let Some(l) = &summary.latency {
        let ms = |us: u64| us as f64 / 1000.0;
        out.push_str(&format!(
            "\n  latency, ingestion to sink, over {} results: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            group_digits(l.count),
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        ));
    }
    for (name, sink) in &plan.sinks {
        if let Some(n) = summary.counters.get(&format!("written:{name}")) {
            let target = sink.target.describe();
            out.push_str(&format!("\n  {name}: {} records -> {target}", group_digits(*n)));
        }
    }
    for (name, n) in summary.counters.iter() {
        if !name.starts_with("written:") {
            out.push_str(&format!("\n  {name}: {}", group_digits(*n)));
        }
    }
    for (name, n) in &summary.gauges {
        out.push_str(&format!("\n  {name}: {}", group_digits(*n)));
        if let Some(peak) = summary.gauge_peaks.get(name).filter(|p| **p > *n) {
            out.push_str(&format!(" (peak {})", group_digits(*peak)));
        }
    }
    for (step, part) in &summary.state_parts {
        if part.entries > 0 {
            out.push_str(&format!(
                "\n  largest checkpoint part of {step}: {} bytes for {} entries ({:.1} bytes/entry)",
                group_digits(part.bytes),
                group_digits(part.entries),
                part.bytes as f64 / part.entries as f64
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_digits() {
        assert_eq!(super::group_digits(0), "0");
        assert_eq!(super::group_digits(999), "999");
        assert_eq!(super::group_digits(1_000), "1,000");
        assert_eq!(super::group_digits(1_234_567), "1,234,567");
    }
}
