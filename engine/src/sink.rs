//! Sinks: where results go.
//!
//! Records are encoded (CSV or JSON lines) on the worker that produced them, then sent to worker 0,
//! which writes them. Worker 0 holds each watermark's records until the watermark passes, then
//! writes them sorted (by line, or by a key the job gives and then by line), so a file's content depends only on the input, never on thread timing: runs
//! with 1, 2 or N workers, or several processes, write the same bytes.
//!
//! A file sink writes to `PATH.inprogress` and renames it to `PATH` when the job finishes, so a
//! file at `PATH` is always complete (from a finished run). Delivery guarantee: exactly the results
//! of the input, once, for a run that finishes; a run that dies leaves only the `.inprogress` file
//! (checkpointed, transactional output comes with checkpoints).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use crate::record::CsvRecord;
use crate::stream::Stream;
use crate::uri::{Format, SinkUri};
use crate::Data;

/// Where encoded lines are written.
struct Output {
    writer: Box<dyn Write>,
    /// `(in-progress path, final path)` for files.
    rename: Option<(PathBuf, PathBuf)>,
}

fn open(uri: &SinkUri, header: Option<String>) -> std::io::Result<Output> {
    let mut out = match uri {
        SinkUri::Stdout => Output { writer: Box::new(BufWriter::new(std::io::stdout())), rename: None },
        SinkUri::File(path, _) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut staged = path.clone().into_os_string();
            staged.push(".inprogress");
            let staged = PathBuf::from(staged);
            let file = File::create(&staged)?;
            Output { writer: Box::new(BufWriter::with_capacity(1 << 20, file)), rename: Some((staged, path.clone())) }
        }
    };
    if let Some(h) = header {
        writeln!(out.writer, "{h}")?;
    }
    Ok(out)
}

pub(crate) fn build_sink<T: Data + CsvRecord>(stream: Stream<'_, T>, name: &str, uri: SinkUri, order: impl Fn(&T) -> u64 + 'static) {
    if stream.ctx.dry_run {
        return;
    }
    let format = match &uri {
        SinkUri::File(_, f) => *f,
        SinkUri::Stdout => Format::Csv,
    };
    let metrics = stream.ctx.metrics.clone();
    let is_writer = stream.inner.scope().index() == 0;
    let sink_name = name.to_string();
    if is_writer {
        metrics.add(&format!("written:{name}"), 0);
    }
    let encoded =
        stream.inner.unary::<CapacityContainerBuilder<Vec<(u64, String)>>, _, _, _>(Pipeline, &format!("encode:{name}"), move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for (_, record) in data.drain(..) {
                        let mut line = String::with_capacity(64);
                        match format {
                            Format::Csv => record.write_csv(&mut line),
                            Format::JsonLines => {
                                line = serde_json::to_string(&record)
                                    .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode record: {e}\"}}"))
                            }
                        }
                        session.give((order(&record), line));
                    }
                });
            }
        });
    let header = (format == Format::Csv).then(T::csv_header);
    let mut output: Option<Output> = None;
    let mut failed = false;
    let mut pending: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    let mut finished = false;
    encoded.sink(Exchange::new(|_| 0), &format!("sink:{name}"), move |(input, frontier)| {
        input.for_each(|cap, data| {
            let Some(&time) = cap.least() else { return };
            pending.entry(time).or_default().append(data);
        });
        if !is_writer || finished {
            return;
        }
        if output.is_none() && !failed {
            match open(&uri, header.clone()) {
                Ok(o) => output = Some(o),
                Err(e) => {
                    eprintln!("error: sink {sink_name}: cannot open {uri:?}: {e}; its results are lost");
                    metrics.add(&format!("sink_errors:{sink_name}"), 1);
                    failed = true;
                }
            }
        }
        let complete: Vec<u64> = pending.keys().copied().take_while(|t| !frontier.less_equal(t)).collect();
        let mut written = 0u64;
        for time in complete {
            let mut lines = pending.remove(&time).unwrap_or_default();
            lines.sort_unstable();
            written += lines.len() as u64;
            if let Some(out) = output.as_mut() {
                for (_, line) in lines {
                    if let Err(e) = writeln!(out.writer, "{line}") {
                        eprintln!("error: sink {sink_name}: write failed: {e}");
                        metrics.add(&format!("sink_errors:{sink_name}"), 1);
                        output = None;
                        failed = true;
                        break;
                    }
                }
            }
        }
        if written > 0 {
            metrics.add(&format!("written:{sink_name}"), written);
        }
        if frontier.is_empty() {
            finished = true;
            if let Some(mut out) = output.take() {
                let result = out.writer.flush();
                drop(out.writer);
                let result = result.and_then(|_| match &out.rename {
                    Some((staged, path)) => std::fs::rename(staged, path),
                    None => Ok(()),
                });
                if let Err(e) = result {
                    eprintln!("error: sink {sink_name}: cannot finish {uri:?}: {e}");
                    metrics.add(&format!("sink_errors:{sink_name}"), 1);
                }
            }
        }
    });
}
