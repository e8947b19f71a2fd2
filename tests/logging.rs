//! Logs: `--log-format json` writes one JSON object per line, `--log-level` and `RUST_LOG` filter,
//! and timely's own connection messages in cluster mode reach neither stdout nor the terminal
//! (only the log, at debug level).

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// A short checkpointed run with no progress line or summary (-q): its stderr is the log alone.
/// Checkpoints log `checkpoint N complete` at debug level.
fn logged_run(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Outcome {
    let dir = TempDir::new(tag);
    let mut a = args![
        "run",
        "throughput-windows",
        "--source",
        "payments=gen:count=20000",
        "--rate",
        20000,
        "--checkpoint-dir",
        dir.join("chk").display(),
        "--checkpoint-interval",
        "100ms",
        "-q"
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    let outcome = wait_all(vec![spawn_env(tag, a, dir.path(), env)]).pop().expect("one outcome");
    outcome.assert_success();
    outcome
}

#[test]
fn json_logs_are_one_object_per_line() {
    let outcome = logged_run("log-json", &["--log-format", "json", "--log-level", "debug"], &[]);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert!(!lines.is_empty(), "debug logging of a checkpointed run says something");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
    }
    let complete = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains("complete")));
    let complete = complete.unwrap_or_else(|| panic!("no checkpoint event:\n{}", outcome.stderr));
    assert_eq!(complete["level"], "DEBUG");
    assert!(complete["epoch"].is_u64(), "the epoch is a field of its own: {complete}");
}

#[test]
fn log_level_and_rust_log_filter_events() {
    let checkpoint_lines = |o: &Outcome| o.stderr.lines().filter(|l| l.contains("checkpoint") && l.contains("complete")).count();
    let debug = logged_run("log-debug", &["--log-level", "debug"], &[]);
    assert!(checkpoint_lines(&debug) > 0, "debug shows checkpoints:\n{}", debug.stderr);
    assert!(debug.stderr.lines().all(|l| l.contains("DEBUG") || l.contains("INFO") || l.contains("WARN")), "{}", debug.stderr);

    let default = logged_run("log-default", &[], &[]);
    assert_eq!(default.stderr, "", "info level: a quiet checkpointed run logs nothing");

    let env = logged_run("log-env", &[], &[("RUST_LOG", "paystream_engine::observe=debug")]);
    assert!(checkpoint_lines(&env) > 0, "RUST_LOG applies without the flag:\n{}", env.stderr);

    let flag_wins = logged_run("log-flag-wins", &["--log-level", "error"], &[("RUST_LOG", "debug")]);
    assert_eq!(flag_wins.stderr, "", "--log-level wins over RUST_LOG");
}

/// Process 1 starts a second before process 0, so it retries its connection and says so. timely's
/// own formation printed that to stdout, where a `stdout:` sink writes; paystream's (see
/// `engine/src/cluster`) logs it. stdout holds the output alone, and the message is in the debug
/// log.
#[test]
fn timely_connection_messages_stay_off_stdout() {
    let dir = TempDir::new("timely-quiet");
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()).collect();
    let hosts = dir.join("hosts.txt");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("write hosts");
    let process = |i: usize| {
        let a = args![
            "run",
            "throughput-windows",
            "--source",
            "payments=gen:count=5000",
            "--sink",
            "windows=stdout:",
            "--processes",
            2,
            "--process",
            i,
            "--hosts",
            hosts.display(),
            "--log-level",
            "debug",
            "-q"
        ];
        spawn(&format!("process {i}"), a, dir.path())
    };
    let second = process(1);
    std::thread::sleep(Duration::from_millis(1500));
    let first = process(0);
    let outcomes = wait_all(vec![first, second]);
    for o in &outcomes {
        o.assert_success();
        for word in ["connecting", "awaiting", "worker 0", "worker 1"] {
            assert!(!o.stdout.contains(word), "{}: timely's {word:?} line on stdout:\n{}", o.label, o.stdout);
        }
    }
    assert!(outcomes[0].stdout.starts_with("window_start"), "process 0 writes the output:\n{}", outcomes[0].stdout);
    assert_eq!(outcomes[1].stdout, "", "process 1 writes nothing to stdout");
    assert!(
        outcomes[1].stderr.lines().any(|l| l.contains("DEBUG") && l.contains("connecting to process 0 at") && l.contains("retrying")),
        "the retry is in the debug log:\n{}",
        outcomes[1].stderr
    );
}
