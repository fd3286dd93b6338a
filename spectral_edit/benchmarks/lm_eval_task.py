"""A prepared evaluation split as an lm-evaluation-harness task, so that an exported model or
adapter can be scored by lm-eval on exactly the prompts of its cell.

The task is a multiple-choice task over ``eval.jsonl``: the context is the dataset's prompt
template with the example's text fields (as jinja), the choices are the label words, and the
choice follows the assistant turn directly (``target_delimiter: ""``); with lm-eval's
``--apply_chat_template`` the context is wrapped in the model's chat template as the workflow
wraps it. lm-eval scores each label word's full log-likelihood, the workflow its first token:
the two agree when every label word is one token (they are for SmolLM2's negative/positive).

    python -m spectral_edit.benchmarks.lm_eval_task results/data/reviews-shortcut tasks/   # prompt from config.yaml
    lm_eval --model hf --model_args pretrained=results/export/.../model --include_path tasks/ \\
        --tasks spectral_edit_reviews_shortcut --apply_chat_template --batch_size 16
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from spectral_edit.atomic import write_text
from spectral_edit.data import read_meta


def task_name(dataset: str) -> str:
    return "spectral_edit_" + re.sub(r"[^0-9A-Za-z_]", "_", dataset)


def task_config(data_dir: str | Path, prompt: str, label_words: list[str], text_fields: list[str], name: str) -> dict:
    """The lm-eval task config of a prepared dataset directory (eval.jsonl, meta.json)."""
    context = prompt
    for field in text_fields:
        context = context.replace("{" + field + "}", "{{" + field + "}}")
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_dir).resolve() / "eval.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": context,
        "doc_to_choice": list(label_words),
        "doc_to_target": "label",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def write_task(data_dir: str | Path, out_dir: str | Path, prompt: str, meta: Mapping | None = None) -> Path:
    """Write ``<out_dir>/<task>.yaml`` for a prepared dataset and its evaluation prompt template;
    returns its path."""
    meta = meta or read_meta(Path(data_dir) / "meta.json")
    name = task_name(meta["dataset"])
    config = task_config(data_dir, prompt, meta["label_words"], meta.get("text_fields", ["text"]), name)
    path = Path(out_dir) / f"{name}.yaml"
    write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="a prepared dataset, e.g. results/data/reviews-shortcut")
    parser.add_argument("out_dir", help="where to write the task YAML (lm_eval --include_path)")
    parser.add_argument("--config", default="config.yaml", help="the workflow config naming the dataset's prompt")
    parser.add_argument("--prompt", help="the evaluation prompt template (default: the config's eval_prompt or prompt)")
    args = parser.parse_args(argv)
    prompt = args.prompt
    if prompt is None:
        dataset = read_meta(Path(args.data_dir) / "meta.json")["dataset"]
        spec = (yaml.safe_load(Path(args.config).read_text()).get("datasets") or {}).get(dataset)
        if spec is None:
            parser.error(f"{args.config} has no dataset {dataset!r}: pass --prompt")
        prompt = spec.get("eval_prompt", spec["prompt"])
    print(write_task(args.data_dir, args.out_dir, prompt))


if __name__ == "__main__":
    main()
