//! `nexmark-q5`: hot items. In every sliding window (10 s long, every 2 s, as the Flink runs),
//! the auctions with the most bids, ties included.
//!
//! Two steps: bids counted per auction and window (keyed by auction, so spread over the
//! workers), then the counts of each window gathered by the window's start and the largest kept.
//! Each window's counts come out of the first step together, stamped at the window's end (less
//! one, rounded down to `--time-granularity-ms`), so the second step's tumbling window of
//! `slide_ms` holds each window's counts whole and nothing else.
//!
//! Source `bids`, sink `hot_items` (CSV columns `window_start_ms,window_end_ms,auction,bids`).

use paystream_engine::{csv_record, millis, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{Count, Sliding, Tumbling, WindowExt, WindowResult};

use super::all_max::AllMax;
use super::{Bid, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q5",
    about: "Nexmark q5, hot items: in each sliding window, the auctions with the most bids.",
    sources: &[SourceSpec { name: "bids", record: "Bid", about: "the bids (gen: is the Nexmark generator)" }],
    sinks: &[SinkSpec { name: "hot_items", about: "one row per window and hottest auction: window_start_ms,window_end_ms,auction,bids" }],
    params: &[
        OUT_OF_ORDERNESS,
        ParamSpec { name: "window_ms", default: "10000", about: "window size, ms" },
        ParamSpec { name: "slide_ms", default: "2000", about: "a window starts every slide_ms, ms; divides window_ms" },
    ],
    build,
};

csv_record! {
    /// An auction with the most bids in one window.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct HotItem {
        /// Inclusive start, ms since the epoch.
        pub window_start_ms: u64,
        /// Exclusive end.
        pub window_end_ms: u64,
        /// The auction.
        pub auction: u64,
        /// Its bids in the window.
        pub bids: u64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let window_ms: u64 = params.get("window_ms")?;
    let slide_ms: u64 = params.get("slide_ms")?;
    if slide_ms == 0 || window_ms == 0 || !window_ms.is_multiple_of(slide_ms) {
        return Err(paystream_engine::Error::msg(format!(
            "parameters window_ms={window_ms} and slide_ms={slide_ms}: both must be positive and slide_ms must divide window_ms"
        )));
    }
    job.source::<Bid>("bids")?
        .assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .key_by("by-auction", |b| b.auction)
        .window("bids-per-auction", Sliding::of(millis(window_ms)).every(millis(slide_ms)))
        .aggregate(Count)
        .key_by("by-window", |w| w.start_ms)
        .window("hottest", Tumbling::of(millis(slide_ms)))
        .aggregate(AllMax::by(|w: &WindowResult<u64, u64>| w.value))
        .flat_map("to-rows", |hottest| {
            hottest.value.into_iter().map(|w| HotItem {
                window_start_ms: w.start_ms,
                window_end_ms: w.end_ms,
                auction: w.key,
                bids: w.value,
            })
        })
        .sink("hot_items")
}
