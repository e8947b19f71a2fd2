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

use crate::payment::Payment;

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
