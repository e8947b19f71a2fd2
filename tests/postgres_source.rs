//! The `postgres://` source as the table side of `fraud-detection`'s temporal join, against a
//! real server (PostgreSQL on 127.0.0.1:5432, trust auth, database `test`; `PAYSTREAM_POSTGRES`
//! for another), with alerts written to PostgreSQL too.
//!
//! Without a server these tests print a loud SKIP and pass, except under `CI=true`, where they
//! fail. Each test makes tables of its own and drops them at the end.

#[macro_use]
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use proxy::{free_port, Proxy};

const ALERT_HEADER: &str = "rule,card_id,txn_id,ts_ms,detail";
const DEAD_LETTER_HEADER: &str = "source,origin,line,reason,raw";

/// The server's `HOST:PORT`, or `None` (after a loud message) when none answers outside CI.
fn server(test: &str) -> Option<String> {
    let address = std::env::var("PAYSTREAM_POSTGRES").unwrap_or_else(|_| "127.0.0.1:5432".into());
    let answers = TcpStream::connect_timeout(&address.parse().expect("PAYSTREAM_POSTGRES is HOST:PORT"), Duration::from_secs(2)).is_ok();
    let missing = format!("no PostgreSQL server answers at {address} (set PAYSTREAM_POSTGRES, or run .ci/run, which starts one)");
    service_available(test, answers, &missing).then_some(address)
}

/// A table name no other run uses.
fn table(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("t_{tag}_{}_{nanos}", std::process::id())
}

/// Runs `sql` with psql as user postgres in database `test` and returns its unaligned output.
fn psql(server: &str, sql: &str) -> String {
    let (host, port) = server.rsplit_once(':').expect("HOST:PORT");
    let out = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "postgres", "-d", "test", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs (install the postgresql client)");
    assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Drops the tables (and the sink's bookkeeping rows) when the test ends, passed or failed.
struct DropTables(String, Vec<String>);

impl Drop for DropTables {
    fn drop(&mut self) {
        let (host, port) = self.0.rsplit_once(':').unwrap_or(("127.0.0.1", "5432"));
        for t in &self.1 {
            let sql = format!("DROP TABLE IF EXISTS \"{t}\"; DELETE FROM paystream_commits WHERE target = '{t}'");
            Command::new("psql").args(["-h", host, "-p", port, "-U", "postgres", "-d", "test", "-X", "-q", "-c", &sql]).output().ok();
        }
    }
}

/// A blocked-cards change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Blocked {
    ts_ms: u64,
    card_id: u64,
    blocked: bool,
}

fn create_blocked_table(server: &str, name: &str, rows: &[Blocked]) {
    psql(server, &format!("CREATE TABLE \"{name}\" (ts_ms BIGINT, card_id BIGINT, blocked BOOLEAN)"));
    if !rows.is_empty() {
        let values: Vec<String> = rows.iter().map(|b| format!("({}, {}, {})", b.ts_ms, b.card_id, b.blocked)).collect();
        psql(server, &format!("INSERT INTO \"{name}\" VALUES {}", values.join(", ")));
    }
}

/// Alerts as parsed fields, sorted.
fn parsed(lines: &[String]) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = lines.iter().map(|l| split_csv(l)).collect();
    rows.sort();
    rows
}

/// Every row of the alerts table `name`, as parsed fields, sorted (none while the sink has not
/// made the table yet).
fn alert_rows(server: &str, name: &str, filter: &str) -> Vec<Vec<String>> {
    if psql(server, &format!("SELECT to_regclass('\"{name}\"') IS NULL")).trim() == "t" {
        return Vec::new();
    }
    let text = psql(server, &format!("COPY (SELECT rule, card_id, txn_id, ts_ms, detail FROM \"{name}\" {filter}) TO STDOUT (FORMAT csv)"));
    parsed(&text.lines().map(String::from).collect::<Vec<_>>())
}

const T0: u64 = 1_767_225_600_000;

/// `fraud-detection` reads blocked cards from a file or from a table holding the same rows (in
/// `ts_ms` order, so none is behind its watermark in either), at 1 and 2 workers, read once or
/// polled: the alerts are the same, whether written to a file or into a table (`create=true`).
/// A row with a NULL `ts_ms` in the table goes to dead letters.
#[test]
fn blocked_cards_from_a_table_give_the_alerts_of_the_same_rows_from_a_file() {
    let Some(server) = server("blocked_cards_from_a_table_give_the_alerts_of_the_same_rows_from_a_file") else { return };
    let dir = TempDir::new("pg-source-fraud");
    // 200 s of payments on 300 cards; 80 block or unblock changes on 40 of them.
    let generator = "gen:count=20000,events_per_sec=100,cards=300,card_testing_every=50,geo_every=40";
    let mut rng = Rng(0x0b10c);
    let mut changes: BTreeSet<Blocked> = BTreeSet::new();
    while changes.len() < 80 {
        let ts_ms = T0 + rng.below(200_000);
        let card_id = 1 + rng.below(40);
        if !changes.iter().any(|b| b.card_id == card_id && b.ts_ms == ts_ms) {
            changes.insert(Blocked { ts_ms, card_id, blocked: rng.below(4) != 0 });
        }
    }
    let changes: Vec<Blocked> = changes.into_iter().collect();
    let file = dir.join("blocked_cards.csv");
    write_csv(&file, "ts_ms,card_id,blocked", changes.iter().map(|b| format!("{},{},{}", b.ts_ms, b.card_id, b.blocked)));
    let blocked = table("blocked");
    let alerts = table("alerts");
    let _drop = DropTables(server.clone(), vec![blocked.clone(), alerts.clone()]);
    create_blocked_table(&server, &blocked, &changes);
    psql(&server, &format!("INSERT INTO \"{blocked}\" VALUES (NULL, 7, true)"));
    let blocked_uri = format!("blocked_cards=postgres://postgres@{server}/test?table={blocked}&ts=ts_ms");

    let job = |blocked_source: &str, alerts_sink: String, workers: &str, extra: &[String]| {
        let mut a = args![
            "run",
            "fraud-detection",
            "-q",
            "-w",
            workers,
            "--source",
            format!("payments={generator}"),
            "--source",
            format!("authorizations={generator}"),
            "--source",
            blocked_source,
            "--sink",
            alerts_sink,
            "--set",
            "max_per_window=25"
        ];
        a.extend(extra.iter().cloned());
        a
    };
    let reference = dir.join("file/alerts.csv");
    run(
        "blocked cards from a file",
        job(&format!("blocked_cards={}", file_uri(&file)), format!("alerts={}", file_uri(&reference)), "1", &[]),
        dir.path(),
    )
    .assert_success();
    let expected = parsed(&data_lines(&reference, ALERT_HEADER));
    let blocked_alerts = expected.iter().filter(|a| a[0] == "blocked-card").count();
    assert!(blocked_alerts > 20, "the blocked cards pay: {blocked_alerts} blocked-card alerts");
    assert!(expected.iter().any(|a| a[0] == "velocity"), "velocity alerts, whose txn_id is empty, are among them");

    for workers in ["1", "2"] {
        let out = dir.join(&format!("pg-{workers}/alerts.csv"));
        let dead = dir.join(&format!("pg-{workers}/dead.csv"));
        let extra = args!["--sink", format!("dead_letters={}", file_uri(&dead))];
        run("blocked cards from a table", job(&blocked_uri, format!("alerts={}", file_uri(&out)), workers, &extra), dir.path())
            .assert_success();
        assert_same(
            &format!("alerts with blocked cards from a table, {workers} worker(s)"),
            &expected,
            &parsed(&data_lines(&out, ALERT_HEADER)),
        );
        let dead = data_lines(&dead, DEAD_LETTER_HEADER);
        assert_eq!(dead.len(), 1, "the row with a NULL ts_ms is a dead letter: {dead:?}");
        assert!(dead[0].starts_with("blocked_cards,") && dead[0].contains("null"), "{}", dead[0]);
    }

    // Polled (live: the snapshot's rows come before the watermark follows the clock, so they
    // take effect at their own time), alerts into a table with checkpoints: the same rows once
    // the payments are through, then a stop with a savepoint.
    let sink = format!("alerts=postgres://postgres@{server}/test?table={alerts}&create=true");
    let chk = args!["--checkpoint-dir", dir.join("chk").display(), "--checkpoint-interval", "200ms"];
    let polled = format!("{blocked_uri}&poll=200ms");
    let mut running = spawn("polled, alerts into a table", job(&polled, sink, "2", &chk), dir.path());
    let deadline = Instant::now() + Duration::from_secs(40);
    while alert_rows(&server, &alerts, "").len() < expected.len() && Instant::now() < deadline {
        assert!(running.child.try_wait().expect("wait").is_none(), "a polled source runs until stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) with a child's pid.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let stopped = wait_all(vec![running]).pop().expect("one outcome");
    assert_eq!(stopped.code, Some(0), "stopped with a savepoint: {stopped:?}");
    assert_same("alerts in the table, blocked cards polled", &expected, &alert_rows(&server, &alerts, ""));
}

/// Rows that do not fit the record go to dead letters and the job goes on: read through a query
/// (its `&` written `%26`, which leaves out row 4) ordered by an `id` column, whose `ts_ms` is a
/// NUMERIC here, one of them not a whole number, and one row without a card.
#[test]
fn rows_that_do_not_fit_go_to_dead_letters_through_a_query() {
    let Some(server) = server("rows_that_do_not_fit_go_to_dead_letters_through_a_query") else { return };
    let dir = TempDir::new("pg-source-dead");
    let name = table("dead");
    let _drop = DropTables(server.clone(), vec![name.clone()]);
    psql(&server, &format!("CREATE TABLE \"{name}\" (id INTEGER, ts_ms NUMERIC, card_id BIGINT, blocked BOOLEAN)"));
    psql(
        &server,
        &format!(
            "INSERT INTO \"{name}\" VALUES (1, {T0}, 5, true), (2, {T0}.5, 6, true), (3, {}, NULL, true), (4, {}, 7, false)",
            T0 + 1,
            T0 + 2
        ),
    );
    let query = format!("SELECT id, ts_ms, card_id, blocked FROM \"{name}\" WHERE (id %26 4) = 0").replace(' ', "%20");
    let dead = dir.join("dead.csv");
    let out = dir.join("alerts.csv");
    run(
        "dead letters",
        args![
            "run",
            "fraud-detection",
            "-q",
            "--source",
            "payments=gen:count=2000",
            "--source",
            "authorizations=gen:count=2000",
            "--source",
            format!("blocked_cards=postgres://postgres@{server}/test?query={query}&ts=id"),
            "--sink",
            format!("alerts={}", file_uri(&out)),
            "--sink",
            format!("dead_letters={}", file_uri(&dead))
        ],
        dir.path(),
    )
    .assert_success();
    let dead = data_lines(&dead, DEAD_LETTER_HEADER);
    assert_eq!(dead.len(), 2, "the ts_ms that is not a whole number and the missing card: {dead:?}");
    assert!(dead.iter().all(|d| d.starts_with("blocked_cards,postgres query row,")), "{dead:?}");
    assert!(dead.iter().any(|d| d.contains(&format!("{T0}.5"))) && dead.iter().any(|d| d.contains("\"\"card_id\"\":null")), "{dead:?}");
}

/// One card's payments, by event time, from `generate-payments` with the same options.
fn payments_of(dir: &TempDir, generator: &str) -> Vec<Payment> {
    let file = dir.join("payments.csv");
    run(
        "payments",
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
    data_lines(&file, PAYMENT_HEADER).iter().map(|l| Payment::parse(l)).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn sleep_until_ms(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        std::thread::sleep(Duration::from_millis(at_ms - now));
    }
}

/// The test the issue asks for: payments paced so that their event time follows the clock, and
/// a blocked card inserted into the table while the job runs (1 s ahead of the clock): the
/// payments of that card from its `ts_ms` on are alerted, those before it are not; a row of the
/// snapshot takes effect at its own time. With `outage`, the server is away for 1.5 s right after
/// the insert (through a proxy): the source reconnects and the row still takes effect at its time,
/// since the table's watermark does not move while no poll succeeds.
fn live_insert(test: &str, outage: bool) {
    let Some(server) = server(test) else { return };
    let dir = TempDir::new("pg-source-live");
    let server_port: u16 = server.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("HOST:PORT");
    let proxy_port = free_port();
    let mut proxy = outage.then(|| Proxy::new(proxy_port, server_port));
    let source_server = if outage { format!("127.0.0.1:{proxy_port}") } else { server.clone() };
    // 12 s of payments (and their authorizations) at 200 a second each, on 20 cards, starting
    // 1.5 s from now; paced at 400 events a second in all, event time keeps up with the clock.
    let start_ms = now_ms() + 1_500;
    let generator = format!("count=2400,events_per_sec=200,cards=20,start_ms={start_ms}");
    let payments = payments_of(&dir, &generator);
    let end_ms = payments.iter().map(|p| p.ts_ms).max().expect("payments");
    let blocked = table("live_blocked");
    let alerts = table("live_alerts");
    let _drop = DropTables(server.clone(), vec![blocked.clone(), alerts.clone()]);
    let (snapshot_card, live_card) = (3u64, 11u64);
    create_blocked_table(&server, &blocked, &[Blocked { ts_ms: start_ms + 2_000, card_id: snapshot_card, blocked: true }]);
    let a = args![
        "run",
        "fraud-detection",
        "-q",
        "-w",
        "2",
        "--source",
        format!("payments=gen:{generator}"),
        "--source",
        format!("authorizations=gen:{generator}"),
        "--source",
        format!("blocked_cards=postgres://postgres@{source_server}/test?table={blocked}&ts=ts_ms&poll=200ms&reconnect_timeout=20s"),
        "--sink",
        format!("alerts=postgres://postgres@{server}/test?table={alerts}&create=true"),
        "--set",
        "max_per_window=100000",
        "--checkpoint-dir",
        dir.join("chk").display(),
        "--checkpoint-interval",
        "200ms",
        "--rate",
        "400"
    ];
    let mut running = spawn("live", a, dir.path());

    sleep_until_ms(start_ms + 4_000);
    let live_ts = now_ms() + 1_000;
    psql(&server, &format!("INSERT INTO \"{blocked}\" VALUES ({live_ts}, {live_card}, true)"));
    if let Some(p) = proxy.as_mut() {
        p.stop();
        std::thread::sleep(Duration::from_millis(1_500));
        p.start();
    }

    let expected: BTreeSet<(u64, String)> = payments
        .iter()
        .filter(|p| (p.card_id == snapshot_card && p.ts_ms >= start_ms + 2_000) || (p.card_id == live_card && p.ts_ms >= live_ts))
        .map(|p| (p.card_id, p.txn_id.clone()))
        .collect();
    let before = payments.iter().filter(|p| p.card_id == live_card && p.ts_ms < live_ts).count();
    let after = payments.iter().filter(|p| p.card_id == live_card && p.ts_ms >= live_ts).count();
    assert!(before > 20 && after > 20, "the live card pays before ({before}) and after ({after}) its block");

    // Wait for the last payment to pass the table's watermark and its alerts to be committed.
    sleep_until_ms(end_ms + 2_000);
    let blocked_alerts = || {
        let rows = alert_rows(&server, &alerts, "WHERE rule = 'blocked-card'");
        rows.iter().map(|r| (r[1].parse::<u64>().expect("card_id"), r[2].clone())).collect::<BTreeSet<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocked_alerts().len() < expected.len() && Instant::now() < deadline {
        assert!(running.child.try_wait().expect("wait").is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A live source runs until stopped: SIGTERM stops it with a savepoint.
    // SAFETY: kill(2) with a child's pid.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let outcome = wait_all(vec![running]).pop().expect("one outcome");
    assert_eq!(outcome.code, Some(0), "stopped with a savepoint: {outcome:?}");
    let got = blocked_alerts();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        got == expected,
        "blocked-card alerts: {} expected, {} got; missing {missing:?}, unexpected {extra:?} (live block at {live_ts})",
        expected.len(),
        got.len()
    );
    let details = psql(&server, &format!("SELECT DISTINCT detail FROM \"{alerts}\" WHERE rule = 'blocked-card' AND card_id = {live_card}"));
    assert_eq!(details.trim(), format!("card blocked since {live_ts}"));
}

#[test]
fn a_card_blocked_while_the_job_runs_is_alerted_from_its_ts_on() {
    live_insert("a_card_blocked_while_the_job_runs_is_alerted_from_its_ts_on", false);
}

#[test]
fn a_card_blocked_during_a_server_outage_is_alerted_from_its_ts_on() {
    live_insert("a_card_blocked_during_a_server_outage_is_alerted_from_its_ts_on", true);
}

/// The table's position is in the checkpoints: a job killed with `kill -9` after a card was
/// blocked, and restored after another was blocked while it was down, alerts each card from its
/// `ts_ms` on, each alert once (alerts go into a table, exactly-once).
#[test]
fn a_restore_after_kill_9_resumes_the_table_from_its_checkpointed_position() {
    let Some(server) = server("a_restore_after_kill_9_resumes_the_table_from_its_checkpointed_position") else { return };
    let dir = TempDir::new("pg-source-restore");
    let start_ms = now_ms() + 1_500;
    let generator = format!("count=3000,events_per_sec=200,cards=20,start_ms={start_ms}");
    let payments = payments_of(&dir, &generator);
    let end_ms = payments.iter().map(|p| p.ts_ms).max().expect("payments");
    let blocked = table("restore_blocked");
    let alerts = table("restore_alerts");
    let _drop = DropTables(server.clone(), vec![blocked.clone(), alerts.clone()]);
    create_blocked_table(&server, &blocked, &[]);
    let chk = dir.join("chk");
    let job = |restore: bool| {
        let mut a = args![
            "run",
            "fraud-detection",
            "-q",
            "-w",
            "2",
            "--source",
            format!("payments=gen:{generator}"),
            "--source",
            format!("authorizations=gen:{generator}"),
            "--source",
            format!("blocked_cards=postgres://postgres@{server}/test?table={blocked}&ts=ts_ms&poll=200ms"),
            "--sink",
            format!("alerts=postgres://postgres@{server}/test?table={alerts}&create=true"),
            "--set",
            "max_per_window=100000",
            "--checkpoint-dir",
            chk.display(),
            "--checkpoint-interval",
            "200ms",
            "--rate",
            "400"
        ];
        if restore {
            a.extend(args!["--restore", "latest"]);
        }
        a
    };
    let (first_card, second_card) = (5u64, 9u64);
    let mut running = spawn("to kill", job(false), dir.path());
    sleep_until_ms(start_ms + 3_000);
    let first_ts = now_ms() + 1_000;
    psql(&server, &format!("INSERT INTO \"{blocked}\" VALUES ({first_ts}, {first_card}, true)"));
    std::thread::sleep(Duration::from_millis(1_500));
    wait_for_checkpoint(&mut running, &chk, Duration::from_secs(10));
    running.child.kill().expect("kill -9");
    let killed = wait_all(vec![running]).pop().expect("one outcome");
    assert_ne!(killed.code, Some(0), "killed before the end: {killed:?}");
    assert!(has_checkpoint(&chk), "a checkpoint to restore");
    let second_ts = now_ms() + 500;
    psql(&server, &format!("INSERT INTO \"{blocked}\" VALUES ({second_ts}, {second_card}, true)"));

    let mut expected: Vec<(u64, String)> = payments
        .iter()
        .filter(|p| (p.card_id == first_card && p.ts_ms >= first_ts) || (p.card_id == second_card && p.ts_ms >= second_ts))
        .map(|p| (p.card_id, p.txn_id.clone()))
        .collect();
    expected.sort();
    for (card, ts) in [(first_card, first_ts), (second_card, second_ts)] {
        let (before, after) =
            payments.iter().filter(|p| p.card_id == card).fold((0, 0), |(b, a), p| if p.ts_ms < ts { (b + 1, a) } else { (b, a + 1) });
        assert!(before > 20 && after > 20, "card {card} pays before ({before}) and after ({after}) its block");
    }
    let running = spawn("restored", job(true), dir.path());
    let blocked_alerts = || {
        let rows = alert_rows(&server, &alerts, "WHERE rule = 'blocked-card'");
        let mut alerts: Vec<(u64, String)> = rows.iter().map(|r| (r[1].parse::<u64>().expect("card_id"), r[2].clone())).collect();
        alerts.sort();
        alerts
    };
    sleep_until_ms(end_ms + 2_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocked_alerts().len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) with a child's pid.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let outcome = wait_all(vec![running]).pop().expect("one outcome");
    assert_eq!(outcome.code, Some(0), "the restored run stopped with a savepoint: {outcome:?}");
    assert_same("blocked-card alerts after a kill -9 and a restore", &expected, &blocked_alerts());
}

/// A server away longer than `reconnect_timeout` fails the job (exit 1) with an error naming it.
#[test]
fn a_table_away_past_reconnect_timeout_fails_the_job_naming_the_server() {
    let Some(server) = server("a_table_away_past_reconnect_timeout_fails_the_job_naming_the_server") else { return };
    let dir = TempDir::new("pg-source-away");
    let server_port: u16 = server.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("HOST:PORT");
    let proxy_port = free_port();
    let mut proxy = Proxy::new(proxy_port, server_port);
    let through = format!("127.0.0.1:{proxy_port}");
    let blocked = table("away");
    let _drop = DropTables(server.clone(), vec![blocked.clone()]);
    create_blocked_table(&server, &blocked, &[]);
    let a = args![
        "run",
        "fraud-detection",
        "-q",
        "--source",
        "payments=gen:count=100000,events_per_sec=1000",
        "--source",
        "authorizations=gen:count=100000,events_per_sec=1000",
        "--source",
        format!("blocked_cards=postgres://postgres@{through}/test?table={blocked}&ts=ts_ms&poll=100ms&reconnect_timeout=2s"),
        "--sink",
        format!("alerts={}", file_uri(&dir.join("alerts.csv"))),
        "--rate",
        "2000"
    ];
    let running = spawn("away", a, dir.path());
    std::thread::sleep(Duration::from_millis(1_500));
    let stopped = Instant::now();
    proxy.stop();
    let outcome = wait_all(vec![running]).pop().expect("one outcome");
    assert_eq!(outcome.code, Some(1), "a failed run: {outcome:?}");
    assert!(stopped.elapsed() < Duration::from_secs(15), "failed after {:?}", stopped.elapsed());
    assert!(outcome.stderr.contains("error:"), "an error line:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(&format!("postgres at {through}/test")) && outcome.stderr.contains("reconnect_timeout"),
        "the error names the server and says why:\n{}",
        outcome.stderr
    );
}

/// `examples/nats_to_postgres.rs` against the real NATS (127.0.0.1:4222) and PostgreSQL: the
/// windows it upserts from payments on a stream, checkpointed, are those it computes from the
/// same payments generated straight into a file.
#[cfg(feature = "nats")]
#[test]
fn the_nats_to_postgres_example_upserts_the_windows_of_the_payments_on_a_stream() {
    let test = "the_nats_to_postgres_example_upserts_the_windows_of_the_payments_on_a_stream";
    let Some(server) = server(test) else { return };
    let nats = "127.0.0.1:4222";
    let missing = format!("no NATS server answers on {nats} (nats-server -js -a 127.0.0.1; or run .ci/run)");
    if !service_available(test, paystream_nats::admin::server_answers(nats), &missing) {
        return;
    }
    let example = example_binary("nats_to_postgres");
    let dir = TempDir::new("pg-example");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() % 1_000_000_000);
    let stream = format!("nats://{nats}/PSTEST_EXAMPLE_{}_{nanos}", std::process::id());
    struct DeleteStream(String);
    impl Drop for DeleteStream {
        fn drop(&mut self) {
            paystream_nats::admin::delete_stream(&self.0).ok();
        }
    }
    let _delete = DeleteStream(stream.clone());
    let windows = table("example_windows");
    let _drop = DropTables(server.clone(), vec![windows.clone()]);
    let generator = "payments=gen:count=20000,seed=3";

    let load = args!["run", "generate-payments", "-q", "--source", generator, "--sink", format!("payments={stream}?subject=pay")];
    run_program("load the stream", &example, load, dir.path()).assert_success();
    let reference = dir.join("reference.csv");
    let direct = args!["run", "merchant-windows", "-q", "--source", generator, "--sink", format!("windows={}", file_uri(&reference))];
    run_program("windows from the generator", &example, direct, dir.path()).assert_success();
    let header = "window_start_ms,merchant_id,payment_count,amount_cents";
    let mut expected = data_lines(&reference, header);
    expected.sort();
    assert!(expected.len() > 100, "windows to compare: {}", expected.len());

    let sink = format!("windows=postgres://postgres@{server}/test?table={windows}&create=true&mode=upsert&key=window_start_ms,merchant_id");
    let job = args![
        "run",
        "merchant-windows",
        "-q",
        "-w",
        "2",
        "--checkpoint-dir",
        dir.join("chk").display(),
        "--checkpoint-interval",
        "200ms",
        "--source",
        format!("payments={stream}?bounded=true"),
        "--sink",
        sink
    ];
    run_program("windows from the stream into a table", &example, job, dir.path()).assert_success();
    let text = psql(&server, &format!("COPY (SELECT {} FROM \"{windows}\") TO STDOUT (FORMAT csv)", header.replace(',', ", ")));
    let mut actual: Vec<String> = text.lines().map(String::from).collect();
    actual.sort();
    assert_same("the example's windows in the table", &expected, &actual);
}
