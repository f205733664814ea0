"""Stand-in for kafka-python's test/service.py, which its sdist leaves out
(test/integration/fixtures.py imports it). Only ExternalService is used when
KAFKA_URI points the fixtures at a running broker; SpawnedService would start
Apache Kafka or ZooKeeper, which this harness never does."""

import logging

__all__ = ["ExternalService", "SpawnedService"]

log = logging.getLogger(__name__)


class ExternalService:
    def __init__(self, host, port):
        log.info("Using already running service at %s:%d", host, port)
        self.host = host
        self.port = port

    def open(self):
        pass

    def close(self):
        pass

    def dump_logs(self):
        pass


class SpawnedService:
    def __init__(self, args=None, env=None):
        raise RuntimeError(
            "the conformance harness runs kafka-python's tests against an external "
            "broker (KAFKA_URI); it does not spawn Kafka: %r" % (args,))
