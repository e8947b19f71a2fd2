//! `nexmark-q4`: average closing price per category. Each auction's winning bid is the highest
//! price bid on it between its opening and its expiry (both included); per category, the
//! average of its auctions' winning bids:
//!
//! ```sql
//! SELECT Q.category, AVG(Q.final)
//! FROM (SELECT MAX(B.price) AS final, A.category
//!       FROM auction A, bid B
//!       WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
//!       GROUP BY A.id, A.category) Q
//! GROUP BY Q.category;
//! ```
//!
//! Why an updating view: in Flink this is a regular join followed by two aggregates over
//! changing data. A new bid can raise an auction's maximum, which retracts the category's
//! average and inserts a new one; a bid may also arrive before its auction. Each auction has its
//! own interval (`[ts_ms, expires_ms]`), so neither the window join (one window for all keys)
//! nor the interval join (one pair of bounds for all records) expresses the condition. Two
//! [`Collection`](paystream_engine::Collection)s (differential dataflow) joined, filtered on the
//! bid's time, reduced to a maximum per auction, then summed and counted per category, revise
//! exactly as Flink's changelog does.
//!
//! The average is in whole cents, rounded toward zero (Flink's `AVG` of a `BIGINT` column is a
//! `BIGINT`); `auctions` is how many auctions of the category have a winning bid.
//!
//! What it costs: the join holds every auction and every bid for the whole run (as Flink's does
//! without a state TTL), and the maximum step every bid again, keyed by auction: memory grows
//! with the input, about 60 bytes a bid (520 MiB peak at 10 M events, BENCHMARKS.md). The views
//! update once per `granularity_ms` of watermark; each update of a category costs the same
//! whatever the number of its auctions (sums and counts are kept as weights, not recomputed).
//!
//! Sources `auctions`, `bids`; sink `averages`, a changelog (CSV columns
//! `category,auctions,average_price_cents,diff`): `diff` 1 makes a row current, -1 retracts it;
//! within a time step retractions come first, so applying the rows in order leaves one current
//! row per category.

use paystream_engine::{csv_record, JobBuilder, JobSpec, OutOfOrder, Params, Result, SinkSpec, SourceSpec};

use super::{Auction, Bid, GRANULARITY, OUT_OF_ORDERNESS};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q4",
    about: "Nexmark q4, average closing price per category: the highest bid of each auction within its lifetime, averaged per category, as a changelog.",
    sources: &[
        SourceSpec { name: "auctions", record: "Auction", about: "the auctions (give the gen: sources the same options)" },
        SourceSpec { name: "bids", record: "Bid", about: "the bids" },
    ],
    sinks: &[SinkSpec {
        name: "averages",
        about: "changelog: category,auctions,average_price_cents,diff (1 insert, -1 retract)",
    }],
    params: &[OUT_OF_ORDERNESS, GRANULARITY],
    build,
};

csv_record! {
    /// A change to a category's average closing price.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct CategoryAverage {
        /// The category.
        pub category: u64,
        /// Its auctions that have a winning bid.
        pub auctions: u64,
        /// The average of their winning bids, cents, rounded toward zero.
        pub average_price_cents: u64,
        /// 1: this row is now current; -1: it no longer is.
        pub diff: i64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let bound_ms: u64 = params.get("out_of_orderness_ms")?;
    let granularity_ms: u64 = params.get("granularity_ms")?;
    let auctions = job.source::<Auction>("auctions")?.assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(bound_ms))?.to_collection(
        "auctions-by-id",
        granularity_ms,
        |a: Auction| vec![((a.id, (a.category, a.ts_ms, a.expires_ms)), 1)],
    );
    let bids = job.source::<Bid>("bids")?.assign_timestamps(|b| b.ts_ms, OutOfOrder::millis(bound_ms))?.to_collection(
        "bids-by-auction",
        granularity_ms,
        |b: Bid| vec![((b.auction, (b.price_cents, b.ts_ms)), 1)],
    );

    // Per auction (and its category), the highest price bid within its lifetime.
    let winning = auctions
        .join(bids)
        .filter(|(_, ((_, opens_ms, expires_ms), (_, bid_ms)))| (*opens_ms..=*expires_ms).contains(bid_ms))
        .map(|(auction, ((category, _, _), (price_cents, _)))| ((auction, category), price_cents))
        .reduce("winning-bid", |_, prices, out| {
            // Prices come in ascending order: the last is the highest.
            if let Some((highest, _)) = prices.last() {
                out.push((**highest, 1));
            }
        })
        .map(|((_, category), price_cents)| (category, price_cents));

    // Sums and counts as weights: a category's update costs the same however many auctions it
    // has. The weight is the price plus one, so that a category whose winning bids are all free
    // still has a (non-zero) total and a row; the extra cent per auction is taken off below.
    let totals = winning.clone().weigh(|(category, price_cents)| (category, price_cents as isize + 1)).count();
    let counts = winning.map(|(category, _)| category).count();
    counts
        .join(totals)
        .changelog("average-changes")
        .map("to-rows", |change| {
            let (category, (auctions, total_plus_auctions)) = change.data;
            // A category is in `counts` only with at least one auction: the division is safe.
            let average_price_cents = (total_plus_auctions - auctions).checked_div(auctions).unwrap_or(0).max(0) as u64;
            CategoryAverage { category, auctions: auctions.max(0) as u64, average_price_cents, diff: change.diff }
        })
        // Within a time step, retractions before insertions: an upserting consumer ends right.
        .sink_ordered_by("averages", |c| u64::from(c.diff > 0))
}
