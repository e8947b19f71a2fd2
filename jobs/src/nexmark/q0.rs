//! `nexmark-q0`: pass-through. Every bid is read, given its event time and written unchanged:
//! the cost of the source, the watermark and the sink alone.
//!
//! Source `bids`, sink `bids` (CSV columns `auction,bidder,price_cents,channel,ts_ms`).

use paystream_engine::{JobBuilder, JobSpec, OutOfOrder, Params, Result, SinkSpec, SourceSpec};

use super::{Bid, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q0",
    about: "Nexmark q0, pass-through: every bid, unchanged.",
    sources: &[SourceSpec { name: "bids", record: "Bid", about: "the bids (gen: is the Nexmark generator)" }],
    sinks: &[SinkSpec { name: "bids", about: "the same bids: auction,bidder,price_cents,channel,ts_ms" }],
    params: &[OUT_OF_ORDERNESS],
    build,
};

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    job.source::<Bid>("bids")?.assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?.sink("bids")
}
