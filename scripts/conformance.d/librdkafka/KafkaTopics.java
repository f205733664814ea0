// A stand-in for Kafka's bin/kafka-topics.sh, enough for librdkafka's tests
// (test_kafka_topics() in tests/test.c, with a broker version >= 3.0):
//   --bootstrap-server S --create --topic T [--partitions N]
//       [--replication-factor R] [--config K=V]...
//   --bootstrap-server S --alter --topic T --partitions N
//   --bootstrap-server S --delete --topic T
// It uses the Admin client (CreateTopics, CreatePartitions, DeleteTopics)
// and exits non-zero when the broker refuses.
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewPartitions;
import org.apache.kafka.clients.admin.NewTopic;

public class KafkaTopics {
  public static void main(String[] args) throws Exception {
    String bootstrap = null, topic = null, action = null;
    Optional<Integer> partitions = Optional.empty();
    Optional<Short> replication = Optional.empty();
    Map<String, String> configs = new HashMap<>();
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--bootstrap-server": bootstrap = args[++i]; break;
        case "--create": case "--alter": case "--delete": action = args[i]; break;
        case "--topic": topic = args[++i]; break;
        case "--partitions": partitions = Optional.of(Integer.parseInt(args[++i])); break;
        case "--replication-factor": replication = Optional.of(Short.parseShort(args[++i])); break;
        case "--config": {
          String kv = args[++i];
          int eq = kv.indexOf('=');
          configs.put(kv.substring(0, eq), kv.substring(eq + 1));
          break;
        }
        default:
          System.err.println("kafka-topics.sh (stand-in): unsupported argument " + args[i]);
          System.exit(2);
      }
    }
    if (bootstrap == null || topic == null || action == null) {
      System.err.println("kafka-topics.sh (stand-in): needs --bootstrap-server, --topic and an action");
      System.exit(2);
    }
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    try (Admin admin = Admin.create(props)) {
      switch (action) {
        case "--create":
          admin.createTopics(List.of(new NewTopic(topic, partitions, replication).configs(configs)))
              .all().get();
          break;
        case "--alter":
          admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(partitions.orElseThrow())))
              .all().get();
          break;
        default:
          admin.deleteTopics(List.of(topic)).all().get();
      }
    } catch (ExecutionException e) {
      System.err.println("kafka-topics.sh (stand-in): " + action + " " + topic + ": " + e.getCause());
      System.exit(1);
    }
    System.out.println("kafka-topics.sh (stand-in): " + action + " " + topic + ": done");
  }
}
