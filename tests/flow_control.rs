//! Flow control: with a deliberately slow sink, sources wait for it instead of filling memory.
//!
//! `generate-payments` copies generated payments to a file sink. With two workers, worker 1's
//! generator sends everything to worker 0, which writes the sink; `PAYSTREAM_SLOW_SINK` makes that
//! writer sleep per line, so without flow control worker 1 runs ahead and its records pile up in
//! the channel to worker 0. With flow control (the default) peak memory must stay flat while the
//! input grows tenfold, and the output must be exactly the output of an unthrottled run.
//!
//! The binary allocates with mimalloc, which keeps freed pages for a while; the runs set
//! `MIMALLOC_PURGE_DELAY=0` so that resident memory follows what is live rather than the
//! allocator's cache.

#[macro_use]
mod common;

use common::*;

const SLOW_MICROS_PER_LINE: &str = "40";

/// Copies `count` generated payments with a slow sink; returns the peak RSS in MiB and the output.
fn copy(dir: &TempDir, label: &str, count: u64, max_in_flight: usize, slow: bool) -> (u64, String) {
    let out = dir.join(&format!("{label}.csv"));
    let args = args![
        "run",
        "generate-payments",
        "--workers",
        2,
        "--max-in-flight",
        max_in_flight,
        "--source",
        format!("payments=gen:count={count}"),
        "--sink",
        format!("payments={}", file_uri(&out)),
        "--set",
        "out_of_orderness_ms=1000",
    ];
    let purge = ("MIMALLOC_PURGE_DELAY", "0");
    let env: &[(&str, &str)] = if slow { &[("PAYSTREAM_SLOW_SINK", SLOW_MICROS_PER_LINE), purge] } else { &[purge] };
    let outcome = wait_all(vec![spawn_env(label, args, dir.path(), env)]).pop().expect("one run");
    outcome.assert_success();
    (peak_mib(label, &outcome), read(&out))
}

/// The peak RSS in MiB that a run's summary gives.
fn peak_mib(label: &str, outcome: &Outcome) -> u64 {
    outcome
        .stderr
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{label}: no peak memory in the summary:\n{}", outcome.stderr))
}

#[test]
fn slow_sink_keeps_memory_flat_and_output_exact() {
    let dir = TempDir::new("flow");
    let (small, _) = copy(&dir, "small", 40_000, 4, true);
    let (large, output) = copy(&dir, "large", 400_000, 4, true);
    eprintln!("peak RSS with flow control: {small} MiB for 40,000 payments, {large} MiB for 400,000");
    assert!(
        large <= small + 10,
        "with flow control peak memory grew from {small} MiB to {large} MiB when the input grew 10x (allowed: 10 MiB of warm-up)"
    );
    // Flow control changes when records are read, never what is written. (Not the order of the
    // lines across times: when flow control stalls, it reads the partitions that hold the
    // watermark back, so where the watermark moves, and which time a line is written at, depend
    // on timing; a loaded CI machine showed the same lines in another order.)
    let (_, reference) = copy(&dir, "reference", 400_000, 0, false);
    assert_eq!(output.lines().count(), 400_001, "every payment written once, after the header");
    assert!(sorted(&output) == sorted(&reference), "the throttled output differs from an unthrottled run's");
    // The same throttled run without flow control does fill memory: this test can tell.
    let (unbounded, _) = copy(&dir, "unbounded", 400_000, 0, true);
    eprintln!("peak RSS without flow control: {unbounded} MiB for 400,000 payments");
    assert!(
        unbounded >= large + 5,
        "without flow control peak memory should grow well above the flow-controlled {large} MiB, was {unbounded} MiB"
    );
}

/// Runs `throughput-windows` on `lines` payments whose event time is text, in `files` files, so
/// that every line is a dead letter and the watermark never moves; returns the peak RSS in MiB,
/// after checking that each line is in dead letters exactly once and that no window was written.
fn all_bad(dir: &TempDir, label: &str, lines: u64, files: u64, extra: &[&str]) -> u64 {
    let input = dir.join(label);
    std::fs::create_dir_all(&input).unwrap_or_else(|e| panic!("cannot create {}: {e}", input.display()));
    for file in 0..files {
        let payments = (file..lines)
            .step_by(files as usize)
            .map(|i| format!("not-a-time,t{i},{},{},{},EUR,DE,APPROVED", i % 997, i % 13, 100 + i % 5000));
        write_csv(&input.join(format!("{file}.csv")), PAYMENT_HEADER, payments);
    }
    let (windows, dead) = (dir.join(&format!("{label}-windows.csv")), dir.join(&format!("{label}-dead.csv")));
    let mut args = args![
        "run",
        "throughput-windows",
        "--source",
        format!("payments={}", file_uri(&input)),
        "--sink",
        format!("windows={}", file_uri(&windows)),
        "--sink",
        format!("dead_letters={}", file_uri(&dead)),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let outcome = wait_all(vec![spawn_env(label, args, dir.path(), &[("MIMALLOC_PURGE_DELAY", "0")])]).pop().expect("one run");
    outcome.assert_success();
    assert_eq!(read(&windows).lines().count(), 1, "{label}: no window, only the header");
    // Each file's line numbers, 2 (after the header) and up.
    let mut numbers: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in read(&dead).lines().skip(1) {
        let fields = split_csv(line);
        let number = fields[2].parse().unwrap_or_else(|e| panic!("{label}: line number of {line:?}: {e}"));
        numbers.entry(fields[1].clone()).or_default().push(number);
    }
    assert_eq!(numbers.len() as u64, files, "{label}: dead letters from every file: {:?}", numbers.keys());
    for (file, (origin, mut numbers)) in numbers.into_iter().enumerate() {
        numbers.sort_unstable();
        let written = (file as u64..lines).step_by(files as usize).count() as u64;
        assert!(numbers.iter().copied().eq(2..written + 2), "{label}: {origin}: lines 2 to {} once each in dead letters", written + 1);
    }
    peak_mib(label, &outcome)
}

/// Dead letters are flow-controlled like records. Input whose every line is bad moves no
/// watermark; its dead letters used to wait in the dead-letter sink for the watermark until the
/// input ended (an 86 MB file peaked at 548 MB). Peak memory must stay flat while such input
/// grows tenfold, at one worker and at two (worker 1's dead letters cross to worker 0, the
/// writer), and with checkpoints every line must still be written once.
#[test]
fn all_bad_input_keeps_memory_flat() {
    let dir = TempDir::new("flow-bad");
    let chk = dir.join("chk");
    let checkpoints = ["--checkpoint-dir", chk.to_str().expect("a UTF-8 path"), "--checkpoint-interval", "100ms"];
    for (workers, label) in [(1, "1 worker"), (2, "2 workers")] {
        let (small, large) = (20_000, 200_000);
        let workers_flag = ["--workers", if workers == 1 { "1" } else { "2" }];
        let before = all_bad(&dir, &format!("small-{workers}"), small, workers, &workers_flag);
        let after = all_bad(&dir, &format!("large-{workers}"), large, workers, &workers_flag);
        eprintln!("peak RSS, every line bad, {label}: {before} MiB for {small} lines, {after} MiB for {large}");
        assert!(
            after <= before + 10,
            "{label}: peak memory grew from {before} MiB to {after} MiB when the bad input grew 10x (allowed: 10 MiB)"
        );
    }
    // Checkpoints split the dead letters by epoch too; each is still written once.
    let checkpointed = all_bad(&dir, "checkpointed", 100_000, 2, &[&["--workers", "2"][..], &checkpoints].concat());
    eprintln!("peak RSS, every line bad, 2 workers and checkpoints: {checkpointed} MiB for 100000 lines");
}

/// The lines of `text`, sorted.
fn sorted(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines
}
