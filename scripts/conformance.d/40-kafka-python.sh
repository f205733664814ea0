# kafka-python's own integration tests (test/integration of the kafka-python
# sdist on PyPI, the version scripts/test pins) against our broker: admin
# (topics, partitions, configs, groups, records, ACLs, log dirs, ...),
# consumer (fetch, offsets, groups, heartbeats), producer (every codec,
# idempotence, transactions).
#
# The sdist ships test/integration (conftest.py, fixtures.py, the tests) but
# not test/__init__.py, test/conftest.py or test/service.py. We add an empty
# test/__init__.py (else `import test` finds Python's own test package),
# kafka-python/service.py as test/service.py (fixtures.py imports
# ExternalService from it) and kafka-python/conftest.py as test/conftest.py
# (skips test_ssl_integration.py, whose fixture always spawns Apache Kafka).
# Nothing of kafka-python's is changed: its fixtures already use an external
# broker when KAFKA_URI is set (KAFKA_ROOT must merely name a directory).
#
# KAFKA_VERSION drives the tests' skipif markers and expectations and is
# passed as every client's api_version: 4.3, the newest Kafka version
# kafka-python 3.0.12 knows (it infers 4.3 from DescribeLogDirs v5, which we
# serve as Kafka 4.3+ does), so the tests expect what Kafka 4.3 does
# (test_kafka_version_infer checks that kafka-python infers 4.3 from our
# ApiVersions answer).
#
# One shard (one Kafka node, id 0): the tests were written for kafka-python's
# single-broker fixture (test_alter_partition_reassignments assigns to every
# node, the fixture creates RF-1 topics). Broker flags mirror kafka-python's
# servers/resources/default/kafka.properties: auto-create on, 4 partitions,
# group.initial.rebalance.delay.ms=0, group.min.session.timeout.ms=1000.
#
# The full run (67 tests; 12 skip: 9 SASL, 2 SSL, 1 for Kafka < 0.10.1) takes ~20 s
# once the venv exists; QUICK=1 runs QUICK_TESTS below (31 with parameters).
# Per-test timeout KAFKA_PYTHON_TIMEOUT (default 120 s; signal method, so a
# hung test fails alone and the run goes on); the whole pytest run is bounded
# too.
#
# Environment: KAFKA_PYTHON_VERSION (default 3.0.12), KAFKA_PYTHON_K (a
# pytest -k expression overriding the selection), KAFKA_PYTHON_KAFKA_VERSION
# (default 4.3), KAFKA_PYTHON_SHARDS (default 1), CONF_PORT (default here
# 29392). Output: $WORK/pytest.log (pytest -v with kafka-python's DEBUG logs
# of failing tests), $WORK/junit.xml, $WORK/summary.txt,
# $WORK/broker/broker.log.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

VERSION="${KAFKA_PYTHON_VERSION:-3.0.12}"
export CONF_PORT="${CONF_PORT:-29392}"
PER_TEST_TIMEOUT="${KAFKA_PYTHON_TIMEOUT:-120}"
REQUIREMENTS=(
  pytest==9.2.0 pytest-mock==3.17.0 pytest-timeout==2.4.0
  lz4==4.4.5 python-snappy==0.7.3 zstandard==0.25.0 crc32c==2.9.post0
)

# 1. A venv with kafka-python's [testing] extra and the codec extras (else
# the snappy/lz4/zstd cases skip themselves).
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
fi
VENV="${WORK}/venv"
PY="${VENV}/bin/python"
STAMP="${VENV}/.req-$(printf '%s\n' "${REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
if [[ ! -f "${STAMP}" ]]; then
  rm -rf "${VENV}"
  python3 -m venv "${VENV}"
  timeout 600 "${PY}" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
  touch "${STAMP}"
fi

# 2. kafka-python's sdist, unpacked once; its tests import kafka from there.
SRC="${WORK}/src/kafka_python-${VERSION}"
if [[ ! -f "${SRC}/.ready" ]]; then
  echo "fetching the kafka-python ${VERSION} sdist"
  rm -rf "${WORK}/dist" "${SRC}"
  mkdir -p "${WORK}/dist" "${WORK}/src"
  timeout 300 "${PY}" -m pip download -q --disable-pip-version-check --no-binary :all: \
    --no-deps "kafka-python==${VERSION}" -d "${WORK}/dist"
  tar -xzf "${WORK}/dist/kafka_python-${VERSION}.tar.gz" -C "${WORK}/src"
  [[ -f "${SRC}/test/integration/conftest.py" ]] || {
    echo "the kafka-python ${VERSION} sdist has no test/integration" >&2
    report kafka-python 0 1 0 "(no tests in sdist)"
    exit 1
  }
  touch "${SRC}/.ready"
fi
: >"${SRC}/test/__init__.py"
cp "${HERE}/kafka-python/service.py" "${SRC}/test/service.py"
cp "${HERE}/kafka-python/conftest.py" "${SRC}/test/conftest.py"
mkdir -p "${WORK}/no-kafka-root"

# 3. The broker, and the version kafka-python infers from it.
start_broker --shards "${KAFKA_PYTHON_SHARDS:-1}" --auto-create-topics true \
  --num-partitions 4 --group-initial-rebalance-delay-ms 0 \
  --group-min-session-timeout-ms 1000
# The tests expect the newest Kafka version kafka-python knows (4.3; we
# implement 4.4's APIs), so that test_kafka_version_infer checks that
# kafka-python infers it from our ApiVersions answer;
# KAFKA_PYTHON_KAFKA_VERSION overrides it.
KAFKA_VERSION="${KAFKA_PYTHON_KAFKA_VERSION:-4.3}"
INFERRED="$(cd "${SRC}" && timeout 60 "${PY}" - "${BOOTSTRAP}" <<'EOF'
import sys
from kafka.net.compat import KafkaNetClient
c = KafkaNetClient(bootstrap_servers=sys.argv[1], client_id="version-probe")
try:
    print(".".join(map(str, c.check_version(timeout_ms=20000))))
finally:
    c.close()
EOF
)" || INFERRED="(none)"
echo "kafka-python ${VERSION} infers Kafka ${INFERRED} from the broker; the tests expect ${KAFKA_VERSION}"

# 4. Which tests. QUICK: the core paths (topics, records, configs, groups,
# offsets, every codec, idempotence, transactions), all passing today.
QUICK_TESTS=(
  admin::test_describe_configs_topic_resource_returns_configs
  admin::test_describe_group_exists
  admin::test_delete_groups_with_errors
  admin::test_delete_records
  admin::test_delete_records_with_errors
  admin::test_create_delete_topics
  admin::test_create_partitions
  admin::test_list_partition_offsets
  consumer::test_consumer_topics
  consumer::test_kafka_consumer
  consumer::test_kafka_consumer__offset_commit_resume
  consumer::test_kafka_consumer_offsets_for_time
  consumer::test_kafka_consumer_offsets_for_times_errors
  consumer::test_group
  consumer::test_heartbeat_thread
  producer::test_end_to_end
  producer::test_kafka_producer_proper_record_metadata
  producer::test_idempotent_producer_max_in_flight
  producer::test_idempotent_producer_high_throughput
  producer::test_transactional_producer_messages
  producer::test_transactional_producer_offsets
)
if [[ -n "${KAFKA_PYTHON_K:-}" ]]; then
  SELECT=(test/integration -k "${KAFKA_PYTHON_K}")
  OUTER_TIMEOUT=3600
elif [[ "${QUICK}" == "1" ]]; then
  SELECT=()
  for t in "${QUICK_TESTS[@]}"; do
    SELECT+=("test/integration/test_${t%%::*}_integration.py::${t#*::}")
  done
  OUTER_TIMEOUT=900
else
  SELECT=(test/integration)
  OUTER_TIMEOUT=3600
fi

if [[ "${QUICK}" == "1" && -z "${KAFKA_PYTHON_K:-}" ]]; then
  echo "pytest: the ${#QUICK_TESTS[@]} quick tests (per-test timeout ${PER_TEST_TIMEOUT} s)"
else
  echo "pytest ${SELECT[*]} (per-test timeout ${PER_TEST_TIMEOUT} s)"
fi
rm -f "${WORK}/junit.xml"
set +e
(
  cd "${SRC}" &&
  KAFKA_URI="PLAINTEXT://${BOOTSTRAP}" KAFKA_VERSION="${KAFKA_VERSION}" \
  KAFKA_ROOT="${WORK}/no-kafka-root" PROJECT_ROOT="${SRC}" \
  timeout --kill-after=30s "${OUTER_TIMEOUT}" \
    "${PY}" -m pytest -v -p no:cacheprovider \
      --timeout="${PER_TEST_TIMEOUT}" --timeout-method=signal \
      --junitxml="${WORK}/junit.xml" -o junit_logging=no -rfEs "${SELECT[@]}"
) >"${WORK}/pytest.log" 2>&1
PYTEST_RC=$?
set -e
echo "pytest exited ${PYTEST_RC}; output in ${WORK}/pytest.log"

BROKER_DIED=0
broker_died && BROKER_DIED=1
stop_broker

"${PY}" "${HERE}/kafka-python/summarize.py" "${WORK}/junit.xml" "${WORK}/pytest.log" \
  >"${WORK}/summary.txt"
# pytest exits 0 (all passed) or 1 (some failed); anything else (killed,
# interrupted, usage error, nothing collected) counts as a failure.
report_summary kafka-python "${WORK}/summary.txt" "${PYTEST_RC}" "0 1" "${BROKER_DIED}"
