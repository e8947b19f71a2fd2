//! `throughput-windows`: per merchant, payment volume in 10 s tumbling event-time windows.
//!
//! Source `payments`, sink `windows` (CSV columns `window_start_ms,window_end_ms,merchant_id,count,
//! sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents`), late records
//! to `late_payments`. The p99 comes from an HdrHistogram at 2 significant digits (within 1%);
//! negative amounts (refunds) count as 0 in it.
//!
//! For dashboards that cannot wait for a window to end, `--set emit_every_records=K` writes a
//! merchant's partial row each time its window has counted `K` more payments, and `--set
//! emit_every_ms=N` every `N` ms of wall-clock time for each merchant and window that counted
//! payments since its last row. The on-time row always follows, so upserting by
//! `window_start_ms,merchant_id` (as with `allowed_lateness_ms`) ends with it. Both are off by
//! default, and then the output is as without them.

use paystream_engine::{csv_record, millis, JobBuilder, JobSpec, OutOfOrder, ParamSpec, Params, Result, SinkSpec, SourceSpec};
use paystream_operators::{Aggregate, Percentile, Tumbling, WindowExt};

use crate::payment::{Payment, Status};

/// The job's specification, for the registry.
pub const SPEC: JobSpec = JobSpec {
    name: "throughput-windows",
    about: "Per merchant: payment count, volume, approvals and largest amount in tumbling event-time windows.",
    sources: &[SourceSpec { name: "payments", record: "Payment", about: "the payments to measure" }],
    sinks: &[
        SinkSpec {
            name: "windows",
            about: "one row per merchant and window (more with allowed_lateness_ms or emit_every_*: the last one counts): \
                    window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents",
        },
        SinkSpec { name: "late_payments", about: "payments that arrived after their window had fired, as read" },
    ],
    params: &[
        ParamSpec { name: "window_ms", default: "10000", about: "window size, ms" },
        ParamSpec { name: "out_of_orderness_ms", default: "2000", about: "how far behind the latest payment one may arrive and still count, ms" },
        ParamSpec {
            name: "allowed_lateness_ms",
            default: "0",
            about: "how long after a window fired a late payment still updates it, ms (a second row for the same window \
                    and merchant: upsert them by window_start_ms,merchant_id); later ones go to late_payments",
        },
        ParamSpec {
            name: "emit_every_records",
            default: "0",
            about: "also write a merchant's partial row before its window ends, each time the window has counted this \
                    many more payments (0: off; upsert rows by window_start_ms,merchant_id)",
        },
        ParamSpec {
            name: "emit_every_ms",
            default: "0",
            about: "also write partial rows every this many ms of wall-clock time, for windows that counted payments \
                    since their last row (0: off; which partial rows a run writes depends on timing)",
        },
    ],
    build,
};

csv_record! {
    /// One merchant's payments in one window.
    #[derive(Clone, Debug, PartialEq, PartialOrd)]
    pub struct MerchantWindow {
        /// Inclusive start, ms since the epoch.
        pub window_start_ms: u64,
        /// Exclusive end.
        pub window_end_ms: u64,
        /// The merchant.
        pub merchant_id: u64,
        /// Payments in the window, whatever their status.
        pub count: u64,
        /// Sum of their amounts.
        pub sum_amount_cents: i64,
        /// Approved payments.
        pub approved_count: u64,
        /// Approved payments over all payments, 0 to 1.
        pub approval_rate: f64,
        /// The largest amount.
        pub max_amount_cents: i64,
        /// The 99th percentile of the amounts (within 1%).
        pub p99_amount_cents: u64,
    }
}

/// The per-window statistics, in one pass: count, sum, approved count, max amount.
#[derive(Clone, Copy, Debug, Default)]
pub struct MerchantStats;

impl Aggregate<Payment> for MerchantStats {
    type Acc = (u64, i64, u64, i64);
    type Out = (u64, i64, u64, i64);
    fn init(&self) -> Self::Acc {
        (0, 0, 0, i64::MIN)
    }
    fn add(&self, acc: &mut Self::Acc, p: &Payment) {
        acc.0 += 1;
        acc.1 += p.amount_cents;
        acc.2 += u64::from(p.status == Status::Approved);
        acc.3 = acc.3.max(p.amount_cents);
    }
    fn merge(&self, acc: &mut Self::Acc, o: &Self::Acc) {
        *acc = (acc.0 + o.0, acc.1 + o.1, acc.2 + o.2, acc.3.max(o.3));
    }
    fn result(&self, acc: &Self::Acc) -> Self::Out {
        *acc
    }
}

fn build(job: &mut JobBuilder<'_>, params: &Params) -> Result<()> {
    let window_ms: u64 = params.get("window_ms")?;
    let bound_ms: u64 = params.get("out_of_orderness_ms")?;
    let lateness_ms: u64 = params.get("allowed_lateness_ms")?;
    let every_records: u64 = params.get("emit_every_records")?;
    let every_ms: u64 = params.get("emit_every_ms")?;
    // Several rows for one window and merchant: partial ones, the on-time one, late updates.
    let revised = lateness_ms > 0 || every_records > 0 || every_ms > 0;
    if window_ms == 0 {
        return Err(paystream_engine::Error::msg("parameter window_ms must be positive; set it with --set window_ms=10000"));
    }
    job.source::<Payment>("payments")?
        .assign_timestamps(|p| p.ts_ms, OutOfOrder::millis(bound_ms))?
        .key_by("by-merchant", |p| p.merchant_id)
        .window("throughput", Tumbling::of(millis(window_ms)))
        .allowed_lateness(millis(lateness_ms))
        .emit_every_records(every_records)
        .emit_every(millis(every_ms))
        .late_records_to("late_payments")
        .aggregate((MerchantStats, Percentile::of(0.99, |p: &Payment| p.amount_cents.max(0) as u64)))
        .map("to-row", |w| {
            let ((count, sum_amount_cents, approved_count, max_amount_cents), p99_amount_cents) = w.value;
            MerchantWindow {
                window_start_ms: w.start_ms,
                window_end_ms: w.end_ms,
                merchant_id: w.key,
                count,
                sum_amount_cents,
                approved_count,
                approval_rate: approved_count as f64 / count as f64,
                max_amount_cents,
                p99_amount_cents,
            }
        })
        // A window's update can come in the same watermark step as its first result (a payment
        // late for a window that fires in that step, or a partial row just before the window
        // ends), and a step's lines are ordered by line: when a window may have several rows
        // they are ordered by count first, so that an update, which counts at least as many
        // payments, comes after the row it revises (an upsert keeps it). Rows with the same count
        // hold the same payments: they are the same line.
        .sink_ordered_by("windows", move |w| if revised { w.count } else { 0 })
}
