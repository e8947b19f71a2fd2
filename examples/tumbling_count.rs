//! Tumbling windows: payments per merchant in 10-second windows aligned to the epoch.
//!
//! `cargo run --example tumbling_count`
use paystream::prelude::*;

fn main() {
    // (event time in ms, merchant): two merchants over 25 seconds.
    let payments = vec![(1_000, 7u64), (4_000, 7), (9_999, 9), (10_000, 7), (12_500, 9), (24_000, 7)];
    let windows = paystream::local::run_collect(payments, |s| {
        s.key_by("by-merchant", |merchant| *merchant).window("per-10s", Tumbling::of(secs(10))).aggregate(Count)
    });
    // Each window [start, start + 10 s) fires once, when the watermark reaches its end.
    for (_, w) in windows {
        println!("[{:>6}, {:>6}) merchant {} -> {} payments", w.start_ms, w.end_ms, w.key, w.value);
    }
}
