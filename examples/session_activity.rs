//! Session windows: a card's bursts of activity, separated by 30 s of silence.
//!
//! `cargo run --example session_activity`
use paystream::prelude::*;

fn main() {
    // (event time in ms, (card, amount in cents)).
    let payments = vec![(0, (1u64, 500i64)), (5_000, (2, 50)), (10_000, (1, 700)), (25_000, (1, 100)), (90_000, (1, 2_000))];
    let sessions = paystream::local::run_collect(payments, |s| {
        s.key_by("by-card", |(card, _)| *card)
            .window("bursts", Session::with_gap(secs(30)))
            .aggregate(CountAndSum::of(|(_, amount): &(u64, i64)| *amount))
    });
    // Card 1: [0, 55000) with 3 payments (each within 30 s of the previous), then [90000, 120000).
    for (_, w) in sessions {
        println!("card {} session [{}, {}): {} payments, {} cents", w.key, w.start_ms, w.end_ms, w.value.count, w.value.sum);
    }
}
