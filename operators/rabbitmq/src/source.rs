//! `rabbitmq://HOST:PORT/QUEUE` as a source: one split per queue named.
//!
//! **Stream queues** (`x-queue-type=stream`) are replayable: the split's [`Position`] holds, in
//! `offset`, the stream offset of the next message to read, and a restore consumes again from
//! there (`x-stream-offset`), so the source takes part in exactly-once checkpoints. `line` holds
//! the end of a bounded split: 0 when unbounded, else 1 + the offset after the last message to
//! read (fixed when the job first started, so a restore ends at the same place).
//!
//! **Classic queues** are consumed and acknowledged: a delivery is acknowledged only once a
//! completed checkpoint covers it (on read when the run does not checkpoint). After a crash or a
//! lost connection the broker delivers again what was not acknowledged: at-least-once. `offset`
//! counts deliveries read (for metrics and dead letters), `line` is 0.
//!
//! The broker is read on the run's I/O runtime: a task per split consumes with a prefetch
//! (`basic_qos`) into a bounded channel and wakes the worker, whose `read` only drains the
//! channel. A lost connection is retried with exponential backoff; after `reconnect_timeout`
//! the split hands the error to the engine, which fails the job.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use paystream_engine::connector::{Decode, PayloadSource, SourceConnector, SourceWaker, SplitReader, UriOptions};
use paystream_engine::decode::{LineDecoder, DEFAULT_MAX_RECORD_BYTES};
use paystream_engine::source::{Position, ReadStatus};
use paystream_engine::{Format, Result};
use tokio::sync::mpsc;

use crate::address::{reconnect_timeout, Address};
use crate::client::{self, Backoff, QueueKind};

/// The `rabbitmq://` source connector.
pub struct RabbitSource;

/// Where a stream split starts when no checkpoint says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    First,
    Next,
    Offset(u64),
}

impl SourceConnector for RabbitSource {
    fn scheme(&self) -> &'static str {
        "rabbitmq"
    }
    fn usage(&self) -> &'static str {
        "rabbitmq://[USER:PASS@]HOST:PORT/QUEUE[,QUEUE...] (a split per queue; ?format=csv|jsonl, default jsonl; \
         start=first|next|OFFSET; bounded=true reads what the streams held at the start; queue_type=stream|classic, \
         default as declared; prefetch=N, default 2000; reconnect_timeout=60s)"
    }
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>> {
        let what = format!("source {source}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let address = Address::parse(&what, &rest)?;
        let format = match options.text("format") {
            Some(name) => Format::from_name(&name).with_context(|| what.clone())?,
            None => Format::JsonLines,
        };
        let start = match options.text("start").as_deref() {
            None | Some("first") => Start::First,
            Some("next") => Start::Next,
            Some(n) => Start::Offset(n.parse().map_err(|_| anyhow!("{what}: start={n:?}: write first, next or an offset"))?),
        };
        let bounded = options.get("bounded", false)?;
        let forced = match options.text("queue_type").as_deref() {
            None => None,
            Some("stream") => Some(QueueKind::Stream),
            Some("classic") => Some(QueueKind::Classic),
            Some(other) => bail!("{what}: queue_type={other:?}: write stream or classic"),
        };
        let prefetch: u16 = options.get("prefetch", 2000)?;
        let max_record_bytes = options.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)?;
        if prefetch == 0 || max_record_bytes == 0 {
            bail!("{what}: prefetch and max_record_bytes must be at least 1");
        }
        let reconnect_timeout = reconnect_timeout(&mut options, &what)?;
        options.finish()?;
        let queues = client::block_on(probe(&address, forced, start, bounded)).map_err(|e| anyhow!("{what}: {e:#}"))?;
        Ok(Arc::new(RabbitQueues {
            source: source.to_string(),
            address: Arc::new(address),
            format,
            prefetch,
            max_record_bytes,
            reconnect_timeout,
            queues,
        }))
    }
}

/// Checks every queue exists (and is of the kind asked for), and fixes where each split starts
/// and, when bounded, ends.
async fn probe(address: &Address, forced: Option<QueueKind>, start: Start, bounded: bool) -> Result<Vec<QueueSplit>> {
    let connection = client::connect(address).await?;
    let mut splits = Vec::new();
    for queue in &address.queues {
        let kind = match client::queue_kind(&connection, queue).await? {
            None => bail!("queue {queue:?} does not exist on rabbitmq at {}", address.endpoint()),
            Some(kind) => kind,
        };
        match (forced, kind) {
            (Some(QueueKind::Stream), QueueKind::Classic) => bail!("queue {queue:?} is not a stream queue (queue_type=stream)"),
            (Some(QueueKind::Classic), QueueKind::Stream) => {
                bail!("queue {queue:?} is a stream queue; drop queue_type=classic to read it as one")
            }
            _ => {}
        }
        let split = match kind {
            QueueKind::Classic if bounded => bail!("queue {queue:?} is a classic queue; bounded=true needs a stream queue"),
            QueueKind::Classic if start != Start::First => {
                bail!("queue {queue:?} is a classic queue: it has no offsets, so start= does not apply")
            }
            QueueKind::Classic => QueueSplit { queue: queue.clone(), kind, start: 0, end: None },
            QueueKind::Stream => {
                let end = if bounded || start == Start::Next { Some(client::stream_end(&connection, queue).await?) } else { None };
                let first = match start {
                    Start::First => 0,
                    Start::Next => end.unwrap_or(0),
                    Start::Offset(n) => n,
                };
                QueueSplit { queue: queue.clone(), kind, start: first, end: end.filter(|_| bounded) }
            }
        };
        splits.push(split);
    }
    connection.close(200, "".into()).await.ok();
    Ok(splits)
}

/// The queues of a source.
#[derive(Debug)]
struct RabbitQueues {
    source: String,
    address: Arc<Address>,
    format: Format,
    prefetch: u16,
    max_record_bytes: usize,
    reconnect_timeout: Duration,
    queues: Vec<QueueSplit>,
}

/// One queue: where it starts and, when bounded, the offset it ends before.
#[derive(Clone, Debug)]
struct QueueSplit {
    queue: String,
    kind: QueueKind,
    start: u64,
    end: Option<u64>,
}

impl PayloadSource for RabbitQueues {
    fn splits(&self) -> Result<u64> {
        Ok(self.queues.len() as u64)
    }
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>> {
        let q = self.queues.get(split as usize).ok_or_else(|| anyhow!("source {}: no queue {split}", self.source))?;
        let origin = match q.kind {
            QueueKind::Stream => format!("rabbitmq queue {} offset", q.queue),
            QueueKind::Classic => format!("rabbitmq queue {} delivery", q.queue),
        };
        Ok(Box::new(QueueReader {
            source: self.source.clone(),
            address: self.address.clone(),
            split: q.clone(),
            prefetch: self.prefetch,
            reconnect_timeout: self.reconnect_timeout,
            lines: LineDecoder::new(&self.source, origin, self.format).with_max_record_bytes(self.max_record_bytes),
            next: q.start,
            waker: None,
            checkpointed: false,
            link: None,
            error: None,
            failed: false,
            last_delivery: None,
            at_checkpoint: BTreeMap::new(),
        }))
    }
}

/// What a split's task hands its reader.
enum Event {
    /// A message: its stream offset (0 from a classic queue), the connection it came on and its
    /// delivery tag there.
    Message { offset: u64, generation: u64, tag: u64, payload: Vec<u8> },
    /// The broker stayed away longer than `reconnect_timeout`.
    Failed(anyhow::Error),
}

/// The reader's end of its task.
struct TaskLink {
    events: mpsc::Receiver<Event>,
    /// (connection generation, delivery tag): acknowledge up to it (classic queues).
    acks: mpsc::UnboundedSender<(u64, u64)>,
    /// Set by the reader when it found the channel empty: the task then wakes it.
    sleeping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Reads one queue on a worker.
struct QueueReader {
    source: String,
    address: Arc<Address>,
    split: QueueSplit,
    prefetch: u16,
    reconnect_timeout: Duration,
    lines: LineDecoder,
    /// Streams: the offset of the next message. Classic queues: deliveries read so far.
    next: u64,
    waker: Option<SourceWaker>,
    checkpointed: bool,
    link: Option<TaskLink>,
    error: Option<anyhow::Error>,
    failed: bool,
    /// Classic queues: the last delivery read (connection generation, tag).
    last_delivery: Option<(u64, u64)>,
    /// Classic queues: the last delivery read when each checkpoint's position was taken.
    at_checkpoint: BTreeMap<u64, (u64, u64)>,
}

impl QueueReader {
    fn ended(&self) -> bool {
        self.split.end.is_some_and(|end| self.next >= end)
    }

    /// Starts the split's task on the run's I/O runtime, from where the split is now.
    fn start(&mut self) -> Result<()> {
        let runtime = paystream_engine::io::handle().ok_or_else(|| anyhow!("no I/O runtime to read rabbitmq on"))?;
        let (events_tx, events) = mpsc::channel(usize::from(self.prefetch).max(16));
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let sleeping = Arc::new(AtomicBool::new(false));
        let consumer = Consumer {
            address: self.address.clone(),
            queue: self.split.queue.clone(),
            kind: self.split.kind,
            prefetch: self.prefetch,
            end: self.split.end,
            next: self.next,
            reconnect_timeout: self.reconnect_timeout,
            events: events_tx,
            acks: acks_rx,
            sleeping: sleeping.clone(),
            waker: self.waker.clone(),
        };
        let task = runtime.spawn(consumer.run());
        self.link = Some(TaskLink { events, acks, sleeping, task });
        Ok(())
    }

    fn read_messages(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        if self.ended() {
            return ReadStatus::Done;
        }
        if self.failed {
            return ReadStatus::Idle;
        }
        if self.link.is_none() {
            if let Err(e) = self.start() {
                self.fail(e);
                return ReadStatus::Idle;
            }
        }
        let mut read = 0usize;
        let mut to_ack = None;
        let mut failure = None;
        if let Some(link) = self.link.as_mut() {
            while read < max {
                match link.events.try_recv() {
                    Ok(Event::Message { offset, generation, tag, payload }) => {
                        match self.split.kind {
                            QueueKind::Stream => {
                                if offset < self.next {
                                    continue;
                                }
                                decode.message(&mut self.lines, &payload, offset);
                                self.next = offset + 1;
                            }
                            QueueKind::Classic => {
                                decode.message(&mut self.lines, &payload, self.next);
                                self.next += 1;
                                self.last_delivery = Some((generation, tag));
                                to_ack = Some((generation, tag));
                            }
                        }
                        read += 1;
                        if self.split.end.is_some_and(|end| self.next >= end) {
                            break;
                        }
                    }
                    Ok(Event::Failed(e)) => {
                        failure = Some(e);
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        link.sleeping.store(true, Ordering::SeqCst);
                        // A message sent before the flag was set wakes no one: look once more.
                        if !link.events.is_empty() {
                            continue;
                        }
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        failure = Some(anyhow!("its reader stopped"));
                        break;
                    }
                }
            }
            if let (false, Some(delivery)) = (self.checkpointed, to_ack) {
                link.acks.send(delivery).ok();
            }
        }
        if self.ended() {
            return ReadStatus::Done;
        }
        if let Some(e) = failure {
            self.fail(e);
        }
        if read > 0 {
            ReadStatus::More
        } else {
            ReadStatus::Idle
        }
    }

    fn fail(&mut self, error: anyhow::Error) {
        self.error = Some(error.context(format!("queue {}", self.split.queue)));
        self.failed = true;
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.task.abort();
        }
    }
}

impl SplitReader for QueueReader {
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        let status = self.read_messages(max, decode);
        match self.error.take() {
            // The engine fails the job with it (exit 1).
            Some(e) => ReadStatus::Failed(format!("{e:#}")),
            None => status,
        }
    }
    fn position(&self) -> Position {
        Position { offset: self.next, line: self.split.end.map_or(0, |end| end + 1) }
    }
    /// The checkpoint decides where the split resumes and where it ends, whatever the URI's
    /// `start` and `bounded` say now.
    fn seek(&mut self, position: &Position) -> Result<()> {
        if self.link.is_some() {
            bail!("source {}: queue {} cannot seek once reading", self.source, self.split.queue);
        }
        self.next = position.offset;
        if self.split.kind == QueueKind::Stream {
            self.split.end = position.line.checked_sub(1);
        }
        Ok(())
    }
    fn set_waker(&mut self, waker: SourceWaker) -> bool {
        self.waker = Some(waker);
        true
    }
    fn set_checkpointed(&mut self, checkpointed: bool) {
        self.checkpointed = checkpointed;
    }
    fn on_checkpoint(&mut self, epoch: u64) {
        if let Some(delivery) = self.last_delivery {
            self.at_checkpoint.insert(epoch, delivery);
        }
    }
    fn on_checkpoint_complete(&mut self, epoch: u64) {
        let later = self.at_checkpoint.split_off(&(epoch + 1));
        let covered = std::mem::replace(&mut self.at_checkpoint, later);
        if let (Some((_, delivery)), Some(link)) = (covered.last_key_value(), self.link.as_ref()) {
            link.acks.send(*delivery).ok();
        }
    }
    fn backlog(&self) -> Option<u64> {
        self.split.end.map(|end| end.saturating_sub(self.next))
    }
}

/// A split's task: consumes one queue, reconnecting as needed.
struct Consumer {
    address: Arc<Address>,
    queue: String,
    kind: QueueKind,
    prefetch: u16,
    end: Option<u64>,
    /// Streams: the offset of the next message to hand over.
    next: u64,
    reconnect_timeout: Duration,
    events: mpsc::Sender<Event>,
    acks: mpsc::UnboundedReceiver<(u64, u64)>,
    sleeping: Arc<AtomicBool>,
    waker: Option<SourceWaker>,
}

/// Why a consuming session ended without an error.
enum SessionEnd {
    /// The reader is gone, or a bounded stream was read to its end.
    Finished,
}

impl Consumer {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.reconnect_timeout);
        let endpoint = self.address.endpoint();
        let mut generation = 0u64;
        loop {
            generation += 1;
            match self.session(generation, &mut backoff).await {
                Ok(SessionEnd::Finished) => return,
                Err(e) => {
                    if let Err(e) = backoff.wait(e, &endpoint).await {
                        self.events.send(Event::Failed(e)).await.ok();
                        self.wake();
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

    /// One connection's worth of consuming.
    async fn session(&mut self, generation: u64, backoff: &mut Backoff) -> Result<SessionEnd> {
        if self.end.is_some_and(|end| self.next >= end) {
            return Ok(SessionEnd::Finished);
        }
        let connection = client::connect(&self.address).await?;
        let (channel, mut consumer) = match self.kind {
            QueueKind::Stream => {
                let start = AMQPValue::LongLongInt(i64::try_from(self.next).unwrap_or(i64::MAX));
                client::consume_stream(&connection, &self.queue, start, self.prefetch).await?
            }
            QueueKind::Classic => {
                let channel = connection.create_channel().await.context("cannot open a channel")?;
                channel.basic_qos(self.prefetch, BasicQosOptions::default()).await.context("cannot set the prefetch")?;
                let consumer = channel
                    .basic_consume(self.queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                    .await
                    .with_context(|| format!("cannot consume queue {:?}", self.queue))?;
                (channel, consumer)
            }
        };
        backoff.reset();
        tracing::debug!(queue = %self.queue, generation, next = self.next, "rabbitmq: consuming");
        let mut unacked = 0u32;
        loop {
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(delivery) = delivery else {
                        bail!("the broker ended the consumer of queue {:?}", self.queue);
                    };
                    let delivery = delivery.with_context(|| format!("lost the consumer of queue {:?}", self.queue))?;
                    let tag = delivery.delivery_tag;
                    let offset = match self.kind {
                        QueueKind::Classic => 0,
                        QueueKind::Stream => {
                            let Some(offset) = client::stream_offset(&delivery.properties) else {
                                bail!("a delivery from stream queue {:?} has no x-stream-offset", self.queue);
                            };
                            // A consumer starts at the chunk holding `next`: skip what precedes it.
                            if offset < self.next {
                                delivery.ack(BasicAckOptions::default()).await.context("cannot acknowledge")?;
                                continue;
                            }
                            if self.end.is_some_and(|end| offset >= end) {
                                return Ok(SessionEnd::Finished);
                            }
                            offset
                        }
                    };
                    let event = Event::Message { offset, generation, tag, payload: delivery.data };
                    if self.events.send(event).await.is_err() {
                        return Ok(SessionEnd::Finished);
                    }
                    self.wake();
                    if self.kind == QueueKind::Stream {
                        self.next = offset + 1;
                        // Streams: the acknowledgement only returns credit to the consumer, so one
                        // (`multiple`) per quarter of the prefetch: one per delivery cost 35 µs
                        // of CPU per event (BENCHMARKS.md, "Broker sources").
                        unacked += 1;
                        if unacked >= (u32::from(self.prefetch) / 4).max(1) {
                            channel
                                .basic_ack(tag, BasicAckOptions { multiple: true })
                                .await
                                .context("cannot acknowledge")?;
                            unacked = 0;
                        }
                        if self.end.is_some_and(|end| self.next >= end) {
                            return Ok(SessionEnd::Finished);
                        }
                    }
                }
                ack = self.acks.recv() => {
                    let Some((from, tag)) = ack else { return Ok(SessionEnd::Finished) };
                    // Tags of an earlier connection are void: the broker delivers those again.
                    if from == generation {
                        channel.basic_ack(tag, BasicAckOptions { multiple: true }).await.context("cannot acknowledge")?;
                    }
                }
            }
        }
    }
}
