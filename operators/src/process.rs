//! Keyed process functions: per-key state and event-time timers, the escape hatch for rules the
//! built-in operators do not cover (Flink's `KeyedProcessFunction`).
//!
//! Determinism: each key's records are handed to the function in event-time order (ties broken by
//! the record's bytes), released as the watermark passes them, and a timer for time `t` fires once
//! the watermark passes `t`, after the records at `t`. The function's output therefore depends only
//! on the input, not on arrival order or worker count. Records behind their partition's watermark
//! are late: dropped and counted (`late_dropped:STEP`), as Flink's CEP does. Processing-time
//! timers ([`Context::register_processing_timer`]) fire by the wall clock: what they emit depends
//! on timing (use them for timeouts and housekeeping, not for results that must be exactly-once),
//! and those still pending when the input ends are dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::time::passed;
use paystream_engine::{Data, Duration, Key, KeyedLogic, KeyedStream, Stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a process function can do while it handles a record or a timer.
pub struct Context<'a, O> {
    out: &'a mut Vec<(u64, O)>,
    timers: Vec<u64>,
    processing_timers: Vec<u64>,
    now_ms: u64,
    clear: bool,
}

impl<O> Context<'_, O> {
    /// Emits a result with event time `ts_ms`.
    pub fn emit(&mut self, ts_ms: u64, record: O) {
        self.out.push((ts_ms, record));
    }
    /// Asks for [`ProcessFunction::on_timer`] once the watermark passes `at_ms` (for this key).
    pub fn register_timer(&mut self, at_ms: u64) {
        self.timers.push(at_ms);
    }
    /// Asks for [`ProcessFunction::on_processing_timer`] once `delay` of wall-clock time has passed.
    pub fn register_processing_timer(&mut self, delay: Duration) {
        self.processing_timers.push(paystream_engine::keyed::wall_clock_ms().saturating_add(delay.as_millis()));
    }
    /// The event time being processed: the record's, or the timer's.
    pub fn timestamp(&self) -> u64 {
        self.now_ms
    }
    /// Drops this key's state after this call (its timers stay registered, as in Flink; a timer
    /// that fires later sees a fresh, default state).
    pub fn clear_state(&mut self) {
        self.clear = true;
    }
}

/// Per-key logic with state and timers.
pub trait ProcessFunction<K, V>: 'static {
    /// The state kept per key (value, list or map state are fields of it); saved in checkpoints.
    type State: Default + Clone + Serialize + DeserializeOwned + 'static;
    /// What it emits.
    type Out: Data;

    /// Handles one record of `key`, in event-time order.
    fn on_record(&self, ctx: &mut Context<'_, Self::Out>, key: &K, state: &mut Self::State, ts_ms: u64, record: V);

    /// Handles a timer registered for `key`.
    fn on_timer(&self, _ctx: &mut Context<'_, Self::Out>, _key: &K, _state: &mut Self::State, _timer_ms: u64) {}

    /// Handles a processing-time timer registered for `key`, due at wall-clock `at_ms`. Results
    /// emitted here carry the current watermark as event time.
    fn on_processing_timer(&self, _ctx: &mut Context<'_, Self::Out>, _key: &K, _state: &mut Self::State, _at_ms: u64) {}
}

/// `key_by(..).process(name, function)`.
pub trait ProcessExt<'scope, K, V> {
    /// Runs `function` over each key's records, in event-time order.
    fn process<F: ProcessFunction<K, V>>(self, name: &str, function: F) -> Stream<'scope, F::Out>;

    /// As [`ProcessExt::process`], dropping a key's state when it saw no record for `ttl` of event
    /// time (timers of that key are dropped with it).
    fn process_with_ttl<F: ProcessFunction<K, V>>(self, name: &str, function: F, ttl: Duration) -> Stream<'scope, F::Out>;
}

impl<'scope, K: Key, V: Data> ProcessExt<'scope, K, V> for KeyedStream<'scope, K, V> {
    fn process<F: ProcessFunction<K, V>>(self, name: &str, function: F) -> Stream<'scope, F::Out> {
        build(self, name, function, None)
    }

    fn process_with_ttl<F: ProcessFunction<K, V>>(self, name: &str, function: F, ttl: Duration) -> Stream<'scope, F::Out> {
        build(self, name, function, Some(ttl.as_millis()))
    }
}

fn build<'scope, K: Key, V: Data, F: ProcessFunction<K, V>>(
    input: KeyedStream<'scope, K, V>,
    name: &str,
    function: F,
    ttl: Option<u64>,
) -> Stream<'scope, F::Out> {
    let (kept, late) = input.divert(&format!("{name}:lateness"), |message_time, ts, _| ts < message_time);
    let _ = late.count_as(&format!("{name}:late"), &format!("late_dropped:{name}"));
    kept.keyed_logic(name, ProcessLogic::new(function, ttl))
}

/// How many emptied `pending` lists a process function keeps for reuse.
const SPARE_LISTS: usize = 64;

/// Per-key maps: foldhash is several times cheaper than std's SipHash on small keys such as card
/// ids; the maps are never iterated into output, so their order does not matter.
type KeyMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub(crate) struct ProcessLogic<K, V, F: ProcessFunction<K, V>> {
    pub(crate) function: F,
    ttl: Option<u64>,
    states: KeyMap<K, F::State>,
    last_seen: KeyMap<K, u64>,
    /// Records waiting for the watermark, by event time.
    pending: BTreeMap<u64, Vec<(K, V)>>,
    /// Emptied lists of `pending` (a few), kept for the next event times instead of allocating anew.
    spare_lists: Vec<Vec<(K, V)>>,
    /// The timer lists of [`Context`], kept between calls for the same reason.
    spare_timers: (Vec<u64>, Vec<u64>),
    /// (time, key) of registered timers.
    timers: BTreeSet<(u64, K)>,
    /// (wall-clock ms, key) of registered processing-time timers.
    processing_timers: BTreeSet<(u64, K)>,
    /// The last watermark seen, as the event time of processing-time results.
    watermark: u64,
    /// (expiry, key) for the state TTL.
    expiry: BTreeSet<(u64, K)>,
}

impl<K: Key, V: Data, F: ProcessFunction<K, V>> ProcessLogic<K, V, F> {
    pub(crate) fn new(function: F, ttl: Option<u64>) -> Self {
        ProcessLogic {
            function,
            ttl,
            states: KeyMap::default(),
            last_seen: KeyMap::default(),
            pending: BTreeMap::new(),
            spare_lists: Vec::new(),
            spare_timers: (Vec::new(), Vec::new()),
            timers: BTreeSet::new(),
            processing_timers: BTreeSet::new(),
            expiry: BTreeSet::new(),
            watermark: 0,
        }
    }

    fn call(
        &mut self,
        key: K,
        now_ms: u64,
        out: &mut Vec<(u64, F::Out)>,
        body: impl FnOnce(&F, &mut Context<'_, F::Out>, &K, &mut F::State),
    ) {
        let (timers, processing_timers) = std::mem::take(&mut self.spare_timers);
        let mut ctx = Context { out, timers, processing_timers, now_ms, clear: false };
        let state = self.states.entry(key.clone()).or_default();
        body(&self.function, &mut ctx, &key, state);
        let (mut timers, mut processing_timers, clear) = (ctx.timers, ctx.processing_timers, ctx.clear);
        for t in timers.drain(..) {
            self.timers.insert((t, key.clone()));
        }
        for t in processing_timers.drain(..) {
            self.processing_timers.insert((t, key.clone()));
        }
        self.spare_timers = (timers, processing_timers);
        if clear {
            // As in Flink, clearing state leaves the key's timers registered: removing them would
            // scan every timer of every key (quadratic when each record sets one).
            self.states.remove(&key);
        }
    }
}

/// Orders records of the same event time by their bytes, so ties never depend on arrival.
pub(crate) fn tie_break<V: Serialize>(a: &V, b: &V) -> std::cmp::Ordering {
    encode(a).unwrap_or_default().cmp(&encode(b).unwrap_or_default())
}

impl<K: Key, V: Data, F: ProcessFunction<K, V>> KeyedLogic<K, V> for ProcessLogic<K, V, F> {
    type Out = F::Out;

    fn on_record(&mut self, _message_time: u64, ts: u64, key: K, value: V) {
        let spare = &mut self.spare_lists;
        self.pending.entry(ts).or_insert_with(|| spare.pop().unwrap_or_default()).push((key, value));
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        self.watermark = watermark;
        if watermark == u64::MAX {
            // The input has ended: wall-clock timers still pending will not fire.
            self.processing_timers.clear();
        }
        loop {
            let record_at = self.pending.keys().next().copied().filter(|t| passed(*t, watermark));
            let timer_at = self.timers.first().map(|(t, _)| *t).filter(|t| passed(*t, watermark));
            match (record_at, timer_at) {
                // Records at t before timers at t.
                (Some(r), Some(t)) if r <= t => self.release(r, out),
                (Some(r), None) => self.release(r, out),
                (_, Some(_)) => {
                    let (t, key) = self.timers.pop_first().expect("a timer");
                    self.call(key, t, out, |f, ctx, key, state| f.on_timer(ctx, key, state, t));
                }
                (None, None) => break,
            }
        }
        if self.ttl.is_some() {
            while let Some((expiry, key)) = self.expiry.first().cloned() {
                if expiry >= watermark {
                    break;
                }
                self.expiry.remove(&(expiry, key.clone()));
                if self.last_seen.get(&key).is_some_and(|last| self.ttl.is_some_and(|ttl| last.saturating_add(ttl) == expiry)) {
                    self.states.remove(&key);
                    self.last_seen.remove(&key);
                }
            }
        }
    }

    fn next_emit_time(&self) -> Option<u64> {
        let record = self.pending.keys().next().copied();
        let timer = self.timers.first().map(|(t, _)| *t);
        match (record, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_processing_time(&self) -> Option<u64> {
        self.processing_timers.first().map(|(t, _)| *t)
    }

    fn on_processing_time(&mut self, now_ms: u64, out: &mut Vec<(u64, Self::Out)>) {
        while let Some((at, key)) = self.processing_timers.first().cloned() {
            if at > now_ms {
                break;
            }
            self.processing_timers.remove(&(at, key.clone()));
            let watermark = self.watermark;
            self.call(key, watermark, out, |f, ctx, key, state| f.on_processing_timer(ctx, key, state, at));
        }
    }

    fn state_size(&self) -> usize {
        self.states.len() + self.timers.len() + self.processing_timers.len() + self.pending.values().map(Vec::len).sum::<usize>()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, ProcessGroup<K, V, F::State>> = BTreeMap::new();
        for (key, state) in &self.states {
            groups.entry(key_group(key)).or_default().states.push((key.clone(), state.clone(), self.last_seen.get(key).copied()));
        }
        for (ts, records) in &self.pending {
            for (key, value) in records {
                groups.entry(key_group(key)).or_default().pending.push((*ts, key.clone(), value.clone()));
            }
        }
        for (t, key) in &self.timers {
            groups.entry(key_group(key)).or_default().timers.push((*t, key.clone()));
        }
        for (t, key) in &self.processing_timers {
            groups.entry(key_group(key)).or_default().processing_timers.push((*t, key.clone()));
        }
        groups.into_iter().map(|(g, state)| encode(&state).map(|b| (g, b))).collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let group: ProcessGroup<K, V, F::State> = decode(bytes)?;
        for (key, state, last) in group.states {
            if let (Some(last), Some(ttl)) = (last, self.ttl) {
                self.expiry.insert((last.saturating_add(ttl), key.clone()));
                self.last_seen.insert(key.clone(), last);
            }
            self.states.insert(key, state);
        }
        for (ts, key, value) in group.pending {
            self.pending.entry(ts).or_default().push((key, value));
        }
        self.timers.extend(group.timers);
        self.processing_timers.extend(group.processing_timers);
        Ok(())
    }
}

impl<K: Key, V: Data, F: ProcessFunction<K, V>> ProcessLogic<K, V, F> {
    /// Hands the records at event time `ts` to the function, key by key in a fixed order.
    fn release(&mut self, ts: u64, out: &mut Vec<(u64, F::Out)>) {
        let mut records = self.pending.remove(&ts).unwrap_or_default();
        records.sort_by(|(ka, va), (kb, vb)| ka.cmp(kb).then_with(|| tie_break(va, vb)));
        for (key, value) in records.drain(..) {
            if let Some(ttl) = self.ttl {
                self.last_seen.insert(key.clone(), ts);
                self.expiry.insert((ts.saturating_add(ttl), key.clone()));
            }
            self.call(key, ts, out, |f, ctx, key, state| f.on_record(ctx, key, state, ts, value));
        }
        if self.spare_lists.len() < SPARE_LISTS {
            self.spare_lists.push(records);
        }
    }
}

/// One key group's process state, as saved in checkpoints.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize, S: Serialize",
    deserialize = "K: DeserializeOwned, V: DeserializeOwned, S: DeserializeOwned"
))]
struct ProcessGroup<K, V, S> {
    states: Vec<(K, S, Option<u64>)>,
    pending: Vec<(u64, K, V)>,
    timers: Vec<(u64, K)>,
    /// Wall-clock due times: a timer overdue after a restore fires at once.
    processing_timers: Vec<(u64, K)>,
}

impl<K, V, S> Default for ProcessGroup<K, V, S> {
    fn default() -> Self {
        ProcessGroup { states: Vec::new(), pending: Vec::new(), timers: Vec::new(), processing_timers: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The logic around a function, as `process` builds it (without TTL).
    fn logic_of<F: ProcessFunction<u64, u64>>(function: F) -> ProcessLogic<u64, u64, F> {
        ProcessLogic::new(function, None)
    }

    /// Counts each key's records and emits the count when a timer 10 ms after the first fires.
    struct CountThenReport;

    impl ProcessFunction<u64, u64> for CountThenReport {
        type State = Option<u64>;
        type Out = (u64, u64);
        fn on_record(&self, ctx: &mut Context<'_, (u64, u64)>, _key: &u64, state: &mut Option<u64>, ts: u64, _record: u64) {
            if state.is_none() {
                ctx.register_timer(ts + 10);
            }
            *state = Some(state.unwrap_or(0) + 1);
        }
        fn on_timer(&self, ctx: &mut Context<'_, (u64, u64)>, key: &u64, state: &mut Option<u64>, timer: u64) {
            ctx.emit(timer, (*key, state.unwrap_or(0)));
            ctx.clear_state();
        }
    }

    #[test]
    fn timers_fire_after_records_at_their_time() {
        let mut logic = logic_of(CountThenReport);
        let mut out = Vec::new();
        for ts in [100u64, 105, 110, 111] {
            logic.on_record(0, ts, 1, 0);
        }
        logic.on_watermark(111, &mut out);
        // Records 100, 105, 110 (at the timer's time, so first) count; 111 is not released yet.
        assert_eq!(out, vec![(110, (1, 3))]);
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!(out[1], (121, (1, 1)));
        assert_eq!(logic.state_size(), 0);
    }

    /// Registers a timer at the end of time (a saturated `ts + delay`) and reports when it fires.
    struct AtTheEnd;

    impl ProcessFunction<u64, u64> for AtTheEnd {
        type State = ();
        type Out = u64;
        fn on_record(&self, ctx: &mut Context<'_, u64>, _key: &u64, _state: &mut (), ts: u64, _record: u64) {
            ctx.register_timer(ts.saturating_add(u64::MAX));
        }
        fn on_timer(&self, ctx: &mut Context<'_, u64>, key: &u64, _state: &mut (), timer: u64) {
            ctx.emit(timer, *key);
        }
    }

    /// A timer or a record at `u64::MAX` is due when the input ends, not never (which held the
    /// step, and the job, open forever).
    #[test]
    fn timers_and_records_at_the_end_of_time_fire_when_the_input_ends() {
        let mut logic = logic_of(AtTheEnd);
        let mut out = Vec::new();
        logic.on_record(0, 5, 1, 0);
        logic.on_watermark(u64::MAX - 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(logic.next_emit_time(), Some(u64::MAX));
        logic.on_record(0, u64::MAX, 2, 0);
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!(out, vec![(u64::MAX, 1), (u64::MAX, 2)]);
        assert_eq!(logic.next_emit_time(), None);
    }

    /// Emits "timeout" for a key 50 ms of wall-clock time after its first record.
    struct Timeout;

    impl ProcessFunction<u64, u64> for Timeout {
        type State = bool;
        type Out = String;
        fn on_record(&self, ctx: &mut Context<'_, String>, _key: &u64, armed: &mut bool, _ts: u64, _record: u64) {
            if !*armed {
                *armed = true;
                ctx.register_processing_timer(paystream_engine::millis(50));
            }
        }
        fn on_processing_timer(&self, ctx: &mut Context<'_, String>, key: &u64, _armed: &mut bool, _at: u64) {
            ctx.emit(ctx.timestamp(), format!("timeout {key}"));
            ctx.clear_state();
        }
    }

    #[test]
    fn processing_time_timers_fire_by_the_wall_clock() {
        let mut logic = logic_of(Timeout);
        let mut out = Vec::new();
        logic.on_record(0, 10, 4, 0);
        logic.on_watermark(11, &mut out);
        let due = logic.next_processing_time().expect("a processing-time timer");
        logic.on_processing_time(due - 1, &mut out);
        assert!(out.is_empty(), "fired early: {out:?}");
        logic.on_processing_time(due, &mut out);
        assert_eq!(out, vec![(11, "timeout 4".to_string())]);
        assert_eq!(logic.next_processing_time(), None);
        assert_eq!(logic.state_size(), 0);
    }
}
