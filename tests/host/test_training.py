"""Tier 2: the restoration LoRA trainer on a tiny SDXL + SUPIR: the loss falls and held-out restorations
improve, an interrupted run resumes exactly, and the saved file is a standard kohya LoRA for ComfyUI's loader."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import logging  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data as skdata  # noqa: E402

import comfy.lora  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402

from supir_restore.lora_train.host.adapters import TARGETS, kohya_state_dict, save_lora, target_keys  # noqa: E402
from supir_restore.lora_train.dataset import Sample, build_dataset  # noqa: E402
from supir_restore.lora_train.host.trainer import RestorationObjective, TrainSettings, evaluation_loss, train  # noqa: E402,E501
from supir_restore.lora_train.host.validation import with_adapters  # noqa: E402
from supir_restore.supir.host.lora_stack import apply_lora  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from supir_restore.lora_train.checkpoint import CheckpointMismatchError  # noqa: E402
from helpers import assert_close_relative, malicious_files  # noqa: E402
from test_full_size import SDXL_UNET  # noqa: E402

RES = 64


def photo(name: str, height: int) -> torch.Tensor:
    """A scikit-image sample photograph as IMAGE (H, W, 3), area-resized to ``height`` rows."""
    img = torch.from_numpy(np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0)
    if img.ndim == 2:
        img = img[..., None].expand(-1, -1, 3)
    x = torch.nn.functional.interpolate(img.movedim(-1, 0)[None], mode="area",
                                        size=(height, height * img.shape[1] // img.shape[0]))
    return x[0].movedim(0, -1).contiguous()


@pytest.fixture(scope="module")
def dataset():
    samples = [Sample(photo(n, 96), f"a photo of {n}", n) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    return build_dataset(samples, RES)


def settings(**kw) -> TrainSettings:
    base = dict(steps=4, rank=4, alpha=4.0, learning_rate=1e-2, degradation="blur_noise", save_every=0, seed=3)
    return TrainSettings(**{**base, **kw})


def shapes_of(model, adapters):
    return {k: model.get_model_object(k[:-len(".weight")]).weight.shape for k in adapters}


def held_out_loss(model, supir, vae, clip, dataset, run: TrainSettings, adapters=None) -> float:
    """The training objective (fixed draws) on images the run never saw, with or without the trained adapters."""
    patched = apply_supir(with_adapters(model, adapters) if adapters else model, supir, torch.zeros(1, 4, 8, 8),
                          run.control_scale, run.control_scale)
    mm.load_models_gpu([patched], force_full_load=True)
    return evaluation_loss(RestorationObjective(patched, supir, vae, clip, dataset, run), seed=11, batches=8)


def test_training_lowers_the_loss_on_training_and_held_out_images(tiny_model, tiny_supir, tiny_vae, tiny_clip,
                                                                    dataset, tmp_path):
    # Random tiny weights: only LoRAs that reach the convs ("all") can fit the objective in a few dozen steps.
    # Restorations sampled from random weights are noise-dominated, so generalisation is measured on the
    # objective itself: held-out photographs, fixed noise draws, with and without the trained LoRA.
    run = settings(steps=30, rank=8, targets="all")
    result = train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, run, str(tmp_path / "run.safetensors"),
                   eval_batches=4)
    assert result.eval_loss_end < 0.6 * result.eval_loss_start, (result.eval_loss_start, result.eval_loss_end)

    held_out = build_dataset([Sample(photo(n, 96), f"a photo of {n}", n) for n in ("camera", "coins")], RES)
    without = held_out_loss(tiny_model, tiny_supir, tiny_vae, tiny_clip, held_out, run)
    with_lora = held_out_loss(tiny_model, tiny_supir, tiny_vae, tiny_clip, held_out, run, result.adapters)
    assert with_lora < 0.5 * without, (without, with_lora)


def test_interrupted_run_resumes_exactly(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, tmp_path):
    run = settings(steps=4, batch_size=2, grad_accumulation=2, save_every=3)
    full = train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, run, str(tmp_path / "full.safetensors"))

    path = str(tmp_path / "interrupted.safetensors")

    def interrupt_after_two(step, loss):
        if step == 2:
            mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, run, path, on_step=interrupt_after_two)
    finally:
        mm.interrupt_current_processing(False)
    resumed = train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, run, path)
    assert resumed.resumed_from == 2
    assert resumed.losses == full.losses
    for key, adapter in full.adapters.items():
        assert torch.equal(adapter.lora_up.weight, resumed.adapters[key].lora_up.weight), key
        assert torch.equal(adapter.lora_down.weight, resumed.adapters[key].lora_down.weight), key
    with pytest.raises(ValueError, match="rank"):
        train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, settings(steps=5, rank=2, batch_size=2,
                                                                              grad_accumulation=2), path)


def test_a_damaged_or_pickled_checkpoint_is_named_and_never_unpickled(tiny_model, tiny_supir, tiny_vae, tiny_clip,
                                                                      dataset, tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    pickled = malicious_files(str(tmp_path), {})["RunsAShellCommand-zip"]
    for content in (b"\x00" * 100, open(pickled, "rb").read()):
        path.write_bytes(content)
        with pytest.raises(CheckpointMismatchError,
                           match=f"cannot read the training checkpoint {path}: .*start afresh"):
            train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, settings(steps=1), str(path))
    assert not (tmp_path / "ran").exists()


def test_trains_on_models_loaded_in_inference_mode(tiny_supir_file, dataset, tmp_path):
    """ComfyUI runs every node, loaders included, under torch.inference_mode()."""
    from supir_restore.supir.host.supir_loader import load_supir
    from tiny_models import tiny_clip, tiny_sdxl, tiny_vae
    with torch.inference_mode():
        vae, model, clip = tiny_vae(seed=3), tiny_sdxl(seed=0), tiny_clip(seed=2)
        supir = load_supir(tiny_supir_file, "fp32")
        result = train(model, supir, vae, clip, dataset, settings(steps=2, gradient_checkpointing=True),
                       str(tmp_path / "ckpt.safetensors"))
    assert len(result.losses) == 2
    assert all(float(a.lora_down.weight.abs().sum()) > 0 for a in result.adapters.values())


def test_crops_too_small_for_the_degradation_fail_before_training(tiny_model, tiny_supir, tiny_vae, tiny_clip,
                                                                   dataset, tmp_path):
    path = tmp_path / "never.safetensors"
    with pytest.raises(ValueError, match="at least 74x74"):
        train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, settings(degradation="realesrgan_x4"), str(path))
    assert not path.exists()


@pytest.mark.parametrize("targets", ["attention", "all"])
def test_saved_lora_loads_in_stock_loader_with_no_ignored_keys(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset,
                                                               tmp_path, caplog, targets):
    result = train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, settings(steps=2, targets=targets),
                   str(tmp_path / "ckpt.safetensors"))
    path = str(tmp_path / "trained.safetensors")
    save_lora(result.adapters, shapes_of(tiny_model, result.adapters), path, {})
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    assert len(sd) == 3 * len(result.adapters)
    with caplog.at_level(logging.WARNING):
        model, _ = comfy.sd.load_lora_for_models(tiny_model, None, sd, 1.0, 0.0)  # what stock LoraLoader runs
    assert "not loaded" not in caplog.text
    assert set(model.patches) == set(result.adapters)
    _, _, report = apply_lora(tiny_model, None, sd, "trained", 1.0)
    assert report.ignored == [] and report.unet_weights == len(result.adapters)

    # The loaded LoRA changes every weight by exactly the trained delta (up to the file's fp16).
    mm.load_models_gpu([model], force_full_load=True)
    for key, adapter in result.adapters.items():
        base = tiny_model.model.state_dict()[key] if key not in model.backup else model.backup[key].weight
        delta = (adapter.lora_up.weight @ adapter.lora_down.weight).reshape(base.shape) * adapter.alpha / adapter.rank
        patched = model.model.state_dict()[key]
        # the file stores the factors in fp16 (2^-11 relative each), and float32 rounds base + delta at |base|
        assert_close_relative(patched - base.to(patched), delta.to(patched), 1e-2)


@pytest.mark.parametrize("targets", list(TARGETS))
def test_every_saved_key_is_recognised_on_full_size_sdxl(targets):
    cfg = comfy.supported_models.SDXL(dict(SDXL_UNET))
    cfg.set_inference_dtype(torch.float16, None)
    model = cfg.get_model({}, device="meta")
    keys = target_keys(model.diffusion_model, targets)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    adapters = {}
    for key in keys:
        weight = model.state_dict()[key]
        adapter = torch.nn.Module()
        adapter.lora_up = torch.nn.Linear(4, weight.shape[0], bias=False)
        adapter.lora_down = torch.nn.Linear(weight.shape[1:].numel(), 4, bias=False)
        adapter.alpha = 4.0
        adapters[key] = adapter
    sd = kohya_state_dict(adapters, {k: model.state_dict()[k].shape for k in keys})
    names = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in sd}
    assert {key_map[n] for n in names} == set(keys)
    attention = 4 * 2 * (2 * 2 + 2 * 10 + 10 + 3 * 2 + 3 * 10)  # q/k/v/out × attn1/2 × 70 transformer blocks
    if targets == "attention":
        assert len(keys) == attention
