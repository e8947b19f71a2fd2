//! Observing a running job from outside: the Prometheus metrics endpoint (`--metrics-addr`) and
//! checkpoint statistics.
//!
//! * [`exporter`]: what `/metrics` shows, read from [`crate::metrics::Metrics`] and the checkpoint
//!   coordinator's [`CheckpointStats`] at each scrape (names and labels in README.md).
//! * [`endpoint`]: the HTTP listener for `/metrics` and `/healthz`, on the run's I/O runtime
//!   ([`crate::io`]).

pub mod endpoint;
pub mod exporter;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// What the checkpoint coordinator (`crate::checkpoint::Coordinator`) did so far.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    completed: AtomicU64,
    failures: AtomicU64,
    last_duration_us: AtomicU64,
    last_size_bytes: AtomicU64,
}

/// A snapshot of [`CheckpointStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CheckpointFigures {
    /// Checkpoints completed by this run.
    pub completed: u64,
    /// Times the coordinator failed to complete a checkpoint (it retries).
    pub failures: u64,
    /// From the first part of the last completed checkpoint written to its manifest written.
    pub last_duration: Duration,
    /// Bytes of the last completed checkpoint's files.
    pub last_size_bytes: u64,
}

impl CheckpointStats {
    /// Notes that the checkpoint in `dir` is complete (its manifest durable): its size is that of
    /// its files, its duration runs from the oldest file's modification time until now.
    pub fn completed(&self, epoch: u64, dir: &Path) {
        let (mut bytes, mut oldest) = (0u64, None::<SystemTime>);
        if let Ok(entries) = std::fs::read_dir(dir) {
            for meta in entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()) {
                bytes += meta.len();
                if let Ok(t) = meta.modified() {
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
            }
        }
        let duration = oldest.and_then(|t| SystemTime::now().duration_since(t).ok()).unwrap_or_default();
        self.last_size_bytes.store(bytes, Ordering::Relaxed);
        self.last_duration_us.store(duration.as_micros() as u64, Ordering::Relaxed);
        self.completed.fetch_add(1, Ordering::Release);
        tracing::debug!(epoch, bytes, duration_ms = duration.as_millis() as u64, "checkpoint {epoch} complete");
    }

    /// Notes a failed attempt to complete a checkpoint.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures so far.
    pub fn figures(&self) -> CheckpointFigures {
        CheckpointFigures {
            completed: self.completed.load(Ordering::Acquire),
            failures: self.failures.load(Ordering::Relaxed),
            last_duration: Duration::from_micros(self.last_duration_us.load(Ordering::Relaxed)),
            last_size_bytes: self.last_size_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_checkpoint_counts_its_files() {
        let dir = std::env::temp_dir().join(format!("paystream-observe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("MANIFEST"), [0u8; 20]).unwrap();
        let stats = CheckpointStats::default();
        stats.completed(7, &dir);
        stats.failed();
        let f = stats.figures();
        assert_eq!((f.completed, f.failures, f.last_size_bytes), (1, 1, 120));
        assert!(f.last_duration < Duration::from_secs(60));
        std::fs::remove_dir_all(&dir).ok();
    }
}
