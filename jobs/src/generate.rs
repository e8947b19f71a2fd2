//! `generate-payments`: writes a payment source to a sink, to make sample input for other jobs.
//!
//! With the defaults it writes the generator's 1,000,000 payments to `out/generate-payments/payments.csv`;
//! `--source payments=gen:count=10000,seed=7` picks another sample, and `--sink payments=file:x.jsonl`
//! another format. Records pass unchanged, in the generator's order within each watermark step
//! (the sequence number in `txn_id` `tN`), so the file keeps the generator's disorder and late
//! events; records whose `txn_id` has no sequence number follow in line order. A larger
//! `out_of_orderness_ms` makes fewer, longer steps: with the default, samples of up to ten
//! minutes of event time (6,000,000 events at the default pace) come out in exact generator order.

use paystream_engine::{JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};

use crate::payment::{Adjustment, Authorization, BlockedCard, Payment};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "generate-payments",
    about: "Copies a payment source (by default the generator) to a sink: sample data for the other jobs.",
    sources: &[SourceSpec { name: "payments", record: "Payment", about: "the payments to copy" }],
    sinks: &[SinkSpec {
        name: "payments",
        about: "the same payments: ts_ms,txn_id,card_id,merchant_id,amount_cents,currency,country,status",
    }],
    params: &[ParamSpec {
        name: "out_of_orderness_ms",
        default: "600000",
        about: "watermark bound, ms: the file is in generator order within each watermark step this long",
    }],
    build,
};

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .sink_ordered_by("payments", |p| sequence_number(&p.txn_id))
}

/// The generator's sequence number in a `txn_id` such as `t42`; `u64::MAX` for other ids.
fn sequence_number(txn_id: &str) -> u64 {
    txn_id.strip_prefix('t').and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

/// `generate-events`: the payment generator's four event types copied to sinks (a file each by
/// default, or a broker topic each), to load a live pipeline: payments, their authorizations,
/// refunds and chargebacks, and blocked-card changes. Give every source the same generator
/// options (`count`, `seed`, ...) so the authorizations and adjustments refer to the payments.
pub const EVENTS_SPEC: JobSpec = JobSpec {
    name: "generate-events",
    about: "Copies the payment, authorization, adjustment and blocked-card sources (by default the generators) to sinks: \
            input for a live fraud-detection or merchant-exposure run.",
    sources: &[
        SourceSpec { name: "payments", record: "Payment", about: "the payments to copy" },
        SourceSpec { name: "authorizations", record: "Authorization", about: "their authorizations" },
        SourceSpec { name: "adjustments", record: "Adjustment", about: "refunds and chargebacks" },
        SourceSpec { name: "blocked_cards", record: "BlockedCard", about: "blocked-card changes" },
    ],
    sinks: &[
        SinkSpec { name: "payments", about: "ts_ms,txn_id,card_id,merchant_id,amount_cents,currency,country,status" },
        SinkSpec { name: "authorizations", about: "txn_id,ts_ms,auth_code" },
        SinkSpec { name: "adjustments", about: "ts_ms,txn_id,merchant_id,amount_cents,kind" },
        SinkSpec { name: "blocked_cards", about: "ts_ms,card_id,blocked" },
    ],
    params: &[ParamSpec {
        name: "out_of_orderness_ms",
        default: "600000",
        about: "watermark bound, ms: each output is in generator order within each watermark step this long",
    }],
    build: build_events,
};

fn build_events(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let bound: u64 = params.get("out_of_orderness_ms")?;
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(bound))?
        .sink_ordered_by("payments", |p| sequence_number(&p.txn_id))?;
    job.source::<Authorization>("authorizations")?
        .assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(bound))?
        .sink_ordered_by("authorizations", |a| sequence_number(&a.txn_id))?;
    job.source::<Adjustment>("adjustments")?
        .assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(bound))?
        .sink_ordered_by("adjustments", |a| a.ts_ms)?;
    job.source::<BlockedCard>("blocked_cards")?
        .assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(bound))?
        .sink_ordered_by("blocked_cards", |b| b.ts_ms)
}
