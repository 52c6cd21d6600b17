"""Restoration sampling nodes: SUPIR's samplers and schedules for SamplerCustomAdvanced, CFG/restoration
guidance for any sampler, and the all-in-one SUPIR Restore."""
from __future__ import annotations

from comfy_api.latest import io

from ..supir.checks import check_finite_latent
from ..supir.host.restore import (DPM, EDM, SCHEDULES, apply_guidance, restore_dpm_sampler, restore_edm_sampler,
                                  restore_latent, supir_sigmas)
from ..supir.sampling.samplers import RESTORE_PRESETS, START_MODES, RestoreSettings, StartMode, preset_settings

CATEGORY = "supir/sampling"
DEFAULTS = RESTORE_PRESETS["Quality"]


def _s_noise(default=1.003):
    return io.Float.Input("s_noise", default=default, min=0.9, max=1.2, step=0.001,
                          tooltip="Scale of the fresh noise added during sampling (official 1.003).")


def _cfg_inputs():
    return [
        io.Float.Input("cfg_start", default=DEFAULTS.cfg_start, min=0.0, max=30.0, step=0.1,
                       tooltip="CFG scale at the highest noise level (sigma_max); official Quality 4.0, Fidelity 1.0."),
        io.Float.Input("cfg_end", default=DEFAULTS.cfg_end, min=0.0, max=30.0, step=0.1,
                       tooltip="CFG scale as noise reaches 0; it moves linearly with sigma in between. "
                               "Official Quality 7.5, Fidelity 4.0; lower values stay closer to the input."),
        io.Float.Input("restore_cfg", default=-1.0, min=-1.0, max=20.0, step=0.1,
                       tooltip="Restoration guidance strength tau: pulls the x0 estimate toward the restoration "
                               "target by (sigma/sigma_max)^tau. -1 (off) is the official default; 4 is the paper's. "
                               "Used with every preset when a restoration_target is connected."),
        io.Float.Input("restore_cfg_s_tmin", default=0.05, min=0.0, max=1.0, step=0.01,
                       tooltip="Restoration guidance stops once the next sigma is at or below this."),
        io.Latent.Input("restoration_target", optional=True,
                        tooltip="The stage-1 image encoded with the SDXL VAE (VAE Encode); needed when restore_cfg > 0."),
    ]


def _target(restoration_target):
    if restoration_target is None:
        return None
    check_finite_latent(restoration_target["samples"], "restoration_target")
    return restoration_target["samples"]


class SUPIRSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRSigmas", display_name="SUPIR Sigmas", category=CATEGORY,
            description="SUPIR's schedules on the model's own training sigmas: supir_discrete (integer timesteps "
                        "evenly spaced from 999, the RestoreEDM schedule) or supir_karras (Karras between the "
                        "discrete schedule's ends, the RestoreDPM++ schedule).",
            inputs=[
                io.Model.Input("model", tooltip="The model to sample (its sigma table is used)."),
                io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=1000, tooltip="Number of sampling steps."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="supir_discrete",
                               tooltip="supir_discrete for RestoreEDM, supir_karras for RestoreDPM++ 2M SDE."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Below 1: the last steps of a longer schedule, for img2img from the LQ latent."),
            ],
            outputs=[io.Sigmas.Output(tooltip="The sigmas, for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, steps, schedule, denoise) -> io.NodeOutput:
        return io.NodeOutput(supir_sigmas(model, steps, schedule, denoise))


class SUPIRSamplerEDM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRSamplerEDM", display_name="SUPIR RestoreEDM Sampler", category=CATEGORY,
            description="SUPIR's RestoreEDM: Euler steps with EDM churn, gamma = min(s_churn / steps, sqrt(2) - 1). "
                        "Use with SUPIR Sigmas (supir_discrete) in SamplerCustomAdvanced.",
            inputs=[
                io.Float.Input("s_churn", default=DEFAULTS.s_churn, min=0.0, max=40.0, step=0.1,
                               tooltip="Amount of noise re-injected per step (official 5)."),
                _s_noise(),
                io.Float.Input("s_tmin", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Churn only where sigma >= s_tmin."),
                io.Float.Input("s_tmax", default=1000.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Churn only where sigma <= s_tmax (1000 = everywhere)."),
            ],
            outputs=[io.Sampler.Output(tooltip="RestoreEDM, for SamplerCustomAdvanced (or any SAMPLER input).")],
        )

    @classmethod
    def execute(cls, s_churn, s_noise, s_tmin, s_tmax) -> io.NodeOutput:
        return io.NodeOutput(restore_edm_sampler(s_churn, s_noise, s_tmin, s_tmax))


class SUPIRSamplerDPM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRSamplerDPM", display_name="SUPIR RestoreDPM++ 2M SDE Sampler", category=CATEGORY,
            description="SUPIR's RestoreDPM++ 2M SDE with Brownian-tree noise, for Lightning SDXL models in few "
                        "steps. Use with SUPIR Sigmas (supir_karras) in SamplerCustomAdvanced.",
            inputs=[
                io.Float.Input("eta", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="SDE noise amount; 0 makes the sampler deterministic (ODE)."),
                _s_noise(),
            ],
            outputs=[io.Sampler.Output(tooltip="RestoreDPM++ 2M SDE, for SamplerCustomAdvanced (or any SAMPLER "
                                               "input).")],
        )

    @classmethod
    def execute(cls, eta, s_noise) -> io.NodeOutput:
        return io.NodeOutput(restore_dpm_sampler(eta, s_noise))


class SUPIRGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRGuidance", display_name="SUPIR CFG & Restoration Guidance", category=CATEGORY,
            description="Patches the model so any sampler (KSampler included) uses SUPIR's linear-in-sigma CFG and, "
                        "optionally, restoration guidance toward the LQ latent. The sampler's own cfg value is "
                        "then ignored.",
            inputs=[io.Model.Input("model", tooltip="A SUPIR-patched SDXL model (SUPIR Apply Control).")] + _cfg_inputs(),
            outputs=[io.Model.Output(tooltip="The model with SUPIR's CFG ramp and restoration guidance, for "
                                             "any sampler.")],
        )

    @classmethod
    def execute(cls, model, cfg_start, cfg_end, restore_cfg, restore_cfg_s_tmin, restoration_target=None):
        return io.NodeOutput(apply_guidance(model, cfg_start, cfg_end, restore_cfg, _target(restoration_target),
                                            restore_cfg_s_tmin))


class SUPIRRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRRestore", display_name="SUPIR Restore (Sampler)", category=CATEGORY,
            description="Samples a restoration at the hint's size. Presets set the sampler, steps, CFG ramp, churn "
                        "and noise to the official values (Quality, Fidelity, and Lightning for Lightning SDXL "
                        "models); Custom uses the values below. Decode the result with the SDXL VAE.",
            inputs=[
                io.Model.Input("model", tooltip="The SUPIR-patched SDXL model (SUPIR Apply Control)."),
                io.Conditioning.Input("positive", tooltip="From SUPIR Conditioning (caption + quality words)."),
                io.Conditioning.Input("negative", tooltip="From SUPIR Conditioning (official negative prompt)."),
                io.Latent.Input("hint", tooltip="The hint from SUPIR LQ Encode: sets the size and the LQ start."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the initial and the injected noise; the same seed gives the same result."),
                io.Combo.Input("preset", options=[*RESTORE_PRESETS, "Custom"], default="Quality",
                               tooltip="Official settings; with Custom the sampler, steps, cfg, churn, noise, eta "
                                       "and restore_cfg below are used. With a restoration_target connected, "
                                       "restore_cfg applies on top of any preset."),
                io.Combo.Input("start", options=list(START_MODES), default="noise",
                               tooltip="noise: pure noise (official). lq_embedded: the LQ latent noised to sigma_max "
                                       "(StableSR/SeeSR). img2img: the LQ latent noised to the level set by denoise."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="For start=img2img: the fraction of the schedule that is run."),
                io.Combo.Input("sampler", options=[EDM, DPM], default=EDM, tooltip="Custom preset only."),
                io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=1000, tooltip="Custom preset only."),
                io.Float.Input("s_churn", default=DEFAULTS.s_churn, min=0.0, max=40.0, step=0.1,
                               tooltip="Custom preset only: RestoreEDM churn."),
                _s_noise(),
                io.Float.Input("eta", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Custom preset only: RestoreDPM++ SDE noise."),
            ] + _cfg_inputs(),
            outputs=[io.Latent.Output(tooltip="The restored latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, hint, seed, preset, start, denoise, sampler, steps, s_churn,
                s_noise, eta, cfg_start, cfg_end, restore_cfg, restore_cfg_s_tmin, restoration_target=None):
        custom = RestoreSettings(sampler, steps, cfg_start, cfg_end, s_churn, s_noise, eta, restore_cfg)
        settings = preset_settings(preset, custom, guided=restoration_target is not None)
        check_finite_latent(hint["samples"], "hint")
        samples = restore_latent(model, positive, negative, hint["samples"], seed, settings, StartMode(start, denoise),
                                 _target(restoration_target), restore_cfg_s_tmin)
        return io.NodeOutput({"samples": samples})


NODES = [SUPIRSigmas, SUPIRSamplerEDM, SUPIRSamplerDPM, SUPIRGuidance, SUPIRRestore]
