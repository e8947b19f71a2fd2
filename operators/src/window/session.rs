//! Session windows: per key, records closer than the gap share a window.
//!
//! Merging makes arrival order matter (a late record may bridge two sessions), so every record
//! waits until the watermark passes the watermark it travelled at, and records are applied in that
//! order, interleaved with session firings: a session ending at `e` fires before records that
//! travelled at `e` or later are applied. The results are then the same for any arrival order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::{Data, Key, KeyedLogic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::WindowResult;
use crate::aggregate::Aggregate;

#[derive(Clone, Serialize, Deserialize)]
struct Session<Acc> {
    start: u64,
    end: u64,
    acc: Acc,
    /// A result for this session (or a session merged into it) has been emitted.
    emitted: bool,
    /// Not yet fired at its current end.
    pending: bool,
}

pub(crate) struct SessionLogic<K, V, A: Aggregate<V>> {
    gap: u64,
    lateness: u64,
    aggregate: A,
    /// Each key's sessions, disjoint, by start.
    sessions: HashMap<K, Vec<Session<A::Acc>>>,
    /// (end, key) of sessions that have not fired at their current end.
    unfired: BTreeSet<(u64, K)>,
    /// (end, key) of every session, for freeing state.
    all: BTreeSet<(u64, K)>,
    /// Records waiting for the watermark, by message time.
    waiting: BTreeMap<u64, Vec<(u64, K, V)>>,
}

impl<K: Key, V: Data, A: Aggregate<V>> SessionLogic<K, V, A> {
    pub(crate) fn new(gap: u64, lateness: u64, aggregate: A) -> Self {
        SessionLogic {
            gap,
            lateness,
            aggregate,
            sessions: HashMap::new(),
            unfired: BTreeSet::new(),
            all: BTreeSet::new(),
            waiting: BTreeMap::new(),
        }
    }

    fn result(&self, key: &K, s: &Session<A::Acc>, is_update: bool) -> (u64, WindowResult<K, A::Out>) {
        (s.end - 1, WindowResult { start_ms: s.start, end_ms: s.end, key: key.clone(), value: self.aggregate.result(&s.acc), is_update })
    }

    fn fire(&mut self, end: u64, key: K, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        self.unfired.remove(&(end, key.clone()));
        let Some(list) = self.sessions.get(&key) else { return };
        let Some(index) = list.iter().position(|s| s.end == end) else { return };
        let emitted = list[index].emitted;
        out.push(self.result(&key, &self.sessions[&key][index], emitted));
        let s = &mut self.sessions.get_mut(&key).expect("key present")[index];
        s.emitted = true;
        s.pending = false;
    }

    /// Applies the records that travelled at `time`; sessions they touch that end at or before
    /// `time` fire at once (a late firing), the others wait for their end.
    fn apply(&mut self, time: u64, out: &mut Vec<(u64, WindowResult<K, A::Out>)>) {
        let records = self.waiting.remove(&time).unwrap_or_default();
        let mut touched: BTreeSet<K> = BTreeSet::new();
        for (ts, key, value) in records {
            let (start, end) = (ts, ts.saturating_add(self.gap));
            let list = self.sessions.entry(key.clone()).or_default();
            let mut merged = Session { start, end, acc: self.aggregate.init(), emitted: false, pending: true };
            self.aggregate.add(&mut merged.acc, &value);
            // Absorb every session that overlaps [start, end).
            let mut i = 0;
            while i < list.len() {
                let s = &list[i];
                if s.start < merged.end && merged.start < s.end {
                    let s = list.remove(i);
                    self.unfired.remove(&(s.end, key.clone()));
                    self.all.remove(&(s.end, key.clone()));
                    merged.start = merged.start.min(s.start);
                    merged.end = merged.end.max(s.end);
                    merged.emitted |= s.emitted;
                    self.aggregate.merge(&mut merged.acc, &s.acc);
                    // A wider session may now overlap sessions checked before: start over.
                    i = 0;
                } else {
                    i += 1;
                }
            }
            let at = list.partition_point(|s| s.start < merged.start);
            self.all.insert((merged.end, key.clone()));
            self.unfired.insert((merged.end, key.clone()));
            list.insert(at, merged);
            touched.insert(key);
        }
        for key in touched {
            let late: Vec<u64> = self.sessions[&key].iter().filter(|s| s.pending && s.end <= time).map(|s| s.end).collect();
            for end in late {
                self.fire(end, key.clone(), out);
            }
        }
    }

    /// Frees the sessions whose end plus the allowed lateness is at or below `time`.
    fn expire(&mut self, time: u64) {
        while let Some((end, key)) = self.all.first().cloned() {
            if end.saturating_add(self.lateness) > time {
                break;
            }
            self.all.remove(&(end, key.clone()));
            if let Some(list) = self.sessions.get_mut(&key) {
                list.retain(|s| s.end != end);
                if list.is_empty() {
                    self.sessions.remove(&key);
                }
            }
        }
    }

    /// Sessions held plus records waiting: the state-size metric.
    pub(crate) fn state_len(&self) -> usize {
        self.all.len() + self.waiting.values().map(Vec::len).sum::<usize>()
    }
}

impl<K: Key, V: Data, A: Aggregate<V>> KeyedLogic<K, V> for SessionLogic<K, V, A> {
    type Out = WindowResult<K, A::Out>;

    fn on_record(&mut self, message_time: u64, ts_ms: u64, key: K, value: V) {
        self.waiting.entry(message_time).or_default().push((ts_ms, key, value));
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        loop {
            let fire = self.unfired.first().filter(|(end, _)| *end <= watermark).map(|(end, key)| (*end, key.clone()));
            let apply = self.waiting.first_key_value().map(|(t, _)| *t).filter(|t| *t < watermark);
            match (fire, apply) {
                (Some((end, key)), Some(time)) if end <= time => self.fire(end, key, out),
                (_, Some(time)) => {
                    // Records that travelled at `time` must not meet sessions expired by then,
                    // whether or not a watermark step has freed them yet.
                    self.expire(time);
                    self.apply(time, out)
                }
                (Some((end, key)), None) => self.fire(end, key, out),
                (None, None) => break,
            }
        }
        self.expire(watermark);
    }

    fn next_emit_time(&self) -> Option<u64> {
        let fire = self.unfired.first().map(|(end, _)| end - 1);
        let apply = self.waiting.first_key_value().map(|(t, _)| *t);
        match (fire, apply) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state_size(&self) -> usize {
        self.state_len()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, SessionGroup<K, V, A::Acc>> = BTreeMap::new();
        for (key, list) in &self.sessions {
            groups.entry(key_group(key)).or_default().sessions.push((key.clone(), list.clone()));
        }
        for (time, records) in &self.waiting {
            for (ts, key, value) in records {
                groups.entry(key_group(key)).or_default().waiting.push((*time, *ts, key.clone(), value.clone()));
            }
        }
        groups.into_iter().map(|(group, state)| encode(&state).map(|bytes| (group, bytes))).collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let state: SessionGroup<K, V, A::Acc> = decode(bytes)?;
        for (key, list) in state.sessions {
            for s in &list {
                self.all.insert((s.end, key.clone()));
                if s.pending {
                    self.unfired.insert((s.end, key.clone()));
                }
            }
            self.sessions.insert(key, list);
        }
        for (time, ts, key, value) in state.waiting {
            self.waiting.entry(time).or_default().push((ts, key, value));
        }
        Ok(())
    }
}

/// One key group's part of a session window's state, as saved in checkpoints.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize, Acc: Serialize",
    deserialize = "K: DeserializeOwned, V: DeserializeOwned, Acc: DeserializeOwned"
))]
struct SessionGroup<K, V, Acc> {
    sessions: Vec<(K, Vec<Session<Acc>>)>,
    waiting: Vec<(u64, u64, K, V)>,
}

impl<K, V, Acc> Default for SessionGroup<K, V, Acc> {
    fn default() -> Self {
        SessionGroup { sessions: Vec::new(), waiting: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Count;

    #[test]
    fn sessions_merge_fire_and_free() {
        let mut logic = SessionLogic::new(10, 0, Count);
        let mut out = Vec::new();
        for ts in [0u64, 5, 30, 12] {
            KeyedLogic::<u64, ()>::on_record(&mut logic, 0, ts, 1, ());
        }
        logic.on_watermark(21, &mut out);
        // 0, 5 and 12 form [0, 22); 30 forms [30, 40). Nothing has ended by 21.
        assert!(out.is_empty());
        logic.on_watermark(22, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].1.start_ms, out[0].1.end_ms, out[0].1.value, out[0].1.is_update), (0, 22, 3, false));
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!((out[1].1.start_ms, out[1].1.end_ms, out[1].1.value), (30, 40, 1));
        assert_eq!(logic.state_len(), 0);
    }

    #[test]
    fn a_late_record_bridging_two_sessions_updates_them() {
        let mut logic = SessionLogic::new(10, 100, Count);
        let mut out = Vec::new();
        for ts in [0u64, 15] {
            KeyedLogic::<u64, ()>::on_record(&mut logic, 0, ts, 1, ());
        }
        logic.on_watermark(30, &mut out);
        assert_eq!(out.len(), 2);
        // A record at 8 that travelled at watermark 30 bridges [0,10) and [15,25) into [0,25).
        KeyedLogic::<u64, ()>::on_record(&mut logic, 30, 8, 1, ());
        logic.on_watermark(31, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!((out[2].1.start_ms, out[2].1.end_ms, out[2].1.value, out[2].1.is_update), (0, 25, 3, true));
    }
}
