//! A complete custom job: cards that spend more than a limit within one minute.
//!
//! Run it like any built-in job (every `paystream` subcommand works):
//!
//! ```text
//! cargo run --example write_your_own_job -- run big-spenders --set limit_cents=500000
//! cargo run --example write_your_own_job -- jobs
//! ```
use paystream::prelude::*;

paystream::csv_record! {
    /// One card's spending in one minute, over the limit.
    #[derive(Clone, Debug)]
    pub struct BigSpender { pub window_start_ms: u64, pub card_id: u64, pub payments: u64, pub spent_cents: i64 }
}

const BIG_SPENDERS: JobSpec = JobSpec {
    name: "big-spenders",
    about: "Cards whose approved payments in a one-minute window exceed a limit.",
    sources: &[SourceSpec { name: "payments", record: "Payment", about: "payments to watch" }],
    sinks: &[SinkSpec { name: "alerts", about: "window_start_ms,card_id,payments,spent_cents" }],
    params: &[ParamSpec { name: "limit_cents", default: "300000", about: "alert above this spend per minute, in cents" }],
    build: big_spenders,
};

fn big_spenders(job: &mut JobBuilder, params: &Params) -> Result<()> {
    let limit: i64 = params.get("limit_cents")?;
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(2_000))?
        .filter("approved", |p| p.status == Status::Approved)
        .key_by("by-card", |p| p.card_id)
        .window("spend-per-minute", Tumbling::of(minutes(1)))
        .aggregate(CountAndSum::of(|p: &Payment| p.amount_cents))
        .filter("over-limit", move |w| w.value.sum > limit)
        .map("to-alert", |w| BigSpender { window_start_ms: w.start_ms, card_id: w.key, payments: w.value.count, spent_cents: w.value.sum })
        .sink("alerts")
}

fn main() -> std::process::ExitCode {
    let mut jobs = paystream::jobs::all_jobs();
    jobs.push(BIG_SPENDERS);
    paystream::cli::main(jobs)
}
