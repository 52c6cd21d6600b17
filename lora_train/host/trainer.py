"""Training a restoration LoRA on the SDXL prior with SUPIR's objective.

Per step: HQ crops (aspect buckets) are degraded afresh with a Degrade preset, the frozen denoise encoder turns
the LQ into the hint, the frozen control trunk reads it, the HQ latent is noised at a uniformly drawn training
timestep, and the loss is SDXL's ε-MSE (optionally min-SNR-γ weighted) through the SUPIR-patched UNet with LoRA
adapters on the chosen linears. Every random draw of step ``s`` comes from a generator seeded with (seed, s,
micro-batch), so a run resumed from a checkpoint continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.utils.checkpoint

import comfy.model_management

from ...supir.host.lq_encode import lq_vae
from ...supir.host.supir_loader import SUPIRModel
from ...supir.host.unet_patch import HINT_KEY, apply_supir
from ...supir.host.versions import non_dynamic
from ...supir.quality.degradation import degrade
from ..dataset import TrainingDataset, random_crop
from .adapters import attach_adapters, load_checkpoint, save_checkpoint, target_keys, trainable_parameters

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 500
    rank: int = 16
    alpha: float = 16.0
    targets: str = "attention"
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    batch_size: int = 1
    grad_accumulation: int = 1
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    degradation: str = "realesrgan_x4"
    snr_gamma: float = 0.0
    control_scale: float = 1.0
    seed: int = 0
    save_every: int = 100

    def trajectory(self) -> dict:
        """The settings a resumed run must share with its checkpoint (everything but length, saving and
        gradient checkpointing, which do not change the result)."""
        d = asdict(self)
        for k in ("steps", "save_every", "gradient_checkpointing"):
            d.pop(k)
        return d


@dataclass
class TrainResult:
    """The adapters, per-step training losses, where the run started and ended, the fixed-draw evaluation loss
    at its start and end, and the validation reports."""
    adapters: dict[str, torch.nn.Module]
    losses: list[float]
    steps_done: int
    resumed_from: int
    eval_loss_start: float = float("nan")
    eval_loss_end: float = float("nan")
    validation: list[dict] = field(default_factory=list)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of (seed, step, micro), so resuming needs no RNG file."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro)


def evaluation_generators(seed: int, batches: int) -> list[torch.Generator]:
    """Fixed draws (crops, degradations, timesteps, noise) on which the loss is compared across a run."""
    return [torch.Generator().manual_seed(2 ** 40 + seed * 64 + i) for i in range(batches)]


def min_snr_weight(sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    """min-SNR-γ weights for the ε-loss (Hang et al. 2023): ``min(SNR, γ) / SNR`` with ``SNR = 1/σ²``; 1 when
    ``gamma <= 0``. sigma :math:`(B,)` → :math:`(B,)`."""
    if gamma <= 0:
        return torch.ones_like(sigma)
    snr = sigma.pow(-2)
    return snr.clamp(max=gamma) / snr


def repeat_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Stack text contexts :math:`(1, T_i, C)` of different token counts by repeating each to the least common
    multiple of the counts; repeating every key and value of an attention leaves its output unchanged."""
    n = functools.reduce(math.lcm, (c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, n // c.shape[1], 1) for c in contexts])


@contextlib.contextmanager
def checkpointed(blocks: list[torch.nn.Module], enabled: bool):
    """Run each block's forward under non-reentrant activation checkpointing while inside."""
    if not enabled:
        yield
        return
    for block in blocks:
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class RestorationObjective:
    """The frozen parts of SUPIR training: data, degradation, denoise encoder, SDXL VAE and text encoders."""

    def __init__(self, model, supir: SUPIRModel, vae, clip, dataset: TrainingDataset, settings: TrainSettings):
        self.model = model
        self.vae = vae
        self.lq_vae = lq_vae(supir, vae)
        self.dataset = dataset
        self.settings = settings
        self.members = dataset.bucket_members()
        self.bucket_ids = sorted(self.members)
        self.bucket_weights = torch.tensor([len(self.members[b]) for b in self.bucket_ids], dtype=torch.float64)
        self.latent_format = model.get_model_object("latent_format")
        self.model_sampling = model.get_model_object("model_sampling")
        self.text = {c: self._encode_text(clip, c) for c in sorted({s.caption for s in dataset.samples})}
        self.cached = self._cache() if settings.cache_latents else None

    @staticmethod
    @torch.no_grad()
    def _encode_text(clip, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        return cond.float().clone(), pooled.float().clone()

    def _cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One fixed crop per sample (drawn from the seed) and its HQ latent."""
        g = torch.Generator().manual_seed(self.settings.seed)
        out = []
        for s, b in zip(self.dataset.samples, self.dataset.bucket_of):
            crop = random_crop(s.image, self.dataset.buckets[b], g)
            out.append((crop, self.encode_hq(crop[None])))
        return out

    @torch.no_grad()
    def encode_hq(self, hq: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(self.vae.encode(hq).float()).clone()

    @torch.no_grad()
    def batch(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        """HQ latent x0, hint, text context and SDXL ``y`` of one micro-batch drawn with ``g`` (the frozen
        encoders run without autograd)."""
        bucket = self.bucket_ids[int(torch.multinomial(self.bucket_weights, 1, generator=g))]
        members = self.members[bucket]
        picks = [members[int(i)] for i in torch.randint(len(members), (self.settings.batch_size,), generator=g)]
        if self.cached is not None:
            hq = torch.cat([self.cached[i][0][None] for i in picks])
            x0 = torch.cat([self.cached[i][1] for i in picks])
        else:
            size = self.dataset.buckets[bucket]
            hq = torch.stack([random_crop(self.dataset.samples[i].image, size, g) for i in picks])
            x0 = self.encode_hq(hq)
        lq = degrade(hq, self.settings.degradation, seed=int(torch.randint(2 ** 31, (1,), generator=g)),
                     resize_back=True)
        hint = self.latent_format.process_in(self.lq_vae.encode(lq).float()).clone()
        texts = [self.text[self.dataset.samples[i].caption] for i in picks]
        context = repeat_contexts([t[0] for t in texts])
        pooled = torch.cat([t[1] for t in texts])
        height, width = hq.shape[1:3]
        y = self.model.model.encode_adm(pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0,
                                        target_width=width, target_height=height)
        return {"x0": x0, "hint": hint, "context": context, "y": y.float()}

    def loss(self, batch: dict[str, torch.Tensor], g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """SDXL's ε-loss at uniformly drawn training timesteps, through the SUPIR-patched UNet."""
        x0 = batch["x0"]
        device = self.model.load_device
        t = torch.randint(len(self.model_sampling.sigmas), (x0.shape[0],), generator=g)
        sigma = self.model_sampling.sigmas.cpu()[t].float()
        noise = torch.randn(x0.shape, generator=g)
        xt = x0 + noise * sigma.view(-1, 1, 1, 1)
        options = {**self.model.model_options["transformer_options"], "wrappers": self.model.wrappers,
                   HINT_KEY: batch["hint"].to(device), "sigmas": sigma.to(device)}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            denoised = self.model.model.apply_model(xt.to(device), sigma.to(device),
                                                    c_crossattn=batch["context"].to(device),
                                                    y=batch["y"].to(device), transformer_options=options)
        eps = (xt.to(device) - denoised.float()) / sigma.to(device).view(-1, 1, 1, 1)
        per_sample = (eps - noise.to(device)).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * min_snr_weight(sigma.to(device), self.settings.snr_gamma)).mean()


def evaluation_loss(objective: RestorationObjective, seed: int, batches: int) -> float:
    """Mean ε-loss over ``batches`` fixed draws (no gradient)."""
    with torch.no_grad():
        return sum(float(objective.loss(objective.batch(g), g, torch.float32))
                   for g in evaluation_generators(seed, batches)) / batches


def lift_inference_tensors(module: torch.nn.Module) -> None:
    """Replace parameters and buffers created under ``torch.inference_mode`` (ComfyUI loads models inside it) by
    normal copies, one tensor at a time: autograd cannot save inference tensors for the backward pass."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_inference():
                m._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


def unet_blocks(model) -> list[torch.nn.Module]:
    unet = model.get_model_object("diffusion_model")
    return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]


def train(model, supir: SUPIRModel, vae, clip, dataset: TrainingDataset, settings: TrainSettings,
          checkpoint_path: str, resume: bool = True, on_step: Callable[[int, float], None] | None = None,
          validate: Callable[[dict[str, torch.nn.Module], int], dict] | None = None, validate_every: int = 0,
          eval_batches: int = 0) -> TrainResult:
    """Train LoRA adapters on ``model`` (an SDXL ModelPatcher, untouched) with SUPIR's restoration objective.

    A checkpoint is written every ``settings.save_every`` steps, at the end, and when the run is interrupted
    (ComfyUI's interrupt or any error) before the exception propagates; with ``resume`` an existing checkpoint at
    ``checkpoint_path`` is continued. ``on_step(step, loss)`` reports progress; ``validate(adapters, step)``
    runs every ``validate_every`` steps and at the end; ``eval_batches`` > 0 measures ``evaluation_loss`` at
    the start and the end of this call.
    """
    for width, height in {dataset.buckets[b] for b in dataset.bucket_of}:  # fail now, not at step n
        degrade(torch.zeros(1, height, width, 3), settings.degradation)
    with torch.inference_mode(False), torch.enable_grad():
        patched = apply_supir(non_dynamic(model, "SUPIR Train Restoration LoRA"), supir, torch.zeros(1, 4, 8, 8),
                              settings.control_scale, settings.control_scale)
        patched.model.requires_grad_(False)
        adapters = attach_adapters(patched, target_keys(patched.get_model_object("diffusion_model"), settings.targets),
                                   settings.rank, settings.alpha, settings.seed)
        params = trainable_parameters(adapters)
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        start, losses = 0, []
        if resume and os.path.isfile(checkpoint_path):
            start, losses = load_checkpoint(checkpoint_path, adapters, optimizer, settings.trajectory(),
                                            settings.steps)
        def load():
            comfy.model_management.load_models_gpu([patched], force_full_load=True)
            lift_inference_tensors(patched.model)
            lift_inference_tensors(supir.patcher.model)

        load()
        objective = RestorationObjective(patched, supir, vae, clip, dataset, settings)
        dtype = DTYPES[settings.dtype]
        result = TrainResult(adapters, losses, start, start)
        if eval_batches:
            result.eval_loss_start = evaluation_loss(objective, settings.seed, eval_batches)
        step = start

        def save():
            save_checkpoint(checkpoint_path, adapters, optimizer, step, losses, settings.trajectory())

        try:
            with checkpointed(unet_blocks(patched), settings.gradient_checkpointing):
                while step < settings.steps:
                    total = 0.0
                    for micro in range(settings.grad_accumulation):
                        comfy.model_management.throw_exception_if_processing_interrupted()
                        g = step_generator(settings.seed, step, micro)
                        loss = objective.loss(objective.batch(g), g, dtype)
                        (loss / settings.grad_accumulation).backward()
                        total += float(loss.detach()) / settings.grad_accumulation
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    losses.append(total)
                    if on_step:
                        on_step(step, total)
                    if settings.save_every > 0 and step % settings.save_every == 0:
                        save()
                    if validate and validate_every > 0 and step % validate_every == 0 and step < settings.steps:
                        result.validation.append(validate(adapters, step))
                        load()
        except BaseException:
            save()
            raise
        save()
        if eval_batches:
            result.eval_loss_end = evaluation_loss(objective, settings.seed, eval_batches)
        if validate:
            result.validation.append(validate(adapters, step))
        result.steps_done = step
        for a in adapters.values():
            a.requires_grad_(False)
        return result
