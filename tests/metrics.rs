//! The metrics endpoint end to end: a paced run of the real binary with `--metrics-addr`, scraped
//! twice over loopback, the text read by an independent Prometheus parser.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("address").port()
}

/// `GET path` on 127.0.0.1:port: the status code and the body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// Parses a scrape, checking that every sample line was understood.
fn parse(body: &str) -> prometheus_parse::Scrape {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    let sample_lines = body.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count();
    assert_eq!(scrape.samples.len(), sample_lines, "every sample line parses:\n{body}");
    scrape
}

fn value(v: &prometheus_parse::Value) -> f64 {
    match v {
        prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Gauge(x) | prometheus_parse::Value::Untyped(x) => *x,
        _ => f64::NAN,
    }
}

/// The sum of a family's samples.
fn total(scrape: &prometheus_parse::Scrape, metric: &str) -> f64 {
    scrape.samples.iter().filter(|s| s.metric == metric).map(|s| value(&s.value)).sum()
}

#[test]
fn metrics_endpoint_serves_growing_counters_during_a_paced_run() {
    let dir = TempDir::new("metrics");
    let port = free_port();
    let args = args![
        "run",
        "throughput-windows",
        "--source",
        "payments=gen:count=120000",
        "--rate",
        20000,
        "--workers",
        2,
        "--metrics-addr",
        format!("127.0.0.1:{port}"),
        "-q"
    ];
    let running = spawn("paced run with metrics", args, dir.path());

    // The endpoint answers as soon as the run starts.
    let start = Instant::now();
    let health = loop {
        match get(port, "/healthz") {
            Ok(answer) => break answer,
            Err(_) if start.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no /healthz on port {port}: {e}"),
        }
    };
    assert_eq!(health.0, 200, "/healthz: {health:?}");

    std::thread::sleep(Duration::from_millis(700));
    let (status, first_body) = get(port, "/metrics").expect("first scrape");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    let (status, second_body) = get(port, "/metrics").expect("second scrape");
    assert_eq!(status, 200);
    let (first, second) = (parse(&first_body), parse(&second_body));

    for metric in ["paystream_records_in_total", "paystream_records_out_total", "paystream_events_read_total"] {
        let (a, b) = (total(&first, metric), total(&second, metric));
        assert!(a > 0.0 && b > a, "{metric} should grow between scrapes: {a} then {b}\n{second_body}");
    }
    // Per step and worker: the window step on both workers.
    let window_workers: Vec<&str> = second
        .samples
        .iter()
        .filter(|s| s.metric == "paystream_records_in_total" && s.labels.get("step") == Some("throughput"))
        .filter_map(|s| s.labels.get("worker"))
        .collect();
    assert_eq!(window_workers.len(), 2, "the window step on each worker:\n{second_body}");
    assert!(second.samples.iter().all(|s| s.labels.get("job") == Some("throughput-windows")), "{second_body}");
    let watermark = second.samples.iter().find(|s| s.metric == "paystream_watermark_seconds").expect("a watermark");
    // The generator's event time starts at 2026-01-01.
    assert!(value(&watermark.value) >= 1_767_225_600.0, "{second_body}");
    assert!(second.samples.iter().any(|s| s.metric == "paystream_watermark_lag_seconds"), "{second_body}");
    assert!(second.samples.iter().any(|s| s.metric == "paystream_state_entries"), "{second_body}");
    assert_eq!(get(port, "/healthz").expect("health").0, 200);
    assert_eq!(get(port, "/nothing-here").expect("404").0, 404);

    let outcome = wait_all(vec![running]).pop().expect("one outcome");
    outcome.assert_success();
    assert!(get(port, "/metrics").is_err(), "the endpoint closes when the run ends");
}

#[test]
fn a_taken_metrics_port_stops_the_run_before_it_starts() {
    let dir = TempDir::new("metrics-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let args = args!["run", "throughput-windows", "--source", "payments=gen:count=1000", "--metrics-addr", format!("127.0.0.1:{port}")];
    let outcome = run("taken port", args, dir.path());
    assert_eq!(outcome.code, Some(2), "{}", outcome.stderr);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert!(lines.len() == 1 && lines[0].starts_with("error: metrics endpoint"), "{}", outcome.stderr);
}

#[test]
fn checkpoint_metrics_appear_with_checkpoints() {
    let dir = TempDir::new("metrics-checkpoints");
    let port = free_port();
    let args = args![
        "run",
        "throughput-windows",
        "--source",
        "payments=gen:count=60000",
        "--rate",
        20000,
        "--checkpoint-dir",
        dir.join("chk").display(),
        "--checkpoint-interval",
        "200ms",
        "--metrics-addr",
        format!("127.0.0.1:{port}"),
        "-q"
    ];
    let running = spawn("checkpointed run with metrics", args, dir.path());
    let start = Instant::now();
    let body = loop {
        if let Ok((200, body)) = get(port, "/metrics") {
            if body.contains("paystream_checkpoint_last_completed_epoch") && body.contains("paystream_source_split_position") {
                break body;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no checkpoint metrics within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let scrape = parse(&body);
    assert!(total(&scrape, "paystream_checkpoints_completed_total") >= 1.0, "{body}");
    assert!(total(&scrape, "paystream_checkpoint_last_size_bytes") > 0.0, "{body}");
    assert_eq!(total(&scrape, "paystream_checkpoint_failures_total"), 0.0, "{body}");
    wait_all(vec![running]).pop().expect("one outcome").assert_success();
}
