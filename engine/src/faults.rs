//! Fault injection for recovery tests: `PAYSTREAM_CRASH_AT=POINT[:N]` aborts the process (as a
//! `kill -9` would) the N-th time (default 1st) execution reaches the named point. Points:
//! `part:before-write`, `manifest:before-write`, `manifest:after-write`, `sink:before-stage`,
//! `sink:before-publish`, and connectors' own (`kafka:before-commit`). Unset, it costs one relaxed atomic load per point.
//!
//! `PAYSTREAM_SLOW_SINK=MICROS` slows every sink writer down (see [`slow_sink`]).
//!
//! `PAYSTREAM_FAIL_AT=POINT:N[+]` makes the N-th pass through a failure point fail with an I/O
//! error (with `+`, that pass and every later one), as a full disk would: `part:write` (a
//! checkpoint part). See [`fails`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Marks a point where a crash may be injected.
pub fn point(name: &str) {
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("PAYSTREAM_CRASH_AT").ok()?;
        let (point, n) = match spec.rsplit_once(':') {
            Some((p, n)) if n.parse::<u64>().is_ok() => (p.to_string(), n.parse().unwrap_or(1)),
            _ => (spec, 1),
        };
        Some((point, n))
    });
    if let Some((point, n)) = target {
        if point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            tracing::error!(point = name, "crash injected at {name}");
            std::process::abort();
        }
    }
}

/// A deliberately slow sink, for flow-control tests: `PAYSTREAM_SLOW_SINK=MICROS` makes a sink's
/// writer wait that many microseconds per line it writes. Unset, it costs one load per write.
pub fn slow_sink(lines: usize) {
    static DELAY: OnceLock<Option<u64>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| std::env::var("PAYSTREAM_SLOW_SINK").ok().and_then(|v| v.parse().ok()));
    if let Some(micros) = delay {
        std::thread::sleep(std::time::Duration::from_micros(micros * lines as u64));
    }
}

static FAIL_TARGET: OnceLock<Option<(String, u64, bool)>> = OnceLock::new();
static FAIL_HITS: AtomicU64 = AtomicU64::new(0);

/// Whether this pass through failure point `name` is to fail (`PAYSTREAM_FAIL_AT`).
pub fn fails(name: &str) -> bool {
    let target = FAIL_TARGET.get_or_init(|| {
        let spec = std::env::var("PAYSTREAM_FAIL_AT").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        let (n, onwards) = match n.strip_suffix('+') {
            Some(n) => (n, true),
            None => (n, false),
        };
        Some((point.to_string(), n.parse().ok()?, onwards))
    });
    match target {
        Some((point, n, onwards)) if point == name => {
            let hit = FAIL_HITS.fetch_add(1, Ordering::Relaxed) + 1;
            hit == *n || (*onwards && hit > *n)
        }
        _ => false,
    }
}
