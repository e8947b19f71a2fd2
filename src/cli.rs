//! The `paystream` command line: `paystream jobs` and `paystream run`, and the cluster's
//! services and clients (`coordinator`, `agent`, `submit`, `list`, ...; see [`cluster`]).
//!
//! Exit codes: 0 success, 1 the job failed while running, 2 a bad flag, config, URI or parameter
//! (nothing ran).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use paystream_engine::checkpoint::CheckpointConfig;
use paystream_engine::job::RunPlan;
use paystream_engine::runtime::{self, Outcome, RunOptions};
use paystream_engine::{Connectors, JobSpec, Result};
use serde::Deserialize;

/// paystream: event-time stream processing for payments.
#[derive(Parser, Debug)]
#[command(name = "paystream", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the registered jobs with their sources, sinks and parameters.
    Jobs,
    /// List the connectors this binary has: the URI forms --source and --sink take.
    Connectors,
    /// Run a job until its input ends.
    ///
    /// With no --source or --sink a job reads its embedded default, the deterministic generator
    /// (1,000,000 events), and writes CSV files under ./out/JOB/.
    Run(Box<RunArgs>),
    /// Take a savepoint of a running job (a checkpoint that is never deleted automatically).
    ///
    /// `paystream savepoint JOB_ID` asks the coordinator (for a job started with `submit`);
    /// `paystream savepoint --checkpoint-dir DIR` asks a job started with `run --checkpoint-dir
    /// DIR` directly, through DIR/control.sock. The savepoint appears as DIR/savepoint-EPOCH
    /// (printed), and `paystream run JOB --restore DIR/savepoint-EPOCH` (or `submit
    /// --from-savepoint`) resumes from it.
    Savepoint(SavepointArgs),
    /// Run the coordinator: the JSON HTTP API that takes jobs, and their scheduler and restarts.
    Coordinator(Box<cluster::CoordinatorArgs>),
    /// Run an agent: offer this node's slots to the coordinator and run job processes.
    Agent(Box<cluster::AgentArgs>),
    /// Submit a job to the coordinator; prints its id.
    Submit(Box<cluster::SubmitArgs>),
    /// List the coordinator's jobs.
    List(cluster::ClusterArgs),
    /// Show a job's state, uptime, restarts, checkpoint, processes and history of transitions.
    Status(cluster::JobIdArgs),
    /// Cancel a job: kill its processes (its output is abandoned).
    Cancel(cluster::JobIdArgs),
    /// Stop a job after a savepoint; prints the savepoint's path.
    Stop(cluster::JobIdArgs),
    /// Measure a job: run it several times and print wall time, events/s, CPU time and peak RSS.
    ///
    /// Takes every `run` flag. Build with --release for meaningful numbers (the table says which
    /// profile it ran in).
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// How many runs; the table shows each and their median.
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: usize,
    /// Then run the job paced at 25%, 50% and 90% of the measured maximum throughput (median
    /// events/s of the runs) and report latency percentiles at each load.
    #[arg(long)]
    latency: bool,
}

#[derive(clap::Args, Debug)]
struct SavepointArgs {
    /// A job of the coordinator (see `paystream list`).
    #[arg(value_name = "JOB_ID", conflicts_with = "checkpoint_dir")]
    job_id: Option<String>,
    /// The running job's checkpoint directory (a job started with `paystream run`).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Stop the job once the savepoint is written (stop-with-savepoint).
    #[arg(long, alias = "stop-with-savepoint")]
    stop: bool,
    /// How long to wait for the savepoint.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The job to run (see `paystream jobs`).
    job: String,

    /// Worker threads in this process. Output does not depend on it.
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,

    /// Read source NAME from URI: `gen:[KEY=VALUE,...]` (the generator, see the README),
    /// `file:PATH.csv`, `file:PATH.jsonl`, `file:DIR` (every .csv/.jsonl file in it),
    /// `kafka://HOST:PORT/TOPIC`, `rabbitmq://HOST:PORT/QUEUE`, `nats://HOST:PORT/STREAM`,
    /// `postgres://USER@HOST:PORT/DB?table=NAME&ts=COLUMN` (`paystream connectors` lists every
    /// form and option). Repeatable.
    #[arg(long = "source", value_name = "NAME=URI", value_parser = parse_key_value)]
    sources: Vec<(String, String)>,

    /// Write sink NAME to URI: `file:PATH.csv`, `file:PATH.jsonl`, `stdout:`,
    /// `kafka://HOST:PORT/TOPIC`, `rabbitmq://HOST:PORT/QUEUE`, `nats://HOST:PORT/STREAM` or
    /// `postgres://USER@HOST:PORT/DB?table=NAME` (`paystream connectors` lists every form and option). Dead letters go to the sink `dead_letters` (default:
    /// dead_letters.csv beside the job's first file sink). Repeatable.
    #[arg(long = "sink", value_name = "NAME=URI", value_parser = parse_key_value)]
    sinks: Vec<(String, String)>,

    /// Set job parameter KEY (see `paystream jobs`). Repeatable; overrides --config.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    params: Vec<(String, String)>,

    /// Read workers, sources, sinks and parameters from a TOML file (flags override it):
    /// `workers = 2`, and tables `[sources]`, `[sinks]`, `[params]` of NAME = "VALUE".
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,

    /// Number of processes in a multi-process run (timely's cluster mode). Start one
    /// `paystream run` per process, each with its own --process index and the same --hosts file.
    #[arg(long, value_name = "N", default_value_t = 1)]
    processes: usize,

    /// This process's index in a multi-process run, 0..N-1. Process 0 writes the sinks.
    #[arg(long, value_name = "I", default_value_t = 0)]
    process: usize,

    /// File with one `host:port` per line, one line per process, in process order (lines starting
    /// with # are ignored). Required with --processes above 1.
    #[arg(long, value_name = "FILE")]
    hosts: Option<PathBuf>,

    /// How long the processes of a multi-process run wait for each other to connect, such as
    /// 30s or 2m; after it the run fails (exit 1) naming the processes that never answered.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    cluster_timeout: std::time::Duration,

    /// File holding the job's cluster secret (at least 16 bytes; a trailing newline is ignored),
    /// the same for every process of the run: each connection between processes must prove it
    /// holds it (HMAC-SHA256 over fresh nonces). Without it (and without the environment variable
    /// PAYSTREAM_CLUSTER_SECRET) the handshake only checks that a peer is a process of this job.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,

    /// Take consistent checkpoints into DIR, for exactly-once restores after a crash. File sinks
    /// then publish output per checkpoint (see the README).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,

    /// Time between checkpoints (with --checkpoint-dir), such as 500ms, 1s or 2m [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    checkpoint_interval: Option<std::time::Duration>,

    /// Complete checkpoints to keep, at least 1 (with --checkpoint-dir; savepoints are always
    /// kept) [default: 3].
    #[arg(long, value_name = "N")]
    retain: Option<usize>,

    /// Checkpoints that may fail in a row (a part that cannot be written: a full or failing disk)
    /// before the job fails, as Flink's tolerable failed checkpoints; a failed checkpoint is
    /// skipped and the next covers what it would have (with --checkpoint-dir) [default: 0: the
    /// first failure fails the job].
    #[arg(long, value_name = "N")]
    tolerable_checkpoint_failures: Option<u32>,

    /// Resume from a checkpoint: `latest` (the newest complete one in --checkpoint-dir whose files
    /// verify) or the path of a checkpoint or savepoint directory.
    #[arg(long, value_name = "latest|PATH")]
    restore: Option<String>,

    /// Restore even if the checkpoint holds state for steps the job no longer has (discarding it).
    #[arg(long)]
    allow_dropped_state: bool,

    /// Flow control: batches of 2048 records a source worker may have on their way to the sinks
    /// before it waits for them to land. Bounds memory when a sink, a
    /// worker or a hot key is slow, and keeps sources of different workers aligned. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = paystream_engine::runtime::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,

    /// Event-time granularity at which windows, joins and process functions stamp their results:
    /// results within one granule reach the sinks together. Coarser costs less CPU per result
    /// (every distinct timestamp costs progress tracking) and delays output by up to the granule
    /// in event time. The results are the same at any value (a file sorts them within each
    /// granule, so their order follows the value).
    #[arg(long, value_name = "MS", default_value_t = paystream_engine::runtime::DEFAULT_TIME_GRANULARITY_MS)]
    time_granularity_ms: u64,

    /// Pace all sources together at this many events per second (a replay at a fixed rate), and
    /// report the latency from each result's completing record's ingestion to its sink.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Print no progress lines and no summary.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    log: crate::logging::LogArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz (200 while
    /// the job runs, 503 after a failure) while the job runs, such as 127.0.0.1:9249. Off unless
    /// given. The metrics are listed in the README.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

fn parse_rate(text: &str) -> std::result::Result<f64, String> {
    match text.trim().replace('_', "").parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("{text:?} is not a rate: give events per second, at least 1, such as 500000")),
    }
}

mod cluster;
mod duration;
use duration::parse_duration;

fn parse_key_value(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// The `--config` file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    workers: Option<usize>,
    #[serde(default)]
    sources: BTreeMap<String, String>,
    #[serde(default)]
    sinks: BTreeMap<String, String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
}

/// A name given twice on the command line is a mistake, not a choice of the last (a config file's
/// entries may be overridden by a flag, once).
fn refuse_repeats(flag: &str, given: &[(String, String)]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in given {
        if !seen.insert(name.as_str()) {
            bail!("{flag} {name}=... is given twice; give each name once");
        }
    }
    Ok(())
}

fn read_config(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("config {}: {}", path.display(), e.to_string().trim()))
}

/// The environment variable through which whoever starts the processes (a coordinator) hands them
/// the job's cluster secret; `--secret-file` wins over it.
pub const SECRET_ENV: &str = "PAYSTREAM_CLUSTER_SECRET";

/// The cluster secret from `--secret-file`, else from [`SECRET_ENV`], if either is given.
fn cluster_secret(file: Option<&Path>) -> Result<Option<paystream_engine::cluster::Secret>> {
    let mut bytes = match file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read --secret-file {}", path.display()))?,
        None => match std::env::var_os(SECRET_ENV) {
            Some(value) if !value.is_empty() => value.into_encoded_bytes(),
            _ => return Ok(None),
        },
    };
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    let from = file.map_or_else(|| SECRET_ENV.to_string(), |p| format!("--secret-file {}", p.display()));
    let secret = paystream_engine::cluster::Secret::new(bytes).with_context(|| from)?;
    if let Some(path) = file {
        warn_if_others_can_read(path);
    }
    Ok(Some(secret))
}

/// A secret other users can read is not a secret: say so (as ssh does for a private key), but
/// run, since the file may be shared on purpose (a group of operators).
fn warn_if_others_can_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "--secret-file {} can be read by other users (mode {mode:03o}); `chmod 600` it so only the job's user can",
                path.display()
            );
        }
    }
}

fn read_hosts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read hosts file {}", path.display()))?;
    let hosts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    for h in &hosts {
        if !h.contains(':') {
            bail!("hosts file {}: {h:?} is not host:port", path.display());
        }
    }
    Ok(hosts)
}

/// Runs the CLI over `jobs` with the built-in connectors and returns the process exit code. Call
/// it from your own `main` to get every subcommand for your own jobs.
pub fn main(jobs: Vec<JobSpec>) -> ExitCode {
    main_with(jobs, crate::connectors())
}

/// [`main`] with connectors of your choice: the built-in ones ([`crate::connectors`]) plus your
/// own, registered by URI scheme.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     let connectors = paystream::connectors(); // .source(MySource).sink(MySink)
///     paystream::cli::main_with(paystream::jobs::all_jobs(), connectors)
/// }
/// ```
pub fn main_with(jobs: Vec<JobSpec>, connectors: Connectors) -> ExitCode {
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Run(args) => args.log.clone(),
        Command::Bench(args) => args.run.log.clone(),
        Command::Coordinator(args) => args.log.clone(),
        Command::Agent(args) => args.log.clone(),
        _ => crate::logging::LogArgs::default(),
    };
    crate::logging::init(&log);
    let connectors = Arc::new(connectors);
    match cli.command {
        Command::Jobs => {
            print!("{}", describe_jobs(&jobs));
            ExitCode::SUCCESS
        }
        Command::Connectors => {
            print!("{}", describe_connectors(&connectors));
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(&jobs, &connectors, *args),
        Command::Bench(args) => bench(&jobs, &connectors, *args),
        Command::Savepoint(args) => savepoint(args),
        Command::Coordinator(args) => cluster::coordinator(*args),
        Command::Agent(args) => cluster::agent(*args),
        Command::Submit(args) => cluster::submit(&jobs, *args),
        Command::List(args) => cluster::list(args),
        Command::Status(args) => cluster::status(args),
        Command::Cancel(args) => cluster::cancel(args),
        Command::Stop(args) => cluster::stop(args),
    }
}

/// `paystream savepoint`: through the coordinator (`JOB_ID`) or the job's control socket
/// (`--checkpoint-dir`).
fn savepoint(args: SavepointArgs) -> ExitCode {
    if let Some(job_id) = &args.job_id {
        return cluster::savepoint(job_id, &args.cluster, args.stop);
    }
    let Some(dir) = &args.checkpoint_dir else {
        eprintln!("error: give a JOB_ID (a job of the coordinator) or --checkpoint-dir DIR (a job started with `paystream run`)");
        return ExitCode::from(2);
    };
    match paystream_engine::control::request_savepoint(dir, args.stop, args.timeout) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The listing printed by `paystream connectors`.
pub fn describe_connectors(connectors: &Connectors) -> String {
    let mut out = String::from("sources (--source NAME=URI):\n");
    for usage in connectors.source_usage() {
        out.push_str(&format!("  {usage}\n"));
    }
    out.push_str("  every source also takes max_future=DURATION|off and idle_after=DURATION (see the README, Semantics)\n");
    out.push_str("sinks (--sink NAME=URI):\n");
    for usage in connectors.sink_usage() {
        out.push_str(&format!("  {usage}\n"));
    }
    out
}

/// The listing printed by `paystream jobs`.
pub fn describe_jobs(jobs: &[JobSpec]) -> String {
    let mut out = String::new();
    for job in jobs {
        out.push_str(&format!("{}\n  {}\n", job.name, job.about));
        for s in job.sources {
            out.push_str(&format!("  source {} ({}): {}\n", s.name, s.record, s.about));
        }
        for s in job.sinks {
            out.push_str(&format!("  sink   {}: {}\n", s.name, s.about));
        }
        for p in job.params {
            out.push_str(&format!("  --set  {}={}  {}\n", p.name, p.default, p.about));
        }
        out.push('\n');
    }
    out
}

fn plan_run(jobs: &[JobSpec], connectors: &Arc<Connectors>, args: &RunArgs) -> Result<(RunPlan, RunOptions)> {
    let Some(spec) = jobs.iter().find(|j| j.name == args.job) else {
        let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
        bail!("no job named {:?}; the jobs are: {} (see `paystream jobs`)", args.job, names.join(", "));
    };
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let mut sources = config.sources;
    refuse_repeats("--source", &args.sources)?;
    refuse_repeats("--sink", &args.sinks)?;
    refuse_repeats("--set", &args.params)?;
    if args.checkpoint_dir.is_none() {
        for (flag, given) in [
            ("--checkpoint-interval", args.checkpoint_interval.is_some()),
            ("--retain", args.retain.is_some()),
            ("--tolerable-checkpoint-failures", args.tolerable_checkpoint_failures.is_some()),
        ] {
            if given {
                bail!("{flag} needs --checkpoint-dir DIR (without it the run takes no checkpoints)");
            }
        }
    }
    if args.retain == Some(0) {
        bail!("--retain 0 would keep no checkpoint to restore; give at least 1");
    }
    sources.extend(args.sources.iter().cloned());
    let mut sinks = config.sinks;
    sinks.extend(args.sinks.iter().cloned());
    let mut params = BTreeMap::new();
    for (k, v) in config.params {
        let text = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => bail!("config: parameter {k} must be a string, number or boolean"),
        };
        params.insert(k, text);
    }
    params.extend(args.params.iter().cloned());
    let plan = RunPlan::resolve(spec, &sources, &sinks, &params, connectors.clone())?;
    if args.processes == 0 {
        bail!("--processes must be at least 1");
    }
    let hosts = match (&args.hosts, args.processes) {
        (Some(path), _) => read_hosts(path)?,
        (None, 1) => Vec::new(),
        (None, _) => bail!("--processes {} needs --hosts FILE with one host:port per process", args.processes),
    };
    if args.processes == 1 && args.secret_file.is_some() {
        bail!("--secret-file is for multi-process runs (--processes above 1)");
    }
    let cluster_secret = if args.processes > 1 { cluster_secret(args.secret_file.as_deref())? } else { None };
    if let Some(dir) = &args.checkpoint_dir {
        paystream_engine::checkpoint::set_tolerable_failures(dir, args.tolerable_checkpoint_failures.unwrap_or(0));
    }
    let options = RunOptions {
        workers: args.workers.or(config.workers).unwrap_or(1),
        processes: args.processes,
        process: args.process,
        hosts,
        progress: !args.quiet,
        checkpoint: args.checkpoint_dir.as_ref().map(|dir| CheckpointConfig {
            dir: dir.clone(),
            interval: args.checkpoint_interval.unwrap_or(Duration::from_secs(1)),
            retain: args.retain.unwrap_or(3),
        }),
        restore: args.restore.clone(),
        allow_dropped_state: args.allow_dropped_state,
        max_in_flight: args.max_in_flight,
        time_granularity_ms: args.time_granularity_ms,
        rate: args.rate,
        metrics_addr: args.metrics_addr,
        cluster_timeout: args.cluster_timeout,
        cluster_secret,
        ..RunOptions::default()
    };
    if options.restore.as_deref() == Some("latest") && options.checkpoint.is_none() {
        bail!("--restore latest needs --checkpoint-dir DIR (the directory the crashed run checkpointed into)");
    }
    if options.workers == 0 {
        bail!("--workers must be at least 1");
    }
    Ok((plan, options))
}

fn bench(jobs: &[JobSpec], connectors: &Arc<Connectors>, args: BenchArgs) -> ExitCode {
    let mut run_args = args.run;
    run_args.quiet = true;
    let (plan, options) = match plan_run(jobs, connectors, &run_args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match crate::bench::measure(&plan, &options, args.runs.max(1), args.latency) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(jobs: &[JobSpec], connectors: &Arc<Connectors>, args: RunArgs) -> ExitCode {
    let prepared =
        plan_run(jobs, connectors, &args).and_then(|(plan, options)| runtime::prepare(&plan, &options).map(|p| (plan, options, p)));
    let (plan, options, prepared) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = match runtime::start(prepared) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    // The first SIGTERM or SIGINT stops the job: with checkpoints, after a savepoint; without,
    // abandoning its output. A second one exits at once (see `Signals`).
    let mut stopping_by: Option<i32> = None;
    while !handle.is_finished() {
        if let (None, Some(signal)) = (stopping_by, signals.received()) {
            stopping_by = Some(signal);
            let name = signal_name(signal);
            if options.checkpoint.is_none() {
                eprintln!("{name}: stopping {}; without --checkpoint-dir its output is abandoned", plan.spec.name);
                handle.cancel();
            } else if let Err(e) = handle.stop_with_savepoint() {
                eprintln!("{name}: cannot ask for a savepoint ({e:#}); stopping {} without one", plan.spec.name);
                handle.cancel();
            } else {
                eprintln!("{name}: stopping {} after a savepoint (send it again to abort at once)", plan.spec.name);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match handle.join() {
        Ok(Outcome::Finished(summary)) => {
            if !args.quiet {
                eprintln!("{}", runtime::describe(&plan, &options, &summary));
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Stopped { savepoint, .. }) => {
            match savepoint {
                Some(path) => {
                    eprintln!("stopped after savepoint {}; resume with:\n  {}", path.display(), resume_command(&path.display().to_string()))
                }
                None => eprintln!("stopped"),
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Cancelled(_)) => {
            let signal = stopping_by.unwrap_or(signal_hook::consts::SIGTERM);
            eprintln!(
                "error: stopped by {} before the input ended: no output was published (run with --checkpoint-dir DIR to stop \
                 with a savepoint and resume later)",
                signal_name(signal)
            );
            ExitCode::from((128 + signal) as u8)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, as flags polled by `run`. The first one sets the flag; while it is set, a
/// second one exits the process at once with 128 + its number.
struct Signals {
    received: Arc<AtomicUsize>,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        let received = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, seen.clone())?;
            signal_hook::flag::register(signal, seen.clone())?;
            signal_hook::flag::register_usize(signal, received.clone(), signal as usize)?;
        }
        Ok(Signals { received })
    }

    /// The signal received, if any.
    fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::Acquire) {
            0 => None,
            n => Some(n as i32),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT",
        _ => "SIGTERM",
    }
}

/// This command line with `--restore PATH` in place of any `--restore`.
fn resume_command(path: &str) -> String {
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args() {
        if skip {
            skip = false;
            continue;
        }
        if a == "--restore" {
            skip = true;
            continue;
        }
        if a.starts_with("--restore=") {
            continue;
        }
        args.push(if a.is_empty() || a.contains([' ', '"', '\'', '$']) { format!("'{}'", a.replace('\'', "'\\''")) } else { a });
    }
    args.push("--restore".into());
    args.push(path.to_string());
    args.join(" ")
}
