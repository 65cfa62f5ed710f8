"""gradattn table: pooling over seeds, the paired-by-seed interval, de-duplication, missing
cells (synthetic runs), a run's identity from dvc.lock and the refusals when a revision's files
disagree with it. Real DVC experiments: tests/test_sweep.py."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gradattn.cli import main
from gradattn.core.errors import GradattnError
from gradattn.reporting import stats, table
from gradattn.reporting.experiments import identify, runs_of, runs_of_revision, workspace_reader

T_975_2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)


def params(pe="learnable", seed=42, **train) -> dict:
    return {"data": {"datasets": ["d1"]}, "models": ["resnet18", "gradattn"],
            "model": {"pe": pe, "dim": 16}, "train": {"seed": seed, "max_epochs": 1, **train}}


def runs(source, p, metrics: dict[str, dict], grads: dict[str, dict] | None = None):
    """Runs of one fake revision; metrics maps 'dataset/model' to its metrics dict."""
    files = {f"metrics/{k}.json": v for k, v in metrics.items()}
    files |= {f"metrics/{k}.gradients.json": v for k, v in (grads or {}).items()}
    return runs_of(source, p, files.get)


def csv_frame(study, tables=(1,)) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(table.csv(study, tables)))


def test_identify_splits_variant_setting_and_seed():
    opts_r, set_r, seed_r = identify(params("rope", 7), "d1", "resnet18")
    opts_g, set_g, _ = identify(params("rope", 7), "d1", "gradattn")
    assert opts_r == {"stem": "imagenet"}  # ResNet-18 does not take pe: same run for any pe
    assert opts_g["pe"] == "rope" and opts_g["dim"] == 16
    assert seed_r == 7 and "train.seed" not in set_r and set_r == set_g
    # A missing key equals its default spelled out.
    explicit = params("rope", 7, precision="auto")
    assert identify(explicit, "d1", "resnet18")[1] == set_r


def test_pooling_mean_std_n_and_paired_interval():
    base = {1: 0.50, 2: 0.52, 3: 0.54}
    attn = {1: 0.51, 2: 0.54, 3: 0.57}  # per-seed differences 0.01, 0.02, 0.03
    rs = []
    for seed in base:
        m = {"d1/resnet18": {"top1": base[seed]}, "d1/gradattn": {"top1": attn[seed]}}
        rs += runs(f"exp s{seed}", params("none", seed), m)
    study = table.Study(rs)
    df = csv_frame(study).set_index("variant")

    r, g = df.loc["ResNet-18"], df.loc["GradAttn (no PE)"]
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.52)
    assert r["std"] == pytest.approx(0.02)  # sample std (ddof=1): sqrt((.02²+0+.02²)/2)
    assert g["mean"] == pytest.approx(np.mean(list(attn.values())))
    assert g["std"] == pytest.approx(np.std(list(attn.values()), ddof=1))
    # Paired t-interval by hand: mean 0.02, sd 0.01, half-width t·sd/√3.
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert g["diff_n"] == 3 and g["diff_mean"] == pytest.approx(0.02)
    assert g["diff_low"] == pytest.approx(0.02 - half)
    assert g["diff_high"] == pytest.approx(0.02 + half)
    assert math.isnan(r["diff_mean"])  # the baseline is not compared with itself

    md = table.markdown(study, [1])
    assert "| d1 | 52.00 ± 2.00 (n=3) | 54.00 ± 3.00 (n=3); Δ +2.00 pp [-0.48, +4.48] |" in md


def test_paired_difference_uses_common_seeds_only():
    d = stats.paired_difference({1: 0.6, 2: 0.7, 3: 0.9, 9: 0.1}, {1: 0.5, 2: 0.5, 3: 0.6})
    diffs = [0.1, 0.2, 0.3]
    assert d.n == 3 and d.mean == pytest.approx(0.2)
    half = T_975_2 * np.std(diffs, ddof=1) / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((0.2 - half, 0.2 + half))
    one = stats.paired_difference({1: 0.6}, {1: 0.5})
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.high)


def test_no_interval_below_three_paired_seeds():
    rs = []
    for seed in (1, 2):
        rs += runs(f"exp {seed}", params("none", seed),
                   {"d1/resnet18": {"top1": 0.5 + seed / 100},
                    "d1/gradattn": {"top1": 0.6 + seed / 100}})
    md = table.markdown(table.Study(rs), [1])
    assert "Δ" not in md.split("Cells:")[0]  # n=2: mean ± std only
    assert "61.50 ± 0.71 (n=2)" in md


def test_identical_runs_count_once_and_conflicts_are_errors():
    same = {"d1/resnet18": {"top1": 0.5}, "d1/gradattn": {"top1": 0.6}}
    rs = runs("exp a", params("none"), same)
    # Another experiment that only changed pe: ResNet-18 restored from the run cache.
    rs += runs("exp b", params("rope"), {"d1/resnet18": {"top1": 0.5},
                                          "d1/gradattn": {"top1": 0.7}})
    rs += runs("workspace", params("none"), same)  # the workspace holds exp a's results
    study = table.Study(rs)
    df = csv_frame(study).set_index("variant")
    assert df.loc["ResNet-18", "n"] == 1
    assert df.loc["GradAttn (no PE)", "n"] == 1 and df.loc["GradAttn (RoPE)", "n"] == 1

    with pytest.raises(GradattnError, match=r"^exp a and rev old both hold d1/resnet18 .*seed "
                       r"42 .*different metrics"):
        table.Study(rs + runs("rev old", params("none"), {"d1/resnet18": {"top1": 0.4}}))


def test_missing_cells_are_marked_not_dropped():
    rs = runs("w", params("learnable"), {"d1/resnet18": {"top1": 0.5, "top3": 0.8},
                                         "d1/gradattn": {"top1": 0.6, "top3": 0.9}})
    p2 = params("learnable") | {"data": {"datasets": ["d2"]}, "models": ["resnet18"]}
    rs += runs("w2", p2, {"d2/resnet18": {"top1": 0.4}})
    study = table.Study(rs)
    md = table.markdown(study, [1, 2])
    header = ("| Dataset | ResNet-18 | GradAttn (no PE) | GradAttn (learnable PE) | "
              "GradAttn (RoPE) |")
    assert header in md
    assert "| d1 | 50.00 | – | 60.00 | – |" in md
    assert "| d2 | 40.00 | – | – | – |" in md
    assert "| d2 | GradAttn (RoPE) | – | – | – | – |" in md  # a long table keeps the row too
    df = csv_frame(study, (1,))
    assert len(df) == 8  # 2 datasets × 4 columns, none dropped
    assert df.loc[(df.dataset == "d2") & (df.pe == "learnable"), "n"].item() == 0


def test_settings_are_not_pooled_and_variants_are_told_apart():
    rs = runs("a", params("none", 1), {"d1/gradattn": {"top1": 0.5}})
    rs += runs("b", params("none", 1, max_epochs=5), {"d1/gradattn": {"top1": 0.7}})
    wide = params("none", 1)
    wide["model"]["dim"] = 32
    rs += runs("c", wide, {"d1/gradattn": {"top1": 0.6}})
    study = table.Study(rs)
    md = table.markdown(study, [1])
    assert "# Setting 1: train.max_epochs=1" in md and "# Setting 2: train.max_epochs=5" in md
    assert "GradAttn (no PE) [dim=16]" in md and "GradAttn (no PE) [dim=32]" in md
    assert set(csv_frame(study).query("n > 0")["mean"]) == {0.5, 0.6, 0.7}


def test_table5_from_gradient_files_and_csv_fractions():
    m = {"d1/resnet18": {"top1": 0.5}, "d1/gradattn": {"top1": 0.25}}
    g = {"d1/resnet18": {"ghs": 1.0, "vanishing": 0, "exploding": 0, "layers": 21,
                         "norm_mean": 0.1, "norm_min": 0.01, "norm_max": 1.0, "norm_std": 0.2,
                         "ghs_norm": "output", "bounds": [1e-6, 10], "batches": 2}}
    study = table.Study(runs("w", params(), m, g))
    md = table.markdown(study, [5])
    assert ("| d1 | ResNet-18 | 1.000 | none | 1.00e-01 | 1.00e-02 – 1.00e+00 | 2.00e-01 | 21 |"
            in md)
    assert "| d1 | GradAttn (learnable PE) | – |" in md
    df = csv_frame(study, (1,))
    assert df.loc[df.pe == "learnable", "mean"].item() == 0.25  # raw fraction, not %
    assert "No gradient files" in table.markdown(table.Study(runs("w", params(), m)), [5])


# --- identity from dvc.lock (files and a lock written here, checked like DVC's) ---------------

def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def record_run(root: Path, model: str, seed: int, top1: float, *, max_epochs: int = 1,
               pe: str = "rope", params_yaml: dict | None = None,
               environment: dict | None = None) -> None:
    """Files and dvc.lock entries of one run of dataset d1, as `dvc repro` records them (and
    the train stage's run record, when given the environment it ran in)."""
    def write(rel, data):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(data))
        return {"path": rel, "hash": "md5", "md5": _md5(root / rel)}

    options = {"stem": "imagenet"} | ({"pe": pe} if model == "gradattn" else {})
    config = write(f"configs/models/{model}.json", {"model": model, "options": options})
    prepare = write("configs/d1/prepare.json", {"dataset": "d1", "split": "official"})
    metrics = write(f"metrics/d1/{model}.json", {"top1": top1})
    if environment is not None:
        write(f"metrics/d1/{model}.train.run.json",
              {"train": {"seed": seed, "device": "cpu"}, "environment": environment})
    prepared = {"path": "data/prepared/d1", "hash": "md5", "md5": "aa.dir"}
    weights = {"path": f"models/d1/{model}.pt", "hash": "md5", "md5": f"{model}{seed}"}
    lock_file = root / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text()) if lock_file.exists() else {"stages": {}}
    lock["stages"] |= {
        "configure": {"params": {"params.yaml": {"recipe": "corrected"}}},
        "preprocess@d1": {"deps": [prepare], "outs": [prepared]},
        f"train@d1-{model}": {"deps": [prepared, config], "outs": [weights], "params": {
            "params.yaml": {"train.seed": seed, "train.max_epochs": max_epochs,
                            "train.device": "auto"}}},
        f"evaluate@d1-{model}": {"deps": [weights], "outs": [metrics],
                                 "params": {"params.yaml": {"evaluate.ece_bins": 15}}},
    }
    lock_file.write_text(yaml.safe_dump(json.loads(json.dumps(lock))))  # no YAML aliases
    (root / "params.yaml").write_text(yaml.safe_dump(params_yaml or params(pe, seed)))


def test_a_run_is_what_dvc_lock_recorded_not_params_yaml(tmp_path):
    # params.yaml says 5 epochs and seed 7; dvc.lock says the run had 1 epoch and seed 42.
    record_run(tmp_path, "gradattn", 42, 0.25, params_yaml=params("none", 7, max_epochs=5))
    (run,) = runs_of_revision("workspace", workspace_reader(tmp_path))
    assert (run.dataset, run.model, run.seed, run.options) == (
        "d1", "gradattn", 42, {"stem": "imagenet", "pe": "rope"})
    assert run.setting == {"recipe": "corrected", "data.split": "official",
                           "train.max_epochs": 1, "train.device": "auto",
                           "evaluate.ece_bins": 15, "environment": "not recorded"}
    assert run.metrics == {"top1": 0.25}
    md = table.markdown(table.Study([run]), [1])
    assert "Recipe: **corrected**" in md and "| d1 | – | – | – | 25.00 |" in md


@pytest.mark.parametrize("damage, message", [
    # Committed metrics of another run than dvc.lock records (the stale-run case).
    (lambda r: (r / "metrics/d1/gradattn.json").write_text('{"top1": 0.9}'),
     r"^workspace: metrics/d1/gradattn.json is not the file evaluate@d1-gradattn in dvc.lock "
     r"produced \(md5 \w{8} vs \w{8}\): the results come from another run"),
    # The model options changed after training (configure re-ran, train did not).
    (lambda r: (r / "configs/models/gradattn.json").write_text("{}"),
     r"^workspace: configs/models/gradattn.json is not the file train@d1-gradattn in dvc.lock"),
    # Evaluated a model that train@ no longer records (a partial repro).
    (lambda r: record_run(r, "gradattn", 43, 0.25) or _set_lock(
        r, ["stages", "evaluate@d1-gradattn", "deps", 0, "md5"], "gradattn42"),
     r"^workspace: evaluate@d1-gradattn ran on another models/d1/gradattn.pt than "
     r"train@d1-gradattn"),
    # The results are not here (an experiment pulled without its DVC cache).
    (lambda r: (r / "metrics/d1/gradattn.json").unlink(),
     r"^workspace: its dvc.lock records metrics/d1/gradattn.json but the file is neither in "
     r"git nor in the DVC cache: fetch it \(`dvc pull`"),
    (lambda r: (r / "dvc.lock").unlink(), None),
])
def test_files_that_disagree_with_dvc_lock_are_refused(tmp_path, damage, message):
    record_run(tmp_path, "gradattn", 42, 0.25)
    damage(tmp_path)
    read = workspace_reader(tmp_path)
    if message is None:  # no dvc.lock: nothing known to have run
        assert runs_of_revision("workspace", read) == []
        return
    with pytest.raises(GradattnError, match=message) as err:
        runs_of_revision("workspace", read)
    assert "\n" not in str(err.value) and re.search(r"`dvc (repro|pull)", str(err.value))


def _set_lock(root: Path, keys: list, value) -> None:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    node = lock
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_named_revisions_are_read_from_git(tmp_path, capsys):
    """--rev reads dvc.lock and the files of git revisions (no pipeline, no experiments)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    for seed, top1 in ((1, 0.25), (2, 0.75)):
        record_run(tmp_path, "gradattn", seed, top1)
        subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
        subprocess.run([*git, "commit", "-qm", f"seed {seed}"], cwd=tmp_path, check=True)
        subprocess.run(["git", "tag", f"seed{seed}"], cwd=tmp_path, check=True)
    assert main(["table", "--repo", str(tmp_path), "--no-exps", "--no-workspace",
                 "--rev", "seed1", "--rev", "HEAD", "--table", "1"]) == 0
    assert "| d1 | – | – | – | 50.00 ± 35.36 (n=2) |" in capsys.readouterr().out
    assert main(["table", "--repo", str(tmp_path), "--no-exps", "--rev", "nope"]) == 2
    assert "--rev nope: neither a git revision nor a DVC experiment" in capsys.readouterr().err


def test_no_dvc_project_is_one_line_error(tmp_path, capsys):
    assert main(["table", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot list the DVC experiments of {tmp_path}")
    assert "--repo" in err and len(err.strip().splitlines()) == 1


def _project_with_a_starting_experiment(tmp_path, monkeypatch, failures: int) -> list:
    """A DVC project whose `dvc.api.exp_show` fails `failures` times as DVC does while a
    queued experiment's temporary copy is being made; returns the list of calls."""
    import dvc.api
    from dvc.exceptions import NotDvcRepoError

    from gradattn.reporting import experiments

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    record_run(tmp_path, "gradattn", 1, 0.5)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "run"], cwd=tmp_path, check=True)
    calls, real = [], dvc.api.exp_show

    def exp_show(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) <= failures:
            raise NotDvcRepoError(f"directory '{tmp_path}/.dvc/tmp/exps/tmpab12/.dvc' does not "
                                  "exist")
        return real(*args, **kwargs)

    monkeypatch.setattr(dvc.api, "exp_show", exp_show)
    monkeypatch.setattr(experiments, "STARTING_WAIT_S", 0.0)
    return calls


def test_table_waits_out_an_experiment_that_is_starting(tmp_path, monkeypatch, capsys):
    calls = _project_with_a_starting_experiment(tmp_path, monkeypatch, failures=2)
    assert main(["table", "--repo", str(tmp_path), "--no-workspace", "--table", "1"]) == 0
    assert len(calls) == 3
    assert "| d1 | – | – | – | 50.00 |" in capsys.readouterr().out


def test_table_says_an_experiment_is_starting_when_it_stays_so(tmp_path, monkeypatch, capsys):
    calls = _project_with_a_starting_experiment(tmp_path, monkeypatch, failures=99)
    assert main(["table", "--repo", str(tmp_path), "--no-workspace", "--table", "1"]) == 2
    err = capsys.readouterr().err
    assert len(calls) == 6 and len(err.strip().splitlines()) == 1
    assert "an experiment is still starting" in err and "dvc queue status" in err


def test_table6_pairs_every_claim_metric_by_seed():
    rs = []
    for seed, (top_r, top_g, ece_r, ece_g, best_r, best_g) in {
            1: (0.50, 0.51, 0.10, 0.07, 10, 8), 2: (0.52, 0.54, 0.12, 0.08, 12, 9),
            3: (0.54, 0.57, 0.11, 0.09, 11, 11)}.items():
        m = {"d1/resnet18": {"top1": top_r, "ece": ece_r, "best_epoch": best_r},
             "d1/gradattn": {"top1": top_g, "ece": ece_g, "best_epoch": best_g}}
        rs += runs(f"exp s{seed}", params("none", seed), m)
    md = table.markdown(table.Study(rs), [6])
    # ECE differences -0.03, -0.04, -0.02: mean -0.03, sd 0.01; best epoch -2, -3, 0.
    half_ece = T_975_2 * 0.01 / math.sqrt(3)
    half_best = T_975_2 * np.std([-2, -3, 0], ddof=1) / math.sqrt(3)
    row = next(line for line in md.splitlines() if line.startswith("| d1 | GradAttn (no PE)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3"
    assert cells[3] == "+2.00 [-0.48, +4.48]"  # top-1 in pp, as Table 1 shows it
    assert cells[4] == "–"  # no F1 recorded: no interval
    assert cells[5] == f"{-0.03:+.3f} [{-0.03 - half_ece:+.3f}, {-0.03 + half_ece:+.3f}]"
    assert cells[7] == f"{-5 / 3:+.1f} [{-5 / 3 - half_best:+.1f}, {-5 / 3 + half_best:+.1f}]"
    assert "| d1 | ResNet-18 |" not in md  # the baseline is not compared with itself


def test_table6_is_left_out_below_three_paired_seeds():
    rs = []
    for seed in (1, 2):
        rs += runs(f"exp {seed}", params("none", seed),
                   {"d1/resnet18": {"top1": 0.5}, "d1/gradattn": {"top1": 0.6}})
    md = table.markdown(table.Study(rs))
    assert "Table 5" in md and "Table 6" not in md


def test_no_runs_is_one_line_saying_how_to_get_some_and_fails(tmp_path, capsys):
    """A fresh clone that has not pulled: not an empty table and exit 0, but one line naming
    `dvc pull` (a pushed study), `dvc exp pull` and `dvc repro`, and exit code 2."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    for fmt in ("markdown", "csv"):
        assert main(["table", "--repo", str(tmp_path), "--format", fmt]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("error: no runs found")
        assert "`dvc pull`" in err and "`dvc repro`" in err and "docs/reproduce.md" in err
