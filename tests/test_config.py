"""params.yaml validation: a bad value fails once, naming the key, value and what is allowed."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml
from conftest import committed, copy_committed, stage_here, write_settings

from gradattn.config import load_params, parse_params
from gradattn.core.errors import ConfigError
from gradattn.core.settings import (
    DEFAULT_MODELS,
    MACHINE_FILE,
    MODEL_OPTIONS,
    PE_CHOICES,
    SECTIONS,
    with_machine,
)

# The shipped files, not the workspace's: params.yaml with machine.yaml merged in, as read.
DEFAULTS = with_machine(yaml.safe_load(committed("params.yaml")),
                        yaml.safe_load(committed(MACHINE_FILE)))


def with_change(section: str, key: str | None, value) -> dict:
    params = copy.deepcopy(DEFAULTS)
    if key is None:
        params[section] = value
    else:
        params[section][key] = value
    return params


def test_defaults_are_the_papers_protocol(tmp_path):
    copy_committed("params.yaml", tmp_path)
    p = load_params(tmp_path / "params.yaml")
    assert p.recipe == "corrected"
    train = p.train.resolve(p.recipe, "fashionmnist-mini")
    assert (train.lr, train.weight_decay, train.batch_size) == (1e-3, 1e-4, 128)
    assert (train.weights, train.plateau) == ("best", "torch")
    assert (p.train.plateau_factor, p.train.plateau_patience, p.train.min_lr) == (0.2, 3, 1e-7)
    assert (p.train.early_stopping_patience, p.train.seed) == (7, 42)
    assert p.models == ("resnet18", "gradattn")
    assert p.data.datasets == ("fashionmnist-mini",)
    assert p.model_options("gradattn")["pe"] == "learnable"


def test_params_yaml_spells_out_the_code_defaults():
    # A key missing from params.yaml takes the dataclass default (or MODEL_OPTIONS'): the
    # shipped file must say the same, so that deleting a line changes nothing.
    for name, cls in SECTIONS.items():
        defaults = {f.name: getattr(cls, f.name) for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING}
        shipped = {k: tuple(v) if isinstance(v, list) else v for k, v in DEFAULTS[name].items()}
        assert {k: shipped[k] for k in defaults} == defaults, name
    assert tuple(DEFAULTS["models"]) == DEFAULT_MODELS
    assert DEFAULTS["model"] == {k: v for opts in MODEL_OPTIONS.values() for k, v in opts.items()}
    assert DEFAULTS["grid"]["pe"] == list(PE_CHOICES)


@pytest.mark.parametrize(
    "section, key, value, expect",
    [
        ("data", "datasets", ["imagenet22k"], r"data\.datasets = 'imagenet22k'.*fashionmnist-mini"),
        ("models", None, ["resnet19"], r"models = 'resnet19'.*resnet18, .*gradattn"),
        ("model", "pe", "alibi", r"pe 'alibi'.*none, learnable, rope"),
        ("model", "heads", 7,
         rf"dim {MODEL_OPTIONS['gradattn']['dim']} is not divisible by heads 7"),
        ("train", "lr", 0, r"train\.lr = 0 .*> 0"),
        ("train", "lr", -0.1, r"train\.lr = -0\.1 .*> 0"),
        ("train", "batch_size", 0, r"train\.batch_size = 0 .*auto .*integer >= 1"),
        ("train", "batch_size", 12.5, r"train\.batch_size = 12\.5 .*integer"),
        ("train", "weights", "best_epoch", r"train\.weights = 'best_epoch'.*auto, best, last"),
        ("train", "plateau", "keras", r"train\.plateau = 'keras'.*auto, torch, notebooks"),
        ("train", "optimizer", "sgd", r"train\.optimizer = 'sgd'.*adam, adamw"),
        ("evaluate", "gap", "abs", r"evaluate\.gap = 'abs'.*auto, signed, absolute"),
        ("gradients", "split", "val", r"gradients\.split = 'val'.*auto, train, test"),
        ("gradients", "silent", "drop", r"gradients\.silent = 'drop'.*auto, skip, count"),
        ("train", "device", "tpu", r"train\.device = 'tpu'.*auto, cpu, cuda"),
        ("train", "lrr", 0.1, r"train\.lrr = 0\.1 .*unknown key.*lr"),
        ("data", "split", "random", r"data\.split = 'random'.*official, pooled"),
        ("gradients", "high", 1e-9, r"gradients\.high .*> 1e-06"),
    ],
)
def test_bad_values_name_key_value_and_allowed(section, key, value, expect):
    with pytest.raises(ConfigError, match=expect) as err:
        parse_params(with_change(section, key, value))
    assert "\n" not in str(err.value)


def test_rope_needs_an_even_head_size():
    params = with_change("model", "pe", "rope")
    params["model"].update(dim=24, heads=8)
    with pytest.raises(ConfigError, match=r"even head size.*none, learnable"):
        parse_params(params)


def test_each_model_gets_only_its_own_options():
    params = parse_params(DEFAULTS)
    assert params.model_options("resnet18") == {"stem": "imagenet"}
    rope = parse_params(with_change("model", "pe", "rope"))
    # A GradAttn-only change leaves ResNet-18's options (configs/models/resnet18.json, what
    # its stages depend on) the same, and changes GradAttn's.
    assert rope.model_options("resnet18") == params.model_options("resnet18")
    assert rope.model_options("gradattn") == {**params.model_options("gradattn"), "pe": "rope"}


def test_configure_stage_fails_with_one_line_and_writes_nothing(tmp_path):
    write_settings(tmp_path, with_change("train", "lr", -1))
    proc = stage_here("configure.py", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.lr = -1"), proc.stderr
    assert not (tmp_path / "configs").exists()


def test_train_stage_without_prepared_data_fails_cleanly(tmp_path):
    write_settings(tmp_path, DEFAULTS)
    assert stage_here("configure.py", cwd=tmp_path).returncode == 0
    proc = stage_here("train.py", "fashionmnist-mini", "resnet18", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "preprocess@fashionmnist-mini" in lines[0], proc.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("typo, suggestion", [("trian", "train"), ("modles", "models"),
                                              ("gradient", "gradients")])
def test_an_unknown_top_level_key_is_refused_with_the_closest_known_one(typo, suggestion):
    params = copy.deepcopy(DEFAULTS)
    params[typo] = params.pop(suggestion)
    with pytest.raises(ConfigError, match=rf"'{typo}' .*did you mean '{suggestion}'") as err:
        parse_params(params)
    assert "\n" not in str(err.value) and "known keys: recipe, data, models" in str(err.value)


@pytest.mark.parametrize("text, expect", [("off", "off"), ("on", "on"), ("'off'", "off"),
                                          ("auto", "auto"), ("no", "off"), ("true", "on")])
def test_train_fast_accepts_on_and_off_however_yaml_reads_them(text, expect):
    params = copy.deepcopy(DEFAULTS)
    params["train"].update(yaml.safe_load(f"fast: {text}"))
    assert parse_params(params).train.fast == expect


def test_a_yaml_boolean_is_still_refused_where_on_off_is_not_a_choice():
    with pytest.raises(ConfigError, match=r"train\.device = False .*auto, cpu, cuda"):
        parse_params(with_change("train", "device", yaml.safe_load("off")))


def configure_error(tmp_path, old: str, new: str) -> str:
    """The one line configure prints for params.yaml with `old` replaced by `new`; it must exit 2
    and write no configs/."""
    (tmp_path / "params.yaml").write_text(committed("params.yaml").replace(old, new))
    proc = stage_here("configure.py", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert not (tmp_path / "configs").exists()
    return lines[0]


def test_configure_refuses_a_top_level_typo_with_one_line(tmp_path):
    line = configure_error(tmp_path, "\ntrain:", "\ntrian:")
    assert "'trian' is not a known top-level key" in line and "'train'" in line


def test_an_unknown_recipe_is_refused_with_one_line_naming_the_allowed_ones(tmp_path):
    line = configure_error(tmp_path, "recipe: corrected", "recipe: paper")
    assert "recipe = 'paper'" in line and "corrected, notebooks" in line


def test_machine_settings_have_one_home(tmp_path):
    """data.sources and grid live in machine.yaml only: found in params.yaml, or anything else
    found in machine.yaml, is one line naming the key and where it belongs."""
    params = tmp_path / "params.yaml"
    write_settings(tmp_path, DEFAULTS)
    assert load_params(params).data.sources == {}  # machine.yaml's empty entries
    study = yaml.safe_load(params.read_text())
    assert "grid" not in study and "sources" not in study["data"]

    params.write_text(yaml.safe_dump({**study, "grid": {"seeds": [1]}}))
    with pytest.raises(ConfigError, match=r"params.yaml holds grid, a setting of this machine: "
                                          r"it lives in machine.yaml"):
        load_params(params)
    params.write_text(yaml.safe_dump(study))
    (tmp_path / MACHINE_FILE).write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train' is not a setting of this machine: it holds "
                                          r"data.sources, grid only"):
        load_params(params)
    (tmp_path / MACHINE_FILE).write_text("data:\n  sources:\n    cifar1: /x\n")
    with pytest.raises(ConfigError, match=r"data.sources.cifar1 = 'cifar1' is not allowed: .*"
                                          r"\(fix it in machine.yaml or with -S machine.yaml:"):
        load_params(params)
    (tmp_path / MACHINE_FILE).write_text("data:\n  sources:\n    cifar10: /data/c10\n")
    assert load_params(params).data.sources == {"cifar10": "/data/c10"}
