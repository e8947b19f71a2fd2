//! `generate-payments`: writes a payment source to a sink, to make sample input for other jobs.
//!
//! With the defaults it writes the generator's 1,000,000 payments to `out/generate-payments/payments.csv`;
//! `--source payments=gen:count=10000,seed=7` picks another sample, and `--sink payments=file:x.jsonl`
//! another format. Records pass unchanged (in the sink's order: by watermark, then by line).

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
        default: "60000",
        about: "watermark bound, ms: only affects how long records wait in the sink before they are written",
    }],
    build,
};

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .sink("payments")
}
