//! Nexmark, the online-auction benchmark (persons, auctions and bids), on paystream.
//!
//! * [`event`]: the record types `Person`, `Auction` and `Bid`, with CSV and JSON forms.
//! * [`generator`]: their `gen:` sources, following the specification's event mix.
//! * [`generate`]: `nexmark-generate`, the three streams written to files, for replay and tests.
//! * [`q0`], [`q1`], [`q2`]: pass-through, currency conversion and selection over the bids.
//! * [`q3`], [`q4`]: local item suggestion and average closing price per category, regular
//!   joins as updating views (differential dataflow).
//! * [`q5`], [`q7`]: hot items (sliding windows) and highest bid (tumbling windows).
//! * [`q8`]: monitor new users, a window join.
//! * [`all_max`]: the aggregate q5 and q7 share, every record tied for the largest value.
//!
//! The event stream is the specification's: event `e` is a person, an auction or a bid by its
//! place in a block of 50 (1 person, 3 auctions, 46 bids, the mix of the published Flink runs).
//! Each type's generator produces its own kind from the first `count` events, so three sources
//! given the same `gen:` options together make one consistent stream: every auction's seller and
//! every bid's bidder is a person, and every bid's auction an auction, created earlier.

pub mod all_max;
pub mod event;
pub mod generate;
pub mod generator;
pub mod q0;
pub mod q1;
pub mod q2;
pub mod q3;
pub mod q4;
pub mod q5;
pub mod q7;
pub mod q8;

pub use event::{Auction, Bid, Person};

use paystream_engine::ParamSpec;

/// The watermark bound every query takes: how far behind the latest event one may arrive.
pub(crate) const OUT_OF_ORDERNESS: ParamSpec = ParamSpec {
    name: "out_of_orderness_ms",
    default: "1000",
    about: "how far behind the latest bid one may arrive, ms (the generator is in order unless given disorder_ms)",
};

/// How much event time the updating views (q3, q4) gather before they update: coarser is
/// cheaper (each update costs per distinct time) and later.
pub(crate) const GRANULARITY: ParamSpec = ParamSpec {
    name: "granularity_ms",
    default: "100",
    about: "event time is coarsened to this much (of watermark) before the views update, ms",
};
