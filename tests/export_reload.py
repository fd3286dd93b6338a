"""Run in a fresh process by tests/test_export.py: load an exported model with transformers
alone (or an exported adapter with PEFT on the base model), score the evaluation split with
the same prompts as the cell, and write the per-example predictions and log-probabilities.

    python tests/export_reload.py model|adapter EXPORT_DIR BASE_DIR EVAL_DIR PROMPT_JSON OUT_JSON
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(form, export_dir, base_dir, eval_dir, prompt_json, out_json):
    # The thread count of the process that evaluated the cell: it sets the reduction order of matrix products.
    torch.set_num_threads(int(os.environ.get("EXPORT_RELOAD_THREADS", "1")))
    if form == "model":
        model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(export_dir)
        loaded = {"lora_modules": 0}
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, export_dir)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        inner = model.base_model.model
        lm_head = inner.get_output_embeddings()
        loaded = {
            "lora_modules": sum(
                1 for name, _ in model.named_modules() if name.endswith("lora_A") or name.endswith("lora_embedding_A")
            ),
            "lm_head_has_lora": hasattr(lm_head, "lora_A") and "default" in getattr(lm_head, "lora_A", {}),
        }
    model.eval()
    # Scoring only (the prompt format and label words of the cell); no workflow code built the model.
    from spectral_edit.data import read_meta, read_split
    from spectral_edit.data.prompts import formatter_for
    from spectral_edit.evaluate.scoring import evaluate_model

    result = evaluate_model(
        model,
        formatter_for(tokenizer, json.loads(prompt_json)),
        read_split(f"{eval_dir}/eval.jsonl"),
        read_meta(f"{eval_dir}/meta.json"),
        batch_size=16,
        progress=False,
    )  # the cell's batch size

    with open(out_json, "w") as handle:
        json.dump({"examples": result["examples"], "loaded": loaded}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
