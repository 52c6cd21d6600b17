"""Validation restores of held-out images during and after training, scored with PSNR/SSIM."""
from __future__ import annotations

import torch

from ...supir.host.lq_encode import encode_lq
from ...supir.host.restore import restore_latent
from ...supir.host.supir_loader import SUPIRModel
from ...supir.host.unet_patch import apply_supir
from ...supir.quality.degradation import degrade
from ...supir.quality.metrics import psnr, ssim
from ...supir.sampling.prompts import supir_conditioning
from ...supir.sampling.samplers import RestoreSettings, StartMode


def with_adapters(model, adapters: dict[str, torch.nn.Module]):
    """A clone of the SDXL ``model`` running the trainable adapters as weight wrappers (no weight copy)."""
    m = model.clone()
    for key, adapter in adapters.items():
        m.add_weight_wrapper(key, adapter)
    return m


def validation_restore(model, supir: SUPIRModel, vae, clip, hq: torch.Tensor, degradation: str, seed: int,
                       settings: RestoreSettings, caption: str = "") -> dict:
    """Degrade ``hq`` (IMAGE :math:`(B, H, W, 3)`, sides multiples of 8) with ``degradation`` and ``seed``,
    restore it with ``model`` (an SDXL MODEL, with or without a LoRA) under SUPIR, and score against ``hq``.
    Returns {"psnr": float, "ssim": float, "lq": IMAGE, "restored": IMAGE} (means over the batch, Y channel)."""
    lq = degrade(hq, degradation, seed=seed, resize_back=True)
    hint, _ = encode_lq(supir, vae, lq)
    height, width = hq.shape[1:3]
    positive, negative = supir_conditioning(clip, caption, width=width, height=height)
    with torch.no_grad():
        latent = restore_latent(apply_supir(model, supir, hint), positive, negative, hint, seed, settings,
                                StartMode("noise"), disable_pbar=True)
        restored = vae.decode(latent).float().clamp(0, 1)
    return {"psnr": float(psnr(restored, hq).mean()), "ssim": float(ssim(restored, hq).mean()),
            "lq": lq, "restored": restored}
