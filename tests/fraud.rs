//! End-to-end tests of the join-based jobs, `auth-match` and `fraud-detection`: each runs the real
//! binary (in a fresh temporary directory, at 1 and 2 workers) on input written or generated here,
//! and compares its output with a batch computation done here, independently of the program.
//!
//! The batch computations follow the jobs' documented semantics: each partition (file) is read in
//! order with its own watermark `W(r)` = the maximum event time of the earlier records of the
//! partition minus the source's bound (0 for the first record); a record is *behind* iff
//! `r.ts < W(r)`. Behind payments and authorizations are dropped by the interval join and the
//! process functions; a behind record counts in a sliding window iff the window ends after `W(r)`;
//! a behind table row takes effect at `W(r)`.

#[macro_use]
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const AUTH_HEADER: &str = "txn_id,ts_ms,auth_code";
const BLOCKED_HEADER: &str = "ts_ms,card_id,blocked";
const MATCH_HEADER: &str = "txn_id,payment_ts_ms,auth_ts_ms,card_id,amount_cents";
const ALERT_HEADER: &str = "rule,card_id,txn_id,ts_ms,detail";

// ---------------------------------------------------------------------------------------------
// Temporary directories and running the binary (after tests/cli.rs).

// ---------------------------------------------------------------------------------------------
// Records, done here independently of the program.

#[derive(Clone, Debug)]
struct Auth {
    txn_id: String,
    ts_ms: u64,
    auth_code: String,
}

impl Auth {
    fn to_line(&self) -> String {
        format!("{},{},{}", self.txn_id, self.ts_ms, self.auth_code)
    }
}

#[derive(Clone, Debug)]
struct Blocked {
    ts_ms: u64,
    card_id: u64,
    blocked: bool,
}

impl Blocked {
    fn to_line(&self) -> String {
        format!("{},{},{}", self.ts_ms, self.card_id, self.blocked)
    }
}

/// Each record's partition watermark: the maximum of the earlier event times minus `bound`.
fn watermarks(times: impl IntoIterator<Item = u64>, bound: u64) -> Vec<u64> {
    let mut max: Option<u64> = None;
    times
        .into_iter()
        .map(|ts| {
            let w = max.map_or(0, |m: u64| m.saturating_sub(bound));
            max = Some(max.map_or(ts, |m| m.max(ts)));
            w
        })
        .collect()
}

/// Keeps the records not behind their partition's watermark.
fn not_behind<T>(part: &[T], ts: impl Fn(&T) -> u64, bound: u64) -> Vec<&T> {
    let w = watermarks(part.iter().map(&ts), bound);
    part.iter().zip(w).filter(|(r, w)| ts(r) >= *w).map(|(r, _)| r).collect()
}

/// Deals `rows` round-robin into `n` files `DIR/part-K.csv`.
fn write_partitions<T>(dir: &Path, header: &str, rows: &[T], n: usize, line: impl Fn(&T) -> String) -> Vec<Vec<T>>
where
    T: Clone,
{
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let parts: Vec<Vec<T>> = (0..n).map(|k| rows.iter().skip(k).step_by(n).cloned().collect()).collect();
    for (k, part) in parts.iter().enumerate() {
        write_csv(&dir.join(format!("part-{k}.csv")), header, part.iter().map(&line));
    }
    parts
}

/// Orders records by `arrival` (event time plus any extra delay) plus a random delay below
/// `jitter`: a record without extra delay then arrives at most `jitter` ms behind the newest before
/// it.
fn shuffle_within<T>(rng: &mut Rng, rows: Vec<T>, arrival: impl Fn(&T) -> u64, jitter: u64) -> Vec<T> {
    let mut keyed: Vec<(u64, usize, T)> = rows.into_iter().enumerate().map(|(i, r)| (arrival(&r) + rng.below(jitter), i, r)).collect();
    keyed.sort_by_key(|(arrival, i, _)| (*arrival, *i));
    keyed.into_iter().map(|(_, _, r)| r).collect()
}

// ---------------------------------------------------------------------------------------------
// auth-match.

/// Payments from `generate-payments` (with disorder and injected late payments), authorizations
/// written here in payment order (so disordered by the spread of their delays, and some behind
/// the 6 s bound), some missing, some too late, some twice; `auth-match` must give exactly the
/// batch interval join.
#[test]
fn auth_match_equals_batch() {
    let dir = TempDir::new("auth-match");
    let payments_path = dir.join("payments.csv");
    let generator = "payments=gen:count=4000,seed=5,partitions=4,events_per_sec=250,disorder_ms=1500,late_every=101,late_by_ms=4000";
    let generate =
        args!["run", "generate-payments", "--source", generator, "--sink", format!("payments={}", file_uri(&payments_path)), "-q"];
    wait_all(vec![spawn("generate-payments", generate, dir.path())]).pop().expect("one run").assert_success();
    let payments: Vec<Payment> = data_lines(&payments_path, PAYMENT_HEADER).iter().map(|l| Payment::parse(l)).collect();
    assert_eq!(payments.len(), 4000);

    let mut rng = Rng(0xA17);
    let mut auths = Vec::new();
    for p in &payments {
        let delays: Vec<u64> = match rng.below(100) {
            0..=5 => vec![], // never authorized
            // Too late; such an authorization also moves its partition's watermark ahead, so the
            // next ones, of payments up to a second or so later, may fall behind it.
            6..=7 => vec![5_001 + rng.below(2_000)],
            11..=12 => vec![rng.below(5_001), rng.below(5_001)], // authorized twice
            13 => vec![5_000],                                   // at the window's end
            14 => vec![0],                                       // at the payment's time
            _ => vec![rng.below(4_001)],
        };
        for delay in delays {
            auths.push(Auth { txn_id: p.txn_id.clone(), ts_ms: p.ts_ms + delay, auth_code: format!("{:06}", rng.below(1_000_000)) });
        }
        if rng.below(100) == 0 {
            // An authorization of a transaction that is not in the payments.
            auths.push(Auth { txn_id: format!("z{}", auths.len()), ts_ms: p.ts_ms + rng.below(3_000), auth_code: "000000".into() });
        }
    }
    let auth_dir = dir.join("authorizations");
    let auth_parts = write_partitions(&auth_dir, AUTH_HEADER, &auths, 2, Auth::to_line);

    // The batch interval join: behind records dropped (payments bound 2 s, authorizations 6 s),
    // then every (payment, authorization) of one txn_id with auth time in [p, p + 5 s].
    let kept_payments = not_behind(&payments, |p| p.ts_ms, 2_000);
    let mut by_txn: HashMap<&str, Vec<&Payment>> = HashMap::new();
    for p in &kept_payments {
        by_txn.entry(p.txn_id.as_str()).or_default().push(p);
    }
    let mut expected = Vec::new();
    let mut kept_auths = 0;
    for part in &auth_parts {
        for a in not_behind(part, |a| a.ts_ms, 6_000) {
            kept_auths += 1;
            for p in by_txn.get(a.txn_id.as_str()).into_iter().flatten() {
                if a.ts_ms >= p.ts_ms && a.ts_ms <= p.ts_ms + 5_000 {
                    expected.push(format!("{},{},{},{},{}", p.txn_id, p.ts_ms, a.ts_ms, p.card_id, p.amount_cents));
                }
            }
        }
    }
    expected.sort();
    let matched: BTreeSet<&str> = expected.iter().map(|l| l.split(',').next().expect("txn_id")).collect();
    let (late_payments, late_auths) = (payments.len() - kept_payments.len(), auths.len() - kept_auths);
    assert!(late_payments > 20 && late_auths > 20, "the input should have behind records: {late_payments} payments, {late_auths} auths");
    eprintln!(
        "auth-match: {} payments ({late_payments} behind), {} authorizations ({late_auths} behind), {} matched, {} rows",
        payments.len(),
        auths.len(),
        matched.len(),
        expected.len()
    );
    assert!(matched.len() > 3_000 && matched.len() + 200 < kept_payments.len(), "matched {} of {}", matched.len(), kept_payments.len());
    assert!(expected.len() > matched.len() + 40, "some payments should match twice");

    let args =
        args!["--source", format!("payments={}", file_uri(&payments_path)), "--source", format!("authorizations={}", file_uri(&auth_dir))];
    let actual = run_on_1_and_2_workers(&dir, "auth-match", "auth-match", &args, "matches", MATCH_HEADER);
    assert_same("auth-match matches", &expected, &actual);
}

// ---------------------------------------------------------------------------------------------
// fraud-detection.

const T0: u64 = 1_767_225_600_000;
const COUNTRIES: [(&str, &str); 6] = [("US", "USD"), ("DE", "EUR"), ("GB", "GBP"), ("JP", "JPY"), ("FR", "EUR"), ("BR", "BRL")];

// The job's default parameters.
const MAX_PER_WINDOW: u64 = 10;
const GEO_WINDOW_MS: u64 = 600_000;
const SMALL_CENTS: i64 = 200;
const SMALL_COUNT: usize = 3;
const LARGE_CENTS: i64 = 50_000;
const TESTING_WINDOW_MS: u64 = 600_000;
const AUTH_WINDOW_MS: u64 = 5_000;
const BOUND_MS: u64 = 2_000;
const AUTH_BOUND_MS: u64 = 6_000;
const RETENTION_MS: u64 = 3_600_000;
const VELOCITY_SIZE_MS: u64 = 60_000;
const VELOCITY_SLIDE_MS: u64 = 10_000;

/// An alert row: (rule, card_id, txn_id, ts_ms, detail).
type Alert = (String, u64, String, u64, String);
/// What identifies an injected alert: (rule, card_id, txn_id).
type Mark = (String, u64, String);

fn parse_alert(line: &str) -> Alert {
    let f = split_csv(line);
    assert_eq!(f.len(), 5, "alert line {line:?}");
    let num = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
    (f[0].clone(), num(1), f[2].clone(), num(3), f[4].clone())
}

/// Input with injected fraud at known places, plus noise that by construction fires no rule.
struct Scenario {
    rng: Rng,
    payments: Vec<Payment>,
    /// Each payment's authorization delay (`None`: never authorized), by txn_id.
    auth_delays: BTreeMap<String, Option<u64>>,
    blocked: Vec<Blocked>,
    /// Extra arrival delays, beyond the bound: payments by txn_id, table changes by (ts, card).
    late_payments: BTreeMap<String, u64>,
    late_rows: BTreeMap<(u64, u64), u64>,
    /// Alerts the injected patterns must raise.
    expect: BTreeSet<Mark>,
    /// Alerts they must not raise (near misses).
    forbid: BTreeSet<Mark>,
}

fn mark(rule: &str, card: u64, txn: &str) -> Mark {
    (rule.to_string(), card, txn.to_string())
}

impl Scenario {
    /// A payment at `T0 + at` (ms) on `card`, authorized after a random delay within the window.
    fn pay(&mut self, at: u64, card: u64, amount_cents: i64, country: &str) -> String {
        let txn = format!("t{}", self.payments.len());
        let currency = COUNTRIES.iter().find(|(c, _)| *c == country).map_or("EUR", |(_, cur)| cur);
        self.payments.push(Payment {
            ts_ms: T0 + at,
            txn_id: txn.clone(),
            card_id: card,
            merchant_id: 1 + self.rng.below(50),
            amount_cents,
            currency: currency.to_string(),
            country: country.to_string(),
            status: if self.rng.below(10) == 0 { "DECLINED" } else { "APPROVED" }.to_string(),
        });
        let delay = self.rng.below(4_001);
        self.auth_delays.insert(txn.clone(), Some(delay));
        txn
    }

    fn block(&mut self, at: u64, card: u64, blocked: bool) {
        self.blocked.push(Blocked { ts_ms: T0 + at, card_id: card, blocked });
    }

    fn build(seed: u64) -> Scenario {
        let mut s = Scenario {
            rng: Rng(seed),
            payments: Vec::new(),
            auth_delays: BTreeMap::new(),
            blocked: Vec::new(),
            late_payments: BTreeMap::new(),
            late_rows: BTreeMap::new(),
            expect: BTreeSet::new(),
            forbid: BTreeSet::new(),
        };
        // Noise: 2,000 payments over 20 minutes on 200 cards, each card in its home country, for
        // everyday amounts (no probes, no large payments), all authorized in time. Event times are
        // distinct, so a card never has two payments at one time.
        for i in 0..2_000u64 {
            let at = i * 600 + s.rng.below(500);
            let card = 1 + s.rng.below(200);
            let amount = 300 + s.rng.below(40_000) as i64;
            let txn = s.pay(at, card, amount, COUNTRIES[(card % 6) as usize].0);
            if i % 150 == 149 {
                // Every 150th is never authorized.
                s.auth_delays.insert(txn.clone(), None);
                s.expect.insert(mark("unauthorized", card, &txn));
            }
        }
        // Noise card 7 is blocked for the last 5 minutes: each of its payments from then on alerts,
        // even those that arrive behind the watermark (the temporal join keeps them for an hour).
        s.block(900_000, 7, true);
        let card7: Vec<String> =
            s.payments.iter().filter(|p| p.card_id == 7 && p.ts_ms >= T0 + 900_000).map(|p| p.txn_id.clone()).collect();
        for txn in card7.iter().step_by(2) {
            s.late_payments.insert(txn.clone(), 8_000);
        }
        let late_card7: Vec<Mark> =
            s.payments.iter().filter(|p| p.card_id == 7 && p.ts_ms >= T0 + 900_000).map(|p| mark("blocked-card", 7, &p.txn_id)).collect();
        assert!(!late_card7.is_empty());
        s.expect.extend(late_card7);

        // Card testing: four probes, then a large payment.
        for (k, at) in [0u64, 4_000, 8_000, 12_000].into_iter().enumerate() {
            s.pay(60_000 + at, 1001, 100 + k as i64 * 20, "US");
        }
        let t = s.pay(80_000, 1001, 60_000, "US");
        s.expect.insert(mark("card-testing", 1001, &t));
        // Three probes, a medium payment (no reset), then a large one.
        for at in [300_000u64, 301_000, 302_000] {
            s.pay(at, 1002, 199, "DE");
        }
        s.pay(303_000, 1002, 5_000, "DE");
        let t = s.pay(310_000, 1002, 75_000, "DE");
        s.expect.insert(mark("card-testing", 1002, &t));
        // Only two probes: no alert.
        s.pay(500_000, 1003, 150, "GB");
        s.pay(501_000, 1003, 150, "GB");
        let t = s.pay(502_000, 1003, 90_000, "GB");
        s.forbid.insert(mark("card-testing", 1003, &t));
        // Three probes, but the first is more than the testing window before the large payment.
        for at in [100_000u64, 101_000, 102_000] {
            s.pay(at, 1004, 120, "FR");
        }
        let t = s.pay(100_000 + TESTING_WINDOW_MS + 1, 1004, 80_000, "FR");
        s.forbid.insert(mark("card-testing", 1004, &t));
        // An alert clears the probes: two more are not enough, a third is.
        for at in [400_000u64, 401_000, 402_000] {
            s.pay(at, 1005, 101, "JP");
        }
        let t = s.pay(405_000, 1005, 50_000, "JP");
        s.expect.insert(mark("card-testing", 1005, &t));
        s.pay(410_000, 1005, 101, "JP");
        s.pay(411_000, 1005, 101, "JP");
        let t = s.pay(412_000, 1005, 55_000, "JP");
        s.forbid.insert(mark("card-testing", 1005, &t));
        s.pay(413_000, 1005, 101, "JP");
        let t = s.pay(414_000, 1005, 56_000, "JP");
        s.expect.insert(mark("card-testing", 1005, &t));

        // Three probes, but one arrives behind the watermark and is dropped: no alert.
        s.pay(450_000, 1006, 110, "NL");
        let late = s.pay(451_000, 1006, 110, "NL");
        s.late_payments.insert(late, 8_000);
        s.pay(452_000, 1006, 110, "NL");
        let t = s.pay(453_000, 1006, 70_000, "NL");
        s.forbid.insert(mark("card-testing", 1006, &t));

        // Geo-velocity: US, then DE 30 s later, then US again.
        s.pay(200_000, 1101, 2_000, "US");
        let t = s.pay(230_000, 1101, 2_000, "DE");
        s.expect.insert(mark("geo-velocity", 1101, &t));
        let t = s.pay(260_000, 1101, 2_000, "US");
        s.expect.insert(mark("geo-velocity", 1101, &t));
        // More than the geo window apart: no alert.
        s.pay(100_000, 1102, 2_000, "US");
        let t = s.pay(100_000 + GEO_WINDOW_MS + 1, 1102, 2_000, "GB");
        s.forbid.insert(mark("geo-velocity", 1102, &t));
        // Exactly the geo window apart: an alert.
        s.pay(150_000, 1103, 2_000, "US");
        let t = s.pay(150_000 + GEO_WINDOW_MS, 1103, 2_000, "GB");
        s.expect.insert(mark("geo-velocity", 1103, &t));

        // Blocked cards: before the block, at it, during, after unblocking, blocked again.
        let t = s.pay(50_000, 1201, 3_000, "BR");
        s.forbid.insert(mark("blocked-card", 1201, &t));
        s.block(100_000, 1201, true);
        let t = s.pay(100_000, 1201, 3_000, "BR");
        s.expect.insert(mark("blocked-card", 1201, &t));
        let t = s.pay(130_000, 1201, 3_000, "BR");
        s.expect.insert(mark("blocked-card", 1201, &t));
        s.block(160_000, 1201, false);
        let t = s.pay(170_000, 1201, 3_000, "BR");
        s.forbid.insert(mark("blocked-card", 1201, &t));
        s.block(500_000, 1201, true);
        let t = s.pay(520_000, 1201, 3_000, "BR");
        s.expect.insert(mark("blocked-card", 1201, &t));
        // A payment 1 ms before its card is blocked.
        let t = s.pay(299_999, 1202, 3_000, "BR");
        s.forbid.insert(mark("blocked-card", 1202, &t));
        s.block(300_000, 1202, true);
        // A block that arrives behind the table's watermark (after a change 6 s later) takes effect
        // at that watermark, 4 s after its own time: a payment 2 s after it is not blocked yet.
        s.block(606_000, 1260, true);
        s.block(600_000, 1203, true);
        s.late_rows.insert((T0 + 600_000, 1203), 8_000);
        let t = s.pay(602_000, 1203, 3_000, "BR");
        s.forbid.insert(mark("blocked-card", 1203, &t));
        let t = s.pay(605_000, 1203, 3_000, "BR");
        s.expect.insert(mark("blocked-card", 1203, &t));
        // Table changes of cards that never pay.
        for k in 0..20u64 {
            let at = 20_000 + k * 50_000 + s.rng.below(1_000);
            s.block(at, 1250 + k % 7, k % 3 != 2);
        }

        // Unauthorized: no authorization; one 1 ms too late; near misses at the window's ends.
        let t = s.pay(400_000, 1301, 4_000, "US");
        s.auth_delays.insert(t.clone(), None);
        s.expect.insert(mark("unauthorized", 1301, &t));
        let t = s.pay(410_000, 1302, 4_000, "US");
        s.auth_delays.insert(t.clone(), Some(AUTH_WINDOW_MS + 1));
        s.expect.insert(mark("unauthorized", 1302, &t));
        let t = s.pay(420_000, 1303, 4_000, "US");
        s.auth_delays.insert(t.clone(), Some(AUTH_WINDOW_MS));
        s.forbid.insert(mark("unauthorized", 1303, &t));
        let t = s.pay(430_000, 1304, 4_000, "US");
        s.auth_delays.insert(t.clone(), Some(0));
        s.forbid.insert(mark("unauthorized", 1304, &t));

        // Velocity: 14 payments in 26 s (windows holding all of them alert), and exactly the
        // threshold of 10 on another card (no alert).
        for k in 0..14u64 {
            s.pay(600_000 + k * 2_000, 1401, 1_000, "FR");
        }
        s.expect.insert(mark("velocity", 1401, ""));
        for k in 0..MAX_PER_WINDOW {
            s.pay(700_000 + k * 2_000, 1402, 1_000, "FR");
        }
        s.forbid.insert(mark("velocity", 1402, ""));
        // 12 payments in 22 s, the first two arriving behind the watermark: they still count in
        // the windows that end after it, which include those holding all 12.
        for k in 0..12u64 {
            let t = s.pay(800_000 + k * 2_000, 1403, 1_000, "FR");
            if k < 2 {
                s.late_payments.insert(t, 6_000);
            }
        }
        s.expect.insert(mark("velocity", 1403, ""));
        s
    }
}

/// The five rules in batch over the partitions as written (see the module docs and
/// jobs/src/fraud.rs).
fn expected_alerts(payment_parts: &[Vec<Payment>], auths: &[Auth], blocked: &[Blocked]) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = Vec::new();
    let alert = |rule: &str, p: &Payment, detail: String| (rule.to_string(), p.card_id, p.txn_id.clone(), p.ts_ms, detail);

    // Payments with their watermarks.
    let mut all: Vec<(&Payment, u64)> = Vec::new();
    for part in payment_parts {
        all.extend(part.iter().zip(watermarks(part.iter().map(|p| p.ts_ms), BOUND_MS)));
    }
    let kept: Vec<&Payment> = all.iter().filter(|(p, w)| p.ts_ms >= *w).map(|(p, _)| *p).collect();

    // velocity: a count per card and sliding window; a behind payment counts in windows ending after W.
    let mut windows: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for (p, w) in &all {
        let mut start = p.ts_ms - p.ts_ms % VELOCITY_SLIDE_MS;
        while start + VELOCITY_SIZE_MS > p.ts_ms {
            let end = start + VELOCITY_SIZE_MS;
            if p.ts_ms >= *w || end > *w {
                *windows.entry((p.card_id, end)).or_default() += 1;
            }
            start -= VELOCITY_SLIDE_MS;
        }
    }
    for ((card, end), count) in windows {
        if count > MAX_PER_WINDOW {
            let detail = format!("{count} payments in [{}, {end})", end - VELOCITY_SIZE_MS);
            alerts.push(("velocity".into(), card, String::new(), end - 1, detail));
        }
    }

    // blocked-card: the table row as of the payment's time; behind rows take effect at W.
    let mut table: HashMap<u64, Vec<(u64, Option<u64>)>> = HashMap::new();
    for (b, w) in blocked.iter().zip(watermarks(blocked.iter().map(|b| b.ts_ms), BOUND_MS)) {
        let effective = b.ts_ms.max(w);
        table.entry(b.card_id).or_default().push((effective, b.blocked.then_some(b.ts_ms)));
    }
    for rows in table.values_mut() {
        rows.sort();
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "two table changes of one card take effect at once: {rows:?}");
    }
    for (p, w) in &all {
        if p.ts_ms + RETENTION_MS < *w {
            continue;
        }
        let row = table.get(&p.card_id).and_then(|rows| rows.iter().rev().find(|(t, _)| *t <= p.ts_ms)).and_then(|(_, since)| *since);
        if let Some(since) = row {
            alerts.push(alert("blocked-card", p, format!("card blocked since {since}")));
        }
    }

    // geo-velocity and card-testing: each card's kept payments in event-time order.
    let mut by_card: BTreeMap<u64, Vec<&Payment>> = BTreeMap::new();
    for p in &kept {
        by_card.entry(p.card_id).or_default().push(p);
    }
    for (card, mut ps) in by_card {
        ps.sort_by_key(|p| p.ts_ms);
        assert!(ps.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms), "card {card} has two payments at one time");
        let mut recent: Vec<(u64, &str)> = Vec::new();
        let mut probes: Vec<u64> = Vec::new();
        for p in ps {
            recent.retain(|(t, _)| t + GEO_WINDOW_MS >= p.ts_ms);
            if let Some((t, country)) = recent.iter().find(|(_, c)| *c != p.country) {
                alerts.push(alert("geo-velocity", p, format!("{country} then {} within {} ms", p.country, p.ts_ms - t)));
            }
            recent.push((p.ts_ms, &p.country));

            probes.retain(|t| t + TESTING_WINDOW_MS >= p.ts_ms);
            if p.amount_cents < SMALL_CENTS {
                probes.push(p.ts_ms);
            } else if p.amount_cents >= LARGE_CENTS && probes.len() >= SMALL_COUNT {
                let detail = format!("{} payments under {SMALL_CENTS} cents, then {} cents", probes.len(), p.amount_cents);
                alerts.push(alert("card-testing", p, detail));
                probes.clear();
            }
        }
    }

    // unauthorized: a kept payment without a kept authorization of its txn_id within the window.
    let kept_auths = not_behind(auths, |a| a.ts_ms, AUTH_BOUND_MS);
    let mut auth_times: HashMap<&str, Vec<u64>> = HashMap::new();
    for a in kept_auths {
        auth_times.entry(a.txn_id.as_str()).or_default().push(a.ts_ms);
    }
    for p in &kept {
        let authorized =
            auth_times.get(p.txn_id.as_str()).is_some_and(|ts| ts.iter().any(|t| *t >= p.ts_ms && *t <= p.ts_ms + AUTH_WINDOW_MS));
        if !authorized {
            alerts.push(alert("unauthorized", p, format!("no authorization within {AUTH_WINDOW_MS} ms")));
        }
    }
    alerts.sort();
    alerts
}

/// Payments, authorizations and blocked-card changes with injected fraud, small disorder (within
/// the bounds) and a few records delayed past their watermark; `fraud-detection` must raise exactly
/// the alerts the batch rules find, and those are exactly the injected ones.
#[test]
fn fraud_detection_raises_exactly_the_alerts_in_the_data() {
    let dir = TempDir::new("fraud");
    let mut s = Scenario::build(0xF4A0D);

    // Payments arrive up to 1.5 s out of order (bound 2 s), dealt into two files.
    let late = s.late_payments.clone();
    let payments = shuffle_within(&mut s.rng, s.payments.clone(), |p| p.ts_ms + late.get(&p.txn_id).copied().unwrap_or(0), 1_500);
    let payments_dir = dir.join("payments");
    let payment_parts = write_partitions(&payments_dir, PAYMENT_HEADER, &payments, 2, Payment::to_line);
    // Authorizations follow their payments; they arrive up to 1.5 s out of order (bound 6 s).
    let auths: Vec<Auth> = s
        .payments
        .iter()
        .filter_map(|p| {
            s.auth_delays[&p.txn_id].map(|d| Auth {
                txn_id: p.txn_id.clone(),
                ts_ms: p.ts_ms + d,
                auth_code: format!("{:06}", p.ts_ms % 999_983),
            })
        })
        .collect();
    let auths = shuffle_within(&mut s.rng, auths, |a| a.ts_ms, 1_500);
    let auths_path = dir.join("authorizations.csv");
    write_csv(&auths_path, AUTH_HEADER, auths.iter().map(Auth::to_line));
    let late = s.late_rows.clone();
    let blocked = shuffle_within(&mut s.rng, s.blocked.clone(), |b| b.ts_ms + late.get(&(b.ts_ms, b.card_id)).copied().unwrap_or(0), 1_500);
    let blocked_path = dir.join("blocked_cards.csv");
    write_csv(&blocked_path, BLOCKED_HEADER, blocked.iter().map(Blocked::to_line));

    // The records delayed on purpose are behind their watermark, and no other record is.
    let mut behind = BTreeSet::new();
    for part in &payment_parts {
        let w = watermarks(part.iter().map(|p| p.ts_ms), BOUND_MS);
        behind.extend(part.iter().zip(w).filter(|(p, w)| p.ts_ms < *w).map(|(p, _)| p.txn_id.clone()));
    }
    assert_eq!(behind, s.late_payments.keys().cloned().collect::<BTreeSet<String>>(), "payments behind their watermark");
    let w = watermarks(blocked.iter().map(|b| b.ts_ms), BOUND_MS);
    let behind_rows: BTreeSet<(u64, u64)> =
        blocked.iter().zip(w).filter(|(b, w)| b.ts_ms < *w).map(|(b, _)| (b.ts_ms, b.card_id)).collect();
    assert_eq!(behind_rows, s.late_rows.keys().copied().collect::<BTreeSet<_>>(), "table changes behind their watermark");
    assert!(not_behind(&auths, |a| a.ts_ms, AUTH_BOUND_MS).len() == auths.len(), "no authorization is behind");

    let expected = expected_alerts(&payment_parts, &auths, &blocked);
    let mut per_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &expected {
        *per_rule.entry(a.0.as_str()).or_default() += 1;
    }
    eprintln!("fraud-detection: {} payments ({} behind), expected alerts by rule: {per_rule:?}", payments.len(), behind.len());
    // The batch rules find exactly the injected alerts (velocity: at least one window per card).
    let found: BTreeSet<Mark> = expected.iter().map(|(rule, card, txn, _, _)| (rule.clone(), *card, txn.clone())).collect();
    assert_eq!(found, s.expect, "the batch rules and the injected patterns disagree: the test data is not as designed");
    assert!(found.is_disjoint(&s.forbid));
    for rule in ["velocity", "blocked-card", "geo-velocity", "card-testing", "unauthorized"] {
        assert!(expected.iter().any(|a| a.0 == rule), "no {rule} alert expected");
    }

    let args = args![
        "--source",
        format!("payments={}", file_uri(&payments_dir)),
        "--source",
        format!("authorizations={}", file_uri(&auths_path)),
        "--source",
        format!("blocked_cards={}", file_uri(&blocked_path)),
    ];
    let lines = run_on_1_and_2_workers(&dir, "fraud", "fraud-detection", &args, "alerts", ALERT_HEADER);
    let mut actual: Vec<Alert> = lines.iter().map(|l| parse_alert(l)).collect();
    actual.sort();
    assert_same("fraud-detection alerts", &expected, &actual);
}

// ---------------------------------------------------------------------------------------------
// Result-time granularity.

/// `--time-granularity-ms` changes only how results are stamped and grouped on their way to the
/// sinks: fraud-detection (sliding windows, a temporal join, process functions with timers, an
/// interval join with unmatched rows) raises the same alerts at 1 ms, the default and 250 ms, and
/// at each granularity 1 and 2 workers write the same bytes.
#[test]
fn time_granularity_changes_no_result() {
    let dir = TempDir::new("granularity");
    let faults = "count=20000,seed=9,late_every=97,card_testing_every=40,geo_every=30,unauthorized_every=25";
    let mut sorted: Vec<(String, Vec<String>)> = Vec::new();
    for granularity in ["1", "10", "250"] {
        let mut runs = Vec::new();
        let mut outputs = Vec::new();
        for workers in [1, 2] {
            let out = dir.join(&format!("g{granularity}-w{workers}")).join("alerts.csv");
            let a = args![
                "run",
                "fraud-detection",
                "--source",
                format!("payments=gen:{faults}"),
                "--source",
                format!("authorizations=gen:{faults}"),
                "--sink",
                format!("alerts={}", file_uri(&out)),
                "--workers",
                workers,
                "--time-granularity-ms",
                granularity,
                "-q"
            ];
            runs.push(spawn(&format!("fraud-detection at {granularity} ms on {workers} workers"), a, dir.path()));
            outputs.push(out);
        }
        for outcome in wait_all(runs) {
            outcome.assert_success();
        }
        assert!(read_bytes(&outputs[0]) == read_bytes(&outputs[1]), "at {granularity} ms, 2 workers wrote another file than 1 worker");
        let mut lines = data_lines(&outputs[0], ALERT_HEADER);
        lines.sort();
        sorted.push((granularity.to_string(), lines));
    }
    let (first, rest) = sorted.split_first().expect("three runs");
    assert!(first.1.len() > 500, "too few alerts to compare: {}", first.1.len());
    for (granularity, lines) in rest {
        assert_same(&format!("alerts at {granularity} ms against 1 ms"), &first.1, lines);
    }
}
