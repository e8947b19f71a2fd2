//! The coordinator (`paystream coordinator`): keeps the job records, places job processes on the
//! agents' slots, applies the restart strategy, and serves the JSON HTTP API.
//!
//! All state sits behind one mutex, held only for in-memory work and the small synchronous write
//! of a changed record; a savepoint request (seconds) runs outside it. A background tick (every
//! 200 ms) declares silent agents lost, starts restarting jobs whose backoff has passed, and places
//! jobs waiting for slots.
//!
//! `GET /` is a dashboard page, `GET /jobs/{id}` a job's page (see [`crate::dashboard`]); `GET /metrics` shows the jobs by state, each job's restarts and uptime, and the agents and
//! slots, in Prometheus text.
//!
//! On start the coordinator reloads every record from `--state-dir`. Processes keep running while
//! it is down; their agents report them (and any that ended meanwhile) with their next heartbeats.
//! An agent that does not return within `--agent-timeout` is declared lost, as while running.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::api::{
    AgentCommand, AgentView, ErrorAnswer, Heartbeat, HeartbeatAnswer, JobSummary, ProcessExit, ProcessKey, SavepointAnswer, SubmitRequest,
};
use crate::job::{humanize, JobRecord, JobState, Placement, RestartStrategy};
use crate::scrape::{JobMetrics, Observed, Sample, Target};
use crate::store::{job_number, Store};

/// The coordinator's settings (its command-line flags).
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// When set, every request must carry `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    pub restart: RestartStrategy,
    /// An agent silent this long is lost, and the processes it ran with it.
    pub agent_timeout: Duration,
}

/// How long a process whose start reached its agent may go unlisted by that agent's heartbeats
/// before it counts as gone (an agent that restarted and forgot it).
const UNLISTED_GRACE: Duration = Duration::from_secs(5);

/// Processes are placed only on agents heard from this recently: one that has gone silent (and
/// is not yet declared lost) would never start them.
const PLACE_ON_AGENTS_SEEN_WITHIN: Duration = Duration::from_secs(2);

/// How long the coordinator waits for a savepoint a client asked for.
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Binds `config.listen` (refusing an address other than loopback without a token), reloads the
/// records, calls `ready` with the bound address, and serves until the process ends.
pub async fn serve(config: CoordinatorConfig, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        bail!(
            "--listen {} is reachable from other machines: give --token-file FILE so every request must prove it holds the token",
            config.listen
        );
    }
    let store = Store::open(&config.state_dir)?;
    let mut inner = Inner {
        jobs: BTreeMap::new(),
        agents: BTreeMap::new(),
        next_id: 1,
        restart: config.restart,
        agent_timeout: config.agent_timeout,
        store,
    };
    inner.reload()?;
    let binaries = config.state_dir.join("binaries");
    std::fs::create_dir_all(&binaries).with_context(|| format!("cannot create {}", binaries.display()))?;
    let shared = Arc::new(Shared { inner: Mutex::new(inner), token: config.token.clone(), binaries, observed: Mutex::default() });
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let bound = listener.local_addr()?;
    let ticker = shared.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        loop {
            interval.tick().await;
            ticker.lock().tick();
        }
    });
    // Reads the running job processes' metrics endpoints, outside the records' lock.
    let scraper = shared.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(crate::scrape::SCRAPE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let targets = scraper.lock().scrape_targets();
            let figures = crate::scrape::scrape(targets).await;
            let mut observed = scraper.observed();
            for (id, m) in figures {
                observed.entry(id).or_default().record(m);
            }
        }
    });
    ready(bound);
    axum::serve(listener, router(shared)).await.context("the coordinator's HTTP server failed")
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/jobs", post(submit).get(list))
        .route("/api/jobs/{id}", get(status))
        .route("/api/jobs/{id}/history", get(history))
        .route("/jobs/{id}", get(job_page))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/stop", post(stop))
        .route("/api/jobs/{id}/savepoint", post(savepoint))
        .route("/api/binaries", post(upload_binary))
        .route("/api/binaries/{sha256}", get(download_binary))
        .route("/api/agents", get(agents))
        .route("/api/agents/{name}/heartbeat", post(heartbeat))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/login", get(login_form).post(login))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), authenticate))
        .with_state(shared)
}

struct Shared {
    inner: Mutex<Inner>,
    token: Option<String>,
    /// Uploaded job binaries, each named by its SHA-256.
    binaries: PathBuf,
    /// The jobs' metrics as last read from their processes, and their recent history; a lock of
    /// its own, so a scrape never waits for the records.
    observed: Mutex<BTreeMap<String, Observed>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock left the records as they were at the last save at worst.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn observed(&self) -> MutexGuard<'_, BTreeMap<String, Observed>> {
        self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The job's latest metrics, when its processes were read.
    fn job_metrics(&self, id: &str) -> Option<JobMetrics> {
        self.observed().get(id).and_then(|o| o.latest.clone())
    }
}

/// What the coordinator knows of an agent.
struct Agent {
    host: String,
    slots: usize,
    free_ports: Vec<u16>,
    last_seen: Instant,
    lost: bool,
    /// Commands for its next heartbeat's answer.
    commands: Vec<AgentCommand>,
}

struct Inner {
    store: Store,
    jobs: BTreeMap<String, JobRecord>,
    agents: BTreeMap<String, Agent>,
    next_id: u64,
    restart: RestartStrategy,
    agent_timeout: Duration,
}

impl Inner {
    /// Loads the saved records. Every process of a live job counts as delivered now: its agent has
    /// `--agent-timeout` to come back and list it.
    fn reload(&mut self) -> Result<()> {
        let now = Instant::now();
        for mut record in self.store.load_all()? {
            self.next_id = self.next_id.max(job_number(&record.id) + 1);
            if !record.state.is_final() {
                for placement in &mut record.placements {
                    placement.delivered_at = Some(now);
                    self.agents.entry(placement.agent.clone()).or_insert_with(|| Agent {
                        host: String::new(),
                        slots: 0,
                        free_ports: Vec::new(),
                        last_seen: now,
                        lost: false,
                        commands: Vec::new(),
                    });
                }
            }
            self.jobs.insert(record.id.clone(), record);
        }
        let live = self.jobs.values().filter(|r| !r.state.is_final()).count();
        tracing::info!(jobs = self.jobs.len(), live, "reloaded {} job records ({live} not final)", self.jobs.len());
        Ok(())
    }

    fn save(&self, id: &str) {
        if let Some(record) = self.jobs.get(id) {
            if let Err(e) = self.store.save(record) {
                tracing::error!(job = id, "cannot save the job record: {e:#}");
            }
        }
    }

    fn job_mut(&mut self, id: &str) -> Result<&mut JobRecord, ApiFailure> {
        self.jobs.get_mut(id).ok_or_else(|| unknown_job(id))
    }

    /// Queues kill commands for `processes` on their agents.
    fn kill(&mut self, processes: Vec<(String, ProcessKey)>) {
        for (agent, key) in processes {
            if let Some(agent) = self.agents.get_mut(&agent).filter(|a| !a.lost) {
                agent.commands.push(AgentCommand::Kill { key });
            }
        }
    }

    /// Slots taken on each agent by processes that have not ended.
    fn used_slots(&self) -> BTreeMap<String, usize> {
        let mut used = BTreeMap::new();
        for record in self.jobs.values().filter(|r| !r.state.is_final()) {
            for placement in record.placements.iter().filter(|p| p.exit.is_none()) {
                *used.entry(placement.agent.clone()).or_insert(0) += 1;
            }
        }
        used
    }

    fn process_exited(&mut self, id: &str, process: usize, exit: ProcessExit) {
        let restart = self.restart;
        let Some(record) = self.jobs.get_mut(id) else { return };
        let kills = record.process_exited(process, exit, &restart, crate::now_ms());
        self.kill(kills);
        self.save(id);
    }

    /// The metrics endpoints of the processes running now (started, not ended).
    fn scrape_targets(&self) -> Vec<Target> {
        self.jobs
            .values()
            .filter(|r| !r.state.is_final())
            .flat_map(|r| {
                r.placements.iter().filter(|p| p.pid.is_some() && p.exit.is_none()).filter_map(|p| {
                    let address = p.metrics_address.clone()?;
                    Some(Target { job: r.id.clone(), attempt: r.attempt, process: p.process, address })
                })
            })
            .collect()
    }

    fn tick(&mut self) {
        let now_ms = crate::now_ms();
        // Silent agents are lost, and every process they ran.
        let timeout = self.agent_timeout;
        let newly_lost: Vec<String> =
            self.agents.iter().filter(|(_, a)| !a.lost && a.last_seen.elapsed() > timeout).map(|(n, _)| n.clone()).collect();
        for name in newly_lost {
            tracing::warn!(agent = %name, "agent {name} lost: no heartbeat for {}", humanize(timeout));
            if let Some(agent) = self.agents.get_mut(&name) {
                agent.lost = true;
                agent.commands.clear();
                agent.free_ports.clear();
            }
            let on_it: Vec<(String, usize)> = self
                .jobs
                .values()
                .filter(|r| !r.state.is_final())
                .flat_map(|r| r.placements.iter().filter(|p| p.exit.is_none() && p.agent == name).map(|p| (r.id.clone(), p.process)))
                .collect();
            for (id, process) in on_it {
                let error = format!("agent {name} was lost (no heartbeat for {})", humanize(timeout));
                self.process_exited(&id, process, ProcessExit { code: None, signal: None, error: Some(error) });
            }
        }
        let ids: Vec<String> = self.jobs.iter().filter(|(_, r)| !r.state.is_final()).map(|(id, _)| id.clone()).collect();
        for id in ids {
            let restart = self.restart;
            let Some(record) = self.jobs.get_mut(&id) else { continue };
            let settling = record.peer_lost_since_ms.is_some();
            let kills = record.settle(&restart, now_ms);
            let settled = settling && record.peer_lost_since_ms.is_none();
            let restarted = record.restart_if_due(now_ms);
            self.kill(kills);
            if settled || restarted {
                self.save(&id);
            }
            let waiting = self.jobs.get(&id).is_some_and(|r| r.state == JobState::Scheduling && r.placements.is_empty());
            if waiting {
                self.place(&id);
            }
        }
    }

    /// Places the processes of a scheduling job on free slots, spreading them over the agents,
    /// and queues their start commands; leaves it waiting when the slots are not there.
    fn place(&mut self, id: &str) {
        let used = self.used_slots();
        let mut free: Vec<(String, usize)> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.lost && !a.host.is_empty() && a.last_seen.elapsed() < PLACE_ON_AGENTS_SEEN_WITHIN)
            .map(|(name, a)| (name.clone(), a.slots.saturating_sub(used.get(name).copied().unwrap_or(0)).min(a.free_ports.len() / 2)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let Some(record) = self.jobs.get(id) else { return };
        let needed = record.spec.processes;
        if free.iter().map(|(_, n)| n).sum::<usize>() < needed {
            return;
        }
        // Each process goes to the agent with the most free slots left (ties: by name).
        let mut chosen: Vec<String> = Vec::with_capacity(needed);
        for _ in 0..needed {
            free.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            chosen.push(free[0].0.clone());
            free[0].1 -= 1;
        }
        // Each process gets two of its agent's free ports: one for its peers, one for its metrics
        // endpoint (unless the job's flags name one: then the coordinator does not scrape it).
        let own_metrics = record.spec.run_args.iter().any(|a| a == "--metrics-addr" || a.starts_with("--metrics-addr="));
        let mut placements = Vec::with_capacity(needed);
        for (process, name) in chosen.iter().enumerate() {
            let Some(agent) = self.agents.get_mut(name) else { return };
            let Some(port) = agent.free_ports.pop() else { return };
            let metrics_port = if own_metrics { None } else { agent.free_ports.pop() };
            placements.push(Placement {
                process,
                agent: name.clone(),
                address: format!("{}:{port}", agent.host),
                metrics_address: metrics_port.map(|p| format!("{}:{p}", agent.host)),
                pid: None,
                exit: None,
                delivered_at: None,
            });
        }
        let Some(record) = self.jobs.get_mut(id) else { return };
        // A restart resumes from the newest complete checkpoint; the first attempt (or a restart
        // before any checkpoint) from the savepoint it was submitted with, if any.
        let latest = match (&record.spec.checkpoint_dir, record.attempt > 1) {
            (Some(dir), true) => paystream_engine::checkpoint::complete_checkpoints(dir).ok().and_then(|c| c.into_iter().next()),
            _ => None,
        };
        let restore = match (&latest, &record.spec.from_savepoint) {
            (Some(_), _) => Some("latest".to_string()),
            (None, Some(savepoint)) => Some(savepoint.display().to_string()),
            (None, None) => None,
        };
        record.restored_from =
            latest.map(|p| p.display().to_string()).or_else(|| record.spec.from_savepoint.as_ref().map(|p| p.display().to_string()));
        let hosts: Vec<String> = placements.iter().map(|p| p.address.clone()).collect();
        let mut commands = Vec::new();
        for placement in &placements {
            let mut args = vec!["run".to_string(), record.spec.job.clone()];
            args.extend(record.spec.run_args.iter().cloned());
            args.extend(["--processes".to_string(), needed.to_string(), "--process".to_string(), placement.process.to_string()]);
            if let Some(dir) = &record.spec.checkpoint_dir {
                args.extend(["--checkpoint-dir".to_string(), dir.display().to_string()]);
            }
            if let Some(restore) = &restore {
                args.extend(["--restore".to_string(), restore.clone()]);
            }
            if let Some(metrics) = &placement.metrics_address {
                args.extend(["--metrics-addr".to_string(), metrics.clone()]);
            }
            commands.push((
                placement.agent.clone(),
                AgentCommand::Start {
                    key: record.key(placement.process),
                    args,
                    hosts: hosts.clone(),
                    secret: record.secret.clone(),
                    cwd: record.spec.cwd.clone(),
                    binary: record.spec.binary.clone(),
                },
            ));
        }
        tracing::info!(
            job = id,
            attempt = record.attempt,
            "placing job {id} attempt {} on {} (restoring {})",
            record.attempt,
            hosts.join(", "),
            record.restored_from.as_deref().unwrap_or("nothing")
        );
        record.placements = placements;
        for (agent, command) in commands {
            if let Some(agent) = self.agents.get_mut(&agent) {
                agent.commands.push(command);
            }
        }
        self.save(id);
    }

    fn heartbeat(&mut self, name: &str, beat: Heartbeat) -> HeartbeatAnswer {
        let now = Instant::now();
        let mut answer = HeartbeatAnswer::default();
        // Ports that processes of this agent were given are not free, whatever the node says.
        let taken: BTreeSet<u16> = self
            .jobs
            .values()
            .filter(|r| !r.state.is_final())
            .flat_map(|r| r.placements.iter())
            .filter(|p| p.agent == name && p.exit.is_none())
            .flat_map(|p| std::iter::once(&p.address).chain(&p.metrics_address))
            .filter_map(|address| address.rsplit_once(':').and_then(|(_, port)| port.parse().ok()))
            .collect();
        let agent = self.agents.entry(name.to_string()).or_insert_with(|| {
            tracing::info!(agent = name, slots = beat.slots, "agent {name} registered with {} slots at {}", beat.slots, beat.host);
            Agent { host: String::new(), slots: 0, free_ports: Vec::new(), last_seen: now, lost: false, commands: Vec::new() }
        });
        if agent.lost {
            tracing::info!(agent = name, "agent {name} is back");
        }
        agent.host = beat.host.clone();
        agent.slots = beat.slots;
        agent.free_ports = beat.free_ports.iter().copied().filter(|p| !taken.contains(p)).collect();
        agent.last_seen = now;
        agent.lost = false;
        let now_ms = crate::now_ms();
        let mut listed = BTreeSet::new();
        for report in beat.processes {
            listed.insert(report.key.clone());
            let live = self.jobs.get(&report.key.job).is_some_and(|r| {
                !r.state.is_final()
                    && r.attempt == report.key.attempt
                    && r.placements.iter().any(|p| p.process == report.key.process && p.agent == name && p.exit.is_none())
            });
            match (report.exit, live) {
                (Some(exit), true) => {
                    // A process that ended between two heartbeats was never reported running.
                    if let Some(record) = self.jobs.get_mut(&report.key.job) {
                        let unseen = record.placements.iter().any(|p| p.process == report.key.process && p.pid.is_none());
                        if unseen && report.pid != 0 {
                            record.process_started(report.key.process, report.pid, now_ms);
                        }
                    }
                    self.process_exited(&report.key.job, report.key.process, exit);
                    answer.forget.push(report.key);
                }
                (Some(_), false) => answer.forget.push(report.key),
                (None, true) => {
                    let Some(record) = self.jobs.get_mut(&report.key.job) else { continue };
                    let known = record.placements.iter().any(|p| p.process == report.key.process && p.pid == Some(report.pid));
                    if !known {
                        record.process_started(report.key.process, report.pid, now_ms);
                        self.save(&report.key.job);
                    }
                }
                // A process of an old attempt, of a cancelled or unknown job, or of a placement
                // already counted as ended (its agent was lost): it must not run.
                (None, false) => {
                    tracing::info!(agent = name, job = %report.key.job, "killing pid {} of job {} attempt {} (no longer wanted)", report.pid, report.key.job, report.key.attempt);
                    answer.commands.push(AgentCommand::Kill { key: report.key });
                }
            }
        }
        // Delivered processes the agent no longer lists are gone.
        let vanished: Vec<(String, usize)> = self
            .jobs
            .values()
            .filter(|r| !r.state.is_final())
            .flat_map(|r| {
                r.placements
                    .iter()
                    .filter(|p| p.agent == name && p.exit.is_none() && !listed.contains(&r.key(p.process)))
                    .filter(|p| p.delivered_at.is_some_and(|at| at.elapsed() > UNLISTED_GRACE))
                    .map(|p| (r.id.clone(), p.process))
            })
            .collect();
        for (id, process) in vanished {
            let error = format!("agent {name} no longer runs it (did the agent restart?)");
            self.process_exited(&id, process, ProcessExit { code: None, signal: None, error: Some(error) });
        }
        // This answer delivers the agent's queued commands.
        let queued = self.agents.get_mut(name).map(|a| std::mem::take(&mut a.commands)).unwrap_or_default();
        for command in &queued {
            if let AgentCommand::Start { key, .. } = command {
                if let Some(placement) =
                    self.jobs.get_mut(&key.job).and_then(|r| r.placements.iter_mut().find(|p| p.process == key.process))
                {
                    placement.delivered_at = Some(now);
                }
            }
        }
        answer.commands.extend(queued);
        answer
    }

    /// The dashboard: the jobs (newest first, with their last transition) and the agents.
    fn dashboard(&self) -> String {
        let mut page = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
             <title>paystream cluster</title><style>body{font-family:sans-serif;margin:2em}\
             table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style>\
             </head><body><h1>paystream cluster</h1><h2>Jobs</h2><table><tr><th>id</th><th>job</th><th>state</th>\
             <th>restarts</th><th>processes</th><th>uptime</th><th>last transition</th></tr>",
        );
        let mut records: Vec<&JobRecord> = self.jobs.values().collect();
        records.sort_by_key(|r| std::cmp::Reverse(job_number(&r.id)));
        let now_ms = crate::now_ms();
        for r in records {
            let uptime =
                r.running_since_ms().map(|since| humanize(Duration::from_secs(now_ms.saturating_sub(since) / 1000))).unwrap_or_default();
            let last = r.history.last().map(|t| format!("{} -> {}: {}", t.from, t.to, t.cause)).unwrap_or_default();
            page.push_str(&format!(
                "<tr><td><a href=\"/jobs/{}\">{}</a></td><td>{}</td><td class=\"state\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html(&r.id),
                html(&r.id),
                html(&r.spec.job),
                r.state,
                r.restarts,
                r.spec.processes,
                uptime,
                html(&last)
            ));
        }
        page.push_str("</table><h2>Agents</h2><table><tr><th>name</th><th>host</th><th>slots used</th><th>state</th></tr>");
        let used = self.used_slots();
        for (name, a) in &self.agents {
            let state = if a.lost { "lost" } else { "alive" };
            let used = used.get(name).copied().unwrap_or(0);
            page.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{used} of {}</td><td>{state}</td></tr>",
                html(name),
                html(&a.host),
                a.slots
            ));
        }
        page.push_str("</table><p>The JSON API: <code>/api/jobs</code>, <code>/api/agents</code>; metrics: <code>/metrics</code>.</p></body></html>\n");
        page
    }

    /// The cluster's metrics in Prometheus text (the families are listed in the README).
    fn metrics(&self) -> String {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        type Labels = Vec<(String, String)>;
        let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let jobs = Family::<Labels, Gauge>::default();
        for state in JobState::ALL {
            let n = self.jobs.values().filter(|r| r.state == state).count();
            jobs.get_or_create(&label("state", state.name())).set(n as i64);
        }
        let restarts = Family::<Labels, Counter>::default();
        let uptime = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let now_ms = crate::now_ms();
        for record in self.jobs.values() {
            let labels = vec![("id".to_string(), record.id.clone()), ("job".to_string(), record.spec.job.clone())];
            restarts.get_or_create(&labels).inc_by(u64::from(record.restarts));
            if let Some(since) = record.running_since_ms() {
                uptime.get_or_create(&labels).set(now_ms.saturating_sub(since) as f64 / 1000.0);
            }
        }
        // Where each running process serves its own metrics, for a Prometheus that scrapes the jobs.
        let endpoints = Family::<Labels, Gauge>::default();
        for target in self.scrape_targets() {
            let job = self.jobs.get(&target.job).map(|r| r.spec.job.clone()).unwrap_or_default();
            let labels = vec![
                ("id".to_string(), target.job.clone()),
                ("job".to_string(), job),
                ("process".to_string(), target.process.to_string()),
                ("url".to_string(), format!("http://{}/metrics", target.address)),
            ];
            endpoints.get_or_create(&labels).set(1);
        }
        let agents = Family::<Labels, Gauge>::default();
        let lost = self.agents.values().filter(|a| a.lost).count();
        agents.get_or_create(&label("state", "alive")).set((self.agents.len() - lost) as i64);
        agents.get_or_create(&label("state", "lost")).set(lost as i64);
        let slots = Family::<Labels, Gauge>::default();
        let total: usize = self.agents.values().filter(|a| !a.lost).map(|a| a.slots).sum();
        slots.get_or_create(&label("kind", "total")).set(total as i64);
        slots.get_or_create(&label("kind", "used")).set(self.used_slots().values().sum::<usize>() as i64);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("paystream_cluster_jobs", "Jobs of the coordinator by state.", jobs);
        registry.register("paystream_cluster_job_restarts", "Restarts of each job.", restarts);
        registry.register("paystream_cluster_job_uptime_seconds", "Since each running job last became running.", uptime);
        registry.register(
            "paystream_cluster_job_process_endpoint",
            "1 for each running job process, labelled with the URL of its own metrics endpoint.",
            endpoints,
        );
        registry.register("paystream_cluster_agents", "Agents known to the coordinator, alive or lost.", agents);
        registry.register("paystream_cluster_slots", "Slots of the alive agents: total, and used by processes.", slots);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }

    fn view(&self, record: &JobRecord) -> JobView {
        let mut record = record.clone();
        record.secret.clear();
        let last_checkpoint = record
            .spec
            .checkpoint_dir
            .as_ref()
            .and_then(|dir| paystream_engine::checkpoint::complete_checkpoints(dir).ok())
            .and_then(|c| c.into_iter().next())
            .map(|p| p.display().to_string());
        let uptime_ms = record.running_since_ms().map(|since| crate::now_ms().saturating_sub(since));
        let waiting_for = (record.state == JobState::Scheduling && record.placements.is_empty()).then(|| {
            let used = self.used_slots();
            let free: usize = self
                .agents
                .iter()
                .filter(|(_, a)| !a.lost)
                .map(|(name, a)| a.slots.saturating_sub(used.get(name).copied().unwrap_or(0)))
                .sum();
            format!("{} free slots; {free} free now", record.spec.processes)
        });
        JobView { record, uptime_ms, last_checkpoint, waiting_for, metrics: None }
    }
}

/// `GET /api/jobs/{id}`: the record (without its secret), its uptime and last checkpoint.
#[derive(Serialize)]
pub struct JobView {
    #[serde(flatten)]
    record: JobRecord,
    /// Since the job last became running, while it runs.
    uptime_ms: Option<u64>,
    /// The newest complete checkpoint or savepoint in its checkpoint directory.
    last_checkpoint: Option<String>,
    /// What a job waiting to be placed waits for (slots).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
    /// Its processes' figures as the coordinator last read them (`GET /api/jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<JobMetrics>,
}

/// A failed request: its status and message, answered as `{"error": ...}`.
struct ApiFailure(StatusCode, String);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorAnswer { error: self.1 })).into_response()
    }
}

fn unknown_job(id: &str) -> ApiFailure {
    ApiFailure(StatusCode::NOT_FOUND, format!("no job {id} (see `paystream list`)"))
}

/// The dashboard's session cookie.
const SESSION_COOKIE: &str = "paystream_session";

/// The session cookie's value for `token`: derived from it, so the token itself never sits in a
/// browser, and valid as long as the token is.
fn session_value(token: &str) -> String {
    crate::sha256_hex(format!("paystream dashboard session\0{token}").as_bytes())
}

/// Refuses, with 401, a request without the token (when one is configured): the CLI and agents
/// send it as `Authorization: Bearer TOKEN`, a browser holds the session cookie `POST /login`
/// gave it. A browser asking for a dashboard page without either is sent to `/login`.
async fn authenticate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if let Some(token) = &shared.token {
        let path = request.uri().path();
        if path == "/login" {
            return next.run(request).await;
        }
        let headers = request.headers();
        let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let session = session_value(token);
        let cookie = headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(SESSION_COOKIE).and_then(|c| c.strip_prefix('=')))
            .any(|c| constant_time_eq(c.as_bytes(), session.as_bytes()));
        if !cookie && !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            if request.method() == axum::http::Method::GET && (path == "/" || path.starts_with("/jobs/")) {
                return axum::response::Redirect::to("/login").into_response();
            }
            return ApiFailure(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: give --token-file FILE with the coordinator's token".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// `GET /login`: a form asking for the coordinator's token (the dashboard of a coordinator
/// with `--token-file`).
async fn login_form() -> axum::response::Html<String> {
    axum::response::Html(login_page(""))
}

fn login_page(message: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>paystream - sign in</title><link rel=\"icon\" href=\"data:,\">\
         </head><body style=\"font-family:sans-serif;margin:2em\"><h1>paystream</h1><p>This coordinator needs its token \
         (the content of its <code>--token-file</code>).</p><p><b>{}</b></p><form method=\"post\" action=\"/login\">\
         <input type=\"password\" name=\"token\" autofocus size=\"40\"> <button type=\"submit\">Sign in</button></form></body></html>",
        html(message)
    )
}

/// `POST /login` (a form with `token`): the right token gets the session cookie (`HttpOnly`,
/// `SameSite=Strict`: another site's page cannot use it to press the dashboard's buttons) and
/// is sent to the dashboard; a wrong one gets the form again with 401.
async fn login(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Some(token) = &shared.token else {
        return axum::response::Redirect::to("/").into_response();
    };
    let given = form_field(&body, "token").unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, axum::response::Html(login_page("That is not the coordinator's token."))).into_response();
    }
    let cookie = format!("{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", session_value(token));
    ([(axum::http::header::SET_COOKIE, cookie)], axum::response::Redirect::to("/")).into_response()
}

/// Field `name` of an `application/x-www-form-urlencoded` body, decoded (`+` is a space, `%XX`
/// a byte).
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let value = text.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|v| v.strip_prefix('=')))?;
    let (bytes, mut out) = (value.as_bytes(), Vec::with_capacity(value.len()));
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if bytes.len() >= i + 3 => {
                let byte = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Compares without stopping at the first difference (the time taken says nothing of the token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn submit(State(shared): State<Arc<Shared>>, Json(spec): Json<SubmitRequest>) -> Result<(StatusCode, Json<JobView>), ApiFailure> {
    let bad = |m: String| ApiFailure(StatusCode::BAD_REQUEST, m);
    if spec.job.trim().is_empty() {
        return Err(bad("no job name given".into()));
    }
    if spec.processes == 0 {
        return Err(bad("processes must be at least 1".into()));
    }
    if !spec.cwd.is_absolute() {
        return Err(bad(format!("cwd {} is not an absolute path", spec.cwd.display())));
    }
    for (what, path) in [("checkpoint_dir", &spec.checkpoint_dir), ("from_savepoint", &spec.from_savepoint)] {
        if path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(bad(format!("{what} must be an absolute path")));
        }
    }
    if let Some(binary) = &spec.binary {
        if !crate::is_sha256(binary) || !shared.binaries.join(binary).is_file() {
            return Err(bad(format!("no uploaded binary {binary}: POST it to /api/binaries first (`submit --binary PATH` does)")));
        }
    }
    let secret = crate::random_hex(32).map_err(|e| ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let mut inner = shared.lock();
    let id = format!("job-{}", inner.next_id);
    inner.next_id += 1;
    let record = JobRecord::new(id.clone(), spec, secret, crate::now_ms());
    inner.jobs.insert(id.clone(), record);
    inner.save(&id);
    inner.place(&id);
    let view = inner.view(&inner.jobs[&id]);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<Vec<JobSummary>> {
    let inner = shared.lock();
    let mut jobs: Vec<JobSummary> = inner
        .jobs
        .values()
        .map(|r| JobSummary {
            id: r.id.clone(),
            job: r.spec.job.clone(),
            state: r.state,
            restarts: r.restarts,
            processes: r.spec.processes,
            submitted_ms: r.submitted_ms,
        })
        .collect();
    jobs.sort_by_key(|j| job_number(&j.id));
    Json(jobs)
}

async fn status(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<JobView>, ApiFailure> {
    let mut view = {
        let inner = shared.lock();
        let record = inner.jobs.get(&id).ok_or_else(|| unknown_job(&id))?;
        inner.view(record)
    };
    view.metrics = shared.job_metrics(&id);
    Ok(Json(view))
}

/// `GET /api/jobs/{id}/history`: the job's samples of the last minutes, oldest first.
async fn history(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Vec<Sample>>, ApiFailure> {
    if !shared.lock().jobs.contains_key(&id) {
        return Err(unknown_job(&id));
    }
    Ok(Json(shared.observed().get(&id).map(|o| o.history.iter().cloned().collect()).unwrap_or_default()))
}

async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<JobView>, ApiFailure> {
    let mut inner = shared.lock();
    let record = inner.job_mut(&id)?;
    if record.state.is_final() {
        return Err(ApiFailure(StatusCode::CONFLICT, format!("job {id} is already {}", record.state)));
    }
    let kills = record.cancel(crate::now_ms());
    inner.kill(kills);
    inner.save(&id);
    Ok(Json(inner.view(&inner.jobs[&id])))
}

async fn stop(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<SavepointAnswer>, ApiFailure> {
    take_savepoint(shared, id, true).await.map(Json)
}

async fn savepoint(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<SavepointAnswer>, ApiFailure> {
    take_savepoint(shared, id, false).await.map(Json)
}

/// Asks the running job for a savepoint through its control socket (process 0 listens in its
/// checkpoint directory), stopping it after with `stop`.
async fn take_savepoint(shared: Arc<Shared>, id: String, stop: bool) -> Result<SavepointAnswer, ApiFailure> {
    let dir = {
        let mut inner = shared.lock();
        let record = inner.job_mut(&id)?;
        let conflict = |m: String| ApiFailure(StatusCode::CONFLICT, m);
        let Some(dir) = record.spec.checkpoint_dir.clone() else {
            return Err(conflict(format!("job {id} takes no checkpoints (submit it with --checkpoint-dir DIR)")));
        };
        if record.state != JobState::Running {
            return Err(conflict(format!("job {id} is {}, not running", record.state)));
        }
        if stop {
            record.transition(JobState::Finishing, "stop with savepoint requested", crate::now_ms());
            inner.save(&id);
        }
        dir
    };
    let asked = tokio::task::spawn_blocking(move || paystream_engine::control::request_savepoint(&dir, stop, SAVEPOINT_TIMEOUT)).await;
    let asked = asked.map_err(anyhow::Error::from).and_then(|r| r);
    let mut inner = shared.lock();
    let record = inner.job_mut(&id)?;
    match asked {
        Ok(path) => {
            record.savepoints.push(path.clone());
            inner.save(&id);
            Ok(SavepointAnswer { id, savepoint: path })
        }
        Err(e) => {
            if stop && record.state == JobState::Finishing {
                record.transition(JobState::Running, &format!("the savepoint failed: {e:#}"), crate::now_ms());
                inner.save(&id);
            }
            Err(ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, format!("job {id}: no savepoint: {e:#}")))
        }
    }
}

async fn agents(State(shared): State<Arc<Shared>>) -> Json<Vec<AgentView>> {
    let inner = shared.lock();
    let used = inner.used_slots();
    Json(
        inner
            .agents
            .iter()
            .map(|(name, a)| AgentView {
                name: name.clone(),
                host: a.host.clone(),
                slots: a.slots,
                used_slots: used.get(name).copied().unwrap_or(0),
                lost: a.lost,
                last_heartbeat_ms_ago: a.last_seen.elapsed().as_millis() as u64,
            })
            .collect(),
    )
}

/// The largest binary `POST /api/binaries` takes.
const MAX_BINARY_BYTES: u64 = 1 << 30;

/// `POST /api/binaries`: stores a job binary under its SHA-256, written beside and renamed (an
/// upload cut off midway leaves nothing under a binary's name).
async fn upload_binary(State(shared): State<Arc<Shared>>, body: axum::body::Body) -> Result<Json<crate::api::BinaryAnswer>, ApiFailure> {
    use http_body_util::BodyExt;
    use sha2::Digest;
    use std::io::Write;
    let failed = |e: String| ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, e);
    let temporary = shared.binaries.join(format!(".upload-{}", crate::random_hex(8).map_err(|e| failed(format!("{e:#}")))?));
    let mut file = std::fs::File::create(&temporary).map_err(|e| failed(format!("cannot create {}: {e}", temporary.display())))?;
    let (mut hasher, mut size) = (sha2::Sha256::new(), 0u64);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| ApiFailure(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")))?.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > MAX_BINARY_BYTES {
            std::fs::remove_file(&temporary).ok();
            return Err(ApiFailure(StatusCode::PAYLOAD_TOO_LARGE, format!("a binary may have at most {MAX_BINARY_BYTES} bytes")));
        }
        hasher.update(&data);
        file.write_all(&data).map_err(|e| failed(format!("cannot write {}: {e}", temporary.display())))?;
    }
    file.sync_all().map_err(|e| failed(format!("cannot write {}: {e}", temporary.display())))?;
    let sha256: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let path = shared.binaries.join(&sha256);
    std::fs::rename(&temporary, &path).map_err(|e| failed(format!("cannot rename {}: {e}", temporary.display())))?;
    tracing::info!(sha256 = %sha256, size, "stored binary {sha256} ({size} bytes)");
    Ok(Json(crate::api::BinaryAnswer { sha256, size }))
}

/// `GET /api/binaries/{sha256}`: an uploaded binary, for the agents.
async fn download_binary(State(shared): State<Arc<Shared>>, Path(sha256): Path<String>) -> Result<Vec<u8>, ApiFailure> {
    if !crate::is_sha256(&sha256) {
        return Err(ApiFailure(StatusCode::BAD_REQUEST, format!("{sha256:?} is not a SHA-256 in lower-case hex")));
    }
    let path = shared.binaries.join(&sha256);
    let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiFailure(StatusCode::NOT_FOUND, format!("no binary {sha256}"))),
        Ok(Err(e)) => Err(ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read binary {sha256}: {e}"))),
        Err(e) => Err(ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `GET /`: the dashboard's list of jobs and agents, one server-rendered page (no script) that
/// reloads itself every 2 s; each job links to its page, `/jobs/{id}`.
async fn dashboard(State(shared): State<Arc<Shared>>) -> axum::response::Html<String> {
    axum::response::Html(shared.lock().dashboard())
}

/// `GET /jobs/{id}`: the job's page (see [`crate::dashboard`]).
async fn job_page(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<axum::response::Html<String>, ApiFailure> {
    let mut view = {
        let inner = shared.lock();
        let record = inner.jobs.get(&id).ok_or_else(|| unknown_job(&id))?;
        inner.view(record)
    };
    view.metrics = shared.job_metrics(&id);
    let history: Vec<Sample> = shared.observed().get(&id).map(|o| o.history.iter().cloned().collect()).unwrap_or_default();
    let json = |value: serde_json::Result<String>| value.map_err(|e| ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    let (view, history) = (json(serde_json::to_string(&view))?, json(serde_json::to_string(&history))?);
    Ok(axum::response::Html(crate::dashboard::job_page(&id, &view, &history)))
}

/// Text made safe inside HTML.
pub(crate) fn html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `GET /metrics`: the cluster in Prometheus text, read from the records at each scrape.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.lock().metrics();
    ([(axum::http::header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
}

async fn heartbeat(State(shared): State<Arc<Shared>>, Path(name): Path<String>, Json(beat): Json<Heartbeat>) -> Json<HeartbeatAnswer> {
    Json(shared.lock().heartbeat(&name, beat))
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_fields_are_decoded() {
        use super::form_field;
        assert_eq!(form_field(b"token=a-token-of-at-least-16-bytes", "token").as_deref(), Some("a-token-of-at-least-16-bytes"));
        assert_eq!(form_field(b"x=1&token=a+b%2Bc%26d%3D", "token").as_deref(), Some("a b+c&d="));
        assert_eq!(form_field(b"tokens=1", "token"), None);
        assert_eq!(form_field(b"token=%zz", "token"), None);
        assert_eq!(form_field(b"token=%C3%A9", "token").as_deref(), Some("\u{e9}"));
        assert_eq!(form_field(b"token=", "token").as_deref(), Some(""));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(super::constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!super::constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
