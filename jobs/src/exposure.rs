//! `merchant-exposure`: updating views on differential dataflow.
//!
//! * `exposure`: per merchant, approved payment volume minus refunds and chargebacks, revised as
//!   adjustments arrive. CSV `merchant_id,exposure_cents,diff`: each change inserts (`diff` 1) or
//!   retracts (`-1`) a merchant's row; applying them in order gives the current exposure.
//! * `distinct_cards`: per merchant, the number of distinct cards that ever paid there, as the
//!   same kind of changelog (`merchant_id,cards,diff`).
//!
//! With checkpoints, each `to_collection` step saves the rows it passed on, consolidated, and a
//! restore replays them (see `paystream_engine::collection`): the changelogs, consolidated, equal
//! those of a run that never crashed, at any worker count; their intermediate revisions may differ.

use paystream_engine::{csv_record, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};

use crate::payment::{Adjustment, Payment, Status};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "merchant-exposure",
    about: "Per merchant: open exposure (approved volume minus refunds and chargebacks) and distinct cards, as changelogs that revise as facts arrive.",
    sources: &[
        SourceSpec { name: "payments", record: "Payment", about: "the payments" },
        SourceSpec { name: "adjustments", record: "Adjustment", about: "refunds and chargebacks of earlier payments" },
    ],
    sinks: &[
        SinkSpec { name: "exposure", about: "changelog: merchant_id,exposure_cents,diff (1 insert, -1 retract)" },
        SinkSpec { name: "distinct_cards", about: "changelog: merchant_id,cards,diff" },
    ],
    params: &[
        ParamSpec { name: "granularity_ms", default: "1000", about: "event time is coarsened to this much before the views update, ms" },
        ParamSpec { name: "out_of_orderness_ms", default: "2000", about: "watermark bound of payments, ms" },
        ParamSpec { name: "adjustments_out_of_orderness_ms", default: "60000", about: "watermark bound of adjustments, ms" },
    ],
    build,
};

csv_record! {
    /// A change to a merchant's exposure.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct ExposureChange {
        /// The merchant.
        pub merchant_id: u64,
        /// Approved volume minus refunds and chargebacks.
        pub exposure_cents: i64,
        /// 1: this row is now current; -1: it no longer is.
        pub diff: i64,
    }
}

csv_record! {
    /// A change to a merchant's distinct-card count.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct CardsChange {
        /// The merchant.
        pub merchant_id: u64,
        /// Distinct cards that ever paid there.
        pub cards: i64,
        /// 1: this row is now current; -1: it no longer is.
        pub diff: i64,
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let granularity: u64 = params.get("granularity_ms")?;
    let payments =
        job.source::<Payment>("payments")?.assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?;
    let adjustments = job
        .source::<Adjustment>("adjustments")?
        .assign_timestamps(|a| a.ts_ms, OutOfOrder::millis(params.get("adjustments_out_of_orderness_ms")?))?;

    // Exposure: every approved cent counts +1 for its merchant, every cent taken back -1; a
    // weighted count per merchant is then the sum.
    let paid = payments.clone().to_collection("exposure:paid", granularity, |p: Payment| {
        if p.status == Status::Approved {
            vec![(p.merchant_id, p.amount_cents as isize)]
        } else {
            Vec::new()
        }
    });
    let taken_back =
        adjustments.to_collection("exposure:taken-back", granularity, |a: Adjustment| vec![(a.merchant_id, -(a.amount_cents as isize))]);
    paid.concat(taken_back)
        .count()
        .changelog("exposure:changes")
        .map("exposure:row", |c| ExposureChange { merchant_id: c.data.0, exposure_cents: c.data.1, diff: c.diff })
        // Within a time step, retractions before insertions: an upserting consumer ends right.
        .sink_ordered_by("exposure", |c| u64::from(c.diff > 0))?;

    payments
        .to_collection("cards:pairs", granularity, |p: Payment| vec![((p.merchant_id, p.card_id), 1)])
        .distinct()
        .map(|(merchant, _card)| merchant)
        .count()
        .changelog("cards:changes")
        .map("cards:row", |c| CardsChange { merchant_id: c.data.0, cards: c.data.1, diff: c.diff })
        .sink_ordered_by("distinct_cards", |c| u64::from(c.diff > 0))
}
