//! `nexmark-q8`: monitor new users. The persons who opened at least one auction in the same
//! 10 s tumbling window (`window_ms`) as they registered, once per person and window:
//!
//! ```sql
//! SELECT P.id, P.name, P.starttime
//! FROM (SELECT id, name, TUMBLE_START(dateTime, INTERVAL '10' SECOND) AS starttime
//!       FROM person GROUP BY id, name, TUMBLE(dateTime, INTERVAL '10' SECOND)) P
//! JOIN (SELECT seller, TUMBLE_START(dateTime, INTERVAL '10' SECOND) AS starttime
//!       FROM auction GROUP BY seller, TUMBLE(dateTime, INTERVAL '10' SECOND)) A
//! ON P.id = A.seller AND P.starttime = A.starttime;
//! ```
//!
//! Why a window join: both sides are grouped into the same tumbling windows and matched on the
//! window, so results are final when the window closes and nothing outlives it; the window join
//! of `paystream-operators` is exactly that, and it keeps state only for open windows. As in the
//! SQL, the auctions are first grouped per seller and window (a count, which the row does not
//! show), so a person with several auctions in a window makes one row, not one per auction. The
//! counts come out stamped at their window's end (less one), inside the window, so the join puts
//! each in the window it counts. Person ids are unique, so the persons' `GROUP BY` needs no step.
//!
//! Sources `persons`, `auctions`; sink `new_users` (CSV columns `id,name,window_start_ms`).

use paystream_engine::{csv_record, millis, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{Count, JoinExt, Tumbling, WindowExt};

use super::{Auction, Person, OUT_OF_ORDERNESS};
use crate::text::ShortText;

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "nexmark-q8",
    about: "Nexmark q8, monitor new users: persons who opened an auction in the tumbling window they registered in (a window join).",
    sources: &[
        SourceSpec { name: "persons", record: "Person", about: "the persons (give the gen: sources the same options)" },
        SourceSpec { name: "auctions", record: "Auction", about: "the auctions" },
    ],
    sinks: &[SinkSpec { name: "new_users", about: "one row per person and window: id,name,window_start_ms" }],
    params: &[OUT_OF_ORDERNESS, ParamSpec { name: "window_ms", default: "10000", about: "window size, ms" }],
    build,
};

csv_record! {
    /// A person who registered and opened an auction in the same window.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct NewUser {
        /// Person id.
        pub id: u64,
        /// Name.
        pub name: ShortText,
        /// The window's inclusive start, ms since the epoch.
        pub window_start_ms: u64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let bound_ms: u64 = params.get("out_of_orderness_ms")?;
    let window_ms: u64 = params.get("window_ms")?;
    if window_ms == 0 {
        return Err(paystream_engine::Error::msg("parameter window_ms must be positive; set it with --set window_ms=10000"));
    }
    let persons = job
        .source::<Person>("persons")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(bound_ms))?
        .key_by_split("persons-by-id", |p| (p.id, p.name));
    let sellers = job
        .source::<Auction>("auctions")?
        .assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(bound_ms))?
        .key_by_split("auctions-by-seller", |a| (a.seller, ()))
        .window("auctions-per-seller", Tumbling::of(millis(window_ms)))
        .aggregate(Count)
        .key_by_split("sellers", |w| (w.key, w.start_ms));
    persons
        .window_join(sellers, Tumbling::of(millis(window_ms)))
        .join("same-window")
        .map("to-rows", |j| NewUser { id: j.key, name: j.left, window_start_ms: j.start_ms })
        .sink("new_users")
}
