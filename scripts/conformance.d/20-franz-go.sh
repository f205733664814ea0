# franz-go's pkg/kgo integration tests (github.com/twmb/franz-go, Go module
# proxy) against our broker: group ETL chains with every balancer, the
# transactional ETL chain, produce/consume, regex consuming, pausing, ...
#
# Full run: every top-level test of pkg/kgo that talks to a broker (found by
# franz-go/kgo_tests.py) with KGO_TEST_RECORDS=$FRANZ_GO_RECORDS, default
# franz-go's own 500000 (about a minute here: the ETL chains then still run
# when their second wave of consumers joins, 5 s in). QUICK=1: a fixed
# handful of them, including TestGroupETL, TestTxnEtl and the share-group
# ETL and admin tests, with 100000 records (ten transactions, so
# EndAndBeginTransaction runs).
# Subtests count one each. Tests needing SCRAM or OAUTHBEARER listeners
# skip themselves when the broker lacks them. A broker that exited during the run counts as a
# failure named "(broker exited)".
#
# Environment: FRANZ_GO_VERSION (default v1.22.3), FRANZ_GO_RECORDS,
# FRANZ_GO_RUN (a `go test -run` pattern overriding the selection),
# KGO_LOG_LEVEL (info; debug or none), KGO_TEST_CHAOS=1 (franz-go's dialer
# then cuts every connection after 0.5-1.5 s), CONF_PORT (default here 29192).
# Output: $WORK/go-test.json (the `go test -json` stream), $WORK/go-test.log
# (its plain text, with franz-go's client logs), $WORK/broker/broker.log.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

VERSION="${FRANZ_GO_VERSION:-v1.22.3}"
export CONF_PORT="${CONF_PORT:-29192}"
export GOPATH="${WORK}/gopath"
export GOMODCACHE="${WORK}/gopath/pkg/mod"
export GOCACHE="${WORK}/gocache"
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

if ! command -v go >/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go
fi
if ! command -v python3 >/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3
fi

# 1. franz-go's module, copied out of the read-only module cache once.
SRC="${WORK}/src/franz-go@${VERSION}"
if [[ ! -f "${SRC}/.ready" ]]; then
  echo "fetching github.com/twmb/franz-go@${VERSION}"
  timeout 600 go mod download -json "github.com/twmb/franz-go@${VERSION}" >"${WORK}/download.json"
  rm -rf "${SRC}"
  mkdir -p "${WORK}/src"
  cp -r "${GOMODCACHE}/github.com/twmb/franz-go@${VERSION}" "${SRC}"
  chmod -R u+w "${SRC}"
  touch "${SRC}/.ready"
fi
KGO="${SRC}/pkg/kgo"

# 2. Build the test binary before the broker starts (cached in $GOCACHE),
# so that compile time is not spent with a broker waiting and a build
# failure reads as one.
echo "building pkg/kgo tests"
(cd "${KGO}" && timeout 900 go test -count=1 -run '^$' . >/dev/null) || {
  echo "pkg/kgo tests do not build" >&2
  report franz-go 0 1 0 "(build)"
  exit 1
}

# 3. Which tests, how many records, how long.
if [[ -n "${FRANZ_GO_RUN:-}" ]]; then
  RUN="${FRANZ_GO_RUN}"
elif [[ "${QUICK}" == "1" ]]; then
  RUN='^(TestPing|TestUnknownGroupOffsetFetchPinned|TestIssue325|TestGroupSimple|TestConsumeTopicRetrieval|TestClient_Produce|TestGroupETL|TestTxnEtl|TestShareGroupETL|TestShareGroupAckOnClose|TestShareGroupOffsetsAdmin)$'
else
  RUN="$(python3 "${HERE}/franz-go/kgo_tests.py" list "${KGO}")"
fi
if [[ "${QUICK}" == "1" ]]; then
  RECORDS="${FRANZ_GO_RECORDS:-100000}"
  GO_TIMEOUT=8m
else
  RECORDS="${FRANZ_GO_RECORDS:-500000}"
  GO_TIMEOUT=25m
fi

# 4. Two shards: two Kafka nodes, ${CONF_PORT} and ${CONF_PORT}+1.
start_broker --shards 2 --auto-create-topics true

echo "go test -run '${RUN}' (KGO_TEST_RECORDS=${RECORDS}, timeout ${GO_TIMEOUT})"
set +e
(
  cd "${KGO}" &&
  KGO_SEEDS="${BOOTSTRAP}" KGO_TEST_RF=1 KGO_TEST_RECORDS="${RECORDS}" \
  KGO_LOG_LEVEL="${KGO_LOG_LEVEL:-info}" \
  timeout --kill-after=30s "$(( ${GO_TIMEOUT%m} * 60 + 120 ))" \
    go test -json -count=1 -p 1 -v -timeout "${GO_TIMEOUT}" -run "${RUN}" .
) >"${WORK}/go-test.json" 2>&1
GO_RC=$?
set -e
echo "go test exited ${GO_RC}; output in ${WORK}/go-test.log"

BROKER_DIED=0
broker_died && BROKER_DIED=1
stop_broker

python3 "${HERE}/franz-go/kgo_tests.py" summarize \
  "${WORK}/go-test.json" "${WORK}/go-test.log" >"${WORK}/summary.txt"
report_summary franz-go "${WORK}/summary.txt" "${GO_RC}" "0" "${BROKER_DIED}"
