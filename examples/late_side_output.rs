//! Late data: what happens to a record that arrives after its window fired.
//!
//! The watermark trails the largest event time seen by 2 s. A record whose window ended at or below
//! the watermark is late: with `allowed_lateness` it updates the window's result (`is_update`);
//! beyond that it is dropped and counted, or sent to a sink with `late_records_to` in a job.
//! `cargo run --example late_side_output`
use paystream::prelude::*;

fn main() {
    // One partition, in this order: the record at 4 s arrives after the watermark reached 13 s
    // (15 s - 2 s), so window [0, 10 s) has fired: it is 3 s past the window's end, within the 5 s
    // allowed lateness, and produces an update. The record at 1 s arrives at watermark 28 s, too late.
    let arrivals: Vec<(u64, u64)> = vec![(1_000, 1), (9_000, 1), (15_000, 1), (4_000, 1), (30_000, 1), (1_000, 1)];
    let (windows, counters) = paystream::local::run_partitions(
        1,
        vec![arrivals],
        |(ts, _)| *ts,
        OutOfOrder::millis(2_000),
        |s| s.key_by("by-card", |(_, card)| *card).window("per-10s", Tumbling::of(secs(10))).allowed_lateness(secs(5)).aggregate(Count),
    );
    for (_, w) in windows {
        let kind = if w.is_update { "update" } else { "result" };
        println!("{kind}: [{}, {}) card {} -> {}", w.start_ms, w.end_ms, w.key, w.value);
    }
    println!("dropped as too late: {}", counters.get("late_dropped:per-10s").copied().unwrap_or(0));
}
