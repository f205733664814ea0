//! The producer-state part of the metadata image: for each partition, the
//! state of its producers as of its uploaded end (epoch, last batches, open
//! transaction) and its aborted transactions, merged from the
//! `PartitionProducers` records the uploader commits with each object.
//!
//! Pure logic, applied by the controller and read by every shard through
//! its `Arc<MetadataImage>`; the shard leading a partition starts its
//! `ProducerStateTable` from here and replays the WAL tail on top.
//! Persistent maps (`imbl`) keep image clones cheap.

use uuid::Uuid;

use crate::controller::records::{AbortedTxn, ProducerSnapshot, Record};

/// One partition's producers and aborted transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProducers {
    pub producers: imbl::OrdMap<i64, ProducerSnapshot>,
    /// By marker offset, ascending.
    pub aborted: imbl::Vector<AbortedTxn>,
    /// The offset the state is as of (the end of the last object).
    pub end_offset: i64,
}

/// Every partition's producer state.
#[derive(Debug, Clone, Default)]
pub struct ProducersImage {
    pub partitions: imbl::HashMap<(Uuid, i32), PartitionProducers>,
}

impl ProducersImage {
    pub fn partition(&self, topic: Uuid, partition: i32) -> Option<&PartitionProducers> {
        self.partitions.get(&(topic, partition))
    }

    /// Merges the change of one uploaded range. `log_start` (the first
    /// offset still in objects) drops aborted transactions below it.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        topic: Uuid,
        partition: i32,
        end_offset: i64,
        expire_before: i64,
        producers: &[ProducerSnapshot],
        aborted: &[AbortedTxn],
        log_start: i64,
    ) {
        let p = self.partitions.entry((topic, partition)).or_default();
        for s in producers {
            p.producers.insert(s.producer_id, s.clone());
        }
        p.aborted.extend(aborted.iter().copied());
        p.end_offset = p.end_offset.max(end_offset);
        let expired: Vec<i64> = p
            .producers
            .values()
            .filter(|s| s.txn_first_offset < 0 && s.last_timestamp < expire_before)
            .map(|s| s.producer_id)
            .collect();
        for pid in expired {
            p.producers.remove(&pid);
        }
        while p.aborted.front().is_some_and(|a| a.last_offset < log_start) {
            p.aborted.pop_front();
        }
        if p.producers.is_empty() && p.aborted.is_empty() {
            self.partitions.remove(&(topic, partition));
        }
    }

    pub fn drop_topic(&mut self, topic: Uuid) {
        self.partitions.retain(|(t, _), _| *t != topic);
    }

    /// The records that rebuild this part of the image.
    pub fn to_records(&self) -> Vec<Record> {
        let mut keys: Vec<&(Uuid, i32)> = self.partitions.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|&(topic_id, partition)| {
                let p = &self.partitions[&(topic_id, partition)];
                Record::PartitionProducers {
                    topic_id,
                    partition,
                    end_offset: p.end_offset,
                    expire_before: i64::MIN,
                    producers: p.producers.values().cloned().collect(),
                    aborted: p.aborted.iter().copied().collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pid: i64, ts: i64, txn: i64) -> ProducerSnapshot {
        ProducerSnapshot {
            producer_id: pid,
            epoch: 0,
            coordinator_epoch: -1,
            last_timestamp: ts,
            txn_first_offset: txn,
            batches: Vec::new(),
        }
    }

    fn aborted(first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: 1,
            first_offset: first,
            last_offset: last,
        }
    }

    #[test]
    fn deltas_merge_expire_and_prune() {
        let t = Uuid::from_u128(1);
        let mut img = ProducersImage::default();
        img.apply(
            t,
            0,
            10,
            i64::MIN,
            &[snap(1, 100, -1), snap(2, 50, 3)],
            &[aborted(0, 4)],
            0,
        );
        img.apply(
            t,
            0,
            20,
            60,
            &[snap(1, 150, -1), snap(3, 10, -1)],
            &[aborted(5, 9)],
            5,
        );
        let p = img.partition(t, 0).unwrap();
        assert_eq!(p.producers[&1].last_timestamp, 150, "replaced");
        assert!(
            p.producers.contains_key(&2),
            "open transaction kept although old"
        );
        assert!(!p.producers.contains_key(&3), "expired");
        assert_eq!(
            p.aborted.iter().map(|a| a.first_offset).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(p.end_offset, 20);
        let mut rebuilt = ProducersImage::default();
        for r in img.to_records() {
            if let Record::PartitionProducers {
                topic_id,
                partition,
                end_offset,
                expire_before,
                producers,
                aborted,
            } = r
            {
                rebuilt.apply(
                    topic_id,
                    partition,
                    end_offset,
                    expire_before,
                    &producers,
                    &aborted,
                    0,
                );
            }
        }
        assert_eq!(rebuilt.partitions, img.partitions);
        img.drop_topic(t);
        assert!(img.partitions.is_empty());
    }
}
