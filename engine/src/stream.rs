//! The typed stream API: [`Stream`] and [`KeyedStream`] and their stateless operators.
//!
//! Every record travels with its event time (`ts_ms`), like a Flink `StreamRecord`: operators that
//! change a record's type keep its event time. Underneath, a stream is a timely stream whose
//! message timestamps are watermarks; a record's message time is never above its event time unless
//! the record is behind its partition's watermark (see [`crate::source`]).

use std::cell::RefCell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::Concat;
use timely::dataflow::Scope;

use crate::connector::ResolvedSource;
use crate::context::{BuildContext, ParticipantKind, TStream};
use crate::keygroup::{key_group, worker_for_key_group};
use crate::metrics::Metrics;
use crate::record::{CsvRecord, DeadLetter};
use crate::time::{OutOfOrder, Time};
use crate::{Data, Key, Result};

type Builder<T> = CapacityContainerBuilder<Vec<(u64, T)>>;

/// A source that has been named but not yet given event time.
pub struct SourceStage<'scope, T> {
    scope: Scope<'scope, Time>,
    ctx: Rc<BuildContext>,
    dead_letters: Rc<RefCell<Vec<TStream<'scope, DeadLetter>>>>,
    name: String,
    uri: ResolvedSource,
    _record: std::marker::PhantomData<T>,
}

impl<'scope, T: Data + CsvRecord> SourceStage<'scope, T> {
    pub(crate) fn new(
        scope: Scope<'scope, Time>,
        ctx: Rc<BuildContext>,
        dead_letters: Rc<RefCell<Vec<TStream<'scope, DeadLetter>>>>,
        name: String,
        uri: ResolvedSource,
    ) -> Self {
        SourceStage { scope, ctx, dead_letters, name, uri, _record: std::marker::PhantomData }
    }

    /// Gives the source event time: `event_time` reads a record's time (ms since the epoch), and
    /// `strategy` sets how far out of order records may arrive before they count as late.
    pub fn assign_timestamps(self, event_time: impl Fn(&T) -> u64 + 'static, strategy: OutOfOrder) -> Result<Stream<'scope, T>> {
        let (records, dead) = crate::source::build_source(self.scope, &self.ctx, &self.name, &self.uri, event_time, strategy)?;
        self.dead_letters.borrow_mut().push(dead);
        Ok(Stream::from_parts(records, self.ctx))
    }
}

/// A stream of records of type `T`, each with its event time.
pub struct Stream<'scope, T> {
    pub(crate) inner: TStream<'scope, T>,
    pub(crate) ctx: Rc<BuildContext>,
}

impl<'scope, T: Data> Clone for Stream<'scope, T> {
    /// Another handle to the same stream: each consumer sees every record.
    fn clone(&self) -> Self {
        Stream { inner: self.inner.clone(), ctx: self.ctx.clone() }
    }
}

impl<'scope, T: Data> Stream<'scope, T> {
    pub(crate) fn from_parts(inner: TStream<'scope, T>, ctx: Rc<BuildContext>) -> Self {
        Stream { inner, ctx }
    }

    fn unary_step<U: Data>(self, name: &str, logic: impl FnMut(&mut Vec<(u64, T)>, &mut Vec<(u64, U)>) + 'static) -> Stream<'scope, U> {
        self.ctx.register_step(name);
        self.unary_operator(name, logic)
    }

    /// [`Stream::unary_step`] for a step whose name is already registered.
    fn unary_operator<U: Data>(
        self,
        name: &str,
        mut logic: impl FnMut(&mut Vec<(u64, T)>, &mut Vec<(u64, U)>) + 'static,
    ) -> Stream<'scope, U> {
        let mut out = Vec::new();
        let counts = self.ctx.metrics.step_records(name, self.inner.scope().index());
        let inner = self.inner.unary::<Builder<U>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    counts.input.add(data.len() as u64);
                    logic(data, &mut out);
                    counts.output.add(out.len() as u64);
                    output.session(&cap).give_container(&mut out);
                    out.clear();
                });
            }
        });
        Stream { inner, ctx: self.ctx }
    }

    /// Transforms each record; the event time is kept.
    ///
    /// ```
    /// # use paystream_engine::testing::run_collect;
    /// let out = run_collect(vec![(1_000, 2u64), (2_000, 3)], |s| s.map("double", |x| x * 2));
    /// assert_eq!(out, vec![(1_000, 4), (2_000, 6)]);
    /// ```
    pub fn map<U: Data>(self, name: &str, f: impl Fn(T) -> U + 'static) -> Stream<'scope, U> {
        self.unary_step(name, move |data, out| out.extend(data.drain(..).map(|(ts, x)| (ts, f(x)))))
    }

    /// Keeps the records for which `predicate` holds.
    ///
    /// ```
    /// # use paystream_engine::testing::run_collect;
    /// let out = run_collect(vec![(1, 5u64), (2, 50), (3, 500)], |s| s.filter("large", |x| *x >= 50));
    /// assert_eq!(out, vec![(2, 50), (3, 500)]);
    /// ```
    pub fn filter(self, name: &str, predicate: impl Fn(&T) -> bool + 'static) -> Stream<'scope, T> {
        self.unary_step(name, move |data, out| out.extend(data.drain(..).filter(|(_, x)| predicate(x))))
    }

    /// Replaces each record by zero or more records, all with its event time.
    ///
    /// ```
    /// # use paystream_engine::testing::run_collect;
    /// let out = run_collect(vec![(7, 3u64)], |s| s.flat_map("repeat", |x| vec![x; x as usize]));
    /// assert_eq!(out, vec![(7, 3), (7, 3), (7, 3)]);
    /// ```
    pub fn flat_map<U: Data, I: IntoIterator<Item = U>>(self, name: &str, f: impl Fn(T) -> I + 'static) -> Stream<'scope, U> {
        self.unary_step(name, move |data, out| {
            for (ts, x) in data.drain(..) {
                out.extend(f(x).into_iter().map(|y| (ts, y)));
            }
        })
    }

    /// Merges two streams of the same type.
    pub fn union(self, other: Stream<'scope, T>) -> Stream<'scope, T> {
        Stream { inner: self.inner.concat(other.inner), ctx: self.ctx }
    }

    /// Partitions the stream by a key: records with equal keys meet on one worker. Keys are hashed
    /// into a fixed number of key groups ([`crate::keygroup`]), and key groups to workers.
    ///
    /// No step of its own runs for it: the keyed step after it (a window, join or process
    /// function) computes each record's key as it reads the record, so records are not copied into
    /// `(key, record)` pairs on the way.
    pub fn key_by<K: Key>(self, name: &str, key: impl Fn(&T) -> K + 'static) -> KeyedStream<'scope, K, T> {
        self.ctx.register_step(name);
        KeyedStream { inner: Keyed::ByKey { records: self, key: Rc::new(key), name: name.to_string() } }
    }

    /// As [`Stream::key_by`], with the key and the value kept with it computed together from each
    /// record: a key taken out of a record is moved rather than cloned, and the value can be cut
    /// down to what the keyed steps after it need (less to copy, hold in state and checkpoint).
    ///
    /// ```
    /// # use paystream_engine::testing::run_collect;
    /// // (transaction id, amount) records, keyed by the id; only the amount is kept as the value.
    /// let out = run_collect(vec![(1, ("t1".to_string(), 250i64))], |s| {
    ///     let keyed = s.key_by_split("by-txn", |(txn_id, amount)| (txn_id, amount));
    /// #   let keyed = keyed.map_values("with-key", |amount| amount * 2);
    /// #   keyed.divert("values", |_, _, _| true).1
    /// });
    /// # assert_eq!(out, vec![(1, 500)]);
    /// ```
    pub fn key_by_split<K: Key, U: Data>(self, name: &str, split: impl Fn(T) -> (K, U) + 'static) -> KeyedStream<'scope, K, U> {
        KeyedStream { inner: Keyed::Pairs(self.map(name, split)) }
    }

    /// Writes the stream to the declared sink `name`.
    pub fn sink(self, name: &str) -> Result<()>
    where
        T: CsvRecord,
    {
        self.sink_ordered_by(name, |_| 0)
    }

    /// Writes the stream to the declared sink `name`, ordering the records of each watermark step
    /// by `order` (then by line) instead of by line alone: for outputs whose order carries meaning,
    /// such as a copy of a source that keeps the source's sequence.
    pub fn sink_ordered_by(self, name: &str, order: impl Fn(&T) -> u64 + 'static) -> Result<()>
    where
        T: CsvRecord,
    {
        let uri = self.ctx.mark_sink_used(name)?;
        self.ctx.register_step(&format!("sink:{name}"));
        crate::sink::build_sink(self.inner, self.ctx, name, uri, order);
        Ok(())
    }

    /// Splits the stream in two by a predicate on the message time (the watermark the record was
    /// sent at), its event time and the record: `(kept, diverted)`. This is the primitive behind
    /// late-record handling: a record is late for a window when the window's end is at or below
    /// the watermark it travels at.
    #[doc(hidden)]
    pub fn divert(self, name: &str, divert: impl Fn(u64, u64, &T) -> bool + 'static) -> (Stream<'scope, T>, Stream<'scope, T>) {
        self.ctx.register_step(name);
        let counts = self.ctx.metrics.step_records(name, self.inner.scope().index());
        let mut builder = OperatorBuilder::new(name.to_string(), self.inner.scope());
        let mut input = builder.new_input(self.inner, Pipeline);
        let (kept_out, kept) = builder.new_output::<Vec<(u64, T)>>();
        let (diverted_out, diverted) = builder.new_output::<Vec<(u64, T)>>();
        let mut kept_out = OutputBuilder::<_, Builder<T>>::from(kept_out);
        let mut diverted_out = OutputBuilder::<_, Builder<T>>::from(diverted_out);
        builder.build(move |_capabilities| {
            let (mut keep, mut away) = (Vec::new(), Vec::new());
            move |_frontiers| {
                let mut kept_handle = kept_out.activate();
                let mut diverted_handle = diverted_out.activate();
                input.for_each(|cap, data| {
                    // Every record goes on, kept or diverted.
                    counts.input.add(data.len() as u64);
                    counts.output.add(data.len() as u64);
                    let Some(&time) = cap.stamp().iter().next() else { return };
                    if !data.iter().any(|(ts, x)| divert(time.wm, *ts, x)) {
                        // The common case: nothing to divert; pass the batch on without copying it.
                        let c = cap.delayed(&time, 0);
                        kept_handle.session(&c).give_container(data);
                        return;
                    }
                    keep.reserve(data.len());
                    for (ts, x) in data.drain(..) {
                        if divert(time.wm, ts, &x) {
                            away.push((ts, x));
                        } else {
                            keep.push((ts, x));
                        }
                    }
                    if !keep.is_empty() {
                        let c = cap.delayed(&time, 0);
                        kept_handle.session(&c).give_container(&mut keep);
                        keep.clear();
                    }
                    if !away.is_empty() {
                        let c = cap.delayed(&time, 1);
                        diverted_handle.session(&c).give_container(&mut away);
                        away.clear();
                    }
                });
            }
        });
        (Stream { inner: kept, ctx: self.ctx.clone() }, Stream { inner: diverted, ctx: self.ctx })
    }

    /// Counts the records that pass into the process counter `counter` (shown in the run summary).
    pub fn count_as(self, name: &str, counter: &str) -> Stream<'scope, T> {
        let counter = self.ctx.metrics.worker_counter(counter, self.inner.scope().index());
        self.unary_step(name, move |data, out| {
            counter.add(data.len() as u64);
            out.append(data);
        })
    }

    /// Reports a mistake in the job's structure; the job fails to start, naming it.
    #[doc(hidden)]
    pub fn report_error(&self, message: String) {
        self.ctx.report_error(message)
    }

    /// This process's counters, for operators that count what they drop.
    pub fn metrics(&self) -> std::sync::Arc<Metrics> {
        self.ctx.metrics.clone()
    }

    /// Registers a step name, for operators built outside the engine; a duplicate is reported when
    /// the job is built.
    pub fn register_step(&self, name: &str) {
        self.ctx.register_step(name)
    }
}

/// A stream partitioned by key: the input of windows, joins and process functions.
pub struct KeyedStream<'scope, K, T> {
    inner: Keyed<'scope, K, T>,
}

/// How a [`KeyedStream`]'s records travel.
enum Keyed<'scope, K, T> {
    /// As `(key, record)` pairs ([`Stream::key_by_split`], [`KeyedStream::map_values`],
    /// [`KeyedStream::union`]).
    Pairs(Stream<'scope, (K, T)>),
    /// As the records themselves, with the function that gives each its key ([`Stream::key_by`]):
    /// the exchange and the keyed step compute the key where they need it.
    ByKey { records: Stream<'scope, T>, key: Rc<dyn Fn(&T) -> K>, name: String },
}

impl<'scope, K: Key, T: Data> KeyedStream<'scope, K, T> {
    fn ctx(&self) -> &Rc<BuildContext> {
        match &self.inner {
            Keyed::Pairs(pairs) => &pairs.ctx,
            Keyed::ByKey { records, .. } => &records.ctx,
        }
    }

    /// The records as `(key, record)` pairs; for a [`Stream::key_by`] stream, made by a step
    /// under the key_by's name.
    fn into_pairs(self) -> Stream<'scope, (K, T)> {
        match self.inner {
            Keyed::Pairs(pairs) => pairs,
            Keyed::ByKey { records, key, name } => {
                records.unary_operator(&name, move |data, out| out.extend(data.drain(..).map(|(ts, x)| (ts, (key(&x), x)))))
            }
        }
    }

    /// Splits off the records for which `divert(message_time, event_time, record)` holds, as
    /// [`Stream::divert`] does, before the records are exchanged between workers.
    #[doc(hidden)]
    pub fn divert(self, name: &str, divert: impl Fn(u64, u64, &T) -> bool + 'static) -> (KeyedStream<'scope, K, T>, Stream<'scope, T>) {
        match self.inner {
            Keyed::Pairs(pairs) => {
                let (kept, diverted) = pairs.divert(name, move |time, ts, (_, x)| divert(time, ts, x));
                let dropped_keys = diverted.map(&format!("{name}:records"), |(_, x)| x);
                (KeyedStream { inner: Keyed::Pairs(kept) }, dropped_keys)
            }
            Keyed::ByKey { records, key, name: key_name } => {
                let (kept, diverted) = records.divert(name, divert);
                (KeyedStream { inner: Keyed::ByKey { records: kept, key, name: key_name } }, diverted)
            }
        }
    }

    /// Transforms each record, keeping its key and event time.
    pub fn map_values<U: Data>(self, name: &str, f: impl Fn(T) -> U + 'static) -> KeyedStream<'scope, K, U> {
        match self.inner {
            Keyed::Pairs(pairs) => KeyedStream { inner: Keyed::Pairs(pairs.map(name, move |(k, x)| (k, f(x)))) },
            // The key is taken before the record is transformed: one step, one copy.
            Keyed::ByKey { records, key, .. } => KeyedStream { inner: Keyed::Pairs(records.map(name, move |x| (key(&x), f(x)))) },
        }
    }

    /// Merges two keyed streams with the same key and record type.
    pub fn union(self, other: KeyedStream<'scope, K, T>) -> KeyedStream<'scope, K, T> {
        KeyedStream { inner: Keyed::Pairs(self.into_pairs().union(other.into_pairs())) }
    }

    /// Runs keyed, event-time logic (see [`crate::keyed`]) on the worker that owns each key.
    pub fn keyed_logic<L: crate::keyed::KeyedLogic<K, T>>(self, name: &str, logic: L) -> Stream<'scope, L::Out> {
        let ctx = self.ctx().clone();
        ctx.register_step(name);
        ctx.add_participant(ParticipantKind::State(name.to_string()));
        let inner = match self.inner {
            Keyed::Pairs(pairs) => {
                let peers = pairs.inner.scope().peers();
                let pact = Exchange::new(move |(_, (k, _)): &(u64, (K, T))| worker_for_key_group(key_group(k), peers));
                crate::keyed::build_keyed(pairs.inner, pact, name, logic, &ctx, crate::keyed::Pairs)
            }
            Keyed::ByKey { records, key, .. } => {
                let peers = records.inner.scope().peers();
                let exchange_key = key.clone();
                let pact = Exchange::new(move |(_, x): &(u64, T)| worker_for_key_group(key_group(&exchange_key(x)), peers));
                crate::keyed::build_keyed(records.inner, pact, name, logic, &ctx, crate::keyed::KeyOf(key))
            }
        };
        Stream { inner, ctx }
    }

    /// Runs keyed logic over this stream connected with `broadcast`, a stream every worker
    /// receives in full (Flink's broadcast state pattern): the logic sees this stream's records
    /// with their keys (`Some(key)`, [`Connected::Keyed`]) on the worker that owns each key, and
    /// every record of `broadcast` (key `None`, [`Connected::Broadcast`]) on every worker. The
    /// watermark given to the logic is the least of both inputs', so a keyed record at `t` can
    /// wait until every broadcast record at or before `t` is in. The copies travel in the same
    /// exchange as the keyed records, one per worker, as timely's `broadcast` makes them.
    pub fn connect_broadcast_logic<B: Data, L: crate::keyed::KeyedLogic<Option<K>, Connected<T, B>>>(
        self,
        broadcast: Stream<'scope, B>,
        name: &str,
        logic: L,
    ) -> Stream<'scope, L::Out> {
        use timely::dataflow::operators::vec::Map;
        let ctx = self.ctx().clone();
        ctx.register_step(name);
        ctx.add_participant(ParticipantKind::State(name.to_string()));
        let pairs = self.into_pairs();
        let peers = pairs.inner.scope().peers();
        let keyed = pairs.inner.map(|(ts, (key, value))| (ts, Routed { key: Some(key), worker: 0, record: Connected::Keyed(value) }));
        let copies = broadcast.inner.flat_map(move |(ts, record)| {
            (0..peers as u64).map(move |worker| (ts, Routed { key: None, worker, record: Connected::Broadcast(record.clone()) }))
        });
        let pact = Exchange::new(move |(_, routed): &(u64, Routed<K, T, B>)| match &routed.key {
            Some(key) => worker_for_key_group(key_group(key), peers),
            None => routed.worker,
        });
        let inner = crate::keyed::build_keyed(keyed.concat(copies), pact, name, logic, &ctx, RoutedSplit);
        Stream { inner, ctx }
    }

    /// This process's counters.
    pub fn metrics(&self) -> std::sync::Arc<Metrics> {
        self.ctx().metrics.clone()
    }

    /// Reports a mistake in the job's structure (see [`Stream::report_error`]).
    #[doc(hidden)]
    pub fn report_error(&self, message: String) {
        self.ctx().report_error(message)
    }

    /// Registers a step name (see [`Stream::register_step`]).
    pub fn register_step(&self, name: &str) {
        self.ctx().register_step(name)
    }
}

/// A record of a keyed stream connected with a broadcast stream
/// ([`KeyedStream::connect_broadcast_logic`]): from the keyed side or from the broadcast side.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Connected<V, B> {
    /// A record of the keyed stream.
    Keyed(V),
    /// A record of the broadcast stream (every worker gets each one).
    Broadcast(B),
}

/// A connected record on its way to the keyed step: its key (`None` for a broadcast copy) and,
/// for a broadcast copy, the worker it is for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Routed<K, V, B> {
    key: Option<K>,
    worker: u64,
    record: Connected<V, B>,
}

/// Sees a [`Routed`] record as its optional key and its [`Connected`] value.
struct RoutedSplit;

impl<K: Clone + 'static, V: 'static, B: 'static> crate::keyed::Split<Routed<K, V, B>, Option<K>, Connected<V, B>> for RoutedSplit {
    fn key<'a>(&self, routed: &'a Routed<K, V, B>) -> std::borrow::Cow<'a, Option<K>> {
        std::borrow::Cow::Borrowed(&routed.key)
    }
    fn value<'a>(&self, routed: &'a Routed<K, V, B>) -> &'a Connected<V, B> {
        &routed.record
    }
    fn take_value(&self, routed: Routed<K, V, B>) -> Connected<V, B> {
        routed.record
    }
    fn split(&self, routed: Routed<K, V, B>) -> (Option<K>, Connected<V, B>) {
        (routed.key, routed.record)
    }
}
