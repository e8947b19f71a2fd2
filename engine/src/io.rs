//! The I/O runtime: one small tokio runtime per run, beside the timely workers, for what waits on
//! the network: the metrics endpoint now, broker and database connectors later.
//!
//! A run owns it (`crate::runtime` creates it when the run starts and shuts it down when the run
//! ends, closing every listener it opened), with one worker thread, `paystream-io`: timely's
//! workers never run async code, and nothing here is on their hot path.
//!
//! How code reaches it: every timely worker thread of a run has entered the runtime's context, so
//! a connector built or running on a worker calls [`handle`] (or tokio's own
//! `tokio::runtime::Handle::current()` and `tokio::spawn`) and spawns its tasks there. Such a task
//! must never block a worker waiting for it: it hands data over through a queue and wakes the
//! worker with a timely activator.

use std::time::Duration;

use anyhow::Context;
use tokio::runtime::{Handle, Runtime};

use crate::Result;

/// The tokio runtime of one run; shut down when dropped.
#[derive(Debug)]
pub struct IoRuntime {
    runtime: Option<Runtime>,
}

impl IoRuntime {
    /// Starts the runtime: one worker thread named `paystream-io`, with I/O and timers.
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("paystream-io")
            .enable_io()
            .enable_time()
            .build()
            .context("cannot start the I/O runtime")?;
        Ok(IoRuntime { runtime: Some(runtime) })
    }

    /// A handle to spawn tasks on the runtime, or to enter its context (`Handle::enter`).
    pub fn handle(&self) -> &Handle {
        self.runtime.as_ref().expect("the I/O runtime runs until dropped").handle()
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Tasks are dropped (listeners closed) before this returns; a task stuck in a blocking
            // call is left behind rather than holding up the end of the run.
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

/// The I/O runtime of the run this thread works for: `Some` on a timely worker thread of a run
/// and on the runtime's own thread, `None` elsewhere (such as in `crate::testing`).
pub fn handle() -> Option<Handle> {
    Handle::try_current().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tasks_run_on_the_io_thread_and_the_handle_is_found_inside() {
        let io = super::IoRuntime::new().unwrap();
        assert!(super::handle().is_none());
        let name = io.handle().block_on(async { io_thread_name().await });
        assert_eq!(name.as_deref(), Some("paystream-io"));
        let _inside = io.handle().enter();
        assert!(super::handle().is_some());
    }

    async fn io_thread_name() -> Option<String> {
        let handle = tokio::spawn(async { std::thread::current().name().map(String::from) });
        handle.await.ok().flatten()
    }
}
