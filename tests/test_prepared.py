"""The prepared-array format, the bundled dataset, batching and batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradattn.core.errors import GradattnError
from gradattn.prepared import PreparedWriter, load_meta, load_split
from gradattn.prepared.augment import random_crop, random_rotation
from gradattn.prepared.batches import Batches
from gradattn.sources.registry import get_spec
from gradattn.sources.splits import pooled_split


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    spec = get_spec("fashionmnist-mini")
    spec.download(root / "raw", None)
    with PreparedWriter(spec.name, spec.classes, root=root / "prepared") as writer:
        spec.prepare(root / "raw", writer, "official", 0)
        writer.commit()
    return root / "prepared"


def test_bundled_set_is_real_balanced_and_in_the_common_format(bundled):
    expected = {"train": 3000, "val": 600, "test": 600}
    for split, n in expected.items():
        images, labels = load_split("fashionmnist-mini", split, bundled)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        assert isinstance(images, np.memmap)
    meta = load_meta("fashionmnist-mini", bundled)
    assert meta["counts"] == expected and meta["num_classes"] == 10
    # Fashion-MNIST's published training-set mean is about 0.286, std 0.353.
    assert meta["mean"][0] == pytest.approx(0.286, abs=0.01)
    assert meta["std"][0] == pytest.approx(0.353, abs=0.01)


def test_splits_do_not_share_images(bundled):
    seen = {}
    for split in ("train", "val", "test"):
        images, _ = load_split("fashionmnist-mini", split, bundled)
        seen[split] = {img.tobytes() for img in images}
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["val"]


def test_interrupted_preparation_leaves_nothing(tmp_path):
    def chunks():
        yield np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with PreparedWriter("broken", ["a", "b"], root=tmp_path) as writer:
            writer.stream_split("train", 8, (8, 8, 1), chunks())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GradattnError, match=r"preprocess@broken"):
        load_split("broken", "train", tmp_path)


def test_labels_outside_the_classes_are_refused(tmp_path):
    with PreparedWriter("bad", ["a", "b"], root=tmp_path) as writer:
        with pytest.raises(GradattnError, match="label 5"):
            writer.write_split("train", np.zeros((3, 4, 4), np.uint8), np.array([0, 1, 5]))


@pytest.mark.parametrize("n", [1000, 1003, 4200])
def test_pooled_split_is_torch_random_split_with_the_seed(n):
    # The notebooks' statement (CIFAR cell 4): sizes int(0.7 n), int(0.15 n), the rest.
    sizes = [int(0.70 * n), int(0.15 * n)]
    sizes.append(n - sum(sizes))
    expected = torch.utils.data.random_split(
        range(n), sizes, generator=torch.Generator().manual_seed(42))
    got = pooled_split(n, 42)
    for split, subset in zip(("train", "val", "test"), expected, strict=True):
        assert got[split].tolist() == sorted(subset.indices)
    assert not np.array_equal(pooled_split(n, 43)["train"], got["train"])


def test_batches_cover_every_image_once_including_the_short_last_batch():
    images = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4, 1)
    labels = np.arange(10) % 2
    meta = {"mean": [0.0], "std": [1.0]}
    batches = Batches(images, labels, meta, batch_size=4, shuffle=True)
    seen = [x for x, _ in batches.epoch(seed=3)]
    assert [len(x) for x in seen] == [4, 4, 2] and len(batches) == 3
    firsts = sorted(round(float(x[i, 0, 0, 0]) * 255) for x in seen for i in range(len(x)))
    assert firsts == [16 * i for i in range(10)]
    again = [x for x, _ in batches.epoch(seed=3)]
    other = [x for x, _ in batches.epoch(seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(seen, other, strict=True))


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.rand(16, 3, 8, 8)
    out = random_crop(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not all(torch.equal(out[i], x[i]) for i in range(16))


def test_rotation_keeps_shape_and_moves_pixels_by_at_most_ten_degrees():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 2:26, 13:15] = 1.0  # a vertical bar through the centre
    out = random_rotation(x, torch.Generator().manual_seed(0), degrees=10)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    # The bar's ends move sideways by at most 12 px * sin(10°) ≈ 2.1 px.
    cols = out[:, 0, 3].argmax(-1).float()
    assert ((cols - 13.5).abs() <= 3).all()
