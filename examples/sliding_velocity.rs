//! Sliding windows: how many payments a card made in any 60 s, checked every 10 s (card velocity).
//!
//! A record counts in every window that covers it; paystream adds it once to a 10 s pane and merges
//! panes when a window fires. `cargo run --example sliding_velocity`
use paystream::prelude::*;

fn main() {
    // (event time in ms, card): card 1 pays four times within 35 s, card 2 once.
    let payments = vec![(100_000, 1u64), (112_000, 1), (125_000, 2), (128_000, 1), (135_000, 1)];
    let windows = paystream::local::run_collect(payments, |s| {
        s.key_by("by-card", |card| *card)
            .window("velocity", Sliding::of(secs(60)).every(secs(10)))
            .aggregate(Count)
            .filter("at-least-3", |w| w.value >= 3)
    });
    for (_, w) in windows {
        println!("card {} paid {} times in [{}, {})", w.key, w.value, w.start_ms, w.end_ms);
    }
}
