//! `nexmark-q3`: local item suggestion. Every auction in category 10 whose seller lives in
//! Oregon, Idaho or California, with the seller's name, city and state:
//!
//! ```sql
//! SELECT P.name, P.city, P.state, A.id
//! FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
//! WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
//! ```
//!
//! Why an updating view: in Flink this is a regular join, not a windowed one. Both sides are kept
//! for ever and a row is emitted as soon as an auction and its seller have both arrived, in
//! whichever order, however far apart in event time. The window and interval joins of
//! `paystream-operators` only pair records within a bounded stretch of event time, and the
//! temporal join pairs an auction only with the seller as of the auction's time; the join of
//! two [`Collection`](paystream_engine::Collection)s (differential dataflow) is the one with
//! Flink's semantics. Both inputs only insert, so the join's changelog only inserts too: each
//! change becomes that many rows, and the sink writes rows, not a changelog.
//!
//! What it costs: the selected persons and auctions (half the persons: 5 of the generator's 10
//! cities are in those states; a fifth of the auctions: 1 of its 5 categories) are held for the
//! whole run, as in Flink without a state TTL.
//! Rows are emitted once the watermark passes their time, rounded up to `granularity_ms`.
//!
//! Sources `persons`, `auctions`; sink `suggestions` (CSV columns `name,city,state,auction`).

use paystream_engine::{csv_record, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};

use super::{Auction, Person, GRANULARITY, OUT_OF_ORDERNESS};
use crate::text::ShortText;

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q3",
    about: "Nexmark q3, local item suggestion: auctions of category 10 whose sellers live in OR, ID or CA (a regular join).",
    sources: &[
        SourceSpec { name: "persons", record: "Person", about: "the persons (give the gen: sources the same options)" },
        SourceSpec { name: "auctions", record: "Auction", about: "the auctions" },
    ],
    sinks: &[SinkSpec { name: "suggestions", about: "one row per matching auction: name,city,state,auction" }],
    params: &[OUT_OF_ORDERNESS, GRANULARITY, ParamSpec { name: "category", default: "10", about: "the auctions' category" }],
    build,
};

/// The sellers' states the query keeps.
const STATES: [&str; 3] = ["OR", "ID", "CA"];

csv_record! {
    /// An auction of the category with a seller from one of the states.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Suggestion {
        /// The seller's name.
        pub name: ShortText,
        /// The seller's city.
        pub city: ShortText,
        /// The seller's state.
        pub state: ShortText,
        /// The auction id.
        pub auction: u64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let bound_ms: u64 = params.get("out_of_orderness_ms")?;
    let granularity_ms: u64 = params.get("granularity_ms")?;
    let category: u64 = params.get("category")?;
    // Persons keyed by id, with what the row needs of them.
    let sellers = job
        .source::<Person>("persons")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(bound_ms))?
        .filter("local-persons", |p| STATES.iter().any(|s| p.state == *s))
        .to_collection("persons-by-id", granularity_ms, |p: Person| vec![((p.id, (p.name, p.city, p.state)), 1)]);
    let auctions = job
        .source::<Auction>("auctions")?
        .assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(bound_ms))?
        .filter("in-category", move |a| a.category == category)
        .to_collection("auctions-by-seller", granularity_ms, |a: Auction| vec![((a.seller, a.id), 1)]);
    auctions
        .join(sellers)
        .changelog("matches")
        .flat_map("to-rows", |change| {
            let (_seller, (auction, (name, city, state))) = change.data;
            // Inputs that only insert make a join that only inserts: `diff` is a positive count.
            let copies = usize::try_from(change.diff).unwrap_or(0);
            std::iter::repeat_n(Suggestion { name, city, state, auction }, copies)
        })
        .sink("suggestions")
}
