//! RabbitMQ connectors for paystream, over AMQP 0-9-1 (lapin): `rabbitmq://HOST:PORT/QUEUE` as a
//! source (stream queues replayable from a checkpointed offset; classic queues acknowledged when
//! a checkpoint covers them, at-least-once) and as a sink (a stream queue, exactly-once with
//! checkpoints by write-ahead and message ids).
//!
//! [`register`] adds both to a program's connectors. [`admin`] holds the few blocking calls the
//! tests (and a user's tooling) need: publish, read a stream, delete a queue.
//!
//! Why AMQP and not the native stream protocol: one protocol and port serve stream and classic
//! queues alike, with no plugin to enable on the broker; the stream protocol's broker-side
//! de-duplication is replaced by message ids the sink looks up in the stream's tail when it
//! redoes a publish.

mod address;
pub mod admin;
mod client;
mod sink;
mod source;

use paystream_engine::Connectors;

pub use address::Address;
pub use sink::RabbitSink;
pub use source::RabbitSource;

/// Adds the `rabbitmq://` source and sink to `connectors`.
pub fn register(connectors: Connectors) -> Connectors {
    connectors.source(RabbitSource).sink(RabbitSink)
}
