"""Admin APIs that Kafka 4.x's AdminClient and tools call, with
kafka-python 3's and confluent-kafka's admin clients, answered as Kafka
answers them on a cluster like this (no authorizer, one replica per
partition, no reassignment in progress):

* DescribeTopicPartitions, paged by cursor;
* DescribeLogDirs: each node's data directory and the size of each
  partition it leads;
* ListConfigResources: topics and nodes;
* ListPartitionReassignments: none;
* ElectLeaders: ELECTION_NOT_NEEDED, UNKNOWN_TOPIC_OR_PARTITION;
* DescribeAcls/CreateAcls: SECURITY_DISABLED.
"""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, ResourcePatternType, ResourceType)
from kafka import KafkaAdminClient

from test_idempotence import create_topic

BROKER_PARAMS = {"shards": 2, "broker_id": 0}


@pytest.fixture(scope="module")
def topic(broker):
    name = f"admin-{uuid.uuid4().hex[:8]}"
    create_topic(broker, name, 5)
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    for i in range(50):
        p.produce(name, value=b"x" * 100, partition=i % 5)
    assert p.flush(30) == 0
    return name


@pytest.fixture(scope="module")
def kp_admin(broker):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield a
    a.close()


def test_describe_topic_partitions_pages_by_cursor(broker, topic, kp_admin):
    full = kp_admin.describe_topic_partitions([topic])["topics"]
    assert [t["name"] for t in full] == [topic]
    parts = full[0]["partitions"]
    assert [p["partition_index"] for p in parts] == list(range(5))
    leaders = {p["leader_id"] for p in parts}
    assert leaders == set(broker.expected_nodes)
    assert all(p["replica_nodes"] == [p["leader_id"]] == p["isr_nodes"] for p in parts)
    # Two partitions per page: the cursor walks through the rest.
    pages, cursor = [], None
    for _ in range(5):
        page = kp_admin.describe_topic_partitions([topic], response_partition_limit=2,
                                                  cursor=cursor)
        pages.append([p["partition_index"] for t in page["topics"] for p in t["partitions"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
        assert cursor["topic_name"] == topic
    assert pages == [[0, 1], [2, 3], [4]]
    unknown = kp_admin.describe_topic_partitions([f"nope-{uuid.uuid4().hex[:6]}"])["topics"]
    assert unknown[0]["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION


def test_describe_log_dirs_sizes_each_nodes_partitions(broker, topic, kp_admin):
    result = kp_admin.describe_log_dirs()
    by_node = {}
    for b in result:
        for d in b["log_dirs"]:
            assert d["error_code"] == 0
            assert d["log_dir"] == str(broker.data_dir)
            for t in d["topics"]:
                if t["name"] == topic:
                    for p in t["partitions"]:
                        by_node[p["partition_index"]] = (b["broker"], p["partition_size"])
    assert sorted(by_node) == list(range(5)), by_node
    assert all(size >= 10 * 100 for _, size in by_node.values()), by_node
    leaders = {p["partition_index"]: p["leader_id"]
               for p in kp_admin.describe_topic_partitions([topic])["topics"][0]["partitions"]}
    assert {p: n for p, (n, _) in by_node.items()} == leaders


def test_list_config_resources_and_reassignments(broker, topic, kp_admin):
    res = kp_admin.list_config_resources()
    assert topic in res["topic"]
    assert sorted(int(n) for n in res["broker"]) == sorted(broker.expected_nodes)
    assert kp_admin.list_partition_reassignments() == {}


def test_elect_leaders_is_not_needed(broker, topic, kp_admin):
    import kafka.errors as Errors
    r = kp_admin.elect_leaders(0, {topic: [0, 1]})
    codes = {(t.topic, p.partition_id): p.error_code for t in r.replica_election_results
             for p in t.partition_result}
    assert codes == {(topic, 0): 84, (topic, 1): 84}  # ELECTION_NOT_NEEDED
    with pytest.raises(Errors.UnknownTopicOrPartitionError):
        kp_admin.elect_leaders(0, {f"nope-{uuid.uuid4().hex[:6]}": [0]})


def test_acls_answer_security_disabled(broker, kp_admin):
    import kafka.errors as Errors
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePatternFilter)
    from kafka.admin import ResourceType as KpResourceType
    flt = ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                    permission_type=ACLPermissionType.ANY,
                    resource_pattern=ResourcePatternFilter(KpResourceType.ANY, None,
                                                           ACLResourcePatternType.ANY))
    with pytest.raises(Errors.SecurityDisabledError):
        kp_admin.describe_acls(flt)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    binding = AclBinding(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL, "User:a", "*",
                         AclOperation.READ, AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as e:
        admin.create_acls([binding])[binding].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.SECURITY_DISABLED
    fut = admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL,
                                              None, None, AclOperation.ANY,
                                              AclPermissionType.ANY)])
    with pytest.raises(KafkaException) as e:
        list(fut.values())[0].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.SECURITY_DISABLED


def test_describe_quorum_names_the_one_voter(broker, topic):
    """Asked through either shard (shard 1 forwards to the controller)."""
    for port in broker.ports:
        a = KafkaAdminClient(bootstrap_servers=f"{broker.host}:{port}")
        try:
            q = a.describe_metadata_quorum()
        finally:
            a.close()
        (t,) = q["topics"]
        assert t["topic_name"] == "__cluster_metadata"
        (p,) = t["partitions"]
        controller = min(broker.expected_nodes)  # node of shard 0
        assert p["leader_id"] == controller and p["leader_epoch"] >= 1
        # Creating the topic committed records: the log is not empty.
        assert p["high_watermark"] > 1
        assert [v["replica_id"] for v in p["current_voters"]] == [controller]
        assert p["current_voters"][0]["log_end_offset"] >= p["high_watermark"]
        assert p["observers"] == []
        assert q["nodes"][0]["listeners"][0]["port"] == broker.ports[0]


def test_alter_replica_log_dirs_only_to_the_one_dir(broker, topic, kp_admin):
    import kafka.errors as Errors
    leaders = {p["partition_index"]: p["leader_id"]
               for p in kp_admin.describe_topic_partitions([topic])["topics"][0]["partitions"]}
    node = leaders[0]
    r = kp_admin.alter_replica_log_dirs({(topic, 0, node): str(broker.data_dir)})
    assert all(v in (None, Errors.NoError) for v in r.values()), r
    r = kp_admin.alter_replica_log_dirs({(topic, 0, node): "/elsewhere"})
    assert list(r.values()) == [Errors.LogDirNotFoundError], r


def test_broker_configs_are_read_only(broker, kp_admin):
    from kafka.admin import ConfigResource, ConfigResourceType
    res = kp_admin.describe_configs([ConfigResource(ConfigResourceType.BROKER,
                                                    str(min(broker.expected_nodes)))],
                                    config_filter="all")
    (configs,) = res["broker"].values()
    assert configs["advertised.listeners"]["read_only"] is True, configs
    assert configs["broker.id"]["read_only"] is True, configs
