//! What a source's splits (partitions) are made of, shared by the connectors that read them
//! ([`crate::connector`]), the line decoder ([`crate::decode`]) and the source operator that
//! drives them ([`crate::source`]): the outcome of a read, a position that goes into checkpoints,
//! the partition trait and the waker. A leaf: it names no other module of the engine but
//! [`crate::record`]. Re-exported from [`crate::source`] and [`crate::connector`], where these
//! types were first defined.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::record::DeadLetter;
use crate::Result;

/// What one read of a partition found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records were read (or may be, right away).
    More,
    /// Nothing is available right now.
    Idle,
    /// The partition is exhausted.
    Done,
    /// The partition cannot go on (a broker that stayed away past its reconnect limit): the job
    /// fails with this message (exit 1) and can be restored from its last checkpoint.
    Failed(String),
}

/// Where a partition's next read starts: a byte offset and line number in a file, or the next
/// index of the generator's sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Byte offset, generator index or record count.
    pub offset: u64,
    /// Lines read so far (files), for dead-letter line numbers.
    pub line: u64,
}

/// One partition of a source.
pub trait Partition<T>: 'static {
    /// Reads up to `max` records into `out`, each with 0 as its event time (the source assigns
    /// event times), and unreadable ones into `dead`. Records go straight into the batch the
    /// source sends on: no copy between reading and sending.
    fn read(&mut self, max: usize, out: &mut Vec<(u64, T)>, dead: &mut Vec<DeadLetter>) -> ReadStatus;
    /// Where the next read starts, for checkpoints.
    fn position(&self) -> Position;
    /// Continues from a position a checkpoint recorded.
    fn seek(&mut self, position: &Position) -> Result<()>;
    /// Registers the worker's waker; `true` if the partition calls it when data arrives (see
    /// [`SplitReader::set_waker`](crate::connector::SplitReader::set_waker)).
    fn set_waker(&mut self, _waker: SourceWaker) -> bool {
        false
    }
    /// Checkpoint `epoch` is complete.
    fn on_checkpoint_complete(&mut self, _epoch: u64) {}
    /// Its position for checkpoint `epoch` was taken (see
    /// [`SplitReader::on_checkpoint`](crate::connector::SplitReader::on_checkpoint)).
    fn on_checkpoint(&mut self, _epoch: u64) {}
    /// Whether the run checkpoints (see
    /// [`SplitReader::set_checkpointed`](crate::connector::SplitReader::set_checkpointed)).
    fn set_checkpointed(&mut self, _checkpointed: bool) {}
    /// How much is known to wait behind the position, for metrics.
    fn backlog(&self) -> Option<u64> {
        None
    }
    /// An event time before which the partition has handed over every record it ever will (see
    /// [`SplitReader::complete_before`](crate::connector::SplitReader::complete_before)).
    fn complete_before(&self) -> Option<u64> {
        None
    }
}

/// Wakes a source worker from another thread (a tokio task that received data).
#[derive(Clone)]
pub struct SourceWaker(pub(crate) Arc<dyn Fn() + Send + Sync>);

impl SourceWaker {
    /// Schedules the source's worker to read again.
    pub fn wake(&self) {
        (self.0)()
    }
    /// A waker that calls `f` (for tests).
    pub fn from_fn(f: impl Fn() + Send + Sync + 'static) -> Self {
        SourceWaker(Arc::new(f))
    }
}

impl fmt::Debug for SourceWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceWaker")
    }
}
