"""SASL on the client listeners (SASL_PLAINTEXT), as Kafka serves it:

* PLAIN against the users file, SCRAM-SHA-256 and SCRAM-SHA-512 against the
  credentials that AlterUserScramCredentials keeps in the metadata;
* confluent-kafka (librdkafka) and kafka-python produce and consume with
  each mechanism, idempotence on; a transaction across both shards commits
  and aborts, so the brokers' own calls to each other (transaction markers)
  authenticate too; a user quota applies to the user a connection
  authenticated as;
* a wrong password is refused with SASL_AUTHENTICATION_FAILED, and the
  client says so;
* the raw exchange: only ApiVersions and SaslHandshake before it, an
  unknown mechanism refused with the enabled list, KIP-43's v0 raw tokens
  and v1/v2 SaslAuthenticate, no second handshake once authenticated, a
  large frame before authentication closed, delegation tokens disabled;
* a broker whose SASL settings cannot work refuses to start.
"""
from __future__ import annotations

import struct
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

import kwire
from conftest import broker_bin
from test_idempotence import create_topic
from kwire import SASL_AUTHENTICATE, SASL_HANDSHAKE, Conn, Writer

METADATA = 3
DESCRIBE_DELEGATION_TOKEN = 41

USERS = {"admin": "admin-secret", "broker": "broker:secret"}
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@pytest.fixture(scope="module")
def sasl_args(tmp_path_factory):
    users = tmp_path_factory.mktemp("sasl") / "users"
    users.write_text("# user:password\n" + "".join(f"{u}:{p}\n" for u, p in USERS.items()))
    return ["--sasl-enabled-mechanisms", ",".join(MECHANISMS),
            "--sasl-plain-users-file", str(users), "--sasl-inter-broker-user", "broker"]


BROKER_PARAMS = {"shards": 2, "args_fixture": "sasl_args"}


def conf(broker, mechanism: str, user: str, password: str, **extra) -> dict:
    return {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password, **extra}


def admin_of(broker) -> AdminClient:
    return AdminClient(conf(broker, "PLAIN", "admin", USERS["admin"]))


def make_topic(broker, name: str, partitions: int) -> None:
    create_topic(broker, name, partitions, conf(broker, "PLAIN", "admin", USERS["admin"]))


@pytest.fixture(scope="module")
def scram_users(broker):
    """alice has a SCRAM-SHA-256 credential, bob a SCRAM-SHA-512 one, set
    through an admin client that authenticated with PLAIN."""
    admin = admin_of(broker)
    results = admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion("alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     b"alice-pw", b"alice-salt"),
        UserScramCredentialUpsertion("bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                     b"bob-pw"),
    ])
    for f in results.values():
        f.result(20)
    return {"alice": ("SCRAM-SHA-256", "alice-pw"), "bob": ("SCRAM-SHA-512", "bob-pw")}


def consume_all(c: Consumer, topic: str, n: int, timeout: float = 30) -> list[bytes]:
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        assert not m.error(), m.error()
        got.append(m.value())
    c.close()
    return got


def test_librdkafka_with_plain_and_scram(broker, scram_users):
    topic = "sasl-librdkafka"
    make_topic(broker, topic, 2)
    # alice writes with SCRAM-SHA-256, idempotent; bob reads with
    # SCRAM-SHA-512; admin (PLAIN) writes some too.
    sent = []
    for user, mechanism, password in (("alice", *scram_users["alice"]),
                                      ("admin", "PLAIN", USERS["admin"])):
        p = Producer(conf(broker, mechanism, user, password, **{"enable.idempotence": True}))
        for i in range(50):
            v = f"{user}-{i}".encode()
            p.produce(topic, v, partition=i % 2)
            sent.append(v)
        assert p.flush(30) == 0
    c = Consumer(conf(broker, scram_users["bob"][0], "bob", scram_users["bob"][1],
                      **{"group.id": "sasl-g", "auto.offset.reset": "earliest"}))
    got = consume_all(c, topic, len(sent))
    assert sorted(got) == sorted(sent)


def test_kafka_python_with_plain_and_scram(broker, scram_users):
    from kafka import KafkaConsumer, KafkaProducer
    topic = "sasl-kafka-python"
    make_topic(broker, topic, 1)

    def kp(user, mechanism, password):
        return {"bootstrap_servers": broker.bootstrap.split(","),
                "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                "sasl_plain_username": user, "sasl_plain_password": password}

    # kafka-python 3 turns idempotence on by default.
    p = KafkaProducer(**kp("alice", *scram_users["alice"]))
    for i in range(20):
        p.send(topic, f"kp-{i}".encode()).get(timeout=30)
    p.close()
    p = KafkaProducer(**kp("admin", "PLAIN", USERS["admin"]))
    p.send(topic, b"kp-plain").get(timeout=30)
    p.close()
    c = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000,
                      **kp("bob", *scram_users["bob"]))
    got = [m.value for m in c]
    c.close()
    assert got == [f"kp-{i}".encode() for i in range(20)] + [b"kp-plain"]


def test_transactions_across_shards_authenticate_between_brokers(broker, scram_users):
    """The partitions lead on both shards, so the coordinator sends at least
    one transaction marker to another node, over an authenticated
    connection (`peer.rs`)."""
    topic = "sasl-txn"
    make_topic(broker, topic, 4)
    leaders = {p.leader for p in admin_of(broker).list_topics(topic, timeout=10)
               .topics[topic].partitions.values()}
    assert len(leaders) == 2, leaders
    mechanism, password = scram_users["alice"]
    p = Producer(conf(broker, mechanism, "alice", password,
                      **{"transactional.id": f"sasl-{uuid.uuid4()}"}))
    p.init_transactions(30)
    for outcome in ("commit", "abort", "commit"):
        p.begin_transaction()
        for part in range(4):
            p.produce(topic, f"{outcome}-{part}".encode(), partition=part)
        if outcome == "commit":
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)
    c = Consumer(conf(broker, "PLAIN", "admin", USERS["admin"],
                      **{"group.id": "sasl-txn-g", "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"}))
    got = consume_all(c, topic, 8, timeout=30)
    assert sorted(got) == sorted([f"commit-{p}".encode() for p in range(4)] * 2)
    assert "SASL authentication refused" not in broker.log_text()


def test_wrong_password_is_refused(broker, scram_users):
    for mechanism, user, password in (("PLAIN", "admin", "nope"),
                                      ("SCRAM-SHA-256", "alice", "nope"),
                                      ("SCRAM-SHA-512", "nobody", "nope")):
        errors = []
        p = Producer(conf(broker, mechanism, user, password, error_cb=errors.append))
        deadline = time.monotonic() + 15
        while not errors and time.monotonic() < deadline:
            p.poll(0.2)
        assert errors, mechanism
        e = errors[0]
        assert e.code() == KafkaError._AUTHENTICATION, (mechanism, e)
        assert "Authentication failed" in e.str(), (mechanism, e.str())
    assert "SASL authentication refused" in broker.log_text()


def test_user_quota_applies_to_the_authenticated_user(broker, scram_users):
    """A producer_byte_rate for user alice (Kafka's user entity) throttles
    alice, whatever her client id, and not admin: the quota's user is the
    one the connection authenticated as."""
    from test_quotas import _produce, alter
    topic = "sasl-quota"
    make_topic(broker, topic, 1)
    with Conn(broker.host, broker.ports[0]) as c:
        assert handshake(c, 1, "PLAIN")[0] == 0
        assert authenticate(c, 1, plain("admin", USERS["admin"]))[0] == 0
        assert alter(broker, [("user", "alice")], [("producer_byte_rate", 200_000.0)],
                     conn=c) == (0, None)
    mechanism, password = scram_users["alice"]
    total = 3_000_000
    took, alice_throttle = _produce(broker, topic, "any-client", total,
                                    conf(broker, mechanism, "alice", password))
    _, admin_throttle = _produce(broker, topic, "any-client", total,
                                 conf(broker, "PLAIN", "admin", USERS["admin"]))
    # 200 KB/s over Kafka's 10 s floor lets 2 MB through at once; the
    # third takes about 5 s more.
    assert alice_throttle > 0 and took >= 3, (alice_throttle, took)
    assert admin_throttle == 0, admin_throttle


def handshake(c: Conn, version: int, mechanism: str) -> tuple[int, list[str]]:
    r = c.request(SASL_HANDSHAKE, version, Writer().string(mechanism).getvalue())
    code = r.int16()
    return code, [r.string() for _ in range(r.array_len())]


def authenticate(c: Conn, version: int, token: bytes) -> tuple[int, str | None, bytes]:
    flex = version >= 2
    w = Writer().bytes_(token, compact=flex)
    if flex:
        w.tags(True)
    corr = c.send_request(SASL_AUTHENTICATE, version, w.getvalue())
    r = kwire.response_reader(c.recv_frame(), SASL_AUTHENTICATE, version, corr)
    code, message, out = r.int16(), r.string(flex), r.bytes_(flex)
    if version >= 1:
        r.int64()  # session_lifetime_ms
    return code, message, out or b""


def plain(user: str, password: str) -> bytes:
    return b"\0" + user.encode() + b"\0" + password.encode()


def metadata_works(c: Conn) -> None:
    md = kwire.metadata(c, 1, [])
    assert md.brokers, md


def test_raw_exchange_as_kafka(broker):
    host, port = broker.host, broker.ports[0]
    # Nothing but ApiVersions and SaslHandshake before authenticating.
    with Conn(host, port) as c:
        v = kwire.api_versions(c)
        assert v.error_code == 0
        assert v.api_keys[SASL_HANDSHAKE] == (0, 1) and v.api_keys[SASL_AUTHENTICATE] == (0, 2)
        c.send_request(METADATA, 1, kwire.metadata_body(1, []))
        assert c.outcome()[0] == "closed"
    # An unknown mechanism: refused with the enabled list, then closed.
    with Conn(host, port) as c:
        assert handshake(c, 1, "GSSAPI") == (33, MECHANISMS)  # UNSUPPORTED_SASL_MECHANISM
        assert c.outcome()[0] == "closed"
    # A wrong password: SASL_AUTHENTICATION_FAILED with Kafka's message, closed.
    with Conn(host, port) as c:
        assert handshake(c, 1, "PLAIN") == (0, MECHANISMS)
        code, message, _ = authenticate(c, 1, plain("admin", "wrong"))
        assert (code, message) == (58, "Authentication failed: Invalid username or password")
        assert c.outcome()[0] == "closed"
    # KIP-43's v0 handshake: raw tokens, no headers.
    with Conn(host, port) as c:
        assert handshake(c, 0, "PLAIN")[0] == 0
        token = plain("admin", USERS["admin"])
        c.send(struct.pack(">i", len(token)) + token)
        assert c._recv_exact(4) == b"\0\0\0\0"  # an empty token back: done
        metadata_works(c)
    # v2 (flexible) SaslAuthenticate, then no second handshake.
    with Conn(host, port) as c:
        assert handshake(c, 1, "PLAIN")[0] == 0
        assert authenticate(c, 2, plain("broker", USERS["broker"]))[0] == 0
        metadata_works(c)
        assert handshake(c, 1, "PLAIN")[0] == 34  # ILLEGAL_SASL_STATE
        assert authenticate(c, 1, b"x")[0] == 34
        # Authenticated, delegation tokens are disabled (no token secret),
        # as Kafka answers: DELEGATION_TOKEN_AUTH_DISABLED.
        r = c.request(DESCRIBE_DELEGATION_TOKEN, 1, Writer().int32(-1).getvalue())
        assert r.int16() == 61
        metadata_works(c)
    # A large frame before authentication closes the connection (Kafka's
    # sasl.server.max.receive.size, 512 KiB).
    with Conn(host, port) as c:
        c.send(struct.pack(">i", 600 * 1024) + b"\0" * 1024)
        assert c.outcome()[0] == "closed"
    # SCRAM by hand is covered by the clients above; a SCRAM exchange that
    # sends garbage for its first message is refused and closed.
    with Conn(host, port) as c:
        assert handshake(c, 1, "SCRAM-SHA-256")[0] == 0
        code, message, _ = authenticate(c, 1, b"garbage")
        assert code == 58 and "Invalid SCRAM client first message" in message
        assert c.outcome()[0] == "closed"


@pytest.mark.parametrize("args, why", [
    (["--sasl-enabled-mechanisms", "GSSAPI"], "GSSAPI is not one of"),
    (["--sasl-enabled-mechanisms", "SCRAM-SHA-256"], "PLAIN must be among them"),
    (["--sasl-enabled-mechanisms", "PLAIN", "--sasl-plain-users-file", "/nonexistent/users",
      "--sasl-inter-broker-user", "b"], "cannot read sasl_plain_users_file /nonexistent/users"),
    (["--sasl-enabled-mechanisms", "PLAIN", "--sasl-plain-users-file", "USERS",
      "--sasl-inter-broker-user", "carol"], "carol is not in sasl_plain_users_file"),
])
def test_unworkable_settings_refuse_to_start(tmp_path, sasl_args, args, why):
    users = sasl_args[sasl_args.index("--sasl-plain-users-file") + 1]
    args = [users if a == "USERS" else a for a in args]
    out = subprocess.run([str(broker_bin()), "--data-dir", str(tmp_path), "--base-port", "1",
                          *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert why in out.stderr, out.stderr
