//! Temporal join: each payment meets the blocked-cards table as it was at the payment's time.
//! `cargo run --example blocked_card_join`
use paystream::operators::join::{JoinExt, Side};
use paystream::prelude::*;

fn main() {
    // (time, card 7 payment) or (time, table change for card 7: Some = blocked, None = unblocked).
    let events: Vec<(u64, Side<String, Option<String>>)> = vec![
        (1_000, Side::Left("pay-1".into())),
        (2_000, Side::Right(Some("stolen".into()))),
        (3_000, Side::Left("pay-2".into())),
        (4_000, Side::Right(None)),
        (5_000, Side::Left("pay-3".into())),
    ];
    let (joined, _) = paystream::local::run_partitions(
        1,
        vec![events],
        |(ts, _)| *ts,
        OutOfOrder::millis(0),
        |s| {
            let payments =
                s.clone().flat_map("payments", |(_, e)| if let Side::Left(p) = e { Some(p) } else { None }).key_by("p", |_| 7u64);
            let table = s.flat_map("blocked", |(_, e)| if let Side::Right(row) = e { Some(row) } else { None }).key_by("t", |_| 7u64);
            payments.temporal_join(table).join("blocked-card")
        },
    );
    // pay-2 happened while the card was blocked; pay-1 before, pay-3 after it was unblocked.
    for (ts, j) in joined {
        println!("{} at {ts}: {}", j.left, j.right.map_or("ok".to_string(), |why| format!("BLOCKED ({why})")));
    }
}
