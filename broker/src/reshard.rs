//! Where a broker's partitions go when it restarts with another shard count
//! (another core count, a resized host): partitions of shards that no
//! longer exist go to the least loaded remaining shard, then partitions
//! move from the most to the least loaded shard until the counts differ by
//! at most one, so new cores get work too. Partitions of other brokers are
//! never touched.
//!
//! Pure decision, run on the main thread before the shards start; the
//! moves themselves are `Shard::empty_wal` on the shards of the old count.

use std::collections::BTreeMap;

use crate::metadata::{shard_of, MetadataImage, NODES_PER_BROKER};
use crate::partition::PartitionKey;

/// One partition to hand over before the new shard count serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub key: PartitionKey,
    /// The shard (of the old count) leading it now.
    pub from_shard: usize,
    pub to_node: i32,
}

/// The moves that spread `broker_id`'s partitions over `shards` shards.
/// Deterministic: partitions in topic-name then partition order.
pub fn plan(image: &MetadataImage, broker_id: i32, shards: usize) -> Vec<Move> {
    let shards = shards.max(1);
    // Every partition this broker leads, by the shard leading it now.
    let mut owned: Vec<(PartitionKey, usize)> = Vec::new();
    for t in image.topics.values() {
        for (p, &node) in t.leader_nodes.iter().enumerate() {
            if node.div_euclid(NODES_PER_BROKER) == broker_id {
                owned.push(((t.id, p as i32), shard_of(node)));
            }
        }
    }
    let mut target: BTreeMap<PartitionKey, usize> = BTreeMap::new();
    let mut by_shard: Vec<Vec<PartitionKey>> = vec![Vec::new(); shards];
    for &(key, s) in &owned {
        if s < shards {
            by_shard[s].push(key);
        }
    }
    for &(key, s) in &owned {
        if s >= shards {
            let least = least_loaded(&by_shard);
            by_shard[least].push(key);
            target.insert(key, least);
        }
    }
    loop {
        let least = least_loaded(&by_shard);
        let most = (0..shards)
            .rev()
            .max_by_key(|&s| by_shard[s].len())
            .unwrap_or(0);
        if by_shard[most].len() <= by_shard[least].len() + 1 {
            break;
        }
        let Some(key) = by_shard[most].pop() else {
            break;
        };
        by_shard[least].push(key);
        target.insert(key, least);
    }
    owned
        .into_iter()
        .filter_map(|(key, from_shard)| {
            let to = *target.get(&key)?;
            (to != from_shard).then_some(Move {
                key,
                from_shard,
                to_node: broker_id * NODES_PER_BROKER + to as i32,
            })
        })
        .collect()
}

/// The shard with the fewest partitions; the lowest index on a tie.
fn least_loaded(by_shard: &[Vec<PartitionKey>]) -> usize {
    (0..by_shard.len())
        .min_by_key(|&s| by_shard[s].len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::Record;
    use uuid::Uuid;

    fn image(leaders: &[(&str, Vec<i32>)]) -> MetadataImage {
        let mut img = MetadataImage::default();
        for (i, (name, nodes)) in leaders.iter().enumerate() {
            let id = Uuid::from_u128(i as u128 + 1);
            img.apply(&Record::TopicCreated {
                id,
                name: name.to_string(),
                configs: BTreeMap::new(),
            });
            img.apply(&Record::PartitionsAdded {
                topic_id: id,
                first: 0,
                leaders: nodes.clone(),
            });
        }
        img
    }

    fn counts(img: &MetadataImage, moves: &[Move], broker: i32, shards: usize) -> Vec<usize> {
        let mut n = vec![0; shards];
        for t in img.topics.values() {
            for (p, &node) in t.leader_nodes.iter().enumerate() {
                if node / NODES_PER_BROKER != broker {
                    continue;
                }
                let key = (t.id, p as i32);
                let node = moves
                    .iter()
                    .find(|m| m.key == key)
                    .map_or(node, |m| m.to_node);
                n[shard_of(node)] += 1;
            }
        }
        n
    }

    #[test]
    fn fewer_shards_move_only_the_orphans() {
        let img = image(&[("a", vec![0, 1, 2, 3]), ("b", vec![0, 1, 2, 3])]);
        let moves = plan(&img, 0, 2);
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert!(moves.iter().all(|m| m.from_shard >= 2 && m.to_node < 2));
        assert_eq!(counts(&img, &moves, 0, 2), vec![4, 4]);
        assert_eq!(plan(&img, 0, 1).len(), 6);
    }

    #[test]
    fn more_shards_get_a_share() {
        let img = image(&[("a", vec![0; 7])]);
        let moves = plan(&img, 0, 3);
        assert_eq!(counts(&img, &moves, 0, 3), vec![3, 2, 2]);
        assert!(moves.iter().all(|m| m.from_shard == 0));
        assert_eq!(moves.len(), 4);
    }

    #[test]
    fn the_same_count_or_a_balanced_layout_moves_nothing() {
        let img = image(&[("a", vec![0, 1, 0, 1, 0])]);
        assert!(plan(&img, 0, 2).is_empty());
        assert!(plan(&MetadataImage::default(), 0, 4).is_empty());
    }

    #[test]
    fn other_brokers_partitions_stay() {
        let img = image(&[("a", vec![1000, 1001, 1002, 2, 3])]);
        let moves = plan(&img, 0, 1);
        assert_eq!(moves.len(), 2);
        assert!(moves.iter().all(|m| m.to_node == 0));
        let moves = plan(&img, 1, 2);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].from_shard, 2);
    }
}
