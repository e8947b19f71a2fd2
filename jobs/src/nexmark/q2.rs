//! `nexmark-q2`: selection. The auction and price of every bid on an auction whose id is a
//! multiple of 123 (the Flink variant of the specification's query, which lists a few auction
//! ids instead).
//!
//! Source `bids`, sink `selected` (CSV columns `auction,price_cents`).

use paystream_engine::{csv_record, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};

use super::{Bid, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q2",
    about: "Nexmark q2, selection: auction and price of the bids on auctions whose id is a multiple of 123.",
    sources: &[SourceSpec { name: "bids", record: "Bid", about: "the bids (gen: is the Nexmark generator)" }],
    sinks: &[SinkSpec { name: "selected", about: "one row per selected bid: auction,price_cents" }],
    params: &[OUT_OF_ORDERNESS, ParamSpec { name: "modulus", default: "123", about: "keep bids whose auction id is a multiple of this" }],
    build,
};

csv_record! {
    /// A selected bid's auction and price.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct AuctionPrice {
        /// The auction.
        pub auction: u64,
        /// The price bid, cents.
        pub price_cents: u64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let modulus: u64 = params.get("modulus")?;
    if modulus == 0 {
        return Err(paystream_engine::Error::msg("parameter modulus must be positive; set it with --set modulus=123"));
    }
    job.source::<Bid>("bids")?
        .assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .filter("auction-multiple", move |b| b.auction % modulus == 0)
        .map("to-row", |b| AuctionPrice { auction: b.auction, price_cents: b.price_cents })
        .sink("selected")
}
