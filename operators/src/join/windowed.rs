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
        loop {
            let end = start.saturating_add(self.size);
            if end > ts && end > message_time {
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
