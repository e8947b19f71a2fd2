//! Pacing (`--rate`) and latency measurement through the CLI.

#[macro_use]
mod common;

use std::time::Instant;

use common::*;

/// Reads `p50 X ms, p99 Y ms, ...` from the summary's latency line.
fn latency_line(stderr: &str) -> Vec<(String, f64)> {
    let line = stderr.lines().find(|l| l.contains("latency, ingestion to sink")).unwrap_or_else(|| panic!("no latency line in:\n{stderr}"));
    let figures = line.split(": ").nth(1).expect("figures after the colon");
    figures
        .split(", ")
        .map(|f| {
            let mut words = f.split_whitespace();
            let name = words.next().expect("a percentile name").to_string();
            let value: f64 = words.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value in {f:?}"));
            (name, value)
        })
        .collect()
}

#[test]
fn rate_paces_the_sources_and_the_summary_reports_latency() {
    let dir = TempDir::new("rate");
    let out = dir.join("windows.csv");
    let started = Instant::now();
    let outcome = run(
        "paced",
        args![
            "run",
            "throughput-windows",
            "--rate",
            "10000",
            "--source",
            "payments=gen:count=20000",
            "--sink",
            format!("windows={}", file_uri(&out)),
        ],
        dir.path(),
    );
    outcome.assert_success();
    let wall = started.elapsed().as_secs_f64();
    // 20,000 events at 10,000 per second cannot take less than two seconds.
    assert!(wall >= 1.9, "20,000 events paced at 10,000/s finished in {wall:.2} s");
    let figures = latency_line(&outcome.stderr);
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["p50", "p99", "p99.9", "max"], "{}", outcome.stderr);
    let values: Vec<f64> = figures.iter().map(|(_, v)| *v).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "percentiles must not decrease: {values:?}");
    // Results are written within the run: no latency can exceed its wall time.
    assert!(values[3] > 0.0 && values[3] <= wall * 1000.0, "max latency {} ms in a {wall:.2} s run", values[3]);
    // Pacing changes when records are read, not what is computed.
    let reference = dir.join("reference.csv");
    run(
        "unpaced",
        args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            "payments=gen:count=20000",
            "--sink",
            format!("windows={}", file_uri(&reference))
        ],
        dir.path(),
    )
    .assert_success();
    assert!(read(&out) == read(&reference), "the paced run's windows differ from the unpaced run's");
}

#[test]
fn bad_rates_are_refused_with_the_fix() {
    let dir = TempDir::new("rate-bad");
    for bad in ["0", "0.5", "fast"] {
        let outcome = run("bad rate", args!["run", "throughput-windows", "--rate", bad], dir.path());
        assert_eq!(outcome.code, Some(2), "--rate {bad}: {}", outcome.stderr);
        assert!(outcome.stderr.contains("events per second"), "--rate {bad}: {}", outcome.stderr);
    }
}

#[test]
fn bench_latency_sweep_prints_a_row_per_load() {
    let dir = TempDir::new("bench-latency");
    let outcome =
        run("bench", args!["bench", "throughput-windows", "--runs", 1, "--latency", "--source", "payments=gen:count=20000"], dir.path());
    outcome.assert_success();
    let rows: Vec<&str> = outcome.stdout.lines().collect();
    for label in ["median", "25%", "50%", "90%"] {
        let row = rows.iter().find(|r| r.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no {label} row:\n{}", outcome.stdout));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 11, "{label} row: {row}");
        assert_eq!(cells[1], "20000", "{label} row reads every event: {row}");
    }
    assert!(outcome.stdout.contains("p99.9 ms"), "{}", outcome.stdout);
}
