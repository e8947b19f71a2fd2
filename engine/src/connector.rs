//! Connectors: the seams between a job and the systems it reads and writes.
//!
//! A source or sink is named in a run by a URI (`SCHEME:REST`, such as `file:in.csv` or
//! `kafka://host:9092/payments?format=jsonl`); the scheme picks a connector from the
//! [`Connectors`] registry, which the program assembles where the CLI is built (the facade adds
//! the built-in ones; a user's own binary adds its own). The engine names no scheme.
//!
//! **Sources** follow Flink's FLIP-27: a [`SourceConnector`] parses its URI into a
//! [`PayloadSource`], which enumerates *splits* (a file, a topic partition, a stream) in a fixed
//! order. The engine deals split `i` to worker `i % workers` over all workers of all processes,
//! and each worker opens a [`SplitReader`] per split. A reader never blocks: it hands the messages
//! it has to a [`Decode`] (which turns them into records of the job's type in the URI's
//! [`Format`]), answers [`ReadStatus::Idle`] when nothing is there (and, if it registered the
//! [`SourceWaker`], wakes the worker when something arrives), reports a [`Position`] that goes
//! into checkpoints and seeks to one on restore, and is told when a checkpoint completed, so a
//! broker source can acknowledge or commit what the checkpoint covers. Watermarks, idleness and
//! lateness are the engine's, per split (see `crate::source`).
//!
//! Sources that make records of a type directly, without a payload format (the generator), are
//! *typed* connectors: registered per record type with [`Connectors::typed_source`].
//!
//! **Sinks** follow FLIP-143 (a writer and a committer) and Flink's two-phase-commit sink: a
//! [`SinkConnector`] parses its URI into a [`SinkTarget`], which opens a [`SinkWriter`] on each
//! writing worker. With checkpoints, the engine hands the writer each epoch's lines, asks it to
//! *pre-commit* the epoch when the sink's input has passed it (durable, not yet visible), stores
//! what the pre-commit returned (its *committable*) in the sink's part of the checkpoint, and asks
//! it to *commit* once the checkpoint's manifest is durable. Before a restored run,
//! [`SinkTarget::recover`] gets the committables of the checkpoint: it commits them (they may
//! have been committed already: commit is idempotent) and aborts whatever was pre-committed
//! after it. A committable must be findable from the checkpoint alone: derive transaction ids
//! and file names from (job, sink, worker, epoch). A sink is single-writer (worker 0 writes
//! every line, in an order that depends only on the input: files) or parallel (each worker
//! writes its share: brokers, databases).

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail};

use crate::decode::LineDecoder;
use crate::format::Format;
use crate::split::{Partition, Position, ReadStatus};
use crate::Result;

pub use crate::split::SourceWaker;

/// Options of a URI's query part (`?k=v&k2=v2`) or of a `gen:k=v,k2=v2` list, with a check that
/// every option given was read (a typo must not silently fall back to a default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UriOptions {
    what: String,
    values: BTreeMap<String, String>,
    read: std::collections::BTreeSet<String>,
}

impl UriOptions {
    /// Parses `k=v` pairs separated by `separator` (`&` for a query, `,` for the generator's
    /// list); `what` names the URI in errors.
    pub fn parse(what: &str, text: &str, separator: char) -> Result<UriOptions> {
        let mut values = BTreeMap::new();
        for part in text.split(separator).map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                bail!("{what}: option {part:?} is not KEY=VALUE");
            };
            if values.insert(k.trim().to_string(), v.trim().to_string()).is_some() {
                bail!("{what}: option {:?} is given twice", k.trim());
            }
        }
        Ok(UriOptions { what: what.to_string(), values, read: Default::default() })
    }

    /// Splits `rest?query` into `rest` and its options.
    pub fn split_query(what: &str, uri: &str) -> Result<(String, UriOptions)> {
        match uri.split_once('?') {
            Some((rest, query)) => Ok((rest.to_string(), UriOptions::parse(what, query, '&')?)),
            None => Ok((uri.to_string(), UriOptions { what: what.to_string(), ..Default::default() })),
        }
    }

    /// The text of option `name`, if given.
    pub fn text(&mut self, name: &str) -> Option<String> {
        self.read.insert(name.to_string());
        self.values.get(name).cloned()
    }

    /// Option `name` parsed as `T`, or `default` when absent.
    pub fn get<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        match self.text(name) {
            None => Ok(default),
            Some(text) => text.parse::<T>().map_err(|e| anyhow!("{}: option {name}={text:?}: {e}", self.what)),
        }
    }

    /// Option `name` as a positive duration ([`parse_millis`]), or `default` when absent.
    pub fn duration(&mut self, name: &str, default: std::time::Duration) -> Result<std::time::Duration> {
        match self.text(name) {
            None => Ok(default),
            Some(text) => match parse_millis(&text) {
                Ok(0) => bail!("{}: option {name}={text:?}: give a positive duration", self.what),
                Ok(ms) => Ok(std::time::Duration::from_millis(ms)),
                Err(e) => bail!("{}: option {name}={text:?}: {e}", self.what),
            },
        }
    }

    /// All options, by name.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Fails on options no one read, listing the ones that were.
    pub fn finish(&self) -> Result<()> {
        let unknown: Vec<&String> = self.values.keys().filter(|k| !self.read.contains(*k)).collect();
        if !unknown.is_empty() {
            let known: Vec<&String> = self.read.iter().collect();
            bail!("{}: unknown option(s) {unknown:?}; known options: {known:?}", self.what);
        }
        Ok(())
    }
}

/// A source connector: one URI scheme.
pub trait SourceConnector: Send + Sync + 'static {
    /// The URI scheme it serves (`file`, `kafka`), without the colon.
    fn scheme(&self) -> &'static str;
    /// One line on its URI and options, for errors and `--help`.
    fn usage(&self) -> &'static str;
    /// Parses and checks `uri` (the whole URI, scheme included) of the source named `source`:
    /// runs once before any worker starts, so a bad URI gives one clear error.
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>>;
}

/// A source of messages in a payload [`Format`], split into parts read independently.
pub trait PayloadSource: Send + Sync + fmt::Debug + 'static {
    /// How many splits it has. Their indexes are stored in checkpoints, so the same URI must
    /// always give the same splits in the same order.
    fn splits(&self) -> Result<u64>;
    /// Opens split `split` on the worker that reads it.
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>>;
}

/// Reads one split. Lives on a worker thread; never blocks it.
pub trait SplitReader: 'static {
    /// Hands up to `max` messages to `decode`. `Idle` when nothing is there right now, `Done` at
    /// the end of a bounded split.
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus;
    /// Where the next read starts, for checkpoints.
    fn position(&self) -> Position;
    /// Continues from a position a checkpoint recorded.
    fn seek(&mut self, position: &Position) -> Result<()>;
    /// Registers the worker's waker; a reader that calls it when data arrives returns `true`, and
    /// the worker then sleeps while the split is idle instead of looking again every few
    /// milliseconds.
    fn set_waker(&mut self, _waker: SourceWaker) -> bool {
        false
    }
    /// Checkpoint `epoch` is complete: every position reported up to it is durable.
    fn on_checkpoint_complete(&mut self, _epoch: u64) {}
    /// Its position for checkpoint `epoch` was just taken (the part is written): what it read up
    /// to now is what [`on_checkpoint_complete`](Self::on_checkpoint_complete) for `epoch` covers.
    fn on_checkpoint(&mut self, _epoch: u64) {}
    /// Whether the run checkpoints, told once before the first read: a broker source that
    /// acknowledges messages when a checkpoint covers them must acknowledge them on read when
    /// no checkpoint ever will.
    fn set_checkpointed(&mut self, _checkpointed: bool) {}
    /// How much is known to wait behind the position (messages or bytes), for metrics.
    fn backlog(&self) -> Option<u64> {
        None
    }
    /// An event time before which the split has handed over every record it ever will, when it
    /// knows one without seeing a later record: a table polled at a known moment (the
    /// PostgreSQL source: the poll's time minus its `lag`). The split's watermark rises to it
    /// while no record comes, so a quiet split does not hold the job back; a record that comes
    /// later with an earlier time is behind the watermark, as any late record. `None` (the
    /// default): only the records read move the watermark.
    fn complete_before(&self) -> Option<u64> {
        None
    }
}

/// Turns messages into records of the source's type (in its format); implemented by the engine.
pub trait Decode {
    /// Decodes up to `max` lines of a file (the fast path: lines are decoded where they lie in
    /// the reader's buffer). `Done` at the end of the file.
    fn file_lines(&mut self, lines: &mut LineDecoder, reader: &mut BufReader<File>, max: usize) -> ReadStatus;
    /// Decodes up to `max` lines of any buffered byte stream.
    fn lines(&mut self, lines: &mut LineDecoder, reader: &mut dyn BufRead, max: usize) -> ReadStatus;
    /// Decodes one message (a broker message: one CSV line or one JSON object); `number` is its
    /// position in the split (an offset), given in dead letters.
    fn message(&mut self, lines: &mut LineDecoder, payload: &[u8], number: u64);
}

/// Makes partitions of records of one type directly, without a payload format (the generator).
pub struct TypedSplits<T> {
    /// How many splits.
    pub splits: u64,
    /// Opens split `i`.
    pub open: Box<dyn Fn(u64) -> Box<dyn Partition<T>>>,
}

/// The factory of a typed source: parses and checks the URI, then makes its splits.
pub type TypedSourceFn<T> = dyn Fn(&str, &str) -> Result<TypedSplits<T>> + Send + Sync;

/// A sink connector: one URI scheme.
pub trait SinkConnector: Send + Sync + 'static {
    /// The URI scheme it serves, without the colon.
    fn scheme(&self) -> &'static str;
    /// One line on its URI and options.
    fn usage(&self) -> &'static str;
    /// Parses and checks `uri` (scheme included) of the sink named `sink`.
    fn open(&self, sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>>;
}

/// What the engine tells a sink about the run.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// The job's name.
    pub job: String,
    /// The sink's name in the job.
    pub sink: String,
    /// The writing worker's index over all processes (0 for a single-writer sink).
    pub worker: usize,
    /// Workers over all processes.
    pub workers: usize,
    /// Whether the run checkpoints (then output is committed per epoch).
    pub checkpointed: bool,
    /// The first epoch of this run (after the restored checkpoint's).
    pub first_epoch: u64,
    /// The CSV header line, when the format is CSV.
    pub header: Option<String>,
}

/// A pre-committed epoch of one writer, as stored in the sink's checkpoint part.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Committable {
    /// The writing worker.
    pub worker: usize,
    /// The epoch.
    pub epoch: u64,
    /// What the writer returned from its pre-commit (a transaction id, a file name).
    pub data: Vec<u8>,
}

/// What a sink learns before a checkpointed run starts.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The job's name.
    pub job: String,
    /// The sink's name in the job.
    pub sink: String,
    /// The checkpoint the run resumes from; `None` for a fresh run (clear what an earlier run
    /// left behind).
    pub restored: Option<u64>,
    /// The pre-commits the checkpoint covers: commit them all (idempotently). Anything
    /// pre-committed for a later epoch must be aborted.
    pub committables: Vec<Committable>,
    /// The workers of the run about to start, over all processes.
    pub workers: usize,
}

/// A parsed, checked sink address.
pub trait SinkTarget: Send + Sync + fmt::Debug + 'static {
    /// The payload format its lines are encoded in.
    fn format(&self) -> Format;
    /// `true`: every worker writes its own share; `false`: worker 0 writes all, in a
    /// deterministic order.
    fn parallel(&self) -> bool {
        false
    }
    /// Where it writes, for the end-of-run summary (`out/alerts.csv`, `kafka topic alerts`).
    fn describe(&self) -> String;
    /// A directory beside which side outputs (dead letters, late records) go by default.
    fn directory(&self) -> Option<PathBuf> {
        None
    }
    /// Before a checkpointed run, in the first process only: commit what the restored checkpoint
    /// covers and abort the rest, or clear leftovers for a fresh run.
    fn recover(&self, recovery: &Recovery) -> Result<()>;
    /// Opens the writer of one worker.
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>>;
    /// The job finished and its checkpoints are gone: remove what only a restore needed.
    fn after_finish(&self) -> Result<()> {
        Ok(())
    }
}

/// Whether a step of the sink protocol is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress<T = ()> {
    /// Done, with its result.
    Ready(T),
    /// Under way (network I/O on the connector's own thread or runtime): ask again shortly.
    Pending,
}

/// Writes one worker's share of a sink.
pub trait SinkWriter: 'static {
    /// Lines of `epoch`, complete and in their final order. Without checkpoints the epoch is
    /// always the first one. Must not block: a network sink queues them for its task on the I/O
    /// runtime (`crate::io::handle`) and reports the flush through a `Pending` pre-commit.
    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()>;
    /// Checkpointed runs: make everything written for `epoch` durable but not yet visible.
    /// Returns the committable (stored in the checkpoint), or `None` when nothing needs a commit.
    /// While it is `Pending`, [`commit`](Self::commit) may be called for earlier epochs.
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>>;
    /// Checkpoint `epoch` is complete: make its pre-committed output visible.
    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<Progress>;
    /// The input has ended (after the last commit, when checkpointed): flush and publish what
    /// is left. `Pending` while it is under way.
    fn finish(&mut self) -> Result<Progress>;
    /// The run stops without finishing (a signal, a failure elsewhere): remove partial output
    /// that is not committed. Best effort.
    fn abort(&mut self) {}
}

struct TypedEntry {
    type_name: &'static str,
    factory: Box<dyn Any + Send + Sync>,
}

/// Builds the default sink URI of a sink named `name` placed in directory `dir`.
pub type DefaultSinkFn = dyn Fn(&Path, &str) -> String + Send + Sync;

/// The connectors a program knows, by URI scheme.
#[derive(Clone)]
pub struct Connectors {
    sources: BTreeMap<&'static str, Arc<dyn SourceConnector>>,
    typed: BTreeMap<(&'static str, TypeId), Arc<TypedEntry>>,
    typed_usage: BTreeMap<&'static str, &'static str>,
    sinks: BTreeMap<&'static str, Arc<dyn SinkConnector>>,
    default_source: String,
    default_sink: Arc<DefaultSinkFn>,
}

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connectors")
            .field("sources", &self.source_schemes())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .field("default_source", &self.default_source)
            .finish()
    }
}

impl Default for Connectors {
    /// No connector at all: sources and sinks must be given explicitly.
    fn default() -> Self {
        Connectors {
            sources: BTreeMap::new(),
            typed: BTreeMap::new(),
            typed_usage: BTreeMap::new(),
            sinks: BTreeMap::new(),
            default_source: String::new(),
            default_sink: Arc::new(|_, _| String::new()),
        }
    }
}

/// A source URI resolved to its connector.
#[derive(Clone, Debug)]
pub enum SourcePlan {
    /// Messages in a payload format, decoded into the job's record type.
    Payload(Arc<dyn PayloadSource>),
    /// A typed connector, resolved against the record type when the job reads the source.
    Typed {
        /// Its scheme.
        scheme: String,
    },
}

/// A source of a run: its URI and what it resolved to.
#[derive(Clone, Debug)]
pub struct ResolvedSource {
    /// The URI as given.
    pub uri: String,
    /// The connector's view of it.
    pub plan: SourcePlan,
    /// The URI's `max_future` option, when given: `Some(None)` is `max_future=off`.
    pub max_future_ms: Option<Option<u64>>,
    /// The URI's `idle_after` option, when given: a split with no data for this long stops
    /// holding the watermark back (overrides the job's idleness timeout).
    pub idle_after_ms: Option<u64>,
}

/// A sink of a run: its URI and its target.
#[derive(Clone, Debug)]
pub struct ResolvedSink {
    /// The URI as given.
    pub uri: String,
    /// The connector's view of it.
    pub target: Arc<dyn SinkTarget>,
}

/// The scheme of a URI: the text before the first `:`.
pub fn scheme_of(uri: &str) -> Option<&str> {
    let (scheme, _) = uri.split_once(':')?;
    let valid = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

impl Connectors {
    /// Adds (or replaces) the source connector of its scheme.
    pub fn source(mut self, connector: impl SourceConnector) -> Self {
        self.sources.insert(connector.scheme(), Arc::new(connector));
        self
    }

    /// Adds (or replaces) the sink connector of its scheme.
    pub fn sink(mut self, connector: impl SinkConnector) -> Self {
        self.sinks.insert(connector.scheme(), Arc::new(connector));
        self
    }

    /// Adds a typed source of records of type `T` under `scheme` (several types may share one
    /// scheme, such as the generator's `gen`).
    pub fn typed_source<T: 'static>(mut self, scheme: &'static str, usage: &'static str, factory: Arc<TypedSourceFn<T>>) -> Self {
        let entry = TypedEntry { type_name: std::any::type_name::<T>(), factory: Box::new(factory) };
        self.typed.insert((scheme, TypeId::of::<T>()), Arc::new(entry));
        self.typed_usage.insert(scheme, usage);
        self
    }

    /// The URI a source reads when the run names none (`gen:` in the paystream binary).
    pub fn default_source(mut self, uri: &str) -> Self {
        self.default_source = uri.to_string();
        self
    }

    /// How the URI of a sink the run names none for is made from a directory and the sink's name.
    pub fn default_sink(mut self, f: impl Fn(&Path, &str) -> String + Send + Sync + 'static) -> Self {
        self.default_sink = Arc::new(f);
        self
    }

    /// Every source scheme, payload and typed.
    pub fn source_schemes(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = self.sources.keys().chain(self.typed_usage.keys()).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// One line per known source URI form.
    pub fn source_usage(&self) -> Vec<&'static str> {
        self.sources.values().map(|c| c.usage()).chain(self.typed_usage.values().copied()).collect()
    }

    /// One line per known sink URI form.
    pub fn sink_usage(&self) -> Vec<&'static str> {
        self.sinks.values().map(|c| c.usage()).collect()
    }

    /// The default source URI.
    pub fn default_source_uri(&self) -> &str {
        &self.default_source
    }

    /// The default sink URI for sink `name` in `dir`.
    pub fn default_sink_uri(&self, dir: &Path, name: &str) -> String {
        (self.default_sink)(dir, name)
    }

    /// Resolves the URI of source `name`. The `max_future` and `idle_after` options, which every
    /// source takes (`?max_future=2d`, `gen:...,max_future=off`, `?idle_after=30s`), are the
    /// engine's and are not passed on.
    pub fn resolve_source(&self, name: &str, uri: &str) -> Result<ResolvedSource> {
        let (stripped, idle_after) = take_option(uri, "idle_after");
        let idle_after_ms = match idle_after {
            None => None,
            Some(text) => match parse_millis(&text) {
                Ok(ms) if ms > 0 => Some(ms),
                Ok(_) => bail!("source {name}: idle_after={text:?}: give a positive duration such as 30s"),
                Err(e) => bail!("source {name}: idle_after={text:?}: {e}"),
            },
        };
        let (stripped, max_future) = take_option(&stripped, "max_future");
        let max_future_ms = match max_future {
            None => None,
            Some(text) => Some(parse_max_future(&text).map_err(|e| anyhow!("source {name}: max_future={text:?}: {e}"))?),
        };
        let mut resolved = self.resolve_source_connector(name, &stripped)?;
        resolved.uri = uri.to_string();
        resolved.max_future_ms = max_future_ms;
        resolved.idle_after_ms = idle_after_ms;
        Ok(resolved)
    }

    fn resolve_source_connector(&self, name: &str, uri: &str) -> Result<ResolvedSource> {
        let Some(scheme) = scheme_of(uri) else {
            bail!("source {name}: {uri:?} is not a URI (SCHEME:...); known forms: {}", self.source_usage().join("; "));
        };
        if let Some(c) = self.sources.get(scheme) {
            let plan = SourcePlan::Payload(c.open(name, uri)?);
            return Ok(ResolvedSource { uri: uri.to_string(), plan, max_future_ms: None, idle_after_ms: None });
        }
        if self.typed_usage.contains_key(scheme) {
            return Ok(ResolvedSource {
                uri: uri.to_string(),
                plan: SourcePlan::Typed { scheme: scheme.to_string() },
                max_future_ms: None,
                idle_after_ms: None,
            });
        }
        bail!(
            "source {name}: no connector for scheme {scheme:?} in {uri:?}; the known schemes are: {} ({})",
            self.source_schemes().join(", "),
            self.source_usage().join("; ")
        )
    }

    /// Resolves the URI of sink `name`.
    pub fn resolve_sink(&self, name: &str, uri: &str) -> Result<ResolvedSink> {
        let scheme = scheme_of(uri).or(if uri == "stdout" { Some("stdout") } else { None });
        let Some(scheme) = scheme else {
            bail!("sink {name}: {uri:?} is not a URI (SCHEME:...); known forms: {}", self.sink_usage().join("; "));
        };
        let Some(c) = self.sinks.get(scheme) else {
            let known: Vec<&str> = self.sinks.keys().copied().collect();
            bail!(
                "sink {name}: no connector for scheme {scheme:?} in {uri:?}; the known schemes are: {} ({})",
                known.join(", "),
                self.sink_usage().join("; ")
            );
        };
        Ok(ResolvedSink { uri: uri.to_string(), target: c.open(name, uri)? })
    }

    /// The typed source of records `T` under `scheme`, if registered.
    pub(crate) fn typed<T: 'static>(&self, scheme: &str) -> Result<Arc<TypedSourceFn<T>>> {
        let key = self.typed.keys().find(|(s, t)| *s == scheme && *t == TypeId::of::<T>()).copied();
        let entry = key.and_then(|k| self.typed.get(&k));
        match entry.and_then(|e| e.factory.downcast_ref::<Arc<TypedSourceFn<T>>>()) {
            Some(f) => Ok(f.clone()),
            None => {
                let types: Vec<&str> =
                    self.typed.iter().filter(|((s, _), _)| *s == scheme).map(|(_, e)| short_type_name(e.type_name)).collect();
                bail!(
                    "scheme {scheme:?} cannot make records of type {}; it makes: {} (read such records from a file or broker \
                     instead, or register a {scheme} source for the type with Connectors::typed_source)",
                    short_type_name(std::any::type_name::<T>()),
                    types.join(", ")
                )
            }
        }
    }
}

/// Removes option `key` (`KEY=VALUE` after `?`, `&`, `,` or the scheme's `:`) from `uri`, returning
/// the rest and the value.
fn take_option(uri: &str, key: &str) -> (String, Option<String>) {
    let pattern = format!("{key}=");
    let mut search = 0;
    while let Some(found) = uri[search..].find(&pattern).map(|i| i + search) {
        let before = uri[..found].chars().next_back();
        if matches!(before, Some('?' | '&' | ',' | ':')) {
            let value_start = found + pattern.len();
            let value_end = uri[value_start..].find(['&', ',']).map_or(uri.len(), |i| i + value_start);
            let value = uri[value_start..value_end].trim().to_string();
            // Remove `KEY=VALUE` with one separator around it, keeping the URI well formed.
            let (cut_start, cut_end) = match (before, uri[value_end..].chars().next()) {
                (Some('?' | ':'), Some('&' | ',')) => (found, value_end + 1),
                (Some('&' | ','), _) => (found - 1, value_end),
                _ => (found, value_end),
            };
            let mut rest = format!("{}{}", &uri[..cut_start], &uri[cut_end..]);
            if rest.ends_with('?') {
                rest.pop();
            }
            return (rest, Some(value));
        }
        search = found + pattern.len();
    }
    (uri.to_string(), None)
}

/// `off`, or a duration (see [`parse_millis`]).
fn parse_max_future(text: &str) -> Result<Option<u64>> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let ms = parse_millis(text).map_err(|e| anyhow!("{e} (or off)"))?;
    if ms == 0 {
        bail!("a bound of zero would refuse every record ahead of the watermark; give a positive duration or off");
    }
    Ok(Some(ms))
}

/// A duration in a URI option: a number of milliseconds, or with a unit `ms`, `s`, `m`, `h` or
/// `d` (`250ms`, `10s`, `2d`). Returns milliseconds.
pub fn parse_millis(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| anyhow!("give a duration such as 500ms, 10s, 6h or 2d"))?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => bail!("unknown unit {other:?}; use ms, s, m, h or d"),
    };
    n.checked_mul(factor).ok_or_else(|| anyhow!("too long"))
}

/// `paystream_jobs::payment::Payment` -> `Payment`.
pub fn short_type_name(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_typos() {
        let mut o = UriOptions::parse("gen:", "count=10, seed=7", ',').unwrap();
        assert_eq!(o.get("count", 0u64).unwrap(), 10);
        assert!(o.finish().unwrap_err().to_string().contains("seed"));
        assert_eq!(o.get("seed", 0u64).unwrap(), 7);
        o.finish().unwrap();
        assert!(UriOptions::parse("x", "count", ',').is_err());
        assert!(UriOptions::parse("x", "a=1&a=2", '&').unwrap_err().to_string().contains("twice"));
        let (rest, mut q) = UriOptions::split_query("x", "file:a.csv?format=jsonl").unwrap();
        assert_eq!(rest, "file:a.csv");
        assert_eq!(q.text("format").as_deref(), Some("jsonl"));
    }

    #[test]
    fn idle_after_is_the_engines() {
        let c = Connectors::default().typed_source::<u64>("gen", "gen:", Arc::new(|_: &str, _: &str| bail!("unused")));
        let r = c.resolve_source("s", "gen:count=5,idle_after=30s").expect("resolves");
        assert_eq!((r.idle_after_ms, r.max_future_ms), (Some(30_000), None));
        assert!(c.resolve_source("s", "gen:idle_after=0").is_err());
        assert!(c.resolve_source("s", "gen:idle_after=soon").unwrap_err().to_string().contains("idle_after"));
    }

    #[test]
    fn max_future_is_taken_from_any_uri_form() {
        assert_eq!(take_option("file:a.csv?max_future=2d", "max_future"), ("file:a.csv".into(), Some("2d".into())));
        assert_eq!(take_option("file:a.csv?format=csv&max_future=off", "max_future"), ("file:a.csv?format=csv".into(), Some("off".into())));
        assert_eq!(take_option("file:a.csv?max_future=1h&format=csv", "max_future"), ("file:a.csv?format=csv".into(), Some("1h".into())));
        assert_eq!(take_option("gen:count=5,max_future=off,seed=2", "max_future"), ("gen:count=5,seed=2".into(), Some("off".into())));
        assert_eq!(take_option("gen:max_future=3s", "max_future"), ("gen:".into(), Some("3s".into())));
        assert_eq!(take_option("file:dir/a.csv", "max_future"), ("file:dir/a.csv".into(), None));
        assert_eq!(parse_max_future("off").unwrap(), None);
        assert_eq!(parse_max_future("2d").unwrap(), Some(172_800_000));
        assert_eq!(parse_max_future("1500").unwrap(), Some(1500));
        assert!(parse_max_future("0s").is_err());
        assert!(parse_max_future("2w").unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn schemes() {
        assert_eq!(scheme_of("file:a.csv"), Some("file"));
        assert_eq!(scheme_of("kafka://h:1/t"), Some("kafka"));
        assert_eq!(scheme_of("a.csv"), None);
        assert_eq!(scheme_of(":x"), None);
        let e = Connectors::default().resolve_source("payments", "kafka://x").unwrap_err().to_string();
        assert!(e.contains("no connector for scheme \"kafka\""), "{e}");
        let e = Connectors::default().resolve_sink("alerts", "nats:x").unwrap_err().to_string();
        assert!(e.contains("no connector for scheme \"nats\""), "{e}");
    }
}
