//! The Kafka source: one split per partition, read by a consumer assigned to it (no consumer
//! group: the checkpoint holds the offsets).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use paystream_engine::connector::{Decode, PayloadSource, SourceConnector, SourceWaker, SplitReader};
use paystream_engine::decode::{LineDecoder, DEFAULT_MAX_RECORD_BYTES};
use paystream_engine::source::{Position, ReadStatus};
use paystream_engine::{Format, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::{cached_high, partitions, Health, KafkaUri, MetadataFields};

/// The `kafka:` source connector.
pub struct KafkaSource;

/// Where a run without a checkpoint starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Earliest,
    Latest,
}

/// `Position::offset` of a split that starts at the partition's end and has read nothing yet.
const AT_LATEST: u64 = u64::MAX;

#[derive(Debug)]
struct Topic {
    source: String,
    uri: KafkaUri,
    partitions: u32,
    format: Format,
    start: Start,
    bounded: bool,
    max_record_bytes: usize,
    reconnect_timeout: Duration,
    fetch_wait: Duration,
    metadata: MetadataFields,
    group: String,
}

impl SourceConnector for KafkaSource {
    fn scheme(&self) -> &'static str {
        "kafka"
    }
    fn usage(&self) -> &'static str {
        "kafka://HOST:PORT[,HOST:PORT]/TOPIC (a partition per split; ?format=jsonl|csv, start=earliest|latest, bounded=true, \
         connect_timeout=10s, reconnect_timeout=60s, fetch_wait=100ms, max_record_bytes=N, key_field=NAME and timestamp_field=NAME \
         to give a job the message's key and timestamp, group=NAME: the consumer group whose offsets follow completed checkpoints, \
         for monitoring; default paystream-TOPIC)"
    }
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>> {
        let what = format!("source {source}={uri}");
        let mut parsed = KafkaUri::parse(&what, uri)?;
        let o = &mut parsed.options;
        let format = Format::from_name(&o.text("format").unwrap_or_else(|| "jsonl".into())).map_err(|e| anyhow!("{what}: {e}"))?;
        let start = match o.text("start").as_deref() {
            None | Some("earliest") => Start::Earliest,
            Some("latest") => Start::Latest,
            Some(other) => bail!("{what}: start={other:?}: use start=earliest or start=latest"),
        };
        let bounded = o.get("bounded", false)?;
        let max_record_bytes = o.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)?;
        let connect_timeout = o.duration("connect_timeout", Duration::from_secs(10))?;
        let reconnect_timeout = o.duration("reconnect_timeout", Duration::from_secs(60))?;
        let fetch_wait = o.duration("fetch_wait", Duration::from_millis(100))?;
        let mut field = |name: &str| -> Result<Option<String>> {
            match o.text(name) {
                Some(f) if f.is_empty() || f.contains(['"', ',', '\\']) => {
                    bail!("{what}: {name}={f:?}: give the name of the field (column) that takes it")
                }
                other => Ok(other),
            }
        };
        let metadata = MetadataFields { key: field("key_field")?, timestamp: field("timestamp_field")? };
        let group = o.text("group").unwrap_or_else(|| format!("paystream-{}", parsed.topic));
        if group.is_empty() {
            bail!("{what}: group= names no consumer group");
        }
        o.finish()?;
        let partitions = match partitions(&what, &parsed, connect_timeout)? {
            Some(n) if n > 0 => n,
            _ => bail!("{what}: topic {:?} does not exist at {}; create it first", parsed.topic, parsed.brokers),
        };
        Ok(Arc::new(Topic {
            source: source.to_string(),
            uri: parsed,
            partitions,
            format,
            start,
            bounded,
            max_record_bytes,
            reconnect_timeout,
            fetch_wait,
            metadata,
            group,
        }))
    }
}

impl PayloadSource for Topic {
    fn splits(&self) -> Result<u64> {
        Ok(self.partitions as u64)
    }
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>> {
        let origin = format!("kafka topic {} partition {split}", self.uri.topic);
        Ok(Box::new(PartitionReader {
            topic: self.uri.topic.clone(),
            brokers: self.uri.brokers.clone(),
            partition: split as i32,
            config: self.uri.client_config(),
            queue: None,
            consumer: None,
            health: Health::default(),
            next: match self.start {
                Start::Earliest => 0,
                Start::Latest => AT_LATEST,
            },
            bounded: self.bounded,
            end: None,
            lines: LineDecoder::new(&self.source, origin, self.format).with_max_record_bytes(self.max_record_bytes),
            waker: None,
            reconnect_timeout: self.reconnect_timeout,
            fetch_wait_ms: self.fetch_wait.as_millis(),
            high: None,
            metadata: self.metadata.clone(),
            format: self.format,
            with_metadata: Vec::new(),
            group: self.group.clone(),
            taken: Default::default(),
        }))
    }
}

/// Reads one partition. `Position::offset` is the next offset to read ([`AT_LATEST`] before a
/// `start=latest` split read anything); with `bounded=true`, `Position::line` is the end offset
/// plus one once known (0 before), so a restore ends where the first run would have.
struct PartitionReader {
    /// Declared before `consumer`: dropped first.
    queue: Option<ConsumerQueue>,
    topic: String,
    brokers: String,
    partition: i32,
    config: rdkafka::config::ClientConfig,
    consumer: Option<BaseConsumer<Health>>,
    health: Health,
    next: u64,
    bounded: bool,
    /// The end of a bounded read: offsets below it are read.
    end: Option<u64>,
    lines: LineDecoder,
    waker: Option<SourceWaker>,
    reconnect_timeout: Duration,
    fetch_wait_ms: u128,
    /// The partition's end as the last fetch reported it, for the backlog.
    high: Option<u64>,
    /// The key and timestamp fields asked for, and a buffer for payloads with them.
    metadata: MetadataFields,
    format: Format,
    with_metadata: Vec<u8>,
    /// The consumer group that follows completed checkpoints (for monitoring only: restores
    /// take their offsets from the checkpoint).
    group: String,
    /// The next offset when each checkpoint's position was taken, until it completes.
    taken: std::collections::BTreeMap<u64, u64>,
}

impl PartitionReader {
    fn consumer(&mut self) -> std::result::Result<&BaseConsumer<Health>, String> {
        if self.consumer.is_none() {
            let mut consumer: BaseConsumer<Health> = self
                .config
                .clone()
                // Offsets are the checkpoint's; the group only names the client in broker logs.
                .set("group.id", &self.group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", "read_committed")
                // An offset the broker no longer has (retention) restarts at the oldest one kept.
                .set("auto.offset.reset", "earliest")
                // How long the broker may hold a fetch that finds nothing (data is answered at
                // once). Tansu 0.6 holds every client's fetches behind one that waits: with
                // librdkafka's default 500 ms, nine consumers of a job read 4,000 messages/s.
                .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
                // librdkafka prefetches up to 64 MiB per consumer by default, one consumer per
                // partition here: 299 MiB of peak memory reading a 4-partition topic, 207 MiB
                // with 8 MiB at the same speed; 4 MiB made the reads 2.7x slower (Tansu).
                .set("queued.max.messages.kbytes", "8192")
                .create_with_context(self.health.clone())
                .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
            if let Some(waker) = &self.waker {
                let w = waker.clone();
                consumer.set_nonempty_callback(move || w.wake());
                self.health.set_waker(waker.clone());
            }
            let offset = if self.next == AT_LATEST { Offset::End } else { Offset::Offset(self.next as i64) };
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&self.topic, self.partition, offset)
                .map_err(|e| format!("cannot assign partition {}: {e}", self.partition))?;
            consumer.assign(&assignment).map_err(|e| format!("cannot assign partition {}: {e}", self.partition))?;
            // SAFETY: the handle is released (Drop) before the consumer, declared after it.
            let queue = unsafe { rdkafka::bindings::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
            self.queue = (!queue.is_null()).then_some(ConsumerQueue(queue));
            self.consumer = Some(consumer);
        }
        Ok(self.consumer.as_ref().expect("just created"))
    }

    fn reached_end(&self) -> bool {
        matches!(self.end, Some(end) if self.next != AT_LATEST && self.next >= end)
    }
}

impl SplitReader for PartitionReader {
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        if self.reached_end() {
            return ReadStatus::Done;
        }
        if let Err(e) = self.consumer() {
            return ReadStatus::Failed(format!("kafka topic {} partition {}: {e}", self.topic, self.partition));
        }
        let mut n = 0;
        // rdkafka's poll answers None both for an empty queue and for an event it consumed
        // itself (statistics): only the first means there is nothing, and the queue's
        // non-empty callback (the waker) fires only when an empty queue fills.
        let mut consumed = 0;
        // Whether a broker answered (data or an end of partition): told to `health` once per
        // read, not per message (it takes a lock).
        let mut answered = false;
        while n < max {
            let consumer = self.consumer.as_ref().expect("created above");
            let event = match consumer.poll(Duration::ZERO) {
                None if consumed < 64 && self.queue.as_ref().is_some_and(|q| q.len() > 0) => {
                    consumed += 1;
                    continue;
                }
                None => break,
                Some(event) => event,
            };
            match event {
                Ok(message) => {
                    answered = true;
                    let offset = message.offset() as u64;
                    if self.bounded && self.end.is_none() {
                        // The first fetch tells where the partition ended when the job started.
                        self.end = cached_high(consumer, &self.topic, self.partition);
                    }
                    if matches!(self.end, Some(end) if offset >= end) {
                        self.next = offset;
                        return ReadStatus::Done;
                    }
                    let payload = message.payload().unwrap_or_default();
                    if self.metadata.any() {
                        let payload = self.metadata.apply(
                            self.format,
                            payload,
                            message.key(),
                            message.timestamp().to_millis(),
                            &mut self.with_metadata,
                        );
                        decode.message(&mut self.lines, payload, offset);
                    } else {
                        decode.message(&mut self.lines, payload, offset);
                    }
                    self.next = offset + 1;
                    n += 1;
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    answered = true;
                    let high = cached_high(consumer, &self.topic, self.partition);
                    self.high = high.or(self.high);
                    if self.next == AT_LATEST {
                        if let Some(h) = high {
                            self.next = h;
                        }
                    }
                    if self.bounded {
                        if self.end.is_none() {
                            self.end = high.or(Some(self.next.min(AT_LATEST - 1)));
                        }
                        // Everything up to the partition's end at this fetch was delivered.
                        if matches!((self.end, high), (Some(end), Some(h)) if h >= end) {
                            return ReadStatus::Done;
                        }
                    }
                }
                Err(e) => {
                    // Fetch errors are retried by librdkafka; keep the last for a failure message.
                    tracing::debug!("kafka topic {} partition {}: {e}", self.topic, self.partition);
                    self.health.state().last_error = Some(e.to_string());
                }
            }
        }
        if answered {
            self.health.up();
        }
        if let Some(message) = self.health.failed(self.reconnect_timeout, &self.brokers) {
            return ReadStatus::Failed(format!("kafka topic {} partition {}: {message}", self.topic, self.partition));
        }
        if self.reached_end() {
            ReadStatus::Done
        } else if n == 0 {
            ReadStatus::Idle
        } else {
            ReadStatus::More
        }
    }

    fn position(&self) -> Position {
        Position { offset: self.next, line: if self.bounded { self.end.map_or(0, |e| e + 1) } else { 0 } }
    }

    fn seek(&mut self, position: &Position) -> Result<()> {
        if self.consumer.is_some() {
            bail!("kafka topic {} partition {}: seek after reading started", self.topic, self.partition);
        }
        self.next = position.offset;
        if self.bounded && position.line > 0 {
            self.end = Some(position.line - 1);
        }
        Ok(())
    }

    fn set_waker(&mut self, waker: SourceWaker) -> bool {
        self.waker = Some(waker);
        true
    }

    fn on_checkpoint(&mut self, epoch: u64) {
        if self.next != AT_LATEST {
            self.taken.insert(epoch, self.next);
        }
    }

    fn on_checkpoint_complete(&mut self, epoch: u64) {
        // What the checkpoint covers becomes the group's committed offset, so that lag monitors
        // (kafka-consumer-groups, Burrow, exporters) see the job's progress. Asynchronous and best
        // effort: a failed commit costs a monitor a stale figure, never a record.
        let later = self.taken.split_off(&(epoch + 1));
        let covered = std::mem::replace(&mut self.taken, later).into_values().next_back();
        let (Some(offset), Some(consumer)) = (covered, self.consumer.as_ref()) else { return };
        let mut list = TopicPartitionList::new();
        if list.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset as i64)).is_ok() {
            if let Err(e) = consumer.commit(&list, rdkafka::consumer::CommitMode::Async) {
                tracing::debug!(
                    "kafka topic {} partition {}: cannot commit offset {offset} for group {}: {e}",
                    self.topic,
                    self.partition,
                    self.group
                );
            }
        }
    }

    fn backlog(&self) -> Option<u64> {
        let high = self.end.or(self.high)?;
        (self.next != AT_LATEST).then(|| high.saturating_sub(self.next))
    }
}

impl Drop for PartitionReader {
    /// Closes the consumer on a thread of its own. rdkafka closes a consumer that has a group on
    /// drop and waits, without a limit, until its group work is done (here: the asynchronous
    /// offset commit of the last completed checkpoint); while the broker is away that took 45 s
    /// (the commit request's timeout), on the worker thread that finished the partition, which
    /// stalled the whole job: its sinks could not fail or commit, and `reconnect_timeout` did not
    /// hold. A closing consumer still running when the process exits loses only that
    /// best-effort commit.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(consumer) = self.consumer.take() {
            let closing = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(consumer));
            if let Err(e) = closing {
                tracing::debug!("kafka topic {} partition {}: closing its consumer here: {e}", self.topic, self.partition);
            }
        }
    }
}

/// librdkafka's consumer queue of a consumer, to ask its length.
struct ConsumerQueue(*mut rdkafka::bindings::rd_kafka_queue_t);

impl ConsumerQueue {
    fn len(&self) -> usize {
        // SAFETY: the handle is valid until dropped.
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the handle came from rd_kafka_queue_get_consumer and is released once.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.0) }
    }
}
