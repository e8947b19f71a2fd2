//! Sinks: the operator that drives a sink connector (see [`crate::connector`]).
//!
//! Records are encoded (CSV or JSON lines, the sink's format) on the worker that produced them.
//! A single-writer sink sends every line to worker 0; a parallel sink keeps each worker's lines
//! on that worker. The writing worker holds each timestamp's lines until its input frontier
//! passes it, then hands them to the connector's [`SinkWriter`] sorted (by line, or by a key the
//! job gives and then by line), so a single-writer sink's output depends only on the input, never
//! on thread timing: runs with 1, 2 or N workers, or several processes, write the same bytes
//! (updating views excepted: their revisions follow how input met the watermark, see
//! `crate::collection`).
//!
//! With checkpoints, the two-phase commit: when the input passes epoch `k` the writer pre-commits
//! `k` (durable, invisible) and returns a committable; the sink writes its part of checkpoint `k`
//! (every committable not yet committed); once the coordinator has made checkpoint `k` complete,
//! the writer commits `k`. At the end of the input the sink waits for the last checkpoint, commits
//! it and finishes. A restore hands the checkpoint's committables to [`SinkTarget::recover`]
//! before the run starts. Without checkpoints, the writer writes as lines come and finishes at the
//! end.
//!
//! A writer that fails (a full disk, a closed pipe, a refused connection) fails the job: the
//! sources stop, no checkpoint after the failure completes, and the run ends with the sink's
//! name and the cause (exit code 1).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;

use crate::checkpoint::{self, Participant};
use crate::connector::{Committable, Progress, ResolvedSink, SinkContext, SinkTarget, SinkWriter};
use crate::context::{BuildContext, TStream, DEAD_LETTERS};
use crate::format::Format;
use crate::record::CsvRecord;
use crate::time::{frontier_bounds, Time};
use crate::{Data, Result};

/// One timestamp's `(order key, line)` pairs in the order `sort_unstable` gives them. Lines of
/// one window firing share a long prefix (the window's bounds), on which every comparison of a
/// plain sort would spend its time: the lines are sorted by their order key and the 8 bytes after
/// the prefix all of them share, and only lines equal that far are compared whole (figures in
/// BENCHMARKS.md, "Figures behind choices in the code").
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

pub(crate) fn build_sink<T: Data + CsvRecord>(
    stream: TStream<'_, T>,
    ctx: Rc<BuildContext>,
    name: &str,
    sink: ResolvedSink,
    order: impl Fn(&T) -> u64 + 'static,
) {
    if ctx.dry_run {
        return;
    }
    let target = sink.target.clone();
    let format = target.format();
    let parallel = target.parallel();
    let metrics = ctx.metrics.clone();
    let scope = stream.scope();
    let is_writer = parallel || scope.index() == 0;
    let sink_name = name.to_string();
    if is_writer {
        metrics.add(&format!("written:{name}"), 0);
    }
    let encoded =
        stream.unary::<CapacityContainerBuilder<Vec<(u64, String)>>, _, _, _>(Pipeline, &format!("encode:{name}"), move |_, _| {
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
    let context = SinkContext {
        job: ctx.job.to_string(),
        sink: name.to_string(),
        worker: if parallel { scope.index() } else { 0 },
        workers: scope.peers(),
        checkpointed: ctx.checkpoint.is_some(),
        first_epoch: ctx.first_epoch(),
        header: (format == Format::Csv).then(T::csv_header),
    };
    let participant = if parallel {
        Participant::ParallelSink { name: name.to_string(), worker: scope.index() }
    } else {
        Participant::Sink { name: name.to_string() }
    };
    let mut driver = Driver {
        name: sink_name,
        target,
        context,
        writer: None,
        checkpoint_dir: ctx.checkpoint.as_ref().map(|c| c.dir.clone()),
        commit: ctx.commit.clone(),
        participant,
        metrics: metrics.clone(),
        next_epoch: ctx.first_epoch(),
        last_written_epoch: None,
        uncommitted: BTreeMap::new(),
        final_epoch: None,
        state: State::Running,
    };

    let mut builder = OperatorBuilder::new(format!("sink:{name}"), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    // A single-writer sink gathers every line on worker 0; a parallel one keeps each worker's.
    let writer_index = if parallel { scope.index() as u64 } else { 0 };
    let mut input = builder.new_input(encoded, Exchange::new(move |_| writer_index));
    // The sink sends nothing; its output's frontier is its input's, messages still queued for it
    // included, which is what flow control watches.
    let (_output, landed) = builder.new_output::<Vec<()>>();
    let flow = ctx.flow.clone();
    let mut landed = landed.probe_with(&ctx.flow.probe);
    if name == DEAD_LETTERS {
        // Dead letters land by this sink's frontier alone (see `FlowControl`).
        landed = landed.probe_with(&ctx.flow.dead_letters_probe);
    }
    landed.sink(Pipeline, "flow-wake", move |(input, _frontier)| {
        // Scheduled whenever the sink's frontier moves (after the probe, which comes first).
        input.for_each(|_, _| {});
        flow.wake();
    });
    builder.build_reschedule(move |_capabilities| {
        let mut pending: BTreeMap<Time, Vec<(u64, String)>> = BTreeMap::new();
        move |frontiers| {
            let frontier = &frontiers[0];
            input.for_each(|cap, data| {
                let Some(&time) = cap.stamp().iter().next() else { return };
                driver.metrics.sink_activity();
                pending.entry(time).or_default().append(data);
            });
            if !is_writer || driver.state != State::Running {
                pending.clear();
                return false;
            }
            if driver.metrics.halted() {
                // The job halted (a failure, a stop after a savepoint, a cancel): publish nothing
                // more; what is not committed is abandoned (a restore replays it).
                driver.abort();
                pending.clear();
                return false;
            }
            // Times the frontier has passed are complete: their lines are final. A parallel sink
            // without checkpoints (a broker topic: no order across writers to keep, nothing to
            // commit per epoch) writes lines as they come: waiting for the frontier would hold a
            // live stream's last records until more input moved the watermark, for good on a quiet
            // topic, or while a partition without data holds the watermark (seen: 746 of 657,590 payments
            // never reached a Kafka output topic).
            let immediate = parallel && driver.checkpoint_dir.is_none();
            let complete: Vec<Time> = pending.keys().copied().filter(|t| immediate || !frontier.less_equal(t)).collect();
            let _busy = (!complete.is_empty()).then(|| driver.metrics.sink_busy());
            let mut written = 0u64;
            for time in complete {
                let lines = sorted_lines(pending.remove(&time).unwrap_or_default());
                written += lines.len() as u64;
                crate::faults::slow_sink(lines.len());
                if let (Some(clock), false) = (driver.metrics.latency(), driver.name == DEAD_LETTERS) {
                    clock.record(time.wm, lines.len());
                }
                let lines: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
                if let Err(e) = driver.write(time.epoch, lines) {
                    driver.fail(e);
                    return false;
                }
            }
            if written > 0 {
                driver.metrics.sink_activity();
                driver.metrics.add(&format!("written:{}", driver.name), written);
            }
            let (frontier_epoch, _) = frontier_bounds(frontier.frontier().iter());
            let ended = frontier.is_empty();
            match driver.advance(frontier_epoch, ended) {
                Ok(Some(wait)) => {
                    activator.activate_after(wait);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    driver.fail(e);
                    false
                }
            }
        }
    });
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Failed,
}

/// The sink protocol of one writing worker: writes, pre-commits, checkpoint parts, commits.
struct Driver {
    name: String,
    target: std::sync::Arc<dyn SinkTarget>,
    context: SinkContext,
    writer: Option<Box<dyn SinkWriter>>,
    /// Where checkpoint parts go, when checkpointing.
    checkpoint_dir: Option<std::path::PathBuf>,
    commit: Option<std::sync::Arc<checkpoint::CommitState>>,
    participant: Participant,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The next epoch to pre-commit.
    next_epoch: u64,
    /// The highest epoch lines were written for.
    last_written_epoch: Option<u64>,
    /// Pre-committed epochs not yet committed, with their committables.
    uncommitted: BTreeMap<u64, Vec<u8>>,
    /// The epoch of the final part, once written.
    final_epoch: Option<u64>,
    state: State,
}

/// How often a sink looks again while it waits for a checkpoint or a connector.
const POLL: Duration = Duration::from_millis(5);

impl Driver {
    fn writer(&mut self) -> Result<&mut Box<dyn SinkWriter>> {
        if self.writer.is_none() {
            let w = self.target.writer(&self.context).map_err(|e| e.context(format!("cannot open {}", self.target.describe())))?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("opened above"))
    }

    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()> {
        self.last_written_epoch = Some(self.last_written_epoch.map_or(epoch, |e| e.max(epoch)));
        self.writer()?.write(epoch, lines)
    }

    /// Pre-commits what the frontier completed, commits what the coordinator completed, and
    /// finishes at the end. Returns when to look again, if the protocol is waiting for something.
    fn advance(&mut self, frontier_epoch: u64, ended: bool) -> Result<Option<Duration>> {
        self.writer()?;
        let Some(dir) = self.checkpoint_dir.clone() else {
            if !ended {
                return Ok(None);
            }
            return self.finish();
        };
        // Pre-commit every epoch the input has passed; at the end, up to the last one written.
        let last = if ended { self.last_written_epoch.map_or(self.next_epoch, |e| e.max(self.next_epoch)) } else { 0 };
        // A pre-commit under way does not hold back the commits of earlier epochs: a database's
        // prepared transaction of epoch e holds row locks that the next epoch's transaction may
        // wait for, until the commit of e.
        let mut pre_committing = false;
        while self.final_epoch.is_none() && (self.next_epoch < frontier_epoch || ended) {
            let epoch = self.next_epoch;
            let writer = self.writer.as_mut().expect("opened above");
            match writer.pre_commit(epoch)? {
                Progress::Pending => {
                    pre_committing = true;
                    break;
                }
                Progress::Ready(Some(data)) => {
                    self.uncommitted.insert(epoch, data);
                }
                Progress::Ready(None) => {}
            }
            let worker = self.context.worker;
            let pending: Vec<Committable> =
                self.uncommitted.iter().map(|(e, data)| Committable { worker, epoch: *e, data: data.clone() }).collect();
            let payload = checkpoint::encode(&pending)?;
            if ended && epoch >= last {
                checkpoint::write_final_part(&dir, epoch, &self.participant, &payload)?;
                self.final_epoch = Some(epoch);
            } else {
                checkpoint::write_part(&dir, epoch, &self.participant, &payload)?;
                self.next_epoch += 1;
            }
        }
        // Commit what completed checkpoints cover.
        let committed = self.commit.as_ref().and_then(|c| c.committed());
        while let Some((&epoch, _)) = self.uncommitted.first_key_value() {
            if committed.is_none_or(|c| epoch > c) {
                break;
            }
            crate::faults::point("sink:before-publish");
            let data = self.uncommitted.get(&epoch).cloned().unwrap_or_default();
            match self.writer.as_mut().expect("opened above").commit(epoch, &data)? {
                Progress::Pending => return Ok(Some(POLL)),
                Progress::Ready(()) => {
                    self.uncommitted.remove(&epoch);
                }
            }
        }
        if pre_committing {
            return Ok(Some(POLL));
        }
        match self.final_epoch {
            // Wait for the last checkpoint, then finish.
            Some(last) if committed.is_some_and(|c| c >= last) && self.uncommitted.is_empty() => self.finish(),
            Some(_) => Ok(Some(POLL)),
            None if !self.uncommitted.is_empty() => Ok(Some(POLL)),
            None => Ok(None),
        }
    }

    fn finish(&mut self) -> Result<Option<Duration>> {
        match self.writer()?.finish()? {
            Progress::Pending => Ok(Some(POLL)),
            Progress::Ready(()) => {
                self.state = State::Finished;
                self.writer = None;
                Ok(None)
            }
        }
    }

    fn abort(&mut self) {
        if let Some(mut w) = self.writer.take() {
            w.abort();
        }
        self.state = State::Failed;
    }

    /// The writer failed: the job fails with the sink's name and the cause.
    fn fail(&mut self, error: anyhow::Error) {
        self.metrics.add(&format!("sink_errors:{}", self.name), 1);
        self.metrics.fail(format!("sink {}: {error:#}", self.name));
        self.abort();
    }
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
