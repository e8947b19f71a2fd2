//! `nats://HOST:PORT/STREAM?subject=SUBJECT` as a sink: publishes to a JetStream stream (created
//! when missing, bound to the subject), written by every worker in parallel, each message
//! acknowledged by the server (`PubAck`).
//!
//! **With checkpoints, exactly-once by write-ahead and server-side de-duplication**: `write`
//! keeps an epoch's lines in memory, the pre-commit returns them as the committable (so they are
//! stored in the checkpoint), and only the commit, once the checkpoint is complete, publishes
//! them, on the I/O runtime (the commit answers `Pending` until every acknowledgement is in).
//! Each message carries the header `Nats-Msg-Id: JOB/SINK/wWORKER/NONCE/eEPOCH/INDEX` (the nonce
//! is the writer's process start, so a later fresh run of the same job never shares ids; the id
//! is part of the committable, so a replay reuses it). A publish redone after a lost connection,
//! or by [`SinkTarget::recover`] after a crash, is dropped by the server as a duplicate when the
//! first one landed **within the stream's duplicate window** (`duplicate_window`, 2 minutes by
//! JetStream's default; this sink creates streams with 1 hour unless told otherwise). That window
//! is the guarantee's limit: a job restored from a checkpoint whose batch was first published
//! longer ago than the window may publish part of that batch twice.
//!
//! **Without checkpoints**, lines are published as they are written and acknowledged before the
//! run ends: at-least-once (a crashed run loses nothing acknowledged, has nothing to restore,
//! and a run started again publishes everything again under new ids).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use paystream_engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter, UriOptions};
use paystream_engine::{Format, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::address::{check_subject, subject_matches, timeouts, Address};
use crate::client::{self, Backoff};

/// The duplicate window of streams the sink creates, by default.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);

/// How many publishes may await their acknowledgement at once.
const IN_FLIGHT: usize = 4096;

/// The `nats://` sink connector.
pub struct NatsSink;

impl SinkConnector for NatsSink {
    fn scheme(&self) -> &'static str {
        "nats"
    }
    fn usage(&self) -> &'static str {
        "nats://HOST:PORT/STREAM (a JetStream stream, created when missing; ?subject=SUBJECT, default the stream's name; \
         format=csv|jsonl, default jsonl; duplicate_window=1h for a stream it creates; connect_timeout=10s; \
         reconnect_timeout=60s; exactly-once with checkpoints within the stream's duplicate window)"
    }
    fn open(&self, sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let what = format!("sink {sink}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let address = Address::parse(&what, &rest)?;
        let subject = options.text("subject").unwrap_or_else(|| address.stream.clone());
        check_subject(&what, &subject, false)?;
        let format = match options.text("format") {
            Some(name) => Format::from_name(&name).with_context(|| what.clone())?,
            None => Format::JsonLines,
        };
        let duplicate_window = match options.text("duplicate_window") {
            None => DEFAULT_DUPLICATE_WINDOW,
            Some(text) => {
                humantime::parse_duration(&text).map_err(|e| anyhow!("{what}: duplicate_window={text:?}: {e} (write 10m or 1h)"))?
            }
        };
        let (connect_timeout, reconnect_timeout) = timeouts(&mut options, &what)?;
        options.finish()?;
        let window =
            client::block_on(ensure_stream(&address, &subject, duplicate_window, connect_timeout)).map_err(|e| anyhow!("{what}: {e:#}"))?;
        tracing::info!(stream = %address.stream, duplicate_window_s = window.as_secs(), "nats: sink stream ready");
        Ok(Arc::new(NatsTarget { address: Arc::new(address), subject, format, connect_timeout, reconnect_timeout, window }))
    }
}

/// Creates the stream when missing (bound to `subject`, with `duplicate_window`), or checks an
/// existing one takes `subject`. Returns the stream's duplicate window.
async fn ensure_stream(address: &Address, subject: &str, duplicate_window: Duration, connect_timeout: Duration) -> Result<Duration> {
    let context = client::connect(address, connect_timeout).await?;
    let name = &address.stream;
    if let Some(mut existing) = client::find_stream(&context, name).await? {
        let info = existing.info().await.with_context(|| format!("cannot read stream {name:?}"))?;
        if !info.config.subjects.iter().any(|pattern| subject_matches(pattern, subject)) {
            bail!(
                "stream {name:?} does not take subject {subject:?} (its subjects: {:?}); name one of them with subject=",
                info.config.subjects
            );
        }
        return Ok(info.config.duplicate_window);
    }
    let config = stream::Config { name: name.clone(), subjects: vec![subject.to_string()], duplicate_window, ..Default::default() };
    match context.create_stream(config).await {
        Ok(mut created) => Ok(created.info().await.map(|i| i.config.duplicate_window).unwrap_or(duplicate_window)),
        // Another worker or process created it meanwhile.
        Err(e) => match client::find_stream(&context, name).await? {
            Some(mut s) => Ok(s.info().await.map(|i| i.config.duplicate_window).unwrap_or(duplicate_window)),
            None => Err(anyhow!("cannot create stream {name:?} for subject {subject:?}: {e}")),
        },
    }
}

/// A stream a sink writes.
#[derive(Debug)]
struct NatsTarget {
    address: Arc<Address>,
    subject: String,
    format: Format,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
    /// The stream's duplicate window when the sink was opened.
    window: Duration,
}

/// An epoch's lines of one writer, with the prefix of their message ids: the committable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Batch {
    /// Message `i` has id `{id_prefix}/{i}`.
    id_prefix: String,
    lines: Vec<String>,
}

impl Batch {
    fn encode(&self) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).context("cannot encode a nats batch")
    }
    fn decode(bytes: &[u8]) -> Result<Batch> {
        let (batch, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .context("cannot decode a nats batch from the checkpoint")?;
        Ok(batch)
    }
    fn id(&self, index: usize) -> String {
        format!("{}/{index}", self.id_prefix)
    }
}

impl SinkTarget for NatsTarget {
    fn format(&self) -> Format {
        self.format
    }
    fn parallel(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("nats stream {} subject {} at {}", self.address.stream, self.subject, self.address.endpoint())
    }
    /// Nothing is published before its checkpoint completes, so a fresh run has nothing to
    /// clear. A restore publishes the checkpoint's batches again under their ids: what had
    /// landed within the duplicate window is dropped by the server.
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        if recovery.restored.is_none() || recovery.committables.is_empty() {
            return Ok(());
        }
        let mut committables = recovery.committables.clone();
        committables.sort_by_key(|c| (c.epoch, c.worker));
        let batches = committables.iter().map(|c| Batch::decode(&c.data)).collect::<Result<Vec<_>>>()?;
        let mut publisher = self.publisher();
        client::block_on(async move {
            for batch in &batches {
                let (published, duplicates) = publisher.publish(batch).await?;
                tracing::info!(batch = %batch.id_prefix, published, duplicates, window_s = publisher.window.as_secs(), "nats: recovered a batch");
            }
            Ok(())
        })
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let runtime = paystream_engine::io::handle().ok_or_else(|| anyhow!("no I/O runtime to publish to nats on"))?;
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let prefix = format!("{}/{}/w{}/{nonce:x}{:x}", context.job, context.sink, context.worker, std::process::id());
        let (batches, batches_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let task = runtime.spawn(publish_in_order(self.publisher(), batches_rx, shared.clone()));
        Ok(Box::new(NatsWriter {
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

impl NatsTarget {
    fn publisher(&self) -> Publisher {
        Publisher {
            address: self.address.clone(),
            subject: self.subject.clone(),
            connect_timeout: self.connect_timeout,
            reconnect_timeout: self.reconnect_timeout,
            window: self.window,
            context: None,
        }
    }
}

/// What the publishing task tells its writer.
#[derive(Default)]
struct Shared {
    /// The number of batches published and acknowledged, in order.
    done: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Publishes the writer's batches one after another.
async fn publish_in_order(mut publisher: Publisher, mut batches: mpsc::UnboundedReceiver<(u64, Batch)>, shared: Arc<Shared>) {
    while let Some((ticket, batch)) = batches.recv().await {
        match publisher.publish(&batch).await {
            Ok(_) => shared.done.store(ticket, Ordering::Release),
            Err(e) => {
                *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                return;
            }
        }
    }
}

/// One worker's writer.
struct NatsWriter {
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

impl NatsWriter {
    fn check(&self) -> Result<()> {
        match self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
    fn submit(&mut self, batch: Batch) -> Result<u64> {
        self.submitted += 1;
        self.batches.send((self.submitted, batch)).map_err(|_| anyhow!("the nats publisher stopped"))?;
        Ok(self.submitted)
    }
    fn done(&self) -> u64 {
        self.shared.done.load(Ordering::Acquire)
    }
}

impl SinkWriter for NatsWriter {
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
        let batch = Batch { id_prefix: format!("{}/n{}", self.prefix, self.unchecked_sequence), lines };
        self.submit(batch).map(|_| ())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        self.check()?;
        let lines = self.pending.remove(&epoch).unwrap_or_default();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        let batch = Batch { id_prefix: format!("{}/e{epoch}", self.prefix), lines };
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

impl Drop for NatsWriter {
    fn drop(&mut self) {
        // Finished writers have nothing left; an aborted run must not go on publishing.
        self.task.abort();
    }
}

/// A JetStream connection to one stream's subject, made again when lost.
struct Publisher {
    address: Arc<Address>,
    subject: String,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
    window: Duration,
    context: Option<jetstream::Context>,
}

impl Publisher {
    async fn context(&mut self) -> Result<jetstream::Context> {
        if let Some(c) = &self.context {
            if client::connected(c) {
                return Ok(c.clone());
            }
        }
        self.context = None;
        let context = client::connect(&self.address, self.connect_timeout).await?;
        self.context = Some(context.clone());
        Ok(context)
    }

    /// Publishes `batch` and waits for its acknowledgements, reconnecting with backoff after a
    /// failure until `reconnect_timeout`; a retry publishes the whole batch again under the same
    /// ids (the server drops what it holds already). Returns (stored, dropped as duplicates).
    async fn publish(&mut self, batch: &Batch) -> Result<(usize, usize)> {
        let mut backoff = Backoff::new(self.reconnect_timeout);
        let endpoint = self.address.endpoint();
        loop {
            match self.try_publish(batch).await {
                Ok(n) => return Ok(n),
                Err(e) => {
                    self.context = None;
                    backoff.wait(e, &endpoint).await?;
                }
            }
        }
    }

    async fn try_publish(&mut self, batch: &Batch) -> Result<(usize, usize)> {
        let context = self.context().await?;
        let (mut stored, mut duplicates) = (0, 0);
        let mut acks = std::collections::VecDeque::with_capacity(IN_FLIGHT.min(batch.lines.len()));
        let stream = &self.address.stream;
        for (i, line) in batch.lines.iter().enumerate() {
            let publish = PublishMessage::build().payload(line.clone().into_bytes().into()).message_id(batch.id(i));
            let ack = context
                .send_publish(self.subject.clone(), publish)
                .await
                .with_context(|| format!("cannot publish to stream {stream:?}"))?;
            acks.push_back(ack);
            if acks.len() >= IN_FLIGHT {
                if let Some(ack) = acks.pop_front() {
                    tally(ack.await, stream, &mut stored, &mut duplicates)?;
                }
            }
        }
        while let Some(ack) = acks.pop_front() {
            tally(ack.await, stream, &mut stored, &mut duplicates)?;
        }
        Ok((stored, duplicates))
    }
}

fn tally(
    ack: std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    stream: &str,
    stored: &mut usize,
    duplicates: &mut usize,
) -> Result<()> {
    let ack = ack.map_err(|e| anyhow!("no acknowledgement from stream {stream:?}: {e}"))?;
    if ack.duplicate {
        *duplicates += 1;
    } else {
        *stored += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_engine::connector::Committable;

    /// The server the tests use; without it a loud SKIP, or a failure under `CI=true`.
    fn server() -> Option<Address> {
        if crate::admin::server_answers("127.0.0.1:4222") {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() % 1_000_000_000);
            return Some(Address { host: "127.0.0.1".into(), port: 4222, stream: format!("PSUNIT_{}_{nanos}", std::process::id()) });
        }
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "no NATS server on 127.0.0.1:4222 under CI=true");
        eprintln!("\n*** SKIPPED: no NATS server answers on 127.0.0.1:4222 ***\n");
        None
    }

    /// The mechanism the exactly-once guarantee rests on: a restore that publishes a batch the
    /// crashed run had already published stores nothing twice.
    #[test]
    fn a_batch_published_again_by_a_restore_is_stored_once() {
        let Some(address) = server() else { return };
        let uri = format!("nats://{}/{}", address.endpoint(), address.stream);
        let target = NatsSink.open("out", &uri).expect("open the sink");
        let batch = Batch { id_prefix: "job/out/w0/run/e3".into(), lines: (0..50).map(|i| format!("line {i}")).collect() };
        let mut publisher = Publisher {
            address: Arc::new(address.clone()),
            subject: address.stream.clone(),
            connect_timeout: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(5),
            window: DEFAULT_DUPLICATE_WINDOW,
            context: None,
        };
        let first = client::block_on(async { publisher.publish(&Batch { lines: batch.lines[..20].to_vec(), ..batch.clone() }).await });
        assert_eq!(first.expect("publish"), (20, 0), "the crashed run published the first 20");
        let recovery = Recovery {
            job: "job".into(),
            sink: "out".into(),
            restored: Some(3),
            committables: vec![Committable { worker: 0, epoch: 3, data: batch.encode().expect("encode") }],
            workers: 1,
        };
        target.recover(&recovery).expect("recover");
        target.recover(&recovery).expect("recover twice");
        let stored = crate::admin::read_stream(&uri).expect("read");
        crate::admin::delete_stream(&uri).ok();
        let lines: Vec<String> = stored.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap_or_default()).collect();
        assert_eq!(lines, batch.lines, "each line once, in order");
        let ids: Vec<String> = stored.iter().filter_map(|m| m.message_id.clone()).collect();
        assert_eq!(ids, (0..50).map(|i| batch.id(i)).collect::<Vec<_>>());
    }
}
