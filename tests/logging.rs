//! Logs: timely's own connection messages in cluster mode reach neither stdout nor the terminal
//! (only the log, at debug level).

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// Process 1 starts a second before process 0, so timely retries its connection and says so; it
/// printed that to stdout, where a `stdout:` sink writes. Now stdout holds the output alone, and
/// the message is in the debug log.
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
        outcomes[1].stderr.lines().any(|l| l.contains("DEBUG") && l.contains("timely") && l.contains("error connecting to worker 0")),
        "the retry is in the debug log:\n{}",
        outcomes[1].stderr
    );
}
