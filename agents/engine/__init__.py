"""The Faust-free tagging engine: per-message runtime, its pipeline stages and the customer evaluator."""
