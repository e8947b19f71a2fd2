//! A keyed process function with timers: three small "probe" payments on a card followed by a large
//! one within 10 minutes is card testing. `cargo run --example card_testing_pattern`
use paystream::operators::{Context, ProcessExt, ProcessFunction};

struct CardTesting;

impl ProcessFunction<u64, (u64, i64)> for CardTesting {
    type State = Vec<u64>; // times of recent small payments
    type Out = String;

    fn on_record(&self, ctx: &mut Context<'_, String>, card: &u64, probes: &mut Vec<u64>, ts: u64, (_, cents): (u64, i64)) {
        probes.retain(|t| t + 600_000 >= ts);
        if cents < 200 {
            probes.push(ts);
            ctx.register_timer(ts + 600_001); // forget the probe after 10 minutes
        } else if cents >= 50_000 && probes.len() >= 3 {
            ctx.emit(ts, format!("card {card}: {} probes, then {cents} cents at {ts}", probes.len()));
            probes.clear();
        }
    }

    fn on_timer(&self, ctx: &mut Context<'_, String>, _card: &u64, probes: &mut Vec<u64>, now: u64) {
        probes.retain(|t| t + 600_000 >= now);
        if probes.is_empty() {
            ctx.clear_state(); // nothing left to remember for this card
        }
    }
}

fn main() {
    // (time, (card, amount in cents)): card 1 is tested, card 2 only makes small payments.
    let payments = vec![(0, (1u64, 100i64)), (5_000, (2, 150)), (10_000, (1, 120)), (20_000, (1, 99)), (30_000, (1, 80_000))];
    let alerts = paystream::local::run_collect(payments, |s| s.key_by("by-card", |(card, _)| *card).process("card-testing", CardTesting));
    for (_, alert) in alerts {
        println!("{alert}");
    }
}
