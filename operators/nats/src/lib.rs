//! NATS JetStream connectors for paystream, over async-nats: `nats://HOST:PORT/STREAM` as a
//! source (one split per stream, replayable from a checkpointed stream sequence) and as a sink
//! (exactly-once with checkpoints by write-ahead and `Nats-Msg-Id` de-duplication within the
//! stream's duplicate window).
//!
//! [`register`] adds both to a program's connectors. [`admin`] holds the few blocking calls the
//! tests (and a user's tooling) need: whether a server answers, publish, read a stream, delete
//! a stream.
//!
//! Only what Debian's nats-server 2.9 has is used: legacy ephemeral consumer creation, pull
//! batches with `expires`, `Nats-Msg-Id`, `duplicate_window`.

mod address;
pub mod admin;
mod client;
mod sink;
mod source;

use paystream_engine::Connectors;

pub use address::Address;
pub use sink::NatsSink;
pub use source::NatsSource;

/// Adds the `nats://` source and sink to `connectors`.
pub fn register(connectors: Connectors) -> Connectors {
    connectors.source(NatsSource).sink(NatsSink)
}
