//! The keyed event-time operator: the primitive windows, joins and process functions are built on.
//!
//! A [`KeyedLogic`] receives the records of the keys its worker owns and is told when the
//! watermark advances; it emits results stamped with an event time. The engine holds a timely
//! capability at the current epoch and the watermark it last passed to the logic, so downstream
//! operators wait for results still to come, and lets it go when the input has ended and the logic
//! has nothing pending.
//!
//! Epochs (see [`crate::checkpoint`]): records of a later epoch than the one in progress wait in a
//! buffer. When the input frontier passes the current epoch, the logic's state is written as this
//! step's part of that checkpoint (per key group, so a restore may use another worker count), and
//! only then does the operator move to the next epoch and apply its buffered records. The watermark
//! given to the logic never passes a buffered record's watermark, so a window cannot fire while a
//! buffered record still belongs in it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::checkpoint::{self, CheckpointConfig, Participant};
use crate::context::BuildContext;
use crate::context::TStream;
use crate::keygroup::worker_for_key_group;
use crate::metrics::{Metrics, PartSize};
use crate::time::{frontier_bounds, Time, END_OF_TIME};
use crate::{Data, Result};

/// Keyed logic driven by records and by the watermark.
pub trait KeyedLogic<K, V>: 'static {
    /// What the logic emits.
    type Out: Data;

    /// A record for `key` with event time `ts_ms`, that travelled at watermark `message_time`.
    fn on_record(&mut self, message_time: u64, ts_ms: u64, key: K, value: V);

    /// A batch of `(event time, record)` pairs that travelled at watermark `message_time`, each
    /// seen as a key and a value through `split`. The batch is the step's input buffer: the logic
    /// may read the records in place and leaves it empty. The default moves each record out to
    /// [`KeyedLogic::on_record`]; logic that only reads most records (windows that aggregate)
    /// reads them where they are instead of copying each one out.
    fn on_records<R, S: Split<R, K, V>>(&mut self, message_time: u64, records: &mut Vec<(u64, R)>, split: &S)
    where
        K: Clone,
    {
        for (ts, record) in records.drain(..) {
            let (key, value) = split.split(record);
            self.on_record(message_time, ts, key, value);
        }
    }

    /// The watermark has reached `watermark` (`u64::MAX` at the end of the input): no record with
    /// a message time below it will arrive. Push results as `(event time, record)` into `out`.
    /// Called after every batch of records, also when the watermark did not move, so results that
    /// records produced can be emitted at once.
    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>);

    /// The least event time at which the logic may still emit, or `None` when nothing is pending.
    fn next_emit_time(&self) -> Option<u64>;

    /// The wall-clock time (ms since the Unix epoch) of the logic's earliest processing-time
    /// timer, if it has any. Processing-time results depend on the wall clock, unlike everything
    /// else here; pending processing-time timers are dropped when the input ends.
    fn next_processing_time(&self) -> Option<u64> {
        None
    }

    /// The wall clock has reached `now_ms`: fire processing-time timers due by then.
    fn on_processing_time(&mut self, _now_ms: u64, _out: &mut Vec<(u64, Self::Out)>) {}

    /// How many entries of state the logic holds (accumulators, buffered records), for the
    /// `state:STEP` metric. State that is freed must stop counting here.
    fn state_size(&self) -> usize {
        0
    }

    /// Tells the logic which worker it runs on, of how many, before any restore or record. Logic
    /// with state not tied to a key (broadcast state) uses it to write that state into the key
    /// groups this worker owns, so that every worker of a restore, at any worker count, gets it.
    fn on_start(&mut self, _worker: usize, _peers: usize) {}

    /// The logic's state for a checkpoint, as `(key group, bytes)` pairs (see
    /// [`crate::keygroup`]); state not tied to a key may be repeated in every group. The default
    /// is for stateless logic: a stateful logic that keeps it loses its state on restore.
    fn snapshot(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// Adds the state of one key group from a checkpoint (groups arrive one by one; a worker gets
    /// the groups it owns, whatever the worker count was when the checkpoint was taken).
    fn restore(&mut self, _key_group: u64, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// How a keyed step sees each record of its input, of type `R`, as a key `K` and a value `V`.
pub trait Split<R, K: Clone, V>: 'static {
    /// The record's key: borrowed from the record where it is there, else computed.
    fn key<'a>(&self, record: &'a R) -> Cow<'a, K>;
    /// The record's value, in place.
    fn value<'a>(&self, record: &'a R) -> &'a V;
    /// The record's value, moved out.
    fn take_value(&self, record: R) -> V;
    /// The key and the value, moved out.
    fn split(&self, record: R) -> (K, V) {
        (self.key(&record).into_owned(), self.take_value(record))
    }
}

/// Records that are `(key, value)` pairs.
pub struct Pairs;

impl<K: Clone + 'static, V: 'static> Split<(K, V), K, V> for Pairs {
    fn key<'a>(&self, record: &'a (K, V)) -> Cow<'a, K> {
        Cow::Borrowed(&record.0)
    }
    fn value<'a>(&self, record: &'a (K, V)) -> &'a V {
        &record.1
    }
    fn take_value(&self, record: (K, V)) -> V {
        record.1
    }
    fn split(&self, record: (K, V)) -> (K, V) {
        record
    }
}

/// Records that are their own values, with the key computed from each (a `key_by` stream).
pub struct KeyOf<V, K>(pub std::rc::Rc<dyn Fn(&V) -> K>);

impl<K: Clone + 'static, V: 'static> Split<V, K, V> for KeyOf<V, K> {
    fn key<'a>(&self, record: &'a V) -> Cow<'a, K> {
        Cow::Owned((self.0)(record))
    }
    fn value<'a>(&self, record: &'a V) -> &'a V {
        record
    }
    fn take_value(&self, record: V) -> V {
        record
    }
}

/// Records of epochs after the current one, by epoch: their least message watermark, and the
/// records as (message watermark, event time, key, value).
type LaterEpochs<K, V> = BTreeMap<u64, (u64, Vec<(u64, u64, K, V)>)>;

/// Milliseconds since the Unix epoch, for processing-time timers.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a keyed operator's part of a checkpoint holds.
type StatePart = Vec<(u64, Vec<u8>)>;

fn restore_state<K, V, L: KeyedLogic<K, V>>(ctx: &BuildContext, name: &str, worker: usize, peers: usize, logic: &mut L) -> Result<()> {
    let Some(restore) = &ctx.restore else { return Ok(()) };
    for payload in restore.parts_with_prefix(&format!("state-{name}-w"))? {
        for (key_group, bytes) in checkpoint::decode::<StatePart>(&payload)? {
            if worker_for_key_group(key_group, peers) as usize == worker {
                logic.restore(key_group, &bytes).map_err(|e| anyhow::anyhow!("step {name}: restoring key group {key_group}: {e:#}"))?;
            }
        }
    }
    Ok(())
}

/// Writes the logic's part of checkpoint `epoch`; its size in bytes.
fn write_state<K, V, L: KeyedLogic<K, V>>(config: &CheckpointConfig, epoch: u64, who: &Participant, logic: &L, last: bool) -> Result<u64> {
    let payload = checkpoint::encode(&logic.snapshot()?)?;
    if last {
        checkpoint::write_final_part(&config.dir, epoch, who, &payload)?;
    } else {
        checkpoint::write_part(&config.dir, epoch, who, &payload)?;
    }
    Ok(payload.len() as u64)
}

/// The keyed operator over records of type `R`, each seen as its key and value through `split`
/// ([`Pairs`] for `(key, value)` pairs; [`KeyOf`] for a `key_by` stream).
pub(crate) fn build_keyed<'scope, R: Data, K: Data, V: Data, L: KeyedLogic<K, V>, P>(
    input: TStream<'scope, R>,
    pact: P,
    name: &str,
    mut logic: L,
    ctx: &BuildContext,
    split: impl Split<R, K, V>,
) -> TStream<'scope, L::Out>
where
    P: ParallelizationContract<Time, Vec<(u64, R)>>,
{
    let metrics: Arc<Metrics> = ctx.metrics.clone();
    let (worker, peers) = (input.scope().index(), input.scope().peers());
    let local_worker = worker % metrics.local_workers().max(1);
    let gauge = format!("state:{name}");
    let counts = metrics.step_records(name, worker);
    let checkpoints = ctx.checkpoint.clone().filter(|_| !ctx.dry_run);
    let who = Participant::State { step: name.to_string(), worker };
    let step = name.to_string();
    let mut epoch = ctx.first_epoch();
    logic.on_start(worker, peers);
    let restored = if ctx.dry_run { Ok(()) } else { restore_state(ctx, name, worker, peers, &mut logic) };
    if let Err(e) = restored {
        ctx.report_error(format!("{e:#}"));
    }
    let mut last_state_size = usize::MAX;
    // Results travel at their event time rounded down to the granularity (see
    // `RunOptions::time_granularity_ms`), and the capability is held at such a time too, so a
    // result's timestamp depends on its event time alone.
    let granule = ctx.time_granularity_ms.max(1);
    let coarse = move |ts: u64| if ts == END_OF_TIME { ts } else { ts - ts % granule };
    let scope = input.scope();
    input.unary_frontier::<CapacityContainerBuilder<Vec<(u64, L::Out)>>, _, _, _>(pact, name, move |initial, info| {
        let activator = scope.activator_for(info.address);
        let mut cap: Option<Capability<Time>> = Some(initial);
        let mut last_watermark = 0u64;
        let mut emitted: Vec<(u64, L::Out)> = Vec::new();
        // Results by timestamp while they are sent, and emptied vectors for the next ones.
        let mut by_stamp: BTreeMap<u64, Vec<(u64, L::Out)>> = BTreeMap::new();
        let mut spare: Vec<Vec<(u64, L::Out)>> = Vec::new();
        // Records of epochs after `epoch`, by epoch: their least message watermark, and the
        // records as (message watermark, event time, key, value).
        let mut later: LaterEpochs<K, V> = BTreeMap::new();
        let mut finished = false;
        move |(input, frontier), output| {
            if finished {
                return;
            }
            input.for_each(|stamp, data| {
                let Some(&time) = stamp.stamp().iter().next() else { return };
                counts.input.add(data.len() as u64);
                if time.epoch <= epoch {
                    logic.on_records(time.wm, data, &split);
                    data.clear();
                } else {
                    let (least, records) = later.entry(time.epoch).or_insert((END_OF_TIME, Vec::new()));
                    *least = (*least).min(time.wm);
                    records.extend(data.drain(..).map(|(ts, record)| {
                        let (k, v) = split.split(record);
                        (time.wm, ts, k, v)
                    }));
                }
            });
            loop {
                let (frontier_epoch, frontier_wm) = frontier_bounds(frontier.frontier().iter());
                let buffered_wm = later.values().map(|(least, _)| *least).min().unwrap_or(END_OF_TIME);
                let watermark = frontier_wm.min(buffered_wm);
                // Called on every activation, so logic may also emit what records produced.
                last_watermark = last_watermark.max(watermark);
                logic.on_watermark(last_watermark, &mut emitted);
                if let Some(due) = logic.next_processing_time() {
                    let now = wall_clock_ms();
                    if due <= now {
                        logic.on_processing_time(now, &mut emitted);
                    }
                }
                if !emitted.is_empty() {
                    counts.output.add(emitted.len() as u64);
                    let c = cap.as_ref().expect("a keyed operator emitted after its input ended");
                    let floor = c.time().wm;
                    let stamp = |ts: u64| coarse(ts).max(floor);
                    // Results grouped by timestamp, in the order they were emitted, each group
                    // sent as one message: each result is moved once rather than sorted, a
                    // visible saving for a join's many results (BENCHMARKS.md, "Joins").
                    for result in emitted.drain(..) {
                        by_stamp.entry(stamp(result.0)).or_insert_with(|| spare.pop().unwrap_or_default()).push(result);
                    }
                    for (wm, mut results) in std::mem::take(&mut by_stamp) {
                        let at = c.delayed(&Time::new(epoch, wm));
                        output.session(&at).give_container(&mut results);
                        results.clear();
                        if spare.len() < 16 {
                            spare.push(results);
                        }
                    }
                }
                if frontier_epoch <= epoch {
                    break;
                }
                // Every record of `epoch` is in: this step's part of checkpoint `epoch`.
                let ended = frontier_epoch == END_OF_TIME && later.is_empty();
                if let Some(config) = &checkpoints {
                    match write_state(config, epoch, &who, &logic, ended) {
                        Ok(bytes) => metrics.record_state_part(&step, PartSize { bytes, entries: logic.state_size() as u64 }),
                        // Without this part checkpoint `epoch` never completes: the job fails (one
                        // error line, exit 1) and resumes from the last complete checkpoint.
                        Err(e) => metrics.fail(format!("step {step}: cannot write its checkpoint part for epoch {epoch}: {e:#}")),
                    }
                }
                if ended {
                    finished = logic.next_emit_time().is_none();
                    break;
                }
                epoch += 1;
                if let Some((_, records)) = later.remove(&epoch) {
                    for (wm, ts, key, value) in records {
                        logic.on_record(wm, ts, key, value);
                    }
                }
            }
            let state_size = logic.state_size();
            if state_size != last_state_size {
                last_state_size = state_size;
                metrics.set_gauge(&gauge, local_worker, state_size as u64);
            }
            if let Some(due) = logic.next_processing_time() {
                activator.activate_after(std::time::Duration::from_millis(due.saturating_sub(wall_clock_ms())));
            }
            let (frontier_epoch, _) = frontier_bounds(frontier.frontier().iter());
            if frontier_epoch == END_OF_TIME && later.is_empty() && logic.next_emit_time().is_none() {
                cap = None;
            } else if let Some(c) = cap.as_mut() {
                let hold = Time::new(epoch, coarse(last_watermark.min(logic.next_emit_time().unwrap_or(END_OF_TIME))).max(c.time().wm));
                if hold != *c.time() {
                    c.downgrade(&hold);
                }
            }
        }
    })
}
