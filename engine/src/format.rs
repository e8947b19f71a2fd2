//! Payload formats: how one message (a line of a file, a broker message) encodes a record.
//!
//! Formats are apart from transports: every connector that carries text records takes
//! `format=csv|jsonl` (files also infer it from their extension), and the engine decodes with the
//! same fast decoders whatever the transport (see `crate::decode`).

use std::path::Path;

use anyhow::bail;

use crate::Result;

/// A text format of records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// Comma-separated values with an optional header line (`.csv`).
    Csv,
    /// One JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    JsonLines,
}

impl Format {
    /// The format of a file, from its extension.
    pub fn of_path(path: &Path) -> Option<Format> {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("csv") => Some(Format::Csv),
            Some("jsonl") | Some("ndjson") | Some("json") => Some(Format::JsonLines),
            _ => None,
        }
    }

    /// The format named by a `format=` option: `csv` or `jsonl`.
    pub fn from_name(name: &str) -> Result<Format> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
            other => bail!("unknown format {other:?}; use format=csv or format=jsonl"),
        }
    }

    /// Its name in a `format=` option.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::JsonLines => "jsonl",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension_and_name() {
        assert_eq!(Format::of_path(Path::new("a/b.CSV")), Some(Format::Csv));
        assert_eq!(Format::of_path(Path::new("b.ndjson")), Some(Format::JsonLines));
        assert_eq!(Format::of_path(Path::new("b.txt")), None);
        assert_eq!(Format::from_name("jsonl").unwrap(), Format::JsonLines);
        assert!(Format::from_name("xml").unwrap_err().to_string().contains("format=csv"));
    }
}
