//! What the Kafka source and sink share: the URI, the client configuration, and a client context
//! that tracks whether any broker is reachable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use paystream_engine::connector::{SourceWaker, UriOptions};
use paystream_engine::Result;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer as _;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::ProducerContext;
use rdkafka::statistics::Statistics;

/// `kafka://HOST:PORT[,HOST:PORT]/TOPIC?options`, parsed.
#[derive(Clone, Debug)]
pub(crate) struct KafkaUri {
    /// `HOST:PORT,HOST:PORT`, as librdkafka's `bootstrap.servers` takes it.
    pub brokers: String,
    pub topic: String,
    pub options: UriOptions,
}

impl KafkaUri {
    /// Parses `uri`; `what` names it in errors (`source payments=kafka://…`).
    pub fn parse(what: &str, uri: &str) -> Result<KafkaUri> {
        let (rest, options) = UriOptions::split_query(what, uri)?;
        let Some(rest) = rest.strip_prefix("kafka://") else {
            bail!("{what}: a Kafka URI is kafka://HOST:PORT[,HOST:PORT]/TOPIC[?options]");
        };
        let Some((brokers, topic)) = rest.split_once('/') else {
            bail!("{what}: no topic: write kafka://{rest}/TOPIC");
        };
        if brokers.is_empty() {
            bail!("{what}: no broker address: write kafka://HOST:PORT/{topic}");
        }
        for broker in brokers.split(',') {
            let Some((host, port)) = broker.rsplit_once(':') else {
                bail!("{what}: broker {broker:?} has no port: write HOST:PORT (Kafka's default port is 9092)");
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                bail!("{what}: broker {broker:?} is not HOST:PORT");
            }
        }
        if topic.is_empty() || topic.contains('/') || !topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            bail!("{what}: topic {topic:?} is not a valid Kafka topic name (letters, digits, '.', '_' and '-')");
        }
        Ok(KafkaUri { brokers: brokers.to_string(), topic: topic.to_string(), options })
    }

    /// The client configuration every client of this URI starts from.
    pub fn client_config(&self) -> ClientConfig {
        keep_freed_memory();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            // librdkafka's reconnect backoff is exponential between these bounds.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "2000")
            // Broker states come with the statistics: see `Health`.
            .set("statistics.interval.ms", "1000")
            .set("log_level", "3");
        config
    }
}

/// Has the C allocator keep what it frees, once per process, before the first Kafka client.
///
/// librdkafka allocates with the C library's malloc (paystream's own allocations go to mimalloc),
/// a buffer per fetch response, about a megabyte per partition. glibc serves and frees buffers
/// that size with `mmap`/`munmap` or by growing and trimming the heap, so every fetch faulted in
/// fresh pages the kernel had to zero: 30% of a Kafka-reading job's CPU (`perf`, throughput-
/// windows over 500,000 messages from Tansu: `clear_page_erms` under `sysmalloc` and the socket
/// copy). With a fixed 32 MiB mmap threshold and a 256 MiB trim threshold the heap keeps the pages
/// and reuses them: 0.505 → 0.38 CPU-s per run (median of 4 alternating runs, +15 MiB peak RSS;
/// `clear_page_erms` 30% → 3%). glibc only: other C libraries allocate differently. (mimalloc
/// overriding malloc for the whole process measured no better, and changes every C library's
/// allocator.)
fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters (glibc's own global settings, which it
        // reads at each allocation); called once, before the first Kafka client exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    });
}

/// Whether the brokers are reachable, as librdkafka's statistics and error callbacks tell: the
/// time since none was (`None` while one is up) and the last error seen.
#[derive(Default)]
pub(crate) struct HealthState {
    pub down_since: Option<Instant>,
    pub last_error: Option<String>,
    /// The first message a producer could not deliver.
    pub delivery_error: Option<String>,
    /// Per partition, the offset after the last message a producer delivered.
    pub delivered: std::collections::BTreeMap<i32, i64>,
    pub waker: Option<SourceWaker>,
}

/// A client context that keeps a [`HealthState`].
#[derive(Clone, Default)]
pub(crate) struct Health(pub Arc<Mutex<HealthState>>);

impl Health {
    pub fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Data or an end of partition arrived: a broker answered.
    pub fn up(&self) {
        let mut s = self.state();
        s.down_since = None;
    }

    /// `Some(message)` once the brokers have been unreachable for longer than `limit`.
    pub fn failed(&self, limit: Duration, brokers: &str) -> Option<String> {
        let s = self.state();
        let since = s.down_since?;
        (since.elapsed() >= limit).then(|| {
            format!(
                "no Kafka broker at {brokers} answered for {:.0?} (reconnect_timeout={:?}){}; restore from the last checkpoint \
                 once the broker is back",
                since.elapsed(),
                limit,
                s.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            )
        })
    }

    pub fn set_waker(&self, waker: SourceWaker) {
        self.state().waker = Some(waker);
    }
}

impl ClientContext for Health {
    fn stats(&self, statistics: Statistics) {
        // Bootstrap entries (`-1` ids, named after the URI) count too: they are real connections.
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        let waker = {
            let mut s = self.state();
            match (up, s.down_since) {
                (true, _) => s.down_since = None,
                (false, None) => s.down_since = Some(Instant::now()),
                (false, Some(_)) => {}
            }
            // While down, wake the reader each second so it can notice the limit passing.
            s.down_since.and(s.waker.clone())
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let mut s = self.state();
        s.last_error = Some(format!("{error}: {reason}"));
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure)
        ) && s.down_since.is_none()
        {
            s.down_since = Some(Instant::now());
        }
        drop(s);
        tracing::debug!("kafka: {error}: {reason}");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!("librdkafka {level:?} {fac}: {log_message}");
    }
}

impl ConsumerContext for Health {}

impl ProducerContext for Health {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _opaque: Self::DeliveryOpaque) {
        use rdkafka::message::Message;
        let mut s = self.state();
        match result {
            Err((e, _)) => {
                s.delivery_error.get_or_insert_with(|| e.to_string());
            }
            Ok(m) => {
                let end = s.delivered.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
        }
    }
}

/// The number of partitions of `topic`, or `None` when it does not exist; fails with a clear
/// message when no broker answers within `timeout`.
pub(crate) fn partitions(what: &str, uri: &KafkaUri, timeout: Duration) -> Result<Option<u32>> {
    let consumer: rdkafka::consumer::BaseConsumer<Health> = uri
        .client_config()
        .set("statistics.interval.ms", "0")
        .create_with_context(Health::default())
        .map_err(|e| anyhow!("{what}: cannot create a Kafka client: {e}"))?;
    let metadata = match rdkafka::consumer::Consumer::fetch_metadata(&consumer, Some(&uri.topic), timeout) {
        Ok(m) => m,
        Err(e) => {
            let last = consumer.context().state().last_error.clone();
            bail!(
                "{what}: no Kafka broker at {} answered within {timeout:?} ({}); is the broker running? (connect_timeout=DURATION \
                 waits longer)",
                uri.brokers,
                last.unwrap_or_else(|| e.to_string())
            );
        }
    };
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == uri.topic && !t.partitions().is_empty()) else {
        return Ok(None);
    };
    match topic.error() {
        None => Ok(Some(topic.partitions().len() as u32)),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => Ok(None),
        Some(code) => bail!("{what}: topic {}: {:?}", uri.topic, code),
    }
}

/// The partition's end (read-committed: the last stable offset) as the last fetch response
/// reported it. Read from the fetch, not from a ListOffsets request: Tansu 0.6, the broker CI
/// runs, answers ListOffsets(latest) with the last batch's base offset + 1 instead of the end.
pub(crate) fn cached_high(consumer: &rdkafka::consumer::BaseConsumer<Health>, topic: &str, partition: i32) -> Option<u64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; the call only copies the
    // partition's cached offsets into the two locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(consumer.client().native_ptr(), topic.as_ptr(), partition, &mut low, &mut high)
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high as u64)
}

/// The message's key and timestamp put into its payload as fields a job's record can declare
/// (`key_field=NAME`, `timestamp_field=NAME` on the source URI).
#[derive(Clone, Debug, Default)]
pub(crate) struct MetadataFields {
    pub key: Option<String>,
    pub timestamp: Option<String>,
}

impl MetadataFields {
    pub fn any(&self) -> bool {
        self.key.is_some() || self.timestamp.is_some()
    }

    /// `payload` with the fields asked for: in a JSON object, as its first members (the key as
    /// a number when it is an integer, else as a string; `null` when the message has none); in a
    /// CSV line, as columns after the last (the key quoted when it must be, empty when absent).
    /// A JSON payload that is not an object is left as it is, for the decoder to refuse.
    pub fn apply<'a>(
        &self,
        format: paystream_engine::Format,
        payload: &'a [u8],
        key: Option<&[u8]>,
        timestamp: Option<i64>,
        out: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        use std::io::Write;
        out.clear();
        let key_text = key.map(String::from_utf8_lossy);
        match format {
            paystream_engine::Format::JsonLines => {
                let start = payload.iter().position(|b| !b.is_ascii_whitespace());
                let Some(open) = start.filter(|&i| payload[i] == b'{') else { return payload };
                let rest = &payload[open + 1..];
                out.push(b'{');
                let mut first = true;
                if let Some(name) = &self.key {
                    first = false;
                    let _ = write!(out, "{}:", serde_json::Value::String(name.clone()));
                    match &key_text {
                        Some(k) if is_integer(k) => out.extend_from_slice(k.as_bytes()),
                        Some(k) => {
                            let _ = write!(out, "{}", serde_json::Value::String(k.to_string()));
                        }
                        None => out.extend_from_slice(b"null"),
                    }
                }
                if let Some(name) = &self.timestamp {
                    if !first {
                        out.push(b',');
                    }
                    let _ = write!(out, "{}:", serde_json::Value::String(name.clone()));
                    match timestamp {
                        Some(t) => {
                            let _ = write!(out, "{t}");
                        }
                        None => out.extend_from_slice(b"null"),
                    }
                }
                if rest.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
                    out.push(b',');
                }
                out.extend_from_slice(rest);
            }
            paystream_engine::Format::Csv => {
                let mut line = payload;
                while let [head @ .., b'\n' | b'\r'] = line {
                    line = head;
                }
                out.extend_from_slice(line);
                if self.key.is_some() {
                    out.push(b',');
                    if let Some(k) = &key_text {
                        if k.contains([',', '"', '\n', '\r']) {
                            out.push(b'"');
                            out.extend_from_slice(k.replace('"', "\"\"").as_bytes());
                            out.push(b'"');
                        } else {
                            out.extend_from_slice(k.as_bytes());
                        }
                    }
                }
                if self.timestamp.is_some() {
                    out.push(b',');
                    if let Some(t) = timestamp {
                        let _ = write!(out, "{t}");
                    }
                }
            }
        }
        out
    }
}

/// `-?[0-9]+` without leading zeros (so that it reads back as the same text).
fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0')) && digits.len() <= 18
}

#[cfg(test)]
mod tests {
    use super::MetadataFields;
    use paystream_engine::Format;

    fn apply(m: &MetadataFields, format: Format, payload: &str, key: Option<&str>, ts: Option<i64>) -> String {
        let mut out = Vec::new();
        String::from_utf8(m.apply(format, payload.as_bytes(), key.map(str::as_bytes), ts, &mut out).to_vec()).unwrap()
    }

    #[test]
    fn json_gets_the_key_and_timestamp_as_first_members() {
        let both = MetadataFields { key: Some("merchant_id".into()), timestamp: Some("ts_ms".into()) };
        assert_eq!(apply(&both, Format::JsonLines, r#"{"a":1}"#, Some("42"), Some(7)), r#"{"merchant_id":42,"ts_ms":7,"a":1}"#);
        assert_eq!(apply(&both, Format::JsonLines, " {} ", Some("m-1"), None), r#"{"merchant_id":"m-1","ts_ms":null} "#);
        assert_eq!(apply(&both, Format::JsonLines, r#"{"a":1}"#, Some("007"), Some(1)), r#"{"merchant_id":"007","ts_ms":1,"a":1}"#);
        let key = MetadataFields { key: Some("k".into()), timestamp: None };
        assert_eq!(apply(&key, Format::JsonLines, r#"{ "a":1}"#, None, Some(1)), r#"{"k":null, "a":1}"#);
        assert_eq!(apply(&key, Format::JsonLines, r#"{"a":1}"#, Some("say \"hi\""), None), r#"{"k":"say \"hi\"","a":1}"#);
        // Not an object: left for the decoder to refuse.
        assert_eq!(apply(&key, Format::JsonLines, "[1]", Some("1"), None), "[1]");
    }

    #[test]
    fn csv_gets_the_key_and_timestamp_as_last_columns() {
        let both = MetadataFields { key: Some("k".into()), timestamp: Some("t".into()) };
        assert_eq!(apply(&both, Format::Csv, "1,2\n", Some("42"), Some(7)), "1,2,42,7");
        assert_eq!(apply(&both, Format::Csv, "1,2", Some("a,\"b\""), None), "1,2,\"a,\"\"b\"\"\",");
        assert_eq!(apply(&both, Format::Csv, "1,2", None, Some(3)), "1,2,,3");
    }
}
