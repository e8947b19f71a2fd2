//! Updating views on differential dataflow: results that revise as facts change.
//!
//! A [`Collection`] is a multiset of rows that changes over time; operators on it (`join`,
//! `count`, `distinct`, ...) are maintained incrementally, and [`Collection::changelog`] turns it
//! back into a stream of [`Change`]s (a row inserted with `diff = +1`, retracted with `-1`) for an
//! upsert-style sink. Use it where results *should* revise (exposure per merchant as refunds and
//! chargebacks arrive, distinct cards per merchant over all time); windows and joins in
//! `paystream-operators` are cheaper where results are final.
//!
//! Times are coarsened to `granularity_ms` of watermark before they enter differential dataflow,
//! which costs per distinct time, not per record. A changelog's final state is the same for any
//! worker count; its intermediate revisions are not (they follow how input batches met the
//! watermark), so neither are the changelog file's bytes.
//!
//! Checkpoints (see [`crate::checkpoint`]): every operator on a collection is a deterministic
//! function of the rows that entered it, so only those are saved. Each `to_collection` step keeps
//! the rows it passed on, consolidated (each distinct row with its total weight), and when its
//! input passes epoch `k` writes them as its part of checkpoint `k`, per key group of the row (the
//! rows stay on the worker that read them; a restore at any worker count gives each key group to
//! the worker that owns it). A run restored from checkpoint `k` sends the saved rows into the
//! collection at time `(k, 0)`, before everything its sources replay from epoch `k + 1`; the
//! arrangements are rebuilt from them, and `changelog` drops the changes of epochs up to `k`:
//! those were written before the crash (a sink commits the output of epoch `k` once checkpoint `k`
//! is complete, and a restore rolls it forward). After a restore, the changelog's lines are then
//! the changes from the state at checkpoint `k` on, so the whole file, consolidated (the net weight
//! of each row), equals that of a run that never crashed; its intermediate revisions may differ,
//! as they do between worker counts.
//!
//! With checkpoints a changelog gives one revision per row and epoch, not per time step: the
//! changes of an epoch are consolidated and sent when it ends (see `EpochChanges` for why). That
//! delays nothing a reader sees, since a sink publishes an epoch's output only once its checkpoint
//! is complete. Cost: every checkpoint writes each `to_collection` step's whole consolidated input
//! (its distinct rows, not only those that changed), and the step holds those rows in memory
//! besides differential's arrangements; without checkpoints it keeps nothing.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::anyhow;
use differential_dataflow::collection::AsCollection;
use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::{self, CheckpointConfig, Participant};
use crate::context::{BuildContext, ParticipantKind, TStream};
use crate::keygroup::{key_group, worker_for_key_group, KeyMap};
use crate::metrics::{Metrics, PartSize};
use crate::stream::Stream;
use crate::time::{frontier_bounds, Time, END_OF_TIME};
use crate::{Data, Key, Result};

impl Lattice for Time {
    fn join(&self, other: &Self) -> Self {
        Time::new(self.epoch.max(other.epoch), self.wm.max(other.wm))
    }
    fn meet(&self, other: &Self) -> Self {
        Time::new(self.epoch.min(other.epoch), self.wm.min(other.wm))
    }
}

type Inner<'scope, D> = differential_dataflow::collection::vec::Collection<'scope, Time, D, isize>;

/// A changing multiset of rows of type `D`.
pub struct Collection<'scope, D: 'static> {
    inner: Inner<'scope, D>,
    ctx: Rc<BuildContext>,
}

impl<D: Clone + 'static> Clone for Collection<'_, D> {
    fn clone(&self) -> Self {
        Collection { inner: self.inner.clone(), ctx: self.ctx.clone() }
    }
}

/// One change to a collection: `data` inserted (`diff > 0`) or retracted (`diff < 0`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Change<D> {
    /// The row.
    pub data: D,
    /// How many copies were added (negative: removed).
    pub diff: i64,
}

impl<'scope, T: Data> Stream<'scope, T> {
    /// Turns each record into zero or more weighted rows of a collection: `rows` gives `(row,
    /// weight)` pairs, the weight being how many copies the record adds (negative to remove).
    /// Times are rounded up to `granularity_ms` of watermark. With checkpoints, the step `name`
    /// saves the rows it passed on, consolidated (see the module doc).
    pub fn to_collection<D: Key>(
        self,
        name: &str,
        granularity_ms: u64,
        rows: impl Fn(T) -> Vec<(D, isize)> + 'static,
    ) -> Collection<'scope, D> {
        self.register_step(name);
        self.ctx.add_participant(ParticipantKind::State(name.to_string()));
        let granularity = granularity_ms.max(1);
        let inner: TStream<'scope, T> = self.inner;
        let (worker, peers) = (inner.scope().index(), inner.scope().peers());
        let mut saved = SavedInput::<D>::new(&self.ctx, name, worker);
        if !self.ctx.dry_run {
            if let Err(e) = saved.restore(&self.ctx, peers) {
                self.ctx.report_error(format!("{e:#}"));
            }
        }
        // A restored run starts at epoch `k + 1`; the restored rows enter at `(k, 0)`, before
        // every replayed record, and what they produce is not written again (see `changelog`).
        let restored_at = Time::new(self.ctx.first_epoch().saturating_sub(1), 0);
        let updates =
            inner.unary_frontier::<CapacityContainerBuilder<Vec<(D, Time, isize)>>, _, _, _>(Pipeline, name, move |initial, _| {
                let mut initial = Some(initial);
                move |(input, frontier), output| {
                    if let Some(cap) = initial.take() {
                        let restored = saved.take_restored();
                        if !restored.is_empty() {
                            let at = cap.delayed(&restored_at);
                            output.session(&at).give_iterator(restored.into_iter().map(|(row, weight)| (row, restored_at, weight)));
                        }
                    }
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.stamp().iter().next() else { return };
                        let coarse = Time::new(time.epoch, time.wm.div_ceil(granularity).saturating_mul(granularity).max(time.wm));
                        let mut session = output.session(&cap);
                        for (_, record) in data.drain(..) {
                            for (row, weight) in rows(record) {
                                saved.add(time.epoch, &row, weight);
                                session.give((row, coarse, weight));
                            }
                        }
                    });
                    saved.advance(frontier_bounds(frontier.frontier().iter()).0);
                }
            });
        Collection { inner: updates.as_collection(), ctx: self.ctx }
    }
}

/// The rows of one key group in a checkpoint part: each distinct row with its total weight.
type GroupRows<D> = Vec<(D, i64)>;

/// What a `to_collection` step keeps for checkpoints: every row it passed on in epochs up to the
/// current one, consolidated (each distinct row once, with its total weight; rows of weight 0
/// dropped), and the rows of later epochs that arrived before the input passed the current one.
/// When the input passes epoch `k`, the consolidated rows are this worker's part of checkpoint
/// `k`, per key group of the row. Without checkpoints it keeps nothing.
struct SavedInput<D> {
    step: String,
    worker: usize,
    who: Participant,
    checkpoints: Option<CheckpointConfig>,
    metrics: Arc<Metrics>,
    /// The epoch whose rows are (being) added to `rows`.
    epoch: u64,
    rows: KeyMap<D, isize>,
    /// Rows of epochs after `epoch`, by epoch.
    later: BTreeMap<u64, Vec<(D, isize)>>,
    /// Rows read from the checkpoint this run resumes from, still to be sent downstream.
    restored: Vec<(D, isize)>,
    /// The final part is written: the input has ended.
    finished: bool,
}

impl<D: Key> SavedInput<D> {
    fn new(ctx: &BuildContext, step: &str, worker: usize) -> Self {
        SavedInput {
            step: step.to_string(),
            worker,
            who: Participant::State { step: step.to_string(), worker },
            checkpoints: ctx.checkpoint.clone().filter(|_| !ctx.dry_run),
            metrics: ctx.metrics.clone(),
            epoch: ctx.first_epoch(),
            rows: KeyMap::default(),
            later: BTreeMap::new(),
            restored: Vec::new(),
            finished: false,
        }
    }

    /// Reads the key groups this worker owns (of `peers`) from every worker's part of the
    /// checkpoint the run resumes from: they are both sent downstream and kept for the next
    /// checkpoints. Parts of several workers may hold the same group (rows are saved where they
    /// were read, not where their group lives); their rows add up.
    fn restore(&mut self, ctx: &BuildContext, peers: usize) -> Result<()> {
        let Some(restore) = &ctx.restore else { return Ok(()) };
        for payload in restore.parts_with_prefix(&format!("state-{}-w", self.step))? {
            for (group, bytes) in checkpoint::decode::<Vec<(u64, Vec<u8>)>>(&payload)? {
                if worker_for_key_group(group, peers) as usize != self.worker {
                    continue;
                }
                let rows: GroupRows<D> =
                    checkpoint::decode(&bytes).map_err(|e| anyhow!("step {}: restoring key group {group}: {e:#}", self.step))?;
                for (row, weight) in rows {
                    let weight = weight as isize;
                    self.restored.push((row.clone(), weight));
                    self.keep(row, weight);
                }
            }
        }
        Ok(())
    }

    fn take_restored(&mut self) -> Vec<(D, isize)> {
        std::mem::take(&mut self.restored)
    }

    /// Adds a row to the consolidated rows; a row whose total weight becomes 0 is dropped.
    fn keep(&mut self, row: D, weight: isize) {
        match self.rows.entry(row) {
            Entry::Occupied(mut total) => {
                *total.get_mut() += weight;
                if *total.get() == 0 {
                    total.remove();
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(weight);
            }
        }
    }

    /// A row passed on in `epoch`.
    fn add(&mut self, epoch: u64, row: &D, weight: isize) {
        if self.checkpoints.is_none() || weight == 0 {
            return;
        }
        if epoch <= self.epoch {
            self.keep(row.clone(), weight);
        } else {
            self.later.entry(epoch).or_default().push((row.clone(), weight));
        }
    }

    /// The input has passed every epoch below `frontier_epoch` (`END_OF_TIME`: it has ended):
    /// writes this worker's part of each checkpoint it passed, one per epoch even when the
    /// frontier jumped several, the last one final.
    fn advance(&mut self, frontier_epoch: u64) {
        let Some(config) = self.checkpoints.clone() else { return };
        while !self.finished && frontier_epoch > self.epoch {
            let ended = frontier_epoch == END_OF_TIME && self.later.is_empty();
            match self.write_part(&config, ended) {
                Ok(bytes) => self.metrics.record_state_part(&self.step, PartSize { bytes, entries: self.rows.len() as u64 }),
                // Without this part checkpoint `epoch` never completes: the job fails and resumes
                // from the last complete checkpoint.
                Err(e) => {
                    self.metrics.fail(format!("step {}: cannot write its checkpoint part for epoch {}: {e:#}", self.step, self.epoch))
                }
            }
            if ended {
                self.finished = true;
                break;
            }
            self.epoch += 1;
            for (row, weight) in self.later.remove(&self.epoch).unwrap_or_default() {
                self.keep(row, weight);
            }
        }
    }

    /// Writes the part of checkpoint `self.epoch`: the consolidated rows, per key group. Returns
    /// its size in bytes.
    fn write_part(&self, config: &CheckpointConfig, last: bool) -> Result<u64> {
        let mut groups: BTreeMap<u64, GroupRows<D>> = BTreeMap::new();
        for (row, weight) in &self.rows {
            groups.entry(key_group(row)).or_default().push((row.clone(), *weight as i64));
        }
        let mut state: Vec<(u64, Vec<u8>)> = Vec::with_capacity(groups.len());
        for (group, mut rows) in groups {
            // Sorted, so a part's bytes depend only on its rows, not on the hash map's order.
            rows.sort_unstable();
            state.push((group, checkpoint::encode(&rows)?));
        }
        let payload = checkpoint::encode(&state)?;
        if last {
            checkpoint::write_final_part(&config.dir, self.epoch, &self.who, &payload)?;
        } else {
            checkpoint::write_part(&config.dir, self.epoch, &self.who, &payload)?;
        }
        Ok(payload.len() as u64)
    }
}

impl<'scope, D: Key> Collection<'scope, D> {
    /// Transforms each row.
    pub fn map<D2: Key>(self, f: impl Fn(D) -> D2 + 'static) -> Collection<'scope, D2> {
        Collection { inner: self.inner.map(f), ctx: self.ctx }
    }

    /// Keeps the rows for which `predicate` holds.
    pub fn filter(self, predicate: impl Fn(&D) -> bool + 'static) -> Collection<'scope, D> {
        Collection { inner: self.inner.filter(predicate), ctx: self.ctx }
    }

    /// Both collections' rows.
    pub fn concat(self, other: Collection<'scope, D>) -> Collection<'scope, D> {
        Collection { inner: self.inner.concat(other.inner), ctx: self.ctx }
    }

    /// The rows with their weights negated: `a.concat(b.negate())` is `a - b`.
    pub fn negate(self) -> Collection<'scope, D> {
        Collection { inner: self.inner.negate(), ctx: self.ctx }
    }

    /// Each distinct row once.
    pub fn distinct(self) -> Collection<'scope, D> {
        Collection { inner: self.inner.distinct(), ctx: self.ctx }
    }

    /// Each row rewritten as `f` says, its weight multiplied by the factor `f` gives: with
    /// [`count`](Collection::count) after it, a sum of that factor per row (a total price per
    /// category, say) for rows that revise as the collection changes.
    ///
    /// ```
    /// use paystream_engine::testing::run_collect;
    /// // Spend per card: each (card, amount) row weighs its amount, and count sums the weights.
    /// let changes = run_collect(vec![(0, (1u64, 500u64)), (0, (2, 300)), (1500, (1, 250))], |s| {
    ///     s.to_collection("rows", 1000, |row| vec![(row, 1)])
    ///         .weigh(|(card, amount)| (card, amount as isize))
    ///         .count()
    ///         .changelog("spend")
    /// });
    /// let mut current = std::collections::BTreeMap::new();
    /// for (_, change) in changes {
    ///     *current.entry(change.data).or_insert(0) += change.diff;
    /// }
    /// current.retain(|_, n| *n != 0);
    /// assert_eq!(current.into_keys().collect::<Vec<_>>(), vec![(1, 750), (2, 300)]);
    /// ```
    pub fn weigh<D2: Key>(self, f: impl Fn(D) -> (D2, isize) + 'static) -> Collection<'scope, D2> {
        Collection { inner: self.inner.explode(move |row| Some(f(row))), ctx: self.ctx }
    }

    /// Each distinct row with its total weight: with weights set to amounts, a sum per row.
    pub fn count(self) -> Collection<'scope, (D, i64)> {
        Collection { inner: self.inner.count().map(|(d, n)| (d, n as i64)), ctx: self.ctx }
    }

    /// The collection as a stream of changes, each with the event time (watermark) it took
    /// effect at. Applying them in order (insert on `+`, delete on `-`) gives the current rows.
    ///
    /// With checkpoints, the changes of each epoch are consolidated and sent together when the
    /// epoch ends (see the module doc): a sink publishes an epoch's output only once its
    /// checkpoint completes anyway.
    pub fn changelog(self, name: &str) -> Stream<'scope, Change<D>> {
        let ctx = self.ctx;
        ctx.register_step(name);
        let consolidated = self.inner.consolidate().inner;
        let changes = if ctx.checkpoint.is_some() {
            let mut epochs = EpochChanges::<D>::new(ctx.first_epoch());
            consolidated.unary_frontier::<CapacityContainerBuilder<Vec<(u64, Change<D>)>>, _, _, _>(Pipeline, name, move |initial, _| {
                let mut cap = Some(initial);
                move |(input, frontier), output| {
                    input.for_each(|_, data| epochs.add(data));
                    let Some(held) = cap.as_mut() else { return };
                    let (frontier_epoch, frontier_wm) = frontier_bounds(frontier.frontier().iter());
                    for (epoch, changes) in epochs.complete(frontier_epoch) {
                        // At the same time on every worker (their held watermarks differ): a
                        // single-writer sink sorts an epoch's changes together, retractions first.
                        let at = held.delayed(&Time::new(epoch.max(held.time().epoch), END_OF_TIME));
                        output.session(&at).give_iterator(changes.into_iter());
                    }
                    if frontier.is_empty() {
                        cap = None;
                    } else {
                        let hold = Time::new(frontier_epoch.max(held.time().epoch), frontier_wm.max(held.time().wm));
                        if hold != *held.time() {
                            held.downgrade(&hold);
                        }
                    }
                }
            })
        } else {
            consolidated.unary::<CapacityContainerBuilder<Vec<(u64, Change<D>)>>, _, _, _>(Pipeline, name, |_, _| {
                |input, output| {
                    input.for_each(|cap, data| {
                        // Each change travels at its own time (never below the batch's), so a sink
                        // writes a revision after what it revises.
                        data.sort_by_key(|c| c.1);
                        let mut changes = data.drain(..).peekable();
                        while let Some((row, time, diff)) = changes.next() {
                            let at = cap.delayed(&time, 0);
                            let mut session = output.session(&at);
                            session.give((time.wm, Change { data: row, diff: diff as i64 }));
                            while let Some((row, _, diff)) = changes.next_if(|c| c.1 == time) {
                                session.give((time.wm, Change { data: row, diff: diff as i64 }));
                            }
                        }
                    });
                }
            })
        };
        Stream::from_parts(changes, ctx)
    }
}

/// Changes with the event time (watermark) each took effect at.
type TimedChanges<D> = Vec<(u64, Change<D>)>;

/// A checkpointed changelog's changes of the epochs not yet ended: per epoch, each row's net
/// weight and the latest watermark it changed at.
///
/// Why per epoch: differential's times here are `(epoch, watermark)` pairs, ordered as a product,
/// and two sources (or workers) can give incomparable ones, `(k, 90)` and `(k + 1, 50)`. A sink
/// writes epoch `k` before epoch `k + 1`, but the changes at `(k + 1, 50)` revise the state as of
/// `(k + 1, 50)`, which lacks what happened at `(k, 90)`: written one time after another, the
/// changelog would retract rows not yet inserted. The changes of all times of epochs up to `k`
/// add up to the collection at `(k, ∞)`, so a changelog written epoch by epoch, each consolidated,
/// is consistent after every epoch. Each epoch's changes travel at `(epoch, END_OF_TIME)` on
/// every worker (the row keeps its own event time), so a single-writer sink sorts all of them
/// together, and one ordered by diff puts retractions first; the latency histogram, which measures
/// from the watermark a result travels at, leaves them out.
struct EpochChanges<D> {
    /// Changes of epochs before this were written before the checkpoint the run resumes from:
    /// they are what the restored rows produce again (see `to_collection`), and are dropped.
    first_epoch: u64,
    pending: BTreeMap<u64, KeyMap<D, (isize, u64)>>,
}

impl<D: Key> EpochChanges<D> {
    fn new(first_epoch: u64) -> Self {
        EpochChanges { first_epoch, pending: BTreeMap::new() }
    }

    /// Takes in a batch of differential's consolidated output, `(row, time, diff)`.
    fn add(&mut self, data: &mut Vec<(D, Time, isize)>) {
        for (row, time, diff) in data.drain(..) {
            if time.epoch < self.first_epoch {
                continue;
            }
            let (net, wm) = self.pending.entry(time.epoch).or_default().entry(row).or_insert((0, 0));
            *net += diff;
            *wm = (*wm).max(time.wm);
        }
    }

    /// The changes of every epoch below `frontier_epoch` (all of them at the end of the input),
    /// by epoch, as `(watermark, change)`: rows whose net weight is 0 dropped, sorted by row.
    fn complete(&mut self, frontier_epoch: u64) -> Vec<(u64, TimedChanges<D>)> {
        let later = if frontier_epoch == END_OF_TIME { BTreeMap::new() } else { self.pending.split_off(&frontier_epoch) };
        let done = std::mem::replace(&mut self.pending, later);
        done.into_iter()
            .map(|(epoch, rows)| {
                let mut changes: TimedChanges<D> = rows
                    .into_iter()
                    .filter(|(_, (net, _))| *net != 0)
                    .map(|(row, (net, wm))| (wm, Change { data: row, diff: net as i64 }))
                    .collect();
                changes.sort_unstable_by(|a, b| a.1.data.cmp(&b.1.data));
                (epoch, changes)
            })
            .collect()
    }
}

impl<'scope, K: Key, V: Key> Collection<'scope, (K, V)> {
    /// Pairs rows of equal keys; the result revises when either side changes.
    pub fn join<V2: Key>(self, other: Collection<'scope, (K, V2)>) -> Collection<'scope, (K, (V, V2))> {
        Collection { inner: self.inner.join(other.inner), ctx: self.ctx }
    }

    /// Per key, the rows `logic` makes of the key's current values, revised whenever they change:
    /// `logic(key, values, out)` gets the values in ascending order, each with its (positive)
    /// multiplicity, and pushes `(value, weight)` pairs to `out`. A maximum per key is the last
    /// value; a sum and a count walk them all. Called again for a key at every time its values
    /// change, over all of them: cheap for keys with few values, quadratic in the worst case for
    /// a key that gains values one time at a time. The key's values are held in memory.
    ///
    /// ```
    /// use paystream_engine::testing::run_collect;
    /// // The largest payment per card, revised as larger ones arrive.
    /// let changes = run_collect(vec![(0, (1u64, 500u64)), (0, (2, 300)), (1500, (1, 900)), (2500, (1, 100))], |s| {
    ///     s.to_collection("rows", 1000, |row| vec![(row, 1)])
    ///         .reduce("largest", |_card, amounts, out| {
    ///             if let Some((largest, _)) = amounts.last() {
    ///                 out.push((**largest, 1));
    ///             }
    ///         })
    ///         .changelog("largest-changes")
    /// });
    /// let mut current = std::collections::BTreeMap::new();
    /// for (_, change) in changes {
    ///     *current.entry(change.data).or_insert(0) += change.diff;
    /// }
    /// current.retain(|_, n| *n != 0);
    /// assert_eq!(current.into_keys().collect::<Vec<_>>(), vec![(1, 900), (2, 300)]);
    /// ```
    pub fn reduce<V2: Key>(
        self,
        name: &str,
        logic: impl Fn(&K, &[(&V, isize)], &mut Vec<(V2, isize)>) + 'static,
    ) -> Collection<'scope, (K, V2)> {
        Collection { inner: self.inner.reduce_named(name, move |key, values, out| logic(key, values, out)), ctx: self.ctx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpointed changelog sends each epoch's changes once the epoch has ended, consolidated
    /// per row (at the row's latest watermark), and drops epochs before the run's first.
    #[test]
    fn epoch_changes_are_consolidated_per_epoch() {
        let mut epochs = EpochChanges::<char>::new(3);
        let t = Time::new;
        epochs.add(&mut vec![
            // Restored (epoch 2 < 3): written before the checkpoint.
            ('o', t(2, 0), 1),
            ('a', t(3, 10), 1),
            ('b', t(3, 10), 1),
            ('a', t(3, 20), -1),
            ('c', t(4, 5), 1),
            ('b', t(3, 30), 1),
        ]);
        assert_eq!(epochs.complete(3), Vec::new(), "epoch 3 has not ended");
        let change = |data, diff| Change { data, diff };
        assert_eq!(epochs.complete(4), vec![(3, vec![(30, change('b', 2))])], "a's insert and retraction cancel out");
        epochs.add(&mut vec![('c', t(4, 50), -1), ('d', t(6, 1), 1)]);
        assert_eq!(epochs.complete(END_OF_TIME), vec![(4, Vec::new()), (6, vec![(1, change('d', 1))])]);
        assert!(epochs.pending.is_empty());
    }
}
