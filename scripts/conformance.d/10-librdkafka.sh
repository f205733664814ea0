#!/usr/bin/env bash
# librdkafka's own test suite (tests/ in Debian bookworm's librdkafka source
# package) against our broker, run as its tests/README.md says for an
# existing cluster: a test.conf with bootstrap.servers, test-runner in mode
# "bare" (no valgrind).
#
# Every test number (0001..0999, e.g. 0103 = tests/0103-transactions.c) runs
# on its own fresh broker (--num-partitions 4, auto-created topics, as
# librdkafka's default test scenario), alone, under a timeout, so that a
# crash or a hang costs one test only. Tests are run with -L: only the
# sub-tests that talk to a broker. librdkafka/skip.txt lists the tests not
# run, each with its reason. Tests of the "noautocreate" scenario run on a
# broker with --auto-create-topics false.
#
# Some tests call Kafka's tools ($KAFKA_PATH/bin/kafka-topics.sh and the
# Java helpers under tests/java/). In full mode $WORK/kafka stands in for
# KAFKA_PATH: kafka-clients from Maven Central, a kafka-run-class.sh that
# runs java, and a kafka-topics.sh (librdkafka/KafkaTopics.java).
#
# QUICK=1 (CI) runs only QUICK_TESTS below, with test-runner's quick mode
# (-Q), and needs no Java.
#
# Output, all under $WORK: logs/NNNN[-scenario].log (test-runner) and
# logs/NNNN[-scenario].broker.log (that test's broker), results.tsv.
#
# Environment: LIBRDKAFKA_TEST_TIMEOUT (s, default 300) bounds each test;
# LIBRDKAFKA_TESTS="0012 0103" runs only these; LIBRDKAFKA_RETRY_ONCE
# replaces RETRY_ONCE below.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONF_PORT="${CONF_PORT:-29092}"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
DATA="${HERE}/librdkafka"
: "${QUICK:=0}" "${WORK:?}" "${BROKER_BIN:?}"

TEST_TIMEOUT="${LIBRDKAFKA_TEST_TIMEOUT:-300}"
# The Kafka version test-runner assumes (TEST_KAFKA_VERSION): librdkafka
# 2.0.2's test Makefile targets 3.1.0; our broker's API versions are at
# least those of 3.1 for everything the tests use.
KAFKA_VERSION_CLAIM=3.1.0
# Quick mode: produce/consume, idempotent producer retries (sockem), the
# transactional producer and read_committed consumption.
QUICK_TESTS="0012 0076 0103 0129"
# Test numbers with sub-tests in librdkafka's "noautocreate" scenario
# (tests/test.c: .scenario = "noautocreate"), and those with nothing else.
# 0045 has two such sub-tests too, but the first deletes a subscribed topic
# and then hangs in rd_kafka_destroy (the librdkafka 2.0.x bug of skip.txt),
# so 0045 runs its default-scenario sub-tests only.
NOAUTOCREATE_TESTS="0107 0111"
NOAUTOCREATE_ONLY="0107 0111"
# Tests run a second time when they fail, counted as passed if the second
# run passes (results.tsv keeps the first failure): 0098 deletes each
# sub-test's topic while its consumer is still open, which now and then
# hits the same librdkafka destroy hang.
RETRY_ONCE="${LIBRDKAFKA_RETRY_ONCE-0098}"
# Tests that need SASL (0135: credentials set at run time, after a failed
# authentication): their broker has SASL_PLAINTEXT listeners, and
# test.conf authenticates with PLAIN.
SASL_TESTS="0135"

say() { echo "[librdkafka] $*"; }

# ---------------------------------------------------------------- install
APT_UPDATED=0
apt_update() {
  (( APT_UPDATED )) && return 0
  as_root apt-get update -qq
  APT_UPDATED=1
}
ensure_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "${p}" 2>/dev/null | grep -q 'ok installed' \
      || missing+=("${p}")
  done
  (( ${#missing[@]} )) || return 0
  say "apt-get install ${missing[*]}"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

# A deb-src entry for every deb entry (Debian 12: debian.sources).
ensure_deb_src() {
  if grep -rqsE '^(Types:.*deb-src|deb-src[[:space:]])' \
      /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  say "adding deb-src entries"
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      | as_root tee /etc/apt/sources.list.d/deb-src.sources >/dev/null
  else
    grep -hE '^deb[[:space:]]' /etc/apt/sources.list 2>/dev/null \
      | sed 's/^deb[[:space:]]/deb-src /' \
      | as_root tee /etc/apt/sources.list.d/deb-src.list >/dev/null
  fi
  APT_UPDATED=0
}

ensure_packages dpkg-dev build-essential pkg-config python3 coreutils \
  zlib1g-dev libssl-dev libzstd-dev liblz4-dev libsasl2-dev \
  libcurl4-openssl-dev rapidjson-dev

find_src() {
  [[ -d "${WORK}/src" ]] || return 0
  find "${WORK}/src" -maxdepth 1 -type d -name 'librdkafka-*' | sort | tail -1
}
SRC="$(find_src)"
if [[ -z "${SRC}" || ! -f "${SRC}/configure" ]]; then
  ensure_deb_src
  apt_update
  rm -rf "${WORK}/src"
  mkdir -p "${WORK}/src"
  say "apt-get source librdkafka"
  (cd "${WORK}/src" && apt-get source -qq librdkafka) >"${WORK}/source.log" 2>&1 \
    || { tail -20 "${WORK}/source.log"; exit 1; }
  SRC="$(find_src)"
fi
say "source: ${SRC}"

# ------------------------------------------------------------------ build
if [[ ! -f "${SRC}/src/librdkafka.so.1" || ! -f "${SRC}/src-cpp/librdkafka++.so.1" ]]; then
  say "building librdkafka (./configure && make -j2; log: ${WORK}/build.log)"
  (cd "${SRC}" && ./configure --no-download && make -j2) >"${WORK}/build.log" 2>&1 \
    || { tail -30 "${WORK}/build.log"; exit 1; }
fi
if [[ ! -x "${SRC}/tests/test-runner" ]]; then
  say "building the tests (make -C tests build; log: ${WORK}/build-tests.log)"
  make -C "${SRC}/tests" -j2 build >"${WORK}/build-tests.log" 2>&1 \
    || { tail -30 "${WORK}/build-tests.log"; exit 1; }
fi
TESTS_DIR="${SRC}/tests"

# ----------------------------------------------- stand-in KAFKA_PATH (Java)
KAFKA_HOME=""
setup_kafka_path() {
  local dir="${WORK}/kafka" stamp want
  want="$(cat "${DATA}/pom.xml" "${DATA}/KafkaTopics.java" | sha256sum | cut -d' ' -f1)"
  stamp="$(cat "${dir}/.ready" 2>/dev/null || true)"
  if [[ "${stamp}" != "${want}" ]]; then
    ensure_packages default-jdk-headless maven
    rm -rf "${dir}"
    mkdir -p "${dir}/libs" "${dir}/bin" "${dir}/classes"
    say "fetching kafka-clients (mvn; log: ${WORK}/mvn.log)"
    mvn -B -q -f "${DATA}/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="${dir}/libs" >"${WORK}/mvn.log" 2>&1 || return 1
    javac -d "${dir}/classes" -cp "${dir}/libs/*" "${DATA}/KafkaTopics.java" \
      >>"${WORK}/mvn.log" 2>&1 || return 1
    cat >"${dir}/bin/kafka-run-class.sh" <<'EOF'
#!/bin/sh
# Stand-in for Kafka's bin/kafka-run-class.sh: run a class with the jars.
D="$(cd "$(dirname "$0")/.." && pwd)"
exec java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
  -cp "${CLASSPATH:+${CLASSPATH}:}${D}/classes:${D}/libs/*" "$@"
EOF
    cat >"${dir}/bin/kafka-topics.sh" <<'EOF'
#!/bin/sh
# Stand-in for Kafka's bin/kafka-topics.sh (see KafkaTopics.java).
exec "$(dirname "$0")/kafka-run-class.sh" KafkaTopics "$@"
EOF
    chmod +x "${dir}/bin/"*.sh
    echo "${want}" >"${dir}/.ready"
  fi
  KAFKA_HOME="${dir}"
}
if (( ! QUICK )); then
  if setup_kafka_path; then
    say "KAFKA_PATH stand-in: ${KAFKA_HOME}"
  else
    say "WARNING: no Java stand-in for KAFKA_PATH (see ${WORK}/mvn.log);" \
      "tests that need Kafka's tools will fail"
    tail -5 "${WORK}/mvn.log" || true
  fi
fi

# ------------------------------------------------------------------ tests
skip_reason() {
  awk -v n="$1" '$1 == n { sub(/^[0-9]+[ \t]+/, ""); print; exit }' "${DATA}/skip.txt"
}

if [[ -n "${LIBRDKAFKA_TESTS:-}" ]]; then
  read -r -a TESTS <<<"${LIBRDKAFKA_TESTS}"
elif (( QUICK )); then
  read -r -a TESTS <<<"${QUICK_TESTS}"
else
  mapfile -t TESTS < <(grep -oE '^[[:space:]]*_TEST\(0[0-9]{3}_' "${TESTS_DIR}/test.c" \
    | grep -oE '[0-9]{4}' | sort -u)
fi

RUNNER_ARGS=(-L -p1)
(( QUICK )) && RUNNER_ARGS+=(-Q)

mkdir -p "${WORK}/logs"
rm -f "${WORK}"/logs/*.log "${WORK}/broker-start.log"
RESULTS="${WORK}/results.tsv"
printf 'test\tresult\tseconds\tdetail\n' >"${RESULTS}"

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }

# start_test_broker [flags...]: start_broker on CONF_PORT, or, when that
# port or the next is taken (e.g. a client's ephemeral port still in
# TIME-WAIT, should CONF_PORT be set inside the ephemeral range), on CONF_PORT+2, +4, +6.
PORT_BASE="${CONF_PORT}"
start_test_broker() {
  local try
  for try in 0 1 2 3 4 5 6 7; do
    CONF_PORT=$(( PORT_BASE + (try % 4) * 2 ))
    if start_broker "$@" 2>>"${WORK}/broker-start.log"; then
      return 0
    fi
    say "broker did not start on ${CONF_PORT}; trying another port"
    sleep 1
  done
  return 1
}

# run_scenario NNNN SCENARIO: sets R_STATUS (passed/failed/skipped),
# R_DETAIL, R_NAMES (failing test names).
run_scenario() {
  local num="$1" scen="$2" tag="$1" log rc auto=true dead="" rows
  [[ "${scen}" == default ]] || tag="${num}-${scen}"
  [[ "${scen}" == noautocreate ]] && auto=false
  log="${WORK}/logs/${tag}.log"

  local flags=(--num-partitions 4 --auto-create-topics "${auto}") sasl=""
  if [[ " ${SASL_TESTS} " == *" ${num} "* ]]; then
    sasl=1
    printf 'admin:admin-secret\nbroker:broker-secret\n' >"${WORK}/sasl-users"
    flags+=(--sasl-enabled-mechanisms PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
      --sasl-plain-users-file "${WORK}/sasl-users" --sasl-inter-broker-user broker)
  fi
  if ! start_test_broker "${flags[@]}"; then
    R_STATUS=failed R_NAMES="${num}" R_DETAIL="the broker did not start (${WORK}/broker-start.log)"
    return 0
  fi
  sed "s/@BOOTSTRAP@/${BOOTSTRAP}/" "${DATA}/test.conf.in" >"${WORK}/test.conf"
  if [[ -n "${sasl}" ]]; then
    printf '%s\n' security.protocol=SASL_PLAINTEXT sasl.mechanism=PLAIN \
      sasl.username=admin sasl.password=admin-secret >>"${WORK}/test.conf"
  fi
  local env=(TESTS="${num}" TEST_MODE=bare TEST_SCENARIO="${scen}"
    TEST_KAFKA_VERSION="${KAFKA_VERSION_CLAIM}"
    RDKAFKA_TEST_CONF="${WORK}/test.conf" RDKAFKA_GITVER="$(basename "${SRC}")"
    LD_LIBRARY_PATH="../src:../src-cpp")
  [[ -n "${KAFKA_HOME}" ]] && env+=(KAFKA_PATH="${KAFKA_HOME}" BROKERS="${BOOTSTRAP}")
  local t0=${SECONDS}
  set +e
  (cd "${TESTS_DIR}" && env -u CI "${env[@]}" \
    timeout -k 10 "${TEST_TIMEOUT}" ./test-runner "${RUNNER_ARGS[@]}"
    # (not exec'd: this shell, not ours, tells the log of a crash signal)
    exit $?) >"${log}" 2>&1
  rc=$?
  set -e
  kill -0 "${BROKER_PID}" 2>/dev/null || dead=1
  stop_broker
  cp "${WORK}/broker/broker.log" "${WORK}/logs/${tag}.broker.log"

  # Summary rows: "| 0103_transactions | PASSED | 12.3s | reason".
  rows="$(strip_ansi "${log}" | grep -E '^\| [0-9]{4}_[A-Za-z0-9_]+ +\| +[A-Z]+ +\|' || true)"
  local failed_rows
  failed_rows="$(grep -E '\| +(FAILED|RUNNING) +\|' <<<"${rows}" || true)"
  R_NAMES="$(awk -F'|' '{ gsub(/ /, "", $2); print $2 }' <<<"${failed_rows}" | grep . | tr '\n' ' ' || true)"
  # The first failure's message: the line after '### Test "..." failed at'.
  local why
  why="$(strip_ansi "${log}" | grep -A1 -m1 -E '^### Test .* failed at ' | tail -1 \
    | cut -c1-240 || true)"
  R_DETAIL=""
  if (( (rc == 124 || rc == 137) && SECONDS - t0 >= TEST_TIMEOUT )); then
    R_STATUS=failed
    R_DETAIL="killed after ${TEST_TIMEOUT} s${why:+; ${why}}"
  elif [[ -n "${failed_rows}" ]]; then
    R_STATUS=failed
    R_DETAIL="${why:-$(awk -F'|' '{ print $5 }' <<<"${failed_rows}" | sed 's/^ *//' | head -1)}"
  elif (( rc != 0 )); then
    R_STATUS=failed
    R_DETAIL="test-runner exited with ${rc}${why:+; ${why}}"
  elif grep -qE '\| +PASSED +\|' <<<"${rows}"; then
    R_STATUS=passed
  else
    R_STATUS=skipped
    R_DETAIL="$(grep -E '\| +SKIPPED +\|' <<<"${rows}" | awk -F'|' '{ print $5 }' \
      | sed 's/^ *//' | head -1)"
    [[ -n "${R_DETAIL}" ]] || R_DETAIL="no sub-test applies"
  fi
  if [[ "${R_STATUS}" == failed && -z "${R_NAMES}" ]]; then
    R_NAMES="$(strip_ansi "${log}" | grep -oE 'Running test [0-9]{4}_[A-Za-z0-9_]+' \
      | tail -1 | cut -d' ' -f3)"
    [[ -n "${R_NAMES}" ]] || R_NAMES="${num}"
  fi
  if [[ -n "${dead}" ]]; then
    R_STATUS=failed
    R_DETAIL="broker exited during the test; ${R_DETAIL}"
  fi
  if [[ "${scen}" != default ]]; then
    R_DETAIL="${R_DETAIL:+[${scen}] ${R_DETAIL}}"
    # shellcheck disable=SC2001
    [[ -n "${R_NAMES}" ]] && R_NAMES="$(sed "s/\([^ ][^ ]*\)/\1[${scen}]/g" <<<"${R_NAMES}")"
  fi
  return 0
}

# run_number NNNN: every scenario of one test number; sets status
# (passed/failed/skipped), detail and names (failing test names).
run_number() {
  local num="$1" scen scens=(default)
  [[ " ${NOAUTOCREATE_ONLY} " == *" ${num} "* ]] && scens=()
  [[ " ${NOAUTOCREATE_TESTS} " == *" ${num} "* ]] && scens+=(noautocreate)
  status=skipped detail="" names=""
  for scen in "${scens[@]}"; do
    run_scenario "${num}" "${scen}"
    case "${R_STATUS}" in
      failed) status=failed; names="${names}${R_NAMES} " ;;
      passed) [[ "${status}" == failed ]] || status=passed ;;
    esac
    if [[ -n "${R_DETAIL}" ]]; then detail="${detail:+${detail}; }${R_DETAIL}"; fi
  done
  return 0
}

PASSED=0 FAILED=0 SKIPPED=0
FAILING=()
START_ALL=$(date +%s)
for num in "${TESTS[@]}"; do
  reason="$(skip_reason "${num}")"
  if [[ -n "${reason}" ]]; then
    SKIPPED=$(( SKIPPED + 1 ))
    printf '%s\tskipped\t0\t%s\n' "${num}" "skip.txt: ${reason}" >>"${RESULTS}"
    say "${num} skipped (${reason})"
    continue
  fi
  t0=$(date +%s)
  run_number "${num}"
  if [[ "${status}" == failed && " ${RETRY_ONCE} " == *" ${num} "* ]]; then
    say "${num} failed (${detail}); running it once more"
    for f in "${WORK}/logs/${num}"*.log; do mv "${f}" "${f%.log}.try1.log"; done
    first="${detail}"
    run_number "${num}"
    if [[ "${status}" == passed ]]; then
      detail="passed on the second run; first run: ${first} (logs/${num}*.try1.log)"
    fi
  fi
  secs=$(( $(date +%s) - t0 ))
  case "${status}" in
    passed) PASSED=$(( PASSED + 1 )) ;;
    failed) FAILED=$(( FAILED + 1 )); read -r -a n <<<"${names}"; FAILING+=("${n[@]}") ;;
    skipped) SKIPPED=$(( SKIPPED + 1 )) ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "${num}" "${status}" "${secs}" "$(tr '\t' ' ' <<<"${detail}")" >>"${RESULTS}"
  say "${num} ${status} (${secs} s)${detail:+: ${detail}}"
  if [[ "${status}" == failed ]]; then
    broker_warnings | sed 's/^/    /'
  fi
done
say "ran ${#TESTS[@]} tests in $(( $(date +%s) - START_ALL )) s; results: ${RESULTS}, logs: ${WORK}/logs"

report librdkafka "${PASSED}" "${FAILED}" "${SKIPPED}" "${FAILING[@]}"
