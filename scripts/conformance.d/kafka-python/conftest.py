"""Installed as test/conftest.py of the unpacked kafka-python sdist (which
has none). Two jobs:

1. Skip the tests whose fixtures would spawn a real Apache Kafka even when
   KAFKA_URI names an external broker.
2. Run a test once more when it fails with the signature of a known race
   inside kafka-python itself (CLIENT_RACES), and only then. The rerun shows
   as RERUN in pytest's log and summarize.py lists it; a second failure
   fails the test.

test_ssl_integration.py's ssl_kafka fixture calls KafkaFixture.instance(...,
transport='SSL') unconditionally (our broker has no TLS listener anyway).
test_sasl_integration.py already skips itself under KAFKA_URI."""

import os

import pytest

SPAWNS_KAFKA = {
    "test_ssl_integration.py": "needs a TLS listener; its fixture spawns Apache Kafka",
}

# Test name -> (regex the failure must match to be rerun, the race).
CLIENT_RACES = {
    "test_idempotent_producer_max_in_flight": (
        r"assert set\(\) ==",
        "kafka-python 3.0.12: a KafkaConsumer that subscribes while its "
        "bootstrap MetadataRequest (topics=[]) is in flight never asks for "
        "the topic; ClusterMetadata.update_metadata sets _need_update = False "
        "over request_update()'s True, the next refresh is metadata_max_age_ms "
        "(300 s) away, so the consumer reads nothing for consumer_timeout_ms. "
        "Seen under CPU load in CI (the consumer log shows 'Updated metadata: "
        "topics: 0' then 'Sleeping 299.9 for next Metadata refresh').",
    ),
}


def pytest_collection_modifyitems(items):
    if "KAFKA_URI" not in os.environ:
        return
    for item in items:
        reason = SPAWNS_KAFKA.get(os.path.basename(str(item.fspath)))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        race = CLIENT_RACES.get(item.originalname)
        if race:
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=[race[0]]))
