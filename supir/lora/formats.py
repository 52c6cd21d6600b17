"""LoRA files without ComfyUI: format conversion, inspection and SVD merging.

A LoRA module is a pair ``up`` [out, r(, 1, 1)] and ``down`` [r, in(, kh, kw)] with an optional ``alpha``; its
weight delta is ``up @ down · scale`` with ``scale = alpha / r`` (1 when the file has no alpha, as ComfyUI
applies it). Module names stay as the file has them; the host side maps them to model weights.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from ..checks import non_finite_tensors
from ..weights import names, read_state_dict

# (up suffix, down suffix) pairs of the low-rank formats ComfyUI's LoRA adapter reads.
PAIR_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
)
LYCORIS_MARKERS = (".hada_", ".lokr_", ".oft_blocks", ".oft_R", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight",
                   ".lora_mid.weight")
CROSS_ATTN_WIDTHS = {2048: "SDXL", 768: "SD1.5", 1024: "SD2.x"}
TARGET_PATTERNS = (r"attn[12]_to_(q|k|v|out)", r"ff_net_\d", r"proj_(in|out)", r"self_attn_(q|k|v|out)_proj",
                   r"mlp_fc[12]", r"(conv[12]|in_layers|out_layers|emb_layers|time_emb_proj|skip_connection|op|conv)")
PART_PREFIXES = (("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"), ("text_encoder_2.", "te2"),
                 ("text_encoder.", "te1"), ("text_encoders.clip_l.", "te1"), ("text_encoders.clip_g.", "te2"),
                 ("lora_unet_", "unet"), ("unet.", "unet"), ("diffusion_model.", "unet"), ("lycoris_", "unet"))


class LoraFormatError(ValueError):
    """A LoRA file this code cannot read, or one that does not fit the requested operation."""


@dataclass
class LowRank:
    """One LoRA module: up [out, r] or [out, r, 1, 1], down [r, in] or [r, in, kh, kw], alpha or None."""
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The delta as a matrix [out, in·kh·kw]."""
        return (self.up.flatten(1).to(dtype) @ self.down.flatten(1).to(dtype)) * self.scale

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight delta in the weight's shape: [out, in] or [out, in, kh, kw]."""
        return self.matrix(dtype).reshape(self.up.shape[0], *self.down.shape[1:])


def convert_peft(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames diffusers/PEFT UNet keys ``unet.<diffusers module>.lora_A/lora_B(.default).weight`` (and
    ``.alpha``) to kohya's diffusers-style names ``lora_unet_<module with . → _>.lora_down/lora_up.weight``, which
    ComfyUI maps for every SDXL UNet weight (it ignores the PEFT names without ``.processor``). Other keys (text
    encoders, kohya, LyCORIS, old ``.processor`` names) are returned unchanged."""
    out = {}
    for key, value in sd.items():
        new = key
        if key.startswith("unet.") and ".processor." not in key:
            for suffix, kohya in ((".lora_A.default.weight", ".lora_down.weight"), (".lora_A.weight", ".lora_down.weight"),
                                  (".lora_B.default.weight", ".lora_up.weight"), (".lora_B.weight", ".lora_up.weight"),
                                  (".alpha", ".alpha")):
                if key.endswith(suffix):
                    new = "lora_unet_" + key[len("unet."):-len(suffix)].replace(".", "_") + kohya
                    break
        if new in out:
            raise LoraFormatError(f"LoRA has two tensors for {new!r} after converting PEFT names; the file mixes "
                                  f"formats for one module — re-save it in a single format.")
        out[new] = value
    return out


def low_rank_modules(sd: dict[str, torch.Tensor]) -> dict[str, LowRank]:
    """Every up/down pair in the file by module name (as named in the file). LyCORIS modules are skipped (see
    :func:`lycoris_modules`)."""
    modules = {}
    for key in sd:
        for up_suffix, down_suffix in PAIR_SUFFIXES:
            if key.endswith(up_suffix):
                name = key[:-len(up_suffix)]
                if name + down_suffix not in sd:
                    raise LoraFormatError(f"LoRA tensor {key!r} has no matching {name + down_suffix!r}; the file is "
                                          f"incomplete — re-export it.")
                alpha = sd.get(name + ".alpha")
                modules[name] = LowRank(sd[key], sd[name + down_suffix], None if alpha is None else float(alpha))
                break
    return modules


def lycoris_modules(sd: dict[str, torch.Tensor]) -> list[str]:
    """Module names of LyCORIS adapters (LoHa, LoKr, OFT, GLoRA, Tucker LoCon) in the file, sorted."""
    return sorted({key.split(marker)[0] for key in sd for marker in LYCORIS_MARKERS if marker in key})


def lora_format(sd: dict[str, torch.Tensor]) -> str:
    """``kohya``, ``comfyui`` (generic ``diffusion_model.``), ``peft`` (``unet.… lora_A/lora_B``), ``diffusers``
    (old ``.processor`` names), ``lycoris``, a ``+``-joined mix, or ``unknown``."""
    kinds = set()
    for key in sd:
        if any(marker in key for marker in LYCORIS_MARKERS) or key.startswith("lycoris_"):
            kinds.add("lycoris")
        elif ".processor." in key:
            kinds.add("diffusers")
        elif key.startswith(("lora_unet_", "lora_te")):
            kinds.add("kohya")
        elif key.startswith(("diffusion_model.", "text_encoders.")):
            kinds.add("comfyui")
        elif ".lora_A" in key or ".lora_B" in key:
            kinds.add("peft")
    return "+".join(sorted(kinds)) or "unknown"


def model_part(name: str) -> str:
    """``unet``, ``te1`` (CLIP-L), ``te2`` (OpenCLIP bigG), ``te`` (SD1/2 text encoder) or ``other``."""
    for prefix, part in PART_PREFIXES:
        if name.startswith(prefix):
            return part
    return "other"


def target_kind(name: str) -> str:
    """The kind of layer a module targets, e.g. ``attn2_to_k``, ``ff_net_0``, ``self_attn_q_proj``."""
    flat = name.replace(".", "_").replace("_processor_", "_")
    for pattern in TARGET_PATTERNS:
        found = re.search(rf"(?:^|_)({pattern})(?:_|$)", flat)
        if found:
            return found.group(1)
    return "other"


@dataclass
class LoraInfo:
    """What a LoRA file holds and which base model it fits."""
    format: str
    base: str
    base_reason: str
    ranks: list[int]
    alphas: list[float]
    parts: dict[str, int]
    targets: dict[str, int]
    lycoris: list[str] = field(default_factory=list)
    tensors: int = 0

    def describe(self) -> str:
        return "\n".join([
            f"format: {self.format}  ({self.tensors} tensors)",
            f"base model: {self.base} ({self.base_reason})",
            f"rank: {', '.join(map(str, self.ranks)) or '-'}",
            f"alpha: {', '.join(f'{a:g}' for a in self.alphas) or 'none (scale 1)'}",
            "modules: " + (", ".join(f"{p} {n}" for p, n in sorted(self.parts.items())) or "none"),
            "targets: " + (", ".join(f"{t} ×{n}" for t, n in sorted(self.targets.items())) or "none"),
            *([f"LyCORIS modules: {len(self.lycoris)} (passed to ComfyUI as they are)"] if self.lycoris else []),
        ])


def guess_base(sd: dict[str, torch.Tensor], modules: dict[str, LowRank]) -> tuple[str, str]:
    """(base model, reason) from the input width of cross-attention to_k (2048 SDXL, 768 SD1.5, 1024 SD2.x), then
    from the presence of a second text encoder (SDXL)."""
    widths = sorted({m.down.shape[1] for name, m in modules.items()
                     if model_part(name) == "unet" and target_kind(name) == "attn2_to_k"})
    for width in widths:
        if width in CROSS_ATTN_WIDTHS:
            return CROSS_ATTN_WIDTHS[width], f"cross-attention to_k input width {width}"
    if any(model_part(k) == "te2" for k in sd):
        return "SDXL", "has second text encoder (te2) keys"
    if widths:
        return "unknown", f"cross-attention to_k input width {widths[0]} is not SDXL's 2048"
    return "unknown", "no cross-attention to_k or te2 keys to tell from"


def inspect_lora(sd: dict[str, torch.Tensor]) -> LoraInfo:
    """Format, ranks, alphas, modules per model part, target layer kinds and the base model of a LoRA file."""
    modules = low_rank_modules(convert_peft(sd))
    lycoris = lycoris_modules(sd)
    base, reason = guess_base(sd, modules)
    parts, targets = {}, {}
    for name in [*modules, *lycoris]:
        parts[model_part(name)] = parts.get(model_part(name), 0) + 1
        targets[target_kind(name)] = targets.get(target_kind(name), 0) + 1
    return LoraInfo(format=lora_format(sd), base=base, base_reason=reason,
                    ranks=sorted({m.rank for m in modules.values()}),
                    alphas=sorted({m.alpha for m in modules.values() if m.alpha is not None}),
                    parts=parts, targets=targets, lycoris=lycoris, tensors=len(sd))


def merge_low_rank(stack: list[tuple[dict[str, LowRank], float]], rank: int,
                   dtype: torch.dtype = torch.float32) -> dict[str, LowRank]:
    """Merges LoRAs (modules keyed by one shared naming) with weights into one LoRA of at most ``rank``: per
    module the SVD of Σ weightᵢ·deltaᵢ [out, in·kh·kw] = U S Vh, kept to the top ``rank`` singular values;
    up = U·S [out, r(,1,1)], down = Vh [r, in(,kh,kw)], alpha = r (scale 1). At full rank the sum is exact; the
    Frobenius error of a truncation is sqrt(Σ discarded S²)."""
    if rank < 1:
        raise LoraFormatError(f"merge rank must be at least 1, got {rank}.")
    shapes, sums = {}, {}
    for modules, weight in stack:
        for name, module in modules.items():
            shape = (module.up.shape[0], *module.down.shape[1:])
            if shapes.setdefault(name, shape) != shape:
                raise LoraFormatError(f"LoRAs disagree on the shape of {name!r} ({shapes[name]} vs {shape}); they "
                                      f"were made for different base models — merge only LoRAs of one base model.")
            term = module.matrix(dtype) * weight
            sums[name] = term if name not in sums else sums[name] + term
    merged = {}
    for name, total in sums.items():
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        r = min(rank, s.shape[0])
        out, *rest = shapes[name]
        tail = (1,) * (len(rest) - 1)
        merged[name] = LowRank((u[:, :r] * s[:r]).reshape(out, r, *tail), vh[:r].reshape(r, *rest), float(r))
    return merged


def to_kohya(modules: dict[str, LowRank], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A kohya-format state dict: ``<name>.lora_up.weight``, ``<name>.lora_down.weight``, ``<name>.alpha``."""
    sd = {}
    for name, m in modules.items():
        sd[f"{name}.lora_up.weight"] = m.up.to(dtype).contiguous()
        sd[f"{name}.lora_down.weight"] = m.down.to(dtype).contiguous()
        sd[f"{name}.alpha"] = torch.tensor(m.rank if m.alpha is None else m.alpha, dtype=torch.float32)
    return sd


def kohya_name(model_key: str) -> str:
    """The module name a merged LoRA uses for a ComfyUI weight key: ``diffusion_model.<p>.weight`` →
    ``lora_unet_<p _>``; a CLIP attention/MLP weight ``clip_l.transformer.text_model.encoder.layers.N.<layer>``
    → ``lora_te1_…`` (``clip_g`` → ``lora_te2_``); any other text-encoder weight → ComfyUI's generic
    ``text_encoders.<key without .weight>``."""
    stem = model_key[:-len(".weight")] if model_key.endswith(".weight") else model_key
    if stem.startswith("diffusion_model."):
        return "lora_unet_" + stem[len("diffusion_model."):].replace(".", "_")
    clip = re.fullmatch(r"clip_([lg])\.transformer\.(text_model\.encoder\.layers\.\d+\."
                        r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12]))", stem)
    if clip:
        return ("lora_te1_" if clip.group(1) == "l" else "lora_te2_") + clip.group(2).replace(".", "_")
    return "text_encoders." + stem


def read_lora(path: str) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors (the pack's one weights reader), all finite."""
    sd = read_state_dict(path)
    if bad := non_finite_tensors(sd):
        raise LoraFormatError(f"{os.path.basename(path)}: {len(bad)} tensor(s) hold NaN or infinite values "
                              f"({names(bad, 4)}); the LoRA is damaged (or its "
                              "training diverged) and would turn the image black. Use another copy or another LoRA.")
    return sd
