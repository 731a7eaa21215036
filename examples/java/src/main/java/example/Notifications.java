package example;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.Collection;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericRecord;

/**
 * A record back to the notification the vendor sent, by the rule of avro/README.md: every
 * typed field that is not null (rebuilt the same way), then the members of {@code unmapped}
 * (JSON texts) parsed and laid on top. A union branch needs nothing more: Avro has already
 * read it as the record it was written as.
 */
final class Notifications {
  static final String UNMAPPED = "unmapped";
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final JsonNodeFactory NODES = JsonNodeFactory.instance;

  private Notifications() {}

  static ObjectNode rebuild(GenericRecord record) throws JsonProcessingException {
    ObjectNode out = NODES.objectNode();
    for (Schema.Field field : record.getSchema().getFields()) {
      Object value = record.get(field.pos());
      if (!field.name().equals(UNMAPPED) && value != null) {
        out.set(field.name(), json(value));
      }
    }
    if (record.getSchema().getField(UNMAPPED) != null
        && record.get(UNMAPPED) instanceof Map<?, ?> unmapped) {
      for (Map.Entry<?, ?> member : unmapped.entrySet()) {
        out.set(member.getKey().toString(), JSON.readTree(member.getValue().toString()));
      }
    }
    return out;
  }

  private static JsonNode json(Object value) throws JsonProcessingException {
    if (value instanceof GenericRecord record) {
      return rebuild(record);
    }
    if (value instanceof Map<?, ?> map) { // a typed map<string>: its values are the texts
      ObjectNode out = NODES.objectNode();
      for (Map.Entry<?, ?> entry : map.entrySet()) {
        out.set(entry.getKey().toString(), json(entry.getValue()));
      }
      return out;
    }
    if (value instanceof Collection<?> items) {
      ArrayNode out = NODES.arrayNode();
      for (Object item : items) {
        out.add(item == null ? NODES.nullNode() : json(item));
      }
      return out;
    }
    if (value instanceof CharSequence) {
      return NODES.textNode(value.toString());
    }
    if (value instanceof Long n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Integer n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Double n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Float n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Boolean b) {
      return NODES.booleanNode(b);
    }
    // bridge's schemas have no bytes, fixed or enum types (a JSON notification has none).
    throw new IllegalArgumentException("unexpected Avro value " + value.getClass().getName());
  }
}
