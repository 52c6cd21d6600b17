"""Colour fix: the à-trous decomposition and every fix against its equations or an independent implementation
(scikit-image's CIELAB and histogram matching, SciPy's matrix square root and filters), on real photographs, per
batch, channel layout and dtype."""
import kornia.color
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import skimage.color
import skimage.data
import skimage.exposure
import torch

from helpers import assert_close_relative, relative_error
from supir_restore.supir.image import colour as c
from supir_restore.supir.image.resize import resize_image

DTYPES = [torch.float32, torch.float64]
# the rounding of a few dozen sums in the dtype (2^-24 and 2^-53 of their size per operation), with room
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def photo(name):
    """A scikit-image sample photograph as IMAGE (1, H, W, 3), squeezed into [0.1, 0.9] so casts do not clip."""
    return torch.from_numpy(getattr(skimage.data, name)().copy())[None].float() / 255 * 0.8 + 0.1


def rms(x):
    return x.pow(2).mean().sqrt().item()


# ---------------------------------------------------------------------------------------------- à-trous decomposition

@pytest.mark.parametrize("dilation", [1, 2, 4, 8, 16])
def test_atrous_blur_is_the_dilated_binomial_kernel_with_replicated_edges(dilation):
    x = rand(2, 3, 12, 10, dtype=torch.float64)  # smaller than the largest dilation: padding replicates edges
    weights = {-1: 1.0, 0: 2.0, 1: 1.0}
    rows = torch.arange(12)
    cols = torch.arange(10)
    expected = torch.zeros_like(x)
    for a, wa in weights.items():
        for b, wb in weights.items():
            r = (rows + a * dilation).clamp(0, 11)
            q = (cols + b * dilation).clamp(0, 9)
            expected += wa * wb / 16 * x[:, :, r][:, :, :, q]
    assert_close_relative(c.atrous_blur(x, dilation), expected, 1e-14)  # 9 float64 taps summed in another order


@pytest.mark.parametrize("dtype", DTYPES)
def test_decomposition_levels_and_residual_sum_back_to_the_input(dtype):
    x = rand(2, 3, 40, 56, seed=1, dtype=dtype)
    bands, residual = c.wavelet_decompose(x)
    assert len(bands) == 5 and all(b.shape == x.shape and b.dtype == dtype for b in bands)
    assert_close_relative(sum(bands) + residual, x, TOL[dtype])
    torch.testing.assert_close(c.wavelet_low_frequency(x), residual, rtol=0, atol=0)
    assert all(b.abs().max() > 1e-3 for b in bands)  # every level carries detail of a noise image


def test_residual_is_the_five_level_low_pass_of_variance_170_5():
    impulse = torch.zeros(1, 1, 129, 129, dtype=torch.float64)
    impulse[..., 64, 64] = 1
    response = c.wavelet_low_frequency(impulse)[0, 0]  # support radius 1+2+4+8+16 = 31: no border effects
    offsets = torch.arange(129, dtype=torch.float64) - 64
    assert response.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (response * offsets[None] ** 2).sum().item() == pytest.approx(0.5 * (1 + 4 + 16 + 64 + 256), abs=1e-9)
    assert (response[:, 64 + 32:] == 0).all() and response[64, 64 + 31] > 0
    flat = torch.full((1, 3, 20, 24), 0.3, dtype=torch.float64)
    assert_close_relative(c.wavelet_low_frequency(flat), flat, 1e-14)  # taps summing to 1 in float64


# ------------------------------------------------------------------------------------------------------- wavelet fix

@pytest.mark.parametrize("dtype", DTYPES)
def test_wavelet_fix_is_high_frequencies_of_the_image_plus_low_frequencies_of_the_reference(dtype):
    x = rand(2, 3, 48, 40, seed=2, dtype=dtype)
    ref = rand(1, 3, 48, 40, seed=3, dtype=dtype)
    bands, _ = c.wavelet_decompose(x)
    _, ref_low = c.wavelet_decompose(ref)
    fixed = c.wavelet_fix(x, ref)
    assert_close_relative(fixed, sum(bands) + ref_low, TOL[dtype])
    # the low-frequency part put in is the reference's: swapping references changes exactly that part
    other = rand(1, 3, 48, 40, seed=4, dtype=dtype)
    # a difference of two images in [0, 1]: its own magnitude (about 0.1) is the scale, so 10x the sums' rounding
    assert_close_relative(fixed - c.wavelet_fix(x, other), (ref_low - c.wavelet_low_frequency(other)).expand_as(x),
                          10 * TOL[dtype])
    with pytest.raises(ValueError, match="resize the reference first"):
        c.wavelet_fix(x, ref[..., :20])


@pytest.mark.parametrize("method", list(c.COLOUR_FIXES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_fixing_an_image_with_itself_returns_the_image(method, dtype):
    x = rand(2, 36, 44, 3, seed=5, dtype=dtype)
    # the CIELAB round trip (cube roots, 2.4th powers) and MKL's two eigendecompositions lose a digit more than
    # the other fixes' sums (measured float32: 1.5e-5 mkl, 4e-6 lab, 6e-8 the others); AdaIN divides by the std
    tol = 10 * TOL[dtype] * (10 if method in ("lab", "mkl") else 1)
    assert_close_relative(c.colour_fix(x, x, method), x, tol)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_wavelet_fix_removes_a_smooth_colour_cast_from_a_photograph(name):
    original = photo(name)
    _, h, w, _ = original.shape
    yy = torch.linspace(-1, 1, h).view(1, h, 1, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, w, 1)
    blob = torch.exp(-(yy ** 2 + xx ** 2) / 0.5)  # a colour cloud about half the image wide, plus a tilt
    cast = torch.tensor([0.08, -0.06, 0.05]) * blob + torch.tensor([-0.02, 0.03, 0.0]) * xx
    offset = torch.tensor([0.06, -0.04, 0.05])
    # like the stage-1 image: the right colours at a quarter of the resolution, so no detail
    stage1 = resize_image(original, h // 4, w // 4, "area")

    # a constant offset has no high frequencies, so with the exact colours as reference it goes entirely
    assert_close_relative(c.colour_fix(original + offset, original), original, 1e-5)  # float32 sums of 5 levels
    # measured RMS error reductions with the quarter-size reference: cast 31-68x, offset 61-155x
    for shifted, margin in ((original + cast, 15), (original + offset, 30)):
        before = rms(shifted - original)
        after = rms(c.colour_fix(shifted, stage1, "wavelet") - original)
        assert before > 0.03 and after * margin < before, (before, after)


# --------------------------------------------------------------------------------------------------------- AdaIN

@pytest.mark.parametrize("dtype", DTYPES)
def test_adain_gives_each_image_and_channel_the_reference_mean_and_std(dtype):
    x = rand(3, 3, 30, 34, seed=6, dtype=dtype) * 0.5
    for ref in (rand(3, 3, 20, 25, seed=7, dtype=dtype) ** 2, rand(1, 3, 16, 16, seed=8, dtype=dtype) + 2):
        fixed = c.adain_fix(x, ref)
        std, mean = torch.std_mean(fixed, dim=(-2, -1), correction=0)
        ref_std, ref_mean = torch.std_mean(ref, dim=(-2, -1), correction=0)
        # float32 means and stds over a thousand pixels, recomputed: their rounding
        assert_close_relative(mean, ref_mean.expand_as(mean), 1e-5)
        assert_close_relative(std, ref_std.expand_as(std), 1e-5)
        # an affine map per channel: standardised values are unchanged (divided by the std once more)
        assert_close_relative((fixed - mean[..., None, None]) / std[..., None, None],
                              (x - x.mean((-2, -1), keepdim=True)) / x.std((-2, -1), correction=0, keepdim=True), 1e-4)


def test_adain_maps_a_flat_channel_to_the_reference_mean():
    x = rand(1, 3, 8, 8, seed=9)
    x[:, 1] = 0.25
    ref = rand(1, 3, 8, 8, seed=10)
    fixed = c.adain_fix(x, ref)
    assert_close_relative(fixed[:, 1], ref[:, 1].mean().expand(1, 8, 8), 1e-5)  # float32 mean, taken twice
    assert torch.isfinite(fixed).all()


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_adain_removes_a_global_colour_shift_from_a_photograph(name):
    original = photo(name)
    _, h, w, _ = original.shape
    stage1 = resize_image(original, h // 4, w // 4, "area")
    shifted = (original - 0.5) * torch.tensor([1.1, 0.9, 1.0]) + 0.5 + torch.tensor([0.06, -0.04, 0.05])
    before = rms(shifted - original)
    after = rms(c.colour_fix(shifted, stage1, "adain") - original)
    assert after * 4 < before, (before, after)  # measured: 6.8-8.8x for the offset alone


# ------------------------------------------------------------------------------------- CIELAB (lab) and MKL (mkl)

def photo_pair(dtype, size=(96, 128)):
    """Two different photographs at one size, (1, 3, H, W) in ``dtype``, values in [0, 1] (not squeezed: the
    CIELAB fixes are checked over the whole sRGB range)."""
    out = []
    for name in ("rocket", "immunohistochemistry"):
        x = torch.from_numpy(getattr(skimage.data, name)().copy())[None].double() / 255
        out.append(resize_image(x, *size, "area").clamp(0, 1).movedim(-1, 1).to(dtype))
    return out


def skimage_lab(x):
    """(1, 3, H, W) torch -> (H*W, 3) CIELAB in float64 through scikit-image."""
    return skimage.color.rgb2lab(x[0].movedim(0, -1).double().numpy()).reshape(-1, 3)


def skimage_rgb(lab, like):
    rgb = skimage.color.lab2rgb(lab.reshape(*like.shape[-2:], 3))  # clamps to [0, 1], as colour_fix does
    return torch.from_numpy(rgb).movedim(-1, 0)[None]


# relative to sRGB values of at most 1. float64: the two libraries' sums in another order (measured 2e-15);
# float32: kornia's float32 cube roots and 2.4th powers against scikit-image's float64 (measured 6e-7)
LAB_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
def test_lab_fix_is_reinhard_transfer_through_scikit_image_cielab(dtype):
    x, ref = photo_pair(dtype)
    lab_x, lab_r = skimage_lab(x), skimage_lab(ref)
    expected = (lab_x - lab_x.mean(0)) / lab_x.std(0) * lab_r.std(0) + lab_r.mean(0)
    fixed = c.lab_fix(x, ref)
    assert fixed.dtype == dtype and fixed.shape == x.shape
    assert_close_relative(fixed.clamp(0, 1).double(), skimage_rgb(expected, x), LAB_TOL[dtype])  # images up to 1


def numpy_mkl(source, reference):
    """Pitié & Kokaram's linear Monge-Kantorovich map from its formula, with SciPy's matrix square root."""
    cov_s, cov_r = np.cov(source, rowvar=False, bias=True), np.cov(reference, rowvar=False, bias=True)
    half = scipy.linalg.sqrtm(cov_s).real
    inv_half = np.linalg.inv(half)
    t = inv_half @ scipy.linalg.sqrtm(half @ cov_r @ half).real @ inv_half
    return (source - source.mean(0)) @ t.T + reference.mean(0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mkl_fix_is_the_monge_kantorovich_map_in_scikit_image_cielab(dtype):
    x, ref = photo_pair(dtype)
    expected = numpy_mkl(skimage_lab(x), skimage_lab(ref))
    fixed = c.mkl_fix(x, ref)
    assert fixed.dtype == dtype and fixed.shape == x.shape
    # float32 adds eigh in float32 on covariances of magnitude 1e3 (measured 3e-6; float64 4e-15)
    assert_close_relative(fixed.clamp(0, 1).double(), skimage_rgb(expected, x),
                          {torch.float32: 5e-5, torch.float64: 1e-12}[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mkl_transfer_gives_the_reference_mean_and_covariance_with_a_symmetric_map(dtype):
    g = torch.Generator().manual_seed(23)
    mix = torch.tensor([[1.0, 0.4, 0.1], [0.0, 0.8, -0.3], [0.2, 0.0, 0.5]], dtype=dtype)
    x = torch.einsum("ij,bjhw->bihw", mix, torch.rand(2, 3, 40, 50, generator=g, dtype=dtype))
    ref = torch.einsum("ij,bjhw->bihw", mix.T, torch.rand(1, 3, 30, 20, generator=g, dtype=dtype)) + 0.5
    out = c.mkl_transfer(x, ref)
    mean_o, cov_o = c.mean_covariance(out)
    mean_r, cov_r = c.mean_covariance(ref)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]  # relative: covariances are about 0.1
    assert_close_relative(mean_o, mean_r.expand_as(mean_o), tol)
    assert_close_relative(cov_o, cov_r.expand_as(cov_o), tol)
    # out = T (x - mean) + mean_r with T symmetric: recover T by least squares and check its symmetry
    flat_x = (x - x.mean((-2, -1), keepdim=True)).flatten(2).transpose(1, 2)
    t = torch.linalg.lstsq(flat_x, (out - mean_r[..., None]).flatten(2).transpose(1, 2)).solution
    assert_close_relative(t, t.transpose(1, 2), 100 * tol)  # least squares over 2000 pixels: 100x rounding
    # uncorrelated channels: MKL is AdaIN
    diagonal = torch.rand(1, 3, 64, 64, generator=g, dtype=dtype)
    # sample covariances of independent channels are not exactly diagonal: the maps agree to a few percent
    assert_close_relative(c.mkl_transfer(diagonal[:, :, :32], diagonal[:, :, 32:]),
                          c.adain_fix(diagonal[:, :, :32], diagonal[:, :, 32:]), 0.05)


def test_mkl_of_a_flat_image_stays_finite_and_becomes_the_reference_mean_colour():
    flat = torch.full((1, 3, 16, 16), 0.4)
    ref = rand(1, 3, 16, 16, seed=24)
    out = c.mkl_fix(flat, ref)
    assert torch.isfinite(out).all()
    mean_lab = kornia.color.rgb_to_lab(ref).mean((-2, -1), keepdim=True)
    # CIELAB values up to 100, through float32 cube roots: 1e-4 of the largest (about 1e-3 absolute on L)
    assert_close_relative(kornia.color.rgb_to_lab(out), mean_lab.expand_as(out), 1e-4)


# ---------------------------------------------------------------------------------------------- histogram matching

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quantised", [False, True])
def test_histogram_fix_is_scikit_image_match_histograms(dtype, quantised):
    x, ref = photo_pair(torch.float64)
    ref = resize_image(ref.movedim(1, -1), 70, 90, "area").movedim(-1, 1)  # another size
    if quantised:  # 8-bit values: many ties in both images
        x, ref = (x * 255).round() / 255, (ref * 255).round() / 255
    x, ref = x.to(dtype), ref.to(dtype)
    expected = skimage.exposure.match_histograms(x[0].movedim(0, -1).double().numpy(),
                                                 ref[0].movedim(0, -1).double().numpy(), channel_axis=-1)
    fixed = c.histogram_fix(x, ref)
    assert fixed.dtype == dtype
    # float32: the quantiles are float32 sums of counts over ~1e4 pixels (relative error ~1e-7), so interpolated
    # values move by at most that share of a gap between reference values
    assert_close_relative(fixed[0].movedim(0, -1).double(), torch.from_numpy(expected),
                          {torch.float32: 1e-5, torch.float64: 1e-12}[dtype])


def test_histogram_fix_gives_each_channel_the_reference_values_in_the_image_order():
    x = rand(2, 3, 20, 30, seed=25)
    ref = rand(2, 3, 20, 30, seed=26) ** 3
    fixed = c.histogram_fix(x, ref)
    for b in range(2):
        for ch in range(3):  # same pixel count, no ties: the sorted output is exactly the sorted reference
            assert torch.equal(fixed[b, ch].flatten().sort().values, ref[b, ch].flatten().sort().values)
            assert torch.equal(fixed[b, ch].flatten().argsort(), x[b, ch].flatten().argsort())
    torch.testing.assert_close(c.interp(torch.tensor([-1.0, 0.5, 2.0]), torch.tensor([0.0, 1.0]),
                                        torch.tensor([3.0, 5.0])), torch.tensor([3.0, 4.0, 5.0]))


# ------------------------------------------------------------------------------------------------ adaptive wavelet

def scipy_low_pass(x):
    """The à-trous low-pass by SciPy: five correlations with the dilated binomial kernel, edges replicated."""
    taps = np.array([1.0, 2.0, 1.0]) / 4
    for i in range(5):
        kernel = np.zeros(2 * 2 ** i + 1)
        kernel[::2 ** i] = taps
        x = scipy.ndimage.correlate1d(scipy.ndimage.correlate1d(x, kernel, axis=-1, mode="nearest"),
                                      kernel, axis=-2, mode="nearest")
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_wavelet_adaptive_fix_is_the_low_pass_of_the_limited_difference(dtype):
    x, ref = photo_pair(dtype)
    ref = ref.flip(-1)  # a reference that departs strongly in many places
    diff = (ref - x).double().numpy()
    norm = np.sqrt((diff ** 2).sum(1, keepdims=True))
    limited = diff * np.minimum(1, 0.1 / np.maximum(norm, 1e-300))
    expected = x.double().numpy() + scipy_low_pass(limited)
    fixed = c.wavelet_adaptive_fix(x, ref, 0.1)
    assert fixed.dtype == dtype and (norm > 0.1).mean() > 0.3  # the limit is active on a third of the pixels
    assert_close_relative(fixed.double(), torch.from_numpy(expected), 10 * TOL[dtype])
    # a limit above every difference gives the wavelet fix
    assert_close_relative(c.wavelet_adaptive_fix(x, ref, float(norm.max()) + 1e-3), c.wavelet_fix(x, ref),
                          10 * TOL[dtype])
    assert (fixed - c.wavelet_fix(x, ref)).abs().max() > 0.05
    with pytest.raises(ValueError, match="positive limit"):
        c.wavelet_adaptive_fix(x, ref, 0.0)
    with pytest.raises(ValueError, match="resize the reference first"):
        c.wavelet_adaptive_fix(x, ref[..., :20])


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_wavelet_adaptive_removes_a_cast_and_limits_the_halos_of_lost_dark_detail(name):
    original = photo(name)
    _, h, w, _ = original.shape
    yy = torch.linspace(-1, 1, h).view(1, h, 1, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, w, 1)
    restored = original + torch.tensor([0.08, -0.06, 0.05]) * torch.exp(-(yy ** 2 + xx ** 2) / 0.5)
    before = rms((restored - original).abs().amax(-1))

    # a faithful quarter-size stage-1 image: the cast goes (measured 5.8-9x lower RMS; wavelet 27-50x)
    faithful = resize_image(original, h // 4, w // 4, "area")
    assert rms((c.colour_fix(restored, faithful, "wavelet_adaptive") - original).abs().amax(-1)) * 5 < before

    # a stage-1 image that lost thin dark detail (a grey closing fills dark lines thinner than 5 px): the wavelet
    # fix spreads the missing darkness as bright halos around textured areas, the adaptive fix much less
    closed = torch.from_numpy(scipy.ndimage.grey_closing(original[0].numpy(), size=(5, 5, 1)))[None]
    stage1 = resize_image(closed, h // 4, w // 4, "area")
    errors = {m: (c.colour_fix(restored, stage1, m) - original).abs().amax(-1) for m in ("wavelet", "wavelet_adaptive")}
    p99 = {m: e.flatten().quantile(0.99).item() for m, e in errors.items()}
    assert p99["wavelet_adaptive"] * 1.2 < p99["wavelet"], p99  # measured 1.27-2.5x lower
    assert rms(errors["wavelet_adaptive"]) < rms(errors["wavelet"])  # measured 1.16-1.6x lower


# ------------------------------------------------------------------------------------- IMAGE handling (colour_fix)

@pytest.mark.parametrize("method", list(c.COLOUR_FIXES))
def test_reference_batch_of_one_or_one_per_image(method):
    x = rand(3, 32, 40, 3, seed=11)
    refs = rand(3, 16, 20, 3, seed=12)
    per_image = torch.cat([c.colour_fix(x[i:i + 1], refs[i:i + 1], method) for i in range(3)])
    assert_close_relative(c.colour_fix(x, refs, method), per_image, 1e-6)  # batched kernels: float32 rounding
    shared = torch.cat([c.colour_fix(x[i:i + 1], refs[:1], method) for i in range(3)])
    assert_close_relative(c.colour_fix(x, refs[:1], method), shared, 1e-6)
    assert relative_error(per_image[1], shared[1]) > 1e-2
    with pytest.raises(ValueError, match="reference batch must hold 1 image or as many as the image batch"):
        c.colour_fix(x[:2], refs, method)


@pytest.mark.parametrize("ref_size", [(16, 20), (64, 80), (32, 40)])
def test_the_reference_is_resized_to_the_image_with_antialiased_bicubic(ref_size):
    x = rand(1, 32, 40, 3, seed=13)
    ref = rand(1, *ref_size, 3, seed=14)
    expected = c.wavelet_fix(x.movedim(-1, 1), resize_image(ref, 32, 40, "bicubic").movedim(-1, 1))
    assert_close_relative(c.colour_fix(x, ref), expected.movedim(1, -1).clamp(0, 1), 1e-6)  # float32 rounding


def test_rgba_keeps_its_alpha_and_grey_images_work():
    rgba = rand(2, 24, 28, 4, seed=15)
    ref = rand(1, 24, 28, 4, seed=16)
    out = c.colour_fix(rgba, ref)
    assert out.shape == rgba.shape and torch.equal(out[..., 3], rgba[..., 3])
    torch.testing.assert_close(out[..., :3], c.colour_fix(rgba[..., :3], ref[..., :3]), rtol=0, atol=0)
    grey = rand(1, 24, 28, 1, seed=17)
    grey_ref = rand(1, 12, 14, 1, seed=18)
    for method in c.COLOUR_FIXES:
        out = c.colour_fix(grey, grey_ref, method)
        assert out.shape == grey.shape and relative_error(out, grey) > 1e-2
    with pytest.raises(ValueError, match="1 colour channel.*reference has 3"):
        c.colour_fix(grey, ref)
    with pytest.raises(ValueError, match=r"1 \(grey\), 3 \(RGB\) or 4 \(RGBA\) channels"):
        c.colour_fix(rand(1, 8, 8, 2), rand(1, 8, 8, 2))
    with pytest.raises(ValueError, match="unknown colour fix 'reinhard'; choose one of wavelet, adain, lab"):
        c.colour_fix(grey, grey_ref, "reinhard")


def test_output_is_clamped_and_strength_blends():
    x = rand(1, 32, 32, 3, seed=19)
    bright = rand(1, 32, 32, 3, seed=20) * 0.2 + 0.8
    unclamped = c.wavelet_fix(x.movedim(-1, 1), bright.movedim(-1, 1)).movedim(1, -1)
    assert unclamped.max() > 1.05
    out = c.colour_fix(x, bright)
    assert_close_relative(out, unclamped.clamp(0, 1), 1e-6)  # float32 rounding
    assert out.max() == 1 and out.min() >= 0

    assert torch.equal(c.colour_fix(x, bright, strength=0.0), x)
    blended = c.colour_fix(x, bright, strength=0.25)
    assert_close_relative(blended, (x + 0.25 * (unclamped - x)).clamp(0, 1), 1e-6)  # float32 rounding
    assert relative_error(blended, out) > 0.1
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        c.colour_fix(x, bright, strength=1.5)


@pytest.mark.parametrize("method", list(c.COLOUR_FIXES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_are_kept_and_low_precision_is_computed_in_float32(method, dtype):
    x = rand(2, 40, 32, 3, seed=21).to(dtype)
    ref = rand(1, 20, 16, 3, seed=22).to(dtype)
    out = c.colour_fix(x, ref, method)
    assert out.dtype == dtype and out.shape == x.shape
    reference_result = c.colour_fix(x.double(), ref.double(), method)
    if dtype in (torch.float16, torch.bfloat16):  # float32 maths, one rounding at the end
        assert torch.equal(out, c.colour_fix(x.float(), ref.float(), method).to(dtype))
        # one rounding of values below 1: half an ulp in [0.5, 1) is 2^-12 (float16) or 2^-9 (bfloat16), measured
        # so for every method; twice that leaves room for the float32 maths
        assert_close_relative(out.double(), reference_result, 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11)
    else:
        assert_close_relative(out.double(), reference_result, 1e-5)  # float32 against float64: float32 rounding
