// The Java consumer's leader-epoch checks (KIP-320) against a partition
// that has changed leader, for scripts/conformance.d/java/run.py. Prints:
//
//   epochs E:N ...      the leader epoch of every record, run-length coded
//   truncation O E      LogTruncationException after seeking to SEEK at
//                       epoch 0 with auto.offset.reset=none: the divergent
//                       offset and epoch the broker's answer gave
//   reset-to O          the first offset read after the same seek with
//                       auto.offset.reset=earliest
//   first O             the first offset read after seeking to SEEK at
//                       epoch 1
//
// Usage: EpochCheck BOOTSTRAP TOPIC SEEK
import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.LogTruncationException;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class EpochCheck {
    static KafkaConsumer<byte[], byte[]> consumer(String bootstrap, String reset) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, reset);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        return new KafkaConsumer<>(p);
    }

    /** The first record read after seeking to `offset` at `epoch`. */
    static long firstAfterSeek(KafkaConsumer<byte[], byte[]> c, TopicPartition tp, long offset,
                               int epoch) {
        c.assign(List.of(tp));
        c.seek(tp, new OffsetAndMetadata(offset, Optional.of(epoch), ""));
        long deadline = System.currentTimeMillis() + 30_000;
        while (System.currentTimeMillis() < deadline) {
            ConsumerRecords<byte[], byte[]> recs = c.poll(Duration.ofMillis(500));
            for (ConsumerRecord<byte[], byte[]> r : recs) {
                return r.offset();
            }
        }
        throw new IllegalStateException("nothing read after seeking to " + offset);
    }

    public static void main(String[] args) {
        String bootstrap = args[0];
        TopicPartition tp = new TopicPartition(args[1], 0);
        long seek = Long.parseLong(args[2]);

        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap, "earliest")) {
            c.assign(List.of(tp));
            c.seekToBeginning(List.of(tp));
            long end = c.endOffsets(List.of(tp)).get(tp);
            StringBuilder runs = new StringBuilder("epochs");
            int last = Integer.MIN_VALUE;
            int run = 0;
            long deadline = System.currentTimeMillis() + 30_000;
            while (c.position(tp) < end && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
                    int e = r.leaderEpoch().orElse(-1);
                    if (e != last && run > 0) {
                        runs.append(' ').append(last).append(':').append(run);
                        run = 0;
                    }
                    last = e;
                    run++;
                }
            }
            runs.append(' ').append(last).append(':').append(run);
            System.out.println(runs);
        }
        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap, "none")) {
            firstAfterSeek(c, tp, seek, 0);
            System.out.println("no truncation detected");
        } catch (LogTruncationException e) {
            OffsetAndMetadata d = e.divergentOffsets().get(tp);
            System.out.println("truncation " + d.offset() + " " + d.leaderEpoch().orElse(-1));
        }
        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap, "earliest")) {
            System.out.println("reset-to " + firstAfterSeek(c, tp, seek, 0));
        }
        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap, "earliest")) {
            System.out.println("first " + firstAfterSeek(c, tp, seek, 1));
        }
    }
}
