//! Record keys and the partition each record goes to.
//!
//! Keyed records go where the Java client would put them
//! (`murmur2(key) & 0x7fffffff % partitions`), so a run keyed here lands
//! like a real application's. Unkeyed records stick to one partition until
//! its batch is sealed, then move on (the sticky partitioner), so batches
//! fill up instead of spreading one record per partition.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How records are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDistribution {
    /// Null keys: sticky partitioning.
    None,
    /// Keys drawn at random from `0..space`.
    Random { space: u64 },
    /// Keys `0, 1, 2, ... space-1, 0, ...`.
    RoundRobin { space: u64 },
}

impl KeyDistribution {
    pub fn parse(s: &str, space: u64) -> Result<Self, String> {
        let space = space.max(1);
        match s {
            "none" => Ok(KeyDistribution::None),
            "random" => Ok(KeyDistribution::Random { space }),
            "round-robin" => Ok(KeyDistribution::RoundRobin { space }),
            _ => Err(format!(
                "unknown key distribution '{s}' (none, random, round-robin)"
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            KeyDistribution::None => "none",
            KeyDistribution::Random { .. } => "random",
            KeyDistribution::RoundRobin { .. } => "round-robin",
        }
    }
}

/// Picks keys and partitions for one producer.
pub struct Partitioner {
    keys: KeyDistribution,
    partitions: u32,
    sticky: u32,
    rng: SmallRng,
    key_buf: String,
}

impl Partitioner {
    pub fn new(keys: KeyDistribution, partitions: usize, seed: u64) -> Self {
        let partitions = partitions.max(1) as u32;
        Partitioner {
            keys,
            partitions,
            sticky: (seed % u64::from(partitions)) as u32,
            rng: SmallRng::seed_from_u64(seed),
            key_buf: String::with_capacity(24),
        }
    }

    /// The key of record `i` (if any) and its partition.
    pub fn next(&mut self, i: u64) -> (Option<&[u8]>, i32) {
        let k = match self.keys {
            KeyDistribution::None => return (None, self.sticky as i32),
            KeyDistribution::Random { space } => self.rng.gen_range(0..space),
            KeyDistribution::RoundRobin { space } => i % space,
        };
        use std::fmt::Write;
        self.key_buf.clear();
        let _ = write!(self.key_buf, "{k}");
        let key = self.key_buf.as_bytes();
        let partition = (murmur2(key) & 0x7fff_ffff) % self.partitions;
        (Some(key), partition as i32)
    }

    /// The batch of `partition` was sealed: unkeyed records move on.
    pub fn batch_sealed(&mut self, partition: i32) {
        if self.keys == KeyDistribution::None && partition as u32 == self.sticky {
            self.sticky = (self.sticky + 1) % self.partitions;
        }
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn unkeyed_records_stick_until_the_batch_is_sealed() {
        let mut p = Partitioner::new(KeyDistribution::None, 3, 1);
        assert_eq!(p.next(0), (None, 1));
        assert_eq!(p.next(1), (None, 1));
        p.batch_sealed(0);
        assert_eq!(p.next(2).1, 1, "another partition's seal does not move it");
        p.batch_sealed(1);
        assert_eq!(p.next(3).1, 2);
        p.batch_sealed(2);
        assert_eq!(p.next(4).1, 0);
    }

    #[test]
    fn keyed_records_spread_over_partitions() {
        let mut p = Partitioner::new(KeyDistribution::RoundRobin { space: 1000 }, 8, 0);
        let mut seen = [0u32; 8];
        for i in 0..1000 {
            let (key, part) = p.next(i);
            assert_eq!(key.unwrap(), i.to_string().as_bytes());
            seen[part as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 80), "{seen:?}");
    }
}
