//! A connector defined outside the engine (`seq:` source, `share:` parallel two-phase-commit
//! sink, in this crate's `paystream-custom` binary) feeds a built-in job through the CLI, takes
//! part in checkpoints and restores, and gives exactly-once output after `kill -9` at random
//! moments and at injected crash points, including between a pre-commit and its commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_paystream-custom");
const SOURCE: &str = "payments=seq:count=40000,splits=4";

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("paystream-connector-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}

fn start(args: &[String], cwd: &Path, env: &[(&str, String)]) -> Child {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paystream-custom")
}

/// Waits up to 60 s; returns the exit code (`None`: killed by a signal) and stderr.
fn wait(mut child: Child, label: &str) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                e.read_to_string(&mut err).ok();
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("{label}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["run", "throughput-windows", "--source", SOURCE, "-q"].iter().map(|s| s.to_string()).collect();
    for (sink, uri) in [
        ("windows", format!("share:{}", out.join("windows").display())),
        ("late_payments", format!("file:{}", out.join("late.csv").display())),
        ("dead_letters", format!("file:{}", out.join("dead.csv").display())),
    ] {
        a.push("--sink".into());
        a.push(format!("{sink}={uri}"));
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The committed output: the share sink's committed lines (as a sorted multiset) and the files.
fn output(out: &Path) -> BTreeMap<String, Vec<String>> {
    let mut result = BTreeMap::new();
    let mut shares = Vec::new();
    let mut uncommitted = Vec::new();
    for entry in std::fs::read_dir(out.join("windows")).expect("share directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".committed") {
            shares.extend(std::fs::read_to_string(&path).expect("read share").lines().map(String::from));
        } else {
            uncommitted.push(name);
        }
    }
    assert!(uncommitted.is_empty(), "uncommitted pre-commits left after a finished run: {uncommitted:?}");
    shares.sort();
    result.insert("windows".to_string(), shares);
    for file in ["late.csv", "dead.csv"] {
        let mut lines: Vec<String> = std::fs::read_to_string(out.join(file)).expect("read file sink").lines().map(String::from).collect();
        lines.sort();
        result.insert(file.to_string(), lines);
    }
    result
}

/// xorshift64*, seeded per test: the trials are the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn custom_connector_is_exactly_once_after_kill_9() {
    let dir = Dir::new("kill");
    let reference_dir = dir.0.join("reference");
    let (code, err) = wait(start(&args(&reference_dir, &["-w", "2"]), &dir.0, &[]), "reference");
    assert_eq!(code, Some(0), "reference run failed:\n{err}");
    let reference = output(&reference_dir);
    assert!(reference["windows"].len() > 100, "the reference has windows: {}", reference["windows"].len());
    assert!(reference["dead.csv"].len() > 30, "malformed messages reached dead letters with their origin");
    assert!(reference["dead.csv"].iter().any(|l| l.contains("seq split 2")), "dead letters name the split");

    let mut rng = Rng(0x5eed_c0de);
    let mut restored = 0;
    // Timed kills, and crashes injected between a pre-commit and its commit, before a part is
    // written and after a manifest.
    let scenarios: Vec<(String, Option<(String, u64)>)> = vec![
        ("kill after a random delay".into(), None),
        ("kill after a random delay".into(), None),
        ("kill after a random delay".into(), None),
        ("between pre-commit and commit".into(), Some(("sink:before-publish".into(), 2))),
        ("between pre-commit and commit, later".into(), Some(("sink:before-publish".into(), 9))),
        ("before a part".into(), Some(("part:before-write".into(), 20))),
        ("after a manifest".into(), Some(("manifest:after-write".into(), 4))),
    ];
    for (i, (what, crash)) in scenarios.into_iter().enumerate() {
        let out = dir.0.join(format!("trial{i}"));
        let chk = out.join("chk");
        let chk_arg = chk.display().to_string();
        let workers = (1 + rng.below(2)).to_string();
        let crashing = args(&out, &["-w", &workers, "--checkpoint-dir", &chk_arg, "--checkpoint-interval", "100ms", "--rate", "20000"]);
        let env: Vec<(&str, String)> = crash.iter().map(|(point, n)| ("PAYSTREAM_CRASH_AT", format!("{point}:{n}"))).collect();
        let mut child = start(&crashing, &dir.0, &env);
        if crash.is_none() {
            std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
            // SIGKILL: as `kill -9`.
            child.kill().ok();
        }
        let (code, err) = wait(child, what.as_str());
        if code == Some(0) {
            // The run finished before the kill: its output must already be exactly the reference.
            assert_eq!(output(&out), reference, "trial {i} ({what}): a finished run's output");
            continue;
        }
        if crash.is_some() {
            assert!(err.contains("crash injected"), "trial {i} ({what}): {err}");
        }
        let restore_workers = (1 + rng.below(2)).to_string();
        let has_checkpoint =
            std::fs::read_dir(&chk).map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("MANIFEST").is_file())).unwrap_or(false);
        let resuming = if has_checkpoint {
            args(&out, &["-w", &restore_workers, "--checkpoint-dir", &chk_arg, "--checkpoint-interval", "100ms", "--restore", "latest"])
        } else {
            // Killed before the first checkpoint completed: a fresh run (it clears what was left).
            std::fs::remove_dir_all(&chk).ok();
            args(&out, &["-w", &restore_workers, "--checkpoint-dir", &chk_arg, "--checkpoint-interval", "100ms"])
        };
        let (code, err) = wait(start(&resuming, &dir.0, &[]), "restore");
        assert_eq!(code, Some(0), "trial {i} ({what}): the restore failed:\n{err}");
        restored += usize::from(has_checkpoint);
        eprintln!("trial {i} ({what}): {workers} -> {restore_workers} workers, restored from a checkpoint: {has_checkpoint}");
        assert_eq!(
            output(&out),
            reference,
            "trial {i} ({what}, {workers} -> {restore_workers} workers): output differs from the uncrashed run"
        );
    }
    assert!(restored >= 5, "only {restored} of 7 trials crashed after a checkpoint: the trials test too little");
}

/// CPU time (user + system) of a process so far, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

#[test]
fn an_idle_live_source_costs_no_cpu() {
    if !Path::new("/proc/self/stat").exists() {
        eprintln!("SKIPPED: an_idle_live_source_costs_no_cpu needs /proc");
        return;
    }
    let dir = Dir::new("idle");
    let out = dir.0.join("out");
    let mut a = args(&out, &["-w", "2"]);
    a[3] = "payments=seq:idle=6000,splits=2".into();
    let child = start(&a, &dir.0, &[]);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(700));
    let before = cpu_seconds(pid).expect("cpu time");
    std::thread::sleep(Duration::from_secs(5));
    let after = cpu_seconds(pid).expect("cpu time, still running");
    let (code, err) = wait(child, "idle run");
    assert_eq!(code, Some(0), "{err}");
    let used = after - before;
    eprintln!("an idle live source used {used:.3} CPU-s in 5 s");
    assert!(used < 0.1, "an idle live source used {used:.3} CPU-s in 5 s");
}

fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    (a.local_addr().expect("address").port(), b.local_addr().expect("address").port())
}

/// Runs the job as two processes (one worker each) into `out`; `kill_after` kills both with
/// SIGKILL that long after the first complete checkpoint. Returns whether both finished with exit code 0.
fn two_processes(dir: &Path, out: &Path, extra: &[&str], kill_after: Option<Duration>) -> bool {
    let (port0, port1) = free_ports();
    let hosts = out.with_extension("hosts");
    std::fs::create_dir_all(out).expect("output directory");
    std::fs::write(&hosts, format!("127.0.0.1:{port0}\n127.0.0.1:{port1}\n")).expect("hosts file");
    let hosts_arg = hosts.display().to_string();
    let mut children: Vec<Child> = (0..2)
        .map(|p| {
            let process = p.to_string();
            let mut a = args(out, &["--processes", "2", "--process", &process, "--hosts", &hosts_arg]);
            a.extend(extra.iter().map(|s| s.to_string()));
            start(&a, dir, &[])
        })
        .collect();
    if let Some(delay) = kill_after {
        // Once a checkpoint is complete (the processes connect first), then a little later.
        let chk = out.join("chk");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && !std::fs::read_dir(&chk).map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("MANIFEST").is_file())).unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(delay);
        for c in children.iter_mut() {
            c.kill().ok();
        }
    }
    let mut all_ok = true;
    for (p, c) in children.into_iter().enumerate() {
        let (code, err) = wait(c, "process");
        if kill_after.is_none() {
            assert_eq!(code, Some(0), "process {p} failed:\n{err}");
        }
        all_ok &= code == Some(0);
    }
    all_ok
}

/// A parallel sink in the second process commits through the checkpoints the first process
/// completes (it follows their manifests in the shared checkpoint directory): exactly-once as
/// two processes, uncrashed and after `kill -9` of both and a restore.
#[test]
fn parallel_sink_across_two_processes_is_exactly_once() {
    let dir = Dir::new("processes");
    let reference_dir = dir.0.join("reference");
    let (code, err) = wait(start(&args(&reference_dir, &["-w", "2"]), &dir.0, &[]), "reference");
    assert_eq!(code, Some(0), "reference run failed:\n{err}");
    let reference = output(&reference_dir);

    let plain = dir.0.join("plain");
    let chk = plain.join("chk").display().to_string();
    two_processes(&dir.0, &plain, &["--checkpoint-dir", &chk, "--checkpoint-interval", "100ms"], None);
    assert_eq!(output(&plain), reference, "two processes with checkpoints");
    let shares: Vec<String> = std::fs::read_dir(plain.join("windows"))
        .expect("shares")
        .filter_map(|e| e.ok().and_then(|e| e.file_name().to_str().map(String::from)))
        .collect();
    assert!(shares.iter().any(|n| n.starts_with("w1-")), "the second process's worker committed its own share: {shares:?}");

    let crashed = dir.0.join("crashed");
    let chk = crashed.join("chk").display().to_string();
    // --rate paces each process: 2 x 8,000 events/s, 2.5 s for the whole input.
    let paced = ["--checkpoint-dir", &chk, "--checkpoint-interval", "100ms", "--rate", "8000"];
    let finished = two_processes(&dir.0, &crashed, &paced, Some(Duration::from_millis(400)));
    assert!(!finished, "the kill came before the end");
    two_processes(&dir.0, &crashed, &["--checkpoint-dir", &chk, "--checkpoint-interval", "100ms", "--restore", "latest"], None);
    assert_eq!(output(&crashed), reference, "two processes killed and restored");
}
