//! Helpers shared by the end-to-end tests: temporary directories, running the binary with a
//! timeout, reading its CSV output, a deterministic RNG, and multiset comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lists command-line arguments: `args!["run", job, format!(...)]`.
#[allow(unused_macros)]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($a.to_string()),*] };
}

/// The CSV header of a payment.
pub const PAYMENT_HEADER: &str = "ts_ms,txn_id,card_id,merchant_id,amount_cents,currency,country,status";

/// How long any one run (or set of concurrent runs) may take before the test fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh directory under the system temp dir, removed when the test passes (kept for a look
/// when it fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("paystream-test-{tag}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn file_uri(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub label: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn assert_success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{}: expected exit code 0\nstdout:\n{}\nstderr:\n{}", self.label, self.stdout, self.stderr);
        self
    }
}

pub struct Running {
    pub label: String,
    pub child: Child,
    pub stdout: JoinHandle<Vec<u8>>,
    pub stderr: JoinHandle<Vec<u8>>,
}

pub fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Starts `paystream ARGS` in `cwd`.
pub fn spawn(label: &str, args: Vec<String>, cwd: &Path) -> Running {
    spawn_env(label, args, cwd, &[])
}

/// Starts `paystream ARGS` in `cwd` with extra environment variables.
pub fn spawn_env(label: &str, args: Vec<String>, cwd: &Path, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{label}: cannot start paystream: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    Running { label: label.to_string(), child, stdout, stderr }
}

/// Waits for all of `runs`; if any is still running after [`TIMEOUT`], kills them all and fails.
pub fn wait_all(mut runs: Vec<Running>) -> Vec<Outcome> {
    let deadline = Instant::now() + TIMEOUT;
    let mut codes: Vec<Option<Option<i32>>> = runs.iter().map(|_| None).collect();
    loop {
        for (run, code) in runs.iter_mut().zip(codes.iter_mut()) {
            if code.is_none() {
                if let Some(status) = run.child.try_wait().unwrap_or_else(|e| panic!("{}: cannot wait: {e}", run.label)) {
                    *code = Some(status.code());
                }
            }
        }
        if codes.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            for run in runs.iter_mut() {
                let _ = run.child.kill();
                let _ = run.child.wait();
            }
            let mut report = String::new();
            for (run, code) in runs.into_iter().zip(&codes) {
                let stderr = String::from_utf8_lossy(&run.stderr.join().unwrap_or_default()).into_owned();
                report.push_str(&format!("\n{} (exit: {code:?}) stderr:\n{stderr}", run.label));
            }
            panic!("runs did not finish within {TIMEOUT:?} and were killed:{report}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    runs.into_iter()
        .zip(codes)
        .map(|(run, code)| Outcome {
            label: run.label,
            code: code.flatten(),
            stdout: String::from_utf8_lossy(&run.stdout.join().unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&run.stderr.join().unwrap_or_default()).into_owned(),
        })
        .collect()
}

/// Runs `paystream ARGS` in `cwd` to completion (or the timeout).
pub fn run(label: &str, args: Vec<String>, cwd: &Path) -> Outcome {
    wait_all(vec![spawn(label, args, cwd)]).pop().expect("one outcome")
}

/// Builds example `name` (a no-op when it is up to date) in the profile of this test's binary
/// and returns its path.
pub fn example_binary(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_paystream"));
    let dir = bin.parent().expect("the binary's directory");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "-q", "--example", name]).current_dir(env!("CARGO_MANIFEST_DIR"));
    // The target directory this test was built in (`--target-dir` or CARGO_TARGET_DIR alike).
    if let Some(target) = dir.parent() {
        cargo.arg("--target-dir").arg(target);
    }
    if dir.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example {name} failed");
    dir.join("examples").join(name)
}

/// Runs `program ARGS` (an example's binary, say) in `cwd` to completion (or the timeout).
pub fn run_program(label: &str, program: &Path, args: Vec<String>, cwd: &Path) -> Outcome {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{label}: cannot start {}: {e}", program.display()));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    wait_all(vec![Running { label: label.to_string(), child, stdout, stderr }]).pop().expect("one outcome")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Splits one CSV line (RFC 4180 quoting).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (_, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quote in output line {line:?}");
    fields.push(field);
    fields
}

/// Whether a test that needs an outside service (a broker) may go on: `available`, or else a
/// loud SKIP saying what is `missing`, except under `CI=true` (where `.ci/run` starts every
/// service), which fails the test instead.
pub fn service_available(test: &str, available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {missing}, and CI=true: .ci/run should have provided it");
    }
    eprintln!("\n*** SKIPPED {test}: {missing} ***\n");
    false
}

/// Reads a CSV file the program wrote: checks its header and returns its data lines.
pub fn data_lines(path: &Path, header: &str) -> Vec<String> {
    let text = read(path);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header), "header of {}", path.display());
    lines.map(String::from).collect()
}

#[allow(unused_imports)] // not every test binary draws random inputs
pub use paystream::engine::testing::Rng;

/// Compares two sorted lists as multisets, listing a few of the differences when they differ.
pub fn assert_same<T: Ord + Clone + std::fmt::Debug>(what: &str, expected: &[T], actual: &[T]) {
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
    let missing: Vec<_> = counts.iter().filter(|(_, c)| **c > 0).map(|(r, c)| (*r, *c)).take(10).collect();
    let extra: Vec<_> = counts.iter().filter(|(_, c)| **c < 0).map(|(r, c)| (*r, -*c)).take(10).collect();
    panic!(
        "{what}: expected {} rows, got {}\nmissing (first 10, with multiplicity): {missing:#?}\nunexpected (first 10): {extra:#?}",
        expected.len(),
        actual.len()
    );
}

/// Writes a CSV file: the header, then one line each.
pub fn write_csv(path: &Path, header: &str, lines: impl IntoIterator<Item = String>) {
    let mut text = format!("{header}\n");
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A payment as the tests write and read it (kept apart from the program's own type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub ts_ms: u64,
    pub txn_id: String,
    pub card_id: u64,
    pub merchant_id: u64,
    pub amount_cents: i64,
    pub currency: String,
    pub country: String,
    pub status: String,
}

impl Payment {
    pub fn to_line(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{}",
            self.ts_ms, self.txn_id, self.card_id, self.merchant_id, self.amount_cents, self.currency, self.country, self.status
        )
    }

    pub fn parse(line: &str) -> Payment {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 8, "payment line {line:?}");
        let num = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
        Payment {
            ts_ms: num(0),
            txn_id: f[1].to_string(),
            card_id: num(2),
            merchant_id: num(3),
            amount_cents: f[4].parse().unwrap_or_else(|e| panic!("amount of {line:?}: {e}")),
            currency: f[5].to_string(),
            country: f[6].to_string(),
            status: f[7].to_string(),
        }
    }
}

/// Runs `paystream run JOB ARGS --sink SINK=DIR/LABEL-wN/FILE --workers N -q` for N = 1 and 2 at
/// once, checks both succeed and returns each run's data lines (after checking `header`), in the
/// order written: for outputs whose lines depend on the worker count, such as changelogs.
pub fn run_at_1_and_2_workers(dir: &TempDir, label: &str, job: &str, args: &[String], sink: &str, header: &str) -> Vec<Vec<String>> {
    let mut runs = Vec::new();
    let mut outputs = Vec::new();
    for workers in [1, 2] {
        let out = dir.join(&format!("{label}-w{workers}")).join(format!("{sink}.csv"));
        let mut a = args!["run", job];
        a.extend(args.iter().cloned());
        a.extend(args!["--sink", format!("{sink}={}", file_uri(&out)), "--workers", workers, "-q"]);
        runs.push(spawn(&format!("{label} on {workers} workers"), a, dir.path()));
        outputs.push(out);
    }
    for outcome in wait_all(runs) {
        outcome.assert_success();
    }
    outputs.iter().map(|p| data_lines(p, header)).collect()
}

/// As [`run_at_1_and_2_workers`], and checks both runs wrote the same lines (in any order);
/// returns them sorted.
pub fn run_on_1_and_2_workers(dir: &TempDir, label: &str, job: &str, args: &[String], sink: &str, header: &str) -> Vec<String> {
    let mut results = run_at_1_and_2_workers(dir, label, job, args, sink, header);
    for r in &mut results {
        r.sort();
    }
    assert_same(&format!("{label}: 2 workers against 1 worker"), &results[0], &results[1]);
    results.swap_remove(0)
}

/// A small tmpfs (`size` as `mount -o size=` reads it, such as `64k`), unmounted on drop; `None`
/// where mounting is not allowed (it needs root): the caller skips loudly.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    pub fn mount(at: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether the checkpoint directory `chk` holds a complete checkpoint (one with its MANIFEST).
pub fn has_checkpoint(chk: &Path) -> bool {
    std::fs::read_dir(chk).map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("MANIFEST").is_file())).unwrap_or(false)
}

/// Waits until `running` has a complete checkpoint in `chk`, has ended, or `limit` has passed:
/// a kill test that kills after this tests a restore even where a loaded machine starts jobs
/// slowly.
pub fn wait_for_checkpoint(running: &mut Running, chk: &Path, limit: Duration) {
    let started = Instant::now();
    while !has_checkpoint(chk) && started.elapsed() < limit {
        if running.child.try_wait().expect("wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
