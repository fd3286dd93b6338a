"""Standard benchmarks through lm-evaluation-harness: config (spec), generated tasks
(synthetic), scoring a model in memory (harness) and the tables of their per-sample scores
(scores)."""
