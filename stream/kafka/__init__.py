"""The Kafka edge outside Faust's own patches: topics, admin client, consumer lag, dead-letter records."""
