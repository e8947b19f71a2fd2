//! `paystream bench`: run a job several times and report what it cost.
//!
//! Per run: events read, wall seconds, events per second, CPU seconds (user + system of the whole
//! process, all worker threads), events per CPU-second, the process's peak resident memory, and
//! the latency of the results (from the ingestion of the record that completed each result to its
//! write by the sink; see `paystream_engine::latency`). Medians are over the runs. CPU time and
//! peak RSS come from `getrusage(2)`.
//!
//! Unpaced runs read as fast as the job goes, so their latency is mostly queueing behind the
//! sources; `--rate` paces the sources, and `--latency` measures the maximum throughput first and
//! then latency at 25%, 50% and 90% of it.

use std::fmt::Write;

use paystream_engine::job::RunPlan;
use paystream_engine::latency::LatencySummary;
use paystream_engine::runtime::{self, RunOptions};
use paystream_engine::Result;

/// CPU seconds used so far by this process (user + system, all threads), and its peak resident
/// memory in bytes.
pub fn usage() -> (f64, u64) {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_maxrss as u64 * 1024)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// One run's figures.
struct Sample {
    events: u64,
    wall: f64,
    cpu: f64,
    peak_mib: f64,
    latency: LatencySummary,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.events as f64 / self.wall.max(1e-9)
    }
    fn per_cpu(&self) -> f64 {
        self.events as f64 / self.cpu.max(1e-9)
    }
}

fn run_once(plan: &RunPlan, options: &RunOptions) -> Result<Sample> {
    let options = RunOptions { measure_latency: true, ..options.clone() };
    let (cpu_before, _) = usage();
    let summary = runtime::run(plan, &options)?;
    let (cpu_after, peak) = usage();
    Ok(Sample {
        events: summary.events_read,
        wall: summary.elapsed.as_secs_f64(),
        cpu: cpu_after - cpu_before,
        peak_mib: peak as f64 / (1 << 20) as f64,
        latency: summary.latency.unwrap_or_default(),
    })
}

const HEADER: [&str; 11] =
    ["run", "events", "wall s", "events/s", "cpu s", "events/cpu-s", "peak RSS MiB", "p50 ms", "p99 ms", "p99.9 ms", "max ms"];

fn row(out: &mut String, label: &str, s: &Sample) -> std::fmt::Result {
    let ms = |us: u64| us as f64 / 1000.0;
    let l = &s.latency;
    writeln!(
        out,
        "{label:>7} {:>11} {:>8.3} {:>11.0} {:>7.3} {:>13.0} {:>13.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1}",
        s.events,
        s.wall,
        s.rate(),
        s.cpu,
        s.per_cpu(),
        s.peak_mib,
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    )
}

fn header(out: &mut String, first: &str) -> std::fmt::Result {
    let mut h = HEADER;
    h[0] = first;
    writeln!(
        out,
        "{:>7} {:>11} {:>8} {:>11} {:>7} {:>13} {:>13} {:>8} {:>8} {:>9} {:>8}",
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10]
    )
}

/// The median of each column over the samples.
fn medians(samples: &[Sample]) -> Sample {
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Sample {
        events: m(&|s| s.events as f64) as u64,
        wall: m(&|s| s.wall),
        cpu: m(&|s| s.cpu),
        peak_mib: samples.iter().map(|s| s.peak_mib).fold(0.0, f64::max),
        latency: LatencySummary {
            count: m(&|s| s.latency.count as f64) as u64,
            p50: m(&|s| s.latency.p50 as f64) as u64,
            p99: m(&|s| s.latency.p99 as f64) as u64,
            p999: m(&|s| s.latency.p999 as f64) as u64,
            max: m(&|s| s.latency.max as f64) as u64,
        },
    }
}

/// Runs the job `runs` times and returns the table; with `latency_sweep`, then `runs` more times
/// at each of 25%, 50% and 90% of the median throughput, with a second table.
pub fn measure(plan: &RunPlan, options: &RunOptions, runs: usize, latency_sweep: bool) -> Result<String> {
    let profile = if cfg!(debug_assertions) { "debug build: numbers are not representative, use --release" } else { "release build" };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let paced = options.rate.map_or(String::new(), |r| format!(", paced at {r:.0} events/s"));
    let mut out = String::new();
    writeln!(
        out,
        "{}: {} worker(s) x {} process(es), {runs} run(s), {profile}, {cores} cores{paced}",
        plan.spec.name, options.workers, options.processes
    )?;
    writeln!(out, "latency: from the ingestion of the record that completed a result to its write by the sink")?;
    header(&mut out, "run")?;
    let mut samples = Vec::new();
    for run in 1..=runs {
        let s = run_once(plan, options)?;
        row(&mut out, &run.to_string(), &s)?;
        samples.push(s);
    }
    let med = medians(&samples);
    row(&mut out, "median", &med)?;
    if latency_sweep {
        let max = med.rate();
        writeln!(out, "\nlatency at a paced load, against the maximum of {max:.0} events/s measured above (medians of {runs} run(s)):")?;
        header(&mut out, "load")?;
        for percent in [25u32, 50, 90] {
            let rate = (max * percent as f64 / 100.0).max(1.0);
            let paced = RunOptions { rate: Some(rate), ..options.clone() };
            let samples = (0..runs).map(|_| run_once(plan, &paced)).collect::<Result<Vec<_>>>()?;
            row(&mut out, &format!("{percent}%"), &medians(&samples))?;
        }
    }
    Ok(out)
}
