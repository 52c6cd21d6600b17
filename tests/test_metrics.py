"""Metrics: PSNR/SSIM agree with scikit-image on its sample photographs under the SR-paper conventions; learned
metrics load only local weight files and name any missing one."""
import math
import os
import sys

import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.metrics
import torch
from torch import nn

from supir_restore.supir import degradation, metrics as m

PHOTOS = ["astronaut", "chelsea", "coffee"]


def pair(name, preset="blur_noise", seed=0, size=None):
    """(HQ, distorted) as uint8 arrays and as float64 IMAGE tensors holding exactly the same values; the photo is
    cropped to size x size when given."""
    hq = getattr(skimage.data, name)()[:size, :size]
    distorted = degradation.degrade(torch.from_numpy(hq)[None].float() / 255, preset, seed)
    lq = (distorted[0] * 255).round().to(torch.uint8).numpy()
    as_image = lambda a: torch.from_numpy(a.copy())[None].double() / 255  # noqa: E731
    return hq, lq, as_image(hq), as_image(lq)


def sk_ssim(a, b, channel_axis=None):
    """scikit-image SSIM with the Wang et al. / BasicSR settings."""
    return skimage.metrics.structural_similarity(a, b, channel_axis=channel_axis, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=255)


@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_and_ssim_agree_with_scikit_image(name):
    hq, lq, x_hq, x_lq = pair(name)
    assert m.psnr(x_lq, x_hq, 0, y_channel=False).item() == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(hq, lq, data_range=255), abs=1e-6)
    assert m.ssim(x_lq, x_hq, 0, y_channel=False).item() == pytest.approx(sk_ssim(hq, lq, channel_axis=-1), abs=1e-6)
    b = 4
    y_hq, y_lq = (skimage.color.rgb2ycbcr(a)[b:-b, b:-b, 0] for a in (hq, lq))  # BT.601 Y in [16, 235]
    assert m.psnr(x_lq, x_hq, b, y_channel=True).item() == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(y_hq, y_lq, data_range=255), abs=1e-6)
    assert m.ssim(x_lq, x_hq, b, y_channel=True).item() == pytest.approx(sk_ssim(y_hq, y_lq), abs=1e-6)


def test_y_is_matlab_rgb2ycbcr_luma():
    hq = skimage.data.astronaut()
    y = m.rgb_to_y(torch.from_numpy(hq)[None].double() / 255)[0, ..., 0].numpy() * 255
    np.testing.assert_allclose(y, skimage.color.rgb2ycbcr(hq)[..., 0], rtol=0, atol=1e-9)
    assert 16 <= y.min() and y.max() <= 235


def test_y_channel_convention_on_gray_and_chroma_changes():
    x = torch.rand(1, 64, 64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).expand(1, 64, 64, 3)
    y = (x + 0.05 * torch.randn(1, 64, 64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
         ).expand(1, 64, 64, 3)
    # gray images: studio-swing Y scales differences by 219/255, so PSNR-Y = PSNR-RGB - 20 log10(219/255)
    gap = m.psnr(y, x, 0, True) - m.psnr(y, x, 0, False)
    assert gap.item() == pytest.approx(-20 * math.log10(219 / 255), abs=1e-9)
    # a change orthogonal to the luma weights is invisible on Y but not on RGB
    w = torch.tensor(m.BT601_Y, dtype=torch.float64)
    chroma = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    chroma = chroma - (chroma @ w) / (w @ w) * w
    z = x + 0.02 * chroma
    assert m.psnr(z, x, 0, True).item() > 250 and m.ssim(z, x, 0, True).item() == pytest.approx(1.0)
    assert m.psnr(z, x, 0, False).item() < 50


def test_crop_border_ignores_exactly_that_many_pixels():
    _, _, x_hq, x_lq = pair("chelsea", "noise", size=160)
    b = 4
    damaged = x_lq.clone()
    damaged[:, :b] = 0
    damaged[:, :, -b:] = 1
    for fn in (m.psnr, m.ssim):
        assert fn(damaged, x_hq, b).item() == fn(x_lq, x_hq, b).item()
        assert fn(damaged, x_hq, 0).item() < fn(x_lq, x_hq, 0).item()
        assert fn(x_lq, x_hq, b).item() == pytest.approx(fn(x_lq[:, b:-b, b:-b], x_hq[:, b:-b, b:-b], 0).item(),
                                                         abs=1e-12)
    damaged[:, b] = 0  # one row inside the kept area counts
    assert m.psnr(damaged, x_hq, b).item() < m.psnr(x_lq, x_hq, b).item()


def test_scores_are_per_image_and_a_single_reference_broadcasts():
    _, _, x_hq, x_lq = pair("coffee", "jpeg", size=160)
    batch = torch.cat([x_lq, x_hq])
    scores = m.fidelity_metrics(batch, x_hq, 4)
    assert set(scores) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    assert all(v.shape == (2,) and v.dtype == torch.float64 for v in scores.values())
    assert math.isinf(scores["psnr_y"][1].item()) and scores["ssim_rgb"][1].item() == pytest.approx(1.0)
    assert scores["psnr_y"][0].item() == m.psnr(x_lq, x_hq, 4).item()
    assert 20 < scores["psnr_rgb"][0].item() < 40 and 0 < scores["ssim_y"][0].item() < 1


def test_metric_inputs_get_clear_errors():
    a = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match=r"image is 32x32 but reference is 32x16.*same size"):
        m.psnr(a, a[:, :, :16])
    with pytest.raises(ValueError, match="reference batch 2 does not match image batch 3"):
        m.ssim(a.expand(3, -1, -1, -1), a.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="crop_border 16 leaves nothing"):
        m.psnr(a, a, crop_border=16)
    with pytest.raises(ValueError, match=r"SSIM needs at least 11x11 pixels after cropping; got 8x8"):
        m.ssim(a, a, crop_border=12)
    with pytest.raises(ValueError, match=r"RGB IMAGE tensor.*\(1, 32, 32, 1\)"):
        m.psnr(a[..., :1], a[..., :1])


# ------------------------------------------------------------------------------------------------------------- learned

def test_missing_weights_name_the_file_and_the_folder(tmp_path):
    with pytest.raises(m.MissingWeightsError) as err:
        m.load_learned_metric("lpips", str(tmp_path))
    folder = os.path.join(str(tmp_path), "lpips")
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and f"in {folder}" in str(err.value)
    assert "never downloads" in str(err.value)
    torch.save(torchvision_alexnet_state(), os.path.join(folder_made(tmp_path, "lpips"), "alexnet-owt-7be5be79.pth"))
    with pytest.raises(m.MissingWeightsError, match=r"alex\.pth in .*lpips.*LPIPS v0\.1 linear heads"):
        m.load_learned_metric("lpips", str(tmp_path))


@pytest.mark.parametrize("name", ["dists", "clipiqa", "musiq", "maniqa"])
def test_listed_but_unimplemented_metrics_say_so(name, tmp_path):
    with pytest.raises(NotImplementedError, match=r"not implemented in this version.*implemented learned metrics: "
                                                  r"lpips"):
        m.load_learned_metric(name, str(tmp_path))


def test_unknown_metric_and_no_comfyui_folder(monkeypatch):
    with pytest.raises(ValueError, match="unknown learned metric 'niqe'; choose one of: lpips"):
        m.load_learned_metric("niqe", "/nonexistent")
    monkeypatch.setitem(sys.modules, "folder_paths", None)  # ComfyUI absent even when the host tier is on the path
    with pytest.raises(ValueError, match="--iqa-dir"):
        m.load_learned_metric("lpips")


def folder_made(root, name):
    path = os.path.join(str(root), name)
    os.makedirs(path, exist_ok=True)
    return path


def torchvision_features(seed=0):
    """AlexNet's ``features`` in torchvision's layout (conv/ReLU/max-pool positions), seeded weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(3, 2))


def torchvision_alexnet_state(seed=0):
    state = {f"features.{k}": v for k, v in torchvision_features(seed).state_dict().items()}
    return state | {"classifier.1.weight": torch.zeros(4096, 9216)}  # the file also holds the classifier


def lpips_heads_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate((64, 192, 384, 256,
                                                                                                    256))}


@pytest.fixture()
def lpips_dir(tmp_path):
    folder = folder_made(tmp_path, "lpips")
    torch.save(torchvision_alexnet_state(), os.path.join(folder, "alexnet-owt-7be5be79.pth"))
    torch.save(lpips_heads_state(), os.path.join(folder, "alex.pth"))
    return str(tmp_path)


def test_lpips_reads_the_torchvision_and_lpips_layouts(lpips_dir):
    lpips = m.load_learned_metric("lpips", lpips_dir)
    features = torchvision_features()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    taps = []
    with torch.no_grad():
        h = (x - lpips.shift) / lpips.scale
        for k, layer in enumerate(features):
            h = layer(h)
            if k in (1, 4, 7, 9, 11):  # relu1..relu5
                taps.append(h)
        for ours, ref in zip(lpips.layers(x), taps):
            torch.testing.assert_close(ours, ref)


def test_lpips_distance_properties(lpips_dir):
    lpips = m.load_learned_metric("lpips", lpips_dir)
    x_hq, x_lq = (t.float() for t in pair("astronaut", "blur", size=96)[2:])
    d_same, d_blur = lpips(x_hq, x_hq), lpips(x_lq, x_hq)
    assert d_same.shape == (1,) and d_same.item() == 0
    assert d_blur.item() > 0 and d_blur.item() == pytest.approx(lpips(x_hq, x_lq).item(), rel=1e-5)
    torch.testing.assert_close(lpips(torch.cat([x_lq, x_hq]), torch.cat([x_hq, x_hq])),
                               torch.cat([d_blur, d_same]), rtol=1e-5, atol=1e-7)
    # linear in the heads: doubling every head doubles the distance
    with torch.no_grad():
        for head in lpips.heads:
            head.weight.mul_(2)
    assert lpips(x_lq, x_hq).item() == pytest.approx(2 * d_blur.item(), rel=1e-5)
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips(x_hq[:, :16, :16], x_hq[:, :16, :16])


def test_lpips_rejects_files_of_another_kind(lpips_dir):
    torch.save({"weight": torch.zeros(1)}, os.path.join(lpips_dir, "lpips", "alex.pth"))
    with pytest.raises(ValueError, match=r"alex\.pth is not a LPIPS v0\.1 heads file: it has no tensor "
                                         r"'lin0\.model\.1\.weight'"):
        m.load_learned_metric("lpips", lpips_dir)
