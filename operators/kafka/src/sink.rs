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
//! * a restore (`recover`) fences the producer of every worker any checkpointed run of the sink
//!   had (aborting transactions a crashed run left open; the most workers a run had is kept in
//!   Kafka, as the committed offset of group `paystream.JOB.SINK.TOPIC.workers`, because a
//!   crashed run may have had more workers than the checkpoint's writers), reads each marker and
//!   redoes the transactions of the checkpoint's epochs the marker does not reach. A redo
//!   produces only the lines that consumers cannot already see: every message carries a
//!   `paystream` header `WORKER:EPOCH:INDEX`, and the committable holds the partition offsets
//!   before which none of its lines can be (the ends after the worker's last committed
//!   transaction), so the restore reads the topic from there with `read_committed` and skips the
//!   indexes it finds, keying what it writes again as the run did. That read is trusted only if it
//!   reaches the end a `read_uncommitted` read finds: a transaction still open would hide lines
//!   that are there, and writing them again would duplicate them, so the restore waits for it
//!   and then fails naming the partition and offset. On Kafka an aborted transaction is
//!   invisible and everything is redone; Tansu 0.6 (the broker CI runs) shows aborted and fenced
//!   records to `read_committed` consumers, and the read-back keeps them from being duplicated;
//! * each writer sets its marker to the epoch before its run's first one when it starts, so an
//!   earlier run's marker (a run restored from an older savepoint) never hides an epoch.
//!
//! The cost: an epoch's output is held in memory and in the checkpoint until the checkpoint
//! completes, and output becomes visible a checkpoint interval late (true of any transactional
//! Kafka sink: read-committed consumers see nothing before the commit).
//!
//! Without checkpoints, an idempotent producer writes lines as they come (at-least-once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use paystream_engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter};
use paystream_engine::record::split_csv_line;
use paystream_engine::{Format, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::{partitions, Health, KafkaUri};

/// How long aborting a failed transaction may take: the job fails either way.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// How long one broker operation (a transaction's commit, a flush) may wait for an answer
    /// (the client reconnects meanwhile) before the sink fails the job: `reconnect_timeout`.
    timeout: Duration,
}

impl SinkConnector for KafkaSink {
    fn scheme(&self) -> &'static str {
        "kafka"
    }
    fn usage(&self) -> &'static str {
        "kafka://HOST:PORT[,HOST:PORT]/TOPIC (exactly-once with checkpoints through transactions; ?format=jsonl|csv, key=COLUMN, \
         partitions=N when it creates the topic, connect_timeout=10s, reconnect_timeout=60s)"
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
        let reconnect_timeout = o.duration("reconnect_timeout", Duration::from_secs(60))?;
        o.finish()?;
        if create_partitions < 1 {
            bail!("{what}: partitions must be at least 1");
        }
        if partitions(&what, &parsed, connect_timeout)?.unwrap_or(0) == 0 {
            create_topic(&what, &parsed, create_partitions, connect_timeout)?;
        }
        Ok(Arc::new(Topic { uri: parsed, format, key, timeout: reconnect_timeout }))
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
        let mut outputs = BTreeMap::new();
        for c in &recovery.committables {
            outputs.insert((c.worker, c.epoch), decode(&c.data)?);
        }
        // Every producer any earlier run of this sink used (not only those with output pending)
        // is fenced before anything is read: a transaction a crashed run left open holds the
        // last stable offset back for every read-committed consumer (Kafka aborts it after
        // transaction.timeout.ms; Tansu 0.6 never does). A crashed run may have had more workers
        // than the checkpoint's writers, so the most workers any run had is kept in Kafka, and
        // raised before this run's producers exist.
        let recorded = self.recorded_workers(&recovery.job, &recovery.sink)?;
        let span = outputs.iter().map(|((w, _), o)| o.workers.max(w + 1)).max().unwrap_or(0).max(recorded).max(recovery.workers);
        if recovery.workers > recorded {
            self.record_workers(&recovery.job, &recovery.sink, recovery.workers)?;
        }
        let mut clients = Vec::new();
        for worker in 0..span {
            let id = transactional_id(&recovery.job, &recovery.sink, &self.uri.topic, worker);
            clients.push((worker, TxnClient::new(&self.uri, &id, None, self.timeout, worker, Ends::default())?));
        }
        for (worker, mut client) in clients {
            let marker = client.marker()?;
            // Keyed (worker, epoch): this worker's epochs, in order.
            for (&(_, epoch), output) in outputs.range((worker, 0)..=(worker, u64::MAX)) {
                if marker.is_some_and(|m| m >= epoch) {
                    continue;
                }
                // Keyed as the run that wrote them would have.
                client.key = match (&self.key, self.format) {
                    (KeySpec::None, _) => None,
                    (KeySpec::Column(_), Format::Csv) => output.key_column.map(KeyOf::CsvColumn),
                    (KeySpec::Column(name), Format::JsonLines) => Some(KeyOf::JsonField(name.clone())),
                };
                let visible = client.visible_lines(epoch, &output.scan_from)?;
                let missing: Vec<(usize, &String)> = output.lines.iter().enumerate().filter(|(i, _)| !visible.contains(i)).collect();
                tracing::info!(
                    "kafka sink {}: epoch {} of worker {worker} did not commit: {} of its {} lines already visible, producing the rest",
                    recovery.sink,
                    epoch,
                    visible.len(),
                    output.lines.len()
                );
                client.transaction(epoch, &missing)?;
            }
        }
        Ok(())
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        self.open_writer(context)
    }
}

impl Topic {
    /// The consumer group whose committed offset (on partition 0 of the topic) is the most
    /// workers a checkpointed run of this sink had.
    fn workers_group(&self, job: &str, sink: &str) -> String {
        format!("paystream.{job}.{sink}.{}.workers", self.uri.topic)
    }

    fn workers_consumer(&self, job: &str, sink: &str) -> Result<BaseConsumer<Health>> {
        self.uri
            .client_config()
            .set("group.id", self.workers_group(job, sink))
            .set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "0")
            .create_with_context(Health::default())
            .map_err(|e| anyhow!("kafka sink {sink}: cannot create a consumer: {e}"))
    }

    fn recorded_workers(&self, job: &str, sink: &str) -> Result<usize> {
        let consumer = self.workers_consumer(job, sink)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.uri.topic, 0, Offset::Invalid)?;
        let list = consumer
            .committed_offsets(list, self.timeout)
            .map_err(|e| anyhow!("kafka sink {sink}: cannot read how many workers earlier runs had: {e}"))?;
        Ok(match list.find_partition(&self.uri.topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n > 0 => n as usize,
            _ => 0,
        })
    }

    fn record_workers(&self, job: &str, sink: &str, workers: usize) -> Result<()> {
        let consumer = self.workers_consumer(job, sink)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.uri.topic, 0, Offset::Offset(workers as i64))?;
        consumer
            .commit(&list, rdkafka::consumer::CommitMode::Sync)
            .map_err(|e| anyhow!("kafka sink {sink}: cannot record this run's {workers} workers: {e}"))
    }

    fn open_writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
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
        let key_column = match &key {
            Some(KeyOf::CsvColumn(i)) => Some(*i),
            _ => None,
        };
        let (requests, inbox) = mpsc::channel::<Request>();
        let uri = self.uri.clone();
        let checkpointed = context.checkpointed;
        let id = transactional_id(&context.job, &context.sink, &self.uri.topic, context.worker);
        let first_epoch = context.first_epoch;
        let timeout = self.timeout;
        let worker = context.worker;
        let ends = Ends::default();
        let thread_ends = ends.clone();
        let (ready_tx, ready) = mpsc::channel();
        let name = format!("kafka-sink-w{}", context.worker);
        thread::Builder::new()
            .name(name)
            .spawn(move || {
                let client = if checkpointed {
                    TxnClient::new(&uri, &id, key, timeout, worker, thread_ends).and_then(|mut c| {
                        // A marker from an earlier run must not hide this run's epochs.
                        c.set_marker(first_epoch.saturating_sub(1))?;
                        c.start_ends()?;
                        Ok(Client::Txn(c))
                    })
                } else {
                    PlainClient::new(&uri, key, timeout).map(Client::Plain)
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
                        Request::Commit(epoch, output, reply) => (client.commit(epoch, &output), Some(reply)),
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
        Ok(Box::new(KafkaWriter {
            requests,
            checkpointed,
            buffered: Default::default(),
            waiting: None,
            ends,
            workers: context.workers,
            key_column,
        }))
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
            KeyOf::CsvColumn(i) => {
                let mut fields = Vec::new();
                split_csv_line(line, &mut fields).ok()?;
                fields.get(*i).map(|f| f.to_string())
            }
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

/// A worker's pre-committed epoch, as stored in the checkpoint.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct EpochOutput {
    /// The lines, in order; a line's index is its place here.
    lines: Vec<String>,
    /// Per partition, an offset before which no line of this epoch can be.
    scan_from: Vec<(i32, i64)>,
    /// The writing run's workers: a restore fences every one of their producers.
    workers: usize,
    /// With `format=csv` and `key=COLUMN`: the key column's index, so that a restore keys the
    /// lines it writes again as the run would have.
    key_column: Option<usize>,
}

/// The committable's layout before `key_column` (checkpoints of 2026-12-01).
#[derive(serde::Deserialize)]
struct EpochOutputV1 {
    lines: Vec<String>,
    scan_from: Vec<(i32, i64)>,
    workers: usize,
}

fn encode(output: &EpochOutput) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(output, bincode::config::standard()).context("cannot encode the epoch's lines")
}

fn decode(data: &[u8]) -> Result<EpochOutput> {
    let config = bincode::config::standard();
    match bincode::serde::decode_from_slice::<EpochOutput, _>(data, config) {
        Ok((output, used)) if used == data.len() => Ok(output),
        _ => {
            let (old, _): (EpochOutputV1, _) =
                bincode::serde::decode_from_slice(data, config).context("a Kafka sink committable is damaged")?;
            Ok(EpochOutput { lines: old.lines, scan_from: old.scan_from, workers: old.workers, key_column: None })
        }
    }
}

/// An offset per partition.
type Offsets = Vec<(i32, i64)>;

/// The `paystream` header of line `index` of `epoch` of `worker`.
fn line_id(worker: usize, epoch: u64, index: usize) -> String {
    format!("{worker}:{epoch}:{index}")
}

/// Offsets past every message delivered so far, per partition: shared by a writer (which puts
/// them in its committables) and its thread (which raises them after each transaction).
type Ends = Arc<std::sync::Mutex<BTreeMap<i32, i64>>>;

enum Request {
    /// Without checkpoints: produce these lines.
    Write(Vec<String>),
    /// Produce an epoch's lines in one transaction.
    Commit(u64, EpochOutput, Sender<Result<()>>),
    /// Flush everything.
    Finish(Sender<Result<()>>),
}

/// One worker's writer: hands work to its thread, never blocks the worker.
struct KafkaWriter {
    requests: Sender<Request>,
    checkpointed: bool,
    /// Lines by epoch, until their pre-commit.
    buffered: std::collections::BTreeMap<u64, Vec<String>>,
    /// The reply to the request under way (a commit or the finish).
    waiting: Option<Receiver<Result<()>>>,
    ends: Ends,
    workers: usize,
    key_column: Option<usize>,
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
        // Lines of the next epoch may come before this one's pre-commit.
        self.buffered.entry(epoch).or_default().extend(lines);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        let later = self.buffered.split_off(&(epoch + 1));
        let due = std::mem::replace(&mut self.buffered, later);
        let lines: Vec<String> = due.into_values().flatten().collect();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        let scan_from = self.ends.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(p, o)| (*p, *o)).collect();
        Ok(Progress::Ready(Some(encode(&EpochOutput { lines, scan_from, workers: self.workers, key_column: self.key_column })?)))
    }

    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<Progress> {
        if self.waiting.is_none() {
            let output = decode(committable)?;
            return self.progress(|reply| Request::Commit(epoch, output, reply));
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
    fn commit(&mut self, epoch: u64, output: &EpochOutput) -> Result<()> {
        match self {
            Client::Txn(c) => c.transaction(epoch, &output.lines.iter().enumerate().collect::<Vec<_>>()),
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

/// Produces `lines` (keyed by `key`, with their `paystream` header when given) to `topic`,
/// waiting while librdkafka's queue is full.
fn produce<'a>(
    producer: &BaseProducer<Health>,
    topic: &str,
    key: Option<&KeyOf>,
    lines: impl IntoIterator<Item = (Option<String>, &'a String)>,
) -> Result<()> {
    for (id, line) in lines {
        let k = key.and_then(|k| k.of(line));
        let mut record = BaseRecord::to(topic).payload(line.as_str());
        if let Some(k) = &k {
            record = record.key(k.as_str());
        }
        if let Some(id) = &id {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "paystream", value: Some(id.as_str()) }));
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
    brokers: String,
    timeout: Duration,
    id: String,
    worker: usize,
    key: Option<KeyOf>,
    producer: BaseProducer<Health>,
    health: Health,
    marker: BaseConsumer<Health>,
    config: rdkafka::config::ClientConfig,
    ends: Ends,
}

impl TxnClient {
    /// Creates the producer and fences earlier ones with the same id (aborting a transaction a
    /// crashed run left open).
    fn new(uri: &KafkaUri, id: &str, key: Option<KeyOf>, timeout: Duration, worker: usize, ends: Ends) -> Result<TxnClient> {
        let what = format!("kafka sink {id}");
        let health = Health::default();
        let producer: BaseProducer<Health> = uri
            .client_config()
            .set("transactional.id", id)
            .set("transaction.timeout.ms", "60000")
            .set("statistics.interval.ms", "0")
            .create_with_context(health.clone())
            .map_err(|e| anyhow!("{what}: cannot create a producer: {e}"))?;
        producer
            .init_transactions(timeout)
            .map_err(|e| anyhow!("{what}: cannot start transactions at {} within reconnect_timeout={timeout:?}: {e}", uri.brokers))?;
        let marker: BaseConsumer<Health> = uri
            .client_config()
            .set("group.id", id)
            .set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "0")
            .set("isolation.level", "read_committed")
            .create_with_context(Health::default())
            .map_err(|e| anyhow!("{what}: cannot create the marker consumer: {e}"))?;
        Ok(TxnClient {
            topic: uri.topic.clone(),
            brokers: uri.brokers.clone(),
            timeout,
            id: id.to_string(),
            worker,
            key,
            producer,
            health,
            marker,
            config: uri.client_config(),
            ends,
        })
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
            .committed_offsets(self.marker_partition(Offset::Invalid)?, self.timeout)
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

    /// Where the partitions end now, as the start of what the first epoch's redo would read.
    /// (Tansu answers ListOffsets(latest) with an offset at or before the end: reading from
    /// there is safe, only longer.)
    fn start_ends(&mut self) -> Result<()> {
        let what = format!("kafka sink {}", self.id);
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| anyhow!("{what}: cannot read the topic's partitions: {e}"))?;
        let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        let mut ends = BTreeMap::new();
        for p in 0..partitions {
            let (_, high) = self
                .producer
                .client()
                .fetch_watermarks(&self.topic, p, self.timeout)
                .map_err(|e| anyhow!("{what}: cannot read where partition {p} ends: {e}"))?;
            ends.insert(p, high.max(0));
        }
        *self.ends.lock().unwrap_or_else(|e| e.into_inner()) = ends;
        Ok(())
    }

    /// The indexes of the lines of `epoch` (of this worker) a `read_committed` consumer sees,
    /// reading each partition from `scan_from` to its end.
    ///
    /// A read-committed read stops before the first transaction still open: had one of the
    /// crashed run's transactions not been aborted yet, lines it holds back would be taken for
    /// missing and written twice. So the read is trusted only when it reached the end a
    /// read-uncommitted read finds; while it does not, it is done again, and after
    /// `reconnect_timeout` the restore fails naming the partition and offset.
    fn visible_lines(&self, epoch: u64, scan_from: &[(i32, i64)]) -> Result<BTreeSet<usize>> {
        let what = format!("kafka sink {}", self.id);
        let deadline = std::time::Instant::now() + self.timeout;
        let prefix = format!("{}:{epoch}:", self.worker);
        loop {
            // Each read may take its time: the last one (past the deadline) tells what is open.
            let read_by = deadline.max(std::time::Instant::now() + Duration::from_secs(5));
            let (_, ends) = self.scan("read_uncommitted", scan_from, None, None, read_by)?;
            let (seen, stable) = self.scan("read_committed", scan_from, Some(&prefix), Some(&ends), read_by)?;
            let open: Vec<(i32, i64, i64)> =
                stable.iter().zip(&ends).filter(|((_, s), (_, e))| e > s).map(|((p, s), (_, e))| (*p, *s, *e)).collect();
            if open.is_empty() {
                tracing::debug!("{what}: epoch {epoch}: read {scan_from:?} to {stable:?}: {} lines visible", seen.len());
                return Ok(seen);
            }
            if std::time::Instant::now() > deadline {
                let (p, s, e) = open[0];
                bail!(
                    "{what}: read-committed reads of partition {p} of topic {} stop at offset {s}, before its end {e}: a \
                     transaction is open there (another producer's, or one the broker failed to abort), and what epoch \
                     {epoch} left behind it cannot be checked within reconnect_timeout={:?}; writing it again could \
                     duplicate it, so the restore stops",
                    self.topic,
                    self.timeout
                );
            }
            tracing::info!("{what}: transactions open in {open:?} (partition, last stable offset, end): reading again");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Reads every partition of the topic from `from` (offset 0 where not given) to its end, with
    /// the isolation level given; returns the indexes of the lines whose `paystream` header
    /// starts with `prefix`, and where each partition's read ended. Given `until`, a partition
    /// also ends there, or where it stands once nothing came for a second (a read-committed read
    /// held back by an open transaction gets neither data nor an end).
    fn scan(
        &self,
        isolation: &str,
        from: &[(i32, i64)],
        prefix: Option<&str>,
        until: Option<&[(i32, i64)]>,
        deadline: std::time::Instant,
    ) -> Result<(BTreeSet<usize>, Offsets)> {
        let what = format!("kafka sink {}", self.id);
        let consumer: BaseConsumer<Health> = self
            .config
            .clone()
            .set("group.id", format!("{}.recovery", self.id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .set("statistics.interval.ms", "0")
            .create_with_context(Health::default())
            .map_err(|e| anyhow!("{what}: cannot create a consumer: {e}"))?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| anyhow!("{what}: cannot read the topic's partitions: {e}"))?;
        let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        let mut assignment = TopicPartitionList::new();
        // Where each partition's read stands.
        let mut at = BTreeMap::new();
        for p in 0..partitions {
            // Explicit offsets: Tansu 0.6 answers ListOffsets(earliest) wrongly too.
            let start = from.iter().find(|(q, _)| *q == p).map_or(0, |(_, o)| *o);
            assignment.add_partition_offset(&self.topic, p, Offset::Offset(start))?;
            at.insert(p, start);
        }
        consumer.assign(&assignment).map_err(|e| anyhow!("{what}: cannot read the topic: {e}"))?;
        let limit = |p: i32| until.and_then(|u| u.iter().find(|(q, _)| *q == p)).map(|(_, o)| *o);
        let mut ended: BTreeMap<i32, i64> =
            at.iter().filter(|(p, o)| limit(**p).is_some_and(|l| **o >= l)).map(|(p, o)| (*p, *o)).collect();
        let mut seen = BTreeSet::new();
        let mut last_data = std::time::Instant::now();
        while (ended.len() as i32) < partitions {
            if std::time::Instant::now() > deadline {
                bail!("{what}: reading what a crashed run left took longer than reconnect_timeout={:?}", self.timeout);
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {
                    if until.is_some() && last_data.elapsed() > Duration::from_secs(1) {
                        for (p, o) in &at {
                            ended.entry(*p).or_insert(*o);
                        }
                    }
                }
                Some(Ok(m)) => {
                    last_data = std::time::Instant::now();
                    let p = m.partition();
                    at.insert(p, m.offset() + 1);
                    if limit(p).is_some_and(|l| m.offset() + 1 >= l) {
                        ended.entry(p).or_insert(m.offset() + 1);
                    }
                    let (Some(prefix), Some(headers)) = (prefix, m.headers()) else { continue };
                    for h in headers.iter().filter(|h| h.key == "paystream") {
                        let id = h.value.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
                        if let Some(index) = id.strip_prefix(prefix).and_then(|i| i.parse::<usize>().ok()) {
                            seen.insert(index);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    last_data = std::time::Instant::now();
                    // The end of the partition: past the last message, and past control records
                    // (transaction markers) after it, which the consumer skips.
                    let position = consumer.position().map_err(|e| anyhow!("{what}: cannot read the position: {e}"))?;
                    let end = position
                        .find_partition(&self.topic, p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .unwrap_or(at[&p]);
                    ended.entry(p).or_insert(end.max(at[&p]));
                }
                Some(Err(e)) => tracing::debug!("{what}: {e}"),
            }
        }
        Ok((seen, ended.into_iter().collect()))
    }

    /// Produces `lines` (with their indexes) and commits `epoch` as the marker, in one
    /// transaction.
    fn transaction(&mut self, epoch: u64, lines: &[(usize, &String)]) -> Result<()> {
        let what = format!("kafka sink {}", self.id);
        let late = format!("(no answer from {} within reconnect_timeout={:?}?)", self.brokers, self.timeout);
        self.producer.begin_transaction().map_err(|e| anyhow!("{what}: cannot begin a transaction: {e}"))?;
        let worker = self.worker;
        let tagged = lines.iter().map(|(i, line)| (Some(line_id(worker, epoch, *i)), *line));
        let result = produce(&self.producer, &self.topic, self.key.as_ref(), tagged).and_then(|()| {
            // Every line on the broker before the marker is added: Tansu 0.6 records a
            // transaction's offset commit at once, not at its end, so a marker sent while lines
            // still sat in the client's queue would outlive them in a crash.
            self.producer.flush(self.timeout).map_err(|e| anyhow!("{what}: cannot send epoch {epoch}: {e} {late}"))?;
            let group = self.marker.group_metadata().ok_or_else(|| anyhow!("{what}: no group metadata"))?;
            self.producer
                .send_offsets_to_transaction(&self.marker_partition(Offset::Offset(epoch as i64))?, &group, self.timeout)
                .map_err(|e| anyhow!("{what}: cannot add the epoch marker to the transaction: {e} {late}"))?;
            if !lines.is_empty() {
                // Recovery tests crash here: lines produced, transaction open.
                paystream_engine::faults::point("kafka:before-commit");
            }
            self.producer.commit_transaction(self.timeout).map_err(|e| anyhow!("{what}: cannot commit epoch {epoch}: {e} {late}"))
        });
        if result.is_err() {
            // Best effort: a restore fences this transactional id, which aborts it anyway.
            let _ = self.producer.abort_transaction(ABORT_TIMEOUT.min(self.timeout));
            return result;
        }
        // Delivery reports of the transaction are in: later epochs' lines lie past them.
        self.producer.poll(Duration::ZERO);
        let delivered = self.health.state().delivered.clone();
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        for (p, end) in delivered {
            let e = ends.entry(p).or_insert(0);
            *e = (*e).max(end);
        }
        Ok(())
    }
}

/// A worker's idempotent producer, for runs without checkpoints.
struct PlainClient {
    topic: String,
    timeout: Duration,
    key: Option<KeyOf>,
    producer: BaseProducer<Health>,
    health: Health,
    failure: Option<anyhow::Error>,
}

impl PlainClient {
    fn new(uri: &KafkaUri, key: Option<KeyOf>, timeout: Duration) -> Result<PlainClient> {
        let health = Health::default();
        let producer: BaseProducer<Health> = uri
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("statistics.interval.ms", "0")
            .create_with_context(health.clone())
            .map_err(|e| anyhow!("kafka sink: cannot create a producer: {e}"))?;
        Ok(PlainClient { topic: uri.topic.clone(), timeout, key, producer, health, failure: None })
    }
    fn write(&mut self, lines: &[String]) -> Result<()> {
        if self.failure.is_some() {
            return Ok(());
        }
        produce(&self.producer, &self.topic, self.key.as_ref(), lines.iter().map(|l| (None, l)))
    }
    fn flush(&mut self) -> Result<()> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.producer
            .flush(self.timeout)
            .map_err(|e| anyhow!("cannot flush to kafka topic {} within reconnect_timeout={:?}: {e}", self.topic, self.timeout))?;
        if let Some(e) = self.health.state().delivery_error.clone() {
            bail!("kafka topic {}: a message was not delivered: {e}", self.topic);
        }
        Ok(())
    }
}
