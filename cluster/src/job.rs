//! A job's record and its lifecycle: the state machine and the restart strategy.
//!
//! Every transition goes through [`JobRecord::transition`], which refuses one the machine does not
//! have and logs each with its cause in the record's history (shown by `paystream status`):
//!
//! ```text
//! created ─► scheduling ─► running ─► finished
//!               ▲  │          │ └──► finishing (stop with savepoint) ─► finished
//!               │  ▼          ▼
//!               restarting ◄──┘ (a process died) ─► failed (past the restart limit)
//! any live state ─► cancelling ─► cancelled
//! ```
//!
//! The record is plain data: the coordinator applies what a method returns (processes to kill) and
//! persists the record after each change.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::{ProcessExit, ProcessKey, SubmitRequest};

/// A job's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Created,
    /// Waiting for slots, or for its processes to start.
    Scheduling,
    Running,
    /// A process died: the others are being stopped, then the job waits out its backoff.
    Restarting,
    /// Stopping after a savepoint.
    Finishing,
    Finished,
    Cancelling,
    Cancelled,
    Failed,
}

impl JobState {
    /// Every state, in the order of the lifecycle.
    pub const ALL: [JobState; 9] = [
        JobState::Created,
        JobState::Scheduling,
        JobState::Running,
        JobState::Restarting,
        JobState::Finishing,
        JobState::Finished,
        JobState::Cancelling,
        JobState::Cancelled,
        JobState::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Created => "created",
            JobState::Scheduling => "scheduling",
            JobState::Running => "running",
            JobState::Restarting => "restarting",
            JobState::Finishing => "finishing",
            JobState::Finished => "finished",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        }
    }

    /// Finished, cancelled or failed: nothing runs and nothing will.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Finished | JobState::Cancelled | JobState::Failed)
    }

    /// The transitions the machine has.
    fn may_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Created, Scheduling)
                | (Scheduling, Running | Restarting | Failed)
                | (Running, Finished | Finishing | Restarting | Failed)
                | (Finishing, Finished | Running | Restarting | Failed)
                | (Restarting, Scheduling | Failed)
                | (Created | Scheduling | Running | Restarting | Finishing, Cancelling)
                | (Cancelling, Cancelled)
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One transition, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from: JobState,
    pub to: JobState,
    pub cause: String,
}

/// Where one process of the current attempt runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Placement {
    pub process: usize,
    pub agent: String,
    /// `host:port` the process listens on for its peers.
    pub address: String,
    /// `host:port` of the process's metrics endpoint (`--metrics-addr`), which the coordinator
    /// scrapes; none when the job's own flags already name one.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Once its agent reported it started.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub exit: Option<ProcessExit>,
    /// When its start command reached the agent (or the coordinator reloaded the record): a
    /// heartbeat that no longer lists the process after this means the process is gone.
    #[serde(skip)]
    pub delivered_at: Option<Instant>,
}

/// When and how often a job whose process died is started again (Flink's exponential-delay
/// strategy, with a failure-rate limit).
#[derive(Clone, Copy, Debug)]
pub struct RestartStrategy {
    /// Restarts allowed within `window`; one more and the job fails.
    pub attempts: u32,
    pub window: Duration,
    /// The wait before the first restart; doubled for each restart within the window.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy {
            attempts: 10,
            window: Duration::from_secs(600),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RestartStrategy {
    /// The wait before a restart that follows `recent` restarts within the window.
    pub fn delay(&self, recent: u32) -> Duration {
        let factor = 1u32.checked_shl(recent.min(20)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What the coordinator keeps of a job (persisted as JSON under `--state-dir`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec: SubmitRequest,
    /// The job's cluster secret, handed to its processes; never shown by the API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    pub state: JobState,
    pub submitted_ms: u64,
    /// Attempts are numbered from 1; each restart starts a new one.
    pub attempt: u32,
    pub restarts: u32,
    /// When each restart began (for the restart limit's window).
    #[serde(default)]
    pub restart_times_ms: Vec<u64>,
    /// A restarting job is scheduled again at this time.
    #[serde(default)]
    pub next_start_ms: Option<u64>,
    /// What the current attempt restored: a checkpoint or savepoint path, or none (from scratch).
    #[serde(default)]
    pub restored_from: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub savepoints: Vec<PathBuf>,
    pub history: Vec<Transition>,
    /// The processes of the current attempt (empty while waiting for slots).
    #[serde(default)]
    pub placements: Vec<Placement>,
    /// Since when a process that failed only because a peer was lost waits for that peer's own
    /// exit, the failure's cause (see [`JobRecord::process_exited`]).
    #[serde(default)]
    pub peer_lost_since_ms: Option<u64>,
}

/// How long a process that ended because a peer was lost waits for the peer's report (the root
/// cause) before the job restarts with its own.
const ROOT_CAUSE_GRACE_MS: u64 = 3_000;

/// Whether a process ended only because another process of the job was lost (its `error:` line).
fn lost_a_peer(exit: &ProcessExit) -> bool {
    exit.error.as_deref().is_some_and(|e| e.contains("was lost mid-run"))
}

impl JobRecord {
    pub fn new(id: String, spec: SubmitRequest, secret: String, now_ms: u64) -> JobRecord {
        let mut record = JobRecord {
            id,
            spec,
            secret,
            state: JobState::Created,
            submitted_ms: now_ms,
            attempt: 1,
            restarts: 0,
            restart_times_ms: Vec::new(),
            next_start_ms: None,
            restored_from: None,
            last_error: None,
            savepoints: Vec::new(),
            history: Vec::new(),
            placements: Vec::new(),
            peer_lost_since_ms: None,
        };
        record.transition(JobState::Scheduling, "submitted", now_ms);
        record
    }

    /// Moves to `to`, logging `cause`; false (and nothing changes) for a transition the machine
    /// does not have.
    pub fn transition(&mut self, to: JobState, cause: &str, now_ms: u64) -> bool {
        if !self.state.may_become(to) {
            tracing::warn!(job = %self.id, from = %self.state, to = %to, cause, "transition refused");
            return false;
        }
        tracing::info!(job = %self.id, from = %self.state, to = %to, cause, "job {} {} -> {}: {cause}", self.id, self.state, to);
        self.history.push(Transition { at_ms: now_ms, from: self.state, to, cause: cause.to_string() });
        self.state = to;
        true
    }

    pub fn key(&self, process: usize) -> ProcessKey {
        ProcessKey { job: self.id.clone(), attempt: self.attempt, process }
    }

    /// Processes of the current attempt that have not ended, with their agents.
    pub fn live(&self) -> Vec<(String, ProcessKey)> {
        self.placements.iter().filter(|p| p.exit.is_none()).map(|p| (p.agent.clone(), self.key(p.process))).collect()
    }

    /// Since when the job has been running (the last transition to running), if it runs.
    pub fn running_since_ms(&self) -> Option<u64> {
        if self.state != JobState::Running {
            return None;
        }
        self.history.iter().rev().find(|t| t.to == JobState::Running).map(|t| t.at_ms)
    }

    /// An agent reported process `process` of the current attempt running as `pid`.
    pub fn process_started(&mut self, process: usize, pid: u32, now_ms: u64) {
        let Some(placement) = self.placements.iter_mut().find(|p| p.process == process) else { return };
        placement.pid = Some(pid);
        if self.state == JobState::Scheduling && self.placements.iter().all(|p| p.pid.is_some()) {
            let cause = format!("all {} processes started", self.placements.len());
            self.transition(JobState::Running, &cause, now_ms);
        }
    }

    /// Process `process` of the current attempt ended (or its agent was lost). Returns the
    /// processes to kill.
    pub fn process_exited(
        &mut self,
        process: usize,
        exit: ProcessExit,
        strategy: &RestartStrategy,
        now_ms: u64,
    ) -> Vec<(String, ProcessKey)> {
        let Some(placement) = self.placements.iter_mut().find(|p| p.process == process && p.exit.is_none()) else {
            return Vec::new();
        };
        let agent = placement.agent.clone();
        placement.exit = Some(exit.clone());
        let all_ended = self.placements.iter().all(|p| p.exit.is_some());
        match self.state {
            JobState::Cancelling => {
                if all_ended {
                    self.transition(JobState::Cancelled, "every process has ended", now_ms);
                }
                Vec::new()
            }
            JobState::Restarting | JobState::Failed => Vec::new(),
            JobState::Scheduling | JobState::Running | JobState::Finishing if exit.success() => {
                if all_ended && self.placements.iter().all(|p| p.exit.as_ref().is_some_and(ProcessExit::success)) {
                    let cause = match (self.state, self.savepoints.last()) {
                        (JobState::Finishing, Some(savepoint)) => format!("stopped after savepoint {}", savepoint.display()),
                        _ => "every process finished its input (exit code 0)".to_string(),
                    };
                    // A stop asked for while scheduling finishes through running.
                    if self.state == JobState::Scheduling {
                        self.transition(JobState::Running, "all processes started", now_ms);
                    }
                    self.transition(JobState::Finished, &cause, now_ms);
                }
                Vec::new()
            }
            JobState::Scheduling | JobState::Running | JobState::Finishing => {
                // When a process dies its peers end too, each saying a peer was lost; their
                // reports may come first. The cause is the process that died.
                if lost_a_peer(&exit) && !all_ended {
                    self.peer_lost_since_ms.get_or_insert(now_ms);
                    return Vec::new();
                }
                self.failed(process, &agent, exit, strategy, now_ms)
            }
            JobState::Created | JobState::Finished | JobState::Cancelled => Vec::new(),
        }
    }

    /// A process that ended because a peer was lost, whose peer has not been reported within
    /// the grace, is taken as the cause. Returns the processes to kill.
    pub fn settle(&mut self, strategy: &RestartStrategy, now_ms: u64) -> Vec<(String, ProcessKey)> {
        let waiting = matches!(self.state, JobState::Scheduling | JobState::Running | JobState::Finishing);
        if !waiting || self.peer_lost_since_ms.is_none_or(|since| now_ms.saturating_sub(since) < ROOT_CAUSE_GRACE_MS) {
            return Vec::new();
        }
        let first = self.placements.iter().find_map(|p| p.exit.clone().filter(lost_a_peer).map(|exit| (p.process, p.agent.clone(), exit)));
        let Some((process, agent, exit)) = first else {
            self.peer_lost_since_ms = None;
            return Vec::new();
        };
        self.failed(process, &agent, exit, strategy, now_ms)
    }

    /// Process `process` failed the attempt: restart, or fail. Returns the processes to kill.
    fn failed(
        &mut self,
        process: usize,
        agent: &str,
        exit: ProcessExit,
        strategy: &RestartStrategy,
        now_ms: u64,
    ) -> Vec<(String, ProcessKey)> {
        self.peer_lost_since_ms = None;
        let what = format!("process {process} on agent {agent} ended: {}", exit.describe());
        self.last_error = Some(what.clone());
        if exit.code == Some(2) {
            // A bad flag, config or URI: another attempt would fail the same way.
            self.transition(JobState::Failed, &format!("{what} (a bad flag or configuration: not restarted)"), now_ms);
        } else {
            self.fail_or_restart(what, strategy, now_ms);
        }
        self.live()
    }

    /// After a failure: restart with backoff, or fail past the restart limit.
    fn fail_or_restart(&mut self, what: String, strategy: &RestartStrategy, now_ms: u64) {
        let window_ms = strategy.window.as_millis() as u64;
        let recent = self.restart_times_ms.iter().filter(|t| now_ms.saturating_sub(**t) < window_ms).count() as u32;
        if recent >= strategy.attempts {
            let cause = format!(
                "{what}; {recent} restarts within {} reached the limit (--restart-attempts {})",
                humanize(strategy.window),
                strategy.attempts
            );
            self.transition(JobState::Failed, &cause, now_ms);
            return;
        }
        let delay = strategy.delay(recent);
        let from = if self.spec.checkpoint_dir.is_some() {
            "from its latest complete checkpoint"
        } else {
            "from scratch (the job takes no checkpoints)"
        };
        let cause = format!("{what}; restart {} in {} {from}", self.restarts + 1, humanize(delay));
        if self.transition(JobState::Restarting, &cause, now_ms) {
            self.restarts += 1;
            self.restart_times_ms.push(now_ms);
            self.next_start_ms = Some(now_ms + delay.as_millis() as u64);
        }
    }

    /// A restarting job whose processes have all ended and whose backoff has passed goes back to
    /// scheduling, as a new attempt. True when it did.
    pub fn restart_if_due(&mut self, now_ms: u64) -> bool {
        if self.state != JobState::Restarting || self.placements.iter().any(|p| p.exit.is_none()) {
            return false;
        }
        if self.next_start_ms.is_some_and(|at| now_ms < at) {
            return false;
        }
        self.attempt += 1;
        self.placements.clear();
        self.next_start_ms = None;
        let cause = format!("attempt {}", self.attempt);
        self.transition(JobState::Scheduling, &cause, now_ms)
    }

    /// Cancels the job: returns the processes to kill.
    pub fn cancel(&mut self, now_ms: u64) -> Vec<(String, ProcessKey)> {
        if !self.transition(JobState::Cancelling, "cancel requested", now_ms) {
            return Vec::new();
        }
        let live = self.live();
        if live.is_empty() {
            self.transition(JobState::Cancelled, "no process was running", now_ms);
        }
        live
    }
}

/// `1s`, `2m`, `10m 30s`.
pub fn humanize(duration: Duration) -> String {
    let ms = duration.as_millis() as u64;
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(checkpoints: bool) -> JobRecord {
        let spec = SubmitRequest {
            job: "throughput-windows".into(),
            run_args: Vec::new(),
            processes: 2,
            checkpoint_dir: checkpoints.then(|| PathBuf::from("/tmp/chk")),
            from_savepoint: None,
            cwd: PathBuf::from("/"),
            binary: None,
        };
        let mut r = JobRecord::new("job-1".into(), spec, String::new(), 0);
        for process in 0..2 {
            r.placements.push(Placement {
                process,
                agent: format!("a{process}"),
                address: format!("127.0.0.1:{}", 7100 + process),
                metrics_address: None,
                pid: None,
                exit: None,
                delivered_at: None,
            });
        }
        r
    }

    fn died(code: i32) -> ProcessExit {
        ProcessExit { code: Some(code), signal: None, error: Some("error: boom".into()) }
    }

    #[test]
    fn walks_from_submit_to_finished() {
        let mut r = record(true);
        assert_eq!(r.state, JobState::Scheduling);
        r.process_started(0, 10, 1);
        assert_eq!(r.state, JobState::Scheduling, "one of two started");
        r.process_started(1, 11, 2);
        assert_eq!(r.state, JobState::Running);
        let strategy = RestartStrategy::default();
        assert!(r.process_exited(1, died(0), &strategy, 3).is_empty());
        assert_eq!(r.state, JobState::Running, "one of two finished");
        r.process_exited(0, died(0), &strategy, 4);
        assert_eq!(r.state, JobState::Finished);
        let states: Vec<_> = r.history.iter().map(|t| t.to).collect();
        assert_eq!(states, [JobState::Scheduling, JobState::Running, JobState::Finished]);
    }

    #[test]
    fn a_dead_process_restarts_the_job_with_backoff_then_fails_past_the_limit() {
        let strategy = RestartStrategy {
            attempts: 2,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let mut r = record(true);
        r.process_started(0, 10, 0);
        r.process_started(1, 11, 0);
        let kill = r.process_exited(1, ProcessExit { code: None, signal: Some(9), error: None }, &strategy, 1_000);
        assert_eq!(kill.len(), 1, "the other process is stopped");
        assert_eq!(r.state, JobState::Restarting);
        assert_eq!(r.restarts, 1);
        assert!(r.history.last().unwrap().cause.contains("killed by signal 9"), "{:?}", r.history.last());
        assert!(!r.restart_if_due(5_000), "the other process has not ended");
        r.process_exited(0, died(1), &strategy, 1_500);
        assert!(!r.restart_if_due(1_900), "backoff of 1s");
        assert!(r.restart_if_due(2_000));
        assert_eq!((r.state, r.attempt), (JobState::Scheduling, 2));
        // Second failure: backoff doubles.
        r.placements = record(true).placements;
        r.process_exited(0, died(1), &strategy, 3_000);
        assert_eq!(r.next_start_ms, Some(5_000));
        r.process_exited(1, died(1), &strategy, 3_000);
        assert!(r.restart_if_due(5_000));
        r.placements = record(true).placements;
        r.process_exited(0, died(1), &strategy, 6_000);
        assert_eq!(r.state, JobState::Failed, "a third failure within the window is past the limit of 2");
        assert!(r.history.last().unwrap().cause.contains("--restart-attempts 2"));
    }

    #[test]
    fn the_cause_is_the_process_that_died_not_the_peer_that_lost_it() {
        let strategy = RestartStrategy::default();
        let mut r = record(true);
        r.process_started(0, 10, 0);
        r.process_started(1, 11, 0);
        let lost = ProcessExit { code: Some(1), signal: None, error: Some("error: process 1 (127.0.0.1:1) was lost mid-run".into()) };
        assert!(r.process_exited(0, lost.clone(), &strategy, 100).is_empty());
        assert_eq!(r.state, JobState::Running, "waits for the root cause");
        r.process_exited(1, ProcessExit { code: None, signal: Some(9), error: None }, &strategy, 200);
        assert_eq!(r.state, JobState::Restarting);
        assert!(r.history.last().unwrap().cause.starts_with("process 1 on agent a1 ended: killed by signal 9"), "{:?}", r.history.last());

        // When the peer is never reported (its node is silent), the grace ends it.
        let mut r = record(true);
        r.process_started(0, 10, 0);
        r.process_started(1, 11, 0);
        r.process_exited(0, lost, &strategy, 100);
        assert!(r.settle(&strategy, 1_000).is_empty());
        assert_eq!(r.settle(&strategy, 3_100).len(), 1, "process 1 is killed");
        assert_eq!(r.state, JobState::Restarting);
        assert!(r.history.last().unwrap().cause.contains("was lost mid-run"));
    }

    #[test]
    fn a_bad_configuration_is_not_restarted() {
        let mut r = record(false);
        r.process_exited(0, died(2), &RestartStrategy::default(), 1);
        assert_eq!(r.state, JobState::Failed);
    }

    #[test]
    fn cancel_waits_for_every_process() {
        let mut r = record(false);
        assert_eq!(r.cancel(1).len(), 2);
        assert_eq!(r.state, JobState::Cancelling);
        r.process_exited(0, died(137), &RestartStrategy::default(), 2);
        assert_eq!(r.state, JobState::Cancelling);
        r.process_exited(1, died(137), &RestartStrategy::default(), 3);
        assert_eq!(r.state, JobState::Cancelled);
        assert!(!r.transition(JobState::Running, "nothing leaves a final state", 4));
    }
}
