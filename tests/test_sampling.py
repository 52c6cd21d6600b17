"""Tier 1: SUPIR's schedules, guidance weights and samplers against the official numbers and exact solutions."""
import math

import pytest
import torch

from helpers import assert_close_relative
from supir_restore.supir.sampling.samplers import (RESTORE_PRESETS, STEP_KEY, churn_gamma, ddpm_sigmas, discrete_sigmas, karras_sigmas,
                                          nearest_sigma, restoration_guidance, restoration_weight,
                                          restore_dpm_sigmas, sample_restore_dpmpp_2m_sde, sample_restore_edm,
                                          sigma_ramp)
from supir_restore.supir.stablesr.sampling import sample_stablesr_ddim

TABLE = ddpm_sigmas()
SIGMA_MAX = float(TABLE[-1])


def test_training_table():  # the official figures, printed to 4 decimals
    assert SIGMA_MAX == pytest.approx(14.6146, abs=1e-4)
    assert float(TABLE[0]) == pytest.approx(0.0292, abs=1e-4)


def test_official_50_step_schedule():
    s = discrete_sigmas(50, TABLE)  # against the official run's sigmas, printed to 3 or 4 decimals
    assert len(s) == 51 and s[-1] == 0 and torch.all(s[:-1] > s[1:])
    torch.testing.assert_close(s[:3], torch.tensor([14.6146, 12.966, 11.543]), atol=1e-3, rtol=0)
    torch.testing.assert_close(s[-3:-1], torch.tensor([0.196, 0.1345]), atol=1e-3, rtol=0)
    assert all(float(v) in TABLE.tolist() for v in s[:-1])  # every sigma is a training sigma


def test_official_8_step_schedules():
    s = discrete_sigmas(8, TABLE)  # as above, the official figures to 3 or 4 decimals
    torch.testing.assert_close(s[:3], torch.tensor([14.6146, 7.297, 4.082]), atol=1e-3, rtol=0)
    torch.testing.assert_close(s[-3:], torch.tensor([0.693, 0.398, 0.0]), atol=1e-3, rtol=0)
    k = restore_dpm_sigmas(8, TABLE)
    assert float(k[0]) == pytest.approx(SIGMA_MAX) and float(k[-2]) == pytest.approx(float(s[-2])) and k[-1] == 0
    rho = 7
    ramp = (k[:-1] ** (1 / rho))
    steps = ramp[1:] - ramp[:-1]
    assert_close_relative(steps, steps.mean().expand(7), 1e-4)  # equal steps in σ^(1/ρ), up to float32 rounding


def test_karras_endpoints():
    k = karras_sigmas(10, 0.1, 10.0)
    assert len(k) == 11 and float(k[0]) == pytest.approx(10.0) and float(k[-2]) == pytest.approx(0.1)


def test_restoration_weight_and_guidance():
    assert restoration_weight(11.5, 14.6146, 4) == pytest.approx(0.38, abs=0.005)  # the paper's plot, read to 0.01
    assert restoration_weight(7.3, 14.6146, 4) == pytest.approx(0.06, abs=0.005)
    d, c = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), 1.0)
    w = restoration_weight(11.5, SIGMA_MAX, 4)
    assert_close_relative(restoration_guidance(d, c, 11.5, 10.0, SIGMA_MAX, 4), d - 2 * w, 1e-6)  # float32 lerp
    assert torch.equal(restoration_guidance(d, c, 11.5, 10.0, SIGMA_MAX, -1), d)  # off
    assert torch.equal(restoration_guidance(d, c, 0.2, 0.05, SIGMA_MAX, 4), d)  # sigma_next <= s_tmin
    assert torch.equal(restoration_guidance(d, c, SIGMA_MAX, 12.0, SIGMA_MAX, 4), c)  # full pull at sigma_max


def test_churn_gamma_cap_and_window():
    assert churn_gamma(5, 50, 3.0) == pytest.approx(0.1)
    assert churn_gamma(100, 10, 3.0) == pytest.approx(math.sqrt(2) - 1)
    assert churn_gamma(5, 50, 3.0, s_tmin=4.0) == 0 and churn_gamma(5, 50, 3.0, s_tmax=2.0) == 0


def test_sigma_ramp():
    assert sigma_ramp(SIGMA_MAX, SIGMA_MAX, 4.0, 7.5) == pytest.approx(4.0)
    assert sigma_ramp(0.0, SIGMA_MAX, 4.0, 7.5) == pytest.approx(7.5)
    assert sigma_ramp(SIGMA_MAX / 2, SIGMA_MAX, 4.0, 7.5) == pytest.approx(5.75)


class GaussianData:
    """Data ~ N(mu, s^2): the exact denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the
    probability-flow ODE keeps (x - mu) / sqrt(s^2 + sigma^2) constant."""

    def __init__(self, mu=0.7, s=0.5):
        self.mu, self.s = mu, s
        self.calls = []

    def __call__(self, x, sigma, **extra):
        self.calls.append((float(sigma[0]), extra.get("model_options", {}).get("transformer_options", {}).get(STEP_KEY)))
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma[0] ** 2) * (x - self.mu)

    def exact_sample(self, x_t, sigma_max, sigma_last):
        """Follow the ODE exactly from sigma_max to the schedule's last sigma, then take D there, as the
        last step of both samplers does."""
        x_last = self.mu + (x_t - self.mu) * math.sqrt(self.s ** 2 + sigma_last ** 2) / math.sqrt(self.s ** 2 + sigma_max ** 2)
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma_last ** 2) * (x_last - self.mu)

    def final_std(self, sigma_last):
        """Std of D(x, sigma_last) for x ~ N(mu, s^2 + sigma_last^2)."""
        return self.s ** 2 / math.sqrt(self.s ** 2 + sigma_last ** 2)


def start(n=64, seed=0):
    return torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMA_MAX


@pytest.mark.parametrize("sampler,sigmas_fn,order", [
    (sample_restore_edm, discrete_sigmas, 1),
    (lambda *a, **k: sample_restore_dpmpp_2m_sde(*a, eta=0.0, **k), restore_dpm_sigmas, 2),
])
def test_samplers_converge_to_the_exact_ode_solution(sampler, sigmas_fn, order):
    data, x_t = GaussianData(), start()
    errors = []
    for steps in (25, 50, 100):
        sigmas = sigmas_fn(steps, TABLE).double()
        exact = data.exact_sample(x_t, SIGMA_MAX, float(sigmas[-2]))
        errors.append(float((sampler(data, x_t.clone(), sigmas, disable=True) - exact).abs().max()))
    # float64 against the exact solution (|x| up to 3 σ_max ≈ 44): the discretisation error of 100 steps only
    assert errors[-1] < (0.03 if order == 1 else 0.003), errors
    assert errors[0] > errors[1] > errors[2]  # refining the schedule converges


@pytest.mark.parametrize("sampler,sigmas_fn", [
    (lambda *a, **k: sample_restore_edm(*a, s_churn=5.0, s_noise=1.0, **k), discrete_sigmas),
    (lambda *a, **k: sample_restore_dpmpp_2m_sde(*a, eta=1.0, s_noise=1.0, **k), restore_dpm_sigmas),
])
def test_stochastic_samplers_reach_the_data_distribution(sampler, sigmas_fn):
    data = GaussianData()
    x_t = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) \
        * math.sqrt(1 + SIGMA_MAX ** 2)
    sigmas = sigmas_fn(200, TABLE).double()
    out = sampler(data, x_t, sigmas, extra_args={"seed": 3}, disable=True)
    # 20000 samples: standard errors of about 0.002 (mean) and 0.5 % (std), far inside these bounds
    assert float(out.mean()) == pytest.approx(data.mu, abs=0.02)
    assert float(out.std()) == pytest.approx(data.final_std(float(sigmas[-2])), rel=0.03)


def test_restore_edm_passes_pre_churn_step_sigmas_and_snaps_the_call_sigma():
    data, sigmas = GaussianData(), discrete_sigmas(10, TABLE)
    sample_restore_edm(data, start(4), sigmas, s_churn=5.0, sigma_table=TABLE, disable=True)
    for i, (call_sigma, step) in enumerate(data.calls):
        churned = float(sigmas[i]) * math.sqrt(2)  # gamma = min(5/10, sqrt(2) - 1)
        assert step == {"sigma": pytest.approx(float(sigmas[i])), "sigma_next": pytest.approx(float(sigmas[i + 1])),
                        "sigma_hat": pytest.approx(churned)}
        assert call_sigma == pytest.approx(float(nearest_sigma(torch.tensor(churned), TABLE)))
        assert call_sigma in TABLE.tolist()


def test_dpm_adds_no_noise_on_the_first_and_last_step():
    draws = []

    def noise(sigma, sigma_next):
        draws.append((float(sigma), float(sigma_next)))
        return torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    sigmas = restore_dpm_sigmas(8, TABLE).double()
    sample_restore_dpmpp_2m_sde(GaussianData(), start(4), sigmas, eta=1.0, noise_sampler=noise, disable=True)
    assert draws == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(1, 7)]


def test_same_seed_same_result():
    data, sigmas = GaussianData(), discrete_sigmas(20, TABLE).double()
    a = sample_restore_edm(data, start(8), sigmas, {"seed": 5}, s_churn=5.0, disable=True)
    b = sample_restore_edm(data, start(8), sigmas, {"seed": 5}, s_churn=5.0, disable=True)
    c = sample_restore_edm(data, start(8), sigmas, {"seed": 6}, s_churn=5.0, disable=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


class IdentityData:
    """D(x) = x: the deterministic part of every sampler here then leaves x as it is, so x changes between model
    calls only by the noise the sampler injects (times the step's scale). Records the x of every call."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, sigma, **extra):
        self.seen.append(x.clone())
        return x


def first_injected_draw(sampler, seed, shape=(1, 4, 128, 128)):
    """(start noise, the first noise ``sampler`` adds to x for ``seed``, scaled as added). The start noise is
    ComfyUI's for ``seed`` (comfy.sample.prepare_noise draws it from a CPU generator seeded with the seed)."""
    start_noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    data, x_start = IdentityData(), start_noise * SIGMA_MAX
    sampler(data, x_start.clone(), {"seed": seed})
    xs = [x_start] + data.seen
    steps = [b - a for a, b in zip(xs, xs[1:])]
    # 1e-3 of the start: far above the rounding D(x) = x leaves in DPM++'s weights, far below any injection
    return start_noise, next(d for d in steps if d.abs().max() > 1e-3 * x_start.abs().max())


def correlation(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


NOISY_SAMPLERS = {
    "RestoreEDM churn": lambda data, x, extra: sample_restore_edm(
        data, x, discrete_sigmas(6, TABLE), extra, s_churn=5.0, s_noise=1.003, disable=True),
    "RestoreDPM++ 2M SDE": lambda data, x, extra: sample_restore_dpmpp_2m_sde(
        data, x, restore_dpm_sigmas(6, TABLE), extra, eta=1.0, s_noise=1.003, disable=True),
    "StableSR DDIM eta 1": lambda data, x, extra: sample_stablesr_ddim(
        data, x, discrete_sigmas(6, TABLE), extra, eta=1.0, disable=True),
}


@pytest.mark.parametrize("name", NOISY_SAMPLERS)
@pytest.mark.parametrize("seed", [0, 1234, 2 ** 64 - 1])
def test_injected_noise_is_fresh_and_a_function_of_the_seed(name, seed):
    # Repeating the start noise gave a correlation of 1; independent draws over 4x128x128 values have a
    # correlation of standard deviation 1/256, so 0.02 is five of them.
    start_noise, draw = first_injected_draw(NOISY_SAMPLERS[name], seed)
    assert abs(correlation(draw, start_noise)) < 0.02
    assert torch.equal(first_injected_draw(NOISY_SAMPLERS[name], seed)[1], draw)


def test_presets_are_the_official_defaults():
    q, f = RESTORE_PRESETS["Quality"], RESTORE_PRESETS["Fidelity"]
    assert (q.sampler, q.steps, q.cfg_start, q.cfg_end, q.s_churn, q.s_noise, q.restore_cfg) == \
        ("RestoreEDM", 50, 4.0, 7.5, 5.0, 1.003, -1.0)
    assert (f.sampler, f.steps, f.cfg_start, f.cfg_end, f.s_churn, f.s_noise, f.restore_cfg) == \
        ("RestoreEDM", 50, 1.0, 4.0, 5.0, 1.003, -1.0)
    for name, cfg in (("Lightning Quality", 2.0), ("Lightning Fidelity", 1.5)):
        p = RESTORE_PRESETS[name]
        assert (p.sampler, p.steps, p.cfg_start, p.cfg_end, p.eta) == ("RestoreDPM++ 2M SDE", 8, cfg, cfg, 1.0)


def test_a_preset_with_a_restoration_target_takes_the_users_restore_cfg():
    from supir_restore.supir.sampling.samplers import RestoreSettings, preset_settings
    custom = RestoreSettings("RestoreEDM", 7, 1.0, 2.0, restore_cfg=4.0)
    assert preset_settings("Quality", custom) == RESTORE_PRESETS["Quality"]
    guided = preset_settings("Lightning Quality", custom, guided=True)
    assert guided.restore_cfg == 4.0 and guided.steps == 8 and guided.sampler == "RestoreDPM++ 2M SDE"
    assert preset_settings("Custom", custom, guided=True) == custom
