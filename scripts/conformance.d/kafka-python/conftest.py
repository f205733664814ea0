"""Installed as test/conftest.py of the unpacked kafka-python sdist (which
has none). Its only job: skip the tests whose fixtures would spawn a real
Apache Kafka even when KAFKA_URI names an external broker.

test_ssl_integration.py's ssl_kafka fixture calls KafkaFixture.instance(...,
transport='SSL') unconditionally (our broker has no TLS listener anyway).
test_sasl_integration.py already skips itself under KAFKA_URI."""

import os

import pytest

SPAWNS_KAFKA = {
    "test_ssl_integration.py": "needs a TLS listener; its fixture spawns Apache Kafka",
}


def pytest_collection_modifyitems(items):
    if "KAFKA_URI" not in os.environ:
        return
    for item in items:
        reason = SPAWNS_KAFKA.get(os.path.basename(str(item.fspath)))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
