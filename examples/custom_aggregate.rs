//! Your own aggregate: the share of declined payments per merchant and window, next to built-ins.
//!
//! An `Aggregate` creates an accumulator, adds records, merges accumulators (windows combine
//! partial results) and produces a result. Tuples of aggregates run in one pass.
//! `cargo run --example custom_aggregate`
use paystream::prelude::*;

/// Declined payments over all payments.
struct DeclineRate;

impl Aggregate<Payment> for DeclineRate {
    type Acc = (u64, u64); // (declined, all)
    type Out = f64;
    fn init(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), p: &Payment) {
        acc.0 += u64::from(p.status == Status::Declined);
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (u64, u64), other: &(u64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
}

fn payment(ts_ms: u64, merchant_id: u64, amount_cents: i64, status: Status) -> (u64, Payment) {
    let (currency, country) = ("EUR".into(), "DE".into());
    (ts_ms, Payment { ts_ms, txn_id: format!("t{ts_ms}").into(), card_id: 1, merchant_id, amount_cents, currency, country, status })
}

fn main() {
    let payments = vec![
        payment(1_000, 5, 1_200, Status::Approved),
        payment(2_000, 5, 99_000, Status::Declined),
        payment(3_000, 5, 800, Status::Approved),
        payment(4_000, 5, 2_500, Status::Approved),
    ];
    let windows = paystream::local::run_collect(payments, |s| {
        s.key_by("by-merchant", |p| p.merchant_id).window("per-minute", Tumbling::of(minutes(1))).aggregate((
            DeclineRate,
            Average::of(|p: &Payment| p.amount_cents),
            Percentiles::of(|p: &Payment| p.amount_cents as u64),
        ))
    });
    for (_, w) in windows {
        let (decline_rate, average, amounts) = w.value;
        println!(
            "merchant {}: {:.0}% declined, average {:.0} cents, median {} cents, p99 {} cents",
            w.key,
            decline_rate * 100.0,
            average.unwrap_or(0.0),
            amounts.p50,
            amounts.p99
        );
    }
}
