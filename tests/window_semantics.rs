//! Tumbling-window semantics checked against an independent reference model.
//!
//! The model follows Flink's rules per partition: a record's watermark is the maximum event time of
//! the *earlier* records of its partition minus the bound (saturating at 0, and 0 for the first
//! record); a record is late iff its window's end is at or below that watermark. Late records are
//! dropped and counted in `late_dropped:STEP`; every other record is counted in its window, and each
//! (key, window) with at least one record yields one result at event time `end - 1`.
//!
//! Random cases (deterministic RNG, seeds printed on failure, failing cases shrunk) run the real
//! source, `key_by`, window and aggregate through `run_partitions`; hand-computed cases check the
//! model itself; large partitions (several source reads each) and a case whose reads end one below
//! a window end check that windows fire exactly when the watermark reaches their end; and the same
//! partitions on 1, 2 and 4 workers must give identical output.
//!
//! Early results (`emit_every_records`, `emit_every` / `--set emit_every_records`, `emit_every_ms`)
//! are checked against hand-computed rows, through the engine on several workers and through the
//! real binary; processing-time ones, which depend on timing, against invariants.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use paystream::engine::source::BATCH;
use paystream::engine::testing::{run_partitions, Rng};
use paystream::engine::{millis, OutOfOrder};
use paystream::operators::{Count, Sum, Tumbling, WindowExt, WindowResult};

/// (event time ms, key, amount).
type Rec = (u64, u64, i64);
/// A window result with (count, sum).
type Out = WindowResult<u64, (u64, i64)>;
/// Emitted (event time, result) pairs, sorted.
type Emitted = Vec<(u64, Out)>;

const STEP: &str = "win";

fn event_time(r: &Rec) -> u64 {
    r.0
}

/// One test case: partitions of records, a window size and an out-of-orderness bound.
#[derive(Clone, Debug)]
struct Case {
    size: u64,
    bound: u64,
    partitions: Vec<Vec<Rec>>,
}

impl Case {
    fn records(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }
}

/// What a run (or the model) produced: the sorted output and the late-dropped count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    emitted: Emitted,
    late_dropped: u64,
}

// ---------------------------------------------------------------------------------------------
// The engine under test.
// ---------------------------------------------------------------------------------------------

/// Runs the case through the real engine on `workers` threads.
fn run_engine(case: &Case, workers: usize) -> Outcome {
    let size = case.size;
    let (mut emitted, counters) = run_partitions(workers, case.partitions.clone(), event_time, OutOfOrder::millis(case.bound), move |s| {
        s.key_by("by-key", |r: &Rec| r.1).window(STEP, Tumbling::of(millis(size))).aggregate((Count, Sum::of(|r: &Rec| r.2)))
    });
    // The model's results are in `Ord` order; the harness's canonical order is another.
    emitted.sort();
    check_counters(&counters);
    let late_dropped = counters.get(&format!("late_dropped:{STEP}")).copied().unwrap_or(u64::MAX);
    Outcome { emitted, late_dropped }
}

/// The counters a window without a late sink must (and must not) have.
fn check_counters(counters: &BTreeMap<String, u64>) {
    assert!(counters.contains_key(&format!("late_dropped:{STEP}")), "no late_dropped:{STEP} counter in {counters:?}");
    assert!(!counters.contains_key(&format!("late_side_output:{STEP}")), "late_side_output counter without a late sink: {counters:?}");
}

// ---------------------------------------------------------------------------------------------
// The reference model, written from the semantics alone.
// ---------------------------------------------------------------------------------------------

fn model(case: &Case) -> Outcome {
    // (start, key) -> (count, sum)
    let mut windows: BTreeMap<(u64, u64), (u64, i64)> = BTreeMap::new();
    let mut late_dropped = 0;
    for partition in &case.partitions {
        let mut max_seen: Option<u64> = None;
        for &(ts, key, amount) in partition {
            let wm_before = max_seen.map_or(0, |m| m.saturating_sub(case.bound));
            let start = ts - ts % case.size;
            let end = start + case.size;
            if end <= wm_before {
                late_dropped += 1;
            } else {
                let w = windows.entry((start, key)).or_insert((0, 0));
                w.0 += 1;
                w.1 += amount;
            }
            max_seen = Some(max_seen.map_or(ts, |m| m.max(ts)));
        }
    }
    let mut emitted: Emitted = windows
        .into_iter()
        .map(|((start, key), value)| {
            let end = start + case.size;
            (end - 1, WindowResult { start_ms: start, end_ms: end, key, value, is_update: false })
        })
        .collect();
    emitted.sort();
    Outcome { emitted, late_dropped }
}

// ---------------------------------------------------------------------------------------------
// The case generator, on the engine's deterministic `testing::Rng` (SplitMix64).
// ---------------------------------------------------------------------------------------------

/// A random case with 1..=`max_partitions` partitions of `min_records..=max_records` records
/// each (some partitions are empty when `min_records` is 0).
fn random_case(rng: &mut Rng, max_partitions: u64, min_records: u64, max_records: u64) -> Case {
    let size = match rng.range(0, 5) {
        0 => rng.pick(&[1, 2, 3, 7]),
        1 => rng.pick(&[10, 100, 1_000]),
        2 => rng.pick(&[5_000, 10_000, 60_000]),
        _ => rng.range(1, 20_000),
    };
    let bound = match rng.range(0, 6) {
        0 => 0,
        1 => size,
        2 => size / 2,
        3 => size * rng.range(2, 5),
        4 => rng.range(0, 100),
        _ => rng.range(0, 3 * size),
    };
    let partitions = rng.range(1, max_partitions) as usize;
    // Keys: a few distinct values, sometimes large, so key groups and workers vary.
    let key_count = rng.range(1, 4);
    let keys: Vec<u64> = (0..key_count).map(|i| if rng.chance(50) { i } else { rng.next_u64() >> rng.range(0, 60) }).collect();
    // Event times near zero exercise the saturating watermark; the others are realistic epochs.
    let origin = match rng.range(0, 3) {
        0 => 0,
        1 => rng.range(0, 3 * size),
        _ => 1_767_225_600_000 + rng.range(0, 1_000_000),
    };
    // How disordered this case is, in percent of records far behind.
    let far_behind = rng.pick(&[0, 2, 10, 30]);
    let mut parts = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let n = if min_records == 0 && rng.chance(10) { 0 } else { rng.range(min_records, max_records) };
        // Partitions start at different times, so their watermarks differ.
        let mut clock = origin + if rng.chance(50) { 0 } else { rng.range(0, 4 * size.max(bound)) };
        let mut max_seen: Option<u64> = None;
        let mut records = Vec::with_capacity(n as usize);
        for _ in 0..n {
            // Time moves on: mostly small steps, sometimes a stall, sometimes a big gap (empty windows).
            clock += match rng.range(0, 99) {
                0..=14 => 0,
                15..=89 => rng.range(0, (size / 2).max(bound / 4).max(1)),
                90..=96 => rng.range(size, 3 * size),
                _ => rng.range(5 * size, 50 * size),
            };
            let wm = max_seen.map_or(0, |m| m.saturating_sub(bound));
            let ts = match rng.range(0, 99) {
                // In order.
                0..=39 => clock,
                // Within the bound behind the clock.
                40..=69 => clock.saturating_sub(rng.range(0, bound)),
                // Right at the edges of lateness: around the watermark and its window's boundaries.
                70..=84 => {
                    let wm_start = wm - wm % size;
                    let candidates =
                        [wm, wm.saturating_sub(1), wm + 1, wm_start, wm_start.saturating_sub(1), wm_start + size - 1, wm_start + size];
                    rng.pick(&candidates)
                }
                // Exactly on window boundaries of the clock.
                85..=92 => {
                    let start = clock - clock % size;
                    rng.pick(&[start, start + size - 1, start.saturating_sub(1)])
                }
                // Far behind (late unless the bound is large).
                _ if far_behind > 0 => clock.saturating_sub(bound + rng.range(0, 5 * size)),
                _ => clock,
            };
            // Extra far-behind records at the case's disorder rate.
            let ts = if rng.chance(far_behind) { ts.saturating_sub(bound + rng.range(1, 10 * size)) } else { ts };
            let key = rng.pick(&keys);
            let amount = rng.range(0, 2_000) as i64 - 1_000;
            records.push((ts, key, amount));
            max_seen = Some(max_seen.map_or(ts, |m| m.max(ts)));
        }
        parts.push(records);
    }
    Case { size, bound, partitions: parts }
}

// ---------------------------------------------------------------------------------------------
// Comparison, with shrinking of failing cases.
// ---------------------------------------------------------------------------------------------

/// Greedily removes records (and partitions' contents) while `fails` still holds, for at most a
/// few seconds: large or timing-dependent failures are reported as far as they shrank.
fn shrink(case: &Case, fails: &dyn Fn(&Case) -> bool) -> Case {
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    let fails = |c: &Case| Instant::now() < deadline && fails(c);
    let mut best = case.clone();
    let mut chunk = best.records().max(1);
    while chunk >= 1 {
        let mut progressed = false;
        for p in 0..best.partitions.len() {
            let mut i = 0;
            while i < best.partitions[p].len() {
                let mut candidate = best.clone();
                let end = (i + chunk).min(candidate.partitions[p].len());
                candidate.partitions[p].drain(i..end);
                if fails(&candidate) {
                    best = candidate;
                    progressed = true;
                } else {
                    i += chunk;
                }
            }
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    // Drop partitions that became empty, if the failure does not depend on them.
    let mut p = 0;
    while p < best.partitions.len() {
        if best.partitions[p].is_empty() && best.partitions.len() > 1 {
            let mut candidate = best.clone();
            candidate.partitions.remove(p);
            if fails(&candidate) {
                best = candidate;
                continue;
            }
        }
        p += 1;
    }
    best
}

fn describe_diff(expected: &Outcome, actual: &Outcome) -> String {
    const MAX_LINES: usize = 20;
    let mut out = String::new();
    if expected.late_dropped != actual.late_dropped {
        out.push_str(&format!("  late_dropped: expected {}, got {}\n", expected.late_dropped, actual.late_dropped));
    }
    let missing = expected.emitted.iter().filter(|e| !actual.emitted.contains(e)).map(|e| format!("  missing:    {e:?}\n"));
    let unexpected = actual.emitted.iter().filter(|a| !expected.emitted.contains(a)).map(|a| format!("  unexpected: {a:?}\n"));
    let lines: Vec<String> = missing.chain(unexpected).collect();
    for line in lines.iter().take(MAX_LINES) {
        out.push_str(line);
    }
    if lines.len() > MAX_LINES {
        out.push_str(&format!("  ... and {} more differences\n", lines.len() - MAX_LINES));
    }
    if out.is_empty() && expected != actual {
        out.push_str("  same results, different multiplicities\n");
    }
    out
}

/// Checks the engine against the model on `workers`, shrinking and reporting a failing case.
fn check_case(label: &str, case: &Case, workers: usize) {
    let expected = model(case);
    let actual = run_engine(case, workers);
    if expected == actual {
        return;
    }
    let fails = |c: &Case| model(c) != run_engine(c, workers);
    let small = shrink(case, &fails);
    let (small_expected, small_actual) = (model(&small), run_engine(&small, workers));
    let shown = if small.records() <= 60 { format!("{small:?}") } else { format!("{} records (too many to print)", small.records()) };
    panic!(
        "{label}: engine differs from the model on {workers} worker(s) (size {}, bound {}, {} records)\n{}\
         shrunk case: {shown}\n{}",
        case.size,
        case.bound,
        case.records(),
        describe_diff(&expected, &actual),
        describe_diff(&small_expected, &small_actual),
    );
}

// ---------------------------------------------------------------------------------------------
// Hand-computed cases: these check the model as much as the engine.
// ---------------------------------------------------------------------------------------------

fn result(start: u64, end: u64, key: u64, count: u64, sum: i64) -> (u64, Out) {
    (end - 1, WindowResult { start_ms: start, end_ms: end, key, value: (count, sum), is_update: false })
}

/// Asserts the model and the engine (on 1, 2 and 3 workers) both give `expected`.
fn check_hand(case: Case, mut emitted: Emitted, late_dropped: u64) {
    emitted.sort();
    let expected = Outcome { emitted, late_dropped };
    assert_eq!(model(&case), expected, "the model is wrong on {case:?}");
    for workers in 1..=3 {
        assert_eq!(run_engine(&case, workers), expected, "the engine is wrong on {workers} worker(s) on {case:?}");
    }
}

#[test]
fn hand_late_record_behind_watermark_is_dropped() {
    // Bound 2 s, 10 s windows. After 12 000 the watermark is 10 000: window [0, 10 000) is closed,
    // so 5 000 and 9 999 are late; 15 000 and 11 000 (behind the max, but in an open window) count.
    let case = Case {
        size: 10_000,
        bound: 2_000,
        partitions: vec![vec![
            (1_000, 1, 10),
            (9_000, 1, 20),
            (12_000, 1, 30),
            (5_000, 1, 40),
            (15_000, 1, 50),
            (9_999, 2, 1),
            (11_000, 2, 5),
        ]],
    };
    check_hand(case, vec![result(0, 10_000, 1, 2, 30), result(10_000, 20_000, 1, 2, 80), result(10_000, 20_000, 2, 1, 5)], 2);
}

#[test]
fn hand_window_end_equal_to_watermark_is_late() {
    // Bound 0, windows of 10: after 10 the watermark is 10, so [0, 10) is closed (end <= wm) and 9
    // is late, while 10 (window [10, 20)) is not. After 15, 12 is behind the watermark but its
    // window [10, 20) is still open.
    let case = Case {
        size: 10,
        bound: 0,
        partitions: vec![vec![(5, 7, 1), (10, 7, 2), (9, 7, 4), (10, 7, 8), (15, 7, 16), (12, 7, 32), (20, 7, 64)]],
    };
    check_hand(case, vec![result(0, 10, 7, 1, 1), result(10, 20, 7, 4, 58), result(20, 30, 7, 1, 64)], 1);
}

#[test]
fn hand_watermark_saturates_at_zero() {
    // Bound 5 s, windows of 5 s: max 3 000 gives watermark 0, so 100 is on time. After 20 000 the
    // watermark is 15 000: [10 000, 15 000) is closed, so 14 999 is late; 15 000 is not.
    let case = Case {
        size: 5_000,
        bound: 5_000,
        partitions: vec![vec![(3_000, 1, 1), (100, 1, 2), (20_000, 1, 3), (14_999, 1, 4), (15_000, 1, 5)]],
    };
    check_hand(case, vec![result(0, 5_000, 1, 2, 3), result(15_000, 20_000, 1, 1, 5), result(20_000, 25_000, 1, 1, 3)], 1);
}

#[test]
fn hand_lateness_is_per_partition() {
    // Partition 0 is far ahead; partition 1's old records are judged by its own watermark, so none
    // is late. Within partition 1, 500 after 2 500 (watermark 2 500) is late.
    let case = Case {
        size: 1_000,
        bound: 0,
        partitions: vec![vec![(50_000, 1, 1), (50_500, 2, 2)], vec![(1_000, 1, 10), (2_500, 1, 20), (500, 1, 40), (2_999, 2, 80)]],
    };
    check_hand(
        case,
        vec![
            result(1_000, 2_000, 1, 1, 10),
            result(2_000, 3_000, 1, 1, 20),
            result(2_000, 3_000, 2, 1, 80),
            result(50_000, 51_000, 1, 1, 1),
            result(50_000, 51_000, 2, 1, 2),
        ],
        1,
    );
}

#[test]
fn hand_gaps_make_no_empty_windows_and_first_record_is_never_late() {
    // A huge gap: only the windows with records appear. The first record of the second partition
    // (0) is on time even though the first partition's watermark is far ahead.
    let case = Case {
        size: 1_000,
        bound: 100,
        partitions: vec![vec![(0, 3, 1), (999, 3, 1), (1_000_000, 3, 1), (998_999, 3, 9)], vec![(0, 4, 5)], vec![]],
    };
    check_hand(case, vec![result(0, 1_000, 3, 2, 2), result(0, 1_000, 4, 1, 5), result(1_000_000, 1_001_000, 3, 1, 1)], 1);
}

#[test]
fn hand_no_input_no_output() {
    check_hand(Case { size: 10, bound: 3, partitions: vec![vec![], vec![]] }, vec![], 0);
}

#[test]
fn hand_window_of_one_millisecond() {
    // Windows of 1 ms, bound 1: after 5 the watermark is 4, so 3 (window [3, 4)) is late, 4 is not.
    let case = Case { size: 1, bound: 1, partitions: vec![vec![(5, 1, 1), (3, 1, 2), (4, 1, 4), (4, 2, 8)]] };
    check_hand(case, vec![result(4, 5, 1, 1, 4), result(4, 5, 2, 1, 8), result(5, 6, 1, 1, 1)], 1);
}

// ---------------------------------------------------------------------------------------------
// Random cases against the model.
// ---------------------------------------------------------------------------------------------

#[test]
fn random_cases_match_the_model() {
    let mut total_late = 0;
    let mut total_records = 0;
    for seed in 0..240u64 {
        let mut rng = Rng(seed ^ 0x5eed_0fc0_ffee);
        let case = random_case(&mut rng, 4, 0, 300);
        let workers = rng.range(1, 3) as usize;
        total_late += model(&case).late_dropped;
        total_records += case.records() as u64;
        check_case(&format!("seed {seed}"), &case, workers);
    }
    // The generator must actually exercise lateness (but not make everything late).
    assert!(total_late > total_records / 50 && total_late < total_records / 2, "{total_late} late of {total_records}");
}

#[test]
fn random_large_partitions_span_several_reads() {
    // More records per partition than the source reads per activation (BATCH), so watermarks
    // advance and windows fire while input is still being read.
    for seed in 1_000..1_006u64 {
        let mut rng = Rng(seed ^ 0x5eed_0fc0_ffee);
        let case = random_case(&mut rng, 3, BATCH as u64 + 1, 3 * BATCH as u64);
        let workers = rng.range(1, 3) as usize;
        check_case(&format!("large seed {seed}"), &case, workers);
    }
}

#[test]
fn window_fires_only_when_the_watermark_reaches_its_end_across_reads() {
    // One partition read in several activations of BATCH records. Each read ends with a maximum
    // event time whose watermark is one below a window end, and the next read starts with records
    // (one per key) at exactly that watermark: they are on time and belong to windows that are
    // still open, so those windows must not have fired yet (one result per key and window).
    let (size, bound, keys) = (10u64, 6u64, 8u64);
    let mut records: Vec<Rec> = Vec::new();
    let mut next_ts = 0u64;
    for read in 0..6u64 {
        let mut remaining = BATCH as u64;
        if read > 0 {
            let max = records.iter().map(|r| r.0).max().unwrap();
            let watermark = max - bound;
            assert_eq!((watermark + 1) % size, 0, "the test's setup is off");
            for key in 0..keys {
                records.push((watermark, key, 1_000 + read as i64));
            }
            remaining -= keys;
        }
        // Start the read's in-order records where its maximum gets a watermark one below a window end.
        while !(next_ts + remaining - bound).is_multiple_of(size) {
            next_ts += 1;
        }
        for i in 0..remaining {
            records.push((next_ts + i, i % keys, i as i64));
        }
        next_ts += remaining;
    }
    let case = Case { size, bound, partitions: vec![records] };
    assert_eq!(model(&case).late_dropped, 0);
    // Whether a window's owner sees the watermark before the next read's records is up to timing,
    // so try each worker count a few times.
    for _ in 0..3 {
        for workers in 1..=3 {
            check_case("reads ending one below a window end", &case, workers);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Independence of the worker count.
// ---------------------------------------------------------------------------------------------

#[test]
fn results_do_not_depend_on_worker_count() {
    for seed in 5_000..5_030u64 {
        let mut rng = Rng(seed ^ 0x5eed_0fc0_ffee);
        let case = random_case(&mut rng, 4, 0, 300);
        let one = run_engine(&case, 1);
        for workers in [2, 4] {
            let many = run_engine(&case, workers);
            assert!(
                one == many,
                "seed {seed}: 1 worker and {workers} workers differ (size {}, bound {})\n{}",
                case.size,
                case.bound,
                describe_diff(&one, &many)
            );
        }
        // And both agree with the model.
        check_case(&format!("worker-count seed {seed}"), &case, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Early results.
// ---------------------------------------------------------------------------------------------

/// Two partitions, bound 0, windows of 10, a partial result every 2 records of a key and window.
/// Records count in the order of `max(event time, the watermark they travelled at)`: key 1's
/// records in [0, 10) count as 1 (amount 1), 2 (8), 4 (2), then at 7 both 5 (64, behind its
/// partition's watermark 7, so it counts at 7) and 7 (32). The 2nd and 4th make early rows at the
/// event time they counted at; the on-time rows follow, updates where early rows came before.
#[test]
fn hand_count_trigger_on_several_workers() {
    let partitions: Vec<Vec<Rec>> = vec![vec![(1, 1, 1), (4, 1, 2), (12, 1, 4)], vec![(2, 1, 8), (3, 2, 16), (7, 1, 32), (5, 1, 64)]];
    let early =
        |ts: u64, count: u64, sum: i64| (ts, WindowResult { start_ms: 0, end_ms: 10, key: 1, value: (count, sum), is_update: ts != 2 });
    let mut expected: Emitted = vec![
        early(2, 2, 9),
        early(7, 4, 75),
        (9, WindowResult { is_update: true, ..result(0, 10, 1, 5, 107).1 }),
        result(0, 10, 2, 1, 16),
        result(10, 20, 1, 1, 4),
    ];
    expected.sort();
    for workers in 1..=3 {
        let (mut emitted, counters) = run_partitions(workers, partitions.clone(), event_time, OutOfOrder::millis(0), |s| {
            s.key_by("by-key", |r: &Rec| r.1)
                .window(STEP, Tumbling::of(millis(10)))
                .emit_every_records(2)
                .aggregate((Count, Sum::of(|r: &Rec| r.2)))
        });
        emitted.sort();
        assert_eq!(emitted, expected, "{workers} worker(s)");
        assert_eq!(counters.get(&format!("late_dropped:{STEP}")), Some(&0));
        assert_eq!(counters.get(&format!("state:{STEP}")), Some(&0), "state is freed at the end");
    }
}

const WINDOW_HEADER: &str =
    "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,max_amount_cents,p99_amount_cents";

/// Runs `throughput-windows` on `input` with `sets` (`--set` values) on `workers` workers; its
/// windows and late payments, in file order.
fn run_throughput(
    dir: &common::TempDir,
    label: &str,
    input: &std::path::Path,
    sets: &[&str],
    workers: usize,
) -> (Vec<String>, Vec<String>) {
    let out = dir.join(label);
    let (windows, late) = (out.join("windows.csv"), out.join("late_payments.csv"));
    let mut a = args![
        "run",
        "throughput-windows",
        "--source",
        format!("payments={}", common::file_uri(input)),
        "--sink",
        format!("windows={}", common::file_uri(&windows)),
        "--sink",
        format!("late_payments={}", common::file_uri(&late)),
        "--workers",
        workers,
        "-q"
    ];
    for set in sets {
        a.extend(args!["--set", set]);
    }
    common::run(label, a, dir.path()).assert_success();
    (common::data_lines(&windows, WINDOW_HEADER), common::data_lines(&late, common::PAYMENT_HEADER))
}

/// The last line per (window_start_ms, merchant_id) in file order, as an upsert keeps them.
fn upserted(lines: &[String]) -> BTreeMap<(String, String), String> {
    let mut latest = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        latest.insert((f[0].to_string(), f[2].to_string()), line.clone());
    }
    latest
}

/// `throughput-windows --set emit_every_records=2` on eleven hand-made payments (10 s windows,
/// bound 2 s, one file), rows written by hand. p99 of a handful of amounts is the largest.
#[test]
fn throughput_windows_emits_every_two_payments() {
    let dir = common::TempDir::new("early-count");
    let input = dir.join("payments.csv");
    // ts_ms, merchant, amount, status; card and txn ids do not matter here.
    let payments = [
        (1_000, 1, 100, "APPROVED"),
        (2_000, 1, 200, "DECLINED"),
        (3_000, 2, 50, "APPROVED"),
        (4_000, 1, 300, "APPROVED"),
        (5_000, 1, 400, "APPROVED"),
        (12_000, 1, 1_000, "APPROVED"),
        // Watermark 10 000: [0, 10 000) has closed, this one goes to late_payments.
        (9_500, 1, 10, "APPROVED"),
        (11_000, 2, 70, "DECLINED"),
        (14_000, 1, 500, "APPROVED"),
        // Behind the watermark (12 000) but in an open window: it counts at 12 000, before 12 000 itself.
        (11_500, 1, 20, "DECLINED"),
        (15_000, 2, 30, "APPROVED"),
    ];
    let lines: Vec<String> = payments
        .iter()
        .enumerate()
        .map(|(i, (ts, merchant, amount, status))| format!("{ts},t{i},{},{merchant},{amount},EUR,DE,{status}", 100 + i))
        .collect();
    common::write_csv(&input, common::PAYMENT_HEADER, lines.clone());
    let expected: Vec<String> = [
        // Merchant 1 in [0, 10 000): partial rows after its 2nd and 4th payment.
        "0,10000,1,2,300,1,0.500000,200,200",
        "0,10000,1,4,1000,3,0.750000,400,400",
        // The on-time rows, ordered by count: merchant 1's repeats its last partial row.
        "0,10000,2,1,50,1,1.000000,50,50",
        "0,10000,1,4,1000,3,0.750000,400,400",
        // [10 000, 20 000): merchant 1's 11 500 and 12 000, then merchant 2's 11 000 and 15 000.
        "10000,20000,1,2,1020,1,0.500000,1000,1000",
        "10000,20000,2,2,100,1,0.500000,70,70",
        "10000,20000,2,2,100,1,0.500000,70,70",
        "10000,20000,1,3,1520,2,0.666667,1000,1000",
    ]
    .map(String::from)
    .to_vec();
    for workers in [1, 2] {
        let (windows, late) = run_throughput(&dir, &format!("k2-w{workers}"), &input, &["emit_every_records=2"], workers);
        assert_eq!(windows, expected, "{workers} worker(s): windows.csv in file order");
        assert_eq!(late, vec![lines[6].clone()], "{workers} worker(s): late_payments.csv");
    }
    // Without the option: one row per window and merchant, the rows an upsert of the above keeps.
    let (plain, _) = run_throughput(&dir, "off", &input, &[], 1);
    assert_eq!(plain.len(), 4);
    let plain_rows: Vec<String> = upserted(&plain).into_values().collect();
    let kept: Vec<String> = upserted(&expected).into_values().collect();
    assert_eq!(kept, plain_rows);
}

/// `--set emit_every_ms=20` on a paced generator: which partial rows come depends on the wall
/// clock, so this checks what must hold whatever the timing: the latest row per window and
/// merchant is the row of a run without early results, every earlier one counts at most as many
/// payments and comes before rows that count more, and partial rows did come.
#[test]
fn throughput_windows_emits_every_n_ms_consistently() {
    let dir = common::TempDir::new("early-time");
    let source = "payments=gen:count=6000,merchants=4,partitions=2,events_per_sec=2000,disorder_ms=100";
    let sets = ["window_ms=500", "out_of_orderness_ms=200"];
    let run = |label: &str, extra_set: Option<&str>| -> Vec<String> {
        let out = dir.join(label).join("windows.csv");
        let mut a = args![
            "run",
            "throughput-windows",
            "--source",
            source,
            "--sink",
            format!("windows={}", common::file_uri(&out)),
            "--workers",
            2,
            "-q"
        ];
        for set in sets.iter().copied().chain(extra_set) {
            a.extend(args!["--set", set]);
        }
        // Paced: about 2 s of wall clock, so the 20 ms timer fires while windows are open.
        a.extend(args!["--rate", 3000]);
        common::run(label, a, dir.path()).assert_success();
        common::data_lines(&out, WINDOW_HEADER)
    };
    let plain = run("off", None);
    let timed = run("every-20ms", Some("emit_every_ms=20"));
    let plain_rows = upserted(&plain);
    assert_eq!(plain_rows.len(), plain.len(), "one row per window and merchant without the option");
    assert_eq!(upserted(&timed), plain_rows, "the latest rows are the on-time rows");
    assert!(timed.len() > plain.len(), "partial rows were written: {} rows against {}", timed.len(), plain.len());
    let count = |line: &str| line.split(',').nth(3).and_then(|c| c.parse::<u64>().ok()).expect("a count");
    let mut counts_so_far: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in &timed {
        let f: Vec<&str> = line.split(',').collect();
        let previous = counts_so_far.insert((f[0].to_string(), f[2].to_string()), count(line)).unwrap_or(0);
        assert!(count(line) >= previous, "rows of a window come in order of count: {line} after a row counting {previous}");
        let last = &plain_rows[&(f[0].to_string(), f[2].to_string())];
        assert!(count(line) <= count(last), "a partial row counts at most what the window does: {line} against {last}");
    }
}
