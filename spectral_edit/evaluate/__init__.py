"""Evaluation: likelihood scoring of label words, per-group metrics, evaluation cells and the per-checkpoint
evaluation server with its client (rules/evaluate.smk)."""
