//! `postgres://USER@HOST:PORT/DB?table=NAME&ts=COLUMN` (or `?query=SELECT…&ts=COLUMN`) as a
//! source: a reference table (blocked cards, merchant risk) read as a snapshot at the start and,
//! with `poll=DURATION`, polled for new and changed rows by an increasing integer column: the
//! table side of a temporal join.
//!
//! **Rows** become JSON objects keyed by column name (`row_to_json` on the server), decoded into
//! the source's record type as `format=jsonl` lines are: columns match fields by name, in any
//! order, extra columns are ignored, and a row that does not fit (a NULL or negative `ts_ms`, a
//! text where a number belongs) goes to dead letters. The rows of one read come in `ts` order,
//! rows with equal `ts` in the order of their JSON text, so a read is deterministic.
//!
//! **Polling** (`poll=`): each poll reads, in one `REPEATABLE READ` snapshot, the rows with
//! `ts >= last` (the largest `ts` handed over), skipping those with `ts = last` it handed over
//! already (by content), so a row inserted later with the same `ts` as the last one is not lost.
//! An `UPDATE` that raises a row's `ts` above `last` makes it a new version; one that leaves it
//! at or below `last` is not seen (nor are deletes): write changes as new rows, as a change
//! stream does (`ts_ms,card_id,blocked`). Rows whose `ts` is NULL are read by the snapshot (and
//! dead-lettered by a type whose event time is a number) and never by a poll.
//!
//! **The watermark while polling**: a poll that started at the server's time `T` has seen every
//! row committed before `T`; the split then declares that it has handed over every row with
//! `ts < T - lag` ([`SplitReader::complete_before`]), so its watermark follows the server's clock
//! (minus `lag`, default 1 s) while the table is quiet, and a payment at time `t` is joined once
//! a poll after `t + lag` has run, seeing every row with `ts_ms <= t` committed by then. The
//! contract is that a row is committed within `lag` of its `ts`; a row committed later is behind
//! the watermark and, like any late table row, takes effect at the watermark it arrived at (the
//! temporal join's rule), never earlier. Rows of the initial snapshot come before the first
//! such declaration, so they take effect at their own `ts`, as from a file. Without `poll=` the
//! snapshot is read and the split ends (its watermark goes to the end of time).
//!
//! **Checkpoints** hold the position: `offset` is `last` (the largest `ts` handed over), `line`
//! how many rows at `last` were handed over, a 32-bit digest of their contents (the sum of each
//! row's FNV-1a) and whether the snapshot finished. During a run the rows at `last` are skipped
//! by content; a restore polls `ts >= last` and finds which of the rows at `last` are those the
//! checkpoint counted by the digest: exact when up to two rows were added at exactly `last` while
//! the job was down (else, logged, it takes the first ones in content order).
//!
//! **Connection loss**: the split's task reconnects with exponential backoff and polls again
//! from its position; after `reconnect_timeout` the split fails the job with an error naming the
//! server. An error in the SQL (a table dropped, a permission revoked) fails it at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use paystream_engine::connector::{parse_millis, Decode, PayloadSource, SourceConnector, SourceWaker, SplitReader, UriOptions};
use paystream_engine::decode::{LineDecoder, DEFAULT_MAX_RECORD_BYTES};
use paystream_engine::source::{Position, ReadStatus};
use paystream_engine::{Format, Result};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, IsolationLevel, SimpleQueryMessage};

use crate::client::{retryable, Backoff, Server, SinkRuntime};
use crate::sql::quote_ident;

/// The `postgres://` source connector.
pub struct PostgresSource;

impl SourceConnector for PostgresSource {
    fn scheme(&self) -> &'static str {
        "postgres"
    }
    fn usage(&self) -> &'static str {
        "postgres://USER@HOST:PORT/DB?table=NAME&ts=COLUMN or ?query=SELECT...&ts=COLUMN (query percent-encoded where it holds & or %) \
         as a source: rows as JSON objects by column name, in ts order (an integer column); a snapshot, then the source ends, or with \
         poll=DURATION the rows with ts >= the largest seen polled, those seen skipped (position in checkpoints), the watermark \
         following the server's clock minus lag (default 1s); batch=1000; connect_timeout=10s; reconnect_timeout=60s"
    }
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>> {
        let what = format!("source {source}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let table = options.text("table").filter(|t| !t.is_empty());
        let query = match options.text("query") {
            Some(q) => Some(percent_decode(&q).map_err(|e| anyhow!("{what}: query: {e}"))?),
            None => None,
        };
        let (inner, describe) = match (table, query) {
            (Some(table), None) => (format!("SELECT * FROM {}", quote_ident(&table)), format!("table {table}")),
            (None, Some(query)) => (query, "query".to_string()),
            (None, None) => bail!("{what}: name a table (?table=NAME&ts=COLUMN) or a query (?query=SELECT...)"),
            (Some(_), Some(_)) => bail!("{what}: give table= or query=, not both"),
        };
        match options.text("format").as_deref() {
            None | Some("jsonl") => {}
            Some(other) => bail!(
                "{what}: format={other:?}: a table's rows are read as JSON objects by column name (format=jsonl, the default), so \
                 that columns meet the record's fields by name and keep their types"
            ),
        }
        let ts = options.text("ts").filter(|t| !t.is_empty());
        let poll = match options.text("poll") {
            None => None,
            Some(_) if ts.is_none() => bail!("{what}: poll= needs ts=COLUMN, the increasing integer column rows are polled by"),
            Some(text) => match parse_millis(&text) {
                Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                Ok(_) => bail!("{what}: option poll={text:?}: give a positive duration such as 1s"),
                Err(e) => bail!("{what}: option poll={text:?}: {e}"),
            },
        };
        let lag_ms = match options.text("lag") {
            None => 1_000,
            Some(text) => parse_millis(&text).map_err(|e| anyhow!("{what}: option lag={text:?}: {e}"))?,
        };
        let batch: usize = options.get("batch", 1000)?;
        let max_record_bytes = options.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)?;
        if batch == 0 || max_record_bytes == 0 {
            bail!("{what}: batch and max_record_bytes must be at least 1");
        }
        let connect_timeout = options.duration("connect_timeout", Duration::from_secs(10))?;
        let reconnect_timeout = options.duration("reconnect_timeout", Duration::from_secs(60))?;
        options.finish()?;
        let server = Arc::new(Server::parse(&what, &rest, connect_timeout, reconnect_timeout)?);
        let select = Arc::new(Select { inner, ts });
        let runtime = SinkRuntime::new()?;
        // Fail at once, naming the server, when it does not answer or the query does not fit.
        let (check, probe) = (server.clone(), select.clone());
        let reads = describe.clone();
        runtime
            .wait(async move {
                let client = check.connect().await?;
                probe.check(&client).await.with_context(|| format!("cannot read {reads} at {}", check.endpoint()))
            })
            .map_err(|e| anyhow!("{what}: {e:#}"))?;
        Ok(Arc::new(PostgresTable { source: source.to_string(), describe, server, runtime, select, poll, lag_ms, batch, max_record_bytes }))
    }
}

/// `%XX` escapes decoded (a query holding `&` writes it `%26`, `%` itself `%25`).
fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                bail!("{:?} is not a %XX escape (write % as %25)", String::from_utf8_lossy(&bytes[i..bytes.len().min(i + 3)]));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("the decoded text is not UTF-8"))
}

/// The SQL of the reads, made from the table or query and the position column.
#[derive(Debug)]
struct Select {
    /// `SELECT * FROM "table"` or the user's query.
    inner: String,
    /// The position column; `None`: every row counts as `ts = 0` (a bounded read in content order).
    ts: Option<String>,
}

/// Which rows a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    /// The first read: every row, NULL `ts` included.
    Snapshot,
    /// A snapshot cut short (a restore, a lost connection): rows from `ts` on, and NULL ones.
    SnapshotFrom(i64),
    /// A poll with no row handed over yet: every row with a `ts`.
    AnyTs,
    /// A poll: rows from `ts` on.
    From(i64),
}

const ALIAS: &str = "paystream_q";

impl Select {
    /// The read's statement: two text columns, the row's `ts` and the row as JSON.
    fn read(&self, filter: Filter) -> String {
        let json = format!("row_to_json({ALIAS})::text");
        let Some(ts) = &self.ts else {
            return format!("SELECT '0', {json} FROM ({}) AS {ALIAS} ORDER BY 2", self.inner);
        };
        let ts = format!("{ALIAS}.{}", quote_ident(ts));
        let filter = match filter {
            Filter::Snapshot => String::new(),
            Filter::SnapshotFrom(v) => format!(" WHERE {ts} >= {v} OR {ts} IS NULL"),
            Filter::AnyTs => format!(" WHERE {ts} IS NOT NULL"),
            Filter::From(v) => format!(" WHERE {ts} >= {v}"),
        };
        format!("SELECT {ts}::text, {json} FROM ({}) AS {ALIAS}{filter} ORDER BY {ts} NULLS LAST, 2", self.inner)
    }

    /// Checks the query runs and its `ts` column is an integer one.
    async fn check(&self, client: &Client) -> Result<()> {
        let statement = client.prepare(&format!("SELECT * FROM ({}) AS {ALIAS} LIMIT 0", self.inner)).await?;
        let Some(ts) = &self.ts else { return Ok(()) };
        let columns: Vec<String> = statement.columns().iter().map(|c| c.name().to_string()).collect();
        let Some(column) = statement.columns().iter().find(|c| c.name() == ts) else {
            bail!("ts={ts:?} is not one of its columns {columns:?}");
        };
        if ![Type::INT2, Type::INT4, Type::INT8].contains(column.type_()) {
            bail!(
                "its ts column {ts:?} is of type {}: the position column must be an integer (smallint, integer or bigint, such as \
                 milliseconds since the epoch)",
                column.type_()
            );
        }
        Ok(())
    }
}

/// Where reading stands: the largest `ts` handed over, and how many rows at it were handed over
/// with a digest of their contents (so that a restore can tell them from rows inserted at the
/// same `ts` later).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Cursor {
    snapshot_done: bool,
    last: Option<i64>,
    /// Rows handed over at `last` (at most [`MAX_COUNT`] are counted).
    count_at_last: u64,
    /// The wrapping sum of [`row_digest`] over those rows.
    digest_at_last: u32,
}

/// The largest count of rows at one `ts` a position holds (30 bits).
const MAX_COUNT: u64 = (1 << 30) - 1;

/// A digest of a row's JSON (FNV-1a, 32 bits): the same in every process and version.
fn row_digest(json: &str) -> u32 {
    json.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl Cursor {
    /// `offset`: `last`; `line`: the digest in the high 32 bits, the count in the next 30, then
    /// whether the snapshot is done and whether `last` is set (0 for a fresh split).
    fn position(&self) -> Position {
        let line = (u64::from(self.digest_at_last) << 32)
            | (self.count_at_last.min(MAX_COUNT) << 2)
            | (u64::from(self.snapshot_done) << 1)
            | u64::from(self.last.is_some());
        let fresh = !self.snapshot_done && self.last.is_none();
        Position { offset: self.last.unwrap_or(0) as u64, line: if fresh { 0 } else { line } }
    }

    fn from_position(position: &Position) -> Cursor {
        let line = position.line;
        Cursor {
            snapshot_done: line & 2 != 0,
            last: (line & 1 != 0).then_some(position.offset as i64),
            count_at_last: (line >> 2) & MAX_COUNT,
            digest_at_last: (line >> 32) as u32,
        }
    }

    fn filter(&self) -> Filter {
        match (self.snapshot_done, self.last) {
            (false, None) => Filter::Snapshot,
            (false, Some(v)) => Filter::SnapshotFrom(v),
            (true, None) => Filter::AnyTs,
            (true, Some(v)) => Filter::From(v),
        }
    }

    /// Counts a row handed over.
    fn handed(&mut self, ts: Option<i64>, json: &str) {
        match (ts, self.last) {
            (None, _) => {}
            (Some(t), Some(last)) if t == last => {
                self.count_at_last += 1;
                self.digest_at_last = self.digest_at_last.wrapping_add(row_digest(json));
            }
            (Some(t), _) => {
                self.last = Some(t);
                self.count_at_last = 1;
                self.digest_at_last = row_digest(json);
            }
        }
    }
}

/// A row as the task hands it on: `ts` (`None`: NULL) and the row as JSON.
type Row = (Option<i64>, String);

/// The task's side of the cursor: which rows a read returned are new.
#[derive(Debug)]
struct Dedup {
    cursor: Cursor,
    /// The JSON of the rows handed over at `last` (during this run).
    at_last: Vec<String>,
    /// After a restore, until the first read settles it: the count and digest of the rows at
    /// `last` handed over before.
    restored: Option<(u64, u32)>,
    /// After a restore, in the first read: the rows at `last`, until it is known which of them
    /// the checkpoint covers.
    held: Vec<String>,
    /// This read: the rows at `last` of earlier reads not met again yet.
    unmatched: Vec<String>,
}

impl Dedup {
    fn new(cursor: Cursor) -> Dedup {
        let restored = (cursor.count_at_last > 0).then_some((cursor.count_at_last, cursor.digest_at_last));
        Dedup { cursor, at_last: Vec::new(), restored, held: Vec::new(), unmatched: Vec::new() }
    }

    fn begin_read(&mut self) {
        self.unmatched = self.at_last.clone();
        self.held.clear();
    }

    /// Takes a row a read returned (in read order) and puts into `out` the rows to hand over.
    fn admit(&mut self, ts: Option<i64>, json: &str, out: &mut Vec<Row>) {
        if let (Some(t), Some(last)) = (ts, self.cursor.last) {
            if t < last {
                return;
            }
            if t == last {
                if self.restored.is_some() {
                    self.held.push(json.to_string());
                } else if let Some(i) = self.unmatched.iter().position(|j| j == json) {
                    self.unmatched.swap_remove(i);
                } else {
                    self.hand(ts, json, out);
                }
                return;
            }
        }
        // Past the rows at `last` (they come first): what a restore held is settled first.
        self.settle(out);
        match ts {
            None if self.cursor.snapshot_done => {}
            None => out.push((None, json.to_string())),
            Some(_) => self.hand(ts, json, out),
        }
    }

    /// The read returned all its rows.
    fn end_read(&mut self, out: &mut Vec<Row>) {
        self.settle(out);
    }

    fn hand(&mut self, ts: Option<i64>, json: &str, out: &mut Vec<Row>) {
        if ts != self.cursor.last {
            self.at_last.clear();
            self.unmatched.clear();
        }
        self.at_last.push(json.to_string());
        self.cursor.handed(ts, json);
        out.push((ts, json.to_string()));
    }

    /// After a restore: decides which of the rows at `last` the checkpoint's count and digest
    /// cover, and hands over the others.
    fn settle(&mut self, out: &mut Vec<Row>) {
        let Some((count, digest)) = self.restored.take() else { return };
        let held = std::mem::take(&mut self.held);
        let covered = covered(&held, count, digest).unwrap_or_else(|| {
            tracing::warn!(
                ts = ?self.cursor.last,
                rows = held.len(),
                handed_before = count,
                "postgres source: the rows at the checkpoint's last ts changed while the job was down; taking the first ones in \
                 content order as those handed over"
            );
            (0..held.len()).map(|i| (i as u64) < count).collect()
        });
        let last = self.cursor.last;
        for (row, covered) in held.into_iter().zip(covered) {
            if covered {
                self.at_last.push(row);
            } else {
                self.hand(last, &row, out);
            }
        }
    }
}

/// Which of `rows` (the rows at `last` after a restore) are the `count` handed over before it,
/// whose digests sum to `digest`: all when there are no more; the first ones in content order
/// when their digest fits (rows added after them, or a bounded read without `ts` cut short);
/// else found by the digest when one or two rows were added; `None` when it cannot tell.
fn covered(rows: &[String], count: u64, digest: u32) -> Option<Vec<bool>> {
    let m = rows.len();
    if count >= m as u64 {
        return Some(vec![true; m]);
    }
    let digests: Vec<u32> = rows.iter().map(|r| row_digest(r)).collect();
    let k = count as usize;
    if digests[..k].iter().fold(0u32, |a, d| a.wrapping_add(*d)) == digest {
        return Some((0..m).map(|i| i < k).collect());
    }
    let added = digests.iter().fold(0u32, |a, d| a.wrapping_add(*d)).wrapping_sub(digest);
    let without = |skip: &[usize]| Some((0..m).map(|i| !skip.contains(&i)).collect());
    match m as u64 - count {
        1 => (0..m).find(|&i| digests[i] == added).and_then(|i| without(&[i])),
        2 => (0..m)
            .flat_map(|i| (i + 1..m).map(move |j| (i, j)))
            .find(|&(i, j)| digests[i].wrapping_add(digests[j]) == added)
            .and_then(|(i, j)| without(&[i, j])),
        _ => None,
    }
}

/// A table or query a source reads.
#[derive(Debug)]
struct PostgresTable {
    source: String,
    describe: String,
    server: Arc<Server>,
    runtime: Arc<SinkRuntime>,
    select: Arc<Select>,
    poll: Option<Duration>,
    lag_ms: u64,
    batch: usize,
    max_record_bytes: usize,
}

impl PayloadSource for PostgresTable {
    fn splits(&self) -> Result<u64> {
        Ok(1)
    }
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>> {
        if split != 0 {
            bail!("source {}: no split {split} (a postgres table is one split)", self.source);
        }
        let origin = format!("postgres {} row", self.describe);
        Ok(Box::new(TableReader {
            table: TableTask {
                describe: self.describe.clone(),
                server: self.server.clone(),
                select: self.select.clone(),
                poll: self.poll,
                lag_ms: self.lag_ms,
                batch: self.batch,
            },
            runtime: self.runtime.clone(),
            lines: LineDecoder::new(&self.source, origin, Format::JsonLines).with_max_record_bytes(self.max_record_bytes),
            cursor: Cursor::default(),
            pending: VecDeque::new(),
            complete_before: None,
            handed: 0,
            ended: false,
            waker: None,
            link: None,
            failed: None,
        }))
    }
}

/// What a split's task hands its reader.
enum Event {
    /// New rows, in order: `ts` (`None`: NULL) and the row as JSON.
    Rows(Vec<(Option<i64>, String)>),
    /// A read finished: every row of the table with `ts` below `complete_before` has been sent
    /// (`None` for a bounded read).
    Read { complete_before: Option<u64> },
    /// A bounded read ended.
    End,
    /// The server stayed away longer than `reconnect_timeout`, or the query failed.
    Failed(anyhow::Error),
}

/// The reader's end of its task.
struct TaskLink {
    events: mpsc::Receiver<Event>,
    /// Set by the reader when it found the channel empty: the task then wakes it.
    sleeping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Reads one table on a worker; its task polls the server.
struct TableReader {
    table: TableTask,
    runtime: Arc<SinkRuntime>,
    lines: LineDecoder,
    /// What was handed to the decoder.
    cursor: Cursor,
    /// Rows received, not handed over yet.
    pending: VecDeque<(Option<i64>, String)>,
    complete_before: Option<u64>,
    /// Rows handed over in this run (the numbers dead letters give).
    handed: u64,
    ended: bool,
    waker: Option<SourceWaker>,
    link: Option<TaskLink>,
    failed: Option<String>,
}

impl TableReader {
    fn start(&mut self) {
        let (events_tx, events) = mpsc::channel(16);
        let sleeping = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            table: self.table.clone(),
            dedup: Dedup::new(self.cursor.clone()),
            events: events_tx,
            sleeping: sleeping.clone(),
            waker: self.waker.clone(),
        };
        let task = self.runtime.handle().spawn(poller.run());
        self.link = Some(TaskLink { events, sleeping, task });
    }

    fn hand_over(&mut self, max: usize, decode: &mut dyn Decode) -> usize {
        let mut read = 0;
        while read < max {
            let Some((ts, json)) = self.pending.pop_front() else { break };
            self.handed += 1;
            decode.message(&mut self.lines, json.as_bytes(), self.handed);
            self.cursor.handed(ts, &json);
            read += 1;
        }
        read
    }
}

impl Drop for TableReader {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.task.abort();
        }
    }
}

impl SplitReader for TableReader {
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        if let Some(message) = &self.failed {
            return ReadStatus::Failed(message.clone());
        }
        if self.link.is_none() {
            self.start();
        }
        let mut read = self.hand_over(max, decode);
        while read < max && self.pending.is_empty() && !self.ended {
            let Some(link) = self.link.as_mut() else { break };
            match link.events.try_recv() {
                Ok(Event::Rows(rows)) => {
                    self.pending.extend(rows);
                    read += self.hand_over(max - read, decode);
                }
                Ok(Event::Read { complete_before }) => {
                    self.cursor.snapshot_done = true;
                    if let Some(before) = complete_before {
                        self.complete_before = Some(self.complete_before.map_or(before, |b| b.max(before)));
                    }
                }
                Ok(Event::End) => self.ended = true,
                Ok(Event::Failed(e)) => {
                    let message = format!("{e:#}");
                    self.failed = Some(message.clone());
                    return ReadStatus::Failed(message);
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    link.sleeping.store(true, Ordering::SeqCst);
                    // An event sent before the flag was set wakes no one: look once more.
                    if !link.events.is_empty() {
                        continue;
                    }
                    break;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    let message = format!("{}: its reader stopped", self.table.describe);
                    self.failed = Some(message.clone());
                    return ReadStatus::Failed(message);
                }
            }
        }
        if self.ended && self.pending.is_empty() {
            ReadStatus::Done
        } else if read > 0 {
            ReadStatus::More
        } else {
            ReadStatus::Idle
        }
    }
    fn position(&self) -> Position {
        self.cursor.position()
    }
    fn seek(&mut self, position: &Position) -> Result<()> {
        if self.link.is_some() {
            bail!("postgres {} cannot seek once reading", self.table.describe);
        }
        self.cursor = Cursor::from_position(position);
        Ok(())
    }
    fn set_waker(&mut self, waker: SourceWaker) -> bool {
        self.waker = Some(waker);
        true
    }
    fn complete_before(&self) -> Option<u64> {
        self.complete_before
    }
}

/// What a split's task needs to read the table.
#[derive(Clone, Debug)]
struct TableTask {
    describe: String,
    server: Arc<Server>,
    select: Arc<Select>,
    poll: Option<Duration>,
    lag_ms: u64,
    batch: usize,
}

/// A split's task: reads the snapshot, then polls, reconnecting as needed.
struct Poller {
    table: TableTask,
    dedup: Dedup,
    events: mpsc::Sender<Event>,
    sleeping: Arc<AtomicBool>,
    waker: Option<SourceWaker>,
}

impl Poller {
    async fn run(mut self) {
        let endpoint = self.table.server.endpoint().to_string();
        let mut backoff = Backoff::new(self.table.server.reconnect_timeout);
        let mut client: Option<Client> = None;
        loop {
            match self.read_once(&mut client).await {
                Ok(false) => return, // the reader is gone
                Ok(true) => {
                    backoff = Backoff::new(self.table.server.reconnect_timeout);
                    let Some(every) = self.table.poll else {
                        self.send(Event::End).await;
                        return;
                    };
                    tokio::time::sleep(every).await;
                }
                Err(e) => {
                    client = None;
                    let e = e.context(format!("cannot read {} at {endpoint}", self.table.describe));
                    if !retryable(&e) {
                        self.send(Event::Failed(e)).await;
                        return;
                    }
                    if let Err(e) = backoff.wait(e, &endpoint).await {
                        self.send(Event::Failed(e)).await;
                        return;
                    }
                }
            }
        }
    }

    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(w) = &self.waker {
                w.wake();
            }
        }
    }

    async fn send(&self, event: Event) -> bool {
        let sent = self.events.send(event).await.is_ok();
        self.wake();
        sent
    }

    /// One read (the snapshot or a poll) in one snapshot of the database; `Ok(false)` when the
    /// reader is gone.
    async fn read_once(&mut self, client: &mut Option<Client>) -> Result<bool> {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(self.table.server.connect().await?);
        }
        let Some(client) = client.as_mut() else { unreachable!("connected above") };
        let transaction = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        // The snapshot is taken by the transaction's first statement, at or after its start.
        let started = transaction.query_one("SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint", &[]).await?;
        let started_ms: i64 = started.get(0);
        let sql = self.table.select.read(self.dedup.cursor.filter());
        transaction.batch_execute(&format!("DECLARE paystream_rows NO SCROLL CURSOR FOR {sql}")).await?;
        let fetch = format!("FETCH {} FROM paystream_rows", self.table.batch);
        self.dedup.begin_read();
        loop {
            let messages = transaction.simple_query(&fetch).await?;
            let mut rows = Vec::new();
            let mut fetched = 0usize;
            for message in messages {
                let SimpleQueryMessage::Row(row) = message else { continue };
                fetched += 1;
                let ts = match row.get(0) {
                    None => None,
                    Some(text) => Some(text.parse::<i64>().with_context(|| format!("a ts of {text:?}"))?),
                };
                self.dedup.admit(ts, row.get(1).unwrap_or("null"), &mut rows);
            }
            let done = fetched < self.table.batch;
            if done {
                self.dedup.end_read(&mut rows);
            }
            if !rows.is_empty() && !self.send(Event::Rows(rows)).await {
                return Ok(false);
            }
            if done {
                break;
            }
        }
        transaction.commit().await?;
        self.dedup.cursor.snapshot_done = true;
        let complete_before = self.table.poll.map(|_| started_ms.saturating_sub(self.table.lag_ms as i64).max(0) as u64);
        Ok(self.send(Event::Read { complete_before }).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let cursor = |snapshot_done, last, count_at_last, digest_at_last| Cursor { snapshot_done, last, count_at_last, digest_at_last };
        let cursors = [
            Cursor::default(),
            cursor(true, None, 0, 0),
            cursor(false, Some(1_767_225_600_000), 3, u32::MAX),
            cursor(true, Some(-5), 1, 7),
            cursor(true, Some(0), MAX_COUNT, 0x8000_0001),
        ];
        for c in cursors {
            assert_eq!(Cursor::from_position(&c.position()), c, "{:?}", c.position());
        }
        assert_eq!(Cursor::default().position(), Position::default(), "a fresh split is at the default position");
        assert_eq!(cursor(true, Some(42), 2, 9).position().offset, 42, "the offset is last");
    }

    /// Feeds one read's rows through `d`; returns the JSON of those handed over.
    fn read(d: &mut Dedup, rows: &[(i64, &str)]) -> Vec<String> {
        let mut out = Vec::new();
        d.begin_read();
        for (t, j) in rows {
            d.admit(Some(*t), j, &mut out);
        }
        d.end_read(&mut out);
        d.cursor.snapshot_done = true;
        out.into_iter().map(|(_, j)| j).collect()
    }

    #[test]
    fn rows_at_the_last_ts_are_handed_over_once_each() {
        let mut d = Dedup::new(Cursor::default());
        assert_eq!(read(&mut d, &[(1, "a"), (2, "b"), (2, "c")]), ["a", "b", "c"]);
        // The next poll reads ts >= 2: b and c again, then a new row at 2 and one at 3.
        assert_eq!(read(&mut d, &[(2, "a2"), (2, "b"), (2, "c"), (3, "d")]), ["a2", "d"]);
        assert_eq!((d.cursor.last, d.cursor.count_at_last, d.cursor.digest_at_last), (Some(3), 1, row_digest("d")));
        // Two equal rows at the last ts: one handed over, the second is new.
        assert_eq!(read(&mut d, &[(3, "d"), (3, "d")]), ["d"]);
        assert!(read(&mut d, &[(3, "d"), (3, "d")]).is_empty());
        let mut out = Vec::new();
        d.admit(None, "a NULL ts after the snapshot", &mut out);
        assert!(out.is_empty());
    }

    fn restored(rows: &[&str]) -> Dedup {
        let mut before = Cursor { snapshot_done: true, last: Some(5), ..Cursor::default() };
        for r in rows {
            before.handed(Some(5), r);
        }
        Dedup::new(Cursor::from_position(&before.position()))
    }

    #[test]
    fn a_restore_tells_the_rows_handed_over_from_rows_added_at_the_same_ts() {
        // One row added, sorting before those handed over: a count alone would skip it.
        assert_eq!(read(&mut restored(&["b", "c"]), &[(5, "a"), (5, "b"), (5, "c"), (6, "d")]), ["a", "d"]);
        // Two added, around them.
        assert_eq!(read(&mut restored(&["b", "d"]), &[(5, "a"), (5, "b"), (5, "c"), (5, "d")]), ["a", "c"]);
        // None added.
        assert_eq!(read(&mut restored(&["b", "c"]), &[(5, "b"), (5, "c"), (7, "e")]), ["e"]);
        // Many after them (a bounded read without ts, every row at 0, cut short): the first ones.
        assert_eq!(read(&mut restored(&["a", "b"]), &[(5, "a"), (5, "b"), (5, "c"), (5, "d"), (5, "e")]), ["c", "d", "e"]);
        // Three added, one before: the first rows in content order are taken as those handed over.
        assert_eq!(read(&mut restored(&["e"]), &[(5, "a"), (5, "b"), (5, "c"), (5, "e")]), ["b", "c", "e"]);
        let mut d = restored(&["b", "c"]);
        read(&mut d, &[(5, "a"), (5, "b"), (5, "c")]);
        assert_eq!(d.cursor.count_at_last, 3, "the row added is counted with those before");
        assert!(read(&mut d, &[(5, "a"), (5, "b"), (5, "c")]).is_empty(), "and later polls skip all three by content");
    }

    #[test]
    fn statements() {
        let s = Select { inner: "SELECT * FROM \"blocked_cards\"".into(), ts: Some("ts_ms".into()) };
        assert_eq!(
            s.read(Filter::From(42)),
            "SELECT paystream_q.\"ts_ms\"::text, row_to_json(paystream_q)::text FROM (SELECT * FROM \"blocked_cards\") AS paystream_q \
             WHERE paystream_q.\"ts_ms\" >= 42 ORDER BY paystream_q.\"ts_ms\" NULLS LAST, 2"
        );
        assert!(!s.read(Filter::Snapshot).contains("WHERE"));
        assert!(s.read(Filter::AnyTs).contains("IS NOT NULL"));
        assert!(s.read(Filter::SnapshotFrom(-3)).contains(">= -3 OR paystream_q.\"ts_ms\" IS NULL"));
        let all = Select { inner: "SELECT 1 AS x".into(), ts: None };
        assert_eq!(all.read(Filter::Snapshot), "SELECT '0', row_to_json(paystream_q)::text FROM (SELECT 1 AS x) AS paystream_q ORDER BY 2");
    }

    #[test]
    fn queries_are_percent_decoded() {
        assert_eq!(percent_decode("SELECT * FROM t WHERE a %26 1 = 1").unwrap(), "SELECT * FROM t WHERE a & 1 = 1");
        assert_eq!(percent_decode("100%25").unwrap(), "100%");
        assert!(percent_decode("50%").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%é").is_err(), "a multi-byte character after % is an error, not a panic");
    }
}
