//! PostgreSQL connectors for paystream, over `tokio-postgres`: `postgres://USER@HOST:PORT/DB?table=NAME`
//! as a sink (append or upsert, exactly-once with checkpoints).
//!
//! [`register`] adds the sink to a program's connectors. [`sql`] holds the pure parts (the column
//! type rule, identifier quoting, the statements), [`client`] connecting and backing off, and
//! [`sink`] the connector and its writers.

mod client;
mod sink;
pub mod sql;

use paystream_engine::Connectors;

pub use sink::PostgresSink;

/// Adds the `postgres://` sink to `connectors`.
pub fn register(connectors: Connectors) -> Connectors {
    connectors.sink(PostgresSink)
}
