//! What the streams of one dataflow share while a job function builds it: the per-worker
//! [`BuildContext`] (the run's sinks and connectors, checkpoint settings, flow control, the names
//! used so far), the checkpoint participants found, and the timely stream type underneath
//! [`Stream`](crate::stream::Stream). The source, sink and keyed operators and the stream API all
//! build on it; it names none of them, nor [`crate::job`] (which creates it from a
//! [`RunPlan`](crate::job::RunPlan)). [`ParticipantKind`] and [`DEAD_LETTERS`] are re-exported from
//! [`crate::job`], [`DEFAULT_TIME_GRANULARITY_MS`] from [`crate::runtime`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::bail;

use crate::checkpoint::{CheckpointConfig, CommitState, Restore};
use crate::connector::{Connectors, ResolvedSink};
use crate::flow::FlowControl;
use crate::metrics::Metrics;
use crate::time::Time;
use crate::Result;

/// A timely stream of `(event time, record)` pairs, at watermark timestamps.
pub(crate) type TStream<'scope, T> = timely::dataflow::Stream<'scope, Time, Vec<(u64, T)>>;

/// The sink name under which unreadable records are written. A job may not declare it; a run may
/// redirect it with `--sink dead_letters=URI`.
pub const DEAD_LETTERS: &str = "dead_letters";

/// The default of [`RunOptions::time_granularity_ms`](crate::runtime::RunOptions::time_granularity_ms).
pub const DEFAULT_TIME_GRANULARITY_MS: u64 = 10;

/// A kind of checkpoint participant, as found when the job is built.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParticipantKind {
    /// A source: one part per worker.
    Source(String),
    /// A stateful step: one part per worker.
    State(String),
    /// A single-writer sink: one part, from worker 0.
    Sink(String),
    /// A parallel sink: one part per worker.
    ParallelSink(String),
}

/// Per-worker state shared by the streams of one dataflow under construction.
pub(crate) struct BuildContext {
    /// The job's name.
    pub(crate) job: &'static str,
    /// Each sink of the run (the job's and [`DEAD_LETTERS`]), resolved by its connector.
    pub(crate) sinks: BTreeMap<String, ResolvedSink>,
    /// The connectors the run resolves URIs with (typed sources are resolved as the job reads them).
    pub(crate) connectors: Arc<Connectors>,
    pub(crate) metrics: Arc<Metrics>,
    /// In a dry run sources produce nothing and sinks write nothing.
    pub(crate) dry_run: bool,
    /// Checkpointing settings, when the run checkpoints.
    pub(crate) checkpoint: Option<CheckpointConfig>,
    /// The checkpoint this run resumes from.
    pub(crate) restore: Option<Arc<Restore>>,
    /// Commit progress, shared with the coordinator (process 0).
    pub(crate) commit: Option<Arc<CommitState>>,
    /// Flow control: every sink's input frontier, which sources compare their reads against.
    pub(crate) flow: FlowControl,
    /// Event-time granularity of keyed steps' results (see `RunOptions::time_granularity_ms`).
    pub(crate) time_granularity_ms: u64,
    /// Sources built so far on this worker: the next one's number.
    pub(crate) sources_built: std::cell::Cell<usize>,
    /// Checkpoint participants this worker's dataflow has: sources, stateful steps, sinks.
    pub(crate) participants: RefCell<Vec<ParticipantKind>>,
    step_names: RefCell<BTreeSet<String>>,
    /// Sources read so far (each may be read once).
    pub(crate) used_sources: RefCell<BTreeSet<String>>,
    /// Sinks written so far (each may be written once).
    pub(crate) used_sinks: RefCell<BTreeSet<String>>,
    /// Mistakes in the job's structure, reported when the job function returns.
    pub(crate) errors: RefCell<Vec<String>>,
}

impl BuildContext {
    pub(crate) fn new(
        job: &'static str,
        sinks: BTreeMap<String, ResolvedSink>,
        connectors: Arc<Connectors>,
        metrics: Arc<Metrics>,
        dry_run: bool,
    ) -> Self {
        BuildContext {
            job,
            sinks,
            connectors,
            metrics,
            dry_run,
            checkpoint: None,
            restore: None,
            commit: None,
            flow: FlowControl::new(0),
            time_granularity_ms: DEFAULT_TIME_GRANULARITY_MS,
            sources_built: Default::default(),
            participants: Default::default(),
            step_names: Default::default(),
            used_sources: Default::default(),
            used_sinks: Default::default(),
            errors: Default::default(),
        }
    }

    /// The first epoch of this run: 0, or the one after the checkpoint it resumes from.
    pub(crate) fn first_epoch(&self) -> u64 {
        self.restore.as_ref().map_or(0, |r| r.manifest.epoch + 1)
    }

    /// Records a checkpoint participant.
    pub(crate) fn add_participant(&self, kind: ParticipantKind) {
        self.participants.borrow_mut().push(kind);
    }

    pub(crate) fn report_error(&self, message: String) {
        self.errors.borrow_mut().push(message);
    }

    /// Registers a step name; a second step with the same name is an error (state is found by it).
    pub(crate) fn register_step(&self, name: &str) {
        if !self.step_names.borrow_mut().insert(name.to_string()) {
            self.errors.borrow_mut().push(format!("two steps are named {name:?}; every step needs its own name"));
        }
    }

    /// Marks sink `name` as written (once) and records it as a checkpoint participant.
    pub(crate) fn mark_sink_used(&self, name: &str) -> Result<ResolvedSink> {
        let Some(sink) = self.sinks.get(name).cloned() else {
            bail!("job {} writes sink {name:?} but does not declare it in its JobSpec", self.job);
        };
        if !self.used_sinks.borrow_mut().insert(name.to_string()) {
            bail!("sink {name:?} is written twice; union the streams first");
        }
        if sink.target.parallel() {
            self.add_participant(ParticipantKind::ParallelSink(name.to_string()));
        } else {
            self.add_participant(ParticipantKind::Sink(name.to_string()));
        }
        Ok(sink)
    }
}
