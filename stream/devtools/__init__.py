"""Development services: the embedded Tansu broker and Redis, local Apache Kafka, the demo event generator."""
