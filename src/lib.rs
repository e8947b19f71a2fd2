//! paystream: event-time stream processing for payments, on timely dataflow.
//!
//! Write a job as a function over a [`JobBuilder`](prelude::JobBuilder), describe it with a
//! [`JobSpec`](prelude::JobSpec), and run it through the same CLI the built-in jobs use:
//!
//! ```no_run
//! use paystream::prelude::*;
//!
//! fn main() -> std::process::ExitCode {
//!     // Your jobs next to the built-in ones; every subcommand comes for free.
//!     let mut jobs = paystream::jobs::all_jobs();
//!     // jobs.push(my_job::SPEC);
//!     paystream::cli::main(jobs)
//! }
//! ```

pub mod alloc;
pub mod bench;
pub mod cli;
pub mod logging;

pub use paystream_engine as engine;
/// Runs streams over records held in memory: for examples, tests and trying an operator out.
pub use paystream_engine::testing as local;
pub use paystream_jobs as jobs;
pub use paystream_operators as operators;

/// The connectors the `paystream` binary has: `file:` and `stdout:`, `gen:` for the payment
/// event types, `kafka://` (feature `kafka`), `rabbitmq://` (feature `rabbitmq`), `nats://`
/// (feature `nats`) and `postgres://` (feature `postgres`), all on by default. Add your own with `.source(...)`/`.sink(...)` and pass them to [`cli::main_with`].
pub fn connectors() -> paystream_engine::Connectors {
    let connectors = paystream_jobs::connectors();
    #[cfg(feature = "kafka")]
    let connectors = paystream_kafka::register(connectors);
    #[cfg(feature = "rabbitmq")]
    let connectors = paystream_rabbitmq::register(connectors);
    #[cfg(feature = "postgres")]
    let connectors = paystream_postgres::register(connectors);
    #[cfg(feature = "nats")]
    let connectors = paystream_nats::register(connectors);
    connectors
}

/// Everything a job needs, in one import.
pub mod prelude {
    pub use paystream_engine::{
        millis, minutes, secs, CsvField, CsvRecord, Data, Duration, JobBuilder, JobSpec, Key, KeyedStream, OutOfOrder, ParamSpec, Params,
        Result, Rfc3339Millis, SinkSpec, SourceSpec, Stream,
    };
    pub use paystream_jobs::{text::ShortText, Authorization, Payment, Status};
    pub use paystream_operators::{
        Aggregate, Average, Count, CountAndSum, CountDistinct, CountSum, Fold, Max, Min, Percentile, Percentiles, Quantiles, Session,
        Sliding, Sum, Tumbling, WindowExt, WindowResult, Windows,
    };
}

/// Declares a record struct that can be read from and written to CSV and JSON lines.
///
/// ```
/// paystream::csv_record! {
///     #[derive(Clone, Debug, PartialEq)]
///     pub struct CardCount { pub card_id: u64, pub count: u64 }
/// }
/// use paystream::prelude::CsvRecord;
/// assert_eq!(CardCount::csv_header(), "card_id,count");
/// ```
#[macro_export]
macro_rules! csv_record {
    ($($body:tt)*) => {
        $crate::engine::__csv_record_with_serde! { "paystream::engine::__private::serde", $($body)* }
    };
}
