"""Configuration errors are one line and name the culprit; the shipped config is valid."""

import ast
import copy
import dataclasses
import re

import pytest
import yaml

from conftest import REPO
from spectral_edit.errors import ConfigError
from spectral_edit.plan.config import (
    DEFAULT_LORA_TARGETS,
    check_config,
    grid_cells,
    grid_finetunes,
    load_config,
    load_schema,
    recipe_for_dataset,
    resolve_finetune,
    resolve_method,
    validate_schema,
)
from spectral_edit.plan.records import Analysis, FinetuneRecipe, Runtime, with_schema_defaults


@pytest.fixture
def config():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    return copy.deepcopy(raw)


def _fails(config, match):
    with pytest.raises(ConfigError, match=match) as info:
        validate_schema(config)
        check_config(config, check_files=False)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_shipped_config_is_valid_and_fills_defaults(config):
    del config["edit"]
    validate_schema(config)
    check_config(config, check_files=False)
    assert config["edit"]["unedited_params"] == "finetuned"
    assert len(list(grid_cells(config))) == 3 * 8


def test_load_config_applies_overlays(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("grid:\n  retentions: [0.5]\n")
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    config = load_config(REPO / "config.yaml", overlay, {"finetune": {"steps": 3}})
    assert config["grid"]["retentions"] == [0.5]
    assert config["finetune"]["steps"] == 3
    assert config["finetune"]["batch_size"] == shipped["finetune"]["batch_size"]


def test_typo_names_the_key(config):
    config["grid"]["retentons"] = config["grid"].pop("retentions")
    message = _fails(config, "retentons")
    assert message.startswith("config: grid")


def test_typo_in_nested_section(config):
    config["finetune"]["learnin_rate"] = 1e-4
    _fails(config, "finetune: unknown key 'learnin_rate'")


@pytest.mark.parametrize("bad", [0, 1.5, -0.2])
def test_retention_outside_unit_interval(config, bad):
    config["grid"]["retentions"] = [0.5, bad]
    _fails(config, r"grid.retentions\[1\]")


@pytest.mark.parametrize("bad", [0.5, "one", True])
def test_seed_must_be_integer(config, bad):
    config["grid"]["seeds"] = [bad]
    _fails(config, r"grid.seeds\[0\]")


def test_unknown_method(config):
    config["grid"]["methods"] = ["top_k", "top_j"]
    _fails(config, "unknown method 'top_j'")


def test_unknown_model_and_dataset(config):
    broken = copy.deepcopy(config)
    broken["grid"]["models"] = ["gpt-9"]
    _fails(broken, "grid.models: unknown model 'gpt-9'")
    config["grid"]["datasets"] = ["imbd"]
    _fails(config, "grid.datasets: unknown dataset 'imbd'")


def test_model_source_needs_its_keys(config):
    config["models"]["smollm2-135m"] = {"source": "hub"}
    _fails(config, "models.smollm2-135m: source 'hub' needs the key 'id'")


def test_missing_packaged_model_file(config):
    config["models"]["smollm2-135m"]["file"] = "no-such.gguf"
    validate_schema(config)
    with pytest.raises(ConfigError, match="no-such.gguf"):
        check_config(config)


@pytest.mark.parametrize(
    "files, message",
    [([], r"no config.json in '.+'$"), (["config.json"], r"no weights in '.+' \(\*.safetensors, pytorch_model\*.bin")],
)
def test_a_local_model_directory_without_config_or_weights_is_refused(config, tmp_path, files, message):
    for name in files:
        (tmp_path / name).write_text("{}")
    config["models"]["smollm2-135m"] = {"source": "local", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match="^config: models.smollm2-135m.path: " + message):
        check_config(validate_schema(config))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    check_config(validate_schema(config))


def test_method_variants_resolve_with_params(config):
    config["method_variants"] = {"random_k_b": {"method": "random_k", "seed_offset": 7}}
    config["grid"]["methods"].append("random_k_b")
    validate_schema(config)
    check_config(config, check_files=False)
    method, params = resolve_method(config, "random_k_b")
    assert method.name == "random_k" and params == {"seed_offset": 7}
    config["method_variants"]["random_k_b"]["seeed"] = 1
    _fails(config, "unknown parameter 'seeed'")


def test_finetune_recipes_resolve_with_overrides(config):
    from spectral_edit.plan.config import resolve_finetune

    config["finetunes"] = {"lora-r8": {"kind": "lora", "rank": 8, "overrides": {"learning_rate": 1e-4}}}
    config["grid"]["controls"] = ["lora-r8"]
    validate_schema(config)
    check_config(config, check_files=False)
    recipe = resolve_finetune(config, "lora-r8")
    assert recipe["alpha"] == 16 and recipe["hyper"]["learning_rate"] == 1e-4
    assert recipe["hyper"]["steps"] == config["finetune"]["steps"]  # same steps as full SFT
    assert resolve_finetune(config, "full")["kind"] == "full"


@pytest.mark.parametrize(
    "finetunes, grid, culprit",
    [
        ({}, {"controls": ["lora-r9"]}, "grid.controls: unknown fine-tune 'lora-r9'"),
        ({"l": {"kind": "lora"}}, {"controls": ["l"]}, "finetunes.l: kind 'lora' needs the key 'rank'"),
        ({"s": {"kind": "speclora", "rank": 4}}, {"finetunes": ["full", "s"]}, "kind 'speclora' needs the key 'top_k'"),
        ({"l": {"kind": "lora", "rank": 4, "overrides": {"stepz": 3}}}, {"controls": ["l"]}, "overrides: unknown key 'stepz'"),
        ({"l": {"kind": "lora", "rnak": 4}}, {"controls": ["l"]}, "unknown key 'rnak'"),
    ],
)
def test_bad_recipes_name_the_culprit(config, finetunes, grid, culprit):
    config["finetunes"] = finetunes
    config["grid"].update(grid)
    _fails(config, culprit)


def test_methods_without_retention_get_one_cell(config):
    config["grid"]["methods"] = ["top_k", "dg_hard"]
    validate_schema(config)
    cells = list(grid_cells(config))
    datasets = len(config["grid"]["datasets"])
    assert [c.retention for c in cells if c.method == "dg_hard"] == ["none"] * datasets
    assert len(cells) == datasets * (len(config["grid"]["retentions"]) + 1)


def test_an_invalid_group_regex_is_a_config_error(config):
    config["datasets"]["mine"] = {
        "source": "local",
        "files": {"train": "x.csv"},
        "text_columns": {"text": "body"},
        "label_column": "y",
        "label_values": [0, 1],
        "label_words": ["negative", "positive"],
        "prompt": "{text}",
        "group": {"rule": "regex", "pattern": r"\bdog(", "fields": ["text"]},
    }
    config["grid"]["datasets"] = ["mine"]
    _fails(config, r"datasets.mine.group.pattern: '\\\\bdog\(' is not a regular expression")


def test_a_header_only_file_is_a_config_error(config, tmp_path):
    (tmp_path / "empty.csv").write_text("body,y\n")
    config["datasets"]["mine"] = {
        "source": "local",
        "files": {"train": str(tmp_path / "empty.csv")},
        "text_columns": {"text": "body"},
        "label_column": "y",
        "label_values": [0, 1],
        "label_words": ["negative", "positive"],
        "prompt": "{text}",
    }
    config["grid"]["datasets"] = ["mine"]
    validate_schema(config)
    with pytest.raises(ConfigError, match="datasets.mine.files.train: empty.csv has no rows"):
        check_config(config, check_files=True)


def test_label_words_sharing_a_first_token_are_refused_naming_the_dataset_and_model(config, tmp_path):
    """Checked at planning once the model's tokenizer is on disk (and by the base-model job)."""
    from spectral_edit.data.prompts import check_label_words
    from spectral_edit.models import byte_level_tokenizer

    byte_level_tokenizer().save_pretrained(tmp_path / "smollm2-135m")
    validate_schema(config)
    check_label_words(config, lambda model: tmp_path / model)  # negative / positive: distinct first bytes
    config["datasets"]["reviews-marker"]["label_words"] = ["positive", "pessimistic"]
    with pytest.raises(ConfigError, match=r"datasets.reviews-marker.label_words with the tokenizer of model 'smollm2-135m'"):
        check_label_words(config, lambda model: tmp_path / model)
    check_label_words(config, lambda model: tmp_path / "not-materialised")  # nothing to check yet


def test_a_hub_model_that_cannot_be_reached_is_one_line_naming_the_key(monkeypatch):
    from spectral_edit.models import load_from_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"config: models.qwen.id: cannot load 'no-such-org/no-such-model'") as info:
        load_from_source({"source": "hub", "id": "no-such-org/no-such-model"}, "qwen")
    assert "\n" not in str(info.value)


INSTRUCTION = {"kind": "instruction", "source": "synthetic_arithmetic", "n_train": 8}


@pytest.mark.parametrize(
    "dataset, benchmarks, culprit",
    [
        ({**INSTRUCTION, "label_words": ["a", "b"]}, {}, r"datasets\.t\.label_words: a key of label-word datasets"),
        ({**INSTRUCTION, "benchmarks": ["nope"]}, {}, r"datasets\.t\.benchmarks: unknown benchmark 'nope'"),
        ({**INSTRUCTION, "heldout": ["gsm8k"], "benchmarks": ["gsm8k"]}, {"gsm8k": {}}, "also one of the task's own benchmarks"),
        ({**INSTRUCTION, "heldout": ["mystery"]}, {}, r"heldout: 'mystery' is neither a dataset nor a benchmark"),
        ({**INSTRUCTION, "finetune": {"learning_rte": 1}}, {}, r"datasets\.t\.finetune: unknown key 'learning_rte'"),
        ({"kind": "instruction", "source": "local", "files": {"train": "x.csv"}, "prompt_column": "q"}, {},
         "give exactly one of response_column and response_template"),
        ({"kind": "instruction", "source": "synthetic_reviews", "n_train": 8}, {}, "not a source of instruction data"),
        ({"source": "synthetic_arithmetic", "n_train": 8, "prompt": "{text}", "label_words": ["a", "b"]}, {},
         "makes instruction data"),
    ],
)  # fmt: skip
def test_instruction_datasets_and_benchmarks_name_the_culprit(config, dataset, benchmarks, culprit):
    config["datasets"]["t"] = dataset
    config["benchmarks"] = benchmarks
    config["grid"]["datasets"] = ["t"]
    _fails(config, culprit)


def test_a_name_may_not_be_both_a_dataset_and_a_benchmark(config):
    config["benchmarks"] = {"reviews-marker": {}}
    _fails(config, "'reviews-marker' names both a dataset and a benchmark")


def test_a_grid_of_instruction_tasks_needs_no_sweet_spot_method(config):
    config["datasets"]["t"] = {**INSTRUCTION, "benchmarks": ["b"]}
    config["benchmarks"] = {"b": {"source": "synthetic_antonyms", "n": 10}}
    config["grid"].update(datasets=["t"], methods=["dg_hard"])
    validate_schema(config)
    check_config(config, check_files=False)


@pytest.mark.parametrize("name", ["my/data", "", "..", ".", "-x", "a b", "naïve"])
@pytest.mark.parametrize("section", ["datasets", "models"])
def test_names_must_be_safe_path_components(config, section, name):
    """A name is a directory under results/: one line naming it, before any job."""
    first = next(iter(config[section]))
    config[section][name] = config[section].pop(first)
    config["grid"][section] = [name]
    message = _fails(config, f"config: {section}: the name {name!r} is not a safe name")
    assert message.startswith(f"config: {section}: the name")


@pytest.mark.parametrize("stall", [1, 2, 5.5])
def test_a_stall_limit_within_three_heartbeats_is_refused(config, stall):
    config.setdefault("evaluation", {})["server"] = {"stall_seconds": stall}
    _fails(config, rf"config: evaluation.server.stall_seconds: {stall:g} s is under three of the server's 2-s heartbeats")


def test_a_stall_limit_of_three_heartbeats_is_accepted(config):
    config.setdefault("evaluation", {})["server"] = {"stall_seconds": 6}
    validate_schema(config)
    check_config(config, check_files=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"finetune": {"batch_size": 1000}}, r"config: finetune.batch_size: 1000 \(recipe 'full'\) is larger than the 512"),
        ({"analysis": {"regimes": {"imdb": "natural"}}}, r"config: analysis.regimes: unknown dataset 'imdb'"),
        (
            {
                "grid": {"controls": ["lora-r16"]},
                "finetunes": {"lora-r16": {"kind": "lora", "rank": 16}},
                "analysis": {"reference_finetune": "lora"},
            },
            r"config: analysis.reference_finetune: 'lora' is not in grid.finetunes",
        ),
        ({"grid": {"seeds": [2**32]}}, r"config: grid.seeds\[0\]: 4294967296 is greater than the maximum"),
        ({"runtime": {"device": "gpu"}}, r"config: runtime.device: 'gpu' does not match"),
        (
            {"datasets": {"reviews-marker": {"label_words": ["negative", " "]}}},
            r"config: datasets.reviews-marker.label_words\[1\]: ' '",
        ),
        (
            {"datasets": {"reviews-marker": {"n_train": 5_000_000}}},
            r"config: datasets.reviews-marker.n_train: 5000000 is greater than",
        ),
        (
            {"models": {"smollm2-135m": {"source": "random", "architecture": {"hidden_size": 64, "num_attention_heads": 3}}}},
            r"config: models.smollm2-135m.architecture: num_attention_heads 3 does not divide hidden_size 64",
        ),
        (
            {"method_variants": {"rk2": {"method": "random_k", "seed_offset": "x"}}},
            r"config: method_variants.rk2.seed_offset: 'x' is not an integer \(method 'random_k'\)$",
        ),
        (
            {"method_variants": {"dg2": {"method": "dg_hard", "scale": True}}},
            r"config: method_variants.dg2.scale: True is not a number \(method 'dg_hard'\)$",
        ),
        (
            {"grid": {"retentions": [0.3, 0.30000000000000004]}},
            r"config: grid.retentions: 0.3 and 0.30000000000000004 keep the same k = ceil\(retention x rank\) for every rank",
        ),
        (
            {"datasets": {"reviews-marker": {"prompt": "Review: { text }\nSentiment:"}}},
            r"config: datasets.reviews-marker.prompt: '\{ text \}' is not filled in; write \{text\} without spaces$",
        ),
    ],
)
def test_what_would_fail_later_or_pass_silently_stops_at_planning(config, change, message):
    from spectral_edit.plan.config import deep_merge

    _fails(deep_merge(config, change), message)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x7fELF\x02\x01\x01\x00\x00", r"a binary file \(byte 0 at offset 7\), not YAML$"),
        ("grid:\n  seeds: [1]\n# caf\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at offset 24\)$"),
        (b"grid: [\n", r"not valid YAML at line 2, column 1 \(expected the node content"),
        (b"- a\n- b\n", r"holds a list, not a mapping of keys$"),
    ],
    ids=["binary", "latin-1", "unclosed list", "a list"],
)
def test_a_config_file_that_is_not_yaml_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: ") + message):
        load_config(REPO / "config.yaml", path)


# --- one home per default: the schema ----------------------------------------------------

# Keys named like a defaulted config key but read from another mapping, where .get(key, literal)
# is the reading meant.
NOT_THE_CONFIG_SECTION = {
    ("spectral_edit/data/__init__.py", "kind"): "is_instruction also reads prompt specs (rules' prompt_of), which "
    "name kind only for instruction data: adding it would change every fine-tune's params",
    ("spectral_edit/data/prompts.py", "kind"): "formatter_for reads a prompt spec (see data/__init__.py)",
    ("spectral_edit/data/arithmetic.py", "generator_seed"): "a dataset's generator_seed: without a schema default "
    "(benchmarks' has one); adding one would change every dataset's params",
    ("spectral_edit/data/synthetic.py", "generator_seed"): "a dataset's generator_seed (see data/arithmetic.py)",
}


def _defaulted_keys(node) -> set[str]:
    """Every key name that has a default anywhere in the schema."""
    found = set()
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and "default" in sub:
                found.add(key)
            found |= _defaulted_keys(sub)
        found |= _defaulted_keys(node.get("additionalProperties"))
    return found


def _restated_defaults() -> list[tuple[str, str, int]]:
    """(file, key, line) of every ``.get("<key>", <literal>)`` where the schema has a default for
    <key>: in the Python files by their syntax tree, in the Snakemake files by their text."""
    keys = _defaulted_keys(load_schema())
    found = []
    for path in sorted([REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for key in re.findall(r"""\.get\(\s*["'](\w+)["']\s*,""", line):
                if key in keys:
                    found.append((path.relative_to(REPO).as_posix(), key, number))
    for path in sorted([*(REPO / "spectral_edit").rglob("*.py"), *(REPO / "workflow_scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"):
                continue
            if len(node.args) != 2 or not isinstance(node.args[0], ast.Constant) or node.args[0].value not in keys:
                continue
            try:
                ast.literal_eval(node.args[1])
            except ValueError:
                continue  # not a literal: a value computed there, not a default restated
            found.append((path.relative_to(REPO).as_posix(), node.args[0].value, node.lineno))
    return found


def test_no_schema_default_is_restated_in_code():
    restated = [
        f"{path}:{line}: .get({key!r}, ...) restates the schema's default; read it directly"
        for path, key, line in _restated_defaults()
        if (path, key) not in NOT_THE_CONFIG_SECTION
    ]
    assert not restated, "\n".join(restated)


def test_the_scan_finds_a_restated_default():
    """The scan is not vacuous: the entries it tolerates are ones it finds."""
    found = {(path, key) for path, key, _ in _restated_defaults()}
    assert set(NOT_THE_CONFIG_SECTION) <= found


def test_records_round_trip_from_the_shipped_config():
    config = load_config(REPO / "config.yaml")
    analysis = Analysis.from_config(config)
    assert dataclasses.asdict(analysis.no_cost_zone) == config["analysis"]["no_cost_zone"]
    assert dataclasses.asdict(analysis.bootstrap) == config["analysis"]["bootstrap"]
    assert dict(analysis.regimes) == config["analysis"]["regimes"]
    assert list(analysis.risk_benchmarks) == config["analysis"]["risk_benchmarks"]
    for key in ("sweet_spot_method", "reference_finetune", "heldout_tolerance_pp"):
        assert getattr(analysis, key) == config["analysis"][key]
    assert analysis.bootstrap.resampling() == {"n_resamples": 2000, "seed": 0, "level": 0.95}
    assert dataclasses.asdict(Runtime.from_config(config)) == config["runtime"]
    for name in grid_finetunes(config):
        for dataset in config["grid"]["datasets"]:
            mapping = recipe_for_dataset(config, name, dataset)
            recipe = FinetuneRecipe.from_mapping(mapping)
            assert recipe.kind == mapping["kind"] == "full" and recipe.rank is None
            hyper = dataclasses.asdict(recipe.hyper)
            assert {k: v for k, v in hyper.items() if v is not None or k in mapping["hyper"]} == mapping["hyper"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.sweet_spot_method = "bottom_k"


def test_an_adapter_recipe_reads_its_resolved_keys():
    config = load_config(REPO / "config.yaml", {"finetunes": {"lora-r8": {"kind": "lora", "rank": 8}}})
    recipe = FinetuneRecipe.from_mapping(resolve_finetune(config, "lora-r8"))
    # resolve_finetune fills what an adapter recipe leaves out (alpha 2r, no dropout, the projections).
    assert (recipe.rank, recipe.alpha, recipe.dropout, recipe.top_k) == (8, 16.0, 0.0, None)
    assert recipe.target_modules == DEFAULT_LORA_TARGETS


def _without(mapping: dict, path: tuple[str, ...]) -> dict:
    mapping = copy.deepcopy(mapping)
    inner = mapping
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return mapping


def _paths(mapping: dict, skip=()) -> list[tuple[str, ...]]:
    out = []
    for key, value in mapping.items():
        if key in skip:
            continue
        out.append((key,))
        if isinstance(value, dict) and key != "regimes":
            out += [(key, *inner) for inner in _paths(value, skip)]
    return out


def test_a_record_from_a_mapping_missing_a_key_names_it():
    config = load_config(REPO / "config.yaml")
    cases = [(Analysis, "analysis", config["analysis"], ()), (Runtime, "runtime", config["runtime"], ())]
    speclora = resolve_finetune(
        load_config(REPO / "config.yaml", {"finetunes": {"l": {"kind": "speclora", "rank": 4, "top_k": 2}}}), "l"
    )
    # name is the recipe's label, min_lr_ratio optional (no schema default): neither is required.
    cases.append((FinetuneRecipe, "finetunes", speclora, ("name", "min_lr_ratio")))
    for record, where, mapping, skip in cases:
        for path in _paths(mapping, skip):
            with pytest.raises(KeyError, match=re.escape(".".join((where, *path)))):
                record.from_mapping(_without(mapping, path))


def test_schema_defaults_fill_a_section_for_tests_and_notebooks():
    assert with_schema_defaults("runtime") == {"device": "auto", "dtype": "auto"}
    zone = with_schema_defaults("analysis", {"no_cost_zone": {"from_pp": 0.0}})["no_cost_zone"]
    assert zone == {"below_pp": 2.0, "from_pp": 0.0}
    with pytest.raises(ConfigError, match=r"config: runtime.dtype: 'int8' is not one of"):
        with_schema_defaults("runtime", {"dtype": "int8"})
