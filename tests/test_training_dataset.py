"""Tier 1: the training dataset: buckets, captions, unreadable files, seeded crops."""
import numpy as np
import pytest
import torch
from PIL import Image

from supir_restore.lora_train.dataset import (DatasetError, Sample, build_dataset, make_buckets, nearest_bucket,
                                              random_crop, read_folder)


@pytest.mark.parametrize("resolution", [64, 512, 1024])
def test_buckets_are_multiples_of_64_within_the_area_and_aspect(resolution):
    buckets = make_buckets(resolution)
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert w * h <= resolution * resolution
        assert max(w / h, h / w) <= 2.0
        assert (h, w) in buckets
    if resolution == 1024:  # SDXL's familiar buckets are there
        assert {(1152, 896), (1216, 832), (1344, 768)} <= set(buckets)


def test_nearest_bucket_matches_aspect_ratio():
    buckets = make_buckets(1024)
    assert buckets[nearest_bucket(4000, 3000, buckets)] == (1152, 896)  # 1.29 is the nearest ratio to 4:3
    assert buckets[nearest_bucket(500, 500, buckets)] == (1024, 1024)
    w, h = buckets[nearest_bucket(1000, 3000, buckets)]
    assert h > w


def test_bad_resolution_is_explained():
    with pytest.raises(DatasetError, match="multiple of 64"):
        make_buckets(1000)


def test_read_folder_captions_and_unreadable(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "a.txt").write_text("a red door\n")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.md").write_text("ignored")
    samples, unreadable = read_folder(str(tmp_path), "default")
    assert [s.name for s in samples] == ["a.png", "b.jpg"]
    assert [s.caption for s in samples] == ["a red door", "default"]
    assert samples[0].image.shape == (40, 60, 3) and samples[0].image.dtype == torch.float32
    assert len(unreadable) == 1 and unreadable[0].startswith("broken.png")
    dataset = build_dataset(samples, 64, skipped=unreadable)
    assert dataset.skipped == unreadable


def test_empty_dataset_lists_unreadable_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"x")
    samples, unreadable = read_folder(str(tmp_path))
    with pytest.raises(DatasetError, match="broken.png"):
        build_dataset(samples, 64, skipped=unreadable)
    with pytest.raises(DatasetError, match="does not exist"):
        read_folder(str(tmp_path / "missing"))


def test_random_crop_is_seeded_and_covers_the_bucket():
    image = torch.rand(90, 200, 3, generator=torch.Generator().manual_seed(0))
    a = random_crop(image, (128, 64), torch.Generator().manual_seed(5))
    b = random_crop(image, (128, 64), torch.Generator().manual_seed(5))
    c = random_crop(image, (128, 64), torch.Generator().manual_seed(6))
    assert a.shape == (64, 128, 3) and torch.equal(a, b) and not torch.equal(a, c)
    strip = image[:50]
    exact = random_crop(strip, (100, 50), torch.Generator().manual_seed(1))  # the height fits: a plain window
    windows = strip.unfold(1, 100, 1)  # (50, 101, 3, 100)
    assert any(torch.equal(windows[:, i].permute(0, 2, 1), exact) for i in range(windows.shape[1]))
    shrunk = random_crop(image, (100, 50), torch.Generator().manual_seed(1))  # 90 rows scaled to cover 50
    assert shrunk.shape == (50, 100, 3)
    small = random_crop(torch.rand(20, 30, 3), (64, 64), torch.Generator().manual_seed(0))
    assert small.shape == (64, 64, 3) and 0 <= small.min() and small.max() <= 1


def test_buckets_assigned_per_image():
    tall, wide = Sample(torch.rand(300, 100, 3), "", "tall"), Sample(torch.rand(100, 300, 3), "", "wide")
    ds = build_dataset([tall, wide], 256)
    (tw, th), (ww, wh) = ds.buckets[ds.bucket_of[0]], ds.buckets[ds.bucket_of[1]]
    assert th > tw and ww > wh
    assert build_dataset([tall, wide], 128, buckets=False).buckets == [(128, 128)]
    with pytest.raises(DatasetError, match="RGB"):
        build_dataset([Sample(torch.rand(10, 10), "", "gray")], 64)
