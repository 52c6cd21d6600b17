"""Degradation synthesis: kernels, noise, JPEG and resizing match their parameters; presets are seeded and batch
aware."""
import io
import math

import numpy as np
import pytest
import scipy.special
import skimage.data
import torch
from kornia.filters import get_gaussian_kernel2d
from PIL import Image

from helpers import assert_close_relative
from supir_restore.supir.quality import degradation as d


def photo(name="chelsea", size=None):
    """A real sample photograph as IMAGE (1, H, W, 3), optionally cropped to size x size."""
    x = torch.from_numpy(getattr(skimage.data, name)().copy())[None].float() / 255
    return x if size is None else x[:, :size, :size]


def centred_moments(kernel):
    """Covariance matrix of a (K, K) kernel seen as a distribution over (x, y) tap offsets."""
    ax = torch.arange(kernel.shape[-1], dtype=torch.float64) - (kernel.shape[-1] - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([torch.stack([(kernel * xx * xx).sum(), (kernel * xx * yy).sum()]),
                        torch.stack([(kernel * xx * yy).sum(), (kernel * yy * yy).sum()])])


# ------------------------------------------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.0])
def test_isotropic_gaussian_kernel_is_kornias_and_has_the_asked_sigma(sigma):
    k = d.gaussian_kernel(21, sigma)
    # the same float64 formula written another way (separable in kornia); sums to 1 in float64
    assert_close_relative(k, get_gaussian_kernel2d((21, 21), (sigma, sigma), dtype=torch.float64)[0], 1e-10)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    # a sampled (not integrated) Gaussian's variance is σ² only up to its sampling: 1.7e-4 off at σ = 0.8
    assert_close_relative(centred_moments(k), torch.eye(2, dtype=torch.float64) * sigma ** 2, 5e-4)


def test_anisotropic_gaussian_kernel_covariance_is_the_rotated_sigma_matrix():
    sx, sy, theta = 3.0, 1.0, 0.7
    k = d.gaussian_kernel(41, sx, sy, theta)  # wide enough that truncation is negligible
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    expected = rot @ torch.diag(torch.tensor([sx ** 2, sy ** 2], dtype=torch.float64)) @ rot.T
    assert_close_relative(centred_moments(k), expected, 1e-4)  # as above, cut at 6.8 σ along the long axis
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_generalized_and_plateau_kernels_follow_their_formulas():
    assert_close_relative(d.generalized_gaussian_kernel(21, 2.0, 1.0, 0.3, beta=1.0),
                          d.gaussian_kernel(21, 2.0, 1.0, 0.3), 1e-10)  # one float64 formula evaluated two ways
    ax = np.arange(21) - 10.0
    q = (ax[None, :] ** 2 + ax[:, None] ** 2) / 1.5 ** 2
    for kernel, raw in ((d.generalized_gaussian_kernel(21, 1.5, 1.5, 0.0, 2.5), np.exp(-0.5 * q ** 2.5)),
                        (d.plateau_kernel(21, 1.5, 1.5, 0.0, 1.7), 1 / (1 + q ** 1.7))):
        assert_close_relative(kernel.numpy(), raw / raw.sum(), 1e-10)  # float64 in torch and in numpy
    # heavier tails for beta < 1 than the Gaussian of the same sigma
    assert d.generalized_gaussian_kernel(21, 1.5, 1.5, 0.0, 0.5)[10, 0] > d.gaussian_kernel(21, 1.5)[10, 0]


def test_sinc_kernel_is_the_circular_lowpass_of_the_paper():
    cutoff = math.pi / 3
    ax = np.arange(13) - 6.0
    r = np.sqrt(ax[None, :] ** 2 + ax[:, None] ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    raw[6, 6] = cutoff ** 2 / (4 * np.pi)
    # torch's Bessel J1 agrees with scipy's to about 1e-8 of the kernel's peak (0.09)
    assert_close_relative(d.sinc_kernel(13, cutoff).numpy(), raw / raw.sum(), 1e-6)
    # frequency response: passes DC exactly, attenuates well above the cut-off
    response = np.abs(np.fft.fft2(np.pad(d.sinc_kernel(21, cutoff).numpy(), 50)))
    assert response[0, 0] == pytest.approx(1.0)
    assert response[0, 60] < 0.1  # 2*pi*60/121 ~ 0.99*pi, far above pi/3


@pytest.mark.parametrize("pipeline", [d.REAL_ESRGAN, d.STABLESR], ids=["realesrgan", "stablesr"])
def test_kernel_draws_respect_their_ranges_and_probabilities(pipeline):
    ranges = pipeline.stage1.kernel
    g = torch.Generator().manual_seed(0)
    draws = [d.draw_kernel(ranges, g) for _ in range(3000)]
    counts = {kind: sum(k.kind == kind for k in draws) for kind in (*d.KERNEL_KINDS, "sinc")}
    expected = [p * (1 - ranges.sinc_prob) for p in ranges.kind_probs] + [ranges.sinc_prob]
    for (kind, n), p in zip(counts.items(), expected):
        assert abs(n / 3000 - p) < 4 * math.sqrt(p * (1 - p) / 3000), kind
    assert {k.size for k in draws} == set(range(7, 22, 2))
    for k in draws:
        if k.kind == "sinc":
            assert (math.pi / 3 if k.size < 13 else math.pi / 5) <= k.cutoff <= math.pi
            continue
        assert ranges.sigma[0] <= min(k.sigma_x, k.sigma_y) and max(k.sigma_x, k.sigma_y) <= ranges.sigma[1]
        if k.kind in d.ISOTROPIC_KINDS:
            assert k.sigma_x == k.sigma_y and k.theta == 0
        else:
            assert -math.pi <= k.theta <= math.pi
        lo, hi = (ranges.betag if k.kind.startswith("generalized")
                  else ranges.betap if k.kind.startswith("plateau") else (1, 1))
        assert lo <= k.beta <= hi
    for k in draws[:40]:
        kernel = k.kernel()
        assert kernel.shape == (k.size, k.size) and kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
        # point-symmetric (correlation = convolution): float64 formulas on a symmetric grid
        assert_close_relative(kernel, kernel.flip(0, 1), 1e-12)


def test_final_sinc_cutoffs():
    g = torch.Generator().manual_seed(1)
    cutoffs = [d.draw_sinc(g, final=True).cutoff for _ in range(500)]
    assert math.pi / 3 <= min(cutoffs) and max(cutoffs) <= math.pi
    assert min(cutoffs) < math.pi / 3 + 0.05 and max(cutoffs) > math.pi - 0.05


def test_blur_preset_impulse_response_is_its_kernel():
    impulse = torch.zeros(1, 41, 41, 3)
    impulse[0, 20, 20] = 1.0
    out = d.gaussian_blur(impulse, d.BLUR_SIGMA)[0, 10:31, 10:31, 1].double()
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)  # float32 taps summing to 1
    # float32 taps; the kernel is cut well beyond 3 σ
    assert_close_relative(centred_moments(out), torch.eye(2, dtype=torch.float64) * d.BLUR_SIGMA ** 2, 1e-4)
    flat = torch.full((1, 32, 32, 3), 0.3)
    assert_close_relative(d.gaussian_blur(flat, 2.0), flat, 1e-5)  # float32 taps summing to 1


# ---------------------------------------------------------------------------------------------------------------- noise

@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_has_the_asked_variance(gray):
    flat = torch.full((1, 256, 256, 3), 0.5)
    noise = d.add_gaussian_noise(flat, d.NOISE_SIGMA, torch.Generator().manual_seed(1), gray=gray) - flat
    assert noise.std().item() == pytest.approx(d.NOISE_SIGMA / 255, rel=0.02)
    assert abs(noise.mean().item()) < 1e-3
    corr = torch.corrcoef(noise[0].reshape(-1, 3).T)[0, 1].item()
    assert corr == pytest.approx(1.0) if gray else abs(corr) < 0.02


@pytest.mark.parametrize("gray", [False, True])
def test_poisson_noise_variance_is_value_over_levels_times_scale_squared(gray):
    # 128 distinct 8-bit levels -> Real-ESRGAN's photon scale is 128; var(noise at x) = x / 128 * scale^2
    levels = torch.arange(64, 192, dtype=torch.float32) / 255
    image = levels.repeat(256)[torch.randperm(128 * 256, generator=torch.Generator().manual_seed(0))]
    image = image.view(1, 128, 256, 1).expand(1, 128, 256, 3).contiguous()
    scale = 0.5
    noise = d.add_poisson_noise(image, scale, torch.Generator().manual_seed(2), gray=gray) - image
    luma = image[..., 0]  # gray image: luminance = value
    # 32768 samples: the variance's standard error is about 1 %; the mean within 4 standard errors of 0
    assert noise.var().item() == pytest.approx(scale ** 2 * luma.mean().item() / 128, rel=0.03)
    assert abs(noise.mean().item()) < 4 * noise.std().item() / math.sqrt(128 * 256)
    if gray:
        torch.testing.assert_close(noise[..., 0], noise[..., 2], rtol=0, atol=0)  # one noise plane on equal channels
    else:
        assert (noise[..., 0] - noise[..., 2]).abs().max() > 0.01


# ---------------------------------------------------------------------------------------------------------------- JPEG

@pytest.mark.parametrize("quality", [10, 30, 90])
def test_jpeg_is_pillows_round_trip_at_that_quality(quality):
    image = photo("coffee", 192)
    pixels = (image[0] * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    out = d.jpeg(image, quality)
    np.testing.assert_array_equal((out[0] * 255).round().to(torch.uint8).numpy(), expected)


def test_lower_jpeg_quality_loses_more():
    image = photo("coffee", 192)
    errors = [(d.jpeg(image, q) - image).pow(2).mean().item() for q in (10, 30, 60, 95)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 4 * errors[-1]


# -------------------------------------------------------------------------------------------------------------- resize

@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_downscale_sizes_and_agreement_with_pillow(factor):
    image = photo("chelsea")[:, :299, :449]  # odd sides: sizes are floored
    out = d.bicubic_downscale(image, factor)
    assert out.shape == (1, 299 // factor, 449 // factor, 3)
    pixels = (image[0] * 255).round().to(torch.uint8).numpy()
    pil = np.asarray(Image.fromarray(pixels).resize((449 // factor, 299 // factor), Image.BICUBIC), dtype=np.int16)
    diff = np.abs((out[0] * 255).round().numpy().astype(np.int16) - pil)
    assert diff.max() <= 1 and diff.mean() < 0.25


@pytest.mark.parametrize("preset, scale", [("sr_x2", 2), ("sr_x4", 4), ("blur_sr_x4_noise", 4), ("noise", 1),
                                           ("realesrgan_x4", 4), ("stablesr_x4", 4)])
def test_preset_output_sizes(preset, scale):
    image = photo("chelsea")[:, :101, :97]
    lq = d.degrade(image, preset, seed=3)
    assert lq.shape == (1, 101 // scale, 97 // scale, 3)
    assert d.degrade(image, preset, seed=3, resize_back=True).shape == image.shape
    torch.testing.assert_close(lq, d.quantize(lq), rtol=0, atol=0)  # on the 8-bit grid
    assert lq.min() >= 0 and lq.max() <= 1


# ------------------------------------------------------------------------------------------------------------- seeding

@pytest.mark.parametrize("preset", ["realesrgan_x4", "stablesr_x4", "blur_sr_x4_noise"])
def test_same_seed_same_lq_and_batch_image_i_uses_seed_plus_i(preset):
    image = photo("astronaut", 128)
    batch = torch.cat([image, image, image])
    lq = d.degrade(batch, preset, seed=10)
    assert torch.equal(lq, d.degrade(batch, preset, seed=10))
    assert torch.equal(lq[2:], d.degrade(image, preset, seed=12))
    assert not torch.equal(lq[0], lq[1])


def test_fixed_presets_without_noise_do_not_depend_on_the_seed():
    image = photo("astronaut", 96)
    assert torch.equal(d.degrade(image, "blur_sr_x4", seed=0), d.degrade(image, "blur_sr_x4", seed=99))


def test_stablesr_ranges_are_lighter_than_real_esrgan():
    image = photo("astronaut", 128)
    clean = d.bicubic_downscale(image, 4)

    def mean_error(preset):
        return sum((d.degrade(image, preset, seed=s) - clean).abs().mean().item() for s in range(6)) / 6
    assert mean_error("stablesr_x4") < mean_error("realesrgan_x4")


# -------------------------------------------------------------------------------------------------------------- errors

def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match=r"RGB IMAGE tensor \[B, H, W, 3\].*got shape \(1, 64, 64, 4\)"):
        d.degrade(torch.rand(1, 64, 64, 4), "blur")
    with pytest.raises(ValueError, match="RGB IMAGE"):
        d.jpeg(torch.rand(64, 64, 3), 50)
    with pytest.raises(ValueError, match=r"too small for a 21x21 blur kernel.*at least 11 pixels"):
        d.degrade(torch.rand(1, 8, 40, 3), "blur")
    with pytest.raises(ValueError, match=r"unknown degradation preset 'blurry'; choose one of: realesrgan_x4"):
        d.degrade(torch.rand(1, 64, 64, 3), "blurry")
    with pytest.raises(ValueError, match=r"at least 74x74 pixels at scale 4; got 64x64"):
        d.degrade(torch.rand(1, 64, 64, 3), "realesrgan_x4")
    with pytest.raises(ValueError, match="too small for this scale factor"):
        d.degrade(torch.rand(1, 3, 64, 3), "sr_x4")
    with pytest.raises(ValueError, match="odd"):
        d.gaussian_kernel(20, 1.0)
    with pytest.raises(ValueError, match="quality"):
        d.jpeg(torch.rand(1, 16, 16, 3), 0)


def test_second_order_minimum_size_is_enough():
    image = photo("astronaut", d.REAL_ESRGAN.min_side)
    for seed in range(6):  # whatever the draws, every filter fits
        assert d.degrade(image, "realesrgan_x4", seed).shape == (1, 18, 18, 3)
