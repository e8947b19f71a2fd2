//! Interval join: `a` meets every `b` of its key with `b.ts` in `[a.ts + lower, a.ts + upper]`.
//!
//! Each side's records are held until no future partner can arrive: a left record until the
//! watermark passes `a.ts + upper`, a right one until it passes `b.ts - lower`. A pair is emitted
//! when its second record arrives, with event time `max(a.ts, b.ts)`. With
//! [`IntervalJoin::with_unmatched_left`], a left record that met no partner is emitted with
//! `right: None` when it expires (a payment never authorized).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::time::passed;
use paystream_engine::{Data, Key, KeyedLogic, KeyedStream, Stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{merge, signed_add, signed_sub, Joined, Side};
use crate::slots::{Few, KeySlots, SlotId};

/// An interval join being configured; finish with [`IntervalJoin::join`].
pub struct IntervalJoin<'scope, K, A, B> {
    left: KeyedStream<'scope, K, A>,
    right: KeyedStream<'scope, K, B>,
    lower_ms: i64,
    upper_ms: i64,
    unmatched: bool,
}

impl<'scope, K: Key, A: Data, B: Data> IntervalJoin<'scope, K, A, B> {
    pub(super) fn new(left: KeyedStream<'scope, K, A>, right: KeyedStream<'scope, K, B>) -> Self {
        IntervalJoin { left, right, lower_ms: 0, upper_ms: 0, unmatched: false }
    }

    /// The interval, in ms relative to the left record's event time (either may be negative).
    pub fn between(mut self, lower_ms: i64, upper_ms: i64) -> Self {
        assert!(lower_ms <= upper_ms, "interval join: lower bound {lower_ms} is above upper bound {upper_ms}");
        self.lower_ms = lower_ms;
        self.upper_ms = upper_ms;
        self
    }

    /// Also emits each left record that met no partner, with `right: None`, when its interval
    /// has passed.
    pub fn with_unmatched_left(mut self) -> Self {
        self.unmatched = true;
        self
    }

    /// Builds the join as step `name`.
    ///
    /// ```
    /// use paystream_engine::{testing::run_partitions, OutOfOrder};
    /// use paystream_operators::join::{JoinExt, Side};
    /// // Payments (left) and authorizations (right) by transaction, in one stream for the example.
    /// let events = vec![(1_000u64, Side::Left(7u64)), (3_000, Side::Right(7u64)), (4_000, Side::Left(8))];
    /// let (out, _) = run_partitions(1, vec![events], |(ts, _)| *ts, OutOfOrder::millis(0), |s| {
    ///     let payments = s.clone().filter("payments", |(_, e)| matches!(e, Side::Left(_))).key_by("p", |(_, e)| match e { Side::Left(t) | Side::Right(t) => *t });
    ///     let auths = s.filter("auths", |(_, e)| matches!(e, Side::Right(_))).key_by("a", |(_, e)| match e { Side::Left(t) | Side::Right(t) => *t });
    ///     payments.interval_join(auths).between(0, 5_000).with_unmatched_left().join("auth-match").map("keys", |j| (j.key, j.right.is_some()))
    /// });
    /// // Transaction 7 was authorized within 5 s; 8 never was.
    /// assert_eq!(out.into_iter().map(|(_, x)| x).collect::<Vec<_>>(), vec![(7, true), (8, false)]);
    /// ```
    pub fn join(self, name: &str) -> Stream<'scope, Joined<K, A, B>> {
        let merged = merge(name, self.left, self.right, |message_time, ts, _| ts < message_time);
        merged.keyed_logic(name, IntervalLogic::new(self.lower_ms, self.upper_ms, self.unmatched))
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Held<T> {
    ts: u64,
    record: T,
    matched: bool,
}

/// One key's held records, each side in arrival order.
struct Pair<A, B> {
    left: Few<Held<A>>,
    right: Few<Held<B>>,
}

impl<A, B> Default for Pair<A, B> {
    fn default() -> Self {
        Pair { left: Few::default(), right: Few::default() }
    }
}

/// A held record's expiry: the watermark past which it is looked at again, and its key's slot.
type Expiry = Reverse<(u64, SlotId)>;

struct IntervalLogic<K, A, B> {
    lower: i64,
    upper: i64,
    unmatched: bool,
    /// Each key once, with its held records.
    held: KeySlots<K, Pair<A, B>>,
    /// One entry per held record, least expiry first. A key's slot is freed only when its last
    /// record goes, and all of its records' entries are due by then, so no entry outlives the
    /// watermark step that frees its slot.
    expiry: BinaryHeap<Expiry>,
    /// How many records are held, for `state_size`.
    held_records: usize,
    /// Pairs made by records, waiting to be emitted.
    ready: Vec<(u64, Joined<K, A, B>)>,
}

impl<K: Key, A: Data, B: Data> IntervalLogic<K, A, B> {
    fn new(lower: i64, upper: i64, unmatched: bool) -> Self {
        IntervalLogic { lower, upper, unmatched, held: KeySlots::new(), expiry: BinaryHeap::new(), held_records: 0, ready: Vec::new() }
    }
    fn left_expiry(&self, ts: u64) -> u64 {
        signed_add(ts, self.upper)
    }
    fn right_expiry(&self, ts: u64) -> u64 {
        signed_sub(ts, self.lower)
    }
}

impl<K: Key, A: Data, B: Data> KeyedLogic<K, Side<A, B>> for IntervalLogic<K, A, B> {
    type Out = Joined<K, A, B>;

    fn on_record(&mut self, _message_time: u64, ts: u64, key: K, value: Side<A, B>) {
        // Exact differences: clamped interval ends would pair records near time 0 wrongly.
        let (lower, upper) = (self.lower as i128, self.upper as i128);
        let slot = self.held.slot_of(key);
        let (key, pair) = self.held.get_mut(slot).expect("a key's slot is held");
        let expiry = match value {
            Side::Left(a) => {
                let mut matched = false;
                for b in pair.right.iter_mut().filter(|b| (lower..=upper).contains(&(b.ts as i128 - ts as i128))) {
                    b.matched = true;
                    matched = true;
                    self.ready.push((ts.max(b.ts), Joined { key: key.clone(), left: a.clone(), right: Some(b.record.clone()) }));
                }
                pair.left.push(Held { ts, record: a, matched });
                signed_add(ts, self.upper)
            }
            Side::Right(b) => {
                let mut matched = false;
                for a in pair.left.iter_mut().filter(|a| (lower..=upper).contains(&(ts as i128 - a.ts as i128))) {
                    a.matched = true;
                    matched = true;
                    self.ready.push((ts.max(a.ts), Joined { key: key.clone(), left: a.record.clone(), right: Some(b.clone()) }));
                }
                pair.right.push(Held { ts, record: b, matched });
                signed_sub(ts, self.lower)
            }
        };
        self.held_records += 1;
        self.expiry.push(Reverse((expiry, slot)));
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        out.append(&mut self.ready);
        let (upper, lower, unmatched) = (self.upper, self.lower, self.unmatched);
        while let Some(&Reverse((expiry, slot))) = self.expiry.peek() {
            if !passed(expiry, watermark) {
                break;
            }
            self.expiry.pop();
            // The slot is free when an earlier entry of this step already took its last record.
            let Some((key, pair)) = self.held.get_mut(slot) else { continue };
            let before = pair.left.len() + pair.right.len();
            pair.left.retain(|a| {
                let keep = !passed(signed_add(a.ts, upper), watermark);
                if !keep && unmatched && !a.matched {
                    out.push((signed_add(a.ts, upper), Joined { key: key.clone(), left: a.record.clone(), right: None }));
                }
                keep
            });
            pair.right.retain(|b| !passed(signed_sub(b.ts, lower), watermark));
            let after = pair.left.len() + pair.right.len();
            self.held_records -= before - after;
            if after == 0 {
                self.held.release(slot);
            }
        }
    }

    fn next_emit_time(&self) -> Option<u64> {
        let ready = self.ready.iter().map(|(ts, _)| *ts).min();
        let expiring = if self.unmatched { self.expiry.peek().map(|Reverse((t, _))| *t) } else { None };
        match (ready, expiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state_size(&self) -> usize {
        self.held_records
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, IntervalGroupRef<'_, K, A, B>> = BTreeMap::new();
        for (key, pair) in self.held.iter() {
            let group = groups.entry(key_group(key)).or_default();
            if !pair.left.is_empty() {
                group.left.push((key, &pair.left));
            }
            if !pair.right.is_empty() {
                group.right.push((key, &pair.right));
            }
        }
        groups.into_iter().map(|(g, state)| encode(&state).map(|b| (g, b))).collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let state: IntervalGroup<K, A, B> = decode(bytes)?;
        for (key, list) in state.left {
            let slot = self.held.slot_of(key);
            for a in list {
                self.expiry.push(Reverse((self.left_expiry(a.ts), slot)));
                self.held_records += 1;
                self.held.get_mut(slot).expect("a key's slot is held").1.left.push(a);
            }
        }
        for (key, list) in state.right {
            let slot = self.held.slot_of(key);
            for b in list {
                self.expiry.push(Reverse((self.right_expiry(b.ts), slot)));
                self.held_records += 1;
                self.held.get_mut(slot).expect("a key's slot is held").1.right.push(b);
            }
        }
        Ok(())
    }
}

/// [`IntervalGroup`] as it is written, borrowing the held records instead of copying them.
#[derive(Serialize)]
#[serde(bound(serialize = "K: Serialize, A: Serialize, B: Serialize"))]
struct IntervalGroupRef<'a, K, A, B> {
    left: Vec<(&'a K, &'a Few<Held<A>>)>,
    right: Vec<(&'a K, &'a Few<Held<B>>)>,
}

impl<K, A, B> Default for IntervalGroupRef<'_, K, A, B> {
    fn default() -> Self {
        IntervalGroupRef { left: Vec::new(), right: Vec::new() }
    }
}

/// One key group's held records, as saved in checkpoints (and read back on restore).
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, A: Serialize, B: Serialize",
    deserialize = "K: DeserializeOwned, A: DeserializeOwned, B: DeserializeOwned"
))]
struct IntervalGroup<K, A, B> {
    left: Vec<(K, Vec<Held<A>>)>,
    right: Vec<(K, Vec<Held<B>>)>,
}

impl<K, A, B> Default for IntervalGroup<K, A, B> {
    fn default() -> Self {
        IntervalGroup { left: Vec::new(), right: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payment as auth-match's join holds it: (time, card, amount); the key is its `txn_id`.
    type Paid = (u64, u64, i64);

    fn auth_match_like(n: u64) -> IntervalLogic<String, Paid, u64> {
        let mut logic = IntervalLogic::new(0, 5_000, true);
        let t0 = 1_767_225_600_000;
        for i in 0..n {
            let ts = t0 + i;
            logic.on_record(0, ts, format!("t{}", 900_000 + i), Side::Left((ts, 10_000 + i, 4_999)));
            // Every tenth payment is never authorized.
            if i % 10 != 9 {
                logic.on_record(0, ts + 3, format!("t{}", 900_000 + i), Side::Right(ts + 3));
            }
        }
        logic
    }

    #[test]
    fn checkpoints_hold_each_record_once_and_compactly() {
        let n = 10_000;
        let logic = auth_match_like(n);
        let held = (n + n * 9 / 10) as usize;
        assert_eq!(logic.state_size(), held);
        let parts = logic.snapshot().expect("snapshot");
        let bytes: usize = parts.iter().map(|(_, b)| b.len()).sum();
        // Per record: key (8 bytes), time (9), the record (15 or 9), matched (1), list length (1).
        let per_record = bytes as f64 / held as f64;
        eprintln!("interval join checkpoint: {bytes} bytes for {held} held records, {per_record:.1} per record");
        assert!(per_record < 40.0, "{per_record:.1} bytes per held record");

        // A restored join holds the same records and saves the same bytes.
        let mut restored: IntervalLogic<String, Paid, u64> = IntervalLogic::new(0, 5_000, true);
        for (group, part) in &parts {
            restored.restore(*group, part).expect("restore");
        }
        assert_eq!(restored.state_size(), held);
        let again: usize = restored.snapshot().expect("snapshot").iter().map(|(_, b)| b.len()).sum();
        assert_eq!(again, bytes);

        // At the end every record expires, the never-authorized payments come out unmatched, and
        // nothing is left.
        let mut out = Vec::new();
        restored.on_watermark(u64::MAX, &mut out);
        assert_eq!(out.iter().filter(|(_, j)| j.right.is_none()).count(), (n / 10) as usize);
        assert_eq!(out.len(), (n / 10) as usize, "pairs were made before the checkpoint, not after the restore");
        assert_eq!(restored.state_size(), 0);
        assert_eq!(restored.held.iter().count(), 0);
    }

    /// A payment whose expiry saturates at `u64::MAX` comes out unmatched when the input ends,
    /// instead of holding the step (and the job) open forever.
    #[test]
    fn records_expiring_at_the_end_of_time_expire_when_the_input_ends() {
        let mut logic: IntervalLogic<String, Paid, u64> = IntervalLogic::new(-5_000, i64::MAX, true);
        let ts = u64::MAX - 10;
        logic.on_record(0, ts, "late".to_string(), Side::Left((ts, 1, 100)));
        logic.on_record(0, 9, "early".to_string(), Side::Right(9));
        let mut out = Vec::new();
        logic.on_watermark(u64::MAX - 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(logic.next_emit_time(), Some(u64::MAX));
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.key.as_str(), out[0].1.right), (u64::MAX, "late", None));
        assert_eq!(logic.next_emit_time(), None);
        assert_eq!(logic.state_size(), 0);
    }

    #[test]
    fn expired_keys_free_their_slots_for_new_keys() {
        let mut logic = auth_match_like(1_000);
        let mut out = Vec::new();
        logic.on_watermark(u64::MAX - 1, &mut out);
        assert_eq!(out.iter().filter(|(_, j)| j.right.is_some()).count(), 900);
        assert_eq!(out.iter().filter(|(_, j)| j.right.is_none()).count(), 100);
        assert_eq!(logic.state_size(), 0);
        let slots = logic.held.slot_count();
        logic.on_record(0, 5, "again".to_string(), Side::Right(5));
        assert_eq!(logic.held.slot_count(), slots);
        assert_eq!(logic.held.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["again"]);
    }
}
