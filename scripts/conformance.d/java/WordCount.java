// Kafka Streams word count with processing.guarantee=exactly_once_v2, for
// scripts/conformance.d/java/run.py: reads lines from the input topic,
// writes (word, running count) to the output topic, and exits after
// args[4] seconds without input (or on SIGTERM). GROUP_PROTOCOL (optional)
// is Kafka Streams' `group.protocol`: classic (its default) or streams
// (KIP-1071, the broker assigns the tasks); THREADS (optional) its
// `num.stream.threads`.
//
// Usage: WordCount BOOTSTRAP APP_ID INPUT OUTPUT IDLE_SECONDS STATE_DIR
//        [GROUP_PROTOCOL [THREADS]]
import java.time.Duration;
import java.util.Arrays;
import java.util.Locale;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

public final class WordCount {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[1]);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 200);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        if (args.length > 6) {
            props.put(StreamsConfig.GROUP_PROTOCOL_CONFIG, args[6]);
        }
        if (args.length > 7) {
            props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(args[7]));
        }

        StreamsBuilder builder = new StreamsBuilder();
        AtomicLong lastInput = new AtomicLong(System.currentTimeMillis());
        builder.stream(args[2], Consumed.with(Serdes.String(), Serdes.String()))
            .peek((k, v) -> lastInput.set(System.currentTimeMillis()))
            .flatMapValues(line -> Arrays.asList(line.toLowerCase(Locale.ROOT).split("\\W+")))
            .filter((k, word) -> !word.isEmpty())
            .groupBy((k, word) -> word)
            .count()
            .toStream()
            .to(args[3], Produced.with(Serdes.String(), Serdes.Long()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            System.out.println("state " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
        }));
        streams.start();
        long idleMs = Long.parseLong(args[4]) * 1000;
        while (!done.await(500, java.util.concurrent.TimeUnit.MILLISECONDS)) {
            if (System.currentTimeMillis() - lastInput.get() > idleMs) {
                break;
            }
        }
        KafkaStreams.State state = streams.state();
        streams.close(Duration.ofSeconds(30));
        System.out.println("final state " + state);
        System.exit(state == KafkaStreams.State.ERROR ? 1 : 0);
    }
}
