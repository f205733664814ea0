"""A small hand-written Kafka wire encoder/decoder for the compat tests.

It covers only what the raw-socket tests need: request framing (header v1/v2),
ApiVersions, Metadata, Produce, OffsetCommit/OffsetFetch (every version the
broker serves), and v2 record batches with CRC-32C. It is
written from the Kafka protocol spec independently of the broker's Rust codec,
so the two cannot share a mistake. Decoders are strict: a response must be
consumed exactly (see Reader.expect_end), which catches stray tagged-field
bytes and wrong response-header versions.

No third-party dependency; test_kwire.py cross-checks the record batch
encoding against kafka-python's own parser.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

# --- API keys and error codes -------------------------------------------------

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
DESCRIBE_CONFIGS = 32
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
CREATE_PARTITIONS = 37
DESCRIBE_CLUSTER = 60
FIND_COORDINATOR = 10
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
JOIN_GROUP = 11
HEARTBEAT = 12
DESCRIBE_GROUPS = 15
INIT_PRODUCER_ID = 22
OFFSET_FOR_LEADER_EPOCH = 23
UNREGISTER_BROKER = 64
ALTER_PARTITION_REASSIGNMENTS = 45
DESCRIBE_PRODUCERS = 61
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66
DESCRIBE_CLIENT_QUOTAS = 48
ALTER_CLIENT_QUOTAS = 49
SASL_HANDSHAKE = 17
ADD_PARTITIONS_TO_TXN = 24
END_TXN = 26
WRITE_TXN_MARKERS = 27
TXN_OFFSET_COMMIT = 28
SASL_AUTHENTICATE = 36
DELETE_GROUPS = 42

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
FENCED_LEADER_EPOCH = 74
INVALID_REQUEST = 42
BROKER_ID_NOT_REGISTERED = 102
UNKNOWN_LEADER_EPOCH = 75
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87
UNKNOWN_TOPIC_ID = 100
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47

# First flexible (KIP-482) version of each request we encode.
FIRST_FLEXIBLE = {PRODUCE: 9, METADATA: 9, API_VERSIONS: 3, CREATE_TOPICS: 5, FETCH: 12,
                  FIND_COORDINATOR: 3, JOIN_GROUP: 6, HEARTBEAT: 4, DESCRIBE_GROUPS: 5,
                  INIT_PRODUCER_ID: 2, DESCRIBE_PRODUCERS: 0, OFFSET_COMMIT: 8, OFFSET_FETCH: 6,
                  DESCRIBE_TRANSACTIONS: 0, LIST_TRANSACTIONS: 0,
                  DESCRIBE_CLIENT_QUOTAS: 1, ALTER_CLIENT_QUOTAS: 1,
                  OFFSET_FOR_LEADER_EPOCH: 4, UNREGISTER_BROKER: 0, DESCRIBE_CLUSTER: 0,
                  ALTER_PARTITION_REASSIGNMENTS: 0, SASL_AUTHENTICATE: 2,
                  ADD_PARTITIONS_TO_TXN: 3, LIST_OFFSETS: 6,
                  DELETE_GROUPS: 2, END_TXN: 3, TXN_OFFSET_COMMIT: 3,
                  WRITE_TXN_MARKERS: 1, 16: 3, 80: 0, 81: 0, 83: 0, 84: 0, 86: 0, 87: 0, 88: 0, 89: 0, 93: 0,
                  94: 0}


def is_flexible(api_key: int, version: int) -> bool:
    first = FIRST_FLEXIBLE.get(api_key)
    return first is not None and version >= first


# --- CRC-32C (Castagnoli), table driven ---------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- primitive writer / reader ------------------------------------------------

def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


class Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def raw(self, b: bytes) -> "Writer":
        self.buf += b
        return self

    def int8(self, v: int) -> "Writer":
        self.buf += struct.pack(">b", v)
        return self

    def bool(self, v: bool) -> "Writer":
        return self.int8(1 if v else 0)

    def int16(self, v: int) -> "Writer":
        self.buf += struct.pack(">h", v)
        return self

    def int32(self, v: int) -> "Writer":
        self.buf += struct.pack(">i", v)
        return self

    def uint32(self, v: int) -> "Writer":
        self.buf += struct.pack(">I", v)
        return self

    def float64(self, v: float) -> "Writer":
        return self.raw(struct.pack(">d", v))

    def int64(self, v: int) -> "Writer":
        self.buf += struct.pack(">q", v)
        return self

    def uvarint(self, v: int) -> "Writer":
        assert v >= 0
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.buf.append(b | 0x80)
            else:
                self.buf.append(b)
                return self

    def varint(self, v: int) -> "Writer":
        return self.uvarint(zigzag(v) & 0xFFFFFFFFFFFFFFFF)

    def string(self, s: str | None, compact: bool = False) -> "Writer":
        if s is None:
            return self.uvarint(0) if compact else self.int16(-1)
        b = s.encode()
        if compact:
            self.uvarint(len(b) + 1)
        else:
            self.int16(len(b))
        self.buf += b
        return self

    def bytes_(self, b: bytes | None, compact: bool = False) -> "Writer":
        if b is None:
            return self.uvarint(0) if compact else self.int32(-1)
        if compact:
            self.uvarint(len(b) + 1)
        else:
            self.int32(len(b))
        self.buf += b
        return self

    def array_len(self, n: int | None, compact: bool = False) -> "Writer":
        if n is None:
            return self.uvarint(0) if compact else self.int32(-1)
        return self.uvarint(n + 1) if compact else self.int32(n)

    def tags(self, flexible: bool) -> "Writer":
        if flexible:
            self.uvarint(0)
        return self

    def uuid(self, u: uuid.UUID) -> "Writer":
        self.buf += u.bytes
        return self

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class DecodeError(Exception):
    pass


class Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"need {n} bytes at {self.pos}, have {self.remaining()}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def _unpack(self, fmt: str, n: int) -> int:
        return struct.unpack(fmt, self.take(n))[0]

    def int8(self) -> int:
        return self._unpack(">b", 1)

    def bool(self) -> bool:
        return self.int8() != 0

    def int16(self) -> int:
        return self._unpack(">h", 2)

    def int32(self) -> int:
        return self._unpack(">i", 4)

    def uint32(self) -> int:
        return self._unpack(">I", 4)

    def int64(self) -> int:
        return self._unpack(">q", 8)

    def uvarint(self) -> int:
        shift = 0
        result = 0
        while True:
            b = self.take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise DecodeError("varint too long")

    def varint(self) -> int:
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def float64(self) -> float:
        return struct.unpack(">d", self.take(8))[0]

    def string(self, compact: bool = False) -> str | None:
        n = self.uvarint() - 1 if compact else self.int16()
        if n < 0:
            return None
        return self.take(n).decode()

    def bytes_(self, compact: bool = False) -> bytes | None:
        n = self.uvarint() - 1 if compact else self.int32()
        if n < 0:
            return None
        return self.take(n)

    def array_len(self, compact: bool = False) -> int:
        """Returns -1 for a null array."""
        return self.uvarint() - 1 if compact else self.int32()

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def skip_tags(self, flexible: bool) -> dict[int, bytes]:
        if not flexible:
            return {}
        tags = {}
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            tags[tag] = self.take(self.uvarint())
        return tags

    def expect_end(self, what: str) -> None:
        if self.remaining():
            raise DecodeError(
                f"{what}: {self.remaining()} unparsed trailing bytes: "
                f"{self.data[self.pos:self.pos + 32].hex()}")


# --- framing ------------------------------------------------------------------

def request_header(api_key: int, version: int, correlation_id: int,
                   client_id: str | None = "kwire", flexible: bool | None = None) -> bytes:
    """Request header v1 (non-flexible) or v2 (flexible: adds tagged fields)."""
    if flexible is None:
        flexible = is_flexible(api_key, version)
    w = Writer().int16(api_key).int16(version).int32(correlation_id).string(client_id)
    w.tags(flexible)
    return w.getvalue()


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def encode_request(api_key: int, version: int, correlation_id: int, body: bytes,
                   client_id: str | None = "kwire", flexible_header: bool | None = None) -> bytes:
    return frame(request_header(api_key, version, correlation_id, client_id, flexible_header) + body)


def response_reader(payload: bytes, api_key: int, version: int, corr: int) -> Reader:
    """A Reader at the body of a response frame, after checking the
    correlation id. ApiVersions responses always use response header v0
    (no tagged fields); other flexible versions use header v1."""
    r = Reader(payload)
    got = r.int32()
    if got != corr:
        raise DecodeError(f"correlation id {got}, expected {corr}")
    if api_key != API_VERSIONS:
        r.skip_tags(is_flexible(api_key, version))
    return r


class Closed(Exception):
    """The peer closed (or reset) the connection."""


class Conn:
    """One blocking TCP connection speaking Kafka framing."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.next_corr = 1

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise Closed(str(e)) from e
            if not chunk:
                raise Closed(f"EOF after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def recv_frame(self) -> bytes:
        (n,) = struct.unpack(">i", self._recv_exact(4))
        if n < 4 or n > 256 * 1024 * 1024:
            raise DecodeError(f"bad response frame length {n}")
        return self._recv_exact(n)

    def corr(self) -> int:
        c = self.next_corr
        self.next_corr += 1
        return c

    def send_request(self, api_key: int, version: int, body: bytes, corr: int | None = None) -> int:
        if corr is None:
            corr = self.corr()
        self.send(encode_request(api_key, version, corr, body))
        return corr

    def recv_response(self, api_key: int, version: int, corr: int) -> Reader:
        """Reads one response frame, checks its correlation id, and returns a
        Reader positioned at the body."""
        return response_reader(self.recv_frame(), api_key, version, corr)

    def request(self, api_key: int, version: int, body: bytes) -> Reader:
        corr = self.send_request(api_key, version, body)
        return self.recv_response(api_key, version, corr)

    def outcome(self, timeout: float = 10.0) -> tuple[str, bytes | None]:
        """After sending something odd: ('closed', None), ('response', frame)
        or ('timeout', None) when the broker neither answers nor closes."""
        self.sock.settimeout(timeout)
        try:
            return "response", self.recv_frame()
        except Closed:
            return "closed", None
        except socket.timeout:
            return "timeout", None
        except DecodeError as e:
            # The broker sent something that is not a frame: treat as response
            # so the caller can assert on it.
            return "response", str(e).encode()


# --- ApiVersions --------------------------------------------------------------

def api_versions_body(version: int, cluster_id: str | None = None, node_id: int = -1,
                      software: tuple[str, str] = ("kwire", "0.1")) -> bytes:
    """From v5 (KIP-1242) the client may name the cluster and node it means
    to reach (None and -1 while bootstrapping). From v3 it names its
    software and version."""
    if version < 3:
        return b""
    w = Writer().string(software[0], compact=True).string(software[1], compact=True)
    if version >= 5:
        w.string(cluster_id, compact=True).int32(node_id)
    return w.tags(True).getvalue()


@dataclass
class ApiVersionsResponse:
    error_code: int
    api_keys: dict[int, tuple[int, int]]
    throttle_time_ms: int = 0
    tags: dict[int, bytes] = field(default_factory=dict)  # top-level tagged fields (v3+)


def parse_api_versions(r: Reader, version: int) -> ApiVersionsResponse:
    flex = version >= 3
    error = r.int16()
    keys = {}
    n = r.array_len(flex)
    for _ in range(max(n, 0)):
        key, lo, hi = r.int16(), r.int16(), r.int16()
        r.skip_tags(flex)
        keys[key] = (lo, hi)
    throttle = r.int32() if version >= 1 else 0
    tags = r.skip_tags(flex)
    r.expect_end(f"ApiVersions v{version} response")
    return ApiVersionsResponse(error, keys, throttle, tags)


def finalized_features(resp: ApiVersionsResponse) -> dict[str, tuple[int, int]]:
    """The finalized feature levels (tag 2 of a v3+ answer): name ->
    (min, max)."""
    if 2 not in resp.tags:
        return {}
    r = Reader(resp.tags[2])
    out = {}
    for _ in range(r.array_len(True)):
        name = r.string(True)
        hi, lo = r.int16(), r.int16()
        r.skip_tags(True)
        out[name] = (lo, hi)
    return out


def api_versions(conn: Conn, version: int = 3, cluster_id: str | None = None,
                 node_id: int = -1, software: tuple[str, str] = ("kwire", "0.1")) -> ApiVersionsResponse:
    body = api_versions_body(version, cluster_id, node_id, software)
    return parse_api_versions(conn.request(API_VERSIONS, version, body), version)


def pick_version(versions: dict[int, tuple[int, int]], api_key: int, lo: int, hi: int) -> int:
    """Highest version both we (lo..hi) and the broker support."""
    if api_key not in versions:
        raise AssertionError(f"broker does not advertise API {api_key}")
    blo, bhi = versions[api_key]
    v = min(hi, bhi)
    if v < max(lo, blo):
        raise AssertionError(f"no common version for API {api_key}: ours {lo}..{hi}, broker {blo}..{bhi}")
    return v


# --- Metadata (v1..v12) -------------------------------------------------------

def metadata_body(version: int, topics: list[str] | None = None, allow_auto_create: bool = True) -> bytes:
    flex = version >= 9
    w = Writer()
    if topics is None and version == 0:
        topics = []
    w.array_len(None if topics is None else len(topics), flex)
    for t in topics or []:
        if version >= 10:
            w.uuid(uuid.UUID(int=0))
        w.string(t, flex)
        w.tags(flex)
    if version >= 4:
        w.bool(allow_auto_create)
    if 8 <= version <= 10:
        w.bool(False)  # include_cluster_authorized_operations
    if version >= 8:
        w.bool(False)  # include_topic_authorized_operations
    w.tags(flex)
    return w.getvalue()


@dataclass
class PartitionMeta:
    error_code: int
    leader: int
    replicas: list[int]
    isr: list[int]
    leader_epoch: int = -1  # v7+


@dataclass
class TopicMeta:
    error_code: int
    name: str | None
    topic_id: uuid.UUID | None
    partitions: dict[int, PartitionMeta] = field(default_factory=dict)


@dataclass
class MetadataResponse:
    brokers: dict[int, tuple[str, int]]
    controller_id: int
    cluster_id: str | None
    topics: dict[str, TopicMeta]


def _int32_array(r: Reader, flex: bool) -> list[int]:
    n = r.array_len(flex)
    return [r.int32() for _ in range(max(n, 0))]


def parse_metadata(r: Reader, version: int) -> MetadataResponse:
    flex = version >= 9
    if version >= 3:
        r.int32()  # throttle_time_ms
    brokers = {}
    for _ in range(max(r.array_len(flex), 0)):
        node_id = r.int32()
        host = r.string(flex)
        port = r.int32()
        if version >= 1:
            r.string(flex)  # rack
        r.skip_tags(flex)
        brokers[node_id] = (host, port)
    cluster_id = r.string(flex) if version >= 2 else None
    controller_id = r.int32() if version >= 1 else -1
    topics = {}
    for _ in range(max(r.array_len(flex), 0)):
        err = r.int16()
        name = r.string(flex)
        topic_id = r.uuid() if version >= 10 else None
        if version >= 1:
            r.bool()  # is_internal
        tm = TopicMeta(err, name, topic_id)
        for _ in range(max(r.array_len(flex), 0)):
            perr = r.int16()
            idx = r.int32()
            leader = r.int32()
            epoch = r.int32() if version >= 7 else -1
            replicas = _int32_array(r, flex)
            isr = _int32_array(r, flex)
            if version >= 5:
                _int32_array(r, flex)  # offline replicas
            r.skip_tags(flex)
            tm.partitions[idx] = PartitionMeta(perr, leader, replicas, isr, epoch)
        if version >= 8:
            r.int32()  # topic_authorized_operations
        r.skip_tags(flex)
        topics[name or str(topic_id)] = tm
    if 8 <= version <= 10:
        r.int32()  # cluster_authorized_operations
    if version >= 13:
        err = r.int16()
        if err:
            raise DecodeError(f"Metadata v{version}: top-level error {err}")
    r.skip_tags(flex)
    r.expect_end(f"Metadata v{version} response")
    return MetadataResponse(brokers, controller_id, cluster_id, topics)


def metadata(conn: Conn, version: int, topics: list[str] | None = None,
             allow_auto_create: bool = True) -> MetadataResponse:
    body = metadata_body(version, topics, allow_auto_create)
    return parse_metadata(conn.request(METADATA, version, body), version)


# --- record batches (magic v2) ------------------------------------------------

@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int | None = None  # ms; defaults to the batch base timestamp


def _encode_record(rec: Record, offset_delta: int, base_ts: int) -> bytes:
    body = Writer().int8(0)  # attributes
    body.varint((rec.timestamp if rec.timestamp is not None else base_ts) - base_ts)
    body.varint(offset_delta)
    for b in (rec.key, rec.value):
        if b is None:
            body.varint(-1)
        else:
            body.varint(len(b)).raw(b)
    body.varint(len(rec.headers))
    for hk, hv in rec.headers:
        kb = hk.encode()
        body.varint(len(kb)).raw(kb)
        if hv is None:
            body.varint(-1)
        else:
            body.varint(len(hv)).raw(hv)
    payload = body.getvalue()
    return Writer().varint(len(payload)).raw(payload).getvalue()


def record_batch(records: list[Record], base_offset: int = 0, base_timestamp: int | None = None,
                 producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
                 attributes: int = 0, corrupt_crc: bool = False) -> bytes:
    """An uncompressed v2 record batch with a correct CRC-32C (unless told not to)."""
    assert records
    if base_timestamp is None:
        ts = [r.timestamp for r in records if r.timestamp is not None]
        base_timestamp = min(ts) if ts else int(time.time() * 1000)
    max_ts = max((r.timestamp if r.timestamp is not None else base_timestamp) for r in records)
    recs = b"".join(_encode_record(r, i, base_timestamp) for i, r in enumerate(records))
    after_crc = (Writer().int16(attributes).int32(len(records) - 1).int64(base_timestamp)
                 .int64(max_ts).int64(producer_id).int16(producer_epoch).int32(base_sequence)
                 .int32(len(records)).raw(recs).getvalue())
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    # batch_length counts the bytes after the batch_length field itself.
    batch_length = 4 + 1 + 4 + len(after_crc)
    return (Writer().int64(base_offset).int32(batch_length).int32(-1).int8(2).uint32(crc)
            .raw(after_crc).getvalue())


# --- Produce (v3..v9) ---------------------------------------------------------

def produce_body(version: int, acks: int, timeout_ms: int,
                 data: dict[str, dict[int, bytes | None]], transactional_id: str | None = None,
                 topic_ids: dict[str, uuid.UUID] | None = None) -> bytes:
    """From v13 topics are named by id (`topic_ids` maps name to id)."""
    assert 3 <= version <= 13
    flex = version >= 9
    w = Writer()
    w.string(transactional_id, flex)
    w.int16(acks).int32(timeout_ms)
    w.array_len(len(data), flex)
    for topic, parts in data.items():
        if version >= 13:
            w.uuid((topic_ids or {})[topic])
        else:
            w.string(topic, flex)
        w.array_len(len(parts), flex)
        for idx, records in parts.items():
            w.int32(idx)
            w.bytes_(records, flex)
            w.tags(flex)
        w.tags(flex)
    w.tags(flex)
    return w.getvalue()


@dataclass
class PartitionProduceResponse:
    error_code: int
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int
    error_message: str | None
    # KIP-951 (v10+): (leader id, leader epoch) on NOT_LEADER_OR_FOLLOWER.
    current_leader: tuple[int, int] | None = None
    # The response's node endpoints (v10+): node id -> (host, port).
    node_endpoints: dict[int, tuple[str, int]] = field(default_factory=dict)


def parse_produce(r: Reader, version: int) -> dict[tuple[str, int], PartitionProduceResponse]:
    """Keyed by (topic name, partition); from v13 the topic is its id's string."""
    flex = version >= 9
    out = {}
    for _ in range(max(r.array_len(flex), 0)):
        name = str(r.uuid()) if version >= 13 else r.string(flex)
        for _ in range(max(r.array_len(flex), 0)):
            idx = r.int32()
            err = r.int16()
            base = r.int64()
            lat = r.int64() if version >= 2 else -1
            lso = r.int64() if version >= 5 else -1
            msg = None
            if version >= 8:
                for _ in range(max(r.array_len(flex), 0)):
                    r.int32()
                    r.string(flex)
                    r.skip_tags(flex)
                msg = r.string(flex)
            tags = r.skip_tags(flex)
            leader = None
            if 0 in tags:
                t = Reader(tags[0])
                leader = (t.int32(), t.int32())
            out[(name, idx)] = PartitionProduceResponse(err, base, lat, lso, msg, leader)
        r.skip_tags(flex)
    r.int32()  # throttle_time_ms
    tags = r.skip_tags(flex)
    if 0 in tags:
        t = Reader(tags[0])
        endpoints = {}
        for _ in range(t.array_len(True)):
            node, host, port = t.int32(), t.string(True), t.int32()
            t.string(True)  # rack
            t.skip_tags(True)
            endpoints[node] = (host, port)
        for p in out.values():
            p.node_endpoints = endpoints
    r.expect_end(f"Produce v{version} response")
    return out


def produce(conn: Conn, version: int, topic: str, partition: int, batch: bytes | None,
            acks: int = -1, timeout_ms: int = 10000,
            topic_id: uuid.UUID | None = None) -> PartitionProduceResponse:
    """From v13 the topic goes by `topic_id`."""
    ids = {topic: topic_id} if topic_id is not None else None
    body = produce_body(version, acks, timeout_ms, {topic: {partition: batch}}, topic_ids=ids)
    resp = parse_produce(conn.request(PRODUCE, version, body), version)
    if version >= 13:
        resp = {(topic if n == str(topic_id) else n, i): v for (n, i), v in resp.items()}
    if (topic, partition) not in resp:
        raise DecodeError(f"Produce response has no entry for {topic}/{partition}: {resp}")
    return resp[(topic, partition)]


# --- conveniences -------------------------------------------------------------

def negotiate(conn: Conn) -> dict[int, tuple[int, int]]:
    resp = api_versions(conn, 3)
    if resp.error_code != NONE:
        raise AssertionError(f"ApiVersions v3 error {resp.error_code}")
    return resp.api_keys


# --- Fetch (v4..v11, non-flexible) ---------------------------------------------

def fetch_body(version: int, topic: str, partition: int, offset: int, max_wait_ms: int,
               min_bytes: int = 1, max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20,
               isolation_level: int = 0) -> bytes:
    assert 4 <= version <= 11
    w = Writer().int32(-1).int32(max_wait_ms).int32(min_bytes).int32(max_bytes).int8(isolation_level)
    if version >= 7:
        w.int32(0).int32(-1)  # session_id, session_epoch (-1: no fetch session)
    w.int32(1).string(topic).int32(1).int32(partition)
    if version >= 9:
        w.int32(-1)  # current_leader_epoch
    w.int64(offset)
    if version >= 5:
        w.int64(-1)  # log_start_offset (followers only)
    w.int32(partition_max_bytes)
    if version >= 7:
        w.int32(0)  # forgotten_topics_data
    if version >= 11:
        w.string("")  # rack_id
    return w.getvalue()


@dataclass
class FetchPartition:
    error_code: int
    high_watermark: int
    records: bytes | None
    last_stable_offset: int = -1
    aborted: list[tuple[int, int]] | None = None  # (producer id, first offset)


def parse_fetch(r: Reader, version: int) -> dict[tuple[str, int], FetchPartition]:
    r.int32()  # throttle_time_ms
    if version >= 7:
        r.int16()  # error_code
        r.int32()  # session_id
    out = {}
    for _ in range(max(r.array_len(), 0)):
        name = r.string()
        for _ in range(max(r.array_len(), 0)):
            idx, err, hw = r.int32(), r.int16(), r.int64()
            lso = r.int64()
            if version >= 5:
                r.int64()  # log_start_offset
            n = r.array_len()
            aborted = None if n < 0 else [(r.int64(), r.int64()) for _ in range(n)]
            if version >= 11:
                r.int32()  # preferred_read_replica
            out[(name, idx)] = FetchPartition(err, hw, r.bytes_(), lso, aborted)
    r.expect_end(f"Fetch v{version} response")
    return out


def fetch_v12(conn: Conn, topic: str, partition: int, offset: int, last_fetched_epoch: int,
              current_leader_epoch: int = -1) -> tuple[int, int, bytes | None, tuple[int, int] | None]:
    """One partition at Fetch v12 (flexible, with last_fetched_epoch), no
    wait: (error code, high watermark, records, diverging (epoch, end
    offset) or None when the response leaves it out)."""
    w = Writer().int32(-1).int32(0).int32(1).int32(1 << 20).int8(0).int32(0).int32(-1)
    w.array_len(1, True).string(topic, True).array_len(1, True)
    w.int32(partition).int32(current_leader_epoch).int64(offset).int32(last_fetched_epoch)
    w.int64(-1).int32(1 << 20).tags(True)
    w.tags(True)  # topic
    w.array_len(0, True).string("", True).tags(True)  # forgotten topics, rack id
    r = conn.request(FETCH, 12, w.getvalue())
    r.int32(), r.int16(), r.int32()  # throttle, error, session id
    result = None
    for _ in range(r.array_len(True)):
        r.string(True)
        for _ in range(r.array_len(True)):
            r.int32()
            err, hw = r.int16(), r.int64()
            r.int64(), r.int64()  # last stable offset, log start
            for _ in range(max(r.array_len(True), 0)):
                r.int64(), r.int64()
                r.skip_tags(True)
            r.int32()  # preferred read replica
            records = r.bytes_(True)
            tags = r.skip_tags(True)
            diverging = None
            if 0 in tags:
                d = Reader(tags[0])
                diverging = (d.int32(), d.int64())
                d.skip_tags(True)
                d.expect_end("DivergingEpoch")
            result = (err, hw, records, diverging)
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("Fetch v12 response")
    assert result is not None, "no partition in the Fetch response"
    return result


def split_batches(records: bytes | None) -> list[bytes]:
    """Splits a records blob into whole v2 batches; a trailing partial batch
    (allowed by the protocol when size limits cut it) is dropped."""
    out, pos, data = [], 0, records or b""
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">i", data, pos + 8)
        end = pos + 12 + length
        if end > len(data):
            break
        out.append(data[pos:end])
        pos = end
    return out


# --- InitProducerId (v0..v4) and DescribeProducers (v0) ------------------------

def init_producer_id(conn: Conn, version: int = 4, transactional_id: str | None = None,
                     timeout_ms: int = 60000, producer_id: int = -1,
                     producer_epoch: int = -1) -> tuple[int, int, int]:
    """(error code, producer id, epoch)."""
    flex = version >= 2
    w = Writer().string(transactional_id, flex).int32(timeout_ms)
    if version >= 3:
        w.int64(producer_id).int16(producer_epoch)
    w.tags(flex)
    r = conn.request(INIT_PRODUCER_ID, version, w.getvalue())
    r.int32()  # throttle_time_ms
    out = (r.int16(), r.int64(), r.int16())
    r.skip_tags(flex)
    r.expect_end(f"InitProducerId v{version} response")
    return out


@dataclass
class ProducerInfo:
    producer_id: int
    epoch: int
    last_sequence: int
    last_timestamp: int
    coordinator_epoch: int
    txn_start_offset: int


def describe_producers(conn: Conn, topic: str, partition: int) -> tuple[int, list[ProducerInfo]]:
    """(error code, active producers) of one partition."""
    w = Writer().array_len(1, True).string(topic, True).array_len(1, True).int32(partition)
    w.tags(True).tags(True)
    r = conn.request(DESCRIBE_PRODUCERS, 0, w.getvalue())
    r.int32()  # throttle_time_ms
    result = None
    for _ in range(r.array_len(True)):
        r.string(True)
        for _ in range(r.array_len(True)):
            r.int32()
            err = r.int16()
            r.string(True)
            producers = []
            for _ in range(r.array_len(True)):
                producers.append(ProducerInfo(r.int64(), r.int32(), r.int32(), r.int64(), r.int32(),
                                              r.int64()))
                r.skip_tags(True)
            r.skip_tags(True)
            result = (err, producers)
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("DescribeProducers v0 response")
    assert result is not None, "no partition in the DescribeProducers response"
    return result


# --- DescribeGroups (v5, v6), DescribeCluster (v0..v2), ListTransactions (v2),
# --- AlterPartitionReassignments (v0, v1) -----------------------------------------

def describe_groups(conn: Conn, version: int, groups: list[str]
                    ) -> list[tuple[int, str | None, str, str]]:
    """(error code, error message (v6), group id, state) of each group."""
    assert version in (5, 6)
    w = Writer().array_len(len(groups), True)
    for g in groups:
        w.string(g, True)
    w.bool(False).tags(True)
    r = conn.request(DESCRIBE_GROUPS, version, w.getvalue())
    r.int32()  # throttle_time_ms
    out = []
    for _ in range(r.array_len(True)):
        err = r.int16()
        msg = r.string(True) if version >= 6 else None
        gid, state = r.string(True), r.string(True)
        r.string(True), r.string(True)  # protocol type, protocol data
        for _ in range(r.array_len(True)):
            r.string(True), r.string(True), r.string(True), r.string(True)
            r.bytes_(True), r.bytes_(True)
            r.skip_tags(True)
        r.int32()  # authorized operations
        r.skip_tags(True)
        out.append((err, msg, gid, state))
    r.skip_tags(True)
    r.expect_end(f"DescribeGroups v{version} response")
    return out


def describe_cluster(conn: Conn, version: int, endpoint_type: int = 1,
                     include_fenced: bool = False
                     ) -> tuple[int, str | None, list[tuple[int, str, int, bool]]]:
    """(error code, error message, [(node id, host, port, fenced)])."""
    w = Writer().bool(False)
    if version >= 1:
        w.int8(endpoint_type)
    if version >= 2:
        w.bool(include_fenced)
    r = conn.request(DESCRIBE_CLUSTER, version, w.tags(True).getvalue())
    r.int32()  # throttle_time_ms
    err, msg = r.int16(), r.string(True)
    if version >= 1:
        r.int8()  # endpoint type
    r.string(True), r.int32()  # cluster id, controller id
    brokers = []
    for _ in range(r.array_len(True)):
        node, host, port = r.int32(), r.string(True), r.int32()
        r.string(True)  # rack
        fenced = r.bool() if version >= 2 else False
        r.skip_tags(True)
        brokers.append((node, host, port, fenced))
    r.int32()  # cluster authorized operations
    r.skip_tags(True)
    r.expect_end(f"DescribeCluster v{version} response")
    return err, msg, brokers


def list_transactions_v2(conn: Conn, pattern: str | None) -> tuple[int, list[str]]:
    """(error code, transactional ids) matching `pattern` (v2)."""
    w = Writer().array_len(0, True).array_len(0, True).int64(-1).string(pattern, True).tags(True)
    r = conn.request(LIST_TRANSACTIONS, 2, w.getvalue())
    r.int32()  # throttle_time_ms
    err = r.int16()
    for _ in range(r.array_len(True)):
        r.string(True)
    ids = []
    for _ in range(r.array_len(True)):
        ids.append(r.string(True))
        r.int64(), r.string(True)
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("ListTransactions v2 response")
    return err, sorted(ids)


def alter_partition_reassignment(conn: Conn, version: int, topic: str, partition: int,
                                 replicas: list[int], allow_factor_change: bool = True
                                 ) -> tuple[int, str | None]:
    """(error code, message) of moving one partition to `replicas`."""
    w = Writer().int32(30000)
    if version >= 1:
        w.bool(allow_factor_change)
    w.array_len(1, True).string(topic, True).array_len(1, True).int32(partition)
    w.array_len(len(replicas), True)
    for n in replicas:
        w.int32(n)
    w.tags(True).tags(True).tags(True)
    r = conn.request(ALTER_PARTITION_REASSIGNMENTS, version, w.getvalue())
    r.int32()  # throttle_time_ms
    if version >= 1:
        assert r.bool() == allow_factor_change, "the response echoes the option"
    top, _ = r.int16(), r.string(True)
    assert top == 0, f"AlterPartitionReassignments top-level error {top}"
    result = None
    for _ in range(r.array_len(True)):
        r.string(True)
        for _ in range(r.array_len(True)):
            r.int32()
            result = (r.int16(), r.string(True))
            r.skip_tags(True)
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end(f"AlterPartitionReassignments v{version} response")
    assert result is not None
    return result


# --- UnregisterBroker (v0) -----------------------------------------------------

def unregister_broker(conn: Conn, broker_id: int) -> tuple[int, str | None]:
    """(error code, error message)."""
    r = conn.request(UNREGISTER_BROKER, 0, Writer().int32(broker_id).tags(True).getvalue())
    r.int32()  # throttle_time_ms
    out = (r.int16(), r.string(True))
    r.skip_tags(True)
    r.expect_end("UnregisterBroker v0 response")
    return out


# --- OffsetForLeaderEpoch (v2..v4) --------------------------------------------

def offset_for_leader_epoch(conn: Conn, version: int, topic: str,
                            partitions: list[tuple[int, int, int]],
                            replica_id: int = -1) -> list[tuple[int, int, int, int]]:
    """`partitions` are (partition, current_leader_epoch, leader_epoch);
    returns (error code, partition, leader_epoch, end_offset) for each."""
    assert 2 <= version <= 4
    flex = version >= 4
    w = Writer()
    if version >= 3:
        w.int32(replica_id)
    w.array_len(1, flex).string(topic, flex).array_len(len(partitions), flex)
    for p, current, requested in partitions:
        w.int32(p).int32(current).int32(requested).tags(flex)
    w.tags(flex).tags(flex)
    r = conn.request(OFFSET_FOR_LEADER_EPOCH, version, w.getvalue())
    r.int32()  # throttle_time_ms
    out = []
    for _ in range(r.array_len(flex)):
        r.string(flex)
        for _ in range(r.array_len(flex)):
            out.append((r.int16(), r.int32(), r.int32(), r.int64()))
            r.skip_tags(flex)
        r.skip_tags(flex)
    r.skip_tags(flex)
    r.expect_end(f"OffsetForLeaderEpoch v{version} response")
    return out


# --- OffsetCommit (v2..v8) and OffsetFetch (v1..v8) -----------------------------

def offset_commit(conn: Conn, version: int, group: str, topic: str, partition: int, offset: int,
                  metadata: str | None, leader_epoch: int = -1, generation: int = -1,
                  member: str = "", topic_id: uuid.UUID | None = None) -> int:
    """Commits one offset outside any group generation; returns the
    partition's error code. `metadata` is sent as given (None: null). From
    v10 the topic is named by `topic_id`, and the answer must carry it."""
    assert 2 <= version <= 10
    assert version < 10 or topic_id is not None, "v10 names the topic by id"
    flex = version >= 8
    w = Writer().string(group, flex).int32(generation).string(member, flex)
    if version >= 7:
        w.string(None, flex)  # group_instance_id
    if 2 <= version <= 4:
        w.int64(-1)  # retention_time_ms: the broker's default
    w.array_len(1, flex)
    if version >= 10:
        w.uuid(topic_id)
    else:
        w.string(topic, flex)
    w.array_len(1, flex)
    w.int32(partition).int64(offset)
    if version >= 6:
        w.int32(leader_epoch)
    w.string(metadata, flex).tags(flex)
    w.tags(flex).tags(flex)
    r = conn.request(OFFSET_COMMIT, version, w.getvalue())
    if version >= 3:
        r.int32()  # throttle_time_ms
    errors = []
    for _ in range(max(r.array_len(flex), 0)):
        if version >= 10:
            got = r.uuid()
            assert got == topic_id, f"OffsetCommit v10 answered topic id {got}, asked {topic_id}"
        else:
            r.string(flex)
        for _ in range(max(r.array_len(flex), 0)):
            r.int32()
            errors.append(r.int16())
            r.skip_tags(flex)
        r.skip_tags(flex)
    r.skip_tags(flex)
    r.expect_end(f"OffsetCommit v{version} response")
    assert len(errors) == 1, errors
    return errors[0]


@dataclass
class FetchedOffset:
    error_code: int  # the partition's, or else the group's
    offset: int
    leader_epoch: int | None  # None before v5
    metadata_raw: bytes | None  # exactly the bytes on the wire; None: null


def offset_fetch(conn: Conn, version: int, group: str, topic: str, partition: int,
                 topic_id: uuid.UUID | None = None) -> FetchedOffset:
    """Fetches one committed offset, keeping the metadata as raw bytes. From
    v10 the topic is named by `topic_id`, and the answer must carry it."""
    assert 1 <= version <= 10
    assert version < 10 or topic_id is not None, "v10 names the topic by id"
    flex = version >= 6
    w = Writer()
    if version >= 8:
        w.array_len(1, flex).string(group, flex)
        if version >= 9:
            w.string(None, flex).int32(-1)  # member_id, member_epoch: not a member
    else:
        w.string(group, flex)
    w.array_len(1, flex)
    if version >= 10:
        w.uuid(topic_id)
    else:
        w.string(topic, flex)
    w.array_len(1, flex).int32(partition).tags(flex)
    if version >= 8:
        w.tags(flex)  # end of the group
    if version >= 7:
        w.bool(False)  # require_stable
    w.tags(flex)
    r = conn.request(OFFSET_FETCH, version, w.getvalue())
    if version >= 3:
        r.int32()  # throttle_time_ms
    groups = r.array_len(flex) if version >= 8 else 1
    found, group_error = None, 0
    for _ in range(max(groups, 0)):
        if version >= 8:
            r.string(flex)
        for _ in range(max(r.array_len(flex), 0)):
            if version >= 10:
                got = r.uuid()
                assert got == topic_id, f"OffsetFetch v10 answered topic id {got}, asked {topic_id}"
            else:
                r.string(flex)
            for _ in range(max(r.array_len(flex), 0)):
                r.int32()
                offset = r.int64()
                epoch = r.int32() if version >= 5 else None
                n = r.uvarint() - 1 if flex else r.int16()
                raw = None if n < 0 else r.take(n)
                err = r.int16()
                r.skip_tags(flex)
                found = FetchedOffset(err, offset, epoch, raw)
            r.skip_tags(flex)
        if version >= 2:
            group_error = r.int16()
        if version >= 8:
            r.skip_tags(flex)
    r.skip_tags(flex)
    r.expect_end(f"OffsetFetch v{version} response")
    if found is None or (group_error and not found.error_code):
        return FetchedOffset(group_error, -1, None, None)
    return found


def list_offsets(conn: Conn, version: int, topic: str, partition: int, timestamp: int
                 ) -> tuple[int, int, int, int]:
    """ListOffsets (v6+) of one partition at a timestamp or a special value
    (-1 latest, -2 earliest, ... -6 earliest pending upload); returns
    (error code, timestamp, offset, leader epoch)."""
    assert 6 <= version <= 11
    w = Writer().int32(-1).int8(0)  # replica_id: a consumer; read_uncommitted
    w.array_len(1, True).string(topic, True).array_len(1, True)
    w.int32(partition).int32(-1).int64(timestamp).tags(True).tags(True)
    if version >= 10:
        w.int32(30000)  # timeout_ms
    w.tags(True)
    r = conn.request(LIST_OFFSETS, version, w.getvalue())
    r.int32()  # throttle_time_ms
    assert r.array_len(True) == 1
    assert r.string(True) == topic
    assert r.array_len(True) == 1
    assert r.int32() == partition
    got = (r.int16(), r.int64(), r.int64(), r.int32())
    r.skip_tags(True)
    r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end(f"ListOffsets v{version} response")
    return got


def delete_groups(conn: Conn, version: int, groups: list[str]
                  ) -> list[tuple[str, int, str | None]]:
    """DeleteGroups (v2+): (group, error code, error message) per group; the
    message is on the wire from v3 (None before)."""
    assert 2 <= version <= 3
    w = Writer().array_len(len(groups), True)
    for g in groups:
        w.string(g, True)
    r = conn.request(DELETE_GROUPS, version, w.tags(True).getvalue())
    r.int32()  # throttle_time_ms
    out = []
    for _ in range(max(r.array_len(True), 0)):
        group, err = r.string(True), r.int16()
        msg = r.string(True) if version >= 3 else None
        r.skip_tags(True)
        out.append((group, err, msg))
    r.skip_tags(True)
    r.expect_end(f"DeleteGroups v{version} response")
    return out


def find_coordinator(conn: Conn, group: str, key_type: int = 0) -> tuple[int, int]:
    """(error code, coordinator node id) by FindCoordinator v1; key type 0
    is a group, 1 a transactional id."""
    r = conn.request(FIND_COORDINATOR, 1, Writer().string(group).int8(key_type).getvalue())
    r.int32()  # throttle_time_ms
    err = r.int16()
    r.string()  # error_message
    node = r.int32()
    r.string()
    r.int32()
    r.expect_end("FindCoordinator v1 response")
    return err, node


def find_coordinators(conn: Conn, version: int, keys: list[str], key_type: int
                      ) -> list[tuple[str, int, int, str | None]]:
    """FindCoordinator v4+ (batched): (key, node id, error code, message)."""
    w = Writer().int8(key_type).array_len(len(keys), compact=True)
    for k in keys:
        w.string(k, compact=True)
    r = conn.request(FIND_COORDINATOR, version, w.tags(True).getvalue())
    r.int32()  # throttle_time_ms
    out = []
    for _ in range(r.array_len(compact=True)):
        key, node = r.string(True), r.int32()
        r.string(True)  # host
        r.int32()  # port
        out.append((key, node, r.int16(), r.string(True)))
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end(f"FindCoordinator v{version} response")
    return out


# --- AddRaftVoter (v0-1) and RemoveRaftVoter (v0), KIP-853 ------------------------

ADD_RAFT_VOTER = 80
REMOVE_RAFT_VOTER = 81


def _voter_change_result(r: Reader, what: str) -> tuple[int, str | None]:
    r.int32()  # throttle_time_ms
    err, msg = r.int16(), r.string(True)
    r.skip_tags(True)
    r.expect_end(what)
    return err, msg


def add_raft_voter(conn: Conn, version: int, cluster_id: str | None, voter_id: int,
                   host: str, port: int) -> tuple[int, str | None]:
    """(error code, message)."""
    w = Writer().string(cluster_id, compact=True).int32(30000).int32(voter_id)
    w.uuid(uuid.uuid4()).array_len(1, compact=True)
    w.string("CONTROLLER", compact=True).string(host, compact=True).raw(struct.pack(">H", port))
    w.tags(True)
    if version >= 1:
        w.bool(True)
    r = conn.request(ADD_RAFT_VOTER, version, w.tags(True).getvalue())
    return _voter_change_result(r, f"AddRaftVoter v{version} response")


def remove_raft_voter(conn: Conn, cluster_id: str | None, voter_id: int) -> tuple[int, str | None]:
    w = Writer().string(cluster_id, compact=True).int32(voter_id).uuid(uuid.uuid4())
    r = conn.request(REMOVE_RAFT_VOTER, 0, w.tags(True).getvalue())
    return _voter_change_result(r, "RemoveRaftVoter v0 response")


UNREGISTER_CONTROLLER = 94
CONTROLLER_ID_NOT_REGISTERED = 136


def unregister_controller(conn: Conn, controller_id: int) -> tuple[int, str | None]:
    """UnregisterController v0 (flexible): (error code, message)."""
    r = conn.request(UNREGISTER_CONTROLLER, 0,
                     Writer().int32(controller_id).tags(True).getvalue())
    return _voter_change_result(r, "UnregisterController v0 response")


# --- Share-coordinator state APIs (KIP-932, v0, flexible) ------------------------

INITIALIZE_SHARE_GROUP_STATE = 83
READ_SHARE_GROUP_STATE = 84
DELETE_SHARE_GROUP_STATE = 86
READ_SHARE_GROUP_STATE_SUMMARY = 87
FENCED_STATE_EPOCH = 124


def _share_state_request(group: str, topic_id: uuid.UUID, partition: int, extra) -> bytes:
    w = Writer().string(group, compact=True).array_len(1, compact=True).uuid(topic_id)
    w.array_len(1, compact=True).int32(partition)
    extra(w)
    return w.tags(True).tags(True).tags(True).getvalue()


def _share_state_results(r: Reader, fields) -> list:
    out = []
    for _ in range(r.array_len(compact=True)):
        r.uuid()
        for _ in range(r.array_len(compact=True)):
            out.append(fields(r))
            r.skip_tags(True)
        r.skip_tags(True)
    r.skip_tags(True)
    return out


def initialize_share_group_state(conn: Conn, group: str, topic_id: uuid.UUID, partition: int,
                                 state_epoch: int, start_offset: int) -> int:
    """The partition's error code."""
    body = _share_state_request(group, topic_id, partition,
                                lambda w: w.int32(state_epoch).int64(start_offset))
    r = conn.request(INITIALIZE_SHARE_GROUP_STATE, 0, body)
    (res,) = _share_state_results(r, lambda r: (r.int32(), r.int16(), r.string(True)))
    r.expect_end("InitializeShareGroupState v0 response")
    return res[1]


def read_share_group_state_summary(conn: Conn, group: str, topic_id: uuid.UUID,
                                   partition: int) -> tuple[int, int, int]:
    """(error code, state epoch, start offset)."""
    body = _share_state_request(group, topic_id, partition, lambda w: w.int32(-1))
    r = conn.request(READ_SHARE_GROUP_STATE_SUMMARY, 0, body)
    (res,) = _share_state_results(
        r, lambda r: (r.int32(), r.int16(), r.string(True), r.int32(), r.int32(), r.int64()))
    r.expect_end("ReadShareGroupStateSummary v0 response")
    return res[1], res[3], res[5]


def read_share_group_state(conn: Conn, group: str, topic_id: uuid.UUID, partition: int
                           ) -> tuple[int, int, int, list[tuple[int, int, int, int]]]:
    """(error code, state epoch, start offset, state batches as (first,
    last, state, delivery count))."""
    body = _share_state_request(group, topic_id, partition, lambda w: w.int32(-1))
    r = conn.request(READ_SHARE_GROUP_STATE, 0, body)

    def fields(r: Reader):
        part, err, _msg, epoch, start = r.int32(), r.int16(), r.string(True), r.int32(), r.int64()
        batches = []
        for _ in range(r.array_len(compact=True)):
            batches.append((r.int64(), r.int64(), r.int8(), r.int16()))
            r.skip_tags(True)
        return err, epoch, start, batches
    (res,) = _share_state_results(r, fields)
    r.expect_end("ReadShareGroupState v0 response")
    return res


def delete_share_group_state(conn: Conn, group: str, topic_id: uuid.UUID, partition: int) -> int:
    body = _share_state_request(group, topic_id, partition, lambda w: None)
    r = conn.request(DELETE_SHARE_GROUP_STATE, 0, body)
    (res,) = _share_state_results(r, lambda r: (r.int32(), r.int16(), r.string(True)))
    r.expect_end("DeleteShareGroupState v0 response")
    return res[1]


# --- DescribeTransactions (v0) and ListTransactions (v0) -------------------------

@dataclass
class TxnDescription:
    error_code: int
    state: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    partitions: list[tuple[str, int]]


def end_txn(conn: Conn, version: int, transactional_id: str, producer_id: int, epoch: int,
            commit: bool) -> tuple[int, int, int]:
    """(error code, producer id, epoch); the id and epoch are in the answer
    from v5 (transactions v2), else (-1, -1)."""
    assert 0 <= version <= 5
    flex = version >= 3
    w = Writer().string(transactional_id, flex).int64(producer_id).int16(epoch).bool(commit)
    r = conn.request(END_TXN, version, w.tags(flex).getvalue())
    r.int32()  # throttle_time_ms
    err = r.int16()
    pid, ep = (r.int64(), r.int16()) if version >= 5 else (-1, -1)
    r.skip_tags(flex)
    r.expect_end(f"EndTxn v{version} response")
    return err, pid, ep


def txn_offset_commit(conn: Conn, version: int, transactional_id: str, group: str,
                      producer_id: int, epoch: int, topic: str, partition: int,
                      offset: int, topic_id: uuid.UUID | None = None) -> int:
    """TxnOffsetCommit of one offset (v3+, not a group member): the
    partition's error code. From v6 the topic goes by `topic_id`, and the
    answer must carry it."""
    assert 3 <= version <= 6
    assert version < 6 or topic_id is not None, "v6 names the topic by id"
    w = Writer().string(transactional_id, True).string(group, True)
    w.int64(producer_id).int16(epoch).int32(-1).string("", True).string(None, True)
    w.array_len(1, True)
    if version >= 6:
        w.uuid(topic_id)
    else:
        w.string(topic, True)
    w.array_len(1, True)
    w.int32(partition).int64(offset).int32(-1).string(None, True).tags(True)
    w.tags(True).tags(True)
    r = conn.request(TXN_OFFSET_COMMIT, version, w.getvalue())
    r.int32()  # throttle_time_ms
    assert r.array_len(True) == 1
    if version >= 6:
        assert r.uuid() == topic_id
    else:
        assert r.string(True) == topic
    assert r.array_len(True) == 1 and r.int32() == partition
    err = r.int16()
    r.skip_tags(True)
    r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end(f"TxnOffsetCommit v{version} response")
    return err


def write_txn_marker(conn: Conn, version: int, producer_id: int, epoch: int, commit: bool,
                     topic: str, partition: int, coordinator_epoch: int = 0,
                     transaction_version: int = 0) -> int:
    """WriteTxnMarkers of one marker to one partition (v2: with the
    marker's transaction version, KIP-1228): the partition's error code."""
    assert 1 <= version <= 2
    w = Writer().array_len(1, True).int64(producer_id).int16(epoch).bool(commit)
    w.array_len(1, True).string(topic, True).array_len(1, True).int32(partition).tags(True)
    w.int32(coordinator_epoch)
    if version >= 2:
        w.int8(transaction_version)
    w.tags(True).tags(True)
    r = conn.request(WRITE_TXN_MARKERS, version, w.getvalue())
    assert r.array_len(True) == 1 and r.int64() == producer_id
    assert r.array_len(True) == 1 and r.string(True) == topic
    assert r.array_len(True) == 1 and r.int32() == partition
    err = r.int16()
    for _ in range(3):
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end(f"WriteTxnMarkers v{version} response")
    return err


def describe_transaction(conn: Conn, transactional_id: str) -> TxnDescription:
    w = Writer().array_len(1, True).string(transactional_id, True).tags(True)
    r = conn.request(DESCRIBE_TRANSACTIONS, 0, w.getvalue())
    r.int32()  # throttle_time_ms
    out = None
    for _ in range(r.array_len(True)):
        err = r.int16()
        r.string(True)  # transactional id
        state = r.string(True) or ""
        timeout = r.int32()
        r.int64()  # start time
        pid = r.int64()
        epoch = r.int16()
        parts = []
        for _ in range(r.array_len(True)):
            topic = r.string(True)
            parts += [(topic, r.int32()) for _ in range(r.array_len(True))]
            r.skip_tags(True)
        r.skip_tags(True)
        out = TxnDescription(err, state, pid, epoch, timeout, sorted(parts))
    r.skip_tags(True)
    r.expect_end("DescribeTransactions v0 response")
    assert out is not None, "no transaction in the DescribeTransactions response"
    return out


def list_transactions(conn: Conn) -> list[tuple[str, int, str]]:
    """(transactional id, producer id, state) of every id the node coordinates."""
    w = Writer().array_len(0, True).array_len(0, True).tags(True)
    r = conn.request(LIST_TRANSACTIONS, 0, w.getvalue())
    r.int32()  # throttle_time_ms
    err = r.int16()
    assert err == 0, f"ListTransactions error {err}"
    for _ in range(r.array_len(True)):
        r.string(True)
    out = []
    for _ in range(r.array_len(True)):
        out.append((r.string(True), r.int64(), r.string(True)))
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("ListTransactions v0 response")
    return out


# --- Streams groups (KIP-1071, flexible from v0) ---------------------------------

STREAMS_GROUP_HEARTBEAT = 88
STREAMS_GROUP_DESCRIBE = 89


@dataclass
class StreamsSubtopology:
    id: str
    source_topics: list[str] = field(default_factory=list)
    repartition_sinks: list[str] = field(default_factory=list)
    # (name, partitions, configs)
    repartition_sources: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    changelogs: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)


def _topic_infos(w: Writer, infos: list[tuple[str, int, dict[str, str]]]) -> None:
    w.array_len(len(infos), compact=True)
    for name, partitions, configs in infos:
        w.string(name, compact=True).int32(partitions).int16(0)
        w.array_len(len(configs), compact=True)
        for k, v in configs.items():
            w.string(k, compact=True).string(v, compact=True).tags(True)
        w.tags(True)


def _strings(w: Writer, xs: list[str] | None) -> None:
    w.array_len(None if xs is None else len(xs), compact=True)
    for x in xs or []:
        w.string(x, compact=True)


def _task_ids(w: Writer, tasks: dict[str, list[int]] | None) -> None:
    w.array_len(None if tasks is None else len(tasks), compact=True)
    for sub, parts in (tasks or {}).items():
        w.string(sub, compact=True).array_len(len(parts), compact=True)
        for p in parts:
            w.int32(p)
        w.tags(True)


def _read_task_ids(r: Reader) -> dict[str, list[int]] | None:
    n = r.array_len(compact=True)
    if n < 0:
        return None
    out = {}
    for _ in range(n):
        sub = r.string(compact=True)
        out[sub] = [r.int32() for _ in range(r.array_len(compact=True))]
        r.skip_tags(True)
    return out


@dataclass
class StreamsHeartbeatResponse:
    error_code: int
    error_message: str | None
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    status: list[tuple[int, str]] | None
    active: dict[str, list[int]] | None
    standby: dict[str, list[int]] | None
    warmup: dict[str, list[int]] | None
    endpoint_epoch: int


def streams_group_heartbeat(conn: Conn, group: str, member_id: str, epoch: int, *,
                            topology: list[StreamsSubtopology] | None = None,
                            topology_epoch: int = 0, process_id: str | None = None,
                            owned: dict[str, list[int]] | None = None,
                            rebalance_timeout_ms: int = -1,
                            shutdown: bool = False, version: int = 1) -> StreamsHeartbeatResponse:
    """StreamsGroupHeartbeat v0/v1. `owned` (active tasks) also stands for
    empty standby and warm-up lists; `None` sends all three as null."""
    w = Writer().string(group, compact=True).string(member_id, compact=True)
    w.int32(epoch).int32(0).string(None, compact=True).string(None, compact=True)
    w.int32(rebalance_timeout_ms)
    if topology is None:
        w.int8(-1)
    else:
        w.int8(1).int32(topology_epoch).array_len(len(topology), compact=True)
        for s in topology:
            w.string(s.id, compact=True)
            _strings(w, s.source_topics)
            _strings(w, [])  # source topic regexes
            _topic_infos(w, s.changelogs)
            _strings(w, s.repartition_sinks)
            _topic_infos(w, s.repartition_sources)
            w.array_len(0, compact=True)  # copartition groups
            w.tags(True)
        w.tags(True)
    _task_ids(w, owned)
    _task_ids(w, None if owned is None else {})
    _task_ids(w, None if owned is None else {})
    w.string(process_id, compact=True)
    w.int8(-1)  # user endpoint
    w.array_len(None, compact=True)  # client tags
    w.array_len(None, compact=True)  # task offsets
    w.array_len(None, compact=True)  # task end offsets
    w.bool(shutdown).tags(True)
    r = conn.request(STREAMS_GROUP_HEARTBEAT, version, w.getvalue())
    r.int32()  # throttle
    error_code, error_message = r.int16(), r.string(compact=True)
    member, member_epoch, interval = r.string(compact=True), r.int32(), r.int32()
    if version == 0:
        r.int32()  # acceptable recovery lag (legacy)
    r.int32()  # task offset interval
    if version >= 1:
        r.int64()  # acceptable recovery lag
    n = r.array_len(compact=True)
    status = None
    if n >= 0:
        status = []
        for _ in range(n):
            status.append((r.int8(), r.string(compact=True)))
            r.skip_tags(True)
    active, standby, warmup = _read_task_ids(r), _read_task_ids(r), _read_task_ids(r)
    if version >= 1:
        r.bool()  # topology description required
    endpoint_epoch = r.int32()
    n = r.array_len(compact=True)
    for _ in range(max(n, 0)):
        r.string(compact=True), r.take(2)  # endpoint host, port (uint16)
        r.skip_tags(True)
        for _ in range(2):
            for _ in range(r.array_len(compact=True)):
                r.string(compact=True)
                [r.int32() for _ in range(r.array_len(compact=True))]
                r.skip_tags(True)
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("StreamsGroupHeartbeat response")
    return StreamsHeartbeatResponse(error_code, error_message, member, member_epoch, interval,
                                    status, active, standby, warmup, endpoint_epoch)


@dataclass
class DescribedStreamsGroup:
    error_code: int
    error_message: str | None
    group_id: str
    state: str
    epoch: int
    assignment_epoch: int
    subtopologies: list[str]
    # member id -> (epoch, process id, active tasks)
    members: dict[str, tuple[int, str, dict[str, list[int]]]]


def streams_group_describe(conn: Conn, groups: list[str], version: int = 0
                           ) -> list[DescribedStreamsGroup]:
    """StreamsGroupDescribe v0/v1 (parsing what the tests read)."""
    w = Writer().array_len(len(groups), compact=True)
    for g in groups:
        w.string(g, compact=True)
    w.bool(False)
    if version >= 1:
        w.bool(False)
    r = conn.request(STREAMS_GROUP_DESCRIBE, version, w.tags(True).getvalue())
    r.int32()
    out = []

    def skip_topic_info() -> None:
        r.string(compact=True), r.int32(), r.int16()
        for _ in range(r.array_len(compact=True)):
            r.string(compact=True), r.string(compact=True), r.skip_tags(True)
        r.skip_tags(True)

    def task_offsets() -> None:
        for _ in range(r.array_len(compact=True)):
            r.string(compact=True), r.int32(), r.int64(), r.skip_tags(True)

    def assignment() -> dict[str, list[int]]:
        active = _read_task_ids(r) or {}
        _read_task_ids(r), _read_task_ids(r)
        r.skip_tags(True)
        return active

    for _ in range(r.array_len(compact=True)):
        error_code, error_message = r.int16(), r.string(compact=True)
        group_id, state = r.string(compact=True), r.string(compact=True)
        epoch, assignment_epoch = r.int32(), r.int32()
        subs = []
        if r.int8() >= 0:  # topology
            r.int32()
            n = r.array_len(compact=True)
            for _ in range(max(n, 0)):
                subs.append(r.string(compact=True))
                [r.string(compact=True) for _ in range(r.array_len(compact=True))]
                [r.string(compact=True) for _ in range(r.array_len(compact=True))]
                for _ in range(r.array_len(compact=True)):
                    skip_topic_info()
                for _ in range(r.array_len(compact=True)):
                    skip_topic_info()
                r.skip_tags(True)
            r.skip_tags(True)
        members = {}
        for _ in range(r.array_len(compact=True)):
            mid, mepoch = r.string(compact=True), r.int32()
            r.string(compact=True), r.string(compact=True)  # instance, rack
            r.string(compact=True), r.string(compact=True)  # client id, host
            r.int32()  # topology epoch
            process = r.string(compact=True)
            if r.int8() >= 0:  # endpoint
                r.string(compact=True), r.take(2), r.skip_tags(True)
            for _ in range(r.array_len(compact=True)):
                r.string(compact=True), r.string(compact=True), r.skip_tags(True)
            task_offsets()
            task_offsets()
            active = assignment()
            assignment()  # target
            r.bool()  # is classic
            r.skip_tags(True)
            members[mid] = (mepoch, process, active)
        r.int32()  # authorized operations
        if version >= 1:
            if r.int8() >= 0:
                raise DecodeError("a topology description this test never asks for")
            r.int8(), r.string(compact=True)
        r.skip_tags(True)
        out.append(DescribedStreamsGroup(error_code, error_message, group_id, state, epoch,
                                         assignment_epoch, subs, members))
    r.skip_tags(True)
    r.expect_end("StreamsGroupDescribe response")
    return out


def list_groups_v5(conn: Conn, types: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    """ListGroups v5 (flexible), filtered by group type: (group id,
    protocol type, state, type) of each group."""
    w = Writer().array_len(0, compact=True).array_len(len(types or []), compact=True)
    for t in types or []:
        w.string(t, compact=True)
    r = conn.request(16, 5, w.tags(True).getvalue())
    r.int32()
    err = r.int16()
    if err:
        raise DecodeError(f"ListGroups error {err}")
    out = []
    for _ in range(r.array_len(compact=True)):
        out.append((r.string(compact=True), r.string(compact=True), r.string(compact=True),
                    r.string(compact=True)))
        r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("ListGroups v5 response")
    return out


def streams_group_topology_description_update(conn: Conn, group: str, member_id: str,
                                              topology_epoch: int) -> tuple[int, str | None]:
    """StreamsGroupTopologyDescriptionUpdate v0 with an empty description:
    (error code, message)."""
    w = Writer().string(group, compact=True).string(member_id, compact=True).int32(topology_epoch)
    w.array_len(0, compact=True).array_len(0, compact=True).tags(True)  # the description
    r = conn.request(93, 0, w.tags(True).getvalue())
    r.int32()
    err, msg = r.int16(), r.string(compact=True)
    r.skip_tags(True)
    r.expect_end("StreamsGroupTopologyDescriptionUpdate v0 response")
    return err, msg
