//! Sources: partitions of input read by workers, stamped with event time and watermarks.
//!
//! A source is split into partitions (a file each, or an interleaved slice of the generator's
//! sequence); partition `p` is read by worker `p % workers`, so the partitions and their order do
//! not depend on the worker count. For each partition the source tracks the maximum event time
//! seen and its watermark `W_p = max − bound`. The worker holds a timely capability at the least
//! `W_p` of its live partitions: that is the watermark every downstream operator sees, combined
//! over all workers by timely's frontier. It moves the capability up after every
//! [`ADVANCE_EVERY`] records or so, or as soon as it has read all there is for now; in between it
//! sends batches of up to [`BATCH`] records at the capability it holds.
//!
//! A record with event time at or above its partition's watermark is sent at the worker's
//! capability (which is at most its event time). A record *behind* its partition's watermark is
//! sent at exactly that watermark, so downstream operators can tell lateness from the message time
//! alone: a window `[start, end)` has missed such a record iff `end <= message time`. Lateness thus
//! depends only on the order of records within their partition, never on how partitions are spread
//! over workers, and results are identical for any worker count. (Flink compares against the
//! operator's combined watermark, which depends on timing; ours is the same for one partition and
//! never counts a record late that Flink's would have accepted for sure.)
//!
//! At the end of a bounded partition its watermark becomes +infinity; when all of a worker's
//! partitions end, it drops its capability, and every window downstream fires, as Flink does at the
//! end of a bounded input. A partition that yields nothing for the idleness timeout stops holding
//! the watermark back until it yields again (when all of a worker's partitions are quiet, it follows the
//! watermark of the process's other workers that have active partitions; without any, the
//! partition that yielded last holds it). A partition that knows it has handed over everything
//! before some time (a polled table: `SplitReader::complete_before`) raises its watermark there
//! without a record.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Scope;

use crate::checkpoint::{self, Participant};
use crate::connector::{Decode, ResolvedSource, SourcePlan, SplitReader};
use crate::context::BuildContext;
use crate::context::TStream;
use crate::decode::LineDecoder;
use crate::record::{CsvRecord, DeadLetter};
use crate::time::{refused_event_time, OutOfOrder, Time, END_OF_TIME};
use crate::{Data, Result};

pub use crate::flow::FlowControl;
use crate::split::SourceWaker;
pub use crate::split::{Partition, Position, ReadStatus};

/// Records a source worker reads per activation, over all its partitions: large enough that
/// timely's per-message cost is amortised, small enough that operators downstream run often and
/// that a batch one step writes is still in the CPU's L2 cache when the next step reads it. The
/// bound is per worker, not per partition, so a source with many partitions does not send larger
/// batches (figures in BENCHMARKS.md, "Figures behind choices in the code").
pub const BATCH: usize = 2048;

/// How long flow control lets nothing land before it reads the splits that hold the watermark
/// back (see the source operator).
const STALL: std::time::Duration = std::time::Duration::from_millis(50);

/// How far (event time, ms) a split may run ahead of the slowest live split of its source while
/// that one has data (see the source operator).
const ALIGNMENT_DRIFT_MS: u64 = 1_000;

/// Records a source worker reads before it moves its watermark on: this many over all its
/// partitions, but from each partition at least 256 and at most [`BATCH`] (so 2,048 for one
/// partition, 4,096 for two, 8,192 for 4 to 32). Unless it has caught up with its input (a paced
/// source read all that was due, or a partition had less than asked for: idle or ended): then it
/// moves the watermark at once, so latency does not wait for a batch to fill. Each watermark is
/// a distinct timestamp that every step's progress tracking, and joins' and windows' per-time
/// work, pays for; so batches are kept small for the caches while event time moves in steps of a
/// few batches.
pub const ADVANCE_EVERY: usize = 4 * BATCH;

/// A paced source waits at least this long between reads, so that it does not spin.
const PACING_TICK: std::time::Duration = std::time::Duration::from_micros(200);

/// The options of a `gen:` URI, handed to the record type's generator.
#[derive(Debug)]
pub struct GenOptions {
    values: BTreeMap<String, String>,
    read: BTreeSet<String>,
}

impl GenOptions {
    /// Options from a parsed `gen:` URI.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        GenOptions { values, read: BTreeSet::new() }
    }

    /// Reads option `name`, or `default` when absent.
    pub fn get<T: FromStr>(&mut self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.read.insert(name.to_string());
        match self.values.get(name) {
            None => Ok(default),
            Some(text) => text.parse::<T>().map_err(|e| anyhow!("generator option {name}={text:?}: {e}")),
        }
    }

    /// Fails on options no one read: a typo must not silently fall back to a default.
    pub fn finish(&self) -> Result<()> {
        let unknown: Vec<&String> = self.values.keys().filter(|k| !self.read.contains(*k)).collect();
        if !unknown.is_empty() {
            let known: Vec<&String> = self.read.iter().collect();
            bail!("unknown generator option(s) {unknown:?}; known options: {known:?}");
        }
        Ok(())
    }
}

/// A deterministic generator of records of one type.
pub struct Generator<T> {
    /// How many records in all.
    pub count: u64,
    /// Into how many partitions the sequence is dealt (record `i` goes to partition `i % partitions`).
    pub partitions: u64,
    /// Record `i` of the sequence. Must depend on `i` and the options alone.
    pub record: Arc<dyn Fn(u64) -> T + Send + Sync>,
}

/// A record type the `gen:` source can produce.
pub trait Generate: Sized {
    /// Builds the generator from the URI's options (`count`, `seed`, ... as the type defines).
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>>;
}

/// A partition with its index within its source.
pub(crate) type Indexed<T> = (u64, Box<dyn Partition<T>>);

/// A partition's part of a checkpoint: its position and its watermark state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// The partition's index within its source (fixed for the job's life).
    pub partition: u64,
    /// Where reading resumes.
    pub position: Position,
    /// Largest event time read so far.
    pub max_ts: Option<u64>,
    /// The partition's watermark.
    pub watermark: u64,
    /// Whether it was exhausted.
    pub done: bool,
}

/// Parses one CSV line into a record.
pub fn parse_csv_line<T: CsvRecord>(line: &str) -> Result<T, String> {
    T::from_csv_line(line)
}

/// A connector's split, decoding its messages into records of type `T`.
struct DecodingPartition<T> {
    reader: Box<dyn SplitReader>,
    _record: std::marker::PhantomData<fn() -> T>,
}

/// The engine's [`Decode`]: decodes into a source's batch and its dead letters.
struct Decoding<'a, T> {
    out: &'a mut Vec<(u64, T)>,
    dead: &'a mut Vec<DeadLetter>,
}

impl<T: Data + CsvRecord> Decode for Decoding<'_, T> {
    fn file_lines(&mut self, lines: &mut LineDecoder, reader: &mut BufReader<File>, max: usize) -> ReadStatus {
        lines.read(reader, max, &mut crate::decode::Stamped(self.out), self.dead)
    }
    fn lines(&mut self, lines: &mut LineDecoder, mut reader: &mut dyn BufRead, max: usize) -> ReadStatus {
        lines.read(&mut reader, max, &mut crate::decode::Stamped(self.out), self.dead)
    }
    fn message(&mut self, lines: &mut LineDecoder, payload: &[u8], number: u64) {
        lines.decode_message(payload, number, &mut crate::decode::Stamped(self.out), self.dead);
    }
}

impl<T: Data + CsvRecord> Partition<T> for DecodingPartition<T> {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, T)>, dead: &mut Vec<DeadLetter>) -> ReadStatus {
        self.reader.read(max, &mut Decoding { out, dead })
    }
    fn position(&self) -> Position {
        self.reader.position()
    }
    fn seek(&mut self, position: &Position) -> Result<()> {
        self.reader.seek(position)
    }
    fn set_waker(&mut self, waker: SourceWaker) -> bool {
        self.reader.set_waker(waker)
    }
    fn on_checkpoint_complete(&mut self, epoch: u64) {
        self.reader.on_checkpoint_complete(epoch)
    }
    fn on_checkpoint(&mut self, epoch: u64) {
        self.reader.on_checkpoint(epoch)
    }
    fn set_checkpointed(&mut self, checkpointed: bool) {
        self.reader.set_checkpointed(checkpointed)
    }
    fn backlog(&self) -> Option<u64> {
        self.reader.backlog()
    }
    fn complete_before(&self) -> Option<u64> {
        self.reader.complete_before()
    }
}

/// A partition over records held in memory, for tests and doctests.
pub(crate) struct VecPartition<T> {
    pub(crate) records: Vec<T>,
    pub(crate) next: usize,
}

impl<T: Clone + 'static> Partition<T> for VecPartition<T> {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, T)>, _dead: &mut Vec<DeadLetter>) -> ReadStatus {
        let end = (self.next + max).min(self.records.len());
        out.extend(self.records[self.next..end].iter().map(|r| (0, r.clone())));
        self.next = end;
        if self.next == self.records.len() {
            ReadStatus::Done
        } else {
            ReadStatus::More
        }
    }
    fn position(&self) -> Position {
        Position { offset: self.next as u64, line: 0 }
    }
    fn seek(&mut self, position: &Position) -> Result<()> {
        self.next = (position.offset as usize).min(self.records.len());
        Ok(())
    }
}

/// The partitions of a source that worker `index` of `peers` reads: split `i` goes to worker
/// `i % peers`, over all workers of all processes. In a dry run, only checks the source.
fn partitions_for<T: Data + CsvRecord>(
    ctx: &BuildContext,
    name: &str,
    source: &ResolvedSource,
    index: usize,
    peers: usize,
) -> Result<Vec<Indexed<T>>> {
    let mut parts: Vec<Indexed<T>> = Vec::new();
    match &source.plan {
        SourcePlan::Payload(payload) => {
            if ctx.dry_run {
                return Ok(parts);
            }
            for split in (0..payload.splits()?).filter(|p| *p as usize % peers == index) {
                let reader = payload.open_split(split)?;
                parts.push((split, Box::new(DecodingPartition::<T> { reader, _record: std::marker::PhantomData })));
            }
        }
        SourcePlan::Typed { scheme } => {
            let factory = ctx.connectors.typed::<T>(scheme).map_err(|e| anyhow!("source {name}: {e:#}"))?;
            let splits = factory(name, &source.uri)?;
            if ctx.dry_run {
                return Ok(parts);
            }
            for split in (0..splits.splits).filter(|p| *p as usize % peers == index) {
                parts.push((split, (splits.open)(split)));
            }
        }
    }
    Ok(parts)
}

struct PartitionState<T> {
    index: u64,
    reader: Box<dyn Partition<T>>,
    max_ts: Option<u64>,
    watermark: u64,
    done: bool,
    last_data: Instant,
    idle: bool,
    /// Whether the split wakes the worker when data arrives.
    wakes: bool,
}

impl<T: 'static> PartitionState<T> {
    fn snapshot(&self) -> PartitionSnapshot {
        PartitionSnapshot {
            partition: self.index,
            position: self.reader.position(),
            max_ts: self.max_ts,
            watermark: self.watermark,
            done: self.done,
        }
    }
}

/// Builds the source operator: a stream of records and one of dead letters.
pub(crate) fn build_source<'scope, T: Data + CsvRecord>(
    scope: Scope<'scope, Time>,
    ctx: &Rc<BuildContext>,
    name: &str,
    source: &ResolvedSource,
    event_time: impl Fn(&T) -> u64 + 'static,
    strategy: OutOfOrder,
) -> Result<(TStream<'scope, T>, TStream<'scope, DeadLetter>)> {
    let partitions = partitions_for::<T>(ctx, name, source, scope.index(), scope.peers())?;
    let as_csv = |record: &T| {
        let mut line = String::new();
        record.write_csv(&mut line);
        line
    };
    // A `max_future=` option on the source's URI overrides the job's bound.
    let strategy = match source.max_future_ms {
        Some(bound) => OutOfOrder { max_future_ms: bound, ..strategy },
        None => strategy,
    };
    // So does an `idle_after=` option its idleness timeout.
    let strategy = match source.idle_after_ms {
        Some(ms) => OutOfOrder { idle_timeout: Some(std::time::Duration::from_millis(ms)), ..strategy },
        None => strategy,
    };
    build_partitioned_source(scope, ctx, name, partitions, event_time, as_csv, strategy)
}

/// The partition states of this worker, resumed from a checkpoint's source parts if restoring.
fn resume<T: 'static>(ctx: &BuildContext, name: &str, partitions: Vec<Indexed<T>>) -> Result<Vec<PartitionState<T>>> {
    let now = Instant::now();
    let mut saved: BTreeMap<u64, PartitionSnapshot> = BTreeMap::new();
    if let Some(restore) = &ctx.restore {
        for payload in restore.parts_with_prefix(&format!("source-{name}-w"))? {
            for snap in checkpoint::decode::<Vec<PartitionSnapshot>>(&payload)? {
                saved.insert(snap.partition, snap);
            }
        }
        if saved.is_empty() && !partitions.is_empty() {
            bail!("checkpoint {} has no positions for source {name:?}", restore.dir.display());
        }
    }
    let mut states = Vec::with_capacity(partitions.len());
    for (index, mut reader) in partitions {
        let mut state = PartitionState {
            index,
            reader: Box::new(NoPartition),
            max_ts: None,
            watermark: 0,
            done: false,
            last_data: now,
            idle: false,
            wakes: false,
        };
        if ctx.restore.is_some() {
            let Some(snap) = saved.get(&index) else {
                bail!("source {name:?}: the checkpoint has no position for partition {index}; was the input changed?");
            };
            reader.seek(&snap.position)?;
            state.max_ts = snap.max_ts;
            state.watermark = snap.watermark;
            state.done = snap.done;
        }
        state.reader = reader;
        states.push(state);
    }
    Ok(states)
}

/// A placeholder while a partition state is assembled.
struct NoPartition;

impl<T> Partition<T> for NoPartition {
    fn read(&mut self, _max: usize, _out: &mut Vec<(u64, T)>, _dead: &mut Vec<DeadLetter>) -> ReadStatus {
        ReadStatus::Done
    }
    fn position(&self) -> Position {
        Position::default()
    }
    fn seek(&mut self, _position: &Position) -> Result<()> {
        Ok(())
    }
}

/// Builds a source operator over the given partitions of this worker.
pub(crate) fn build_partitioned_source<'scope, T: Data>(
    scope: Scope<'scope, Time>,
    ctx: &Rc<BuildContext>,
    name: &str,
    partitions: Vec<Indexed<T>>,
    event_time: impl Fn(&T) -> u64 + 'static,
    describe: impl Fn(&T) -> String + 'static,
    strategy: OutOfOrder,
) -> Result<(TStream<'scope, T>, TStream<'scope, DeadLetter>)> {
    let metrics = ctx.metrics.clone();
    let local_worker = scope.index() % metrics.local_workers().max(1);
    let mut builder = OperatorBuilder::new(format!("source:{name}"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let (records_out, records) = builder.new_output::<Vec<(u64, T)>>();
    let (dead_out, dead) = builder.new_output::<Vec<(u64, DeadLetter)>>();
    let mut records_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<(u64, T)>>>::from(records_out);
    let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<(u64, DeadLetter)>>>::from(dead_out);

    let mut parts = resume(ctx, name, partitions)?;
    // Splits that wake the worker when data arrives let it sleep while they are idle.
    let waker = {
        let sync = scope.worker().sync_activator_for(info.address.to_vec());
        SourceWaker(Arc::new(move || {
            let _ = sync.activate();
        }))
    };
    let checkpointed = ctx.checkpoint.is_some() && !ctx.dry_run;
    for part in parts.iter_mut() {
        part.wakes = part.reader.set_waker(waker.clone());
        part.reader.set_checkpointed(checkpointed);
    }
    let commit = ctx.commit.clone().filter(|_| ctx.checkpoint.is_some());
    // Each split's position (and backlog, where known) reaches the metrics about once a second.
    let source_name = name.to_string();
    let global_worker = scope.index();
    let mut next_split_report = Instant::now();
    let mut notified_commit: Option<u64> = ctx.restore.as_ref().map(|r| r.manifest.epoch);
    let per_partition = (BATCH / parts.len().max(1)).clamp(64, BATCH);
    // Flow control's stall: since when nothing in flight has landed, how much was waiting, and
    // the sinks' activity count then.
    let mut stall: Option<(Instant, usize, u64)> = None;
    let advance_every = (ADVANCE_EVERY / parts.len().max(1)).clamp(256, BATCH) * parts.len().max(1);
    // Checkpointing: each interval, write this worker's positions as its part of the current
    // epoch, then move on to the next epoch.
    let checkpoints = ctx.checkpoint.clone().filter(|_| !ctx.dry_run);
    let participant = Participant::Source { name: name.to_string(), worker: scope.index() };
    let mut epoch = ctx.first_epoch();
    let mut next_tick = checkpoints.as_ref().map(|c| Instant::now() + c.interval);
    let flow = ctx.flow.clone();
    // Backpressure: how often this source paused because its sinks had not taken in what it sent
    // (registered at the first pause, so runs without backpressure show no such counter).
    let backpressure_name = format!("backpressure_waits:{name}");
    let worker_index = scope.index();
    let mut backpressure_waits: Option<crate::metrics::WorkerCounter> = None;
    let source_number = ctx.sources_built.get();
    ctx.sources_built.set(source_number + 1);
    // The ingestion instant of the latest record that raised a watermark, for latency.
    let ingested = |pacing: Option<&crate::latency::Pacing>, index: Option<u64>| match (pacing, index) {
        (Some(p), Some(i)) => p.due(i),
        _ => Instant::now(),
    };
    let mut reported_wm = 0u64;
    let mut part_failures = 0u32;
    let mut rotate = 0usize;
    let mut in_flight = crate::flow::InFlight::default();
    // Dead letters sent at the dead-letter output's current time (see `DeadLetterTime`).
    let mut dead_letter_time = DeadLetterTime { per_time: advance_every, sent: 0 };
    // Records read since the watermark last moved, and the index of the latest that raised a
    // partition's watermark since then (for latency).
    let mut since_advance = 0usize;
    let mut raised: Option<u64> = None;
    let source_records = metrics.step_records(name, scope.index());

    builder.build(move |mut capabilities| {
        let dead_cap = capabilities.pop();
        let records_cap = capabilities.pop();
        let mut caps = match (records_cap, dead_cap) {
            (Some(r), Some(d)) if !parts.is_empty() => Some((r, d)),
            _ => None,
        };
        if caps.is_none() {
            metrics.set_watermark(local_worker, u64::MAX);
            if let Some(clock) = metrics.latency() {
                clock.advance(local_worker, source_number, u64::MAX, Instant::now());
            }
        }
        // A worker without partitions still takes part in checkpoints, with an empty part.
        let mut wrote_final = false;
        let mut on_time: Vec<(u64, T)> = Vec::new();
        // Positions in `on_time` (from where this read started) of records behind the watermark,
        // with the watermark they travel at; rare, so they are taken out after the pass.
        // `None` marks a record whose event time is refused (see `refused_event_time`): it goes to
        // dead letters and moves no watermark.
        let mut late: Vec<(usize, Option<u64>)> = Vec::new();
        // Why each refused record (a `None` in `late`) is refused, in order.
        let mut refusals: std::collections::VecDeque<String> = Default::default();
        let mut behind: BTreeMap<u64, Vec<(u64, T)>> = BTreeMap::new();
        let mut dead_letters: Vec<DeadLetter> = Vec::new();
        move |_frontiers| {
            // Tell the splits about completed checkpoints (brokers acknowledge what they cover).
            if let Some(committed) = commit.as_ref().and_then(|c| c.committed()) {
                if notified_commit.is_none_or(|n| committed > n) {
                    notified_commit = Some(committed);
                    for part in parts.iter_mut() {
                        part.reader.on_checkpoint_complete(committed);
                    }
                }
            }
            if metrics.halted() && caps.is_some() {
                // The job halted (a sink failed, a stop after a savepoint, a cancel): stop reading.
                // No final checkpoint part is written, so no checkpoint claims the rest was read.
                caps = None;
                wrote_final = true;
            }
            if Instant::now() >= next_split_report {
                next_split_report = Instant::now() + std::time::Duration::from_secs(1);
                for part in parts.iter() {
                    let split = part.index.to_string();
                    metrics.set_split_position(&source_name, &split, global_worker, part.reader.position().offset);
                    if let Some(backlog) = part.reader.backlog() {
                        metrics.set_split_backlog(&source_name, &split, global_worker, backlog);
                    }
                }
            }
            let Some((records_cap, dead_cap)) = caps.as_mut() else {
                if let (Some(c), false) = (&checkpoints, wrote_final) {
                    wrote_final = true;
                    let snaps: Vec<PartitionSnapshot> = parts.iter().map(PartitionState::snapshot).collect();
                    if let Err(e) = write_final_part(c, epoch, &participant, &snaps) {
                        // Without it the last checkpoint never completes and the sinks would wait.
                        metrics.fail(format!("source {}: cannot write its final checkpoint part: {e:#}", participant.file_name()));
                    }
                    for part in parts.iter_mut() {
                        part.reader.on_checkpoint(epoch);
                    }
                }
                return;
            };
            if records_cap.time().epoch < epoch {
                // Restored: start in the epoch after the checkpoint, at the restored watermark.
                let wm = parts.iter().filter(|p| !p.done).map(|p| p.watermark).min().unwrap_or(u64::MAX).min(u64::MAX - 1);
                records_cap.downgrade(&Time::new(epoch, wm));
                dead_letter_time.move_to(dead_cap, Time::new(epoch, wm));
            }
            if let (Some(c), Some(tick)) = (&checkpoints, next_tick) {
                if Instant::now() >= tick {
                    let snaps: Vec<PartitionSnapshot> = parts.iter().map(PartitionState::snapshot).collect();
                    match checkpoint::encode(&snaps).and_then(|bytes| checkpoint::write_part(&c.dir, epoch, &participant, &bytes)) {
                        Ok(()) => {
                            part_failures = 0;
                            for part in parts.iter_mut() {
                                part.reader.on_checkpoint(epoch);
                            }
                            epoch += 1;
                            let wm = records_cap.time().wm;
                            records_cap.downgrade(&Time::new(epoch, wm));
                            dead_letter_time.move_to(dead_cap, Time::new(epoch, dead_cap.time().wm));
                        }
                        Err(e) => {
                            // Retried at the next tick; the checkpoint waits for it. A part that
                            // cannot be written three times running fails the job (exit 1).
                            part_failures += 1;
                            tracing::error!(epoch, part = %participant.file_name(), "source checkpoint part: {e:#}; will retry");
                            if part_failures >= 3 {
                                metrics.fail(format!(
                                    "source {}: cannot write its checkpoint part for epoch {epoch}: {e:#}",
                                    participant.file_name()
                                ));
                            }
                        }
                    }
                    next_tick = Some(Instant::now() + c.interval);
                }
            }
            // Flow control: wait while too much is in flight. What is in flight can itself be
            // waiting for the watermark (a window or join holds it until then), and the watermark
            // for more input: splits far apart in event time (a topic's partitions filled by a
            // sticky partitioner), or the one split left, would stop the source for good. So when
            // nothing has landed and no sink of the process received or wrote anything for STALL
            // (a slow sink is busy: it is waited for), the splits holding the watermark back are
            // read (at most a batch), as Flink's watermark alignment reads the sources behind.
            let slowest = parts.iter().filter(|p| !p.done && !p.idle).map(|p| p.watermark).min();
            let mut laggards_only = false;
            let waiting = flow.waiting(&mut in_flight, records_cap.time(), dead_cap.time());
            if let Some(waiting) = waiting.filter(|w| *w >= flow.max_in_flight * BATCH) {
                let now = Instant::now();
                let activity = metrics.sink_activity_count();
                let stalled = match stall {
                    Some((since, before, sinks)) if waiting >= before && sinks == activity && activity != u64::MAX => {
                        now.duration_since(since) >= STALL
                    }
                    _ => {
                        stall = Some((now, waiting, activity));
                        false
                    }
                };
                if stalled && slowest.is_some() {
                    stall = Some((now, waiting, activity));
                    laggards_only = true;
                } else {
                    // Wait for the sinks to take in what was sent: a sink's frontier moving
                    // wakes this source (and a timer, should the wake-up be missed).
                    backpressure_waits.get_or_insert_with(|| metrics.worker_counter(&backpressure_name, worker_index)).add(1);
                    flow.wait(&activator);
                    activator.activate_after(std::time::Duration::from_millis(5));
                    return;
                }
            } else {
                stall = None;
            }
            let held = records_cap.time().wm;
            let mut read = 0u64;
            // Paced: read only the events that are due, dealt over the live partitions, starting
            // from a different one each time so that none falls behind.
            let live_parts = parts.iter().filter(|p| !p.done).count().max(1);
            let (mut next_index, mut budget) = (0u64, usize::MAX);
            // Whether this read takes all there is for now (then the watermark moves at once).
            let mut caught_up = false;
            if let Some(p) = metrics.pacing() {
                let (first, n) = p.take(per_partition * live_parts);
                if n == 0 {
                    activator.activate_after(p.wait().max(PACING_TICK));
                    return;
                }
                caught_up = n < per_partition * live_parts;
                (next_index, budget) = (first, n);
                rotate = (rotate + 1) % parts.len();
            }
            // `on_time` is handed over whole each activation: size it once, not by doubling.
            on_time.reserve(per_partition * parts.len());
            // Watermark alignment: splits more than ALIGNMENT_DRIFT ahead of the slowest live one
            // are read only when the others have nothing, so splits far apart in event time (a
            // topic's partitions) stay together and what waits for the watermark stays small.
            let ahead_of = if laggards_only { slowest } else { slowest.map(|w| w.saturating_add(ALIGNMENT_DRIFT_MS)) };
            let aligned = parts.iter().filter(|p| !p.done && ahead_of.is_none_or(|a| p.watermark <= a)).count().max(1);
            let share = if laggards_only {
                // A stalled source reads a whole batch from the splits behind.
                BATCH.div_ceil(aligned)
            } else {
                budget.div_ceil(aligned).min(per_partition.max(BATCH.div_ceil(aligned)))
            };
            let mut asked = 0usize;
            let count = parts.len();
            for i in 0..2 * count {
                // The first round reads the splits behind; the second, the others, when the
                // first found nothing (and never while stalled).
                if i == count && (read > 0 || laggards_only || aligned >= live_parts) {
                    break;
                }
                let part = &mut parts[(i + rotate) % count];
                let ahead = ahead_of.is_some_and(|a| part.watermark > a);
                if ahead != (i >= count) {
                    continue;
                }
                let max = if i >= count { budget.div_ceil(live_parts).min(per_partition) } else { share }.min(budget);
                if part.done || max == 0 {
                    continue;
                }
                let max = if laggards_only { max.min(BATCH.saturating_sub(asked)) } else { max };
                if max == 0 {
                    continue;
                }
                // Read straight into the batch sent on; event times are filled in below.
                asked += max;
                let from = on_time.len();
                let status = part.reader.read(max, &mut on_time, &mut dead_letters);
                let got = on_time.len() - from;
                budget = budget.saturating_sub(got);
                if got > 0 {
                    part.last_data = Instant::now();
                    part.idle = false;
                }
                read += got as u64;
                // The far-future bound's baseline: the later of the partition's watermark and the
                // wall clock, so a replay of past data never meets it.
                let now_ms = if strategy.max_future_ms.is_some() {
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
                } else {
                    0
                };
                for (index, (slot, record)) in on_time[from..].iter_mut().enumerate() {
                    let ts = event_time(record);
                    *slot = ts;
                    if let Some(reason) = refused_event_time(ts) {
                        late.push((index, None));
                        refusals.push_back(reason);
                        next_index += 1;
                        continue;
                    }
                    if let Some(bound) = strategy.max_future_ms {
                        let base = part.watermark.max(now_ms);
                        if ts > base.saturating_add(bound) {
                            late.push((index, None));
                            refusals.push_back(format!(
                                "event time {ts} ms is {} ms ahead of {base} (the later of the partition's watermark and the \
                                 wall clock), more than max_future ({bound} ms): a wrong clock or a bad producer? \
                                 (max_future=off on the source URI accepts it)",
                                ts - base
                            ));
                            next_index += 1;
                            continue;
                        }
                    }
                    if ts < part.watermark || ts < held {
                        late.push((index, Some(part.watermark.max(held))));
                    }
                    if part.max_ts.is_none_or(|m| ts > m) {
                        part.max_ts = Some(ts);
                        part.watermark = part.watermark.max(strategy.watermark(ts));
                        raised = Some(next_index);
                    }
                    next_index += 1;
                }
                if !late.is_empty() {
                    // In read order, as they were read.
                    let mut next = late.iter().copied().peekable();
                    let mut index = 0usize;
                    let taken = on_time.extract_if(from.., |_| {
                        let hit = next.next_if(|(i, _)| *i == index).is_some();
                        index += 1;
                        hit
                    });
                    for ((_, wm), (ts, record)) in late.iter().zip(taken) {
                        match wm {
                            Some(wm) => behind.entry(*wm).or_default().push((ts, record)),
                            None => {
                                read -= 1;
                                let reason = refusals.pop_front().or_else(|| refused_event_time(ts)).unwrap_or_default();
                                let origin = format!("partition {}", part.index);
                                let raw = describe(&record);
                                dead_letters.push(DeadLetter { source: source_name.clone(), origin, line: 0, reason, raw });
                            }
                        }
                    }
                    late.clear();
                }
                // A split that knows it has handed over everything before some time (a polled
                // table) moves its watermark there without a record, after this read's records
                // were judged against the watermark before it.
                if let Some(before) = part.reader.complete_before() {
                    part.watermark = part.watermark.max(before);
                }
                match status {
                    ReadStatus::Done => {
                        part.done = true;
                        part.watermark = u64::MAX;
                    }
                    ReadStatus::Idle => {
                        if let Some(timeout) = strategy.idle_timeout {
                            part.idle = part.last_data.elapsed() >= timeout;
                        }
                    }
                    ReadStatus::More => {}
                    ReadStatus::Failed(message) => {
                        // Halts the job: the next activation stops reading and writes no final part.
                        metrics.fail(format!("source {source_name}: split {}: {message}", part.index));
                        part.done = true;
                        activator.activate();
                    }
                }
            }
            metrics.add_events_read(read);
            source_records.output.add(read);
            {
                let mut handle = records_out.activate();
                if !on_time.is_empty() {
                    in_flight.records(*records_cap.time(), on_time.len());
                    handle.session(&*records_cap).give_container(&mut on_time);
                    on_time.clear();
                }
                for (wm, mut records) in std::mem::take(&mut behind) {
                    let c = records_cap.delayed(&Time::new(epoch, wm));
                    in_flight.records(*c.time(), records.len());
                    handle.session(&c).give_container(&mut records);
                }
            }
            let had_dead_letters = !dead_letters.is_empty();
            if !dead_letters.is_empty() {
                let n = dead_letters.len();
                metrics.add("dead_lettered", n as u64);
                in_flight.dead_letters(*dead_cap.time(), n);
                {
                    let mut handle = dead_out.activate();
                    let mut session = handle.session(&*dead_cap);
                    for d in dead_letters.drain(..) {
                        session.give((held, d));
                    }
                }
                dead_letter_time.sent(dead_cap, n);
            }
            if parts.iter().all(|p| p.done) {
                caps = None;
                metrics.follow_active(&source_name, local_worker, None);
                metrics.set_watermark(local_worker, u64::MAX);
                if let Some(clock) = metrics.latency() {
                    clock.advance(local_worker, source_number, u64::MAX, ingested(metrics.pacing(), next_index.checked_sub(1)));
                }
                activator.activate();
                return;
            }
            // Move the watermark every few batches, or at once when the input is caught up with.
            since_advance += read as usize;
            if since_advance >= advance_every || caught_up || (read as usize) < asked {
                since_advance = 0;
                // The least over the live splits that are not idle. When all are idle (some are
                // live: a worker whose splits are all done returned above), the worker follows
                // the process's other workers that have active splits, so that it does not hold
                // the job's watermark back; without any, the split active last holds it.
                let active = parts.iter().filter(|p| !p.done && !p.idle).map(|p| p.watermark).min();
                let others = metrics.follow_active(&source_name, local_worker, active);
                if let Some(watermark) = active.or(others).or_else(|| last_active_watermark(&parts)) {
                    if watermark > held {
                        records_cap.downgrade(&Time::new(epoch, watermark));
                        dead_letter_time.move_to(dead_cap, Time::new(epoch, watermark.max(dead_cap.time().wm)));
                    }
                }
                metrics.set_watermark(local_worker, records_cap.time().wm);
                if let Some(clock) = metrics.latency() {
                    let wm = records_cap.time().wm;
                    if wm > reported_wm {
                        reported_wm = wm;
                        clock.advance(local_worker, source_number, wm, ingested(metrics.pacing(), raised.take()));
                    }
                }
            }
            if read > 0 || had_dead_letters {
                activator.activate();
            } else if parts.iter().filter(|p| !p.done).all(|p| p.wakes) {
                // Every live split wakes the worker when data arrives: sleep until then, or until
                // the next checkpoint tick or idleness check is due.
                let mut due: Option<std::time::Duration> = next_tick.map(|t| t.saturating_duration_since(Instant::now()));
                if let Some(timeout) = strategy.idle_timeout.filter(|_| parts.iter().any(|p| !p.done && !p.idle)) {
                    due = Some(due.map_or(timeout, |d| d.min(timeout)));
                } else if strategy.idle_timeout.is_some() && parts.iter().any(|p| !p.done) {
                    // All idle: follow the other workers' watermark every FOLLOW_IDLE.
                    due = Some(due.map_or(FOLLOW_IDLE, |d| d.min(FOLLOW_IDLE)));
                }
                if commit.is_some() {
                    // Completed checkpoints are told to the splits within a second.
                    due = Some(due.map_or(std::time::Duration::from_secs(1), |d| d.min(std::time::Duration::from_secs(1))));
                }
                if let Some(d) = due {
                    activator.activate_after(d.max(std::time::Duration::from_millis(1)));
                }
            } else {
                // Nothing to read right now: look again shortly rather than spin.
                activator.activate_after(std::time::Duration::from_millis(10));
            }
        }
    });
    Ok((records, dead))
}

/// The time of a source worker's dead letters: its records' time (the epoch and the watermark),
/// or after many dead letters at one time, one millisecond later than the last. Only the
/// dead-letter sink reads them, and it holds each time's lines until its input frontier passes
/// the time (to write them sorted): a file whose every line is bad moves no watermark, so at the
/// watermark alone its dead letters would wait there until the end of the input (an 86 MB file
/// peaked at 548 MB) and flow control could not count them. Where the watermark moves as usual,
/// fewer than `per_time` dead letters share a time and they travel at the watermark, as before.
struct DeadLetterTime {
    /// Dead letters sent at one time before the next go at a later one.
    per_time: usize,
    /// Dead letters sent at the current time.
    sent: usize,
}

impl DeadLetterTime {
    /// Moves the dead letters' capability to `time` (the epoch or the watermark moved).
    fn move_to(&mut self, cap: &mut timely::dataflow::operators::Capability<Time>, time: Time) {
        if *cap.time() != time {
            cap.downgrade(&time);
            self.sent = 0;
        }
    }

    /// Dead letters were sent at `cap`'s time: after `per_time` of them, later ones go 1 ms later.
    fn sent(&mut self, cap: &mut timely::dataflow::operators::Capability<Time>, n: usize) {
        self.sent += n;
        let Time { epoch, wm } = *cap.time();
        if self.sent >= self.per_time && wm < END_OF_TIME - 1 {
            self.move_to(cap, Time::new(epoch, wm + 1));
        }
    }
}

/// How often a worker whose splits are all idle looks at the other workers' watermark (Flink
/// emits periodic watermarks every 200 ms).
const FOLLOW_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// The watermark of the live split that yielded data last: when every live split is idle (and
/// no other worker of the process has an active one), it holds the watermark, as if the others
/// had gone quiet first (which they did): the split quiet longest must not hold the watermark back, and the
/// one that just went quiet must not be skipped past, or its next records would be late. (Had
/// the idleness checks run at each instant, as Flink's do every 200 ms, the same split would be
/// the last one active; checked in the same activation, they would all go idle at once and the
/// watermark would stay where the quietest split held it.)
fn last_active_watermark<T>(parts: &[PartitionState<T>]) -> Option<u64> {
    parts.iter().filter(|p| !p.done).max_by_key(|p| p.last_data).map(|p| p.watermark)
}

/// A finished source's last part: it stands for every later epoch (the coordinator links it).
fn write_final_part(c: &checkpoint::CheckpointConfig, epoch: u64, who: &Participant, snaps: &[PartitionSnapshot]) -> Result<()> {
    checkpoint::encode(&snaps).and_then(|bytes| checkpoint::write_final_part(&c.dir, epoch, who, &bytes))
}
