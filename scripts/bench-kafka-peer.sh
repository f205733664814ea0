# Apache Kafka as the side-by-side peer of scripts/bench (sourced by it,
# with --peer kafka): Kafka 4.4.0 from Maven Central, single node, KRaft
# combined mode, started empty before each preset, in two modes:
#   kafka        its defaults (acknowledged when in the page cache)
#   kafka-fsync  log.flush.interval.messages=1 (fsync before acknowledging,
#                durable like ours)
# then Kafka's own ProducerPerformance against ours and both modes, and a
# table of every figure with its ratio to ours.
#
# Uses from scripts/bench: PERF, OUT, PRESETS, EXTRA, FILES, LABEL,
# fresh_broker/stop_broker/BOOTSTRAP (ours), STATUS.

KAFKA_VERSION_PEER="4.4.0"
KAFKA_DIR="${REPO_ROOT:-$(pwd)}/target/kafka-peer"
KAFKA_PORT="${BENCH_KAFKA_PORT:-19592}"
KAFKA_PID=""

kafka_jars() {
  local pom="scripts/conformance.d/java/pom.xml"
  local stamp
  stamp="${KAFKA_DIR}/lib/.pom-$(sha256sum "${pom}" | cut -c1-16)"
  if [[ ! -f "${stamp}" ]]; then
    command -v mvn >/dev/null || { echo "bench: mvn is needed for --peer kafka" >&2; return 1; }
    rm -rf "${KAFKA_DIR}/lib"
    mvn -q -f "${pom}" dependency:copy-dependencies -DoutputDirectory="${KAFKA_DIR}/lib" >&2
    touch "${stamp}"
  fi
}

stop_kafka() {
  if [[ -n "${KAFKA_PID}" ]]; then
    kill "${KAFKA_PID}" 2>/dev/null || true
    for _ in $(seq 300); do
      kill -0 "${KAFKA_PID}" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "${KAFKA_PID}" 2>/dev/null || true
    wait "${KAFKA_PID}" 2>/dev/null || true
    KAFKA_PID=""
  fi
}

# fresh_kafka MODE: Kafka with an empty data directory.
fresh_kafka() {
  local mode="$1"
  stop_kafka
  local dir="${TMP}/kafka-${mode}"
  rm -rf "${dir}"
  mkdir -p "${dir}"
  cat >"${dir}/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$((KAFKA_PORT + 1))
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:$((KAFKA_PORT + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${dir}/logs
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  if [[ "${mode}" == "kafka-fsync" ]]; then
    echo "log.flush.interval.messages=1" >>"${dir}/server.properties"
  fi
  local cp="${KAFKA_DIR}/lib/*"
  java -cp "${cp}" kafka.tools.StorageTool format --standalone \
    -t "$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')" \
    -c "${dir}/server.properties" >"${dir}/format.log" 2>&1
  # kafka-server-start.sh's heap.
  java -Xmx1G -Xms1G -cp "${cp}" kafka.Kafka "${dir}/server.properties" >"${dir}/kafka.log" 2>&1 &
  KAFKA_PID=$!
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/${KAFKA_PORT}") 2>/dev/null && return 0
    kill -0 "${KAFKA_PID}" 2>/dev/null || { echo "bench: kafka exited:" >&2; tail -20 "${dir}/kafka.log" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: kafka did not listen on ${KAFKA_PORT}" >&2
  return 1
}

# producer_performance NAME BOOTSTRAP: Kafka's ProducerPerformance, 1 KiB
# records at full speed, acks=all, to a new 1-partition topic.
producer_performance() {
  local name="$1" bootstrap="$2"
  local cp="${KAFKA_DIR}/lib/*"
  local quiet=(-Dorg.slf4j.simpleLogger.defaultLogLevel=warn)
  java "${quiet[@]}" -cp "${cp}" org.apache.kafka.tools.TopicCommand --bootstrap-server "${bootstrap}" \
    --create --topic pp --partitions 1 >/dev/null 2>&1 || true
  java "${quiet[@]}" -cp "${cp}" org.apache.kafka.tools.ProducerPerformance --topic pp \
    --num-records "${BENCH_PP_RECORDS:-2000000}" --record-size 1024 --throughput -1 \
    --producer-props "bootstrap.servers=${bootstrap}" acks=all linger.ms=5 batch.size=1048576 \
    2>/dev/null | tail -1 | sed "s/^/${name}: /" | tee -a "${OUT}/producer-performance.txt"
}

run_kafka_peer() {
  kafka_jars || { STATUS=1; return; }
  trap 'stop_kafka; cleanup' EXIT
  local mode preset json
  for mode in kafka kafka-fsync; do
    for preset in $PRESETS; do
      echo "bench: ${preset} against Apache Kafka ${KAFKA_VERSION_PEER} (${mode})" >&2
      fresh_kafka "${mode}" || { STATUS=1; continue; }
      settle_disk
      json="$OUT/${mode}-${preset}.json"
      if ! "$PERF" run "$preset" --bootstrap "127.0.0.1:${KAFKA_PORT}" --label "${mode} ${preset}" -q \
          --json "$json" --plot "$OUT/${mode}-${preset}.png" "${EXTRA[@]}" \
          >"$OUT/${mode}-${preset}.txt" 2>&1; then
        echo "bench: ${preset} against ${mode} failed:" >&2
        cat "$OUT/${mode}-${preset}.txt" >&2
        STATUS=1
      fi
      [[ -f "$json" ]] && FILES+=("$json")
    done
  done
  stop_kafka
  rm -f "${OUT}/producer-performance.txt"
  echo "bench: Kafka's ProducerPerformance against each" >&2
  fresh_broker
  settle_disk
  producer_performance "${LABEL}" "${BOOTSTRAP}"
  stop_broker
  for mode in kafka kafka-fsync; do
    fresh_kafka "${mode}" && settle_disk && producer_performance "${mode}" "127.0.0.1:${KAFKA_PORT}"
  done
  stop_kafka
  echo
  echo "perf presets and ProducerPerformance, ours and Apache Kafka ${KAFKA_VERSION_PEER}, one run ($(date -u +%FT%TZ))"
  python3 scripts/bench_table.py "${LABEL}" "${OUT}/producer-performance.txt" "${FILES[@]}" \
    | tee "${OUT}/table.md"
  [[ "$OUT" != "$TMP" ]] && echo "results, plots and table.md in $OUT"
}
