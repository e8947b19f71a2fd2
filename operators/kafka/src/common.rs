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
