//! Interval join: match each payment with its authorization within 5 s; report the ones never
//! authorized. `cargo run --example interval_join`
use paystream::operators::join::{JoinExt, Side};
use paystream::prelude::*;

fn main() {
    // Both streams in one input for the example: (event time ms, payment or authorization of a txn).
    let pay = |ts: u64, txn: &str| (ts, Side::Left(txn.to_string()));
    let auth = |ts: u64, txn: &str| (ts, Side::Right(txn.to_string()));
    let events: Vec<(u64, Side<String, String>)> = vec![
        pay(1_000, "t1"),
        pay(1_500, "t2"),
        auth(3_200, "t1"), // t1 authorized 2.2 s after payment
        auth(9_000, "t2"), // t2 authorized after 7.5 s: too late
        pay(9_500, "t3"),
    ];
    let txn = |e: &Side<String, String>| match e {
        Side::Left(t) | Side::Right(t) => t.clone(),
    };
    let (joined, _) = paystream::local::run_partitions(
        1,
        vec![events],
        |(ts, _)| *ts,
        OutOfOrder::millis(0),
        move |s| {
            let payments = s.clone().filter("payments", |(_, e)| matches!(e, Side::Left(_))).key_by("p", move |(_, e)| txn(e));
            let auths = s.filter("auths", |(_, e)| matches!(e, Side::Right(_))).key_by("a", move |(_, e)| txn(e));
            payments.interval_join(auths).between(0, 5_000).with_unmatched_left().join("auth-window")
        },
    );
    for (ts, j) in joined {
        match j.right {
            Some((auth_ts, _)) => println!("{} paid at {}, authorized at {auth_ts}", j.key, j.left.0),
            None => println!("{} paid at {}: no authorization within 5 s (alert at {ts})", j.key, j.left.0),
        }
    }
}
