//! The metadata image: topics, their ids, partitions, the shard leading each
//! partition, and topic configs; and the commands that change it.
//!
//! Shard 0 holds the only writable copy (`TopicTable`) and applies commands;
//! every shard reads an immutable `Arc<MetadataImage>` it received over the
//! channel mesh. Applying a command is pure logic: no I/O, no await.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::topic_config;

/// One topic as every shard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    /// `leaders[p]` is the shard that leads partition `p`.
    pub leaders: Vec<usize>,
    pub configs: BTreeMap<String, String>,
}

/// An immutable snapshot of the cluster's metadata.
#[derive(Debug, Clone, Default)]
pub struct MetadataImage {
    pub version: u64,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub ids: HashMap<Uuid, String>,
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicMeta>> {
        self.ids.get(id).and_then(|n| self.topics.get(n))
    }
}

/// A change to the metadata, as submitted to shard 0.
#[derive(Debug, Clone)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
        /// Leader shard per partition when the client assigned replicas.
        assignment: Option<Vec<usize>>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        assignment: Option<Vec<usize>>,
    },
}

/// A refused command: the Kafka error and the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: i16,
    pub message: String,
}

impl CommandError {
    pub fn new(err: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code: err.code(),
            message: message.into(),
        }
    }
}

/// What a successful command did (the topic id it touched).
pub type CommandResult = Result<Uuid, CommandError>;

/// The writable table on shard 0.
#[derive(Debug)]
pub struct TopicTable {
    image: MetadataImage,
    shards: usize,
    /// Next shard to receive a new partition: spreads all partitions of all
    /// topics round-robin.
    next_shard: usize,
}

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), CommandError> {
    let bad = |m: String| Err(CommandError::new(ResponseError::InvalidTopicException, m));
    if name.is_empty() || name == "." || name == ".." {
        return bad(format!("topic name {name:?} is illegal"));
    }
    if name.len() > 249 {
        return bad("topic name is longer than 249 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad(format!(
            "topic name {name:?} has characters other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl TopicTable {
    pub fn new(shards: usize) -> Self {
        Self {
            image: MetadataImage::default(),
            shards,
            next_shard: 0,
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Applies `cmds` (or only checks them when `dry_run`), returning one
    /// result per command and bumping the image version if anything changed.
    pub fn apply(&mut self, cmds: &[Command], dry_run: bool) -> Vec<CommandResult> {
        let before = (self.image.clone(), self.next_shard);
        let results: Vec<_> = cmds.iter().map(|c| self.apply_one(c)).collect();
        if dry_run {
            (self.image, self.next_shard) = before;
        } else if results.iter().any(|r| r.is_ok()) {
            self.image.version += 1;
        }
        results
    }

    fn apply_one(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::CreateTopic {
                name,
                partitions,
                configs,
                assignment,
            } => self.create_topic(name, *partitions, configs, assignment.as_deref()),
            Command::DeleteTopic { name } => self.delete_topic(name),
            Command::CreatePartitions {
                name,
                count,
                assignment,
            } => self.create_partitions(name, *count, assignment.as_deref()),
        }
    }

    fn leaders(&mut self, n: usize, assignment: Option<&[usize]>) -> Vec<usize> {
        if let Some(a) = assignment {
            return a.to_vec();
        }
        (0..n)
            .map(|_| {
                let s = self.next_shard % self.shards;
                self.next_shard = self.next_shard.wrapping_add(1);
                s
            })
            .collect()
    }

    fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
        assignment: Option<&[usize]>,
    ) -> CommandResult {
        validate_topic_name(name)?;
        if self.image.topics.contains_key(name) {
            return Err(CommandError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {name} already exists"),
            ));
        }
        if partitions < 1 {
            return Err(CommandError::new(
                ResponseError::InvalidPartitions,
                format!("number of partitions must be at least 1, got {partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(CommandError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than this broker allows (100000)"),
            ));
        }
        for (k, v) in configs {
            topic_config::validate(k, v)
                .map_err(|m| CommandError::new(ResponseError::InvalidConfig, m))?;
        }
        let id = Uuid::new_v4();
        let leaders = self.leaders(partitions as usize, assignment);
        let meta = TopicMeta {
            name: name.to_string(),
            id,
            leaders,
            configs: configs.clone(),
        };
        self.image.ids.insert(id, name.to_string());
        self.image.topics.insert(name.to_string(), Arc::new(meta));
        Ok(id)
    }

    fn delete_topic(&mut self, name: &str) -> CommandResult {
        let Some(meta) = self.image.topics.remove(name) else {
            return Err(CommandError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            ));
        };
        self.image.ids.remove(&meta.id);
        Ok(meta.id)
    }

    fn create_partitions(
        &mut self,
        name: &str,
        count: i32,
        assignment: Option<&[usize]>,
    ) -> CommandResult {
        let Some(meta) = self.image.topics.get(name).cloned() else {
            return Err(CommandError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            ));
        };
        let current = meta.leaders.len() as i32;
        if count <= current {
            return Err(CommandError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic {name} has {current} partitions; the new count {count} must be larger"
                ),
            ));
        }
        if count > 100_000 {
            return Err(CommandError::new(
                ResponseError::InvalidPartitions,
                format!("{count} partitions is more than this broker allows (100000)"),
            ));
        }
        if assignment.is_some_and(|a| a.len() as i32 != count - current) {
            return Err(CommandError::new(
                ResponseError::InvalidReplicaAssignment,
                "assignment must name one leader per new partition",
            ));
        }
        let mut new = (*meta).clone();
        let added = self.leaders((count - current) as usize, assignment);
        new.leaders.extend(added);
        self.image.topics.insert(name.to_string(), Arc::new(new));
        Ok(meta.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: i32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            configs: BTreeMap::new(),
            assignment: None,
        }
    }

    #[test]
    fn partitions_spread_round_robin() {
        let mut t = TopicTable::new(2);
        assert!(t
            .apply(&[create("a", 4), create("b", 1)], false)
            .iter()
            .all(|r| r.is_ok()));
        assert_eq!(t.image().topic("a").unwrap().leaders, vec![0, 1, 0, 1]);
        assert_eq!(t.image().topic("b").unwrap().leaders, vec![0]);
        assert_eq!(t.image().version, 1);
    }

    #[test]
    fn errors() {
        let mut t = TopicTable::new(2);
        t.apply(&[create("a", 1)], false);
        let r = t.apply(
            &[create("a", 1), create("bad name", 1), create("z", 0)],
            false,
        );
        let codes: Vec<i16> = r.iter().map(|r| r.as_ref().unwrap_err().code).collect();
        assert_eq!(codes, vec![36, 17, 37]);
        assert_eq!(t.image().version, 1, "nothing changed");
        let mut cfg = BTreeMap::new();
        cfg.insert("retention.ms".to_string(), "x".to_string());
        let r = t.apply(
            &[Command::CreateTopic {
                name: "c".into(),
                partitions: 1,
                configs: cfg,
                assignment: None,
            }],
            false,
        );
        assert_eq!(r[0].as_ref().unwrap_err().code, 40);
    }

    #[test]
    fn dry_run_changes_nothing() {
        let mut t = TopicTable::new(2);
        assert!(t.apply(&[create("a", 3)], true)[0].is_ok());
        assert!(t.image().topic("a").is_none());
        assert_eq!(t.image().version, 0);
    }

    #[test]
    fn delete_and_grow() {
        let mut t = TopicTable::new(3);
        t.apply(&[create("a", 2)], false);
        let grow = Command::CreatePartitions {
            name: "a".into(),
            count: 5,
            assignment: None,
        };
        assert!(t.apply(std::slice::from_ref(&grow), false)[0].is_ok());
        assert_eq!(t.image().topic("a").unwrap().leaders.len(), 5);
        assert_eq!(t.apply(&[grow], false)[0].as_ref().unwrap_err().code, 37);
        let id = t.image().topic("a").unwrap().id;
        assert!(t.apply(&[Command::DeleteTopic { name: "a".into() }], false)[0].is_ok());
        assert!(t.image().topic_by_id(&id).is_none());
        let del = Command::DeleteTopic { name: "a".into() };
        assert_eq!(t.apply(&[del], false)[0].as_ref().unwrap_err().code, 3);
    }
}
