"""Command-line flags change what clients see: --auto-create-topics false,
--num-partitions, --max-frame-bytes."""

from __future__ import annotations

import uuid

import kwire

MAX_FRAME = 65536
BROKER_PARAMS = {"shards": 2, "broker_id": 7,
                 "args": ["--auto-create-topics", "false", "--max-frame-bytes", str(MAX_FRAME),
                          "--num-partitions", "3"]}


def test_auto_create_disabled(broker):
    topic = f"nocreate-{uuid.uuid4().hex[:8]}"
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.METADATA, 4, 12)
        for _ in range(2):
            md = kwire.metadata(c, v, [topic], allow_auto_create=True)
            assert md.topics[topic].error_code == kwire.UNKNOWN_TOPIC_OR_PARTITION, md.topics[topic]
        assert md.brokers == broker.expected_nodes
        all_topics = kwire.metadata(c, v, None).topics
        assert topic not in all_topics
        pv = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        resp = kwire.produce(c, pv, topic, 0, kwire.record_batch([kwire.Record(b"k", b"v")]))
        assert resp.error_code == kwire.UNKNOWN_TOPIC_OR_PARTITION, resp


def test_max_frame_bytes(broker):
    with kwire.Conn(broker.host, broker.ports[1]) as c:
        # Just under the limit: a Produce carrying a ~60 KiB record (to a topic
        # that does not exist, so the answer is an error, but an answer).
        pv = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        batch = kwire.record_batch([kwire.Record(b"k", b"v" * (MAX_FRAME - 1000))])
        body = kwire.produce_body(pv, -1, 5000, {"no-such-topic": {0: batch}})
        assert MAX_FRAME - 1000 < len(body) < MAX_FRAME - 100
        resp = kwire.parse_produce(c.request(kwire.PRODUCE, pv, body), pv)
        assert resp[("no-such-topic", 0)].error_code == kwire.UNKNOWN_TOPIC_OR_PARTITION
        # Over the limit: refused by closing the connection.
        c.send(kwire.frame(kwire.request_header(kwire.API_VERSIONS, 0, 10) + b"\x00" * MAX_FRAME))
        kind, _ = c.outcome(10)
        assert kind == "closed", f"a {MAX_FRAME + 10}-byte frame with --max-frame-bytes {MAX_FRAME}: {kind}"


def test_node_ids_follow_broker_id(broker):
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        md = kwire.metadata(c, kwire.pick_version(kwire.negotiate(c), kwire.METADATA, 1, 12), None)
    assert md.brokers == {7000: (broker.host, broker.ports[0]), 7001: (broker.host, broker.ports[1])}
