//! Tumbling and sliding windows: per-key accumulators per pane, merged when a window fires.
//!
//! Records that are on time for every window covering them are added to their pane at once (the
//! windows have not fired: their ends are above the record's message time, which the frontier has
//! not passed). Records late for at least one covering window wait until the watermark passes their
//! message time and are then applied in message-time order, interleaved with window firings, so the
//! updates they cause are the same whatever the arrival order.
//!
//! With early firing (see [`super::early`]) every record waits instead, by its *release time*
//! `max(event time, message time)`, and records are applied in release-time order (then by event
//! time, key and bytes), interleaved with window firings. The release time depends on the input
//! alone: an on-time record travels at or below its event time, a record behind its partition's
//! watermark at exactly that watermark. Once the watermark passes `t`, no record with a release
//! time at or below `t` can arrive, so the `K`-th record of a key and window, and so every early
//! result, is the same for any arrival order and worker count. The price: each record is moved
//! out of its batch and held until the watermark passes its event time (about the out-of-orderness
//! bound's worth of input), instead of being added where it lies.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::{Data, Key, KeyMap, KeyedLogic, Split};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::early::{EarlyFiring, EarlyState, Progress};
use super::WindowResult;
use crate::aggregate::Aggregate;
use crate::process::tie_break;

/// Window size and slide, in ms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) size: u64,
    pub(crate) slide: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Shape {
    /// The start of the earliest window covering `ts`: the first multiple of the slide above
    /// `ts - size`, or `None` when that is past `ts` (a gap between windows that slide further
    /// than they last) or past `u64::MAX`.
    fn first_start(&self, ts: u64) -> Option<u64> {
        let first_start = if ts >= self.size { ((ts - self.size) / self.slide + 1).checked_mul(self.slide)? } else { 0 };
        (first_start <= ts).then_some(first_start)
    }

    /// Every window `(start, end)` covering `ts`, earliest first. An end past `u64::MAX`
    /// saturates there; starts are stepped with checked additions, so the last window near
    /// `u64::MAX` ends the iteration instead of wrapping around to 0.
    pub(crate) fn windows_of(&self, ts: u64) -> impl Iterator<Item = (u64, u64)> {
        let last_start = ts - ts % self.slide;
        let (size, slide) = (self.size, self.slide);
        std::iter::successors(self.first_start(ts), move |start| start.checked_add(slide))
            .take_while(move |start| *start <= last_start)
            .map(move |start| (start, start.saturating_add(size)))
    }

    /// The end of the earliest window covering `ts`, or `None` in a gap between windows that
    /// slide further than they last: `windows_of(ts).next()` with one division instead of two.
    pub(crate) fn first_end(&self, ts: u64) -> Option<u64> {
        self.first_start(ts).map(|start| start.saturating_add(self.size))
    }

    /// The end of the last window covering a pane that starts at `pane_start`.
    fn last_end_of_pane(&self, pane_start: u64) -> u64 {
        (pane_start - pane_start % self.slide).saturating_add(self.size)
    }
}

/// The accumulators of the pane starting at `start`, for a record on time for every window
/// covering it. The first record of a pane registers the pane's windows as unfired (every record
/// of a pane is covered by the same windows): a pane that exists already had them registered, and
/// none of them has fired, since a record is only on time while its first window is open.
fn on_time_pane<'a, K, Acc>(
    panes: &'a mut BTreeMap<u64, KeyMap<K, Acc>>,
    unfired: &mut BTreeSet<u64>,
    shape: &Shape,
    start: u64,
) -> &'a mut KeyMap<K, Acc> {
    match panes.entry(start) {
        Entry::Occupied(accs) => accs.into_mut(),
        Entry::Vacant(accs) => {
            for (_, end) in shape.windows_of(start) {
                unfired.insert(end);
            }
            accs.insert(KeyMap::default())
        }
    }
}

pub(crate) struct AlignedLogic<K, V, A: Aggregate<V>> {
    shape: Shape,
    pane: u64,
    lateness: u64,
    aggregate: A,
    /// Accumulators by pane start, then key.
    panes: BTreeMap<u64, KeyMap<K, A::Acc>>,
    /// Ends of windows that hold data and have not fired. A pane's windows are added when the
    /// pane is created (see [`AlignedLogic::on_record`]), not once per record.
    unfired: BTreeSet<u64>,
    /// Records waiting for the watermark, by the time they are applied at: records late for some
    /// window by their message time; with early firing, every record by its release time.
    waiting: BTreeMap<u64, Vec<(u64, K, V)>>,
    /// Early-firing progress per window and key (empty and unused without early firing).
    early: EarlyState<K>,
    /// The last watermark seen: the event time of processing-time early results.
    watermark: u64,
}

impl<K: Key, V: Data, A: Aggregate<V>> AlignedLogic<K, V, A> {
    pub(crate) fn new(shape: Shape, lateness: u64, aggregate: A) -> Self {
        let pane = gcd(shape.size, shape.slide);
        AlignedLogic {
            shape,
            pane,
            lateness,
            aggregate,
            panes: BTreeMap::new(),
            unfired: BTreeSet::new(),
            waiting: BTreeMap::new(),
            early: EarlyState::new(EarlyFiring::default()),
            watermark: 0,
        }
    }

    /// Emits partial results before windows end, as `firing` asks.
    pub(crate) fn with_early_firing(mut self, firing: EarlyFiring) -> Self {
        self.early = EarlyState::new(firing);
        self
    }

    #[cfg(test)]
    fn with_early_state(mut self, early: EarlyState<K>) -> Self {
        self.early = early;
        self
    }

    fn add(&mut self, ts: u64, key: K, value: &V) {
        let acc = self.panes.entry(ts - ts % self.pane).or_default().entry(key).or_insert_with(|| self.aggregate.init());
        self.aggregate.add(acc, value);
    }

    /// Adds a record that is on time for every window covering it.
    fn add_on_time(&mut self, ts: u64, key: K, value: &V) {
        let accs = on_time_pane(&mut self.panes, &mut self.unfired, &self.shape, ts - ts % self.pane);
        let acc = accs.entry(key).or_insert_with(|| self.aggregate.init());
        self.aggregate.add(acc, value);
    }

    /// The merged accumulator of `key` over the panes of the window ending at `end`.
    fn merged(&self, end: u64, key: &K) -> Option<A::Acc> {
        let mut merged: Option<A::Acc> = None;
        for pane in self.panes.range(end.saturating_sub(self.shape.size)..end).map(|(_, p)| p) {
            if let Some(acc) = pane.get(key) {
                match merged.as_mut() {
                    Some(m) => self.aggregate.merge(m, acc),
                    None => merged = Some(acc.clone()),
                }
            }
        }
        merged
    }

    fn fire(&mut self, end: u64, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        self.unfired.remove(&end);
        let start = end.saturating_sub(self.shape.size);
        // Keys that emitted early results: their on-time result is an update.
        let early: KeyMap<K, Progress> = self.early.close(end);
        let result = |key: K, acc: &A::Acc| {
            // Without early firing the map is empty: no key is hashed.
            let is_update = !early.is_empty() && early.get(&key).is_some_and(|p| p.emitted);
            (end - 1, WindowResult { start_ms: start, end_ms: end, key, value: self.aggregate.result(acc), is_update })
        };
        if self.pane == self.shape.size {
            // Tumbling: the window is one pane, nothing to merge.
            if let Some(pane) = self.panes.get(&start) {
                out.extend(pane.iter().map(|(key, acc)| result(key.clone(), acc)));
            }
            return;
        }
        // Sized for the largest pane, which every key of the others usually joins: no regrowth.
        let largest = self.panes.range(start..end).map(|(_, p)| p.len()).max().unwrap_or(0);
        let mut merged: KeyMap<K, A::Acc> = KeyMap::with_capacity_and_hasher(largest, Default::default());
        for pane in self.panes.range(start..end).map(|(_, p)| p) {
            for (key, acc) in pane {
                match merged.get_mut(key) {
                    Some(m) => self.aggregate.merge(m, acc),
                    None => {
                        merged.insert(key.clone(), acc.clone());
                    }
                }
            }
        }
        out.extend(merged.into_iter().map(|(key, acc)| result(key, &acc)));
    }

    /// Applies the records waiting at `time`, then emits one update per window and key that late
    /// ones among them changed. With early firing, each record is counted in the windows it is on
    /// time for, which may emit them early (at event time `time`).
    fn apply_waiting(&mut self, time: u64, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        let mut records = self.waiting.remove(&time).unwrap_or_default();
        let counting = self.early.is_on();
        if counting {
            // The order the records count in must not depend on the order they arrived in.
            records.sort_by(|(ta, ka, va), (tb, kb, vb)| ta.cmp(tb).then_with(|| ka.cmp(kb)).then_with(|| tie_break(va, vb)));
        }
        // (window end, key) -> whether the key already had a result for that window.
        let mut changed: BTreeMap<(u64, K), bool> = BTreeMap::new();
        for (ts, key, value) in records {
            for (_, end) in self.shape.windows_of(ts) {
                if end > time {
                    self.unfired.insert(end);
                } else if end.saturating_add(self.lateness) > time && !changed.contains_key(&(end, key.clone())) {
                    let existed = self.merged(end, &key).is_some();
                    changed.insert((end, key.clone()), existed);
                }
            }
            if counting {
                self.add(ts, key.clone(), &value);
                self.count_early(time, ts, &key, out);
            } else {
                self.add(ts, key, &value);
            }
        }
        for ((end, key), existed) in changed {
            if let Some(acc) = self.merged(end, &key) {
                let start = end.saturating_sub(self.shape.size);
                let value = self.aggregate.result(&acc);
                out.push((end - 1, WindowResult { start_ms: start, end_ms: end, key, value, is_update: existed }));
            }
        }
    }

    /// Counts a record of `key` at `ts`, applied at `time`, in every window it is on time for,
    /// and emits the partial result of each that reached its record count.
    fn count_early(&mut self, time: u64, ts: u64, key: &K, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        let shape = self.shape;
        let due: Vec<(u64, bool)> = shape
            .windows_of(ts)
            .filter(|(_, end)| *end > time)
            .filter_map(|(_, end)| self.early.count(end, key).map(|u| (end, u)))
            .collect();
        for (end, is_update) in due {
            self.emit_early(time, end, key.clone(), is_update, out);
        }
    }

    /// Emits the partial result of `key` in the window ending at `end`, at event time `at` (below
    /// `end`: the window has not fired).
    fn emit_early(&self, at: u64, end: u64, key: K, is_update: bool, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        if let Some(acc) = self.merged(end, &key) {
            let start = end.saturating_sub(self.shape.size);
            out.push((at, WindowResult { start_ms: start, end_ms: end, key, value: self.aggregate.result(&acc), is_update }));
        }
    }

    /// Accumulators held (one per key and pane), records waiting and early-firing entries: the
    /// state-size metric.
    pub(crate) fn state_len(&self) -> usize {
        self.panes.values().map(KeyMap::len).sum::<usize>() + self.waiting.values().map(Vec::len).sum::<usize>() + self.early.len()
    }
}

impl<K: Key, V: Data, A: Aggregate<V>> KeyedLogic<K, V> for AlignedLogic<K, V, A> {
    type Out = WindowResult<K, A::Out>;

    fn on_record(&mut self, message_time: u64, ts_ms: u64, key: K, value: V) {
        if self.early.is_on() {
            self.waiting.entry(ts_ms.max(message_time)).or_default().push((ts_ms, key, value));
        } else if self.shape.first_end(ts_ms).is_some_and(|end| end <= message_time) {
            self.waiting.entry(message_time).or_default().push((ts_ms, key, value));
        } else {
            self.add_on_time(ts_ms, key, &value);
        }
    }

    /// Reads on-time records where they are (an aggregate only reads them); late ones, rare, are
    /// moved out afterwards in their order. Records of one pane share their windows, so whether
    /// they are on time and their pane's accumulators are looked up once per run of records in
    /// the same pane. Handing each record over by value (as `on_record` does) would copy it three
    /// times on its way, and look its pane up with two divisions, per record (figures in
    /// BENCHMARKS.md).
    fn on_records<R, S: Split<R, K, V>>(&mut self, message_time: u64, records: &mut Vec<(u64, R)>, split: &S) {
        if self.early.is_on() {
            // Every record waits for its release time (see the module doc).
            for (ts, record) in records.drain(..) {
                let (key, value) = split.split(record);
                self.waiting.entry(ts.max(message_time)).or_default().push((ts, key, value));
            }
            return;
        }
        let AlignedLogic { shape, pane, aggregate, panes, unfired, waiting, .. } = self;
        let pane = *pane;
        let mut any_late = false;
        // The pane of the previous record: its start, and its accumulators if it is on time.
        let mut current_start: Option<u64> = None;
        let mut current = None;
        for (ts, record) in records.iter() {
            let ts = *ts;
            if !current_start.is_some_and(|start| ts >= start && ts - start < pane) {
                let start = ts - ts % pane;
                let accs = if shape.first_end(ts).is_some_and(|end| end <= message_time) {
                    None
                } else {
                    Some(on_time_pane(panes, unfired, shape, start))
                };
                (current_start, current) = (Some(start), accs);
            }
            match current.as_mut() {
                Some(accs) => {
                    // Looked up by reference: a key in the record is cloned only for a new entry.
                    let key = split.key(record);
                    match accs.get_mut(&*key) {
                        Some(acc) => aggregate.add(acc, split.value(record)),
                        None => {
                            let mut acc = aggregate.init();
                            aggregate.add(&mut acc, split.value(record));
                            accs.insert(key.into_owned(), acc);
                        }
                    }
                }
                None => any_late = true,
            }
        }
        if any_late {
            let late = waiting.entry(message_time).or_default();
            for (ts, record) in records.drain(..) {
                if shape.first_end(ts).is_some_and(|end| end <= message_time) {
                    let (key, value) = split.split(record);
                    late.push((ts, key, value));
                }
            }
        }
        records.clear();
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        self.watermark = watermark;
        loop {
            let fire = self.unfired.first().copied().filter(|end| *end <= watermark);
            let waiting = self.waiting.first_key_value().map(|(t, _)| *t).filter(|t| *t < watermark);
            match (fire, waiting) {
                // A window ending at t fires before records that travelled at t update it.
                (Some(end), Some(time)) if end <= time => self.fire(end, out),
                (_, Some(time)) => self.apply_waiting(time, out),
                (Some(end), None) => self.fire(end, out),
                (None, None) => break,
            }
        }
        while let Some(entry) = self.panes.first_entry() {
            if self.shape.last_end_of_pane(*entry.key()).saturating_add(self.lateness) > watermark {
                break;
            }
            entry.remove();
        }
    }

    fn next_emit_time(&self) -> Option<u64> {
        let fire = self.unfired.first().map(|end| end - 1);
        let waiting = self.waiting.first_key_value().map(|(t, _)| *t);
        match (fire, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_processing_time(&self) -> Option<u64> {
        self.early.due_ms()
    }

    /// Every window and key that counted records since its last emission emits its partial
    /// result, at the current watermark as event time (below the end of every window not fired).
    fn on_processing_time(&mut self, now_ms: u64, out: &mut Vec<(u64, Self::Out)>) {
        if self.early.due_ms().is_none_or(|due| due > now_ms) {
            return;
        }
        for (end, key, is_update) in self.early.take_changed() {
            self.emit_early(self.watermark, end, key, is_update, out);
        }
    }

    fn state_size(&self) -> usize {
        self.state_len()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, AlignedGroup<K, V, A::Acc>> = BTreeMap::new();
        for (pane, accs) in &self.panes {
            for (key, acc) in accs {
                groups.entry(key_group(key)).or_default().panes.push((*pane, key.clone(), acc.clone()));
            }
        }
        for (time, records) in &self.waiting {
            for (ts, key, value) in records {
                groups.entry(key_group(key)).or_default().waiting.push((*time, *ts, key.clone(), value.clone()));
            }
        }
        for (end, key, progress) in self.early.entries() {
            groups.entry(key_group(key)).or_default().early.push((end, key.clone(), progress));
        }
        let unfired: Vec<u64> = self.unfired.iter().copied().collect();
        groups
            .into_iter()
            .map(|(group, mut state)| {
                state.unfired = unfired.clone();
                encode(&state).map(|bytes| (group, bytes))
            })
            .collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let state: AlignedGroup<K, V, A::Acc> = decode(bytes)?;
        for (pane, key, acc) in state.panes {
            self.panes.entry(pane).or_default().insert(key, acc);
        }
        for (time, ts, key, value) in state.waiting {
            self.waiting.entry(time).or_default().push((ts, key, value));
        }
        for (end, key, progress) in state.early {
            self.early.restore(end, key, progress);
        }
        self.unfired.extend(state.unfired);
        Ok(())
    }
}

/// One key group's part of an aligned window's state, as saved in checkpoints.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize, Acc: Serialize",
    deserialize = "K: DeserializeOwned, V: DeserializeOwned, Acc: DeserializeOwned"
))]
struct AlignedGroup<K, V, Acc> {
    panes: Vec<(u64, K, Acc)>,
    /// (time applied at, event time, key, value).
    waiting: Vec<(u64, u64, K, V)>,
    unfired: Vec<u64>,
    /// (window end, key, early-firing progress).
    early: Vec<(u64, K, Progress)>,
}

impl<K, V, Acc> Default for AlignedGroup<K, V, Acc> {
    fn default() -> Self {
        AlignedGroup { panes: Vec::new(), waiting: Vec::new(), unfired: Vec::new(), early: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::aggregate::Count;

    #[test]
    fn windows_of_covers_exactly() {
        let shape = Shape { size: 30, slide: 20 };
        for ts in 0..200u64 {
            let got: Vec<_> = shape.windows_of(ts).collect();
            let want: Vec<_> = (0..=ts).filter(|s| s % 20 == 0 && s + 30 > ts).map(|s| (s, s + 30)).collect();
            assert_eq!(got, want, "ts {ts}");
        }
    }

    /// Near `u64::MAX` the starts neither overflow nor wrap around (which looped forever in a
    /// release build, filling `unfired`), and ends saturate.
    #[test]
    fn windows_near_the_end_of_time_neither_overflow_nor_wrap() {
        for (size, slide) in [(30, 20), (30, 30), (20, 30), (60_000, 10_000), (7, 3), (1, 1)] {
            let shape = Shape { size, slide };
            for ts in (u64::MAX - 200..=u64::MAX).chain([u64::MAX / 2, i64::MAX as u64]) {
                let got: Vec<_> = shape.windows_of(ts).collect();
                let last_start = ts - ts % slide;
                let want: Vec<_> = (0..size.div_ceil(slide) + 1)
                    .filter_map(|i| last_start.checked_sub(i * slide))
                    .filter(|s| ts - s < size)
                    .map(|s| (s, s.saturating_add(size)))
                    .rev()
                    .collect();
                assert_eq!(got, want, "size {size} slide {slide} ts {ts}");
                assert_eq!(shape.first_end(ts), want.first().map(|w| w.1), "size {size} slide {slide} ts {ts}");
            }
        }
        // `(ts - size) / slide + 1` times the slide is past u64::MAX: no window starts there.
        assert_eq!(Shape { size: 5, slide: 1 << 63 }.first_end(u64::MAX), None);
        assert_eq!(Shape { size: 5, slide: 1 << 63 }.windows_of(u64::MAX).count(), 0);
    }

    #[test]
    fn first_end_is_the_end_of_the_first_window() {
        for (size, slide) in [(30, 20), (30, 30), (20, 30), (60, 10), (7, 3), (1, 1)] {
            let shape = Shape { size, slide };
            for ts in 0..300u64 {
                assert_eq!(shape.first_end(ts), shape.windows_of(ts).next().map(|(_, end)| end), "size {size} slide {slide} ts {ts}");
            }
        }
    }

    /// Keeps every value in the order added: a result shows any change of order.
    struct InOrder;

    impl Aggregate<u64> for InOrder {
        type Acc = Vec<u64>;
        type Out = Vec<u64>;
        fn init(&self) -> Vec<u64> {
            Vec::new()
        }
        fn add(&self, acc: &mut Vec<u64>, value: &u64) {
            acc.push(*value);
        }
        fn merge(&self, acc: &mut Vec<u64>, other: &Vec<u64>) {
            acc.extend_from_slice(other);
        }
        fn result(&self, acc: &Vec<u64>) -> Vec<u64> {
            acc.clone()
        }
    }

    /// Batches read in place (`on_records`) give what the same records one by one (`on_record`)
    /// give: results, their order, late updates and state, over windows of several shapes with
    /// records on time, late within the lateness and later than it, in random batches.
    #[test]
    fn batches_give_what_single_records_give() {
        let mut rng = paystream_engine::testing::Rng(7);
        let mut next = move |below: u64| rng.below(below);
        for (size, slide, lateness) in [(30, 30, 0), (30, 30, 20), (30, 10, 15), (20, 30, 5), (60, 20, 0)] {
            let shape = Shape { size, slide };
            let mut batched = AlignedLogic::new(shape, lateness, InOrder);
            let mut single = AlignedLogic::new(shape, lateness, InOrder);
            let (mut out_batched, mut out_single) = (Vec::new(), Vec::new());
            let mut message_time = 0u64;
            for round in 0..200u64 {
                message_time += next(12);
                let mut batch: Vec<(u64, (u64, u64))> = (0..next(20))
                    .map(|i| {
                        // Mostly ahead of the message time, some behind it (late), a few far behind.
                        let ts = (message_time + next(40)).saturating_sub(if next(5) == 0 { next(80) } else { 0 });
                        (ts, (next(3), round * 100 + i))
                    })
                    .collect();
                for (ts, (key, value)) in batch.clone() {
                    single.on_record(message_time, ts, key, value);
                }
                batched.on_records(message_time, &mut batch, &paystream_engine::keyed::Pairs);
                assert!(batch.is_empty(), "on_records leaves the batch empty");
                batched.on_watermark(message_time, &mut out_batched);
                single.on_watermark(message_time, &mut out_single);
                assert_eq!(batched.state_len(), single.state_len(), "{size}/{slide}/{lateness} round {round}");
            }
            batched.on_watermark(u64::MAX, &mut out_batched);
            single.on_watermark(u64::MAX, &mut out_single);
            let results = |out: &[(u64, WindowResult<u64, Vec<u64>>)]| -> Vec<_> {
                out.iter().map(|(t, w)| (*t, w.start_ms, w.end_ms, w.key, w.value.clone(), w.is_update)).collect()
            };
            let (batched, single) = (results(&out_batched), results(&out_single));
            assert_eq!(single.iter().any(|r| r.5), lateness > 0, "{size}/{slide}/{lateness}: late updates exactly with a lateness");
            assert_eq!(batched.len(), single.len(), "{size}/{slide}/{lateness}");
            // Results of one firing come out of a hash map: compare them as sets, in firing order.
            let sorted = |mut v: Vec<_>| {
                v.sort();
                v
            };
            assert_eq!(sorted(batched), sorted(single), "{size}/{slide}/{lateness}");
        }
    }

    /// A row as the early-firing tests compare them: (event time, start, end, key, value, is_update).
    type Row<O> = (u64, u64, u64, u64, O, bool);

    fn rows<O: Clone>(out: &[(u64, WindowResult<u64, O>)]) -> Vec<Row<O>> {
        out.iter().map(|(t, w)| (*t, w.start_ms, w.end_ms, w.key, w.value.clone(), w.is_update)).collect()
    }

    fn counting<A: Aggregate<u64>>(shape: Shape, lateness: u64, aggregate: A, every_records: u64) -> AlignedLogic<u64, u64, A> {
        AlignedLogic::new(shape, lateness, aggregate).with_early_firing(EarlyFiring { every_ms: None, every_records: Some(every_records) })
    }

    /// Tumbling windows of 10, a partial count every 2 records of a key and window. Records count
    /// once the watermark passes their event time; the on-time result always comes, an update
    /// after an early one even when nothing changed since (key 2).
    #[test]
    fn count_trigger_on_tumbling_windows_by_hand() {
        let mut logic = counting(Shape { size: 10, slide: 10 }, 0, Count, 2);
        let mut out = Vec::new();
        // (message time, event time, key)
        for (mt, ts, key) in [(0u64, 1u64, 1u64), (0, 3, 1), (0, 2, 2), (0, 5, 1)] {
            KeyedLogic::<u64, u64>::on_record(&mut logic, mt, ts, key, ts);
        }
        logic.on_watermark(4, &mut out);
        // 1 and 3 of key 1 have been passed by the watermark: their window emits 2, at event time 3.
        assert_eq!(rows(&out), vec![(3, 0, 10, 1, 2, false)]);
        for (mt, ts, key) in [(4u64, 8u64, 2u64), (4, 12, 1)] {
            KeyedLogic::<u64, u64>::on_record(&mut logic, mt, ts, key, ts);
        }
        logic.on_watermark(10, &mut out);
        logic.on_watermark(u64::MAX, &mut out);
        let mut got = rows(&out);
        // The keys of one on-time firing come out of a hash map.
        got[2..4].sort();
        assert_eq!(
            got,
            vec![
                (3, 0, 10, 1, 2, false),
                (8, 0, 10, 2, 2, false),
                (9, 0, 10, 1, 3, true),
                (9, 0, 10, 2, 2, true),
                (19, 10, 20, 1, 1, false),
            ]
        );
        assert_eq!(logic.state_len(), 0);
    }

    /// Sliding windows of 10 every 5, a partial count every 2 records. A record behind its
    /// partition's watermark (event time 8 at message time 10) counts at that watermark, only in
    /// the window it is still on time for ([5, 15)), not in [0, 10), which has fired.
    #[test]
    fn count_trigger_on_sliding_windows_by_hand() {
        let mut logic = counting(Shape { size: 10, slide: 5 }, 0, Count, 2);
        let mut out = Vec::new();
        for (mt, ts) in [(0u64, 1u64), (0, 6), (0, 7)] {
            KeyedLogic::<u64, u64>::on_record(&mut logic, mt, ts, 1, ts);
        }
        logic.on_watermark(5, &mut out);
        assert!(out.is_empty(), "one record counted, in [0, 10)");
        logic.on_watermark(10, &mut out);
        for (mt, ts) in [(10u64, 8u64), (10, 12)] {
            KeyedLogic::<u64, u64>::on_record(&mut logic, mt, ts, 1, ts);
        }
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!(
            rows(&out),
            vec![
                // 6 makes two in [0, 10) (1 and 6); 7 makes two in [5, 15) (6 and 7).
                (6, 0, 10, 1, 2, false),
                (7, 5, 15, 1, 2, false),
                (9, 0, 10, 1, 3, true),
                // 8 (at its watermark, 10) and 12 make two more in [5, 15): 6, 7, 8, 12.
                (12, 5, 15, 1, 4, true),
                (14, 5, 15, 1, 4, true),
                (19, 10, 20, 1, 1, false),
            ]
        );
    }

    /// A late record within the allowed lateness updates a window that had early rows, as ever:
    /// `is_update` stays true, and early firing counts only windows that have not fired.
    #[test]
    fn count_trigger_and_allowed_lateness() {
        let mut logic = counting(Shape { size: 10, slide: 10 }, 5, Count, 1);
        let mut out = Vec::new();
        KeyedLogic::<u64, u64>::on_record(&mut logic, 0, 4, 1, 4);
        logic.on_watermark(12, &mut out);
        KeyedLogic::<u64, u64>::on_record(&mut logic, 12, 6, 1, 6);
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!(rows(&out), vec![(4, 0, 10, 1, 1, false), (9, 0, 10, 1, 1, true), (9, 0, 10, 1, 2, true)]);
    }

    /// A batch of records that travelled at one message time: (message time, records as (event
    /// time, key, value)).
    type Batch = (u64, Vec<(u64, u64, u64)>);

    /// Random batches, with some records behind their partition's watermark; each is fed followed
    /// by a watermark step to its message time.
    fn random_batches(rng: &mut paystream_engine::testing::Rng) -> Vec<Batch> {
        let mut message_time = 0u64;
        (0..120u64)
            .map(|round| {
                message_time += rng.below(8);
                let batch = (0..rng.below(12))
                    .map(|i| {
                        let ts = (message_time + rng.below(30)).saturating_sub(if rng.below(5) == 0 { rng.below(25) } else { 0 });
                        (ts, rng.below(4), round * 100 + i)
                    })
                    .collect();
                (message_time, batch)
            })
            .collect()
    }

    fn feed<A: Aggregate<u64>>(logic: &mut AlignedLogic<u64, u64, A>, batches: &[Batch], out: &mut Vec<(u64, WindowResult<u64, A::Out>)>) {
        for (message_time, batch) in batches {
            let mut records: Vec<(u64, (u64, u64))> = batch.iter().map(|(ts, k, v)| (*ts, (*k, *v))).collect();
            logic.on_records(*message_time, &mut records, &paystream_engine::keyed::Pairs);
            logic.on_watermark(*message_time, out);
        }
    }

    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }

    /// The rows of a count-triggered window, values included (an aggregate that keeps the order
    /// it was given), do not depend on the order records arrive in within a batch, and a run cut
    /// by a checkpoint and restored on two workers (key groups split between them) emits what an
    /// uninterrupted run does.
    #[test]
    fn count_trigger_is_deterministic_and_survives_a_restore_on_more_workers() {
        let mut rng = paystream_engine::testing::Rng(11);
        for (size, slide, lateness, k) in [(30u64, 30u64, 0u64, 2u64), (30, 10, 15, 3), (20, 30, 5, 1), (60, 20, 0, 4)] {
            let shape = Shape { size, slide };
            let batches = random_batches(&mut rng);
            let mut whole = counting(shape, lateness, InOrder, k);
            let mut whole_out = Vec::new();
            feed(&mut whole, &batches, &mut whole_out);
            whole.on_watermark(u64::MAX, &mut whole_out);
            assert!(whole_out.iter().any(|(_, w)| w.is_update), "{size}/{slide}: early rows were emitted");

            // The same batches with each batch reversed.
            let reversed: Vec<_> = batches.iter().map(|(t, b)| (*t, b.iter().rev().copied().collect())).collect();
            let mut other = counting(shape, lateness, InOrder, k);
            let mut other_out = Vec::new();
            feed(&mut other, &reversed, &mut other_out);
            other.on_watermark(u64::MAX, &mut other_out);
            assert_eq!(sorted(rows(&other_out)), sorted(rows(&whole_out)), "{size}/{slide}/{lateness}/{k}: arrival order");

            // Cut after half the batches, restored on two workers.
            let (first, rest) = batches.split_at(batches.len() / 2);
            let mut before = counting(shape, lateness, InOrder, k);
            let mut cut_out = Vec::new();
            feed(&mut before, first, &mut cut_out);
            let parts = KeyedLogic::<u64, u64>::snapshot(&before).expect("snapshot");
            for worker in 0..2u64 {
                let mut restored = counting(shape, lateness, InOrder, k);
                for (group, bytes) in parts.iter().filter(|(g, _)| paystream_engine::keygroup::worker_for_key_group(*g, 2) == worker) {
                    KeyedLogic::<u64, u64>::restore(&mut restored, *group, bytes).expect("restore");
                }
                let mine: Vec<_> = rest
                    .iter()
                    .map(|(t, b)| {
                        let owned =
                            b.iter().filter(|(_, key, _)| paystream_engine::keygroup::worker_for_key_group(key_group(key), 2) == worker);
                        (*t, owned.copied().collect())
                    })
                    .collect();
                feed(&mut restored, &mine, &mut cut_out);
                restored.on_watermark(u64::MAX, &mut cut_out);
            }
            assert_eq!(sorted(rows(&cut_out)), sorted(rows(&whole_out)), "{size}/{slide}/{lateness}/{k}: restored");
        }
    }

    /// Processing-time firings at random moments: every early row is the key's records in the
    /// window up to some point (a prefix, in event-time order, of what the on-time row holds), the
    /// first row of a key and window is the only one not marked an update, only windows that
    /// changed emit again, and the on-time rows are those of a run without early firing.
    #[test]
    fn processing_time_rows_are_prefixes_of_the_on_time_result() {
        let mut rng = paystream_engine::testing::Rng(5);
        for (size, slide) in [(30u64, 30u64), (30, 10)] {
            let shape = Shape { size, slide };
            let batches = random_batches(&mut rng);
            let firing = EarlyFiring { every_ms: Some(100), every_records: None };
            let mut early = AlignedLogic::new(shape, 0, InOrder).with_early_state(EarlyState::new(firing).with_clock(|| 0));
            let mut plain = AlignedLogic::new(shape, 0, InOrder);
            let (mut early_out, mut plain_out) = (Vec::new(), Vec::new());
            for batch in &batches {
                feed(&mut early, std::slice::from_ref(batch), &mut early_out);
                feed(&mut plain, std::slice::from_ref(batch), &mut plain_out);
                if rng.below(3) == 0 {
                    let before = early_out.len();
                    KeyedLogic::<u64, u64>::on_processing_time(&mut early, 99, &mut early_out);
                    assert_eq!(early_out.len(), before, "not due before the tick");
                    KeyedLogic::<u64, u64>::on_processing_time(&mut early, 100, &mut early_out);
                    // Only windows that changed emit again.
                    let fired = early_out.len() - before;
                    KeyedLogic::<u64, u64>::on_processing_time(&mut early, 100, &mut early_out);
                    assert_eq!(early_out.len() - before, fired, "nothing changed since the last firing");
                }
            }
            early.on_watermark(u64::MAX, &mut early_out);
            plain.on_watermark(u64::MAX, &mut plain_out);
            // The last row per window and key, in emission order, is its on-time row.
            let mut last: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
            let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
            for (ts, w) in &early_out {
                assert!(*ts < w.end_ms, "an early row's event time is inside its window");
                let first = seen.insert((w.start_ms, w.key));
                assert_eq!(w.is_update, !first, "is_update is false exactly on the first row of {:?}", (w.start_ms, w.key));
                last.insert((w.start_ms, w.key), w.value.clone());
            }
            let on_time: BTreeMap<(u64, u64), Vec<u64>> = plain_out.iter().map(|(_, w)| ((w.start_ms, w.key), w.value.clone())).collect();
            let as_sets = |m: &BTreeMap<(u64, u64), Vec<u64>>| m.iter().map(|(k, v)| (*k, sorted(v.clone()))).collect::<Vec<_>>();
            assert_eq!(as_sets(&last), as_sets(&on_time), "{size}/{slide}: the latest rows are the on-time results");
            let early_rows = early_out.iter().filter(|(ts, w)| *ts < w.end_ms - 1).count();
            assert!(early_rows > 0, "{size}/{slide}: the test fired early rows");
            for (_, w) in &early_out {
                let full = sorted(on_time[&(w.start_ms, w.key)].clone());
                let part = sorted(w.value.clone());
                assert!(part.iter().all(|v| full.binary_search(v).is_ok()), "an early row holds only records of the on-time row");
            }
        }
    }

    #[test]
    fn state_is_freed_when_the_watermark_passes() {
        let mut logic = AlignedLogic::new(Shape { size: 60, slide: 10 }, 5, Count);
        let mut out = Vec::new();
        for ts in [1u64, 15, 33, 59] {
            KeyedLogic::<u64, ()>::on_record(&mut logic, 0, ts, 7, ());
        }
        assert!(logic.state_len() > 0);
        logic.on_watermark(60, &mut out);
        assert!(logic.state_len() > 0, "panes still needed by later windows or lateness");
        // The last window covering ts 59 is [50, 110); with lateness 5 its state goes at 115.
        logic.on_watermark(114, &mut out);
        assert!(logic.state_len() > 0);
        logic.on_watermark(115, &mut out);
        assert_eq!(logic.state_len(), 0);
        assert_eq!(KeyedLogic::<u64, ()>::next_emit_time(&logic), None);
        // Every window [s, s+60) for s in 0..=50 step 10 fired once for key 7.
        let mut starts: Vec<u64> = out.iter().map(|(_, w)| w.start_ms).collect();
        starts.sort();
        assert_eq!(starts, vec![0, 10, 20, 30, 40, 50]);
    }
}
