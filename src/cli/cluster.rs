//! The cluster subcommands: `coordinator` and `agent` (the services), and `submit`, `list`,
//! `status`, `cancel`, `stop` and `savepoint JOB_ID` (clients of a coordinator's HTTP API).
//!
//! Clients find the coordinator at `--cluster URL`, else `$PAYSTREAM_CLUSTER`, else
//! `http://127.0.0.1:7070`. Exit codes: 0 done, 1 the coordinator refused or could not be reached
//! (one `error:` line), 2 a bad flag.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use paystream_cluster::agent::AgentConfig;
use paystream_cluster::api::{JobSummary, SavepointAnswer, SubmitRequest};
use paystream_cluster::client::{api_error, Client};
use paystream_cluster::coordinator::CoordinatorConfig;
use paystream_cluster::job::RestartStrategy;
use paystream_engine::{JobSpec, Result};
use serde_json::Value;

use super::{parse_duration, parse_key_value};

/// The coordinator's default address.
const DEFAULT_CLUSTER: &str = "http://127.0.0.1:7070";

/// How a client finds and proves itself to the coordinator.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct ClusterArgs {
    /// The coordinator [default: $PAYSTREAM_CLUSTER, else http://127.0.0.1:7070].
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// File holding the coordinator's token, when it has one (--token-file of the coordinator).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Output {
    Text,
    Json,
}

impl ClusterArgs {
    fn client(&self) -> Result<Client> {
        let url = self.cluster.clone().or_else(|| std::env::var("PAYSTREAM_CLUSTER").ok().filter(|u| !u.is_empty()));
        let token = self.token_file.as_deref().map(paystream_cluster::read_token).transpose()?;
        Client::new(url.as_deref().unwrap_or(DEFAULT_CLUSTER), token)
    }
}

#[derive(clap::Args, Debug)]
pub(super) struct CoordinatorArgs {
    /// Address of the HTTP API. Anything but a loopback address needs --token-file.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Where job records are kept (they survive a restart of the coordinator).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// File holding a token (at least 16 bytes) every request must carry (`Authorization: Bearer
    /// TOKEN`); requests without it get 401. Agents and clients take the same file.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Restarts allowed within --restart-window; one more and the job fails.
    #[arg(long, value_name = "N", default_value_t = 10)]
    restart_attempts: u32,
    /// The window the restart limit counts in.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    restart_window: Duration,
    /// Wait before the first restart; doubled for each further restart within the window, up to
    /// --restart-backoff-max.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    restart_backoff: Duration,
    /// The longest wait before a restart.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    restart_backoff_max: Duration,
    /// An agent silent this long is lost, and its processes with it (the jobs restart elsewhere).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    agent_timeout: Duration,
    #[command(flatten)]
    pub(super) log: crate::logging::LogArgs,
}

#[derive(clap::Args, Debug)]
pub(super) struct AgentArgs {
    /// The coordinator [default: $PAYSTREAM_CLUSTER, else http://127.0.0.1:7070].
    #[arg(long, value_name = "URL")]
    coordinator: Option<String>,
    /// Job processes this node runs at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    slots: usize,
    /// Where the processes' logs and hosts files go.
    #[arg(long, value_name = "DIR")]
    work_dir: PathBuf,
    /// The agent's name at the coordinator [default: agent-HOST-PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The address job processes listen on for their peers. Anything but a loopback address
    /// needs --token-file.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// File holding the coordinator's token.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Time between heartbeats.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    heartbeat: Duration,
    #[command(flatten)]
    pub(super) log: crate::logging::LogArgs,
}

#[derive(clap::Args, Debug)]
pub(super) struct SubmitArgs {
    /// The job to run (see `paystream jobs`).
    job: String,
    /// As `run --source`. Relative paths are read from this directory, on every agent.
    #[arg(long = "source", value_name = "NAME=URI", value_parser = parse_key_value)]
    sources: Vec<(String, String)>,
    /// As `run --sink`.
    #[arg(long = "sink", value_name = "NAME=URI", value_parser = parse_key_value)]
    sinks: Vec<(String, String)>,
    /// As `run --set`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    params: Vec<(String, String)>,
    /// As `run --config`.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Worker threads in each process.
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,
    /// Processes of the job, each on one agent slot.
    #[arg(long, value_name = "N", default_value_t = 1)]
    processes: usize,
    /// Where the job checkpoints (a directory every agent reaches). Without it a job whose
    /// process dies restarts from scratch.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// As `run --checkpoint-interval`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    checkpoint_interval: Option<Duration>,
    /// As `run --rate`: pace each process's sources at this many events per second.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = super::parse_rate)]
    rate: Option<f64>,
    /// Run the job with this binary (one built on `paystream::cli::main`, with your jobs),
    /// uploaded to the coordinator and fetched by the agents; without it, the agents' own.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Start from this savepoint (or checkpoint), at any parallelism.
    #[arg(long, value_name = "PATH")]
    from_savepoint: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(clap::Args, Debug)]
pub(super) struct JobIdArgs {
    /// The job's id, as `submit` printed it (see `paystream list`).
    job_id: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub(super) fn coordinator(args: CoordinatorArgs) -> ExitCode {
    let token = match args.token_file.as_deref().map(paystream_cluster::read_token).transpose() {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    if !args.listen.ip().is_loopback() && token.is_none() {
        let error = anyhow!(
            "--listen {} is reachable from other machines: give --token-file FILE so every request must carry the token",
            args.listen
        );
        return fail(2, error);
    }
    let config = CoordinatorConfig {
        listen: args.listen,
        state_dir: args.state_dir,
        token,
        restart: RestartStrategy {
            attempts: args.restart_attempts,
            window: args.restart_window,
            backoff: args.restart_backoff,
            max_backoff: args.restart_backoff_max.max(args.restart_backoff),
        },
        agent_timeout: args.agent_timeout,
    };
    match paystream_cluster::run_coordinator(config, |address| eprintln!("coordinator listening on http://{address}")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

pub(super) fn agent(args: AgentArgs) -> ExitCode {
    let configured = (|| -> Result<AgentConfig> {
        if args.slots == 0 {
            bail!("--slots must be at least 1");
        }
        let loopback = args.host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(args.host == "localhost");
        if !loopback && args.token_file.is_none() {
            bail!("--host {} is reachable from other machines: give --token-file FILE (the coordinator's token)", args.host);
        }
        let token = args.token_file.as_deref().map(paystream_cluster::read_token).transpose()?;
        let url = args.coordinator.clone().or_else(|| std::env::var("PAYSTREAM_CLUSTER").ok().filter(|u| !u.is_empty()));
        let executable = std::env::current_exe().context("cannot find this binary to start job processes with")?;
        let work_dir = std::path::absolute(&args.work_dir).with_context(|| format!("--work-dir {}", args.work_dir.display()))?;
        Ok(AgentConfig {
            coordinator: Client::new(url.as_deref().unwrap_or(DEFAULT_CLUSTER), token)?,
            name: args.name.clone().unwrap_or_else(|| format!("agent-{}-{}", args.host, std::process::id())),
            slots: args.slots,
            work_dir,
            host: args.host.clone(),
            heartbeat: args.heartbeat,
            executable,
        })
    })();
    let config = match configured {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    // SIGTERM or SIGINT ends the agent; its job processes keep running (the coordinator declares
    // the agent lost and restarts them elsewhere, killing these when the agent returns).
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            return fail(1, anyhow!("cannot install signal handlers: {e}"));
        }
    }
    eprintln!("agent {} with {} slots, coordinator {}", config.name, config.slots, config.coordinator.url);
    match paystream_cluster::agent::run(config, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

pub(super) fn submit(jobs: &[JobSpec], args: SubmitArgs) -> ExitCode {
    let request = match submit_request(jobs, &args) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let upload = match &args.binary {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => return fail(2, anyhow!("cannot read --binary {}: {e}", path.display())),
        },
        None => None,
    };
    call(&args.cluster, |client| async move {
        let mut request = request;
        if let Some(bytes) = upload {
            let stored: paystream_cluster::api::BinaryAnswer = client.post_bytes("/api/binaries", bytes, Duration::from_secs(600)).await?;
            request.binary = Some(stored.sha256);
        }
        let view: Value = client.post("/api/jobs", &request, Duration::from_secs(30)).await?;
        Ok(match args.cluster.output {
            Output::Json => format!("{view}"),
            Output::Text => view["id"].as_str().unwrap_or_default().to_string(),
        })
    })
}

fn submit_request(jobs: &[JobSpec], args: &SubmitArgs) -> Result<SubmitRequest> {
    // A binary of the user's own has jobs this one does not know: its processes check the name.
    if args.binary.is_none() && !jobs.iter().any(|j| j.name == args.job) {
        let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
        bail!("no job named {:?}; the jobs are: {} (see `paystream jobs`)", args.job, names.join(", "));
    }
    if args.processes == 0 {
        bail!("--processes must be at least 1");
    }
    if args.checkpoint_interval.is_some() && args.checkpoint_dir.is_none() {
        bail!("--checkpoint-interval needs --checkpoint-dir DIR");
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let absolute = |p: &Path| cwd.join(p);
    let mut run_args = Vec::new();
    for (flag, given) in [("--source", &args.sources), ("--sink", &args.sinks), ("--set", &args.params)] {
        for (name, value) in given {
            run_args.push(flag.to_string());
            run_args.push(format!("{name}={value}"));
        }
    }
    if let Some(config) = &args.config {
        run_args.extend(["--config".to_string(), absolute(config).display().to_string()]);
    }
    if let Some(workers) = args.workers {
        run_args.extend(["--workers".to_string(), workers.to_string()]);
    }
    if let Some(rate) = args.rate {
        run_args.extend(["--rate".to_string(), rate.to_string()]);
    }
    if let Some(interval) = args.checkpoint_interval {
        run_args.extend(["--checkpoint-interval".to_string(), format!("{}ms", interval.as_millis())]);
    }
    Ok(SubmitRequest {
        job: args.job.clone(),
        run_args,
        processes: args.processes,
        checkpoint_dir: args.checkpoint_dir.as_deref().map(absolute),
        from_savepoint: args.from_savepoint.as_deref().map(absolute),
        cwd: cwd.clone(),
        binary: None,
    })
}

pub(super) fn list(args: ClusterArgs) -> ExitCode {
    let output = args.output;
    call(&args, |client| async move {
        let jobs: Vec<JobSummary> = client.get("/api/jobs", Duration::from_secs(30)).await?;
        Ok(match output {
            Output::Json => serde_json::to_string(&jobs)?,
            Output::Text => {
                let mut text = format!("{:<10} {:<11} {:>8} {:>9}  JOB", "ID", "STATE", "RESTARTS", "PROCESSES");
                for j in &jobs {
                    text.push_str(&format!("\n{:<10} {:<11} {:>8} {:>9}  {}", j.id, j.state, j.restarts, j.processes, j.job));
                }
                text
            }
        })
    })
}

pub(super) fn status(args: JobIdArgs) -> ExitCode {
    let output = args.cluster.output;
    let path = format!("/api/jobs/{}", args.job_id);
    call(&args.cluster, |client| async move {
        let view: Value = client.get(&path, Duration::from_secs(30)).await?;
        Ok(match output {
            Output::Json => format!("{view}"),
            Output::Text => describe_status(&view),
        })
    })
}

pub(super) fn cancel(args: JobIdArgs) -> ExitCode {
    let output = args.cluster.output;
    let path = format!("/api/jobs/{}/cancel", args.job_id);
    call(&args.cluster, |client| async move {
        let view: Value = client.post(&path, &(), Duration::from_secs(30)).await?;
        Ok(match output {
            Output::Json => format!("{view}"),
            Output::Text => format!("{}: {}", view["id"].as_str().unwrap_or_default(), view["state"].as_str().unwrap_or_default()),
        })
    })
}

/// `stop JOB_ID` (with `stop`) and `savepoint JOB_ID`: prints the savepoint's path.
pub(super) fn savepoint(job_id: &str, cluster: &ClusterArgs, stop: bool) -> ExitCode {
    let output = cluster.output;
    let path = format!("/api/jobs/{job_id}/{}", if stop { "stop" } else { "savepoint" });
    call(cluster, |client| async move {
        let answer: SavepointAnswer = client.post(&path, &(), Duration::from_secs(180)).await?;
        Ok(match output {
            Output::Json => serde_json::to_string(&answer)?,
            Output::Text => answer.savepoint.display().to_string(),
        })
    })
}

pub(super) fn stop(args: JobIdArgs) -> ExitCode {
    savepoint(&args.job_id, &args.cluster, true)
}

/// Runs one request against the coordinator and prints its answer, or one `error:` line.
fn call<F, Fut>(args: &ClusterArgs, request: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let client = match args.client() {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    let url = client.url.clone();
    match paystream_cluster::block_on(request(client)).and_then(|r| r) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => match api_error(&e) {
            Some(api) => fail(1, anyhow!("{}", api.message)),
            None if is_unreachable(&e) => fail(
                1,
                anyhow!("cannot reach the coordinator at {url} ({}): is `paystream coordinator` running there? (--cluster URL or PAYSTREAM_CLUSTER)", root_cause(&e)),
            ),
            None => fail(1, e),
        },
    }
}

fn is_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()) || format!("{error:#}").contains("cannot reach")
}

fn root_cause(error: &anyhow::Error) -> String {
    error.root_cause().to_string()
}

fn fail(code: u8, error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(code)
}

/// `status` for people.
fn describe_status(view: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!("{} {}\n", text(&view["id"]), text(&view["spec"]["job"]));
    let uptime = view["uptime_ms"]
        .as_u64()
        .map(|ms| format!(" (up {})", paystream_cluster::job::humanize(Duration::from_secs(ms / 1000))))
        .unwrap_or_default();
    out.push_str(&format!("  state:           {}{uptime}\n", text(&view["state"])));
    if let Some(waiting) = view["waiting_for"].as_str() {
        out.push_str(&format!("  waiting for:     {waiting}\n"));
    }
    out.push_str(&format!("  restarts:        {}\n", view["restarts"]));
    out.push_str(&format!("  attempt:         {}\n", view["attempt"]));
    out.push_str(&format!("  processes:       {}\n", view["spec"]["processes"]));
    if let Some(from) = view["restored_from"].as_str() {
        out.push_str(&format!("  restored from:   {from}\n"));
    }
    out.push_str(&format!("  last checkpoint: {}\n", text(&view["last_checkpoint"])));
    for savepoint in view["savepoints"].as_array().into_iter().flatten() {
        out.push_str(&format!("  savepoint:       {}\n", text(savepoint)));
    }
    if let Some(error) = view["last_error"].as_str() {
        out.push_str(&format!("  last error:      {error}\n"));
    }
    for p in view["placements"].as_array().into_iter().flatten() {
        let pid = p["pid"].as_u64().map(|p| format!("pid {p}")).unwrap_or_else(|| "starting".into());
        let how = match p["exit"].is_null() {
            true => "running".to_string(),
            false => format!("ended: {}", exit_text(&p["exit"])),
        };
        let metrics = p["metrics_address"].as_str().map(|a| format!(", metrics http://{a}/metrics")).unwrap_or_default();
        out.push_str(&format!("  process {} on {} at {}, {pid}, {how}{metrics}\n", p["process"], text(&p["agent"]), text(&p["address"])));
    }
    if let Ok(m) = serde_json::from_value::<paystream_cluster::scrape::JobMetrics>(view["metrics"].clone()) {
        out.push_str(&describe_metrics(&m));
    }
    out.push_str("  history:\n");
    for t in view["history"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "    {} {} -> {}: {}\n",
            clock(t["at_ms"].as_u64().unwrap_or(0)),
            text(&t["from"]),
            text(&t["to"]),
            text(&t["cause"])
        ));
    }
    out.trim_end().to_string()
}

/// The figures the coordinator last read from the job's processes.
fn describe_metrics(m: &paystream_cluster::scrape::JobMetrics) -> String {
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "-".into());
    let age = paystream_cluster::now_ms().saturating_sub(m.at_ms);
    let mut out = format!("  metrics (attempt {}, read {:.1} s ago):\n", m.attempt, age as f64 / 1000.0);
    out.push_str(&format!("    events read:     {} ({:.0}/s)\n", m.events_read, m.events_per_second));
    out.push_str(&format!("    watermark lag:   {}\n", ms(m.watermark_lag_ms.map(|l| l as f64))));
    out.push_str(&format!("    backpressure:    {} source pauses ({:.1}/s)\n", m.backpressure_waits, m.backpressure_waits_per_second));
    out.push_str(&format!("    latency:         p50 {}, p99 {}\n", ms(m.latency_p50_ms), ms(m.latency_p99_ms)));
    if let Some(c) = &m.checkpoints {
        let epoch = c.last_completed_epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into());
        let size = c.last_size_bytes.map(|b| format!("{b} bytes")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "    checkpoints:     {} completed, {} failed; last epoch {epoch}, {}, {size}\n",
            c.completed,
            c.failures,
            ms(c.last_duration_ms)
        ));
    }
    out.push_str(&format!("    {:<24} {:>14} {:>10} {:>14} {:>10}\n", "STEP", "RECORDS IN", "IN/S", "RECORDS OUT", "OUT/S"));
    for s in &m.steps {
        out.push_str(&format!(
            "    {:<24} {:>14} {:>10.0} {:>14} {:>10.0}\n",
            s.step, s.records_in, s.records_in_per_second, s.records_out, s.records_out_per_second
        ));
    }
    for e in &m.scrape_errors {
        out.push_str(&format!("    unread: {e}\n"));
    }
    out
}

fn exit_text(exit: &Value) -> String {
    serde_json::from_value::<paystream_cluster::api::ProcessExit>(exit.clone()).map(|e| e.describe()).unwrap_or_else(|_| exit.to_string())
}

/// `HH:MM:SS.mmm` UTC of a time in ms since the epoch.
fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000)
}
