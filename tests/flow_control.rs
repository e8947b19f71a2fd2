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
    let peak = outcome
        .stderr
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{label}: no peak memory in the summary:\n{}", outcome.stderr));
    (peak, read(&out))
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

/// The lines of `text`, sorted.
fn sorted(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines
}
