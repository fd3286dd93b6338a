"""What is computed from the evaluated cells: the figures (and, in time, the tables and diagnostics)."""
