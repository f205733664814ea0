//! The block cache: verified data blocks of objects, least recently used
//! first out, bounded in bytes.
//!
//! One per shard, used only on that shard's executor. Holds `Bytes`, so a
//! block handed to a fetch stays valid after eviction. Never grows past its
//! budget except by the one block being inserted.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use bytes::Bytes;

/// A least-recently-used map from keys to byte blocks with a byte budget.
pub struct BlockCache<K> {
    budget: usize,
    used: usize,
    tick: u64,
    entries: HashMap<K, (Bytes, u64)>,
    order: BTreeMap<u64, K>,
    hits: u64,
    misses: u64,
}

impl<K: Hash + Eq + Clone> BlockCache<K> {
    pub fn new(budget: usize) -> Self {
        BlockCache {
            budget,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The block, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some((b, t)) => {
                self.order.remove(t);
                *t = tick;
                self.order.insert(tick, key.clone());
                self.hits += 1;
                Some(b.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Inserts (or refreshes) a block, then evicts the least recently used
    /// ones until the budget holds. A block larger than the whole budget is
    /// not kept.
    pub fn insert(&mut self, key: K, block: Bytes) {
        self.remove(&key);
        if block.len() > self.budget {
            return;
        }
        self.tick += 1;
        self.used += block.len();
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (block, self.tick));
        while self.used > self.budget {
            let Some((_, k)) = self.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = self.entries.remove(&k) {
                self.used -= b.len();
            }
        }
    }

    pub fn remove(&mut self, key: &K) {
        if let Some((b, t)) = self.entries.remove(key) {
            self.order.remove(&t);
            self.used -= b.len();
        }
    }

    /// Bytes held.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (hits, misses) since creation.
    pub fn hit_counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let mut c = BlockCache::new(100);
        c.insert(1, block(40));
        c.insert(2, block(40));
        assert!(c.get(&1).is_some()); // 2 is now the oldest
        c.insert(3, block(40));
        assert!(c.contains(&1) && c.contains(&3) && !c.contains(&2));
        assert_eq!(c.used(), 80);
        c.insert(4, block(101));
        assert!(!c.contains(&4), "larger than the budget");
        c.insert(1, block(10));
        assert_eq!(c.used(), 50, "replaced, not added");
        assert_eq!(c.hit_counts(), (1, 0));
        assert!(c.get(&9).is_none());
        assert_eq!(c.hit_counts(), (1, 1));
    }

    #[test]
    fn never_over_budget() {
        let mut c = BlockCache::new(1000);
        for i in 0..500u32 {
            c.insert(i % 37, block((i as usize * 13) % 300 + 1));
            assert!(c.used() <= 1000);
            let _ = c.get(&(i % 11));
        }
        let sum: usize = (0..37)
            .filter_map(|k| c.entries.get(&k))
            .map(|(b, _)| b.len())
            .sum();
        assert_eq!(sum, c.used());
    }
}
