//! `nexmark-generate`: writes the three Nexmark streams to sinks, for replay and for tests.
//!
//! With the defaults it writes the generator's 1,000,000 events to
//! `out/nexmark-generate/{persons,auctions,bids}.csv`; give the three sources the same `gen:`
//! options (`--source persons=gen:count=5000 --source auctions=gen:count=5000 --source
//! bids=gen:count=5000`) to keep the ids consistent. Records pass unchanged; within each file
//! they are in event-time order (as the watermark lets them through), ties in line order.

use paystream_engine::{JobBuilder, JobSpec, OutOfOrder, Params, Result, SinkSpec, SourceSpec};

use super::{Auction, Bid, Person, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-generate",
    about: "Copies the Nexmark persons, auctions and bids (by default the generator) to sinks: input for replay.",
    sources: &[
        SourceSpec { name: "persons", record: "Person", about: "the persons (give the three gen: sources the same options)" },
        SourceSpec { name: "auctions", record: "Auction", about: "the auctions" },
        SourceSpec { name: "bids", record: "Bid", about: "the bids" },
    ],
    sinks: &[
        SinkSpec { name: "persons", about: "id,name,email_address,credit_card,city,state,ts_ms" },
        SinkSpec { name: "auctions", about: "id,item_name,description,initial_bid_cents,reserve_cents,ts_ms,expires_ms,seller,category" },
        SinkSpec { name: "bids", about: "auction,bidder,price_cents,channel,ts_ms" },
    ],
    params: &[OUT_OF_ORDERNESS],
    build,
};

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let bound_ms: u64 = params.get("out_of_orderness_ms")?;
    job.source::<Person>("persons")?.assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(bound_ms))?.sink("persons")?;
    job.source::<Auction>("auctions")?.assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(bound_ms))?.sink("auctions")?;
    job.source::<Bid>("bids")?.assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(bound_ms))?.sink("bids")
}
