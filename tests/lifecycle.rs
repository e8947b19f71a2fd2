//! How a run ends when something goes wrong or someone stops it: exit codes, the `error:` line,
//! signals, and that no partial output is ever published.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The one `error:` line of a failed run.
fn error_line(outcome: &Outcome) -> String {
    let errors: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}: expected one `error:` line, got:\n{}", outcome.label, outcome.stderr);
    errors[0].to_string()
}

fn windows_run(source: &str, windows: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args!["run", "throughput-windows", "-q", "--source", format!("payments={source}"), "--sink", format!("windows={windows}")];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn unwritable_sink_path_fails_with_exit_1() {
    let dir = TempDir::new("unwritable");
    std::fs::write(dir.join("a-file"), "not a directory").expect("write");
    let sink = format!("file:{}", dir.join("a-file/windows.csv").display());
    let outcome = run("unwritable", windows_run("gen:count=5000", &sink, &[]), dir.path());
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    let line = error_line(&outcome);
    // The first sink to open its file fails the job (late_payments goes beside windows).
    assert!(line.contains("error: sink ") && line.contains("a-file"), "names the sink and the path: {line}");
    assert!(!dir.join("out").join("throughput-windows").join("late_payments.csv").exists(), "no other sink published either");
}

#[test]
fn closed_stdout_fails_with_exit_1() {
    let dir = TempDir::new("stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(windows_run("gen:count=20000", "stdout:", &[]))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    // Close the reading end: every write to stdout fails with a broken pipe.
    drop(child.stdout.take());
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = String::from_utf8_lossy(&stderr.join().expect("stderr")).into_owned();
    let outcome = Outcome { label: "closed stdout".into(), code: status.code(), stdout: String::new(), stderr };
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    let line = error_line(&outcome);
    assert!(line.contains("sink windows") && line.contains("stdout"), "{line}");
}

#[test]
fn full_filesystem_fails_with_exit_1_and_publishes_nothing() {
    let dir = TempDir::new("fullfs");
    let Some(fs) = SmallFs::mount(&dir.join("small"), "64k") else {
        eprintln!("SKIPPED full_filesystem_fails_with_exit_1_and_publishes_nothing: cannot mount a tmpfs here (needs root)");
        return;
    };
    for (case, extra) in [("direct", vec![]), ("checkpointed", vec!["--checkpoint-dir", "chk", "--checkpoint-interval", "50ms"])] {
        let out = fs.0.join(format!("{case}.csv"));
        let sink = format!("file:{}", out.display());
        let outcome = run(case, windows_run("gen:count=300000", &sink, &extra), dir.path());
        assert_eq!(outcome.code, Some(1), "{case}: {}", outcome.stderr);
        let line = error_line(&outcome);
        assert!(line.contains("sink windows") && line.contains("No space left"), "{case}: names the sink and the cause: {line}");
        assert!(!out.exists(), "{case}: no partial output file");
        let mut name = out.as_os_str().to_owned();
        name.push(".inprogress");
        assert!(!Path::new(&name).exists(), "{case}: no .inprogress file left");
        for entry in std::fs::read_dir(&fs.0).expect("list") {
            std::fs::remove_dir_all(entry.expect("entry").path()).ok();
        }
        for entry in std::fs::read_dir(&fs.0).expect("list") {
            std::fs::remove_file(entry.expect("entry").path()).ok();
        }
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a child's pid.
    let r = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(r, 0, "cannot signal {pid}");
}

#[test]
fn sigterm_with_checkpoints_stops_with_a_savepoint_that_resumes_exactly() {
    let dir = TempDir::new("sigterm-chk");
    let source = "gen:count=60000";
    let reference = run("reference", windows_run(source, "file:ref/windows.csv", &[]), dir.path());
    reference.assert_success();
    let paced = ["--checkpoint-dir", "chk", "--checkpoint-interval", "100ms", "--rate", "20000"];
    let running = spawn("to stop", windows_run(source, "file:out/windows.csv", &paced), dir.path());
    let started = Instant::now();
    while !has_checkpoint(&dir.join("chk")) {
        assert!(started.elapsed() < TIMEOUT, "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(running.child.id(), libc::SIGTERM);
    let stopped = wait_all(vec![running]).remove(0);
    assert_eq!(stopped.code, Some(0), "a stop with savepoint exits 0:\n{}", stopped.stderr);
    assert!(!dir.join("out/windows.csv").exists(), "a stopped run publishes no final file");
    let resume = stopped.stderr.lines().skip_while(|l| !l.contains("resume with")).nth(1).map(str::trim).unwrap_or_default().to_string();
    assert!(resume.contains("--restore") && resume.contains("savepoint-"), "prints the command that resumes it:\n{}", stopped.stderr);
    let savepoint = resume.rsplit(' ').next().unwrap_or_default().to_string();
    assert!(dir.join(&savepoint).join("MANIFEST").is_file(), "the savepoint exists: {savepoint}");
    let mut again = windows_run(source, "file:out/windows.csv", &paced[..4]);
    again.extend(["--restore".to_string(), savepoint]);
    run("resume", again, dir.path()).assert_success();
    let mut want: Vec<String> = read(&dir.join("ref/windows.csv")).lines().map(String::from).collect();
    let mut got: Vec<String> = read(&dir.join("out/windows.csv")).lines().map(String::from).collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len(), "the resumed run's output has the uncrashed run's rows");
    assert!(got == want, "the resumed run's output equals the uncrashed run's");
}

#[test]
fn sigterm_without_checkpoints_exits_143_and_leaves_nothing() {
    let dir = TempDir::new("sigterm");
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let running = spawn("to stop", windows_run("gen:count=100000", "file:out/windows.csv", &["--rate", "20000"]), dir.path());
        std::thread::sleep(Duration::from_millis(600));
        signal(running.child.id(), sig);
        let stopped = wait_all(vec![running]).remove(0);
        assert_eq!(stopped.code, Some(code), "{}", stopped.stderr);
        let line = error_line(&stopped);
        assert!(line.contains("no output was published"), "{line}");
        let left: Vec<_> = walk(&dir.join("out"));
        assert!(left.is_empty(), "nothing is left behind: {left:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                found.extend(walk(&p));
            } else {
                found.push(p);
            }
        }
    }
    found
}
