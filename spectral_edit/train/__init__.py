"""Training: the fine-tune of a base model on a prepared dataset and its distributed launch (rules/finetune.smk)."""
