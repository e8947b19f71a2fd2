//! `paystream-custom`: the paystream CLI with two connectors defined here, outside the engine, as
//! a user's own binary would add them:
//!
//! * `seq:count=N,splits=S[,idle=DURATION_MS]`: a source of CSV payment messages, N in all dealt
//!   over S splits, handed to the engine one message at a time (the broker path). Every 997th
//!   message is malformed, for dead letters. With `idle=MS` it has no data at all: each split is
//!   idle for that long, waking the worker through its waker when it ends.
//! * `share:DIR`: a parallel sink with the two-phase commit: each worker writes its own share;
//!   an epoch is pre-committed as `DIR/w{worker}-e{epoch}.pending` (fsync) and committed by
//!   renaming it to `.committed`. Without checkpoints, a worker's lines go to `w{worker}.committed`
//!   at the end.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use paystream::engine::connector::{
    Decode, PayloadSource, Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter, SourceConnector, SourceWaker,
    SplitReader, UriOptions,
};
use paystream::engine::decode::LineDecoder;
use paystream::engine::source::{Position, ReadStatus};
use paystream::engine::{Format, Result};

struct SeqSource;

impl SourceConnector for SeqSource {
    fn scheme(&self) -> &'static str {
        "seq"
    }
    fn usage(&self) -> &'static str {
        "seq:count=N,splits=S[,idle=MS] (test payments, message by message)"
    }
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>> {
        let mut o = UriOptions::parse(&format!("source {uri}"), uri.strip_prefix("seq:").unwrap_or(uri), ',')?;
        let count = o.get("count", 10_000u64)?;
        let splits = o.get("splits", 4u64)?;
        let idle_ms = o.get("idle", 0u64)?;
        o.finish()?;
        if splits == 0 {
            bail!("source {uri}: splits must be at least 1");
        }
        Ok(Arc::new(Seq { source: source.to_string(), count, splits, idle_ms }))
    }
}

#[derive(Debug)]
struct Seq {
    source: String,
    count: u64,
    splits: u64,
    idle_ms: u64,
}

/// Message `i`: a payment line, or a malformed one every 997th.
fn message(i: u64) -> String {
    if i % 997 == 996 {
        return format!("{},not-a-payment", i);
    }
    let ts = 1_767_225_600_000 + i * 7 - (i % 5) * 300;
    let status = if i.is_multiple_of(11) { "DECLINED" } else { "APPROVED" };
    format!("{ts},s{i},{},{},{},EUR,DE,{status}", 1 + i % 113, 1 + i % 7, 100 + (i * 37) % 9_000)
}

impl PayloadSource for Seq {
    fn splits(&self) -> Result<u64> {
        Ok(self.splits)
    }
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>> {
        let idle = (self.idle_ms > 0).then(|| Arc::new(AtomicBool::new(false)));
        Ok(Box::new(SeqSplit {
            next: split,
            step: self.splits,
            count: self.count,
            lines: LineDecoder::new(&self.source, format!("seq split {split}"), Format::Csv),
            idle_ms: self.idle_ms,
            idle_over: idle,
        }))
    }
}

struct SeqSplit {
    next: u64,
    step: u64,
    count: u64,
    lines: LineDecoder,
    idle_ms: u64,
    idle_over: Option<Arc<AtomicBool>>,
}

impl SplitReader for SeqSplit {
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        if let Some(over) = &self.idle_over {
            return if over.load(Ordering::Acquire) { ReadStatus::Done } else { ReadStatus::Idle };
        }
        let mut n = 0;
        while n < max && self.next < self.count {
            let text = message(self.next);
            decode.message(&mut self.lines, text.as_bytes(), self.next + 1);
            self.next += self.step;
            n += 1;
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
        if position.offset % self.step != self.next % self.step {
            bail!("position {} is not in this split", position.offset);
        }
        self.next = position.offset;
        Ok(())
    }
    fn set_waker(&mut self, waker: SourceWaker) -> bool {
        let Some(over) = self.idle_over.clone() else { return false };
        let idle = Duration::from_millis(self.idle_ms);
        std::thread::spawn(move || {
            std::thread::sleep(idle);
            over.store(true, Ordering::Release);
            waker.wake();
        });
        true
    }
}

struct ShareSink;

impl SinkConnector for ShareSink {
    fn scheme(&self) -> &'static str {
        "share"
    }
    fn usage(&self) -> &'static str {
        "share:DIR (a parallel two-phase-commit test sink)"
    }
    fn open(&self, _sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let dir = PathBuf::from(uri.strip_prefix("share:").unwrap_or(uri));
        if dir.as_os_str().is_empty() {
            bail!("sink {uri}: name a directory: share:DIR");
        }
        Ok(Arc::new(Share { dir }))
    }
}

#[derive(Debug)]
struct Share {
    dir: PathBuf,
}

fn pending_path(dir: &Path, worker: usize, epoch: u64) -> PathBuf {
    dir.join(format!("w{worker}-e{epoch:010}.pending"))
}

fn committed_path(dir: &Path, worker: usize, epoch: u64) -> PathBuf {
    dir.join(format!("w{worker}-e{epoch:010}.committed"))
}

/// Commits a pre-commit: idempotent, so a restore may commit it again.
fn commit_file(dir: &Path, worker: usize, epoch: u64) -> Result<()> {
    let pending = pending_path(dir, worker, epoch);
    let committed = committed_path(dir, worker, epoch);
    if pending.exists() {
        fs::rename(&pending, &committed).with_context(|| format!("cannot commit {}", pending.display()))?;
    } else if !committed.exists() {
        bail!("pre-commit {} is lost", pending.display());
    }
    Ok(())
}

/// The epoch of a `w{W}-e{E}.pending` name.
fn pending_epoch(name: &str) -> Option<u64> {
    name.strip_suffix(".pending")?.split_once("-e")?.1.parse().ok()
}

impl SinkTarget for Share {
    fn format(&self) -> Format {
        Format::Csv
    }
    fn parallel(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("{} (shares)", self.dir.display())
    }
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        let Some(k) = recovery.restored else {
            if self.dir.exists() {
                fs::remove_dir_all(&self.dir)?;
            }
            return Ok(());
        };
        for c in &recovery.committables {
            let named: u64 = String::from_utf8_lossy(&c.data).parse().map_err(|_| anyhow!("bad committable"))?;
            assert_eq!(named, c.epoch);
            commit_file(&self.dir, c.worker, c.epoch)?;
        }
        if self.dir.exists() {
            for entry in fs::read_dir(&self.dir)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                if pending_epoch(&name).is_some_and(|e| e > k) {
                    fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        fs::create_dir_all(&self.dir)?;
        Ok(Box::new(ShareWriter { dir: self.dir.clone(), context: context.clone(), lines: BTreeMap::new() }))
    }
}

struct ShareWriter {
    dir: PathBuf,
    context: SinkContext,
    lines: BTreeMap<u64, Vec<String>>,
}

impl ShareWriter {
    fn write_file(&self, path: &Path, lines: &[String]) -> Result<()> {
        let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        f.sync_all()?;
        Ok(())
    }
}

impl SinkWriter for ShareWriter {
    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()> {
        self.lines.entry(epoch).or_default().extend(lines);
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        let lines = self.lines.remove(&epoch).unwrap_or_default();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        self.write_file(&pending_path(&self.dir, self.context.worker, epoch), &lines)?;
        Ok(Progress::Ready(Some(epoch.to_string().into_bytes())))
    }
    fn commit(&mut self, epoch: u64, _committable: &[u8]) -> Result<Progress> {
        commit_file(&self.dir, self.context.worker, epoch)?;
        Ok(Progress::Ready(()))
    }
    fn finish(&mut self) -> Result<Progress> {
        if !self.context.checkpointed {
            let all: Vec<String> = std::mem::take(&mut self.lines).into_values().flatten().collect();
            self.write_file(&self.dir.join(format!("w{}.committed", self.context.worker)), &all)?;
        }
        Ok(Progress::Ready(()))
    }
}

fn main() -> std::process::ExitCode {
    let connectors = paystream::connectors().source(SeqSource).sink(ShareSink);
    paystream::cli::main_with(paystream::jobs::all_jobs(), connectors)
}
