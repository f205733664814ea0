"""Installed as test/conftest.py of the unpacked kafka-python sdist (which
has none). Two jobs:

1. Skip the tests whose fixtures would spawn a real Apache Kafka even when
   KAFKA_URI names an external broker.
2. Fix kafka-python 3.0.12's metadata race (patch_metadata_race below),
   which left a consumer without its topic for 300 s. It failed
   test_idempotent_producer_max_in_flight in CI, even after one rerun;
   the fix replaces that rerun.

test_ssl_integration.py's ssl_kafka fixture calls KafkaFixture.instance(...,
transport='SSL') unconditionally (our broker has no TLS listener anyway).
test_sasl_integration.py already skips itself under KAFKA_URI."""

import os

import pytest


def patch_metadata_race():
    """kafka-python 3.0.12: when subscribe() lands while a MetadataRequest
    built with the old topic list (topics=[]) is in flight,
    ClusterMetadata.update_metadata applies the answer and sets
    _need_update = False over the True that subscribe's request_update()
    set. The next refresh is then metadata_max_age_ms (300 s) away and the
    consumer reads nothing. The Java client keeps a request version for
    this (Metadata.requestVersion); here an answer that lacks a tracked
    topic leaves the update pending, so the refresh loop asks again after
    retry_backoff_ms. A broker answers every topic it was asked for, so
    only a stale request lacks one.

    race.py (next to this file) forces the race against any broker: 0 of
    10 records read without this fix, 10 of 10 with it."""
    from kafka.cluster import ClusterMetadata

    if getattr(ClusterMetadata.update_metadata, "_race_fixed", False):
        return
    original = ClusterMetadata.update_metadata

    def update_metadata(self, metadata):
        result = original(self, metadata)
        if not self.need_all_topic_metadata:
            answered = {t.name for t in metadata.topics}
            with self._lock:
                if set(self._topics) - answered:
                    self._need_update = True
        return result

    update_metadata._race_fixed = True
    ClusterMetadata.update_metadata = update_metadata


patch_metadata_race()

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
