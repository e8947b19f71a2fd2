//! Fuzzing on the stable toolchain (this project's machines have no nightly, which `cargo fuzz`
//! needs): each target replays its corpus (`tests/fuzz-corpus/TARGET/`, kept in the repository),
//! then mutates corpus entries and random bytes for `PAYSTREAM_FUZZ_SECS` seconds (default 2; `.ci/run`
//! gives each 20; a nightly-length run is `PAYSTREAM_FUZZ_SECS=3600 cargo test --release --test fuzz
//! -- --nocapture`), seeded by `PAYSTREAM_FUZZ_SEED` (default: the clock, printed, so a failure
//! replays). A failing input is printed; add it to the corpus with the fix.
//!
//! Targets:
//! * `csv`: a payment CSV line through paystream's decoder, differentially: its fast path
//!   (`from_plain_csv_line`) must give what its general path gives, and where the `csv` crate
//!   also reads the line as one record, the general path must give the record the `csv` crate's
//!   fields make. Never a panic.
//! * `json`: a payment JSON line: the fast path must give what `serde_json` gives. Never a panic.
//! * `part`: a checkpoint part with bytes changed, cut or added is refused (length, checksum), and
//!   never panics the reader; an intact one reads back.
//! * `manifest`: a checkpoint whose MANIFEST is mutated loads or is refused, never panics.
//! * `uri`: source and sink URIs (`file:`, `gen:`, and the options syntax) parse or are refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TempDir;
use paystream::engine::checkpoint::{self, Participant};
use paystream::engine::record::{from_csv_line_general, CsvRecord};
use paystream::jobs::Payment;

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seconds() -> f64 {
    std::env::var("PAYSTREAM_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0)
}

fn rng(target: &str) -> Rng {
    let seed = std::env::var("PAYSTREAM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    eprintln!("fuzz {target}: PAYSTREAM_FUZZ_SEED={seed}, {} s", seconds());
    Rng(seed | 1)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    entries.sort();
    let inputs: Vec<Vec<u8>> = entries.iter().map(|p| std::fs::read(p).expect("a corpus file")).collect();
    assert!(!inputs.is_empty(), "the corpus of {target} is empty");
    inputs
}

/// Bytes that make parsers take their rarer paths.
const INTERESTING: &[&[u8]] = &[
    b",",
    b"\"",
    b"\"\"",
    b"\n",
    b"\r",
    b"\\",
    b"{",
    b"}",
    b":",
    b"-",
    b"0",
    b"9",
    b".",
    b"e",
    b"\xc3",
    b"\xff",
    b" ",
    b"\t",
    b"18446744073709551615",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"null",
    b"true",
    b"\\u0000",
    b"\\ud800",
];

/// `input` changed in one to four places.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            1 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 if !out.is_empty() => {
                // Repeat a slice of itself.
                let from = rng.below(out.len());
                let to = (from + 1 + rng.below(16)).min(out.len());
                let piece = out[from..to].to_vec();
                out.splice(at..at, piece);
            }
            4 => out.truncate(at),
            _ => {
                let n = rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
        }
    }
    out
}

/// Runs `check` on every corpus entry, then on mutations for the target's time.
fn fuzz(target: &str, mut check: impl FnMut(&[u8])) -> usize {
    let inputs = corpus(target);
    for input in &inputs {
        check(input);
    }
    let mut rng = rng(target);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    let mut runs = inputs.len();
    while Instant::now() < deadline {
        for _ in 0..100 {
            let base = &inputs[rng.below(inputs.len())];
            let input = if rng.below(20) == 0 { (0..rng.below(64)).map(|_| rng.next() as u8).collect() } else { mutate(&mut rng, base) };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
            if let Err(panic) = result {
                panic!("fuzz {target}: input {:?} ({:?}) failed: {panic:?}", String::from_utf8_lossy(&input), input);
            }
            runs += 1;
        }
    }
    eprintln!("fuzz {target}: {runs} inputs");
    runs
}

fn text(input: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(input).ok()?;
    // One line, as the decoders are given (the reader splits at line breaks).
    (!line.contains(['\n', '\r'])).then_some(line)
}

#[test]
fn csv_decoder_agrees_with_itself_and_with_the_csv_crate() {
    let (mut fast_compared, mut crate_compared) = (0usize, 0usize);
    fuzz("csv", |input| {
        let Some(line) = text(input) else { return };
        let general = from_csv_line_general::<Payment>(line);
        if let Some(fast) = Payment::from_plain_csv_line(line) {
            assert_eq!(Ok(&fast), general.as_ref(), "the fast path and the general path differ on {line:?}");
            fast_compared += 1;
        }
        // The csv crate's reading of the same line, where it reads exactly one record.
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(line.as_bytes());
        let mut records = reader.records();
        let Some(Ok(record)) = records.next() else { return };
        if records.next().is_some() || line.is_empty() {
            return;
        }
        let fields: Vec<&str> = record.iter().collect();
        let theirs = Payment::from_csv_fields(&fields);
        if let (Ok(ours), Ok(theirs)) = (&general, &theirs) {
            assert_eq!(ours, theirs, "paystream and the csv crate read {line:?} differently");
            crate_compared += 1;
        }
    });
    eprintln!("fuzz csv: {fast_compared} fast-path and {crate_compared} csv-crate comparisons");
    assert!(fast_compared > 0 && crate_compared > 0, "the differential compared nothing");
}

#[test]
fn json_decoder_agrees_with_serde_json() {
    let mut compared = 0usize;
    fuzz("json", |input| {
        let Some(line) = text(input) else { return };
        if let Some(fast) = Payment::from_plain_json_line(line) {
            let reference = serde_json::from_str::<Payment>(line);
            assert!(
                reference.as_ref().is_ok_and(|r| *r == fast),
                "the fast JSON path gives {fast:?} for {line:?}, serde_json {reference:?}"
            );
            compared += 1;
        }
    });
    eprintln!("fuzz json: {compared} fast-path comparisons");
    assert!(compared > 0, "the differential compared nothing");
}

#[test]
fn damaged_checkpoint_parts_are_refused_and_never_panic() {
    let dir = TempDir::new("fuzz-part");
    let who = Participant::Source { name: "payments".into(), worker: 0 };
    checkpoint::write_part(dir.path(), 1, &who, b"the positions of a source, as bytes").expect("a part");
    let path = checkpoint::epoch_dir(dir.path(), 1).join(who.file_name());
    let intact = std::fs::read(&path).expect("the part");
    assert_eq!(checkpoint::read_part(&path).expect("an intact part reads back"), b"the positions of a source, as bytes");
    let damaged = dir.join("damaged.part");
    fuzz("part", |input| {
        // The corpus entries are payloads: each is written as a part, then damaged.
        std::fs::write(&damaged, input).expect("write");
        let _ = checkpoint::read_part(&damaged);
    });
    // Every change to an intact part is refused.
    let mut rng = rng("part-intact");
    for _ in 0..2000 {
        let changed = mutate(&mut rng, &intact);
        if changed == intact {
            continue;
        }
        std::fs::write(&damaged, &changed).expect("write");
        if let Ok(payload) = checkpoint::read_part(&damaged) {
            panic!("a damaged part was accepted: {changed:?} gave {payload:?}");
        }
    }
}

#[test]
fn damaged_manifests_load_or_are_refused_and_never_panic() {
    let dir = TempDir::new("fuzz-manifest");
    let chk = checkpoint::epoch_dir(dir.path(), 7);
    let who = Participant::Source { name: "payments".into(), worker: 0 };
    checkpoint::write_part(dir.path(), 7, &who, b"positions").expect("a part");
    fuzz("manifest", |input| {
        std::fs::write(chk.join("MANIFEST"), input).expect("write");
        let _ = checkpoint::choose_restore(None, &chk.display().to_string());
    });
}

#[test]
fn uris_parse_or_are_refused_and_never_panic() {
    let dir = TempDir::new("fuzz-uri");
    let connectors = paystream::connectors();
    fuzz("uri", |input| {
        let Ok(uri) = std::str::from_utf8(input) else { return };
        // Only schemes that need no server: a fuzzed host must not be dialled.
        if !(uri.starts_with("file:") || uri.starts_with("gen:") || uri.starts_with("stdout:")) {
            let _ = paystream::engine::connector::UriOptions::parse("fuzz", uri, '&');
            return;
        }
        // Paths land in the test's directory, never elsewhere; file sinks (which create files) are
        // not resolved, sources only read.
        let uri = uri.replacen("file:", &format!("file:{}/", dir.path().display()), 1);
        if uri.starts_with("stdout:") {
            let _ = connectors.resolve_sink("fuzzed", &uri);
        }
        let _ = connectors.resolve_source("fuzzed", &uri);
    });
}
