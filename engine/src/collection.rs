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
//! watermark), so neither are the changelog file's bytes. Collections do not take part in checkpoints
//! yet: a job that uses them refuses to run with `--checkpoint-dir`.

use std::rc::Rc;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::context::BuildContext;
use crate::context::TStream;
use crate::stream::Stream;
use crate::time::Time;
use crate::{Data, Key};

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
    /// Times are rounded up to `granularity_ms` of watermark.
    pub fn to_collection<D: Key>(
        self,
        name: &str,
        granularity_ms: u64,
        rows: impl Fn(T) -> Vec<(D, isize)> + 'static,
    ) -> Collection<'scope, D> {
        self.register_step(name);
        if self.ctx.checkpoint.is_some() {
            self.report_error(format!(
                "step {name}: updating views (differential dataflow) do not take part in checkpoints yet; run this job without --checkpoint-dir"
            ));
        }
        let granularity = granularity_ms.max(1);
        let inner: TStream<'scope, T> = self.inner;
        let updates = inner.unary::<CapacityContainerBuilder<Vec<(D, Time, isize)>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.stamp().iter().next() else { return };
                    let coarse = Time::new(time.epoch, time.wm.div_ceil(granularity).saturating_mul(granularity).max(time.wm));
                    let mut session = output.session(&cap);
                    for (_, record) in data.drain(..) {
                        for (row, weight) in rows(record) {
                            session.give((row, coarse, weight));
                        }
                    }
                });
            }
        });
        Collection { inner: updates.as_collection(), ctx: self.ctx }
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
    pub fn changelog(self, name: &str) -> Stream<'scope, Change<D>> {
        let ctx = self.ctx;
        ctx.register_step(name);
        let consolidated = self.inner.consolidate().inner;
        let changes = consolidated.unary::<CapacityContainerBuilder<Vec<(u64, Change<D>)>>, _, _, _>(Pipeline, name, |_, _| {
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
        });
        Stream::from_parts(changes, ctx)
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
