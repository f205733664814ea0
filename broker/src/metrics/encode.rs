//! Turns the reports of every shard (and the controller's state) into
//! the OpenMetrics text format Prometheus scrapes, with the `prometheus-client` crate's encoder.
//! Runs on shard 0 when `/metrics` is scraped.
//!
//! Every series of a shard carries `shard` and `node` labels; partition
//! series carry `topic` and `partition`; consumer lag is computed here, from
//! the committed offsets the coordinating shard reports and the high
//! watermarks the leading shards report.
//!
//! Pure: takes reports, returns text. Never blocks, never fails on odd data
//! (a lag below zero, e.g. a commit past a truncated log, is shown as 0).

use std::collections::HashMap;

use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use storage::histogram::HistogramSnapshot;

use crate::controller::QuorumState;
use crate::metrics::report::ShardReport;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(HistogramSnapshot),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// Families in the order they were first added.
#[derive(Debug, Default)]
struct Families {
    list: Vec<Family>,
    index: HashMap<&'static str, usize>,
}

impl Families {
    fn add(&mut self, name: &'static str, help: &'static str, labels: Labels, value: Value) {
        let kind = match value {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) => MetricType::Gauge,
            Value::Histogram(_) => MetricType::Histogram,
        };
        let i = *self.index.entry(name).or_insert_with(|| {
            self.list.push(Family {
                name,
                help,
                kind,
                samples: Vec::new(),
            });
            self.list.len() - 1
        });
        self.list[i].samples.push((labels, value));
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        self.add(name, help, labels, Value::Counter(v));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: i64) {
        self.add(name, help, labels, Value::Gauge(v));
    }

    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        h: HistogramSnapshot,
    ) {
        self.add(name, help, labels, Value::Histogram(h));
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.list {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.samples {
                let mut s = m.encode_family(labels)?;
                match value {
                    Value::Counter(v) => s.encode_counter::<NoLabelSet, _, u64>(v, None)?,
                    Value::Gauge(v) => s.encode_gauge(v)?,
                    Value::Histogram(h) => s.encode_histogram::<NoLabelSet>(
                        h.sum_seconds(),
                        h.count,
                        &h.buckets_seconds(),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| key.to_string(), |k| format!("{k:?}"))
}

/// The text `/metrics` answers.
pub fn encode(reports: &[ShardReport], quorum: Option<&QuorumState>) -> String {
    let mut f = Families::default();
    let mut high_watermarks: HashMap<(&str, i32), i64> = HashMap::new();
    for r in reports {
        let sl = || -> Labels {
            vec![
                ("shard", r.shard.to_string()),
                ("node", r.node_id.to_string()),
            ]
        };
        let c = &r.counters;
        for (api, n, latency) in &c.apis {
            let mut l = sl();
            l.push(("api", api_name(*api)));
            f.counter(
                "broker_kafka_requests",
                "Kafka requests handled.",
                l.clone(),
                *n,
            );
            f.histogram(
                "broker_kafka_request_duration_seconds",
                "Time from a request decoded to its response ready (Fetch includes its wait).",
                l,
                *latency,
            );
        }
        for (api, code, n) in &c.errors {
            let mut l = sl();
            l.push(("api", api_name(*api)));
            l.push(("error", crate::metrics::errors::kafka_name(*code)));
            f.counter(
                "broker_kafka_errors",
                "Error codes in responses, one per topic, partition or group entry that carries one.",
                l,
                *n,
            );
        }
        f.counter(
            "broker_slow_requests",
            "Requests slower than slow_request_ms.",
            sl(),
            c.slow_requests,
        );
        for (api, (n, ms)) in ["Produce", "Fetch"].into_iter().zip(c.throttled) {
            let mut l = sl();
            l.push(("api", api.to_string()));
            f.counter(
                "broker_quota_throttled_responses",
                "Responses that carried a client-quota throttle time.",
                l.clone(),
                n,
            );
            f.counter(
                "broker_quota_throttle_ms",
                "Throttle time handed out by client quotas, in ms.",
                l,
                ms,
            );
        }
        f.gauge(
            "broker_connections",
            "Client connections open.",
            sl(),
            c.connections_open as i64,
        );
        f.counter(
            "broker_connections_accepted",
            "Client connections accepted.",
            sl(),
            c.connections_total,
        );
        f.counter(
            "broker_bytes_in",
            "Record bytes acknowledged to producers.",
            sl(),
            c.totals.bytes_in,
        );
        f.counter(
            "broker_records_in",
            "Records acknowledged to producers.",
            sl(),
            c.totals.records_in,
        );
        f.counter(
            "broker_bytes_out",
            "Record bytes sent in fetch responses.",
            sl(),
            c.totals.bytes_out,
        );
        f.counter(
            "broker_records_out",
            "Records sent in fetch responses.",
            sl(),
            c.totals.records_out,
        );
        f.gauge(
            "broker_metadata_version",
            "Metadata log index of the image this shard serves.",
            sl(),
            r.metadata_version as i64,
        );
        f.gauge(
            "broker_partitions_led",
            "Partitions this shard leads.",
            sl(),
            r.partitions.len() as i64,
        );
        f.gauge(
            "broker_share_sessions",
            "Share sessions (KIP-932) open on this shard.",
            sl(),
            r.share.sessions as i64,
        );
        f.gauge(
            "broker_share_partitions",
            "Share-partitions whose record states this shard holds.",
            sl(),
            r.share.partitions as i64,
        );
        f.gauge(
            "broker_share_records_in_flight",
            "Records of share-partitions between their start offset and the last one handed out.",
            sl(),
            r.share.records_in_flight as i64,
        );

        if let Some(w) = &r.wal {
            f.counter(
                "broker_wal_appends",
                "Appends acknowledged by the WAL slice.",
                sl(),
                w.stats.appends,
            );
            f.counter(
                "broker_wal_writes",
                "Device writes of the WAL slice.",
                sl(),
                w.stats.writes,
            );
            f.counter(
                "broker_wal_flushes",
                "Flush groups of the WAL slice made durable (by one fdatasync each, or by O_DSYNC writes with wal_dsync).",
                sl(),
                w.stats.flushes,
            );
            f.counter(
                "broker_wal_written_bytes",
                "Bytes written to the WAL slice, padding included.",
                sl(),
                w.stats.bytes_written,
            );
            f.gauge(
                "broker_wal_used_bytes",
                "WAL slice bytes in use (not yet trimmed).",
                sl(),
                w.used_bytes as i64,
            );
            f.gauge(
                "broker_wal_capacity_bytes",
                "WAL slice size.",
                sl(),
                w.capacity_bytes as i64,
            );
            f.gauge(
                "broker_wal_failed",
                "1 once the WAL slice failed a write or flush.",
                sl(),
                i64::from(w.failed),
            );
            f.histogram(
                "broker_wal_flush_duration_seconds",
                "WAL fdatasync latency (no samples with wal_dsync: its writes are durable alone).",
                sl(),
                w.flush,
            );
        }
        f.histogram(
            "broker_wal_append_duration_seconds",
            "From an append's WAL write queued to it being durable.",
            sl(),
            c.wal_append,
        );

        let u = &r.upload;
        f.counter(
            "broker_upload_objects",
            "Stream-set objects uploaded and committed.",
            sl(),
            u.objects,
        );
        f.counter(
            "broker_upload_bytes",
            "Bytes uploaded in stream-set objects.",
            sl(),
            u.bytes,
        );
        f.counter(
            "broker_upload_failures",
            "Upload rounds that failed (retried).",
            sl(),
            u.failures,
        );
        f.gauge(
            "broker_upload_backlog_bytes",
            "Log-cache bytes not yet in object storage.",
            sl(),
            r.cache.unuploaded_bytes as i64,
        );
        f.histogram(
            "broker_upload_duration_seconds",
            "One upload round: build, put, commit.",
            sl(),
            c.upload,
        );

        if let Some(s) = &r.store {
            for (kind, n) in [
                ("put", s.puts),
                ("get", s.gets),
                ("head", s.heads),
                ("delete", s.deletes),
                ("list", s.lists),
            ] {
                let mut l = sl();
                l.push(("kind", kind.to_string()));
                f.counter(
                    "broker_object_store_requests",
                    "Object-store requests by kind.",
                    l,
                    n,
                );
            }
            f.counter(
                "broker_object_store_retries",
                "Object-store requests retried.",
                sl(),
                s.retries,
            );
            f.counter(
                "broker_object_store_failures",
                "Object-store requests that failed after their retries.",
                sl(),
                s.failures,
            );
            for (cause, n) in s.errors.by_cause() {
                let mut l = sl();
                l.push(("cause", cause.to_string()));
                f.counter(
                    "broker_object_store_errors",
                    "Failed object-store attempts (retried or not) by cause: throttled (HTTP 429/503), server (other 5xx), client (other 4xx), not_found, timeout, io, invalid, config.",
                    l,
                    n,
                );
            }
            for (dir, n) in [("put", s.bytes_put), ("get", s.bytes_got)] {
                let mut l = sl();
                l.push(("direction", dir.to_string()));
                f.counter(
                    "broker_object_store_bytes",
                    "Bytes sent to and read from the object store.",
                    l,
                    n,
                );
            }
        }
        f.gauge(
            "broker_log_cache_bytes",
            "Bytes held by the partitions' log caches.",
            sl(),
            r.cache.log_cache_bytes as i64,
        );
        f.gauge(
            "broker_block_cache_bytes",
            "Bytes held by the cold-read block cache.",
            sl(),
            r.cache.block_cache_bytes as i64,
        );
        if let Some(rd) = &r.reader {
            f.counter(
                "broker_block_cache_hits",
                "Cold-read blocks found in the block cache.",
                sl(),
                rd.block_hits,
            );
            f.counter(
                "broker_block_cache_misses",
                "Cold-read blocks fetched from the object store.",
                sl(),
                rd.block_misses,
            );
            f.counter(
                "broker_cold_read_bytes",
                "Bytes fetched from the object store for reads.",
                sl(),
                rd.bytes_fetched,
            );
            f.counter(
                "broker_cold_read_requests",
                "Object-store GETs for reads.",
                sl(),
                rd.gets,
            );
        }

        for p in &r.partitions {
            high_watermarks.insert((p.topic.as_str(), p.partition), p.high_watermark);
            let pl = || -> Labels {
                let mut l = sl();
                l.push(("topic", p.topic.clone()));
                l.push(("partition", p.partition.to_string()));
                l
            };
            f.counter(
                "broker_partition_bytes_in",
                "Record bytes acknowledged, per partition.",
                pl(),
                p.io.bytes_in,
            );
            f.counter(
                "broker_partition_records_in",
                "Records acknowledged, per partition.",
                pl(),
                p.io.records_in,
            );
            f.counter(
                "broker_partition_bytes_out",
                "Record bytes fetched, per partition.",
                pl(),
                p.io.bytes_out,
            );
            f.counter(
                "broker_partition_records_out",
                "Records fetched, per partition.",
                pl(),
                p.io.records_out,
            );
            f.gauge(
                "broker_partition_high_watermark",
                "High watermark.",
                pl(),
                p.high_watermark,
            );
            f.gauge(
                "broker_partition_log_start_offset",
                "Log start offset.",
                pl(),
                p.log_start,
            );
            f.gauge(
                "broker_partition_uploaded_offset",
                "Offset below which the partition is in object storage.",
                pl(),
                p.uploaded_end,
            );
            f.gauge(
                "broker_partition_object_bytes",
                "Bytes of the partition in committed objects.",
                pl(),
                p.object_bytes as i64,
            );
            f.gauge(
                "broker_partition_cached_bytes",
                "Bytes of the partition in its log cache.",
                pl(),
                p.cached_bytes as i64,
            );
        }

        let mut by_state: HashMap<(&str, &str), i64> = HashMap::new();
        for g in &r.groups {
            *by_state
                .entry((g.group_type, g.state.as_str()))
                .or_default() += 1;
            let gl = || -> Labels {
                let mut l = sl();
                l.push(("group", g.id.clone()));
                l
            };
            f.gauge(
                "broker_group_members",
                "Members of a consumer group.",
                gl(),
                g.members as i64,
            );
            f.counter(
                "broker_group_rebalances",
                "Rebalances of a group since it was created (its generation or group epoch).",
                gl(),
                u64::try_from(g.generation).unwrap_or(0),
            );
        }
        let mut states: Vec<_> = by_state.into_iter().collect();
        states.sort();
        for ((kind, state), n) in states {
            let mut l = sl();
            l.push(("type", kind.to_string()));
            l.push(("state", state.to_string()));
            f.gauge(
                "broker_groups",
                "Consumer groups this shard coordinates, by type and state.",
                l,
                n,
            );
        }
    }
    for r in reports {
        for g in &r.groups {
            for (topic, partition, offset) in &g.committed {
                let Some(hw) = high_watermarks.get(&(topic.as_str(), *partition)) else {
                    continue;
                };
                let l = vec![
                    ("group", g.id.clone()),
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ];
                f.gauge(
                    "broker_consumer_lag",
                    "High watermark minus the group's committed offset.",
                    l,
                    (hw - offset).max(0),
                );
            }
        }
    }
    for (api, stage, h) in crate::metrics::report::merged_stages(reports) {
        if h.is_empty() {
            continue;
        }
        for q in [0.5, 0.99] {
            let l = vec![
                ("api", api.clone()),
                ("stage", stage.to_string()),
                ("quantile", q.to_string()),
            ];
            f.gauge(
                "broker_stage_latency_microseconds",
                "Where produce and fetch time goes, all shards together (HDR, since start): \
                 frame_read, decode, handle, encode, write_wait, write, total; validate \
                 (Produce); WAL queue_wait, pack, write, flush.",
                l,
                (h.value_at_quantile(q) / 1000) as i64,
            );
        }
    }
    if let Some(q) = quorum {
        f.gauge(
            "broker_controller_leader",
            "Raft id of the metadata quorum's leader (-1: none).",
            vec![],
            q.leader.map_or(-1, |l| l as i64),
        );
        f.gauge(
            "broker_controller_term",
            "Raft term of the metadata quorum.",
            vec![],
            q.term as i64,
        );
        f.gauge(
            "broker_controller_voters",
            "Voters in the metadata quorum.",
            vec![],
            q.voters.len() as i64,
        );
        f.gauge(
            "broker_controller_last_log_index",
            "Index of the last metadata log entry.",
            vec![],
            q.last_log_index.map_or(-1, |i| i as i64),
        );
        f.gauge(
            "broker_controller_last_applied_index",
            "Index of the last metadata log entry applied.",
            vec![],
            q.last_applied.map_or(-1, |i| i as i64),
        );
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(f));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!("encoding metrics failed: {e}");
    }
    out
}
