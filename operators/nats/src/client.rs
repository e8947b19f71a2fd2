//! What the source and the sink ask of a NATS server, over async-nats: connecting within a
//! bounded time, looking up and creating streams, and backing off between reconnections.
//!
//! The client's own reconnection is turned off: a session that loses its connection ends with an
//! error, and its owner connects again with [`Backoff`], so `reconnect_timeout` bounds how long
//! the job waits for a server that went away.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, stream};
use paystream_engine::Result;

use crate::address::Address;

/// How long a JetStream API request or publish acknowledgement may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects within `timeout`; the error names the server.
pub(crate) async fn connect(address: &Address, timeout: Duration) -> Result<jetstream::Context> {
    let endpoint = address.endpoint();
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(REQUEST_TIMEOUT))
        // One connection per session: a lost one is made again by the session's owner.
        .max_reconnects(Some(1))
        .name("paystream");
    let client = match tokio::time::timeout(timeout, options.connect(endpoint.as_str())).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(anyhow!("cannot connect to nats at {endpoint}: {e} (is nats-server -js running?)")),
        Err(_) => return Err(anyhow!("cannot connect to nats at {endpoint}: no answer within {timeout:?}")),
    };
    let mut context = jetstream::new(client);
    context.set_timeout(REQUEST_TIMEOUT);
    Ok(context)
}

/// Whether the client behind `context` is still connected.
pub(crate) fn connected(context: &jetstream::Context) -> bool {
    context.client().connection_state() == async_nats::connection::State::Connected
}

/// The stream `name`, or `None` when the server has no such stream.
pub(crate) async fn find_stream(context: &jetstream::Context, name: &str) -> Result<Option<stream::Stream>> {
    match context.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND => Ok(None),
            _ => Err(anyhow!("cannot look up stream {name:?}: {e} (does the server run with JetStream, -js?)")),
        },
    }
}

/// The stream's state now: (first sequence, last sequence), last 0 when it never held a message.
pub(crate) async fn stream_bounds(stream: &mut stream::Stream) -> Result<(u64, u64)> {
    let info = stream.info().await.context("cannot read the stream's state")?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

/// Runs `work` to completion on a thread of its own with a runtime of its own: for the checks
/// made when a URI is opened and for a sink's recovery, which run before (or outside) the run's
/// I/O runtime and may be called from inside another runtime's context.
pub(crate) fn block_on<T: Send>(work: impl Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime for nats")?;
                runtime.block_on(work)
            })
            .join()
            .map_err(|_| anyhow!("the nats client thread panicked"))?
    })
}

/// Exponential backoff between reconnections, within a deadline counted from the first failure.
pub(crate) struct Backoff {
    limit: Duration,
    next: Duration,
    since: Option<Instant>,
}

impl Backoff {
    /// A backoff that gives up `limit` after the first failure.
    pub(crate) fn new(limit: Duration) -> Self {
        Backoff { limit, next: Duration::from_millis(100), since: None }
    }

    /// A connection works again: the next failure starts afresh.
    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
        self.since = None;
    }

    /// Waits before the next attempt after `error`, or returns the error once the server has been
    /// away longer than the limit.
    pub(crate) async fn wait(&mut self, error: anyhow::Error, endpoint: &str) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let away = since.elapsed();
        if away >= self.limit {
            return Err(error.context(format!(
                "nats at {endpoint} has been unreachable for {:.1} s, longer than reconnect_timeout ({:?})",
                away.as_secs_f64(),
                self.limit
            )));
        }
        tracing::warn!(server = endpoint, retry_in_ms = self.next.as_millis() as u64, "nats: {error:#}; reconnecting");
        tokio::time::sleep(self.next.min(self.limit.saturating_sub(away))).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Ok(())
    }
}
