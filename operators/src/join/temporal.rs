//! Temporal (as-of) join: each left record meets the table row of its key as of its event time.
//!
//! Table updates take effect at their event time, or at the watermark they arrived at if they came
//! late (so every worker count sees the same table history). A left record waits until the
//! watermark passes its event time (then every update that takes effect by then has arrived), is
//! joined with the newest row effective at or before it, and is emitted once, never revised. A
//! key's older rows are dropped once a newer one has been in effect for the retention; left
//! records more than the retention behind their watermark are late (dropped and counted).
//!
//! Why keyed versioned state and not differential dataflow: differential's join revises earlier
//! results when the table changes, which an as-of join must not do, and it costs far more CPU per
//! record than this approach (figures in BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::{Data, Duration, Key, KeyedLogic, KeyedStream, Stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{merge, Joined, Side};

/// A temporal join being configured; finish with [`TemporalJoin::join`].
pub struct TemporalJoin<'scope, K, A, B> {
    left: KeyedStream<'scope, K, A>,
    table: KeyedStream<'scope, K, Option<B>>,
    retention_ms: u64,
}

impl<'scope, K: Key, A: Data, B: Data> TemporalJoin<'scope, K, A, B> {
    pub(super) fn new(left: KeyedStream<'scope, K, A>, table: KeyedStream<'scope, K, Option<B>>) -> Self {
        TemporalJoin { left, table, retention_ms: 3_600_000 }
    }

    /// How long superseded table rows are kept for left records that arrive behind the watermark
    /// (default one hour).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention_ms = retention.as_millis();
        self
    }

    /// Builds the join as step `name`.
    pub fn join(self, name: &str) -> Stream<'scope, Joined<K, A, B>> {
        let retention = self.retention_ms;
        let late = move |message_time: u64, ts: u64, side: &Side<A, Option<B>>| {
            matches!(side, Side::Left(_)) && ts.saturating_add(retention) < message_time
        };
        merge(name, self.left, self.table, late)
            .keyed_logic(name, TemporalLogic { retention, rows: HashMap::new(), waiting: BTreeMap::new(), watermark: 0, pruned_to: 0 })
    }
}

/// A key's table rows: (effective time, row or deletion), by effective time.
type Versions<B> = Vec<(u64, Option<B>)>;

struct TemporalLogic<K, A, B> {
    retention: u64,
    /// Each key's rows: (effective time, row or deletion), by effective time.
    rows: HashMap<K, Versions<B>>,
    /// Left records waiting for the watermark to pass their event time.
    waiting: BTreeMap<u64, Vec<(K, A)>>,
    watermark: u64,
    /// The horizon rows were last pruned to.
    pruned_to: u64,
}

impl<K: Key, A: Data, B: Data> KeyedLogic<K, Side<A, Option<B>>> for TemporalLogic<K, A, B> {
    type Out = Joined<K, A, B>;

    fn on_record(&mut self, message_time: u64, ts: u64, key: K, value: Side<A, Option<B>>) {
        match value {
            Side::Left(a) => self.waiting.entry(ts).or_default().push((key, a)),
            Side::Right(row) => {
                let effective = ts.max(message_time);
                let list = self.rows.entry(key).or_default();
                // Among rows effective at the same time, the later arrival wins within a
                // partition; across partitions ties are rare and resolved by arrival.
                let at = list.partition_point(|(t, _)| *t <= effective);
                list.insert(at, (effective, row));
            }
        }
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        self.watermark = watermark;
        while let Some(entry) = self.waiting.first_entry() {
            let ts = *entry.key();
            if ts >= watermark {
                break;
            }
            for (key, left) in entry.remove() {
                let right = self.rows.get(&key).and_then(|list| {
                    let at = list.partition_point(|(t, _)| *t <= ts);
                    at.checked_sub(1).and_then(|i| list[i].1.clone())
                });
                out.push((ts, Joined { key, left, right }));
            }
        }
        // Drop rows superseded by one in effect for the whole retention. Every key is visited, so
        // only when the horizon has moved by a quarter of the retention (or a second) since.
        let horizon = watermark.saturating_sub(self.retention);
        if horizon < self.pruned_to.saturating_add((self.retention / 4).max(1_000)) && watermark != u64::MAX {
            return;
        }
        self.pruned_to = horizon;
        self.rows.retain(|_, list| {
            let in_effect = list.partition_point(|(t, _)| *t <= horizon);
            if in_effect > 1 {
                list.drain(..in_effect - 1);
            }
            !(list.len() == 1 && list[0].1.is_none() && list[0].0 <= horizon)
        });
    }

    fn next_emit_time(&self) -> Option<u64> {
        self.waiting.keys().next().copied()
    }

    fn state_size(&self) -> usize {
        self.rows.values().map(Vec::len).sum::<usize>() + self.waiting.values().map(Vec::len).sum::<usize>()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, TemporalGroup<K, A, B>> = BTreeMap::new();
        for (key, list) in &self.rows {
            groups.entry(key_group(key)).or_default().rows.push((key.clone(), list.clone()));
        }
        for (ts, records) in &self.waiting {
            for (key, a) in records {
                groups.entry(key_group(key)).or_default().waiting.push((*ts, key.clone(), a.clone()));
            }
        }
        groups.into_iter().map(|(g, state)| encode(&state).map(|b| (g, b))).collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let state: TemporalGroup<K, A, B> = decode(bytes)?;
        self.rows.extend(state.rows);
        for (ts, key, a) in state.waiting {
            self.waiting.entry(ts).or_default().push((key, a));
        }
        Ok(())
    }
}

/// One key group's table rows and waiting records, as saved in checkpoints.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, A: Serialize, B: Serialize",
    deserialize = "K: DeserializeOwned, A: DeserializeOwned, B: DeserializeOwned"
))]
struct TemporalGroup<K, A, B> {
    rows: Vec<(K, Versions<B>)>,
    waiting: Vec<(u64, K, A)>,
}

impl<K, A, B> Default for TemporalGroup<K, A, B> {
    fn default() -> Self {
        TemporalGroup { rows: Vec::new(), waiting: Vec::new() }
    }
}
