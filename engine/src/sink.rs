//! Sinks: where results go.
//!
//! Records are encoded (CSV or JSON lines) on the worker that produced them, then sent to worker 0,
//! which writes them. Worker 0 holds each timestamp's records until the input frontier passes it,
//! then writes them sorted (by line, or by a key the job gives and then by line), so a file's
//! content depends only on the input, never on thread timing: runs with 1, 2 or N workers, or
//! several processes, write the same bytes (updating views excepted: their revisions follow how
//! input met the watermark, see `crate::collection`).
//!
//! Delivery guarantees:
//! * Without checkpoints, a file sink writes `PATH.inprogress` and renames it to `PATH` when the
//!   job finishes, so `PATH` only ever holds a finished run's complete output. A run that dies
//!   leaves only the `.inprogress` file; start it again.
//! * With checkpoints, a file sink is exactly-once: the output of epoch `k` is staged in
//!   `PATH.parts/epoch-K.staged` (fsync) when the input passes epoch `k`, and renamed to
//!   `epoch-K.csv` (published) only once checkpoint `k` is complete. A restore publishes staged
//!   epochs up to the checkpoint and deletes later ones, so the published parts always equal what a
//!   run that never failed produced for those epochs. When the job finishes, the parts are joined
//!   into `PATH` (header first); the directory is removed with the checkpoints once the job
//!   has finished. Within the file, lines are ordered by
//!   epoch, so their order (not their content) depends on when checkpoints happened.
//! * `stdout:` prints as it goes: with checkpoints, output after the last checkpoint may be printed
//!   again after a restore (at-least-once).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;

use crate::checkpoint::{self, CommitState, Participant};
use crate::metrics::Metrics;
use crate::record::CsvRecord;
use crate::stream::Stream;
use crate::time::{frontier_bounds, Time, END_OF_TIME};
use crate::uri::{Format, SinkUri};
use crate::{Data, Result};

/// The directory where a checkpointed file sink stages and publishes its output per epoch.
pub fn parts_dir(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".parts");
    PathBuf::from(p)
}

fn staged_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch:010}.staged"))
}

fn published_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch:010}.csv"))
}

fn in_progress(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".inprogress");
    PathBuf::from(p)
}

/// The epoch of a part file name (`epoch-0000000007.staged` -> (7, staged?)).
fn part_epoch(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("epoch-")?;
    if let Some(n) = rest.strip_suffix(".staged") {
        return n.parse().ok().map(|e| (e, true));
    }
    rest.strip_suffix(".csv").and_then(|n| n.parse().ok()).map(|e| (e, false))
}

/// Prepares a file sink before a run: a fresh run removes old parts; a restore from checkpoint
/// `restored` publishes staged epochs up to it and deletes later ones (rolls forward, then back).
pub fn prepare_file_sink(path: &Path, restored: Option<u64>) -> Result<()> {
    let dir = parts_dir(path);
    fs::remove_file(in_progress(path)).ok();
    let Some(k) = restored else {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot clear {}: {e}", dir.display()))?;
        }
        return Ok(());
    };
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(&dir)? {
        let file = entry?.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        match part_epoch(&name) {
            Some((epoch, true)) if epoch <= k => fs::rename(&file, published_path(&dir, epoch))?,
            Some((epoch, _)) if epoch > k => fs::remove_file(&file)?,
            _ => {}
        }
    }
    Ok(())
}

/// Where encoded lines go.
enum Target {
    /// Straight to the output (no checkpoints): `(writer, in-progress path, final path)`.
    Direct(Box<dyn Write>, Option<(PathBuf, PathBuf)>),
    /// Staged per epoch, published on commit.
    Staged(StagedFile),
}

struct StagedFile {
    path: PathBuf,
    dir: PathBuf,
    header: Option<String>,
    /// Complete lines of epochs not yet staged.
    lines: BTreeMap<u64, Vec<String>>,
    /// The next epoch to stage.
    next_epoch: u64,
    /// Staged epochs not yet published.
    unpublished: BTreeSet<u64>,
    commit: Option<Arc<CommitState>>,
    checkpoint_dir: PathBuf,
    sink: String,
}

impl StagedFile {
    /// Stages every epoch below `complete_below`: a file with its lines (if any), fsynced, and
    /// this sink's part of the epoch's checkpoint. `last` marks the final part.
    fn stage(&mut self, complete_below: u64, last: bool) -> Result<()> {
        while self.next_epoch < complete_below {
            let epoch = self.next_epoch;
            let lines = self.lines.remove(&epoch).unwrap_or_default();
            let count = lines.len() as u64;
            if !lines.is_empty() {
                fs::create_dir_all(&self.dir)?;
                let staged = staged_path(&self.dir, epoch);
                let mut w = BufWriter::new(File::create(&staged)?);
                for line in lines {
                    writeln!(w, "{line}")?;
                }
                let file = w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", staged.display()))?;
                crate::faults::point("sink:before-stage");
                file.sync_all()?;
                self.unpublished.insert(epoch);
            }
            let who = Participant::Sink { name: self.sink.clone() };
            let ends = last && complete_below == END_OF_TIME && self.lines.is_empty();
            if ends {
                checkpoint::write_final_part(&self.checkpoint_dir, epoch, &who, &checkpoint::encode(&count)?)?;
                break;
            }
            checkpoint::write_part(&self.checkpoint_dir, epoch, &who, &checkpoint::encode(&count)?)?;
            self.next_epoch += 1;
        }
        Ok(())
    }

    /// Publishes staged epochs whose checkpoint is complete.
    fn publish(&mut self) -> Result<()> {
        let Some(committed) = self.commit.as_ref().and_then(|c| c.committed()) else { return Ok(()) };
        while let Some(&epoch) = self.unpublished.first() {
            if epoch > committed {
                break;
            }
            crate::faults::point("sink:before-publish");
            fs::rename(staged_path(&self.dir, epoch), published_path(&self.dir, epoch))?;
            self.unpublished.remove(&epoch);
        }
        Ok(())
    }

    /// Joins every part, in epoch order, into the output file, and removes the parts.
    fn finish(&mut self) -> Result<()> {
        let staging = in_progress(&self.path);
        if let Some(parent) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&staging)?);
        if let Some(h) = &self.header {
            writeln!(out, "{h}")?;
        }
        let mut parts: Vec<(u64, PathBuf)> = Vec::new();
        if self.dir.exists() {
            for entry in fs::read_dir(&self.dir)? {
                let file = entry?.path();
                if let Some((epoch, _)) = file.file_name().and_then(|n| n.to_str()).and_then(part_epoch) {
                    parts.push((epoch, file));
                }
            }
        }
        parts.sort();
        for (_, file) in &parts {
            std::io::copy(&mut File::open(file)?, &mut out)?;
        }
        let file = out.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", staging.display()))?;
        file.sync_all()?;
        fs::rename(&staging, &self.path)?;
        // The parts stay until the job has finished and its checkpoints are gone (see
        // runtime::run_prepared): a crash before then restores from a checkpoint that needs them.
        Ok(())
    }
}

fn open_direct(uri: &SinkUri, header: Option<&str>) -> std::io::Result<Target> {
    let (mut writer, rename): (Box<dyn Write>, _) = match uri {
        SinkUri::Stdout => (Box::new(BufWriter::new(std::io::stdout())), None),
        SinkUri::File(path, _) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)?;
            }
            let staged = in_progress(path);
            let file = File::create(&staged)?;
            (Box::new(BufWriter::with_capacity(1 << 20, file)), Some((staged, path.clone())))
        }
    };
    if let Some(h) = header {
        writeln!(writer, "{h}")?;
    }
    Ok(Target::Direct(writer, rename))
}

fn report(metrics: &Metrics, sink: &str, what: String) {
    tracing::error!(sink, "sink {sink}: {what}");
    metrics.add(&format!("sink_errors:{sink}"), 1);
}

/// One timestamp's `(order key, line)` pairs in the order `sort_unstable` gives them. Lines of
/// one window firing share a long prefix (the window's bounds), on which every comparison of a
/// plain sort spent its time: the lines are sorted by their order key and the 8 bytes after the
/// prefix all of them share, and only lines equal that far are compared whole (callgrind,
/// card-velocity at 200,000 events: ~140 M instructions in the sort before).
fn sorted_lines(mut lines: Vec<(u64, String)>) -> Vec<(u64, String)> {
    let Some(((_, first), rest)) = lines.split_first() else { return lines };
    let mut common = first.len();
    for (_, line) in rest {
        // Mostly the whole prefix is shared: one slice comparison.
        if !line.as_bytes().starts_with(&first.as_bytes()[..common]) {
            common = first.bytes().zip(line.bytes()).take(common).take_while(|(a, b)| a == b).count();
        }
    }
    // The bytes after the shared prefix, padded with zeros: ordered as the lines are.
    let head = |line: &str| {
        let tail = &line.as_bytes()[common..];
        let mut bytes = [0u8; 8];
        let n = tail.len().min(8);
        bytes[..n].copy_from_slice(&tail[..n]);
        u64::from_be_bytes(bytes)
    };
    let mut keys: Vec<(u64, u64, usize)> = lines.iter().enumerate().map(|(i, (order, line))| (*order, head(line), i)).collect();
    keys.sort_unstable_by(|a, b| {
        (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| lines[a.2].1.as_bytes()[common..].cmp(&lines[b.2].1.as_bytes()[common..]))
    });
    // Put line `keys[j].2` at `j`, in place, one cycle of the permutation at a time (marking a
    // place done by pointing it at itself): no second vector of lines at the sink's peak.
    for start in 0..keys.len() {
        if keys[start].2 == start {
            continue;
        }
        let held = std::mem::take(&mut lines[start]);
        let mut at = start;
        loop {
            let from = std::mem::replace(&mut keys[at].2, at);
            if from == start {
                lines[at] = held;
                break;
            }
            lines[at] = std::mem::take(&mut lines[from]);
            at = from;
        }
    }
    lines
}

pub(crate) fn build_sink<T: Data + CsvRecord>(stream: Stream<'_, T>, name: &str, uri: SinkUri, order: impl Fn(&T) -> u64 + 'static) {
    let ctx = stream.ctx.clone();
    if ctx.dry_run {
        return;
    }
    let format = match &uri {
        SinkUri::File(_, f) => *f,
        SinkUri::Stdout => Format::Csv,
    };
    let metrics = ctx.metrics.clone();
    let scope = stream.inner.scope();
    let is_writer = scope.index() == 0;
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
    let checkpoints = ctx.checkpoint.clone();
    let first_epoch = ctx.first_epoch();
    let commit = ctx.commit.clone();

    let mut builder = OperatorBuilder::new(format!("sink:{name}"), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let mut input = builder.new_input(encoded, Exchange::new(|_| 0));
    // The sink sends nothing; its output's frontier is its input's, messages still queued for it
    // included, which is what flow control watches.
    let (_output, landed) = builder.new_output::<Vec<()>>();
    let flow = ctx.flow.clone();
    landed.probe_with(&ctx.flow.probe).sink(Pipeline, "flow-wake", move |(input, _frontier)| {
        // Scheduled whenever the sink's frontier moves (after the probe, which comes first).
        input.for_each(|_, _| {});
        flow.wake();
    });
    builder.build(move |_capabilities| {
        let mut target: Option<Target> = None;
        let mut failed = false;
        let mut finished = false;
        let mut pending: BTreeMap<Time, Vec<(u64, String)>> = BTreeMap::new();
        move |frontiers| {
            let frontier = &frontiers[0];
            input.for_each(|cap, data| {
                let Some(&time) = cap.stamp().iter().next() else { return };
                pending.entry(time).or_default().append(data);
            });
            if !is_writer || finished || failed {
                pending.clear();
                return;
            }
            if target.is_none() {
                let opened = match (&checkpoints, &uri) {
                    (Some(c), SinkUri::File(path, _)) => Ok(Target::Staged(StagedFile {
                        path: path.clone(),
                        dir: parts_dir(path),
                        header: header.clone(),
                        lines: BTreeMap::new(),
                        next_epoch: first_epoch,
                        unpublished: BTreeSet::new(),
                        commit: commit.clone(),
                        checkpoint_dir: c.dir.clone(),
                        sink: sink_name.clone(),
                    })),
                    _ => open_direct(&uri, header.as_deref()),
                };
                match opened {
                    Ok(t) => target = Some(t),
                    Err(e) => {
                        report(&metrics, &sink_name, format!("cannot open {uri:?}: {e}; its results are lost"));
                        failed = true;
                        return;
                    }
                }
            }
            let Some(out) = target.as_mut() else { return };
            // Times the frontier has passed are complete: their lines are final.
            let complete: Vec<Time> = pending.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
            let mut written = 0u64;
            for time in complete {
                let lines = sorted_lines(pending.remove(&time).unwrap_or_default());
                written += lines.len() as u64;
                crate::faults::slow_sink(lines.len());
                if let (Some(clock), false) = (metrics.latency(), sink_name == crate::job::DEAD_LETTERS) {
                    clock.record(time.wm, lines.len());
                }
                match out {
                    Target::Direct(writer, _) => {
                        for (_, line) in lines {
                            if let Err(e) = writer.write_all(line.as_bytes()).and_then(|_| writer.write_all(b"\n")) {
                                report(&metrics, &sink_name, format!("write failed: {e}"));
                                failed = true;
                                return;
                            }
                        }
                    }
                    Target::Staged(staged) => staged.lines.entry(time.epoch).or_default().extend(lines.into_iter().map(|(_, l)| l)),
                }
            }
            if written > 0 {
                metrics.add(&format!("written:{sink_name}"), written);
            }
            let (frontier_epoch, _) = frontier_bounds(frontier.frontier().iter());
            let ended = frontier.is_empty();
            let result = match out {
                Target::Direct(writer, rename) if ended => {
                    let flushed = writer.flush();
                    let renamed = flushed.and_then(|_| match rename {
                        Some((staged, path)) => fs::rename(staged, path),
                        None => Ok(()),
                    });
                    renamed.map_err(anyhow::Error::from)
                }
                Target::Direct(..) => Ok(()),
                Target::Staged(staged) => {
                    let staged_result = staged.stage(frontier_epoch, ended).and_then(|_| staged.publish());
                    match staged_result {
                        Ok(()) if ended => staged.finish(),
                        Ok(()) => {
                            if !staged.unpublished.is_empty() {
                                // Publish as soon as the coordinator completes the checkpoint.
                                activator.activate_after(std::time::Duration::from_millis(5));
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = result {
                if matches!(out, Target::Staged(_)) {
                    // A sink that cannot stage breaks exactly-once: stop the job rather than go on.
                    panic!("sink {sink_name}: {e:#}");
                }
                report(&metrics, &sink_name, format!("cannot finish {uri:?}: {e:#}"));
            }
            if ended {
                finished = true;
                target = None;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::sorted_lines;

    /// The same order as sorting the pairs, for lines with long shared prefixes, lines that end
    /// inside others, empty lines, duplicates and several order keys.
    #[test]
    fn sorted_lines_match_a_plain_sort() {
        let mut rng = crate::testing::Rng(11);
        let mut next = move |below: u64| rng.below(below);
        for case in 0..400 {
            let prefix = ["", "1767225600000,1767225660000,", "a", "\u{e9}t\u{e9},"][case % 4];
            let lines: Vec<(u64, String)> = (0..next(40))
                .map(|_| {
                    let tail: String = (0..next(14)).map(|_| ['0', '1', '9', ',', 'z', '\u{e9}'][next(6) as usize]).collect();
                    (next(3) * u64::from(case % 3 == 0), format!("{prefix}{tail}"))
                })
                .collect();
            let mut want = lines.clone();
            want.sort_unstable();
            assert_eq!(sorted_lines(lines.clone()), want, "case {case}: {lines:?}");
        }
    }
}
