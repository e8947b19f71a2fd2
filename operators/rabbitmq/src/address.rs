//! The address part of a `rabbitmq://[USER:PASS@]HOST:PORT/QUEUE[,QUEUE2...]` URI, and the
//! options every rabbitmq URI takes.

use std::time::Duration;

use anyhow::{anyhow, bail};
use paystream_engine::connector::UriOptions;
use paystream_engine::Result;

/// How long a broker may stay away during a run before the job fails, by default.
pub(crate) const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a rabbitmq URI points: a broker, credentials and one or more queues of the default
/// virtual host `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP address.
    pub host: String,
    /// AMQP port (5672 by default).
    pub port: u16,
    /// User name (guest by default).
    pub user: String,
    /// Password (guest by default).
    pub password: String,
    /// The queues, in the order given (a source reads one split per queue).
    pub queues: Vec<String>,
}

impl Address {
    /// Parses `rabbitmq://...` without its query part; `what` names the URI in errors.
    pub fn parse(what: &str, uri: &str) -> Result<Address> {
        let Some(rest) = uri.strip_prefix("rabbitmq://") else {
            bail!("{what}: write rabbitmq://[USER:PASS@]HOST:PORT/QUEUE");
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| anyhow!("{what}: no queue: write rabbitmq://HOST:PORT/QUEUE"))?;
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            None => ("guest".to_string(), "guest".to_string()),
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (u.to_string(), p.to_string()),
                None => bail!("{what}: credentials must read USER:PASS@"),
            },
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| anyhow!("{what}: port {p:?} is not a number"))?),
            None => (host_port.to_string(), 5672),
        };
        if host.is_empty() {
            bail!("{what}: no host: write rabbitmq://HOST:PORT/QUEUE");
        }
        let queues: Vec<String> = path.split(',').map(str::trim).filter(|q| !q.is_empty()).map(String::from).collect();
        if queues.is_empty() {
            bail!("{what}: no queue: write rabbitmq://HOST:PORT/QUEUE");
        }
        for q in &queues {
            if q.len() > 255 || q.contains(['/', '?', '&']) {
                bail!("{what}: {q:?} is not a queue name (at most 255 bytes, no '/', '?' or '&')");
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = queues.iter().find(|q| !seen.insert(q.as_str())) {
            bail!("{what}: queue {dup:?} is named twice");
        }
        Ok(Address { host, port, user, password, queues })
    }

    /// `HOST:PORT`, for messages.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The AMQP URI lapin connects with: the default virtual host, heartbeats every 5 s (so a
    /// broker that vanished without closing the socket is noticed within seconds).
    pub fn amqp_uri(&self) -> String {
        format!("amqp://{}:{}@{}:{}/%2f?heartbeat=5", encode(&self.user), encode(&self.password), self.host, self.port)
    }
}

/// Percent-encodes everything but unreserved characters (user names and passwords).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `reconnect_timeout` option: how long a broker may stay away during a run.
pub(crate) fn reconnect_timeout(options: &mut UriOptions, what: &str) -> Result<Duration> {
    match options.text("reconnect_timeout") {
        None => Ok(DEFAULT_RECONNECT_TIMEOUT),
        Some(text) => humantime::parse_duration(&text).map_err(|e| anyhow!("{what}: reconnect_timeout={text:?}: {e} (write 30s or 2m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a = Address::parse("x", "rabbitmq://127.0.0.1:5672/payments").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.user.as_str(), a.password.as_str()), ("127.0.0.1", 5672, "guest", "guest"));
        assert_eq!(a.queues, vec!["payments"]);
        assert_eq!(a.amqp_uri(), "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5");
        let a = Address::parse("x", "rabbitmq://me:p@ss:w@broker/a,b").unwrap();
        assert_eq!((a.user.as_str(), a.password.as_str(), a.port), ("me", "p@ss:w", 5672));
        assert_eq!(a.queues, vec!["a", "b"]);
        assert!(a.amqp_uri().starts_with("amqp://me:p%40ss%3Aw@broker:5672/"));
        for bad in ["rabbitmq://h:1", "rabbitmq://h:1/", "rabbitmq://:1/q", "rabbitmq://h:x/q", "rabbitmq://h/a,a", "amqp://h/q"] {
            assert!(Address::parse("x", bad).is_err(), "{bad}");
        }
    }
}
