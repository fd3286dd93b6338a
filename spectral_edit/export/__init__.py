"""Export: an edited cell taken out as a Hugging Face model and a PEFT adapter, with its model card (rules/export.smk)."""
