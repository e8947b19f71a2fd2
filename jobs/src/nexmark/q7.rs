//! `nexmark-q7`: highest bid. In every tumbling window (10 s, as the Flink runs), the bids with
//! the highest price, ties included.
//!
//! Two steps: the highest bids per auction and window (keyed by auction, so spread over the
//! workers), then those of each window gathered by the window's start and the highest kept. The
//! first step's results come out stamped at the window's end (less one, rounded down to
//! `--time-granularity-ms`), so the second step's tumbling window, aligned with the first, holds
//! each window's candidates whole. Flink's q7 joins the bids back to the maximum price of their
//! window; keeping the tied bids themselves gives the same rows.
//!
//! Source `bids`, sink `highest_bids` (CSV columns
//! `window_start_ms,window_end_ms,auction,bidder,price_cents,ts_ms`).

use paystream_engine::{csv_record, millis, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{Tumbling, WindowExt};

use super::all_max::AllMax;
use super::{Bid, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q7",
    about: "Nexmark q7, highest bid: in each tumbling window, the bids with the highest price.",
    sources: &[SourceSpec { name: "bids", record: "Bid", about: "the bids (gen: is the Nexmark generator)" }],
    sinks: &[SinkSpec {
        name: "highest_bids",
        about: "one row per window and highest bid: window_start_ms,window_end_ms,auction,bidder,price_cents,ts_ms",
    }],
    params: &[OUT_OF_ORDERNESS, ParamSpec { name: "window_ms", default: "10000", about: "window size, ms" }],
    build,
};

csv_record! {
    /// A bid with the highest price of its window.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct HighestBid {
        /// Inclusive start, ms since the epoch.
        pub window_start_ms: u64,
        /// Exclusive end.
        pub window_end_ms: u64,
        /// The auction bid on.
        pub auction: u64,
        /// The bidder.
        pub bidder: u64,
        /// The price, cents.
        pub price_cents: u64,
        /// When the bid was made, ms since the epoch.
        pub ts_ms: u64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let window_ms: u64 = params.get("window_ms")?;
    if window_ms == 0 {
        return Err(paystream_engine::Error::msg("parameter window_ms must be positive; set it with --set window_ms=10000"));
    }
    job.source::<Bid>("bids")?
        .assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .key_by("by-auction", |b| b.auction)
        .window("highest-per-auction", Tumbling::of(millis(window_ms)))
        .aggregate(AllMax::by(|b: &Bid| b.price_cents))
        .flat_map("to-candidates", |w| {
            let (start_ms, end_ms) = (w.start_ms, w.end_ms);
            w.value.into_iter().map(move |b| HighestBid {
                window_start_ms: start_ms,
                window_end_ms: end_ms,
                auction: b.auction,
                bidder: b.bidder,
                price_cents: b.price_cents,
                ts_ms: b.ts_ms,
            })
        })
        .key_by("by-window", |h| h.window_start_ms)
        .window("highest", Tumbling::of(millis(window_ms)))
        .aggregate(AllMax::by(|h: &HighestBid| h.price_cents))
        .flat_map("to-rows", |w| w.value)
        .sink("highest_bids")
}
