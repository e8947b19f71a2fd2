//! The address part of a `nats://HOST:PORT/STREAM` URI, and the options every nats URI takes.

use std::time::Duration;

use anyhow::{anyhow, bail};
use paystream_engine::connector::UriOptions;
use paystream_engine::Result;

/// How long connecting may take at the start before the run fails, by default.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may stay away during a run before the job fails, by default.
pub(crate) const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a nats URI points: a server and one JetStream stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP address.
    pub host: String,
    /// Client port (4222 by default).
    pub port: u16,
    /// The stream's name.
    pub stream: String,
}

impl Address {
    /// Parses `nats://HOST[:PORT]/STREAM` without its query part; `what` names the URI in errors.
    pub fn parse(what: &str, uri: &str) -> Result<Address> {
        let Some(rest) = uri.strip_prefix("nats://") else {
            bail!("{what}: write nats://HOST:PORT/STREAM");
        };
        let (host_port, stream) = rest.split_once('/').ok_or_else(|| anyhow!("{what}: no stream: write nats://HOST:PORT/STREAM"))?;
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| anyhow!("{what}: port {p:?} is not a number"))?),
            None => (host_port.to_string(), 4222),
        };
        if host.is_empty() || host.contains('@') {
            bail!("{what}: write nats://HOST:PORT/STREAM (no credentials: authentication is not supported yet)");
        }
        if stream.is_empty() {
            bail!("{what}: no stream: write nats://HOST:PORT/STREAM");
        }
        // JetStream's rule for stream names.
        if stream.len() > 255 || stream.contains(['.', '*', '>', ' ', '\t', '/', '\\', ',']) {
            bail!("{what}: {stream:?} is not a stream name (at most 255 bytes, none of . * > / \\ , or spaces)");
        }
        Ok(Address { host, port, stream: stream.to_string() })
    }

    /// `HOST:PORT`, for messages and for connecting.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Whether `subject` is a valid subject or (with `wildcards`) a subject filter: dot-separated
/// non-empty tokens without spaces, `*` a whole token, `>` only as the last token.
pub(crate) fn check_subject(what: &str, subject: &str, wildcards: bool) -> Result<()> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let bad = token.is_empty()
            || token.contains([' ', '\t', '\r', '\n'])
            || (token.contains(['*', '>']) && token.len() > 1)
            || (*token == ">" && i + 1 != tokens.len())
            || (!wildcards && (*token == "*" || *token == ">"));
        if bad {
            let kind = if wildcards { "subject filter" } else { "subject (no wildcards)" };
            bail!("{what}: subject={subject:?} is not a valid {kind}");
        }
    }
    Ok(())
}

/// Whether subject filter `pattern` (with `*` and `>`) matches subject `subject`.
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The `connect_timeout` and `reconnect_timeout` options.
pub(crate) fn timeouts(options: &mut UriOptions, what: &str) -> Result<(Duration, Duration)> {
    let parse = |name: &str, text: Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text).map_err(|e| anyhow!("{what}: {name}={text:?}: {e} (write 10s or 2m)")),
    };
    let connect = parse("connect_timeout", options.text("connect_timeout"), DEFAULT_CONNECT_TIMEOUT)?;
    let reconnect = parse("reconnect_timeout", options.text("reconnect_timeout"), DEFAULT_RECONNECT_TIMEOUT)?;
    if connect.is_zero() {
        bail!("{what}: connect_timeout must be more than 0");
    }
    Ok((connect, reconnect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a = Address::parse("x", "nats://127.0.0.1:4222/PAYMENTS").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.stream.as_str()), ("127.0.0.1", 4222, "PAYMENTS"));
        assert_eq!(Address::parse("x", "nats://broker/s").unwrap().port, 4222);
        for bad in ["nats://h:1", "nats://h:1/", "nats://:1/s", "nats://h:x/s", "nats://h/a.b", "nats://u@h/s", "kafka://h/s"] {
            assert!(Address::parse("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects_check_and_match() {
        for good in ["payments", "payments.>", "a.*.c", ">"] {
            check_subject("x", good, true).unwrap();
        }
        for bad in ["", "a..b", "a.>.b", "a*", "a b"] {
            assert!(check_subject("x", bad, true).is_err(), "{bad}");
        }
        assert!(check_subject("x", "a.*", false).is_err());
        assert!(subject_matches("payments.>", "payments.eu.card"));
        assert!(!subject_matches("payments.>", "payments"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("windows", "windows"));
    }
}
