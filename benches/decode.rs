//! Decoding alone: payment lines held in memory, decoded into `Payment` values on one thread by
//! the `file:` source's own reading loop ([`LineDecoder`]), as CSV and as JSON lines.
//!
//! `cargo bench --bench decode` (release profile). Environment: `EVENTS` (default 2000000 lines),
//! `RUNS` (default 5; medians are reported). The lines come from the payment generator and are
//! written the way the file sink writes them (`write_csv`, `serde_json::to_string`), before any
//! timing. Each decoded batch is dropped before the next, as the source hands batches on, so the
//! figures include freeing the records' strings. Splitting the buffer into lines alone is timed
//! too, as a floor. The target is 5,000,000 lines per second per core.

mod common;

use std::time::Instant;

use paystream::engine::decode::LineDecoder;
use paystream::engine::source::{GenOptions, ReadStatus, BATCH};
use paystream::engine::Format;
use paystream::engine::{CsvRecord, DeadLetter, Generate};
use paystream::jobs::Payment;

use common::{env, median};

const TARGET_LINES_PER_SEC: f64 = 5_000_000.0;

/// What a run must reproduce: the count and two sums of the generated payments.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Check {
    count: u64,
    ts_sum: u64,
    amount_sum: i64,
}

impl Check {
    fn add(&mut self, p: &Payment) {
        self.count += 1;
        self.ts_sum = self.ts_sum.wrapping_add(p.ts_ms);
        self.amount_sum = self.amount_sum.wrapping_add(p.amount_cents).wrapping_add(p.txn_id.len() as i64);
    }
}

/// The generated payments as a CSV file (with its header) and as JSON lines, and their check.
fn inputs(events: u64) -> (Vec<u8>, Vec<u8>, Check) {
    let mut options = GenOptions::new([("count".to_string(), events.to_string())].into());
    let generator = Payment::generator(&mut options).expect("generator");
    let mut csv = String::with_capacity(events as usize * 48);
    let mut jsonl = String::with_capacity(events as usize * 150);
    csv.push_str(&Payment::csv_header());
    csv.push('\n');
    let mut check = Check::default();
    for i in 0..generator.count {
        let p = (generator.record)(i);
        check.add(&p);
        p.write_csv(&mut csv);
        csv.push('\n');
        jsonl.push_str(&serde_json::to_string(&p).expect("json"));
        jsonl.push('\n');
    }
    (csv.into_bytes(), jsonl.into_bytes(), check)
}

/// Decodes all of `input` the way the file source does, in batches of the source's size.
#[inline(never)]
fn decode(input: &[u8], format: Format) -> Check {
    let mut decoder = LineDecoder::new("payments", "bench".to_string(), format);
    let mut reader = input;
    let mut batch: Vec<Payment> = Vec::with_capacity(BATCH);
    let mut dead: Vec<DeadLetter> = Vec::new();
    let mut check = Check::default();
    loop {
        let status = decoder.read(&mut reader, BATCH, &mut batch, &mut dead);
        for p in batch.drain(..) {
            check.add(&p);
        }
        assert!(dead.is_empty(), "dead letters in generated input: {:?}", dead.first());
        if status == ReadStatus::Done {
            return check;
        }
    }
}

#[inline(never)]
fn decode_csv(input: &[u8]) -> Check {
    decode(input, Format::Csv)
}

#[inline(never)]
fn decode_json(input: &[u8]) -> Check {
    decode(input, Format::JsonLines)
}

/// The floor: splitting the buffer into lines and checking they are UTF-8, nothing decoded.
#[inline(never)]
fn split_lines(input: &[u8]) -> u64 {
    use std::io::BufRead;
    let mut reader = input;
    let mut line = Vec::with_capacity(256);
    let mut count = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return count,
            Ok(_) => {
                count += u64::from(std::str::from_utf8(&line).is_ok());
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn time<R>(runs: usize, mut f: impl FnMut() -> R) -> (f64, R) {
    let mut secs = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = std::hint::black_box(f());
        secs.push(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    (median(secs), last.expect("at least one run"))
}

fn main() {
    let events = env("EVENTS", 2_000_000);
    let runs = env("RUNS", 5).max(1) as usize;
    let (csv, jsonl, expected) = inputs(events);
    println!(
        "decode, {events} payment lines ({:.1} MB CSV, {:.1} MB JSON lines), 1 thread, median of {runs} runs (release build)",
        csv.len() as f64 / 1e6,
        jsonl.len() as f64 / 1e6
    );
    println!("{:<36} {:>9} {:>16} {:>8} {:>7}", "variant", "wall s", "lines/s/core", "MB/s", "target");
    let row = |label: &str, secs: f64, bytes: usize, target: bool| {
        let rate = events as f64 / secs;
        let verdict = if !target {
            "-"
        } else if rate >= TARGET_LINES_PER_SEC {
            "met"
        } else {
            "missed"
        };
        println!("{:<36} {:>9.3} {:>16.0} {:>8.0} {:>7}", label, secs, rate, bytes as f64 / secs / 1e6, verdict);
    };

    let (secs, lines) = time(runs, || split_lines(&csv));
    assert_eq!(lines, events + 1);
    row("split lines, CSV (floor)", secs, csv.len(), false);
    let (secs, lines) = time(runs, || split_lines(&jsonl));
    assert_eq!(lines, events);
    row("split lines, JSON (floor)", secs, jsonl.len(), false);

    let (secs, check) = time(runs, || decode_csv(&csv));
    assert_eq!(check, expected, "CSV decode differs from the generated payments");
    row("decode CSV -> Payment", secs, csv.len(), true);
    let (secs, check) = time(runs, || decode_json(&jsonl));
    assert_eq!(check, expected, "JSON decode differs from the generated payments");
    row("decode JSON lines -> Payment", secs, jsonl.len(), true);
}
