package example;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** Command-line options, each with an environment variable as its fallback. */
record Options(
    String bootstrapServers,
    List<String> topics,
    String registryUrl,
    String caseId,
    double untilIdleSeconds,
    Path schemaDir,
    boolean listSchemas) {

  static final String USAGE =
      """
      usage: java -jar target/airudder-case-history.jar [options]
        --bootstrap-servers HOST:PORT,...  Kafka (env KAFKA_BOOTSTRAP_SERVERS; 127.0.0.1:9092)
        --topics T1,T2,...                 topics to read (env TOPICS;
                                           airudder.call,airudder.waba_template,airudder.chatbot)
        --registry URL                     schema registry, for the Confluent framing
                                           (env SCHEMA_REGISTRY_URL; none)
        --case-id ID                       only this case's records (env CASE_ID; all)
        --until-idle SECONDS               stop after this long with nothing new
                                           (env UNTIL_IDLE; 2)
        --schema-dir DIR                   bridge's avro/ folder, with history/
                                           (env SCHEMA_DIR; ./avro, else ../../avro)
        --list-schemas                     print the schemas known and their fingerprints
      Prints one rebuilt notification per line, as JSON, in each partition's order.""";

  static Options parse(String[] args, Map<String, String> env) {
    Map<String, String> given = new HashMap<>();
    boolean listSchemas = false;
    for (int i = 0; i < args.length; i++) {
      String name = args[i];
      if (name.equals("--list-schemas")) {
        listSchemas = true;
        continue;
      }
      if (!name.startsWith("--") || i + 1 == args.length) {
        throw new IllegalArgumentException("unexpected argument " + name + "\n" + USAGE);
      }
      given.put(name.substring(2), args[++i]);
    }
    List<String> known = List.of(
        "bootstrap-servers", "topics", "registry", "case-id", "until-idle", "schema-dir");
    List<String> unknown = new ArrayList<>(given.keySet());
    unknown.removeAll(known);
    if (!unknown.isEmpty()) {
      throw new IllegalArgumentException("unknown option --" + unknown.get(0) + "\n" + USAGE);
    }
    String bootstrap = pick(given, "bootstrap-servers", env, "KAFKA_BOOTSTRAP_SERVERS",
        "127.0.0.1:9092");
    String topics = pick(given, "topics", env, "TOPICS",
        "airudder.call,airudder.waba_template,airudder.chatbot");
    String registry = pick(given, "registry", env, "SCHEMA_REGISTRY_URL", null);
    String caseId = pick(given, "case-id", env, "CASE_ID", null);
    String idle = pick(given, "until-idle", env, "UNTIL_IDLE", "2");
    String schemaDir = pick(given, "schema-dir", env, "SCHEMA_DIR", null);
    double untilIdle;
    try {
      untilIdle = Double.parseDouble(idle);
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException("--until-idle: not a number of seconds: " + idle);
    }
    return new Options(
        bootstrap,
        Arrays.stream(topics.split(",")).map(String::strip).filter(t -> !t.isEmpty()).toList(),
        registry == null || registry.isBlank() ? null : registry.replaceAll("/+$", ""),
        caseId,
        untilIdle,
        schemaDir == null ? defaultSchemaDir() : Path.of(schemaDir),
        listSchemas);
  }

  private static String pick(
      Map<String, String> given, String option, Map<String, String> env, String variable,
      String fallback) {
    String value = given.get(option);
    if (value == null) {
      value = env.get(variable);
    }
    return value == null ? fallback : value;
  }

  // From the repository's root or from examples/java (where `mvn package` runs).
  private static Path defaultSchemaDir() {
    Path here = Path.of("avro");
    return Files.isDirectory(here) ? here : Path.of("..", "..", "avro");
  }
}
