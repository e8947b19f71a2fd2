//! Per-key state addressed by small integers: [`KeySlots`] keeps each key once, in a slot, and
//! finds a key's slot through a hash table of slot numbers. Structures that need to refer to a key
//! again later (expiry queues, timers) hold its `u32` slot instead of a clone of the key, which for
//! `String` keys such as transaction ids saves an allocation and a copy per reference.
//!
//! Keys are hashed with foldhash (randomly seeded per table, much cheaper than std's SipHash on
//! short keys); the hash is kept in the slot so the table grows without hashing keys again.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// The slot of a key in a [`KeySlots`].
pub(crate) type SlotId = u32;

struct Slot<K, V> {
    hash: u64,
    /// `None` while the slot is free.
    key: Option<K>,
    value: V,
}

/// Keys, each stored once with a value, addressed by [`SlotId`]. Freed slots are reused, with
/// the value they held (so a value's buffers keep their capacity).
pub(crate) struct KeySlots<K, V> {
    table: HashTable<SlotId>,
    hasher: foldhash::fast::RandomState,
    slots: Vec<Slot<K, V>>,
    free: Vec<SlotId>,
}

impl<K: Hash + Eq, V: Default> KeySlots<K, V> {
    pub(crate) fn new() -> Self {
        KeySlots { table: HashTable::new(), hasher: foldhash::fast::RandomState::default(), slots: Vec::new(), free: Vec::new() }
    }

    /// The slot of `key`, taking a free slot if the key has none.
    pub(crate) fn slot_of(&mut self, key: K) -> SlotId {
        let hash = self.hasher.hash_one(&key);
        let slots = &mut self.slots;
        if let Some(&id) = self.table.find(hash, |&id| slots[id as usize].key.as_ref() == Some(&key)) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                let slot = &mut slots[id as usize];
                slot.hash = hash;
                slot.key = Some(key);
                id
            }
            None => {
                let id = SlotId::try_from(slots.len()).expect("more than 2^32 keys held by one operator");
                slots.push(Slot { hash, key: Some(key), value: V::default() });
                id
            }
        };
        self.table.insert_unique(hash, id, |&id| slots[id as usize].hash);
        id
    }

    /// The key and value in slot `id`, unless the slot is free.
    pub(crate) fn get_mut(&mut self, id: SlotId) -> Option<(&K, &mut V)> {
        let slot = self.slots.get_mut(id as usize)?;
        Some((slot.key.as_ref()?, &mut slot.value))
    }

    /// Frees slot `id`, dropping its key. The value stays for the slot's next key: the caller
    /// leaves it empty.
    pub(crate) fn release(&mut self, id: SlotId) {
        let Some(slot) = self.slots.get_mut(id as usize) else { return };
        if slot.key.take().is_none() {
            return;
        }
        if let Ok(entry) = self.table.find_entry(slot.hash, |&other| other == id) {
            entry.remove();
        }
        self.free.push(id);
    }

    /// How many slots there are, free or not.
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Keys with a slot, and their values, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().filter_map(|slot| Some((slot.key.as_ref()?, &slot.value)))
    }
}

/// A short list kept inline while it holds one item: most keys of a join hold one record a side.
#[derive(Debug)]
pub(crate) struct Few<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few { first: None, rest: Vec::new() }
    }
}

impl<T> Few<T> {
    pub(crate) fn push(&mut self, item: T) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push(item);
        }
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Items in the order they were pushed.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(self.rest.iter())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.first.iter_mut().chain(self.rest.iter_mut())
    }

    /// Keeps the items for which `keep` holds, in order (`keep` sees every item once, in order).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let first_kept = self.first.as_ref().map(&mut keep);
        self.rest.retain(&mut keep);
        if first_kept == Some(false) {
            // Move the next item up; `rest` is short, so shifting it is cheap.
            self.first = if self.rest.is_empty() { None } else { Some(self.rest.remove(0)) };
        }
    }
}

impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut few = Few::default();
        for item in items {
            few.push(item);
        }
        few
    }
}

/// Serializes as a sequence, exactly as a `Vec<T>` of the same items.
impl<T: serde::Serialize> serde::Serialize for Few<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_slot_until_released_and_slots_are_reused() {
        let mut slots: KeySlots<String, Vec<u32>> = KeySlots::new();
        let a = slots.slot_of("a".to_string());
        let b = slots.slot_of("b".to_string());
        assert_ne!(a, b);
        assert_eq!(slots.slot_of("a".to_string()), a);
        slots.get_mut(a).expect("held").1.push(1);
        slots.get_mut(a).expect("held").1.clear();
        slots.release(a);
        assert!(slots.get_mut(a).is_none());
        // The free slot goes to the next new key; the released key is gone.
        let c = slots.slot_of("c".to_string());
        assert_eq!(c, a);
        assert_eq!(slots.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["c", "b"]);
        slots.release(a);
        slots.release(a);
        assert_eq!(slots.iter().count(), 1);
    }

    #[test]
    fn many_keys_survive_table_growth() {
        let mut slots: KeySlots<u64, u64> = KeySlots::new();
        let ids: Vec<SlotId> = (0..10_000u64).map(|k| slots.slot_of(k)).collect();
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(slots.slot_of(k as u64), *id);
        }
        for id in ids.iter().step_by(2) {
            slots.release(*id);
        }
        assert_eq!(slots.iter().count(), 5_000);
        assert_eq!(slots.slot_of(1), ids[1]);
        assert_eq!(slots.iter().filter(|(k, _)| **k == 2).count(), 0);
    }

    #[test]
    fn few_keeps_order_through_retain_and_serializes_as_a_vec() {
        let mut few: Few<u32> = (1..=5).collect();
        few.retain(|x| x % 2 == 0);
        assert_eq!(few.iter().copied().collect::<Vec<_>>(), vec![2, 4]);
        few.retain(|x| *x > 2);
        assert_eq!(few.iter().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(few.len(), 1);
        let bytes = paystream_engine::checkpoint::encode(&few).expect("encodes");
        assert_eq!(bytes, paystream_engine::checkpoint::encode(&vec![4u32]).expect("encodes"));
        few.retain(|_| false);
        assert!(few.is_empty());
        assert_eq!(few.len(), 0, "len agrees with is_empty");
    }
}
