"""scripts/wheelhouse.sh: a folder of wheels from which a fresh venv installs the project with
`pip install --no-index` (an offline node), then runs `dvc version` and `gradattn --help`.
The wheelhouse is made with the s3 and ssh extras (DVC remotes on S3 and over ssh), and the
offline install takes them: `dvc version` lists both.

torch and torchvision are what GPU images ship and the wheelhouse leaves out by default;
here two empty stand-in wheels of those names take their place (a real torch is a gigabyte
to install, and neither command imports it), so the install proves that every *other*
dependency, and the build backend `pip install -e .` needs, is in the folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, load_script


def stand_in_wheel(folder: Path, name: str, version: str) -> Path:
    """An installable wheel of `name` with no code (metadata only)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for arcname, text in files.items():
            whl.writestr(arcname, text)
    return path


def test_offline_install_without_torch_says_so_in_one_line(tmp_path):
    env = tmp_path / "node"  # a node's Python without torch
    venv.create(env, with_pip=False)
    house = tmp_path / "wheelhouse"
    house.mkdir()
    stand_in_wheel(house, "torchvision", "0.29.1")  # torch itself missing
    out = subprocess.run(["bash", str(ROOT / "scripts/install_offline.sh"), str(house)],
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHON": str(env / "bin/python")})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "torch is neither installed" in out.stderr
    assert "--with-torch" in out.stderr

    missing = subprocess.run(["bash", str(ROOT / "scripts/install_offline.sh"),
                              str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr


def _wheelhouse_module():
    return load_script("wheelhouse")


def test_the_s3_and_ssh_extras_are_wheelhouse_requirements(capsys):
    """`--extra s3 --extra ssh` adds dvc-s3 and dvc-ssh (pyproject's extras); an extra that
    does not exist is one line naming those that do."""
    from packaging.requirements import Requirement

    wheelhouse = _wheelhouse_module()
    plain = {Requirement(r).name for r in wheelhouse.requirements(False)}
    both = {Requirement(r).name for r in wheelhouse.requirements(False, ["s3", "ssh"])}
    assert both - plain == {"dvc-s3", "dvc-ssh"} and "torch" not in both
    with pytest.raises(SystemExit) as exit_:
        wheelhouse.requirements(False, ["gcs"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: --extra gcs is not an extra of gradattn: choose "
                                       "from s3, ssh, test\n")


@pytest.mark.slow
def test_a_wheelhouse_installs_the_project_offline_in_a_fresh_venv(tmp_path):
    house = tmp_path / "wheelhouse"
    built = subprocess.run(["bash", str(ROOT / "scripts/wheelhouse.sh"), str(house),
                            "--extra", "s3", "--extra", "ssh"],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHON": sys.executable})
    assert built.returncode == 0, built.stderr[-3000:]
    assert "without torch/torchvision, extras s3,ssh" in built.stdout
    assert "scripts/install_offline.sh" in built.stdout and "-e '.[s3,ssh]'" in built.stdout
    wheels = {w.name.split("-")[0].lower() for w in house.glob("*.whl")}
    assert {"dvc", "numpy", "setuptools", "dvc_s3", "dvc_ssh"} <= wheels
    assert not wheels & {"torch", "torchvision"}
    assert not list(house.glob("*.tar.gz"))  # source-only packages were built into wheels

    stand_ins = tmp_path / "image"  # what a GPU image ships
    stand_ins.mkdir()
    stand_in_wheel(stand_ins, "torch", "2.14.1")
    stand_in_wheel(stand_ins, "torchvision", "0.29.1")
    project = tmp_path / "project"  # a copy: the install writes its egg-info beside the code
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "gradattn", project / "gradattn",
                    ignore=shutil.ignore_patterns("__pycache__"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # fresh: no system site-packages
    bin_dir = env_dir / "bin"
    install = subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", "--no-index", "--find-links", str(house),
         "--find-links", str(stand_ins), "-e", f"{project}[s3,ssh]"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
             "PIP_CONFIG_FILE": os.devnull})  # no machine-wide find-links or index
    assert install.returncode == 0, install.stderr[-3000:]

    dvc = subprocess.run([str(bin_dir / "dvc"), "version"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert dvc.returncode == 0 and "DVC version: 3." in dvc.stdout, dvc.stderr[-2000:]
    supports = dvc.stdout.split("Supports:")[1].split("Config:")[0]
    assert "s3 (s3fs" in supports and "ssh (sshfs" in supports, dvc.stdout
    cli = subprocess.run([str(bin_dir / "gradattn"), "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.startswith("usage: gradattn"), cli.stderr
    assert str(env_dir) in subprocess.run(
        [str(bin_dir / "python"), "-c", "import dvc; print(dvc.__file__)"],
        capture_output=True, text=True).stdout
