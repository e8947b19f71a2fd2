//! The `paystream` command line: `paystream jobs` and `paystream run`.
//!
//! Exit codes: 0 success, 1 the job failed while running, 2 a bad flag, config, URI or parameter
//! (nothing ran).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use paystream_engine::job::RunPlan;
use paystream_engine::runtime::{self, RunOptions};
use paystream_engine::{JobSpec, Result};
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
    /// Run a job until its input ends.
    ///
    /// With no --source or --sink a job reads its embedded default, the deterministic generator
    /// (1,000,000 events), and writes CSV files under ./out/JOB/.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The job to run (see `paystream jobs`).
    job: String,

    /// Worker threads in this process. Output does not depend on it.
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,

    /// Read source NAME from URI: `gen:[KEY=VALUE,...]` (the generator, see the README),
    /// `file:PATH.csv`, `file:PATH.jsonl`, or `file:DIR` (every .csv/.jsonl file in it). Repeatable.
    #[arg(long = "source", value_name = "NAME=URI", value_parser = parse_key_value)]
    sources: Vec<(String, String)>,

    /// Write sink NAME to URI: `file:PATH.csv`, `file:PATH.jsonl` or `stdout:`. Dead letters go to
    /// the sink `dead_letters` (default: dead_letters.csv beside the job's first file sink). Repeatable.
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

    /// Print no progress lines and no summary.
    #[arg(short, long)]
    quiet: bool,
}

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

fn read_config(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("config {}: {}", path.display(), e.to_string().trim()))
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

/// Runs the CLI over `jobs` and returns the process exit code. Call it from your own `main` to get
/// every subcommand for your own jobs.
pub fn main(jobs: Vec<JobSpec>) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Jobs => {
            print!("{}", describe_jobs(&jobs));
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(&jobs, args),
    }
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

fn plan_run(jobs: &[JobSpec], args: &RunArgs) -> Result<(RunPlan, RunOptions)> {
    let Some(spec) = jobs.iter().find(|j| j.name == args.job) else {
        let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
        bail!("no job named {:?}; the jobs are: {} (see `paystream jobs`)", args.job, names.join(", "));
    };
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let mut sources = config.sources;
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
    let plan = RunPlan::resolve(spec, &sources, &sinks, &params)?;
    if args.processes == 0 {
        bail!("--processes must be at least 1");
    }
    let hosts = match (&args.hosts, args.processes) {
        (Some(path), _) => read_hosts(path)?,
        (None, 1) => Vec::new(),
        (None, _) => bail!("--processes {} needs --hosts FILE with one host:port per process", args.processes),
    };
    let options = RunOptions {
        workers: args.workers.or(config.workers).unwrap_or(1),
        processes: args.processes,
        process: args.process,
        hosts,
        progress: !args.quiet,
        ..RunOptions::default()
    };
    if options.workers == 0 {
        bail!("--workers must be at least 1");
    }
    Ok((plan, options))
}

fn run(jobs: &[JobSpec], args: RunArgs) -> ExitCode {
    let (plan, options) = match plan_run(jobs, &args).and_then(|(plan, options)| runtime::check(&plan).map(|_| (plan, options))) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match runtime::run(&plan, &options) {
        Ok(summary) => {
            if !args.quiet {
                eprintln!("{}", runtime::describe(&plan, &options, &summary));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
