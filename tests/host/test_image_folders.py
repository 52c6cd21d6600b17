"""Tier 2: the two nodes that read a folder of ComfyUI's input directory (SUPIR Load Image Folder, SUPIR Training
Dataset) share one rule for where the folder may be, and skip a bad image with a report instead of failing."""
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

from PIL import Image  # noqa: E402

from supir_restore.nodes.benchmark_nodes import LoadImageFolder  # noqa: E402
from supir_restore.nodes.training_nodes import SUPIRTrainingDataset  # noqa: E402
from host_helpers import run_node, write_photo  # noqa: E402


def load_folder(folder):
    """Runs SUPIR Load Image Folder; returns (names, report)."""
    _, names, report = run_node(LoadImageFolder, folder=folder, multiple=1).result
    return names, report


def training_dataset(folder):
    """Runs SUPIR Training Dataset; returns (names, report)."""
    dataset, report = run_node(SUPIRTrainingDataset, folder=folder, resolution=64, aspect_buckets=True,
                               default_caption="").result
    return [s.name for s in dataset.samples], report


FOLDER_NODES = {"SUPIR Load Image Folder": load_folder, "SUPIR Training Dataset": training_dataset}


@pytest.mark.parametrize("node", FOLDER_NODES)
def test_folders_outside_the_input_directory_are_refused(comfy_dirs, node):
    write_photo(comfy_dirs / "output" / "a.png", 64, 64, 0)
    (comfy_dirs / "input" / "set").mkdir()
    for outside in ("../output", "set/../../output", str(comfy_dirs / "output"), str(comfy_dirs / "input" / "set")):
        with pytest.raises(ValueError, match="must be a path inside ComfyUI's input directory"):
            FOLDER_NODES[node](outside)


@pytest.mark.parametrize("node", FOLDER_NODES)
@pytest.mark.parametrize("folder, problem", [
    ("a\0b", r"^folder 'a\\x00b' contains the control character '\\x00'"),
    ("set/a\nb", r"^folder 'set/a\\nb': its part 'a\\nb' contains the control character '\\n'"),
    ("x" * 300, r"^folder 'x{40}'… is too long: .* 300 bytes, the file system takes at most 255; shorten it")])
def test_folder_names_the_file_system_cannot_have_are_named_not_asked_to_be_created(comfy_dirs, node, folder,
                                                                                     problem):
    """These used to say "does not exist: create …/a\x00b"."""
    with pytest.raises(ValueError, match=problem):
        FOLDER_NODES[node](folder)


@pytest.mark.parametrize("node", FOLDER_NODES)
def test_inner_dots_and_symbolic_links_inside_the_input_directory_are_followed(comfy_dirs, node):
    """As ComfyUI's Load Image reads a linked file: a link the user put into the input directory is theirs."""
    elsewhere = comfy_dirs / "photos"
    elsewhere.mkdir()
    write_photo(elsewhere / "a.png", 64, 64, 0)
    os.symlink(elsewhere, comfy_dirs / "input" / "linked")
    assert FOLDER_NODES[node]("linked")[0] == ["a.png"]
    assert FOLDER_NODES[node]("linked/../linked")[0] == ["a.png"]


@pytest.mark.parametrize("node", FOLDER_NODES)
def test_a_bad_or_over_large_image_is_skipped_and_reported(comfy_dirs, monkeypatch, node):
    folder = comfy_dirs / "input" / "set"
    folder.mkdir()
    write_photo(folder / "a.png", 64, 64, 0)
    Image.new("RGB", (128, 128)).save(folder / "bomb.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    names, report = FOLDER_NODES[node]("set")
    assert names == ["a.png"]
    skipped = report.splitlines()[-1]
    assert skipped.startswith("skipped 2 files: bomb.png: refused, the image is too large")
    assert "; broken.jpg: cannot be read as an image" in skipped
