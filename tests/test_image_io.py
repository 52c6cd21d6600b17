"""Tier 1: the one image-file reader (EXIF orientation, decompression bombs, unreadable files) and the training
dataset that reads through it."""
import numpy as np
import pytest
import torch
from PIL import Image

from supir_restore.lora_train.dataset import read_folder
from supir_restore.supir.image.io import ImageFileError, list_images, read_image, read_images

ROTATED_90_CW = 6  # EXIF orientation: the stored pixels must be turned 90° clockwise to be upright


def phone_photo(path, height=20, width=30):
    """A landscape-stored JPEG whose EXIF says it is a portrait (as phones write them), with a red top row when
    stored; returns the stored pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = ROTATED_90_CW
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    return pixels


def test_images_are_read_upright_per_their_exif_orientation(tmp_path):
    phone_photo(tmp_path / "phone.jpg")
    image = read_image(str(tmp_path / "phone.jpg"))
    assert image.shape == (30, 20, 3) and image.dtype == torch.float32
    assert image[:, -1, 0].min() > 0.9 and image[:, 0, 0].max() < 0.1  # the red stored top is now the right side


def test_training_folders_read_phone_photos_upright(tmp_path):
    phone_photo(tmp_path / "phone.jpg")
    samples, skipped = read_folder(str(tmp_path))
    assert samples[0].image.shape == (30, 20, 3) and not skipped


def test_alpha_is_dropped_and_grey_expanded(tmp_path):
    Image.new("RGBA", (5, 4), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 200).save(tmp_path / "g.png")
    # 8-bit values over 255: the same float32 division
    assert torch.equal(read_image(str(tmp_path / "a.png")), (torch.tensor([10, 20, 30]) / 255).expand(4, 5, 3))
    assert torch.equal(read_image(str(tmp_path / "g.png")), torch.full((4, 5, 3), 200 / 255))


@pytest.mark.parametrize("limit", [1500, 900])  # 2000 pixels: over Pillow's limit (its warning), over twice it (error)
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, limit):
    Image.new("RGB", (50, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageFileError, match=r"bomb\.png: refused, the image is too large to decode safely"):
        read_image(str(tmp_path / "bomb.png"))


def test_one_bad_file_is_skipped_and_named_not_fatal(tmp_path, monkeypatch):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.new("RGB", (50, 40)).save(tmp_path / "bomb.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    names = list_images(str(tmp_path))
    assert names == ["a.png", "bomb.png", "broken.jpg"]
    images, read, skipped = read_images(str(tmp_path), names)
    assert read == ["a.png"] and images[0].shape == (6, 8, 3)
    assert [s.split(":")[0] for s in skipped] == ["bomb.png", "broken.jpg"]
    assert "too large" in skipped[0] and "cannot be read as an image" in skipped[1]
    samples, unreadable = read_folder(str(tmp_path))
    assert [s.name for s in samples] == ["a.png"] and unreadable == skipped
