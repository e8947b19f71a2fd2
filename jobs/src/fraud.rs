//! `fraud-detection`: fraud rules over payments, authorizations and the blocked-cards table, each
//! emitting alerts `rule,card_id,txn_id,ts_ms,detail` to the sink `alerts`, where `rule` is the
//! rule's id.
//!
//! The rules come from the source `rules` ([`crate::rules`]): rules are added, changed and removed
//! while the job runs, each change at its own event time. Without a `rules` source the job runs
//! [`crate::rules::DEFAULT_RULES`], today's five rules, with the job's parameters:
//!
//! | rule (kind) | fires when | built on |
//! |---|---|---|
//! | `velocity` (`velocity-window`) | a card makes more than `max_per_window` payments in a 60 s window sliding by 10 s (one alert per window; `txn_id` empty, `ts_ms` the window's last ms) | sliding window, switched by the rule |
//! | `blocked-card` | a payment uses a card that is blocked as of the payment's time | temporal join with `blocked_cards`, switched by the rule |
//! | `geo-velocity` | a payment comes from another country than a payment on the same card at most `geo_window_ms` earlier | broadcast process function |
//! | `card-testing` | a payment of at least `large_cents` follows at least `small_count` payments under `small_cents` on the same card within `testing_window_ms` | broadcast process function with timers |
//! | `unauthorized` | a payment gets no authorization within `auth_window_ms` | interval join, unmatched side, switched by the rule |
//!
//! The kinds evaluated per payment (`velocity-count`, `velocity-amount`, `geo-velocity`,
//! `card-testing`, `amount-limit`) take their parameters from the rule; the three built on windows
//! and joins keep their job parameters, and a rule of their kind switches their alerts on and off
//! at its event time.
//!
//! A card's payments are seen in event-time order; payments with equal times in the order of their
//! encoded bytes (see `paystream_operators::process`).

use paystream_engine::{csv_record, millis, secs, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{BroadcastExt, Count, JoinExt, Sliding, WindowExt};
use serde::{Deserialize, Serialize};

use crate::payment::{Authorization, BlockedCard, Payment};
use crate::rules::{alert, AlertGate, PaymentRules, Rule, RuleChange, RuleDefaults, RuleUpdate};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "fraud-detection",
    about:
        "Fraud rules (velocity, blocked card, geo-velocity, card testing, unauthorized, amount limits), changed at run time through the rules source, over payments, authorizations and blocked cards.",
    sources: &[
        SourceSpec { name: "payments", record: "Payment", about: "the payments to check" },
        SourceSpec { name: "authorizations", record: "Authorization", about: "issuers' authorizations, by txn_id" },
        SourceSpec { name: "blocked_cards", record: "BlockedCard", about: "changes to the blocked-cards table" },
        SourceSpec {
            name: "rules",
            record: "RuleChange",
            about: "rule changes (JSON lines rule_id,kind,parameters,ts_ms,active); gen: (the default) is the five rules shipped with the job",
        },
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
            name: "rules_out_of_orderness_ms",
            default: "0",
            about: "the same for rule changes; payments wait this much longer for the rules, ms",
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
    let defaults = RuleDefaults {
        geo_window_ms: params.get("geo_window_ms")?,
        small_cents: params.get("small_cents")?,
        small_count: params.get("small_count")?,
        large_cents: params.get("large_cents")?,
        testing_window_ms: params.get("testing_window_ms")?,
    };
    let auth_window: i64 = params.get("auth_window_ms")?;

    // Each payment goes to the velocity window, both joins and the per-payment rules; its texts
    // are held inline, so the copies do not allocate.
    let payments = job.source::<Payment>("payments")?.assign_timestamps(|p| p.ts_ms, bound)?;
    let auth_bound = OutOfOrder::millis(params.get("auth_out_of_orderness_ms")?);
    let auths = job.source::<Authorization>("authorizations")?.assign_timestamps(|a| a.ts_ms, auth_bound)?;
    let blocked = job.source::<BlockedCard>("blocked_cards")?.assign_timestamps(|b| b.ts_ms, bound)?;
    let rules_bound = OutOfOrder::millis(params.get("rules_out_of_orderness_ms")?);
    let changes = job.source::<RuleChange>("rules")?.assign_timestamps(|r| r.ts_ms, rules_bound)?;
    // Invalid changes are counted (`rules_rejected`, in the run summary), never applied.
    let check = defaults.clone();
    let (valid, invalid) = changes.divert("rules:check", move |_, _, change| Rule::from_change(change, &check).is_err());
    let _ = invalid.count_as("rules:rejected", "rules_rejected");
    let rules = valid.flat_map("rules:parse", move |change| {
        Rule::from_change(&change, &defaults).ok().map(|rule| RuleUpdate { rule_id: change.rule_id, rule })
    });

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

    let per_payment = payments
        .clone()
        .key_by("rules:payments-by-card", |p| p.card_id)
        .connect_broadcast(rules.clone())
        .process("payment-rules", PaymentRules);

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

    // The alerts of the window and the joins pass while a rule of their kind is in force at their time.
    let switched = velocity
        .union(blocked_alerts)
        .union(unauthorized)
        .key_by("switched:by-card", |a| a.card_id)
        .connect_broadcast(rules)
        .keep_late_records()
        .process("switched", AlertGate);
    switched.union(per_payment).sink("alerts")
}
