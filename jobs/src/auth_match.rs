//! `auth-match`: each payment with its authorization, when it comes within 5 s.
//!
//! Payments interval-joined with authorizations on `txn_id`, authorization time in
//! `[payment time, payment time + 5 s]`. Sink `matches`, CSV columns
//! `txn_id,payment_ts_ms,auth_ts_ms,card_id,amount_cents`.

use paystream_engine::{csv_record, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::JoinExt;
use serde::{Deserialize, Serialize};

use crate::payment::{Authorization, Payment};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "auth-match",
    about: "Joins each payment with its authorization if it comes within max_delay_ms of the payment.",
    sources: &[
        SourceSpec { name: "payments", record: "Payment", about: "the payments" },
        SourceSpec { name: "authorizations", record: "Authorization", about: "issuers' authorizations, by txn_id" },
    ],
    sinks: &[SinkSpec { name: "matches", about: "one row per matched payment: txn_id,payment_ts_ms,auth_ts_ms,card_id,amount_cents" }],
    params: &[
        ParamSpec { name: "max_delay_ms", default: "5000", about: "latest an authorization may follow its payment, ms" },
        ParamSpec {
            name: "out_of_orderness_ms",
            default: "2000",
            about: "how far behind the latest payment one may arrive and still count, ms",
        },
        ParamSpec {
            name: "auth_out_of_orderness_ms",
            default: "6000",
            about: "the same for authorizations, which arrive in payment order, up to max_delay_ms apart",
        },
    ],
    build,
};

csv_record! {
    /// A payment and its authorization.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct AuthMatch {
        /// The transaction.
        pub txn_id: String,
        /// When the payment happened.
        pub payment_ts_ms: u64,
        /// When it was authorized.
        pub auth_ts_ms: u64,
        /// The card.
        pub card_id: u64,
        /// The amount.
        pub amount_cents: i64,
    }
}

/// The part of a payment the join holds (its `txn_id` is the key).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Paid {
    ts_ms: u64,
    card_id: u64,
    amount_cents: i64,
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let max_delay: i64 = params.get("max_delay_ms")?;
    let bound: u64 = params.get("out_of_orderness_ms")?;
    let payments = job.source::<Payment>("payments")?.assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(bound))?;
    let auth_bound: u64 = params.get("auth_out_of_orderness_ms")?;
    let auths = job.source::<Authorization>("authorizations")?.assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(auth_bound))?;
    // The join keeps of a payment only what a row needs, and of an authorization its time; the
    // transaction id is moved out of each record into the key.
    payments
        .key_by_split("payments-by-txn", |p| (p.txn_id, Paid { ts_ms: p.ts_ms, card_id: p.card_id, amount_cents: p.amount_cents }))
        .interval_join(auths.key_by_split("auths-by-txn", |a| (a.txn_id, a.ts_ms)))
        .between(0, max_delay)
        .join("auth-window")
        .flat_map("to-row", |j| {
            j.right.map(|auth_ts_ms| AuthMatch {
                txn_id: j.key.into(),
                payment_ts_ms: j.left.ts_ms,
                auth_ts_ms,
                card_id: j.left.card_id,
                amount_cents: j.left.amount_cents,
            })
        })
        .sink("matches")
}
