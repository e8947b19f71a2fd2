//! `postgres://USER@HOST:PORT/DB?table=NAME` as a sink: CSV lines copied into a table by every
//! worker in parallel, appended or upserted by a key.
//!
//! **With checkpoints, exactly-once**, by one of two commit protocols (`commit=`):
//!
//! - **Prepared transactions** (`commit=prepared`; what `auto`, the default, takes when the
//!   server's `max_prepared_transactions` is above 0): each worker writes an epoch's lines at the
//!   epoch's pre-commit in ONE transaction that also inserts (job, sink, table, worker, epoch)
//!   into `paystream_commits`, and ends it with `PREPARE TRANSACTION 'paystream:HASH:WORKER:EPOCH'`
//!   (durable, invisible, surviving a crash of the job and of the server). The committable (kept
//!   in the checkpoint) is that id alone. Once the checkpoint's manifest is durable,
//!   `COMMIT PREPARED` makes the rows visible. A restore commits the prepared transactions of the
//!   sink whose epoch the restored checkpoint covers and rolls back later ones; a fresh run rolls
//!   back all of them. A `COMMIT PREPARED` redone after a lost acknowledgement finds no such
//!   transaction and then checks the bookkeeping row: present, it committed.
//! - **Write-ahead** (`commit=write-ahead`; what `auto` takes with `max_prepared_transactions = 0`,
//!   PostgreSQL's default): `write` keeps an epoch's lines in memory, the pre-commit returns them
//!   as the committable (so they are stored in the checkpoint), and the commit, once the
//!   checkpoint's manifest is durable, writes them in ONE transaction that also inserts the
//!   bookkeeping row. That insert comes first and does nothing when the row is there already;
//!   the transaction then writes nothing. So a commit redone (after a lost connection whose
//!   COMMIT may or may not have landed, or by [`SinkTarget::recover`] for every committable of the
//!   restored checkpoint after a crash) never writes an epoch twice, and an epoch is never lost,
//!   since the checkpoint holds its lines until a commit succeeded.
//!
//! Either way a fresh run (no restore) first forgets the bookkeeping of its (job, sink, table),
//! since its epochs count from 1 again, and a restore refuses to go back behind epochs the
//! bookkeeping holds as committed. A restore decodes committables of both protocols, so a
//! checkpoint taken under one restores under the other.
//!
//! **Without checkpoints**, lines are copied as they are written, one transaction per batch;
//! a batch whose COMMIT was cut off is written again after reconnecting (at-least-once).
//!
//! Rows go in with `COPY … FROM STDIN (FORMAT csv)`: the engine's CSV lines pass through
//! unparsed. Upserts copy into a staging table and merge it with `INSERT … ON CONFLICT (key)
//! DO UPDATE`, the last line of a key in an epoch winning: a temporary table on the write-ahead
//! path, an unlogged table per writer on the prepared path (PostgreSQL cannot prepare a
//! transaction that touched a temporary table), dropped when the job finishes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::SinkExt;
use paystream_engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter, UriOptions};
use paystream_engine::{Format, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::client::{retryable, Backoff, Fatal, Server, SinkRuntime};
use crate::sql;

/// How many bytes of lines one COPY message carries.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// The `postgres://` sink connector.
pub struct PostgresSink;

/// How a checkpointed run commits (`commit=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// `PREPARE TRANSACTION` at the pre-commit, `COMMIT PREPARED` at the commit.
    Prepared,
    /// Lines in the checkpoint, written in one recorded transaction at the commit.
    WriteAhead,
}

impl SinkConnector for PostgresSink {
    fn scheme(&self) -> &'static str {
        "postgres"
    }
    fn usage(&self) -> &'static str {
        "postgres://USER@HOST:PORT/DB?table=NAME (create=true makes the table from the CSV header: *_ms, *_id, *_cents, *_count, count \
         BIGINT, *rate NUMERIC, is_* BOOLEAN, TEXT otherwise or when the first values do not parse; mode=append|upsert, \
         key=COL1,COL2 for upsert; connect_timeout=10s, reconnect_timeout=60s; exactly-once with checkpoints)"
    }
    fn open(&self, sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let what = format!("sink {sink}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let Some(table) = options.text("table").filter(|t| !t.is_empty()) else {
            bail!("{what}: name the table: postgres://USER@HOST:PORT/DB?table=NAME");
        };
        let create = options.get("create", false)?;
        let upsert = match options.text("mode").as_deref() {
            None | Some("append") => false,
            Some("upsert") => true,
            Some(other) => bail!("{what}: mode={other:?}: use append or upsert"),
        };
        let key: Vec<String> = options.text("key").map(|k| sql::header_columns(&k)).unwrap_or_default();
        if upsert && key.is_empty() {
            bail!("{what}: mode=upsert needs key=COL1,COL2 (the columns that identify a row)");
        }
        if !upsert && !key.is_empty() {
            bail!("{what}: key= is for mode=upsert");
        }
        let asked = match options.text("commit").as_deref() {
            None | Some("auto") => None,
            Some("prepared") => Some(Protocol::Prepared),
            Some("write-ahead") => Some(Protocol::WriteAhead),
            Some(other) => bail!("{what}: commit={other:?}: use auto, prepared or write-ahead"),
        };
        let connect_timeout = options.duration("connect_timeout", Duration::from_secs(10))?;
        let reconnect_timeout = options.duration("reconnect_timeout", Duration::from_secs(60))?;
        options.finish()?;
        let server = Arc::new(Server::parse(&what, &rest, connect_timeout, reconnect_timeout)?);
        let runtime = SinkRuntime::new()?;
        // Fail at once, naming the server, when it does not answer; make the bookkeeping table;
        // learn whether the server prepares transactions.
        let check = server.clone();
        let max_prepared = runtime
            .wait(async move {
                let client = check.connect().await?;
                create_under_lock(&client, &sql::create_commits_table()).await?;
                let row = client.query_one("SELECT current_setting('max_prepared_transactions')::int", &[]).await?;
                Ok(row.get::<_, i32>(0))
            })
            .map_err(|e| anyhow!("{what}: {e:#}"))?;
        let protocol = match asked {
            Some(Protocol::Prepared) if max_prepared == 0 => bail!(
                "{what}: commit=prepared needs PREPARE TRANSACTION, which the server at {} refuses: its \
                 max_prepared_transactions is 0. Set it (postgresql.conf: max_prepared_transactions = 64, at least the \
                 job's workers times 2, then restart the server), or use commit=write-ahead (exactly-once as well: the \
                 epoch's rows go into the checkpoint and are written once it is complete)",
                server.endpoint()
            ),
            Some(protocol) => protocol,
            None if max_prepared > 0 => Protocol::Prepared,
            None => Protocol::WriteAhead,
        };
        tracing::debug!(server = server.endpoint(), max_prepared, ?protocol, "postgres: commit protocol");
        Ok(Arc::new(PostgresTarget { server, runtime, table, create, key: upsert.then_some(key), protocol }))
    }
}

/// `CREATE TABLE IF NOT EXISTS` is not safe against itself run concurrently (two may both try to
/// create): a transaction-scoped advisory lock serializes the sink's creations.
async fn create_under_lock(client: &Client, create: &str) -> Result<()> {
    let sql = format!("BEGIN; SELECT pg_advisory_xact_lock(7061797374726561); {create}; COMMIT");
    client.batch_execute(&sql).await.with_context(|| format!("cannot run {create:?}"))
}

/// A table a sink writes.
#[derive(Debug)]
struct PostgresTarget {
    server: Arc<Server>,
    runtime: Arc<SinkRuntime>,
    table: String,
    create: bool,
    /// The upsert key; `None` appends.
    key: Option<Vec<String>>,
    protocol: Protocol,
}

/// What one transaction writes: the table's shape and the lines.
#[derive(Clone, Debug)]
struct Shape {
    table: String,
    columns: Vec<String>,
    create: bool,
    key: Option<Vec<String>>,
}

/// An epoch's lines of one writer: the committable of the write-ahead protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Batch {
    /// The CSV header the lines follow.
    header: String,
    lines: Vec<String>,
}

/// What a writer's pre-commit stores in the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Committed {
    /// Write-ahead: the lines themselves.
    Lines(Batch),
    /// Prepared: the id of the prepared transaction holding the lines.
    Prepared(String),
}

/// The first bytes of a prepared committable. A [`Batch`] (bincode's varint length of its
/// header first) never starts with 0xFF, so committables written before the prepared protocol
/// existed still decode as lines.
const PREPARED_TAG: [u8; 4] = [0xFF, b'P', b'G', 1];

impl Committed {
    fn encode(&self) -> Result<Vec<u8>> {
        match self {
            Committed::Lines(batch) => {
                bincode::serde::encode_to_vec(batch, bincode::config::standard()).context("cannot encode a postgres batch")
            }
            Committed::Prepared(gid) => Ok(PREPARED_TAG.iter().copied().chain(gid.bytes()).collect()),
        }
    }
    fn decode(bytes: &[u8]) -> Result<Committed> {
        if let Some(gid) = bytes.strip_prefix(&PREPARED_TAG[..]) {
            let gid = std::str::from_utf8(gid).context("a prepared transaction id in the checkpoint is not UTF-8")?;
            return Ok(Committed::Prepared(gid.to_string()));
        }
        let (batch, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .context("cannot decode a postgres batch from the checkpoint")?;
        Ok(Committed::Lines(batch))
    }
}

/// Who wrote an epoch, as recorded in `paystream_commits`.
#[derive(Clone, Debug)]
struct Stamp {
    job: String,
    sink: String,
    worker: i32,
    epoch: i64,
}

impl PostgresTarget {
    fn shape(&self, header: &str) -> Result<Shape> {
        let columns = sql::header_columns(header);
        if let Some(key) = &self.key {
            if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
                bail!("key column {missing:?} is not a column of the output ({header})");
            }
        }
        Ok(Shape { table: self.table.clone(), columns, create: self.create, key: self.key.clone() })
    }
}

/// The ids of the sink's prepared transactions still open on the server, by their prefix.
async fn prepared_transactions(client: &Client, prefix: &str) -> Result<Vec<String>> {
    let rows = client
        .query("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) ORDER BY gid", &[&prefix])
        .await
        .context("cannot list prepared transactions (pg_prepared_xacts)")?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

/// Whether the bookkeeping holds `stamp`'s epoch as committed.
async fn recorded(client: &Client, table: &str, stamp: &Stamp) -> Result<bool> {
    let sql =
        format!("SELECT count(*) FROM {} WHERE job = $1 AND sink = $2 AND target = $3 AND worker = $4 AND epoch = $5", sql::COMMITS_TABLE);
    let row = client.query_one(&sql, &[&stamp.job, &stamp.sink, &table, &stamp.worker, &stamp.epoch]).await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Drops the writers' staging tables of the prepared protocol's upserts.
async fn drop_writer_stages(client: &Client, target: u64) -> Result<()> {
    let rows = client
        .query("SELECT quote_ident(tablename) FROM pg_tables WHERE tablename LIKE $1", &[&sql::writer_stages(target)])
        .await
        .context("cannot list the sink's staging tables")?;
    for row in rows {
        let stage: String = row.get(0);
        client.batch_execute(&format!("DROP TABLE IF EXISTS {stage}")).await.with_context(|| format!("cannot drop {stage}"))?;
    }
    Ok(())
}

impl SinkTarget for PostgresTarget {
    fn format(&self) -> Format {
        Format::Csv
    }
    fn parallel(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("postgres table {} at {}", self.table, self.server.endpoint())
    }
    /// A fresh run rolls back the sink's prepared transactions and forgets the bookkeeping of
    /// earlier runs of the same job, sink and table (its epochs start from 1 again). A restore
    /// commits the prepared transactions the checkpoint covers, rolls back later ones, and writes
    /// every write-ahead epoch of the checkpoint that the bookkeeping does not hold yet.
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        let server = self.server.clone();
        let (job, sink, table) = (recovery.job.clone(), recovery.sink.clone(), self.table.clone());
        let target = sql::target_hash(&job, &sink, &table);
        let prefix = sql::prepared_prefix(target);
        let Some(restored) = recovery.restored else {
            return self.runtime.wait(async move {
                let client = server.connect().await?;
                for gid in prepared_transactions(&client, &prefix).await? {
                    client.batch_execute(&format!("ROLLBACK PREPARED {}", sql::literal(&gid))).await?;
                    tracing::info!(%gid, "postgres: rolled back a prepared transaction of an earlier run");
                }
                drop_writer_stages(&client, target).await?;
                let forget = format!("DELETE FROM {} WHERE job = $1 AND sink = $2 AND target = $3", sql::COMMITS_TABLE);
                client.execute(&forget, &[&job, &sink, &table]).await.context("cannot clear the sink's bookkeeping")?;
                Ok(())
            });
        };
        let mut committables = recovery.committables.clone();
        committables.sort_by_key(|c| (c.epoch, c.worker));
        let mut work = Vec::with_capacity(committables.len());
        let mut covered = Vec::new();
        for c in &committables {
            let stamp = Stamp { job: job.clone(), sink: sink.clone(), worker: c.worker as i32, epoch: c.epoch as i64 };
            match Committed::decode(&c.data)? {
                Committed::Lines(batch) => work.push((self.shape(&batch.header)?, stamp, batch.lines)),
                Committed::Prepared(gid) => covered.push((gid, stamp)),
            }
        }
        self.runtime.wait(async move {
            let client = server.connect().await?;
            // Epochs after the checkpoint are committed only once a later checkpoint is
            // complete: finding one means an older checkpoint is being restored, whose replay
            // would write those rows a second time.
            let later = format!("SELECT count(*) FROM {} WHERE job = $1 AND sink = $2 AND target = $3 AND epoch > $4", sql::COMMITS_TABLE);
            let row = client.query_one(&later, &[&job, &sink, &table, &(restored as i64)]).await.context("cannot read the sink's bookkeeping")?;
            let count: i64 = row.get(0);
            if count > 0 {
                bail!(
                    "table {table} already holds rows of {count} commit(s) after checkpoint {restored} (see {}): restore the latest \
                     checkpoint, or clear the table and the bookkeeping rows of job {job:?} sink {sink:?}",
                    sql::COMMITS_TABLE
                );
            }
            // Prepared transactions of epochs the checkpoint covers hold committed output (the
            // crash came between the manifest and the commit); later ones are rolled back: the
            // replay writes them again.
            for gid in prepared_transactions(&client, &prefix).await? {
                let Some((worker, epoch)) = sql::parse_gid(&prefix, &gid) else { continue };
                let verb = if epoch <= restored as i64 { "COMMIT" } else { "ROLLBACK" };
                client.batch_execute(&format!("{verb} PREPARED {}", sql::literal(&gid))).await.with_context(|| format!("cannot {verb} PREPARED {gid}"))?;
                tracing::info!(%gid, worker, epoch, restored, "postgres: {} a prepared transaction", verb.to_lowercase());
            }
            for (gid, stamp) in &covered {
                if !recorded(&client, &table, stamp).await? {
                    bail!(
                        "the checkpoint's prepared transaction {gid} (worker {}, epoch {}) is neither prepared nor committed on \
                         the server: it was rolled back outside paystream (ROLLBACK PREPARED), so its rows are lost. Clear table \
                         {table} and start the job afresh",
                        stamp.worker,
                        stamp.epoch
                    );
                }
            }
            drop_writer_stages(&client, target).await?;
            drop(client);
            let mut writer = Connection::new(server, None);
            for (shape, stamp, lines) in work {
                let wrote = writer.write(&shape, Some(&stamp), &lines).await?;
                tracing::info!(table = %shape.table, worker = stamp.worker, epoch = stamp.epoch, wrote, rows = lines.len(), "postgres: recovered an epoch");
            }
            Ok(())
        })
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let Some(header) = context.header.clone() else { bail!("the postgres sink needs CSV lines with a header") };
        let shape = self.shape(&header)?;
        let target = sql::target_hash(&context.job, &context.sink, &self.table);
        let prepared = context.checkpointed && self.protocol == Protocol::Prepared;
        let stage = (prepared && self.key.is_some()).then(|| sql::writer_stage(target, context.worker as i32));
        let handle = self.runtime.handle();
        let lane = Lane::start(&handle, Connection::new(self.server.clone(), stage), shape.clone());
        // The prepared protocol commits on a connection of its own: the next epoch's
        // transaction may wait for row locks that the prepared one holds until its commit.
        let commits = prepared.then(|| Lane::start(&handle, Connection::new(self.server.clone(), None), shape));
        Ok(Box::new(PostgresWriter {
            header,
            job: context.job.clone(),
            sink: context.sink.clone(),
            worker: context.worker as i32,
            checkpointed: context.checkpointed,
            prepared,
            target,
            pending: BTreeMap::new(),
            lane,
            commits,
            preparing: None,
            committing: None,
            finishing: None,
        }))
    }
}

/// What the writing task tells its writer.
#[derive(Default)]
struct Shared {
    /// The number of work items done, in order.
    done: AtomicU64,
    error: Mutex<Option<String>>,
}

/// One item of a writer's work, done in order on its connection.
enum Work {
    /// Lines written in a transaction of their own: without checkpoints, and the write-ahead
    /// protocol's commit (then with the bookkeeping row).
    Write(Option<Stamp>, Vec<String>),
    /// The prepared protocol's pre-commit: the epoch's lines, recorded, prepared as `gid`.
    Prepare(Stamp, String, Vec<String>),
    /// The prepared protocol's commit.
    CommitPrepared(Stamp, String),
    /// The end of the run: drop the writer's staging table.
    Finish,
}

/// Does the writer's work items one after another.
async fn work_in_order(mut connection: Connection, shape: Shape, mut items: mpsc::UnboundedReceiver<(u64, Work)>, shared: Arc<Shared>) {
    while let Some((ticket, work)) = items.recv().await {
        let done = match work {
            Work::Write(stamp, lines) => connection.write(&shape, stamp.as_ref(), &lines).await.map(|_| ()),
            Work::Prepare(stamp, gid, lines) => connection.prepare(&shape, &stamp, &gid, &lines).await,
            Work::CommitPrepared(stamp, gid) => connection.commit_prepared(&shape, &stamp, &gid).await,
            Work::Finish => connection.finish().await,
        };
        match done {
            Ok(()) => shared.done.store(ticket, Ordering::Release),
            Err(e) => {
                *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                return;
            }
        }
    }
}

/// A task doing work items in order on one connection, and what it reports.
struct Lane {
    sender: mpsc::UnboundedSender<(u64, Work)>,
    shared: Arc<Shared>,
    /// Work items handed to the task (tickets 1..=submitted).
    submitted: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Lane {
    fn start(handle: &tokio::runtime::Handle, connection: Connection, shape: Shape) -> Lane {
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let task = handle.spawn(work_in_order(connection, shape, receiver, shared.clone()));
        Lane { sender, shared, submitted: 0, task }
    }
    fn check(&self) -> Result<()> {
        match self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
    fn submit(&mut self, work: Work) -> Result<u64> {
        self.submitted += 1;
        self.sender.send((self.submitted, work)).map_err(|_| anyhow!("the postgres writer stopped"))?;
        Ok(self.submitted)
    }
    fn done(&self, ticket: u64) -> bool {
        self.shared.done.load(Ordering::Acquire) >= ticket
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Finished writers have nothing left; an aborted run must not go on writing.
        self.task.abort();
    }
}

/// One worker's writer.
struct PostgresWriter {
    header: String,
    job: String,
    sink: String,
    worker: i32,
    checkpointed: bool,
    /// Checkpointed with the prepared protocol.
    prepared: bool,
    /// The hash of (job, sink, table) naming prepared transactions.
    target: u64,
    /// Checkpointed: lines of epochs not yet pre-committed.
    pending: BTreeMap<u64, Vec<String>>,
    /// Writes, prepares, write-ahead commits and the finish.
    lane: Lane,
    /// The prepared protocol's commits.
    commits: Option<Lane>,
    /// The epoch being prepared, its ticket and transaction id.
    preparing: Option<(u64, u64, String)>,
    /// The epoch being committed and its ticket (on `commits` when it is there).
    committing: Option<(u64, u64)>,
    /// The ticket of the finishing work.
    finishing: Option<u64>,
}

impl PostgresWriter {
    fn check(&self) -> Result<()> {
        self.lane.check()?;
        self.commits.as_ref().map_or(Ok(()), Lane::check)
    }
    fn stamp(&self, epoch: u64) -> Stamp {
        Stamp { job: self.job.clone(), sink: self.sink.clone(), worker: self.worker, epoch: epoch as i64 }
    }
    fn commit_lane(&mut self) -> &mut Lane {
        self.commits.as_mut().unwrap_or(&mut self.lane)
    }
}

impl SinkWriter for PostgresWriter {
    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()> {
        self.check()?;
        if lines.is_empty() {
            return Ok(());
        }
        if self.checkpointed {
            self.pending.entry(epoch).or_default().extend(lines);
            return Ok(());
        }
        self.lane.submit(Work::Write(None, lines)).map(|_| ())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        self.check()?;
        if let Some((e, ticket, gid)) = &self.preparing {
            if *e == epoch {
                if !self.lane.done(*ticket) {
                    return Ok(Progress::Pending);
                }
                let committed = Committed::Prepared(gid.clone()).encode()?;
                self.preparing = None;
                return Ok(Progress::Ready(Some(committed)));
            }
        }
        let lines = self.pending.remove(&epoch).unwrap_or_default();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        if !self.prepared {
            return Ok(Progress::Ready(Some(Committed::Lines(Batch { header: self.header.clone(), lines }).encode()?)));
        }
        let stamp = self.stamp(epoch);
        let gid = sql::prepared_gid(self.target, stamp.worker, stamp.epoch);
        let ticket = self.lane.submit(Work::Prepare(stamp, gid.clone(), lines))?;
        self.preparing = Some((epoch, ticket, gid));
        Ok(Progress::Pending)
    }
    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<Progress> {
        self.check()?;
        match self.committing {
            Some((e, ticket)) if e == epoch => {
                if self.commit_lane().done(ticket) {
                    self.committing = None;
                    return Ok(Progress::Ready(()));
                }
                Ok(Progress::Pending)
            }
            _ => {
                let stamp = self.stamp(epoch);
                let work = match Committed::decode(committable)? {
                    Committed::Lines(batch) => Work::Write(Some(stamp), batch.lines),
                    Committed::Prepared(gid) => Work::CommitPrepared(stamp, gid),
                };
                let ticket = self.commit_lane().submit(work)?;
                self.committing = Some((epoch, ticket));
                Ok(Progress::Pending)
            }
        }
    }
    fn finish(&mut self) -> Result<Progress> {
        self.check()?;
        let ticket = match self.finishing {
            Some(ticket) => ticket,
            None => {
                let ticket = self.lane.submit(Work::Finish)?;
                self.finishing = Some(ticket);
                ticket
            }
        };
        if self.lane.done(ticket) {
            Ok(Progress::Ready(()))
        } else {
            Ok(Progress::Pending)
        }
    }
    fn abort(&mut self) {
        self.lane.task.abort();
        if let Some(commits) = &self.commits {
            commits.task.abort();
        }
    }
}

/// A connection to the server, made when first needed and again after a failure.
struct Connection {
    server: Arc<Server>,
    client: Option<Client>,
    /// Whether the target table is known to exist (create=true makes it once).
    created: bool,
    /// The target's text columns, looked up once it exists.
    text_columns: Option<Vec<String>>,
    /// The prepared protocol's upsert staging table, and whether it is known to exist.
    stage: Option<(String, bool)>,
}

impl Connection {
    fn new(server: Arc<Server>, stage: Option<String>) -> Self {
        Connection { server, client: None, created: false, text_columns: None, stage: stage.map(|s| (s, false)) }
    }

    /// After a failed attempt: waits with backoff before the next one while the server may come
    /// back within `reconnect_timeout`; an error a new connection cannot cure fails at once.
    async fn failed(&mut self, error: anyhow::Error, what: &str, backoff: &mut Backoff) -> Result<()> {
        self.client = None;
        if !retryable(&error) {
            return Err(error.context(format!("cannot {what} at {}", self.server.endpoint())));
        }
        backoff.wait(error, self.server.endpoint()).await
    }

    /// Writes `lines` in one transaction, recording `stamp` in it when given. Returns whether it
    /// wrote (`false`: the bookkeeping holds the epoch already).
    async fn write(&mut self, shape: &Shape, stamp: Option<&Stamp>, lines: &[String]) -> Result<bool> {
        let mut backoff = Backoff::new(self.server.reconnect_timeout);
        loop {
            match self.try_write(shape, stamp, lines, None).await {
                Ok(wrote) => return Ok(wrote),
                Err(e) => self.failed(e, &format!("write to table {}", shape.table), &mut backoff).await?,
            }
        }
    }

    /// Writes `lines` in one transaction with `stamp`'s bookkeeping row and prepares it as `gid`.
    async fn prepare(&mut self, shape: &Shape, stamp: &Stamp, gid: &str, lines: &[String]) -> Result<()> {
        let mut backoff = Backoff::new(self.server.reconnect_timeout);
        loop {
            match self.try_prepare(shape, stamp, gid, lines).await {
                Ok(()) => return Ok(()),
                Err(e) => self.failed(e, &format!("prepare a transaction on table {}", shape.table), &mut backoff).await?,
            }
        }
    }

    async fn try_prepare(&mut self, shape: &Shape, stamp: &Stamp, gid: &str, lines: &[String]) -> Result<()> {
        // A retry after a lost acknowledgement: the transaction may be prepared already.
        let client = self.client().await?;
        if client.query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid]).await?.is_some() {
            return Ok(());
        }
        self.try_write(shape, Some(stamp), lines, Some(gid)).await.map(|_| ())
    }

    /// Commits the prepared transaction `gid`. One that is gone committed before when the
    /// bookkeeping holds its epoch (the acknowledgement of an earlier COMMIT PREPARED was lost);
    /// otherwise its rows are lost, which fails the job.
    async fn commit_prepared(&mut self, shape: &Shape, stamp: &Stamp, gid: &str) -> Result<()> {
        let mut backoff = Backoff::new(self.server.reconnect_timeout);
        loop {
            match self.try_commit_prepared(shape, stamp, gid).await {
                Ok(()) => return Ok(()),
                Err(e) => self.failed(e, &format!("commit prepared transaction {gid} on table {}", shape.table), &mut backoff).await?,
            }
        }
    }

    async fn try_commit_prepared(&mut self, shape: &Shape, stamp: &Stamp, gid: &str) -> Result<()> {
        let client = self.client().await?;
        match client.batch_execute(&format!("COMMIT PREPARED {}", sql::literal(gid))).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                if recorded(client, &shape.table, stamp).await? {
                    return Ok(());
                }
                Err(anyhow!(Fatal(format!(
                    "prepared transaction {gid} is gone and its epoch is not in {}: it was rolled back outside the job, \
                     and its rows are lost",
                    sql::COMMITS_TABLE
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The end of a run: the writer's staging table goes.
    async fn finish(&mut self) -> Result<()> {
        let Some((stage, _)) = self.stage.clone() else { return Ok(()) };
        let drop = format!("DROP TABLE IF EXISTS {}", sql::quote_ident(&stage));
        let mut backoff = Backoff::new(self.server.reconnect_timeout);
        loop {
            let attempt = match self.client().await {
                Ok(client) => client.batch_execute(&drop).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => break,
                Err(e) => self.failed(e, &format!("drop staging table {stage}"), &mut backoff).await?,
            }
        }
        self.stage = None;
        Ok(())
    }

    /// The connection, made when there is none.
    async fn client(&mut self) -> Result<&Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.server.connect().await?);
        }
        Ok(self.client.as_ref().unwrap_or_else(|| unreachable!("connected above")))
    }

    /// One transaction: the bookkeeping row (when `stamp` is given; nothing else when it is
    /// there already, then `false`), the lines, and either COMMIT or, with `gid`, PREPARE
    /// TRANSACTION.
    async fn try_write(&mut self, shape: &Shape, stamp: Option<&Stamp>, lines: &[String], gid: Option<&str>) -> Result<bool> {
        self.client().await?;
        let Some(client) = self.client.as_ref() else { unreachable!("connected above") };
        if shape.create && !self.created {
            let key = shape.key.as_deref().unwrap_or(&[]);
            let types = sql::column_types(&shape.columns, lines.iter().take(1000));
            create_under_lock(client, &sql::create_table(&shape.table, &shape.columns, &types, key)).await?;
            self.created = true;
        }
        if self.text_columns.is_none() {
            let rows = client.query(sql::TEXT_COLUMNS, &[&sql::quote_ident(&shape.table)]).await?;
            self.text_columns = Some(rows.iter().map(|row| row.get::<_, String>(0)).collect());
        }
        let text_columns = self.text_columns.clone().unwrap_or_default();
        let stage = match (&shape.key, gid, &mut self.stage) {
            (None, _, _) => None,
            (Some(_), Some(_), Some((stage, ready))) => {
                if !*ready {
                    create_under_lock(client, &sql::create_writer_stage(stage, &shape.table, &shape.columns)).await?;
                    *ready = true;
                }
                Some(stage.clone())
            }
            (Some(_), _, _) => Some(sql::STAGE_TABLE.to_string()),
        };
        client.batch_execute("BEGIN").await?;
        if let Some(stamp) = stamp {
            let target = shape.table.as_str();
            let recorded = client
                .execute(&sql::record_commit(), &[&stamp.job, &stamp.sink, &target, &stamp.worker, &stamp.epoch, &(lines.len() as i64)])
                .await?;
            if recorded == 0 {
                // Committed before (the acknowledgement of that COMMIT was lost, or a restore
                // redoes an epoch the crashed run had committed): write nothing.
                client.batch_execute("ROLLBACK").await?;
                return Ok(false);
            }
        }
        if let (Some(stage), None) = (&stage, gid) {
            client.batch_execute(&sql::create_stage(&shape.table, &shape.columns)).await?;
            debug_assert_eq!(stage, sql::STAGE_TABLE);
        }
        let into = stage.clone().unwrap_or_else(|| shape.table.clone());
        let copy = client.copy_in(&sql::copy_in(&into, &shape.columns, &text_columns)).await?;
        let mut copy = std::pin::pin!(copy);
        let mut chunk = Vec::with_capacity(COPY_CHUNK_BYTES + 1024);
        for line in lines {
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
            if chunk.len() >= COPY_CHUNK_BYTES {
                copy.send(bytes::Bytes::from(std::mem::replace(&mut chunk, Vec::with_capacity(COPY_CHUNK_BYTES + 1024)))).await?;
            }
        }
        if !chunk.is_empty() {
            copy.send(bytes::Bytes::from(chunk)).await?;
        }
        copy.as_mut().finish().await?;
        if let (Some(key), Some(stage)) = (&shape.key, &stage) {
            client.execute(&sql::merge_stage(&shape.table, stage, &shape.columns, key), &[]).await?;
            if gid.is_some() {
                client.execute(&format!("DELETE FROM {}", sql::quote_ident(stage)), &[]).await?;
            }
        }
        // Tests crash here: the rows and the bookkeeping row sent, the transaction open.
        paystream_engine::faults::point("postgres:before-commit");
        match gid {
            None => client.batch_execute("COMMIT").await?,
            Some(gid) => {
                client.batch_execute(&format!("PREPARE TRANSACTION {}", sql::literal(gid))).await?;
                // Tests crash here: prepared, not yet in a checkpoint.
                paystream_engine::faults::point("postgres:after-prepare");
            }
        }
        Ok(true)
    }
}
