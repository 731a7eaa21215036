package example;

import io.confluent.kafka.serializers.KafkaAvroDeserializer;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.stream.Collectors;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Prints one case's history from bridge's topics, in order, with Confluent's
 * KafkaAvroDeserializer (bridge configured with BRIDGE_SCHEMA_REGISTRY_URL).
 *
 * <pre>mvn -q compile exec:java -Dexec.mainClass=example.CaseHistory \
 *   -Dexec.args="kafka:9092 http://schema-registry:8081 12345.0"</pre>
 */
public final class CaseHistory {
  public static void main(String[] args) {
    String bootstrap = args[0], registry = args[1], caseId = args[2];
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, KafkaAvroDeserializer.class.getName());
    props.put("schema.registry.url", registry);
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");

    try (KafkaConsumer<String, GenericRecord> consumer = new KafkaConsumer<>(props)) {
      // A case's records share a key, hence a partition: assign them all, read in order.
      List<TopicPartition> partitions = List.of("airudder.call", "airudder.waba_template", "airudder.chatbot")
          .stream()
          .flatMap(topic -> consumer.partitionsFor(topic).stream()
              .map(p -> new TopicPartition(topic, p.partition())))
          .collect(Collectors.toList());
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> end = consumer.endOffsets(partitions);
      while (partitions.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
        for (ConsumerRecord<String, GenericRecord> record : consumer.poll(Duration.ofSeconds(1))) {
          if (!caseId.equals(record.key())) continue;
          GenericRecord n = record.value();
          String eventId = new String(record.headers().lastHeader("event-id").value());
          System.out.printf("%s %s %s typed=%s unmapped=%s%n", record.topic(), eventId,
              n.get("type"), n.get(String.valueOf(n.get("type"))), n.get("unmapped"));
        }
      }
    }
  }
}
