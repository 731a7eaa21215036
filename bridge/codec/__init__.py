"""The Avro side of bridge: the schemas in `avro/` (`schemas`), the notification <-> record
mapping (`mapping`), the same mapping written straight to Avro bytes (`writer`, the hot path),
the framings (`encode`) and offline schema compatibility (`compat`)."""
