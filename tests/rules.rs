//! End-to-end tests of `fraud-detection`'s dynamic rules (the `rules` source, broadcast to every
//! worker): each rule kind on hand-built input with near misses, and rules added, changed and
//! removed mid-stream, taking effect at exactly their event time. Every expected alert is written
//! out here by hand; each run happens at 1, 2 and 3 workers and as two processes, which must write
//! the same bytes.
//!
//! Tie rule under test: a rule change at time `t` applies to a payment at `t`.

#[macro_use]
mod common;
use common::*;
use std::path::{Path, PathBuf};

const T0: u64 = 1_767_225_600_000;
const ALERT_HEADER: &str = "rule,card_id,txn_id,ts_ms,detail";

/// An alert row: (rule, card_id, txn_id, ts_ms, detail).
type Alert = (String, u64, String, u64, String);

/// Input files for one run: payments (in event-time order), their authorizations (100 ms after
/// each payment, except those marked unauthorized), blocked-card changes and rule changes.
struct Input {
    payments: Vec<Payment>,
    unauthorized: Vec<String>,
    blocked: Vec<String>,
    rules: Vec<String>,
}

impl Input {
    fn new() -> Input {
        Input { payments: Vec::new(), unauthorized: Vec::new(), blocked: Vec::new(), rules: Vec::new() }
    }

    /// A payment at `T0 + at` (ms); returns its txn_id.
    fn pay(&mut self, at: u64, card: u64, merchant: u64, amount_cents: i64, country: &str) -> String {
        let txn_id = format!("t{}", self.payments.len());
        self.payments.push(Payment {
            ts_ms: T0 + at,
            txn_id: txn_id.clone(),
            card_id: card,
            merchant_id: merchant,
            amount_cents,
            currency: "USD".into(),
            country: country.into(),
            status: "APPROVED".into(),
        });
        txn_id
    }

    /// A rule change at absolute time `ts_ms`.
    fn rule(&mut self, rule_id: &str, kind: &str, parameters: &str, ts_ms: u64, active: bool) {
        self.rules
            .push(format!(r#"{{"rule_id":"{rule_id}","kind":"{kind}","parameters":{parameters},"ts_ms":{ts_ms},"active":{active}}}"#));
    }

    /// Writes the files under `dir`; the `--source` arguments that read them.
    fn write(&self, dir: &Path) -> Vec<String> {
        let mut payments = self.payments.clone();
        payments.sort_by_key(|p| p.ts_ms);
        let payments_path = dir.join("payments.csv");
        write_csv(&payments_path, PAYMENT_HEADER, payments.iter().map(Payment::to_line));
        let mut auths: Vec<(u64, String)> = payments
            .iter()
            .filter(|p| !self.unauthorized.contains(&p.txn_id))
            .map(|p| (p.ts_ms + 100, format!("{},{},123456", p.txn_id, p.ts_ms + 100)))
            .collect();
        auths.sort();
        let auths_path = dir.join("authorizations.csv");
        write_csv(&auths_path, "txn_id,ts_ms,auth_code", auths.into_iter().map(|(_, line)| line));
        let blocked_path = dir.join("blocked_cards.csv");
        write_csv(&blocked_path, "ts_ms,card_id,blocked", self.blocked.iter().cloned());
        let rules_path = dir.join("rules.jsonl");
        std::fs::write(&rules_path, self.rules.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("rules file");
        let source = |name: &str, path: &PathBuf| format!("{name}={}", file_uri(path));
        args![
            "--source",
            source("payments", &payments_path),
            "--source",
            source("authorizations", &auths_path),
            "--source",
            source("blocked_cards", &blocked_path),
            "--source",
            source("rules", &rules_path),
        ]
    }
}

fn parse_alert(line: &str) -> Alert {
    let f = split_csv(line);
    assert_eq!(f.len(), 5, "alert line {line:?}");
    let num = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
    (f[0].clone(), num(1), f[2].clone(), num(3), f[4].clone())
}

fn alert(rule: &str, card: u64, txn: &str, at: u64, detail: &str) -> Alert {
    (rule.into(), card, txn.into(), T0 + at, detail.into())
}

/// Runs `fraud-detection` on `input` at 1, 2 and 3 workers and as two processes (where the rule
/// changes cross processes), all at once; checks that all four wrote the same bytes and returns
/// the alerts, sorted.
fn run_at_1_2_3_workers(dir: &TempDir, label: &str, input: &Input) -> Vec<Alert> {
    let sources = input.write(dir.path());
    let mut runs = Vec::new();
    let mut outputs = Vec::new();
    let command = |out: &Path| {
        let mut a = args!["run", "fraud-detection"];
        a.extend(sources.iter().cloned());
        a.extend(args!["--sink", format!("alerts={}", file_uri(out)), "-q"]);
        a
    };
    for workers in [1, 2, 3] {
        let out = dir.join(&format!("{label}-w{workers}")).join("alerts.csv");
        let mut a = command(&out);
        a.extend(args!["--workers", workers]);
        runs.push(spawn(&format!("{label} on {workers} workers"), a, dir.path()));
        outputs.push((format!("{workers} workers"), out));
    }
    // Two free ports, both bound at once so they differ, released before the processes start.
    let listeners: Vec<std::net::TcpListener> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    let hosts_text: String = listeners.iter().map(|l| format!("127.0.0.1:{}\n", l.local_addr().expect("address").port())).collect();
    drop(listeners);
    let hosts = dir.join(&format!("{label}-hosts.txt"));
    std::fs::write(&hosts, hosts_text).expect("hosts file");
    let out = dir.join(&format!("{label}-p2")).join("alerts.csv");
    for process in 0..2 {
        let mut a = command(&out);
        a.extend(args!["--processes", 2, "--process", process, "--hosts", hosts.display()]);
        runs.push(spawn(&format!("{label} as process {process} of 2"), a, dir.path()));
    }
    outputs.push(("two processes".to_string(), out));
    for outcome in wait_all(runs) {
        outcome.assert_success();
    }
    for (run, out) in &outputs[1..] {
        assert!(read_bytes(out) == read_bytes(&outputs[0].1), "{label}: {run} wrote another file than 1 worker");
    }
    let mut alerts: Vec<Alert> = data_lines(&outputs[0].1, ALERT_HEADER).iter().map(|l| parse_alert(l)).collect();
    alerts.sort();
    alerts
}

/// One rule of each kind, all in force from the start, each with a payment pattern that fires it
/// and a near miss that does not (one unit or one millisecond short).
#[test]
fn each_rule_kind_fires_exactly_on_its_pattern() {
    let dir = TempDir::new("rules-kinds");
    let mut s = Input::new();
    s.rule("r-vc", "velocity-count", r#"{"window_ms":10000,"max_count":3}"#, 0, true);
    s.rule("r-va", "velocity-amount", r#"{"window_ms":60000,"max_cents":100000}"#, 0, true);
    s.rule("r-geo", "geo-velocity", r#"{"window_ms":60000}"#, 0, true);
    s.rule("r-ct", "card-testing", r#"{"small_cents":200,"small_count":3,"large_cents":50000,"window_ms":60000}"#, 0, true);
    s.rule("r-al", "amount-limit", r#"{"merchant_min":5000,"merchant_max":5999,"max_cents":30000}"#, 0, true);
    s.rule("r-bc", "blocked-card", "{}", 0, true);
    s.rule("r-un", "unauthorized", "{}", 0, true);
    s.rule("r-vw", "velocity-window", "{}", 0, true);
    let mut expected = Vec::new();

    // velocity-count: 4 payments within 10 s (the first exactly 10 s before the last); the near
    // miss has its last one 1 ms later.
    for at in [0, 3_000, 6_000] {
        s.pay(at, 1, 1, 1_000, "US");
    }
    let t = s.pay(10_000, 1, 1, 1_000, "US");
    expected.push(alert("r-vc", 1, &t, 10_000, "4 payments within 10000 ms"));
    for at in [0, 3_000, 6_000, 10_001] {
        s.pay(at, 2, 1, 1_000, "US");
    }
    // velocity-amount: exactly the limit within 60 s does not fire; one cent more does.
    for (card, last) in [(3u64, 20_000i64), (4, 20_001)] {
        s.pay(0, card, 1, 40_000, "US");
        s.pay(30_000, card, 1, 40_000, "US");
        let t = s.pay(60_000, card, 1, last, "US");
        if card == 4 {
            expected.push(alert("r-va", 4, &t, 60_000, "100001 cents within 60000 ms"));
        }
    }
    // geo-velocity: another country exactly 60 s later fires; 60.001 s later does not.
    s.pay(0, 5, 1, 1_000, "US");
    let t = s.pay(60_000, 5, 1, 1_000, "DE");
    expected.push(alert("r-geo", 5, &t, 60_000, "US then DE within 60000 ms"));
    s.pay(0, 6, 1, 1_000, "US");
    s.pay(60_001, 6, 1, 1_000, "DE");
    // card-testing: three probes under 200 cents, then 50,000; the near miss has a probe of
    // exactly 200 (not under), so only two.
    for (at, cents) in [(0, 100), (5_000, 150), (11_000, 199)] {
        s.pay(at, 7, 1, cents, "US");
    }
    let t = s.pay(16_000, 7, 1, 50_000, "US");
    expected.push(alert("r-ct", 7, &t, 16_000, "3 payments under 200 cents, then 50000 cents"));
    for (at, cents) in [(0, 100), (5_000, 200), (11_000, 199), (16_000, 60_000)] {
        s.pay(at, 8, 1, cents, "US");
    }
    // amount-limit: merchants 5000..=5999 above 30,000 cents; at the limit, just outside the
    // range on either side: nothing.
    let t = s.pay(0, 9, 5_000, 30_001, "US");
    expected.push(alert("r-al", 9, &t, 0, "30001 cents at merchant 5000 (limit 30000 for merchants 5000..=5999)"));
    s.pay(0, 10, 5_999, 30_000, "US");
    s.pay(0, 11, 6_000, 90_000, "US");
    s.pay(0, 12, 4_999, 40_000, "US");
    // blocked-card (the temporal join, switched on by the rule).
    s.blocked.push(format!("{T0},13,true"));
    let t = s.pay(1_000, 13, 1, 1_000, "US");
    expected.push(alert("r-bc", 13, &t, 1_000, &format!("card blocked since {T0}")));
    // unauthorized (the interval join, switched on by the rule).
    let t = s.pay(2_000, 14, 1, 1_000, "US");
    s.unauthorized.push(t.clone());
    expected.push(alert("r-un", 14, &t, 2_000, "no authorization within 5000 ms"));
    // velocity-window (the sliding window, switched on by the rule): 11 payments 5 s apart fill
    // the window [T0, T0 + 60 s) (11 > max_per_window = 10); the windows beside it hold 10 and 9.
    for k in 0..11 {
        s.pay(k * 5_000, 15, 1, 1_000, "US");
    }
    expected.push(alert("r-vw", 15, "", 59_999, &format!("11 payments in [{T0}, {})", T0 + 60_000)));

    expected.sort();
    let actual = run_at_1_2_3_workers(&dir, "kinds", &s);
    assert_same("alerts of each rule kind", &expected, &actual);
}

/// Rules added, changed and removed mid-stream, per-payment and switch rules: each change applies
/// to the payments at and after its time, not to the one 1 ms before.
#[test]
fn rule_changes_take_effect_at_exactly_their_event_time() {
    let dir = TempDir::new("rules-changes");
    let mut s = Input::new();
    let limit = |max: i64| format!(r#"{{"merchant_min":1,"merchant_max":1,"max_cents":{max}}}"#);
    s.rule("lim", "amount-limit", &limit(1_000), T0 + 100_000, true);
    s.rule("un", "unauthorized", "{}", T0 + 100_000, true);
    s.rule("lim", "amount-limit", &limit(2_000), T0 + 200_000, true);
    s.rule("geo", "geo-velocity", r#"{"window_ms":60000}"#, T0 + 200_000, true);
    s.rule("lim", "amount-limit", &limit(2_000), T0 + 300_000, false);
    s.rule("un", "unauthorized", "{}", T0 + 300_000, false);
    let mut expected = Vec::new();
    let below_1000 = "1500 cents at merchant 1 (limit 1000 for merchants 1..=1)";
    let below_2000 = "2500 cents at merchant 1 (limit 2000 for merchants 1..=1)";

    // amount-limit: added at 100 s (limit 1000), changed at 200 s (limit 2000), removed at 300 s.
    s.pay(99_999, 20, 1, 1_500, "US");
    let t = s.pay(100_000, 21, 1, 1_500, "US");
    expected.push(alert("lim", 21, &t, 100_000, below_1000));
    let t = s.pay(199_999, 22, 1, 1_500, "US");
    expected.push(alert("lim", 22, &t, 199_999, below_1000));
    s.pay(200_000, 23, 1, 1_500, "US");
    let t = s.pay(200_000, 24, 1, 2_500, "US");
    expected.push(alert("lim", 24, &t, 200_000, below_2000));
    let t = s.pay(299_999, 25, 1, 2_500, "US");
    expected.push(alert("lim", 25, &t, 299_999, below_2000));
    s.pay(300_000, 26, 1, 2_500, "US");
    // unauthorized, switched on at 100 s and off at 300 s. Its alerts come out 5 s after their
    // payments, yet follow the rule as of the payment's time.
    for (at, card) in [(99_999, 40), (100_000, 41), (299_999, 42), (300_000, 43)] {
        let t = s.pay(at, card, 1, 500, "US");
        s.unauthorized.push(t.clone());
        if card == 41 || card == 42 {
            expected.push(alert("un", card, &t, at, "no authorization within 5000 ms"));
        }
    }
    // geo-velocity, added at 200 s.
    s.pay(150_000, 30, 1, 500, "US");
    s.pay(199_999, 30, 1, 500, "DE");
    // At 200 s the rule is in force, but card 30's payments before it were not kept (no rule
    // then looked back at a card's history), so FR at 200 s compares with nothing.
    s.pay(200_000, 30, 1, 500, "FR");
    // GB at 200.5 s sees US at 200 s.
    s.pay(200_000, 31, 1, 500, "US");
    let t = s.pay(200_500, 31, 1, 500, "GB");
    expected.push(alert("geo", 31, &t, 200_500, "US then GB within 500 ms"));

    expected.sort();
    let actual = run_at_1_2_3_workers(&dir, "changes", &s);
    assert_same("alerts as the rules change", &expected, &actual);
}

/// An invalid rule change (a missing parameter, an unknown kind) is counted and never applied;
/// the valid ones beside it are.
#[test]
fn invalid_rule_changes_are_counted_and_skipped() {
    let dir = TempDir::new("rules-invalid");
    let mut s = Input::new();
    s.rule("lim", "amount-limit", r#"{"merchant_min":1,"merchant_max":1}"#, 0, true);
    s.rule("odd", "teleport", "{}", 0, true);
    s.rule("ok", "amount-limit", r#"{"merchant_min":1,"merchant_max":1,"max_cents":100}"#, 0, true);
    let t = s.pay(0, 50, 1, 101, "US");
    let sources = s.write(dir.path());
    let out = dir.join("out").join("alerts.csv");
    let mut a = args!["run", "fraud-detection"];
    a.extend(sources);
    a.extend(args!["--sink", format!("alerts={}", file_uri(&out))]);
    let outcome = run("invalid rules", a, dir.path());
    outcome.assert_success();
    let summary = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(summary.contains("rules_rejected: 2"), "two rejected changes in the summary:\n{summary}");
    let alerts: Vec<Alert> = data_lines(&out, ALERT_HEADER).iter().map(|l| parse_alert(l)).collect();
    assert_eq!(alerts, vec![alert("ok", 50, &t, 0, "101 cents at merchant 1 (limit 100 for merchants 1..=1)")]);
}
