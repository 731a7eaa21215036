package example;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Prints one case's history (or every case's) from bridge's topics: one rebuilt notification
 * per line, as JSON, each partition in order. A case's records share its key, hence its
 * partition of each topic: assign the partitions, read from the beginning, keep the records
 * whose key is the case id, stop once nothing new came for {@code --until-idle} seconds.
 *
 * <pre>
 * mvn -q -B package
 * java -jar target/airudder-case-history.jar --bootstrap-servers kafka:9092 --case-id 12345.0
 * java -jar target/airudder-case-history.jar --registry http://schema-registry:8081 ...
 * </pre>
 *
 * <p>Exit 0 when every record read was decoded; 1 when one was not (each said on stderr);
 * 2 on a bad option or unreadable schemas.
 */
public final class CaseHistory {
  private CaseHistory() {}

  public static void main(String[] args) throws Exception {
    if (List.of(args).contains("--help") || List.of(args).contains("-h")) {
      System.out.println(Options.USAGE);
      return;
    }
    Options options;
    Schemas schemas;
    try {
      options = Options.parse(args, System.getenv());
      schemas = Schemas.load(options.schemaDir());
    } catch (IllegalArgumentException | UncheckedIOException e) {
      System.err.println("case-history: " + e.getMessage());
      System.exit(2);
      return;
    }
    if (options.listSchemas()) {
      list(schemas);
      return;
    }
    System.exit(run(options, new ValueDecoder(schemas, options.registryUrl())));
  }

  /** One JSON line per schema file: its full name and the fingerprint Avro computes. */
  static void list(Schemas schemas) {
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    ObjectMapper json = new ObjectMapper();
    schemas.files.forEach((file, schema) -> {
      ObjectNode line = json.createObjectNode();
      line.put("file", file.toString());
      line.put("name", schema.getFullName());
      line.put("fingerprint", Schemas.hex(Schemas.fingerprint(schema)));
      out.println(line.toString());
    });
    out.flush();
  }

  static int run(Options options, ValueDecoder decoder) throws InterruptedException {
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, options.bootstrapServers());
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    // The value's framing says how to read it: the bytes are decoded here, not by Kafka.
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG,
        ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.CLIENT_ID_CONFIG, "airudder-case-history");
    int read = 0;
    int printed = 0;
    int failed = 0;
    try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(props)) {
      // Assigned partitions, no consumer group: starts at once and commits nothing.
      Map<String, List<PartitionInfo>> existing = consumer.listTopics(Duration.ofSeconds(30));
      List<TopicPartition> partitions = new ArrayList<>();
      for (String topic : options.topics()) {
        List<PartitionInfo> infos = existing.get(topic);
        if (infos == null) {
          System.err.println("case-history: topic " + topic + " does not exist (yet)");
          continue;
        }
        infos.forEach(p -> partitions.add(new TopicPartition(topic, p.partition())));
      }
      if (partitions.isEmpty()) {
        return 0;
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      // Until nothing new for a while, rather than up to the end offsets: a consumer of a live
      // topic has no end, and some brokers misreport them.
      long idleNanos = (long) (options.untilIdleSeconds() * 1e9);
      long last = System.nanoTime();
      while (System.nanoTime() - last < idleNanos) {
        ConsumerRecords<String, byte[]> records = consumer.poll(Duration.ofMillis(200));
        if (!records.isEmpty()) {
          last = System.nanoTime();
        }
        for (ConsumerRecord<String, byte[]> record : records) {
          read++;
          if (options.caseId() != null && !options.caseId().equals(record.key())) {
            continue;
          }
          try {
            out.println(Notifications.rebuild(decoder.decode(record.value())).toString());
            printed++;
          } catch (IOException | RuntimeException e) {
            failed++;
            System.err.printf("case-history: %s/%d@%d: %s%n",
                record.topic(), record.partition(), record.offset(), e);
          }
        }
        out.flush();
      }
    }
    System.err.printf("case-history: %d records read, %d printed, %d not decoded%n",
        read, printed, failed);
    return failed == 0 ? 0 : 1;
  }
}
