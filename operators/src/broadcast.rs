//! Broadcast state: a keyed stream connected with a stream that every worker receives in full,
//! as Flink's broadcast state pattern (`KeyedBroadcastProcessFunction`): the broadcast side (rule
//! changes, thresholds, reference rows) updates a state every worker holds a copy of, the keyed
//! side reads it, with per-key state and timers as in [`crate::process`].
//!
//! Determinism, unlike Flink's arrival-order semantics: a broadcast record takes effect at its own
//! event time. Keyed records wait until the watermark of both inputs has passed them, and before
//! the records at event time `t` are handed to the function, every broadcast record with time
//! `<= t` has been applied, in event-time order (ties in the order of their encoded bytes). **Tie
//! rule: a change at exactly `t` applies to a keyed record at `t`**, and to a timer at `t`. The
//! output therefore depends only on the input, not on arrival order or worker count.
//!
//! Lateness: a broadcast record behind its partition's watermark is dropped and counted
//! (`late_dropped:STEP:broadcast`): applying it would depend on which keyed records had already
//! been evaluated. Keyed records behind the watermark are dropped and counted (`late_dropped:STEP`)
//! as [`crate::process`] does, unless [`BroadcastConnected::keep_late_records`] is asked for: then
//! they are evaluated as soon as they come, against the broadcast state as it is then, which has
//! seen every change up to the watermark (a function that must see the state as of the record's
//! own time keeps versions in its broadcast state and looks them up).
//!
//! Checkpoints: the broadcast state and the broadcast records not yet applied are written into
//! every key group the worker owns, beside the keyed state, so a restore at any worker count
//! gives every worker the whole of it. The copies of different workers may have applied the same
//! changes up to different watermarks; a restore keeps the copy applied least far (its pending
//! changes hold the rest), so no keyed record still to come sees a change from its future.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::{key_group, worker_for_key_group, KEY_GROUPS};
use paystream_engine::time::passed;
use paystream_engine::{Connected, Data, Key, KeyedLogic, KeyedStream, Stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::process::{tie_break, Context, ProcessFunction, ProcessLogic};

/// Per-key logic that also reads a state shared by all keys, which a broadcast stream updates.
///
/// ```
/// use paystream_engine::testing::run_collect;
/// use paystream_operators::{BroadcastExt, Context, KeyedBroadcastProcessFunction};
///
/// /// Emits (card, amount) for amounts above a threshold that the broadcast side sets.
/// struct AboveThreshold;
///
/// impl KeyedBroadcastProcessFunction<u64, i64, i64> for AboveThreshold {
///     type State = ();
///     type Broadcast = i64;
///     type Out = (u64, i64);
///     fn on_broadcast(&self, threshold: &mut i64, _ts_ms: u64, new_threshold: i64) {
///         *threshold = new_threshold;
///     }
///     fn on_record(&self, ctx: &mut Context<'_, (u64, i64)>, card: &u64, _state: &mut (), threshold: &i64, ts_ms: u64, amount: i64) {
///         if amount > *threshold {
///             ctx.emit(ts_ms, (*card, amount));
///         }
///     }
/// }
///
/// // One input carrying both sides: Ok(threshold) or Err((card, amount)).
/// let input: Vec<(u64, Result<i64, (u64, i64)>)> =
///     vec![(0, Ok(100)), (5, Err((1, 150))), (10, Ok(200)), (10, Err((1, 150))), (12, Err((2, 250)))];
/// let out = run_collect(input, |s| {
///     let thresholds = s.clone().flat_map("thresholds", |r| r.ok());
///     let amounts = s.flat_map("amounts", |r| r.err()).key_by_split("by-card", |p| p);
///     amounts.connect_broadcast(thresholds).process("above-threshold", AboveThreshold)
/// });
/// // The change to 200 at time 10 applies to the amount at time 10.
/// assert_eq!(out, vec![(5, (1, 150)), (12, (2, 250))]);
/// ```
pub trait KeyedBroadcastProcessFunction<K, V, B>: 'static {
    /// The state kept per key; saved in checkpoints.
    type State: Default + Clone + Serialize + DeserializeOwned + 'static;
    /// The state every worker holds a copy of, changed only by the broadcast side; saved in
    /// checkpoints.
    type Broadcast: Default + Clone + Serialize + DeserializeOwned + 'static;
    /// What it emits.
    type Out: Data;

    /// Applies one broadcast record, at its event time `ts_ms`, in event-time order. It must
    /// depend only on the state and the record: every worker applies it to its own copy.
    fn on_broadcast(&self, broadcast: &mut Self::Broadcast, ts_ms: u64, record: B);

    /// Handles one keyed record, in event-time order per key, with every broadcast record up to
    /// and including `ts_ms` applied.
    fn on_record(
        &self,
        ctx: &mut Context<'_, Self::Out>,
        key: &K,
        state: &mut Self::State,
        broadcast: &Self::Broadcast,
        ts_ms: u64,
        record: V,
    );

    /// Handles a timer registered for `key` (see [`Context::register_timer`]), with every
    /// broadcast record up to and including `timer_ms` applied.
    fn on_timer(
        &self,
        _ctx: &mut Context<'_, Self::Out>,
        _key: &K,
        _state: &mut Self::State,
        _broadcast: &Self::Broadcast,
        _timer_ms: u64,
    ) {
    }
}

/// `key_by(..).connect_broadcast(other)`.
pub trait BroadcastExt<'scope, K, V> {
    /// Connects this keyed stream with `broadcast`, which every worker receives in full.
    fn connect_broadcast<B: Data>(self, broadcast: Stream<'scope, B>) -> BroadcastConnected<'scope, K, V, B>;
}

impl<'scope, K: Key, V: Data> BroadcastExt<'scope, K, V> for KeyedStream<'scope, K, V> {
    fn connect_broadcast<B: Data>(self, broadcast: Stream<'scope, B>) -> BroadcastConnected<'scope, K, V, B> {
        BroadcastConnected { keyed: self, broadcast, keep_late: false }
    }
}

/// A keyed stream connected with a broadcast stream, waiting for its function.
pub struct BroadcastConnected<'scope, K, V, B> {
    keyed: KeyedStream<'scope, K, V>,
    broadcast: Stream<'scope, B>,
    keep_late: bool,
}

impl<'scope, K: Key, V: Data, B: Data> BroadcastConnected<'scope, K, V, B> {
    /// Evaluates keyed records behind the watermark too, instead of dropping them (see the module
    /// doc): for inputs whose records carry an event time of their own that the function reads.
    pub fn keep_late_records(mut self) -> Self {
        self.keep_late = true;
        self
    }

    /// Runs `function` over each key's records and the broadcast records, as the module doc says.
    pub fn process<F: KeyedBroadcastProcessFunction<K, V, B>>(self, name: &str, function: F) -> Stream<'scope, F::Out> {
        let keyed = if self.keep_late {
            self.keyed
        } else {
            let (kept, late) = self.keyed.divert(&format!("{name}:lateness"), |message_time, ts, _| ts < message_time);
            let _ = late.count_as(&format!("{name}:late"), &format!("late_dropped:{name}"));
            kept
        };
        let (broadcast, late) = self.broadcast.divert(&format!("{name}:broadcast-lateness"), |message_time, ts, _| ts < message_time);
        let _ = late.count_as(&format!("{name}:broadcast-late"), &format!("late_dropped:{name}:broadcast"));
        keyed.connect_broadcast_logic(broadcast, name, BroadcastLogic::new(function))
    }
}

/// Logic over a stream that is not keyed, reading a state the broadcast side updates (Flink's
/// `BroadcastProcessFunction`): no per-key state. Same event-time semantics and tie rule as
/// [`KeyedBroadcastProcessFunction`].
///
/// ```
/// use paystream_engine::testing::run_collect;
/// use paystream_operators::{BroadcastProcessFunction, BroadcastStreamExt, Context};
///
/// /// Passes the amounts above a threshold that the broadcast side sets.
/// struct AboveThreshold;
///
/// impl BroadcastProcessFunction<i64, i64> for AboveThreshold {
///     type Broadcast = i64;
///     type Out = i64;
///     fn on_broadcast(&self, threshold: &mut i64, _ts_ms: u64, new_threshold: i64) {
///         *threshold = new_threshold;
///     }
///     fn on_record(&self, ctx: &mut Context<'_, i64>, threshold: &i64, ts_ms: u64, amount: i64) {
///         if amount > *threshold {
///             ctx.emit(ts_ms, amount);
///         }
///     }
/// }
///
/// // Ok(threshold) or Err(amount).
/// let input: Vec<(u64, Result<i64, i64>)> = vec![(0, Ok(100)), (5, Err(150)), (10, Ok(200)), (10, Err(150)), (12, Err(250))];
/// let out = run_collect(input, |s| {
///     let thresholds = s.clone().flat_map("thresholds", |r| r.ok());
///     s.flat_map("amounts", |r| r.err()).connect_broadcast(thresholds).process("above-threshold", AboveThreshold)
/// });
/// assert_eq!(out, vec![(5, 150), (12, 250)]);
/// ```
pub trait BroadcastProcessFunction<V, B>: 'static {
    /// The state every worker holds a copy of, changed only by the broadcast side; saved in
    /// checkpoints.
    type Broadcast: Default + Clone + Serialize + DeserializeOwned + 'static;
    /// What it emits.
    type Out: Data;

    /// Applies one broadcast record at its event time, in event-time order (see
    /// [`KeyedBroadcastProcessFunction::on_broadcast`]).
    fn on_broadcast(&self, broadcast: &mut Self::Broadcast, ts_ms: u64, record: B);

    /// Handles one record, with every broadcast record up to and including `ts_ms` applied.
    /// Records are handed over in event-time order; timers registered here never fire.
    fn on_record(&self, ctx: &mut Context<'_, Self::Out>, broadcast: &Self::Broadcast, ts_ms: u64, record: V);
}

/// `stream.connect_broadcast(other)` for a stream that is not keyed.
pub trait BroadcastStreamExt<'scope, V> {
    /// Connects this stream with `broadcast`, which every worker receives in full.
    fn connect_broadcast<B: Data>(self, broadcast: Stream<'scope, B>) -> BroadcastConnectedStream<'scope, V, B>;
}

impl<'scope, V: Data> BroadcastStreamExt<'scope, V> for Stream<'scope, V> {
    fn connect_broadcast<B: Data>(self, broadcast: Stream<'scope, B>) -> BroadcastConnectedStream<'scope, V, B> {
        BroadcastConnectedStream { stream: self, broadcast }
    }
}

/// A stream connected with a broadcast stream, waiting for its function.
pub struct BroadcastConnectedStream<'scope, V, B> {
    stream: Stream<'scope, V>,
    broadcast: Stream<'scope, B>,
}

impl<'scope, V: Data, B: Data> BroadcastConnectedStream<'scope, V, B> {
    /// Runs `function` over the records and the broadcast records. The records are spread over
    /// the workers by a hash of their bytes (one exchange, one encoding per record: the price of
    /// reusing the keyed step, its ordering and its checkpoints); late ones are dropped and
    /// counted (`late_dropped:STEP`).
    pub fn process<F: BroadcastProcessFunction<V, B>>(self, name: &str, function: F) -> Stream<'scope, F::Out> {
        self.stream
            .key_by(&format!("{name}:spread"), |record| key_group(&encode(record).unwrap_or_default()))
            .connect_broadcast(self.broadcast)
            .process(name, NotKeyed { function, _types: PhantomData })
    }
}

/// A [`BroadcastProcessFunction`] run as a keyed one, with no state per key.
struct NotKeyed<F, V, B> {
    function: F,
    _types: PhantomData<fn(V, B)>,
}

impl<V: 'static, B: 'static, F: BroadcastProcessFunction<V, B>> KeyedBroadcastProcessFunction<u64, V, B> for NotKeyed<F, V, B> {
    type State = ();
    type Broadcast = F::Broadcast;
    type Out = F::Out;

    fn on_broadcast(&self, broadcast: &mut F::Broadcast, ts_ms: u64, record: B) {
        self.function.on_broadcast(broadcast, ts_ms, record)
    }

    fn on_record(&self, ctx: &mut Context<'_, F::Out>, _spread: &u64, _state: &mut (), broadcast: &F::Broadcast, ts_ms: u64, record: V) {
        self.function.on_record(ctx, broadcast, ts_ms, record);
        ctx.clear_state();
    }
}

/// A [`KeyedBroadcastProcessFunction`] with its copy of the broadcast state, seen as a
/// [`ProcessFunction`] so the keyed side reuses [`ProcessLogic`] (ordering, timers, snapshots).
struct WithBroadcast<F: KeyedBroadcastProcessFunction<K, V, B>, K, V, B> {
    function: F,
    broadcast: F::Broadcast,
    _types: PhantomData<fn(K, V, B)>,
}

impl<K: 'static, V: 'static, B: 'static, F: KeyedBroadcastProcessFunction<K, V, B>> ProcessFunction<K, V> for WithBroadcast<F, K, V, B> {
    type State = F::State;
    type Out = F::Out;

    fn on_record(&self, ctx: &mut Context<'_, F::Out>, key: &K, state: &mut F::State, ts_ms: u64, record: V) {
        self.function.on_record(ctx, key, state, &self.broadcast, ts_ms, record)
    }

    fn on_timer(&self, ctx: &mut Context<'_, F::Out>, key: &K, state: &mut F::State, timer_ms: u64) {
        self.function.on_timer(ctx, key, state, &self.broadcast, timer_ms)
    }
}

/// The broadcast state of one worker as saved in checkpoints.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize, B: Serialize", deserialize = "S: DeserializeOwned, B: DeserializeOwned"))]
struct SharedPart<S, B> {
    /// The watermark up to which broadcast records were applied.
    applied_through: u64,
    state: S,
    /// Broadcast records not yet applied, as (event time, record).
    pending: Vec<(u64, B)>,
}

/// One key group's part of a checkpoint: the keyed state (as [`ProcessLogic`] writes it), and a
/// copy of the broadcast state.
#[derive(Serialize, Deserialize)]
struct GroupPart {
    keyed: Option<Vec<u8>>,
    shared: Vec<u8>,
}

struct BroadcastLogic<K: 'static, V: 'static, B: 'static, F: KeyedBroadcastProcessFunction<K, V, B>> {
    keyed: ProcessLogic<K, V, WithBroadcast<F, K, V, B>>,
    /// Broadcast records waiting for the watermark, by event time.
    pending: BTreeMap<u64, Vec<B>>,
    /// The last watermark given to the logic: every broadcast record before it is applied.
    watermark: u64,
    /// The `applied_through` of the copy restored, while restoring.
    restored_through: Option<u64>,
    worker: usize,
    peers: usize,
}

impl<K: Key, V: Data, B: Data, F: KeyedBroadcastProcessFunction<K, V, B>> BroadcastLogic<K, V, B, F> {
    fn new(function: F) -> Self {
        let with = WithBroadcast { function, broadcast: F::Broadcast::default(), _types: PhantomData };
        BroadcastLogic {
            keyed: ProcessLogic::new(with, None),
            pending: BTreeMap::new(),
            watermark: 0,
            restored_through: None,
            worker: 0,
            peers: 1,
        }
    }
}

impl<K: Key, V: Data, B: Data, F: KeyedBroadcastProcessFunction<K, V, B>> KeyedLogic<Option<K>, Connected<V, B>>
    for BroadcastLogic<K, V, B, F>
{
    type Out = F::Out;

    fn on_start(&mut self, worker: usize, peers: usize) {
        (self.worker, self.peers) = (worker, peers.max(1));
    }

    fn on_record(&mut self, message_time: u64, ts: u64, key: Option<K>, value: Connected<V, B>) {
        match (key, value) {
            (Some(key), Connected::Keyed(value)) => self.keyed.on_record(message_time, ts, key, value),
            (_, Connected::Broadcast(record)) => self.pending.entry(ts).or_default().push(record),
            // The engine gives every keyed record its key.
            (None, Connected::Keyed(_)) => {}
        }
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, F::Out)>) {
        // Changes at `c` go in after the keyed records and timers before `c`, before those at `c`.
        while let Some(at) = self.pending.keys().next().copied().filter(|c| passed(*c, watermark)) {
            self.keyed.on_watermark(at, out);
            let mut records = self.pending.remove(&at).unwrap_or_default();
            records.sort_by(tie_break);
            let with = &mut self.keyed.function;
            for record in records {
                with.function.on_broadcast(&mut with.broadcast, at, record);
            }
        }
        self.keyed.on_watermark(watermark, out);
        self.watermark = self.watermark.max(watermark);
    }

    fn next_emit_time(&self) -> Option<u64> {
        self.keyed.next_emit_time()
    }

    fn next_processing_time(&self) -> Option<u64> {
        self.keyed.next_processing_time()
    }

    fn on_processing_time(&mut self, now_ms: u64, out: &mut Vec<(u64, F::Out)>) {
        self.keyed.on_processing_time(now_ms, out)
    }

    fn state_size(&self) -> usize {
        self.keyed.state_size() + self.pending.values().map(Vec::len).sum::<usize>()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut keyed: BTreeMap<u64, Vec<u8>> = self.keyed.snapshot()?.into_iter().collect();
        let pending = self.pending.iter().flat_map(|(ts, records)| records.iter().map(move |r| (*ts, r.clone()))).collect();
        let shared = SharedPart { applied_through: self.watermark, state: self.keyed.function.broadcast.clone(), pending };
        let shared = encode(&shared)?;
        let mut parts = Vec::new();
        for group in 0..KEY_GROUPS {
            // Keyed state is only ever in groups this worker owns; the broadcast state goes into
            // each of them.
            let owned = worker_for_key_group(group, self.peers) == self.worker as u64;
            let keyed = keyed.remove(&group);
            if owned || keyed.is_some() {
                parts.push((group, encode(&GroupPart { keyed, shared: shared.clone() })?));
            }
        }
        Ok(parts)
    }

    fn restore(&mut self, key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let part: GroupPart = decode(bytes)?;
        if let Some(keyed) = part.keyed {
            self.keyed.restore(key_group, &keyed)?;
        }
        let shared: SharedPart<F::Broadcast, B> = decode(&part.shared)?;
        if self.restored_through.is_none_or(|through| shared.applied_through < through) {
            self.restored_through = Some(shared.applied_through);
            self.watermark = shared.applied_through;
            self.keyed.function.broadcast = shared.state;
            self.pending.clear();
            for (ts, record) in shared.pending {
                self.pending.entry(ts).or_default().push(record);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums the broadcast values into a threshold; emits each record's value if above it.
    struct Threshold;

    impl KeyedBroadcastProcessFunction<u64, i64, i64> for Threshold {
        type State = u64;
        type Broadcast = i64;
        type Out = (u64, i64);
        fn on_broadcast(&self, threshold: &mut i64, _ts: u64, change: i64) {
            *threshold += change;
        }
        fn on_record(&self, ctx: &mut Context<'_, (u64, i64)>, key: &u64, seen: &mut u64, threshold: &i64, ts: u64, value: i64) {
            *seen += 1;
            if value > *threshold {
                ctx.emit(ts, (*key, value));
            }
        }
    }

    /// Passes values above the threshold (the non-keyed form).
    struct Above;

    impl BroadcastProcessFunction<i64, i64> for Above {
        type Broadcast = i64;
        type Out = i64;
        fn on_broadcast(&self, threshold: &mut i64, _ts: u64, new: i64) {
            *threshold = new;
        }
        fn on_record(&self, ctx: &mut Context<'_, i64>, threshold: &i64, ts: u64, value: i64) {
            if value > *threshold {
                ctx.emit(ts, value);
            }
        }
    }

    /// Thresholds from one partition, values from two: the same output at 1, 2 and 3 workers,
    /// each threshold applying from its own time on (at it included).
    #[test]
    fn not_keyed_output_is_the_same_at_any_worker_count() {
        use paystream_engine::testing::run_partitions;
        use paystream_engine::OutOfOrder;
        let thresholds: Vec<(u64, Result<i64, i64>)> = vec![(0, Ok(10)), (100, Ok(50)), (200, Ok(5))];
        let values = |first: u64| (first..300).step_by(2).map(|ts| (ts, Err((ts % 60) as i64))).collect::<Vec<_>>();
        let partitions = vec![thresholds, values(0), values(1)];
        let mut expected: Vec<(u64, i64)> = (0..300u64)
            .map(|ts| (ts, (ts % 60) as i64))
            .filter(|(ts, v)| {
                *v > if *ts < 100 {
                    10
                } else if *ts < 200 {
                    50
                } else {
                    5
                }
            })
            .collect();
        expected.sort();
        for workers in [1, 2, 3] {
            let (out, counters) = run_partitions(
                workers,
                partitions.clone(),
                |(ts, _)| *ts,
                OutOfOrder::ordered(),
                |s| {
                    let s = s.map("strip", |(_, r)| r);
                    let thresholds = s.clone().flat_map("thresholds", |r| r.ok());
                    s.flat_map("values", |r| r.err()).connect_broadcast(thresholds).process("above", Above)
                },
            );
            assert_eq!(out, expected, "{workers} workers");
            assert_eq!(counters.get("late_dropped:above").copied().unwrap_or(0), 0);
        }
    }

    fn logic() -> BroadcastLogic<u64, i64, i64, Threshold> {
        BroadcastLogic::new(Threshold)
    }

    /// A change at `t` applies to records at `t`, not before; arrival order does not matter.
    #[test]
    fn changes_apply_at_their_event_time() {
        for change_first in [true, false] {
            let mut l = logic();
            let mut out = Vec::new();
            let change = |l: &mut BroadcastLogic<u64, i64, i64, Threshold>| l.on_record(0, 10, None, Connected::Broadcast(50));
            if change_first {
                change(&mut l);
            }
            for (ts, v) in [(9u64, 40i64), (10, 40), (11, 60)] {
                l.on_record(0, ts, Some(1), Connected::Keyed(v));
            }
            if !change_first {
                change(&mut l);
            }
            l.on_watermark(12, &mut out);
            assert_eq!(out, vec![(9, (1, 40)), (11, (1, 60))], "change first: {change_first}");
        }
    }

    /// The restore keeps the copy applied least far: a record still pending at its owner, below
    /// another worker's watermark, does not see a change after its time.
    #[test]
    fn restore_keeps_the_least_applied_copy() {
        let (mut ahead, mut behind) = (logic(), logic());
        ahead.on_start(0, 2);
        behind.on_start(1, 2);
        for l in [&mut ahead, &mut behind] {
            l.on_record(0, 20, None, Connected::Broadcast(100));
        }
        ahead.on_watermark(25, &mut Vec::new());
        behind.on_record(0, 15, Some(7), Connected::Keyed(50));
        behind.on_watermark(12, &mut Vec::new());
        let mut parts = ahead.snapshot().unwrap();
        // A worker with no keyed state still writes the broadcast state into each group it owns.
        assert_eq!(parts.len() as u64, KEY_GROUPS / 2);
        assert!(parts.iter().all(|(g, _)| worker_for_key_group(*g, 2) == 0));
        parts.extend(behind.snapshot().unwrap());
        // Restored on one worker, groups in either order.
        for reverse in [false, true] {
            let mut restored = logic();
            restored.on_start(0, 1);
            let mut all = parts.clone();
            if reverse {
                all.reverse();
            }
            for (group, bytes) in &all {
                restored.restore(*group, bytes).unwrap();
            }
            let mut out = Vec::new();
            restored.on_watermark(30, &mut out);
            assert_eq!(out, vec![(15, (7, 50))], "reverse: {reverse}");
            assert_eq!(restored.keyed.function.broadcast, 100);
        }
    }
}
