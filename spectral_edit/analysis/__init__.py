"""Analysis: aggregation of cells into tables, intervals and tests, Table 1, repair of held-out benchmarks,
diagnostics of dW and the figures (rules/aggregate.smk)."""
