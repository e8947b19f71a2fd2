//! A peer lost mid-run, as one error instead of a cascade of panics.
//!
//! timely 0.32 has no way to report a broken connection but to panic: the network thread of the
//! lost peer (`timely:recv-N` or `timely:send-N`, N its process index) panics with
//! `timely communication error: ...`; unwinding poisons the queues it shares with the workers,
//! so every worker then panics with `MergeQueue poisoned`, and so do the other network threads,
//! and finally the join of the network threads in `CommsGuard`'s drop. Each would print a
//! `thread ... panicked` line (with a backtrace under `RUST_BACKTRACE`).
//!
//! [`watch`] chains a panic hook in front of the one installed before (the CLI's, which sends
//! panics to the log): the first `timely communication error` of a network thread records which
//! process was lost and why; that panic and every panic it causes afterwards (in timely's
//! threads, and the network guard's join) print nothing. Any other panic goes to the previous
//! hook as before. The run then reads [`lost_peer`] at its join and ends with one error naming
//! the process ([`crate::runtime`]).

use std::panic::PanicHookInfo;
use std::sync::{Mutex, Once};

/// The peer a cluster run lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostPeer {
    /// Its process index.
    pub process: usize,
    /// What timely's network thread saw: `reading data: socket closed`, `writing data: Broken pipe`, ...
    pub cause: String,
}

static LOST: Mutex<Option<LostPeer>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// What timely's network threads start their panic messages with (timely_communication's
/// `tcp_panic`, whose comment asks downstream crates to rely on it).
const TIMELY_NETWORK_ERROR: &str = "timely communication error: ";

/// Starts watching for a lost peer: forgets one recorded by an earlier run and installs the
/// panic hook (once per process).
pub fn watch() {
    *lock() = None;
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !absorb(info) {
                previous(info)
            }
        }));
    });
}

/// The peer lost since [`watch`], if any.
pub fn lost_peer() -> Option<LostPeer> {
    lock().clone()
}

fn lock() -> std::sync::MutexGuard<'static, Option<LostPeer>> {
    LOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the panic described by `info` is a lost peer or follows from one (then it is
/// recorded, or was, and prints nothing).
fn absorb(info: &PanicHookInfo<'_>) -> bool {
    let thread = std::thread::current();
    let payload = info.payload();
    let message = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("");
    classify(thread.name().unwrap_or(""), message, &mut lock())
}

/// [`absorb`] on a thread name and a panic message, with the record of the lost peer.
fn classify(thread: &str, message: &str, lost: &mut Option<LostPeer>) -> bool {
    if let (Some(process), Some(cause)) = (network_thread_peer(thread), message.strip_prefix(TIMELY_NETWORK_ERROR)) {
        if lost.is_none() {
            *lost = Some(LostPeer { process, cause: cause.to_string() });
        }
        return true;
    }
    lost.is_some()
        && (thread.starts_with("timely:")
            || ["Send thread panic", "Recv thread panic", "Worker panic", "MergeQueue poisoned"].iter().any(|m| message.starts_with(m)))
}

/// The remote process of one of timely's network threads (`timely:recv-N`, `timely:send-N`).
fn network_thread_peer(thread: &str) -> Option<usize> {
    thread.strip_prefix("timely:recv-").or_else(|| thread.strip_prefix("timely:send-"))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_network_error_names_the_peer_and_its_consequences_are_absorbed() {
        let mut lost = None;
        assert!(!classify("timely:work-0", "MergeQueue poisoned.", &mut lost), "nothing lost yet: a real panic");
        assert!(!classify("timely:recv-1", "index out of bounds", &mut lost), "not a network error");
        assert!(classify("timely:recv-1", "timely communication error: reading data: socket closed", &mut lost));
        assert_eq!(lost, Some(LostPeer { process: 1, cause: "reading data: socket closed".into() }));
        assert!(classify("timely:send-2", "timely communication error: writing data: Broken pipe", &mut lost));
        assert_eq!(lost.as_ref().map(|l| l.process), Some(1), "the first loss is the one reported");
        assert!(classify("timely:work-0", "MergeQueue poisoned.", &mut lost));
        assert!(classify("paystream-job-x", "Send thread panic: Any { .. }", &mut lost));
        assert!(!classify("paystream-job-x", "attempt to divide by zero", &mut lost), "our own bugs still print");
    }
}
