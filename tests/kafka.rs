//! The `kafka://` connectors against a real Kafka-protocol broker (Tansu in CI: see `.ci/run`).
//!
//! The broker is `PAYSTREAM_KAFKA` (default `127.0.0.1:9092`). Without one, these tests print a
//! loud SKIP and pass, except under `CI=true`, where they fail. The outage test starts its own
//! broker from `PAYSTREAM_TANSU` (the Tansu binary `.ci/run` installs) behind a proxy it can cut.
//!
//! `PAYSTREAM_KAFKA_KILLS` sets how many `kill -9`s the exactly-once test makes (default 10).

#[macro_use]
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use proxy::{free_port, Proxy};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const WINDOWS_HEADER: &str =
    "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents";

/// One test at a time: they share the broker, and on two cores with a broker beside them, a
/// kill -9 that lands inside a transaction's commit under full load has once left Tansu 0.6 with
/// that transaction open after its producer was fenced (its last stable offset stuck), which no
/// Kafka broker does (see the README, "Kafka").
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker's address, or `None` (after a loud message) when none answers outside CI.
fn broker(test: &str) -> Option<String> {
    let address = std::env::var("PAYSTREAM_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let answers = TcpStream::connect_timeout(&address.parse().expect("PAYSTREAM_KAFKA is HOST:PORT"), Duration::from_secs(2)).is_ok();
    let missing = format!("no Kafka broker answers at {address} (set PAYSTREAM_KAFKA, or run .ci/run, which starts one)");
    service_available(test, answers, &missing).then_some(address)
}

/// A topic name no other run uses.
fn topic(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("t-{tag}-{}-{nanos}", std::process::id())
}

/// Every committed message of `topic`, read with `isolation.level=read_committed`.
fn read_topic(broker: &str, topic: &str) -> Vec<String> {
    read_topic_as(broker, topic, "read_committed")
}

/// Every message of `topic`, read with the isolation level given.
fn read_topic_as(broker: &str, topic: &str, isolation: &str) -> Vec<String> {
    read_partitions(broker, topic, isolation).into_iter().map(|(_, line)| line).collect()
}

/// Every message of `topic` with its partition, read with the isolation level given.
fn read_partitions(broker: &str, topic: &str, isolation: &str) -> Vec<(i32, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "paystream-test-reader")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        // Offset 0, not Offset::Beginning: Tansu 0.6 answers ListOffsets(earliest) with a later
        // batch's offset at times (16 where the partition starts at 0), and the read would miss
        // the first transaction's lines.
        assignment.add_partition_offset(topic, p, Offset::Offset(0)).expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut ended = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading {topic}: partitions {ended:?} of {partitions} ended after 30 s");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => lines.push((m.partition(), String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    lines
}

/// Produces `payloads` to one partition of `topic` (which exists).
fn produce(broker: &str, topic: &str, partition: i32, payloads: &[&str]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", broker).create().expect("producer");
    for p in payloads {
        producer.send(BaseRecord::<(), str>::to(topic).partition(partition).payload(p)).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// Loads the generated payments `generator` (`count=N,...`) into a new topic of 4 partitions.
fn load_payments(dir: &TempDir, broker: &str, topic: &str, generator: &str) {
    run(
        "load",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            format!("payments=kafka://{broker}/{topic}?partitions=4"),
        ],
        dir.path(),
    )
    .assert_success();
}

/// The windows of the generated payments `generator`, computed without a broker.
fn reference_windows(dir: &TempDir, generator: &str) -> Vec<String> {
    let out = dir.join("reference.csv");
    run(
        "reference",
        args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            format!("windows={}", file_uri(&out))
        ],
        dir.path(),
    )
    .assert_success();
    let mut lines = data_lines(&out, WINDOWS_HEADER);
    lines.sort();
    lines
}

#[test]
fn bounded_kafka_source_gives_the_windows_of_the_same_payments_from_a_file() {
    let _serial = serial();
    let Some(broker) = broker("bounded_kafka_source_gives_the_windows_of_the_same_payments_from_a_file") else { return };
    let dir = TempDir::new("kafka-bounded");
    let input = topic("bounded");
    load_payments(&dir, &broker, &input, "count=8000");
    // Two undecodable messages, for dead letters.
    produce(&broker, &input, 2, &["{\"ts_ms\": \"soon\"}", "not json"]);
    let expected = reference_windows(&dir, "count=8000");
    assert!(expected.len() > 100, "the reference has windows: {}", expected.len());
    for workers in ["1", "2"] {
        let out = dir.join(&format!("kafka-{workers}.csv"));
        let dead = dir.join(&format!("dead-{workers}.csv"));
        let run = run(
            "kafka",
            args![
                "run",
                "throughput-windows",
                "-w",
                workers,
                "--source",
                format!("payments=kafka://{broker}/{input}?bounded=true"),
                "--sink",
                format!("windows={}", file_uri(&out)),
                "--sink",
                format!("dead_letters={}", file_uri(&dead)),
            ],
            dir.path(),
        );
        run.assert_success();
        let mut actual = data_lines(&out, WINDOWS_HEADER);
        actual.sort();
        assert_same(&format!("windows from kafka, {workers} worker(s)"), &expected, &actual);
        let dead = read(&dead);
        assert_eq!(dead.lines().count(), 3, "two dead letters and the header:\n{dead}");
        assert!(dead.contains(&format!("kafka topic {input} partition 2")), "dead letters name topic and partition:\n{dead}");
    }
}

/// A producer that keeps the event time in the message's timestamp and the merchant in its key,
/// not in the payload: `timestamp_field=` and `key_field=` give them to the job as the fields its
/// records declare, and the windows are those of the full payments.
#[test]
fn message_keys_and_timestamps_reach_the_job_as_fields() {
    let _serial = serial();
    let Some(broker) = broker("message_keys_and_timestamps_reach_the_job_as_fields") else { return };
    let dir = TempDir::new("kafka-metadata");
    let generator = "count=3000";
    let file = dir.join("payments.jsonl");
    run(
        "generate",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            format!("payments={}", file_uri(&file))
        ],
        dir.path(),
    )
    .assert_success();
    let input = topic("metadata");
    let admin_run = run(
        "create",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            "payments=gen:count=0",
            "--sink",
            format!("payments=kafka://{broker}/{input}?partitions=2")
        ],
        dir.path(),
    );
    admin_run.assert_success();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker).create().expect("producer");
    let mut sent = 0;
    for line in read(&file).lines() {
        let mut value: serde_json::Value = serde_json::from_str(line).expect("a JSON payment");
        let object = value.as_object_mut().expect("an object");
        let ts = object.remove("ts_ms").and_then(|v| v.as_i64()).expect("ts_ms");
        let merchant = object.remove("merchant_id").expect("merchant_id").to_string();
        let payload = value.to_string();
        let record = BaseRecord::<str, str>::to(&input).key(&merchant).payload(&payload).timestamp(ts);
        producer.send(record).expect("send");
        producer.poll(Duration::ZERO);
        sent += 1;
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    assert_eq!(sent, 3000);
    let expected = reference_windows(&dir, generator);
    let out = dir.join("windows.csv");
    let dead = dir.join("dead.csv");
    run(
        "kafka",
        args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            format!("payments=kafka://{broker}/{input}?bounded=true&key_field=merchant_id&timestamp_field=ts_ms"),
            "--sink",
            format!("windows={}", file_uri(&out)),
            "--sink",
            format!("dead_letters={}", file_uri(&dead)),
        ],
        dir.path(),
    )
    .assert_success();
    let mut actual = data_lines(&out, WINDOWS_HEADER);
    actual.sort();
    assert_same("windows of payments whose merchant and time are the message's key and timestamp", &expected, &actual);
    assert_eq!(read(&dead).lines().count(), 1, "no dead letters:\n{}", read(&dead));
}

/// With checkpoints, the source commits what each completed checkpoint covers as the offsets of
/// its consumer group (`group=`), for lag monitors; restores do not read them.
#[test]
fn completed_checkpoints_show_as_consumer_group_offsets() {
    let _serial = serial();
    let Some(broker) = broker("completed_checkpoints_show_as_consumer_group_offsets") else { return };
    let dir = TempDir::new("kafka-group");
    let input = topic("group");
    load_payments(&dir, &broker, &input, "count=8000");
    let group = format!("monitor-{input}");
    run(
        "checkpointed read",
        args![
            "run",
            "throughput-windows",
            "-q",
            "--rate",
            "4000",
            "--source",
            format!("payments=kafka://{broker}/{input}?bounded=true&group={group}"),
            "--sink",
            format!("windows={}", file_uri(&dir.join("w.csv"))),
            "--checkpoint-dir",
            dir.join("chk").display(),
            "--checkpoint-interval",
            "100ms"
        ],
        dir.path(),
    )
    .assert_success();
    let mut ends = std::collections::BTreeMap::new();
    for (partition, _) in read_partitions(&broker, &input, "read_committed") {
        *ends.entry(partition).or_insert(0i64) += 1;
    }
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &broker).set("group.id", &group).create().expect("consumer");
    let mut asked = TopicPartitionList::new();
    for p in ends.keys() {
        asked.add_partition_offset(&input, *p, Offset::Invalid).expect("partition");
    }
    let committed = consumer.committed_offsets(asked, Duration::from_secs(10)).expect("committed offsets");
    let mut total = 0;
    for e in committed.elements() {
        let end = ends[&e.partition()];
        if let Offset::Offset(o) = e.offset() {
            assert!(o <= end, "partition {}: committed {o} past its end {end}", e.partition());
            total += o;
        }
    }
    // 2 s of input at --rate 4000 with a checkpoint every 100 ms: most of it is covered by a
    // completed checkpoint before the end.
    assert!(total >= 4000, "group {group} committed {total} of 8000 offsets: {committed:?}");
}

/// A live job without checkpoints passes every record on while its topic is quiet: the last ones
/// read are not held until more input moves the watermark (they once were, for good).
#[test]
fn a_quiet_topic_s_last_records_reach_the_output_at_once() {
    let _serial = serial();
    let Some(broker) = broker("a_quiet_topic_s_last_records_reach_the_output_at_once") else { return };
    let dir = TempDir::new("kafka-quiet");
    let (input, output) = (topic("quiet-in"), topic("quiet-out"));
    load_payments(&dir, &broker, &input, "count=500");
    let job = spawn(
        "live pass-through",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            format!("payments=kafka://{broker}/{input}"),
            "--sink",
            format!("payments=kafka://{broker}/{output}?partitions=2"),
        ],
        dir.path(),
    );
    let wait_for = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let exists = ClientConfig::new()
                .set("bootstrap.servers", &broker)
                .create::<BaseConsumer>()
                .ok()
                .and_then(|c| c.fetch_metadata(Some(&output), Duration::from_secs(5)).ok())
                .is_some_and(|m| m.topics().first().is_some_and(|t| !t.partitions().is_empty()));
            if exists {
                seen = read_topic(&broker, &output).len();
                if seen >= count {
                    break;
                }
            }
        }
        seen
    };
    let first = wait_for(500);
    // Then a few more on one partition only: the others, quiet, hold the watermark where it is,
    // and these records' time stays incomplete until they move.
    let later: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"ts_ms":1767229200000,"txn_id":"late{i}","card_id":1,"merchant_id":2,"amount_cents":100,"currency":"EUR","country":"DE","status":"APPROVED"}}"#
            )
        })
        .collect();
    produce(&broker, &input, 1, &later.iter().map(String::as_str).collect::<Vec<_>>());
    let second = wait_for(520);
    let outcome = kill_after(job, Duration::ZERO);
    assert_eq!((first, second), (500, 520), "payments on the output topic while the job ran; its stderr:\n{}", outcome.stderr);
}

/// The live pipeline of the README, bounded: `generate-events` loads payments, authorizations
/// and blocked cards into topics (a sticky partitioner puts blocks of consecutive payments in
/// each partition, so the partitions are seconds apart in event time), and `fraud-detection`
/// reading them gives the alerts of the generators. With the sources far apart, flow control
/// must keep reading the partitions that hold the watermark back, or the job stops.
#[test]
fn fraud_detection_from_topics_gives_the_alerts_of_the_generators() {
    let _serial = serial();
    let Some(broker) = broker("fraud_detection_from_topics_gives_the_alerts_of_the_generators") else { return };
    let dir = TempDir::new("kafka-fraud");
    let (payments, authorizations, blocked) = (topic("payments"), topic("authorizations"), topic("blocked"));
    let sources = |uri: &dyn Fn(&str) -> String| {
        args![
            "--source",
            format!("payments={}", uri("payments")),
            "--source",
            format!("authorizations={}", uri("authorizations")),
            "--source",
            format!("blocked_cards={}", uri("blocked_cards"))
        ]
    };
    let generators = |name: &str| match name {
        "blocked_cards" => "gen:count=200".to_string(),
        _ => "gen:count=50000".to_string(),
    };
    let topic_of = |name: &str| match name {
        "payments" => payments.clone(),
        "authorizations" => authorizations.clone(),
        _ => blocked.clone(),
    };
    let mut load = args!["run", "generate-events", "-q", "--source", "adjustments=gen:count=10"];
    load.extend(sources(&generators));
    for name in ["payments", "authorizations", "blocked_cards"] {
        load.extend(args!["--sink", format!("{name}=kafka://{broker}/{}?partitions=4", topic_of(name))]);
    }
    load.extend(args!["--sink", format!("adjustments={}", file_uri(&dir.join("adjustments.csv")))]);
    run("load", load, dir.path()).assert_success();
    let alerts = |label: &str, uri: &dyn Fn(&str) -> String| {
        let out = dir.join(&format!("{label}.csv"));
        let mut a = args!["run", "fraud-detection", "-q", "--sink", format!("alerts={}", file_uri(&out))];
        a.extend(sources(uri));
        run(label, a, dir.path()).assert_success();
        let mut lines: Vec<String> = read(&out).lines().skip(1).map(String::from).collect();
        lines.sort();
        lines
    };
    let expected = alerts("generators", &generators);
    let actual = alerts("topics", &|name| format!("kafka://{broker}/{}?bounded=true", topic_of(name)));
    assert!(expected.len() > 10, "alerts: {}", expected.len());
    assert_same("alerts from the topics", &expected, &actual);

    // Live (unbounded) payments beside generators that end at once: the payments' partitions,
    // seconds apart in event time, must all be read although flow control is full.
    let mut live = args!["run", "fraud-detection", "--sink", format!("alerts={}", file_uri(&dir.join("live.csv")))];
    live.extend(sources(&|name| match name {
        "payments" => format!("kafka://{broker}/{payments}"),
        other => generators(other),
    }));
    let outcome = kill_after(spawn("live", live, dir.path()), Duration::from_secs(8));
    let last = outcome.stderr.lines().rfind(|l| l.contains("events read")).unwrap_or_default().to_string();
    // 50,000 payments and authorizations, 200 blocked cards, and the 5 rule changes of the default
    // rules source.
    assert!(last.contains("100,205 events read"), "every event read within 8 s; the last progress line: {last:?}\n{}", outcome.stderr);
}

/// A live topic with a partition that never gets a message: it holds the watermark back, and no
/// window fires, unless the source URI says `idle_after=`. Then it stops holding it once quiet
/// for that long, and when the other partition goes quiet too, the other one (active last) holds
/// the watermark where its records put it.
#[test]
fn idle_after_lets_a_quiet_partition_stop_holding_the_watermark() {
    let _serial = serial();
    let Some(broker) = broker("idle_after_lets_a_quiet_partition_stop_holding_the_watermark") else { return };
    let dir = TempDir::new("kafka-idle");
    let input = topic("idle-in");
    // A topic of two partitions, with every payment in one of them.
    let sample = dir.join("payments.jsonl");
    run(
        "sample",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            "payments=gen:count=3000,events_per_sec=100",
            "--sink",
            format!("payments={}", file_uri(&sample))
        ],
        dir.path(),
    )
    .assert_success();
    run(
        "create",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            "payments=gen:count=1,start_ms=0",
            "--sink",
            format!("payments=kafka://{broker}/{input}?partitions=2")
        ],
        dir.path(),
    )
    .assert_success();
    let lines = read(&sample);
    // The message the topic was created with (event time 0) is not late for anything, and not
    // in a window with the others: the payments go after it, into its partition, so that the
    // other one is empty. (Were it the other's only message, read after the payments, that
    // partition would rightly hold the watermark once both went quiet: see
    // `last_active_watermark` in engine/src/source.rs.)
    let created = read_partitions(&broker, &input, "read_uncommitted");
    assert_eq!(created.len(), 1, "the topic was created with one message: {created:?}");
    produce(&broker, &input, created[0].0, &lines.lines().collect::<Vec<_>>());
    let windows_after = |label: &str, idle: &str, workers: usize| {
        let output = topic(label);
        let a = args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            format!("payments=kafka://{broker}/{input}{idle}"),
            "--sink",
            format!("windows=kafka://{broker}/{output}?format=csv"),
            "--checkpoint-dir",
            dir.join(&format!("chk-{label}")).display(),
            "--checkpoint-interval",
            "200ms",
            "--workers",
            workers
        ];
        // Stopped by SIGTERM: a savepoint, and every transaction committed.
        let running = spawn(label, a, dir.path());
        std::thread::sleep(Duration::from_secs(8));
        // SAFETY: a plain kill(2) of the child's pid.
        unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
        let outcome = wait_all(vec![running]).pop().expect("one outcome");
        assert_eq!(outcome.code, Some(0), "{label}: a live source runs until stopped, then takes a savepoint: {outcome:?}");
        let mut windows = read_topic(&broker, &output);
        windows.sort();
        eprintln!("{label}: {} windows in topic {output}", windows.len());
        windows
    };
    assert_eq!(windows_after("held", "", 1).len(), 0, "the empty partition holds the watermark at its start");
    let fired = windows_after("idle", "?idle_after=1s", 1);
    assert!(fired.len() > 10, "with idle_after=1s the windows of the payments' partition fire: {}", fired.len());
    // Two workers, a partition each: the one whose partition is empty follows the other's
    // watermark once it is idle, instead of holding the job's.
    let two = windows_after("idle2", "?idle_after=1s", 2);
    assert_same("the windows of two workers, one with the empty partition", &fired, &two);
}

#[test]
fn a_broker_that_does_not_answer_is_a_clear_error() {
    let _serial = serial();
    // Port 1 on loopback: nothing listens there.
    let dir = TempDir::new("kafka-down");
    let started = Instant::now();
    let out = run(
        "no broker",
        args!["run", "throughput-windows", "--source", "payments=kafka://127.0.0.1:1/payments?connect_timeout=2s"],
        dir.path(),
    );
    assert!(matches!(out.code, Some(c) if c != 0), "a failed start: {out:?}");
    assert!(out.stderr.contains("no Kafka broker at 127.0.0.1:1 answered"), "the error names the address:\n{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(20), "the error came after {:?}", started.elapsed());
}

fn kill_after(mut running: Running, after: Duration) -> Outcome {
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if running.child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    running.child.kill().ok();
    wait_all(vec![running]).pop().expect("one outcome")
}

#[test]
#[ignore = "in about 1 run of 6 Tansu 0.6 keeps a fenced transaction open for good (read-committed reads stop at it), and the restore rightly refuses to guess; see README, Kafka"]
fn kafka_to_kafka_is_exactly_once_after_kill_9_and_restores_at_other_worker_counts() {
    let _serial = serial();
    let Some(broker) = broker("kafka_to_kafka_is_exactly_once_after_kill_9_and_restores_at_other_worker_counts") else { return };
    let kills: usize = std::env::var("PAYSTREAM_KAFKA_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = TempDir::new("kafka-kill");
    // 200 s of event time read in 10 s (--rate 4000): a window closes about every half second,
    // so most epochs have output, and crashes meet transactions with lines in them.
    let generator = "count=40000,events_per_sec=200";
    let input = topic("kill-in");
    let output = topic("kill-out");
    load_payments(&dir, &broker, &input, generator);
    let expected = reference_windows(&dir, generator);
    let chk = dir.join("chk");
    let job = |workers: u64, rate: bool, restore: bool| {
        let mut a = args![
            "run",
            "throughput-windows",
            "-q",
            "-w",
            workers,
            "--source",
            format!("payments=kafka://{broker}/{input}?bounded=true"),
            "--sink",
            format!("windows=kafka://{broker}/{output}?format=csv&key=merchant_id&partitions=2"),
            "--sink",
            format!("late_payments={}", file_uri(&dir.join("late.csv"))),
            "--checkpoint-dir",
            chk.display(),
            "--checkpoint-interval",
            "100ms"
        ];
        if rate {
            a.extend(args!["--rate", "4000"]);
        }
        if restore {
            a.extend(args!["--restore", "latest"]);
        }
        a
    };
    // Seeded: the same kill moments on every run.
    let mut rng = Rng(0x006b_6166_6b61);
    let (mut crashed, mut restored, mut finished) = (0, 0, false);
    for i in 0..kills {
        let workers = 1 + rng.below(2);
        let restore = has_checkpoint(&chk);
        if !restore {
            std::fs::remove_dir_all(&chk).ok();
        }
        restored += usize::from(restore);
        // A third of the crashes come inside the sink's transaction (lines produced, not
        // committed), a third between a checkpoint's pre-commit and its commit, the rest at a
        // random moment.
        let (what, env) = match i % 3 {
            1 => ("inside a transaction", Some(format!("kafka:before-commit:{}", 1 + rng.below(4)))),
            2 => ("between pre-commit and commit", Some(format!("sink:before-publish:{}", 1 + rng.below(6)))),
            _ => ("at a random moment", None),
        };
        let env: Vec<(&str, &str)> = env.as_deref().map(|v| ("PAYSTREAM_CRASH_AT", v)).into_iter().collect();
        let mut running = spawn_env("crashing run", job(workers, true, restore), dir.path(), &env);
        // A fresh run is killed once it has written a checkpoint (so that a loaded machine, where
        // a job starts slowly, still restores), a restored one at once; either after a random
        // delay.
        if !restore {
            wait_for_checkpoint(&mut running, &chk, Duration::from_secs(20));
        }
        let outcome = kill_after(running, Duration::from_millis(rng.below(1500)));
        eprintln!("run {i} ({workers} worker(s), restored: {restore}): crash {what}: exit {:?}", outcome.code);
        for line in outcome.stderr.lines().filter(|l| l.contains("kafka sink")) {
            eprintln!("    {line}");
        }
        if outcome.code == Some(0) {
            finished = true;
            break;
        }
        crashed += 1;
    }
    if !finished {
        let workers = 1 + rng.below(2);
        let restore = has_checkpoint(&chk);
        run("last run", job(workers, false, restore), dir.path()).assert_success();
    }
    assert!(crashed >= kills.min(5), "only {crashed} of {kills} runs crashed before the input ended: the test tests too little");
    assert!(restored >= crashed.min(4) - 1, "only {restored} restores from a checkpoint");
    // Read committed, as the consumers of a payment topic read (PAYSTREAM_KAFKA_ISOLATION
    // changes it, to look at what a failed run left).
    let isolation = std::env::var("PAYSTREAM_KAFKA_ISOLATION").unwrap_or_else(|_| "read_committed".into());
    let read = read_partitions(&broker, &output, &isolation);
    // Keyed by merchant (key=merchant_id): lines a restore wrote again are keyed as the run would
    // have keyed them, so each merchant's windows are in one partition.
    let mut partition_of = std::collections::BTreeMap::new();
    for (partition, line) in &read {
        let merchant = line.split(',').nth(2).expect("a windows line").to_string();
        let first = *partition_of.entry(merchant.clone()).or_insert(*partition);
        assert_eq!(first, *partition, "merchant {merchant}'s windows are in partitions {first} and {partition}");
    }
    let mut actual: Vec<String> = read.into_iter().map(|(_, line)| line).collect();
    actual.sort();
    assert_same(&format!("windows read back ({isolation}) after the crashes"), &expected, &actual);
}

/// A Tansu broker of the test's own, on a free port, advertised at `advertised`.
struct OwnBroker(Child);

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn a_broker_away_for_seconds_is_reconnected_and_one_away_too_long_fails_the_job_which_restores() {
    let _serial = serial();
    let test = "a_broker_away_for_seconds_is_reconnected_and_one_away_too_long_fails_the_job_which_restores";
    let tansu = std::env::var("PAYSTREAM_TANSU").ok();
    if !service_available(test, tansu.is_some(), "PAYSTREAM_TANSU does not name a Tansu binary (.ci/run installs one)") {
        return;
    }
    let tansu = tansu.expect("checked above");
    let (broker_port, proxy_port) = (free_port(), free_port());
    // The broker advertises the proxy, so every client connection goes through it.
    let _broker = OwnBroker(
        std::process::Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{broker_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{proxy_port}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", broker_port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut proxy = Proxy::new(proxy_port, broker_port);
    let broker = format!("127.0.0.1:{proxy_port}");
    let dir = TempDir::new("kafka-outage");
    let generator = "count=12000,events_per_sec=500";
    let (input, output) = (topic("outage-in"), topic("outage-out"));
    load_payments(&dir, &broker, &input, generator);
    let expected = reference_windows(&dir, generator);
    let chk = dir.join("chk");
    let job = |reconnect: &str, restore: bool| {
        let mut a = args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            format!("payments=kafka://{broker}/{input}?bounded=true&reconnect_timeout={reconnect}"),
            "--sink",
            format!("windows=kafka://{broker}/{output}?format=csv&reconnect_timeout={reconnect}"),
            "--checkpoint-dir",
            chk.display(),
            "--checkpoint-interval",
            "200ms",
            "--rate",
            "2000"
        ];
        if restore {
            a.extend(args!["--restore", "latest"]);
        }
        a
    };

    // Away for 3 s of a 6 s run: the job goes on.
    let running = spawn("outage", job("60s", false), dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    proxy.stop();
    std::thread::sleep(Duration::from_secs(3));
    proxy.start();
    let first = wait_all(vec![running]).pop().expect("outcome");
    first.assert_success();
    let mut actual = read_topic(&broker, &output);
    actual.sort();
    assert_same("windows after a 3 s outage", &expected, &actual);

    // Away past reconnect_timeout: exit 1 with the reason; a restore finishes exactly-once.
    let output2 = topic("outage-out2");
    let job2 = |restore: bool| {
        job("2s", restore).into_iter().map(|a| a.replace(&format!("/{output}?"), &format!("/{output2}?"))).collect::<Vec<String>>()
    };
    std::fs::remove_dir_all(&chk).ok();
    let mut running = spawn("too long", job2(false), dir.path());
    // Cut once a checkpoint is complete, so there is one to restore (a loaded machine may take
    // longer than a second to start the job and its transactions).
    wait_for_checkpoint(&mut running, &chk, Duration::from_secs(30));
    assert!(has_checkpoint(&chk), "the job took a checkpoint before the cut");
    let cut = Instant::now();
    proxy.stop();
    let failed = wait_all(vec![running]).pop().expect("outcome");
    assert_eq!(failed.code, Some(1), "a broker away past reconnect_timeout fails the job: {failed:?}");
    assert!(failed.stderr.contains("reconnect_timeout=2s"), "the error says why:\n{}", failed.stderr);
    assert!(
        cut.elapsed() < Duration::from_secs(20),
        "the job failed {:?} after the cut, not soon after reconnect_timeout=2s:\n{}",
        cut.elapsed(),
        failed.stderr
    );
    proxy.start();
    assert!(has_checkpoint(&chk), "a checkpoint to restore");
    run("restore", job2(true), dir.path()).assert_success();
    let mut actual = read_topic(&broker, &output2);
    actual.sort();
    assert_same("windows after a failure and a restore", &expected, &actual);
}
