package example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.message.SchemaStore;

/**
 * bridge's schemas, as a consumer keeps them: the current ones from {@code avro/*.avsc} (one
 * named type per file, referring to each other by full name) and every published version from
 * {@code avro/history/<type>/vN.avsc} (each self-contained). All of them go into one
 * {@link SchemaStore.Cache}, which finds a writer schema by the CRC-64-AVRO fingerprint that
 * Avro computes itself from the schema's canonical form.
 */
final class Schemas {
  private static final ObjectMapper JSON = new ObjectMapper();

  final SchemaStore.Cache store = new SchemaStore.Cache();
  /** The current schema of each named type, by full name: the reader schemas. */
  final Map<String, Schema> current = new HashMap<>();
  /** Every schema file read, in the order read, with the schema it defines. */
  final Map<Path, Schema> files = new LinkedHashMap<>();

  static Schemas load(Path dir) {
    if (!Files.isRegularFile(dir.resolve("airudder.CallNotification.avsc"))) {
      throw new IllegalArgumentException(
          "no bridge schemas in " + dir.toAbsolutePath() + " (give --schema-dir)");
    }
    Schemas schemas = new Schemas();
    // One parser for avro/*.avsc: a name defined in one file is known to the files parsed
    // after it, so they are parsed in dependency order.
    Schema.Parser parser = new Schema.Parser();
    for (Path file : dependencyOrder(dir)) {
      Schema schema = parse(parser, file);
      schemas.current.put(schema.getFullName(), schema);
      schemas.store.addSchema(schema);
      schemas.files.put(file, schema);
    }
    Path history = dir.resolve("history");
    if (Files.isDirectory(history)) {
      try (Stream<Path> files = Files.walk(history)) {
        for (Path file : files.filter(p -> p.toString().endsWith(".avsc")).sorted().toList()) {
          // Each version defines the same names again: a parser of its own.
          Schema schema = parse(new Schema.Parser(), file);
          schemas.store.addSchema(schema);
          schemas.files.put(file, schema);
        }
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }
    return schemas;
  }

  static long fingerprint(Schema schema) {
    return SchemaNormalization.parsingFingerprint64(schema);
  }

  /** A fingerprint as the single-object header carries it: 8 bytes, little-endian, in hex. */
  static String hex(long fingerprint) {
    return String.format("%016x", Long.reverseBytes(fingerprint));
  }

  private static Schema parse(Schema.Parser parser, Path file) {
    try {
      return parser.parse(file.toFile());
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    } catch (RuntimeException e) {
      throw new IllegalArgumentException("cannot parse schema " + file + ": " + e.getMessage(), e);
    }
  }

  /** The files of {@code dir}, each after the files whose full name (the file's name) it uses. */
  private static List<Path> dependencyOrder(Path dir) {
    Map<String, Path> byName = new LinkedHashMap<>();
    Map<String, Set<String>> uses = new HashMap<>();
    try (Stream<Path> files = Files.list(dir)) {
      for (Path file : files.filter(p -> p.toString().endsWith(".avsc")).sorted().toList()) {
        String name = file.getFileName().toString().replaceFirst("\\.avsc$", "");
        byName.put(name, file);
        Set<String> used = new LinkedHashSet<>();
        references(JSON.readTree(file.toFile()), "", used);
        uses.put(name, used);
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    List<Path> order = new ArrayList<>();
    Set<String> done = new LinkedHashSet<>();
    for (String name : byName.keySet()) {
      visit(name, byName, uses, done, new LinkedHashSet<>(), order);
    }
    return order;
  }

  private static void visit(
      String name, Map<String, Path> byName, Map<String, Set<String>> uses, Set<String> done,
      Set<String> path, List<Path> order) {
    if (done.contains(name)) {
      return;
    }
    if (!path.add(name)) {
      throw new IllegalArgumentException("schema files refer to each other in a cycle: " + path);
    }
    for (String used : uses.get(name)) {
      if (!used.equals(name) && byName.containsKey(used)) {
        visit(used, byName, uses, done, path, order);
      }
    }
    path.remove(name);
    done.add(name);
    order.add(byName.get(name));
  }

  private static final Set<String> PRIMITIVES =
      Set.of("null", "boolean", "int", "long", "float", "double", "bytes", "string");

  // The full names of the types a schema refers to (and of those it defines, which the caller
  // ignores): a name without a dot is in the namespace of the record around it.
  private static void references(JsonNode node, String namespace, Set<String> out) {
    if (node.isTextual()) {
      String name = node.textValue();
      if (!PRIMITIVES.contains(name)) {
        out.add(name.contains(".") || namespace.isEmpty() ? name : namespace + "." + name);
      }
    } else if (node.isArray()) { // a union
      node.forEach(branch -> references(branch, namespace, out));
    } else if (node.isObject()) {
      String type = node.path("type").asText("");
      if (type.equals("record") || type.equals("error")) {
        String name = node.path("name").asText();
        String inner = name.contains(".")
            ? name.substring(0, name.lastIndexOf('.'))
            : node.path("namespace").asText(namespace);
        node.path("fields").forEach(f -> references(f.path("type"), inner, out));
      } else if (type.equals("array")) {
        references(node.path("items"), namespace, out);
      } else if (type.equals("map")) {
        references(node.path("values"), namespace, out);
      } else if (!type.equals("enum") && !type.equals("fixed")) {
        references(node.path("type"), namespace, out);
      }
    }
  }
}
