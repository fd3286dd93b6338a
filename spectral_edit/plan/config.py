"""Configuration: schema validation, cross-reference checks and the experiment grid.

rules/common.smk validates with Snakemake's ``validate`` against ``config.schema.yaml`` and then
calls :func:`check_config`; notebooks call :func:`load_config`, which does both. Every error is
a one-line :class:`ConfigError` that names the offending key.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from spectral_edit.edit.methods import SpectralMethod, available_methods
from spectral_edit.errors import ConfigError
from spectral_edit.layout import format_retention

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.cache
def _parsed_schema() -> dict:
    # Read and parsed once per process: parsing the YAML costs ~60 ms, and planning asked for
    # it once per recipe resolved.
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_schema() -> dict:
    # A fresh copy for every caller (some fill defaults into what they get).
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _finetune_keys() -> frozenset:
    """The keys a recipe's overrides may set: those of the finetune section."""
    return frozenset(_parsed_schema()["properties"]["finetune"]["properties"])


def _path_of(error: jsonschema.ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def validation_error_message(error: jsonschema.ValidationError) -> str:
    """One line naming the key that failed and why."""
    where = _path_of(error)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - allowed)
        if extra and allowed:
            return f"config: {where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})"
    return f"config: {where}: {error.message}"


def _validator_with_defaults():
    """A Draft 2020-12 validator that also fills in schema defaults (as Snakemake's does)."""
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def validate_schema(config: dict) -> dict:
    """Validate against the schema in place (filling defaults); raise a one-line ConfigError."""
    validator = _validator_with_defaults()(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(validation_error_message(jsonschema.exceptions.best_match(errors)))
    return config


def validate_section(section: str, given: dict) -> dict:
    """One top-level section validated on its own, in place, with the schema's defaults filled in
    (records.with_schema_defaults: tests and notebooks that spell out only what they change)."""
    schema = load_schema()
    validator = _validator_with_defaults()({"$schema": schema["$schema"], **schema["properties"][section]})
    errors = sorted(validator.iter_errors(given), key=lambda e: list(e.absolute_path))
    if errors:
        message = validation_error_message(jsonschema.exceptions.best_match(errors))
        raise ConfigError(message.replace("config: ", f"config: {section}.", 1).replace(f"{section}.<top level>", section))
    return given


def deep_merge(base: dict, override: Mapping) -> dict:
    """Recursive dict update, like Snakemake's --configfile overlay (lists are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def canonical(value):
    """The same config with every mapping's keys in sorted order (lists keep theirs).

    Snakemake compares a rule's params by their repr, in which a dict's key order shows: the
    same config written in another key order would otherwise rerun everything.
    """
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def read_config_file(path: str | Path) -> dict:
    """A config file's mapping; a missing, binary, non-UTF-8 or non-YAML file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    zero = data.find(b"\0")
    if zero >= 0:
        raise ConfigError(f"config file {path}: a binary file (byte 0 at offset {zero}), not YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML{at} ({problem})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {path}: holds a {type(loaded).__name__}, not a mapping of keys")
    return dict(loaded)


def load_config(path: str | Path, *overlays: str | Path | Mapping) -> dict:
    """Load a config file, apply overlays (files or dicts), validate and check it."""
    config = read_config_file(path)
    for overlay in overlays:
        if not isinstance(overlay, Mapping):
            overlay = read_config_file(overlay)
        config = deep_merge(config, overlay)
    validate_schema(config)
    check_config(config)
    return canonical(config)


# --- cross-reference checks -------------------------------------------------------------

_MODEL_REQUIRED = {
    "gguf_package": ("package", "file"),
    "hub": ("id",),
    "local": ("path",),
    "random": ("architecture",),
}
_DATASET_REQUIRED = {
    "synthetic_reviews": ("n_train", "n_eval_per_group", "marker"),
    "local": ("files", "text_columns", "label_column"),
    "hub": ("hub", "text_columns", "label_column"),
}
_INSTRUCTION_REQUIRED = {"synthetic_arithmetic": ("n_train",), "local": ("files",), "hub": ("hub",)}
# Keys of a label-word dataset that an instruction dataset does not take, and the reverse.
_CLASSIFICATION_ONLY = ("prompt", "eval_prompt", "label_words", "text_columns", "label_column", "label_values",
                        "label_threshold", "group", "n_eval_per_group", "marker", "max_text_tokens",
                        "balance_labels")  # fmt: skip
_INSTRUCTION_ONLY = ("prompt_column", "response_column", "prompt_template", "response_template", "messages_column",
                     "system_prompt", "n_eval", "operations", "chat_template")  # fmt: skip
_GROUP_REQUIRED = {
    "none": (),
    "columns_any": ("columns",),
    "column": ("column",),
    "regex": ("pattern", "fields"),
    "overlap": ("fields",),
    "marker": ("marker",),
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SPACED_PLACEHOLDER = re.compile(r"\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}")


# A name becomes a path component under results/ and logs/: "my/data" would be two directories,
# ".." would leave the project, "" would be none.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAMED_SECTIONS = ("models", "datasets", "finetunes", "method_variants", "benchmarks")


def check_names(config: Mapping) -> None:
    """Every name a config defines is a safe path component (letters, digits, '.', '_', '-',
    starting with a letter or digit), so it cannot be empty, '.', '..' or hold a '/'."""
    for section in NAMED_SECTIONS:
        for name in config[section]:
            if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
                raise ConfigError(
                    f"config: {section}: the name {name!r} is not a safe name (letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit): names are directories under results/"
                )


def _check_batch(config: Mapping, recipe: Mapping, name: str, dataset: str) -> None:
    """A batch larger than the training split would silently train on the split (a smaller
    batch than the config says): refused where the split's size is in the config."""
    n_train = config["datasets"][dataset].get("n_train")
    batch = int(recipe["hyper"]["batch_size"])
    if n_train is not None and batch > int(n_train):
        raise ConfigError(
            f"config: finetune.batch_size: {batch} (recipe {name!r}) is larger than the {n_train} training "
            f"examples of datasets.{dataset} (n_train)"
        )


def _check_analysis(config: Mapping) -> None:
    """Analysis keys that name datasets or recipes name ones the config has."""
    analysis, grid = config["analysis"], config["grid"]
    for dataset in analysis["regimes"]:
        if dataset not in config["datasets"]:
            raise ConfigError(f"config: analysis.regimes: unknown dataset {dataset!r} (defined: {', '.join(config['datasets'])})")
    reference = analysis["reference_finetune"]
    finetunes = grid["finetunes"]
    if grid["controls"] and reference not in finetunes:
        raise ConfigError(
            f"config: analysis.reference_finetune: {reference!r} is not in grid.finetunes ({', '.join(finetunes)}): "
            "the controls would have nothing to be compared with"
        )


def _check_architecture(name: str, architecture: Mapping) -> None:
    """What a random model's transformer would refuse only once the job builds it."""
    hidden, heads = architecture.get("hidden_size"), architecture.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ConfigError(f"config: models.{name}.architecture: num_attention_heads {heads} does not divide hidden_size {hidden}")
    groups = architecture.get("num_key_value_heads")
    if isinstance(groups, int) and isinstance(heads, int) and groups > 0 and heads % groups:
        raise ConfigError(
            f"config: models.{name}.architecture: num_key_value_heads {groups} does not divide num_attention_heads {heads}"
        )


def _check_server(config: Mapping) -> None:
    """A server sends a heartbeat every HEARTBEAT_S while it works: a stall limit within a few
    heartbeats would take healthy cells for stuck ones."""
    from spectral_edit.evaluate.client import HEARTBEAT_S  # standard library only

    stall = config["evaluation"]["server"]["stall_seconds"]
    if float(stall) < 3 * HEARTBEAT_S:
        raise ConfigError(
            f"config: evaluation.server.stall_seconds: {stall:g} s is under three of the server's "
            f"{HEARTBEAT_S:g}-s heartbeats: healthy cells would be taken for stuck ones"
        )


def check_config(config: dict, check_files: bool = True) -> None:
    """Check what the schema cannot: names that must exist, per-source keys, files on disk.
    (Benchmarks are checked against lm-eval by spectral_edit.benchmarks.spec.check_benchmarks.)"""
    check_names(config)
    _check_server(config)
    grid = config["grid"]
    clash = sorted(set(config["datasets"]) & set(config["benchmarks"]))
    if clash:
        raise ConfigError(f"config: {clash[0]!r} names both a dataset and a benchmark: give one of them another name")
    for name in grid["models"]:
        if name not in config["models"]:
            raise ConfigError(f"config: grid.models: unknown model {name!r} (defined: {', '.join(config['models'])})")
        _check_model(name, config["models"][name], check_files)
    for name in grid["datasets"]:
        if name not in config["datasets"]:
            raise ConfigError(f"config: grid.datasets: unknown dataset {name!r} (defined: {', '.join(config['datasets'])})")
        benchmarks = config["benchmarks"]
        _check_dataset(name, config["datasets"][name], config["datasets"], check_files, benchmarks)
        for benchmark in config["datasets"][name].get("heldout", []) or []:
            if benchmark in config["datasets"]:
                _check_dataset(benchmark, config["datasets"][benchmark], config["datasets"], check_files, benchmarks)
    for key in ("finetunes", "controls"):
        for name in grid[key]:
            resolve_finetune(config, name, where=f"config: grid.{key}")
            for dataset in grid["datasets"]:
                _check_batch(config, recipe_for_dataset(config, name, dataset), name, dataset)
    _check_analysis(config)
    for name in grid["methods"]:
        resolve_method(config, name)
    for name in config["method_variants"]:
        resolve_method(config, name)
    retention_names = [format_retention(r) for r in grid["retentions"]]
    if len(set(retention_names)) != len(retention_names):
        raise ConfigError(f"config: grid.retentions: duplicate values {grid['retentions']}")
    _check_distinct_k(grid["retentions"])
    from spectral_edit.data import is_instruction  # local import: data pulls in datasets and pandas

    sweet = config["analysis"]["sweet_spot_method"]
    if all(is_instruction(config["datasets"][d]) for d in grid["datasets"]):
        return  # no label-word task: no Table 1, so no sweet spot to sweep for
    if sweet not in grid["methods"]:
        raise ConfigError(f"config: analysis.sweet_spot_method: {sweet!r} is not in grid.methods ({', '.join(grid['methods'])})")
    if not resolve_method(config, sweet)[0].uses_retention:
        raise ConfigError(f"config: analysis.sweet_spot_method: {sweet!r} has no retention to sweep")


# Ranks up to this bound cover the matrices of every model this workflow edits (a 70B model's
# hidden size is 8192); two retentions giving the same k on all of them are one cell twice.
_LARGEST_RANK = 65536


def _check_distinct_k(retentions) -> None:
    """Retentions that differ only past k's rounding (0.3 and 0.30000000000000004): one line."""
    from spectral_edit.edit.methods import kept_count

    ordered = sorted(float(r) for r in retentions)
    for low, high in zip(ordered, ordered[1:]):
        # Retentions further apart than 1/rank differ at that rank; only near-equal ones need the scan.
        if high - low < 1 / _LARGEST_RANK and all(
            kept_count(rank, low) == kept_count(rank, high) for rank in range(1, _LARGEST_RANK + 1)
        ):
            raise ConfigError(
                f"config: grid.retentions: {low!r} and {high!r} keep the same k = ceil(retention x rank) "
                f"for every rank up to {_LARGEST_RANK}: one cell twice; keep one"
            )


# What transformers' from_pretrained reads a local model's weights from.
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


def _check_model(name: str, spec: Mapping, check_files: bool) -> None:
    source = spec["source"]
    for key in _MODEL_REQUIRED[source]:
        if key not in spec:
            raise ConfigError(f"config: models.{name}: source {source!r} needs the key {key!r}")
    if source == "random":
        _check_architecture(name, spec.get("architecture") or {})
    if not check_files:
        return
    if source == "gguf_package":
        from spectral_edit.packaged import find_packaged_file  # not from models: that imports transformers

        find_packaged_file(spec["package"], spec["file"], where=f"config: models.{name}")
    elif source == "local":
        path = Path(spec["path"])
        if not (path / "config.json").is_file():
            raise ConfigError(f"config: models.{name}.path: no config.json in {spec['path']!r}")
        if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_FILES):
            raise ConfigError(f"config: models.{name}.path: no weights in {spec['path']!r} ({', '.join(_WEIGHT_FILES)})")


def _check_instruction_dataset(name: str, spec: Mapping, where: str, check_files: bool) -> None:
    source = spec["source"]
    if source not in _INSTRUCTION_REQUIRED:
        raise ConfigError(f"{where}.source: {source!r} is not a source of instruction data ({', '.join(_INSTRUCTION_REQUIRED)})")
    for key in _INSTRUCTION_REQUIRED[source]:
        if key not in spec:
            raise ConfigError(f"{where}: source {source!r} needs the key {key!r}")
    extra = [key for key in _CLASSIFICATION_ONLY if key in spec]
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: a key of label-word datasets; an instruction dataset is scored on its benchmarks")
    if source == "synthetic_arithmetic":
        return
    shapes = [("messages_column",), ("prompt_column", "prompt_template"), ("response_column", "response_template")]
    if "messages_column" in spec:
        extra = [k for k in ("prompt_column", "prompt_template", "response_column", "response_template") if k in spec]
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: messages_column holds whole chats; drop {extra[0]}")
    else:
        for keys in shapes[1:]:
            given = [k for k in keys if k in spec]
            if len(given) != 1:
                raise ConfigError(f"{where}: give exactly one of {' and '.join(keys)} (or messages_column)")
    if check_files:
        _check_local_files(spec, name)


def _check_local_files(spec: Mapping, name: str) -> None:
    """A local dataset's files exist and have the configured columns (and label values)."""
    from spectral_edit.data import check_local_dataset
    from spectral_edit.errors import DataError

    try:
        check_local_dataset(spec, name)
    except DataError as error:
        raise ConfigError(f"config: {error}") from None


def _check_dataset(name: str, spec: Mapping, datasets: Mapping, check_files: bool, benchmarks: Mapping) -> None:
    from spectral_edit.data import is_instruction  # local import: data pulls in datasets and pandas

    source = spec["source"]
    where = f"config: datasets.{name}"
    for key in spec.get("benchmarks") or []:
        if key not in benchmarks:
            raise ConfigError(
                f"{where}.benchmarks: unknown benchmark {key!r} (defined under benchmarks: {', '.join(benchmarks) or 'none'})"
            )
    if is_instruction(spec):
        _check_instruction_dataset(name, spec, where, check_files)
        _check_heldout(name, spec, datasets, benchmarks, where)
        return
    for key in ("prompt", "label_words"):
        if key not in spec:
            raise ConfigError(f"{where}: a label-word dataset needs the key {key!r} (or kind: instruction)")
    extra = [key for key in _INSTRUCTION_ONLY if key in spec]
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: a key of instruction datasets (kind: instruction)")
    if source not in _DATASET_REQUIRED:
        raise ConfigError(f"{where}.source: {source!r} makes instruction data (set kind: instruction)")
    for key in _DATASET_REQUIRED[source]:
        if key not in spec:
            raise ConfigError(f"{where}: source {source!r} needs the key {key!r}")
    from spectral_edit.data import text_fields  # local import: data pulls in datasets and pandas

    fields = set(text_fields(spec))
    for key in ("prompt", "eval_prompt"):
        if key not in spec:
            continue
        spaced = [m for m in _SPACED_PLACEHOLDER.findall(spec[key]) if not _PLACEHOLDER.fullmatch(m)]
        if spaced:
            # The prompt is filled by replacing "{field}" exactly: "{ text }" would stay in the prompt.
            raise ConfigError(f"{where}.{key}: {spaced[0]!r} is not filled in; write {{{spaced[0].strip('{} ')}}} without spaces")
        placeholders = set(_PLACEHOLDER.findall(spec[key]))
        if not placeholders & fields:
            raise ConfigError(
                f"{where}.{key}: must contain a text field placeholder ({', '.join('{' + f + '}' for f in sorted(fields))})"
            )
        unknown = sorted(placeholders - fields)
        if unknown:
            raise ConfigError(f"{where}.{key}: placeholder {{{unknown[0]}}} is not a text field ({', '.join(sorted(fields))})")
    if source == "synthetic_reviews":
        if "balance_labels" in spec:
            raise ConfigError(f"{where}.balance_labels: synthetic_reviews makes every label equally often already")
        if len(spec["label_words"]) != 2:
            raise ConfigError(
                f"{where}.label_words: synthetic_reviews has 2 labels (negative, positive), got {len(spec['label_words'])}"
            )
    else:
        if ("label_values" in spec) == ("label_threshold" in spec):
            raise ConfigError(f"{where}: give exactly one of label_values and label_threshold")
        if "label_values" in spec and len(spec["label_values"]) != len(spec["label_words"]):
            raise ConfigError(
                f"{where}.label_values: {len(spec['label_values'])} values for {len(spec['label_words'])} label_words"
            )
        if "label_threshold" in spec and len(spec["label_words"]) != 2:
            raise ConfigError(f"{where}.label_threshold: a threshold makes 2 labels, label_words has {len(spec['label_words'])}")
        group = spec.get("group") or {"rule": "none"}
        for key in _GROUP_REQUIRED[group["rule"]]:
            if key not in group:
                raise ConfigError(f"{where}.group: rule {group['rule']!r} needs the key {key!r}")
        for field in group.get("fields", []) + ([group["field"]] if "field" in group else []):
            if field not in fields:
                raise ConfigError(f"{where}.group: field {field!r} is not a text field ({', '.join(sorted(fields))})")
        if group["rule"] == "regex":
            try:
                re.compile(group["pattern"])
            except re.error as error:
                raise ConfigError(f"{where}.group.pattern: {group['pattern']!r} is not a regular expression ({error})") from None
        if group["rule"] == "overlap" and len(group["fields"]) != 2:
            raise ConfigError(f"{where}.group.fields: the overlap rule compares 2 fields, got {len(group['fields'])}")
        if group["rule"] == "marker" and isinstance(group.get("label"), str) and group["label"] not in spec["label_words"]:
            raise ConfigError(f"{where}.group.label: {group['label']!r} is not one of the label_words {spec['label_words']}")
        if check_files:
            _check_local_files(spec, name)
    _check_heldout(name, spec, datasets, benchmarks, where)


def _check_heldout(name: str, spec: Mapping, datasets: Mapping, benchmarks: Mapping, where: str) -> None:
    from spectral_edit.data import is_instruction

    for benchmark in spec.get("heldout", []) or []:
        if benchmark not in datasets and benchmark not in benchmarks:
            raise ConfigError(
                f"{where}.heldout: {benchmark!r} is neither a dataset nor a benchmark "
                f"(datasets: {', '.join(datasets)}; benchmarks: {', '.join(benchmarks) or 'none'})"
            )
        if benchmark == name:
            raise ConfigError(f"{where}.heldout: a task cannot be its own held-out benchmark")
        if benchmark in datasets and is_instruction(datasets[benchmark]):
            raise ConfigError(f"{where}.heldout: {benchmark!r} is an instruction dataset; name its benchmarks instead")
        if benchmark in (spec.get("benchmarks") or []):
            raise ConfigError(f"{where}.heldout: {benchmark!r} is also one of the task's own benchmarks")


# --- fine-tuning recipes -------------------------------------------------------------------

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def resolve_finetune(config: Mapping, name: str, where: str = "config: grid.finetunes") -> dict:
    """A recipe with its full hyperparameters: the finetune section plus the recipe's overrides."""
    recipes = config["finetunes"]
    if name not in recipes and name != "full":
        raise ConfigError(f"{where}: unknown fine-tune {name!r} (defined: {', '.join(['full', *recipes])})")
    recipe = dict(recipes.get(name, {"kind": "full"}))
    overrides = recipe.pop("overrides", {}) or {}
    allowed = _finetune_keys()
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(
            f"config: finetunes.{name}.overrides: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    kind = recipe["kind"]
    if kind in ("lora", "speclora"):
        if "rank" not in recipe:
            raise ConfigError(f"config: finetunes.{name}: kind {kind!r} needs the key 'rank'")
        recipe.setdefault("alpha", 2 * recipe["rank"])
        recipe.setdefault("dropout", 0.0)
        recipe.setdefault("target_modules", list(DEFAULT_LORA_TARGETS))
    if kind == "speclora" and "top_k" not in recipe:
        raise ConfigError(f"config: finetunes.{name}: kind 'speclora' needs the key 'top_k'")
    if kind == "full":
        extra = sorted(set(recipe) - {"kind"})
        if extra:
            raise ConfigError(f"config: finetunes.{name}: key {extra[0]!r} does not apply to kind 'full'")
    return {"name": name, **recipe, "hyper": {**config["finetune"], **overrides}}


def recipe_for_dataset(config: Mapping, name: str, dataset: str) -> dict:
    """A recipe as it trains on one dataset: the dataset's ``finetune`` hyperparameters (a task's
    own learning rate, length or steps, as Spectral Surgery's Table 6 sets them) over the
    recipe's."""
    recipe = resolve_finetune(config, name)
    overrides = config["datasets"][dataset].get("finetune") or {}
    unknown = sorted(set(overrides) - _finetune_keys())
    if unknown:
        raise ConfigError(
            f"config: datasets.{dataset}.finetune: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_finetune_keys()))})"
        )
    return {**recipe, "hyper": {**recipe["hyper"], **overrides}} if overrides else recipe


# --- methods and the grid -----------------------------------------------------------------


def resolve_method(config: Mapping, name: str) -> tuple[SpectralMethod, dict]:
    """The registered method behind a grid method name, and its full parameters."""
    variants = config["method_variants"]
    methods = available_methods()
    if name in variants:
        spec = dict(variants[name])
        implementation = spec.pop("method")
        if implementation not in methods:
            raise ConfigError(
                f"config: method_variants.{name}.method: unknown method {implementation!r} (known: {', '.join(methods)})"
            )
        if name in methods and implementation != name:
            # Tables and figures would call the other method's results by the built-in's name.
            raise ConfigError(
                f"config: method_variants.{name}: a variant may not take the name of the built-in method "
                f"{name!r} for method {implementation!r}; give it a name of its own"
            )
        method = methods[implementation]
        return method, method.resolve_params(spec, f"config: method_variants.{name}")
    if name not in methods:
        known = list(methods) + list(variants)
        raise ConfigError(f"config: grid.methods: unknown method {name!r} (known: {', '.join(known)})")
    return methods[name], dict(methods[name].defaults)


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str
    seed: int
    finetune: str
    method: str
    retention: str  # as in file names, see layout.format_retention ("none": no retention)

    def wildcards(self) -> dict:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "seed": self.seed,
            "finetune": self.finetune,
            "method": self.method,
            "retention": self.retention,
        }


def grid_cells(config: Mapping) -> Iterator[Cell]:
    """Every edited-model evaluation cell of the grid (one per retention, or one "none")."""
    grid = config["grid"]
    for model in grid["models"]:
        for dataset in grid["datasets"]:
            for seed in grid["seeds"]:
                for finetune in grid["finetunes"]:
                    for name in grid["methods"]:
                        method, _ = resolve_method(config, name)
                        retentions = grid["retentions"] if method.uses_retention else [None]
                        for retention in retentions:
                            yield Cell(model, dataset, int(seed), finetune, name, format_retention(retention))


def grid_finetunes(config: Mapping) -> list[str]:
    """Every recipe the grid trains: the edited ones, then the controls."""
    grid = config["grid"]
    return list(dict.fromkeys([*grid["finetunes"], *grid["controls"]]))
