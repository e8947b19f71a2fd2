//! The PostgreSQL sink and the NATS JetStream source, each beside the file connector in the same
//! run: window rows per second into PostgreSQL (append and upsert, 1 and 2 workers, both commit
//! protocols) with the paystream CPU each row costs, and NATS source events per CPU-second.
//!
//! `cargo bench --bench postgres_nats` (release profile). Needs PostgreSQL on
//! `PAYSTREAM_POSTGRES` (default 127.0.0.1:5432, user postgres, database test; its protocol is
//! whatever `commit=auto` finds there) and, for the prepared-transaction protocol,
//! `PAYSTREAM_POSTGRES_PREPARED` (a server with `max_prepared_transactions` above 0; skipped when
//! unset); NATS with JetStream on `PAYSTREAM_NATS` (default 127.0.0.1:4222). A part whose server
//! does not answer is skipped with a message. Environment: `PAYMENTS` (default 1000000),
//! `RUNS` (default 3; medians are reported), `PARTS` (`postgres,nats`).
//!
//! Two jobs write rows: `throughput-windows` with 1 s windows over 100,000 merchants chosen
//! uniformly, so that most payments of a window have a merchant of their own (about 0.7 window
//! rows per payment, each costly to make: a p99 histogram per window and merchant), and
//! `generate-payments`, which copies generated payments (cheap rows: the sink's own cost shows).
//! Checkpoints every second in every run (the sinks' exactly-once path). CPU is this process's
//! (the job's), not the database server's; "sink CPU-µs/row" is the difference to the file sink
//! in the same run.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use paystream::engine::checkpoint::CheckpointConfig;
use paystream::engine::job::RunPlan;
use paystream::engine::runtime::{run, RunOptions, Summary};

use common::{cpu_seconds, env, median};

fn answers(address: &str) -> bool {
    address.parse().is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn psql(server: &str, sql: &str) {
    let (host, port) = server.rsplit_once(':').expect("HOST:PORT");
    let ok = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "postgres", "-d", "test", "-X", "-q", "-c", sql])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "psql {sql:?} against {server}");
}

/// One configuration's median wall and CPU seconds over `runs`, and its last summary.
fn measure(
    job: &str,
    sources: &[(&str, String)],
    sinks: &[(&str, String)],
    sets: &[(&str, &str)],
    workers: usize,
    (runs, root): (usize, &Path),
    before_each: &dyn Fn(),
) -> (f64, f64, Summary) {
    let jobs = paystream::jobs::all_jobs();
    let spec = jobs.iter().find(|j| j.name == job).expect("a job");
    let sources: BTreeMap<String, String> = sources.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let sinks: BTreeMap<String, String> = sinks.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let params: BTreeMap<String, String> = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let plan = RunPlan::resolve(spec, &sources, &sinks, &params, Arc::new(paystream::connectors())).expect("plan");
    let (mut walls, mut cpus, mut last) = (Vec::new(), Vec::new(), None);
    for _ in 0..runs {
        before_each();
        let dir = root.join("checkpoints");
        let _ = std::fs::remove_dir_all(&dir);
        let checkpoint = Some(CheckpointConfig { dir, interval: Duration::from_secs(1), retain: 3 });
        let options = RunOptions { workers, checkpoint, ..RunOptions::default() };
        let before = cpu_seconds();
        let summary = run(&plan, &options).expect("the job runs");
        cpus.push(cpu_seconds() - before);
        walls.push(summary.elapsed.as_secs_f64());
        last = Some(summary);
    }
    (median(walls), median(cpus), last.expect("at least one run"))
}

/// A job whose rows the PostgreSQL part writes: its name, source URI, `--set`s, sink, upsert key.
struct RowJob {
    job: &'static str,
    source: String,
    sets: &'static [(&'static str, &'static str)],
    sink: &'static str,
    key: &'static str,
}

fn postgres(payments: u64, runs: usize, root: &Path) {
    let shared = std::env::var("PAYSTREAM_POSTGRES").unwrap_or_else(|_| "127.0.0.1:5432".into());
    if !answers(&shared) {
        println!("postgres: no server answers at {shared}: skipped");
        return;
    }
    let prepared = std::env::var("PAYSTREAM_POSTGRES_PREPARED").ok().filter(|p| answers(p));
    let jobs = [
        // Window rows: costly to make (a p99 histogram per window and merchant), so the job's own
        // CPU is most of a row's.
        RowJob {
            job: "throughput-windows",
            source: format!("gen:count={payments},merchants=100000,skew=0,events_per_sec=100000"),
            sets: &[("window_ms", "1000")],
            sink: "windows",
            key: "window_start_ms,merchant_id",
        },
        // Payment rows copied from the generator: cheap to make, so the sink's cost shows.
        RowJob { job: "generate-payments", source: format!("gen:count={payments}"), sets: &[], sink: "payments", key: "txn_id" },
    ];
    let late = ("late_payments", format!("file:{}", root.join("late.csv").display()));
    let table = format!("bench_rows_{}", std::process::id());
    for RowJob { job, source, sets, sink, key } in jobs {
        let file = (sink, format!("file:{}", root.join(format!("{sink}.csv")).display()));
        let extra: Vec<(&str, String)> = if job == "throughput-windows" { vec![late.clone()] } else { vec![] };
        let sinks_with =
            |first: (&'static str, String)| -> Vec<(&str, String)> { std::iter::once(first).chain(extra.iter().cloned()).collect() };
        // One untimed run first: the allocator's first pages and the generator's tables are not
        // the file sink's cost.
        measure(job, &[("payments", source.clone())], &sinks_with(file.clone()), sets, 1, (1, root), &|| {});
        println!("\n{sink} rows into PostgreSQL: {job}, {payments} payments, checkpoints every 1 s, median of {runs} runs");
        println!(
            "{:<34} {:>7} {:>9} {:>8} {:>7} {:>10} {:>13} {:>17}",
            "sink", "workers", "rows", "wall s", "cpu s", "rows/s", "CPU-µs/row", "sink CPU-µs/row"
        );
        for workers in [1, 2] {
            let (wall, cpu, summary) =
                measure(job, &[("payments", source.clone())], &sinks_with(file.clone()), sets, workers, (runs, root), &|| {});
            let rows = summary.counters.get(&format!("written:{sink}")).copied().unwrap_or(0);
            let file_cpu_per_row = cpu * 1e6 / rows.max(1) as f64;
            println!(
                "{:<34} {workers:>7} {rows:>9} {wall:>8.3} {cpu:>7.3} {:>10.0} {file_cpu_per_row:>13.2} {:>17}",
                "file (baseline)",
                rows as f64 / wall,
                "-"
            );
            let mut targets = vec![("write-ahead", shared.clone())];
            if let Some(p) = &prepared {
                targets.push(("prepared", p.clone()));
            }
            for (protocol, server) in &targets {
                for mode in ["append", "upsert"] {
                    let options = if mode == "upsert" { format!("&mode=upsert&key={key}") } else { String::new() };
                    let uri = format!("postgres://postgres@{server}/test?table={table}&create=true&commit={protocol}{options}");
                    let drop = || psql(server, &format!("DROP TABLE IF EXISTS {table}"));
                    let (wall, cpu, summary) =
                        measure(job, &[("payments", source.clone())], &sinks_with((sink, uri)), sets, workers, (runs, root), &drop);
                    let rows = summary.counters.get(&format!("written:{sink}")).copied().unwrap_or(0);
                    let per_row = cpu * 1e6 / rows.max(1) as f64;
                    println!(
                        "{:<34} {workers:>7} {rows:>9} {wall:>8.3} {cpu:>7.3} {:>10.0} {per_row:>13.2} {:>17.2}",
                        format!("postgres {mode}, {protocol}"),
                        rows as f64 / wall,
                        per_row - file_cpu_per_row
                    );
                    drop();
                }
            }
        }
    }
}

fn nats(payments: u64, runs: usize, root: &Path) {
    let server = std::env::var("PAYSTREAM_NATS").unwrap_or_else(|_| "127.0.0.1:4222".into());
    if !answers(&server) {
        println!("nats: no server answers at {server}: skipped");
        return;
    }
    // The same payments, once as a JSON-lines file and once in a stream (loaded untimed).
    let stream = format!("BENCH_{}", std::process::id());
    let stream_uri = format!("nats://{server}/{stream}?subject=bench.payments.{}", std::process::id());
    let file = root.join("payments.jsonl");
    let generator = format!("gen:count={payments}");
    let load = |sink: String| {
        measure("generate-payments", &[("payments", generator.clone())], &[("payments", sink)], &[], 1, (1, root), &|| {});
    };
    load(format!("file:{}", file.display()));
    load(format!("{stream_uri}&format=jsonl"));
    println!("\nthe NATS JetStream source beside the file source: throughput-windows over {payments} payments (JSON lines), median of {runs} runs");
    println!("{:<20} {:>7} {:>9} {:>8} {:>7} {:>10} {:>16}", "source", "workers", "events", "wall s", "cpu s", "events/s", "events/CPU-s");
    let out = [
        ("windows", format!("file:{}", root.join("windows.csv").display())),
        ("late_payments", format!("file:{}", root.join("late.csv").display())),
    ];
    for workers in [1, 2] {
        for (name, uri) in
            [("file", format!("file:{}", file.display())), ("nats (bounded)", format!("{stream_uri}&format=jsonl&bounded=true"))]
        {
            let (wall, cpu, summary) = measure("throughput-windows", &[("payments", uri)], &out, &[], workers, (runs, root), &|| {});
            let events = summary.events_read;
            println!(
                "{name:<20} {workers:>7} {events:>9} {wall:>8.3} {cpu:>7.3} {:>10.0} {:>16.0}",
                events as f64 / wall,
                events as f64 / cpu
            );
        }
    }
    paystream_nats::admin::delete_stream(&format!("nats://{server}/{stream}")).ok();
}

fn main() {
    let payments = env("PAYMENTS", 1_000_000);
    let runs = env("RUNS", 3).max(1) as usize;
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "postgres,nats".into());
    let root = std::env::temp_dir().join(format!("paystream-bench-pg-nats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("a scratch directory");
    let profile = if cfg!(debug_assertions) { "debug build: not representative" } else { "release build" };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("postgres_nats: {profile}, {cores} cores; the servers run on the same machine");
    if parts.contains("postgres") {
        postgres(payments, runs, &root);
    }
    if parts.contains("nats") {
        nats(payments, runs, &root);
    }
    let _ = std::fs::remove_dir_all(&root);
}
