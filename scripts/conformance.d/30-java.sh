#!/usr/bin/env bash
# Kafka's own Java tools and clients (Apache Kafka 4.x from Maven Central:
# kafka_2.13, kafka-tools, kafka-streams) against a fresh broker. The checks
# are in java/run.py (its docstring lists them).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
if (( ${#missing[@]} > 0 )); then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
python3 -c 'import confluent_kafka' 2>/dev/null || \
  python3 -m pip install -q --break-system-packages "confluent-kafka==2.16.1"

LIB="${WORK}/lib"
STAMP="${LIB}/.pom-$(sha256sum "${HERE}/java/pom.xml" | cut -c1-16)"
if [[ ! -f "${STAMP}" ]]; then
  rm -rf "${LIB}"
  mvn -q -f "${HERE}/java/pom.xml" dependency:copy-dependencies -DoutputDirectory="${LIB}"
  touch "${STAMP}"
fi
mkdir -p "${WORK}/classes"
javac -d "${WORK}/classes" -cp "${LIB}/*" "${HERE}/java/WordCount.java" \
  "${HERE}/java/EpochCheck.java" "${HERE}/java/UnregisterController.java"

export CONF_PORT="${CONF_PORT:-29292}"
start_broker --transaction-abort-check-interval-ms 1000
args=("${BOOTSTRAP}" "${LIB}" "${WORK}/classes" "${WORK}")
[[ "${QUICK}" == "1" ]] && args+=(--quick)
set +e
python3 "${HERE}/java/run.py" "${args[@]}"
rc=$?
set -e
if [[ ${rc} -ne 0 ]]; then
  broker_warnings
fi
exit "${rc}"
