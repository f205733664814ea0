"""Bad input on raw sockets (kwire.py): the broker must answer with an error
or close the connection, never crash, hang or balloon its memory, and must
still serve fresh connections afterwards. Also: pipelined requests are
answered in request order.

Each test gets its own broker (`fresh_broker`), so a crash is blamed on the
test that caused it; conftest fails a test whose broker died or panicked.
"""

from __future__ import annotations

import random
import socket
import struct
import time
import uuid

import pytest

import kwire
from kwire import Conn

RSS_GROWTH_LIMIT_KIB = 8 * 1024
DEFAULT_MAX_FRAME_BYTES = 104857600
PROMISED_APIS = {
    kwire.PRODUCE: "Produce", kwire.FETCH: "Fetch", kwire.LIST_OFFSETS: "ListOffsets",
    kwire.METADATA: "Metadata", kwire.API_VERSIONS: "ApiVersions", kwire.CREATE_TOPICS: "CreateTopics",
    kwire.DELETE_TOPICS: "DeleteTopics", kwire.DESCRIBE_CONFIGS: "DescribeConfigs",
    kwire.CREATE_PARTITIONS: "CreatePartitions", kwire.DESCRIBE_CLUSTER: "DescribeCluster",
}


# -- helpers -------------------------------------------------------------------

def connect(broker, shard: int = 0, timeout: float = 10.0) -> Conn:
    return Conn(broker.host, broker.ports[shard], timeout)


def assert_serves(broker) -> None:
    """Every shard answers ApiVersions v3 and Metadata on a new connection."""
    for shard in range(broker.shards):
        with connect(broker, shard) as c:
            av = kwire.api_versions(c, 3)
            assert av.error_code == kwire.NONE, f"shard {shard}: ApiVersions v3 error {av.error_code}"
            assert kwire.API_VERSIONS in av.api_keys and kwire.METADATA in av.api_keys
            v = kwire.pick_version(av.api_keys, kwire.METADATA, 1, 12)
            md = kwire.metadata(c, v, None)
            assert md.brokers == broker.expected_nodes, f"shard {shard}: Metadata v{v} brokers {md.brokers}"


def assert_closed_or_error(c: Conn, corr: int | None, what: str, timeout: float = 10.0) -> str:
    """The broker closed the connection, or answered with a frame carrying our
    correlation id (an error response). Hanging is a failure."""
    kind, payload = c.outcome(timeout)
    assert kind != "timeout", f"{what}: broker neither answered nor closed within {timeout}s"
    if kind == "response" and corr is not None:
        assert len(payload) >= 4 and struct.unpack(">i", payload[:4])[0] == corr, \
            f"{what}: unexpected response {payload[:32].hex()}"
    return kind


def metadata_version(c: Conn) -> int:
    return kwire.pick_version(kwire.negotiate(c), kwire.METADATA, 1, 12)


def ensure_topic(broker, topic: str, timeout: float = 15.0) -> kwire.TopicMeta:
    """Auto-creates `topic` through Metadata and waits until its partitions have leaders."""
    deadline = time.monotonic() + timeout
    with connect(broker) as c:
        v = metadata_version(c)
        while True:
            md = kwire.metadata(c, v, [topic], allow_auto_create=True)
            t = md.topics.get(topic)
            if t and t.error_code == 0 and t.partitions and all(p.leader >= 0 for p in t.partitions.values()):
                return t
            assert time.monotonic() < deadline, f"topic {topic} not ready: {t}"
            time.sleep(0.2)


def leader_conn(broker, t: kwire.TopicMeta, partition: int) -> Conn:
    return Conn(broker.host, broker.port_of_node(t.partitions[partition].leader))


def records(n: int, tag: str, ts: int = 1_720_000_000_000) -> list[kwire.Record]:
    return [kwire.Record(f"{tag}-k{i}".encode(), f"{tag}-v{i}".encode(), [("i", str(i).encode())], ts + i)
            for i in range(n)]


# -- ApiVersions ---------------------------------------------------------------

def test_api_versions_lists_promised_apis(fresh_broker):
    for shard in range(fresh_broker.shards):
        with connect(fresh_broker, shard) as c:
            v3 = kwire.api_versions(c, 3)
            v0 = kwire.api_versions(c, 0)
    assert v3.error_code == 0 and v0.error_code == 0
    missing = {name for key, name in PROMISED_APIS.items() if key not in v3.api_keys}
    assert not missing, f"ApiVersions does not list {sorted(missing)}"
    for key, (lo, hi) in v3.api_keys.items():
        assert 0 <= lo <= hi, f"API {key}: bad range {lo}..{hi}"
    assert v3.api_keys[kwire.API_VERSIONS][1] >= 3
    assert v0.api_keys == v3.api_keys, "v0 and v3 responses list different ranges"


def test_api_versions_unsupported_version_gets_v0_error(fresh_broker):
    with connect(fresh_broker) as c:
        # A newer client sends a flexible (v2) header and a v3-style body.
        c.send(kwire.encode_request(kwire.API_VERSIONS, 99, 4242, kwire.api_versions_body(3),
                                    flexible_header=True))
        r = c.recv_response(kwire.API_VERSIONS, 0, 4242)
        resp = kwire.parse_api_versions(r, 0)  # strict: must be exactly a v0 body
        assert resp.error_code == kwire.UNSUPPORTED_VERSION
        assert resp.api_keys, "UNSUPPORTED_VERSION response must list the supported ranges"
        assert resp.api_keys.get(kwire.API_VERSIONS, (0, -1))[1] >= 3
        # The client then retries on the same connection with a version we support.
        again = kwire.api_versions(c, 3)
        assert again.error_code == 0
    assert_serves(fresh_broker)


def test_unsupported_metadata_version_is_refused(fresh_broker):
    with connect(fresh_broker) as c:
        c.send(kwire.encode_request(kwire.METADATA, 99, 31337, kwire.metadata_body(12), flexible_header=True))
        assert_closed_or_error(c, 31337, "Metadata v99")
    assert_serves(fresh_broker)


# Defaults of ApiVersionsResponse v3 top-level tagged fields; a field sent
# with its default breaks librdkafka 2.0.2 (Debian's kcat), DESIGN.md s.10.
API_VERSIONS_TAG_DEFAULTS = {
    0: b"\x01",              # SupportedFeatures: empty compact array
    1: b"\xff" * 8,          # FinalizedFeaturesEpoch: -1
    2: b"\x01",              # FinalizedFeatures: empty compact array
    3: b"\x00",              # ZkMigrationReady: false
}


def test_api_versions_refuses_a_malformed_software_name(fresh_broker):
    """From v3 the client names its software and version (KIP-511); one
    outside Kafka's pattern ([a-zA-Z0-9](?:[a-zA-Z0-9\\-.]*[a-zA-Z0-9])?)
    gets INVALID_REQUEST and no versions, as Kafka answers, and the
    connection carries on."""
    with connect(fresh_broker) as c:
        for software in (("kafka client", "1.0"), ("kafka", "1.0+local"), ("", "1")):
            resp = kwire.api_versions(c, 3, software=software)
            assert (resp.error_code, resp.api_keys) == (kwire.INVALID_REQUEST, {}), software
        ok = kwire.api_versions(c, 3, software=("apache-kafka-java", "4.4.0"))
        assert ok.error_code == kwire.NONE and kwire.PRODUCE in ok.api_keys


def test_api_versions_v3_omits_default_tagged_fields(fresh_broker):
    with connect(fresh_broker) as c:
        resp = kwire.api_versions(c, 3)
    sent_defaults = {t: v.hex() for t, v in resp.tags.items() if API_VERSIONS_TAG_DEFAULTS.get(t) == v}
    assert not sent_defaults, f"ApiVersions v3 sends default-valued tagged fields {sent_defaults}"


def supported_features(tags: dict[int, bytes]) -> dict[str, tuple[int, int]]:
    """ApiVersions v3+'s tagged SupportedFeatures (tag 0): name -> range."""
    if 0 not in tags:
        return {}
    r = kwire.Reader(tags[0])
    out = {}
    for _ in range(r.array_len(compact=True)):
        name = r.string(compact=True)
        out[name] = (r.int16(), r.int16())
        r.skip_tags(True)
    return out


def test_api_versions_v4_lists_features_starting_at_level_0(fresh_broker):
    """KAFKA-17011, as Kafka: a supported feature whose lowest level is 0
    (group.version 0-1, transaction.version 0-2, share.version 0-1, streams.version 0-1) is
    listed from v4 on, and
    left out before, where older clients fail to parse it. Their finalized
    levels are listed in both."""
    with connect(fresh_broker) as c:
        v3, v4 = kwire.api_versions(c, 3), kwire.api_versions(c, 4)
    assert v4.api_keys[kwire.API_VERSIONS] == (0, 5)
    assert supported_features(v4.tags) == {"group.version": (0, 1), "transaction.version": (0, 2),
                                           "share.version": (0, 1), "streams.version": (0, 1)}
    assert supported_features(v3.tags) == {}
    for v in (v3, v4):
        assert kwire.finalized_features(v) == {"group.version": (1, 1),
                                               "transaction.version": (2, 2),
                                               "share.version": (1, 1),
                                               "streams.version": (1, 1)}


def test_unknown_tagged_fields_are_skipped(fresh_broker):
    unknown = kwire.Writer().uvarint(2).uvarint(90).uvarint(3).raw(b"abc").uvarint(91).uvarint(0).getvalue()
    with connect(fresh_broker) as c:
        # ApiVersions v3: unknown tags in the request header and in the body.
        header = kwire.Writer().int16(kwire.API_VERSIONS).int16(3).int32(61).string("kwire").raw(unknown)
        body = kwire.Writer().string("kwire", compact=True).string("0.1", compact=True).raw(unknown)
        c.send(kwire.frame(header.getvalue() + body.getvalue()))
        resp = kwire.parse_api_versions(c.recv_response(kwire.API_VERSIONS, 3, 61), 3)
        assert resp.error_code == 0
        # Metadata v12 (flexible): unknown tags at the end of the body.
        if kwire.pick_version(resp.api_keys, kwire.METADATA, 9, 12) == 12:
            body = kwire.metadata_body(12, None)[:-1] + unknown
            c.send(kwire.encode_request(kwire.METADATA, 12, 62, body))
            md = kwire.parse_metadata(c.recv_response(kwire.METADATA, 12, 62), 12)
            assert md.brokers == fresh_broker.expected_nodes


# -- malformed frames ----------------------------------------------------------

def test_garbage_api_key(fresh_broker):
    with connect(fresh_broker) as c:
        c.send(kwire.encode_request(9999, 0, 77, b"\x00" * 16))
        assert_closed_or_error(c, 77, "API key 9999")
    with connect(fresh_broker) as c:
        c.send(kwire.encode_request(-1, -1, 78, b""))
        assert_closed_or_error(c, 78, "API key -1")
    assert_serves(fresh_broker)


@pytest.mark.parametrize("length", [-1, -(2**31), 0x7FFFFFFF, DEFAULT_MAX_FRAME_BYTES + 1],
                         ids=["minus1", "int32min", "0x7fffffff", "max_frame_plus_1"])
def test_bad_frame_length_closes_without_allocating(fresh_broker, length):
    assert_serves(fresh_broker)  # warm up every shard before the baseline
    before = fresh_broker.rss_kib()
    for shard in range(fresh_broker.shards):
        with connect(fresh_broker, shard) as c:
            c.send(struct.pack(">i", length) + kwire.request_header(kwire.API_VERSIONS, 0, 5) + b"\x00" * 1024)
            kind, _ = c.outcome(10)
            assert kind == "closed", f"frame length {length}: expected the connection closed, got {kind}"
    time.sleep(0.3)
    grown = fresh_broker.rss_kib() - before
    assert grown < RSS_GROWTH_LIMIT_KIB, f"frame length {length}: RSS grew by {grown} KiB"
    assert_serves(fresh_broker)


def test_zero_length_frame(fresh_broker):
    with connect(fresh_broker) as c:
        c.send(struct.pack(">i", 0))
        assert_closed_or_error(c, None, "zero-length frame")
    assert_serves(fresh_broker)


def test_truncated_body_then_close(fresh_broker):
    for shard in range(fresh_broker.shards):
        c = connect(fresh_broker, shard)
        c.send(struct.pack(">i", 100) + b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00")
        c.close()
    time.sleep(0.2)
    assert_serves(fresh_broker)


def test_truncated_body_then_half_close(fresh_broker):
    with connect(fresh_broker) as c:
        c.send(struct.pack(">i", 100) + b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00")
        c.sock.shutdown(socket.SHUT_WR)
        assert_closed_or_error(c, 1, "truncated body + EOF")
    assert_serves(fresh_broker)


@pytest.mark.parametrize("payload", [
    b"\x00\x12\x00\x03\x00\x00",                                   # correlation id cut short
    b"\x00\x03\x00\x01\x00\x00\x00\x05\x01\xf4abc",                # client_id length 500, 3 bytes
    b"\x00\x03\x00\x01\x00\x00\x00\x05\xff\xfe",                   # client_id length -2
    b"\x00\x12\x00\x03\x00\x00\x00\x06\x00\x01a\x05",              # v2 header: 5 tags, none follow
    b"\x00\x12\x00\x03\x00\x00\x00\x06\x00\x01a\x01\x00\xff\xff\xff\xff\x0f",  # tag of 4 GiB
], ids=["short_corr_id", "client_id_past_end", "client_id_neg", "tags_past_end", "huge_tag"])
def test_header_fields_run_past_frame(fresh_broker, payload):
    with connect(fresh_broker) as c:
        c.send(kwire.frame(payload))
        assert_closed_or_error(c, None, f"header {payload.hex()}")
    assert_serves(fresh_broker)


def test_stalled_connection_does_not_block_shard(fresh_broker):
    # A client that sends half a length prefix and stops must not stall the shard.
    stalled = [connect(fresh_broker, s) for s in range(fresh_broker.shards)]
    try:
        for c in stalled:
            c.send(b"\x00\x00")
        time.sleep(0.2)
        assert_serves(fresh_broker)
    finally:
        for c in stalled:
            c.close()


def test_many_connections(fresh_broker):
    conns = [connect(fresh_broker, i % fresh_broker.shards) for i in range(200)]
    try:
        for i, c in enumerate(conns):
            c.send_request(kwire.API_VERSIONS, 0, b"", corr=i)
        for i, c in enumerate(conns):
            resp = kwire.parse_api_versions(c.recv_response(kwire.API_VERSIONS, 0, i), 0)
            assert resp.error_code == 0
    finally:
        for c in conns:
            c.close()
    assert_serves(fresh_broker)


# -- record batches ------------------------------------------------------------

def test_produce_with_bad_crc_is_corrupt_message(fresh_broker):
    topic = f"crc-{uuid.uuid4().hex[:8]}"
    t = ensure_topic(fresh_broker, topic)
    with leader_conn(fresh_broker, t, 0) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        bad = kwire.produce(c, v, topic, 0, kwire.record_batch(records(3, "bad"), corrupt_crc=True))
        assert bad.error_code == kwire.CORRUPT_MESSAGE, f"bad CRC answered with {bad}"
        # Nothing of the corrupt batch was written: the next batch starts at offset 0.
        good = kwire.produce(c, v, topic, 0, kwire.record_batch(records(2, "good")))
        assert (good.error_code, good.base_offset) == (0, 0), good
        good2 = kwire.produce(c, v, topic, 0, kwire.record_batch(records(1, "good2")))
        assert (good2.error_code, good2.base_offset) == (0, 2), good2
    assert_serves(fresh_broker)


def test_produce_with_inconsistent_batch_length(fresh_broker):
    topic = f"blen-{uuid.uuid4().hex[:8]}"
    t = ensure_topic(fresh_broker, topic)
    with leader_conn(fresh_broker, t, 0) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        raw = bytearray(kwire.record_batch(records(2, "x")))
        for bogus in (len(raw) * 4, 0x7FFFFFF0, 3):
            struct.pack_into(">i", raw, 8, bogus)
            c.send_request(kwire.PRODUCE, v, kwire.produce_body(v, -1, 5000, {topic: {0: bytes(raw)}}), corr=900)
            kind, payload = c.outcome(10)
            assert kind != "timeout", f"batch_length {bogus}: no answer"
            if kind == "closed":
                c.close()
                c = leader_conn(fresh_broker, t, 0)
                continue
            resp = kwire.parse_produce(kwire.response_reader(payload, kwire.PRODUCE, v, 900), v)[(topic, 0)]
            assert resp.error_code in (kwire.CORRUPT_MESSAGE, 87), \
                f"batch_length {bogus}: expected CORRUPT_MESSAGE or INVALID_RECORD, got {resp}"
        good = kwire.produce(c, v, topic, 0, kwire.record_batch(records(1, "ok")))
        assert (good.error_code, good.base_offset) == (0, 0), good
        c.close()
    assert_serves(fresh_broker)


# -- pipelining ----------------------------------------------------------------

def test_pipelined_requests_answered_in_order(fresh_broker):
    with connect(fresh_broker) as c:
        mv = metadata_version(c)
        c.send(kwire.encode_request(kwire.API_VERSIONS, 3, 101, kwire.api_versions_body(3))
               + kwire.encode_request(kwire.METADATA, mv, 102, kwire.metadata_body(mv, None))
               + kwire.encode_request(kwire.API_VERSIONS, 0, 103, b""))
        a = kwire.parse_api_versions(c.recv_response(kwire.API_VERSIONS, 3, 101), 3)
        m = kwire.parse_metadata(c.recv_response(kwire.METADATA, mv, 102), mv)
        b = kwire.parse_api_versions(c.recv_response(kwire.API_VERSIONS, 0, 103), 0)
    assert a.error_code == 0 and b.error_code == 0
    assert m.brokers == fresh_broker.expected_nodes


def test_pipelined_produce_answered_in_order(fresh_broker):
    topic = f"pipe-{uuid.uuid4().hex[:8]}"
    t = ensure_topic(fresh_broker, topic)
    with leader_conn(fresh_broker, t, 0) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        batch_sizes = [3, 1, 4, 1, 5, 9, 2, 6]
        wire = b""
        for i, n in enumerate(batch_sizes):
            batch = kwire.record_batch(records(n, f"p{i}"))
            wire += kwire.encode_request(kwire.PRODUCE, v, 1000 + i,
                                         kwire.produce_body(v, -1, 10000, {topic: {0: batch}}))
            if i % 3 == 2:  # interleave a cheap request
                wire += kwire.encode_request(kwire.API_VERSIONS, 0, 2000 + i, b"")
        c.send(wire)
        offset = 0
        for i, n in enumerate(batch_sizes):
            resp = kwire.parse_produce(c.recv_response(kwire.PRODUCE, v, 1000 + i), v)[(topic, 0)]
            assert (resp.error_code, resp.base_offset) == (0, offset), f"request {i}: {resp}"
            offset += n
            if i % 3 == 2:
                assert kwire.parse_api_versions(c.recv_response(kwire.API_VERSIONS, 0, 2000 + i), 0).error_code == 0


def test_acks0_produce_gets_no_response_but_is_written(fresh_broker):
    topic = f"acks0-{uuid.uuid4().hex[:8]}"
    t = ensure_topic(fresh_broker, topic)
    with leader_conn(fresh_broker, t, 0) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        c.send(kwire.encode_request(kwire.PRODUCE, v, 500, kwire.produce_body(
            v, 0, 10000, {topic: {0: kwire.record_batch(records(7, "a0"))}})))
        c.send(kwire.encode_request(kwire.API_VERSIONS, 0, 501, b""))
        # The next frame must be the ApiVersions answer: acks=0 is never answered.
        r = c.recv_response(kwire.API_VERSIONS, 0, 501)
        assert kwire.parse_api_versions(r, 0).error_code == 0
        resp = kwire.produce(c, v, topic, 0, kwire.record_batch(records(1, "a1")), acks=1)
        assert (resp.error_code, resp.base_offset) == (0, 7), resp
        resp = kwire.produce(c, v, topic, 0, kwire.record_batch(records(2, "a2")), acks=-1)
        assert (resp.error_code, resp.base_offset) == (0, 8), resp


# -- seeded fuzzing of real requests ------------------------------------------

FUZZ_CASES = 300
FUZZ_BUDGET_S = 90


def _seed_requests(v_md: int, v_pr: int) -> list[bytes]:
    batch = kwire.record_batch(records(3, "fz"))
    return [
        kwire.request_header(kwire.API_VERSIONS, 3, 1) + kwire.api_versions_body(3),
        kwire.request_header(kwire.API_VERSIONS, 0, 2),
        kwire.request_header(kwire.METADATA, v_md, 3) + kwire.metadata_body(v_md, ["fuzz"], False),
        kwire.request_header(kwire.PRODUCE, v_pr, 4) + kwire.produce_body(v_pr, -1, 1000, {"fuzz": {0: batch}}),
        kwire.request_header(kwire.PRODUCE, v_pr, 5) + kwire.produce_body(v_pr, 1, 1000, {"fuzz": {0: batch, 1: batch}}),
    ]


def _mutate(payload: bytes, rng: random.Random) -> bytes:
    b = bytearray(payload)
    op = rng.randrange(5)
    if op == 0 and len(b) > 1:  # truncate (frame length follows the new size)
        del b[rng.randrange(1, len(b)):]
    elif op == 1:  # flip a few bytes, the header included
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2 and len(b) >= 4:  # plant a huge or negative length/count
        pos = rng.randrange(len(b) - 3)
        b[pos:pos + 4] = rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00"])
    elif op == 3 and len(b) >= 2:  # plant a huge 16-bit length or an endless varint
        pos = rng.randrange(len(b) - 1)
        b[pos:pos + 2] = rng.choice([b"\x7f\xff", b"\xff\xff", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"])
    else:  # trailing garbage
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def test_fuzzed_requests_never_crash(fresh_broker):
    with connect(fresh_broker) as c:
        keys = kwire.negotiate(c)
    ensure_topic(fresh_broker, "fuzz")
    seeds = _seed_requests(kwire.pick_version(keys, kwire.METADATA, 1, 12),
                           kwire.pick_version(keys, kwire.PRODUCE, 3, 9))
    rng = random.Random(20261121)
    before = fresh_broker.rss_kib()
    deadline = time.monotonic() + FUZZ_BUDGET_S
    outcomes = {"closed": 0, "response": 0, "timeout": 0}
    for case in range(FUZZ_CASES):
        if time.monotonic() > deadline:
            break
        payload = _mutate(rng.choice(seeds), rng)
        with connect(fresh_broker, case % fresh_broker.shards, timeout=2) as c:
            c.send(kwire.frame(payload))
            c.sock.shutdown(socket.SHUT_WR)
            kind, _ = c.outcome(2)
            outcomes[kind] += 1
        assert fresh_broker.alive(), f"broker died on fuzz case {case}: {kwire.frame(payload).hex()}"
    grown = fresh_broker.rss_kib() - before
    assert grown < 256 * 1024, f"RSS grew by {grown} KiB over the fuzz run"
    assert outcomes["closed"] + outcomes["response"] > 0, outcomes
    assert_serves(fresh_broker)


def _gzip_bomb_batch(value_len: int) -> bytes:
    """One v2 batch, gzip, holding one record whose value is `value_len`
    zero bytes: a few hundred KB on the wire, huge once decompressed."""
    import zlib

    w = kwire.Writer()
    body = kwire.Writer().int8(0).varint(0).varint(0).varint(-1).varint(value_len).getvalue()
    rec_len = len(body) + value_len + 1  # + the empty header count
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    out = [z.compress(w.varint(rec_len).getvalue() + body)]
    chunk = bytes(1 << 20)
    for _ in range(value_len >> 20):
        out.append(z.compress(chunk))
    out.append(z.compress(kwire.Writer().varint(0).getvalue()))
    out.append(z.flush())
    packed = b"".join(out)
    now = int(time.time() * 1000)
    after_crc = (kwire.Writer().int16(1).int32(0).int64(now).int64(now).int64(-1).int16(-1)
                 .int32(-1).int32(1).raw(packed).getvalue())
    return (kwire.Writer().int64(0).int32(4 + 1 + 4 + len(after_crc)).int32(-1).int8(2)
            .uint32(kwire.crc32c(after_crc)).raw(after_crc).getvalue())


def test_list_offsets_by_timestamp_does_not_decompress_a_bomb(broker):
    """A small gzip batch that expands to 512 MiB: ListOffsets by timestamp
    (confluent-kafka's offsets_for_times) answers at once, and the broker's
    memory does not grow by the expanded size (issue 15, defect 5)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = "ts-bomb"
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        f.result(30)
    batch = _gzip_bomb_batch(512 << 20)
    assert len(batch) < 1_000_000, len(batch)
    with connect(broker) as c:
        r = kwire.produce(c, 7, topic, 0, batch)
    assert r.error_code == kwire.NONE, r
    rss_before = broker.rss_kib()
    cons = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ts-bomb"})
    t0 = time.monotonic()
    got = cons.offsets_for_times([TopicPartition(topic, 0, int(time.time() * 1000) - 60_000)],
                                 timeout=20)
    took = time.monotonic() - t0
    cons.close()
    assert got[0].error is None and got[0].offset == 0, got
    assert took < 5, f"ListOffsets took {took:.1f} s"
    grown_mib = (broker.peak_rss_kib() - rss_before) / 1024
    assert grown_mib < 256, f"the broker grew by {grown_mib:.0f} MiB"
    assert_serves(broker)
