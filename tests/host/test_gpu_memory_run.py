"""Tier 2: bench/gpu_memory.py's runs wired to the pack's pipelines, on tiny models on the CPU with the CUDA
counters stubbed (the memory figures themselves need a GPU)."""
import importlib.util
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

from stablesr_helpers import cfw_state_dict  # noqa: E402
from supir_restore.supir.host.cfw_decode import load_cfw  # noqa: E402
from tiny_models import tiny_sd21, tiny_sd21_clip  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEAK = 12345


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_memory", os.path.join(REPO, "bench", "gpu_memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: PEAK)
    return module


@pytest.mark.parametrize("workflow", ["basic", "x4"])
def test_supir_runs_report_the_peak_and_the_model_calls_time(bench, workflow, tiny_model, tiny_clip, tiny_vae,
                                                             tiny_supir):
    parts = {"model": tiny_model, "clip": tiny_clip, "vae": tiny_vae, "supir": tiny_supir}
    peak, per_step = bench.run_one(workflow, 256, parts, fast=True)
    assert peak == PEAK and per_step > 0  # 0 when the timing wrapper saw no model call


def test_stablesr_run_reports_the_peak_and_the_model_calls_time(bench, stablesr, tiny_vae, tmp_path):
    path = tmp_path / "cfw.ckpt"
    torch.save({"state_dict": cfw_state_dict(tiny_vae)}, path)
    parts = {"model": tiny_sd21(seed=0), "clip": tiny_sd21_clip(seed=2), "vae": tiny_vae, "stablesr": stablesr,
             "cfw": load_cfw(str(path))}
    peak, per_step = bench.run_one("stablesr", 256, parts, fast=True)
    assert peak == PEAK and per_step > 0


def test_prediction_takes_the_sampling_phase_at_the_smallest_or_the_whole_tile(bench):
    from supir_restore.supir.tiling.memory import COMFY_MARGIN, SUPIR_SDXL, sampling_call_bytes
    p = bench.PARAMS
    weights = p["sdxl_unet"] + p["supir_control"] + p["supir_adaptors"]  # fp8: one byte each

    def sampling(latent_side):  # cond and uncond in one fp16 call
        return weights + COMFY_MARGIN * sampling_call_bytes(SUPIR_SDXL, latent_side ** 2, 2, 2)
    # relative 1e-12: the same float arithmetic in another order
    assert bench.predict("x4", 4096, "fp8", 0) == pytest.approx(sampling(64), rel=1e-12)  # 512 px tiles
    assert bench.predict("x4", 4096, "fp8", 0, largest_sampling=True) == pytest.approx(sampling(512), rel=1e-12)
    assert bench.predict("basic", 1024, "fp8", 0) == bench.predict("x4", 1024, "fp8", None)  # never tiles
