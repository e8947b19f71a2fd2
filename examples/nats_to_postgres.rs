//! Payments from a NATS JetStream stream, each merchant's 10 s windows into a PostgreSQL table,
//! upserted by (window, merchant): exactly-once with checkpoints.
//!
//! ```text
//! cargo run --example nats_to_postgres -- run generate-payments --source payments=gen:count=20000 \
//!     --sink 'payments=nats://127.0.0.1:4222/PAYMENTS?subject=payments'
//! cargo run --example nats_to_postgres -- run merchant-windows --checkpoint-dir chk \
//!     --source 'payments=nats://127.0.0.1:4222/PAYMENTS?bounded=true' \
//!     --sink 'windows=postgres://postgres@127.0.0.1:5432/test?table=merchant_windows&create=true&mode=upsert&key=window_start_ms,merchant_id'
//! psql -h 127.0.0.1 -U postgres -d test -c 'SELECT * FROM merchant_windows ORDER BY payment_count DESC LIMIT 5'
//! ```
use paystream::prelude::*;

paystream::csv_record! {
    /// One merchant's approved payments in one 10 s window (the names give the column types).
    #[derive(Clone, Debug)]
    pub struct MerchantWindow { pub window_start_ms: u64, pub merchant_id: u64, pub payment_count: u64, pub amount_cents: i64 }
}

const MERCHANT_WINDOWS: JobSpec = JobSpec {
    name: "merchant-windows",
    about: "Each merchant's approved payments per 10 s window: count and amount.",
    sources: &[SourceSpec { name: "payments", record: "Payment", about: "payments, from a NATS stream" }],
    sinks: &[SinkSpec { name: "windows", about: "window_start_ms,merchant_id,payment_count,amount_cents" }],
    params: &[],
    build: merchant_windows,
};

fn merchant_windows(job: &mut JobBuilder, _params: &Params) -> Result<()> {
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(2_000))?
        .filter("approved", |p| p.status == Status::Approved)
        .key_by("by-merchant", |p| p.merchant_id)
        .window("per-10s", Tumbling::of(secs(10)))
        .aggregate(CountAndSum::of(|p: &Payment| p.amount_cents))
        .map("to-row", |w| MerchantWindow {
            window_start_ms: w.start_ms,
            merchant_id: w.key,
            payment_count: w.value.count,
            amount_cents: w.value.sum,
        })
        .sink("windows")
}

fn main() -> std::process::ExitCode {
    let mut jobs = paystream::jobs::all_jobs();
    jobs.push(MERCHANT_WINDOWS);
    paystream::cli::main(jobs)
}
