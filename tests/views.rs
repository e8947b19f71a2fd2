//! End-to-end tests of the updating views of `merchant-exposure` (differential dataflow): every test
//! runs the real `paystream` binary in its own temporary directory and checks the changelogs it
//! writes against values computed here, independently of the program.
//!
//! How the engine stamps view updates matters for what can be asserted: a source sends the records
//! it reads at the watermark it holds *before* reading them (it moves it every `BATCH`, 2048, lines
//! of a single partition, or when it has read all there is), and
//! views coarsen that watermark (not the records' event times) to `granularity_ms`. So the
//! intermediate states a changelog shows depend on how the input splits into reads; only the final
//! state is a function of the input alone. The inputs below are sized so that there are several
//! reads per source, which makes the views revise.

#[macro_use]
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const ADJUSTMENT_HEADER: &str = "ts_ms,txn_id,merchant_id,amount_cents,kind";
const EXPOSURE_HEADER: &str = "merchant_id,exposure_cents,diff";
const CARDS_HEADER: &str = "merchant_id,cards,diff";
const DEAD_LETTER_HEADER: &str = "source,origin,line,reason,raw";

// ---------------------------------------------------------------------------------------------
// Temporary directories and running the binary (after tests/cli.rs).

// ---------------------------------------------------------------------------------------------
// Inputs, and the answers computed in batch.

#[derive(Clone, Debug)]
struct Payment {
    ts_ms: u64,
    txn_id: String,
    card_id: u64,
    merchant_id: u64,
    amount_cents: i64,
    status: &'static str,
}

impl Payment {
    fn to_line(&self) -> String {
        format!("{},{},{},{},{},EUR,DE,{}", self.ts_ms, self.txn_id, self.card_id, self.merchant_id, self.amount_cents, self.status)
    }
}

#[derive(Clone, Debug)]
struct Adjustment {
    ts_ms: u64,
    txn_id: String,
    merchant_id: u64,
    amount_cents: i64,
    kind: &'static str,
}

impl Adjustment {
    fn to_line(&self) -> String {
        format!("{},{},{},{},{}", self.ts_ms, self.txn_id, self.merchant_id, self.amount_cents, self.kind)
    }
}

/// Payments in event-time order with small disorder (up to 1.5 s, within the 2 s bound), every
/// 97th far behind (late for the payments' watermark); ~20 merchants (skewed), ~300 cards.
/// Merchant 98 has only declined payments (cards but no exposure); merchant 99 one approved payment
/// that is refunded in full (exposure 0: no row).
fn payments(seed: u64, n: usize) -> Vec<Payment> {
    let mut rng = Rng(seed);
    let mut base: u64 = 1_767_225_600_000;
    let mut rows = Vec::with_capacity(n + 4);
    for i in 0..n {
        base += rng.below(60);
        let mut ts = base - rng.below(1_500);
        if i % 97 == 96 {
            ts -= 5_000 + rng.below(20_000);
        }
        let m = rng.below(20).min(rng.below(20));
        let status = match rng.below(100) {
            0..=79 => "APPROVED",
            80..=87 => "DECLINED",
            88..=93 => "REVERSED",
            _ => "PENDING",
        };
        rows.push(Payment {
            ts_ms: ts,
            txn_id: format!("t{i}"),
            card_id: 1 + rng.below(300),
            merchant_id: 1 + m,
            amount_cents: 100 + rng.below(20_000) as i64,
            status,
        });
        if i == n / 3 {
            for (k, card) in [(0, 7), (1, 8)] {
                rows.push(Payment {
                    ts_ms: base,
                    txn_id: format!("d{k}"),
                    card_id: card,
                    merchant_id: 98,
                    amount_cents: 1_234,
                    status: "DECLINED",
                });
            }
            rows.push(Payment { ts_ms: base, txn_id: "z0".into(), card_id: 9, merchant_id: 99, amount_cents: 4_321, status: "APPROVED" });
        }
    }
    rows
}

/// Refunds and chargebacks of 45% of the approved payments, 1-120 s after them, in
/// event-time order except every 7th, which comes at the very end of the file (far behind the
/// adjustments' watermark by then). Includes the full refund of `z0`.
fn adjustments(seed: u64, payments: &[Payment]) -> Vec<Adjustment> {
    let mut rng = Rng(seed);
    let mut rows: Vec<Adjustment> = Vec::new();
    for p in payments.iter().filter(|p| p.status == "APPROVED") {
        if p.txn_id == "z0" {
            rows.push(Adjustment {
                ts_ms: p.ts_ms + 30_000,
                txn_id: p.txn_id.clone(),
                merchant_id: 99,
                amount_cents: p.amount_cents,
                kind: "REFUND",
            });
        } else if rng.below(20) < 9 {
            let amount = if rng.below(2) == 0 { p.amount_cents } else { 1 + rng.below(p.amount_cents as u64) as i64 };
            rows.push(Adjustment {
                ts_ms: p.ts_ms + 1_000 + rng.below(120_000),
                txn_id: p.txn_id.clone(),
                merchant_id: p.merchant_id,
                amount_cents: amount,
                kind: if rng.below(4) == 0 { "CHARGEBACK" } else { "REFUND" },
            });
        }
    }
    rows.sort_by_key(|a| a.ts_ms);
    let late: Vec<Adjustment> = rows.iter().skip(3).step_by(7).cloned().collect();
    let in_order = rows.into_iter().enumerate().filter(|(i, _)| i % 7 != 3).map(|(_, a)| a);
    in_order.chain(late).collect()
}

/// Exposure per merchant: approved volume minus adjustments; merchants whose total is 0 have no
/// row (a weighted count drops keys of total weight 0).
fn expected_exposure(payments: &[Payment], adjustments: &[Adjustment]) -> BTreeMap<u64, i64> {
    let mut total: BTreeMap<u64, i64> = BTreeMap::new();
    for p in payments.iter().filter(|p| p.status == "APPROVED") {
        *total.entry(p.merchant_id).or_default() += p.amount_cents;
    }
    for a in adjustments {
        *total.entry(a.merchant_id).or_default() -= a.amount_cents;
    }
    total.retain(|_, v| *v != 0);
    total
}

/// Distinct cards per merchant over all payments, whatever their status.
fn expected_cards(payments: &[Payment]) -> BTreeMap<u64, i64> {
    let mut cards: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for p in payments {
        cards.entry(p.merchant_id).or_default().insert(p.card_id);
    }
    cards.into_iter().map(|(m, c)| (m, c.len() as i64)).collect()
}

// ---------------------------------------------------------------------------------------------
// Changelogs.

/// One line of a changelog: merchant, value, diff.
type Change = (u64, i64, i64);

fn read_changelog(path: &Path, header: &str) -> Vec<Change> {
    data_lines(path, header)
        .iter()
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 3, "changelog line {line:?} of {}", path.display());
            let n = |i: usize| f[i].parse::<i64>().unwrap_or_else(|e| panic!("column {i} of {line:?} in {}: {e}", path.display()));
            let change = (n(0) as u64, n(1), n(2));
            assert!(change.2 == 1 || change.2 == -1, "diff must be 1 or -1: {line:?} in {}", path.display());
            change
        })
        .collect()
}

/// The state a changelog ends in, checked to be a consistent one: the net multiplicity of every
/// (merchant, value) row is 0 or 1, and each merchant has at most one current row.
fn final_state(what: &str, changes: &[Change]) -> BTreeMap<u64, i64> {
    let mut net: BTreeMap<(u64, i64), i64> = BTreeMap::new();
    for &(m, v, d) in changes {
        *net.entry((m, v)).or_default() += d;
    }
    let mut state = BTreeMap::new();
    for ((m, v), n) in net {
        assert!(n == 0 || n == 1, "{what}: row {m},{v} has net multiplicity {n}");
        if n == 1 {
            if let Some(other) = state.insert(m, v) {
                panic!("{what}: merchant {m} ends with two current rows, {other} and {v}");
            }
        }
    }
    state
}

/// Applies a changelog in file order, as its consumer would: every retraction must remove a row
/// that is current at that point, no row may be inserted twice, and a merchant may hold two rows
/// only transiently (within one time step the sink orders the lines by text, so the new row may
/// come before the retraction of the old one). Returns the first violation of each merchant (at
/// most 5 merchants) and how many merchants have one.
fn in_order_violations(changes: &[Change]) -> Vec<String> {
    let mut current: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
    let mut broken: BTreeMap<u64, String> = BTreeMap::new();
    for (i, &(m, v, d)) in changes.iter().enumerate() {
        let rows = current.entry(m).or_default();
        let line = i + 2;
        let problem = if d > 0 {
            if !rows.insert(v) {
                Some(format!("line {line}: {m},{v},1 inserts a row that is already current"))
            } else if rows.len() > 2 {
                Some(format!("line {line}: {m},{v},1 gives merchant {m} more than two current rows {rows:?}"))
            } else {
                None
            }
        } else if !rows.remove(&v) {
            Some(format!("line {line}: {m},{v},-1 retracts a row that is not current (current: {rows:?})"))
        } else {
            None
        };
        if let Some(p) = problem {
            broken.entry(m).or_insert(p);
        }
    }
    let mut problems: Vec<String> = broken.values().take(5).cloned().collect();
    if !broken.is_empty() {
        problems.push(format!("({} of {} merchants affected)", broken.len(), current.len()));
    }
    problems
}

fn assert_same_state(what: &str, expected: &BTreeMap<u64, i64>, actual: &BTreeMap<u64, i64>) {
    if expected == actual {
        return;
    }
    let keys: BTreeSet<u64> = expected.keys().chain(actual.keys()).copied().collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| expected.get(k) != actual.get(k))
        .map(|k| format!("merchant {k}: expected {:?}, got {:?}", expected.get(&k), actual.get(&k)))
        .collect();
    panic!("{what}: final state differs from the batch answer in {} merchants:\n{}", diffs.len(), diffs.join("\n"));
}

/// The arguments of a `merchant-exposure` run writing its sinks into `out`.
fn exposure_args(payments: &Path, adjustments: &Path, out: &Path, workers: usize) -> Vec<String> {
    args![
        "run",
        "merchant-exposure",
        "--source",
        format!("payments={}", file_uri(payments)),
        "--source",
        format!("adjustments={}", file_uri(adjustments)),
        "--sink",
        format!("exposure={}", file_uri(&out.join("exposure.csv"))),
        "--sink",
        format!("distinct_cards={}", file_uri(&out.join("cards.csv"))),
        "--sink",
        format!("dead_letters={}", file_uri(&out.join("dead_letters.csv"))),
        "--workers",
        workers,
        "-q"
    ]
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn merchant_exposure_final_state_equals_batch() {
    let dir = TempDir::new("batch");
    // 2 x ~7,000 payments and ~5,000 adjustments: two or more reads (of at most 2,048 lines) per
    // partition, so the views see several time steps and revise.
    let pays = payments(0x5eed_0001, 14_000);
    let adjs = adjustments(0x5eed_0002, &pays);
    let pay_dir = dir.join("payments");
    std::fs::create_dir_all(&pay_dir).expect("create the payments directory");
    for k in 0..2 {
        write_csv(&pay_dir.join(format!("part-{k}.csv")), PAYMENT_HEADER, pays.iter().skip(k).step_by(2).map(Payment::to_line));
    }
    let adj_path = dir.join("adjustments.csv");
    write_csv(&adj_path, ADJUSTMENT_HEADER, adjs.iter().map(Adjustment::to_line));

    let exposure = expected_exposure(&pays, &adjs);
    let cards = expected_cards(&pays);
    // The input covers what it should.
    assert!(exposure.len() == 20 && !exposure.contains_key(&98) && !exposure.contains_key(&99), "{exposure:?}");
    assert!(cards.contains_key(&98) && cards.contains_key(&99) && cards.len() == exposure.len() + 2, "{cards:?}");
    assert!(adjs.len() > 4_096, "adjustments fit into one read: {}", adjs.len());

    let runs: Vec<Running> = [1, 2]
        .into_iter()
        .map(|workers| {
            let out = dir.join(&format!("w{workers}"));
            std::fs::create_dir_all(&out).expect("create an output directory");
            spawn(&format!("{workers} workers"), exposure_args(&pay_dir, &adj_path, &out, workers), dir.path())
        })
        .collect();
    let outcomes = wait_all(runs);
    let mut problems = Vec::new();
    let mut finals = Vec::new();
    let mut retractions = Vec::new();
    for (workers, outcome) in [1, 2].into_iter().zip(&outcomes) {
        outcome.assert_success();
        let out = dir.join(&format!("w{workers}"));
        assert!(data_lines(&out.join("dead_letters.csv"), DEAD_LETTER_HEADER).is_empty(), "{workers} workers: dead letters");
        for (sink, header, expected) in [("exposure.csv", EXPOSURE_HEADER, &exposure), ("cards.csv", CARDS_HEADER, &cards)] {
            let what = format!("{sink} with {workers} workers");
            let changes = read_changelog(&out.join(sink), header);
            let state = final_state(&what, &changes);
            assert_same_state(&what, expected, &state);
            finals.push((sink, workers, state));
            let revisions = changes.iter().filter(|c| c.2 < 0).count();
            eprintln!("{what}: {} lines, {revisions} retractions", changes.len());
            retractions.push((what.clone(), revisions));
            let violations = in_order_violations(&changes);
            if !violations.is_empty() {
                problems.push(format!("{what} is not a changelog when applied in file order:\n  {}", violations.join("\n  ")));
            }
        }
    }
    // Both worker counts end in the same state (the batch answer), and the views did revise.
    for sink in ["exposure.csv", "cards.csv"] {
        let states: Vec<_> = finals.iter().filter(|f| f.0 == sink).map(|f| &f.2).collect();
        assert!(states.len() == 2 && states[0] == states[1], "{sink}: final states of 1 and 2 workers differ");
    }
    assert!(retractions.iter().all(|r| r.1 > 0), "a view never revised, so the input did not exercise updates: {retractions:?}");
    assert!(problems.is_empty(), "final states equal the batch answer for both worker counts, but:\n{}", problems.join("\n"));
}

#[test]
fn merchant_exposure_revises_as_adjustments_arrive() {
    let dir = TempDir::new("revise");
    // Merchant 1: approved payments of 500 at 1 s and 300 at 2 s, then a refund of 300 at 60 s.
    // The refund comes after 5,000 adjustments of merchant 2 (1 cent each, event times from 61 s),
    // so it is in the adjustments' second read, sent at their watermark after the first read
    // (82.9 s; the refund is behind it, late, and must still count), while both payments are in the
    // payments' first read at watermark 0: merchant 1's exposure is 800 at the first time step and
    // 500 at a later one. Merchant 2 pays 1,000,000 and later; merchant 3 pays at 200 s.
    let pay_path = dir.join("payments.csv");
    write_csv(
        &pay_path,
        PAYMENT_HEADER,
        [
            "500,p0,20,2,1000000,EUR,DE,APPROVED",
            "1000,p1,10,1,500,EUR,DE,APPROVED",
            "2000,p2,11,1,300,EUR,DE,APPROVED",
            "200000,p3,30,3,700,EUR,DE,APPROVED",
        ]
        .map(String::from),
    );
    let fillers = 5_000u64;
    let adj_path = dir.join("adjustments.csv");
    write_csv(
        &adj_path,
        ADJUSTMENT_HEADER,
        (0..fillers).map(|i| format!("{},p0,2,1,REFUND", 61_000 + 20 * i)).chain(["60000,p2,1,300,REFUND".to_string()]),
    );
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("create the output directory");
    run("tiny exposure", exposure_args(&pay_path, &adj_path, &out, 1), dir.path()).assert_success();

    let changes = read_changelog(&out.join("exposure.csv"), EXPOSURE_HEADER);
    let merchant1: Vec<(i64, i64)> = changes.iter().filter(|c| c.0 == 1).map(|c| (c.1, c.2)).collect();
    assert_eq!(merchant1.first(), Some(&(800, 1)), "merchant 1 first gets exposure 500 + 300; its changes: {merchant1:?}");
    let rest: BTreeSet<(i64, i64)> = merchant1[1..].iter().copied().collect();
    assert_eq!(
        (merchant1.len(), rest),
        (3, BTreeSet::from([(800, -1), (500, 1)])),
        "after the refund of 300, merchant 1's 800 is retracted and 500 inserted; its changes: {merchant1:?}"
    );
    let state = final_state("tiny exposure", &changes);
    assert_eq!(state, BTreeMap::from([(1, 500), (2, 1_000_000 - fillers as i64), (3, 700)]), "final exposure");
    let violations = in_order_violations(&changes);
    assert!(violations.is_empty(), "exposure changelog applied in file order:\n{}", violations.join("\n"));
    let cards = final_state("tiny cards", &read_changelog(&out.join("cards.csv"), CARDS_HEADER));
    assert_eq!(cards, BTreeMap::from([(1, 2), (2, 1), (3, 1)]), "final distinct cards");
}

/// Views take part in checkpoints: a checkpointed run (a checkpoint every 20 ms) at 1 and 2
/// workers writes a part for every view's input, ends in the batch answer, writes a changelog
/// that applies in file order, and leaves no checkpoints behind once finished. (Crashes and restores: `tests/recovery.rs`,
/// `merchant_exposure_survives_kill_9`.)
#[test]
fn checkpointed_runs_end_in_the_batch_state() {
    let dir = TempDir::new("checkpointed");
    let pays = payments(0x5eed_0003, 6_000);
    let adjs = adjustments(0x5eed_0004, &pays);
    let pay_path = dir.join("payments.csv");
    write_csv(&pay_path, PAYMENT_HEADER, pays.iter().map(Payment::to_line));
    let adj_path = dir.join("adjustments.csv");
    write_csv(&adj_path, ADJUSTMENT_HEADER, adjs.iter().map(Adjustment::to_line));
    let exposure = expected_exposure(&pays, &adjs);
    let cards = expected_cards(&pays);
    for workers in [1, 2] {
        let out = dir.join(&format!("w{workers}"));
        std::fs::create_dir_all(&out).expect("create an output directory");
        let chk = dir.join(&format!("chk{workers}"));
        let mut a = exposure_args(&pay_path, &adj_path, &out, workers);
        a.extend(args!["--checkpoint-dir", chk.display(), "--checkpoint-interval", "20ms"]);
        // Not quiet: the summary names the steps that wrote checkpoint parts.
        a.retain(|arg| arg != "-q");
        let outcome = run(&format!("checkpointed, {workers} workers"), a, dir.path());
        outcome.assert_success();
        for step in ["exposure:paid", "exposure:taken-back", "cards:pairs"] {
            assert!(
                outcome.stderr.contains(&format!("checkpoint part of {step}:")),
                "{workers} workers: step {step} wrote no checkpoint part:\n{}",
                outcome.stderr
            );
        }
        for (sink, header, expected) in [("exposure.csv", EXPOSURE_HEADER, &exposure), ("cards.csv", CARDS_HEADER, &cards)] {
            let what = format!("{sink}, checkpointed with {workers} workers");
            let changes = read_changelog(&out.join(sink), header);
            assert_same_state(&what, expected, &final_state(&what, &changes));
            let violations = in_order_violations(&changes);
            assert!(violations.is_empty(), "{what} applied in file order:\n{}", violations.join("\n"));
        }
        let left: Vec<String> = std::fs::read_dir(&chk)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(left.iter().all(|name| !name.starts_with("chk-")), "a finished run leaves no checkpoints: {left:?}");
    }
}
