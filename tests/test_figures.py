"""The figures are a registry, one module per figure: planning lists them without importing
matplotlib, every figure has its report caption, and which figures a config produces (and in
what order) follows from the config as before."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from spectral_edit.analysis.figures import available_figures, draw_figures, figure_names
from spectral_edit.plan.config import load_config, resolve_method

CORE = ["trajectory", "retention_sweep", "method_comparison", "cell_comparison", "spectrum"]

# What the Snakefile does to know the figures, in a fresh interpreter (this one has drawn figures).
PLANNING = """
import json, sys
from spectral_edit.analysis.figures import available_figures, figure_names
available_figures()
heavy = ("matplotlib", "pandas", "transformers", "datasets", "torch", "spectral_edit.plan.config")
registry_imported = sorted(m for m in heavy if m in sys.modules)
from spectral_edit.plan.config import load_config
names = figure_names(load_config("config.yaml"))
print(json.dumps({"names": names, "registry_imported": registry_imported, "matplotlib": "matplotlib" in sys.modules}))
"""


def test_planning_lists_the_figures_without_importing_matplotlib():
    result = subprocess.run([sys.executable, "-c", PLANNING], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["names"] == CORE
    assert found["registry_imported"] == []  # the registry and every figure module alone
    assert not found["matplotlib"]  # nor listing the figures of a loaded config (the config loads pandas, transformers)


def test_each_figure_is_one_module_named_after_it_with_a_caption():
    figures = available_figures()
    modules = {p.stem for p in (REPO / "spectral_edit/analysis/figures").glob("*.py")} - {"__init__", "common"}
    assert set(figures) == modules
    for name, figure in figures.items():
        assert Path(inspect.getsourcefile(figure.draw)).stem == name
        assert (REPO / "rules/captions" / f"{name}.rst").is_file(), f"figure {name!r} has no rules/captions/{name}.rst"


def _surgery_policies(config):
    """{grid method: its Spectral Surgery policy}, as rules/common.smk passes them."""
    resolved = {name: resolve_method(config, name) for name in config["grid"]["methods"]}
    return {name: params["policy"] for name, (method, params) in resolved.items() if method.name == "spectral_surgery"}


@pytest.mark.parametrize(
    "overlays, expected",
    [
        ((), CORE),
        (("config/all-methods.yaml",), CORE + ["controls_pareto", "layer_subsets"]),
        (("config/paper.yaml",), CORE + ["controls_pareto", "layer_subsets", "recovery_preservation"]),
        (("config/surgery.yaml",), ["spectrum", "surgery_guided_vs_random", "surgery_reward_risk"]),
        (("config/unforgetting.yaml",), ["spectrum", "recovery_preservation", "surgery_reward_risk"]),
        (
            ("config/protocols-offline.yaml",),
            ["spectrum", "recovery_preservation", "surgery_guided_vs_random", "surgery_reward_risk"],
        ),
    ],
    ids=["default", "all-methods", "paper", "surgery", "unforgetting", "protocols-offline"],
)
def test_the_config_decides_which_figures_and_their_order(overlays, expected):
    config = load_config(REPO / "config.yaml", *(REPO / o for o in overlays))
    assert figure_names(config, _surgery_policies(config)) == expected


def test_guided_vs_random_needs_both_policies():
    config = load_config(REPO / "config.yaml", REPO / "config/surgery.yaml")
    assert "surgery_guided_vs_random" not in figure_names(config, {"a": "random_index"})
    assert "surgery_guided_vs_random" not in figure_names(config)


def test_an_unknown_figure_is_named(tmp_path):
    with pytest.raises(KeyError, match="unknown figure 'trajectroy'"):
        draw_figures(None, tmp_path, ["trajectroy"])
