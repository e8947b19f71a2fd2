//! paystream on a cluster: a coordinator that keeps job records and decides every transition of a
//! job's lifecycle, agents that run the job processes of their node, and the HTTP client the CLI
//! and the agents speak to the coordinator with.
//!
//! - [`api`]: the JSON bodies of the HTTP API (requests, answers, agent heartbeats).
//! - [`job`]: a job's record and its state machine, with the restart strategy.
//! - [`coordinator`]: the service (`paystream coordinator`): HTTP routes, scheduling, persistence.
//! - [`scrape`]: the coordinator's reads of its job processes' metrics endpoints, and their history.
//! - [`agent`]: the node service (`paystream agent`): heartbeats, starting and killing processes.
//! - [`client`]: a small HTTP/1 JSON client over hyper.
//!
//! Agents poll: each heartbeat carries the agent's processes and free ports and returns the
//! commands for it (start, kill). The coordinator never calls an agent, so a coordinator that is
//! down leaves the jobs running, and agents report what happened meanwhile when it returns.

pub mod agent;
pub mod api;
pub mod client;
pub mod coordinator;
mod dashboard;
pub mod job;
pub mod scrape;
mod store;

pub use anyhow::Result;

/// Milliseconds since the Unix epoch: the time stamps of job records (they outlive a process, so
/// no `Instant`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `n` random bytes as hex, from the operating system.
pub fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes from the operating system: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a token file (`--token-file`): its content without the trailing newline; at least 16 bytes.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --token-file {}", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    if token.len() < 16 {
        anyhow::bail!("--token-file {}: the token must be at least 16 bytes", path.display());
    }
    Ok(token)
}

/// Runs `future` to its end on a runtime of its own with one thread: for the CLI's requests.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start an I/O runtime")?;
    Ok(runtime.block_on(future))
}

/// Runs the coordinator on a runtime of its own until it fails (see [`coordinator::serve`]).
pub fn run_coordinator(config: coordinator::CoordinatorConfig, ready: impl FnOnce(std::net::SocketAddr)) -> Result<()> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coordinator")
        .enable_all()
        .build()
        .context("cannot start the coordinator's runtime")?;
    runtime.block_on(coordinator::serve(config, ready))
}

/// The SHA-256 of `bytes` in lower-case hex: the name of an uploaded job binary.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a SHA-256 in lower-case hex (and so a safe file name).
pub fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
