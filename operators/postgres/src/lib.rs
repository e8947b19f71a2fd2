//! PostgreSQL connectors for paystream, over `tokio-postgres`: `postgres://USER@HOST:PORT/DB?table=NAME`
//! as a sink (append or upsert, exactly-once with checkpoints) and as a source (a reference
//! table read as a snapshot, then polled by an increasing column: the table side of a temporal
//! join).
//!
//! [`register`] adds both to a program's connectors. [`sql`] holds the pure parts of the sink
//! (the column type rule, identifier quoting, the statements), `client` connecting and backing
//! off, `sink` the sink's connector and writers, and `source` the source's connector and
//! split reader.

mod client;
mod sink;
mod source;
pub mod sql;

use paystream_engine::Connectors;

pub use sink::PostgresSink;
pub use source::PostgresSource;

/// Adds the `postgres://` source and sink to `connectors`.
pub fn register(connectors: Connectors) -> Connectors {
    connectors.source(PostgresSource).sink(PostgresSink)
}
