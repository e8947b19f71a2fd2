//! Property tests of keyed event-time windows (tumbling, sliding, session) against a reference
//! model written here from the specification of lateness, firing and updates, not from the
//! engine's code.
//!
//! Random keyed records `(event time, key, amount)` are dealt into 1-3 partitions, each read in its
//! own (randomly disordered) order, by 1 or 2 workers, with a random out-of-orderness bound, a
//! random allowed lateness (zero half of the time) and random window shapes (sliding windows with
//! any slide, also above the size). In a quarter of the cases a block of filler records makes the
//! source read the first partition in two batches, so the windows see the watermark stop midway
//! instead of jumping to the end. Every emitted result (main results and `is_update` updates, with
//! their event times) and the `late_dropped` counter must equal the model's, and no window state
//! (the `state:w` gauge) may be left at the end. Hand-computed cases check the model itself.
//!
//! The model, per partition in reading order: a record's watermark `W` is the maximum event time of
//! the *earlier* records of its partition minus the bound (saturating; 0 when there are none). A
//! record with `ts < W` is *behind* and gets the effective time `eff = W`; any other record is on
//! time (`eff = -inf`, written `None` below, which `Option`'s order puts before every `Some`). A
//! record is dropped iff `eff >= last_end(ts) + L`, where `last_end` is the end of the last window
//! that can hold it (`[ts, ts + gap)` for sessions); an on-time record is never dropped.
//!
//! * Aligned windows, per key and window `[s, e)`: a main result (event time `e - 1`) over the
//!   records with `eff < e`, if any; then for each distinct `eff = t` with `e <= t < e + L`, in
//!   order, an update over the records with `eff <= t`, `is_update` iff some record had `eff < t`.
//! * Sessions, per key, batches of records by `eff` in increasing order: before a batch at `t`,
//!   pending sessions ending at or before `t` fire; the batch's windows `[ts, ts + gap)` merge with
//!   every overlapping session (repeatedly); pending sessions ending at or before `t` then fire at
//!   once; at the end of the input everything pending fires. A fired result has `is_update` iff a
//!   result for the session (or a session merged into it) was emitted before. A session's state is
//!   dropped once time reaches `end + L`: a batch at `t >= end + L` cannot merge into it. (This can
//!   matter: a kept record's own window may outlast a session it overlaps; see
//!   `a_late_record_cannot_merge_into_an_expired_session`.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use paystream::engine::metrics::Metrics;
use paystream::engine::source::BATCH;
use paystream::engine::testing::run_partitions;
use paystream::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Timestamps start well above zero, so that `W - bound` never saturates into the windows.
const BASE: u64 = 1_000_000;

/// A record: (event time in ms, key, amount).
type Rec = (u64, u64, i64);
/// An emitted result: (event time, window result with (count, sum)).
type Out = (u64, WindowResult<u64, (u64, i64)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Tumbling when `size == slide`.
    Aligned {
        size: u64,
        slide: u64,
    },
    Session {
        gap: u64,
    },
}

impl Shape {
    fn windows(self) -> Windows {
        match self {
            Shape::Aligned { size, slide } if size == slide => Tumbling::of(millis(size)).into(),
            Shape::Aligned { size, slide } => Sliding::of(millis(size)).every(millis(slide)).into(),
            Shape::Session { gap } => Session::with_gap(millis(gap)).into(),
        }
    }

    /// The end of the last window that can hold a record at `ts`.
    fn last_end(self, ts: u64) -> u64 {
        match self {
            Shape::Aligned { size, slide } => (ts - ts % slide) + size,
            Shape::Session { gap } => ts + gap,
        }
    }
}

/// One test case: the job's parameters and each partition's records in reading order.
#[derive(Clone, Debug)]
struct Case {
    shape: Shape,
    workers: usize,
    bound: u64,
    lateness: u64,
    partitions: Vec<Vec<Rec>>,
    /// Inserts [`BATCH`] filler records at this position of the first partition (see
    /// [`Case::records`]).
    filler_at: Option<usize>,
}

/// The key of filler records; random records have keys below 3.
const FILLER_KEY: u64 = 99;

impl Case {
    /// Each partition's records in reading order. With `filler_at`, [`BATCH`] records of
    /// [`FILLER_KEY`] at the greatest event time read so far (so they move no watermark and are on
    /// time) are inserted there: the source then reads the partition in two batches, and the window
    /// operator sees the watermark stop at that point instead of jumping to the end in one step.
    fn records(&self) -> Vec<Vec<Rec>> {
        let mut partitions = self.partitions.clone();
        if let (Some(at), Some(first)) = (self.filler_at, partitions.first_mut()) {
            let at = at.min(first.len());
            let ts = first[..at].iter().map(|r| r.0).max().unwrap_or(BASE);
            first.splice(at..at, std::iter::repeat_n((ts, FILLER_KEY, 1), BATCH));
        }
        partitions
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model.

/// A record with its effective time: `None` when on time (before everything).
#[derive(Clone, Copy, Debug)]
struct Arrival {
    ts: u64,
    key: u64,
    amount: i64,
    eff: Option<u64>,
}

/// Stamps every record with its effective time, partition by partition.
fn arrivals(partitions: &[Vec<Rec>], bound: u64) -> Vec<Arrival> {
    let mut all = Vec::new();
    for partition in partitions {
        let mut max_seen: Option<u64> = None;
        for &(ts, key, amount) in partition {
            let w = max_seen.map_or(0, |m| m.saturating_sub(bound));
            all.push(Arrival { ts, key, amount, eff: (ts < w).then_some(w) });
            max_seen = Some(max_seen.map_or(ts, |m| m.max(ts)));
        }
    }
    all
}

fn result(end_ms: u64, start_ms: u64, key: u64, value: (u64, i64), is_update: bool) -> Out {
    (end_ms - 1, WindowResult { start_ms, end_ms, key, value, is_update })
}

fn count_sum<'a>(records: impl Iterator<Item = &'a Arrival>) -> (u64, i64) {
    records.fold((0, 0), |(c, s), r| (c + 1, s + r.amount))
}

/// What the job must emit (sorted) and how many records it must drop as too late.
fn model(case: &Case) -> (Vec<Out>, u64) {
    let lateness = case.lateness;
    let (kept, dropped): (Vec<Arrival>, Vec<Arrival>) =
        arrivals(&case.records(), case.bound).into_iter().partition(|r| r.eff.is_none_or(|eff| eff < case.shape.last_end(r.ts) + lateness));
    let mut out = match case.shape {
        Shape::Aligned { size, slide } => aligned_model(size, slide, lateness, &kept),
        Shape::Session { gap } => session_model(gap, lateness, &kept),
    };
    out.sort();
    (out, dropped.len() as u64)
}

/// The starts of the windows `[s, s + size)`, `s` a multiple of `slide`, that cover `ts`.
fn covering_starts(ts: u64, size: u64, slide: u64) -> Vec<u64> {
    let mut starts = Vec::new();
    let mut start = ts - ts % slide;
    while start + size > ts {
        starts.push(start);
        if start < slide {
            break;
        }
        start -= slide;
    }
    starts
}

fn aligned_model(size: u64, slide: u64, lateness: u64, kept: &[Arrival]) -> Vec<Out> {
    let mut windows: BTreeMap<(u64, u64), Vec<Arrival>> = BTreeMap::new();
    for r in kept {
        for start in covering_starts(r.ts, size, slide) {
            windows.entry((r.key, start)).or_default().push(*r);
        }
    }
    let mut out = Vec::new();
    for ((key, start), records) in windows {
        let end = start + size;
        let main: Vec<&Arrival> = records.iter().filter(|r| r.eff < Some(end)).collect();
        if !main.is_empty() {
            out.push(result(end, start, key, count_sum(main.into_iter()), false));
        }
        let late_times: BTreeSet<u64> = records.iter().filter_map(|r| r.eff).filter(|t| end <= *t && *t < end + lateness).collect();
        for t in late_times {
            let value = count_sum(records.iter().filter(|r| r.eff <= Some(t)));
            let is_update = records.iter().any(|r| r.eff < Some(t));
            out.push(result(end, start, key, value, is_update));
        }
    }
    out
}

#[derive(Debug)]
struct ModelSession {
    start: u64,
    end: u64,
    value: (u64, i64),
    emitted: bool,
    pending: bool,
}

/// Fires the pending sessions that end at or before `t`, in order of end.
fn fire_due(key: u64, sessions: &mut [ModelSession], t: u64, out: &mut Vec<Out>) {
    let mut due: Vec<&mut ModelSession> = sessions.iter_mut().filter(|s| s.pending && s.end <= t).collect();
    due.sort_by_key(|s| s.end);
    for s in due {
        out.push(result(s.end, s.start, key, s.value, s.emitted));
        s.emitted = true;
        s.pending = false;
    }
}

fn session_model(gap: u64, lateness: u64, kept: &[Arrival]) -> Vec<Out> {
    let mut by_key: BTreeMap<u64, BTreeMap<Option<u64>, Vec<Arrival>>> = BTreeMap::new();
    for r in kept {
        by_key.entry(r.key).or_default().entry(r.eff).or_default().push(*r);
    }
    let mut out = Vec::new();
    for (key, batches) in by_key {
        let mut sessions: Vec<ModelSession> = Vec::new();
        for (time, batch) in batches {
            if let Some(t) = time {
                fire_due(key, &mut sessions, t, &mut out);
                // State expiry: a session whose end + L has been reached is gone.
                sessions.retain(|s| s.end + lateness > t);
            }
            for r in batch {
                let mut merged = ModelSession { start: r.ts, end: r.ts + gap, value: (1, r.amount), emitted: false, pending: true };
                while let Some(i) = sessions.iter().position(|s| s.start < merged.end && merged.start < s.end) {
                    let s = sessions.swap_remove(i);
                    merged.start = merged.start.min(s.start);
                    merged.end = merged.end.max(s.end);
                    merged.value = (merged.value.0 + s.value.0, merged.value.1 + s.value.1);
                    merged.emitted |= s.emitted;
                }
                sessions.push(merged);
            }
            if let Some(t) = time {
                fire_due(key, &mut sessions, t, &mut out);
            }
        }
        fire_due(key, &mut sessions, u64::MAX, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running the engine.

/// Runs the case through the engine: its sorted results, its `late_dropped:w` counter, and the
/// `state:w` gauge (entries of window state still held) after the run.
fn run(case: &Case) -> (Vec<Out>, u64, u64) {
    let (windows, lateness) = (case.shape.windows(), case.lateness);
    let metrics: Arc<Mutex<Option<Arc<Metrics>>>> = Arc::new(Mutex::new(None));
    let seen = metrics.clone();
    let (mut out, counters) = run_partitions(
        case.workers,
        case.records(),
        |r: &Rec| r.0,
        OutOfOrder::millis(case.bound),
        move |s| {
            *seen.lock().unwrap() = Some(s.metrics());
            s.key_by("k", |r: &Rec| r.1).window("w", windows).allowed_lateness(millis(lateness)).aggregate((Count, Sum::of(|r: &Rec| r.2)))
        },
    );
    out.sort();
    let dropped = counters.get("late_dropped:w").copied().unwrap_or(0);
    let state = metrics.lock().unwrap().as_ref().and_then(|m| m.gauges().get("state:w").copied()).unwrap_or(0);
    (out, dropped, state)
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let (want, want_dropped) = model(case);
    let (got, got_dropped, state) = run(case);
    prop_assert_eq!(&got, &want, "results differ");
    prop_assert_eq!(got_dropped, want_dropped, "late_dropped:w differs");
    prop_assert_eq!(state, 0, "window state left after the end of the input");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generating cases.

/// Records with event times in `BASE + offset .. BASE + offset + span`, dealt into `partitions`
/// and disordered: each partition is sorted by event time plus a delay, zero for most records and
/// up to `disorder` for the stragglers. `span` is up to `units` times `unit`.
fn records(unit: u64, units: u64) -> impl Strategy<Value = (usize, Vec<Vec<Rec>>)> {
    let span = unit..=units * unit;
    let disorder = prop_oneof![1 => Just(0u64), 2 => 0..=2 * unit, 2 => 0..=(units + 1) * unit];
    let stragglers = prop_oneof![Just(0.1), Just(0.3), Just(1.0)];
    (1usize..=2, 1usize..=3, 1u64..=3, 0..2 * unit, span, disorder, stragglers).prop_flat_map(
        move |(workers, partitions, keys, offset, span, disorder, stragglers)| {
            let record = (0..span, 0..keys, -20i64..100, 0..=disorder, proptest::bool::weighted(stragglers), 0..partitions);
            proptest::collection::vec(record, 0..150).prop_map(move |raw| {
                let mut parts: Vec<Vec<(u64, usize, Rec)>> = vec![Vec::new(); partitions];
                for (i, (at, key, amount, delay, straggles, p)) in raw.into_iter().enumerate() {
                    let delay = if straggles { delay } else { 0 };
                    parts[p].push((at + delay, i, (BASE + offset + at, key, amount)));
                }
                let parts = parts
                    .into_iter()
                    .map(|mut p| {
                        p.sort();
                        p.into_iter().map(|(_, _, r)| r).collect()
                    })
                    .collect();
                (workers, parts)
            })
        },
    )
}

/// A case for a window shape whose natural length is `unit` (size or gap).
fn case(shape: Shape, unit: u64, units: u64) -> impl Strategy<Value = Case> {
    let bound = prop_oneof![2 => Just(0u64), 2 => 0..=unit, 1 => 0..=3 * unit];
    let lateness = prop_oneof![1 => Just(0u64), 1 => 1..=3 * unit];
    let filler_at = prop_oneof![3 => Just(None), 1 => (0usize..150).prop_map(Some)];
    (records(unit, units), bound, lateness, filler_at).prop_map(move |((workers, partitions), bound, lateness, filler_at)| Case {
        shape,
        workers,
        bound,
        lateness,
        partitions,
        filler_at,
    })
}

fn tumbling() -> impl Strategy<Value = Case> {
    (1u64..=40).prop_flat_map(|size| case(Shape::Aligned { size, slide: size }, size, 5))
}

fn sliding() -> impl Strategy<Value = Case> {
    // Mostly slide < size (overlapping windows, size often not a multiple of the slide), sometimes
    // slide > size (gaps between windows).
    prop_oneof![
        4 => (2u64..=40).prop_flat_map(|size| (Just(size), 1..size)),
        1 => (1u64..=20).prop_flat_map(|size| (Just(size), size + 1..=2 * size)),
    ]
    .prop_flat_map(|(size, slide)| case(Shape::Aligned { size, slide }, size, 5))
}

fn sessions() -> impl Strategy<Value = Case> {
    // Spread wider than aligned windows: dense records make one long session per key, and updates
    // need sessions that ended before a late record arrives.
    (1u64..=30).prop_flat_map(|gap| case(Shape::Session { gap }, gap, 30))
}

fn config(cases: u32) -> Config {
    // No regression files: the repository holds only this test; a failure prints its minimal case.
    Config { cases, failure_persistence: None, max_shrink_iters: 10_000, max_shrink_time: 30_000, ..Config::default() }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn tumbling_windows_match_the_model(case in tumbling()) {
        check(&case)?;
    }

    #[test]
    fn sliding_windows_match_the_model(case in sliding()) {
        check(&case)?;
    }

    #[test]
    fn session_windows_match_the_model(case in sessions()) {
        check(&case)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-computed cases: they check the model itself, and the engine at 1 and 2 workers.

/// A record at `BASE + offset`.
fn at(offset: u64, key: u64, amount: i64) -> Rec {
    (BASE + offset, key, amount)
}

/// The result for window `[BASE + start, BASE + end)`.
fn window(start: i64, end: i64, key: u64, value: (u64, i64), is_update: bool) -> Out {
    result(BASE.checked_add_signed(end).unwrap(), BASE.checked_add_signed(start).unwrap(), key, value, is_update)
}

fn check_by_hand(shape: Shape, bound: u64, lateness: u64, partitions: Vec<Vec<Rec>>, mut want: Vec<Out>, want_dropped: u64) {
    want.sort();
    for workers in [1, 2] {
        let case = Case { shape, workers, bound, lateness, partitions: partitions.clone(), filler_at: None };
        assert_eq!(model(&case), (want.clone(), want_dropped), "the model, {workers} worker(s)");
        let (got, got_dropped, state) = run(&case);
        assert_eq!((got, got_dropped), (want.clone(), want_dropped), "the engine, {workers} worker(s)");
        assert_eq!(state, 0, "window state left, {workers} worker(s)");
    }
}

#[test]
fn tumbling_by_hand() {
    // Windows [0, 10), [10, 20) (offsets from BASE, a multiple of 10); no disorder allowed.
    let records = vec![
        at(1, 1, 5),
        at(4, 1, 7),
        at(9, 2, 1),
        at(12, 1, 3),
        // Behind (W = 12) but its window [10, 20) has not ended: counts in the main result.
        at(11, 1, 4),
        // Behind (W = 12) and its only window [0, 10) ended at or before 12: dropped.
        at(5, 1, 100),
    ];
    let want = vec![window(0, 10, 1, (2, 12), false), window(0, 10, 2, (1, 1), false), window(10, 20, 1, (2, 7), false)];
    check_by_hand(Shape::Aligned { size: 10, slide: 10 }, 0, 0, vec![records], want, 1);
}

#[test]
fn sliding_by_hand() {
    // Windows of 15 every 10: [-10, 5), [0, 15), [10, 25), ...; a record at 3 is in the first two,
    // one at 12 in the next two.
    let records = vec![
        at(3, 1, 1),
        at(12, 1, 2),
        at(14, 2, 4),
        at(27, 1, 8),
        // W = 27 - 5 = 22: behind. Too late for [0, 15) (no lateness), in time for [10, 25).
        at(13, 1, 16),
        at(40, 1, 32),
        // W = 35: its last window [0, 15) ended long ago: dropped.
        at(9, 1, 64),
    ];
    let want = vec![
        window(-10, 5, 1, (1, 1), false),
        window(0, 15, 1, (2, 3), false),
        window(10, 25, 1, (2, 18), false),
        window(20, 35, 1, (1, 8), false),
        window(30, 45, 1, (1, 32), false),
        window(40, 55, 1, (1, 32), false),
        window(0, 15, 2, (1, 4), false),
        window(10, 25, 2, (1, 4), false),
    ];
    check_by_hand(Shape::Aligned { size: 15, slide: 10 }, 5, 0, vec![records], want, 1);
}

#[test]
fn sessions_by_hand() {
    // Gap 10, out-of-orderness 30.
    let records = vec![
        at(0, 1, 1),
        at(5, 1, 2),
        at(30, 1, 4),
        // W = 0: on time; [12, 22) joins [0, 15) into [0, 22).
        at(12, 1, 8),
        at(3, 2, 16),
        at(45, 1, 32),
        // W = 15: behind, and its window [2, 12) ended at or before 15: dropped.
        at(2, 1, 64),
        // W = 15: on time; [38, 48) bridges [30, 40) and [45, 55).
        at(38, 1, 128),
    ];
    let want = vec![window(0, 22, 1, (3, 11), false), window(30, 55, 1, (3, 164), false), window(3, 13, 2, (1, 16), false)];
    check_by_hand(Shape::Session { gap: 10 }, 30, 0, vec![records], want, 1);
}

#[test]
fn allowed_lateness_updates_by_hand() {
    // Tumbling windows of 10, no disorder, allowed lateness 20: window [0, 10) takes late records
    // that travel at a watermark below 30.
    let records = vec![
        at(1, 1, 1),
        at(15, 1, 2),
        // Travels at 15: an update of [0, 10) for key 1.
        at(3, 1, 4),
        at(25, 1, 8),
        // Both travel at 25: a second update for key 1, and a first result for key 2, which had
        // none (so it is not an update).
        at(8, 1, 16),
        at(4, 2, 32),
        at(31, 1, 64),
        // Travels at 31 >= 10 + 20: dropped.
        at(2, 1, 128),
    ];
    let want = vec![
        window(0, 10, 1, (1, 1), false),
        window(0, 10, 1, (2, 5), true),
        window(0, 10, 1, (3, 21), true),
        window(0, 10, 2, (1, 32), false),
        window(10, 20, 1, (1, 2), false),
        window(20, 30, 1, (1, 8), false),
        window(30, 40, 1, (1, 64), false),
    ];
    check_by_hand(Shape::Aligned { size: 10, slide: 10 }, 0, 20, vec![records], want, 1);
}

#[test]
fn a_late_record_bridging_two_sessions_by_hand() {
    // Gap 10, no disorder, allowed lateness 100.
    let records = vec![
        at(0, 1, 1),
        at(15, 1, 2),
        // W = 15, then 30: [0, 10) and [15, 25) fire before the next record is applied.
        at(30, 1, 4),
        // Travels at 30: [8, 18) bridges [0, 10) and [15, 25) into [0, 25), which has ended: it
        // fires at once as an update. [30, 40) does not overlap it.
        at(8, 1, 8),
    ];
    let want = vec![
        window(0, 10, 1, (1, 1), false),
        window(15, 25, 1, (1, 2), false),
        window(0, 25, 1, (3, 11), true),
        window(30, 40, 1, (1, 4), false),
    ];
    check_by_hand(Shape::Session { gap: 10 }, 0, 100, vec![records], want, 0);
}

/// A kept record can overlap a session whose state has already expired: its own window
/// `[ts, ts + gap)` decides whether it is dropped, and that window ends after the session's. The
/// session [14, 22) expires at 22 + 0; the record at 21 travels at 28 (< 21 + 8, so it is kept) and
/// must start a new session instead of merging into the expired one.
///
/// The engine frees session state only at the watermark steps it happens to observe: it merges
/// when the watermark jumps past 28 in one step, and does not when it stops between 22 and 28
/// first. So key 1's results depend on how many records of an unrelated key sit between (here,
/// whether the source reads the partition in one batch or two), and at 2 workers on timing. The
/// fix: expire sessions up to a batch's time before applying the batch
/// (`SessionLogic::on_watermark`, operators/src/window/session.rs).
#[test]
fn a_late_record_cannot_merge_into_an_expired_session() {
    let want = vec![window(14, 22, 1, (1, 1), false), window(21, 29, 1, (1, 4), false)];
    let mut got = Vec::new();
    for filler in [1, BATCH - 1] {
        let mut records = vec![at(14, 1, 1)];
        records.extend(std::iter::repeat_n(at(28, 0, 2), filler));
        records.push(at(21, 1, 4));
        let case = Case { shape: Shape::Session { gap: 8 }, workers: 1, bound: 0, lateness: 0, partitions: vec![records], filler_at: None };
        let key_1 = |out: Vec<Out>| out.into_iter().filter(|(_, w)| w.key == 1).collect::<Vec<_>>();
        assert_eq!(key_1(model(&case).0), want, "the model, {filler} filler record(s)");
        got.push((filler, key_1(run(&case).0)));
    }
    for (filler, got) in got {
        assert_eq!(got, want, "the engine, with {filler} record(s) of another key between");
    }
}

/// Sliding windows may leave gaps (slide > size): a record in a gap is in no window. When it is on
/// time it must not count as late, whatever the watermark of the worker when it was read.
///
/// Windows of 1 every 2: [0, 1), [2, 3), ...; a record at 1 is in none of them, and the end of the
/// last window before it is 1. The source sends on-time records at the worker's watermark, which is
/// 0 while it reads its first batch and 1 after (the first batch ends at 1): the engine's lateness
/// test (`last_end(ts) + L <= message time`) then counts the second record at 1 as late although it
/// is on time. The fix: only a record behind its partition's watermark (`ts < message time`) can be
/// late (`WindowedStream::aggregate`, operators/src/window/mod.rs).
#[test]
fn an_on_time_record_between_sliding_windows_is_not_late() {
    let mut records = vec![at(1, 0, 1); BATCH];
    records.push(at(1, 0, 1));
    records.push(at(2, 0, 5));
    check_by_hand(Shape::Aligned { size: 1, slide: 2 }, 0, 0, vec![records], vec![window(2, 3, 0, (1, 5), false)], 0);
}
