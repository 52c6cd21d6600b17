"""Tier 2: the noise the pack's samplers inject after the start, run through ComfyUI's SamplerCustom node, is fresh
(independent of ComfyUI's start noise, comfy.sample.prepare_noise, for the same seed) and a function of the seed."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.sample  # noqa: E402

from supir_restore.nodes.sampling_nodes import SUPIRSamplerDPM, SUPIRSamplerEDM, SUPIRSigmas  # noqa: E402
from supir_restore.nodes.stablesr_nodes import StableSRSamplerNode, StableSRSigmas  # noqa: E402
from tiny_models import fake_conditioning, tiny_sd21  # noqa: E402

LATENT = (1, 4, 128, 128)


def sdxl_case(sampler, schedule):
    def build(tiny_model):
        return tiny_model, sampler, SUPIRSigmas.execute(tiny_model, 4, schedule, 1.0).result[0], fake_conditioning()
    return build


def stablesr_case(name, start, eta):
    def build(tiny_model):
        model = tiny_sd21(seed=0)
        context = [[torch.randn(1, 5, 1024, generator=torch.Generator().manual_seed(1)), {}]]
        return (model, StableSRSamplerNode.execute(name, start, eta).result[0],
                StableSRSigmas.execute(model, 4, name).result[0], context)
    return build


CASES = {
    "RestoreEDM churn": sdxl_case(SUPIRSamplerEDM.execute(5.0, 1.003, 0.0, 1000.0).result[0], "supir_discrete"),
    "RestoreDPM++ 2M SDE": sdxl_case(SUPIRSamplerDPM.execute(1.0, 1.003).result[0], "supir_karras"),
    "StableSR DDIM eta 1": stablesr_case("ddim", "noise", 1.0),
    "StableSR DDPM": stablesr_case("ddpm", "lr_latent", 0.0),
}


def injected_draws(model, sampler, sigmas, conditioning, seed):
    """The changes of x between the sampler's start and each model call, and the output, from SamplerCustom with
    ``seed`` on a model whose x0 estimate is x itself: the samplers' deterministic parts then keep x, so every
    change is noise the sampler injected (times the step's scale)."""
    import comfy_extras.nodes_custom_sampler as custom
    xs = []
    identity = model.clone()
    identity.set_model_unet_function_wrapper(lambda apply_model, args: xs.append(args["input"].clone()) or args["input"])
    inner = sampler.sampler_function

    def recording_start(model_k, x, *args, **kwargs):
        xs.append(x.clone())
        return inner(model_k, x, *args, **kwargs)
    sampler.sampler_function = recording_start
    try:
        out = custom.SamplerCustom.execute(identity, True, seed, 1.0, conditioning, conditioning, sampler, sigmas,
                                           {"samples": torch.zeros(LATENT)}).result[0]["samples"]
    finally:
        sampler.sampler_function = inner
    return [b - a for a, b in zip(xs, xs[1:])], xs[0], out


def correlation(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", [0, 2 ** 64 - 1])
def test_first_injected_noise_is_independent_of_comfyuis_start_noise(tiny_model, name, seed):
    model, sampler, sigmas, conditioning = CASES[name](tiny_model)
    steps, x_start, out = injected_draws(model, sampler, sigmas, conditioning, seed)
    # 1e-3 of the start: far above the rounding x0 = x leaves in the samplers' weights, far below any injection
    first = next(d for d in steps if d.abs().max() > 1e-3 * x_start.abs().max())
    start_noise = comfy.sample.prepare_noise(torch.zeros(LATENT), seed)
    assert abs(correlation(x_start, start_noise)) > 0.999  # the start is ComfyUI's noise for the seed
    # Repeating the start noise gave a correlation of 1; independent draws over 4x128x128 values have a
    # correlation of standard deviation 1/256, so 0.02 is five of them.
    assert abs(correlation(first, start_noise)) < 0.02
    again_steps, _, again = injected_draws(model, sampler, sigmas, conditioning, seed)
    assert all(torch.equal(a, b) for a, b in zip(steps, again_steps)) and torch.equal(out, again)
