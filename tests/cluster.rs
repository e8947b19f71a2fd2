//! End to end on 127.0.0.1: a real coordinator, real agents and the job processes they start, all
//! of them the `paystream` binary. A job process killed with `kill -9` is restarted from the last
//! checkpoint; a coordinator killed with `kill -9` finds its running job again; a job stopped with
//! a savepoint resumes at another parallelism; and in each case the committed output equals an
//! uncrashed run's. A cancel leaves no process behind (checked by pid), and a coordinator with a
//! token refuses requests without it.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const JOB: &str = "throughput-windows";
/// Payments in the input file: with `--rate` below, a run lasts several seconds, so kills land
/// mid-run; small enough for CI.
const EVENTS: usize = 120_000;
/// Events per second of each job process.
const RATE: &str = "15000";
/// How long anything in a test may take on a loaded machine before the test fails.
const PATIENCE: Duration = Duration::from_secs(180);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// A coordinator and its agents, killed (with every job process seen) when dropped.
struct Cluster {
    dir: TempDir,
    url: String,
    port: u16,
    token: Option<PathBuf>,
    coordinator: Option<Running>,
    coordinator_args: Vec<String>,
    agents: Vec<Running>,
    pids: std::cell::RefCell<Vec<u32>>,
}

impl Cluster {
    /// A coordinator (restart backoff 500ms, agents lost after 4s of silence) and `agents` agents of `slots` slots each.
    fn start(tag: &str, agents: usize, slots: usize, token: bool) -> Cluster {
        Cluster::start_with(tag, agents, slots, token, Vec::new())
    }

    /// As [`Cluster::start`], with more flags for the coordinator.
    fn start_with(tag: &str, agents: usize, slots: usize, token: bool, coordinator_args: Vec<String>) -> Cluster {
        let dir = TempDir::new(tag);
        let port = free_port();
        let token = token.then(|| {
            let path = dir.join("token");
            std::fs::write(&path, "a-token-of-at-least-16-bytes\n").expect("write token");
            path
        });
        let mut cluster = Cluster {
            url: format!("http://127.0.0.1:{port}"),
            port,
            token,
            coordinator: None,
            coordinator_args,
            agents: Vec::new(),
            pids: Default::default(),
            dir,
        };
        cluster.start_coordinator();
        for i in 0..agents {
            let mut a = args![
                "agent",
                "--coordinator",
                cluster.url,
                "--slots",
                slots,
                "--work-dir",
                cluster.dir.join(&format!("agent-{i}")).display(),
                "--name",
                format!("agent-{i}")
            ];
            a.extend(cluster.token_args());
            cluster.agents.push(spawn(&format!("agent {i}"), a, cluster.dir.path()));
        }
        cluster.wait_for_agents(agents);
        cluster
    }

    fn start_coordinator(&mut self) {
        let mut a = args![
            "coordinator",
            "--listen",
            format!("127.0.0.1:{}", self.port),
            "--state-dir",
            self.dir.join("state").display(),
            "--restart-backoff",
            "500ms",
            "--agent-timeout",
            "4s"
        ];
        a.extend(self.token_args());
        a.extend(self.coordinator_args.iter().cloned());
        self.coordinator = Some(spawn("coordinator", a, self.dir.path()));
    }

    fn token_args(&self) -> Vec<String> {
        self.token.iter().flat_map(|t| args!["--token-file", t.display()]).collect()
    }

    /// `paystream ARGS --cluster URL [--token-file F]`.
    fn cli(&self, a: Vec<String>) -> Outcome {
        let mut a = a;
        a.extend(args!["--cluster", self.url]);
        a.extend(self.token_args());
        run(&a.join(" "), a, self.dir.path())
    }

    fn submit(&self, extra: Vec<String>) -> String {
        let mut a = args!["submit", JOB];
        a.extend(extra);
        let outcome = self.cli(a);
        outcome.assert_success();
        let id = outcome.stdout.trim().to_string();
        assert!(id.starts_with("job-"), "submit prints the job id: {outcome:?}");
        id
    }

    fn status(&self, id: &str) -> Value {
        let outcome = self.cli(args!["status", id, "--output", "json"]);
        outcome.assert_success();
        let view: Value = serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("status is JSON: {e}: {}", outcome.stdout));
        for p in view["placements"].as_array().into_iter().flatten() {
            if let Some(pid) = p["pid"].as_u64() {
                self.pids.borrow_mut().push(pid as u32);
            }
        }
        view
    }

    /// Waits until `id` is in `state` (failing at once if it reaches another final state).
    fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let started = Instant::now();
        loop {
            let view = self.status(id);
            let now = view["state"].as_str().unwrap_or_default().to_string();
            if now == state {
                return view;
            }
            let is_final = matches!(now.as_str(), "finished" | "cancelled" | "failed");
            assert!(!is_final && started.elapsed() < PATIENCE, "job {id} is {now}, not {state}:\n{}", self.describe(id, &view));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The job's status and its processes' logs, for a failure message.
    fn describe(&self, id: &str, view: &Value) -> String {
        let mut text = format!("{view:#}\n");
        for i in 0..self.agents.len() {
            let job_dir = self.dir.join(&format!("agent-{i}")).join(id);
            for attempt in std::fs::read_dir(&job_dir).into_iter().flatten().flatten() {
                for log in std::fs::read_dir(attempt.path()).into_iter().flatten().flatten() {
                    if log.path().extension().is_some_and(|e| e == "log") {
                        text.push_str(&format!(
                            "--- {}\n{}\n",
                            log.path().display(),
                            std::fs::read_to_string(log.path()).unwrap_or_default()
                        ));
                    }
                }
            }
        }
        text
    }

    /// The pids of the job's current processes, once all have started.
    fn running_pids(&self, id: &str) -> Vec<u32> {
        let view = self.wait_for_state(id, "running");
        view["placements"].as_array().expect("placements").iter().map(|p| p["pid"].as_u64().expect("a pid") as u32).collect()
    }

    fn wait_for_agents(&self, n: usize) {
        let started = Instant::now();
        loop {
            let outcome = self.cli(args!["list", "--output", "json"]);
            if outcome.code == Some(0) {
                let agents = agents(&self.url, self.token.as_deref());
                if agents.len() >= n {
                    return;
                }
            }
            assert!(started.elapsed() < PATIENCE, "the coordinator never saw {n} agents: {outcome:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill_coordinator(&mut self) {
        let mut coordinator = self.coordinator.take().expect("a coordinator");
        coordinator.child.kill().expect("kill -9 the coordinator");
        coordinator.child.wait().expect("reap the coordinator");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in self.pids.borrow().iter() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(std::process::Stdio::null()).status();
        }
        for running in self.agents.iter_mut().chain(self.coordinator.iter_mut()) {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
        if std::thread::panicking() {
            for running in self.agents.drain(..).chain(self.coordinator.take()) {
                let stderr = running.stderr.join().unwrap_or_default();
                eprintln!("--- {} stderr:\n{}", running.label, String::from_utf8_lossy(&stderr));
            }
        }
    }
}

/// `GET /api/agents` with a raw HTTP/1.0 request: the agents' names.
fn agents(url: &str, token: Option<&Path>) -> Vec<String> {
    let (status, body) = raw_get(url, "/api/agents", token);
    assert_eq!(status, 200, "GET /api/agents: {body}");
    let agents: Value = serde_json::from_str(&body).expect("agents JSON");
    agents
        .as_array()
        .expect("a list")
        .iter()
        .filter(|a| a["lost"] == false)
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A GET by hand (no client library): the status code and the body.
fn raw_get(url: &str, path: &str, token: Option<&Path>) -> (u16, String) {
    use std::io::{Read, Write};
    let authority = url.strip_prefix("http://").expect("http URL");
    let mut stream = std::net::TcpStream::connect(authority).expect("connect to the coordinator");
    let auth =
        token.map(|t| format!("Authorization: Bearer {}\r\n", std::fs::read_to_string(t).expect("token").trim_end())).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n{auth}\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A request by hand: `line` (`METHOD PATH HTTP/1.0`), extra `headers` (each ending in CRLF)
/// and a form `body`; the status code and the whole answer (head and body).
fn raw_request(url: &str, line: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let authority = url.strip_prefix("http://").expect("http URL");
    let mut stream = std::net::TcpStream::connect(authority).expect("connect to the coordinator");
    let form = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len())
    };
    write!(stream, "{line}\r\nHost: {authority}\r\n{headers}{form}\r\n{body}").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// The input file (generated by the binary itself) and the output of an uncrashed single-process
/// run over it: the sorted data lines of each sink.
fn input_and_reference(dir: &Path) -> (PathBuf, Vec<Vec<String>>) {
    let input = dir.join("payments.csv");
    run(
        "generate input",
        args![
            "run",
            "generate-payments",
            "-q",
            "--source",
            format!("payments=gen:count={EVENTS}"),
            "--sink",
            format!("payments={}", file_uri(&input))
        ],
        dir,
    )
    .assert_success();
    let out = dir.join("reference");
    run(
        "reference run",
        args![
            "run",
            JOB,
            "-q",
            "--source",
            format!("payments={}", file_uri(&input)),
            "--sink",
            sink(&out, "windows"),
            "--sink",
            sink(&out, "late_payments")
        ],
        dir,
    )
    .assert_success();
    let reference = outputs(&out);
    assert!(reference[0].len() > 100, "the reference run wrote windows");
    (input, reference)
}

fn sink(out: &Path, name: &str) -> String {
    format!("{name}={}", file_uri(&out.join(format!("{name}.csv"))))
}

/// Sorted lines of windows.csv and late_payments.csv under `out`.
fn outputs(out: &Path) -> Vec<Vec<String>> {
    ["windows", "late_payments"]
        .iter()
        .map(|name| {
            let mut lines: Vec<String> = read(&out.join(format!("{name}.csv"))).lines().map(String::from).collect();
            lines.sort();
            lines
        })
        .collect()
}

/// `submit` flags: the input, sinks under `out`, checkpoints in `chk`, paced.
fn job_flags(input: &Path, out: &Path, chk: &Path, processes: usize) -> Vec<String> {
    args![
        "--source",
        format!("payments={}", file_uri(input)),
        "--sink",
        sink(out, "windows"),
        "--sink",
        sink(out, "late_payments"),
        "--workers",
        1,
        "--processes",
        processes,
        "--checkpoint-dir",
        chk.display(),
        "--checkpoint-interval",
        "300ms",
        "--rate",
        RATE
    ]
}

fn wait_for_a_checkpoint(cluster: &Cluster, id: &str, chk: &Path) {
    let started = Instant::now();
    while !has_checkpoint(chk) {
        let view = cluster.status(id);
        assert!(
            view["state"] == "running" && started.elapsed() < PATIENCE,
            "no checkpoint while running:\n{}",
            cluster.describe(id, &view)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (ended, not yet reaped by its agent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[test]
fn a_killed_job_process_is_restarted_from_the_last_checkpoint() {
    let cluster = Cluster::start("cluster-restart", 2, 1, false);
    let (input, reference) = input_and_reference(cluster.dir.path());
    let (out, chk) = (cluster.dir.join("out"), cluster.dir.join("chk"));
    let id = cluster.submit(job_flags(&input, &out, &chk, 2));
    let pids = cluster.running_pids(&id);
    assert_eq!(pids.len(), 2);
    wait_for_a_checkpoint(&cluster, &id, &chk);
    let killed = pids[1];
    let killed_ok = Command::new("kill").args(["-9", &killed.to_string()]).status().expect("kill").success();
    assert!(killed_ok, "kill -9 {killed}");

    let view = cluster.wait_for_state(&id, "finished");
    assert_eq!(view["restarts"], 1, "one restart:\n{}", cluster.describe(&id, &view));
    let restart = view["history"].as_array().expect("history").iter().find(|t| t["to"] == "restarting").expect("a restarting transition");
    let cause = restart["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("process 1") && cause.contains("killed by signal 9"), "the cause names the process and the signal: {cause}");
    assert!(
        view["restored_from"].as_str().is_some_and(|p| p.contains("chk-") || p.contains("savepoint-")),
        "restored from a checkpoint: {view:#}"
    );
    assert_eq!(outputs(&out), reference, "the output after a restart equals an uncrashed run's");

    let text = cluster.cli(args!["status", id]);
    text.assert_success();
    assert!(text.stdout.contains("restarts:        1") && text.stdout.contains("killed by signal 9"), "{}", text.stdout);
    let listed = cluster.cli(args!["list", "--output", "json"]);
    let jobs: Value = serde_json::from_str(&listed.stdout).expect("list JSON");
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(jobs[0]["state"], "finished");
    assert_eq!(jobs[0]["restarts"], 1);

    let (status, body) = raw_get(&cluster.url, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    let sample = |metric: &str, key: &str, value: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get(key) == Some(value))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Gauge(x) | prometheus_parse::Value::Untyped(x) => x,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {metric}{{{key}={value:?}}} in:\n{body}"))
    };
    assert_eq!(sample("paystream_cluster_job_restarts_total", "id", &id), 1.0);
    assert_eq!(sample("paystream_cluster_jobs", "state", "finished"), 1.0);
    assert_eq!(sample("paystream_cluster_jobs", "state", "running"), 0.0);
    assert_eq!(sample("paystream_cluster_agents", "state", "alive"), 2.0);
    assert_eq!(sample("paystream_cluster_slots", "kind", "used"), 0.0);

    let (status, page) = raw_get(&cluster.url, "/", None);
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("<td><a href=\"/jobs/{id}\">{id}</a></td><td>{JOB}</td><td class=\"state\">finished</td><td>1</td>")),
        "the dashboard lists the job:\n{page}"
    );
    assert!(page.contains("<td>agent-1</td>"), "and the agents:\n{page}");
}

#[test]
fn a_job_keeps_running_while_the_coordinator_is_down() {
    let mut cluster = Cluster::start("cluster-coordinator-kill", 2, 2, false);
    let (input, reference) = input_and_reference(cluster.dir.path());
    let (out, chk) = (cluster.dir.join("out"), cluster.dir.join("chk"));
    let id = cluster.submit(job_flags(&input, &out, &chk, 2));
    let pids = cluster.running_pids(&id);
    wait_for_a_checkpoint(&cluster, &id, &chk);
    cluster.kill_coordinator();
    let down = cluster.cli(args!["list"]);
    assert_eq!(down.code, Some(1), "{down:?}");
    assert!(down.stderr.starts_with("error: cannot reach the coordinator at"), "a clear error: {}", down.stderr);
    assert!(pids.iter().all(|p| alive(*p)), "the job's processes run on without the coordinator");
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_coordinator();

    let started = Instant::now();
    let listed = loop {
        let listed = cluster.cli(args!["list"]);
        if listed.code == Some(0) || started.elapsed() > PATIENCE {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    listed.assert_success();
    assert!(listed.stdout.contains(&id), "the job is listed again: {}", listed.stdout);
    let view = cluster.wait_for_state(&id, "finished");
    assert_eq!(view["restarts"], 0, "nothing was restarted:\n{}", cluster.describe(&id, &view));
    assert_eq!(outputs(&out), reference, "exactly-once output across a coordinator crash");
}

#[test]
fn stop_with_savepoint_and_resume_at_another_parallelism() {
    let cluster = Cluster::start("cluster-savepoint", 2, 2, false);
    let (input, reference) = input_and_reference(cluster.dir.path());
    let (out, chk) = (cluster.dir.join("out"), cluster.dir.join("chk"));
    let id = cluster.submit(job_flags(&input, &out, &chk, 2));
    cluster.running_pids(&id);
    wait_for_a_checkpoint(&cluster, &id, &chk);
    // A savepoint on the way leaves the job running.
    let taken = cluster.cli(args!["savepoint", id, "--output", "json"]);
    taken.assert_success();
    let answer: Value = serde_json::from_str(&taken.stdout).expect("savepoint JSON");
    let first = PathBuf::from(answer["savepoint"].as_str().expect("a savepoint path"));
    assert!(first.join("MANIFEST").is_file(), "{taken:?}");
    let view = cluster.status(&id);
    assert!(view["state"] == "running" && view["savepoints"][0] == first.display().to_string().as_str(), "{view:#}");

    let stopped = cluster.cli(args!["stop", id]);
    stopped.assert_success();
    let savepoint = PathBuf::from(stopped.stdout.trim());
    assert!(savepoint.join("MANIFEST").is_file(), "stop prints the savepoint: {stopped:?}");
    let view = cluster.wait_for_state(&id, "finished");
    assert!(view["history"].to_string().contains("stopped after savepoint"), "{view:#}");

    let mut flags = job_flags(&input, &out, &cluster.dir.join("chk2"), 1);
    flags.extend(args!["--from-savepoint", savepoint.display()]);
    let resumed = cluster.submit(flags);
    assert_ne!(resumed, id);
    let view = cluster.wait_for_state(&resumed, "finished");
    assert_eq!(view["restored_from"], savepoint.display().to_string().as_str());
    assert_eq!(outputs(&out), reference, "2 processes, stopped, then 1 process from the savepoint: exactly-once output");
}

#[test]
fn cancel_leaves_no_process_and_the_token_is_required() {
    let cluster = Cluster::start("cluster-cancel", 1, 2, true);
    let (input, _) = input_and_reference(cluster.dir.path());
    let (status, body) = raw_get(&cluster.url, "/api/jobs", None);
    assert_eq!(status, 401, "no token: refused: {body}");
    assert_eq!(raw_get(&cluster.url, "/metrics", None).0, 401, "the metrics too");
    assert_eq!(raw_get(&cluster.url, "/metrics", cluster.token.as_deref()).0, 200, "with the token");
    // A browser: sent to the login form, a wrong token refused, the right one gets a session
    // cookie that opens the dashboard and the API (not the token itself).
    let (status, head) = raw_request(&cluster.url, "GET / HTTP/1.0", "", "");
    assert!(status == 303 && head.contains("location: /login"), "the dashboard without the token sends to /login: {head}");
    assert_eq!(raw_request(&cluster.url, "GET /login HTTP/1.0", "", "").0, 200, "the login form needs no token");
    assert_eq!(raw_request(&cluster.url, "POST /login HTTP/1.0", "", "token=a-wrong-token-of-16-bytes").0, 401, "a wrong token");
    let (status, head) = raw_request(&cluster.url, "POST /login HTTP/1.0", "", "token=a-token-of-at-least-16-bytes");
    assert_eq!(status, 303, "the right token: {head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("a session cookie: {head}"))
        .to_string();
    assert!(head.contains("HttpOnly") && head.contains("SameSite=Strict"), "{head}");
    assert!(!cookie.contains("a-token-of-at-least-16-bytes"), "the cookie is not the token: {cookie}");
    let with_cookie = format!("Cookie: {cookie}\r\n");
    let (status, page) = raw_request(&cluster.url, "GET / HTTP/1.0", &with_cookie, "");
    assert!(status == 200 && page.contains("<html"), "the dashboard with the cookie: {status}");
    assert_eq!(raw_request(&cluster.url, "GET /api/jobs HTTP/1.0", &with_cookie, "").0, 200, "the API with the cookie");
    assert_eq!(raw_request(&cluster.url, "GET /api/jobs HTTP/1.0", "Cookie: paystream_session=0123\r\n", "").0, 401, "a made-up cookie");
    let anonymous = run("list without the token", args!["list", "--cluster", cluster.url], cluster.dir.path());
    assert_eq!(anonymous.code, Some(1));
    assert!(anonymous.stderr.starts_with("error:") && anonymous.stderr.contains("token"), "{}", anonymous.stderr);

    let (out, chk) = (cluster.dir.join("out"), cluster.dir.join("chk"));
    let id = cluster.submit(job_flags(&input, &out, &chk, 2));
    let pids = cluster.running_pids(&id);
    assert!(pids.iter().all(|p| alive(*p)));
    let cancelled = cluster.cli(args!["cancel", id]);
    cancelled.assert_success();
    cluster.wait_for_state(&id, "cancelled");
    let started = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(started.elapsed() < PATIENCE, "processes {pids:?} still run after the cancel");
        std::thread::sleep(Duration::from_millis(100));
    }
    // More processes than slots: the job waits, says for what, and cancels at once.
    let waiting = cluster.submit(job_flags(&input, &cluster.dir.join("out3"), &cluster.dir.join("chk3"), 3));
    let view = cluster.status(&waiting);
    assert_eq!(view["state"], "scheduling", "{view:#}");
    assert!(view["waiting_for"].as_str().is_some_and(|w| w.starts_with("3 free slots")), "{view:#}");
    cluster.cli(args!["cancel", waiting]).assert_success();
    assert_eq!(cluster.status(&waiting)["state"], "cancelled");

    let again = cluster.cli(args!["cancel", id]);
    assert_eq!(again.code, Some(1), "{again:?}");
    let unknown = cluster.cli(args!["status", "job-999"]);
    assert_eq!(unknown.code, Some(1));
    assert!(unknown.stderr.contains("no job job-999"), "{}", unknown.stderr);
}

#[test]
fn the_jobs_of_a_lost_agent_restart_on_the_others() {
    let mut cluster = Cluster::start("cluster-lost-agent", 2, 2, false);
    let (input, reference) = input_and_reference(cluster.dir.path());
    let (out, chk) = (cluster.dir.join("out"), cluster.dir.join("chk"));
    let id = cluster.submit(job_flags(&input, &out, &chk, 2));
    cluster.running_pids(&id);
    wait_for_a_checkpoint(&cluster, &id, &chk);
    let view = cluster.status(&id);
    let on_agent_1: Vec<u32> = view["placements"]
        .as_array()
        .expect("placements")
        .iter()
        .filter(|p| p["agent"] == "agent-1")
        .map(|p| p["pid"].as_u64().expect("pid") as u32)
        .collect();
    assert_eq!(on_agent_1.len(), 1, "the two processes are spread over the two agents: {view:#}");
    let mut agent = cluster.agents.remove(1);
    agent.child.kill().expect("kill -9 agent 1");
    agent.child.wait().expect("reap agent 1");

    let view = cluster.wait_for_state(&id, "finished");
    assert!(view["restarts"].as_u64().is_some_and(|n| n >= 1), "restarted:\n{}", cluster.describe(&id, &view));
    let placed: Vec<&str> =
        view["placements"].as_array().expect("placements").iter().map(|p| p["agent"].as_str().unwrap_or_default()).collect();
    assert_eq!(placed, ["agent-0", "agent-0"], "the last attempt ran on the agent that was left: {view:#}");
    assert!(!alive(on_agent_1[0]), "the lost agent's process died with it");
    assert_eq!(outputs(&out), reference, "exactly-once output across the loss of a node");
}

#[test]
fn a_job_that_keeps_failing_fails_past_the_restart_limit_with_its_last_error() {
    let cluster = Cluster::start_with("cluster-limit", 1, 1, false, args!["--restart-attempts", 2, "--restart-window", "10m"]);
    std::fs::write(cluster.dir.join("a-file"), "not a directory").expect("write");
    let unwritable = format!("windows={}", file_uri(&cluster.dir.join("a-file/windows.csv")));
    let id = cluster.submit(args!["--source", "payments=gen:count=5000", "--sink", unwritable]);
    let started = Instant::now();
    let view = loop {
        let view = cluster.status(&id);
        if view["state"] == "failed" {
            break view;
        }
        assert!(started.elapsed() < PATIENCE, "job {id} never failed:\n{}", cluster.describe(&id, &view));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(view["restarts"], 2, "two restarts, then the limit: {view:#}");
    let states: Vec<&str> = view["history"].as_array().expect("history").iter().map(|t| t["to"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        states,
        ["scheduling", "running", "restarting", "scheduling", "running", "restarting", "scheduling", "running", "failed"],
        "{view:#}"
    );
    let last_error = view["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("exit code 1: error: sink") && last_error.contains("a-file"), "the job's own error: {last_error}");
    let failed = view["history"].as_array().and_then(|h| h.last()).map(|t| t["cause"].to_string()).unwrap_or_default();
    assert!(failed.contains("--restart-attempts 2"), "{failed}");
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let dir = TempDir::new("cluster-open");
    let outcome =
        run("open coordinator", args!["coordinator", "--listen", "0.0.0.0:0", "--state-dir", dir.join("state").display()], dir.path());
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(outcome.stderr.contains("--token-file"), "{}", outcome.stderr);
}

/// The benchmark of issue 16, `PAYSTREAM_BENCH_TRIALS` times (10 by default): from `submit` to
/// the first record processed (events read, polled from process 0's own metrics endpoint every
/// 10 ms) and to the job running, and from `kill -9` of a job process to the job running again.
/// Prints every trial and the medians; asserts nothing about them.
/// `cargo test --release --test cluster cluster_latencies -- --ignored --nocapture`.
#[test]
#[ignore]
fn cluster_latencies() {
    let trials: usize = std::env::var("PAYSTREAM_BENCH_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let cluster = Cluster::start("cluster-bench", 2, 1, false);
    let (input, _) = input_and_reference(cluster.dir.path());
    let (mut to_first_record, mut to_running, mut to_running_again) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        let (out, chk) = (cluster.dir.join(&format!("out-{trial}")), cluster.dir.join(&format!("chk-{trial}")));
        let submitted = Instant::now();
        let id = cluster.submit(job_flags(&input, &out, &chk, 2));
        // Process 0's endpoint is known once it is placed (at submit when slots are free).
        let address = loop {
            let view = cluster.status(&id);
            if let Some(address) = view["placements"][0]["metrics_address"].as_str() {
                break address.to_string();
            }
            assert!(submitted.elapsed() < PATIENCE, "never placed: {view:#}");
            std::thread::sleep(Duration::from_millis(10));
        };
        let first_record = loop {
            let read = std::net::TcpStream::connect(&address).is_ok().then(|| raw_get(&format!("http://{address}"), "/metrics", None));
            let events = read.and_then(|(code, page)| {
                let line = page.lines().find(|l| l.starts_with("paystream_events_read_total"))?;
                (code == 200).then(|| line.rsplit(' ').next()?.parse::<f64>().ok()).flatten()
            });
            if events.is_some_and(|n| n > 0.0) {
                break submitted.elapsed();
            }
            assert!(submitted.elapsed() < PATIENCE, "no record processed:\n{}", cluster.describe(&id, &cluster.status(&id)));
            std::thread::sleep(Duration::from_millis(10));
        };
        let pids = cluster.running_pids(&id);
        // Checked after the first record, so never less than that.
        let running = submitted.elapsed();
        wait_for_a_checkpoint(&cluster, &id, &chk);
        Command::new("kill").args(["-9", &pids[1].to_string()]).status().expect("kill");
        let killed = Instant::now();
        let again = loop {
            let view = cluster.status(&id);
            if view["state"] == "running" && view["attempt"] == 2 {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < PATIENCE, "not running again: {view:#}");
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!("trial {trial}: submit -> first record {first_record:?}, -> running {running:?}; kill -9 -> running again {again:?}");
        to_first_record.push(first_record);
        to_running.push(running);
        to_running_again.push(again);
        cluster.cli(args!["cancel", id]).assert_success();
        cluster.wait_for_state(&id, "cancelled");
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "medians of {trials}: submit -> first record {:?}, -> running {:?}; kill -9 -> running again {:?} (backoff 500ms)",
        median(to_first_record),
        median(to_running),
        median(to_running_again)
    );
}

#[test]
fn a_job_runs_with_the_binary_it_was_submitted_with() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start("cluster-binary", 1, 2, false);
    let (input, reference) = input_and_reference(cluster.dir.path());
    // The user's binary: here a script that notes its arguments and runs paystream.
    let marker = cluster.dir.join("ran-with");
    let binary = cluster.dir.join("my-paystream");
    let script = format!("#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n", marker.display(), env!("CARGO_BIN_EXE_paystream"));
    std::fs::write(&binary, &script).expect("write the binary");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let (out, chk) = (cluster.dir.join("out"), cluster.dir.join("chk"));
    let mut flags = job_flags(&input, &out, &chk, 2);
    flags.extend(args!["--binary", binary.display()]);
    let id = cluster.submit(flags);
    let view = cluster.wait_for_state(&id, "finished");
    assert_eq!(outputs(&out), reference, "the job ran to the same output");
    let runs = read(&marker);
    assert_eq!(
        runs.lines().filter(|l| l.starts_with(&format!("run {JOB} "))).count(),
        2,
        "both processes ran the uploaded binary:\n{runs}"
    );
    let sha256 = view["spec"]["binary"].as_str().expect("the binary's SHA-256 in the spec");
    let cached = cluster.dir.join("agent-0").join("binaries").join(sha256);
    assert_eq!(read(&cached), script, "the agent keeps the binary under its SHA-256");
}

/// Submits a long paced job (generated input, 3,000 events a second, checkpoints every 500 ms) and
/// waits until the coordinator has read its processes' metrics at least once.
fn submit_paced_job(cluster: &Cluster) -> (String, Value) {
    let out = cluster.dir.join("out");
    let chk = cluster.dir.join("chk");
    let id = cluster.submit(args![
        "--source",
        "payments=gen:count=100000000",
        "--sink",
        sink(&out, "windows"),
        "--sink",
        sink(&out, "late_payments"),
        "--workers",
        1,
        "--processes",
        1,
        "--checkpoint-dir",
        chk.display(),
        "--checkpoint-interval",
        "500ms",
        "--rate",
        3000
    ]);
    cluster.wait_for_state(&id, "running");
    let started = Instant::now();
    loop {
        let view = cluster.status(&id);
        if view["metrics"]["events_read"].as_u64().is_some_and(|n| n > 0) {
            return (id, view);
        }
        assert!(started.elapsed() < PATIENCE, "the coordinator never read the job's metrics:\n{}", cluster.describe(&id, &view));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The records a step received, from `status --output json`.
fn step_records_in(view: &Value, step: &str) -> u64 {
    let steps = view["metrics"]["steps"].as_array().unwrap_or_else(|| panic!("steps in the metrics: {view:#}"));
    let found = steps.iter().find(|s| s["step"] == step).unwrap_or_else(|| panic!("no step {step} in {steps:#?}"));
    found["records_in"].as_u64().expect("records_in")
}

#[test]
fn status_shows_the_job_processes_metrics_and_they_move() {
    let cluster = Cluster::start("cluster-metrics", 1, 1, false);
    let (id, first) = submit_paced_job(&cluster);
    let endpoint = first["placements"][0]["metrics_address"].as_str().expect("the process's metrics address").to_string();
    assert!(endpoint.starts_with("127.0.0.1:"), "a loopback endpoint: {endpoint}");
    std::thread::sleep(Duration::from_secs(3));
    let second = cluster.status(&id);
    let (m1, m2) = (&first["metrics"], &second["metrics"]);
    assert!(m2["events_read"].as_u64() > m1["events_read"].as_u64(), "events read moved: {m1:#} then {m2:#}");
    assert!(step_records_in(&second, "throughput") > step_records_in(&first, "throughput"), "records in moved: {m1:#} then {m2:#}");
    assert!(m2["events_per_second"].as_f64().is_some_and(|r| r > 0.0), "a throughput: {m2:#}");
    assert!(m2["watermark_lag_ms"].as_u64().is_some(), "a watermark lag: {m2:#}");
    assert!(m2["backpressure_waits"].as_u64().is_some(), "backpressure: {m2:#}");
    assert!(m2["checkpoints"]["completed"].as_u64().is_some_and(|n| n > 0), "checkpoints: {m2:#}");
    assert_eq!(m2["endpoints"][0], format!("http://{endpoint}/metrics"));

    // The text form shows the same figures, and /metrics links the process's endpoint.
    let text = cluster.cli(args!["status", id]);
    text.assert_success();
    for expected in ["RECORDS IN", "throughput", "watermark lag:", "backpressure:", "checkpoints:", &endpoint] {
        assert!(text.stdout.contains(expected), "status shows {expected:?}:\n{}", text.stdout);
    }
    let (code, metrics) = raw_get(&cluster.url, "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "paystream_cluster_job_process_endpoint{{id=\"{id}\",job=\"{JOB}\",process=\"0\",url=\"http://{endpoint}/metrics\"}} 1"
        )),
        "/metrics links the job process's endpoint:\n{metrics}"
    );
    let (code, page) = raw_get(&format!("http://{endpoint}"), "/metrics", None);
    assert_eq!(code, 200, "the job process serves its metrics");
    assert!(page.contains("paystream_records_in_total"), "{page}");
    let (code, history) = raw_get(&cluster.url, &format!("/api/jobs/{id}/history"), None);
    assert_eq!(code, 200);
    let history: Value = serde_json::from_str(&history).expect("history JSON");
    assert!(history.as_array().is_some_and(|h| h.len() >= 2), "a history of samples: {history:#}");
    cluster.cli(args!["cancel", id]).assert_success();
}

/// Loads `url` in headless Chromium (with `scripts_for_ms`, letting its scripts run that long in
/// virtual time; not for a page that reloads itself, which never lets that time pass): the DOM
/// then, and the console lines Chromium logged. Killed after 60 s.
fn chromium_dom(chromium: &Path, url: &str, profile: &Path, scripts_for_ms: Option<u32>) -> (String, Vec<String>) {
    let output = Command::new("timeout")
        .arg("60")
        .arg(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom"])
        .args(scripts_for_ms.map(|ms| format!("--virtual-time-budget={ms}")))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    let console = String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect();
    (String::from_utf8_lossy(&output.stdout).into_owned(), console)
}

/// The value of attribute `name` of the first element that has `marker` in its tag.
fn attribute(dom: &str, marker: &str, name: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let tag_end = at + dom[at..].find('>')?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_end];
    let value = tag.split(&format!(" {name}=\"")).nth(1)?;
    Some(value.split('"').next()?.to_string())
}

#[test]
fn the_dashboard_shows_a_running_job_whose_counters_move_in_chromium() {
    let chromium =
        ["chromium", "chromium-browser", "google-chrome"].iter().map(|name| Path::new("/usr/bin").join(name)).find(|p| p.is_file());
    if !service_available("dashboard in headless Chromium", chromium.is_some(), "no chromium (apt-get install chromium chromium-driver)") {
        return;
    }
    let chromium = chromium.expect("chromium");
    let cluster = Cluster::start("cluster-dashboard", 1, 1, false);
    let (id, _) = submit_paced_job(&cluster);

    let (code, list) = raw_get(&cluster.url, "/", None);
    assert_eq!(code, 200);
    assert!(list.contains(&format!("<a href=\"/jobs/{id}\">{id}</a>")), "the list links the job:\n{list}");
    let (list_dom, console) = chromium_dom(&chromium, &cluster.url, &cluster.dir.join("chromium-0"), None);
    assert!(console.is_empty(), "console messages on /: {console:#?}");
    assert!(list_dom.contains("<td class=\"state\">running</td>"), "the list shows the job running:\n{list_dom}");

    let url = format!("{}/jobs/{id}", cluster.url);
    let mut seen = Vec::new();
    for round in 0..2 {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        let (dom, console) = chromium_dom(&chromium, &url, &cluster.dir.join(&format!("chromium-{}", round + 1)), Some(5000));
        assert!(console.is_empty(), "console messages on the job page: {console:#?}");
        assert!(dom.contains("<b id=\"state\">running</b>"), "the page shows the job running:\n{dom}");
        // Rendered once from the embedded data, then again from the API (the script polls).
        let renders: u32 = attribute(&dom, "data-renders", "data-renders").and_then(|r| r.parse().ok()).unwrap_or(0);
        assert!(renders >= 2, "the page refreshed itself from the API ({renders} renders):\n{dom}");
        assert!(dom.contains("class=\"series\""), "a chart is drawn:\n{dom}");
        assert!(dom.contains("class=\"step\" data-step=\"throughput\""), "the step graph shows the window step:\n{dom}");
        let records_in: u64 = attribute(&dom, "data-step=\"throughput\" data-records-in", "data-records-in")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("records in of step throughput on the page:\n{dom}"));
        seen.push(records_in);
    }
    assert!(seen[1] > seen[0], "the page's counters moved: {seen:?}");
    cluster.cli(args!["cancel", id]).assert_success();
}
