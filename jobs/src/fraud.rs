//! `fraud-detection`: five rules over payments, authorizations and the blocked-cards table, each
//! emitting alerts `rule,card_id,txn_id,ts_ms,detail` to the sink `alerts`.
//!
//! | rule | fires when | built on |
//! |---|---|---|
//! | `velocity` | a card makes more than `max_per_window` payments in a 60 s window sliding by 10 s (one alert per window; `txn_id` empty, `ts_ms` the window's last ms) | sliding window |
//! | `blocked-card` | a payment uses a card that is blocked as of the payment's time | temporal join with `blocked_cards` |
//! | `geo-velocity` | a payment comes from another country than a payment on the same card at most `geo_window_ms` earlier | process function |
//! | `card-testing` | a payment of at least `large_cents` follows at least `small_count` payments under `small_cents` on the same card within `testing_window_ms` | process function with timers |
//! | `unauthorized` | a payment gets no authorization within `auth_window_ms` | interval join, unmatched side |
//!
//! A card's payments are seen in event-time order; payments with equal times in the order of their
//! encoded bytes (see `paystream_operators::process`).

use paystream_engine::{csv_record, millis, secs, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{Context, Count, JoinExt, ProcessExt, ProcessFunction, Sliding, WindowExt};
use serde::{Deserialize, Serialize};

use crate::payment::{Authorization, BlockedCard, Payment};
use crate::text::ShortText;

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "fraud-detection",
    about:
        "Fraud rules (velocity, blocked card, geo-velocity, card testing, unauthorized) over payments, authorizations and blocked cards.",
    sources: &[
        SourceSpec { name: "payments", record: "Payment", about: "the payments to check" },
        SourceSpec { name: "authorizations", record: "Authorization", about: "issuers' authorizations, by txn_id" },
        SourceSpec { name: "blocked_cards", record: "BlockedCard", about: "changes to the blocked-cards table" },
    ],
    sinks: &[SinkSpec { name: "alerts", about: "one row per alert: rule,card_id,txn_id,ts_ms,detail" }],
    params: &[
        ParamSpec { name: "max_per_window", default: "10", about: "velocity: payments per card in one 60 s window above which to alert" },
        ParamSpec { name: "geo_window_ms", default: "600000", about: "geo-velocity: two countries within this much event time, ms" },
        ParamSpec { name: "small_cents", default: "200", about: "card testing: payments below this are probes" },
        ParamSpec { name: "small_count", default: "3", about: "card testing: probes needed before a large payment" },
        ParamSpec { name: "large_cents", default: "50000", about: "card testing: a payment of at least this much after the probes alerts" },
        ParamSpec {
            name: "testing_window_ms",
            default: "600000",
            about: "card testing: probes and the large payment within this much, ms",
        },
        ParamSpec {
            name: "auth_window_ms",
            default: "5000",
            about: "unauthorized: an authorization must come within this much after the payment, ms",
        },
        ParamSpec {
            name: "out_of_orderness_ms",
            default: "2000",
            about: "how far behind the latest payment or table change one may arrive and still count, ms",
        },
        ParamSpec {
            name: "auth_out_of_orderness_ms",
            default: "6000",
            about: "the same for authorizations, which arrive in payment order, up to auth_window_ms apart",
        },
    ],
    build,
};

csv_record! {
    /// A fraud alert.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Alert {
        /// Which rule fired.
        pub rule: String,
        /// The card.
        pub card_id: u64,
        /// The payment that fired it (empty for window-level rules).
        pub txn_id: String,
        /// Event time of the alert.
        pub ts_ms: u64,
        /// What was seen.
        pub detail: String,
    }
}

fn alert(rule: &str, p: &Payment, detail: String) -> Alert {
    Alert { rule: rule.to_string(), card_id: p.card_id, txn_id: p.txn_id.to_string(), ts_ms: p.ts_ms, detail }
}

/// Geo-velocity: the card's recent payments (time, country), newest last.
struct GeoVelocity {
    window_ms: u64,
}

impl ProcessFunction<u64, Payment> for GeoVelocity {
    type State = Vec<(u64, ShortText)>;
    type Out = Alert;

    fn on_record(&self, ctx: &mut Context<'_, Alert>, _card: &u64, recent: &mut Vec<(u64, ShortText)>, ts: u64, p: Payment) {
        recent.retain(|(t, _)| t.saturating_add(self.window_ms) >= ts);
        if let Some((t, country)) = recent.iter().find(|(_, c)| *c != p.country) {
            let detail = format!("{country} then {} within {} ms", p.country, ts - t);
            ctx.emit(ts, alert("geo-velocity", &p, detail));
        }
        recent.push((ts, p.country));
        ctx.register_timer(ts.saturating_add(self.window_ms).saturating_add(1));
    }

    fn on_timer(&self, ctx: &mut Context<'_, Alert>, _card: &u64, recent: &mut Vec<(u64, ShortText)>, timer: u64) {
        recent.retain(|(t, _)| t.saturating_add(self.window_ms) >= timer);
        if recent.is_empty() {
            ctx.clear_state();
        }
    }
}

/// Card testing: the times of the card's recent small payments.
struct CardTesting {
    small_cents: i64,
    small_count: usize,
    large_cents: i64,
    window_ms: u64,
}

impl ProcessFunction<u64, Payment> for CardTesting {
    type State = Vec<u64>;
    type Out = Alert;

    fn on_record(&self, ctx: &mut Context<'_, Alert>, _card: &u64, probes: &mut Vec<u64>, ts: u64, p: Payment) {
        probes.retain(|t| t.saturating_add(self.window_ms) >= ts);
        if p.amount_cents < self.small_cents {
            probes.push(ts);
            ctx.register_timer(ts.saturating_add(self.window_ms).saturating_add(1));
        } else if p.amount_cents >= self.large_cents && probes.len() >= self.small_count {
            let detail = format!("{} payments under {} cents, then {} cents", probes.len(), self.small_cents, p.amount_cents);
            ctx.emit(ts, alert("card-testing", &p, detail));
            probes.clear();
        }
        if probes.is_empty() {
            ctx.clear_state();
        }
    }

    fn on_timer(&self, ctx: &mut Context<'_, Alert>, _card: &u64, probes: &mut Vec<u64>, timer: u64) {
        probes.retain(|t| t.saturating_add(self.window_ms) >= timer);
        if probes.is_empty() {
            ctx.clear_state();
        }
    }
}

/// A velocity window's count, carried to the alert.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Velocity {
    card_id: u64,
    count: u64,
    start_ms: u64,
    end_ms: u64,
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let bound = OutOfOrder::millis(params.get("out_of_orderness_ms")?);
    let max_per_window: u64 = params.get("max_per_window")?;
    let geo = GeoVelocity { window_ms: params.get("geo_window_ms")? };
    let testing = CardTesting {
        small_cents: params.get("small_cents")?,
        small_count: params.get("small_count")?,
        large_cents: params.get("large_cents")?,
        window_ms: params.get("testing_window_ms")?,
    };
    let auth_window: i64 = params.get("auth_window_ms")?;

    // Each payment goes to all five rules; its texts are held inline, so the four copies do not allocate.
    let payments = job.source::<Payment>("payments")?.assign_timestamps(|p| p.ts_ms, bound)?;
    let auth_bound = OutOfOrder::millis(params.get("auth_out_of_orderness_ms")?);
    let auths = job.source::<Authorization>("authorizations")?.assign_timestamps(|a| a.ts_ms, auth_bound)?;
    let blocked = job.source::<BlockedCard>("blocked_cards")?.assign_timestamps(|b| b.ts_ms, bound)?;

    let velocity = payments
        .clone()
        .key_by("velocity:by-card", |p| p.card_id)
        .window("velocity", Sliding::of(secs(60)).every(secs(10)))
        .aggregate(Count)
        .filter("velocity:over", move |w| w.value > max_per_window)
        .map("velocity:alert", |w| {
            let v = Velocity { card_id: w.key, count: w.value, start_ms: w.start_ms, end_ms: w.end_ms };
            Alert {
                rule: "velocity".into(),
                card_id: v.card_id,
                txn_id: String::new(),
                ts_ms: v.end_ms - 1,
                detail: format!("{} payments in [{}, {})", v.count, v.start_ms, v.end_ms),
            }
        });

    let table = blocked.key_by("blocked:by-card", |b| b.card_id).map_values("blocked:rows", |b| b.blocked.then_some(b));
    let blocked_alerts = payments
        .clone()
        .key_by("blocked:payments-by-card", |p| p.card_id)
        .temporal_join(table)
        .join("blocked-card")
        .flat_map("blocked:alert", |j| j.right.map(|b| alert("blocked-card", &j.left, format!("card blocked since {}", b.ts_ms))));

    let geo_alerts = payments.clone().key_by("geo:by-card", |p| p.card_id).process("geo-velocity", geo);
    let testing_alerts = payments.clone().key_by("testing:by-card", |p| p.card_id).process("card-testing", testing);

    // The join holds a payment's time and card (its `txn_id` moved into the key) and nothing of an
    // authorization but its time.
    let unauthorized = payments
        .key_by_split("unauthorized:payments-by-txn", |p| (p.txn_id, (p.ts_ms, p.card_id)))
        .interval_join(auths.key_by_split("unauthorized:auths-by-txn", |a| (a.txn_id, ())))
        .between(0, auth_window)
        .with_unmatched_left()
        .join("unauthorized")
        .flat_map("unauthorized:alert", move |j| {
            let (ts_ms, card_id) = j.left;
            j.right.is_none().then(|| Alert {
                rule: "unauthorized".to_string(),
                card_id,
                txn_id: j.key.into(),
                ts_ms,
                detail: format!("no authorization within {} ms", millis(auth_window as u64).as_millis()),
            })
        });

    velocity.union(blocked_alerts).union(geo_alerts).union(testing_alerts).union(unauthorized).sink("alerts")
}
