//! Throughput of `throughput-windows` on generated payments, against a hand-written
//! single-threaded loop over the same events, measured in the same run.
//!
//! `cargo bench --bench throughput` (release profile). Environment: `EVENTS` (default 2000000),
//! `RUNS` (default 3; medians are reported).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use paystream::engine::checkpoint::CheckpointConfig;

use paystream::engine::job::RunPlan;
use paystream::engine::runtime::{run, RunOptions};
use paystream::engine::source::GenOptions;
use paystream::engine::Generate;
use paystream::jobs::{Payment, Status};

/// count, sum of amounts, approved count, max amount: the job's per-window statistics.
type Stats = (u64, i64, u64, i64);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// The same computation as the job, written by hand: generate, window, aggregate, in one loop.
fn baseline(events: u64) -> usize {
    let mut options = GenOptions::new([("count".to_string(), events.to_string())].into());
    let generator = Payment::generator(&mut options).expect("generator");
    let bound = 2_000;
    let mut open: BTreeMap<u64, HashMap<u64, Stats>> = BTreeMap::new();
    let mut results = 0usize;
    let mut max_ts = 0u64;
    // The job reads the generator's partitions round-robin; for the loop, the index order is the same data.
    for i in 0..generator.count {
        let p = (generator.record)(i);
        max_ts = max_ts.max(p.ts_ms);
        let watermark = max_ts.saturating_sub(bound);
        let end = p.ts_ms - p.ts_ms % 10_000 + 10_000;
        if end <= watermark {
            continue;
        }
        let acc = open.entry(end).or_default().entry(p.merchant_id).or_insert((0, 0, 0, i64::MIN));
        acc.0 += 1;
        acc.1 += p.amount_cents;
        acc.2 += u64::from(p.status == Status::Approved);
        acc.3 = acc.3.max(p.amount_cents);
        while let Some(entry) = open.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            results += entry.remove().len();
        }
    }
    results + open.values().map(HashMap::len).sum::<usize>()
}

fn main() {
    let events = env("EVENTS", 2_000_000);
    let runs = env("RUNS", 3) as usize;
    let jobs = paystream::jobs::all_jobs();
    let spec = jobs.iter().find(|j| j.name == "throughput-windows").expect("job");
    let dir = std::env::temp_dir().join("paystream-bench");
    let sources = [("payments".to_string(), format!("gen:count={events}"))].into();
    let sinks = [("windows".to_string(), format!("file:{}", dir.join("windows.csv").display()))].into();
    let plan = RunPlan::resolve(spec, &sources, &sinks, &BTreeMap::new()).expect("plan");

    println!("throughput-windows, {events} generated events, median of {runs} runs (release build)");
    println!("{:<32} {:>10} {:>14} {:>10}", "variant", "wall s", "events/s", "vs loop");
    let loop_secs = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(baseline(events));
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    println!("{:<32} {:>10.3} {:>14.0} {:>10}", "hand-written loop", loop_secs, events as f64 / loop_secs, "1.00x");
    let checkpoints = dir.join("checkpoints");
    let variants: [(&str, usize, Option<u64>); 4] = [
        ("paystream, 1 worker", 1, None),
        ("paystream, 2 workers", 2, None),
        ("paystream, 1 worker, chk 1s", 1, Some(1_000)),
        ("paystream, 1 worker, chk 200ms", 1, Some(200)),
    ];
    for (label, workers, interval_ms) in variants {
        let checkpoint =
            interval_ms.map(|ms| CheckpointConfig { dir: checkpoints.clone(), interval: Duration::from_millis(ms), retain: 3 });
        let options = RunOptions { workers, checkpoint, ..RunOptions::default() };
        let secs = median(
            (0..runs)
                .map(|_| {
                    std::fs::remove_dir_all(&checkpoints).ok();
                    run(&plan, &options).expect("run").elapsed.as_secs_f64()
                })
                .collect(),
        );
        println!("{:<32} {:>10.3} {:>14.0} {:>9.2}x", label, secs, events as f64 / secs, loop_secs / secs);
    }
}
