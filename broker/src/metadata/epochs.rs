//! Each partition's leader epoch history: the first offset of every leader
//! epoch, as Kafka's leader-epoch cache keeps it, for OffsetForLeaderEpoch
//! (consumers' truncation checks, KIP-320) and the epochs ListOffsets
//! reports.
//!
//! A partition changes leader only after its data is all in objects (a
//! move, a drain, a failover of a clean partition) or when an unclean
//! election gives up what was not (`elect_unclean`). Either way the new
//! leader's log starts where the objects end, so the image knows each
//! epoch's first offset when it applies the leader change, and every node
//! computes the same history. Epoch 0 starts at offset 0 and is not stored.
//!
//! A snapshot carries each history as a LeaderEpochStarts record; one from
//! before histories were kept leaves them unknown, which
//! `MetadataImage::epoch_end` answers without reporting a truncation.
//!
//! Pure: part of the metadata image, applied by the controller and read by
//! every shard. At most `MAX_ENTRIES` epochs per partition are kept.

use std::sync::Arc;

/// Kafka's `UNDEFINED_EPOCH` and `UNDEFINED_EPOCH_OFFSET`.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

/// Epochs kept per partition; older ones are forgotten, which makes a
/// lookup of a forgotten epoch answer with the end of the oldest kept one
/// (never below the offsets that epoch wrote).
pub const MAX_ENTRIES: usize = 64;

/// `(epoch, first offset)` of the epochs after 0, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory(Arc<Vec<(i32, i64)>>);

impl EpochHistory {
    pub fn from_entries(mut entries: Vec<(i32, i64)>) -> Self {
        entries.retain(|&(e, _)| e > 0);
        entries.sort_unstable();
        entries.dedup_by_key(|&mut (e, _)| e);
        let drop = entries.len().saturating_sub(MAX_ENTRIES);
        entries.drain(..drop);
        EpochHistory(Arc::new(entries))
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.0
    }

    /// Epoch `epoch` starts at `start`. An epoch at or below the latest one
    /// kept replaces the entries from it on (a history is only ever
    /// extended, but a replayed record must not make it go backwards).
    pub fn started(&mut self, epoch: i32, start: i64) {
        if epoch <= 0 {
            return;
        }
        let v = Arc::make_mut(&mut self.0);
        v.retain(|&(e, _)| e < epoch);
        v.push((epoch, start));
        let drop = v.len().saturating_sub(MAX_ENTRIES);
        v.drain(..drop);
    }

    /// Every epoch with its first offset, epoch 0 first.
    fn all(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        std::iter::once((0, 0)).chain(self.0.iter().copied())
    }

    /// Kafka's `LeaderEpochFileCache.endOffsetFor`: `(epoch, end offset)`
    /// for `requested`, where `current` is the leader's epoch and
    /// `log_end` its log end. The current epoch ends at the log end; an
    /// older one where the next known epoch starts, reported as the latest
    /// known epoch at or below it; one below every known epoch ends where
    /// the first known one starts.
    pub fn end_offset_for(&self, requested: i32, current: i32, log_end: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if requested == current {
            return (current, log_end);
        }
        let higher = self.all().find(|&(e, _)| e > requested && e <= current);
        let Some((_, higher_start)) = higher else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        match self.all().filter(|&(e, _)| e <= requested).last() {
            Some((floor, _)) => (floor, higher_start),
            None => (requested, higher_start),
        }
    }

    /// The epoch `offset` was written in, as far as the history knows.
    pub fn epoch_at(&self, offset: i64, current: i32) -> i32 {
        self.all()
            .filter(|&(e, start)| start <= offset && e <= current)
            .map(|(e, _)| e)
            .last()
            .unwrap_or(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(i32, i64)]) -> EpochHistory {
        EpochHistory::from_entries(entries.to_vec())
    }

    #[test]
    fn a_partition_that_never_moved_has_one_epoch() {
        let h = EpochHistory::default();
        assert_eq!(h.end_offset_for(0, 0, 42), (0, 42));
        assert_eq!(h.end_offset_for(-1, 0, 42), (-1, -1));
        // Asked past the latest epoch: unknown, as Kafka answers.
        assert_eq!(h.end_offset_for(3, 0, 42), (-1, -1));
        assert_eq!(h.epoch_at(10, 0), 0);
    }

    #[test]
    fn older_epochs_end_where_the_next_known_one_starts() {
        // Epoch 1 from 100, epoch 4 from 250 (2 and 3 never wrote or were
        // forgotten), current epoch 4, log end 300.
        let h = history(&[(1, 100), (4, 250)]);
        assert_eq!(h.end_offset_for(4, 4, 300), (4, 300));
        assert_eq!(h.end_offset_for(0, 4, 300), (0, 100));
        assert_eq!(h.end_offset_for(1, 4, 300), (1, 250));
        // An epoch the history does not hold reports the one below it.
        assert_eq!(h.end_offset_for(2, 4, 300), (1, 250));
        assert_eq!(h.end_offset_for(3, 4, 300), (1, 250));
        assert_eq!(h.end_offset_for(5, 4, 300), (-1, -1));
        assert_eq!(h.epoch_at(0, 4), 0);
        assert_eq!(h.epoch_at(99, 4), 0);
        assert_eq!(h.epoch_at(100, 4), 1);
        assert_eq!(h.epoch_at(260, 4), 4);
    }

    #[test]
    fn an_epoch_below_every_kept_one_ends_where_the_first_kept_starts() {
        let mut h = EpochHistory::default();
        for e in 1..=(MAX_ENTRIES as i32 + 10) {
            h.started(e, i64::from(e) * 10);
        }
        assert_eq!(h.entries().len(), MAX_ENTRIES);
        assert_eq!(h.entries()[0], (11, 110));
        // Epoch 3 is forgotten: the answer is still at or above its end.
        let (_, end) = h.end_offset_for(3, 74, 1000);
        assert_eq!(end, 110);
    }

    #[test]
    fn a_start_at_or_below_the_latest_replaces_the_entries_from_it() {
        let mut h = history(&[(1, 10), (2, 20)]);
        h.started(2, 20);
        assert_eq!(h.entries(), &[(1, 10), (2, 20)]);
        h.started(1, 10);
        assert_eq!(h.entries(), &[(1, 10)]);
        h.started(0, 5);
        assert_eq!(h.entries(), &[(1, 10)]);
    }
}
