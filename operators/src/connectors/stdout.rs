//! `stdout:`: results printed on standard output as they are final (CSV with a header, or
//! `stdout:?format=jsonl`). With checkpoints it is at-least-once: output after the last
//! checkpoint may be printed again after a restore. A closed pipe fails the job.

use std::io::{BufWriter, Stdout, Write};
use std::sync::Arc;

use anyhow::Context;
use paystream_engine::connector::{Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter, UriOptions};
use paystream_engine::{Format, Result};

/// The `stdout:` sink connector.
pub struct StdoutSink;

impl SinkConnector for StdoutSink {
    fn scheme(&self) -> &'static str {
        "stdout"
    }
    fn usage(&self) -> &'static str {
        "stdout:[?format=csv|jsonl]"
    }
    fn open(&self, sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let (rest, mut options) = UriOptions::split_query(&format!("sink {sink} ({uri})"), uri)?;
        if !matches!(rest.as_str(), "stdout:" | "stdout") {
            anyhow::bail!("sink {sink}: {uri:?}: stdout takes no path; write stdout: (or stdout:?format=jsonl)");
        }
        let format = match options.text("format") {
            Some(name) => Format::from_name(&name).with_context(|| format!("sink {sink} ({uri})"))?,
            None => Format::Csv,
        };
        options.finish()?;
        Ok(Arc::new(StdoutTarget { format }))
    }
}

#[derive(Debug)]
struct StdoutTarget {
    format: Format,
}

impl SinkTarget for StdoutTarget {
    fn format(&self) -> Format {
        self.format
    }
    fn describe(&self) -> String {
        "stdout".to_string()
    }
    fn recover(&self, _recovery: &Recovery) -> Result<()> {
        Ok(())
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let mut out = BufWriter::new(std::io::stdout());
        if let Some(h) = &context.header {
            writeln!(out, "{h}").context("cannot write to stdout")?;
        }
        Ok(Box::new(StdoutWriter { out }))
    }
}

struct StdoutWriter {
    out: BufWriter<Stdout>,
}

impl SinkWriter for StdoutWriter {
    fn write(&mut self, _epoch: u64, lines: Vec<String>) -> Result<()> {
        for line in lines {
            self.out.write_all(line.as_bytes()).and_then(|_| self.out.write_all(b"\n")).context("cannot write to stdout")?;
        }
        Ok(())
    }
    fn pre_commit(&mut self, _epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        self.out.flush().context("cannot write to stdout")?;
        Ok(Progress::Ready(None))
    }
    fn commit(&mut self, _epoch: u64, _committable: &[u8]) -> Result<Progress> {
        Ok(Progress::Ready(()))
    }
    fn finish(&mut self) -> Result<Progress> {
        self.out.flush().context("cannot write to stdout")?;
        Ok(Progress::Ready(()))
    }
}
