//! Broadcast state: a limit that a second stream changes while payments flow, each change taking
//! effect at its own event time (a change at exactly a payment's time applies to it), the same at
//! any worker count. `cargo run --example broadcast_rules`
use paystream::operators::{BroadcastExt, Context, KeyedBroadcastProcessFunction};

/// Alerts on payments above the limit in force at their time.
struct AboveLimit;

impl KeyedBroadcastProcessFunction<u64, i64, i64> for AboveLimit {
    type State = (); // nothing per card
    type Broadcast = i64; // the limit in cents, the same on every worker
    type Out = String;

    fn on_broadcast(&self, limit: &mut i64, ts: u64, new_limit: i64) {
        println!("at {ts}: limit {limit} -> {new_limit}");
        *limit = new_limit;
    }

    fn on_record(&self, ctx: &mut Context<'_, String>, card: &u64, _: &mut (), limit: &i64, ts: u64, cents: i64) {
        if cents > *limit {
            ctx.emit(ts, format!("card {card}: {cents} cents at {ts}, above the limit of {limit}"));
        }
    }
}

/// One input for both sides of the example: a new limit, or a payment (card, cents).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Event {
    Limit(i64),
    Payment(u64, i64),
}

fn main() {
    use Event::*;
    let events = vec![(0, Limit(1_000)), (10, Payment(1, 1_500)), (20, Limit(2_000)), (20, Payment(2, 1_500)), (30, Payment(1, 2_500))];
    let alerts = paystream::local::run_collect(events, |s| {
        let limits = s.clone().flat_map("limits", |e| if let Limit(l) = e { Some(l) } else { None });
        let payments = s.flat_map("payments", |e| if let Payment(card, cents) = e { Some((card, cents)) } else { None });
        // The payment at 20 sees the limit set at 20: no alert.
        payments.key_by_split("by-card", |p| p).connect_broadcast(limits).process("above-limit", AboveLimit)
    });
    for (_, alert) in alerts {
        println!("{alert}");
    }
}
