//! Talking to the server: the connection settings of a URI, connecting within `connect_timeout`,
//! the runtime the sink's and the source's clients run on, the backoff between reconnections,
//! and which errors a reconnection may cure.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use paystream_engine::Result;
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::{Client, Config, NoTls};

/// The server a URI names, with its timeouts.
#[derive(Clone, Debug)]
pub(crate) struct Server {
    config: Config,
    /// `HOST:PORT/DB`, for messages.
    endpoint: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_timeout: Duration,
}

impl Server {
    /// Reads `postgres://USER@HOST:PORT/DB` (the URI without its query).
    pub(crate) fn parse(what: &str, uri: &str, connect_timeout: Duration, reconnect_timeout: Duration) -> Result<Server> {
        let mut config = Config::from_str(uri).map_err(|e| anyhow!("{what}: {uri:?} is not postgres://USER@HOST:PORT/DB: {e}"))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => anyhow::bail!("{what}: {uri:?} names no host"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let Some(db) = config.get_dbname().map(str::to_string) else {
            anyhow::bail!("{what}: {uri:?} names no database (postgres://USER@HOST:PORT/DB)");
        };
        if config.get_user().is_none() {
            anyhow::bail!("{what}: {uri:?} names no user (postgres://USER@HOST:PORT/DB)");
        }
        config.connect_timeout(connect_timeout);
        config.application_name("paystream");
        Ok(Server { config, endpoint: format!("{host}:{port}/{db}"), connect_timeout, reconnect_timeout })
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Connects within `connect_timeout` and drives the connection on the current runtime; the
    /// error names the server.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let attempt = tokio::time::timeout(self.connect_timeout, self.config.connect(NoTls)).await;
        let (client, connection) = match attempt {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                // tokio-postgres keeps the cause (connection refused, no such database) apart.
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                return Err(anyhow!("cannot connect to postgres at {}: {e}{cause} (is the server running?)", self.endpoint));
            }
            Err(_) => return Err(anyhow!("cannot connect to postgres at {}: no answer within {:?}", self.endpoint, self.connect_timeout)),
        };
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(server = %endpoint, "postgres: connection lost: {e}");
            }
        });
        Ok(client)
    }
}

/// The runtime the sink's clients run on: one thread of its own, so that a large COPY never
/// delays the engine's I/O (metrics, broker sources) nor blocks a worker. Each `postgres://`
/// source has one too, for its split's polls.
pub(crate) struct SinkRuntime {
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for SinkRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkRuntime")
    }
}

impl SinkRuntime {
    pub(crate) fn new() -> Result<Arc<SinkRuntime>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("paystream-postgres")
            .enable_all()
            .build()
            .context("cannot start the postgres sink's runtime")?;
        Ok(Arc::new(SinkRuntime { runtime: Some(runtime) }))
    }

    pub(crate) fn handle(&self) -> Handle {
        self.runtime.as_ref().map(|r| r.handle().clone()).unwrap_or_else(|| unreachable!("present until dropped"))
    }

    /// Runs `work` on the runtime and waits for it on this thread: for opening a URI and for a
    /// sink's recovery, before the run (never on a worker). A plain channel, not `block_on`, so
    /// that it works from inside another runtime's context too.
    pub(crate) fn wait<T: Send + 'static>(&self, work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (done, result) = std::sync::mpsc::channel();
        self.handle().spawn(async move {
            done.send(work.await).ok();
        });
        result.recv().map_err(|_| anyhow!("the postgres sink's runtime stopped"))?
    }
}

impl Drop for SinkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // A write in flight at the end of an aborted run is dropped, not awaited.
            runtime.shutdown_background();
        }
    }
}

/// Exponential backoff between reconnections, within a deadline counted from the first failure.
pub(crate) struct Backoff {
    limit: Duration,
    next: Duration,
    since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(limit: Duration) -> Self {
        Backoff { limit, next: Duration::from_millis(100), since: None }
    }

    /// Waits before the next attempt after `error`, or returns the error once the server has
    /// been away longer than the limit.
    pub(crate) async fn wait(&mut self, error: anyhow::Error, endpoint: &str) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let away = since.elapsed();
        if away >= self.limit {
            return Err(error.context(format!(
                "postgres at {endpoint} has failed for {:.1} s, longer than reconnect_timeout ({:?})",
                away.as_secs_f64(),
                self.limit
            )));
        }
        tracing::warn!(server = endpoint, retry_in_ms = self.next.as_millis() as u64, "postgres: {error:#}; retrying");
        tokio::time::sleep(self.next.min(self.limit.saturating_sub(away))).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// An error that a new connection cannot cure: the job fails at once.
#[derive(Debug)]
pub(crate) struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Whether a failed statement may succeed on a new connection: connection failures and server
/// restarts, yes; an error in the data or the SQL (a missing table, a wrong type) or a [`Fatal`]
/// one, no: it fails the job at once with the server's message.
pub(crate) fn retryable(error: &anyhow::Error) -> bool {
    if error.chain().any(|c| c.is::<Fatal>()) {
        return false;
    }
    let Some(e) = error.chain().find_map(|c| c.downcast_ref::<tokio_postgres::Error>()) else {
        return true; // not the server's answer: a connect failure or a timeout
    };
    match e.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            // 08: connection exception, 57P: operator intervention (shutdown), 53: insufficient
            // resources, 40: transaction rollback (serialization, deadlock).
            ["08", "57P", "53", "40"].iter().any(|class| code.starts_with(class))
        }
    }
}
