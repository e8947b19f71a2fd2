//! Early results: a window's partial count every 2 payments, before the watermark reaches its end.
//!
//! `cargo run --example early_results`
use paystream::prelude::*;

fn main() {
    // (event time in ms, merchant): merchant 7 pays five times in [0, 10 s), merchant 9 once.
    let payments = vec![(1_000, 7u64), (2_000, 7), (3_000, 9), (4_000, 7), (5_000, 7), (6_000, 7)];
    let rows = paystream::local::run_collect(payments, |s| {
        s.key_by("by-merchant", |merchant| *merchant).window("per-10s", Tumbling::of(secs(10))).emit_every_records(2).aggregate(Count)
    });
    // Partial rows at the event time of the 2nd and 4th payment, then the on-time row at the
    // window's end, which always comes: keep the latest row per window and merchant.
    for (at, w) in rows {
        let kind = if at < w.end_ms - 1 { "partial" } else { "on time" };
        println!(
            "at {at:>5}: [{}, {}) merchant {} -> {} payments ({kind}, is_update {})",
            w.start_ms, w.end_ms, w.key, w.value, w.is_update
        );
    }
}
