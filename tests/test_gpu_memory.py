"""bench/gpu_memory.py's argument checking and its exit without CUDA (the GPU run itself needs a GPU)."""
import importlib.util
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def bench(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_memory", os.path.join(REPO, "bench", "gpu_memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "comfy").mkdir(parents=True)
    monkeypatch.setenv("COMFYUI_PATH", str(comfyui))

    def no_import(cpu):
        raise AssertionError("ComfyUI or the pack was imported")
    monkeypatch.setattr(module, "import_pack", no_import)
    return module


@pytest.fixture()
def files(tmp_path):
    paths = {}
    for name in ("sdxl", "supir", "stablesr", "cfw"):
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(b"x")
    return paths


def exit_message(bench, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_without_cuda_exits_with_one_line_before_loading(bench, files, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--sdxl", str(files["sdxl"]), "--supir", str(files["supir"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA" in err[0]


def test_missing_file_is_named(bench, files, tmp_path, capsys):
    missing = str(tmp_path / "SUPIR-v0Q.ckpt")
    message = exit_message(bench, capsys, ["--sdxl", str(files["sdxl"]), "--supir", missing])
    assert f"--supir {missing}: no such file" in message


def test_workflow_without_its_files_names_the_option(bench, files, capsys):
    message = exit_message(bench, capsys, ["--sdxl", str(files["sdxl"]), "--supir", str(files["supir"]),
                                           "--workflows", "stablesr"])
    assert "workflow 'stablesr' needs --stablesr" in message


def test_no_files_asks_for_them(bench, capsys):
    assert "name the model files" in exit_message(bench, capsys, [])


def test_size_must_be_a_multiple_of_256(bench, files, capsys):
    message = exit_message(bench, capsys, ["--stablesr", str(files["stablesr"]), "--cfw", str(files["cfw"]),
                                           "--sizes", "1000"])
    assert "--sizes 1000" in message


def test_comfyui_path_is_checked(bench, files, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    assert "COMFYUI_PATH" in exit_message(bench, capsys, ["--predict"])


def test_workflow_peak_is_the_largest_phase():
    from supir_restore.supir.tiling.memory import workflow_peak_bytes
    # text encoders (large weights, no activations), VAE (small weights, large activations), sampling
    assert workflow_peak_bytes([(7.0, 0.0), (1.0, 11.0), (5.0, 6.5)]) == 12.0
