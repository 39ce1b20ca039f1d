"""Measurement: `tagger bench` (throughput, latency, yardsticks) and the churn-model simulation."""
