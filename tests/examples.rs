//! End-to-end runs of the examples that read files: each example's binary (built on demand by
//! `common::example_binary`) runs on a small hand-made input, and its output is compared with
//! results worked out by hand.

#[macro_use]
mod common;

use common::*;

const ALERT_HEADER: &str = "time,card_id,txn_id,bin,amount_cents,mcc,ip_country,new_device,recent_mccs,recent_countries";
const PAYMENT_HEADER: &str = "time,txn_id,card_id,amount_cents,mcc,device_id,ip_country,bin";
const DEAD_LETTER_HEADER: &str = "source,origin,line,reason,raw";
const EXPECTED_FORM: &str = "expected the form 2026-01-01T00:00:00.250Z or 2026-01-01T01:00:00+01:00";

/// A payment of `examples/own_payment_type.rs`: (time as written, txn_id, card_id,
/// amount_cents, mcc, device_id, ip_country, bin).
type CardPayment = (&'static str, &'static str, u64, i64, u16, &'static str, &'static str, u32);

/// In file order, each within the 5 s out of order the job allows; the rule's window is its
/// default, 30 minutes. UTC times in the comments.
const PAYMENTS: &[CardPayment] = &[
    // 10:00:00. Card 1 buys groceries (5411) in Germany.
    ("2026-03-01T10:00:00Z", "c1-home", 1, 4_250, 5411, "phone-1", "DE", 411_111),
    // 10:00:00. Card 2 pays a restaurant (5812) in France; card 3 one in the US.
    ("2026-03-01T11:00:00.000+01:00", "c2-home", 2, 3_100, 5812, "phone-2", "FR", 520_000),
    ("2026-03-01T05:00:00-05:00", "c3-home", 3, 900, 5812, "tablet-3", "US", 400_000),
    // 10:00:01 and 10:00:02.5. Cards 4 and 5 buy groceries in Britain and Italy.
    ("2026-03-01T10:00:01Z", "c4-home", 4, 2_000, 5411, "phone-4", "GB", 450_000),
    ("2026-03-01T10:00:02.5Z", "c5-home", 5, 1_500, 5411, "phone-5", "IT", 530_000),
    // 10:05. Card 5: a new MCC (money transfer, 4829), the same country: no alert.
    ("2026-03-01T10:05:00Z", "c5-new-mcc", 5, 7_000, 4829, "phone-5", "IT", 530_000),
    // 10:10. Card 4: a new country, the same MCC: no alert.
    ("2026-03-01T11:10:00+01:00", "c4-new-country", 4, 2_500, 5411, "phone-4", "ES", 450_000),
    // 10:20. Card 6's first payment: nothing before it to differ from, no alert.
    ("2026-03-01T10:20:00Z", "c6-only", 6, 60_000, 6051, "pc-6", "NG", 460_000),
    // 10:29. Card 1 from Nigeria, quasi-cash (6051), a new device, 29 minutes after its last
    // payment: ALERT.
    ("2026-03-01T11:29:00+01:00", "c1-takeover", 1, 98_000, 6051, "pc-x", "NG", 411_111),
    // 10:30:00.001. Card 2 at a US casino (7995) 30 minutes and 1 ms after its restaurant: that
    // payment has left the window, no alert.
    ("2026-03-01T10:30:00.001Z", "c2-casino", 2, 50_000, 7995, "phone-2", "US", 520_000),
    // 10:30:00. Card 3 at a casino in Mexico exactly 30 minutes after its restaurant: the
    // window includes its bound, ALERT (on its usual device).
    ("2026-03-01T05:30:00-05:00", "c3-abroad", 3, 12_000, 7995, "tablet-3", "MX", 400_000),
    // 10:35. Card 1 again in Nigeria, quasi-cash: seen 6 minutes ago, no second alert.
    ("2026-03-01T10:35:00Z", "c1-again", 1, 45_000, 6051, "pc-x", "NG", 411_111),
];

/// The alerts of [`PAYMENTS`], worked out by hand: times in UTC with milliseconds.
const ALERTS: &[&str] = &[
    "2026-03-01T10:29:00.000Z,1,c1-takeover,411111,98000,6051,NG,true,5411,DE",
    "2026-03-01T10:30:00.000Z,3,c3-abroad,400000,12000,7995,MX,false,5812,US",
];

/// Malformed times after the payments, as (time, txn_id): a day February does not have, and a
/// time without an offset.
const BAD_TIMES: &[(&str, &str)] = &[("2026-02-30T10:40:00Z", "c7-bad-day"), ("2026-03-01T10:40:00", "c7-no-offset")];

fn csv_line(&(time, txn, card, cents, mcc, device, country, bin): &CardPayment) -> String {
    format!("{time},{txn},{card},{cents},{mcc},{device},{country},{bin}")
}

fn json_line(&(time, txn, card, cents, mcc, device, country, bin): &CardPayment) -> String {
    format!(
        r#"{{"time":"{time}","txn_id":"{txn}","card_id":{card},"amount_cents":{cents},"mcc":{mcc},"device_id":"{device}","ip_country":"{country}","bin":{bin}}}"#
    )
}

/// Runs `account-takeover` on `input` at `workers`; returns the alert lines (sorted) and the dead
/// letters as (line, reason, raw).
fn account_takeover(dir: &TempDir, tag: &str, input: &std::path::Path, workers: usize) -> (Vec<String>, Vec<(String, String, String)>) {
    let (alerts, dead) = (dir.join(&format!("alerts-{tag}.csv")), dir.join(&format!("dead-{tag}.csv")));
    let args = args![
        "run",
        "account-takeover",
        "--workers",
        workers,
        "--source",
        format!("payments={}", file_uri(input)),
        "--sink",
        format!("alerts={}", file_uri(&alerts)),
        "--sink",
        format!("dead_letters={}", file_uri(&dead))
    ];
    let outcome = run_program(tag, &example_binary("own_payment_type"), args, dir.path());
    outcome.assert_success();
    let summary = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(summary.contains("late_dropped:account-takeover: 0"), "{tag}: nothing is late\n{summary}");
    let mut alert_lines = data_lines(&alerts, ALERT_HEADER);
    alert_lines.sort();
    let letters = data_lines(&dead, DEAD_LETTER_HEADER)
        .iter()
        .map(|line| match split_csv(line).as_slice() {
            [_source, _origin, number, reason, raw] => (number.clone(), reason.clone(), raw.clone()),
            other => panic!("{tag}: a dead letter of 5 columns, not {other:?}"),
        })
        .collect();
    (alert_lines, letters)
}

/// `examples/own_payment_type.rs`: payments of a type of its own, with RFC 3339 times at several
/// offsets, read from CSV and from JSON lines, give the hand-computed account-takeover alerts at
/// 1 and 2 workers; the malformed times go to dead letters naming the field and the form.
#[test]
fn own_payment_type_flags_account_takeover_from_csv_and_json_lines() {
    let dir = TempDir::new("own-payment-type");
    let expected: Vec<String> = ALERTS.iter().map(|line| line.to_string()).collect();
    let bad: Vec<CardPayment> = BAD_TIMES.iter().map(|&(time, txn)| (time, txn, 7, 100, 5411, "phone-7", "DE", 411_111)).collect();

    let csv = dir.join("payments.csv");
    write_csv(&csv, PAYMENT_HEADER, PAYMENTS.iter().chain(&bad).map(csv_line));
    for workers in [1, 2] {
        let (alerts, dead) = account_takeover(&dir, &format!("csv-{workers}"), &csv, workers);
        assert_eq!(alerts, expected, "CSV at {workers} workers");
        // The header is line 1, so the bad lines are 14 and 15.
        let reasons = [
            "column 1 (time): not an RFC 3339 time: day 30 is out of range for 2026-02",
            "column 1 (time): not an RFC 3339 time: expected the offset (Z, +hh:mm or -hh:mm) at character 20, found the end",
        ];
        assert_eq!(dead.len(), 2, "{dead:#?}");
        for (((number, reason, raw), (time, _)), (expected_reason, expected_number)) in
            dead.iter().zip(BAD_TIMES).zip(reasons.iter().zip(["14", "15"]))
        {
            assert_eq!(number, expected_number);
            assert_eq!(reason, &format!("{expected_reason}; {EXPECTED_FORM} in \"{time}\""));
            assert!(raw.starts_with(time), "{raw}");
        }
    }

    let jsonl = dir.join("payments.jsonl");
    let lines: Vec<String> = PAYMENTS.iter().chain(&bad).map(json_line).collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").expect("write the JSON lines");
    let (alerts, dead) = account_takeover(&dir, "jsonl", &jsonl, 1);
    assert_eq!(alerts, expected, "JSON lines");
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for ((number, reason, _), ((time, _), expected_number)) in dead.iter().zip(BAD_TIMES.iter().zip(["13", "14"])) {
        assert_eq!(number, expected_number);
        assert!(reason.starts_with("invalid JSON record: field time: not an RFC 3339 time: "), "{reason}");
        assert!(reason.contains(&format!("{EXPECTED_FORM}, found \"{time}\"")), "{reason}");
    }
}
