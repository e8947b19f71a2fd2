//! The Kafka sink.
//!
//! **Exactly-once with checkpoints, in the write-ahead form.** librdkafka cannot resume a
//! transaction another process began (Flink's Kafka sink does that by reflection into the Java
//! client), so a transaction left open at a crash can only be aborted, never committed by the
//! restored run. The sink therefore keeps nothing uncommitted in Kafka across a checkpoint:
//! * `write` buffers the epoch's lines; `pre_commit` returns them as the committable, which the
//!   engine stores in the sink's part of the checkpoint (durable, not visible);
//! * `commit`, once the checkpoint is durable, produces them in one transaction of the worker's
//!   producer (transactional id `paystream.JOB.SINK.TOPIC.wWORKER`), which also commits the epoch
//!   as the offset of the marker consumer group of the same name on partition 0 of the topic
//!   (`send_offsets_to_transaction`): the lines and the marker become visible together or not at
//!   all;
//! * a restore (`recover`) fences each worker's producer (which aborts a transaction a crashed
//!   run left open), reads its marker and redoes the transactions of the checkpoint's epochs the
//!   marker does not reach;
//! * each writer sets its marker to the epoch before its run's first one when it starts, so an
//!   earlier run's marker (a run restored from an older savepoint) never hides an epoch.
//!
//! The cost: an epoch's output is held in memory and in the checkpoint until the checkpoint
//! completes, and output becomes visible a checkpoint interval late (true of any transactional
//! Kafka sink: read-committed consumers see nothing before the commit).
//!
//! Without checkpoints, an idempotent producer writes lines as they come (at-least-once).

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use paystream_engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter};
use paystream_engine::{Format, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::{partitions, Health, KafkaUri};

/// How long one broker operation (a transaction's commit, a flush) may take before the sink
/// fails the job.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The `kafka:` sink connector.
pub struct KafkaSink;

/// Which column keys a message.
#[derive(Clone, Debug)]
enum KeySpec {
    None,
    Column(String),
}

#[derive(Debug)]
struct Topic {
    uri: KafkaUri,
    format: Format,
    key: KeySpec,
}

impl SinkConnector for KafkaSink {
    fn scheme(&self) -> &'static str {
        "kafka"
    }
    fn usage(&self) -> &'static str {
        "kafka://HOST:PORT[,HOST:PORT]/TOPIC (exactly-once with checkpoints through transactions; ?format=jsonl|csv, key=COLUMN, \
         partitions=N when it creates the topic, connect_timeout=10s)"
    }
    fn open(&self, sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let what = format!("sink {sink}={uri}");
        let mut parsed = KafkaUri::parse(&what, uri)?;
        let o = &mut parsed.options;
        let format = Format::from_name(&o.text("format").unwrap_or_else(|| "jsonl".into())).map_err(|e| anyhow!("{what}: {e}"))?;
        let key = match o.text("key") {
            Some(column) if !column.is_empty() => KeySpec::Column(column),
            Some(_) => bail!("{what}: key= names no column"),
            None => KeySpec::None,
        };
        let create_partitions = o.get("partitions", 1i32)?;
        let connect_timeout = o.duration("connect_timeout", Duration::from_secs(10))?;
        o.finish()?;
        if create_partitions < 1 {
            bail!("{what}: partitions must be at least 1");
        }
        if partitions(&what, &parsed, connect_timeout)?.unwrap_or(0) == 0 {
            create_topic(&what, &parsed, create_partitions, connect_timeout)?;
        }
        Ok(Arc::new(Topic { uri: parsed, format, key }))
    }
}

/// Creates the sink's topic.
fn create_topic(what: &str, uri: &KafkaUri, partitions: i32, timeout: Duration) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<Health> =
        uri.client_config().create_with_context(Health::default()).map_err(|e| anyhow!("{what}: cannot create a Kafka client: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().context("cannot start a runtime")?;
    let topic = NewTopic::new(&uri.topic, partitions, TopicReplication::Fixed(1));
    let results = runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(timeout))))
        .map_err(|e| anyhow!("{what}: cannot create topic {}: {e}", uri.topic))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("{what}: cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The transactional id of a worker's producer, also the name of its marker group.
fn transactional_id(job: &str, sink: &str, topic: &str, worker: usize) -> String {
    format!("paystream.{job}.{sink}.{topic}.w{worker}")
}

impl SinkTarget for Topic {
    fn format(&self) -> Format {
        self.format
    }
    fn parallel(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("kafka topic {} at {}", self.uri.topic, self.uri.brokers)
    }
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        let mut workers: Vec<usize> = recovery.committables.iter().map(|c| c.worker).collect();
        workers.sort_unstable();
        workers.dedup();
        for worker in workers {
            let id = transactional_id(&recovery.job, &recovery.sink, &self.uri.topic, worker);
            let mut client = TxnClient::new(&self.uri, &id, None)?;
            let marker = client.marker()?;
            let mut epochs: Vec<_> = recovery.committables.iter().filter(|c| c.worker == worker).collect();
            epochs.sort_by_key(|c| c.epoch);
            for c in epochs {
                if marker.is_some_and(|m| m >= c.epoch) {
                    continue;
                }
                let lines: Vec<String> = decode_lines(&c.data)?;
                tracing::info!("kafka sink {}: redoing epoch {} of worker {worker} ({} lines)", recovery.sink, c.epoch, lines.len());
                client.transaction(c.epoch, &lines)?;
            }
        }
        Ok(())
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let key = match &self.key {
            KeySpec::None => None,
            KeySpec::Column(name) => Some(match self.format {
                Format::Csv => {
                    let header = context.header.as_deref().unwrap_or_default();
                    let index = header
                        .split(',')
                        .position(|c| c == name)
                        .ok_or_else(|| anyhow!("sink {}: key={name}: no such column; the columns are {header}", context.sink))?;
                    KeyOf::CsvColumn(index)
                }
                Format::JsonLines => KeyOf::JsonField(name.clone()),
            }),
        };
        let (requests, inbox) = mpsc::channel::<Request>();
        let uri = self.uri.clone();
        let checkpointed = context.checkpointed;
        let id = transactional_id(&context.job, &context.sink, &self.uri.topic, context.worker);
        let first_epoch = context.first_epoch;
        let header = if self.format == Format::Csv { context.header.clone() } else { None };
        let (ready_tx, ready) = mpsc::channel();
        let name = format!("kafka-sink-w{}", context.worker);
        thread::Builder::new()
            .name(name)
            .spawn(move || {
                let client = if checkpointed {
                    TxnClient::new(&uri, &id, key).and_then(|mut c| {
                        // A marker from an earlier run must not hide this run's epochs.
                        c.set_marker(first_epoch.saturating_sub(1))?;
                        Ok(Client::Txn(c))
                    })
                } else {
                    PlainClient::new(&uri, key, header).map(Client::Plain)
                };
                let mut client = match client {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for request in inbox {
                    let (result, reply) = match request {
                        Request::Write(lines) => (client.write(lines), None),
                        Request::Commit(epoch, lines, reply) => (client.commit(epoch, &lines), Some(reply)),
                        Request::Finish(reply) => (client.finish(), Some(reply)),
                    };
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        None => {
                            if let Err(e) = result {
                                client.fail(e);
                            }
                        }
                    }
                }
            })
            .context("cannot start the Kafka sink's thread")?;
        // Waiting here is before the run starts: a broker that refuses the producer fails the
        // job at once.
        ready.recv().map_err(|_| anyhow!("the Kafka sink's thread ended"))??;
        Ok(Box::new(KafkaWriter { requests, checkpointed, buffered: Vec::new(), buffered_epoch: None, waiting: None }))
    }
}

/// How a message's key is taken from its line.
#[derive(Clone, Debug)]
enum KeyOf {
    CsvColumn(usize),
    JsonField(String),
}

impl KeyOf {
    fn of(&self, line: &str) -> Option<String> {
        match self {
            KeyOf::CsvColumn(i) => csv_field(line, *i),
            KeyOf::JsonField(name) => {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                match value.get(name)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }
            }
        }
    }
}

/// Field `index` of a CSV line (RFC 4180 quoting).
fn csv_field(line: &str, index: usize) -> Option<String> {
    let mut field = String::new();
    let mut current = 0;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if current == index {
                    return Some(field);
                }
                current += 1;
                field.clear();
            }
            c => field.push(c),
        }
    }
    (current == index).then_some(field)
}

fn encode_lines(lines: &[String]) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(lines, bincode::config::standard()).context("cannot encode the epoch's lines")
}

fn decode_lines(data: &[u8]) -> Result<Vec<String>> {
    Ok(bincode::serde::decode_from_slice(data, bincode::config::standard()).context("a Kafka sink committable is damaged")?.0)
}

enum Request {
    /// Without checkpoints: produce these lines.
    Write(Vec<String>),
    /// Produce an epoch's lines in one transaction.
    Commit(u64, Vec<String>, Sender<Result<()>>),
    /// Flush everything.
    Finish(Sender<Result<()>>),
}

/// One worker's writer: hands work to its thread, never blocks the worker.
struct KafkaWriter {
    requests: Sender<Request>,
    checkpointed: bool,
    buffered: Vec<String>,
    buffered_epoch: Option<u64>,
    /// The reply to the request under way (a commit or the finish).
    waiting: Option<Receiver<Result<()>>>,
}

impl KafkaWriter {
    fn send(&self, request: Request) -> Result<()> {
        self.requests.send(request).map_err(|_| anyhow!("the Kafka sink's thread ended"))
    }

    /// `Ready` once the request under way (started by `start` if none is) has succeeded.
    fn progress(&mut self, start: impl FnOnce(Sender<Result<()>>) -> Request) -> Result<Progress> {
        if self.waiting.is_none() {
            let (tx, rx) = mpsc::channel();
            self.send(start(tx))?;
            self.waiting = Some(rx);
        }
        let rx = self.waiting.as_ref().expect("set above");
        match rx.try_recv() {
            Err(TryRecvError::Empty) => Ok(Progress::Pending),
            Err(TryRecvError::Disconnected) => {
                self.waiting = None;
                bail!("the Kafka sink's thread ended")
            }
            Ok(result) => {
                self.waiting = None;
                result.map(Progress::Ready)
            }
        }
    }
}

impl SinkWriter for KafkaWriter {
    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()> {
        if !self.checkpointed {
            return self.send(Request::Write(lines));
        }
        if self.buffered_epoch.is_some_and(|e| e != epoch) && !self.buffered.is_empty() {
            bail!("kafka sink: lines of epoch {epoch} came before epoch {:?} was pre-committed", self.buffered_epoch);
        }
        self.buffered_epoch = Some(epoch);
        self.buffered.extend(lines);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        if self.buffered.is_empty() || self.buffered_epoch != Some(epoch) {
            return Ok(Progress::Ready(None));
        }
        let data = encode_lines(&self.buffered)?;
        self.buffered.clear();
        self.buffered_epoch = None;
        Ok(Progress::Ready(Some(data)))
    }

    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<Progress> {
        if self.waiting.is_none() {
            let lines = decode_lines(committable)?;
            return self.progress(|reply| Request::Commit(epoch, lines, reply));
        }
        self.progress(|_| unreachable!("a request is under way"))
    }

    fn finish(&mut self) -> Result<Progress> {
        self.progress(Request::Finish)
    }

    fn abort(&mut self) {
        // Nothing uncommitted is in Kafka: the buffered lines are simply dropped.
        self.buffered.clear();
    }
}

enum Client {
    Txn(TxnClient),
    Plain(PlainClient),
}

impl Client {
    fn write(&mut self, lines: Vec<String>) -> Result<()> {
        match self {
            Client::Plain(c) => c.write(&lines),
            Client::Txn(_) => bail!("kafka sink: a write outside a transaction in a checkpointed run"),
        }
    }
    fn commit(&mut self, epoch: u64, lines: &[String]) -> Result<()> {
        match self {
            Client::Txn(c) => c.transaction(epoch, lines),
            Client::Plain(_) => bail!("kafka sink: a commit in a run without checkpoints"),
        }
    }
    fn finish(&mut self) -> Result<()> {
        match self {
            Client::Txn(_) => Ok(()),
            Client::Plain(c) => c.flush(),
        }
    }
    fn fail(&mut self, error: anyhow::Error) {
        if let Client::Plain(c) = self {
            c.failure.get_or_insert(error);
        }
    }
}

/// Produces `lines` (keyed by `key`) to `topic`, waiting while librdkafka's queue is full.
fn produce(producer: &BaseProducer<Health>, topic: &str, key: Option<&KeyOf>, lines: &[String]) -> Result<()> {
    for line in lines {
        let k = key.and_then(|k| k.of(line));
        let mut record = BaseRecord::to(topic).payload(line.as_str());
        if let Some(k) = &k {
            record = record.key(k.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => bail!("cannot produce to kafka topic {topic}: {e}"),
            }
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

/// A worker's transactional producer and its marker group.
struct TxnClient {
    topic: String,
    id: String,
    key: Option<KeyOf>,
    producer: BaseProducer<Health>,
    marker: BaseConsumer<Health>,
}

impl TxnClient {
    /// Creates the producer and fences earlier ones with the same id (aborting a transaction a
    /// crashed run left open).
    fn new(uri: &KafkaUri, id: &str, key: Option<KeyOf>) -> Result<TxnClient> {
        let what = format!("kafka sink {id}");
        let producer: BaseProducer<Health> = uri
            .client_config()
            .set("transactional.id", id)
            .set("transaction.timeout.ms", "60000")
            .set("statistics.interval.ms", "0")
            .create_with_context(Health::default())
            .map_err(|e| anyhow!("{what}: cannot create a producer: {e}"))?;
        producer.init_transactions(OPERATION_TIMEOUT).map_err(|e| anyhow!("{what}: cannot start transactions at {}: {e}", uri.brokers))?;
        let marker: BaseConsumer<Health> = uri
            .client_config()
            .set("group.id", id)
            .set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "0")
            .set("isolation.level", "read_committed")
            .create_with_context(Health::default())
            .map_err(|e| anyhow!("{what}: cannot create the marker consumer: {e}"))?;
        Ok(TxnClient { topic: uri.topic.clone(), id: id.to_string(), key, producer, marker })
    }

    fn marker_partition(&self, offset: Offset) -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, 0, offset)?;
        Ok(list)
    }

    /// The last epoch whose transaction committed, if any.
    fn marker(&mut self) -> Result<Option<u64>> {
        let list = self
            .marker
            .committed_offsets(self.marker_partition(Offset::Invalid)?, OPERATION_TIMEOUT)
            .map_err(|e| anyhow!("kafka sink {}: cannot read its marker: {e}", self.id))?;
        let element = list.elements_for_topic(&self.topic).into_iter().find(|e| e.partition() == 0);
        Ok(match element.map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n >= 0 => Some(n as u64),
            _ => None,
        })
    }

    fn set_marker(&mut self, epoch: u64) -> Result<()> {
        self.transaction(epoch, &[])
    }

    /// Produces `lines` and commits `epoch` as the marker, in one transaction.
    fn transaction(&mut self, epoch: u64, lines: &[String]) -> Result<()> {
        let what = format!("kafka sink {}", self.id);
        self.producer.begin_transaction().map_err(|e| anyhow!("{what}: cannot begin a transaction: {e}"))?;
        let result = produce(&self.producer, &self.topic, self.key.as_ref(), lines).and_then(|()| {
            let group = self.marker.group_metadata().ok_or_else(|| anyhow!("{what}: no group metadata"))?;
            self.producer
                .send_offsets_to_transaction(&self.marker_partition(Offset::Offset(epoch as i64))?, &group, OPERATION_TIMEOUT)
                .map_err(|e| anyhow!("{what}: cannot add the epoch marker to the transaction: {e}"))?;
            self.producer.commit_transaction(OPERATION_TIMEOUT).map_err(|e| anyhow!("{what}: cannot commit epoch {epoch}: {e}"))
        });
        if result.is_err() {
            let _ = self.producer.abort_transaction(OPERATION_TIMEOUT);
        }
        result
    }
}

/// A worker's idempotent producer, for runs without checkpoints.
struct PlainClient {
    topic: String,
    key: Option<KeyOf>,
    producer: BaseProducer<Health>,
    health: Health,
    failure: Option<anyhow::Error>,
}

impl PlainClient {
    fn new(uri: &KafkaUri, key: Option<KeyOf>, _header: Option<String>) -> Result<PlainClient> {
        let health = Health::default();
        let producer: BaseProducer<Health> = uri
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("statistics.interval.ms", "0")
            .create_with_context(health.clone())
            .map_err(|e| anyhow!("kafka sink: cannot create a producer: {e}"))?;
        Ok(PlainClient { topic: uri.topic.clone(), key, producer, health, failure: None })
    }
    fn write(&mut self, lines: &[String]) -> Result<()> {
        if self.failure.is_some() {
            return Ok(());
        }
        produce(&self.producer, &self.topic, self.key.as_ref(), lines)
    }
    fn flush(&mut self) -> Result<()> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.producer.flush(OPERATION_TIMEOUT).map_err(|e| anyhow!("cannot flush to kafka topic {}: {e}", self.topic))?;
        if let Some(e) = self.health.0.lock().ok().and_then(|s| s.delivery_error.clone()) {
            bail!("kafka topic {}: a message was not delivered: {e}", self.topic);
        }
        Ok(())
    }
}
