//! `nexmark-q1`: currency conversion. Every bid with its price turned from dollars to euros at
//! the specification's rate, 0.908.
//!
//! Prices are integer cents, so the conversion is integer arithmetic, rounded half up:
//! `euro_cents = (dollar_cents * 908 + 500) / 1000` (exact in `u64` for any price below 2^54
//! cents). The specification multiplies a number of dollars by a decimal 0.908; in cents this
//! gives the same value rounded to the cent.
//!
//! Source `bids`, sink `bids` (CSV columns `auction,bidder,price_cents,channel,ts_ms`, the price
//! now in euro cents).

use paystream_engine::{JobBuilder, JobSpec, OutOfOrder, Params, Result, SinkSpec, SourceSpec};

use super::{Bid, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q1",
    about: "Nexmark q1, currency conversion: every bid with its price in euros (x 0.908, rounded to the cent).",
    sources: &[SourceSpec { name: "bids", record: "Bid", about: "the bids, prices in dollar cents (gen: is the Nexmark generator)" }],
    sinks: &[SinkSpec { name: "bids", about: "the bids, prices in euro cents: auction,bidder,price_cents,channel,ts_ms" }],
    params: &[OUT_OF_ORDERNESS],
    build,
};

/// Dollar cents to euro cents at 0.908, rounded half up.
///
/// ```
/// use paystream_jobs::nexmark::q1::dollars_to_euros;
/// assert_eq!(dollars_to_euros(100), 91); // $1.00 -> 0.908 -> 0.91
/// assert_eq!(dollars_to_euros(1_000), 908);
/// ```
pub fn dollars_to_euros(dollar_cents: u64) -> u64 {
    (dollar_cents * 908 + 500) / 1000
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    job.source::<Bid>("bids")?
        .assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .map("to-euros", |b| Bid { price_cents: dollars_to_euros(b.price_cents), ..b })
        .sink("bids")
}
