//! Interval join: `a` meets every `b` of its key with `b.ts` in `[a.ts + lower, a.ts + upper]`.
//!
//! Each side's records are held until no future partner can arrive: a left record until the
//! watermark passes `a.ts + upper`, a right one until it passes `b.ts - lower`. A pair is emitted
//! when its second record arrives, with event time `max(a.ts, b.ts)`. With
//! [`IntervalJoin::with_unmatched_left`], a left record that met no partner is emitted with
//! `right: None` when it expires (a payment never authorized).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::{Data, Key, KeyedLogic, KeyedStream, Stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{merge, signed_add, signed_sub, Joined, Side};

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
        merged.keyed_logic(
            name,
            IntervalLogic {
                lower: self.lower_ms,
                upper: self.upper_ms,
                unmatched: self.unmatched,
                left: HashMap::new(),
                right: HashMap::new(),
                expiry: BTreeSet::new(),
                ready: Vec::new(),
            },
        )
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Held<T> {
    ts: u64,
    record: T,
    matched: bool,
}

struct IntervalLogic<K, A, B> {
    lower: i64,
    upper: i64,
    unmatched: bool,
    left: HashMap<K, Vec<Held<A>>>,
    right: HashMap<K, Vec<Held<B>>>,
    /// (expiry watermark, key): when the key's held records should be looked at again.
    expiry: BTreeSet<(u64, K)>,
    /// Pairs made by records, waiting to be emitted.
    ready: Vec<(u64, Joined<K, A, B>)>,
}

impl<K: Key, A: Data, B: Data> IntervalLogic<K, A, B> {
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
        match value {
            Side::Left(a) => {
                // Exact differences: clamped interval ends would pair records near time 0 wrongly.
                let (lower, upper) = (self.lower as i128, self.upper as i128);
                let mut matched = false;
                for b in self.right.get_mut(&key).into_iter().flatten().filter(|b| (lower..=upper).contains(&(b.ts as i128 - ts as i128))) {
                    b.matched = true;
                    matched = true;
                    self.ready.push((ts.max(b.ts), Joined { key: key.clone(), left: a.clone(), right: Some(b.record.clone()) }));
                }
                let expiry = self.left_expiry(ts);
                self.expiry.insert((expiry, key.clone()));
                self.left.entry(key).or_default().push(Held { ts, record: a, matched });
            }
            Side::Right(b) => {
                let (lower, upper) = (self.lower as i128, self.upper as i128);
                let mut matched = false;
                for a in self.left.get_mut(&key).into_iter().flatten().filter(|a| (lower..=upper).contains(&(ts as i128 - a.ts as i128))) {
                    a.matched = true;
                    matched = true;
                    self.ready.push((ts.max(a.ts), Joined { key: key.clone(), left: a.record.clone(), right: Some(b.clone()) }));
                }
                let expiry = self.right_expiry(ts);
                self.expiry.insert((expiry, key.clone()));
                self.right.entry(key).or_default().push(Held { ts, record: b, matched });
            }
        }
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        out.append(&mut self.ready);
        while let Some((expiry, key)) = self.expiry.first().cloned() {
            if expiry >= watermark {
                break;
            }
            self.expiry.remove(&(expiry, key.clone()));
            let (upper, lower, unmatched) = (self.upper, self.lower, self.unmatched);
            if let Some(list) = self.left.get_mut(&key) {
                list.retain(|a| {
                    let keep = signed_add(a.ts, upper) >= watermark;
                    if !keep && unmatched && !a.matched {
                        out.push((signed_add(a.ts, upper), Joined { key: key.clone(), left: a.record.clone(), right: None }));
                    }
                    keep
                });
                if list.is_empty() {
                    self.left.remove(&key);
                }
            }
            if let Some(list) = self.right.get_mut(&key) {
                list.retain(|b| signed_sub(b.ts, lower) >= watermark);
                if list.is_empty() {
                    self.right.remove(&key);
                }
            }
        }
    }

    fn next_emit_time(&self) -> Option<u64> {
        let ready = self.ready.iter().map(|(ts, _)| *ts).min();
        let expiring = if self.unmatched { self.expiry.first().map(|(t, _)| *t) } else { None };
        match (ready, expiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state_size(&self) -> usize {
        self.left.values().map(Vec::len).sum::<usize>() + self.right.values().map(Vec::len).sum::<usize>()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, IntervalGroup<K, A, B>> = BTreeMap::new();
        for (key, list) in &self.left {
            groups.entry(key_group(key)).or_default().left.push((key.clone(), list.clone()));
        }
        for (key, list) in &self.right {
            groups.entry(key_group(key)).or_default().right.push((key.clone(), list.clone()));
        }
        groups.into_iter().map(|(g, state)| encode(&state).map(|b| (g, b))).collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let state: IntervalGroup<K, A, B> = decode(bytes)?;
        for (key, list) in state.left {
            for a in &list {
                self.expiry.insert((self.left_expiry(a.ts), key.clone()));
            }
            self.left.insert(key, list);
        }
        for (key, list) in state.right {
            for b in &list {
                self.expiry.insert((self.right_expiry(b.ts), key.clone()));
            }
            self.right.insert(key, list);
        }
        Ok(())
    }
}

/// One key group's held records, as saved in checkpoints.
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
