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
* DescribeAcls/CreateAcls: SECURITY_DISABLED;
* ApiVersions features and UpdateFeatures: group.version fixed at 1,
  transaction.version at 2;
* DescribeUserScramCredentials: no users at first;
  AlterUserScramCredentials sets and deletes credentials, checked per user
  as Kafka checks them, kept across a restart; delegation tokens: not
  allowed on a PLAINTEXT listener, nor are SaslHandshake and
  SaslAuthenticate (ILLEGAL_SASL_STATE);
* DescribeClientQuotas: no quotas, filters checked as Kafka checks them;
* AlterConfigs (legacy): a topic's configs replaced;
* UnregisterBroker: an unknown or live broker refused.
"""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, ResourcePatternType, ResourceType)
import kafka.errors
from kafka import KafkaAdminClient

import kwire
from kwire import DESCRIBE_CLIENT_QUOTAS, Conn, Writer
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


def test_legacy_alter_configs_replaces_a_topics_configs(broker, kp_admin):
    """AlterConfigs, the legacy form that librdkafka's alter_configs still
    sends, replaces a topic's configs as Kafka does: what the request
    leaves out goes back to its default. validate_only changes nothing;
    an unknown config or a bad value is INVALID_CONFIG, an unknown topic
    UNKNOWN_TOPIC_OR_PARTITION."""
    import warnings
    from confluent_kafka.admin import ConfigResource, ConfigSource
    from kafka.admin import ConfigResource as KConfigResource, ConfigResourceType
    name = f"legacy-cfg-{uuid.uuid4().hex[:8]}"
    create_topic(broker, name, 1)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    keys = ("retention.ms", "cleanup.policy", "max.message.bytes")

    def described() -> dict:
        res = ConfigResource("topic", name)
        got = admin.describe_configs([res])[res].result(20)
        return {k: (got[k].value, got[k].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
                for k in keys}

    def alter(configs: dict, topic: str = name, validate_only: bool = False) -> None:
        res = ConfigResource("topic", topic, set_config=configs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            admin.alter_configs([res], validate_only=validate_only)[res].result(20)

    defaults = described()
    assert not any(dynamic for _, dynamic in defaults.values()), defaults
    alter({"retention.ms": "3600000", "cleanup.policy": "compact"})
    got = described()
    assert got["retention.ms"] == ("3600000", True) and got["cleanup.policy"] == ("compact", True)
    # Left out: back to the default.
    alter({"max.message.bytes": "100000"})
    got = described()
    assert got == {**defaults, "max.message.bytes": ("100000", True)}, got
    alter({"retention.ms": "5"}, validate_only=True)
    assert described() == got
    for configs, topic, code in (({"no.such.config": "1"}, name, KafkaError.INVALID_CONFIG),
                                 ({"retention.ms": "soon"}, name, KafkaError.INVALID_CONFIG),
                                 ({"retention.ms": "1"}, f"{name}-none",
                                  KafkaError.UNKNOWN_TOPIC_OR_PART)):
        with pytest.raises(KafkaException) as e:
            alter(configs, topic)
        assert e.value.args[0].code() == code, (configs, e.value)
    assert described() == got
    # kafka-python, made to send AlterConfigs rather than the incremental form.
    r = kp_admin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, name,
                                                configs={"retention.ms": "7200000"})],
                               incremental=False)
    assert "7200000" == described()["retention.ms"][0], r


def test_unregister_broker_refuses_a_live_or_unknown_broker(broker):
    """UnregisterBroker: an id never registered is BROKER_ID_NOT_REGISTERED,
    as in Kafka; this broker, live, is refused (INVALID_REQUEST: it would
    not register again while it runs). Unregistering a fenced broker is
    test_cluster's test_unclean_election_gives_up_a_lost_broker."""
    host, port = broker.bootstrap.split(",")[0].split(":")
    with kwire.Conn(host, int(port)) as c:
        err, msg = kwire.unregister_broker(c, 77)
        assert err == kwire.BROKER_ID_NOT_REGISTERED and "77" in msg, (err, msg)
        err, msg = kwire.unregister_broker(c, 0)
        assert err == kwire.INVALID_REQUEST and "is live" in msg, (err, msg)
    # Still registered and serving.
    assert Producer({"bootstrap.servers": broker.bootstrap,
                     "broker.address.family": "v4"}).list_topics(timeout=10).brokers


def test_api_versions_kafka_4_added(broker, topic):
    """The versions Kafka 4.x added that we advertise, answered as Kafka
    answers them: Metadata v13 (a top-level error code), DescribeGroups v6
    (GROUP_ID_NOT_FOUND with a message, KIP-1043), DescribeCluster v1/v2
    (endpoint types; fenced nodes on request), ListTransactions v2 (a
    transactional id pattern, KIP-1152), AlterPartitionReassignments v1
    (allow_replication_factor_change, KIP-860), FindCoordinator v6 (the
    share key type, KIP-932)."""
    from confluent_kafka import Consumer, TopicPartition
    u = uuid.uuid4().hex[:8]
    classic, modern = f"classic-{u}", f"modern-{u}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": classic})
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    c.close()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": modern, "group.protocol": "consumer"})
    c.subscribe([topic])
    deadline = time.monotonic() + 30
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(0.2)
    assert c.assignment(), "the consumer-protocol member got no assignment"
    for i in "ab":
        p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                      "transactional.id": f"tx-{i}-{u}"})
        p.init_transactions(20)
    ports = [int(hp.split(":")[1]) for hp in broker.bootstrap.split(",")]

    def describe(version: int, group: str) -> tuple:
        """DescribeGroups of `group` at its coordinator."""
        with kwire.Conn("127.0.0.1", ports[0]) as k:
            err, node = kwire.find_coordinator(k, group)
            assert err == 0, err
        with kwire.Conn("127.0.0.1", ports[node % 1000]) as k:
            (got,) = kwire.describe_groups(k, version, [group])
            return got

    # A group that is not there, or not a classic one: v6 says so.
    got = describe(6, classic)
    assert got[0] == 0 and got[3] == "Empty", got
    assert describe(6, f"none-{u}")[:2] == (69, f"Group none-{u} not found.")
    assert describe(5, f"none-{u}")[::3] == (0, "Dead")
    assert describe(6, modern) == (69, f"Group {modern} is not a classic group.", modern, "Dead")
    assert describe(5, modern)[::3] == (0, "Dead")
    with kwire.Conn("127.0.0.1", ports[0]) as k:
        assert topic in kwire.metadata(k, 13, [topic]).topics
        # DescribeCluster: every node a broker endpoint; none fenced here.
        err, _, nodes = kwire.describe_cluster(k, 2, include_fenced=True)
        assert err == 0 and [(n, f) for n, _, _, f in nodes] == \
            [(n, False) for n in sorted(broker.expected_nodes)], nodes
        assert kwire.describe_cluster(k, 1, endpoint_type=2)[0] == 114  # MISMATCHED_ENDPOINT_TYPE
        assert kwire.describe_cluster(k, 1, endpoint_type=7)[0] == 115  # UNSUPPORTED_ENDPOINT_TYPE
        # KIP-860: the one replica may not become two when the client forbids it.
        assert kwire.alter_partition_reassignment(k, 1, topic, 0, [0, 1], False)[0] == 38
        assert kwire.alter_partition_reassignment(k, 1, topic, 0, [0, 1], True)[0] == 39
        assert kwire.list_transactions_v2(k, "(")[0] == 128  # INVALID_REGULAR_EXPRESSION
        # FindCoordinator v6: a share-partition key (2) is
        # group:topic_id:partition, kept by the group's coordinator; a key
        # of another shape is INVALID_REQUEST. Groups are found as in v4.
        (bad,) = kwire.find_coordinators(k, 6, [f"share-{u}"], 2)
        assert bad[1:3] == (-1, 42) and "not a share coordinator key" in bad[3], bad
        (found,) = kwire.find_coordinators(k, 6, [classic], 0)
        assert found[2] == 0 and found[1] in broker.expected_nodes, found
        (share,) = kwire.find_coordinators(k, 6, [f"{classic}:{uuid.uuid4()}:3"], 2)
        assert share[1:3] == (found[1], 0), (share, found)
    # Transactions are listed by their coordinators: ask every node.
    listed = []
    for port in ports:
        with kwire.Conn("127.0.0.1", port) as k:
            err, ids = kwire.list_transactions_v2(k, f"tx-a-{u}|tx-.-{u}x")
            assert err == 0
            listed += ids
            # Whole ids: a pattern matching a part of one finds nothing.
            assert kwire.list_transactions_v2(k, f"tx-a")[1] == []
    c.close()
    assert listed == [f"tx-a-{u}"], listed


def test_list_offsets_v11_and_describe_log_dirs_v5(broker, topic, kp_admin):
    """ListOffsets v11 (KIP-1023): the earliest offset pending upload to
    tiered storage is answered as Kafka answers it for a log without remote
    storage, offset -1 with timestamp and epoch -1 (objects here are the log,
    not a tier); before v11, -6 is no special value. DescribeLogDirs v5
    (KIP-1066): no directory is cordoned."""
    ports = [int(hp.split(":")[1]) for hp in broker.bootstrap.split(",")]
    leader = {p["partition_index"]: p["leader_id"]
              for p in kp_admin.describe_topic_partitions([topic])["topics"][0]["partitions"]}
    with kwire.Conn("127.0.0.1", ports[leader[0] % 1000]) as k:
        assert kwire.list_offsets(k, 11, topic, 0, -6) == (0, -1, -1, -1)
        err, _, end, _ = kwire.list_offsets(k, 11, topic, 0, -1)
        assert err == 0 and end > 0, end
        assert kwire.list_offsets(k, 11, topic, 0, -2)[:3] == (0, -1, 0)
        assert kwire.list_offsets(k, 9, topic, 0, -5) == (0, -1, -1, -1)
    dirs = [d for b in kp_admin.describe_log_dirs() for d in b["log_dirs"]]
    assert dirs and all(d.get("is_cordoned") is False for d in dirs), dirs


def test_api_versions_v5_checks_the_cluster_and_node(broker, kp_admin):
    """ApiVersions v5 (KIP-1242): a client that names the cluster and node
    it means to reach gets the versions when both are this node's,
    REBOOTSTRAP_REQUIRED (129) with no versions when either is not, and
    INVALID_REQUEST (42) when it names only one; unnamed (bootstrapping)
    is served. Node ids are per shard, so each port checks its own."""
    nodes = sorted(broker.expected_nodes)
    with kwire.Conn(broker.host, broker.port_of_node(nodes[0])) as k:
        cluster = kwire.metadata(k, 12, []).cluster_id
    assert cluster and len(nodes) > 1
    for node in nodes:
        with kwire.Conn(broker.host, broker.port_of_node(node)) as k:
            ok = kwire.api_versions(k, 5, cluster, node)
            assert ok.error_code == 0 and ok.api_keys[kwire.API_VERSIONS] == (0, 5), ok
            assert kwire.api_versions(k, 5).error_code == 0
            for c, n, want in [(cluster, node + 1, 129), ("not-" + cluster, node, 129),
                               (cluster, -1, 42), (None, node, 42)]:
                got = kwire.api_versions(k, 5, c, n)
                assert (got.error_code, got.api_keys) == (want, {}), (c, n, got)
            # The connection stays open and served after a refusal.
            assert kwire.api_versions(k, 4).error_code == 0


def test_delete_groups_v3(broker, topic):
    """DeleteGroups v3 adds an error message, which Kafka 4.4 fills only for
    streams groups' topology errors: here it is null, for a deletion and a
    refusal alike, and the codes are v2's."""
    from confluent_kafka import Consumer, TopicPartition
    u = uuid.uuid4().hex[:8]
    done, busy, none = f"del-{u}", f"busy-{u}", f"none-{u}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": done})
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    c.close()
    live = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                     "group.id": busy})
    live.subscribe([topic])
    deadline = time.monotonic() + 30
    while not live.assignment() and time.monotonic() < deadline:
        live.poll(0.2)
    assert live.assignment()
    try:
        ports = [int(hp.split(":")[1]) for hp in broker.bootstrap.split(",")]
        for group, want in [(done, 0), (busy, 68), (none, 69)]:  # NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND
            with kwire.Conn("127.0.0.1", ports[0]) as k:
                err, node = kwire.find_coordinator(k, group)
                assert err == 0
            with kwire.Conn("127.0.0.1", ports[node % 1000]) as k:
                assert kwire.delete_groups(k, 3, [group]) == [(group, want, None)]
                if want:
                    assert kwire.delete_groups(k, 2, [group]) == [(group, want, None)]
    finally:
        live.close()


def test_features_are_reported_and_fixed(broker, kp_admin):
    """ApiVersions reports group.version (KIP-848) finalized at 1 and
    transaction.version (KIP-890 part 2) at 2; UpdateFeatures confirms those
    levels and refuses any other, or an unknown feature, with
    INVALID_UPDATE_VERSION."""
    features = kp_admin.describe_features()
    f = features["group.version"]
    assert (f["supported"], f["finalized"], f["finalized_epoch"]) == ((0, 1), (1, 1), 0), f
    f = features["transaction.version"]
    assert (f["supported"], f["finalized"]) == ((0, 2), (2, 2)), f
    assert kp_admin.update_features({"group.version": 1}) == {"group.version": "OK"}
    assert kp_admin.update_features({"transaction.version": 2}) == {"transaction.version": "OK"}
    # UpdateFeatures v2 answers a refusal at the top level.
    for update, why in (({"group.version": 2}, "supports levels 0 to 1"),
                        ({"transaction.version": 1}, "fixed at level 2"),
                        ({"no.such.version": 1}, "does not support the given feature"),
                        ({"group.version": ("SAFE_DOWNGRADE", 0)}, "cannot be removed")):
        with pytest.raises(kafka.errors.InvalidUpdateVersionError, match=why):
            kp_admin.update_features(update)


def test_scram_users_and_delegation_tokens_as_kafka_on_plaintext(broker, kp_admin):
    """No SCRAM users: a named user is RESOURCE_NOT_FOUND, listing all gives
    none. Delegation tokens are not allowed on a PLAINTEXT listener, and
    SaslHandshake/SaslAuthenticate there are ILLEGAL_SASL_STATE, as Kafka
    answers them (test_sasl.py has the SASL_PLAINTEXT listener)."""
    assert kp_admin.describe_user_scram_credentials() == {}
    got = kp_admin.describe_user_scram_credentials(["alice"])
    assert "does not exist" in (got["alice"]["error"] or ""), got
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    fut = admin.describe_user_scram_credentials(["bob"])["bob"]
    with pytest.raises(KafkaException) as e:
        fut.result(20)
    assert e.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND
    # DescribeDelegationToken v1 (all owners) and ExpireDelegationToken v1
    # (an HMAC, an expiry period), raw: neither client has these calls.
    host, port = broker.bootstrap.split(",")[0].split(":")
    with Conn(host, int(port)) as c:
        describe = Writer().int32(-1).getvalue()
        expire = Writer().bytes_(b"hmac").int64(1000).getvalue()
        for api, body in ((41, describe), (40, expire)):
            r = c.request(api, 1, body)
            assert r.int16() == 64  # DELEGATION_TOKEN_REQUEST_NOT_ALLOWED
        r = c.request(kwire.SASL_HANDSHAKE, 1, Writer().string("PLAIN").getvalue())
        assert r.int16() == 34  # ILLEGAL_SASL_STATE
        r = c.request(kwire.SASL_AUTHENTICATE, 2, Writer().bytes_(b"\0a\0b", compact=True)
                      .tags(True).getvalue())
        assert r.int16() == 34
        # Still served: the connection stays open, as in Kafka.
        assert kwire.metadata(c, 1, []).brokers


def test_client_quotas_none_and_filters_checked(broker):
    """DescribeClientQuotas v1, raw (flexible): a valid filter matches no
    entity; an ip filter mixed with a user filter is INVALID_REQUEST."""
    host, port = broker.bootstrap.split(",")[0].split(":")

    def describe(components: list[tuple[str, int, str | None]]) -> tuple[int, str | None, int]:
        w = Writer().array_len(len(components), compact=True)
        for entity_type, match_type, match in components:
            w.string(entity_type, compact=True).int8(match_type).string(match, compact=True).tags(True)
        body = w.bool(False).tags(True).getvalue()
        with Conn(host, int(port)) as c:
            r = c.request(DESCRIBE_CLIENT_QUOTAS, 1, body)
        r.int32()  # throttle
        code = r.int16()
        message = r.string(compact=True)
        entries = r.array_len(compact=True)
        return code, message, entries

    assert describe([("user", 2, None)]) == (0, None, 0)
    assert describe([("client-id", 0, "app")]) == (0, None, 0)
    code, message, entries = describe([("ip", 2, None), ("user", 1, None)])
    assert (code, entries) == (42, -1), (code, message)  # INVALID_REQUEST
    assert "IP filter component" in (message or "")


def test_scram_credentials_altered_described_and_kept_across_a_restart(broker):
    """AlterUserScramCredentials as Kafka answers it (credentials are kept in
    the metadata, as Kafka keeps them, for SASL/SCRAM): set for two
    mechanisms, described with their iterations, each user checked on its
    own (too few iterations, deleting what does not exist), deleted, and
    still there after a kill -9 restart."""
    from confluent_kafka.admin import (ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    sha256, sha512 = ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512
    results = admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(sha256, 8192), b"secret", b"salt1"),
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(sha512, 4096), b"secret", b"salt2"),
        UserScramCredentialUpsertion("dave", ScramCredentialInfo(sha256, 4096), b"pw"),
        UserScramCredentialUpsertion("weak", ScramCredentialInfo(sha256, 100), b"pw"),
        UserScramCredentialDeletion("nobody", sha512),
    ])
    results["carol"].result(20)
    results["dave"].result(20)
    for user, code in (("weak", KafkaError.UNACCEPTABLE_CREDENTIAL),
                       ("nobody", KafkaError.RESOURCE_NOT_FOUND)):
        with pytest.raises(KafkaException) as e:
            results[user].result(20)
        assert e.value.args[0].code() == code, (user, e.value)

    def described() -> dict[str, list[tuple[str, int]]]:
        got = admin.describe_user_scram_credentials().result(20)
        return {u: sorted((str(i.mechanism).rsplit(".", 1)[-1], i.iterations)
                          for i in d.scram_credential_infos) for u, d in got.items()}

    assert described() == {"carol": [("SCRAM_SHA_256", 8192), ("SCRAM_SHA_512", 4096)],
                           "dave": [("SCRAM_SHA_256", 4096)]}
    admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion("dave", sha256)])["dave"].result(20)
    broker.kill9()
    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    assert described() == {"carol": [("SCRAM_SHA_256", 8192), ("SCRAM_SHA_512", 4096)]}


def test_raft_voter_changes_are_refused_as_on_a_static_quorum(broker):
    """AddRaftVoter (v0, v1) and RemoveRaftVoter on our static quorum, as
    Kafka answers them with `controller.quorum.voters` (kraft.version 0):
    UNSUPPORTED_VERSION (35) with Kafka's message; another cluster's id
    gets INCONSISTENT_CLUSTER_ID (104) first. The quorum stays as it was."""
    with kwire.Conn(broker.host, broker.ports[0]) as k:
        cluster = kwire.metadata(k, 12, []).cluster_id
        before = kwire.negotiate(k)
        for version in (0, 1):
            err, msg = kwire.add_raft_voter(k, version, cluster, 7, "127.0.0.1", 9999)
            assert (err, msg) == (35, "Cluster doesn't support adding voter because the "
                                      "kraft.version feature is 0"), (version, err, msg)
        assert kwire.add_raft_voter(k, 1, None, 7, "127.0.0.1", 9999)[0] == 35
        assert kwire.add_raft_voter(k, 1, "another-cluster", 7, "127.0.0.1", 9999)[0] == 104
        err, msg = kwire.remove_raft_voter(k, cluster, 0)
        assert (err, msg) == (35, "Cluster doesn't support removing voter because the "
                                  "kraft.version feature is 0"), (err, msg)
        assert kwire.remove_raft_voter(k, "another-cluster", 0)[0] == 104
        assert before[kwire.ADD_RAFT_VOTER] == (0, 1) and before[kwire.REMOVE_RAFT_VOTER] == (0, 0)


def test_unregister_controller_keeps_the_static_voters(broker):
    """UnregisterController (94): a voter's registration stays (a live
    Kafka controller registers again at once), any other id is
    CONTROLLER_ID_NOT_REGISTERED (136) with Kafka's message; through either
    shard, and DescribeQuorum is the same afterwards."""
    controller = min(broker.expected_nodes)  # node of shard 0
    for port in broker.ports:
        with kwire.Conn(broker.host, port) as k:
            assert kwire.negotiate(k)[kwire.UNREGISTER_CONTROLLER] == (0, 0)
            # Kafka's success answer leaves the message at its default, "".
            assert kwire.unregister_controller(k, controller) == (0, "")
            err, msg = kwire.unregister_controller(k, 4242)
            assert (err, msg) == (kwire.CONTROLLER_ID_NOT_REGISTERED,
                                  "Controller ID 4242 is not currently registered.")
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        (t,) = a.describe_metadata_quorum()["topics"]
    finally:
        a.close()
    assert [v["replica_id"] for v in t["partitions"][0]["current_voters"]] == [controller]
