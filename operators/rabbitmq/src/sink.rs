//! `rabbitmq://HOST:PORT/QUEUE` as a sink: a stream queue (declared when missing), written by
//! every worker in parallel, with publisher confirms.
//!
//! **With checkpoints, exactly-once by write-ahead**: `write` keeps an epoch's lines in memory,
//! the pre-commit returns them as the committable (so they are stored in the checkpoint), and
//! only the commit, once the checkpoint is complete, publishes them, on the I/O runtime (the
//! commit answers `Pending` until every confirm is in). Each message carries a message id
//! `JOB/SINK/wWORKER/NONCE/eEPOCH/INDEX` (the nonce is the writer's process start, so a later
//! fresh run of the same job never shares ids). Duplicates are prevented where a publish is
//! redone: after a lost connection, and in [`SinkTarget::recover`] after a crash, the publisher
//! first scans the stream's tail (from a minute before the epoch was pre-committed to the end)
//! for the batch's ids and publishes only the missing ones.
//!
//! **Without checkpoints**, lines are published as they are written, confirmed before the run
//! ends; a publish redone after a lost connection is de-duplicated the same way (a crash loses
//! what was not confirmed: at-most-once for a crashed run, nothing to restore).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use paystream_engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter, UriOptions};
use paystream_engine::{Format, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::address::{reconnect_timeout, Address};
use crate::client::{self, Backoff};

/// How far before a batch's pre-commit the scan for its published messages starts: stream
/// chunks are found by the broker's clock (to the second), which may differ from ours.
const SCAN_MARGIN_SECS: u64 = 60;

/// The `rabbitmq://` sink connector.
pub struct RabbitSink;

impl SinkConnector for RabbitSink {
    fn scheme(&self) -> &'static str {
        "rabbitmq"
    }
    fn usage(&self) -> &'static str {
        "rabbitmq://[USER:PASS@]HOST:PORT/QUEUE (a stream queue, declared when missing; ?format=csv|jsonl, default jsonl; \
         reconnect_timeout=60s; exactly-once with checkpoints)"
    }
    fn open(&self, sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let what = format!("sink {sink}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let address = Address::parse(&what, &rest)?;
        let [queue] = address.queues.as_slice() else {
            bail!("{what}: name one queue: a sink writes to one stream queue");
        };
        let queue = queue.clone();
        let format = match options.text("format") {
            Some(name) => Format::from_name(&name).with_context(|| what.clone())?,
            None => Format::JsonLines,
        };
        let reconnect_timeout = reconnect_timeout(&mut options, &what)?;
        options.finish()?;
        client::block_on(async {
            let connection = client::connect(&address).await?;
            let channel = connection.create_channel().await.context("cannot open a channel")?;
            client::declare_stream(&channel, &queue).await?;
            connection.close(200, "".into()).await.ok();
            Ok(())
        })
        .map_err(|e| anyhow!("{what}: {e:#}"))?;
        Ok(Arc::new(RabbitTarget { address: Arc::new(address), queue, format, reconnect_timeout }))
    }
}

/// A stream queue a sink writes.
#[derive(Debug)]
struct RabbitTarget {
    address: Arc<Address>,
    queue: String,
    format: Format,
    reconnect_timeout: Duration,
}

/// An epoch's lines of one writer, with the prefix of their message ids: the committable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Batch {
    /// Message `i` has id `{id_prefix}/{i}`.
    id_prefix: String,
    /// When the batch was made (Unix seconds): its messages were published later.
    made_at_secs: u64,
    lines: Vec<String>,
}

impl Batch {
    fn encode(&self) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).context("cannot encode a rabbitmq batch")
    }
    fn decode(bytes: &[u8]) -> Result<Batch> {
        let (batch, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .context("cannot decode a rabbitmq batch from the checkpoint")?;
        Ok(batch)
    }
    fn id(&self, index: usize) -> String {
        format!("{}/{index}", self.id_prefix)
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SinkTarget for RabbitTarget {
    fn format(&self) -> Format {
        self.format
    }
    fn parallel(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("rabbitmq queue {} at {}", self.queue, self.address.endpoint())
    }
    /// Nothing is published before its checkpoint completes, so a fresh run has nothing to
    /// clear. A restore publishes what the checkpoint's batches still miss in the stream.
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        if recovery.restored.is_none() || recovery.committables.is_empty() {
            return Ok(());
        }
        let mut committables = recovery.committables.clone();
        committables.sort_by_key(|c| (c.epoch, c.worker));
        let batches = committables.iter().map(|c| Batch::decode(&c.data)).collect::<Result<Vec<_>>>()?;
        let mut publisher = Publisher::new(self.address.clone(), self.queue.clone(), self.reconnect_timeout);
        client::block_on(async move {
            for batch in &batches {
                let published = publisher.publish(batch, true).await?;
                tracing::info!(batch = %batch.id_prefix, published, of = batch.lines.len(), "rabbitmq: recovered a batch");
            }
            publisher.close().await;
            Ok(())
        })
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let runtime = paystream_engine::io::handle().ok_or_else(|| anyhow!("no I/O runtime to publish to rabbitmq on"))?;
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let prefix = format!("{}/{}/w{}/{nonce:x}{:x}", context.job, context.sink, context.worker, std::process::id());
        if prefix.len() > 200 {
            bail!("the message ids of job {:?} sink {:?} would be too long for AMQP", context.job, context.sink);
        }
        let (batches, batches_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let publisher = Publisher::new(self.address.clone(), self.queue.clone(), self.reconnect_timeout);
        let task = runtime.spawn(publish_in_order(publisher, batches_rx, shared.clone()));
        Ok(Box::new(RabbitWriter {
            prefix,
            checkpointed: context.checkpointed,
            pending: BTreeMap::new(),
            batches,
            shared,
            submitted: 0,
            unchecked_sequence: 0,
            committing: None,
            task,
        }))
    }
}

/// What the publishing task tells its writer.
#[derive(Default)]
struct Shared {
    /// The number of batches published and confirmed, in order.
    done: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Publishes the writer's batches one after another.
async fn publish_in_order(mut publisher: Publisher, mut batches: mpsc::UnboundedReceiver<(u64, Batch)>, shared: Arc<Shared>) {
    while let Some((ticket, batch)) = batches.recv().await {
        match publisher.publish(&batch, false).await {
            Ok(_) => shared.done.store(ticket, Ordering::Release),
            Err(e) => {
                *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                return;
            }
        }
    }
    publisher.close().await;
}

/// One worker's writer.
struct RabbitWriter {
    /// `JOB/SINK/wWORKER/NONCE`.
    prefix: String,
    checkpointed: bool,
    /// Checkpointed: lines of epochs not yet pre-committed.
    pending: BTreeMap<u64, Vec<String>>,
    batches: mpsc::UnboundedSender<(u64, Batch)>,
    shared: Arc<Shared>,
    /// Batches handed to the task (tickets 1..=submitted).
    submitted: u64,
    unchecked_sequence: u64,
    /// The epoch being committed and its ticket.
    committing: Option<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl RabbitWriter {
    fn check(&self) -> Result<()> {
        match self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
    fn submit(&mut self, batch: Batch) -> Result<u64> {
        self.submitted += 1;
        self.batches.send((self.submitted, batch)).map_err(|_| anyhow!("the rabbitmq publisher stopped"))?;
        Ok(self.submitted)
    }
    fn done(&self) -> u64 {
        self.shared.done.load(Ordering::Acquire)
    }
}

impl SinkWriter for RabbitWriter {
    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()> {
        self.check()?;
        if lines.is_empty() {
            return Ok(());
        }
        if self.checkpointed {
            self.pending.entry(epoch).or_default().extend(lines);
            return Ok(());
        }
        self.unchecked_sequence += 1;
        let batch = Batch { id_prefix: format!("{}/n{}", self.prefix, self.unchecked_sequence), made_at_secs: unix_secs(), lines };
        self.submit(batch).map(|_| ())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        self.check()?;
        let lines = self.pending.remove(&epoch).unwrap_or_default();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        let batch = Batch { id_prefix: format!("{}/e{epoch}", self.prefix), made_at_secs: unix_secs(), lines };
        Ok(Progress::Ready(Some(batch.encode()?)))
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
                let ticket = self.submit(Batch::decode(committable)?)?;
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

impl Drop for RabbitWriter {
    fn drop(&mut self) {
        // Finished writers have nothing left; an aborted run must not go on publishing.
        self.task.abort();
    }
}

/// A connection and confirm-mode channel to one stream queue, made again when lost.
struct Publisher {
    address: Arc<Address>,
    queue: String,
    reconnect_timeout: Duration,
    link: Option<(Arc<Connection>, Channel)>,
}

impl Publisher {
    fn new(address: Arc<Address>, queue: String, reconnect_timeout: Duration) -> Self {
        Publisher { address, queue, reconnect_timeout, link: None }
    }

    async fn connection(&mut self) -> Result<(Arc<Connection>, Channel)> {
        if let Some((c, ch)) = &self.link {
            if c.status().connected() && ch.status().connected() {
                return Ok((c.clone(), ch.clone()));
            }
        }
        self.link = None;
        let connection = Arc::new(client::connect(&self.address).await?);
        let channel = connection.create_channel().await.context("cannot open a channel")?;
        client::declare_stream(&channel, &self.queue).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.context("cannot turn on publisher confirms")?;
        self.link = Some((connection.clone(), channel.clone()));
        Ok((connection, channel))
    }

    async fn close(&mut self) {
        if let Some((c, _)) = self.link.take() {
            c.close(200, "".into()).await.ok();
        }
    }

    /// Publishes `batch` and waits for its confirms, reconnecting with backoff after a failure
    /// until `reconnect_timeout`. Before a retry, and first of all when `redo` (a recovery), it
    /// looks up which of the batch's messages the stream holds and publishes only the others.
    /// Returns how many it published.
    async fn publish(&mut self, batch: &Batch, redo: bool) -> Result<usize> {
        let mut backoff = Backoff::new(self.reconnect_timeout);
        let mut look_first = redo;
        let endpoint = self.address.endpoint();
        loop {
            match self.try_publish(batch, look_first).await {
                Ok(n) => return Ok(n),
                Err(e) => {
                    self.link = None;
                    look_first = true;
                    backoff.wait(e, &endpoint).await?;
                }
            }
        }
    }

    async fn try_publish(&mut self, batch: &Batch, look_first: bool) -> Result<usize> {
        let (connection, channel) = self.connection().await?;
        let present = if look_first {
            let wanted: HashSet<String> = (0..batch.lines.len()).map(|i| batch.id(i)).collect();
            let end = client::stream_end(&connection, &self.queue).await?;
            let since = batch.made_at_secs.saturating_sub(SCAN_MARGIN_SECS);
            client::find_message_ids(&connection, &self.queue, since, end, &wanted).await?
        } else {
            HashSet::new()
        };
        let mut confirms = Vec::with_capacity(batch.lines.len());
        for (i, line) in batch.lines.iter().enumerate() {
            let id = batch.id(i);
            if present.contains(&id) {
                continue;
            }
            let properties = BasicProperties::default().with_message_id(id.into());
            let confirm = channel
                .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), line.as_bytes(), properties)
                .await
                .with_context(|| format!("cannot publish to stream queue {:?}", self.queue))?;
            confirms.push(confirm);
        }
        let published = confirms.len();
        for confirm in confirms {
            match confirm.await.with_context(|| format!("no confirm from stream queue {:?}", self.queue))? {
                Confirmation::Ack(_) | Confirmation::NotRequested => {}
                Confirmation::Nack(_) => bail!("the broker refused a message of batch {}", batch.id_prefix),
            }
        }
        Ok(published)
    }
}
