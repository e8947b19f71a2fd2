//! `nats://HOST:PORT/STREAM` as a source: one split per stream (a stream is one ordered log).
//!
//! The split's [`Position`] holds, in `offset`, the stream sequence of the next message to read
//! (sequences start at 1), so the source takes part in exactly-once checkpoints: a restore reads
//! again from there. `line` holds the end of a bounded split: 0 when unbounded, else 1 + the
//! sequence after the stream's last message when the job first started (so a restore ends at
//! the same place).
//!
//! The server is read on the run's I/O runtime: the split's task makes an ephemeral pull
//! consumer (no acknowledgements, starting at the split's sequence, filtered by `subject`) and
//! fetches batches into a bounded channel, waking the worker, whose `read` only drains the
//! channel. A lost connection (or consumer) is made again from the next sequence with
//! exponential backoff; after `reconnect_timeout` the split hands the error to the engine, which
//! fails the job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_lite::StreamExt;
use paystream_engine::connector::{Decode, PayloadSource, SourceConnector, SourceWaker, SplitReader, UriOptions};
use paystream_engine::decode::{LineDecoder, DEFAULT_MAX_RECORD_BYTES};
use paystream_engine::source::{Position, ReadStatus};
use paystream_engine::{Format, Result};
use tokio::sync::mpsc;

use crate::address::{check_subject, timeouts, Address};
use crate::client::{self, Backoff};

/// How long one fetch waits on the server for messages.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// The `nats://` source connector.
pub struct NatsSource;

/// Where a split starts when no checkpoint says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    First,
    New,
    Sequence(u64),
}

impl SourceConnector for NatsSource {
    fn scheme(&self) -> &'static str {
        "nats"
    }
    fn usage(&self) -> &'static str {
        "nats://HOST:PORT/STREAM (a JetStream stream, one split; ?subject=FILTER, default all the stream's subjects; \
         format=csv|jsonl, default jsonl; start=first|new|SEQ; bounded=true reads what the stream held at the start; \
         batch=N, default 1000; connect_timeout=10s; reconnect_timeout=60s)"
    }
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>> {
        let what = format!("source {source}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let address = Address::parse(&what, &rest)?;
        let subject = options.text("subject");
        if let Some(s) = &subject {
            check_subject(&what, s, true)?;
        }
        let format = match options.text("format") {
            Some(name) => Format::from_name(&name).with_context(|| what.clone())?,
            None => Format::JsonLines,
        };
        let start = match options.text("start").as_deref() {
            None | Some("first") => Start::First,
            Some("new") => Start::New,
            Some(n) => match n.parse::<u64>() {
                Ok(seq) if seq >= 1 => Start::Sequence(seq),
                _ => bail!("{what}: start={n:?}: write first, new or a stream sequence (from 1)"),
            },
        };
        let bounded = options.get("bounded", false)?;
        let batch: usize = options.get("batch", 1000)?;
        let max_record_bytes = options.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)?;
        if batch == 0 || max_record_bytes == 0 {
            bail!("{what}: batch and max_record_bytes must be at least 1");
        }
        let (connect_timeout, reconnect_timeout) = timeouts(&mut options, &what)?;
        options.finish()?;
        let (first, end) = client::block_on(probe(&address, connect_timeout, start, bounded)).map_err(|e| anyhow!("{what}: {e:#}"))?;
        Ok(Arc::new(NatsStream {
            source: source.to_string(),
            address: Arc::new(address),
            subject,
            format,
            batch,
            max_record_bytes,
            connect_timeout,
            reconnect_timeout,
            first,
            end,
        }))
    }
}

/// Checks the stream exists and fixes where the split starts and, when bounded, ends (the
/// sequence after the last message it held).
async fn probe(address: &Address, connect_timeout: Duration, start: Start, bounded: bool) -> Result<(u64, Option<u64>)> {
    let context = client::connect(address, connect_timeout).await?;
    let Some(mut stream) = client::find_stream(&context, &address.stream).await? else {
        bail!("stream {:?} does not exist on nats at {}", address.stream, address.endpoint());
    };
    let (_, last) = client::stream_bounds(&mut stream).await?;
    let first = match start {
        Start::First => 1,
        Start::New => last + 1,
        Start::Sequence(n) => n,
    };
    Ok((first, bounded.then_some(last + 1)))
}

/// A stream a source reads.
#[derive(Debug)]
struct NatsStream {
    source: String,
    address: Arc<Address>,
    subject: Option<String>,
    format: Format,
    batch: usize,
    max_record_bytes: usize,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
    first: u64,
    end: Option<u64>,
}

impl PayloadSource for NatsStream {
    fn splits(&self) -> Result<u64> {
        Ok(1)
    }
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>> {
        if split != 0 {
            bail!("source {}: no split {split} (a nats stream is one split)", self.source);
        }
        let origin = format!("nats stream {} sequence", self.address.stream);
        Ok(Box::new(StreamReader {
            source: self.source.clone(),
            address: self.address.clone(),
            subject: self.subject.clone(),
            batch: self.batch,
            connect_timeout: self.connect_timeout,
            reconnect_timeout: self.reconnect_timeout,
            lines: LineDecoder::new(&self.source, origin, self.format).with_max_record_bytes(self.max_record_bytes),
            next: self.first,
            end: self.end,
            waker: None,
            link: None,
            error: None,
            failed: false,
        }))
    }
}

/// What a split's task hands its reader.
enum Event {
    /// A message and its stream sequence.
    Message { sequence: u64, payload: Vec<u8> },
    /// A bounded split holds nothing more to read (its filter matches no later message before
    /// its end).
    End,
    /// The server stayed away longer than `reconnect_timeout`.
    Failed(anyhow::Error),
}

/// The reader's end of its task.
struct TaskLink {
    events: mpsc::Receiver<Event>,
    /// Set by the reader when it found the channel empty: the task then wakes it.
    sleeping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Reads one stream on a worker.
struct StreamReader {
    source: String,
    address: Arc<Address>,
    subject: Option<String>,
    batch: usize,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
    lines: LineDecoder,
    /// The stream sequence of the next message.
    next: u64,
    /// Bounded: the sequence it ends before.
    end: Option<u64>,
    waker: Option<SourceWaker>,
    link: Option<TaskLink>,
    error: Option<anyhow::Error>,
    failed: bool,
}

impl StreamReader {
    fn ended(&self) -> bool {
        self.end.is_some_and(|end| self.next >= end)
    }

    /// Starts the split's task on the run's I/O runtime, from where the split is now.
    fn start(&mut self) -> Result<()> {
        let runtime = paystream_engine::io::handle().ok_or_else(|| anyhow!("no I/O runtime to read nats on"))?;
        let (events_tx, events) = mpsc::channel(self.batch.max(16));
        let sleeping = Arc::new(AtomicBool::new(false));
        let fetcher = Fetcher {
            address: self.address.clone(),
            subject: self.subject.clone(),
            batch: self.batch,
            end: self.end,
            next: self.next,
            connect_timeout: self.connect_timeout,
            reconnect_timeout: self.reconnect_timeout,
            events: events_tx,
            sleeping: sleeping.clone(),
            waker: self.waker.clone(),
        };
        let task = runtime.spawn(fetcher.run());
        self.link = Some(TaskLink { events, sleeping, task });
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
        let mut failure = None;
        if let Some(link) = self.link.as_mut() {
            while read < max {
                match link.events.try_recv() {
                    Ok(Event::Message { sequence, payload }) => {
                        if sequence < self.next {
                            continue;
                        }
                        decode.message(&mut self.lines, &payload, sequence);
                        self.next = sequence + 1;
                        read += 1;
                        if self.end.is_some_and(|end| self.next >= end) {
                            break;
                        }
                    }
                    Ok(Event::End) => {
                        if let Some(end) = self.end {
                            self.next = self.next.max(end);
                        }
                        break;
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
        self.error = Some(error.context(format!("stream {}", self.address.stream)));
        self.failed = true;
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.task.abort();
        }
    }
}

impl SplitReader for StreamReader {
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        let status = self.read_messages(max, decode);
        match self.error.take() {
            // The engine fails the job with it (exit 1).
            Some(e) => ReadStatus::Failed(format!("{e:#}")),
            None => status,
        }
    }
    fn position(&self) -> Position {
        Position { offset: self.next, line: self.end.map_or(0, |end| end + 1) }
    }
    /// The checkpoint decides where the split resumes and where it ends, whatever the URI's
    /// `start` and `bounded` say now.
    fn seek(&mut self, position: &Position) -> Result<()> {
        if self.link.is_some() {
            bail!("source {}: stream {} cannot seek once reading", self.source, self.address.stream);
        }
        self.next = position.offset.max(1);
        self.end = position.line.checked_sub(1);
        Ok(())
    }
    fn set_waker(&mut self, waker: SourceWaker) -> bool {
        self.waker = Some(waker);
        true
    }
    fn backlog(&self) -> Option<u64> {
        self.end.map(|end| end.saturating_sub(self.next))
    }
}

/// A split's task: fetches from one stream, reconnecting as needed.
struct Fetcher {
    address: Arc<Address>,
    subject: Option<String>,
    batch: usize,
    end: Option<u64>,
    /// The sequence of the next message to hand over.
    next: u64,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
    events: mpsc::Sender<Event>,
    sleeping: Arc<AtomicBool>,
    waker: Option<SourceWaker>,
}

impl Fetcher {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.reconnect_timeout);
        let endpoint = self.address.endpoint();
        loop {
            match self.session(&mut backoff).await {
                Ok(()) => return,
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

    async fn send(&self, event: Event) -> bool {
        let sent = self.events.send(event).await.is_ok();
        self.wake();
        sent
    }

    /// One connection's worth of fetching; `Ok` when the reader is gone or a bounded split ended.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<()> {
        if self.end.is_some_and(|end| self.next >= end) {
            return Ok(());
        }
        let context = client::connect(&self.address, self.connect_timeout).await?;
        let stream = &self.address.stream;
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: self.next },
            ack_policy: AckPolicy::None,
            filter_subject: self.subject.clone().unwrap_or_default(),
            // Left behind by a killed job, it is removed by the server soon after.
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        let mut consumer = context
            .create_consumer_on_stream(config, stream.as_str())
            .await
            .with_context(|| format!("cannot create a consumer of stream {stream:?}"))?;
        backoff.reset();
        tracing::debug!(stream = %stream, next = self.next, "nats: consuming");
        loop {
            let mut messages = consumer
                .batch()
                .max_messages(self.batch)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .with_context(|| format!("cannot fetch from stream {stream:?}"))?;
            let mut fetched = 0usize;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| anyhow!("cannot fetch from stream {stream:?}: {e}"))?;
                let info = message.info().map_err(|e| anyhow!("a message of stream {stream:?} without metadata: {e}"))?;
                let (sequence, pending) = (info.stream_sequence, info.pending);
                fetched += 1;
                if self.end.is_some_and(|end| sequence >= end) {
                    self.send(Event::End).await;
                    return Ok(());
                }
                if !self.send(Event::Message { sequence, payload: message.message.payload.to_vec() }).await {
                    return Ok(());
                }
                self.next = sequence + 1;
                if self.end.is_some_and(|end| self.next >= end) {
                    return Ok(());
                }
                // Nothing more matches now, so nothing more before the end (fixed in the past).
                if pending == 0 && self.end.is_some() {
                    self.send(Event::End).await;
                    return Ok(());
                }
            }
            if fetched == 0 {
                // An empty fetch: the server had nothing, or the connection (or the consumer,
                // removed during an outage) is gone. Asking for the consumer tells which.
                if !client::connected(&context) {
                    bail!("lost the connection");
                }
                let info = consumer.info().await.with_context(|| format!("lost the consumer of stream {stream:?}"))?;
                if self.end.is_some() && info.num_pending == 0 {
                    self.send(Event::End).await;
                    return Ok(());
                }
                if self.events.is_closed() {
                    return Ok(());
                }
            }
        }
    }
}
