//! The connectors every paystream binary has: `file:` (source and sink), `stdout:` (sink) and
//! `gen:` (the deterministic generator of a record type, a typed source).
//!
//! [`builtin`] registers them; a program adds the generator of each record type it wants to
//! generate with [`with_generator`], and its own connectors with
//! [`Connectors::source`]/[`Connectors::sink`] (see `paystream_engine::connector`).

mod file;
mod generator;
mod stdout;

use std::path::Path;

use paystream_engine::connector::Connectors;

pub use file::{FileSink, FileSource};
pub use generator::{generator_source, with_generator, GENERATOR_USAGE};
pub use stdout::StdoutSink;

/// `file:` and `stdout:`; sources default to `gen:`, sinks to `file:DIR/NAME.csv`.
pub fn builtin() -> Connectors {
    Connectors::default()
        .source(FileSource)
        .sink(FileSink)
        .sink(StdoutSink)
        .default_source("gen:")
        .default_sink(|dir: &Path, name: &str| format!("file:{}", dir.join(format!("{name}.csv")).display()))
}
