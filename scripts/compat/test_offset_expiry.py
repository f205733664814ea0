"""Offset expiry (offsets.retention.minutes, here in ms): the committed
offsets of a consumer group that has been empty for the retention are
deleted with tombstones, and the group with them (classic and KIP-848
groups alike); a standalone commit
expires the same time after it was made; a group with a live member keeps
its offsets. The deletions hold across kill -9.
"""
from __future__ import annotations

import time

from confluent_kafka import OFFSET_INVALID, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from objects_load import wait_for

RETENTION_MS = 3000
BROKER_PARAMS = {"shards": 1, "args": [
    "--offsets-retention-ms", str(RETENTION_MS),
    "--offsets-retention-check-interval-ms", "300",
]}
TOPIC = "expiry"


def committed(broker, group: str) -> int:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        return c.committed([TopicPartition(TOPIC, 0)], timeout=10)[0].offset
    finally:
        c.close()


def groups(broker) -> set[str]:
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    return {g.group_id for g in a.list_consumer_groups().result(10).valid}


def test_offsets_of_empty_groups_expire(broker):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in a.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce(TOPIC, value=b"x", partition=0)
    assert p.flush(30) == 0

    def consumer(group: str, protocol: str = "classic") -> Consumer:
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "group.protocol": protocol,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([TOPIC])
        got = 0
        deadline = time.monotonic() + 30
        while got < 10 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
        c.commit(asynchronous=False)
        return c

    # A group that leaves, one that stays (it keeps polling), a standalone commit.
    gone = consumer("leaves")
    gone.close()
    left_at = time.monotonic()
    # A KIP-848 group expires the same way, its stored type and epoch too.
    gone848 = consumer("leaves848", protocol="consumer")
    gone848.close()
    stays = consumer("stays")
    s = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "standalone"})
    s.commit(offsets=[TopicPartition(TOPIC, 0, 7)], asynchronous=False)
    s.close()
    assert committed(broker, "leaves") == 10
    assert committed(broker, "standalone") == 7
    assert committed(broker, "leaves848") == 10
    assert {"leaves", "leaves848", "stays"} <= groups(broker)

    wait_for("the empty group's offsets to expire",
             lambda: (stays.poll(0.1), committed(broker, "leaves"))[1] == OFFSET_INVALID,
             timeout=RETENTION_MS / 1000 + 15)
    assert time.monotonic() - left_at >= RETENTION_MS / 1000 - 0.5, "expired too early"
    wait_for("the standalone commit to expire",
             lambda: (stays.poll(0.1), committed(broker, "standalone"))[1] == OFFSET_INVALID,
             timeout=15)
    wait_for("the empty KIP-848 group's offsets to expire",
             lambda: (stays.poll(0.1), committed(broker, "leaves848"))[1] == OFFSET_INVALID,
             timeout=15)
    assert not {"leaves", "leaves848"} & groups(broker)
    # The live group keeps its offsets, however long it has been.
    for _ in range(10):
        stays.poll(0.2)
    assert committed(broker, "stays") == 10
    stays.close()

    # The tombstones hold across kill -9 (the empty "stays" may expire by now).
    broker.kill9()
    broker.restart()
    assert committed(broker, "leaves") == OFFSET_INVALID
    assert committed(broker, "standalone") == OFFSET_INVALID
    assert "leaves848" not in groups(broker), "the expired consumer group came back"
    assert "offsets.retention.minutes" in broker.log_text()
