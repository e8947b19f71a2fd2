//! Throughput of the four benchmark jobs from the generator and from CSV files, at 1 and 2
//! workers, with and without checkpoints: one table.
//!
//! `cargo bench --bench jobs` (release profile). Environment: `EVENTS` (payments and
//! authorizations per run, default 200000), `RUNS` (default 3; medians are reported), `JOBS`
//! (comma-separated subset of the jobs). CSV inputs are written once, before any timing, into a
//! temporary directory as four files per source (so that two workers each read two), holding the
//! same records as the generator's sequence.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paystream::engine::checkpoint::CheckpointConfig;
use paystream::engine::job::RunPlan;
use paystream::engine::record::CsvRecord;
use paystream::engine::runtime::{run, RunOptions};
use paystream::engine::source::GenOptions;
use paystream::engine::Generate;
use paystream::jobs::{Authorization, BlockedCard, Payment};

use common::{cpu_seconds, env, median};

const JOBS: [&str; 4] = ["throughput-windows", "card-velocity", "auth-match", "fraud-detection"];
const FILES_PER_SOURCE: u64 = 4;

/// Writes the generator's first `count` records of type `T` as CSV, dealt over four files.
fn write_csv<T: Generate + CsvRecord>(dir: &Path, count: u64) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the input directory");
    let mut options = GenOptions::new([("count".to_string(), count.to_string())].into());
    let generator = T::generator(&mut options).expect("generator");
    let mut files: Vec<std::io::BufWriter<std::fs::File>> = (0..FILES_PER_SOURCE)
        .map(|f| {
            let mut w = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("part-{f}.csv"))).expect("create an input file"));
            writeln!(w, "{}", T::csv_header()).expect("write");
            w
        })
        .collect();
    let mut line = String::new();
    for i in 0..generator.count {
        line.clear();
        (generator.record)(i).write_csv(&mut line);
        writeln!(files[(i % FILES_PER_SOURCE) as usize], "{line}").expect("write");
    }
    for mut f in files {
        f.flush().expect("flush");
    }
    dir.to_path_buf()
}

fn main() {
    let events = env("EVENTS", 200_000);
    let runs = env("RUNS", 3).max(1) as usize;
    let only = std::env::var("JOBS").ok();
    let root = std::env::temp_dir().join(format!("paystream-bench-jobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // The inputs every job reads: the generator's default shapes, so that a CSV run reads exactly
    // the records its generator twin produces.
    let counts: BTreeMap<&str, u64> = [("payments", events), ("authorizations", events), ("blocked_cards", 1_000)].into();
    let mut csv_dirs: BTreeMap<&str, PathBuf> = BTreeMap::new();
    csv_dirs.insert("payments", write_csv::<Payment>(&root.join("payments"), counts["payments"]));
    csv_dirs.insert("authorizations", write_csv::<Authorization>(&root.join("authorizations"), counts["authorizations"]));
    csv_dirs.insert("blocked_cards", write_csv::<BlockedCard>(&root.join("blocked_cards"), counts["blocked_cards"]));

    let jobs = paystream::jobs::all_jobs();
    let profile = if cfg!(debug_assertions) { "debug build: not representative" } else { "release build" };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "jobs from the generator and from CSV, {events} payments (and authorizations), median of {runs} runs, {profile}, {cores} cores"
    );
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<20} {:>5} {:>7} {:>11} {:>10} {:>8} {:>11} {:>7} {:>13}",
        "job", "input", "workers", "checkpoint", "events", "wall s", "events/s", "cpu s", "CPU-µs/event"
    );
    print!("{table}");
    for name in JOBS {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|j| j.trim() == name)) {
            continue;
        }
        let spec = jobs.iter().find(|j| j.name == name).expect("a benchmark job");
        for input in ["gen", "csv"] {
            let sources: BTreeMap<String, String> = spec
                .sources
                .iter()
                .map(|s| {
                    let uri = match input {
                        "gen" => format!("gen:count={}", counts[s.name]),
                        _ => format!("file:{}", csv_dirs[s.name].display()),
                    };
                    (s.name.to_string(), uri)
                })
                .collect();
            let out = root.join("out").join(name);
            let first_sink = spec.sinks.first().expect("a sink").name;
            let sinks = [(first_sink.to_string(), format!("file:{}", out.join(format!("{first_sink}.csv")).display()))].into();
            let plan =
                RunPlan::resolve(spec, &sources, &sinks, &BTreeMap::new(), std::sync::Arc::new(paystream::connectors())).expect("plan");
            for workers in [1, 2] {
                for interval in [None, Some(Duration::from_secs(1))] {
                    let (mut walls, mut cpus, mut read) = (Vec::new(), Vec::new(), 0);
                    for _ in 0..runs {
                        let checkpoint = interval.map(|interval| CheckpointConfig { dir: root.join("checkpoints"), interval, retain: 3 });
                        let _ = std::fs::remove_dir_all(root.join("checkpoints"));
                        let options = RunOptions { workers, checkpoint, ..RunOptions::default() };
                        let before = cpu_seconds();
                        let summary = run(&plan, &options).expect("the job runs");
                        cpus.push(cpu_seconds() - before);
                        walls.push(summary.elapsed.as_secs_f64());
                        read = summary.events_read;
                    }
                    let (wall, cpu) = (median(walls), median(cpus));
                    let chk = interval.map_or("none".to_string(), |i| format!("{} s", i.as_secs()));
                    println!(
                        "{name:<20} {input:>5} {workers:>7} {chk:>11} {read:>10} {wall:>8.3} {:>11.0} {cpu:>7.3} {:>13.2}",
                        read as f64 / wall,
                        cpu * 1e6 / read.max(1) as f64
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
