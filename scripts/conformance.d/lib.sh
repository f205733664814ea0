# Shared by the suites of scripts/conformance (sourced, not run).
#
# A suite script is scripts/conformance.d/NN-name.sh. It is run with
#   REPO_ROOT  the repository
#   WORK       its own scratch directory (target/conformance/<name>), kept
#              between runs so that downloads and builds are reused
#   QUICK      1 under --quick (CI): a subset that runs in a few minutes
#   BROKER_BIN the broker binary to test
# It starts its broker(s) with start_broker, runs its tests, and ends with
# report NAME PASSED FAILED SKIPPED [failing test names...], which prints
# the suite's line; its exit code is 0 when nothing failed.

set -euo pipefail

# start_broker [broker flags...]: a broker on a fresh data directory
# ($WORK/broker), 127.0.0.1, base port $CONF_PORT (default 29092; below the ephemeral port range, where a client connection in TIME_WAIT can hold the port). Sets
# BOOTSTRAP and BROKER_PID; the broker is stopped when the suite exits.
start_broker() {
  stop_broker
  local port="${CONF_PORT:-29092}"
  rm -rf "${WORK}/broker"
  mkdir -p "${WORK}/broker"
  "${BROKER_BIN}" --data-dir "${WORK}/broker/data" --listen-host 127.0.0.1 \
    --base-port "${port}" "$@" >"${WORK}/broker/broker.log" 2>&1 &
  BROKER_PID=$!
  BOOTSTRAP="127.0.0.1:${port}"
  local deadline=$(( $(date +%s) + 30 ))
  until (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; do
    if ! kill -0 "${BROKER_PID}" 2>/dev/null; then
      echo "broker exited at start:" >&2
      tail -20 "${WORK}/broker/broker.log" >&2
      return 1
    fi
    if (( $(date +%s) > deadline )); then
      echo "broker did not listen on ${port} within 30 s" >&2
      return 1
    fi
    sleep 0.2
  done
  trap stop_broker EXIT
}

stop_broker() {
  if [[ -n "${BROKER_PID:-}" ]] && kill -0 "${BROKER_PID}" 2>/dev/null; then
    kill "${BROKER_PID}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "${BROKER_PID}" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "${BROKER_PID}" 2>/dev/null || true
  fi
  BROKER_PID=""
  # The data directory holds a preallocated 1 GiB WAL; four suites' worth
  # filled a CI disk once. The log stays for reading.
  if [[ "${KEEP_BROKER_DATA:-0}" != "1" ]]; then
    rm -rf "${WORK}/broker/data"
  fi
}

# broker_died: true (and the broker log's tail printed) when the suite's
# broker is no longer running.
broker_died() {
  if kill -0 "${BROKER_PID}" 2>/dev/null; then
    return 1
  fi
  echo "the broker exited during the run; last lines of its log:"
  tail -20 "${WORK}/broker/broker.log" | sed 's/^/    /'
  return 0
}

# broker_warnings: the broker log's most frequent WARN/ERROR lines.
broker_warnings() {
  echo "broker WARN/ERROR lines ($(grep -cE ' (WARN|ERROR) ' "${WORK}/broker/broker.log" || true)), most frequent:"
  grep -E ' (WARN|ERROR) ' "${WORK}/broker/broker.log" \
    | sed -E 's/^[^ ]+ +//; s/[0-9]+/N/g' | cut -c1-200 | sort | uniq -c | sort -rn | head -10 || true
}

# report NAME PASSED FAILED SKIPPED [failing...]
report() {
  local name="$1" passed="$2" failed="$3" skipped="$4"
  shift 4
  echo "${name}: ${passed} passed, ${failed} failed, ${skipped} skipped"
  if (( failed > 0 )); then
    echo "  failing: $*"
  fi
  [[ "${failed}" == "0" ]]
}

# report_summary NAME SUMMARY RUNNER_RC "OK_RCS" BROKER_DIED: prints the
# failing-test lines of SUMMARY (a file ending in `RESULT P F S [names]`,
# written by the suite's summarizer), the broker's most frequent warnings,
# and the suite's line. A runner exit code not in OK_RCS with no failure
# counted, and a broker that died (1), each count as one failure.
report_summary() {
  local name="$1" summary="$2" rc="$3" ok_rcs="$4" died="$5"
  local _r P F S FAILING
  grep -v '^RESULT ' "${summary}" || true
  read -r _r P F S FAILING < <(grep '^RESULT ' "${summary}")
  if [[ " ${ok_rcs} " != *" ${rc} "* ]] && (( F == 0 )); then
    F=1
    FAILING="(runner exit ${rc})"
  fi
  if (( died )); then
    F=$(( F + 1 ))
    FAILING="${FAILING} (broker exited)"
  fi
  broker_warnings
  # shellcheck disable=SC2086
  report "${name}" "${P}" "${F}" "${S}" ${FAILING}
}

as_root() {
  if [[ "$(id -u)" == "0" ]]; then
    "$@"
  else
    sudo -n "$@"
  fi
}
