//! Kafka connectors for paystream: `kafka://HOST:PORT[,HOST:PORT]/TOPIC` as a source and a sink.
//!
//! **Source.** Each partition of the topic is a split: partitions are dealt over all workers of
//! all processes, each has its own watermark and lateness, and the next offset to read is the
//! split's position in checkpoints (the broker's consumer-group offsets are not the source of
//! truth: a restore resumes right after the checkpointed offsets). Options: `format=csv|jsonl`
//! (default `jsonl`), `start=earliest|latest` (where a run without a checkpoint begins; default
//! `earliest`), `bounded=true` (read what each partition held when the job started, then end, as
//! Flink's bounded Kafka source does), `max_record_bytes=N`, `connect_timeout=DURATION` (how long
//! the broker may take to answer at start, default 10s) and `reconnect_timeout=DURATION` (how long
//! the brokers may stay unreachable during a run before the job fails with exit 1, default 60s;
//! the client reconnects with exponential backoff meanwhile). A message that cannot be decoded goes
//! to dead letters with origin `kafka topic T partition P` and, as its line, the message's offset.
//!
//! **Sink.** `kafka://HOST:PORT/TOPIC?format=csv|jsonl&key=COLUMN&partitions=N`: each worker
//! writes its own share (a parallel sink). Without checkpoints it is an idempotent producer
//! (at-least-once: a crash can leave a partial output). With checkpoints it is exactly-once,
//! through Kafka transactions, in the write-ahead form (see [`sink`]): an epoch's lines are stored
//! in the checkpoint at the pre-commit and produced in one transaction per worker and epoch once
//! the checkpoint is durable; the transaction also commits the epoch as the offset of a marker
//! consumer group, so a restore knows which epochs reached Kafka and redoes only the others. A
//! consumer with `isolation.level=read_committed` never sees an uncommitted or duplicated line.
//! The topic is created (`partitions`, default 1) when it does not exist.
//!
//! The client is `rdkafka` with its bundled librdkafka (about 1.5 minutes of extra C build on a
//! clean build of 2 cores).

mod common;
mod sink;
mod source;

pub use sink::KafkaSink;
pub use source::KafkaSource;

use paystream_engine::connector::Connectors;

/// Adds the `kafka:` source and sink to `connectors`.
pub fn register(connectors: Connectors) -> Connectors {
    connectors.source(KafkaSource).sink(KafkaSink)
}
