//! End-to-end tests of the `paystream` binary: every test runs the real executable in its own
//! temporary directory and checks the files it writes against values computed here, independently
//! of the program.

#[macro_use]
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const WINDOW_HEADER: &str =
    "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents";
const DEAD_LETTER_HEADER: &str = "source,origin,line,reason,raw";

// ---------------------------------------------------------------------------------------------
// CSV and payments, done here independently of the program.

/// The data rows of a payments CSV file written by the test or the generator, in file order.
fn read_payments(path: &Path) -> Vec<Payment> {
    data_lines(path, PAYMENT_HEADER).iter().map(|l| Payment::parse(l)).collect()
}

fn write_payments(path: &Path, rows: &[Payment]) {
    write_csv(path, PAYMENT_HEADER, rows.iter().map(Payment::to_line));
}

/// `n` payments (plus a few probes) in one partition, out of order: most within 3.5 s of the
/// newest, every 53rd 25-30 s behind (late), a 47 s gap in event time (empty windows), and probes
/// that land exactly on a window end equal to the watermark (late) or just after it (on time).
fn disordered_payments(seed: u64, n: usize) -> Vec<Payment> {
    const PLACES: [(&str, &str); 4] = [("USD", "US"), ("EUR", "DE"), ("GBP", "GB"), ("JPY", "JP")];
    let mut rng = Rng(seed);
    let mut rows = Vec::with_capacity(n + 8);
    let mut base: u64 = 1_700_000_003_456;
    let make = |rng: &mut Rng, i: usize, ts_ms: u64| {
        let m = rng.below(24);
        let place = PLACES[rng.below(PLACES.len() as u64) as usize];
        let amount = 100 + rng.below(20_000) as i64;
        let status = match rng.below(100) {
            0..=79 => "APPROVED",
            80..=89 => "DECLINED",
            90..=94 => "REVERSED",
            _ => "PENDING",
        };
        Payment {
            ts_ms,
            txn_id: format!("x{i}"),
            card_id: 1 + rng.below(500),
            merchant_id: 1 + m * m / 24,
            amount_cents: if i % 41 == 40 { -amount } else { amount },
            currency: place.0.to_string(),
            country: place.1.to_string(),
            status: status.to_string(),
        }
    };
    for i in 0..n {
        base += rng.below(40);
        if i == n / 2 {
            base += 47_000;
        }
        if i == n / 4 || i == 3 * n / 4 {
            // Probes around a window end A that becomes the watermark exactly (bound 2 s).
            let a = (base / 10_000 + 2) * 10_000;
            rows.push(make(&mut rng, 100_000 + i, a + 2_000));
            rows.push(make(&mut rng, 200_000 + i, a - 1)); // window end A <= watermark A: late
            rows.push(make(&mut rng, 300_000 + i, a)); // window end A + 10 s: on time
            rows.push(make(&mut rng, 400_000 + i, a - 10_000)); // window end A: late
            base = a + 2_000;
        }
        let mut ts = base - rng.below(3_500);
        if i % 53 == 52 {
            ts -= 25_000 + rng.below(5_000);
        }
        rows.push(make(&mut rng, i, ts));
    }
    rows
}

/// One row of the `windows` sink, without its approximate p99 (see [`check_p99`]): start, end,
/// merchant, count, sum, approved count, approval rate as printed, max amount.
type WindowRow = (u64, u64, u64, u64, i64, u64, String, i64);

/// The expected output of `throughput-windows`, computed in batch: each partition is read in order
/// with its own watermark (max event time seen before the record, minus the bound, 0 at first); a
/// record is late iff its window's end is at or below that watermark. Returns the window rows and
/// the late records' lines, both sorted.
fn expected_throughput(partitions: &[Vec<Payment>], window_ms: u64, bound_ms: u64) -> (Vec<WindowRow>, Vec<String>) {
    let mut windows: BTreeMap<(u64, u64), (u64, i64, u64, i64)> = BTreeMap::new();
    let mut late = Vec::new();
    for partition in partitions {
        let mut max_ts: Option<u64> = None;
        for p in partition {
            let watermark = max_ts.map_or(0, |m| m.saturating_sub(bound_ms));
            let start = p.ts_ms - p.ts_ms % window_ms;
            if start + window_ms <= watermark {
                late.push(p.to_line());
            } else {
                let w = windows.entry((start, p.merchant_id)).or_insert((0, 0, 0, i64::MIN));
                w.0 += 1;
                w.1 += p.amount_cents;
                w.2 += u64::from(p.status == "APPROVED");
                w.3 = w.3.max(p.amount_cents);
            }
            max_ts = Some(max_ts.map_or(p.ts_ms, |m| m.max(p.ts_ms)));
        }
    }
    let rows = windows
        .into_iter()
        .map(|((start, m), (c, s, a, x))| (start, start + window_ms, m, c, s, a, format!("{:.6}", a as f64 / c as f64), x))
        .collect();
    late.sort();
    (rows, late)
}

fn parse_window_row(line: &str) -> WindowRow {
    let f: Vec<&str> = line.split(',').collect();
    assert_eq!(f.len(), 9, "windows line {line:?}");
    let u = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
    let s = |i: usize| f[i].parse::<i64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
    (u(0), u(1), u(2), u(3), s(4), u(5), f[6].to_string(), s(7))
}

/// Checks the p99_amount_cents column: an HdrHistogram at 2 significant digits reports a value
/// within 1% of the exact 99th percentile (the smallest amount with at least 99% of the window's
/// amounts at or below it), and never above the window's largest amount.
fn check_p99(partitions: &[Vec<Payment>], window_ms: u64, bound_ms: u64, path: &Path) {
    let mut amounts: BTreeMap<(u64, u64), Vec<i64>> = BTreeMap::new();
    for partition in partitions {
        let mut max_ts: Option<u64> = None;
        for p in partition {
            let watermark = max_ts.map_or(0, |m| m.saturating_sub(bound_ms));
            let start = p.ts_ms - p.ts_ms % window_ms;
            if start + window_ms > watermark {
                // The job counts negative amounts (refunds) as 0 in the percentile.
                amounts.entry((start, p.merchant_id)).or_default().push(p.amount_cents.max(0));
            }
            max_ts = Some(max_ts.map_or(p.ts_ms, |m| m.max(p.ts_ms)));
        }
    }
    let mut checked = 0;
    for line in data_lines(path, WINDOW_HEADER) {
        let f: Vec<&str> = line.split(',').collect();
        let key = (f[0].parse::<u64>().unwrap(), f[2].parse::<u64>().unwrap());
        let p99: f64 = f[8].parse().unwrap();
        let mut xs = amounts.remove(&key).unwrap_or_else(|| panic!("no expected window for {line:?}"));
        xs.sort();
        let rank = ((xs.len() as f64) * 0.99).ceil().max(1.0) as usize;
        let exact = xs[rank - 1] as f64;
        assert!((p99 - exact).abs() <= exact * 0.01 + 1.0, "p99 {p99} vs exact {exact} in {line:?}");
        assert!(p99 <= *xs.last().unwrap() as f64, "p99 above the max in {line:?}");
        checked += 1;
    }
    assert!(checked > 0 && amounts.is_empty(), "{} windows without a row", amounts.len());
}

fn read_windows(path: &Path) -> Vec<WindowRow> {
    let mut rows: Vec<WindowRow> = data_lines(path, WINDOW_HEADER).iter().map(|l| parse_window_row(l)).collect();
    rows.sort();
    rows
}

fn read_late(path: &Path) -> Vec<String> {
    let mut rows = data_lines(path, PAYMENT_HEADER);
    rows.sort();
    rows
}

/// Deals the data lines of `input` round-robin into files `names` under `dir`, each with the header.
/// Returns the partitions' payments in file order.
fn split_round_robin(input: &Path, dir: &Path, names: &[&str]) -> Vec<Vec<Payment>> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let rows = read_payments(input);
    let parts: Vec<Vec<Payment>> = (0..names.len()).map(|k| rows.iter().skip(k).step_by(names.len()).cloned().collect()).collect();
    for (name, part) in names.iter().zip(&parts) {
        write_payments(&dir.join(name), part);
    }
    parts
}

// ---------------------------------------------------------------------------------------------
// Running throughput-windows with several worker and process counts.

fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    (a.local_addr().expect("address").port(), b.local_addr().expect("address").port())
}

/// Runs `throughput-windows` on `source` with 1, 2 and 3 workers and as two processes, each
/// writing under `dir/runs/LABEL-*`, checks the windows and late files are byte-identical across
/// runs, and returns them (parsed, sorted).
fn run_everywhere(dir: &TempDir, label: &str, source: &Path) -> (Vec<WindowRow>, Vec<String>) {
    let runs_dir = dir.join("runs");
    let sinks = |run: &str| {
        let out = runs_dir.join(format!("{label}-{run}"));
        (out.join("windows.csv"), out.join("late_payments.csv"))
    };
    let sink_args = |windows: &Path, late: &Path| {
        args!["--sink", format!("windows={}", file_uri(windows)), "--sink", format!("late_payments={}", file_uri(late))]
    };
    let mut results: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    for workers in [1, 2, 3] {
        let run_label = format!("w{workers}");
        let (windows, late) = sinks(&run_label);
        let mut a = args!["run", "throughput-windows", "--source", format!("payments={}", file_uri(source)), "--workers", workers, "-q"];
        a.extend(sink_args(&windows, &late));
        run(&format!("{label} with {workers} workers"), a, dir.path()).assert_success();
        results.push((run_label, read_bytes(&windows), read_bytes(&late)));
    }

    let (windows, late) = sinks("p2");
    let (port0, port1) = free_ports();
    let hosts = runs_dir.join(format!("{label}-hosts.txt"));
    std::fs::write(&hosts, format!("127.0.0.1:{port0}\n127.0.0.1:{port1}\n")).expect("write hosts file");
    let pair: Vec<Running> = (0..2)
        .map(|process| {
            let mut a = args![
                "run",
                "throughput-windows",
                "--source",
                format!("payments={}", file_uri(source)),
                "--processes",
                2,
                "--process",
                process,
                "--hosts",
                hosts.display(),
                "-q"
            ];
            a.extend(sink_args(&windows, &late));
            spawn(&format!("{label} as process {process} of 2"), a, dir.path())
        })
        .collect();
    for outcome in wait_all(pair) {
        outcome.assert_success();
    }
    results.push(("p2".to_string(), read_bytes(&windows), read_bytes(&late)));

    let (first, first_windows, first_late) = &results[0];
    for (other, windows, late) in &results[1..] {
        assert!(windows == first_windows, "{label}: windows.csv of run {other} differs from run {first}");
        assert!(late == first_late, "{label}: late_payments.csv of run {other} differs from run {first}");
    }
    let windows = read_windows(&sinks(first).0);
    let late = read_late(&sinks(first).1);
    assert!(!windows.is_empty(), "{label}: no windows at all");
    (windows, late)
}

/// How many rows of each partition are behind (`ts < max before it - bound`): a description of
/// the input for failure messages.
fn rows_behind(partitions: &[Vec<Payment>], bound_ms: u64) -> usize {
    partitions
        .iter()
        .map(|p| {
            let mut max = 0u64;
            p.iter()
                .filter(|r| {
                    let behind = r.ts_ms < max.saturating_sub(bound_ms);
                    max = max.max(r.ts_ms);
                    behind
                })
                .count()
        })
        .sum()
}

/// Runs the worker/process matrix on `input` and on a 3-file directory holding its rows, checks
/// both against the batch computation, and returns the late records found per input.
fn check_matrix(dir: &TempDir, input: &Path) -> Vec<(String, usize, usize)> {
    let whole = vec![read_payments(input)];
    let parts = split_round_robin(input, &dir.join("indir"), &["a.csv", "b.csv", "c.csv"]);
    let mut found = Vec::new();
    for (label, source, partitions) in [("file", input.to_path_buf(), whole), ("dir", dir.join("indir"), parts)] {
        let (windows, late) = run_everywhere(dir, label, &source);
        let (expected_windows, expected_late) = expected_throughput(&partitions, 10_000, 2_000);
        assert_same(&format!("{label}: windows"), &expected_windows, &windows);
        assert_same(&format!("{label}: late payments"), &expected_late, &late);
        found.push((label.to_string(), late.len(), rows_behind(&partitions, 2_000)));
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn workers_and_processes_give_identical_output() {
    let dir = TempDir::new("identical");
    let input = dir.join("in.csv");
    run(
        "generate-payments",
        args![
            "run",
            "generate-payments",
            "--source",
            "payments=gen:count=5000,seed=11,disorder_ms=3000,late_every=97,late_by_ms=25000,partitions=4",
            "--sink",
            format!("payments={}", file_uri(&input)),
            "-q"
        ],
        dir.path(),
    )
    .assert_success();
    assert_eq!(read_payments(&input).len(), 5000, "generated rows");
    for (label, late, behind) in check_matrix(&dir, &input) {
        assert!(
            late > 0,
            "{label}: late_payments.csv is empty, so lateness was not exercised: the input written by generate-payments \
             (gen:...,late_every=97,late_by_ms=25000) holds {behind} rows behind the 2 s bound"
        );
    }
}

/// The same matrix on a hand-written input that is out of order for sure, so that late records
/// are exercised across workers and processes whatever the generator writes.
#[test]
fn workers_and_processes_agree_on_late_records() {
    let dir = TempDir::new("identical-late");
    let input = dir.join("in.csv");
    write_payments(&input, &disordered_payments(7, 3000));
    for (label, late, behind) in check_matrix(&dir, &input) {
        assert!(late > 0 && behind > late, "{label}: the input should have late rows and on-time rows behind the watermark");
    }
}

#[test]
fn windows_match_a_batch_computation() {
    let dir = TempDir::new("batch");
    let input = dir.join("in.csv");
    let rows = disordered_payments(2024, 3000);
    write_payments(&input, &rows);
    for (window_ms, bound_ms) in [(10_000u64, 2_000u64), (5_000, 500)] {
        let out = dir.join(&format!("w{window_ms}-b{bound_ms}"));
        let (windows_path, late_path) = (out.join("windows.csv"), out.join("late_payments.csv"));
        let mut a = args![
            "run",
            "throughput-windows",
            "--source",
            format!("payments={}", file_uri(&input)),
            "--sink",
            format!("windows={}", file_uri(&windows_path)),
            "--sink",
            format!("late_payments={}", file_uri(&late_path)),
            "-q"
        ];
        if window_ms != 10_000 {
            a.extend(args!["--set", format!("window_ms={window_ms}"), "--set", format!("out_of_orderness_ms={bound_ms}")]);
        }
        run(&format!("window {window_ms} ms, bound {bound_ms} ms"), a, dir.path()).assert_success();

        let (expected_windows, expected_late) = expected_throughput(std::slice::from_ref(&rows), window_ms, bound_ms);
        // The input exercises what it is meant to: late records, and windows with no payments.
        assert!(expected_late.len() >= 50, "only {} late rows", expected_late.len());
        let starts: BTreeSet<u64> = expected_windows.iter().map(|w| w.0).collect();
        let (first, last) = (*starts.first().expect("windows"), *starts.last().expect("windows"));
        assert!((last - first) / window_ms + 1 > starts.len() as u64 + 2, "the input should leave some windows empty");

        assert_same(&format!("windows ({window_ms} ms, bound {bound_ms} ms)"), &expected_windows, &read_windows(&windows_path));
        check_p99(std::slice::from_ref(&rows), window_ms, bound_ms, &windows_path);
        assert_same(&format!("late payments ({window_ms} ms, bound {bound_ms} ms)"), &expected_late, &read_late(&late_path));
    }
}

#[test]
fn malformed_lines_go_to_dead_letters() {
    let dir = TempDir::new("dead-letters");
    let input = dir.join("payments.csv");
    let t0: u64 = 1_700_000_000_000;
    // (1-based line number, raw bytes, expected reason fragment) of each bad line. Their event
    // times are far in the future: were they read, the watermark would jump and more would be late.
    let bad: Vec<(u64, Vec<u8>, &str)> = vec![
        (5, format!("{},b5,1,2,12x4,USD,US,APPROVED", t0 + 9_000_000).into_bytes(), "amount_cents"),
        (9, format!("{},b9,1,2,300,USD,US", t0 + 9_000_000).into_bytes(), "expected 8 columns"),
        (14, format!("{},b14,1,2,300,USD,US,MAYBE", t0 + 9_000_000).into_bytes(), "unknown status"),
        (18, b"   ~~ garbage ~~   ".to_vec(), "expected 8 columns"),
        (22, [format!("{},b", t0 + 9_000_000).as_bytes(), b"\xff\xfe", b",1,2,300,USD,US,APPROVED"].concat(), "UTF-8"),
        (28, format!("{},\"b28,1,2,300,USD,US,APPROVED", t0 + 9_000_000).into_bytes(), "unterminated"),
    ];
    let blank_line = 26;
    let total_lines = 33;
    let mut good = Vec::new();
    let mut text: Vec<u8> = format!("{PAYMENT_HEADER}\n").into_bytes();
    for line_no in 2..=total_lines {
        if let Some((_, raw, _)) = bad.iter().find(|(n, _, _)| *n == line_no) {
            text.extend_from_slice(raw);
        } else if line_no != blank_line {
            let k = good.len() as u64;
            // Good rows 700 ms apart; the one on line 20 is 30 s behind (late).
            let ts_ms = if line_no == 20 { t0 - 30_000 } else { t0 + k * 700 };
            let status = ["APPROVED", "DECLINED", "APPROVED", "PENDING", "REVERSED"][(k % 5) as usize];
            let p = Payment {
                ts_ms,
                txn_id: format!("g{line_no}"),
                card_id: 10 + k,
                merchant_id: 1 + k % 3,
                amount_cents: 100 * (k as i64 + 1),
                currency: "EUR".into(),
                country: "DE".into(),
                status: status.into(),
            };
            text.extend_from_slice(p.to_line().as_bytes());
            if line_no == 12 {
                text.push(b'\r'); // a CRLF line ending is fine
            }
            good.push(p);
        }
        text.push(b'\n');
    }
    std::fs::write(&input, &text).expect("write input");

    let windows_path = dir.join("w.csv");
    let outcome = run(
        "malformed input",
        args![
            "run",
            "throughput-windows",
            "--source",
            format!("payments={}", file_uri(&input)),
            "--sink",
            format!("windows={}", file_uri(&windows_path))
        ],
        dir.path(),
    );
    outcome.assert_success();

    let dead = data_lines(&dir.join("dead_letters.csv"), DEAD_LETTER_HEADER);
    let mut by_line: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in &dead {
        let f = split_csv(line);
        assert_eq!(f.len(), 5, "dead letter {line:?}");
        let n: u64 = f[2].parse().unwrap_or_else(|e| panic!("line number of dead letter {line:?}: {e}"));
        assert!(by_line.insert(n, f).is_none(), "two dead letters for line {n}:\n{}", dead.join("\n"));
    }
    let expected_lines: Vec<u64> = bad.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(by_line.keys().copied().collect::<Vec<_>>(), expected_lines, "dead-lettered lines:\n{}", dead.join("\n"));
    for (n, raw, reason) in &bad {
        let f = &by_line[n];
        assert_eq!(f[0], "payments", "source of line {n}");
        assert_eq!(f[1], input.display().to_string(), "origin of line {n}");
        assert!(f[3].contains(reason), "reason for line {n} should mention {reason:?}: {:?}", f[3]);
        match std::str::from_utf8(raw) {
            Ok(text) => assert_eq!(f[4], text, "raw text of line {n}"),
            Err(_) => assert!(f[4].contains('\u{fffd}') && f[4].ends_with(",1,2,300,USD,US,APPROVED"), "raw text of line {n}: {:?}", f[4]),
        }
    }

    let (expected_windows, expected_late) = expected_throughput(&[good], 10_000, 2_000);
    assert_eq!(expected_late.len(), 1, "the input has one late row");
    assert_same("windows over the good lines", &expected_windows, &read_windows(&windows_path));
    assert_same("late payments over the good lines", &expected_late, &read_late(&dir.join("late_payments.csv")));

    let counted: Vec<&str> = outcome.stderr.lines().map(str::trim).filter(|l| l.starts_with("dead_lettered")).collect();
    assert_eq!(counted, vec![format!("dead_lettered: {}", bad.len())], "summary on stderr:\n{}", outcome.stderr);
}

#[test]
fn generator_is_deterministic_across_worker_counts() {
    let dir = TempDir::new("generator");
    let generate = |name: &str, seed: u64, workers: usize| {
        let path = dir.join(name);
        run(
            name,
            args![
                "run",
                "generate-payments",
                "--source",
                format!("payments=gen:count=3000,seed={seed}"),
                "--sink",
                format!("payments={}", file_uri(&path)),
                "--workers",
                workers,
                "-q"
            ],
            dir.path(),
        )
        .assert_success();
        read_bytes(&path)
    };
    let one = generate("seed5-w1.csv", 5, 1);
    let rows = read_payments(&dir.join("seed5-w1.csv"));
    assert_eq!(rows.len(), 3000, "rows written");
    let ids: BTreeSet<&str> = rows.iter().map(|p| p.txn_id.as_str()).collect();
    assert_eq!(ids.len(), 3000, "distinct transaction ids");
    for workers in [2, 4] {
        let other = generate(&format!("seed5-w{workers}.csv"), 5, workers);
        assert!(other == one, "generate-payments with {workers} workers wrote another file than with 1 worker");
    }
    let seed6 = generate("seed6-w1.csv", 6, 1);
    assert!(seed6 != one, "seed 6 wrote the same file as seed 5");
}

#[test]
fn bad_input_gives_exit_code_2() {
    let root = TempDir::new("bad-input");
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        ("unknown job", args!["run", "no-such-job", "--source", "payments=gen:count=100", "--sink", "windows=file:w.csv"], true),
        (
            "unsupported source URI",
            args!["run", "throughput-windows", "--source", "payments=kafka:x", "--sink", "windows=file:w.csv"],
            true,
        ),
        (
            "missing source file",
            args!["run", "throughput-windows", "--source", "payments=file:/nonexistent.csv", "--sink", "windows=file:w.csv"],
            true,
        ),
        (
            "unknown parameter",
            args!["run", "throughput-windows", "--source", "payments=gen:count=100", "--sink", "windows=file:w.csv", "--set", "nosuch=1"],
            true,
        ),
        (
            "non-numeric parameter",
            args![
                "run",
                "throughput-windows",
                "--source",
                "payments=gen:count=100",
                "--sink",
                "windows=file:w.csv",
                "--set",
                "window_ms=abc"
            ],
            true,
        ),
        ("unknown sink", args!["run", "throughput-windows", "--source", "payments=gen:count=100", "--sink", "nosuch=file:x.csv"], true),
        (
            "zero workers",
            args!["run", "throughput-windows", "--source", "payments=gen:count=100", "--sink", "windows=file:w.csv", "--workers", "0"],
            true,
        ),
        (
            "zero time granularity",
            args![
                "run",
                "throughput-windows",
                "--source",
                "payments=gen:count=100",
                "--sink",
                "windows=file:w.csv",
                "--time-granularity-ms",
                "0"
            ],
            true,
        ),
        // clap reports an unknown flag itself, on several lines.
        (
            "unknown flag",
            args!["run", "throughput-windows", "--source", "payments=gen:count=100", "--sink", "windows=file:w.csv", "--no-such-flag"],
            false,
        ),
    ];
    for (i, (what, a, one_line)) in cases.into_iter().enumerate() {
        let cwd = root.join(&format!("case{i}"));
        std::fs::create_dir_all(&cwd).expect("create case directory");
        let outcome = run(what, a, &cwd);
        assert_eq!(outcome.code, Some(2), "{what}: exit code\nstderr:\n{}", outcome.stderr);
        if one_line {
            let lines: Vec<&str> = outcome.stderr.lines().collect();
            assert!(
                lines.len() == 1 && lines[0].starts_with("error:"),
                "{what}: stderr should be one line starting with `error:`, got:\n{}",
                outcome.stderr
            );
        }
        let left: Vec<_> = std::fs::read_dir(&cwd).expect("list case directory").map(|e| e.expect("entry").path()).collect();
        assert!(left.is_empty(), "{what}: files were created: {left:?}");
    }
}

#[test]
fn connectors_lists_every_scheme() {
    let dir = TempDir::new("connectors");
    let outcome = run("connectors", args!["connectors"], dir.path());
    outcome.assert_success();
    let (sources, sinks) = outcome.stdout.split_once("sinks (--sink NAME=URI):").expect("a sinks section");
    for form in ["file:PATH", "gen:"] {
        assert!(sources.lines().any(|l| l.trim_start().starts_with(form)), "sources list {form}:\n{}", outcome.stdout);
    }
    for form in ["file:PATH", "stdout:"] {
        assert!(sinks.lines().any(|l| l.trim_start().starts_with(form)), "sinks list {form}:\n{}", outcome.stdout);
    }
}

#[test]
fn jobs_lists_every_job() {
    let dir = TempDir::new("jobs");
    let outcome = run("jobs", args!["jobs"], dir.path());
    outcome.assert_success();
    // Blocks separated by blank lines, each starting with the job's name, then lines such as
    // `source NAME (...)`, `sink NAME: ...` and `--set NAME=DEFAULT ...`.
    let mut jobs: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for block in outcome.stdout.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let name = lines.next().expect("a line").trim().to_string();
        let mut entries = BTreeSet::new();
        for line in lines {
            let mut words = line.split_whitespace();
            if let (Some(kind @ ("source" | "sink" | "--set")), Some(what)) = (words.next(), words.next()) {
                entries.insert((kind.to_string(), what.trim_end_matches(':').to_string()));
            }
        }
        jobs.insert(name, entries);
    }
    let expect: [(&str, &[(&str, &str)]); 3] = [
        (
            "throughput-windows",
            &[
                ("source", "payments"),
                ("sink", "windows"),
                ("sink", "late_payments"),
                ("--set", "window_ms=10000"),
                ("--set", "out_of_orderness_ms=2000"),
                ("--set", "allowed_lateness_ms=0"),
                ("--set", "emit_every_records=0"),
                ("--set", "emit_every_ms=0"),
            ],
        ),
        (
            "card-velocity",
            &[
                ("source", "payments"),
                ("sink", "alerts"),
                ("sink", "late_payments"),
                ("--set", "min_count=3"),
                ("--set", "window_ms=60000"),
                ("--set", "slide_ms=10000"),
                ("--set", "out_of_orderness_ms=2000"),
            ],
        ),
        ("generate-payments", &[("source", "payments"), ("sink", "payments"), ("--set", "out_of_orderness_ms=600000")]),
    ];
    for (job, wanted) in expect {
        let entries = jobs.get(job).unwrap_or_else(|| panic!("`paystream jobs` does not list {job}:\n{}", outcome.stdout));
        let wanted: BTreeSet<(String, String)> = wanted.iter().map(|(k, w)| (k.to_string(), w.to_string())).collect();
        assert_eq!(entries, &wanted, "{job}: sources, sinks and parameters listed:\n{}", outcome.stdout);
    }
}

/// The expected alerts and late records of `card-velocity` (60 s windows every 10 s, bound 2 s, no
/// allowed lateness), computed in batch over one partition in file order: a record behind its
/// partition's watermark `W` counts only in the windows that end after `W`, and is late (written to
/// late_payments) when every window covering it has ended by `W`.
fn expected_velocity(rows: &[Payment], min_count: u64) -> (Vec<String>, Vec<String>) {
    let (size, slide, bound) = (60_000u64, 10_000u64, 2_000u64);
    let mut windows: BTreeMap<(u64, u64), (u64, i64)> = BTreeMap::new();
    let mut late = Vec::new();
    let mut max_ts: Option<u64> = None;
    for p in rows {
        let watermark = max_ts.map_or(0, |m| m.saturating_sub(bound));
        let behind_at = (p.ts_ms < watermark).then_some(watermark);
        let last_start = p.ts_ms - p.ts_ms % slide;
        if behind_at.is_some_and(|w| w >= last_start + size) {
            late.push(p.to_line());
        } else {
            let mut start = last_start;
            loop {
                if behind_at.is_none_or(|w| w < start + size) {
                    let e = windows.entry((start, p.card_id)).or_insert((0, 0));
                    e.0 += 1;
                    e.1 += p.amount_cents;
                }
                if start < slide || start - slide + size <= p.ts_ms {
                    break;
                }
                start -= slide;
            }
        }
        max_ts = Some(max_ts.map_or(p.ts_ms, |m| m.max(p.ts_ms)));
    }
    let mut alerts: Vec<String> = windows
        .into_iter()
        .filter(|(_, (count, _))| *count >= min_count)
        .map(|((start, card), (count, sum))| format!("{start},{},{card},{count},{sum}", start + size))
        .collect();
    alerts.sort();
    late.sort();
    (alerts, late)
}

#[test]
fn card_velocity_matches_a_batch_computation() {
    let dir = TempDir::new("velocity");
    let input = dir.join("in.csv");
    // Fewer cards than the other tests, so that cards pay several times per minute.
    // Every 97th payment is moved 70 s back, later than any 60 s window covering it.
    let rows: Vec<Payment> = disordered_payments(77, 3000)
        .into_iter()
        .enumerate()
        .map(|(i, p)| Payment { card_id: 1 + p.card_id % 40, ts_ms: if i % 97 == 96 { p.ts_ms - 70_000 } else { p.ts_ms }, ..p })
        .collect();
    write_payments(&input, &rows);
    for min_count in [3u64, 8] {
        let out = dir.join(&format!("min{min_count}"));
        let (alerts_path, late_path) = (out.join("alerts.csv"), out.join("late_payments.csv"));
        let a = args![
            "run",
            "card-velocity",
            "--source",
            format!("payments={}", file_uri(&input)),
            "--sink",
            format!("alerts={}", file_uri(&alerts_path)),
            "--set",
            format!("min_count={min_count}"),
            "-q"
        ];
        run(&format!("card-velocity min_count {min_count}"), a, dir.path()).assert_success();
        let (expected_alerts, expected_late) = expected_velocity(&rows, min_count);
        assert!(expected_alerts.len() > 20 && expected_late.len() > 20, "the input should make alerts and late records");
        let mut alerts = data_lines(&alerts_path, "window_start_ms,window_end_ms,card_id,count,sum_amount_cents");
        alerts.sort();
        assert_same(&format!("alerts (min_count {min_count})"), &expected_alerts, &alerts);
        assert_same(&format!("late payments (min_count {min_count})"), &expected_late, &read_late(&late_path));
    }
}

/// The run summary gives each state gauge's peak and, with checkpoints, the bytes per entry of
/// the largest checkpoint part (BENCHMARKS.md's state-per-key figures come from these lines).
#[test]
fn summary_reports_peak_state_and_checkpoint_bytes_per_entry() {
    let dir = TempDir::new("state-summary");
    let outcome = run(
        "state summary",
        args![
            "run",
            "card-velocity",
            "--source",
            "payments=gen:count=60000,cards=2000",
            "--sink",
            format!("alerts={}", file_uri(&dir.path().join("alerts.csv"))),
            "--rate",
            "100000",
            "--checkpoint-dir",
            dir.path().join("chk").display().to_string(),
            "--checkpoint-interval",
            "50ms"
        ],
        dir.path(),
    );
    outcome.assert_success();
    let line = |prefix: &str| {
        outcome
            .stderr
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", outcome.stderr))
            .to_string()
    };
    let number = |text: &str| -> f64 { text.replace(',', "").parse().unwrap_or_else(|e| panic!("{text:?}: {e}")) };
    // "state:velocity: 0 (peak N)": the window state was non-empty during the run, empty at its end.
    let gauge = line("state:velocity:");
    let peak = gauge.strip_prefix("state:velocity: 0 (peak ").and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("{gauge:?}"));
    let peak = number(peak);
    assert!(peak > 0.0, "{gauge}");
    // "largest checkpoint part of velocity: B bytes for N entries (X bytes/entry)".
    let part = line("largest checkpoint part of velocity:");
    let words: Vec<&str> = part.split_whitespace().collect();
    let (bytes, entries) = (number(words[5]), number(words[8]));
    let per_entry = number(words[10].trim_start_matches('('));
    assert!(entries > 0.0 && entries <= peak, "{part} (peak {peak})");
    assert!((per_entry - bytes / entries).abs() < 0.06, "{part}");
    // A (card, pane) entry is a key, a pane start and a count and sum: tens of bytes, not hundreds.
    assert!((8.0..64.0).contains(&per_entry), "{part}");
}
