"""Durable state: the spool and the memory of event ids (duplicates)."""
