"""Planning: the config, its schema and checks, the grid of cells and their resources (rules/common.smk).

Nothing here imports transformers, datasets or matplotlib: the Snakefile imports it to plan (tests/test_layout.py).
"""
