//! `paystream bench`: run a job several times and report what it cost.
//!
//! Per run: events read, wall seconds, events per second, CPU seconds (user + system of the whole
//! process, all worker threads), events per CPU-second; and the process's peak resident memory.
//! Medians are over the runs. CPU time and peak RSS come from `getrusage(2)`.

use std::fmt::Write;

use paystream_engine::job::RunPlan;
use paystream_engine::runtime::{self, RunOptions};
use paystream_engine::Result;

/// CPU seconds used so far by this process, and its peak resident memory in bytes.
fn usage() -> (f64, u64) {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_maxrss as u64 * 1024)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Runs the job `runs` times and returns the table.
pub fn measure(plan: &RunPlan, options: &RunOptions, runs: usize) -> Result<String> {
    let profile = if cfg!(debug_assertions) { "debug build: numbers are not representative, use --release" } else { "release build" };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    writeln!(
        out,
        "{}: {} worker(s) x {} process(es), {runs} run(s), {profile}, {cores} cores",
        plan.spec.name, options.workers, options.processes
    )?;
    writeln!(
        out,
        "{:>6} {:>12} {:>9} {:>13} {:>8} {:>15} {:>13}",
        "run", "events", "wall s", "events/s", "cpu s", "events/cpu-s", "peak RSS MiB"
    )?;
    let (mut walls, mut rates, mut cpus, mut per_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut events = 0;
    for run in 1..=runs {
        let (cpu_before, _) = usage();
        let summary = runtime::run(plan, options)?;
        let (cpu_after, peak) = usage();
        let (wall, cpu) = (summary.elapsed.as_secs_f64(), cpu_after - cpu_before);
        events = summary.events_read;
        let (rate, rate_cpu) = (events as f64 / wall.max(1e-9), events as f64 / cpu.max(1e-9));
        writeln!(
            out,
            "{run:>6} {events:>12} {wall:>9.3} {rate:>13.0} {cpu:>8.3} {rate_cpu:>15.0} {:>13.1}",
            peak as f64 / (1 << 20) as f64
        )?;
        walls.push(wall);
        rates.push(rate);
        cpus.push(cpu);
        per_cpu.push(rate_cpu);
    }
    let (_, peak) = usage();
    writeln!(
        out,
        "{:>6} {events:>12} {:>9.3} {:>13.0} {:>8.3} {:>15.0} {:>13.1}",
        "median",
        median(walls),
        median(rates),
        median(cpus),
        median(per_cpu),
        peak as f64 / (1 << 20) as f64
    )?;
    Ok(out)
}
