//! Running a job: on worker threads of one process, or on several processes with timely's cluster
//! mode; with a progress line while it runs and a summary when it ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use crate::job::{JobBuilder, RunPlan};
use crate::metrics::Metrics;
use crate::time::format_ts_ms;
use crate::uri::SinkUri;
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 1, processes: 1, process: 0, hosts: Vec::new(), progress: false, progress_every: Duration::from_secs(2) }
    }
}

impl RunOptions {
    /// Checks the options and builds timely's configuration.
    fn timely_config(&self) -> Result<timely::Config> {
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        let total = self.workers * self.processes;
        if total as u64 > crate::keygroup::KEY_GROUPS {
            bail!(
                "{total} workers in all exceed the {} key groups; use at most {} workers",
                crate::keygroup::KEY_GROUPS,
                crate::keygroup::KEY_GROUPS
            );
        }
        let communication = if self.processes <= 1 {
            timely::CommunicationConfig::Process(self.workers)
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
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.hosts[..self.processes].to_vec(),
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
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
}

/// Builds the job once on one thread without running it, to report a bad parameter, source or
/// job structure before any worker starts.
pub fn check(plan: &RunPlan) -> Result<()> {
    let plan = Arc::new(plan.clone());
    timely::execute_directly(move |worker| {
        let metrics = Arc::new(Metrics::new(1));
        worker.dataflow::<u64, _, _>(|scope| {
            let mut builder = JobBuilder::new(scope, plan.clone(), metrics, true);
            let params = plan.params.clone();
            (plan.spec.build)(&mut builder, &params).and_then(|_| builder.finish()).map_err(|e| e.to_string())
        })
    })
    .map_err(|e| anyhow!(e))
}

/// Runs a job to completion.
pub fn run(plan: &RunPlan, options: &RunOptions) -> Result<Summary> {
    let config = options.timely_config()?;
    let plan = Arc::new(plan.clone());
    let metrics = Arc::new(Metrics::new(options.workers));
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let reporter = options.progress.then(|| {
        let (metrics, done, every) = (metrics.clone(), done.clone(), options.progress_every);
        let name = plan.spec.name;
        std::thread::spawn(move || report_progress(name, &metrics, &done, start, every))
    });

    let worker_metrics = metrics.clone();
    let guards = timely::execute(config, move |worker| {
        let plan = plan.clone();
        let metrics = worker_metrics.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let mut builder = JobBuilder::new(scope, plan.clone(), metrics, false);
            let params = plan.params.clone();
            (plan.spec.build)(&mut builder, &params).and_then(|_| builder.finish()).map_err(|e| e.to_string())
        })
    })
    .map_err(|e| anyhow!("cannot start the workers: {e}"))?;
    let results = guards.join();
    done.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(panic) => bail!("a worker failed: {panic}"),
        }
    }
    Ok(Summary { events_read: metrics.events_read(), elapsed: start.elapsed(), counters: metrics.counters(), gauges: metrics.gauges() })
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
    for (name, uri) in &plan.sinks {
        if let Some(n) = summary.counters.get(&format!("written:{name}")) {
            let target = match uri {
                SinkUri::File(p, _) => p.display().to_string(),
                SinkUri::Stdout => "stdout".to_string(),
            };
            out.push_str(&format!("\n  {name}: {} records -> {target}", group_digits(*n)));
        }
    }
    for (name, n) in summary.counters.iter().chain(&summary.gauges) {
        if !name.starts_with("written:") {
            out.push_str(&format!("\n  {name}: {}", group_digits(*n)));
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
