//! paystream's engine: the typed stream API and its execution on timely dataflow.
//!
//! Only this crate names timely types. Everything above it (operators, jobs, the CLI) composes
//! [`Stream`]s and [`KeyedStream`]s and implements the small traits defined here.
//!
//! * [`time`]: event time, watermarks and durations.
//! * [`record`]: how records are read from and written to CSV and JSON lines.
//! * [`job`]: job specifications, parameters and the [`JobBuilder`] a job function receives.
//! * [`stream`]: [`Stream`] and [`KeyedStream`] with the stateless operators.
//! * [`keyed`]: the event-time keyed operator primitive windows and joins are built on.
//! * [`decode`]: the `file:` source's line reading and decoding, usable on any buffered reader.
//! * [`connector`]: the traits of source and sink connectors and their registry by URI scheme.
//! * [`control`]: the control socket through which `paystream savepoint` reaches a running job.
//! * [`format`](mod@format): payload formats (CSV, JSON lines), apart from transports.
//! * [`source`] and [`sink`]: the operators that drive connectors: splits, watermarks,
//!   checkpointed positions; encoding, ordering and the two-phase commit of output.
//! * [`runtime`]: running a job on threads or processes, with progress and a summary.
//! * [`cluster`]: forming a multi-process run (timeout, handshake), and a peer lost mid-run.
//! * [`io`]: the run's tokio runtime, for control endpoints and network connectors.
//! * [`observe`]: the Prometheus metrics endpoint and health check.
//! * [`split`]: what a source's splits are made of (read status, position, the partition trait);
//!   `context` and `flow` (private): what the streams of one build share, and flow control.
//!
//! Module dependencies point one way (`use crate::...`, tests aside). Leaves, naming no other
//! module: [`time`], [`keygroup`], [`latency`], [`faults`], [`cluster`], [`format`](mod@format), [`io`], [`record`] and
//! `observe/mod.rs` ([`observe::CheckpointStats`]); [`split`] names only [`record`], `flow` only
//! [`time`], [`metrics`] only [`latency`], [`checkpoint`] only [`faults`] and [`observe`]. Then
//! [`decode`] (on [`split`], [`record`], [`format`](mod@format)), [`connector`] (on [`decode`], [`split`]),
//! and `context` (on [`checkpoint`], [`connector`], `flow`, [`metrics`]); [`control`] (the savepoint
//! socket) on [`checkpoint`] and [`io`]. The operators build on
//! `context`: [`keyed`], [`sink`] and [`source`] name none of each other; [`stream`] names the
//! three, [`collection`] names [`stream`], and [`job`] ([`JobBuilder`], [`RunPlan`](job::RunPlan))
//! names [`stream`] and creates the `context`. At the top, [`runtime`] (on [`job`], [`control`], [`cluster`] and the
//! [`observe`] endpoint and exporter) and [`testing`]. Types that several of these share live in
//! the lowest module that needs them and are re-exported where they were first defined
//! (`source::{Partition, Position, ReadStatus, FlowControl}`, `job::{ParticipantKind,
//! DEAD_LETTERS}`). One cycle is left between folders, not modules: [`checkpoint`] names
//! `observe::CheckpointStats` while [`observe::exporter`] reads [`checkpoint::CommitState`].

pub mod checkpoint;
pub mod cluster;
pub mod collection;
pub mod connector;
mod context;
pub mod control;
pub mod decode;
pub mod faults;
mod flow;
pub mod format;
pub mod io;
pub mod job;
pub mod keyed;
pub mod keygroup;
pub mod latency;
pub mod metrics;
pub mod observe;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod split;
pub mod stream;
pub mod testing;
pub mod time;

pub use collection::{Change, Collection};
pub use connector::Connectors;
pub use format::Format;
pub use job::{JobBuilder, JobSpec, ParamSpec, Params, SinkSpec, SourceSpec};
pub use keyed::{KeyedLogic, Split};
pub use keygroup::KeyMap;
pub use record::{CsvField, CsvRecord, DeadLetter, Rfc3339Millis};
pub use source::{GenOptions, Generate};
pub use stream::{Connected, KeyedStream, SourceStage, Stream};
pub use time::{millis, minutes, secs, Duration, OutOfOrder};

/// The error type used across paystream: a message with context, printed as one line.
pub type Error = anyhow::Error;
/// `Result` with paystream's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every record flowing between operators must be: sendable between threads and
/// processes (serde), cloneable and debuggable.
pub trait Data: Clone + std::fmt::Debug + Send + serde::Serialize + serde::de::DeserializeOwned + 'static {}
impl<T: Clone + std::fmt::Debug + Send + serde::Serialize + serde::de::DeserializeOwned + 'static> Data for T {}

/// What a key must be: [`Data`] plus equality and a stable hash (see [`keygroup`]).
pub trait Key: Data + Eq + std::hash::Hash + Ord {}
impl<T: Data + Eq + std::hash::Hash + Ord> Key for T {}

#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}
