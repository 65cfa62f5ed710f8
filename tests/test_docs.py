"""The documents agree with each other and with params.yaml: one install command, one smoke
preset, and an explanation in docs/params.md for every key params.yaml holds (its comments
live there, since DVC's -S rewrite would move or drop them). That DVC accepts every documented
-S: tests/test_dvc_yaml.py."""

from __future__ import annotations

import re

import yaml
from conftest import ROOT, committed

INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ."
SMOKE = "dvc exp run -S train.max_epochs=1 -S gradients.batches=2"


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in d.items():
        if isinstance(value, dict) and value and key != "sources":
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_readme_and_reproduce_give_the_same_install_command():
    readme, reproduce = (ROOT / "README.md").read_text(), (ROOT / "docs/reproduce.md").read_text()
    assert INSTALL in readme and INSTALL in reproduce
    # No other way to install in either (e.g. another index for torch in one of them only).
    for text in (readme, reproduce):
        installs = re.findall(r"^[^\n`]*pip install[^\n]*$", text, flags=re.M)
        # The same command with extras: '.[test]', '.[s3]' (a DVC remote on S3), '.[ssh]'.
        extras = re.compile(r"pip install -q -e '\.\[[a-z0-9,]+\]'")
        assert all(INSTALL in line or extras.search(line) for line in installs), installs
        assert text.count("download.pytorch.org/whl/cpu") == 1  # the same CPU-torch note


def test_the_smoke_preset_is_documented_once_in_the_same_words():
    for doc in ("README.md", "docs/reproduce.md"):
        assert SMOKE in (ROOT / doc).read_text(), doc


def test_docs_params_explains_every_key_of_params_yaml():
    doc = (ROOT / "docs/params.md").read_text()
    keys = _leaves(yaml.safe_load(committed("params.yaml")))
    machine = _leaves(yaml.safe_load(committed("machine.yaml")))
    assert "train.seed" in keys and len(keys) > 40
    assert machine == ["data.sources", "grid.seeds", "grid.pe"]
    missing = [k for k in keys + machine
               if f"`{k}`" not in doc and f"`{k}.<dataset>`" not in doc]
    assert not missing, f"docs/params.md does not explain {missing}"
    assert "#" not in committed("params.yaml").split("\n", 2)[2]  # no comments below
