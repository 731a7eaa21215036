package example;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;

/**
 * A value bridge wrote, to a {@link GenericRecord} read with the current schema of its type
 * (Avro's schema resolution turns a record of an older version into the current shape). Two
 * framings:
 *
 * <ul>
 *   <li>Avro single-object encoding (bridge without a registry): {@code C3 01}, the 8-byte
 *       little-endian CRC-64-AVRO fingerprint of the writer schema, the body. Avro's own
 *       {@link BinaryMessageDecoder} checks the header and finds the writer schema in the
 *       {@link org.apache.avro.message.SchemaStore}.
 *   <li>Confluent wire format (bridge with a registry): {@code 00}, the 4-byte big-endian schema
 *       id, the body; the writer schema is fetched once per id: {@code GET /schemas/ids/{id}}.
 * </ul>
 */
final class ValueDecoder {
  private static final byte[] SINGLE_OBJECT = {(byte) 0xC3, 0x01};
  private static final int SINGLE_OBJECT_HEADER = 10;
  private static final int CONFLUENT_HEADER = 5;
  private static final ObjectMapper JSON = new ObjectMapper();

  private final Schemas schemas;
  private final String registryUrl;
  private final HttpClient http = HttpClient.newBuilder()
      .connectTimeout(Duration.ofSeconds(10)).build();
  // One BinaryMessageDecoder per reader schema (a top-level type), sharing the store.
  private final Map<String, BinaryMessageDecoder<GenericRecord>> byReader = new HashMap<>();
  private final Map<Integer, GenericDatumReader<GenericRecord>> byId = new HashMap<>();

  ValueDecoder(Schemas schemas, String registryUrl) {
    this.schemas = schemas;
    this.registryUrl = registryUrl;
  }

  GenericRecord decode(byte[] value) throws IOException, InterruptedException {
    if (value == null) {
      throw new IOException("no value");
    }
    if (value.length >= SINGLE_OBJECT_HEADER
        && value[0] == SINGLE_OBJECT[0] && value[1] == SINGLE_OBJECT[1]) {
      return singleObject(value);
    }
    if (value.length >= CONFLUENT_HEADER && value[0] == 0) {
      return confluent(value);
    }
    throw new IOException("neither single-object encoding nor the Confluent framing");
  }

  private GenericRecord singleObject(byte[] value) throws IOException {
    // The fingerprint only picks the reader schema (the current one of the writer's name);
    // BinaryMessageDecoder then reads the header itself and resolves writer against reader.
    long fingerprint = ByteBuffer.wrap(value, 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
    Schema writer = schemas.store.findByFingerprint(fingerprint);
    if (writer == null) {
      throw new IOException("unknown writer schema, fingerprint " + Schemas.hex(fingerprint)
          + " (not in avro/ or avro/history/)");
    }
    BinaryMessageDecoder<GenericRecord> decoder = byReader.computeIfAbsent(
        writer.getFullName(),
        name -> new BinaryMessageDecoder<>(
            GenericData.get(), schemas.current.getOrDefault(name, writer), schemas.store));
    return decoder.decode(value);
  }

  private GenericRecord confluent(byte[] value) throws IOException, InterruptedException {
    int id = ByteBuffer.wrap(value, 1, 4).order(ByteOrder.BIG_ENDIAN).getInt();
    GenericDatumReader<GenericRecord> reader = byId.get(id);
    if (reader == null) {
      Schema writer = fetch(id);
      reader = new GenericDatumReader<>(
          writer, schemas.current.getOrDefault(writer.getFullName(), writer));
      byId.put(id, reader);
    }
    BinaryDecoder body = DecoderFactory.get()
        .binaryDecoder(value, CONFLUENT_HEADER, value.length - CONFLUENT_HEADER, null);
    GenericRecord record = reader.read(null, body);
    if (!body.isEnd()) {
      throw new IOException("bytes left after the record (schema id " + id + ")");
    }
    return record;
  }

  private Schema fetch(int id) throws IOException, InterruptedException {
    if (registryUrl == null) {
      throw new IOException("Confluent framing (schema id " + id + ") but no --registry given");
    }
    HttpRequest request = HttpRequest.newBuilder(URI.create(registryUrl + "/schemas/ids/" + id))
        .header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
        .timeout(Duration.ofSeconds(10))
        .GET()
        .build();
    HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
    if (response.statusCode() != 200) {
      throw new IOException("registry answered " + response.statusCode() + " for schema id "
          + id + ": " + response.body());
    }
    String text = JSON.readTree(response.body()).path("schema").asText(null);
    if (text == null) {
      throw new IOException("registry's answer for schema id " + id + " has no schema");
    }
    Schema writer = new Schema.Parser().parse(text);
    // The registry's copy has the canonical form of one of ours (it may drop our properties).
    if (schemas.store.findByFingerprint(Schemas.fingerprint(writer)) == null) {
      System.err.printf("case-history: schema id %d is none of avro/ or avro/history/%n", id);
    }
    return writer;
  }
}
