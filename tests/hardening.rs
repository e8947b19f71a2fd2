//! Regression tests for the smaller findings of the hardening issue: mistakes on the command line
//! are configuration errors (exit 2, one `error:` line), two runs cannot share a checkpoint
//! directory, `paystream savepoint` without a job says so at once, and a symbolic link planted at
//! a staging file is not written through.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn assert_config_error(outcome: &Outcome, says: &str) {
    assert_eq!(outcome.code, Some(2), "{}: exit code\n{}", outcome.label, outcome.stderr);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert!(lines.len() == 1 && lines[0].starts_with("error:"), "{}: one `error:` line, got:\n{}", outcome.label, outcome.stderr);
    assert!(lines[0].contains(says), "{}: the error should say {says:?}: {}", outcome.label, lines[0]);
}

fn windows(extra: &[&str]) -> Vec<String> {
    let mut a = args!["run", "throughput-windows", "-q", "--source", "payments=gen:count=1000"];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn command_line_mistakes_are_configuration_errors() {
    let dir = TempDir::new("mistakes");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("sink twice", windows(&["--sink", "windows=file:a.csv", "--sink", "windows=file:b.csv"]), "given twice"),
        ("source twice", windows(&["--source", "payments=gen:count=5"]), "given twice"),
        ("parameter twice", windows(&["--set", "window_ms=1000", "--set", "window_ms=2000"]), "given twice"),
        ("interval without a directory", windows(&["--checkpoint-interval", "2s"]), "--checkpoint-interval needs --checkpoint-dir"),
        ("retain without a directory", windows(&["--retain", "5"]), "--retain needs --checkpoint-dir"),
        ("retain 0", windows(&["--checkpoint-dir", "chk", "--retain", "0"]), "at least 1"),
        (
            "tolerable failures without a directory",
            windows(&["--tolerable-checkpoint-failures", "2"]),
            "--tolerable-checkpoint-failures needs --checkpoint-dir",
        ),
    ];
    for (i, (what, a, says)) in cases.into_iter().enumerate() {
        let cwd = dir.join(&format!("case{i}"));
        std::fs::create_dir_all(&cwd).expect("case directory");
        let outcome = run(what, a, &cwd);
        assert_config_error(&outcome, says);
        let left: Vec<_> = std::fs::read_dir(&cwd).expect("list").map(|e| e.expect("entry").path()).collect();
        assert!(left.is_empty(), "{what}: files were created: {left:?}");
    }
}

#[test]
fn a_taken_port_in_the_hosts_file_is_a_configuration_error() {
    let dir = TempDir::new("hosts");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    std::fs::write(dir.join("hosts.txt"), format!("127.0.0.1:{port}\n127.0.0.1:1\n")).expect("hosts");
    let outcome = run("taken port", windows(&["--processes", "2", "--process", "0", "--hosts", "hosts.txt"]), dir.path());
    assert_config_error(&outcome, "cannot be bound");
}

#[test]
fn two_runs_cannot_share_a_checkpoint_directory() {
    let dir = TempDir::new("lock");
    let first = spawn(
        "first",
        args!["run", "throughput-windows", "-q", "--source", "payments=gen:count=200000", "--rate", "50000", "--checkpoint-dir", "chk"],
        dir.path(),
    );
    let started = Instant::now();
    while !dir.join("chk/LOCK").exists() {
        assert!(started.elapsed() < TIMEOUT, "the first run never locked its directory");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = first.child.id();
    let second = run(
        "second",
        args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            "payments=gen:count=1000",
            "--checkpoint-dir",
            "chk",
            "--sink",
            "windows=file:b/w.csv"
        ],
        dir.path(),
    );
    assert_config_error(&second, "in use by another run");
    assert!(second.stderr.contains(&format!("pid {pid}")), "names the holder: {}", second.stderr);
    wait_all(vec![first]).remove(0).assert_success();
    // Released at the end: the next run may use the directory.
    run("third", windows(&["--checkpoint-dir", "chk", "--sink", "windows=file:c/w.csv"]), dir.path()).assert_success();
}

#[test]
fn savepoint_without_a_running_job_says_so_at_once() {
    let dir = TempDir::new("nojob");
    std::fs::create_dir_all(dir.join("chk")).expect("checkpoint directory");
    let started = Instant::now();
    let outcome = run("savepoint", args!["savepoint", "--checkpoint-dir", "chk", "--timeout", "60s"], dir.path());
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("no job is running"), "{}", outcome.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "it answered within seconds, not after the timeout");
}

#[test]
fn a_symlink_at_the_staging_file_is_not_written_through() {
    let dir = TempDir::new("symlink");
    std::fs::create_dir_all(dir.join("out")).expect("out");
    std::fs::write(dir.join("precious.txt"), "keep me\n").expect("write");
    std::os::unix::fs::symlink(dir.join("precious.txt"), dir.join("out/windows.csv.inprogress")).expect("symlink");
    let outcome = run("symlink", windows(&["--sink", "windows=file:out/windows.csv"]), dir.path());
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("symbolic link"), "{}", outcome.stderr);
    assert_eq!(read(&dir.join("precious.txt")), "keep me\n", "the link's target is untouched");
}

/// A checkpoint directory that fills up fails the job with one error line and exit 1, instead of
/// a worker panicking with a backtrace; nothing more is published.
#[test]
fn a_full_checkpoint_directory_fails_the_job_cleanly() {
    let dir = TempDir::new("fullchk");
    let Some(_fs) = SmallFs::mount(&dir.join("chk"), "128k") else {
        eprintln!("SKIPPED a_full_checkpoint_directory_fails_the_job_cleanly: cannot mount a tmpfs here (needs root)");
        return;
    };
    // card-velocity holds a window per card: its state parts outgrow 128 KiB at once.
    let outcome = run(
        "full checkpoint directory",
        args![
            "run",
            "card-velocity",
            "-q",
            "--source",
            "payments=gen:count=300000",
            "--checkpoint-dir",
            "chk",
            "--checkpoint-interval",
            "100ms",
            "--sink",
            "alerts=file:out/alerts.csv"
        ],
        dir.path(),
    );
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    let errors: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", outcome.stderr);
    assert!(errors[0].contains("No space left"), "names the cause: {}", errors[0]);
    assert!(!outcome.stderr.contains("panicked"), "no panic:\n{}", outcome.stderr);
    assert!(!dir.join("out/alerts.csv").exists(), "no final output file");
}

/// A published output part damaged on disk (here between a stop with savepoint and its resume)
/// is found when the parts are joined: the job fails naming the part, and `PATH` is not written.
#[test]
fn a_damaged_output_part_is_found_when_parts_are_joined() {
    let dir = TempDir::new("damaged-part");
    let sink = ["--sink", "windows=file:out/windows.csv"];
    let mut a = args!["run", "throughput-windows", "-q", "--source", "payments=gen:count=200000", "--checkpoint-dir", "chk"];
    a.extend(sink.iter().map(|s| s.to_string()));
    let mut paced = a.clone();
    paced.extend(["--checkpoint-interval", "100ms", "--rate", "40000"].iter().map(|s| s.to_string()));
    let running = spawn("to stop", paced, dir.path());
    let parts = dir.join("out/windows.csv.parts");
    let started = Instant::now();
    let published = loop {
        let found: Vec<_> = std::fs::read_dir(&parts)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "csv")).collect())
            .unwrap_or_default();
        if let Some(p) = found.into_iter().next() {
            break p;
        }
        assert!(started.elapsed() < TIMEOUT, "no part was published");
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill(2) with a child's pid.
    assert_eq!(unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) }, 0);
    let stopped = wait_all(vec![running]).remove(0);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    let savepoint = stopped
        .stderr
        .lines()
        .skip_while(|l| !l.contains("resume with"))
        .nth(1)
        .unwrap_or_default()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(savepoint.contains("savepoint-"), "{}", stopped.stderr);
    let mut bytes = std::fs::read(&published).expect("read part");
    bytes[0] ^= 0x01;
    std::fs::write(&published, &bytes).expect("damage the part");
    let mut resume = a.clone();
    resume.extend(["--restore".to_string(), savepoint]);
    let outcome = run("resume", resume, dir.path());
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    let errors: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(errors.len() == 1 && errors[0].contains("is damaged") && errors[0].contains("epoch-"), "{}", outcome.stderr);
    assert!(!dir.join("out/windows.csv").exists(), "the damaged output is not published");
}

/// A line far longer than `max_record_bytes` is skipped, not gathered: it goes to dead letters
/// with its length, the lines around it are read, and memory stays flat.
#[test]
fn an_overlong_line_is_a_dead_letter_and_memory_stays_flat() {
    use std::io::Write;
    let dir = TempDir::new("longline");
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("in.csv")).expect("create"));
    writeln!(f, "{PAYMENT_HEADER}").expect("write");
    writeln!(f, "1767225600000,t1,1,2,100,EUR,DE,APPROVED").expect("write");
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..96 {
        f.write_all(&chunk).expect("write");
    }
    writeln!(f).expect("write");
    writeln!(f, "1767225600500,t2,1,2,200,EUR,DE,APPROVED").expect("write");
    drop(f);
    let outcome = run(
        "long line",
        args![
            "run",
            "throughput-windows",
            "--source",
            "payments=file:in.csv",
            "--sink",
            "windows=file:out/w.csv",
            "--sink",
            "dead_letters=file:out/dead.csv"
        ],
        dir.path(),
    );
    outcome.assert_success();
    let dead = read(&dir.join("out/dead.csv"));
    assert!(dead.contains("record of 100663296 bytes is longer than max_record_bytes (1048576)"), "{dead}");
    assert!(dead.lines().nth(1).is_some_and(|l| l.contains(",3,")), "its line number: {dead}");
    let windows = read(&dir.join("out/w.csv"));
    assert!(windows.lines().nth(1).is_some_and(|l| l.contains(",2,300,")), "both good payments are counted: {windows}");
    let peak: u64 = outcome
        .stderr
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in the summary:\n{}", outcome.stderr));
    assert!(peak < 64, "peak memory {peak} MiB for a 96 MiB line: it was gathered");
}

/// A checkpoint directory that cannot be used is refused before the job starts.
#[test]
fn an_unusable_checkpoint_directory_is_refused_before_the_start() {
    let dir = TempDir::new("badchk");
    std::fs::write(dir.join("a-file"), "not a directory").expect("write");
    let outcome =
        run("checkpoint dir is a file", windows(&["--checkpoint-dir", "a-file/chk", "--sink", "windows=file:out/w.csv"]), dir.path());
    assert_config_error(&outcome, "a-file/chk");
    assert!(!dir.join("out").exists(), "nothing ran");
}

/// `--tolerable-checkpoint-failures N`: a checkpoint part that cannot be written (injected: the
/// third part write fails, as on a full disk) skips that checkpoint, the run goes on and its
/// output is exactly the uncrashed, unfailing run's, also after a `kill -9` and a restore past the
/// skipped checkpoint; with 0 (the default) a failing state or sink part fails the job, and more
/// failures in a row than tolerated fail it with exit 1 and an error that says so.
#[test]
fn tolerated_checkpoint_failures_skip_a_checkpoint_and_lose_nothing() {
    let dir = TempDir::new("tolerable");
    let source = "payments=gen:count=40000,events_per_sec=2000";
    let job = |out: &str, extra: &[&str]| {
        let mut a = args![
            "run",
            "throughput-windows",
            "-q",
            "--source",
            source,
            "--sink",
            format!("windows={}", file_uri(&dir.join(out))),
            "--sink",
            format!("late_payments={}", file_uri(&dir.join(&format!("late-{out}"))))
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    run("reference", job("reference.csv", &[]), dir.path()).assert_success();
    let reference = read(&dir.join("reference.csv"));
    let checkpointed = |out: &str, chk: &str, tolerable: &str| {
        job(
            out,
            &["--rate", "20000", "--checkpoint-dir", chk, "--checkpoint-interval", "100ms", "--tolerable-checkpoint-failures", tolerable],
        )
    };
    // One failed part, one tolerated: skipped, and nothing lost.
    let skipped = wait_all(vec![spawn_env(
        "one failure",
        checkpointed("one.csv", "chk-one", "1"),
        dir.path(),
        &[("PAYSTREAM_FAIL_AT", "part:write:3")],
    )]);
    skipped[0].assert_success();
    assert!(skipped[0].stderr.contains("skipped (1 in a row, 1 tolerated)"), "the skip is logged:\n{}", skipped[0].stderr);
    assert_eq!(read(&dir.join("one.csv")), reference, "output after a skipped checkpoint");
    // A skipped checkpoint, then a crash after a later one completed, then a restore.
    let crashed = wait_all(vec![spawn_env(
        "failure then crash",
        checkpointed("crash.csv", "chk-crash", "1"),
        dir.path(),
        &[("PAYSTREAM_FAIL_AT", "part:write:3"), ("PAYSTREAM_CRASH_AT", "manifest:after-write:4")],
    )]);
    assert_ne!(crashed[0].code, Some(0), "the run crashed:\n{}", crashed[0].stderr);
    let mut restore = checkpointed("crash.csv", "chk-crash", "1");
    restore.extend(args!["--restore", "latest"]);
    run("restore", restore, dir.path()).assert_success();
    assert_eq!(read(&dir.join("crash.csv")), reference, "output after a skipped checkpoint, a crash and a restore");
    // More failures in a row than tolerated: exit 1, and the error says why.
    let failed = wait_all(vec![spawn_env(
        "every write fails",
        checkpointed("many.csv", "chk-many", "2"),
        dir.path(),
        &[("PAYSTREAM_FAIL_AT", "part:write:3+")],
    )]);
    assert_eq!(failed[0].code, Some(1), "{}", failed[0].stderr);
    assert!(
        failed[0].stderr.contains("3 checkpoints in a row failed, more than --tolerable-checkpoint-failures 2 allows"),
        "{}",
        failed[0].stderr
    );
}
