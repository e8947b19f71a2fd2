//! The `postgres://` source's split reader against a real server (127.0.0.1:5432, trust auth,
//! database `test`; `PAYSTREAM_POSTGRES=HOST:PORT` for another): what a snapshot and the polls
//! after it hand over, rows inserted with the same `ts` as the last one, a restore from a
//! position. Without a server the tests print a loud SKIP and pass, except under `CI=true`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use paystream_engine::connector::{Decode, SourceConnector, SplitReader};
use paystream_engine::decode::LineDecoder;
use paystream_engine::source::{Position, ReadStatus};
use paystream_postgres::PostgresSource;

/// The server's `HOST:PORT`, or `None` after a loud SKIP (a failure under `CI=true`).
fn server(test: &str) -> Option<String> {
    let address = std::env::var("PAYSTREAM_POSTGRES").unwrap_or_else(|_| "127.0.0.1:5432".into());
    let parsed = address.parse().expect("PAYSTREAM_POSTGRES is HOST:PORT");
    if TcpStream::connect_timeout(&parsed, Duration::from_secs(2)).is_ok() {
        return Some(address);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: no PostgreSQL server answers at {address}, and CI=true: .ci/run should have started one");
    }
    eprintln!("\n*** SKIPPED {test}: no PostgreSQL server answers at {address} (set PAYSTREAM_POSTGRES) ***\n");
    None
}

/// Runs `sql` (several statements allowed) on the server's database `test`.
fn execute(server: &str, sql: &str) {
    let (host, port) = server.rsplit_once(':').expect("HOST:PORT");
    let config = format!("host={host} port={port} user=postgres dbname=test");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await.expect("connects");
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql:?}: {e}"));
    });
}

/// A table name no other run uses, dropped at the end.
struct Table {
    server: String,
    name: String,
}

impl Table {
    fn new(server: &str, tag: &str) -> Table {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("src_{tag}_{}_{nanos}", std::process::id());
        execute(server, &format!("CREATE TABLE {name} (ts_ms BIGINT, card_id BIGINT, blocked BOOLEAN)"));
        Table { server: server.to_string(), name }
    }
    fn insert(&self, rows: &[(i64, i64, bool)]) {
        let values: Vec<String> = rows.iter().map(|(t, c, b)| format!("({t}, {c}, {b})")).collect();
        execute(&self.server, &format!("INSERT INTO {} VALUES {}", self.name, values.join(", ")));
    }
    fn uri(&self, options: &str) -> String {
        format!("postgres://postgres@{}/test?table={}&ts=ts_ms{options}", self.server, self.name)
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        execute(&self.server, &format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

/// Collects the messages a reader hands over.
#[derive(Default)]
struct Collect(Vec<String>);

impl Decode for Collect {
    fn file_lines(&mut self, _: &mut LineDecoder, _: &mut std::io::BufReader<std::fs::File>, _: usize) -> ReadStatus {
        unreachable!("a table has no file")
    }
    fn lines(&mut self, _: &mut LineDecoder, _: &mut dyn std::io::BufRead, _: usize) -> ReadStatus {
        unreachable!("a table has no byte stream")
    }
    fn message(&mut self, _: &mut LineDecoder, payload: &[u8], _: u64) {
        self.0.push(String::from_utf8(payload.to_vec()).expect("UTF-8 JSON"));
    }
}

/// Reads until `n` messages came (or the split ended), then on for `settle` to catch extra ones.
fn read(reader: &mut dyn SplitReader, n: usize, settle: Duration) -> (Vec<String>, ReadStatus) {
    let mut got = Collect::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut settled: Option<Instant> = None;
    loop {
        let status = reader.read(100, &mut got);
        match status {
            ReadStatus::Done | ReadStatus::Failed(_) => return (got.0, status),
            _ => {}
        }
        if got.0.len() >= n {
            let since = *settled.get_or_insert_with(Instant::now);
            if since.elapsed() >= settle {
                return (got.0, status);
            }
        }
        assert!(Instant::now() < deadline, "only {} of {n} rows came: {:?}", got.0.len(), got.0);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn row(ts: i64, card: i64, blocked: bool) -> String {
    format!("{{\"ts_ms\":{ts},\"card_id\":{card},\"blocked\":{blocked}}}")
}

#[test]
fn a_snapshot_then_polls_hand_over_each_row_once_including_rows_at_the_last_ts() {
    let Some(server) = server("a_snapshot_then_polls_hand_over_each_row_once_including_rows_at_the_last_ts") else { return };
    let table = Table::new(&server, "poll");
    table.insert(&[(2, 3, false), (1, 1, true), (2, 2, true)]);
    let source = PostgresSource.open("blocked_cards", &table.uri("&poll=50ms&lag=0")).expect("opens");
    let mut reader = source.open_split(0).expect("split 0");
    assert_eq!(reader.position(), Position::default());
    let (rows, status) = read(&mut *reader, 3, Duration::from_millis(300));
    assert_eq!(rows, [row(1, 1, true), row(2, 2, true), row(2, 3, false)], "the snapshot, in ts order, then by content");
    assert_eq!(status, ReadStatus::Idle, "a polled table stays live");
    assert_eq!(reader.position().offset, 2, "the position is the largest ts");

    // The watermark follows the server's clock (lag=0) while nothing comes.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let before = reader.complete_before().expect("a polled split knows what it has handed over");
    assert!(before + 5_000 > now_ms && before <= now_ms + 1_000, "complete_before {before} is about now ({now_ms})");

    // A row at the last ts (2) inserted after it was read is not lost; a row seen is not repeated.
    table.insert(&[(2, 4, true), (3, 5, true)]);
    let (rows, _) = read(&mut *reader, 2, Duration::from_millis(300));
    assert_eq!(rows, [row(2, 4, true), row(3, 5, true)]);
    // An equal row at the last ts is another row.
    table.insert(&[(3, 5, true)]);
    let (rows, _) = read(&mut *reader, 1, Duration::from_millis(300));
    assert_eq!(rows, [row(3, 5, true)]);
    let position = reader.position();
    assert_eq!(position.offset, 3);
    assert!(reader.complete_before().expect("still known") >= before, "complete_before never goes back");
    drop(reader);

    // A restore resumes from the position: only rows inserted since come, also those at the
    // last ts, one of them sorting before the rows handed over there (a count alone would skip
    // it and hand over one of those again).
    table.insert(&[(3, 6, false), (9, 7, true), (3, 1, true)]);
    let mut restored = source.open_split(0).expect("split 0");
    restored.seek(&position).expect("seeks");
    let (rows, _) = read(&mut *restored, 3, Duration::from_millis(300));
    assert_eq!(rows, [row(3, 1, true), row(3, 6, false), row(9, 7, true)], "after a restore");
}

#[test]
fn without_poll_the_snapshot_is_read_and_the_split_ends() {
    let Some(server) = server("without_poll_the_snapshot_is_read_and_the_split_ends") else { return };
    let table = Table::new(&server, "bounded");
    // More rows than one fetch holds, and one with a NULL ts, which comes last.
    let rows: Vec<(i64, i64, bool)> = (0..2_500).map(|i| (1_000 + i / 3, i, i % 2 == 0)).collect();
    table.insert(&rows);
    execute(&server, &format!("INSERT INTO {} VALUES (NULL, 99, true)", table.name));
    let source = PostgresSource.open("blocked_cards", &table.uri("&batch=700")).expect("opens");
    let mut reader = source.open_split(0).expect("split 0");
    let (got, status) = read(&mut *reader, usize::MAX, Duration::ZERO);
    assert_eq!(status, ReadStatus::Done);
    assert_eq!(got.len(), 2_501);
    assert_eq!(got.last().map(String::as_str), Some("{\"ts_ms\":null,\"card_id\":99,\"blocked\":true}"));
    let mut expected: Vec<(i64, i64, bool)> = rows.clone();
    expected.sort_by_key(|(t, c, b)| (*t, row(*t, *c, *b)));
    let expected: Vec<String> = expected.iter().map(|(t, c, b)| row(*t, *c, *b)).collect();
    assert_eq!(&got[..2_500], &expected[..], "every row once, in ts order");
    assert!(reader.complete_before().is_none(), "a bounded split ends instead");
}

#[test]
fn a_query_a_missing_column_and_a_non_integer_ts_are_checked_at_open() {
    let Some(server) = server("a_query_a_missing_column_and_a_non_integer_ts_are_checked_at_open") else { return };
    let table = Table::new(&server, "query");
    table.insert(&[(5, 1, true), (6, 2, false), (7, 3, true)]);
    // A query, percent-encoded where it holds '&', polled by its own column.
    let query = format!("SELECT ts_ms AS at_ms, card_id FROM {} WHERE blocked AND (card_id %26 1) = 1", table.name);
    let uri = format!("postgres://postgres@{server}/test?query={query}&ts=at_ms&poll=50ms");
    let source = PostgresSource.open("q", &uri).expect("opens");
    let mut reader = source.open_split(0).expect("split 0");
    let (rows, _) = read(&mut *reader, 2, Duration::from_millis(200));
    assert_eq!(rows, ["{\"at_ms\":5,\"card_id\":1}", "{\"at_ms\":7,\"card_id\":3}"]);

    let e = PostgresSource.open("q", &table.uri("&poll=1s").replace("ts=ts_ms", "ts=nope")).expect_err("fails").to_string();
    assert!(e.contains("\"nope\" is not one of its columns"), "{e}");
    let text = format!("postgres://postgres@{server}/test?query=SELECT 'x'::text AS t&ts=t&poll=1s");
    let e = format!("{:#}", PostgresSource.open("q", &text).expect_err("fails"));
    assert!(e.contains("must be an integer"), "{e}");
    let e = format!("{:#}", PostgresSource.open("q", &table.uri("&poll=1s").replace(&table.name, "no_such_table")).expect_err("fails"));
    assert!(e.contains("no_such_table") && e.contains("does not exist"), "{e}");
    let e = PostgresSource.open("q", &format!("postgres://postgres@{server}/test?table=x&poll=1s")).expect_err("fails").to_string();
    assert!(e.contains("poll= needs ts="), "{e}");
    let e = PostgresSource.open("q", &table.uri("&format=csv")).expect_err("fails").to_string();
    assert!(e.contains("format=\"csv\"") && e.contains("JSON objects by column name"), "{e}");
    PostgresSource.open("q", &table.uri("&format=jsonl")).expect("jsonl is the format");
}
