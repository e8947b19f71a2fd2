//! Early firing: a window's partial result before the watermark reaches its end, every `K`
//! records of a key and window (as Flink's `CountTrigger`) and/or every `N` ms of processing time
//! (as Flink's `ContinuousProcessingTimeTrigger`). Both fire without purging: the window keeps
//! its accumulators and still fires when the watermark reaches its end.
//!
//! What lives here is the bookkeeping per key and window that has not fired yet: how many records
//! it counted since its last emission, and whether it emitted an early result (which makes its
//! on-time result an update). Both are saved in checkpoints by the window that owns them, per key
//! group, so a restore at any worker count goes on where the run left off. The processing-time
//! timer is not saved: it is derived from the wall clock and re-armed on restore when a key and
//! window counted records since its last emission.

use std::collections::BTreeMap;

use paystream_engine::keyed::wall_clock_ms;
use paystream_engine::{Key, KeyMap};
use serde::{Deserialize, Serialize};

/// When windows emit early results; off unless one of the two is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EarlyFiring {
    /// Every this many ms of wall-clock time, windows that counted records since their last
    /// emission emit.
    pub(crate) every_ms: Option<u64>,
    /// A key's window emits each time it has counted this many records since its last emission.
    pub(crate) every_records: Option<u64>,
}

impl EarlyFiring {
    pub(crate) fn is_on(&self) -> bool {
        self.every_ms.is_some() || self.every_records.is_some()
    }

    /// The builder options set, as a user wrote them: for error messages.
    pub(crate) fn options(&self) -> String {
        let mut set = Vec::new();
        if let Some(ms) = self.every_ms {
            set.push(format!("emit_every({ms} ms)"));
        }
        if let Some(records) = self.every_records {
            set.push(format!("emit_every_records({records})"));
        }
        set.join(" and ")
    }
}

/// One key's progress in one window that has not fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Records counted since the last emission of this key and window.
    pub(crate) since_emission: u64,
    /// An early result was emitted: whatever comes next for this key and window is an update.
    pub(crate) emitted: bool,
}

/// The early-firing state of one window step: progress by window end, then key.
pub(crate) struct EarlyState<K> {
    firing: EarlyFiring,
    windows: BTreeMap<u64, KeyMap<K, Progress>>,
    /// Entries with `since_emission > 0`: while there are any, the processing-time timer is armed.
    changed: usize,
    /// Wall-clock time (ms) of the next processing-time firing, when armed.
    due_ms: Option<u64>,
    /// The wall clock; tests substitute their own.
    clock: fn() -> u64,
}

impl<K: Key> EarlyState<K> {
    pub(crate) fn new(firing: EarlyFiring) -> Self {
        EarlyState { firing, windows: BTreeMap::new(), changed: 0, due_ms: None, clock: wall_clock_ms }
    }

    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// Whether records must be counted: some early firing is asked for.
    pub(crate) fn is_on(&self) -> bool {
        self.firing.is_on()
    }

    /// Arms the processing-time timer at the next multiple of the interval on the wall clock
    /// (aligned to the epoch, as Flink's `ContinuousProcessingTimeTrigger` is).
    fn arm(&mut self) {
        if let (Some(every), None) = (self.firing.every_ms, self.due_ms) {
            let now = (self.clock)();
            self.due_ms = Some((now - now % every).saturating_add(every));
        }
    }

    /// Counts a record of `key` in the window ending at `end`. When that makes `K` records since
    /// the key's last emission in this window, the window emits now: returns `Some(is_update)` and
    /// notes the emission.
    pub(crate) fn count(&mut self, end: u64, key: &K) -> Option<bool> {
        let keys = self.windows.entry(end).or_default();
        if !keys.contains_key(key) {
            // The key is cloned once per window, not once per record.
            keys.insert(key.clone(), Progress::default());
        }
        let progress = keys.get_mut(key)?;
        progress.since_emission += 1;
        let first_change = progress.since_emission == 1;
        let fire = self.firing.every_records.is_some_and(|k| progress.since_emission >= k);
        let was_emitted = progress.emitted;
        if fire {
            *progress = Progress { since_emission: 0, emitted: true };
        }
        match (first_change, fire) {
            (true, false) => {
                self.changed += 1;
                self.arm();
            }
            (false, true) => {
                self.changed -= 1;
                if self.changed == 0 {
                    self.due_ms = None;
                }
            }
            _ => {}
        }
        fire.then_some(was_emitted)
    }

    /// Wall-clock time of the next processing-time firing, if one is due at all.
    pub(crate) fn due_ms(&self) -> Option<u64> {
        self.due_ms
    }

    /// At a processing-time firing: every `(end, key, is_update)` that counted records since its
    /// last emission, noted as emitted now, in order of window end.
    pub(crate) fn take_changed(&mut self) -> Vec<(u64, K, bool)> {
        let mut changed = Vec::with_capacity(self.changed);
        for (end, keys) in &mut self.windows {
            for (key, progress) in keys.iter_mut().filter(|(_, p)| p.since_emission > 0) {
                changed.push((*end, key.clone(), progress.emitted));
                *progress = Progress { since_emission: 0, emitted: true };
            }
        }
        self.changed = 0;
        self.due_ms = None;
        // Keys of one window come out of a hash map: order them, so the rows do not depend on it.
        changed.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        changed
    }

    /// The window ending at `end` fires on time: its progress per key, removed.
    pub(crate) fn close(&mut self, end: u64) -> KeyMap<K, Progress> {
        let keys = self.windows.remove(&end).unwrap_or_default();
        self.changed -= keys.values().filter(|p| p.since_emission > 0).count();
        if self.changed == 0 {
            self.due_ms = None;
        }
        keys
    }

    /// Entries held, for the state-size metric.
    pub(crate) fn len(&self) -> usize {
        self.windows.values().map(KeyMap::len).sum()
    }

    /// Every `(end, key, progress)`, for a checkpoint.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, &K, Progress)> {
        self.windows.iter().flat_map(|(end, keys)| keys.iter().map(move |(key, p)| (*end, key, *p)))
    }

    /// Adds an entry from a checkpoint. Kept even when this run fires no early results (the
    /// option was turned off across a restore): the on-time result still says it is an update.
    pub(crate) fn restore(&mut self, end: u64, key: K, progress: Progress) {
        let keys = self.windows.entry(end).or_default();
        if let Some(old) = keys.insert(key, progress) {
            self.changed -= usize::from(old.since_emission > 0);
        }
        if progress.since_emission > 0 {
            self.changed += 1;
            self.arm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fire_every_k_records_and_the_first_is_not_an_update() {
        let mut early = EarlyState::new(EarlyFiring { every_ms: None, every_records: Some(2) });
        assert_eq!(early.count(10, &1u64), None);
        assert_eq!(early.count(10, &1), Some(false));
        assert_eq!(early.count(10, &2), None);
        assert_eq!(early.count(10, &1), None);
        assert_eq!(early.count(10, &1), Some(true));
        assert_eq!(early.count(10, &1), None);
        // No processing-time firing without `every_ms`.
        assert_eq!(early.due_ms(), None);
        let closed = early.close(10);
        assert_eq!(closed.get(&1), Some(&Progress { since_emission: 1, emitted: true }));
        assert_eq!(closed.get(&2), Some(&Progress { since_emission: 1, emitted: false }));
        assert_eq!(early.len(), 0);
    }

    #[test]
    fn processing_time_fires_changed_windows_only_at_aligned_ticks() {
        let mut early = EarlyState::new(EarlyFiring { every_ms: Some(1_000), every_records: None }).with_clock(|| 12_345);
        assert_eq!(early.due_ms(), None, "nothing changed: no timer");
        early.count(20, &7u64);
        early.count(20, &7);
        early.count(30, &8);
        assert_eq!(early.due_ms(), Some(13_000));
        assert_eq!(early.take_changed(), vec![(20, 7, false), (30, 8, false)]);
        assert_eq!(early.due_ms(), None, "nothing changed since");
        assert_eq!(early.take_changed(), vec![]);
        early.count(30, &8);
        assert_eq!(early.take_changed(), vec![(30, 8, true)]);
        // Closing the only changed window disarms the timer.
        early.count(20, &7);
        assert!(early.due_ms().is_some());
        let closed = early.close(20);
        assert_eq!(closed.get(&7), Some(&Progress { since_emission: 1, emitted: true }));
        assert_eq!(early.due_ms(), None);
    }

    #[test]
    fn both_triggers_count_from_the_last_row_whichever_fired_it() {
        let mut early = EarlyState::new(EarlyFiring { every_ms: Some(1_000), every_records: Some(3) }).with_clock(|| 0);
        assert_eq!(early.count(10, &1u64), None);
        assert_eq!(early.count(10, &1), None);
        assert_eq!(early.take_changed(), vec![(10, 1, false)]);
        // Three more since that row, not one.
        assert_eq!(early.count(10, &1), None);
        assert_eq!(early.count(10, &1), None);
        assert_eq!(early.due_ms(), Some(1_000));
        assert_eq!(early.count(10, &1), Some(true));
        assert_eq!(early.due_ms(), None, "nothing changed since that row: no tick");
        assert_eq!(early.take_changed(), vec![]);
    }

    #[test]
    fn restored_progress_rearms_the_timer() {
        let mut early = EarlyState::new(EarlyFiring { every_ms: Some(500), every_records: None }).with_clock(|| 1_200);
        early.restore(20, 7u64, Progress { since_emission: 0, emitted: true });
        assert_eq!(early.due_ms(), None);
        early.restore(20, 8u64, Progress { since_emission: 3, emitted: false });
        assert_eq!(early.due_ms(), Some(1_500));
        assert_eq!(early.take_changed(), vec![(20, 8, false)]);
        let entries: Vec<_> =
            early.entries().map(|(end, key, p)| (end, *key, p.emitted)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        assert_eq!(entries, vec![(20, 7, true), (20, 8, true)]);
    }
}
