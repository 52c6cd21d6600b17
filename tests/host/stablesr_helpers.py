"""Shared by the StableSR host tests: a StableSR file in the official layout for the tiny SD 2.1 UNet, LR latents,
StableSR's UNet forward walked over ComfyUI's modules, and one UNet call of a (patched) MODEL."""
import torch

import comfy.model_management
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from supir_restore.supir.host.lora_stack import checkpoint_state_dict
from supir_restore.supir.host.stablesr import SPADESlot
from supir_restore.supir.stablesr.cfw import CFWLayers
from supir_restore.supir.stablesr.checkpoint import SPADELayers, sd_resblock_widths
from supir_restore.supir.stablesr.encoder import EncoderConfig, TimeAwareEncoder
from tiny_models import TINY_SD21_UNET_CONFIG, seeded_init_, tiny_sd21

ENCODER = EncoderConfig(model_channels=32, feature_channels=64)


def stablesr_file(path, seed=5, vae=None, clip=None) -> str:
    """A StableSR checkpoint in the official layout for the tiny SD 2.1 UNet: its UNet tensors, a SPADE layer for
    each of its 22 ResBlocks and a time-aware encoder, all seeded; with ``vae`` and ``clip``, also the first-stage
    and text-encoder tensors, so that Load Checkpoint reads the same file as SD 2.x, as it reads the real ones."""
    unet = tiny_sd21(seed=0)
    widths = sd_resblock_widths(32, tuple(TINY_SD21_UNET_CONFIG["channel_mult"]), 2)
    spade = seeded_init_(SPADELayers(widths, ENCODER.feature_channels, hidden=32), seed)
    encoder = seeded_init_(TimeAwareEncoder(ENCODER), seed + 1)
    if vae is None:
        sd = {f"model.diffusion_model.{k}": v for k, v in unet.model.diffusion_model.state_dict().items()}
    else:
        sd = checkpoint_state_dict(unet, clip, vae)
    sd.update({f"model.diffusion_model.{k}": v for k, v in spade.state_dict().items()})
    sd.update({f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()})
    torch.save({"state_dict": sd}, path)
    return str(path)


def lr_latent(seed=3, size=(8, 16)):
    return torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(seed))


def stablesr_reference(unet, sr, x, t, context, lr, modulate=None):
    """StableSR's UNet forward (ResBlockDual: h = SPADE(out_layers(in_layers(x) + emb), f); skip(x) + h), walking
    the ComfyUI UNet's modules and the loaded SPADE layers and encoder; ``modulate(path, h)`` in place of SPADE."""
    features = sr.net.encoder(lr, t)
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels).to(x.dtype))

    def run(block, path, h):
        for i, layer in enumerate(block):
            if isinstance(layer, ResBlock):
                out_layers = torch.nn.Sequential(*(m for m in layer.out_layers if not isinstance(m, SPADESlot)))
                r = out_layers(layer.in_layers(h) + layer.emb_layers(emb)[:, :, None, None])
                r = (modulate(f"{path}.{i}", r) if modulate else
                     sr.net.spade.layer(f"{path}.{i}")(r, features[tuple(r.shape[-2:])]))
                h = layer.skip_connection(h) + r
            elif hasattr(layer, "transformer_blocks"):
                h = layer(h, context=context)
            else:
                h = layer(h)
        return h
    hs, h = [], x
    for i, block in enumerate(unet.input_blocks):
        h = run(block, f"input_blocks.{i}", h)
        hs.append(h)
    h = run(unet.middle_block, "middle_block", h)
    for i, block in enumerate(unet.output_blocks):
        h = run(block, f"output_blocks.{i}", torch.cat([h, hs.pop()], dim=1))
    return unet.out(h)


def plain_out(model, x, sigma, context):
    comfy.model_management.load_models_gpu([model])
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=context)


def patched_out(patched, x, sigma, context, **cond):
    """One UNet call of a patched MODEL as a sampler makes it: loaded (object patches in place), with its
    wrappers and transformer options; ``cond``: further conditioning (SDXL's ``y``)."""
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        return patched.model.apply_model(x, sigma, c_crossattn=context, **cond,
                                         transformer_options={**patched.model_options["transformer_options"],
                                                              "wrappers": patched.wrappers})


def cfw_state_dict(vae, seed=7, vae_part=True) -> dict:
    """A CFW file's tensors in the official layout for ``vae``'s levels: fusion layers at decoder levels 1 and 2
    (``decoder.fusion_layer_*``), the VAE's tensors moved off ``vae``'s own (so the file's VAE differs), and a
    training-loss tensor the loader ignores."""
    model = vae.first_stage_model
    widths = {level: model.decoder.up[level].block[-1].out_channels for level in (1, 2)}
    layers = seeded_init_(CFWLayers(widths, growth=8), seed)  # two RRDBs as the official; growth 8, not 32
    sd = {"loss.logvar": torch.zeros(()), **{f"decoder.{k}": v for k, v in layers.state_dict().items()}}
    if vae_part:
        g = torch.Generator().manual_seed(seed)
        sd.update({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()})
    return sd
