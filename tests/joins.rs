//! Interval, window and temporal joins checked against nested-loop / batch references computed
//! here over random, disordered input, independently of the operators.
//!
//! The reference model, per partition and in partition order: a record's watermark `W(r)` is the
//! maximum event time of the *earlier* records of its partition minus the bound (saturating, 0 for
//! the first record); `r` is *behind* iff `r.ts < W(r)`.
//!
//! * Interval join `.between(lo, hi)`: behind records (either side) are dropped and counted
//!   (`late_dropped:STEP`); every pair `(a, b)` of kept records with the same key and
//!   `b.ts` in `[a.ts + lo, a.ts + hi]` is emitted once at `max(a.ts, b.ts)`; with
//!   `.with_unmatched_left()` each kept left record without a partner is emitted once with
//!   `right: None` at `a.ts + hi`.
//! * Window join: a record counts in a covering window `[s, e)` iff it is on time or `e > W(r)`;
//!   records in no window are dropped and counted; each (left, right) pair of a key in one window is
//!   emitted once at `e - 1`.
//! * Temporal join: a table row takes effect at `W(row)` if behind, else at its event time; a left
//!   record (dropped iff `a.ts + retention < W(a)`) is emitted once at `a.ts` with the row of its
//!   key of greatest effective time at or before `a.ts` (`None` if none or a deletion).
//!
//! Every case runs on 1 and 2 workers with 1 to 3 partitions (`run_partitions`); seeds are in the
//! failure messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod common;

use common::Rng;
use paystream::engine::source::BATCH;
use paystream::engine::testing::run_partitions;
use paystream::engine::{millis, OutOfOrder};
use paystream::operators::{JoinExt, Side, Sliding, Tumbling, Windows};

/// A join input record: (key, unique id, deletion?) on either side; `deletion` only matters for the
/// temporal join's table side.
type Rec = (u64, u64, bool);
/// An input event: (event time ms, side).
type Ev = (u64, Side<Rec, Rec>);

fn event_time(e: &Ev) -> u64 {
    e.0
}

fn key_of(e: &Ev) -> u64 {
    match &e.1 {
        Side::Left(r) | Side::Right(r) => r.0,
    }
}

fn id_of(e: &Ev) -> u64 {
    match &e.1 {
        Side::Left(r) | Side::Right(r) => r.1,
    }
}

fn is_left(e: &Ev) -> bool {
    matches!(e.1, Side::Left(_))
}

// ---------------------------------------------------------------------------------------------
// Deterministic random input.

/// The shape of random input.
#[derive(Clone, Copy, Debug)]
struct Shape {
    partitions: usize,
    per_partition: usize,
    keys: u64,
    bound: u64,
    /// Mean event-time step between consecutive records of a partition is about `step / 2`.
    step: u64,
    /// Percent of records on the right side.
    right_percent: u64,
    /// Percent of right records that are deletions.
    delete_percent: u64,
}

/// Random partitions: each advances in event time with bounded disorder (up to 1.5x the bound, so
/// some records land just behind the watermark), a few records far behind, and the odd gap.
fn random_input(seed: u64, shape: Shape) -> Vec<Vec<Ev>> {
    let mut rng = Rng(seed);
    let mut next_id = 0u64;
    let mut parts = Vec::with_capacity(shape.partitions);
    for _ in 0..shape.partitions {
        let mut base = 1_000_000 + rng.below(500);
        let mut part = Vec::with_capacity(shape.per_partition);
        for _ in 0..shape.per_partition {
            base += rng.below(shape.step);
            if rng.chance(1) {
                base += 5 * shape.bound + rng.below(1_000);
            }
            let mut ts = base - rng.below(shape.bound + shape.bound / 2 + 1);
            if rng.chance(6) {
                ts = ts.saturating_sub(shape.bound + rng.below(4 * shape.bound + 1));
            }
            let rec = (rng.below(shape.keys), next_id, false);
            next_id += 1;
            let side = if rng.chance(shape.right_percent) {
                Side::Right((rec.0, rec.1, rng.chance(shape.delete_percent)))
            } else {
                Side::Left(rec)
            };
            part.push((ts, side));
        }
        parts.push(part);
    }
    parts
}

/// A record with its partition watermark (see the module docs).
struct Annotated<'a> {
    ev: &'a Ev,
    watermark: u64,
}

impl Annotated<'_> {
    fn ts(&self) -> u64 {
        self.ev.0
    }
    fn behind(&self) -> bool {
        self.ev.0 < self.watermark
    }
}

fn annotate(parts: &[Vec<Ev>], bound: u64) -> Vec<Annotated<'_>> {
    let mut out = Vec::new();
    for part in parts {
        let mut max: Option<u64> = None;
        for ev in part {
            let watermark = max.map_or(0, |m| m.saturating_sub(bound));
            out.push(Annotated { ev, watermark });
            max = Some(max.map_or(ev.0, |m| m.max(ev.0)));
        }
    }
    out
}

fn signed_add(ts: u64, delta: i64) -> u64 {
    (ts as i128 + delta as i128).clamp(0, u64::MAX as i128) as u64
}

fn counter(counters: &BTreeMap<String, u64>, name: &str) -> u64 {
    counters.get(name).copied().unwrap_or(0)
}

/// Compares sorted lists, showing a few differences on failure.
fn assert_same<T: Ord + Clone + std::fmt::Debug>(what: &str, expected: &[T], actual: &[T]) {
    if expected == actual {
        return;
    }
    let mut counts: BTreeMap<&T, i64> = BTreeMap::new();
    for e in expected {
        *counts.entry(e).or_default() += 1;
    }
    for a in actual {
        *counts.entry(a).or_default() -= 1;
    }
    let missing: Vec<_> = counts.iter().filter(|(_, c)| **c > 0).map(|(r, c)| (*r, *c)).take(8).collect();
    let extra: Vec<_> = counts.iter().filter(|(_, c)| **c < 0).map(|(r, c)| (*r, -*c)).take(8).collect();
    panic!("{what}: expected {} rows, got {}\nmissing: {missing:#?}\nunexpected: {extra:#?}", expected.len(), actual.len());
}

/// The (workers, partitions) combination of case `i`: all six pairs in turn.
fn layout(i: u64) -> (usize, usize) {
    (1 + (i % 2) as usize, 1 + ((i / 2) % 3) as usize)
}

/// Records per partition and keys of case `i`: short cases are read by the source in one go (the
/// watermark jumps from 0 to the end), cases from `first_long` on span several source reads, so
/// the watermark advances while records still arrive (expiry, firing and pruning mid-stream).
fn size(i: u64, first_long: u64, keys: u64) -> (usize, u64) {
    if i >= first_long {
        (2 * BATCH + 300, 25 * keys)
    } else {
        (250, keys)
    }
}

// ---------------------------------------------------------------------------------------------
// Interval join.

/// (event time, (key, left id, right id)).
type IntervalOut = (u64, (u64, u64, Option<u64>));

fn interval_reference(parts: &[Vec<Ev>], bound: u64, lo: i64, hi: i64, unmatched: bool) -> (Vec<IntervalOut>, u64) {
    let all = annotate(parts, bound);
    let dropped = all.iter().filter(|r| r.behind()).count() as u64;
    let kept: Vec<&Annotated> = all.iter().filter(|r| !r.behind()).collect();
    // Nested loops within each key (grouping only saves time: every pair of a key is tried).
    let mut by_key: BTreeMap<u64, (Vec<&Annotated>, Vec<&Annotated>)> = BTreeMap::new();
    for r in kept {
        let sides = by_key.entry(key_of(r.ev)).or_default();
        if is_left(r.ev) {
            sides.0.push(r);
        } else {
            sides.1.push(r);
        }
    }
    let mut out = Vec::new();
    for (key, (lefts, rights)) in by_key {
        for a in &lefts {
            let mut matched = false;
            for b in &rights {
                let d = b.ts() as i128 - a.ts() as i128;
                if d >= lo as i128 && d <= hi as i128 {
                    matched = true;
                    out.push((a.ts().max(b.ts()), (key, id_of(a.ev), Some(id_of(b.ev)))));
                }
            }
            if unmatched && !matched {
                out.push((signed_add(a.ts(), hi), (key, id_of(a.ev), None)));
            }
        }
    }
    out.sort();
    (out, dropped)
}

const IJ: &str = "ij";

/// Runs the interval join; returns its output (sorted) and counters.
fn run_interval(
    workers: usize,
    parts: Vec<Vec<Ev>>,
    bound: u64,
    lo: i64,
    hi: i64,
    unmatched: bool,
) -> (Vec<IntervalOut>, BTreeMap<String, u64>) {
    let (mut out, counters) = run_partitions(workers, parts, event_time, OutOfOrder::millis(bound), move |s| {
        let left = s.clone().filter("lefts", is_left).key_by("left-by-key", key_of);
        let right = s.filter("rights", |e| !is_left(e)).key_by("right-by-key", key_of);
        let join = left.interval_join(right).between(lo, hi);
        let join = if unmatched { join.with_unmatched_left() } else { join };
        join.join(IJ).map("ids", |j| (j.key, id_of(&j.left), j.right.as_ref().map(id_of)))
    });
    out.sort();
    (out, counters)
}

#[test]
fn interval_join_matches_nested_loop() {
    let intervals: [(i64, i64); 6] = [(0, 300), (-200, 100), (-250, -40), (60, 400), (0, 0), (-500, 500)];
    let mut pairs = 0;
    for i in 0..28u64 {
        let seed = 0x1_0000 + i;
        let (workers, partitions) = layout(i);
        let (per_partition, keys) = size(i, 24, 6);
        let (lo, hi) = intervals[(i % 6) as usize];
        let unmatched = (i / 6) % 2 == 0;
        let bound = [100, 250, 400][(i % 3) as usize];
        let shape = Shape { partitions, per_partition, keys, bound, step: 40, right_percent: 45, delete_percent: 0 };
        let parts = random_input(seed, shape);
        let (expected, dropped) = interval_reference(&parts, bound, lo, hi, unmatched);
        let (actual, counters) = run_interval(workers, parts, bound, lo, hi, unmatched);
        let what = format!("interval join seed {seed:#x}, {workers} workers, {partitions} partitions, [{lo}, {hi}], unmatched {unmatched}");
        assert_same(&what, &expected, &actual);
        assert!(dropped > 0, "{what}: the input should have behind records");
        assert_eq!(counter(&counters, &format!("late_dropped:{IJ}")), dropped, "{what}: late_dropped");
        assert_eq!(counters.get(&format!("state:{IJ}")), Some(&0), "{what}: state at the end, {counters:?}");
        pairs += expected.iter().filter(|(_, (_, _, b))| b.is_some()).count();
    }
    assert!(pairs > 1_000, "the cases should make many pairs, made {pairs}");
}

#[test]
fn interval_join_hand_case() {
    // One partition, bound 100. W before each record: 0, 900, 950, 950, 1_000, 1_000.
    let l = |ts, key, id| (ts, Side::Left((key, id, false)));
    let r = |ts, key, id| (ts, Side::Right((key, id, false)));
    let parts = vec![vec![
        l(1_000, 1, 1),
        r(1_050, 1, 2), // pairs with 1 (1_050 in [1_000 - 50, 1_000 + 100])
        r(950, 1, 3),   // pairs with 1 (950 = 1_000 - 50)
        l(1_100, 1, 4), // pairs with 2 (1_050 in [1_050, 1_200]); 950 is out
        r(999, 1, 5),   // behind (999 < W 1_000): dropped
        l(1_200, 2, 6), // no partner: unmatched at 1_300
    ]];
    let (out, counters) = run_interval(1, parts, 100, -50, 100, true);
    assert_eq!(
        out,
        vec![(1_000, (1, 1, Some(3))), (1_050, (1, 1, Some(2))), (1_100, (1, 4, Some(2))), (1_300, (2, 6, None))],
        "{counters:?}"
    );
    assert_eq!(counter(&counters, "late_dropped:ij"), 1);
    assert_eq!(counters.get("state:ij"), Some(&0));
}

/// `first`, then a full source read of records of another key, then `second`: the join is
/// certain to hold `first` when `second` arrives (within one read, the two sides of the merged
/// stream reach the join in no particular order).
fn in_order(first: Ev, second: Ev) -> Vec<Vec<Ev>> {
    let mut part = vec![first];
    part.extend((0..BATCH as u64).map(|i| (500, Side::Right((99, 1_000 + i, false)))));
    part.push(second);
    vec![part]
}

/// Event times within the interval's width of 0 (the start of 1970): a pair is made only when
/// `b.ts - a.ts` really lies in `[lo, hi]`, whichever record comes first. (Fails while
/// `IntervalLogic::on_record` clamps each end of the partner interval at 0 on its own, which
/// turns an interval wholly below 0 into `[0, 0]`.)
#[test]
fn interval_join_near_time_zero() {
    let l = |ts, id| (ts, Side::Left((1, id, false)));
    let r = |ts, id| (ts, Side::Right((1, id, false)));
    // (lo, hi, first, second): b.ts - a.ts = -10, outside [-100, -50]; then 10, outside [50, 100].
    let cases =
        [(-100, -50, r(0, 1), l(10, 2)), (-100, -50, l(10, 2), r(0, 1)), (50, 100, l(0, 2), r(10, 1)), (50, 100, r(10, 1), l(0, 2))];
    for (lo, hi, first, second) in cases {
        let parts = in_order(first.clone(), second.clone());
        let (expected, _) = interval_reference(&parts, 1_000, lo, hi, true);
        let (actual, _) = run_interval(1, parts, 1_000, lo, hi, true);
        let key1 = |out: Vec<IntervalOut>| out.into_iter().filter(|(_, (k, _, _))| *k == 1).collect::<Vec<_>>();
        let a_ts = if is_left(&first) { first.0 } else { second.0 };
        assert_eq!(key1(expected.clone()), vec![(signed_add(a_ts, hi), (1, 2, None))], "the reference: no pair");
        assert_eq!(key1(actual), key1(expected), "[{lo}, {hi}]: {first:?} then {second:?}");
    }
}

/// `between(i64::MIN, 0)`: every right record at or before the left one (an unbounded lower end).
/// (Fails while the interval join negates `lower`, which overflows for `i64::MIN`.)
#[test]
fn interval_join_unbounded_lower_bound() {
    let l = |ts, id| (ts, Side::Left((1, id, false)));
    let r = |ts, id| (ts, Side::Right((1, id, false)));
    for parts in [in_order(r(1_000, 1), l(2_000, 2)), in_order(l(2_000, 2), r(1_000, 1))] {
        let (expected, _) = interval_reference(&parts, 5_000, i64::MIN, 0, true);
        let (actual, _) = run_interval(1, parts, 5_000, i64::MIN, 0, true);
        assert_eq!(expected.iter().filter(|(_, (k, _, _))| *k == 1).collect::<Vec<_>>(), vec![&(2_000, (1, 2, Some(1)))]);
        assert_eq!(actual, expected);
    }
}

/// Interval-join state follows the watermark during the run, not only at its end: a step
/// downstream of the join samples the `state:ij` gauge whenever results pass, over an input much
/// longer than what the interval and bound keep alive.
#[test]
fn interval_join_state_is_bounded_mid_stream() {
    for workers in [1usize, 2] {
        let seed = 0xB0B + workers as u64;
        let (lo, hi, bound) = (-100i64, 300i64, 200u64);
        let shape = Shape { partitions: 2, per_partition: 4 * BATCH, keys: 50, bound, step: 8, right_percent: 50, delete_percent: 0 };
        let parts = random_input(seed, shape);
        let total: usize = parts.iter().map(Vec::len).sum();
        let (expected, dropped) = interval_reference(&parts, bound, lo, hi, true);
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let (p, n) = (peak.clone(), samples.clone());
        let (mut actual, counters) = run_partitions(workers, parts, event_time, OutOfOrder::millis(bound), move |s| {
            let metrics = s.metrics();
            let (p, n) = (p.clone(), n.clone());
            let left = s.clone().filter("lefts", is_left).key_by("left-by-key", key_of);
            let right = s.filter("rights", |e| !is_left(e)).key_by("right-by-key", key_of);
            left.interval_join(right).between(lo, hi).with_unmatched_left().join(IJ).map("ids", move |j| {
                if let Some(size) = metrics.gauges().get("state:ij") {
                    p.fetch_max(*size, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                (j.key, id_of(&j.left), j.right.as_ref().map(id_of))
            })
        });
        actual.sort();
        let what = format!("long interval join, seed {seed:#x}, {workers} workers");
        assert_same(&what, &expected, &actual);
        assert_eq!(counter(&counters, "late_dropped:ij"), dropped, "{what}: late_dropped");
        assert_eq!(counters.get("state:ij"), Some(&0), "{what}: state at the end");
        let (peak, samples) = (peak.load(Ordering::Relaxed), samples.load(Ordering::Relaxed));
        assert!(samples > 1_000, "{what}: too few samples ({samples})");
        eprintln!("{what}: peak state {peak} of {total} records");
        if workers == 1 {
            // One worker reads at most one batch per partition before the watermark moves on; the
            // interval and bound keep about 600 ms (~150 records per partition) alive beyond that.
            // (With two workers one may read ahead of the other, which holds the watermark back:
            // the peak then depends on thread timing, so only the end state is checked.)
            let limit = (2 * BATCH + 2_000) as u64;
            assert!(peak > 0 && peak <= limit, "{what}: peak state {peak} of {total} records; expected at most {limit}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Window join.

/// (event time, (start, end, key, left id, right id)).
type WindowOut = (u64, (u64, u64, u64, u64, u64));

/// The windows `[s, e)` with `s` a multiple of `slide` that cover `ts`.
fn covering(ts: u64, size: u64, slide: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = ts - ts % slide;
    loop {
        if start + size > ts {
            out.push((start, start + size));
        } else {
            break;
        }
        if start < slide {
            break;
        }
        start -= slide;
    }
    out
}

fn window_reference(parts: &[Vec<Ev>], bound: u64, size: u64, slide: u64) -> (Vec<WindowOut>, u64) {
    // (end, key) -> (left ids, right ids)
    let mut windows: BTreeMap<(u64, u64), (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    let mut dropped = 0;
    for r in annotate(parts, bound) {
        let mut counted = false;
        for (_, end) in covering(r.ts(), size, slide) {
            if !r.behind() || end > r.watermark {
                counted = true;
                let w = windows.entry((end, key_of(r.ev))).or_default();
                if is_left(r.ev) {
                    w.0.push(id_of(r.ev));
                } else {
                    w.1.push(id_of(r.ev));
                }
            }
        }
        dropped += u64::from(!counted);
    }
    let mut out = Vec::new();
    for ((end, key), (lefts, rights)) in windows {
        for a in &lefts {
            for b in &rights {
                out.push((end - 1, (end - size, end, key, *a, *b)));
            }
        }
    }
    out.sort();
    (out, dropped)
}

const WJ: &str = "wj";

fn run_window(workers: usize, parts: Vec<Vec<Ev>>, bound: u64, windows: Windows) -> (Vec<WindowOut>, BTreeMap<String, u64>) {
    let (mut out, counters) = run_partitions(workers, parts, event_time, OutOfOrder::millis(bound), move |s| {
        let left = s.clone().filter("lefts", is_left).key_by("left-by-key", key_of);
        let right = s.filter("rights", |e| !is_left(e)).key_by("right-by-key", key_of);
        left.window_join(right, windows).join(WJ).map("ids", |j| (j.start_ms, j.end_ms, j.key, id_of(&j.left), id_of(&j.right)))
    });
    out.sort();
    (out, counters)
}

#[test]
fn window_join_matches_batch() {
    // (size, slide): tumbling, sliding with size a multiple of the slide, and not a multiple.
    let shapes: [(u64, u64); 4] = [(200, 200), (300, 100), (250, 100), (150, 60)];
    let mut pairs = 0;
    for i in 0..28u64 {
        let seed = 0x2_0000 + i;
        let (workers, partitions) = layout(i);
        let (per_partition, keys) = size(i, 24, 5);
        let (size, slide) = shapes[(i % 4) as usize];
        let bound = [80, 200, 350][(i % 3) as usize];
        let shape = Shape { partitions, per_partition, keys, bound, step: 40, right_percent: 50, delete_percent: 0 };
        let parts = random_input(seed, shape);
        let (expected, dropped) = window_reference(&parts, bound, size, slide);
        let windows: Windows =
            if size == slide { Tumbling::of(millis(size)).into() } else { Sliding::of(millis(size)).every(millis(slide)).into() };
        let (actual, counters) = run_window(workers, parts, bound, windows);
        let what =
            format!("window join seed {seed:#x}, {workers} workers, {partitions} partitions, size {size} slide {slide}, bound {bound}");
        assert_same(&what, &expected, &actual);
        assert_eq!(counter(&counters, &format!("late_dropped:{WJ}")), dropped, "{what}: late_dropped");
        assert_eq!(counters.get(&format!("state:{WJ}")), Some(&0), "{what}: state at the end, {counters:?}");
        pairs += expected.len();
    }
    assert!(pairs > 1_000, "the cases should make many pairs, made {pairs}");
}

#[test]
fn window_join_counts_behind_records_in_open_windows_only() {
    // Sliding 300 every 100, bound 0, one partition. W before the behind record is 1_150, so the
    // left record at 1_000 counts in [1_000, 1_300) and [900, 1_200) but not [800, 1_100).
    let parts = vec![vec![
        (850, Side::Right((1, 1, false))),
        (1_050, Side::Right((1, 2, false))),
        (1_150, Side::Right((1, 3, false))),
        (1_000, Side::Left((1, 4, false))),
        (700, Side::Left((1, 5, false))), // in [500, 800), [600, 900), [700, 1_000): all closed, dropped
    ]];
    let (out, counters) = run_window(1, parts.clone(), 0, Sliding::of(millis(300)).every(millis(100)).into());
    assert_eq!(
        out,
        vec![
            (1_199, (900, 1_200, 1, 4, 2)),
            (1_199, (900, 1_200, 1, 4, 3)),
            (1_299, (1_000, 1_300, 1, 4, 2)),
            (1_299, (1_000, 1_300, 1, 4, 3)),
        ]
    );
    assert_eq!(counter(&counters, "late_dropped:wj"), 1);
    assert_eq!(window_reference(&parts, 0, 300, 100).0, out, "the reference agrees");
}

// ---------------------------------------------------------------------------------------------
// Temporal join.

/// (event time, (key, left id, table row id)).
type TemporalOut = (u64, (u64, u64, Option<u64>));

/// Each key's table rows: (effective time, row id or `None` for a deletion), by effective time.
type Table = HashMap<u64, Vec<(u64, Option<u64>)>>;

/// The table, or `None` when two rows of one key take effect at the same time (ties are
/// arrival-ordered: avoided here).
fn table_versions(all: &[Annotated]) -> Option<Table> {
    let mut table = Table::new();
    for r in all.iter().filter(|r| !is_left(r.ev)) {
        let effective = if r.behind() { r.watermark } else { r.ts() };
        let Side::Right((key, id, deletion)) = r.ev.1 else { unreachable!() };
        table.entry(key).or_default().push((effective, (!deletion).then_some(id)));
    }
    for rows in table.values_mut() {
        rows.sort();
        if rows.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
    }
    Some(table)
}

fn temporal_reference(parts: &[Vec<Ev>], bound: u64, retention: u64) -> Option<(Vec<TemporalOut>, u64)> {
    let all = annotate(parts, bound);
    let table = table_versions(&all)?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for a in all.iter().filter(|r| is_left(r.ev)) {
        if a.ts().saturating_add(retention) < a.watermark {
            dropped += 1;
            continue;
        }
        let row = table.get(&key_of(a.ev)).and_then(|rows| rows.iter().rev().find(|(t, _)| *t <= a.ts())).and_then(|(_, row)| *row);
        out.push((a.ts(), (key_of(a.ev), id_of(a.ev), row)));
    }
    out.sort();
    Some((out, dropped))
}

const TJ: &str = "tj";

fn run_temporal(workers: usize, parts: Vec<Vec<Ev>>, bound: u64, retention: u64) -> (Vec<TemporalOut>, BTreeMap<String, u64>) {
    let (mut out, counters) = run_partitions(workers, parts, event_time, OutOfOrder::millis(bound), move |s| {
        let left = s.clone().filter("lefts", is_left).key_by("left-by-key", key_of);
        let table = s.filter("rows", |e| !is_left(e)).key_by("rows-by-key", key_of).map_values("row-or-delete", |e| match e.1 {
            Side::Right((_, id, deletion)) => (!deletion).then_some(id),
            Side::Left(_) => unreachable!("filtered"),
        });
        left.temporal_join(table).retention(millis(retention)).join(TJ).map("ids", |j| (j.key, id_of(&j.left), j.right))
    });
    out.sort();
    (out, counters)
}

/// Random temporal-join input without effective-time ties, trying successive seeds.
fn temporal_input(seed: u64, shape: Shape) -> (u64, Vec<Vec<Ev>>) {
    for attempt in 0..1_000 {
        let s = seed + attempt * 0x1_0000_0000;
        let parts = random_input(s, shape);
        if table_versions(&annotate(&parts, shape.bound)).is_some() {
            return (s, parts);
        }
    }
    panic!("no tie-free input found from seed {seed:#x}");
}

#[test]
fn temporal_join_matches_as_of_reference() {
    let mut with_row = 0;
    let mut deleted_or_missing = 0;
    for i in 0..28u64 {
        let (workers, partitions) = layout(i);
        let (per_partition, keys) = size(i, 24, 12);
        let bound = [100, 250, 400][(i % 3) as usize];
        let shape = Shape { partitions, per_partition, keys, bound, step: 40, right_percent: 25, delete_percent: 25 };
        let (seed, parts) = temporal_input(0x3_0000 + i, shape);
        let retention = 3_600_000;
        let (expected, dropped) = temporal_reference(&parts, bound, retention).expect("tie-free");
        let (actual, counters) = run_temporal(workers, parts, bound, retention);
        let what = format!("temporal join seed {seed:#x}, {workers} workers, {partitions} partitions, bound {bound}");
        assert_same(&what, &expected, &actual);
        assert_eq!(dropped, 0);
        assert_eq!(counter(&counters, &format!("late_dropped:{TJ}")), 0, "{what}: late_dropped");
        with_row += expected.iter().filter(|(_, (_, _, r))| r.is_some()).count();
        deleted_or_missing += expected.iter().filter(|(_, (_, _, r))| r.is_none()).count();
    }
    assert!(with_row > 1_000 && deleted_or_missing > 200, "coverage: {with_row} with a row, {deleted_or_missing} without");
}

/// A retention shorter than the disorder: left records more than the retention behind their
/// watermark are dropped and counted, the others still see the right version of the table (rows
/// superseded for longer than the retention may be dropped without changing any result).
#[test]
fn temporal_join_with_short_retention() {
    let mut dropped_total = 0;
    for i in 0..16u64 {
        let (workers, partitions) = layout(i);
        let (per_partition, keys) = size(i, 12, 8);
        let bound = 200;
        let retention = [50, 150, 400][(i % 3) as usize];
        let shape = Shape { partitions, per_partition, keys, bound, step: 40, right_percent: 30, delete_percent: 20 };
        let (seed, parts) = temporal_input(0x4_0000 + i, shape);
        let (expected, dropped) = temporal_reference(&parts, bound, retention).expect("tie-free");
        let (actual, counters) = run_temporal(workers, parts, bound, retention);
        let what = format!("temporal join seed {seed:#x}, {workers} workers, {partitions} partitions, retention {retention}");
        assert_same(&what, &expected, &actual);
        assert_eq!(counter(&counters, &format!("late_dropped:{TJ}")), dropped, "{what}: late_dropped");
        dropped_total += dropped;
    }
    assert!(dropped_total > 0, "some left records should be too late");
}

#[test]
fn temporal_join_hand_case() {
    // One partition, bound 100.
    let l = |ts, key, id| (ts, Side::Left((key, id, false)));
    let row = |ts, key, id, deletion| (ts, Side::Right((key, id, deletion)));
    let parts = vec![vec![
        row(1_000, 1, 1, false), // key 1: row 1 from 1_000
        l(1_050, 1, 2),          // sees row 1
        l(999, 1, 3),            // before any row: None
        row(1_300, 1, 4, false), // key 1: row 4 from 1_300 (W 950)
        row(1_100, 1, 5, true),  // behind (W 1_200): the deletion takes effect at 1_200
        l(1_150, 1, 6),          // behind too, but within the retention: sees row 1
        l(1_250, 1, 7),          // sees the deletion: None
        l(1_300, 1, 8),          // sees row 4
        l(1_400, 2, 9),          // no row for key 2
    ]];
    let (out, _) = run_temporal(1, parts.clone(), 100, 3_600_000);
    let expected = vec![
        (999, (1, 3, None)),
        (1_050, (1, 2, Some(1))),
        (1_150, (1, 6, Some(1))),
        (1_250, (1, 7, None)),
        (1_300, (1, 8, Some(4))),
        (1_400, (2, 9, None)),
    ];
    assert_eq!(out, expected);
    assert_eq!(temporal_reference(&parts, 100, 3_600_000).map(|(o, _)| o), Some(expected), "the reference agrees");
}
