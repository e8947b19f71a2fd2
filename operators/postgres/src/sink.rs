//! `postgres://USER@HOST:PORT/DB?table=NAME` as a sink: CSV lines copied into a table by every
//! worker in parallel, appended or upserted by a key.
//!
//! **With checkpoints, exactly-once by write-ahead and bookkeeping** (the path for servers with
//! `max_prepared_transactions = 0`, the default): `write` keeps an epoch's lines in memory, the
//! pre-commit returns them as the committable (so they are stored in the checkpoint), and the
//! commit, once the checkpoint's manifest is durable, writes them in ONE transaction that also
//! inserts (job, sink, table, worker, epoch) into `paystream_commits`. That insert comes first
//! and does nothing when the row is there already; the transaction then writes nothing. So a
//! commit redone (after a lost connection whose COMMIT may or may not have landed, or by
//! [`SinkTarget::recover`] for every committable of the restored checkpoint after a crash) never
//! writes an epoch twice, and an epoch is never lost, since the checkpoint holds its lines until
//! a commit succeeded. A fresh run (no restore) first forgets the bookkeeping of its (job, sink,
//! table), since its epochs count from 1 again.
//!
//! **Without checkpoints**, lines are copied as they are written, one transaction per batch;
//! a batch whose COMMIT was cut off is written again after reconnecting (at-least-once).
//!
//! Rows go in with `COPY … FROM STDIN (FORMAT csv)`: the engine's CSV lines pass through
//! unparsed. Upserts copy into a temporary table and merge it with `INSERT … ON CONFLICT (key)
//! DO UPDATE`, the last line of a key in an epoch winning.

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

use crate::client::{Backoff, Server, SinkRuntime};
use crate::sql;

/// How many bytes of lines one COPY message carries.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// The `postgres://` sink connector.
pub struct PostgresSink;

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
        let connect_timeout = options.duration("connect_timeout", Duration::from_secs(10))?;
        let reconnect_timeout = options.duration("reconnect_timeout", Duration::from_secs(60))?;
        options.finish()?;
        let server = Arc::new(Server::parse(&what, &rest, connect_timeout, reconnect_timeout)?);
        let runtime = SinkRuntime::new()?;
        // Fail at once, naming the server, when it does not answer; make the bookkeeping table.
        let check = server.clone();
        runtime
            .wait(async move {
                let client = check.connect().await?;
                create_under_lock(&client, &sql::create_commits_table()).await
            })
            .map_err(|e| anyhow!("{what}: {e:#}"))?;
        Ok(Arc::new(PostgresTarget { server, runtime, table, create, key: upsert.then_some(key) }))
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
}

/// What one transaction writes: the table's shape and the lines.
#[derive(Clone, Debug)]
struct Shape {
    table: String,
    columns: Vec<String>,
    create: bool,
    key: Option<Vec<String>>,
}

/// An epoch's lines of one writer: the committable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Batch {
    /// The CSV header the lines follow.
    header: String,
    lines: Vec<String>,
}

impl Batch {
    fn encode(&self) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).context("cannot encode a postgres batch")
    }
    fn decode(bytes: &[u8]) -> Result<Batch> {
        let (batch, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .context("cannot decode a postgres batch from the checkpoint")?;
        Ok(batch)
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
    /// A fresh run forgets the bookkeeping of earlier runs of the same job, sink and table (its
    /// epochs start from 1 again). A restore writes every epoch of the checkpoint that the
    /// bookkeeping does not hold yet.
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        let server = self.server.clone();
        let (job, sink, table) = (recovery.job.clone(), recovery.sink.clone(), self.table.clone());
        let Some(restored) = recovery.restored else {
            return self.runtime.wait(async move {
                let client = server.connect().await?;
                let forget = format!("DELETE FROM {} WHERE job = $1 AND sink = $2 AND target = $3", sql::COMMITS_TABLE);
                client.execute(&forget, &[&job, &sink, &table]).await.context("cannot clear the sink's bookkeeping")?;
                Ok(())
            });
        };
        let mut committables = recovery.committables.clone();
        committables.sort_by_key(|c| (c.epoch, c.worker));
        let mut work = Vec::with_capacity(committables.len());
        for c in &committables {
            let batch = Batch::decode(&c.data)?;
            let stamp = Stamp { job: job.clone(), sink: sink.clone(), worker: c.worker as i32, epoch: c.epoch as i64 };
            work.push((self.shape(&batch.header)?, stamp, batch.lines));
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
            drop(client);
            let mut writer = Connection::new(server);
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
        let (batches, batches_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let connection = Connection::new(self.server.clone());
        let task = self.runtime.handle().spawn(write_in_order(connection, shape, batches_rx, shared.clone()));
        Ok(Box::new(PostgresWriter {
            header,
            job: context.job.clone(),
            sink: context.sink.clone(),
            worker: context.worker as i32,
            checkpointed: context.checkpointed,
            pending: BTreeMap::new(),
            batches,
            shared,
            submitted: 0,
            committing: None,
            task,
        }))
    }
}

/// What the writing task tells its writer.
#[derive(Default)]
struct Shared {
    /// The number of batches written, in order.
    done: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Writes the writer's batches one after another.
async fn write_in_order(
    mut connection: Connection,
    shape: Shape,
    mut batches: mpsc::UnboundedReceiver<(u64, Option<Stamp>, Vec<String>)>,
    shared: Arc<Shared>,
) {
    while let Some((ticket, stamp, lines)) = batches.recv().await {
        match connection.write(&shape, stamp.as_ref(), &lines).await {
            Ok(_) => shared.done.store(ticket, Ordering::Release),
            Err(e) => {
                *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                return;
            }
        }
    }
}

/// One worker's writer.
struct PostgresWriter {
    header: String,
    job: String,
    sink: String,
    worker: i32,
    checkpointed: bool,
    /// Checkpointed: lines of epochs not yet pre-committed.
    pending: BTreeMap<u64, Vec<String>>,
    batches: mpsc::UnboundedSender<(u64, Option<Stamp>, Vec<String>)>,
    shared: Arc<Shared>,
    /// Batches handed to the task (tickets 1..=submitted).
    submitted: u64,
    /// The epoch being committed and its ticket.
    committing: Option<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl PostgresWriter {
    fn check(&self) -> Result<()> {
        match self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
    fn submit(&mut self, stamp: Option<Stamp>, lines: Vec<String>) -> Result<u64> {
        self.submitted += 1;
        self.batches.send((self.submitted, stamp, lines)).map_err(|_| anyhow!("the postgres writer stopped"))?;
        Ok(self.submitted)
    }
    fn done(&self) -> u64 {
        self.shared.done.load(Ordering::Acquire)
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
        self.submit(None, lines).map(|_| ())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        self.check()?;
        let lines = self.pending.remove(&epoch).unwrap_or_default();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        Ok(Progress::Ready(Some(Batch { header: self.header.clone(), lines }.encode()?)))
    }
    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<Progress> {
        self.check()?;
        match self.committing {
            Some((e, ticket)) if e == epoch => {
                if self.done() >= ticket {
                    self.committing = None;
                    return Ok(Progress::Ready(()));
                }
                Ok(Progress::Pending)
            }
            _ => {
                let batch = Batch::decode(committable)?;
                let stamp = Stamp { job: self.job.clone(), sink: self.sink.clone(), worker: self.worker, epoch: epoch as i64 };
                let ticket = self.submit(Some(stamp), batch.lines)?;
                self.committing = Some((epoch, ticket));
                Ok(Progress::Pending)
            }
        }
    }
    fn finish(&mut self) -> Result<Progress> {
        self.check()?;
        if self.done() >= self.submitted {
            Ok(Progress::Ready(()))
        } else {
            Ok(Progress::Pending)
        }
    }
    fn abort(&mut self) {
        self.task.abort();
    }
}

impl Drop for PostgresWriter {
    fn drop(&mut self) {
        // Finished writers have nothing left; an aborted run must not go on writing.
        self.task.abort();
    }
}

/// Whether a failed write may succeed on a new connection: connection failures and server
/// restarts, yes; an error in the data or the SQL (a value of the wrong type, a missing table),
/// no: it fails the job at once with the server's message.
fn retryable(error: &anyhow::Error) -> bool {
    let Some(e) = error.chain().find_map(|c| c.downcast_ref::<tokio_postgres::Error>()) else {
        return true; // not the server's answer: a connect failure or a timeout
    };
    match e.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            // 08: connection exception, 57P: operator intervention (shutdown), 53: insufficient
            // resources, 40: transaction rollback (serialization, deadlock).
            ["08", "57P", "53", "40"].iter().any(|class| code.starts_with(class))
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
}

impl Connection {
    fn new(server: Arc<Server>) -> Self {
        Connection { server, client: None, created: false, text_columns: None }
    }

    /// Writes `lines` in one transaction, recording `stamp` in it when given, reconnecting with
    /// backoff after a connection failure until `reconnect_timeout`. Returns whether it wrote
    /// (`false`: the bookkeeping holds the epoch already).
    async fn write(&mut self, shape: &Shape, stamp: Option<&Stamp>, lines: &[String]) -> Result<bool> {
        let mut backoff = Backoff::new(self.server.reconnect_timeout);
        loop {
            match self.try_write(shape, stamp, lines).await {
                Ok(wrote) => return Ok(wrote),
                Err(e) => {
                    self.client = None;
                    if !retryable(&e) {
                        return Err(e.context(format!("cannot write to table {} at {}", shape.table, self.server.endpoint())));
                    }
                    backoff.wait(e, self.server.endpoint()).await?;
                }
            }
        }
    }

    async fn try_write(&mut self, shape: &Shape, stamp: Option<&Stamp>, lines: &[String]) -> Result<bool> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.server.connect().await?);
        }
        let Some(client) = self.client.as_mut() else { unreachable!("connected above") };
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
        let transaction = client.transaction().await?;
        if let Some(stamp) = stamp {
            let target = shape.table.as_str();
            let recorded = transaction
                .execute(&sql::record_commit(), &[&stamp.job, &stamp.sink, &target, &stamp.worker, &stamp.epoch, &(lines.len() as i64)])
                .await?;
            if recorded == 0 {
                // Committed before (the acknowledgement of that COMMIT was lost, or a restore
                // redoes an epoch the crashed run had committed): write nothing.
                transaction.rollback().await?;
                return Ok(false);
            }
        }
        let into = match &shape.key {
            None => shape.table.clone(),
            Some(_) => {
                transaction.batch_execute(&sql::create_stage(&shape.table, &shape.columns)).await?;
                sql::STAGE_TABLE.to_string()
            }
        };
        let copy = transaction.copy_in(&sql::copy_in(&into, &shape.columns, &text_columns)).await?;
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
        if let Some(key) = &shape.key {
            transaction.execute(&sql::merge_stage(&shape.table, &shape.columns, key), &[]).await?;
        }
        // Tests crash here: the rows and the bookkeeping row sent, the transaction open.
        paystream_engine::faults::point("postgres:before-commit");
        transaction.commit().await?;
        Ok(true)
    }
}
