//! The `postgres://` sink against a real server (PostgreSQL 15 on 127.0.0.1:5432, trust auth,
//! database `test`; `.ci/run` starts a private cluster when none answers).
//!
//! `PAYSTREAM_POSTGRES` (default `127.0.0.1:5432`) is the server, read back with `psql`. Without
//! one, these tests print a loud SKIP and pass, except under `CI=true`, where they fail. Each test
//! writes a table of its own and drops it at the end.
//!
//! `PAYSTREAM_POSTGRES_PREPARED` (`.ci/run` starts one on 127.0.0.1:5439) is a server with
//! `max_prepared_transactions` above 0, for the prepared-transaction protocol.
//!
//! `PAYSTREAM_POSTGRES_KILLS` sets how many `kill -9`s each exactly-once test makes (default 10:
//! crashes inside the transaction, between the checkpoint and its commit, for the prepared
//! protocol between prepare and checkpoint, and at random moments, in turn).

#[macro_use]
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use proxy::{free_port, Proxy};

const WINDOWS_HEADER: &str =
    "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents";

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

/// Runs `sql` with psql as user postgres in database `test`: its unaligned output, or its error.
fn try_psql(server: &str, sql: &str) -> Result<String, String> {
    let (host, port) = server.rsplit_once(':').expect("HOST:PORT");
    let out = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "postgres", "-d", "test", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs (install the postgresql client)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).expect("utf-8"))
}

/// [`try_psql`], failing the test on an error.
fn psql(server: &str, sql: &str) -> String {
    try_psql(server, sql).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
}

/// Every row of `table` as CSV lines in the columns of `WINDOWS_HEADER`, sorted.
fn rows(server: &str, table: &str) -> Vec<String> {
    rows_of(server, table, WINDOWS_HEADER)
}

/// Every row of `table` as CSV lines in the columns of `header`, sorted.
fn rows_of(server: &str, table: &str, header: &str) -> Vec<String> {
    let columns = header.replace(',', ", ");
    let text = psql(server, &format!("COPY (SELECT {columns} FROM \"{table}\") TO STDOUT (FORMAT csv)"));
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.sort();
    lines
}

/// Drops the table (and its bookkeeping rows) when the test ends, passed or failed.
struct DropTable<'a>(&'a str, String);

impl Drop for DropTable<'_> {
    fn drop(&mut self) {
        let (host, port) = self.0.rsplit_once(':').unwrap_or(("127.0.0.1", "5432"));
        let sql = format!("DROP TABLE IF EXISTS \"{0}\"; DELETE FROM paystream_commits WHERE target = '{0}'", self.1);
        Command::new("psql").args(["-h", host, "-p", port, "-U", "postgres", "-d", "test", "-X", "-q", "-c", &sql]).output().ok();
    }
}

fn sink_uri(server: &str, table: &str, options: &str) -> String {
    format!("windows=postgres://postgres@{server}/test?table={table}&create=true{options}")
}

/// The windows of the generated payments `generator`, computed into a file, sorted.
fn reference_windows(dir: &TempDir, generator: &str) -> Vec<String> {
    let mut lines = reference_windows_in_file_order(dir, generator, &[]);
    lines.sort();
    lines
}

#[test]
fn windows_into_a_table_at_1_and_2_workers_equal_the_file_sinks() {
    let Some(server) = server("windows_into_a_table_at_1_and_2_workers_equal_the_file_sinks") else { return };
    // With checkpoints at 1 and 2 workers, and once without (lines copied as they come).
    let dir = TempDir::new("postgres-append");
    let generator = "count=8000";
    let expected = reference_windows(&dir, generator);
    assert!(expected.len() > 100, "the reference has windows: {}", expected.len());
    for (workers, checkpointed) in [("1", true), ("2", true), ("2", false)] {
        let name = table(&format!("append{workers}"));
        let _drop = DropTable(&server, name.clone());
        let started = Instant::now();
        let mut job = args![
            "run",
            "throughput-windows",
            "-q",
            "-w",
            workers,
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            sink_uri(&server, &name, "")
        ];
        if checkpointed {
            job.extend(args!["--checkpoint-dir", dir.join(&format!("chk-{workers}")).display(), "--checkpoint-interval", "100ms"]);
        }
        run("postgres", job, dir.path()).assert_success();
        let what = format!("{workers} worker(s), checkpoints: {checkpointed}");
        eprintln!("{what}: {} rows in {:?}", expected.len(), started.elapsed());
        assert_same(&format!("table rows, {what}"), &expected, &rows(&server, &name));
        let types = psql(
            &server,
            &format!(
                "SELECT string_agg(data_type, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = '{name}'"
            ),
        );
        assert_eq!(types.trim(), "bigint,bigint,bigint,bigint,bigint,bigint,numeric,bigint,bigint", "the type rule");
    }
}

#[test]
fn upsert_by_key_replaces_rows_instead_of_adding_them() {
    let Some(server) = server("upsert_by_key_replaces_rows_instead_of_adding_them") else { return };
    let dir = TempDir::new("postgres-upsert");
    let name = table("upsert");
    let _drop = DropTable(&server, name.clone());
    let upsert = |generator: &str, workers: &str| {
        run(
            "upsert",
            args![
                "run",
                "throughput-windows",
                "-q",
                "-w",
                workers,
                "--source",
                format!("payments=gen:{generator}"),
                "--sink",
                sink_uri(&server, &name, "&mode=upsert&key=window_start_ms,merchant_id"),
                "--checkpoint-dir",
                dir.join(&format!("chk-{generator}")).display(),
                "--checkpoint-interval",
                "100ms"
            ],
            dir.path(),
        )
        .assert_success();
    };
    // A shorter run first: its last windows are cut short, so the longer run's rows for the same
    // (window, merchant) differ and must replace them.
    upsert("count=3000", "2");
    let first = rows(&server, &name);
    upsert("count=6000", "1");
    let expected = reference_windows(&dir, "count=6000");
    let actual = rows(&server, &name);
    assert_same("table rows after two upserting runs", &expected, &actual);
    let replaced = first.iter().filter(|row| !actual.contains(row)).count();
    assert!(replaced > 0, "some rows of the first run were replaced by the second's");
    let primary = psql(&server, &format!("SELECT count(*) FROM pg_indexes WHERE tablename = '{name}' AND indexdef LIKE '%UNIQUE%'"));
    assert_eq!(primary.trim(), "1", "create=true made the key the primary key");
}

/// A key that repeats within an epoch (a merchant has several windows in most epochs): the last
/// line of a key in an epoch wins, and later epochs replace earlier ones, so each merchant's row
/// is its latest window.
#[test]
fn upsert_keeps_the_last_row_of_a_key_repeated_within_an_epoch() {
    let Some(server) = server("upsert_keeps_the_last_row_of_a_key_repeated_within_an_epoch") else { return };
    let dir = TempDir::new("postgres-upsert-latest");
    let name = table("latest");
    let _drop = DropTable(&server, name.clone());
    let generator = "count=6000";
    run(
        "upsert by merchant",
        args![
            "run",
            "throughput-windows",
            "-q",
            "-w",
            "2",
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            sink_uri(&server, &name, "&mode=upsert&key=merchant_id"),
            "--checkpoint-dir",
            dir.join("chk").display(),
            "--checkpoint-interval",
            "1s"
        ],
        dir.path(),
    )
    .assert_success();
    let mut latest = std::collections::BTreeMap::new();
    for line in reference_windows(&dir, generator) {
        let fields: Vec<&str> = line.split(',').collect();
        let (start, merchant): (u64, String) = (fields[0].parse().expect("window_start_ms"), fields[2].to_string());
        let entry = latest.entry(merchant).or_insert((start, line.clone()));
        if start >= entry.0 {
            *entry = (start, line.clone());
        }
    }
    let mut expected: Vec<String> = latest.into_values().map(|(_, line)| line).collect();
    expected.sort();
    assert_same("one row per merchant, its latest window", &expected, &rows(&server, &name));
}

#[test]
fn a_server_that_does_not_answer_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let dir = TempDir::new("postgres-down");
    let started = Instant::now();
    let out = run(
        "no server",
        args![
            "run",
            "throughput-windows",
            "--source",
            "payments=gen:count=100",
            "--sink",
            "windows=postgres://postgres@127.0.0.1:1/test?table=t&connect_timeout=2s"
        ],
        dir.path(),
    );
    assert_eq!(out.code, Some(2), "a failed start (before the run): {out:?}");
    assert!(out.stderr.contains("error:"), "an error line:\n{}", out.stderr);
    assert!(out.stderr.contains("cannot connect to postgres at 127.0.0.1:1/test"), "the error names the address:\n{}", out.stderr);
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

/// The commit protocol a kill test drives, and where it crashes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    WriteAhead,
    Prepared,
}

/// The server with `max_prepared_transactions` above 0 (`PAYSTREAM_POSTGRES_PREPARED`, which
/// `.ci/run` starts on 127.0.0.1:5439), or `None` (after a loud message) outside CI.
fn prepared_server(test: &str) -> Option<String> {
    let address = std::env::var("PAYSTREAM_POSTGRES_PREPARED").ok();
    let answers = address.as_deref().is_some_and(|a| {
        TcpStream::connect_timeout(&a.parse().expect("PAYSTREAM_POSTGRES_PREPARED is HOST:PORT"), Duration::from_secs(2)).is_ok()
    });
    let missing = format!(
        "no PostgreSQL server with max_prepared_transactions > 0 answers at PAYSTREAM_POSTGRES_PREPARED ({address:?}; .ci/run \
         starts one on 127.0.0.1:5439)"
    );
    if !service_available(test, answers, &missing) {
        return None;
    }
    let server = address.expect("answers");
    let max = psql(&server, "SHOW max_prepared_transactions");
    assert_ne!(max.trim(), "0", "PAYSTREAM_POSTGRES_PREPARED={server} has max_prepared_transactions = 0");
    Some(server)
}

/// The sink's hash of (job, sink, table), as it names its prepared transactions and staging
/// tables (FNV-1a over the parts, each followed by a zero byte).
fn target_hash(job: &str, sink: &str, table: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [job, sink, table] {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// A `kill -9` test of throughput-windows into `name`: `kills` crashed runs at seeded moments,
/// each restore at another worker count, then a run to the end; checks that nothing of the sink
/// is left open on the server.
/// What a kill test runs: the sink's protocol and URI options, the generator, `--set`s.
struct Trial<'a> {
    protocol: Protocol,
    options: &'a str,
    generator: &'a str,
    sets: &'a [&'a str],
    kills: usize,
}

fn crash_and_restore(server: &str, name: &str, dir: &TempDir, trial: Trial<'_>) {
    let Trial { protocol, options, generator, sets, kills } = trial;
    let chk = dir.join("chk");
    let job = |workers: u64, rate: bool, restore: bool| {
        let mut a = args![
            "run",
            "throughput-windows",
            "-q",
            "-w",
            workers,
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            sink_uri(server, name, options),
            "--sink",
            format!("late_payments={}", file_uri(&dir.join("late.csv"))),
            "--checkpoint-dir",
            chk.display(),
            "--checkpoint-interval",
            "100ms"
        ];
        for set in sets {
            a.extend(args!["--set", set]);
        }
        if rate {
            a.extend(args!["--rate", "4000"]);
        }
        if restore {
            a.extend(args!["--restore", "latest"]);
        }
        a
    };
    // Seeded: the same kill moments on every run.
    let mut rng = Rng(0x0070_6773_716c);
    let (mut crashed, mut restored, mut finished) = (0, 0, false);
    for i in 0..kills {
        // Every restore changes the worker count.
        let workers = 1 + (i as u64 % 2);
        let restore = has_checkpoint(&chk);
        if !restore {
            std::fs::remove_dir_all(&chk).ok();
        }
        restored += usize::from(restore);
        let (what, point) = match (protocol, i % 4) {
            // Rows and bookkeeping row sent, the transaction not yet committed or prepared.
            (_, 1) => ("inside a transaction", Some(format!("postgres:before-commit:{}", 1 + rng.below(4)))),
            // The checkpoint's manifest durable, its commit not yet done.
            (_, 2) => ("between the checkpoint and its commit", Some(format!("sink:before-publish:{}", 1 + rng.below(6)))),
            // Prepared, the checkpoint that would cover it not yet complete.
            (Protocol::Prepared, 3) => ("between prepare and checkpoint", Some(format!("postgres:after-prepare:{}", 1 + rng.below(4)))),
            _ => ("at a random moment", None),
        };
        let env: Vec<(&str, &str)> = point.as_deref().map(|v| ("PAYSTREAM_CRASH_AT", v)).into_iter().collect();
        let mut running = spawn_env("crashing run", job(workers, true, restore), dir.path(), &env);
        // A fresh run is killed once it has written a checkpoint (so that a loaded machine, where
        // a job starts slowly, still restores), a restored one at once; either after a random
        // delay.
        if !restore {
            wait_for_checkpoint(&mut running, &chk, Duration::from_secs(20));
        }
        // An injected crash gets longer to come: most do, the rest are killed at random.
        let delay = rng.below(1500) + if point.is_some() { 1500 } else { 0 };
        let outcome = kill_after(running, Duration::from_millis(delay));
        let injected = outcome.stderr.contains("crash injected");
        let in_table = try_psql(server, &format!("SELECT count(*) FROM \"{name}\"")).map_or("no".into(), |n| n.trim().to_string());
        let what = if point.is_some() && !injected { format!("killed before the crash {what}") } else { format!("crash {what}") };
        eprintln!("run {i} ({workers} worker(s), restored: {restore}): {what}: exit {:?}, {in_table} rows", outcome.code);
        for line in outcome.stderr.lines().filter(|l| l.contains("postgres") || l.contains("error")) {
            eprintln!("    {line}");
        }
        if outcome.code == Some(0) {
            finished = true;
            break;
        }
        crashed += 1;
    }
    if !finished {
        let workers = 1 + (kills as u64 % 2);
        let restore = has_checkpoint(&chk);
        run("last run", job(workers, false, restore), dir.path()).assert_success();
    }
    assert!(crashed >= kills.min(4), "only {crashed} of {kills} runs crashed before the input ended: the test tests too little");
    assert!(restored + 1 >= crashed.min(4), "only {restored} restores from a checkpoint");
    let hash = target_hash("throughput-windows", "windows", name);
    let open = psql(server, &format!("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'paystream:{hash}:%'"));
    assert_eq!(open.trim(), "0", "no prepared transaction of the sink is left open");
    let stages = psql(server, &format!("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'paystream\\_stage\\_{hash}%'"));
    assert_eq!(stages.trim(), "0", "no staging table of the sink is left");
}

fn kills() -> usize {
    std::env::var("PAYSTREAM_POSTGRES_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

/// Appended windows after `kill -9`s: the table equals the uncrashed run's windows.
fn appended_windows_after_kills(server: &str, tag: &str, protocol: Protocol, options: &str) {
    let dir = TempDir::new(&format!("postgres-{tag}"));
    // 200 s of event time read in 10 s (--rate 4000): a window closes about every half second,
    // so most epochs have rows, and crashes meet commits with rows in them.
    let generator = "count=40000,events_per_sec=200";
    let expected = reference_windows(&dir, generator);
    let name = table(tag);
    let _drop = DropTable(server, name.clone());
    crash_and_restore(server, &name, &dir, Trial { protocol, options, generator, sets: &[], kills: kills() });
    assert_same("table rows after the crashes", &expected, &rows(server, &name));
}

#[test]
fn windows_into_a_table_are_exactly_once_after_kill_9_and_restores_at_other_worker_counts() {
    let Some(server) = server("windows_into_a_table_are_exactly_once_after_kill_9_and_restores_at_other_worker_counts") else { return };
    appended_windows_after_kills(&server, "kill", Protocol::WriteAhead, "&commit=write-ahead");
}

#[test]
fn prepared_transactions_are_exactly_once_after_kill_9_between_prepare_and_commit() {
    let Some(server) = prepared_server("prepared_transactions_are_exactly_once_after_kill_9_between_prepare_and_commit") else { return };
    // commit=auto takes the prepared protocol on this server.
    appended_windows_after_kills(&server, "prepared", Protocol::Prepared, "");
}

/// Late payments within the allowed lateness update windows that fired already: a second row
/// for the same (window, merchant), which the upsert puts in place of the first. Expected: the
/// last row of each key in the uncrashed run's file output.
fn latest_by_window_and_merchant(lines: Vec<String>) -> Vec<String> {
    let mut latest = std::collections::BTreeMap::new();
    let mut updates = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let key = (fields[0].to_string(), fields[2].to_string());
        updates += usize::from(latest.insert(key, line.clone()).is_some());
    }
    assert!(updates > 20, "the input makes updates ({updates}): the test tests too little");
    let mut rows: Vec<String> = latest.into_values().collect();
    rows.sort();
    rows
}

/// The windows of the generated payments `generator` with `--set`s, computed into a file, in the
/// order the file sink wrote them.
fn reference_windows_in_file_order(dir: &TempDir, generator: &str, sets: &[&str]) -> Vec<String> {
    let out = dir.join("reference.csv");
    let mut a = args![
        "run",
        "throughput-windows",
        "-q",
        "--source",
        format!("payments=gen:{generator}"),
        "--sink",
        format!("windows={}", file_uri(&out))
    ];
    for set in sets {
        a.extend(args!["--set", set]);
    }
    run("reference", a, dir.path()).assert_success();
    data_lines(&out, WINDOWS_HEADER)
}

#[test]
fn upserted_window_updates_are_exactly_once_after_kill_9_on_both_protocols() {
    let test = "upserted_window_updates_are_exactly_once_after_kill_9_on_both_protocols";
    // Every 50th payment 12 s late: past the 2 s bound and its 10 s window, within the 30 s
    // allowed lateness, so it updates its window.
    let generator = "count=40000,events_per_sec=200,late_every=50,late_by_ms=12000";
    let sets = ["allowed_lateness_ms=30000"];
    let upsert = "&mode=upsert&key=window_start_ms,merchant_id";
    for (protocol, server) in [(Protocol::Prepared, prepared_server(test)), (Protocol::WriteAhead, server(test))] {
        let Some(server) = server else { continue };
        let dir = TempDir::new("postgres-kill-upsert");
        let expected = latest_by_window_and_merchant(reference_windows_in_file_order(&dir, generator, &sets));
        let name = table("upsert_kill");
        let _drop = DropTable(&server, name.clone());
        let options = match protocol {
            Protocol::Prepared => format!("{upsert}&commit=prepared"),
            Protocol::WriteAhead => format!("{upsert}&commit=write-ahead"),
        };
        crash_and_restore(&server, &name, &dir, Trial { protocol, options: &options, generator, sets: &sets, kills: kills() });
        assert_same(&format!("{protocol:?}: one row per window and merchant, its last update"), &expected, &rows(&server, &name));
    }
}

#[test]
fn commit_prepared_on_a_server_without_prepared_transactions_names_the_setting() {
    let Some(server) = server("commit_prepared_on_a_server_without_prepared_transactions_names_the_setting") else { return };
    if psql(&server, "SHOW max_prepared_transactions").trim() != "0" {
        eprintln!("*** {server} has max_prepared_transactions above 0: nothing to refuse ***");
        return;
    }
    let dir = TempDir::new("postgres-no-prepare");
    let name = table("noprep");
    let _drop = DropTable(&server, name.clone());
    let out = run(
        "commit=prepared",
        args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            "payments=gen:count=100",
            "--sink",
            sink_uri(&server, &name, "&commit=prepared"),
            "--checkpoint-dir",
            dir.join("chk").display()
        ],
        dir.path(),
    );
    assert_eq!(out.code, Some(2), "refused before the run: {out:?}");
    assert!(out.stderr.contains("max_prepared_transactions is 0"), "names the setting:\n{}", out.stderr);
    assert!(out.stderr.contains("commit=write-ahead"), "names the fallback:\n{}", out.stderr);
}

#[test]
fn a_server_away_for_seconds_is_reconnected_and_one_away_too_long_fails_the_job_which_restores() {
    let Some(server) = server("a_server_away_for_seconds_is_reconnected_and_one_away_too_long_fails_the_job_which_restores") else {
        return;
    };
    let server_port: u16 = server.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("HOST:PORT");
    let proxy_port = free_port();
    let mut proxy = Proxy::new(proxy_port, server_port);
    let through_proxy = format!("127.0.0.1:{proxy_port}");
    let dir = TempDir::new("postgres-outage");
    let generator = "count=12000,events_per_sec=500";
    let expected = reference_windows(&dir, generator);
    let chk = dir.join("chk");
    let job = |table: &str, reconnect: &str, restore: bool| {
        let mut a = args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            format!("payments=gen:{generator}"),
            "--sink",
            sink_uri(&through_proxy, table, &format!("&reconnect_timeout={reconnect}")),
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
    let first = table("outage");
    let _drop = DropTable(&server, first.clone());
    let running = spawn("outage", job(&first, "60s", false), dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    proxy.stop();
    std::thread::sleep(Duration::from_secs(3));
    proxy.start();
    wait_all(vec![running]).pop().expect("outcome").assert_success();
    assert_same("table rows after a 3 s outage", &expected, &rows(&server, &first));

    // Away past reconnect_timeout: exit 1 with the reason; a restore finishes exactly-once.
    let second = table("outage2");
    let _drop2 = DropTable(&server, second.clone());
    std::fs::remove_dir_all(&chk).ok();
    let running = spawn("too long", job(&second, "2s", false), dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    proxy.stop();
    let failed = wait_all(vec![running]).pop().expect("outcome");
    assert_eq!(failed.code, Some(1), "a server away past reconnect_timeout fails the job: {failed:?}");
    assert!(failed.stderr.contains("reconnect_timeout"), "the error says why:\n{}", failed.stderr);
    proxy.start();
    assert!(has_checkpoint(&chk), "a checkpoint to restore");
    run("restore", job(&second, "2s", true), dir.path()).assert_success();
    assert_same("table rows after a failure and a restore", &expected, &rows(&server, &second));
}

/// Payments have text in a column the name rule would make BIGINT (`txn_id` holds `t42`): the
/// first lines' values make it TEXT, and every payment reads back as the file sink wrote it.
#[test]
fn a_column_whose_values_are_not_numbers_is_made_text() {
    let Some(server) = server("a_column_whose_values_are_not_numbers_is_made_text") else { return };
    let dir = TempDir::new("postgres-payments");
    let name = table("payments");
    let _drop = DropTable(&server, name.clone());
    let generator = "gen:count=3000";
    let file = dir.join("payments.csv");
    run(
        "file",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            format!("payments={generator}"),
            "--sink",
            format!("payments={}", file_uri(&file))
        ],
        dir.path(),
    )
    .assert_success();
    let uri = format!("payments=postgres://postgres@{server}/test?table={name}&create=true");
    run(
        "postgres",
        args!["run", "generate-payments", "-q", "-w", "2", "--source", format!("payments={generator}"), "--sink", uri],
        dir.path(),
    )
    .assert_success();
    let mut expected = data_lines(&file, PAYMENT_HEADER);
    expected.sort();
    assert_same("payments read back", &expected, &rows_of(&server, &name, PAYMENT_HEADER));
    let types = psql(
        &server,
        &format!("SELECT string_agg(data_type, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = '{name}'"),
    );
    assert_eq!(types.trim(), "bigint,text,bigint,bigint,bigint,text,text,text", "txn_id fell back to text");
}
