//! The agent (`paystream agent`): offers a node's slots to the coordinator, starts the job
//! processes it is told to start (as its own children, `paystream run` of the same binary), kills
//! them when told, and reports how each ended.
//!
//! It polls: every heartbeat (500 ms by default) sends its processes and a few ports it found
//! free, and the answer carries its commands. When the coordinator cannot be reached the agent
//! keeps its processes running and keeps every exit until a coordinator has acknowledged it.
//!
//! Job processes die with their agent (`PR_SET_PDEATHSIG`); an agent that is cut off from the
//! coordinator but alive keeps them running.
//!
//! Each process writes its output to `WORK_DIR/JOB/attempt-N/process-I.log`; the last `error:`
//! line there is the cause the coordinator records when it fails.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::{AgentCommand, Heartbeat, HeartbeatAnswer, ProcessExit, ProcessKey, ProcessReport};
use crate::client::Client;

/// The environment variable through which a job's processes get their cluster secret (read by
/// `paystream run`).
pub const SECRET_ENV: &str = "PAYSTREAM_CLUSTER_SECRET";

/// The agent's settings (its command-line flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub coordinator: Client,
    /// The agent's name at the coordinator (unique per node).
    pub name: String,
    pub slots: usize,
    pub work_dir: PathBuf,
    /// The address job processes listen on for their peers.
    pub host: String,
    pub heartbeat: Duration,
    /// The binary the processes run unless a job brings its own (this one).
    pub executable: PathBuf,
}

struct Process {
    /// None when it could not be started (then `exit` says why).
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    exit: Option<ProcessExit>,
}

/// Runs the agent until `stop` is set.
/// The path of uploaded binary `sha256` in the agent's cache (`WORK_DIR/binaries/`), fetched from
/// the coordinator and checked against its name the first time.
fn binary(config: &AgentConfig, runtime: &tokio::runtime::Runtime, sha256: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if !crate::is_sha256(sha256) {
        anyhow::bail!("{sha256:?} is not the SHA-256 of a binary");
    }
    let dir = config.work_dir.join("binaries");
    let path = dir.join(sha256);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = runtime.block_on(config.coordinator.get_bytes(&format!("/api/binaries/{sha256}"), Duration::from_secs(600)))?;
    let got = crate::sha256_hex(&bytes);
    if got != sha256 {
        anyhow::bail!("binary {sha256} arrived with SHA-256 {got}: refused");
    }
    let temporary = dir.join(format!(".{sha256}.part"));
    fs::write(&temporary, &bytes).with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))?;
    fs::rename(&temporary, &path).with_context(|| format!("cannot rename {}", temporary.display()))?;
    tracing::info!("fetched binary {sha256} ({} bytes)", bytes.len());
    Ok(path)
}

pub fn run(config: AgentConfig, stop: &AtomicBool) -> Result<()> {
    fs::create_dir_all(&config.work_dir).with_context(|| format!("cannot create --work-dir {}", config.work_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the agent's I/O runtime")?;
    let mut processes: BTreeMap<ProcessKey, Process> = BTreeMap::new();
    let mut failures = 0u64;
    while !stop.load(Ordering::Relaxed) {
        reap(&mut processes);
        let beat = Heartbeat {
            host: config.host.clone(),
            slots: config.slots,
            // Two a slot: a process listens for its peers and serves its metrics.
            free_ports: free_ports(&config.host, 2 * config.slots),
            processes: processes.iter().map(|(key, p)| ProcessReport { key: key.clone(), pid: p.pid, exit: p.exit.clone() }).collect(),
        };
        let path = format!("/api/agents/{}/heartbeat", config.name);
        let answer: Result<HeartbeatAnswer> = runtime.block_on(config.coordinator.post(&path, &beat, Duration::from_secs(10)));
        match answer {
            Ok(answer) => {
                if failures > 0 {
                    tracing::info!("the coordinator at {} answers again", config.coordinator.url);
                    failures = 0;
                }
                for key in answer.forget {
                    if processes.get(&key).is_some_and(|p| p.exit.is_some()) {
                        processes.remove(&key);
                    }
                }
                for command in answer.commands {
                    obey(&config, &runtime, &mut processes, command);
                }
            }
            Err(e) => {
                // Once, then every 20th failure: a coordinator that is down for a while is normal.
                if failures.is_multiple_of(20) {
                    tracing::warn!("no answer from the coordinator ({e:#}); the job processes keep running, retrying");
                }
                failures += 1;
            }
        }
        std::thread::sleep(config.heartbeat);
    }
    Ok(())
}

/// Notes the processes that have ended.
fn reap(processes: &mut BTreeMap<ProcessKey, Process>) {
    for (key, process) in processes.iter_mut().filter(|(_, p)| p.exit.is_none()) {
        let Some(child) = process.child.as_mut() else { continue };
        match child.try_wait() {
            Ok(Some(status)) => {
                let exit = ProcessExit { code: status.code(), signal: status.signal(), error: last_error_line(&process.log) };
                tracing::info!(job = %key.job, "process {} of {} attempt {} (pid {}) ended: {}", key.process, key.job, key.attempt, process.pid, exit.describe());
                process.exit = Some(exit);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(job = %key.job, "cannot check on pid {}: {e}", process.pid),
        }
    }
}

fn obey(config: &AgentConfig, runtime: &tokio::runtime::Runtime, processes: &mut BTreeMap<ProcessKey, Process>, command: AgentCommand) {
    match command {
        AgentCommand::Start { key, args, hosts, secret, cwd, binary: uploaded } => {
            if processes.contains_key(&key) {
                return;
            }
            let dir = config.work_dir.join(&key.job).join(format!("attempt-{}", key.attempt));
            let log = dir.join(format!("process-{}.log", key.process));
            let executable = match &uploaded {
                Some(sha256) => binary(config, runtime, sha256),
                None => Ok(config.executable.clone()),
            };
            match executable.and_then(|executable| start(&executable, &dir, &log, &args, &hosts, &secret, &cwd, key.process)) {
                Ok(child) => {
                    tracing::info!(job = %key.job, "started process {} of {} attempt {} as pid {}", key.process, key.job, key.attempt, child.id());
                    processes.insert(key, Process { pid: child.id(), child: Some(child), log, exit: None });
                }
                Err(e) => {
                    tracing::error!(job = %key.job, "cannot start process {} of {}: {e:#}", key.process, key.job);
                    // Reported as a process that ended at once, with the reason.
                    let exit = ProcessExit { code: Some(1), signal: None, error: Some(format!("error: the agent cannot start it: {e:#}")) };
                    processes.insert(key, Process { child: None, pid: 0, log, exit: Some(exit) });
                }
            }
        }
        AgentCommand::Kill { key } => {
            let Some(process) = processes.get_mut(&key).filter(|p| p.exit.is_none()) else { return };
            let Some(child) = process.child.as_mut() else { return };
            tracing::info!(job = %key.job, "killing process {} of {} attempt {} (pid {})", key.process, key.job, key.attempt, process.pid);
            if let Err(e) = child.kill() {
                tracing::warn!(job = %key.job, "cannot kill pid {}: {e}", process.pid);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    executable: &Path,
    dir: &Path,
    log: &Path,
    args: &[String],
    hosts: &[String],
    secret: &str,
    cwd: &Path,
    process: usize,
) -> Result<Child> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = Command::new(executable);
    command.args(args);
    if hosts.len() > 1 {
        let hosts_file = dir.join(format!("hosts-{process}.txt"));
        fs::write(&hosts_file, hosts.iter().map(|h| format!("{h}\n")).collect::<String>())
            .with_context(|| format!("cannot write {}", hosts_file.display()))?;
        command.arg("--hosts").arg(&hosts_file);
    }
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    command.env(SECRET_ENV, secret).current_dir(cwd).stdin(Stdio::null()).stdout(out).stderr(err);
    // The process dies with the agent (SIGKILL when the agent's main thread, which starts every
    // process, ends): the coordinator declares a silent agent lost and restarts its jobs
    // elsewhere, and a process left running would hold the job's checkpoint directory.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().with_context(|| format!("cannot run {} in {}", executable.display(), cwd.display()))
}

/// The last `error:` line of a process's log (read from its last 64 KiB).
fn last_error_line(log: &Path) -> Option<String> {
    let mut file = File::open(log).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024))).ok()?;
    let mut text = String::new();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    text.lines().rev().find(|l| l.starts_with("error:")).map(str::to_string)
}

/// Up to `n` ports free on `host` just now: each bound to port 0, read and closed. The coordinator
/// assigns them to processes; a port taken again meanwhile fails that attempt's formation, which
/// restarts it.
fn free_ports(host: &str, n: usize) -> Vec<u16> {
    // All bound at once, so the system hands out `n` different ports.
    let listeners: Vec<std::net::TcpListener> = (0..n).filter_map(|_| std::net::TcpListener::bind((host, 0)).ok()).collect();
    listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()).collect()
}
