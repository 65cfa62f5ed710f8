"""The `notebooks` recipe, data side (issue 11): each item checked against a statement of what
the notebook does, written here (cells cited as in docs/deviations.md), not by calling our
implementation twice."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, copy_committed, stage_here
from PIL import Image
from torchvision import transforms as T

from gradattn.config import DataConfig, dataset_options, dataset_protocol
from gradattn.core.errors import ConfigError
from gradattn.core.settings import AUGMENT_NAMES
from gradattn.prepared import load_split
from gradattn.prepared.augment import (
    AUGMENTATIONS,
    color_jitter4,
    pad_notebook,
    random_resized_crop,
    random_translate,
)
from gradattn.prepared.batches import Batches, legacy_wrap
from gradattn.sources.preparation import prepare_dataset
from gradattn.sources.registry import get_spec

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# What each notebook does with its data: (split, image size, grey repeated to RGB, mean, std,
# augmentation, double normalisation). CIFAR 4, FMNIST 8, SVHN 8, Tiny 4, PCam 4, PAD 4,
# Blood 5, Tissue 5.
NOTEBOOKS = {
    "cifar10": ("pooled", None, False, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                "crop_flip", True),
    "fashionmnist": ("pooled", None, False, (0.2860,), (0.3530,), "flip_rotate_translate", True),
    "fashionmnist-mini": ("pooled", None, False, (0.2860,), (0.3530,), "flip_rotate_translate",
                          True),
    "svhn": ("pooled", None, False, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "none",
             False),
    "tinyimagenet": ("pooled", None, False, *IMAGENET, "none", False),
    "pcam": ("official", None, False, *IMAGENET, "none", False),
    "padufes20": ("pooled", 224, False, *IMAGENET, "pad_notebook", False),
    "bloodmnist": ("official", 64, True, *IMAGENET, "rotate_flip_jitter", False),
    "tissuemnist": ("official", 64, True, *IMAGENET, "rotate_flip_jitter", False),
}


def protocol(dataset: str, recipe: str, **data) -> dict:
    return dataset_protocol(DataConfig.parse(data), recipe, dataset).as_dict()


def prepare_as(dataset: str, raw: Path, root: Path, recipe: str, **data) -> dict:
    """What configure + preprocess do for `dataset` under `recipe`."""
    cfg = DataConfig.parse(data)
    resolved = dataset_protocol(cfg, recipe, dataset)
    config = {"dataset": dataset, "custom": None,
              "options": dataset_options(cfg, dataset, resolved), "protocol": resolved.as_dict()}
    return prepare_dataset(dataset, config, raw, root)


def notebook_split(n: int, seed: int = 42) -> list[list[int]]:
    """The notebooks' random_split of n pooled images (CIFAR 4, FMNIST 8, SVHN 8, Tiny 4)."""
    sizes = [int(0.70 * n), int(0.15 * n)]
    sizes.append(n - sum(sizes))
    subsets = torch.utils.data.random_split(range(n), sizes,
                                            generator=torch.Generator().manual_seed(seed))
    return [sorted(s.indices) for s in subsets]


# ---------------------------------------------------------------- the resolution table


@pytest.mark.parametrize("dataset", sorted(NOTEBOOKS))
def test_notebooks_recipe_resolves_each_datasets_notebook_protocol(dataset):
    split, size, rgb, mean, std, augment, defect = NOTEBOOKS[dataset]
    got = protocol(dataset, "notebooks")
    assert got == {"recipe": "notebooks", "split": split, "split_seed": 42, "image_size": size,
                   "grey_to_rgb": rgb, "normalise": "notebook", "mean": mean, "std": std,
                   "augment": augment, "legacy_defect": defect,
                   "svhn_extra": dataset == "svhn"}


@pytest.mark.parametrize("dataset", sorted(NOTEBOOKS))
def test_corrected_recipe_keeps_this_projects_protocol(dataset):
    assert protocol(dataset, "corrected") == {
        "recipe": "corrected", "split": "official", "split_seed": 0, "image_size": None,
        "grey_to_rgb": False, "normalise": "split", "mean": None, "std": None,
        # the notebook's augmentation in both recipes (docs/deviations.md row 14)
        "augment": NOTEBOOKS[dataset][5], "legacy_defect": False, "svhn_extra": False}


def test_a_set_key_overrides_the_recipe():
    got = protocol("cifar10", "notebooks", split="official", split_seed=7, augment="none",
                   normalise="split", legacy_preprocessing=False)
    assert (got["split"], got["split_seed"], got["augment"], got["mean"], got["legacy_defect"]) \
        == ("official", 7, "none", None, False)
    # the defect only exists where the notebooks had it
    assert protocol("cifar10", "corrected", legacy_preprocessing=True)["legacy_defect"]
    assert not protocol("svhn", "corrected", legacy_preprocessing=True)["legacy_defect"]
    assert protocol("padufes20", "corrected", image_size=224)["image_size"] == 224


def test_the_augmentation_names_params_yaml_accepts_are_the_implemented_ones():
    assert set(AUGMENT_NAMES) == set(AUGMENTATIONS)


@pytest.mark.parametrize("data, fragment", [
    ({"split": "paper"}, "data.split = 'paper' is not allowed: choose one of: auto, official, "
                         "pooled"),
    ({"augment": "mixup"}, "data.augment = 'mixup' is not allowed: choose one of: auto, none"),
    ({"image_size": 3}, "data.image_size = 3 is not allowed: auto (the recipe's value), "
                       "or must be an integer >= 8"),
    ({"grey_to_rgb": "yes"}, "data.grey_to_rgb = 'yes' is not allowed: auto (the recipe's "
                          "value), or must be true or false"),
    ({"normalise": "imagenet"}, "data.normalise = 'imagenet' is not allowed: choose one of: "
                                "auto, split, notebook"),
    ({"split_seed": -1}, "data.split_seed = -1 is not allowed"),
])
def test_bad_data_values_get_one_line_naming_what_is_allowed(data, fragment):
    with pytest.raises(ConfigError) as err:
        DataConfig.parse(data)
    message = str(err.value)
    assert fragment in message and "\n" not in message and "-S data." in message


def test_notebook_constants_that_do_not_fit_the_channels_are_refused():
    with pytest.raises(ConfigError) as err:
        protocol("tissuemnist", "notebooks", grey_to_rgb=False)
    assert "tissuemnist" in str(err.value) and "data.grey_to_rgb=true" in str(err.value)


# ---------------------------------------------------------------- the pooled split


@pytest.mark.skipif(not FASHION_DEBIAN.exists(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashionmnist_pooled_split_is_the_notebooks_images(tmp_path):
    spec, raw = get_spec("fashionmnist"), tmp_path / "raw"
    spec.download(raw, FASHION_DEBIAN)
    meta = prepare_as("fashionmnist", raw, tmp_path / "nb", "notebooks")

    def idx(name: str, offset: int) -> np.ndarray:
        with gzip.open(FASHION_DEBIAN / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    # FMNIST cell 8: ConcatDataset([train, test]), then random_split(..., seed 42)
    pooled = np.concatenate([idx("train-images-idx3-ubyte.gz", 16),
                             idx("t10k-images-idx3-ubyte.gz", 16)]).reshape(-1, 28, 28)
    labels = np.concatenate([idx("train-labels-idx1-ubyte.gz", 8),
                             idx("t10k-labels-idx1-ubyte.gz", 8)])
    assert meta["counts"] == {"train": 49000, "val": 10500, "test": 10500}
    for split, rows in zip(("train", "val", "test"), notebook_split(70000), strict=True):
        images, got_labels = load_split("fashionmnist", split, tmp_path / "nb")
        assert np.array_equal(images[..., 0], pooled[rows])
        assert np.array_equal(got_labels, labels[rows])
    assert (meta["mean"], meta["std"], meta["augment"], meta["notebook_defect"]) == (
        [0.2860], [0.3530], "flip_rotate_translate", True)
    assert meta["split_mean"][0] == pytest.approx(0.286, abs=0.002)  # the real pixels'

    corrected = prepare_as("fashionmnist", raw, tmp_path / "ok", "corrected")
    assert corrected["counts"] == {"train": 54000, "val": 6000, "test": 10000}
    assert corrected["mean"] == corrected["split_mean"] and corrected["split"] == "official"
    assert (corrected["augment"], corrected["notebook_defect"]) == ("flip_rotate_translate", False)


def test_bundled_data_under_both_recipes_through_the_real_stages(tmp_path):
    """`dvc exp run -S recipe=notebooks` runs configure, download, preprocess first: the same
    scripts here (in this process: no start-up each), in a project of their own."""
    copy_committed("params.yaml", tmp_path)

    def stage(script: str, *args: str) -> None:
        proc = stage_here(script.removeprefix("stages/"), *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr

    metas = {}
    for recipe in ("notebooks", "corrected"):
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["recipe"] = recipe
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        stage("stages/configure.py")
        stage("stages/download.py", "fashionmnist-mini")
        stage("stages/preprocess.py", "fashionmnist-mini")
        prepared = tmp_path / "data" / "prepared"
        metas[recipe] = json.loads((prepared / "fashionmnist-mini" / "meta.json").read_text())
        if recipe == "notebooks":
            # the bundled file's parts pooled in order (train, val, test), as FMNIST cell 8
            with np.load(ROOT / "gradattn/sources/bundled/fashionmnist-mini.npz") as npz:
                pooled = np.concatenate([npz[f"{s}_images"] for s in ("train", "val", "test")])
            for split, rows in zip(("train", "val", "test"), notebook_split(4200), strict=True):
                images, _ = load_split("fashionmnist-mini", split, prepared)
                assert np.array_equal(images.reshape(-1, 28, 28), pooled[rows])
    nb, ok = metas["notebooks"], metas["corrected"]
    assert nb["counts"] == {"train": 2940, "val": 630, "test": 630}
    assert {k: nb[k] for k in ("recipe", "split", "split_seed", "mean", "std", "normalise",
                               "augment", "notebook_defect", "channels", "height")} == {
        "recipe": "notebooks", "split": "pooled", "split_seed": 42, "mean": [0.286],
        "std": [0.353], "normalise": "notebook", "augment": "flip_rotate_translate",
        "notebook_defect": True, "channels": 1, "height": 28}
    assert ok["counts"] == {"train": 3000, "val": 600, "test": 600}
    assert {k: ok[k] for k in ("recipe", "split", "split_seed", "normalise", "augment",
                               "notebook_defect", "channels", "height")} == {
        "recipe": "corrected", "split": "official", "split_seed": 0, "normalise": "split",
        "augment": "flip_rotate_translate", "notebook_defect": False, "channels": 1, "height": 28}
    assert ok["mean"] == ok["split_mean"] != [0.286]


# ---------------------------------------------------------------- MedMNIST at 64 px, 3 channels


def test_tissuemnist_notebook_protocol_upsamples_to_64_and_repeats_grey(tmp_path, monkeypatch):
    from gradattn.sources import medmnist_sets

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(n, 1).astype(np.uint8)
    raw = tmp_path / "raw"
    raw.mkdir()
    np.savez(raw / "tissuemnist.npz", **arrays)  # MedMNIST's npz layout
    import hashlib

    monkeypatch.setitem(medmnist_sets.INFO["tissuemnist"], "MD5",
                        hashlib.md5((raw / "tissuemnist.npz").read_bytes()).hexdigest())
    meta = prepare_as("tissuemnist", raw, tmp_path / "nb", "notebooks")
    assert (meta["height"], meta["width"], meta["channels"]) == (64, 64, 3)
    assert meta["counts"] == {"train": 12, "val": 4, "test": 4}  # the official split
    assert (meta["mean"], meta["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    test, _ = load_split("tissuemnist", "test", tmp_path / "nb")
    for i in range(4):  # Tissue 5: Resize((64, 64)) on the PIL image, then x.repeat(3, 1, 1)
        expected = T.ToTensor()(T.Resize((64, 64))(Image.fromarray(arrays["test_images"][i])))
        expected = expected.repeat(3, 1, 1)
        got = torch.from_numpy(np.array(test[i])).permute(2, 0, 1).float() / 255
        assert torch.allclose(got, expected, atol=1e-6)
    corrected = prepare_as("tissuemnist", raw, tmp_path / "ok", "corrected")
    assert (corrected["height"], corrected["channels"]) == (28, 1)


# ---------------------------------------------------------------- the double normalisation


def test_legacy_wrap_gives_the_byte_that_topilimage_gives():
    values = torch.tensor([-0.5, 1.5, -2.4291, -1.0, -0.0039, 0.0, 0.5, 0.99, 1.0, 1.004, 2.7,
                           -0.8102, 3.99])
    x = values.view(1, 1, -1)  # one grey image, 1 × 13 pixels
    expected = np.asarray(T.ToPILImage()(x), dtype=np.int64).reshape(-1)  # the notebooks' bytes
    assert expected[0] == 129 and expected[1] == 126  # -0.5 and 1.5, the documented examples
    got = torch.round(legacy_wrap(x) * 255).long().reshape(-1)
    assert got.tolist() == expected.tolist()


def test_legacy_training_batch_is_the_notebooks_pipeline_pixel_for_pixel():
    """CIFAR cell 4 without augmentation: ToTensor + Normalize (the pooled dataset), then
    TransformSubset's ToPILImage, ToTensor, Normalize — written with torchvision here."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    normalise = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    expected = torch.stack([normalise(T.ToPILImage()(normalise(im))) for im in images])
    batches = Batches(images, np.arange(6), {"mean": mean, "std": std}, batch_size=6,
                      shuffle=True, augment="none", legacy_defect=True)
    x, y = next(iter(batches.epoch(0)))  # labels 0..5 say which image each row is
    assert torch.allclose(x, expected[y], atol=1e-5)


def test_legacy_order_is_wrap_then_augment_then_normalise():
    """The notebooks augment the wrapped PIL image: a crop's zero padding is black there and
    becomes (0 - mean) / std; wrapping after the augmentation would turn it into a bright
    byte instead."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    images = np.full((32, 32, 32, 3), 200, dtype=np.uint8)
    batches = Batches(images, np.zeros(32), {"mean": mean, "std": std}, batch_size=32,
                      shuffle=True, augment="crop_flip", legacy_defect=True)
    x, _ = next(iter(batches.epoch(0)))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    padding = torch.isclose(x, (0 - m) / s, atol=1e-5).all(1)  # (B, H, W) black pixels
    assert padding.any()
    pad_byte = np.asarray(T.ToPILImage()((torch.zeros(3, 1, 1) - m[0]) / s[0]))  # wrong order
    wrong = (torch.tensor(pad_byte, dtype=torch.float32).view(1, 3, 1, 1) / 255 - m) / s
    assert not torch.isclose(x, wrong, atol=1e-5).all(1).any()
    interior = torch.tensor(np.asarray(T.ToPILImage()(T.Normalize(mean, std)(
        torch.full((3, 1, 1), 200 / 255)))), dtype=torch.float32).view(1, 3, 1, 1)
    assert torch.isclose(x, (interior / 255 - m) / s, atol=1e-5).all(1)[~padding].all()


# ---------------------------------------------------------------- augmentation


def test_translate_is_a_whole_pixel_shift_of_at_most_a_tenth():
    x = torch.rand(64, 1, 28, 28) + 0.1  # no zero pixel: the zero fill shows the shift
    out = random_translate(x, torch.Generator().manual_seed(0))
    shifts = set()
    for img, src in zip(out, x, strict=True):
        found = None
        for dy in range(-3, 4):  # RandomAffine(translate=0.1) at 28 px: round(U(-2.8, 2.8))
            for dx in range(-3, 4):
                want = torch.zeros_like(src)
                h, w = src.shape[1:]
                want[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                    src[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
                if torch.equal(img, want):
                    found = (dy, dx)
        assert found is not None
        shifts.add(found)
    assert len(shifts) > 10  # per-image shifts


def test_random_resized_crop_keeps_size_and_crops_at_least_80_percent():
    h = w = 40
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(128, 3, h, w) / w
    out = random_resized_crop(cols.contiguous(), torch.Generator().manual_seed(1))
    assert out.shape == cols.shape
    width = out[:, 0, h // 2, -1] - out[:, 0, h // 2, 0]  # the crop's span of the ramp
    # area in [0.8, 1] of the image and ratio in [3/4, 4/3]: the width is over 0.77 of it
    assert (width > 0.7).all() and (width <= 1.0).all() and width.std() > 0.01


def test_colour_jitter_is_torchvisions_four_adjustments_in_each_images_order():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(6, 3, 16, 16)
    x[0] = 0.5  # a grey image: no hue
    gen = torch.Generator().manual_seed(3)
    out = color_jitter4(x, gen, 0.2, 0.2, 0.2, 0.1)
    # the same draws, in color_jitter4's order: four factors, then the per-image order
    gen = torch.Generator().manual_seed(3)
    draw = [torch.rand(6, generator=gen) * (hi - lo) + lo
            for lo, hi in ((0.8, 1.2), (0.8, 1.2), (0.8, 1.2), (-0.1, 0.1))]
    orders = torch.argsort(torch.rand(6, 4, generator=gen), dim=1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(6):
        img = x[i]
        for k in orders[i].tolist():  # torchvision's ColorJitter: a random order of the four
            img = ops[k](img, float(draw[k][i]))
        assert torch.allclose(out[i], img, atol=1e-5), i


def test_colour_jitter_and_the_pad_augmentation_stay_in_range_per_image():
    x = torch.rand(8, 3, 32, 32)
    out = color_jitter4(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    ratios = (out.mean((1, 2, 3)) / x.mean((1, 2, 3)))
    assert ratios.std() > 0.005  # each image its own factors
    pad = pad_notebook(torch.rand(4, 3, 224, 224), torch.Generator().manual_seed(0))
    assert pad.shape == (4, 3, 224, 224) and pad.min() >= 0 and pad.max() <= 1


# ---------------------------------------------------------------- PAD-UFES-20 and CIFAR-10


def test_padufes_notebook_split_is_per_image_with_numpys_shuffle(tmp_path):
    from test_data_sources import write_padufes

    rows = write_padufes(tmp_path / "src")
    raw = tmp_path / "raw"
    get_spec("padufes20").download(raw, tmp_path / "src")
    meta = prepare_as("padufes20", raw, tmp_path / "nb", "notebooks", image_size=96)
    # PAD cell 4: np.random.seed(42); indices = list(range(n)); np.random.shuffle(indices)
    n = len(rows)
    np.random.seed(42)
    indices = list(range(n))
    np.random.shuffle(indices)
    cut = [int(0.70 * n), int(0.70 * n) + int(0.15 * n)]
    expected = [indices[:cut[0]], indices[cut[0]:cut[1]], indices[cut[1]:]]
    colour = np.array([5 * r["patient"] for r in rows])  # each image is its patient's grey
    for split, want in zip(("train", "val", "test"), expected, strict=True):
        images, labels = load_split("padufes20", split, tmp_path / "nb")
        assert sorted(images[:, 0, 0, 0].tolist()) == sorted(colour[want].tolist())
    assert (meta["height"], meta["augment"], meta["split"]) == (96, "pad_notebook", "pooled")
    assert "patients leak" in meta["split_detail"]


def test_real_cifar10_pixels_under_the_notebooks_recipe(tmp_path, monkeypatch):
    from test_data_sources import DATASETS, md5

    from gradattn.sources import cifar10

    archive = DATASETS / "cifar10-jpeg.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} not found (set GRADATTN_SHARED to the shared folder)")
    import pickle
    import tarfile

    per_batch, per_class = 20, {"train": 10, "test": 2}  # real images, the source's format
    found = {"train": [], "test": []}
    with tarfile.open(archive) as tar:
        for member in tar:
            part = member.name.split("/")[-3] if member.isfile() else ""
            if part not in found:
                continue
            label = cifar10.CIFAR_CLASSES.index(member.name.split("/")[-2])
            if sum(lab == label for _, lab in found[part]) < per_class[part]:
                with tar.extractfile(member) as f:
                    found[part].append((np.asarray(Image.open(f).convert("RGB")), label))
    raw = tmp_path / "raw" / "cifar-10-batches-py"
    raw.mkdir(parents=True)
    batches = [found["train"][i:i + per_batch] for i in range(0, 100, per_batch)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, batch in zip(names, [*batches, found["test"]], strict=True):
        data = np.stack([p.transpose(2, 0, 1).reshape(-1) for p, _ in batch])
        with open(raw / name, "wb") as f:
            pickle.dump({"data": data, "labels": [lab for _, lab in batch]}, f)
    with open(raw / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(cifar10.CIFAR_CLASSES)}, f)
    for name in cifar10.CIFAR_MD5:
        monkeypatch.setitem(cifar10.CIFAR_MD5, name, md5(raw / name))
    meta = prepare_as("cifar10", tmp_path / "raw", tmp_path / "nb", "notebooks")
    pooled = np.stack([p for p, _ in found["train"] + found["test"]])  # CIFAR 4's ConcatDataset
    for split, rows in zip(("train", "val", "test"), notebook_split(120), strict=True):
        assert np.array_equal(load_split("cifar10", split, tmp_path / "nb")[0], pooled[rows])
    assert (meta["mean"], meta["std"]) == ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    assert (meta["augment"], meta["notebook_defect"], meta["counts"]["train"]) == (
        "crop_flip", True, 84)


def test_svhn_notebook_split_pools_train_test_and_extra_in_that_order(tmp_path, monkeypatch):
    from test_data_sources import md5, write_svhn

    from gradattn.sources import svhn

    src = tmp_path / "src"
    src.mkdir()
    pooled = []
    for part, n in (("train", 50), ("test", 20), ("extra", 30)):
        name, url, _ = svhn.SVHN_FILES[part]
        images, _ = write_svhn(src / name, n)
        images[:, 5, 5, 2] = np.arange(n) + {"train": 0, "test": 100, "extra": 200}[part]
        write_svhn_images(src / name, images)
        pooled.append(images)
        monkeypatch.setitem(svhn.SVHN_FILES, part, (name, url, md5(src / name)))
    cfg = DataConfig.parse({})
    resolved = dataset_protocol(cfg, "notebooks", "svhn")
    source_options = dataset_options(cfg, "svhn", resolved, download=True)
    assert source_options == {"svhn_extra": True}  # the download fetches extra_32x32.mat too
    raw = tmp_path / "raw"
    get_spec("svhn", None, source_options).download(raw, src)
    assert (raw / "extra_32x32.mat").exists()
    meta = prepare_as("svhn", raw, tmp_path / "nb", "notebooks")
    pooled = np.concatenate(pooled)  # SVHN cell 8: ConcatDataset([train, test, extra])
    for split, rows in zip(("train", "val", "test"), notebook_split(100), strict=True):
        images, _ = load_split("svhn", split, tmp_path / "nb")
        assert np.array_equal(images, pooled[rows])
    assert meta["counts"] == {"train": 70, "val": 15, "test": 15}
    assert not protocol("svhn", "corrected")["svhn_extra"]
    # official split with extra: extra joins train, the test set stays the official one
    official = prepare_as("svhn", raw, tmp_path / "ok", "corrected", svhn_extra=True)
    assert official["counts"]["test"] == 20
    assert official["counts"]["train"] + official["counts"]["val"] == 50 + 30


def write_svhn_images(path: Path, images: np.ndarray) -> None:
    """Rewrite an SVHN .mat with these images (labels kept)."""
    from scipy.io import loadmat, savemat

    y = loadmat(path, variable_names=["y"])["y"]
    savemat(path, {"X": np.transpose(images, (1, 2, 3, 0)), "y": y})


@pytest.mark.parametrize("augment, channels", [("flip_rotate_translate", 1),
                                               ("pad_notebook", 3)])
def test_new_augmentations_give_the_same_batches_on_the_resident_and_host_paths(augment,
                                                                                 channels):
    images = np.random.default_rng(0).integers(0, 256, (20, 24, 24, channels), dtype=np.uint8)
    meta = {"mean": [0.5] * channels, "std": [0.25] * channels}
    kw = dict(batch_size=8, shuffle=True, augment=augment, legacy_defect=True)
    host = list(Batches(images, np.arange(20), meta, resident=False, **kw).epoch(3))
    resident = list(Batches(images, np.arange(20), meta, resident=True, **kw).epoch(3))
    for (xa, ya), (xb, yb) in zip(host, resident, strict=True):
        assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)
