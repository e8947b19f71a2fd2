//! The JSON bodies of the coordinator's HTTP API, shared by the coordinator, the agents and the CLI.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::job::JobState;

/// `POST /api/jobs`: what to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The built-in job's name (see `paystream jobs`).
    pub job: String,
    /// The flags passed on to `paystream run JOB` as given (`--source`, `--sink`, `--set`,
    /// `--config`, `--workers`, `--checkpoint-interval`, ...).
    #[serde(default)]
    pub run_args: Vec<String>,
    /// Processes of the job, each on one agent slot.
    pub processes: usize,
    /// Where every process checkpoints (reachable by all agents); none: no checkpoints, and a
    /// restart starts from scratch.
    #[serde(default)]
    pub checkpoint_dir: Option<PathBuf>,
    /// The savepoint the first attempt restores.
    #[serde(default)]
    pub from_savepoint: Option<PathBuf>,
    /// The directory relative paths of the flags are read from: where `submit` ran.
    pub cwd: PathBuf,
    /// The SHA-256 of an uploaded binary (`POST /api/binaries`) to run the job with; none: the
    /// agents' own binary.
    #[serde(default)]
    pub binary: Option<String>,
}

/// `POST /api/binaries`: the uploaded binary's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BinaryAnswer {
    pub sha256: String,
    pub size: u64,
}

/// `POST /api/jobs/{id}/stop` and `/savepoint`: the savepoint taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavepointAnswer {
    pub id: String,
    pub savepoint: PathBuf,
}

/// An error answer: `{"error": "..."}` with a 4xx or 5xx status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
}

/// Names one process of one attempt of a job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessKey {
    pub job: String,
    pub attempt: u32,
    pub process: usize,
}

/// How a job process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    /// The exit code, when it exited.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Its last `error:` line, or why the coordinator counts it as ended (a lost agent).
    #[serde(default)]
    pub error: Option<String>,
}

impl ProcessExit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "exit code 1: error: ..." or "killed by signal 9".
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "gone".to_string(),
        };
        match &self.error {
            Some(error) => format!("{how}: {error}"),
            None => how,
        }
    }
}

/// What an agent knows of one of its processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessReport {
    #[serde(flatten)]
    pub key: ProcessKey,
    pub pid: u32,
    /// Set once it ended; reported until the coordinator says to forget it.
    #[serde(default)]
    pub exit: Option<ProcessExit>,
}

/// `POST /api/agents/{name}/heartbeat`: an agent's node, its processes and ports it found free.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The address the agent's job processes listen on (`--host`).
    pub host: String,
    pub slots: usize,
    /// Ports free on the node just now (bound to port 0 and closed), for the coordinator to assign.
    pub free_ports: Vec<u16>,
    pub processes: Vec<ProcessReport>,
}

/// The answer to a heartbeat: what the agent must do.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub commands: Vec<AgentCommand>,
    /// Ended processes the coordinator has recorded: the agent stops reporting them.
    pub forget: Vec<ProcessKey>,
}

/// A command to an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum AgentCommand {
    /// Start `paystream ARGS` (the agent adds `--hosts FILE` with `hosts` when there are several).
    Start {
        #[serde(flatten)]
        key: ProcessKey,
        args: Vec<String>,
        hosts: Vec<String>,
        /// The job's cluster secret, handed over in `PAYSTREAM_CLUSTER_SECRET`.
        secret: String,
        cwd: PathBuf,
        /// The SHA-256 of the uploaded binary to run (fetched from `GET /api/binaries/{sha256}`);
        /// none: the agent's own.
        #[serde(default)]
        binary: Option<String>,
    },
    /// Kill the process (SIGKILL).
    Kill {
        #[serde(flatten)]
        key: ProcessKey,
    },
}

/// `GET /api/agents`: one agent as the coordinator sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentView {
    pub name: String,
    pub host: String,
    pub slots: usize,
    pub used_slots: usize,
    pub lost: bool,
    pub last_heartbeat_ms_ago: u64,
}

/// A line of `GET /api/jobs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub job: String,
    pub state: JobState,
    pub restarts: u32,
    pub processes: usize,
    pub submitted_ms: u64,
}
