//! Window join: left and right records of a key in the same window make pairs when the window
//! fires (aligned windows: tumbling or sliding). A record counts in the windows that had not
//! closed at the watermark it arrived at.

use std::collections::{BTreeMap, HashMap};

use paystream_engine::checkpoint::{decode, encode};
use paystream_engine::keygroup::key_group;
use paystream_engine::{Data, Key, KeyedLogic, KeyedStream, Stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{merge, Side, WindowJoined};
use crate::window::Windows;

/// A window join being configured; finish with [`WindowJoin::join`].
pub struct WindowJoin<'scope, K, A, B> {
    left: KeyedStream<'scope, K, A>,
    right: KeyedStream<'scope, K, B>,
    windows: Windows,
}

impl<'scope, K: Key, A: Data, B: Data> WindowJoin<'scope, K, A, B> {
    pub(super) fn new(left: KeyedStream<'scope, K, A>, right: KeyedStream<'scope, K, B>, windows: Windows) -> Self {
        WindowJoin { left, right, windows }
    }

    /// Builds the join as step `name`. Session windows are not supported for joins.
    pub fn join(self, name: &str) -> Stream<'scope, WindowJoined<K, A, B>> {
        let Windows::Aligned { size_ms, slide_ms } = self.windows else {
            panic!("window join {name}: only tumbling and sliding windows can be joined");
        };
        let late = move |message_time: u64, ts: u64, _: &Side<A, B>| (ts - ts % slide_ms).saturating_add(size_ms) <= message_time;
        merge(name, self.left, self.right, late)
            .keyed_logic(name, WindowJoinLogic { size: size_ms, slide: slide_ms, open: BTreeMap::new() })
    }
}

type Sides<A, B> = (Vec<A>, Vec<B>);
/// One key's records in one window: (window end, key, sides).
type OpenWindow<K, A, B> = (u64, K, Sides<A, B>);

struct WindowJoinLogic<K, A, B> {
    size: u64,
    slide: u64,
    /// Open windows by end, then key: the records of each side.
    open: BTreeMap<u64, HashMap<K, Sides<A, B>>>,
}

impl<K: Key, A: Data, B: Data> KeyedLogic<K, Side<A, B>> for WindowJoinLogic<K, A, B> {
    type Out = WindowJoined<K, A, B>;

    fn on_record(&mut self, message_time: u64, ts: u64, key: K, value: Side<A, B>) {
        let last_start = ts - ts % self.slide;
        let mut start = last_start;
        // Windows whose ends saturate at u64::MAX share that end, and so one entry: hold the
        // record there once.
        let mut previous_end = None;
        loop {
            let end = start.saturating_add(self.size);
            if end > ts && end > message_time && previous_end != Some(end) {
                previous_end = Some(end);
                let sides = self.open.entry(end).or_default().entry(key.clone()).or_default();
                match &value {
                    Side::Left(a) => sides.0.push(a.clone()),
                    Side::Right(b) => sides.1.push(b.clone()),
                }
            }
            // The window before this one ends past `ts` (or past u64::MAX): it covers `ts` too.
            if start < self.slide || (start - self.slide).checked_add(self.size).is_some_and(|end| end <= ts) {
                break;
            }
            start -= self.slide;
        }
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>) {
        while let Some(entry) = self.open.first_entry() {
            let end = *entry.key();
            if end > watermark {
                break;
            }
            let start = end.saturating_sub(self.size);
            for (key, (lefts, rights)) in entry.remove() {
                for a in &lefts {
                    for b in &rights {
                        out.push((
                            end - 1,
                            WindowJoined { start_ms: start, end_ms: end, key: key.clone(), left: a.clone(), right: b.clone() },
                        ));
                    }
                }
            }
        }
    }

    fn next_emit_time(&self) -> Option<u64> {
        self.open.keys().next().map(|end| end - 1)
    }

    fn state_size(&self) -> usize {
        self.open.values().flat_map(|m| m.values()).map(|(l, r)| l.len() + r.len()).sum()
    }

    fn snapshot(&self) -> paystream_engine::Result<Vec<(u64, Vec<u8>)>> {
        let mut groups: BTreeMap<u64, Vec<OpenWindow<K, A, B>>> = BTreeMap::new();
        for (end, keys) in &self.open {
            for (key, sides) in keys {
                groups.entry(key_group(key)).or_default().push((*end, key.clone(), sides.clone()));
            }
        }
        groups.into_iter().map(|(g, state)| encode(&WindowJoinGroup { windows: state }).map(|b| (g, b))).collect()
    }

    fn restore(&mut self, _key_group: u64, bytes: &[u8]) -> paystream_engine::Result<()> {
        let state: WindowJoinGroup<K, A, B> = decode(bytes)?;
        for (end, key, sides) in state.windows {
            self.open.entry(end).or_default().insert(key, sides);
        }
        Ok(())
    }
}

/// One key group's open windows, as saved in checkpoints.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, A: Serialize, B: Serialize",
    deserialize = "K: DeserializeOwned, A: DeserializeOwned, B: DeserializeOwned"
))]
struct WindowJoinGroup<K, A, B> {
    windows: Vec<OpenWindow<K, A, B>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Near `u64::MAX` the test for the window before does not overflow, the windows whose ends
    /// saturate there hold a record once (not once per window), and they fire when the input ends.
    #[test]
    fn windows_near_the_end_of_time_join_without_overflow() {
        let mut logic: WindowJoinLogic<u64, u64, u64> = WindowJoinLogic { size: 60, slide: 20, open: BTreeMap::new() };
        // Covered by the windows starting 40, 20 and 0 ms before its own; all end past u64::MAX.
        let ts = u64::MAX - 10;
        logic.on_record(0, ts, 1, Side::Left(1));
        logic.on_record(0, ts, 1, Side::Right(2));
        // Covered also by two windows that end before u64::MAX.
        logic.on_record(0, u64::MAX - 45, 2, Side::Left(3));
        logic.on_record(0, u64::MAX - 45, 2, Side::Right(4));
        let held: Vec<(u64, u64, usize)> =
            logic.open.iter().flat_map(|(end, keys)| keys.iter().map(|(k, (l, r))| (*end, *k, l.len() + r.len()))).collect();
        // Key 2's windows start at u64::MAX - 55, - 75 and - 95.
        let mut want = vec![(u64::MAX - 35, 2, 2), (u64::MAX - 15, 2, 2), (u64::MAX, 1, 2), (u64::MAX, 2, 2)];
        let mut held = held;
        held.sort();
        want.sort();
        assert_eq!(held, want);
        let mut out = Vec::new();
        logic.on_watermark(u64::MAX, &mut out);
        assert_eq!(out.len(), 4, "one pair per key and window: {out:?}");
        assert_eq!(logic.next_emit_time(), None);
    }
}
