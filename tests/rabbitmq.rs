//! The `rabbitmq://` source and sink end to end, against a broker on 127.0.0.1:5672 (guest/guest):
//! a bounded stream read like a file, exactly-once output after `kill -9` and restores at another
//! worker count, a broker outage mid-run, a broker away for longer than `reconnect_timeout`,
//! classic queues acknowledged at checkpoints, and a clear error when no broker answers.
//!
//! Without a broker each test prints a loud SKIP and passes, except under `CI=true` (where
//! `.ci/run` starts one), when it fails. The tests take one lock, so only one talks to the broker
//! at a time (one of them stops it). Queues are named per run and deleted at the end.
//! `PAYSTREAM_RABBITMQ_KILLS` sets the number of `kill -9` trials (default 3).
#![cfg(feature = "rabbitmq")]

#[macro_use]
mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use paystream_rabbitmq::admin;

const BROKER: &str = "127.0.0.1:5672";

/// One test at a time talks to the broker.
static BROKER_LOCK: Mutex<()> = Mutex::new(());

/// Whether a broker answers; without one, a loud SKIP (or a failure under CI).
fn broker_here(test: &str) -> bool {
    let missing =
        format!("no RabbitMQ broker answers on {BROKER} (apt-get install rabbitmq-server; rabbitmq-server -detached; or run .ci/run)");
    service_available(test, admin::broker_answers(BROKER), &missing)
}

/// A queue named for this test run, deleted when dropped.
struct Queue(String);

impl Queue {
    fn new(tag: &str) -> Queue {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() % 1_000_000_000);
        Queue(format!("paystream-test-{tag}-{}-{nanos}", std::process::id()))
    }
    fn uri(&self) -> String {
        format!("rabbitmq://{BROKER}/{}", self.0)
    }
    /// The payloads the stream holds, sorted.
    fn sorted_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = admin::read_stream(&self.uri())
            .expect("read the stream")
            .into_iter()
            .map(|m| String::from_utf8(m.payload).expect("UTF-8"))
            .collect();
        lines.sort();
        lines
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        admin::delete_queue(&self.uri()).ok();
    }
}

/// `count` generated payments as CSV lines (header excluded), in generator order.
fn payments(dir: &TempDir, count: u64, seed: u64) -> Vec<String> {
    let file = dir.join(&format!("payments-{count}-{seed}.csv"));
    run(
        "generate",
        args![
            "run",
            "generate-payments",
            "--source",
            format!("payments=gen:count={count},seed={seed}"),
            "--sink",
            format!("payments={}", file_uri(&file)),
            "-q"
        ],
        dir.path(),
    )
    .assert_success();
    data_lines(&file, PAYMENT_HEADER)
}

/// The arguments of a `throughput-windows` run reading `source` into `windows`.
fn windows_run(source: &str, windows: &str, dir: &TempDir, tag: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args![
        "run",
        "throughput-windows",
        "--source",
        format!("payments={source}"),
        "--sink",
        format!("windows={windows}"),
        "--sink",
        format!("late_payments={}", file_uri(&dir.join(&format!("{tag}-late.csv")))),
        "--sink",
        format!("dead_letters={}", file_uri(&dir.join(&format!("{tag}-dead.csv")))),
        "-q"
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl").args(args).output().is_ok_and(|o| o.status.success())
}

/// Starts the broker's application again, whatever happened: the other tests need it.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

#[test]
fn a_bounded_stream_gives_the_windows_of_the_same_payments_from_a_file() {
    let _lock = BROKER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !broker_here("a_bounded_stream_gives_the_windows_of_the_same_payments_from_a_file") {
        return;
    }
    let dir = TempDir::new("rabbitmq-bounded");
    let stream = Queue::new("bounded");
    let file = dir.join("payments.csv");
    let gen = "payments=gen:count=3000,seed=7,late_every=50";
    // The stream is loaded by the job that writes the file, through the sink without checkpoints.
    run(
        "load stream",
        args!["run", "generate-payments", "--source", gen, "--sink", format!("payments={}?format=csv", stream.uri()), "-q"],
        dir.path(),
    )
    .assert_success();
    run(
        "load file",
        args!["run", "generate-payments", "--source", gen, "--sink", format!("payments={}", file_uri(&file)), "-q"],
        dir.path(),
    )
    .assert_success();
    // One malformed message at the end of both.
    let bad = "not,a,payment".to_string();
    admin::publish(&stream.uri(), std::slice::from_ref(&bad), true).expect("publish");
    let mut lines = data_lines(&file, PAYMENT_HEADER);
    assert_eq!(lines.len(), 3000);
    lines.push(bad);
    write_csv(&file, PAYMENT_HEADER, lines);

    let from_file = dir.join("file-windows.csv");
    run("from file", windows_run(&file_uri(&file), &file_uri(&from_file), &dir, "file", &[]), dir.path()).assert_success();
    let from_stream = dir.join("stream-windows.csv");
    let source = format!("{}?format=csv&bounded=true", stream.uri());
    let started = Instant::now();
    run("from stream", windows_run(&source, &file_uri(&from_stream), &dir, "stream", &[]), dir.path()).assert_success();
    eprintln!("a bounded stream of 3,001 messages read in {:.2} s (the run, start-up included)", started.elapsed().as_secs_f64());
    assert_eq!(read(&from_stream), read(&from_file), "the windows of the stream equal those of the file");
    assert!(read(&from_file).lines().count() > 50, "enough windows to compare");
    let dead = read(&dir.join("stream-dead.csv"));
    assert!(
        dead.contains("rabbitmq queue paystream-test-bounded") && dead.contains("offset,3000,"),
        "dead letters name queue and offset:\n{dead}"
    );
}

/// Loads `lines` round-robin into the queues.
fn load(queues: &[&Queue], lines: &[String]) {
    for (i, q) in queues.iter().enumerate() {
        let share: Vec<String> = lines.iter().skip(i).step_by(queues.len()).cloned().collect();
        admin::publish(&q.uri(), &share, true).expect("load a stream");
    }
}

#[test]
fn kill_9_and_restores_at_other_worker_counts_give_exactly_once_output() {
    let _lock = BROKER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !broker_here("kill_9_and_restores_at_other_worker_counts_give_exactly_once_output") {
        return;
    }
    let trials: usize = std::env::var("PAYSTREAM_RABBITMQ_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = TempDir::new("rabbitmq-kill");
    let (a, b) = (Queue::new("in-a"), Queue::new("in-b"));
    load(&[&a, &b], &payments(&dir, 4000, 3));
    let source = format!("rabbitmq://{BROKER}/{},{}?format=csv&bounded=true", a.0, b.0);
    let reference = Queue::new("reference");
    let chk = dir.join("reference-chk").display().to_string();
    let ckpt = ["--checkpoint-dir", chk.as_str(), "--checkpoint-interval", "100ms", "-w", "2"];
    run("reference", windows_run(&source, &reference.uri(), &dir, "reference", &ckpt), dir.path()).assert_success();
    let expected = reference.sorted_lines();
    assert!(expected.len() > 100, "the reference has windows: {}", expected.len());

    let mut rng = 0x5eed_u64;
    let mut below = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut restored = 0;
    for trial in 0..trials {
        let out = Queue::new(&format!("out{trial}"));
        let chk = dir.join(&format!("chk{trial}"));
        let chk_arg = chk.display().to_string();
        let (workers, restore_workers) = [("1", "2"), ("2", "1"), ("2", "3")][trial % 3];
        let tag = format!("trial{trial}");
        let paced = ["--checkpoint-dir", chk_arg.as_str(), "--checkpoint-interval", "100ms", "--rate", "2000", "-w", workers];
        let mut running = spawn(&tag, windows_run(&source, &out.uri(), &dir, &tag, &paced), dir.path());
        // Killed a random moment after its first checkpoint (at most 20 s to it): on a loaded
        // machine a fixed delay killed every trial before any checkpoint, testing nothing.
        wait_for_checkpoint(&mut running, &chk, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(below(1400)));
        running.child.kill().ok();
        let code = running.child.wait().expect("wait").code();
        if code == Some(0) {
            assert_eq!(out.sorted_lines(), expected, "trial {trial}: a run that finished before the kill");
            continue;
        }
        let checkpointed = has_checkpoint(&chk);
        let mut again = vec!["--checkpoint-dir", chk_arg.as_str(), "--checkpoint-interval", "100ms", "-w", restore_workers];
        if checkpointed {
            again.extend(["--restore", "latest"]);
            restored += 1;
        }
        run(&format!("{tag} restore"), windows_run(&source, &out.uri(), &dir, &tag, &again), dir.path()).assert_success();
        eprintln!("trial {trial}: {workers} -> {restore_workers} workers, restored from a checkpoint: {checkpointed}");
        assert_eq!(out.sorted_lines(), expected, "trial {trial} ({workers} -> {restore_workers} workers): not the uncrashed run's output");
    }
    assert!(trials == 0 || restored > 0, "no trial was killed after a checkpoint: they test too little");
}

#[test]
fn a_broker_outage_mid_run_is_ridden_out_and_a_long_one_fails_the_job() {
    let _lock = BROKER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let test = "a_broker_outage_mid_run_is_ridden_out_and_a_long_one_fails_the_job";
    if !broker_here(test) {
        return;
    }
    if !service_available(test, rabbitmqctl(&["await_startup"]), "rabbitmqctl cannot control the broker here") {
        return;
    }
    let dir = TempDir::new("rabbitmq-outage");
    let input = Queue::new("outage-in");
    load(&[&input], &payments(&dir, 4000, 5));
    let source = format!("{}?format=csv&bounded=true", input.uri());
    let reference = Queue::new("outage-reference");
    run("reference", windows_run(&source, &reference.uri(), &dir, "reference", &[]), dir.path()).assert_success();
    let expected = reference.sorted_lines();

    // A 3 s outage while the job runs: it reconnects and finishes, exactly once.
    let out = Queue::new("outage-out");
    let chk = dir.join("chk").display().to_string();
    let args =
        windows_run(&source, &out.uri(), &dir, "outage", &["--checkpoint-dir", &chk, "--checkpoint-interval", "100ms", "--rate", "2000"]);
    let running = spawn("outage", args, dir.path());
    std::thread::sleep(Duration::from_millis(700));
    {
        let _restart = RestartBroker;
        assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
        std::thread::sleep(Duration::from_secs(3));
    }
    let outcome = wait_all(vec![running]).remove(0);
    outcome.assert_success();
    assert_eq!(out.sorted_lines(), expected, "after an outage: not the uninterrupted run's output");

    // An outage longer than reconnect_timeout: the job fails (exit 1) and says why.
    let live = format!("{}?format=csv&reconnect_timeout=2s", input.uri());
    let running = spawn("long outage", windows_run(&live, "stdout", &dir, "long", &[]), dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    let outcome = {
        let _restart = RestartBroker;
        assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
        let started = Instant::now();
        let outcome = wait_all(vec![running]).remove(0);
        eprintln!("the job failed {:.1} s after the broker stopped", started.elapsed().as_secs_f64());
        assert!(started.elapsed() < Duration::from_secs(30), "the job gave up within a bounded time");
        outcome
    };
    assert_eq!(outcome.code, Some(1), "a broker away too long fails the job: {outcome:?}");
    assert!(outcome.stderr.contains("reconnect_timeout") && outcome.stderr.contains(BROKER), "the error says why: {}", outcome.stderr);
}

#[test]
fn no_broker_at_the_start_is_a_clear_error_within_seconds() {
    let dir = TempDir::new("rabbitmq-absent");
    let started = Instant::now();
    let outcome = run("absent", windows_run("rabbitmq://127.0.0.1:1/payments", "stdout", &dir, "absent", &[]), dir.path());
    // Exit 2: the run did not start (as for a bad URI).
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome.stderr.contains("error:") && outcome.stderr.contains("cannot connect to rabbitmq at 127.0.0.1:1"),
        "{}",
        outcome.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn a_classic_queue_is_acknowledged_at_checkpoints_and_dead_letters_name_it() {
    let _lock = BROKER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !broker_here("a_classic_queue_is_acknowledged_at_checkpoints_and_dead_letters_name_it") {
        return;
    }
    let dir = TempDir::new("rabbitmq-classic");
    let classic = Queue::new("classic");
    let mut lines = payments(&dir, 1000, 9);
    lines.insert(500, "broken".to_string());
    admin::publish(&classic.uri(), &lines, false).expect("load a classic queue");
    let out = Queue::new("classic-out");
    let dead = Queue::new("classic-dead");
    let chk = dir.join("chk").display().to_string();
    let copy = args![
        "run",
        "generate-payments",
        "--source",
        format!("payments={}?format=csv", classic.uri()),
        "--sink",
        format!("payments={}?format=csv", out.uri()),
        "--sink",
        format!("dead_letters={}?format=csv", dead.uri()),
        "--checkpoint-dir",
        chk,
        "--checkpoint-interval",
        "100ms"
    ];
    let running = spawn("classic", copy, dir.path());
    // An unbounded source: wait for the copy and for checkpoints after it, then stop the job.
    let deadline = Instant::now() + Duration::from_secs(30);
    // (The job declares the queue when it opens its sink: until then there is nothing to read.)
    while admin::read_stream(&out.uri()).map_or(0, |m| m.len()) < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(2000));
    terminate(running.child.id());
    let outcome = wait_all(vec![running]).remove(0);
    let mut want = lines.clone();
    want.retain(|l| l != "broken");
    want.sort();
    assert_eq!(out.sorted_lines(), want, "every payment copied once: {outcome:?}");
    let dead = dead.sorted_lines();
    assert!(dead.len() == 1 && dead[0].contains("delivery,500,"), "the dead letter names the queue and the delivery: {dead:?}");
    // Acknowledged at checkpoints: once the job's connection is gone, nothing is left to deliver
    // again (unacknowledged deliveries would be back in the queue).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(admin::queue_messages(&classic.uri()).expect("count"), 0, "messages left in the classic queue");
}

/// SIGTERM: a stop (with a savepoint, when checkpointing).
fn terminate(pid: u32) {
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().ok();
}
