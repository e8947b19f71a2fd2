//! Source and sink addresses: `gen:k=v,...`, `file:PATH`, `stdout:`.
//!
//! URIs are parsed and checked once, before any worker starts, so a typo gives one clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::Result;

/// A text format, chosen by file extension.
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
}

/// Where a source reads from.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceUri {
    /// The deterministic generator of the source's record type, with its options.
    Generator(BTreeMap<String, String>),
    /// Files: one file, or every `.csv`/`.jsonl` file of a directory (one partition each, in name order).
    Files(Vec<(PathBuf, Format)>),
}

/// Where a sink writes to.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkUri {
    /// One file, written by worker 0.
    File(PathBuf, Format),
    /// Standard output, as CSV with a header.
    Stdout,
}

impl SinkUri {
    /// The directory beside which side outputs (dead letters, late records) go by default.
    pub fn directory(&self) -> Option<PathBuf> {
        match self {
            SinkUri::File(p, _) => Some(p.parent().map(Path::to_path_buf).unwrap_or_default()),
            SinkUri::Stdout => None,
        }
    }
}

fn parse_options(text: &str) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("generator option {part:?} is not KEY=VALUE (example: gen:count=1000,seed=7)");
        };
        options.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(options)
}

/// Parses and checks a source URI: the file or directory must exist.
pub fn parse_source(uri: &str) -> Result<SourceUri> {
    if let Some(rest) = uri.strip_prefix("gen:") {
        return Ok(SourceUri::Generator(parse_options(rest)?));
    }
    if let Some(path) = uri.strip_prefix("file:") {
        let path = PathBuf::from(path);
        let meta = std::fs::metadata(&path).with_context(|| format!("source {uri}: cannot read {}", path.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&path).with_context(|| format!("source {uri}: cannot list {}", path.display()))? {
                let p = entry?.path();
                if let (true, Some(f)) = (p.is_file(), Format::of_path(&p)) {
                    files.push((p, f));
                }
            }
            files.sort();
            if files.is_empty() {
                bail!("source {uri}: directory {} holds no .csv or .jsonl files", path.display());
            }
            return Ok(SourceUri::Files(files));
        }
        let Some(format) = Format::of_path(&path) else {
            bail!("source {uri}: unknown file type; name it .csv or .jsonl");
        };
        return Ok(SourceUri::Files(vec![(path, format)]));
    }
    bail!("source URI {uri:?} is not supported; use gen:[KEY=VALUE,...] or file:PATH (.csv, .jsonl or a directory)")
}

/// Parses and checks a sink URI.
pub fn parse_sink(uri: &str) -> Result<SinkUri> {
    if uri == "stdout:" || uri == "stdout" {
        return Ok(SinkUri::Stdout);
    }
    if let Some(path) = uri.strip_prefix("file:") {
        let path = PathBuf::from(path);
        if path.is_dir() {
            bail!("sink {uri}: {} is a directory; name a file such as {}/out.csv", path.display(), path.display());
        }
        let Some(format) = Format::of_path(&path) else {
            bail!("sink {uri}: unknown file type; name it .csv or .jsonl");
        };
        return Ok(SinkUri::File(path, format));
    }
    bail!("sink URI {uri:?} is not supported; use file:PATH (.csv or .jsonl) or stdout:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_generator_options() {
        let SourceUri::Generator(o) = parse_source("gen:count=10, seed=7").unwrap() else { panic!() };
        assert_eq!(o.get("count").unwrap(), "10");
        assert_eq!(o.get("seed").unwrap(), "7");
        assert!(parse_source("gen:count").is_err());
        assert_eq!(parse_source("gen:").unwrap(), SourceUri::Generator(BTreeMap::new()));
    }

    #[test]
    fn rejects_bad_uris() {
        let e = parse_source("kafka://x").unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
        let e = parse_source("file:/no/such/file.csv").unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        assert!(parse_sink("file:out.txt").is_err());
        assert_eq!(parse_sink("stdout:").unwrap(), SinkUri::Stdout);
        assert_eq!(parse_sink("file:a/b.jsonl").unwrap(), SinkUri::File("a/b.jsonl".into(), Format::JsonLines));
    }
}
