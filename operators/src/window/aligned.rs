//! Tumbling and sliding windows: per-key accumulators per pane, merged when a window fires.
//!
//! Records that are on time for every window covering them are added to their pane at once (the
//! windows have not fired: their ends are above the record's message time, which the frontier has
//! not passed). Records late for at least one covering window wait until the watermark passes their
//! message time and are then applied in message-time order, interleaved with window firings, so the
//! updates they cause are the same whatever the arrival order.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::{Data, Key, KeyMap, KeyedLogic, Split};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::WindowResult;
use crate::aggregate::Aggregate;

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
    /// Records late for some window, by message time.
    late: BTreeMap<u64, Vec<(u64, K, V)>>,
}

impl<K: Key, V: Data, A: Aggregate<V>> AlignedLogic<K, V, A> {
    pub(crate) fn new(shape: Shape, lateness: u64, aggregate: A) -> Self {
        let pane = gcd(shape.size, shape.slide);
        AlignedLogic { shape, pane, lateness, aggregate, panes: BTreeMap::new(), unfired: BTreeSet::new(), late: BTreeMap::new() }
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
        let result = |key: K, acc: &A::Acc| {
            (end - 1, WindowResult { start_ms: start, end_ms: end, key, value: self.aggregate.result(acc), is_update: false })
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

    /// Applies the late records that travelled at `time`, then emits one update per window and key
    /// they changed.
    fn apply_late(&mut self, time: u64, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        let records = self.late.remove(&time).unwrap_or_default();
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
            self.add(ts, key, &value);
        }
        for ((end, key), existed) in changed {
            if let Some(acc) = self.merged(end, &key) {
                let start = end.saturating_sub(self.shape.size);
                let value = self.aggregate.result(&acc);
                out.push((end - 1, WindowResult { start_ms: start, end_ms: end, key, value, is_update: existed }));
            }
        }
    }

    /// Accumulators held (one per key and pane) plus records waiting: the state-size metric.
    pub(crate) fn state_len(&self) -> usize {
        self.panes.values().map(KeyMap::len).sum::<usize>() + self.late.values().map(Vec::len).sum::<usize>()
    }
}

impl<K: Key, V: Data, A: Aggregate<V>> KeyedLogic<K, V> for AlignedLogic<K, V, A> {
    type Out = WindowResult<K, A::Out>;

    fn on_record(&mut self, message_time: u64, ts_ms: u64, key: K, value: V) {
        if self.shape.first_end(ts_ms).is_some_and(|end| end <= message_time) {
            self.late.entry(message_time).or_default().push((ts_ms, key, value));
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
        let AlignedLogic { shape, pane, aggregate, panes, unfired, late, .. } = self;
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
            let late = late.entry(message_time).or_default();
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
        loop {
            let fire = self.unfired.first().copied().filter(|end| *end <= watermark);
            let late = self.late.first_key_value().map(|(t, _)| *t).filter(|t| *t < watermark);
            match (fire, late) {
                // A window ending at t fires before records that travelled at t update it.
                (Some(end), Some(time)) if end <= time => self.fire(end, out),
                (_, Some(time)) => self.apply_late(time, out),
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
        let late = self.late.first_key_value().map(|(t, _)| *t);
        match (fire, late) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
        for (time, records) in &self.late {
            for (ts, key, value) in records {
                groups.entry(key_group(key)).or_default().late.push((*time, *ts, key.clone(), value.clone()));
            }
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
        for (time, ts, key, value) in state.late {
            self.late.entry(time).or_default().push((ts, key, value));
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
    late: Vec<(u64, u64, K, V)>,
    unfired: Vec<u64>,
}

impl<K, V, Acc> Default for AlignedGroup<K, V, Acc> {
    fn default() -> Self {
        AlignedGroup { panes: Vec::new(), late: Vec::new(), unfired: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
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
