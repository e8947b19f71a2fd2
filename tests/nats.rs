//! The `nats://` (JetStream) source and sink end to end, against a server on 127.0.0.1:4222: a
//! bounded stream read like the generator's payments at 1 and 2 workers, exactly-once output
//! after `kill -9` and restores (counted by content and by `Nats-Msg-Id`), a server crash ridden
//! out and one longer than `reconnect_timeout` failing the job (on a private server the test
//! starts), and a clear error when no server answers.
//!
//! Without a server each test prints a loud SKIP and passes, except under `CI=true` (where
//! `.ci/run` starts one), when it fails. Streams are named per test run and deleted at the end.
//! `PAYSTREAM_NATS_KILLS` sets the number of `kill -9` trials (default 3).
#![cfg(feature = "nats")]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use paystream_nats::admin;

const SERVER: &str = "127.0.0.1:4222";

const WINDOWS_HEADER: &str =
    "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents";

/// Whether a server answers; without one, a loud SKIP (or a failure under CI).
fn server_here(test: &str) -> bool {
    let missing = format!("no NATS server answers on {SERVER} (apt-get install nats-server; nats-server -js -a 127.0.0.1; or run .ci/run)");
    service_available(test, admin::server_answers(SERVER), &missing)
}

/// A stream named for this test run, deleted when dropped.
struct Stream(String);

impl Stream {
    fn new(tag: &str) -> Stream {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() % 1_000_000_000);
        Stream(format!("PSTEST_{tag}_{}_{nanos}", std::process::id()))
    }
    fn uri(&self) -> String {
        format!("nats://{SERVER}/{}", self.0)
    }
    fn messages(&self) -> Vec<admin::StoredMessage> {
        admin::read_stream(&self.uri()).expect("read the stream")
    }
    /// The payloads the stream holds, sorted.
    fn sorted_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.messages().into_iter().map(|m| String::from_utf8(m.payload).expect("UTF-8")).collect();
        lines.sort();
        lines
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        admin::delete_stream(&self.uri()).ok();
    }
}

/// Loads the generator's payments `generator` into `stream` through the sink (no checkpoints).
fn load_payments(dir: &TempDir, stream: &Stream, generator: &str) {
    load_payments_to(dir, &stream.uri(), generator);
}

/// Loads the generator's payments `generator` into the stream of `uri`.
fn load_payments_to(dir: &TempDir, uri: &str, generator: &str) {
    let generate =
        args!["run", "generate-payments", "-q", "--source", format!("payments=gen:{generator}"), "--sink", format!("payments={uri}")];
    run("load", generate, dir.path()).assert_success();
}

/// The windows of the generated payments `generator`, computed without a server.
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
fn a_bounded_stream_gives_the_windows_of_the_same_payments_read_directly() {
    if !server_here("a_bounded_stream_gives_the_windows_of_the_same_payments_read_directly") {
        return;
    }
    let dir = TempDir::new("nats-bounded");
    let input = Stream::new("bounded");
    load_payments(&dir, &input, "count=6000,seed=7,late_every=50");
    // Two undecodable messages at the end, for dead letters.
    admin::publish(&input.uri(), &["{\"ts_ms\": \"soon\"}".to_string(), "not json".to_string()]).expect("publish");
    let expected = reference_windows(&dir, "count=6000,seed=7,late_every=50");
    assert!(expected.len() > 100, "the reference has windows: {}", expected.len());
    for workers in ["1", "2"] {
        let out = dir.join(&format!("nats-{workers}.csv"));
        let dead = dir.join(&format!("dead-{workers}.csv"));
        let started = Instant::now();
        run(
            "nats",
            args![
                "run",
                "throughput-windows",
                "-w",
                workers,
                "--source",
                format!("payments={}?bounded=true", input.uri()),
                "--sink",
                format!("windows={}", file_uri(&out)),
                "--sink",
                format!("late_payments={}", file_uri(&dir.join(&format!("late-{workers}.csv")))),
                "--sink",
                format!("dead_letters={}", file_uri(&dead)),
            ],
            dir.path(),
        )
        .assert_success();
        eprintln!(
            "{workers} worker(s): a bounded stream of 6,002 messages read in {:.2} s (start-up included)",
            started.elapsed().as_secs_f64()
        );
        let mut actual = data_lines(&out, WINDOWS_HEADER);
        actual.sort();
        assert_same(&format!("windows from nats, {workers} worker(s)"), &expected, &actual);
        let dead = read(&dead);
        assert_eq!(dead.lines().count(), 3, "two dead letters and the header:\n{dead}");
        let origin = format!("nats stream {} sequence", input.0);
        assert!(
            dead.contains(&origin) && dead.contains("sequence,6001,") && dead.contains("sequence,6002,"),
            "dead letters name stream and sequence:\n{dead}"
        );
    }
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

/// Checks `out` holds exactly `expected` (sorted payloads): no line missing, none twice, and
/// every message with its own `Nats-Msg-Id`.
fn assert_exactly(what: &str, out: &Stream, expected: &[String]) {
    let messages = out.messages();
    let mut lines: Vec<String> = messages.iter().map(|m| String::from_utf8(m.payload.clone()).expect("UTF-8")).collect();
    lines.sort();
    assert_same(what, expected, &lines);
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_deref().expect("every message has a Nats-Msg-Id")).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "{what}: a message id appears twice");
    assert_eq!(ids.len(), expected.len(), "{what}: message count");
}

#[test]
fn kill_9_and_restores_give_exactly_once_output_counted_by_content_and_message_id() {
    if !server_here("kill_9_and_restores_give_exactly_once_output_counted_by_content_and_message_id") {
        return;
    }
    let trials: usize = std::env::var("PAYSTREAM_NATS_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = TempDir::new("nats-kill");
    let input = Stream::new("kill_in");
    load_payments(&dir, &input, "count=4000,seed=3");
    let source = format!("{}?bounded=true", input.uri());
    let reference = Stream::new("kill_reference");
    let chk = dir.join("reference-chk").display().to_string();
    let ckpt = ["--checkpoint-dir", chk.as_str(), "--checkpoint-interval", "100ms", "-w", "2"];
    run("reference", windows_run(&source, &reference.uri(), &dir, "reference", &ckpt), dir.path()).assert_success();
    let expected = reference.sorted_lines();
    assert!(expected.len() > 100, "the reference has windows: {}", expected.len());
    assert_exactly("the uncrashed run", &reference, &expected);

    let mut rng = Rng(0x5eed);
    let mut restored = 0;
    for trial in 0..trials {
        let out = Stream::new(&format!("kill_out{trial}"));
        let chk = dir.join(&format!("chk{trial}"));
        let chk_arg = chk.display().to_string();
        let (workers, restore_workers) = [("1", "2"), ("2", "1"), ("2", "2")][trial % 3];
        let tag = format!("trial{trial}");
        let paced = ["--checkpoint-dir", chk_arg.as_str(), "--checkpoint-interval", "100ms", "--rate", "2000", "-w", workers];
        let mut running = spawn(&tag, windows_run(&source, &out.uri(), &dir, &tag, &paced), dir.path());
        let kill_after = Duration::from_millis(400 + rng.below(1400));
        std::thread::sleep(kill_after);
        running.child.kill().ok();
        let code = running.child.wait().expect("wait").code();
        if code == Some(0) {
            assert_exactly(&format!("trial {trial}: a run that finished before the kill"), &out, &expected);
            continue;
        }
        let checkpointed = has_checkpoint(&chk);
        let mut again = vec!["--checkpoint-dir", chk_arg.as_str(), "--checkpoint-interval", "100ms", "-w", restore_workers];
        if checkpointed {
            again.extend(["--restore", "latest"]);
            restored += 1;
        }
        run(&format!("{tag} restore"), windows_run(&source, &out.uri(), &dir, &tag, &again), dir.path()).assert_success();
        eprintln!(
            "trial {trial}: killed after {kill_after:?}, {workers} -> {restore_workers} workers, restored from a checkpoint: {checkpointed}"
        );
        assert_exactly(&format!("trial {trial} ({workers} -> {restore_workers} workers)"), &out, &expected);
    }
    assert!(trials == 0 || restored > 0, "no trial was killed after a checkpoint: they test too little");
}

#[test]
fn no_server_at_the_start_is_a_clear_error_within_the_connect_timeout() {
    let dir = TempDir::new("nats-absent");
    for (label, source, sink) in [
        ("source", "nats://127.0.0.1:1/PAYMENTS?connect_timeout=3s", "stdout"),
        ("sink", "gen:count=10", "nats://127.0.0.1:1/WINDOWS?connect_timeout=3s"),
    ] {
        let started = Instant::now();
        let outcome = run(label, windows_run(source, sink, &dir, label, &[]), dir.path());
        // Exit 2: the run did not start (as for a bad URI).
        assert_eq!(outcome.code, Some(2), "{outcome:?}");
        assert!(
            outcome.stderr.contains("error:") && outcome.stderr.contains("cannot connect to nats at 127.0.0.1:1"),
            "{}",
            outcome.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{label}: took {:?}", started.elapsed());
    }
}

/// A nats-server of the test's own on a free loopback port (the shared one must not be
/// stopped), with its JetStream store in `store`; killed when dropped.
struct PrivateServer {
    port: u16,
    store: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    /// Starts one, or `None` (after a loud SKIP, or a failure under CI) without `nats-server`.
    fn start(test: &str, store: std::path::PathBuf) -> Option<PrivateServer> {
        let here = std::process::Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
        if !service_available(test, here, "no nats-server binary to start a private server (apt-get install nats-server)") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let mut server = PrivateServer { port, store, child: None };
        server.restart();
        Some(server)
    }
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn restart(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !admin::server_answers(&self.endpoint()) {
            assert!(Instant::now() < deadline, "the private nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// `kill -9`: a crash, not a shutdown.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_server_outage_mid_run_is_ridden_out_and_a_long_one_fails_the_job() {
    let test = "a_server_outage_mid_run_is_ridden_out_and_a_long_one_fails_the_job";
    let dir = TempDir::new("nats-outage");
    let Some(mut server) = PrivateServer::start(test, dir.join("store")) else { return };
    let endpoint = server.endpoint();
    let uri = |stream: &str| format!("nats://{endpoint}/{stream}");
    let read_sorted = |uri: &str| {
        let mut lines: Vec<String> =
            admin::read_stream(uri).expect("read the stream").into_iter().map(|m| String::from_utf8(m.payload).expect("UTF-8")).collect();
        lines.sort();
        lines
    };
    load_payments_to(&dir, &uri("IN"), "count=4000,seed=5");
    let source = format!("{}?bounded=true", uri("IN"));
    run("reference", windows_run(&source, &uri("REFERENCE"), &dir, "reference", &[]), dir.path()).assert_success();
    let expected = read_sorted(&uri("REFERENCE"));
    assert!(expected.len() > 100, "the reference has windows: {}", expected.len());

    // A 2 s crash of the server while the job runs: it reconnects and finishes, exactly once.
    let chk = dir.join("chk").display().to_string();
    let paced = ["--checkpoint-dir", chk.as_str(), "--checkpoint-interval", "100ms", "--rate", "2000"];
    let running = spawn("outage", windows_run(&source, &uri("OUT"), &dir, "outage", &paced), dir.path());
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let outcome = wait_all(vec![running]).remove(0);
    outcome.assert_success();
    assert!(outcome.stderr.contains("reconnecting"), "the outage hit the running job: {}", outcome.stderr);
    let messages = admin::read_stream(&uri("OUT")).expect("read the output");
    let ids: HashSet<Option<String>> = messages.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len(), messages.len(), "every message has its own id");
    assert_eq!(read_sorted(&uri("OUT")), expected, "after an outage: not the uninterrupted run's output");

    // An outage longer than reconnect_timeout: the job fails (exit 1) and says why.
    let live = format!("{}?reconnect_timeout=2s", uri("IN"));
    let running = spawn("long outage", windows_run(&live, "stdout", &dir, "long", &[]), dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    let started = Instant::now();
    let outcome = wait_all(vec![running]).remove(0);
    eprintln!("the job failed {:.1} s after the server was killed", started.elapsed().as_secs_f64());
    assert!(started.elapsed() < Duration::from_secs(30), "the job gave up within a bounded time");
    assert_eq!(outcome.code, Some(1), "a server away too long fails the job: {outcome:?}");
    assert!(outcome.stderr.contains("reconnect_timeout") && outcome.stderr.contains(&endpoint), "the error says why: {}", outcome.stderr);
}
