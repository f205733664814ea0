//! Which partitions of a coordinator's internal topic (`__consumer_offsets`
//! for groups, `__transaction_state` for transactions) this shard leads, and
//! which of them it has replayed: the bookkeeping the group and transaction
//! coordinators share.
//!
//! Pure state on the shard's executor; the coordinators do the replaying.
//! A load carries a token, so a load that a newer one superseded (a reload
//! after WAL recovery) finds out and stops.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use kafka_protocol::ResponseError;

use crate::metadata::MetadataImage;

pub struct CoordinatorPartitions {
    topic: &'static str,
    /// Partitions led here and replayed.
    loaded: RefCell<HashSet<i32>>,
    /// Partitions being replayed: COORDINATOR_LOAD_IN_PROGRESS.
    loading: RefCell<HashSet<i32>>,
    /// The latest load of each partition.
    load_token: RefCell<HashMap<i32, u64>>,
    next_load_token: Cell<u64>,
}

/// What a new image changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// No longer led here: forget their state.
    pub unload: Vec<i32>,
    /// Newly led: replay them (already marked loading).
    pub load: Vec<i32>,
    /// Whether this shard leads any partition of the topic.
    pub leads_any: bool,
}

impl CoordinatorPartitions {
    pub fn new(topic: &'static str) -> Self {
        Self {
            topic,
            loaded: RefCell::new(HashSet::new()),
            loading: RefCell::new(HashSet::new()),
            load_token: RefCell::new(HashMap::new()),
            next_load_token: Cell::new(0),
        }
    }

    /// Partitions of the topic that `node_id` leads in `image`, ascending.
    pub fn led(&self, image: &MetadataImage, node_id: i32) -> Vec<i32> {
        image
            .topic(self.topic)
            .map(|t| {
                t.leader_nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, &l)| l == node_id)
                    .map(|(p, _)| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Compares what `image` says this node leads with what it knows.
    pub fn on_image(&self, image: &MetadataImage, node_id: i32) -> Changes {
        let led: HashSet<i32> = self.led(image, node_id).into_iter().collect();
        let known: HashSet<i32> = self
            .loaded
            .borrow()
            .union(&self.loading.borrow())
            .copied()
            .collect();
        let mut unload: Vec<i32> = known.difference(&led).copied().collect();
        let mut load: Vec<i32> = led.difference(&known).copied().collect();
        unload.sort_unstable();
        load.sort_unstable();
        for p in &unload {
            self.loaded.borrow_mut().remove(p);
            self.loading.borrow_mut().remove(p);
        }
        self.loading.borrow_mut().extend(load.iter().copied());
        Changes {
            unload,
            load,
            leads_any: !led.is_empty(),
        }
    }

    /// Marks every led partition loading again (after WAL recovery) and
    /// returns them. Loads still running are superseded here, not when the
    /// reload reaches their partition: one that finished in between would
    /// serve the log as it was before recovery, and the reload would then
    /// wipe what clients did meanwhile (a member that joined).
    pub fn reload(&self, image: &MetadataImage, node_id: i32) -> Vec<i32> {
        let led = self.led(image, node_id);
        for p in &led {
            self.begin_load(*p);
        }
        led
    }

    /// Starts a load of `p`; the token tells whether it was superseded.
    pub fn begin_load(&self, p: i32) -> u64 {
        let token = self.next_load_token.get();
        self.next_load_token.set(token + 1);
        self.load_token.borrow_mut().insert(p, token);
        self.loading.borrow_mut().insert(p);
        self.loaded.borrow_mut().remove(&p);
        token
    }

    pub fn superseded(&self, p: i32, token: u64) -> bool {
        self.load_token.borrow().get(&p) != Some(&token)
    }

    /// Ends a load: `p` is served from now on if `replayed`.
    pub fn end_load(&self, p: i32, replayed: bool) {
        self.loading.borrow_mut().remove(&p);
        if replayed {
            self.loaded.borrow_mut().insert(p);
        }
    }

    /// Whether requests for partition `p` may be served: the error a
    /// client gets while it is being replayed.
    pub fn check_loaded(&self, p: i32) -> Result<(), ResponseError> {
        if self.loading.borrow().contains(&p) || !self.loaded.borrow().contains(&p) {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        Ok(())
    }

    pub fn is_loaded(&self, p: i32) -> bool {
        self.loaded.borrow().contains(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_are_tracked_and_superseded() {
        let c = CoordinatorPartitions::new("__t");
        assert_eq!(
            c.check_loaded(0),
            Err(ResponseError::CoordinatorLoadInProgress)
        );
        let t1 = c.begin_load(0);
        let t2 = c.begin_load(0);
        assert!(c.superseded(0, t1));
        assert!(!c.superseded(0, t2));
        c.end_load(0, true);
        assert_eq!(c.check_loaded(0), Ok(()));
        assert!(c.is_loaded(0));
        c.begin_load(1);
        c.end_load(1, false);
        assert!(!c.is_loaded(1));
    }

    #[test]
    fn a_reload_supersedes_loads_in_flight_at_once() {
        use crate::controller::records::Record;
        let mut image = MetadataImage::default();
        let id = uuid::Uuid::from_u128(1);
        image.apply(&Record::TopicCreated {
            id,
            name: "__t".into(),
            configs: Default::default(),
        });
        image.apply(&Record::PartitionsAdded {
            topic_id: id,
            first: 0,
            leaders: vec![0, 0],
        });
        let c = CoordinatorPartitions::new("__t");
        assert_eq!(c.on_image(&image, 0).load, vec![0, 1]);
        let before = [c.begin_load(0), c.begin_load(1)];
        assert_eq!(c.reload(&image, 0), vec![0, 1]);
        // Both earlier loads are stale now, before the reload replays
        // either partition: neither may end as loaded.
        assert!(before
            .iter()
            .enumerate()
            .all(|(p, &t)| c.superseded(p as i32, t)));
        assert_eq!(
            c.check_loaded(1),
            Err(ResponseError::CoordinatorLoadInProgress)
        );
    }
}
