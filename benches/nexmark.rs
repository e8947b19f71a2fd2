//! The Nexmark queries over the generator's events, with every sink discarding its rows: what
//! the queries cost, not the files they would write (Flink's published runs use a blackhole
//! sink too). One table: per query and worker count, the median of a few runs.
//!
//! `cargo bench --bench nexmark` (release profile). Environment: `EVENTS` (Nexmark events per
//! run, all kinds, default 10,000,000 as issue 19 asks), `RUNS` (default 3), `WORKERS` (default
//! `1,2`), `QUERIES` (a comma-separated subset such as `q3,q8`; default all).
//!
//! "events per CPU-s" counts all `EVENTS` Nexmark events, as Flink's figures do, over the CPU
//! time (user + system, all threads) of the run; a query's generator makes only the kinds it
//! reads (q0 reads 92% of them, the bids), and "records read" says how many that was. Rows are
//! still encoded as CSV lines before the sink drops them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use paystream::engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter};
use paystream::engine::job::RunPlan;
use paystream::engine::runtime::{run, RunOptions};
use paystream::engine::Format;

use common::{cpu_seconds, env, median};

const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// `null:`, a sink that drops what it is given.
struct NullSink;

impl SinkConnector for NullSink {
    fn scheme(&self) -> &'static str {
        "null"
    }
    fn usage(&self) -> &'static str {
        "null: (drops every row)"
    }
    fn open(&self, _sink: &str, _uri: &str) -> paystream::engine::Result<Arc<dyn SinkTarget>> {
        Ok(Arc::new(NullTarget))
    }
}

#[derive(Debug)]
struct NullTarget;

impl SinkTarget for NullTarget {
    fn format(&self) -> Format {
        Format::Csv
    }
    fn describe(&self) -> String {
        "nowhere".to_string()
    }
    fn recover(&self, _recovery: &Recovery) -> paystream::engine::Result<()> {
        Ok(())
    }
    fn writer(&self, _context: &SinkContext) -> paystream::engine::Result<Box<dyn SinkWriter>> {
        Ok(Box::new(NullWriter { rows: 0 }))
    }
}

struct NullWriter {
    rows: u64,
}

impl SinkWriter for NullWriter {
    fn write(&mut self, _epoch: u64, lines: Vec<String>) -> paystream::engine::Result<()> {
        self.rows += lines.len() as u64;
        Ok(())
    }
    fn pre_commit(&mut self, _epoch: u64) -> paystream::engine::Result<Progress<Option<Vec<u8>>>> {
        Ok(Progress::Ready(None))
    }
    fn commit(&mut self, _epoch: u64, _committable: &[u8]) -> paystream::engine::Result<Progress> {
        Ok(Progress::Ready(()))
    }
    fn finish(&mut self) -> paystream::engine::Result<Progress> {
        Ok(Progress::Ready(()))
    }
}

fn main() {
    let events = env("EVENTS", 10_000_000);
    let runs = env("RUNS", 3).max(1) as usize;
    let workers: Vec<usize> = std::env::var("WORKERS")
        .unwrap_or_else(|_| "1,2".to_string())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .filter(|w| *w > 0)
        .collect();
    let only = std::env::var("QUERIES").ok();
    let connectors = Arc::new(paystream::connectors().sink(NullSink));
    let jobs = paystream::jobs::all_jobs();
    let profile = if cfg!(debug_assertions) { "debug build: not representative" } else { "release build" };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("Nexmark queries, {events} events from the generator, null sinks, median of {runs} runs, {profile}, {cores} cores");
    println!(
        "{:<6} {:>7} {:>12} {:>8} {:>7} {:>16} {:>18}",
        "query", "workers", "records read", "wall s", "cpu s", "events per CPU-s", "records per CPU-s"
    );
    for query in QUERIES {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|q| q.trim() == query)) {
            continue;
        }
        let name = format!("nexmark-{query}");
        let spec = jobs.iter().find(|j| j.name == name).expect("a Nexmark job");
        // Every source from the same generator options: one consistent stream of events.
        let sources: BTreeMap<String, String> = spec.sources.iter().map(|s| (s.name.to_string(), format!("gen:count={events}"))).collect();
        let sinks: BTreeMap<String, String> =
            spec.sinks.iter().map(|s| s.name).chain(["dead_letters"]).map(|s| (s.to_string(), "null:".to_string())).collect();
        let plan = RunPlan::resolve(spec, &sources, &sinks, &BTreeMap::new(), connectors.clone()).expect("plan");
        for &w in &workers {
            let (mut walls, mut cpus, mut read) = (Vec::new(), Vec::new(), 0);
            for _ in 0..runs {
                let options = RunOptions { workers: w, ..RunOptions::default() };
                let before = cpu_seconds();
                let summary = run(&plan, &options).expect("the query runs");
                cpus.push(cpu_seconds() - before);
                walls.push(summary.elapsed.as_secs_f64());
                read = summary.events_read;
            }
            let (wall, cpu) = (median(walls), median(cpus));
            println!("{query:<6} {w:>7} {read:>12} {wall:>8.3} {cpu:>7.3} {:>16.0} {:>18.0}", events as f64 / cpu, read as f64 / cpu);
        }
    }
}
