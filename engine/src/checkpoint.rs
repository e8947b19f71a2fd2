//! Checkpoints: consistent snapshots of a running job, and restoring from them.
//!
//! Timestamps are `(epoch, watermark)` pairs ([`Time`](crate::time::Time)). Every
//! `--checkpoint-interval` each source takes its part of checkpoint `k` (the read position of each
//! of its partitions, after the last record of epoch `k`) and moves on to epoch `k + 1`. Stateful
//! operators apply records of epoch `k + 1` only once their input has passed epoch `k`, and then
//! write their state for `k`, per key group; sinks write the output of epoch `k` to a staged file.
//! When every part of `k` is durable, a coordinator thread in process 0 writes `MANIFEST` for `k`
//! (write, fsync, rename, fsync the directory); only then is checkpoint `k` complete, and only then
//! do sinks publish the output of epoch `k`. A restore loads the newest complete checkpoint whose
//! parts all verify, publishes staged output of epochs up to it, deletes later staged output, and
//! resumes sources at their recorded positions: the committed output equals that of a run that
//! never failed.
//!
//! Layout of the checkpoint directory:
//!
//! ```text
//! DIR/chk-0000000007/MANIFEST           complete checkpoint 7 (JSON)
//! DIR/chk-0000000007/source-payments-w0.part
//! DIR/chk-0000000007/state-velocity-w1.part
//! DIR/chk-0000000007/sink-alerts.part
//! DIR/savepoint-0000000007/...          a savepoint: a checkpoint never deleted automatically
//! ```
//!
//! A part file is `PSCK`, a format version (u32), the payload length (u64), a CRC-32C checksum of
//! the payload (u32), then the payload (bincode); the integers are little-endian. A truncated or
//! corrupt part makes its checkpoint unusable; the restore then falls back to the previous complete
//! checkpoint. A part of another format version is refused by name: it is restored by the
//! paystream that wrote it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Result;

const MAGIC: &[u8; 4] = b"PSCK";
/// The version of the part format; a reader refuses other versions. Bumped whenever what a step
/// saves changes shape, so an old checkpoint is refused by name instead of misread:
/// * 2: the joins of `auth-match` (`auth-window`) and `fraud-detection` (`unauthorized`) hold
///   only the fields they use of payments and authorizations.
/// * 3: the checksum is CRC-32C (u32) instead of FNV-1a (u64), so the header is 20 bytes, not 24.
/// * 4: tumbling and sliding windows also save their early-firing progress per key and window.
pub const FORMAT_VERSION: u32 = 4;
/// The bytes before a part's payload: magic, version, payload length, checksum.
const HEADER_LEN: usize = 20;
const MANIFEST: &str = "MANIFEST";

/// How a run checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// Where checkpoints go.
    pub dir: PathBuf,
    /// How often sources start a new epoch.
    pub interval: Duration,
    /// How many complete checkpoints to keep.
    pub retain: usize,
}

/// A participant in checkpoints: whose part a file holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Participant {
    /// A source's read positions on one worker.
    Source { name: String, worker: usize },
    /// A stateful step's state on one worker.
    State { step: String, worker: usize },
    /// A sink's staged output (written by worker 0).
    Sink { name: String },
    /// A parallel sink's pre-commits on one worker.
    ParallelSink { name: String, worker: usize },
    /// The last part of a participant that finished; it stands for every later epoch.
    Final(Box<Participant>),
}

impl Participant {
    /// The part's file name.
    pub fn file_name(&self) -> String {
        match self {
            Participant::Source { name, worker } => format!("source-{name}-w{worker}.part"),
            Participant::State { step, worker } => format!("state-{step}-w{worker}.part"),
            Participant::Sink { name } => format!("sink-{name}.part"),
            Participant::ParallelSink { name, worker } => format!("sink-{name}-w{worker}.part"),
            Participant::Final(who) => format!("{}.final", who.file_name()),
        }
    }
}

/// The directory of checkpoint `epoch`.
pub fn epoch_dir(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("chk-{epoch:010}"))
}

/// The checksum of a part's payload: CRC-32C (Castagnoli), which detects every burst error of up
/// to 32 bits and is computed in hardware where the CPU has the instruction (SSE 4.2, ARMv8).
fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Serializes a value with bincode.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| anyhow!("cannot encode state: {e}"))
}

/// Deserializes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| anyhow!("cannot decode state: {e}"))?;
    if used != bytes.len() {
        bail!("state has {} trailing bytes", bytes.len() - used);
    }
    Ok(value)
}

/// Writes `payload` durably and atomically to `path`: a temporary file, fsync, rename.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// An exclusive lock on a checkpoint directory (`flock` on `DIR/LOCK`, which holds the holder's
/// pid), released when dropped or when the process dies.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks checkpoint directory `dir` for this run, creating it if needed; fails, naming the
/// holder's pid, when another run holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    fs::create_dir_all(dir).with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    let path = dir.join("LOCK");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {} (is the checkpoint directory writable?)", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        file.read_to_string(&mut holder).ok();
        let holder = holder.trim();
        let who = if holder.is_empty() { "another run".to_string() } else { format!("another run (pid {holder})") };
        bail!("checkpoint directory {} is in use by {who}; stop that run first, or give this one its own --checkpoint-dir", dir.display());
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(DirLock { _file: file })
}

/// Writes a participant's part of checkpoint `epoch`.
pub fn write_part(dir: &Path, epoch: u64, who: &Participant, payload: &[u8]) -> Result<()> {
    match write_part_once(dir, epoch, who, payload) {
        // A participant's last part is never skipped: every later checkpoint needs it.
        Err(e) if !matches!(who, Participant::Final(_)) && tolerance(dir).is_some_and(|t| t.tolerates()) => {
            tracing::error!(epoch, part = %who.file_name(), "checkpoint {epoch} abandoned: {e:#} (--tolerable-checkpoint-failures)");
            if let Some(t) = tolerance(dir) {
                t.abandon(epoch, format!("{}: {e:#}", who.file_name()));
            }
            Ok(())
        }
        other => other,
    }
}

/// How many checkpoints in a row may fail before the job does (`--tolerable-checkpoint-failures`,
/// as Flink's `execution.checkpointing.tolerable-failed-checkpoints`), and the epochs abandoned.
#[derive(Debug, Default)]
pub struct Tolerance {
    tolerable: u32,
    abandoned: std::sync::Mutex<BTreeMap<u64, String>>,
}

impl Tolerance {
    fn tolerates(&self) -> bool {
        self.tolerable > 0
    }
    fn abandon(&self, epoch: u64, why: String) {
        self.abandoned.lock().unwrap_or_else(|e| e.into_inner()).entry(epoch).or_insert(why);
    }
    fn abandoned(&self, epoch: u64) -> Option<String> {
        self.abandoned.lock().unwrap_or_else(|e| e.into_inner()).get(&epoch).cloned()
    }
}

/// The tolerances of the checkpoint directories of this process's runs.
static TOLERANCES: std::sync::Mutex<BTreeMap<PathBuf, Arc<Tolerance>>> = std::sync::Mutex::new(BTreeMap::new());

/// Lets up to `tolerable` checkpoints in a row into `dir` fail (a part that cannot be written
/// abandons its checkpoint; the next one covers what it would have) before the job fails.
pub fn set_tolerable_failures(dir: &Path, tolerable: u32) {
    let t = Arc::new(Tolerance { tolerable, ..Default::default() });
    TOLERANCES.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_path_buf(), t);
}

fn tolerance(dir: &Path) -> Option<Arc<Tolerance>> {
    TOLERANCES.lock().unwrap_or_else(|e| e.into_inner()).get(dir).cloned()
}

fn write_part_once(dir: &Path, epoch: u64, who: &Participant, payload: &[u8]) -> Result<()> {
    if crate::faults::fails("part:write") {
        bail!("cannot write part {} of checkpoint {epoch}: injected failure (PAYSTREAM_FAIL_AT)", who.file_name());
    }
    let edir = epoch_dir(dir, epoch);
    fs::create_dir_all(&edir).with_context(|| format!("cannot create {}", edir.display()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&checksum(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    crate::faults::point("part:before-write");
    write_durably(&edir.join(who.file_name()), &bytes)
}

/// Writes a participant's last part, at `epoch`: it has finished (a source at the end of its
/// input, an operator whose input ended), and the part stands for `epoch` and every later one.
pub fn write_final_part(dir: &Path, epoch: u64, who: &Participant, payload: &[u8]) -> Result<()> {
    let finals = Participant::Final(Box::new(who.clone()));
    write_part(dir, epoch, &finals, payload)
}

/// Reads and verifies a part file, returning its payload.
pub fn read_part(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!("{} is not a paystream checkpoint part", path.display());
    }
    // The version first: the rest of the header's layout depends on it.
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        let (by, with) = if version < FORMAT_VERSION { ("an older", "the paystream that wrote it") } else { ("a newer", "that paystream") };
        bail!(
            "{} has checkpoint format version {version}, written by {by} paystream; this one reads version {FORMAT_VERSION}: \
             restore it with {with}, or start the job afresh (without --restore, into an empty --checkpoint-dir)",
            path.display()
        );
    }
    if bytes.len() < HEADER_LEN {
        bail!("{} is truncated: {} of {HEADER_LEN} header bytes", path.display(), bytes.len());
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let sum = u32::from_le_bytes(bytes[16..HEADER_LEN].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() < len {
        bail!(
            "{} is truncated or its header is damaged: the header announces {len} payload bytes, the file holds {}",
            path.display(),
            payload.len()
        );
    }
    if payload.len() > len {
        bail!(
            "{} is damaged: the header announces {len} payload bytes, the file holds {} (trailing bytes, or a damaged header)",
            path.display(),
            payload.len()
        );
    }
    if checksum(payload) != sum {
        bail!("{} is corrupt: checksum mismatch", path.display());
    }
    Ok(payload.to_vec())
}

/// A complete checkpoint's description.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// The job that wrote it.
    pub job: String,
    /// Workers in all when it was taken.
    pub workers: usize,
    /// Every part, by file name (in the same directory).
    pub parts: Vec<String>,
    /// Whether this is a savepoint.
    pub savepoint: bool,
}

/// A checkpoint chosen for a restore: its directory and manifest.
#[derive(Clone, Debug)]
pub struct Restore {
    /// The directory holding the manifest and parts.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

impl Restore {
    /// The payloads of every part whose file name starts with `prefix` (all workers' parts of one
    /// source or step), in file-name order.
    pub fn parts_with_prefix(&self, prefix: &str) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for name in self.manifest.parts.iter().filter(|p| p.starts_with(prefix)) {
            out.push(read_part(&self.dir.join(name))?);
        }
        Ok(out)
    }

    /// Verifies every part of the checkpoint.
    fn verify(&self) -> Result<()> {
        for name in &self.manifest.parts {
            read_part(&self.dir.join(name))?;
        }
        Ok(())
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid manifest", path.display()))
}

/// Complete checkpoints and savepoints under `dir`, newest epoch first.
pub fn complete_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(dir) {
        // A run killed before it made its directory left nothing to restore.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?,
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let epoch = name.strip_prefix("chk-").or_else(|| name.strip_prefix("savepoint-")).and_then(|e| e.parse::<u64>().ok());
        if let Some(epoch) = epoch {
            if path.join(MANIFEST).is_file() {
                found.push((epoch, path));
            }
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Chooses the checkpoint to restore: `latest` (the newest complete one whose parts verify,
/// reporting and skipping damaged ones) or the path of a checkpoint or savepoint directory.
pub fn choose_restore(checkpoint_dir: Option<&Path>, what: &str) -> Result<Restore> {
    if what != "latest" {
        let dir = PathBuf::from(what);
        let restore = Restore { manifest: read_manifest(&dir)?, dir };
        restore.verify().with_context(|| format!("checkpoint {what} is damaged"))?;
        return Ok(restore);
    }
    let Some(base) = checkpoint_dir else {
        bail!("--restore latest needs --checkpoint-dir DIR to look in");
    };
    let candidates = complete_checkpoints(base)?;
    if candidates.is_empty() {
        bail!("no complete checkpoint in {}: nothing to restore (run without --restore to start afresh)", base.display());
    }
    for dir in candidates {
        let attempt = read_manifest(&dir).map(|manifest| Restore { manifest, dir: dir.clone() });
        match attempt.and_then(|r| r.verify().map(|_| r)) {
            Ok(r) => return Ok(r),
            Err(e) => tracing::warn!(checkpoint = %dir.display(), "skipping checkpoint {}: {e:#}; trying the previous one", dir.display()),
        }
    }
    bail!("every checkpoint in {} is damaged", base.display())
}

/// Progress shared between the workers of process 0 and its coordinator.
#[derive(Debug, Default)]
pub struct CommitState {
    /// The newest complete checkpoint's epoch plus one (0: none yet).
    committed_plus_one: AtomicU64,
    /// Set when a savepoint is requested (by `paystream savepoint` through a request file).
    stop: AtomicBool,
    /// The newest savepoint this run wrote.
    savepoint: std::sync::Mutex<Option<PathBuf>>,
    /// Set when the coordinator cannot complete checkpoints any more.
    failure: std::sync::Mutex<Option<String>>,
    /// Completed and failed checkpoints, for the metrics endpoint.
    pub stats: crate::observe::CheckpointStats,
}

impl CommitState {
    /// The newest complete checkpoint, if any.
    pub fn committed(&self) -> Option<u64> {
        self.committed_plus_one.load(Ordering::Acquire).checked_sub(1)
    }
    fn set_committed(&self, epoch: u64) {
        self.committed_plus_one.fetch_max(epoch + 1, Ordering::AcqRel);
    }
    /// Whether the coordinator was asked to stop the job after a savepoint.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
    /// Why the coordinator gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The newest savepoint this run wrote.
    pub fn savepoint(&self) -> Option<PathBuf> {
        self.savepoint.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Follows the checkpoints process 0 completes, for the other processes of a run (which share
/// the checkpoint directory): sets `state` to the newest complete checkpoint until `done`.
pub fn watch_commits(dir: &Path, state: &CommitState, done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        if let Ok(found) = complete_checkpoints(dir) {
            let newest = found
                .iter()
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("chk-")).and_then(|e| e.parse().ok()))
                .max();
            if let Some(epoch) = newest {
                state.set_committed(epoch);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The file `paystream savepoint` creates to ask a running job for a savepoint; it holds `stop`
/// when the job should stop after it.
pub const SAVEPOINT_REQUEST: &str = "SAVEPOINT_REQUEST";

/// Asks the job checkpointing into `dir` for a savepoint (and to stop after it, with `stop`), and
/// waits up to `timeout` for it. Returns the savepoint's directory.
pub fn request_savepoint(dir: &Path, stop: bool, timeout: Duration) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{} is not a checkpoint directory; give the --checkpoint-dir of a running job", dir.display());
    }
    let before: BTreeSet<PathBuf> = savepoints(dir)?;
    ask_for_savepoint(dir, stop)?;
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Some(new) = savepoints(dir)?.difference(&before).next() {
            return Ok(new.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::remove_file(dir.join(SAVEPOINT_REQUEST)).ok();
    bail!("no savepoint appeared in {} within {:?}: is a job running with --checkpoint-dir {}?", dir.display(), timeout, dir.display())
}

/// Asks the coordinator of the job checkpointing into `dir` to turn its next checkpoint into a
/// savepoint (and to stop the job after it, with `stop`), without waiting for it.
pub fn ask_for_savepoint(dir: &Path, stop: bool) -> Result<()> {
    write_durably(&dir.join(SAVEPOINT_REQUEST), if stop { b"stop" } else { b"savepoint" })
}

fn savepoints(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("savepoint-")) && p.join(MANIFEST).is_file())
        .collect())
}

/// The coordinator: a thread of process 0 that writes a manifest once every part of an epoch is
/// durable, keeps the newest `retain` checkpoints, and turns requested checkpoints into savepoints.
pub struct Coordinator {
    config: CheckpointConfig,
    job: String,
    workers: usize,
    expected: BTreeSet<Participant>,
    /// Sources that finished: their final part stands for every later epoch.
    state: Arc<CommitState>,
    next_epoch: u64,
    /// Checkpoints abandoned in a row (see [`set_tolerable_failures`]).
    failed_in_a_row: u32,
}

impl Coordinator {
    /// A coordinator expecting `expected` parts per epoch, starting at `first_epoch`.
    pub fn new(
        config: CheckpointConfig,
        job: &str,
        workers: usize,
        expected: BTreeSet<Participant>,
        first_epoch: u64,
        state: Arc<CommitState>,
    ) -> Self {
        Coordinator { config, job: job.to_string(), workers, expected, state, next_epoch: first_epoch, failed_in_a_row: 0 }
    }

    /// Polls until `done` is set, completing checkpoints as their parts arrive. After a minute of
    /// failing (a full disk, a removed directory) it fails the job: sinks wait for checkpoints,
    /// so a coordinator that cannot write them must not let the job hang.
    pub fn run(mut self, done: &AtomicBool) {
        let mut finals: BTreeMap<Participant, PathBuf> = BTreeMap::new();
        let mut failing_since: Option<std::time::Instant> = None;
        while !done.load(Ordering::Acquire) {
            match self.step(&mut finals) {
                Ok(true) => failing_since = None,
                Ok(false) => {
                    failing_since = None;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    self.state.stats.failed();
                    tracing::error!(epoch = self.next_epoch, "checkpoint coordinator: {e:#}");
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(60) {
                        let mut f = self.state.failure.lock().unwrap_or_else(|e| e.into_inner());
                        f.get_or_insert(format!("checkpoint coordinator: {e:#}"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Completes the next epoch if all its parts are there; `Ok(true)` when it did.
    fn step(&mut self, finals: &mut BTreeMap<Participant, PathBuf>) -> Result<bool> {
        let epoch = self.next_epoch;
        let edir = epoch_dir(&self.config.dir, epoch);
        if let Some((tolerance, why)) = tolerance(&self.config.dir).and_then(|t| t.abandoned(epoch).map(|w| (t, w))) {
            // A part of this checkpoint could not be written: skip it; the next one covers what
            // it would have (parts are whole snapshots, and sinks' pre-commits stay pending until
            // a checkpoint holding them completes). A participant's last part written into it
            // still stands for every later epoch.
            self.failed_in_a_row += 1;
            self.state.stats.failed();
            if self.failed_in_a_row > tolerance.tolerable {
                let mut f = self.state.failure.lock().unwrap_or_else(|e| e.into_inner());
                f.get_or_insert(format!(
                    "{} checkpoints in a row failed, more than --tolerable-checkpoint-failures {} allows; the last, {epoch}: {why}",
                    self.failed_in_a_row, tolerance.tolerable
                ));
                return Ok(false);
            }
            tracing::warn!(
                epoch,
                "checkpoint {epoch} skipped ({} in a row, {} tolerated): {why}",
                self.failed_in_a_row,
                tolerance.tolerable
            );
            for who in &self.expected {
                let final_path = edir.join(format!("{}.final", who.file_name()));
                if final_path.is_file() {
                    finals.insert(who.clone(), final_path);
                }
            }
            self.next_epoch = epoch + 1;
            return Ok(true);
        }
        if !edir.is_dir() {
            return Ok(false);
        }
        let mut parts = Vec::new();
        for who in &self.expected {
            let path = edir.join(who.file_name());
            let final_path = edir.join(format!("{}.final", who.file_name()));
            if final_path.is_file() {
                finals.insert(who.clone(), final_path.clone());
            }
            if path.is_file() {
                parts.push(who.file_name());
            } else if final_path.is_file() {
                fs::hard_link(&final_path, &path).or_else(|_| fs::copy(&final_path, &path).map(|_| ()))?;
                parts.push(who.file_name());
            } else if let Some(earlier) = finals.get(who).cloned() {
                // A finished participant's last part stands for every later epoch. The copy here
                // becomes the one later epochs link to: older checkpoints are retired, and the
                // sinks wait for the last checkpoint to complete.
                fs::hard_link(&earlier, &path).or_else(|_| fs::copy(&earlier, &path).map(|_| ()))?;
                finals.insert(who.clone(), path.clone());
                parts.push(who.file_name());
            } else {
                return Ok(false);
            }
        }
        let savepoint_request = self.config.dir.join(SAVEPOINT_REQUEST);
        let savepoint = savepoint_request.is_file();
        let manifest = Manifest { epoch, job: self.job.clone(), workers: self.workers, parts, savepoint };
        sync_dir(&edir)?;
        crate::faults::point("manifest:before-write");
        write_durably(&edir.join(MANIFEST), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        sync_dir(&edir)?;
        crate::faults::point("manifest:after-write");
        self.state.set_committed(epoch);
        self.state.stats.completed(epoch, &edir);
        self.failed_in_a_row = 0;
        if savepoint {
            self.make_savepoint(&edir, epoch, &savepoint_request)?;
        }
        self.next_epoch = epoch + 1;
        self.retire(epoch)?;
        Ok(true)
    }

    fn make_savepoint(&self, edir: &Path, epoch: u64, request: &Path) -> Result<()> {
        let target = self.config.dir.join(format!("savepoint-{epoch:010}"));
        fs::create_dir_all(&target)?;
        for entry in fs::read_dir(edir)? {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                if path.is_file() && !name.to_string_lossy().ends_with(".final") {
                    fs::copy(&path, target.join(name))?;
                }
            }
        }
        let mut manifest = read_manifest(&target)?;
        manifest.savepoint = true;
        write_durably(&target.join(MANIFEST), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        sync_dir(&target)?;
        let stop = fs::read_to_string(request).map(|t| t.trim() == "stop").unwrap_or(false);
        fs::remove_file(request).ok();
        tracing::info!(epoch, savepoint = %target.display(), "savepoint {} written", target.display());
        *self.state.savepoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.clone());
        if stop {
            // The run halts (see runtime::JobHandle) and says how to resume.
            self.state.stop.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Deletes checkpoints older than the newest `retain` complete ones (never savepoints), and
    /// leftovers of epochs before the newest complete one.
    fn retire(&self, newest: u64) -> Result<()> {
        let keep_from = newest.saturating_sub(self.config.retain.max(1) as u64 - 1);
        for entry in fs::read_dir(&self.config.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if let Some(epoch) = name.strip_prefix("chk-").and_then(|e| e.parse::<u64>().ok()) {
                if epoch < keep_from {
                    fs::remove_dir_all(&path).ok();
                }
            }
        }
        Ok(())
    }
}

/// Removes every checkpoint (not savepoints) under `dir`, after a job finished. Every manifest
/// goes first, so a kill midway leaves only incomplete checkpoints (which a fresh run clears),
/// never a complete-looking one with missing parts.
pub fn discard_checkpoints(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let checkpoints: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("chk-")))
        .collect();
    for path in &checkpoints {
        fs::remove_file(path.join(MANIFEST)).ok();
    }
    if let Ok(d) = File::open(dir) {
        d.sync_all().ok();
    }
    for path in &checkpoints {
        fs::remove_dir_all(path).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_damage_is_detected() {
        let dir = std::env::temp_dir().join(format!("paystream-chk-test-{}", std::process::id()));
        let who = Participant::State { step: "w".into(), worker: 0 };
        write_part(&dir, 3, &who, b"hello state").unwrap();
        let path = epoch_dir(&dir, 3).join(who.file_name());
        assert_eq!(read_part(&path).unwrap(), b"hello state");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(read_part(&path).unwrap_err().to_string().contains("corrupt"));
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_part(&path).unwrap_err().to_string().contains("truncated"));
        // A damaged length field is named as such, not as a file of 17 TB cut short.
        let mut damaged = bytes.clone();
        damaged[13] = 0x10;
        fs::write(&path, &damaged).unwrap();
        let e = read_part(&path).unwrap_err().to_string();
        assert!(e.contains("header is damaged") && e.contains("the file holds 11"), "{e}");
        fs::remove_dir_all(&dir).ok();
    }

    /// A part of format version 2 (an FNV-1a checksum, a 24-byte header), as paystream wrote it
    /// before version 3, is refused with a message that says what to do; so is a newer one.
    #[test]
    fn parts_of_other_format_versions_are_refused_with_advice() {
        fn fnv1a(bytes: &[u8]) -> u64 {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
        }
        let dir = std::env::temp_dir().join(format!("paystream-chk-version-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let payload = b"hello state";
        let path = dir.join("state-w-w0.part");
        let mut v2 = Vec::new();
        v2.extend_from_slice(MAGIC);
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v2.extend_from_slice(&fnv1a(payload).to_le_bytes());
        v2.extend_from_slice(payload);
        fs::write(&path, &v2).unwrap();
        let e = read_part(&path).unwrap_err().to_string();
        assert!(e.contains(&format!("format version 2, written by an older paystream; this one reads version {FORMAT_VERSION}")), "{e}");
        assert!(e.contains("restore it with the paystream that wrote it, or start the job afresh (without --restore"), "{e}");
        // A newer version, even one shorter than this version's header.
        let newer = FORMAT_VERSION + 1;
        fs::write(&path, [&MAGIC[..], &newer.to_le_bytes()].concat()).unwrap();
        let e = read_part(&path).unwrap_err().to_string();
        assert!(
            e.contains(&format!("format version {newer}, written by a newer paystream")) && e.contains("restore it with that paystream"),
            "{e}"
        );
        fs::remove_dir_all(&dir).ok();
    }

    /// The header is this version's: CRC-32C of the payload after the length, then the payload.
    #[test]
    fn parts_carry_a_crc32c_of_the_payload() {
        let dir = std::env::temp_dir().join(format!("paystream-chk-crc-test-{}", std::process::id()));
        let who = Participant::Source { name: "p".into(), worker: 1 };
        write_part(&dir, 1, &who, b"123456789").unwrap();
        let path = epoch_dir(&dir, 1).join(who.file_name());
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 9);
        assert_eq!(&bytes[4..8], &FORMAT_VERSION.to_le_bytes());
        assert_eq!(&bytes[8..16], &9u64.to_le_bytes());
        // The CRC-32C check value (RFC 3720).
        assert_eq!(&bytes[16..20], &0xe306_9283u32.to_le_bytes());
        // A damaged checksum, and a header cut short, are detected.
        let mut damaged = bytes.clone();
        damaged[17] ^= 0x10;
        fs::write(&path, &damaged).unwrap();
        assert!(read_part(&path).unwrap_err().to_string().contains("corrupt"));
        fs::write(&path, &bytes[..HEADER_LEN - 1]).unwrap();
        assert!(read_part(&path).unwrap_err().to_string().contains("truncated"));
        fs::write(&path, &bytes[..3]).unwrap();
        assert!(read_part(&path).unwrap_err().to_string().contains("not a paystream checkpoint part"));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn values_encode_and_decode() {
        let v: Vec<(u64, String)> = vec![(1, "a".into()), (2, "b".into())];
        assert_eq!(decode::<Vec<(u64, String)>>(&encode(&v).unwrap()).unwrap(), v);
    }
}
