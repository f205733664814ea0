"""Shards as Kafka nodes: with 2 shards and broker id 1, the nodes are 1000
and 1001 on base_port and base_port+1; a topic's partitions are spread over
both; a Produce sent to the wrong shard gets NOT_LEADER_OR_FOLLOWER and
writes nothing, one sent to the right shard is stored (read back with
librdkafka to check every byte)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kwire

BROKER_PARAMS = {"shards": 2, "broker_id": 1}
N_PARTITIONS = 4
TS = 1_730_000_000_000


def create_topic(broker, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                        operation_timeout=30)[name].result(timeout=30)


def metadata_from(broker, shard: int, topic: str) -> kwire.MetadataResponse:
    deadline = time.monotonic() + 15
    with kwire.Conn(broker.host, broker.ports[shard]) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.METADATA, 1, 12)
        while True:
            md = kwire.metadata(c, v, [topic], allow_auto_create=False)
            t = md.topics.get(topic)
            if t and t.error_code == 0 and len(t.partitions) == N_PARTITIONS and \
                    all(p.leader >= 0 for p in t.partitions.values()):
                return md
            assert time.monotonic() < deadline, f"shard {shard}: topic {topic} not ready: {t}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def topic(broker):
    name = f"shards-{uuid.uuid4().hex[:8]}"
    create_topic(broker, name, N_PARTITIONS)
    return name


def test_metadata_spreads_partitions_over_shards(broker, topic):
    mds = [metadata_from(broker, s, topic) for s in range(broker.shards)]
    for s, md in enumerate(mds):
        assert md.brokers == broker.expected_nodes, f"shard {s} advertises {md.brokers}"
    assert {1000, 1001} == set(broker.expected_nodes)
    leaders = [{i: p.leader for i, p in md.topics[topic].partitions.items()} for md in mds]
    assert leaders[0] == leaders[1], f"shards disagree about leaders: {leaders}"
    counts = Counter(leaders[0].values())
    assert set(counts) == {1000, 1001}, f"leaders {leaders[0]} should be on both shards"
    assert max(counts.values()) - min(counts.values()) <= 1, f"not round-robin: {leaders[0]}"
    t = mds[0].topics[topic]
    for i, p in t.partitions.items():
        assert p.error_code == 0 and p.replicas == [p.leader] and p.isr == [p.leader], (i, p)
    if t.topic_id is not None:
        assert t.topic_id.int != 0, "Metadata v10+ must carry a non-zero topic id"
        assert mds[1].topics[topic].topic_id == t.topic_id


def test_produce_routes_by_shard(broker, topic):
    md = metadata_from(broker, 0, topic)
    leaders = {i: p.leader for i, p in md.topics[topic].partitions.items()}
    expected: dict[int, list[kwire.Record]] = {}
    for part, leader in sorted(leaders.items()):
        right = broker.port_of_node(leader)
        wrong = next(p for p in broker.ports if p != right)
        with kwire.Conn(broker.host, wrong) as c:
            v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
            bad = [kwire.Record(b"wrong", f"wrong-shard-{part}".encode(), [("w", b"1")], TS)]
            resp = kwire.produce(c, v, topic, part, kwire.record_batch(bad))
            assert resp.error_code == kwire.NOT_LEADER_OR_FOLLOWER, \
                f"partition {part} sent to port {wrong} (leader {leader} is on {right}): {resp}"
        with kwire.Conn(broker.host, right) as c:
            v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
            recs = []
            for batch_no, n in enumerate((3, 2)):
                batch = [kwire.Record(f"k{part}-{batch_no}-{j}".encode() if j % 2 == 0 else None,
                                      f"partition {part} batch {batch_no} record {j}".encode(),
                                      [("p", str(part).encode()), ("n", None)] if j == 0 else [],
                                      TS + 10 * batch_no + j)
                         for j in range(n)]
                resp = kwire.produce(c, v, topic, part, kwire.record_batch(batch))
                assert (resp.error_code, resp.base_offset) == (0, len(recs)), \
                    f"partition {part} batch {batch_no} on its leader's port {right}: {resp}"
                recs += batch
            expected[part] = recs
            # A partition the topic does not have.
            resp = kwire.produce(c, v, topic, 99, kwire.record_batch(bad))
            assert resp.error_code == kwire.UNKNOWN_TOPIC_OR_PARTITION, resp

    got = consume_all(broker, topic, sum(len(r) for r in expected.values()))
    for part, recs in expected.items():
        want = [(off, r.key, r.value, [(k, v) for k, v in r.headers], r.timestamp) for off, r in enumerate(recs)]
        assert got.get(part, []) == want, f"partition {part}: read back {got.get(part)}"


def consume_all(broker, topic: str, n: int) -> dict[int, list]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                         "group.id": "compat-unused", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 100})
    got: dict[int, list] = {}
    count = 0
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(N_PARTITIONS)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and count < n:
            for m in consumer.consume(num_messages=100, timeout=0.5):
                assert m.error() is None, m.error()
                tstype, ts = m.timestamp()
                assert tstype == TIMESTAMP_CREATE_TIME
                got.setdefault(m.partition(), []).append(
                    (m.offset(), m.key(), m.value(), list(m.headers() or []), ts))
                count += 1
        # Anything more than n is something that should not have been written.
        for m in consumer.consume(num_messages=100, timeout=1.0):
            got.setdefault(m.partition(), []).append(("extra", m.offset(), m.value()))
    finally:
        consumer.close()
    return got


def test_fetch_routes_by_shard(broker, topic):
    md = metadata_from(broker, 0, topic)
    for part, p in sorted(md.topics[topic].partitions.items()):
        right = broker.port_of_node(p.leader)
        wrong = next(x for x in broker.ports if x != right)
        for port, want in ((wrong, kwire.NOT_LEADER_OR_FOLLOWER), (right, kwire.NONE)):
            with kwire.Conn(broker.host, port) as c:
                fv = kwire.pick_version(kwire.negotiate(c), kwire.FETCH, 4, 11)
                body = kwire.fetch_body(fv, topic, part, 0, 100)
                got = kwire.parse_fetch(c.request(kwire.FETCH, fv, body), fv)[(topic, part)]
                assert got.error_code == want, f"Fetch of partition {part} on port {port}: {got}"
                if want == kwire.NONE:
                    assert got.high_watermark >= 0
                else:
                    assert not kwire.split_batches(got.records), "records served by the wrong shard"


def test_produce_v13_by_topic_id_and_kip951_leader_hints(broker, topic):
    """Produce v13 names the topic by id; NOT_LEADER_OR_FOLLOWER (v10+)
    says where the leader is (KIP-951), so clients skip a Metadata round
    trip; an unknown topic id is UNKNOWN_TOPIC_ID."""
    md = metadata_from(broker, 0, topic)
    topic_id = md.topics[topic].topic_id
    assert topic_id is not None
    leaders = {i: p.leader for i, p in md.topics[topic].partitions.items()}
    part, leader = sorted(leaders.items())[0]
    right = broker.port_of_node(leader)
    wrong = next(p for p in broker.ports if p != right)
    rec = [kwire.Record(b"k", b"by id", [], TS)]
    with kwire.Conn(broker.host, wrong) as c:
        assert kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 13) == 13
        resp = kwire.produce(c, 13, topic, part, kwire.record_batch(rec), topic_id=topic_id)
        assert resp.error_code == kwire.NOT_LEADER_OR_FOLLOWER, resp
        epoch = md.topics[topic].partitions[part].leader_epoch
        assert resp.current_leader == (leader, epoch), resp
        assert resp.node_endpoints == {leader: (broker.host, right)}, resp
        resp = kwire.produce(c, 13, "x", part, kwire.record_batch(rec), topic_id=uuid.uuid4())
        assert resp.error_code == kwire.UNKNOWN_TOPIC_ID, resp
    with kwire.Conn(broker.host, right) as c:
        resp = kwire.produce(c, 13, topic, part, kwire.record_batch(rec), topic_id=topic_id)
        assert resp.error_code == 0 and resp.base_offset >= 0, resp
        assert resp.current_leader is None and resp.node_endpoints == {}, resp
