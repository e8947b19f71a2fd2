//! timely prints to stdout on its own in cluster mode: `error connecting to worker N: ...;
//! retrying` while the other processes start, `awaiting connections (at 0/1)` every second, and
//! with its `report` option a line per connection. stdout is where `stdout:` sinks write, so
//! those lines would land in the job's output. No option turns the unconditional ones off.
//!
//! They are all printed while timely connects the processes (`CommunicationConfig::try_build`),
//! before any worker starts. [`build_communication`] runs that step with file descriptor 1 pointed
//! at a pipe, turns each line into a `debug` log event (target `timely`; `--log-level debug`
//! shows them), and points descriptor 1 back at stdout before the workers start.

use std::any::Any;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use timely::communication::AllocatorBuilder;
use timely::CommunicationConfig;

use crate::Result;

/// What `CommunicationConfig::try_build` returns: one allocator builder per local worker, and
/// what keeps the network threads alive.
pub type Communication = (Vec<AllocatorBuilder>, Box<dyn Any + Send>);

/// Builds timely's communication for `config`, connecting to the other processes in cluster
/// mode, with whatever timely prints meanwhile sent to the log instead of stdout.
pub fn build_communication(config: CommunicationConfig) -> Result<Communication> {
    let quiet = matches!(config, CommunicationConfig::Cluster { .. });
    let build = move || config.try_build().map_err(|e| anyhow::anyhow!("cannot connect the processes: {e}"));
    if quiet {
        with_stdout_logged(build)
    } else {
        build()
    }
}

/// Runs `f` with descriptor 1 on a pipe whose lines become `debug` events (target `timely`).
/// Falls back to running `f` as it is if the descriptors cannot be set up.
pub fn with_stdout_logged<R>(f: impl FnOnce() -> R) -> R {
    let _ = std::io::stdout().flush();
    let Ok((reader, writer)) = std::io::pipe() else { return f() };
    // SAFETY: dup and dup2 only duplicate descriptors; the saved copy is owned by `saved`.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 {
        return f();
    }
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    if unsafe { libc::dup2(writer.as_raw_fd(), 1) } < 0 {
        return f();
    }
    drop(writer);
    let logger = std::thread::Builder::new().name("paystream-timely-output".into()).spawn(move || {
        for line in BufReader::new(reader).lines().map_while(|l| l.ok()) {
            tracing::debug!(target: "timely", "{}", line.trim_end());
        }
    });
    let result = f();
    let _ = std::io::stdout().flush();
    // Descriptor 1 back on stdout; that closes the pipe's last writer, so the logger ends.
    // SAFETY: as above.
    unsafe { libc::dup2(saved.as_raw_fd(), 1) };
    if let Ok(logger) = logger {
        let _ = logger.join();
    }
    result
}
