//! Sources: partitions of input read by workers, stamped with event time and watermarks.
//!
//! A source is split into partitions (a file each, or an interleaved slice of the generator's
//! sequence); partition `p` is read by worker `p % workers`, so the partitions and their order do
//! not depend on the worker count. For each partition the source tracks the maximum event time
//! seen and its watermark `W_p = max − bound`. The worker holds a timely capability at the least
//! `W_p` of its live partitions: that is the watermark every downstream operator sees, combined
//! over all workers by timely's frontier.
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
//! the watermark back until it yields again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
use crate::job::BuildContext;
use crate::record::{split_csv_line, CsvRecord, DeadLetter};
use crate::stream::TStream;
use crate::time::OutOfOrder;
use crate::time::Time;
use crate::uri::{Format, SourceUri};
use crate::{Data, Result};

/// Records read per partition per activation: large enough that timely's per-message cost is
/// amortised, small enough that operators downstream run often.
pub const BATCH: usize = 4096;

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

/// What one read of a partition found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records were read (or may be, right away).
    More,
    /// Nothing is available right now.
    Idle,
    /// The partition is exhausted.
    Done,
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
    /// Reads up to `max` records into `out`, and unreadable ones into `dead`.
    fn read(&mut self, max: usize, out: &mut Vec<T>, dead: &mut Vec<DeadLetter>) -> ReadStatus;
    /// Where the next read starts, for checkpoints.
    fn position(&self) -> Position;
    /// Continues from a position a checkpoint recorded.
    fn seek(&mut self, position: &Position) -> Result<()>;
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

struct GenPartition<T> {
    next: u64,
    step: u64,
    count: u64,
    record: Arc<dyn Fn(u64) -> T + Send + Sync>,
}

impl<T: 'static> Partition<T> for GenPartition<T> {
    fn read(&mut self, max: usize, out: &mut Vec<T>, _dead: &mut Vec<DeadLetter>) -> ReadStatus {
        for _ in 0..max {
            if self.next >= self.count {
                return ReadStatus::Done;
            }
            out.push((self.record)(self.next));
            self.next += self.step;
        }
        if self.next >= self.count {
            ReadStatus::Done
        } else {
            ReadStatus::More
        }
    }
    fn position(&self) -> Position {
        Position { offset: self.next, line: 0 }
    }
    fn seek(&mut self, position: &Position) -> Result<()> {
        self.next = position.offset;
        Ok(())
    }
}

/// A CSV or JSON-lines file, read line by line.
pub(crate) struct FilePartition {
    source: String,
    path: PathBuf,
    format: Format,
    reader: BufReader<File>,
    line_no: u64,
    offset: u64,
    buf: Vec<u8>,
}

impl FilePartition {
    pub(crate) fn open(source: &str, path: &Path, format: Format) -> Result<Self> {
        let file = File::open(path).map_err(|e| anyhow!("source {source}: cannot open {}: {e}", path.display()))?;
        Ok(FilePartition {
            source: source.to_string(),
            path: path.to_path_buf(),
            format,
            reader: BufReader::with_capacity(1 << 20, file),
            line_no: 0,
            offset: 0,
            buf: Vec::with_capacity(256),
        })
    }

    fn dead(&self, reason: String, raw: &str) -> DeadLetter {
        DeadLetter {
            source: self.source.clone(),
            origin: self.path.display().to_string(),
            line: self.line_no,
            reason,
            raw: raw.to_string(),
        }
    }
}

/// Parses one CSV line into a record.
pub fn parse_csv_line<T: CsvRecord>(line: &str) -> Result<T, String> {
    let mut fields = Vec::with_capacity(16);
    split_csv_line(line, &mut fields)?;
    let refs: Vec<&str> = fields.iter().map(|f| f.as_ref()).collect();
    T::from_csv_fields(&refs)
}

impl<T: Data + CsvRecord> Partition<T> for FilePartition {
    fn read(&mut self, max: usize, out: &mut Vec<T>, dead: &mut Vec<DeadLetter>) -> ReadStatus {
        let mut produced = 0;
        let dead_before = dead.len();
        // Dead letters count toward the batch, so a file of bad lines is still read in slices.
        while produced + (dead.len() - dead_before) < max {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return ReadStatus::Done,
                Ok(n) => self.offset += n as u64,
                Err(e) => {
                    self.line_no += 1;
                    dead.push(self.dead(format!("read error: {e}; the rest of the file is skipped"), ""));
                    return ReadStatus::Done;
                }
            }
            self.line_no += 1;
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            let line = match std::str::from_utf8(&self.buf) {
                Ok(l) => l,
                Err(e) => {
                    let raw = String::from_utf8_lossy(&self.buf).into_owned();
                    dead.push(self.dead(format!("not UTF-8: {e}"), &raw));
                    continue;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let parsed = match self.format {
                Format::Csv => {
                    if self.line_no == 1 && line.trim().eq_ignore_ascii_case(&T::csv_header()) {
                        continue;
                    }
                    parse_csv_line::<T>(line)
                }
                Format::JsonLines => serde_json::from_str::<T>(line).map_err(|e| format!("invalid JSON record: {e}")),
            };
            match parsed {
                Ok(record) => {
                    out.push(record);
                    produced += 1;
                }
                Err(reason) => {
                    let reason = if self.line_no == 1 && self.format == Format::Csv {
                        format!("{reason} (a header line must read {:?})", T::csv_header())
                    } else {
                        reason
                    };
                    let d = self.dead(reason, line);
                    dead.push(d);
                }
            }
        }
        ReadStatus::More
    }
    fn position(&self) -> Position {
        Position { offset: self.offset, line: self.line_no }
    }
    fn seek(&mut self, position: &Position) -> Result<()> {
        use std::io::Seek;
        self.reader
            .seek(std::io::SeekFrom::Start(position.offset))
            .map_err(|e| anyhow!("source {}: cannot resume {} at byte {}: {e}", self.source, self.path.display(), position.offset))?;
        self.offset = position.offset;
        self.line_no = position.line;
        Ok(())
    }
}

/// A partition over records held in memory, for tests and doctests.
pub(crate) struct VecPartition<T> {
    pub(crate) records: Vec<T>,
    pub(crate) next: usize,
}

impl<T: Clone + 'static> Partition<T> for VecPartition<T> {
    fn read(&mut self, max: usize, out: &mut Vec<T>, _dead: &mut Vec<DeadLetter>) -> ReadStatus {
        let end = (self.next + max).min(self.records.len());
        out.extend_from_slice(&self.records[self.next..end]);
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

/// Checks that a source can be opened, before workers start: the generator's options are valid.
pub fn check_source<T: Generate>(uri: &SourceUri) -> Result<()> {
    if let SourceUri::Generator(options) = uri {
        let mut o = GenOptions::new(options.clone());
        T::generator(&mut o)?;
        o.finish()?;
    }
    Ok(())
}

/// The partitions of a source that worker `index` of `peers` reads.
fn partitions_for<T: Data + CsvRecord + Generate>(name: &str, uri: &SourceUri, index: usize, peers: usize) -> Result<Vec<Indexed<T>>> {
    let mut parts: Vec<Indexed<T>> = Vec::new();
    match uri {
        SourceUri::Generator(options) => {
            let mut o = GenOptions::new(options.clone());
            let g = T::generator(&mut o)?;
            o.finish()?;
            for p in (0..g.partitions).filter(|p| *p as usize % peers == index) {
                parts.push((p, Box::new(GenPartition { next: p, step: g.partitions, count: g.count, record: g.record.clone() })));
            }
        }
        SourceUri::Files(files) => {
            for (i, (path, format)) in files.iter().enumerate() {
                if i % peers == index {
                    parts.push((i as u64, Box::new(FilePartition::open(name, path, *format)?)));
                }
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
pub(crate) fn build_source<'scope, T: Data + CsvRecord + Generate>(
    scope: Scope<'scope, Time>,
    ctx: &Rc<BuildContext>,
    name: &str,
    uri: &SourceUri,
    event_time: Box<dyn Fn(&T) -> u64>,
    strategy: OutOfOrder,
) -> Result<(TStream<'scope, T>, TStream<'scope, DeadLetter>)> {
    let partitions = if ctx.dry_run {
        check_source::<T>(uri)?;
        Vec::new()
    } else {
        partitions_for::<T>(name, uri, scope.index(), scope.peers())?
    };
    build_partitioned_source(scope, ctx, name, partitions, event_time, strategy)
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
        let mut state =
            PartitionState { index, reader: Box::new(NoPartition), max_ts: None, watermark: 0, done: false, last_data: now, idle: false };
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
    fn read(&mut self, _max: usize, _out: &mut Vec<T>, _dead: &mut Vec<DeadLetter>) -> ReadStatus {
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
    event_time: Box<dyn Fn(&T) -> u64>,
    strategy: OutOfOrder,
) -> Result<(TStream<'scope, T>, TStream<'scope, DeadLetter>)> {
    let metrics = ctx.metrics.clone();
    let local_worker = scope.index() % metrics.local_workers().max(1);
    let mut builder = OperatorBuilder::new(format!("source:{name}"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let (records_out, records) = builder.new_output::<Vec<(u64, T)>>();
    let (dead_out, dead) = builder.new_output::<Vec<(u64, DeadLetter)>>();
    let mut records_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<(u64, T)>>>::from(records_out);
    let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<(u64, DeadLetter)>>>::from(dead_out);

    let mut parts = resume(ctx, name, partitions)?;
    let per_partition = (BATCH * 4 / parts.len().max(1)).clamp(256, BATCH);
    // Checkpointing: each interval, write this worker's positions as its part of the current
    // epoch, then move on to the next epoch.
    let checkpoints = ctx.checkpoint.clone().filter(|_| !ctx.dry_run);
    let participant = Participant::Source { name: name.to_string(), worker: scope.index() };
    let mut epoch = ctx.first_epoch();
    let mut next_tick = checkpoints.as_ref().map(|c| Instant::now() + c.interval);

    builder.build(move |mut capabilities| {
        let dead_cap = capabilities.pop();
        let records_cap = capabilities.pop();
        let mut caps = match (records_cap, dead_cap) {
            (Some(r), Some(d)) if !parts.is_empty() => Some((r, d)),
            _ => None,
        };
        if caps.is_none() {
            metrics.set_watermark(local_worker, u64::MAX);
        }
        // A worker without partitions still takes part in checkpoints, with an empty part.
        let mut wrote_final = false;
        let mut batch: Vec<T> = Vec::with_capacity(per_partition);
        let mut on_time: Vec<(u64, T)> = Vec::new();
        let mut behind: BTreeMap<u64, Vec<(u64, T)>> = BTreeMap::new();
        let mut dead_letters: Vec<DeadLetter> = Vec::new();
        move |_frontiers| {
            let Some((records_cap, dead_cap)) = caps.as_mut() else {
                if let (Some(c), false) = (&checkpoints, wrote_final) {
                    wrote_final = true;
                    let snaps: Vec<PartitionSnapshot> = parts.iter().map(PartitionState::snapshot).collect();
                    write_final_part(c, epoch, &participant, &snaps);
                }
                return;
            };
            if records_cap.time().epoch < epoch {
                // Restored: start in the epoch after the checkpoint, at the restored watermark.
                let wm = parts.iter().filter(|p| !p.done).map(|p| p.watermark).min().unwrap_or(u64::MAX).min(u64::MAX - 1);
                records_cap.downgrade(&Time::new(epoch, wm));
                dead_cap.downgrade(&Time::new(epoch, wm));
            }
            if let (Some(c), Some(tick)) = (&checkpoints, next_tick) {
                if Instant::now() >= tick {
                    let snaps: Vec<PartitionSnapshot> = parts.iter().map(PartitionState::snapshot).collect();
                    match checkpoint::encode(&snaps).and_then(|bytes| checkpoint::write_part(&c.dir, epoch, &participant, &bytes)) {
                        Ok(()) => {
                            epoch += 1;
                            let wm = records_cap.time().wm;
                            records_cap.downgrade(&Time::new(epoch, wm));
                            dead_cap.downgrade(&Time::new(epoch, wm));
                        }
                        Err(e) => eprintln!("error: source {}: checkpoint {epoch}: {e:#}; will retry", participant.file_name()),
                    }
                    next_tick = Some(Instant::now() + c.interval);
                }
            }
            let held = records_cap.time().wm;
            let mut read = 0u64;
            // `on_time` is handed over whole each activation: size it once, not by doubling.
            on_time.reserve(per_partition * parts.len());
            for part in parts.iter_mut().filter(|p| !p.done) {
                let status = part.reader.read(per_partition, &mut batch, &mut dead_letters);
                if !batch.is_empty() {
                    part.last_data = Instant::now();
                    part.idle = false;
                }
                read += batch.len() as u64;
                for record in batch.drain(..) {
                    let ts = event_time(&record);
                    if ts >= part.watermark && ts >= held {
                        on_time.push((ts, record));
                    } else {
                        behind.entry(part.watermark.max(held)).or_default().push((ts, record));
                    }
                    if part.max_ts.is_none_or(|m| ts > m) {
                        part.max_ts = Some(ts);
                        part.watermark = part.watermark.max(strategy.watermark(ts));
                    }
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
                }
            }
            metrics.add_events_read(read);
            {
                let mut handle = records_out.activate();
                if !on_time.is_empty() {
                    handle.session(&*records_cap).give_container(&mut on_time);
                    on_time.clear();
                }
                for (wm, mut records) in std::mem::take(&mut behind) {
                    let c = records_cap.delayed(&Time::new(epoch, wm));
                    handle.session(&c).give_container(&mut records);
                }
            }
            let had_dead_letters = !dead_letters.is_empty();
            if !dead_letters.is_empty() {
                metrics.add("dead_lettered", dead_letters.len() as u64);
                let mut handle = dead_out.activate();
                let mut session = handle.session(&*dead_cap);
                for d in dead_letters.drain(..) {
                    session.give((held, d));
                }
            }
            if parts.iter().all(|p| p.done) {
                caps = None;
                metrics.set_watermark(local_worker, u64::MAX);
                activator.activate();
                return;
            }
            let live = parts.iter().filter(|p| !p.done && !p.idle).map(|p| p.watermark).min();
            if let Some(watermark) = live {
                if watermark > held {
                    records_cap.downgrade(&Time::new(epoch, watermark));
                    dead_cap.downgrade(&Time::new(epoch, watermark));
                }
            }
            metrics.set_watermark(local_worker, records_cap.time().wm);
            if read > 0 || had_dead_letters {
                activator.activate();
            } else {
                // Nothing to read right now: look again shortly rather than spin.
                activator.activate_after(std::time::Duration::from_millis(10));
            }
        }
    });
    Ok((records, dead))
}

/// A finished source's last part: it stands for every later epoch (the coordinator links it).
fn write_final_part(c: &checkpoint::CheckpointConfig, epoch: u64, who: &Participant, snaps: &[PartitionSnapshot]) {
    let result = checkpoint::encode(&snaps).and_then(|bytes| checkpoint::write_final_part(&c.dir, epoch, who, &bytes));
    if let Err(e) = result {
        eprintln!("error: {}: final checkpoint part: {e:#}", who.file_name());
    }
}
