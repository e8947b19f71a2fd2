//! What the source and the sink ask of a broker, over lapin: connecting within a bounded time,
//! telling a stream queue from a classic one, finding a stream's end, scanning a stream's tail for
//! message ids, and backing off between reconnections.
//!
//! A stream queue's end cannot be asked for over AMQP (its declare-ok counts 0 messages): it is
//! found by consuming from `x-stream-offset=last`, which delivers the stream's last chunk, and
//! taking the highest offset delivered once the broker has been quiet for [`QUIET`].

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use paystream_engine::Result;

use crate::address::Address;

/// How long one connection attempt may take: a broker down at the start fails the run this fast.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the broker must stay quiet after the last delivery of a stream's last chunk.
const QUIET: Duration = Duration::from_millis(300);

/// How long an empty stream is given to deliver a first message when its end is looked for.
const EMPTY_WAIT: Duration = Duration::from_millis(1000);

/// Connects, within [`CONNECT_TIMEOUT`]; the error names the broker.
pub(crate) async fn connect(address: &Address) -> Result<Connection> {
    let uri = address.amqp_uri();
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&uri, ConnectionProperties::default())).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(anyhow!("cannot connect to rabbitmq at {}: {e} (is the broker running?)", address.endpoint())),
        Err(_) => Err(anyhow!("cannot connect to rabbitmq at {}: no answer within {CONNECT_TIMEOUT:?}", address.endpoint())),
    }
}

/// The kind of a queue: replayable from an offset, or consumed and acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum QueueKind {
    /// `x-queue-type=stream`: an append-only log read from an offset.
    Stream,
    /// A classic (or quorum) queue: each message is delivered once and acknowledged.
    Classic,
}

fn stream_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

/// The kind of `queue`, or `None` when it does not exist. Each look is on its own channel: a
/// refused declare closes the channel it was made on.
pub(crate) async fn queue_kind(connection: &Connection, queue: &str) -> Result<Option<QueueKind>> {
    let channel = connection.create_channel().await.context("cannot open a channel")?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    if let Err(e) = channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
        if e.to_string().contains("NOT_FOUND") {
            return Ok(None);
        }
        return Err(anyhow!("cannot look up queue {queue:?}: {e}"));
    }
    channel.close(200, "".into()).await.ok();
    let channel = connection.create_channel().await.context("cannot open a channel")?;
    // Declaring it as a stream again succeeds only if it is one.
    match channel.queue_declare(queue.into(), durable(), stream_arguments()).await {
        Ok(_) => {
            channel.close(200, "".into()).await.ok();
            Ok(Some(QueueKind::Stream))
        }
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => Ok(Some(QueueKind::Classic)),
        Err(e) => Err(anyhow!("cannot look up queue {queue:?}: {e}")),
    }
}

/// Declares `queue` as a durable stream queue (nothing happens if it is one already).
pub(crate) async fn declare_stream(channel: &Channel, queue: &str) -> Result<()> {
    match channel.queue_declare(queue.into(), durable(), stream_arguments()).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
            bail!("queue {queue:?} exists and is not a stream queue ({e}); the sink writes to stream queues only")
        }
        Err(e) => Err(anyhow!("cannot declare stream queue {queue:?}: {e}")),
    }
}

/// The offset a stream delivery carries (header `x-stream-offset`).
pub(crate) fn stream_offset(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from("x-stream-offset"))? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Starts a consumer of stream `queue` from `start` (an `x-stream-offset` value) on a fresh
/// channel with `prefetch` unacknowledged deliveries at most.
pub(crate) async fn consume_stream(
    connection: &Connection,
    queue: &str,
    start: AMQPValue,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer)> {
    let channel = connection.create_channel().await.context("cannot open a channel")?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.context("cannot set the prefetch")?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), start);
    let consumer = channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), args)
        .await
        .with_context(|| format!("cannot consume stream queue {queue:?}"))?;
    Ok((channel, consumer))
}

/// The offset after the last message stream `queue` holds now (0 when it is empty).
pub(crate) async fn stream_end(connection: &Connection, queue: &str) -> Result<u64> {
    let (channel, mut consumer) = consume_stream(connection, queue, AMQPValue::LongString("last".into()), 2000).await?;
    let mut end = 0u64;
    let mut wait = EMPTY_WAIT;
    while let Ok(next) = tokio::time::timeout(wait, consumer.next()).await {
        let Some(delivery) = next else { break };
        let delivery = delivery.with_context(|| format!("cannot read the end of stream queue {queue:?}"))?;
        if let Some(offset) = stream_offset(&delivery.properties) {
            end = end.max(offset + 1);
        }
        delivery.ack(BasicAckOptions::default()).await.ok();
        wait = QUIET;
    }
    channel.close(200, "".into()).await.ok();
    Ok(end)
}

/// Which of `wanted` (message ids) stream `queue` holds between the chunk published at
/// `since_secs` (Unix seconds) or later and `end` (an offset after the last message to look at).
/// Stops early once all are found.
pub(crate) async fn find_message_ids(
    connection: &Connection,
    queue: &str,
    since_secs: u64,
    end: u64,
    wanted: &HashSet<String>,
) -> Result<HashSet<String>> {
    let mut found = HashSet::new();
    if end == 0 || wanted.is_empty() {
        return Ok(found);
    }
    let (channel, mut consumer) = consume_stream(connection, queue, AMQPValue::Timestamp(since_secs), 2000).await?;
    // A stream that stops delivering before `end` (truncated by retention meanwhile) is left.
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
        let Some(delivery) = next else { break };
        let delivery = delivery.with_context(|| format!("cannot scan stream queue {queue:?}"))?;
        let offset = stream_offset(&delivery.properties);
        if let Some(id) = delivery.properties.message_id() {
            if wanted.contains(id.as_str()) {
                found.insert(id.to_string());
            }
        }
        delivery.ack(BasicAckOptions::default()).await.ok();
        if found.len() == wanted.len() || offset.is_none_or(|o| o + 1 >= end) {
            break;
        }
    }
    channel.close(200, "".into()).await.ok();
    Ok(found)
}

/// Runs `work` to completion on a thread of its own with a runtime of its own: for the checks
/// made when a URI is opened and for a sink's recovery, which run before (or outside) the run's
/// I/O runtime and may be called from inside another runtime's context.
pub(crate) fn block_on<T: Send>(work: impl Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime for rabbitmq")?;
                runtime.block_on(work)
            })
            .join()
            .map_err(|_| anyhow!("the rabbitmq client thread panicked"))?
    })
}

/// Exponential backoff between reconnections, within a deadline counted from the first failure.
pub(crate) struct Backoff {
    limit: Duration,
    next: Duration,
    since: Option<Instant>,
}

impl Backoff {
    /// A backoff that gives up `limit` after the first failure.
    pub(crate) fn new(limit: Duration) -> Self {
        Backoff { limit, next: Duration::from_millis(100), since: None }
    }

    /// A connection works again: the next failure starts afresh.
    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
        self.since = None;
    }

    /// Waits before the next attempt after `error`, or returns the error once the broker has been
    /// away longer than the limit.
    pub(crate) async fn wait(&mut self, error: anyhow::Error, endpoint: &str) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let away = since.elapsed();
        if away >= self.limit {
            return Err(error.context(format!(
                "rabbitmq at {endpoint} has been unreachable for {:.1} s, longer than reconnect_timeout ({:?})",
                away.as_secs_f64(),
                self.limit
            )));
        }
        tracing::warn!(broker = endpoint, retry_in_ms = self.next.as_millis() as u64, "rabbitmq: {error:#}; reconnecting");
        tokio::time::sleep(self.next.min(self.limit.saturating_sub(away))).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Ok(())
    }
}
