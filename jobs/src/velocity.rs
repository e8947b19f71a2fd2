//! `card-velocity`: cards that pay often in a short time, a classic fraud signal.
//!
//! Per card, 60 s windows sliding every 10 s with 2 s out-of-orderness; a window whose count
//! reaches `min_count` is an alert. Sink `alerts`, CSV columns
//! `window_start_ms,window_end_ms,card_id,count,sum_amount_cents`; late records to `late_payments`.

use paystream_engine::{csv_record, millis, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{CountAndSum, Sliding, WindowExt};

use crate::payment::Payment;

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "card-velocity",
    about: "Per card: payments in sliding event-time windows; windows with at least min_count payments are alerts.",
    sources: &[SourceSpec { name: "payments", record: "Payment", about: "the payments to watch" }],
    sinks: &[
        SinkSpec {
            name: "alerts",
            about: "one row per card and window over the threshold: window_start_ms,window_end_ms,card_id,count,sum_amount_cents",
        },
        SinkSpec { name: "late_payments", about: "payments that arrived after every window covering them had fired, as read" },
    ],
    params: &[
        ParamSpec { name: "min_count", default: "3", about: "payments in one window that make an alert" },
        ParamSpec { name: "window_ms", default: "60000", about: "window size, ms" },
        ParamSpec { name: "slide_ms", default: "10000", about: "a window starts every slide_ms" },
        ParamSpec {
            name: "out_of_orderness_ms",
            default: "2000",
            about: "how far behind the latest payment one may arrive and still count, ms",
        },
    ],
    build,
};

csv_record! {
    /// A card that paid at least `min_count` times in one window.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct VelocityAlert {
        /// Inclusive start, ms since the epoch.
        pub window_start_ms: u64,
        /// Exclusive end.
        pub window_end_ms: u64,
        /// The card.
        pub card_id: u64,
        /// Payments in the window.
        pub count: u64,
        /// Their total amount.
        pub sum_amount_cents: i64,
    }
}

fn positive(params: &Params, name: &str) -> Result<u64> {
    let value: u64 = params.get(name)?;
    if value == 0 {
        return Err(paystream_engine::Error::msg(format!("parameter {name} must be positive")));
    }
    Ok(value)
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let min_count: u64 = params.get("min_count")?;
    let (window_ms, slide_ms) = (positive(params, "window_ms")?, positive(params, "slide_ms")?);
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(params.get("out_of_orderness_ms")?))?
        .key_by("by-card", |p| p.card_id)
        .window("velocity", Sliding::of(millis(window_ms)).every(millis(slide_ms)))
        .late_records_to("late_payments")
        .aggregate(CountAndSum::of(|p: &Payment| p.amount_cents))
        .filter("over-threshold", move |w| w.value.count >= min_count)
        .map("to-alert", |w| VelocityAlert {
            window_start_ms: w.start_ms,
            window_end_ms: w.end_ms,
            card_id: w.key,
            count: w.value.count,
            sum_amount_cents: w.value.sum,
        })
        .sink("alerts")
}
