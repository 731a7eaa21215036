"""What a notification is and where it goes: parsing, routing, the Kafka record."""
