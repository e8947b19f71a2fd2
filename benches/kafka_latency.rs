//! End-to-end latency through Kafka: from a payment's publication to the moment a
//! `read_committed` consumer of the job's output topic sees it, at half the pipeline's measured
//! maximum rate, with the sink exactly-once (checkpoints, transactions) and without (an
//! idempotent producer, at-least-once).
//!
//! The pipeline is `generate-payments` reading a topic and writing another (a pass-through: every
//! payment is one output message, carrying its `ts_ms`), run by the `paystream` binary as a user
//! runs it. The bench publishes payments whose `ts_ms` is the wall clock at publication and
//! reads the output; latency = arrival − `ts_ms`, both on this machine's clock.
//!
//! Needs a Kafka broker: `PAYSTREAM_KAFKA` (default 127.0.0.1:9092); without one it says so and
//! measures nothing. `SECONDS` (default 10) of load per mode, `CHECKPOINT_MS` (default 1000) the
//! exactly-once run's checkpoint interval, `MAX_EVENTS` (default 200000) the events of the
//! maximum-rate run, `FETCH_WAIT_MS` the source's `fetch_wait` (default: the connector's, 100 ms).
//!
//! ```sh
//! cargo bench --bench kafka_latency
//! ```

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::env;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const BIN: &str = env!("CARGO_BIN_EXE_paystream");
const PARTITIONS: u32 = 4;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn paystream(args: &[String], dir: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"))
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// One JSON payment, as the generator writes them, at event time `ts`.
fn payment(i: u64, ts: u64) -> String {
    let status = if i.is_multiple_of(10) { "DECLINED" } else { "APPROVED" };
    format!(
        r#"{{"ts_ms":{ts},"txn_id":"l{i}","card_id":{},"merchant_id":{},"amount_cents":{},"currency":"EUR","country":"DE","status":"{status}"}}"#,
        i.wrapping_mul(7919) % 100_000,
        i % 500,
        100 + i % 10_000
    )
}

fn producer(broker: &str) -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", broker).set("enable.idempotence", "true").set("linger.ms", "1").create().expect("producer")
}

/// Loads `count` payments (event times from now on, 1 ms apart) into a new topic.
fn load(broker: &str, topic: &str, count: u64, dir: &std::path::Path) {
    // The topic, created by the connector (a sink creates what is missing), with one payment.
    let create = paystream(
        &[
            "run".into(),
            "generate-payments".into(),
            "-q".into(),
            "--source".into(),
            "payments=gen:count=1".into(),
            "--sink".into(),
            format!("payments=kafka://{broker}/{topic}?partitions={PARTITIONS}"),
        ],
        dir,
    );
    finish(create, "creating the topic");
    let p = producer(broker);
    let start = now_ms();
    for i in 0..count {
        let line = payment(i, start + i);
        let mut record = BaseRecord::<(), str>::to(topic).payload(&line);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// The pass-through job from `input` to `output`; `checkpoint`: its interval, for exactly-once.
fn pipeline(broker: &str, input: &str, output: &str, bounded: bool, checkpoint: Option<u64>, dir: &std::path::Path) -> Child {
    let mut args: Vec<String> = vec![
        "run".into(),
        "generate-payments".into(),
        "-q".into(),
        "--source".into(),
        match std::env::var("FETCH_WAIT_MS") {
            Ok(ms) => format!("payments=kafka://{broker}/{input}?bounded={bounded}&fetch_wait={ms}ms"),
            Err(_) => format!("payments=kafka://{broker}/{input}?bounded={bounded}"),
        },
        "--sink".into(),
        format!("payments=kafka://{broker}/{output}?partitions={PARTITIONS}"),
    ];
    if let Some(ms) = checkpoint {
        args.extend(["--checkpoint-dir".into(), dir.join(format!("chk-{output}")).display().to_string()]);
        args.extend(["--checkpoint-interval".into(), format!("{ms}ms")]);
    }
    paystream(&args, dir)
}

/// Reads `topic` (read_committed) from the start, recording arrival − `ts_ms` of the payments
/// published at or after `from_ms`, until `stop` and `expected` of them arrived (or 60 s more).
fn consume(broker: String, topic: String, from_ms: u64, expected: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> (Histogram<u64>, u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("group.id", "paystream-latency-bench")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    // The job creates the topic: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let n = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if n > 0 {
            break n as i32;
        }
        assert!(Instant::now() < deadline, "the job did not create {topic}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        // Offset 0, not Beginning: Tansu answers ListOffsets(earliest) wrongly at times.
        assignment.add_partition_offset(&topic, p, Offset::Offset(0)).expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
    let mut seen = 0u64;
    let mut give_up: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            if seen >= expected.load(Ordering::Relaxed) {
                break;
            }
            let at = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
            if Instant::now() > at {
                break;
            }
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else { continue };
        let arrived = now_ms();
        let Some(payload) = m.payload() else { continue };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else { continue };
        let Some(ts) = value.get("ts_ms").and_then(|t| t.as_u64()) else { continue };
        if ts >= from_ms {
            seen += 1;
            let _ = histogram.record(arrived.saturating_sub(ts).max(1));
        }
    }
    (histogram, seen)
}

/// Publishes payments with `ts_ms` = now at `rate` per second for `seconds`; returns how many.
fn publish(broker: &str, topic: &str, rate: u64, seconds: u64) -> u64 {
    let p = producer(broker);
    let start = Instant::now();
    let total = rate * seconds;
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now {
            p.poll(Duration::ZERO);
            std::thread::sleep(due - now);
        }
        let line = payment(i, now_ms());
        let mut record = BaseRecord::<(), str>::to(topic).payload(&line);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    total
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let broker = std::env::var("PAYSTREAM_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let answers = broker
        .split(',')
        .next()
        .and_then(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok())
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if !answers {
        println!("kafka_latency: no Kafka broker answers at {broker} (set PAYSTREAM_KAFKA): nothing measured");
        return;
    }
    let seconds = env("SECONDS", 10);
    let checkpoint_ms = env("CHECKPOINT_MS", 1000);
    let max_events = env("MAX_EVENTS", 200_000);
    let profile = if cfg!(debug_assertions) { "debug build: not representative" } else { "release build" };
    let dir = std::env::temp_dir().join(format!("paystream-bench-kafka-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tag = format!("{}-{}", std::process::id(), now_ms());

    // The maximum rate: a bounded pass-through of preloaded payments, without checkpoints.
    let input = format!("latency-max-in-{tag}");
    load(&broker, &input, max_events, &dir);
    let started = Instant::now();
    let run = pipeline(&broker, &input, &format!("latency-max-out-{tag}"), true, None, &dir);
    finish(run, "the maximum-rate run");
    let wall = started.elapsed().as_secs_f64();
    let max_rate = max_events as f64 / wall;
    let rate = ((max_rate / 2.0) as u64).max(1);
    println!(
        "kafka_latency: {profile}, broker {broker}, {PARTITIONS} partitions; maximum {max_rate:.0} events/s \
         ({max_events} events in {wall:.2} s wall, process start included); measuring at {rate}/s for {seconds} s"
    );
    println!("{:<40} {:>9} {:>9} {:>9} {:>9} {:>9}", "sink", "events", "p50 ms", "p99 ms", "p99.9 ms", "max ms");
    for (label, checkpoint) in [("at-least-once (no checkpoints)", None), ("exactly-once (checkpoints, transactions)", Some(checkpoint_ms))]
    {
        let label = match checkpoint {
            Some(ms) => format!("{label}, {ms} ms"),
            None => label.to_string(),
        };
        let input = format!("latency-in-{tag}-{}", checkpoint.is_some());
        let output = format!("latency-out-{tag}-{}", checkpoint.is_some());
        load(&broker, &input, 0, &dir);
        let job = pipeline(&broker, &input, &output, false, checkpoint, &dir);
        // Let the job start (and its sink create the output topic) before the load starts.
        std::thread::sleep(Duration::from_secs(2));
        let from_ms = now_ms();
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (broker, output, expected, stop) = (broker.clone(), output.clone(), expected.clone(), stop.clone());
            std::thread::spawn(move || consume(broker, output, from_ms, expected, stop))
        };
        let sent = publish(&broker, &input, rate, seconds);
        expected.store(sent, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let (h, seen) = reader.join().expect("reader");
        // SIGTERM: a checkpointed job takes a savepoint and stops.
        let _ = Command::new("kill").arg("-TERM").arg(job.id().to_string()).status();
        let _ = job.wait_with_output();
        let ms = |q: f64| h.value_at_quantile(q);
        println!("{label:<40} {seen:>9} {:>9} {:>9} {:>9} {:>9}", ms(0.5), ms(0.99), ms(0.999), h.max());
        if seen < sent {
            println!("  only {seen} of {sent} published payments arrived within 60 s of the end");
        }
        let _ = std::io::stdout().flush();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
