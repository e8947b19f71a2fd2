//! Poison records: a payment whose event time is near `u64::MAX` once made window starts overflow
//! and wrap, so a job panicked (debug builds) or looped forever while its memory grew (release
//! builds). Each test runs the real binary on good payments with one such record at the end or in
//! the middle, in CSV and JSON lines, at 1 and 2 workers and with checkpoints, and checks that the
//! job ends normally with the output it gives without that record, the record in dead letters.
//! A record at exactly `i64::MAX`, the largest accepted event time, counts in its own window.

#[macro_use]
mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Event times above `i64::MAX` ms: the largest `u64`, and the one from the issue (a `u64` near
/// the top, not itself a multiple of any window size).
const POISON_TIMES: [u64; 2] = [u64::MAX, 18_446_744_073_709_550_000];

/// The good payments every test starts from.
const COUNT: u64 = 2_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Csv,
    Jsonl,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// A payment line with event time `ts_ms`, in this format.
    fn payment(self, ts_ms: u64, txn_id: &str) -> String {
        match self {
            Format::Csv => format!("{ts_ms},{txn_id},1,2,100,EUR,DE,APPROVED"),
            Format::Jsonl => format!(
                r#"{{"ts_ms":{ts_ms},"txn_id":"{txn_id}","card_id":1,"merchant_id":2,"amount_cents":100,"currency":"EUR","country":"DE","status":"APPROVED"}}"#
            ),
        }
    }
}

/// Where the poison record goes in the file.
#[derive(Clone, Copy, Debug)]
enum At {
    Middle,
    End,
}

/// Writes `COUNT` generated payments to `good.FORMAT` in `dir` and returns the file's lines.
fn good_payments(dir: &TempDir, format: Format) -> Vec<String> {
    let path = dir.join(&format!("good.{}", format.extension()));
    let sink = format!("payments={}", file_uri(&path));
    run(
        "generate payments",
        args!["run", "generate-payments", "-q", "--source", format!("payments=gen:count={COUNT}"), "--sink", sink],
        dir.path(),
    )
    .assert_success();
    read(&path).lines().map(str::to_string).collect()
}

/// Writes `lines` with `extra` inserted at `at` (after the CSV header) to `name` in `dir`.
fn with_record(dir: &TempDir, name: &str, lines: &[String], extra: &str, at: At, format: Format) -> PathBuf {
    let mut lines = lines.to_vec();
    let index = match at {
        At::Middle => lines.len() / 2,
        At::End => lines.len(),
    };
    assert!(format == Format::Jsonl || index > 0, "after the header");
    lines.insert(index, extra.to_string());
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A job, its output sink, the other sources it needs, and parameters that make it alert on
/// `COUNT` payments.
struct Job {
    name: &'static str,
    sink: &'static str,
    other_sources: &'static [&'static str],
    params: &'static [&'static str],
}

const THROUGHPUT_WINDOWS: Job = Job { name: "throughput-windows", sink: "windows", other_sources: &[], params: &[] };
const CARD_VELOCITY: Job = Job { name: "card-velocity", sink: "alerts", other_sources: &[], params: &["min_count=2"] };
const FRAUD_DETECTION: Job = Job {
    name: "fraud-detection",
    sink: "alerts",
    other_sources: &["authorizations=gen:count=2000", "blocked_cards=gen:count=2000"],
    params: &["max_per_window=1"],
};

/// One run of `job` on payments from `input`, writing under `dir/label/`.
#[derive(Clone)]
struct Case {
    label: String,
    out: PathBuf,
    dead_letters: PathBuf,
    args: Vec<String>,
}

fn case(dir: &TempDir, job: &Job, label: &str, input: &Path, workers: usize, checkpoints: bool) -> Case {
    let out = dir.join(label).join(format!("{}.csv", job.sink));
    let dead_letters = dir.join(label).join("dead_letters.csv");
    let mut args = args!["run", job.name, "-q", "--workers", workers, "--source", format!("payments={}", file_uri(input))];
    for source in job.other_sources {
        args.extend(args!["--source", source]);
    }
    for param in job.params {
        args.extend(args!["--set", param]);
    }
    args.extend(args!["--sink", format!("{}={}", job.sink, file_uri(&out))]);
    args.extend(args!["--sink", format!("dead_letters={}", file_uri(&dead_letters))]);
    if checkpoints {
        args.extend(args!["--checkpoint-dir", dir.join(label).join("checkpoints").display(), "--checkpoint-interval", "20ms"]);
    }
    Case { label: format!("{} {label}", job.name), out, dead_letters, args }
}

/// Runs every case at once (under [`TIMEOUT`]) and checks that each ends with exit 0.
fn run_all(dir: &TempDir, cases: &[Case]) {
    let runs = cases.iter().map(|c| spawn(&c.label, c.args.clone(), dir.path())).collect();
    for outcome in wait_all(runs) {
        outcome.assert_success();
    }
}

/// The data lines of a dead-letter file.
fn dead_letter_lines(path: &Path) -> Vec<String> {
    read(path).lines().skip(1).map(str::to_string).collect()
}

/// `job` on good payments with a poison record at the end and in the middle, for both poison
/// times, at 1 and 2 workers, one of them with checkpoints: each run ends normally, writes what
/// the good payments alone give, and sends the poison record (only it) to dead letters.
fn poison_changes_nothing_but_dead_letters(job: &Job, format: Format) {
    let dir = TempDir::new(&format!("poison-{}-{}", job.name, format.extension()));
    let good = good_payments(&dir, format);
    let clean = case(&dir, job, "clean", &dir.join(&format!("good.{}", format.extension())), 1, false);
    let mut cases = Vec::new();
    for (n, (ts, at)) in POISON_TIMES.iter().flat_map(|ts| [(*ts, At::Middle), (*ts, At::End)]).enumerate() {
        let txn_id = format!("tPOISON{n}");
        let name = format!("poison-{n}.{}", format.extension());
        let input = with_record(&dir, &name, &good, &format.payment(ts, &txn_id), at, format);
        let (workers, checkpoints) = [(1, false), (2, false), (2, true), (1, true)][n % 4];
        let label = format!("{ts} at the {at:?}, {workers} workers{}", if checkpoints { ", checkpoints" } else { "" });
        cases.push((txn_id, ts, case(&dir, job, &label, &input, workers, checkpoints)));
    }
    let mut all = vec![clean];
    all.extend(cases.iter().map(|(_, _, c)| c.clone()));
    run_all(&dir, &all);
    let expected = read(&all[0].out);
    assert!(expected.lines().count() > 1, "{}: the good payments give some output", job.name);
    assert_eq!(dead_letter_lines(&all[0].dead_letters), Vec::<String>::new(), "{}: good payments are all read", job.name);
    for (txn_id, ts, c) in &cases {
        assert_eq!(read(&c.out), expected, "{}: output differs from the run without the poison record", c.label);
        let dead = dead_letter_lines(&c.dead_letters);
        assert_eq!(dead.len(), 1, "{}: one dead letter, the poison record: {dead:?}", c.label);
        assert!(dead[0].contains(txn_id), "{}: the dead letter holds the record: {}", c.label, dead[0]);
        assert!(
            dead[0].contains(&format!("event time {ts} ms is above the largest accepted, 9223372036854775807")),
            "{}: the dead letter says why: {}",
            c.label,
            dead[0]
        );
    }
}

#[test]
fn throughput_windows_csv() {
    poison_changes_nothing_but_dead_letters(&THROUGHPUT_WINDOWS, Format::Csv);
}

#[test]
fn throughput_windows_jsonl() {
    poison_changes_nothing_but_dead_letters(&THROUGHPUT_WINDOWS, Format::Jsonl);
}

#[test]
fn card_velocity_csv() {
    poison_changes_nothing_but_dead_letters(&CARD_VELOCITY, Format::Csv);
}

#[test]
fn card_velocity_jsonl() {
    poison_changes_nothing_but_dead_letters(&CARD_VELOCITY, Format::Jsonl);
}

#[test]
fn fraud_detection_csv() {
    poison_changes_nothing_but_dead_letters(&FRAUD_DETECTION, Format::Csv);
}

#[test]
fn fraud_detection_jsonl() {
    poison_changes_nothing_but_dead_letters(&FRAUD_DETECTION, Format::Jsonl);
}

/// A payment at exactly `i64::MAX`, the largest accepted event time, at the end of the input: it
/// counts in its own 10 s window, which ends without overflow, and the job ends normally with the
/// good payments' windows plus that one. (With the far-future bound off: by default a record that
/// far ahead of the watermark is refused, see the test below.)
#[test]
fn the_largest_accepted_event_time_counts_in_its_window() {
    let dir = TempDir::new("poison-largest");
    let good = good_payments(&dir, Format::Csv);
    let ts = i64::MAX as u64;
    let input = with_record(&dir, "largest.csv", &good, &Format::Csv.payment(ts, "tLARGEST"), At::End, Format::Csv);
    let clean = case(&dir, &THROUGHPUT_WINDOWS, "clean", &dir.join("good.csv"), 1, false);
    let mut largest = case(&dir, &THROUGHPUT_WINDOWS, "largest", &input, 2, false);
    let at = largest.args.iter().position(|a| a.starts_with("payments=file:")).expect("the payments source");
    largest.args[at].push_str("?max_future=off");
    run_all(&dir, &[clean, largest]);
    let header =
        "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents";
    let mut expected = data_lines(&dir.join("clean").join("windows.csv"), header);
    let start = ts - ts % 10_000;
    expected.push(format!("{start},{},2,1,100,1,1.000000,100,100", start + 10_000));
    assert_same("windows with the largest event time", &expected, &data_lines(&dir.join("largest").join("windows.csv"), header));
    assert_eq!(dead_letter_lines(&dir.join("largest").join("dead_letters.csv")), Vec::<String>::new());
}

/// The generator started near `u64::MAX`: its times saturate (they overflowed before), and the
/// source sends every payment to dead letters; the job ends normally with no windows.
#[test]
fn generated_payments_near_the_end_of_time_go_to_dead_letters() {
    let dir = TempDir::new("poison-generator");
    let source = format!("payments=gen:count=500,start_ms={}", u64::MAX - 10);
    let c = case(&dir, &THROUGHPUT_WINDOWS, "generator", Path::new("unused"), 2, false);
    let mut args = c.args.clone();
    let at = args.iter().position(|a| a.starts_with("payments=file:")).expect("the payments source");
    args[at] = source;
    run("generator near u64::MAX", args, dir.path()).assert_success();
    assert_eq!(read(&c.out).lines().count(), 1, "only the header");
    let dead = dead_letter_lines(&c.dead_letters);
    assert_eq!(dead.len(), 500);
    assert!(dead.iter().all(|d| d.contains("is above the largest accepted")), "{dead:?}");
}

/// One record far in the future (year 2286) in the middle of a file: by default it goes to dead
/// letters as further ahead of the wall clock and its partition's watermark than `max_future`
/// (one day), and the
/// payments after it are on time, so the windows equal those without it. With `max_future=off`
/// it moves the watermark, as event-time semantics say, and every later payment is late.
#[test]
fn a_far_future_record_is_refused_by_default_and_accepted_with_max_future_off() {
    let dir = TempDir::new("far-future");
    let lines = good_payments(&dir, Format::Csv);
    let poisoned = with_record(&dir, "poisoned.csv", &lines, &Format::Csv.payment(9_999_999_999_999, "tFar"), At::Middle, Format::Csv);
    let clean = dir.join("good.csv");
    let run_on = |label: &str, source: String| {
        let out = dir.join(label);
        run(
            label,
            args![
                "run",
                "throughput-windows",
                "-q",
                "--source",
                format!("payments={source}"),
                "--sink",
                format!("windows={}", file_uri(&out.join("windows.csv"))),
                "--sink",
                format!("late_payments={}", file_uri(&out.join("late.csv"))),
                "--sink",
                format!("dead_letters={}", file_uri(&out.join("dead.csv")))
            ],
            dir.path(),
        )
        .assert_success();
        let lines = |f: &str| read(&out.join(f)).lines().skip(1).map(String::from).collect::<Vec<_>>();
        (lines("windows.csv"), lines("late.csv"), lines("dead.csv"))
    };
    let (want, no_late, no_dead) = run_on("clean", file_uri(&clean));
    assert!(no_late.is_empty() && no_dead.is_empty());
    let (windows, late, dead) = run_on("bounded", file_uri(&poisoned));
    assert_eq!(windows, want, "the windows are those without the far-future record");
    assert!(late.is_empty(), "no payment became late: {late:?}");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("the later of the partition's watermark and the wall clock") && dead[0].contains("max_future (86400000 ms)"),
        "{}",
        dead[0]
    );
    let (_, late, dead) = run_on("unbounded", format!("{}?max_future=off", file_uri(&poisoned)));
    assert!(dead.is_empty(), "{dead:?}");
    assert!(late.len() > 900, "with max_future=off the later payments are late: {}", late.len());
    // A tighter bound on the URI refuses more: one hour ahead is already too far for 1h.
    let (_, _, dead) = run_on("hour", format!("{}?max_future=1h", file_uri(&poisoned)));
    assert_eq!(dead.len(), 1);
}

/// The generator with an injected far-future payment every 1,000 (100 years ahead, a producer
/// with a wrong clock): each goes to dead letters with the reason, moves no watermark, and the
/// windows are exactly those of the same payments without them (computed from a file of the
/// clean generator's payments with those lines taken out); no payment becomes late.
#[test]
fn far_future_payments_from_the_generator_go_to_dead_letters_and_change_nothing_else() {
    let dir = TempDir::new("far-future-generator");
    let shape = "count=5000,partitions=4";
    let all = dir.join("all.csv");
    run(
        "clean payments",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            format!("payments=gen:{shape}"),
            "--sink",
            format!("payments={}", file_uri(&all))
        ],
        dir.path(),
    )
    .assert_success();
    // Payments 999, 1999, ...: their txn_ids are t999, t1999, ...
    let far: Vec<String> = (1..=5).map(|k| format!("t{}", k * 1000 - 1)).collect();
    let text = read(&all);
    let kept: Vec<&str> = text.lines().filter(|l| !far.iter().any(|t| l.split(',').nth(1) == Some(t.as_str()))).collect();
    assert_eq!(kept.len(), 1 + 5000 - 5, "the header and the payments but five");
    let clean = dir.join("clean.csv");
    std::fs::write(&clean, kept.join("\n") + "\n").expect("write");
    let run_on = |label: &str, source: String| {
        let out = dir.join(label);
        run(
            label,
            args![
                "run",
                "throughput-windows",
                "-q",
                "-w",
                "2",
                "--source",
                format!("payments={source}"),
                "--sink",
                format!("windows={}", file_uri(&out.join("windows.csv"))),
                "--sink",
                format!("late_payments={}", file_uri(&out.join("late.csv"))),
                "--sink",
                format!("dead_letters={}", file_uri(&out.join("dead.csv")))
            ],
            dir.path(),
        )
        .assert_success();
        let lines = |f: &str| {
            let mut l = read(&out.join(f)).lines().skip(1).map(String::from).collect::<Vec<_>>();
            l.sort();
            l
        };
        (lines("windows.csv"), lines("late.csv"), lines("dead.csv"))
    };
    let (want, late, dead) = run_on("clean", file_uri(&clean));
    assert!(late.is_empty() && dead.is_empty(), "the clean run has no late payments or dead letters");
    let (windows, late, dead) = run_on("poisoned", format!("gen:{shape},far_future_every=1000"));
    assert_same("windows with far-future payments injected", &want, &windows);
    assert!(late.is_empty(), "no payment became late: {late:?}");
    assert_eq!(dead.len(), 5, "{dead:?}");
    for t in &far {
        assert!(dead.iter().any(|d| d.contains(&format!(",{t},")) && d.contains("max_future")), "{t} is a dead letter: {dead:?}");
    }
}
