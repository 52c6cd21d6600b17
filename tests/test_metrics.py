"""Metrics: PSNR/SSIM agree with scikit-image on its sample photographs under the SR-paper conventions; learned
metrics load only local weight files and name any missing one."""
import json
import math
import os
import re
import statistics
import sys

import numpy as np
import pytest
import safetensors.torch
import skimage.color
import skimage.data
import skimage.metrics
import torch
from torch import nn

from supir_restore.supir.image.io import image_to_pil, read_image
from supir_restore.supir.quality import benchmark, degradation, metrics as m
from supir_restore.supir.weights import UnsafeWeightsError, WeightsFileError

from helpers import assert_close_relative, malicious_files, read_csv, relative_error

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
    # float64 in both; scikit-image filters and sums in its own order, so 1e-6 of the score
    assert m.psnr(x_lq, x_hq, 0, y_channel=False).item() == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(hq, lq, data_range=255), rel=1e-6)
    assert m.ssim(x_lq, x_hq, 0, y_channel=False).item() == pytest.approx(sk_ssim(hq, lq, channel_axis=-1), rel=1e-6)
    b = 4
    y_hq, y_lq = (skimage.color.rgb2ycbcr(a)[b:-b, b:-b, 0] for a in (hq, lq))  # BT.601 Y in [16, 235]
    assert m.psnr(x_lq, x_hq, b, y_channel=True).item() == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(y_hq, y_lq, data_range=255), rel=1e-6)
    assert m.ssim(x_lq, x_hq, b, y_channel=True).item() == pytest.approx(sk_ssim(y_hq, y_lq), rel=1e-6)


def test_y_is_matlab_rgb2ycbcr_luma():
    hq = skimage.data.astronaut()
    y = m.rgb_to_y(torch.from_numpy(hq)[None].double() / 255)[0, ..., 0].numpy() * 255
    assert_close_relative(y, skimage.color.rgb2ycbcr(hq)[..., 0], 1e-11)  # one float64 dot product each
    assert 16 <= y.min() and y.max() <= 235


def test_y_channel_convention_on_gray_and_chroma_changes():
    x = torch.rand(1, 64, 64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).expand(1, 64, 64, 3)
    y = (x + 0.05 * torch.randn(1, 64, 64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
         ).expand(1, 64, 64, 3)
    # gray images: studio-swing Y scales differences by 219/255, so PSNR-Y = PSNR-RGB - 20 log10(219/255)
    gap = m.psnr(y, x, 0, True) - m.psnr(y, x, 0, False)
    assert gap.item() == pytest.approx(-20 * math.log10(219 / 255), rel=1e-9)  # float64 logs of sums
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
                                                         rel=1e-12)  # the same float64 sums of another view
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


def test_unknown_metric_and_no_weights_folder():
    with pytest.raises(ValueError, match="unknown learned metric 'niqe'; choose one of: lpips"):
        m.load_learned_metric("niqe", "/nonexistent")
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
            assert_close_relative(ours, ref, 1e-6)  # the same float32 layers, called through the metric


def test_lpips_distance_properties(lpips_dir):
    lpips = m.load_learned_metric("lpips", lpips_dir)
    x_hq, x_lq = (t.float() for t in pair("astronaut", "blur", size=96)[2:])
    d_same, d_blur = lpips(x_hq, x_hq), lpips(x_lq, x_hq)
    assert d_same.shape == (1,) and d_same.item() == 0
    # float32 features: swapping the images or batching them changes only the sums' rounding
    assert d_blur.item() > 0 and d_blur.item() == pytest.approx(lpips(x_hq, x_lq).item(), rel=1e-5)
    assert_close_relative(lpips(torch.cat([x_lq, x_hq]), torch.cat([x_hq, x_hq])), torch.cat([d_blur, d_same]), 1e-5)
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


# --------------------------------------------------------------------------------------------------------------- DISTS

def torchvision_vgg16_features(seed=0):
    """VGG16's ``features`` in torchvision's layout (3x3 conv + ReLU pairs, a 2x2 max pool after each stage)."""
    torch.manual_seed(seed)
    layers, c_in = [], 3
    for convs in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
        for c_out in convs:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            c_in = c_out
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def dists_weights(seed=0, alpha=None, beta=None):
    """A DISTS release-style file: alpha and beta of shape (1, 1475, 1, 1), positive like the trained ones."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda: 0.1 + 0.01 * torch.randn(1, 1475, 1, 1, generator=g)  # noqa: E731 (the release's init)
    return {"alpha": rand() if alpha is None else alpha, "beta": rand() if beta is None else beta}


@pytest.fixture(scope="module")
def dists_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("iqa")
    folder = folder_made(root, "dists")
    state = {f"features.{k}": v for k, v in torchvision_vgg16_features().state_dict().items()}
    torch.save(state | {"classifier.0.weight": torch.zeros(8, 8)}, os.path.join(folder, "vgg16-397923af.pth"))
    torch.save(dists_weights(), os.path.join(folder, "weights.pt"))
    return str(root)


def smooth_image(seed, h=48, w=40, batch=1):
    """Smooth random RGB images (batch, h, w, 3) in [0, 1], float32."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(batch, 3, h // 4, w // 4, generator=g)
    return nn.functional.interpolate(small, size=(h, w), mode="bilinear").clamp(0, 1).movedim(1, -1)


def l2_pool_reference(x):
    """L2 pooling from the paper's description: sqrt of a Hann-window (hanning(5) without its zero ends) weighted
    average of the squares, stride 2."""
    taps = torch.from_numpy(np.hanning(5)[1:-1]).float()
    window = torch.outer(taps, taps) / torch.outer(taps, taps).sum()
    c = x.shape[1]
    return (nn.functional.conv2d(x ** 2, window.expand(c, 1, 3, 3), stride=2, padding=1, groups=c) + 1e-12).sqrt()


def test_dists_reads_torchvision_vgg16_and_replaces_max_pools_by_l2_pooling(dists_dir):
    dists = m.load_learned_metric("dists", dists_dir)
    assert isinstance(dists, m.DISTS)
    assert m.DISTS.torchvision_indices() == [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
    x = smooth_image(1).movedim(-1, 1)
    expected, h = [x], (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for k, layer in enumerate(torchvision_vgg16_features()):
            if isinstance(layer, nn.MaxPool2d):
                expected.append(h)
                h = l2_pool_reference(h)
            else:
                h = layer(h)
        ours = dists.representations(x)
    assert [t.shape[1] for t in ours] == [3, 64, 128, 256, 512, 512]
    assert [t.shape[2:] for t in ours] == [(48, 40), (48, 40), (24, 20), (12, 10), (6, 5), (3, 3)]
    for a, b in zip(ours, expected):  # float32 VGG layers; the L2 pooling written another way, 13 layers deep
        assert_close_relative(a, b, 1e-5)


def test_dists_formula_by_hand_on_the_image_stage(dists_dir):
    """With weight only on the image's own channels, DISTS is 1 - the mean over RGB of the texture term (alpha) or of
    the structure term (beta) of the pixel statistics."""
    folder = os.path.join(dists_dir, "dists")
    vgg = os.path.join(folder, "vgg16-397923af.pth")
    x, y = smooth_image(2), smooth_image(3)
    a, b = x[0].double().reshape(-1, 3).numpy(), y[0].double().reshape(-1, 3).numpy()
    mx, my = a.mean(0), b.mean(0)
    vx, vy, cov = a.var(0), b.var(0), (a * b).mean(0) - mx * my
    c = 1e-6
    texture = (2 * mx * my + c) / (mx ** 2 + my ** 2 + c)
    structure = (2 * cov + c) / (vx + vy + c)
    only_image = torch.zeros(1, 1475, 1, 1)
    only_image[:, :3] = 1
    for alpha, beta, term in ((only_image, torch.zeros_like(only_image), texture),
                              (torch.zeros_like(only_image), only_image, structure)):
        path = os.path.join(folder, "hand.pt")
        torch.save({"alpha": alpha, "beta": beta}, path)
        # float64 statistics in both (DISTS lies in [0, 1])
        assert m.DISTS.from_files(vgg, path)(x, y).item() == pytest.approx(1 - term.mean(), abs=1e-9)
    # equal weights on texture and structure average the two
    torch.save({"alpha": only_image * 3, "beta": only_image}, path)
    assert m.DISTS.from_files(vgg, path)(x, y).item() == pytest.approx(
        1 - (3 * texture.sum() + structure.sum()) / 12, abs=1e-9)


def test_dists_distance_properties(dists_dir):
    dists = m.load_learned_metric("dists", dists_dir)
    x = smooth_image(4, 40, 40)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=g)
    noisy = [(x + s / 255 * noise).clamp(0, 1) for s in (5, 25, 75)]
    d = dists(torch.cat([x, *noisy]), x.expand(4, -1, -1, -1))
    assert d.shape == (4,) and d.dtype == torch.float64
    assert abs(d[0].item()) < 1e-9  # identical images
    assert 0 < d[1] < d[2] < d[3] < 1  # more noise, larger distance
    assert dists(x, noisy[1]).item() == pytest.approx(d[2].item(), rel=1e-6)  # symmetric
    assert dists(noisy[1], x).item() == pytest.approx(d[2].item(), rel=1e-6)
    with pytest.raises(ValueError, match="DISTS compares images of the same size"):
        dists(x, x[:, :20])


def test_dists_names_missing_and_foreign_files(dists_dir, tmp_path):
    with pytest.raises(m.MissingWeightsError) as err:
        m.load_learned_metric("dists", str(tmp_path))
    message = str(err.value)
    assert "vgg16-397923af.pth in " + os.path.join(str(tmp_path), "dists") in message
    assert "never downloads" in message and "ImageNet VGG16" in message
    folder = os.path.join(dists_dir, "dists")
    vgg = os.path.join(folder, "vgg16-397923af.pth")
    bad = os.path.join(folder, "bad.pt")
    torch.save({"alpha": torch.ones(1, 1475, 1, 1)}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt is not a DISTS alpha/beta file: it has no tensor 'beta'"):
        m.DISTS.from_files(vgg, bad)
    torch.save({"alpha": torch.ones(1, 1000, 1, 1), "beta": torch.ones(1, 1000, 1, 1)}, bad)
    with pytest.raises(ValueError, match=r"'alpha' has shape \(1, 1000, 1, 1\), expected \(1, 1475, 1, 1\)"):
        m.DISTS.from_files(vgg, bad)
    torch.save({"alpha": torch.zeros(1, 1475, 1, 1), "beta": torch.zeros(1, 1475, 1, 1)}, bad)
    with pytest.raises(ValueError, match="alpha and beta sum to 0, so DISTS is undefined"):
        m.DISTS.from_files(vgg, bad)
    alexnet = os.path.join(str(tmp_path), "alexnet.pth")
    torch.save(torchvision_alexnet_state(), alexnet)
    with pytest.raises(ValueError, match=r"alexnet\.pth is not a torchvision VGG16 file: 'features\.0\.weight' has "
                                         r"shape \(64, 3, 11, 11\), expected \(64, 3, 3, 3\)"):
        m.DISTS.from_files(alexnet, os.path.join(folder, "weights.pt"))


# ------------------------------------------------------------------------------------------------------------ CLIP-IQA

TINY_WORDS = ("good", "bad", "photo")


def tiny_clip_tokenizer_files(folder):
    """A CLIP BPE vocabulary that spells the prompts: characters, end-of-word characters and merges to whole words."""
    chars = sorted(set("".join(TINY_WORDS) + "."))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    merges = []
    for word in TINY_WORDS:
        for k in range(2, len(word) + 1):
            left = word[:k - 1]
            right = word[k - 1] + ("</w>" if k == len(word) else "")
            merges.append(f"{left} {right}")
            vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


def preprocessor_config(folder, **overrides):
    config = {"do_resize": True, "size": {"shortest_edge": 32}, "do_center_crop": True,
              "crop_size": {"height": 32, "width": 32}, "do_normalize": True, "resample": 3,
              "image_mean": list(m.OPENAI_CLIP_MEAN), "image_std": list(m.OPENAI_CLIP_STD)} | overrides
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(config, f)


def clip_transformers():
    """transformers, or a skip: the CLIP metrics need it, and its CLIP model and image processor need torchvision."""
    transformers = pytest.importorskip("transformers", reason="the CLIP metrics need transformers (ComfyUI installs "
                                                              "it)")
    torchvision = sys.modules.get("torchvision")
    if torchvision is not None and "stand-in" in (torchvision.__doc__ or ""):
        pytest.skip("transformers' CLIP model and image processor need torchvision, replaced here by the host tier's "
                    "stand-in; these tests run in tier 1 (without COMFYUI_PATH)")
    return transformers


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny transformers CLIPModel folder (ViT vision tower, 32x32 input) with tokenizer and preprocessing."""
    transformers = clip_transformers()
    root = tmp_path_factory.mktemp("iqa")
    folder = folder_made(root, "clipiqa")
    vocab = tiny_clip_tokenizer_files(folder)
    eos = vocab["<|endoftext|>"]
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    preprocessor_config(folder)
    return str(root)


def test_clipiqa_is_the_softmax_of_the_models_own_embeddings(clip_dir):
    from transformers import CLIPModel, CLIPTokenizer
    folder = os.path.join(clip_dir, "clipiqa")
    clipiqa = m.load_learned_metric("clipiqa", clip_dir)
    images = torch.cat([smooth_image(6, 40, 56), smooth_image(7, 40, 56), torch.zeros(1, 40, 56, 3)])
    scores = clipiqa(images, torch.rand_like(images))
    assert scores.shape == (3,) and scores.dtype == torch.float64 and ((0 < scores) & (scores < 1)).all()
    assert torch.equal(scores, clipiqa(images, images))  # no reference: the second image is ignored
    # by hand, from the model's own forward pass on the same pixels
    model = CLIPModel.from_pretrained(folder).eval()
    tokens = CLIPTokenizer.from_pretrained(folder)(["Good photo.", "Bad photo."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**tokens, pixel_values=clipiqa.preprocess(images))
    cosine = (out.image_embeds.double() @ out.text_embeds.double().T).numpy()  # both unit length
    good = np.exp(100 * cosine[:, 0]) / (np.exp(100 * cosine[:, 0]) + np.exp(100 * cosine[:, 1]))
    # probabilities in [0, 1]; logit scale 100 turns the embeddings' float32 rounding (1e-7) into up to 1e-6
    assert_close_relative(scores.numpy(), good, 1e-4)
    assert len(set(np.round(good, 6))) == 3  # the images are told apart


def test_clip_preprocessing_matches_transformers_image_processor(clip_dir):
    import transformers
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    folder = os.path.join(clip_dir, "clipiqa")
    processor = processor_class.from_pretrained(folder)
    preprocess = m.CLIPPreprocess.from_config(os.path.join(folder, "preprocessor_config.json"))
    for h, w in ((40, 56), (57, 33), (32, 32), (20, 24)):  # wide, tall (odd crop offset), exact, enlarged
        image = (smooth_image(h * w, h, w) * 255).round() / 255
        expected = processor(np.asarray((image[0] * 255).round().to(torch.uint8)), return_tensors="pt")
        assert_close_relative(preprocess(image), expected["pixel_values"], 1e-6)  # float32 resize and normalise
    assert preprocess.output_size(57, 33) == (int(32 * 57 / 33), 32)


def test_clip_preprocessing_reads_the_old_integer_config(tmp_path):
    preprocessor_config(str(tmp_path), size=224, crop_size=224, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    pre = m.CLIPPreprocess.from_config(os.path.join(str(tmp_path), "preprocessor_config.json"))
    assert (pre.shortest_edge, pre.size, pre.crop) == (224, None, (224, 224))
    out = pre(torch.full((1, 300, 448, 3), 204 / 255))
    assert out.shape == (1, 3, 224, 224)
    assert_close_relative(out, torch.full_like(out, 1.2), 1e-6)  # (0.8-0.5)/0.25 in float32


def test_clipiqa_names_missing_and_foreign_files(clip_dir, tmp_path):
    import shutil
    folder = folder_made(tmp_path, "clipiqa")
    for name in os.listdir(os.path.join(clip_dir, "clipiqa")):
        shutil.copy(os.path.join(clip_dir, "clipiqa", name), folder)
    os.rename(os.path.join(folder, "model.safetensors"), os.path.join(folder, "renamed.safetensors"))
    with pytest.raises(m.MissingWeightsError, match=r"CLIP-IQA needs the weight file model\.safetensors or "
                                                    r"pytorch_model\.bin in .*clipiqa .*openai/clip-vit-base-patch32"):
        m.load_learned_metric("clipiqa", str(tmp_path))
    os.rename(os.path.join(folder, "renamed.safetensors"), os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "merges.txt"))
    with pytest.raises(m.MissingWeightsError, match=r"merges\.txt in .*clipiqa"):
        m.load_learned_metric("clipiqa", str(tmp_path))
    shutil.copy(os.path.join(clip_dir, "clipiqa", "merges.txt"), folder)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config | {"model_type": "siglip"}, f)
    with pytest.raises(ValueError, match=r"needs a transformers CLIPModel folder \(model_type 'clip'\); this one is "
                                         r"'siglip'.*RN50"):
        m.load_learned_metric("clipiqa", str(tmp_path))


@pytest.mark.parametrize("metric", ["clipiqa", "clipi"])
def test_clip_weights_holding_code_are_refused_by_the_weights_reader_naming_the_file(clip_dir, tmp_path, metric):
    """A pytorch_model.bin (or a pickle renamed model.safetensors) holding code: the pack's refusal, naming the file,
    never torch's advice to load it with weights_only=False."""
    import shutil
    folder = folder_made(tmp_path, "clipiqa")
    for name in os.listdir(os.path.join(clip_dir, "clipiqa")):
        if name != "model.safetensors":
            shutil.copy(os.path.join(clip_dir, "clipiqa", name), folder)
    for name in ("pytorch_model.bin", "model.safetensors"):
        evil = os.path.join(folder, name)
        shutil.copy(malicious_files(str(tmp_path), {})["RunsAShellCommand-zip"], evil)
        with pytest.raises(UnsafeWeightsError) as err:
            m.load_learned_metric(metric, str(tmp_path))
        message = str(err.value)
        assert message.startswith(f"{evil}: refused to load. The file holds code") and "weights_only" not in message
        assert not os.path.exists(os.path.join(str(tmp_path), "ran"))
        os.remove(evil)


def test_clip_weights_of_another_model_name_the_file_and_the_missing_tensors(clip_dir, tmp_path):
    import shutil
    folder = folder_made(tmp_path, "clipiqa")
    for name in os.listdir(os.path.join(clip_dir, "clipiqa")):
        shutil.copy(os.path.join(clip_dir, "clipiqa", name), folder)
    weights = os.path.join(folder, "model.safetensors")
    tensors = safetensors.torch.load_file(weights)
    safetensors.torch.save_file({k: v for k, v in tensors.items() if k != "visual_projection.weight"}, weights)
    with pytest.raises(WeightsFileError, match=rf"^{re.escape(weights)}: the tensors do not fit the CLIP model .* "
                                               "missing visual_projection.weight"):
        m.load_learned_metric("clipiqa", str(tmp_path))


# -------------------------------------------------------------------------------------------------------------- CLIP-I

def eight_bit(image):
    """An IMAGE on the 8-bit grid and the same pixels as the uint8 (H, W, 3) arrays an image processor takes."""
    image = degradation.quantize(image)
    return image, [np.asarray((x * 255).round().to(torch.uint8)) for x in image]


def test_clipi_equals_a_direct_transformers_computation(tmp_path):
    """CLIP-I from a CLIP folder without tokenizer files = the cosine of transformers' get_image_features on
    transformers' preprocessing of the two images."""
    transformers = clip_transformers()
    folder = folder_made(tmp_path, "clipiqa")
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           image_size=48, patch_size=16),
        projection_dim=12)
    torch.manual_seed(1)
    transformers.CLIPModel(config).save_pretrained(folder)
    preprocessor_config(folder, size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48},
                        image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    clipi = m.load_learned_metric("clipi", str(tmp_path))
    assert isinstance(clipi, m.CLIPI)
    restored, restored_u8 = eight_bit(torch.cat([smooth_image(20, 60, 52), smooth_image(21, 60, 52),
                                                 torch.full((1, 60, 52, 3), 0.5)]))
    hq, hq_u8 = eight_bit(torch.cat([smooth_image(22, 60, 52), smooth_image(21, 60, 52) * 0.8,
                                     smooth_image(23, 60, 52)]))
    scores = clipi(restored, hq)
    assert scores.shape == (3,) and scores.dtype == torch.float64
    # directly in transformers
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_class.from_pretrained(folder)
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        features = [model.get_image_features(pixel_values=processor(u8, return_tensors="pt")["pixel_values"])
                    for u8 in (restored_u8, hq_u8)]
    features = [f if torch.is_tensor(f) else f.pooler_output for f in features]  # transformers 5 returns an output
    expected = nn.functional.cosine_similarity(features[0].double(), features[1].double(), dim=-1)
    assert_close_relative(scores, expected, 1e-5)  # cosines near 1 of float32 features
    assert expected.max() - expected.min() > 1e-3  # the pairs are told apart
    assert_close_relative(clipi(hq, restored), scores, 1e-12)  # symmetric: the same float64 cosine
    assert_close_relative(clipi(hq, hq), torch.ones(3, dtype=torch.float64), 1e-5)  # of float32 features
    with pytest.raises(ValueError, match="CLIP-I: reference batch 1 does not match image batch 3"):
        clipi(restored, hq[:1])


def test_clipi_reads_the_clipiqa_folder_and_names_missing_files(tmp_path):
    spec = m.LEARNED_METRICS["clipi"]
    assert spec.folder == "clipiqa" and not spec.no_reference and not spec.lower_is_better
    assert m.LEARNED_METRICS["lpips"].folder == "lpips"
    with pytest.raises(m.MissingWeightsError) as err:
        m.load_learned_metric("clipi", str(tmp_path))
    message = str(err.value)
    assert message.startswith("CLIP-I") and f"config.json in {os.path.join(str(tmp_path), 'clipiqa')} " in message
    assert "openai/clip-vit-base-patch32" in message and "never downloads" in message
    folder = folder_made(tmp_path, "clipiqa")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "siglip"}, f)
    with pytest.raises(m.MissingWeightsError, match=r"model\.safetensors or pytorch_model\.bin in .*clipiqa"):
        m.load_learned_metric("clipi", str(tmp_path))
    for name in ("model.safetensors", "preprocessor_config.json"):
        open(os.path.join(folder, name), "w").close()
    with pytest.raises(ValueError, match=r"CLIP-I needs a transformers CLIPModel folder \(model_type 'clip'\); this "
                                         r"one is 'siglip'"):  # the tokenizer files are not needed
        m.load_learned_metric("clipi", str(tmp_path))


def test_benchmark_cli_scores_clipi_against_the_hq_image(clip_dir, tmp_path, capsys):
    hq_dir = folder_made(tmp_path, "hq")
    for i in range(2):
        image_to_pil(smooth_image(30 + i, 48, 64)[0]).save(os.path.join(hq_dir, f"{i}.png"))
    out = str(tmp_path / "out")
    assert benchmark.main([hq_dir, out, "--preset", "blur_sr_x4", "--learned", "clipi",
                           "--iqa-dir", clip_dir]) == 0
    assert "clipi" in capsys.readouterr().out
    clipi = m.load_learned_metric("clipi", clip_dir)
    rows = read_csv(os.path.join(out, "metrics.csv"))
    assert list(rows[0]) == ["image", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "clipi"]
    for row in rows:
        restored, hq = (read_image(os.path.join(folder, row["image"]))[None]
                        for folder in (os.path.join(out, "restored"), hq_dir))
        assert float(row["clipi"]) == pytest.approx(clipi(restored, hq).item(), abs=1e-6)  # the CSV's 6 decimals
        assert float(row["clipi"]) != pytest.approx(clipi(restored, restored).item(), abs=1e-4)  # the HQ is used
    values = [float(r["clipi"]) for r in rows]
    summary = open(os.path.join(out, "summary.md"), encoding="utf-8").read()
    assert f"| clipi | {statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f} | higher |" in summary


# ---------------------------------------------------------------------------------------------------- MUSIQ and MANIQA
# The checkpoint layouts below are written from the modules whose state_dict() the released files are: pyiqa's
# pyiqa/archs/musiq_arch.py (MUSIQ, num_class=1) for musiq_koniq_ckpt-e95806b9.pth, and IIGROUP/MANIQA's
# models/maniqa.py + models/swin.py (the same as pyiqa's maniqa_arch.py + maniqa_swin.py, which loads
# ckpt_koniq10k.pt strictly) with timm's vit_base_patch8_224 as "vit." for ckpt_koniq10k.pt.

def musiq_layout(hidden=384, mlp=1152, layers=14, grid=10, scales=3, outputs=1):
    """Tensor names and shapes of pyiqa's MUSIQ checkpoint: the weight-standardised root conv (64, 7x7) and its
    GroupNorm, one bottleneck unit 64 -> 256 with a projection, the linear embedding of a 32 px patch's 8 x 8 x 256
    stem features, the Transformer encoder (hash-position table grid², scale table, class token, blocks with
    separate query/key/value/out projections) and the head."""
    layout = {"conv_root.weight": (64, 3, 7, 7), "gn_root.weight": (64,), "gn_root.bias": (64,)}
    for conv, norm, shape in (("conv1", "gn1", (64, 64, 1, 1)), ("conv2", "gn2", (64, 64, 3, 3)),
                              ("conv3", "gn3", (256, 64, 1, 1)), ("conv_proj", "gn_proj", (256, 64, 1, 1))):
        layout[f"block1.{conv}.weight"] = shape
        layout[f"block1.{norm}.weight"] = layout[f"block1.{norm}.bias"] = shape[:1]
    encoder = "transformer_encoder."
    layout |= {"embedding.weight": (hidden, 256 * 8 * 8), "embedding.bias": (hidden,),
               encoder + "posembed_input.position_emb": (1, grid * grid, hidden),
               encoder + "scaleembed_input.scale_emb": (scales, hidden), encoder + "cls": (1, 1, hidden),
               encoder + "encoder_norm.weight": (hidden,), encoder + "encoder_norm.bias": (hidden,)}
    for i in range(layers):
        block = f"{encoder}transformer.encoderblock_{i}."
        for name, (out, inp) in (("attention.query", (hidden, hidden)), ("attention.key", (hidden, hidden)),
                                 ("attention.value", (hidden, hidden)), ("attention.out", (hidden, hidden)),
                                 ("mlp.fc1", (mlp, hidden)), ("mlp.fc2", (hidden, mlp))):
            layout |= {f"{block}{name}.weight": (out, inp), f"{block}{name}.bias": (out,)}
        for norm in ("norm1", "norm2"):
            layout[f"{block}{norm}.weight"] = layout[f"{block}{norm}.bias"] = (hidden,)
    return layout | {"head.weight": (outputs, hidden), "head.bias": (outputs,)}


def relative_position_index(window):
    """Swin's relative-position lookup: window positions a = (ya, xa), b = (yb, xb) use table row
    (ya - yb + w - 1)(2w - 1) + (xa - xb + w - 1). (w², w²) int64."""
    ys, xs = (t.flatten() for t in torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    return (ys[:, None] - ys[None] + window - 1) * (2 * window - 1) + xs[:, None] - xs[None] + window - 1


def shifted_window_mask(grid, window):
    """Swin's mask for the windows of a grid x grid map rolled by -window/2: -100 between two positions of a window
    that come from different regions of the map before the roll (each axis split at grid - window and
    grid - window/2), else 0. (windows, w², w²)."""
    shift = window // 2
    index = torch.arange(grid)
    region = (index >= grid - window).long() + (index >= grid - shift).long()
    label = region[:, None] * 3 + region[None, :]
    windows = label.view(grid // window, window, grid // window, window).transpose(1, 2).reshape(-1, window ** 2)
    return torch.where(windows[:, :, None] == windows[:, None, :], 0.0, -100.0)


BUFFERS = ("relative_position_index", "attn_mask")  # Swin's fixed lookup tables, saved with the weights


def maniqa_layout(vit_dim=768, vit_mlp=3072, vit_depth=12, patch=8, grid=28, embed=768, num_tab=2, depths=(2, 2),
                  heads=4, window=4, swin_mlp=768, classes=1000):
    """Tensor names and shapes of MANIQA's checkpoint: timm's ViT (class token, position table, patch conv, blocks
    with a fused qkv, final norm and classifier), the transposed attention blocks over the grid² tokens, the 1x1
    convs, two scale Swin Transformers (an unused ``downsample`` conv; per stage a 3x3 conv and blocks with a
    relative-position table and index, and in every second block the shift mask) and the two patch heads."""
    layout = {"vit.cls_token": (1, 1, vit_dim), "vit.pos_embed": (1, 1 + grid * grid, vit_dim),
              "vit.patch_embed.proj.weight": (vit_dim, 3, patch, patch), "vit.patch_embed.proj.bias": (vit_dim,)}

    def linear(name, out, inp):
        layout[name + ".weight"], layout[name + ".bias"] = (out, inp), (out,)

    def norm(name, dim):
        layout[name + ".weight"] = layout[name + ".bias"] = (dim,)

    for i in range(vit_depth):
        block = f"vit.blocks.{i}."
        norm(block + "norm1", vit_dim)
        linear(block + "attn.qkv", 3 * vit_dim, vit_dim)
        linear(block + "attn.proj", vit_dim, vit_dim)
        norm(block + "norm2", vit_dim)
        linear(block + "mlp.fc1", vit_mlp, vit_dim)
        linear(block + "mlp.fc2", vit_dim, vit_mlp)
    norm("vit.norm", vit_dim)
    linear("vit.head", classes, vit_dim)
    for stage, (dim, conv_in) in enumerate(((embed, 4 * vit_dim), (embed // 2, embed)), start=1):
        for j in range(num_tab):
            for proj in ("c_q", "c_k", "c_v"):
                linear(f"tablock{stage}.{j}.{proj}", grid * grid, grid * grid)
        layout[f"conv{stage}.weight"], layout[f"conv{stage}.bias"] = (dim, conv_in, 1, 1), (dim,)
        swin = f"swintransformer{stage}."
        layout[swin + "downsample.weight"], layout[swin + "downsample.bias"] = (dim, dim, 3, 3), (dim,)
        for i, depth in enumerate(depths):
            layer = f"{swin}layers.{i}."
            layout[layer + "conv.weight"], layout[layer + "conv.bias"] = (dim, dim, 3, 3), (dim,)
            for j in range(depth):
                block = f"{layer}blocks.{j}."
                norm(block + "norm1", dim)
                layout[block + "attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, heads)
                layout[block + "attn.relative_position_index"] = (window ** 2, window ** 2)
                linear(block + "attn.qkv", 3 * dim, dim)
                linear(block + "attn.proj", dim, dim)
                norm(block + "norm2", dim)
                linear(block + "mlp.fc1", swin_mlp, dim)
                linear(block + "mlp.fc2", dim, swin_mlp)
                if j % 2:
                    layout[block + "attn_mask"] = ((grid // window) ** 2, window ** 2, window ** 2)
    for branch in ("fc_score", "fc_weight"):
        linear(branch + ".0", embed // 2, embed // 2)
        linear(branch + ".3", 1, embed // 2)
    return layout


def random_state(layout, seed=0):
    """Seeded tensors for a layout: norm scales near 1, small biases and embeddings, other weights ~ N(0, 1/fan_in);
    Swin's relative-position indices and shift masks get their defined values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index(math.isqrt(shape[0]))
        elif key.endswith("attn_mask"):
            window = math.isqrt(shape[1])
            state[key] = shifted_window_mask(math.isqrt(shape[0]) * window, window)
        elif re.search(r"(norm\d?|gn\w*)\.weight$", key):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias") or re.search(r"emb|cls", key):
            state[key] = 0.05 * torch.randn(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return state


def meta_state(layout):
    return {k: torch.empty(shape, device="meta", dtype=torch.int64 if k.endswith("index") else torch.float32)
            for k, shape in layout.items()}


def parameter_count(layout, skip=lambda key: False):
    """Learned values in a layout (Swin's lookup tables are not parameters)."""
    return sum(math.prod(shape) for k, shape in layout.items() if not k.endswith(BUFFERS) and not skip(k))


def pre_norm_reference_layer(dim, heads, mlp, qkv_weight, qkv_bias, block):
    """torch's own pre-norm TransformerEncoderLayer (exact GELU, LayerNorm eps 1e-6) holding a block's weights."""
    layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", layer_norm_eps=1e-6,
                                       batch_first=True, norm_first=True).eval()
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(qkv_weight)
        layer.self_attn.in_proj_bias.copy_(qkv_bias)
        for ours, theirs in ((block.norm1, layer.norm1), (block.norm2, layer.norm2), (block.mlp.fc1, layer.linear1),
                             (block.mlp.fc2, layer.linear2)):
            theirs.load_state_dict(ours.state_dict())
    return layer


@pytest.fixture(scope="module")
def musiq_dir(tmp_path_factory):
    """The real-size pyiqa MUSIQ layout with seeded weights (27 M parameters, about 110 MB)."""
    root = tmp_path_factory.mktemp("iqa")
    torch.save(random_state(musiq_layout()), os.path.join(folder_made(root, "musiq"), "musiq_koniq_ckpt-e95806b9.pth"))
    return str(root)


@pytest.fixture(scope="module")
def small_musiq_path(tmp_path_factory):
    """The same layout, narrower and shallower (the sizes come from the shapes): width 48, MLP 96, 2 layers,
    a 4 x 4 hash grid."""
    path = os.path.join(str(tmp_path_factory.mktemp("musiq")), "small.pth")
    torch.save(random_state(musiq_layout(hidden=48, mlp=96, layers=2, grid=4), seed=1), path)
    return path


def test_musiq_reads_the_real_pyiqa_layout(musiq_dir):
    musiq = m.load_learned_metric("musiq", musiq_dir)
    assert isinstance(musiq, m.MUSIQ)
    # pyiqa's MUSIQ module (hidden 384, 14 layers, 6 heads, MLP 1152, 10 x 10 grid, 3 scales) has 27,125,825
    # parameters; all of them are used
    assert parameter_count(musiq_layout()) == 27_125_825
    assert sum(p.numel() for p in musiq.parameters()) == 27_125_825
    assert (musiq.patch, len(musiq.transformer_encoder.transformer)) == (32, 14)
    image = smooth_image(8, 40, 56)
    score = musiq(image, torch.rand_like(image))
    assert score.shape == (1,) and score.dtype == torch.float64 and torch.isfinite(score).all()
    assert torch.equal(score, musiq(image, image))  # deterministic, and the reference is ignored


def test_musiq_hashed_positions_take_the_nearest_grid_cell():
    for count_h, count_w in ((1, 1), (3, 7), (10, 10), (12, 5), (40, 33)):
        positions = m.hashed_positions(10, count_h, count_w).view(count_h, count_w)
        rows = torch.tensor([i * 10 // count_h for i in range(count_h)])
        cols = torch.tensor([j * 10 // count_w for j in range(count_w)])
        assert torch.equal(positions, rows[:, None] * 10 + cols[None, :])
    assert m.hashed_positions(10, 1, 3).tolist() == [0, 3, 6]
    assert m.hashed_positions(2, 4, 1).tolist() == [0, 0, 2, 2]  # more patches than cells: neighbours share one


def test_tf_same_padding_puts_the_odd_pixel_after():
    x = torch.ones(1, 1, 100, 150)
    padded = m.tf_same_pad(x, 32, 32)
    assert padded.shape == (1, 1, 128, 160)
    assert padded[..., 14:114, 5:155].eq(1).all() and padded.sum() == x.sum()
    padded = m.tf_same_pad(torch.ones(1, 1, 32, 32), 7, 2)  # 16 outputs need 37 px: 2 before, 3 after
    assert padded.shape == (1, 1, 37, 37) and padded[0, 0, 2:34, 2:34].eq(1).all() and padded.sum() == 32 * 32


def test_musiq_tokens_come_from_three_scales(small_musiq_path):
    musiq = m.MUSIQ.from_file(small_musiq_path)
    x = smooth_image(9, 100, 150).movedim(-1, 1) * 2 - 1
    views = musiq.scales(x)
    assert [tuple(v.shape[-2:]) for v in views] == [(149, 224), (256, 384), (100, 150)]
    assert torch.equal(views[-1], x)
    counts = [musiq.scale_tokens(v, s).shape[1] for s, v in enumerate(views)]
    assert counts == [5 * 7, 8 * 12, 4 * 5]  # ceil(side / 32) patches per side
    # the scale embedding tells the scales apart: the same view as scale 0 or 1 differs by exactly that row
    table = musiq.transformer_encoder.scaleembed_input.scale_emb
    # the difference of two float32 sums holding the patch embedding too: its rounding, relative to the row
    assert_close_relative(musiq.scale_tokens(views[0], 1) - musiq.scale_tokens(views[0], 0),
                          (table[1] - table[0]).expand(1, 35, -1), 1e-4)


def test_musiq_block_is_a_pre_norm_transformer_layer(small_musiq_path):
    musiq = m.MUSIQ.from_file(small_musiq_path)
    block = musiq.transformer_encoder.transformer["encoderblock_1"]
    attention = block.attention
    reference = pre_norm_reference_layer(
        48, 6, 96, torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]),
        torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]), block)
    with torch.no_grad():
        reference.self_attn.out_proj.load_state_dict(attention.out.state_dict())
        x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(0))
        assert_close_relative(block(x), reference(x), 1e-5)  # float32 attention by hand vs torch's kernel


def test_musiq_scores_are_per_image_and_unclamped(small_musiq_path):
    musiq = m.MUSIQ.from_file(small_musiq_path)
    images = torch.cat([smooth_image(10, 48, 80), smooth_image(11, 48, 80)])
    scores = musiq(images)
    # batched float32 kernels round differently
    assert_close_relative(scores, torch.cat([musiq(images[:1]), musiq(images[1:])]), 1e-5)
    assert abs(scores[0] - scores[1]) > 1e-4 * scores.abs().max()  # the images are told apart
    with torch.no_grad():
        musiq.head.bias += 100.0  # the score is the head's raw regression output
    assert_close_relative(musiq(images), scores + 100.0, 1e-6)  # a float32 sum near 100
    # weight standardisation: scaling a conv's filters or shifting them by a constant changes nothing
    with torch.no_grad():
        musiq.conv_root.weight.mul_(3.0).add_(0.5)
        musiq.block1.conv2.weight.mul_(0.2)
    assert_close_relative(musiq(images), scores + 100.0, 1e-5)  # the rescaled layers add their float32 rounding


def test_musiq_names_missing_and_foreign_files(small_musiq_path, tmp_path):
    with pytest.raises(m.MissingWeightsError) as err:
        m.load_learned_metric("musiq", str(tmp_path))
    assert f"musiq_koniq_ckpt-e95806b9.pth in {os.path.join(str(tmp_path), 'musiq')}" in str(err.value)
    assert "never downloads" in str(err.value) and "chaofengc/IQA-PyTorch" in str(err.value)
    path = str(tmp_path / "other.pth")
    torch.save(random_state(musiq_layout(hidden=48, mlp=96, layers=2, grid=4, outputs=10)), path)  # like the AVA one
    with pytest.raises(ValueError, match=r"other\.pth: the tensors do not fit the pyiqa MUSIQ \(KonIQ-10k\) network: wrong "
                                         r"shape 2: head\.weight \[10, 48\] \(expected \[1, 48\]\)"):
        m.MUSIQ.from_file(path)
    state = torch.load(small_musiq_path, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "block1.gn3.bias"} | {"extra": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"missing 1: block1\.gn3\.bias; unexpected 1: extra"):
        m.MUSIQ.from_file(path)


# -------------------------------------------------------------------------------------------------------------- MANIQA

SMALL_MANIQA = dict(vit_dim=24, vit_mlp=48, patch=4, grid=8, embed=16, heads=2, window=4, swin_mlp=16, classes=10)


@pytest.fixture(scope="module")
def maniqa_dir(tmp_path_factory):
    """MANIQA's layout at a small size (ViT width 24 with 12 blocks, 4 px patches on an 8 x 8 grid = 32 px crops,
    16 channels, 2 Swin heads in 4 x 4 windows) with seeded weights."""
    root = tmp_path_factory.mktemp("iqa")
    state = random_state(maniqa_layout(**SMALL_MANIQA))
    for key in ("fc_score.0.weight", "fc_score.3.weight", "fc_weight.0.weight", "fc_weight.3.weight"):
        state[key] *= 0.2  # keeps the sigmoid weights off 0 and 1 for random features of this size
    state["fc_score.3.bias"] += 0.5  # and most patch scores above the final ReLU's 0
    torch.save(state, os.path.join(folder_made(root, "maniqa"), "ckpt_koniq10k.pt"))
    return str(root)


def small_maniqa(maniqa_dir, **kwargs):
    return m.MANIQA.from_file(os.path.join(maniqa_dir, "maniqa", "ckpt_koniq10k.pt"), **kwargs)


def test_maniqa_reads_the_real_layout():
    layout = maniqa_layout()
    model = m.MANIQA.from_state_dict(meta_state(layout), "ckpt_koniq10k.pt")
    # 135,747,530 parameters in the checkpoint (as pyiqa's MANIQA module), 86,576,872 of them timm's ViT-B/8
    assert parameter_count(layout) == 135_747_530
    assert parameter_count(layout, skip=lambda k: not k.startswith("vit.")) == 86_576_872
    unused = {k for k in layout if m.MANIQA.unused(k)}
    assert {re.sub(r"\.(weight|bias)$", "", k) for k in unused if not k.startswith("vit.blocks.")} == {
        "vit.norm", "vit.head", "swintransformer1.downsample", "swintransformer2.downsample"}
    assert {int(k.split(".")[2]) for k in unused if k.startswith("vit.blocks.")} == {10, 11}
    assert sum(p.numel() for p in model.parameters()) == parameter_count(layout, skip=m.MANIQA.unused)
    assert model.crop == 224 and len(model.vit.blocks) == 10 and len(model.tablock1) == 2
    assert model.conv1.in_channels == 3072 and len(model.swintransformer2.layers) == 2
    block = model.swintransformer1.layers[0].blocks[1]
    assert (block.window, block.shift, block.attn.heads) == (4, 2, 4) and model.swintransformer1.scale == 0.8


def test_maniqa_vit_block_is_a_pre_norm_transformer_layer(maniqa_dir):
    block = small_maniqa(maniqa_dir).vit.blocks[3]
    reference = pre_norm_reference_layer(24, 12, 48, block.attn.qkv.weight, block.attn.qkv.bias, block)
    with torch.no_grad():
        reference.self_attn.out_proj.load_state_dict(block.attn.proj.state_dict())
        x = torch.randn(2, 65, 24, generator=torch.Generator().manual_seed(0))
        assert_close_relative(block(x), reference(x), 1e-5)  # float32 attention by hand vs torch's kernel


def swin_block_reference(block, x, window, shift, heads):
    """A Swin block on one (H, W, C) map, written from its definition window by window and head by head."""
    p = {k: v.double() for k, v in block.state_dict().items()}
    h, w, c = x.shape
    norm = lambda t, n: nn.functional.layer_norm(t, (c,), p[f"{n}.weight"], p[f"{n}.bias"], eps=1e-5)  # noqa: E731
    y = torch.roll(norm(x, "norm1"), (-shift, -shift), (0, 1))
    bias = p["attn.relative_position_bias_table"][relative_position_index(window)]  # (w², w², heads)
    mask = shifted_window_mask(h, window).double() if shift else None
    out = torch.zeros_like(y)
    d = c // heads
    corners = [(top, left) for top in range(0, h, window) for left in range(0, w, window)]  # row by row
    for i, (top, left) in enumerate(corners):
        tokens = y[top:top + window, left:left + window].reshape(-1, c)
        q, k, v = (tokens @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]).split(c, dim=-1)
        mixed = []
        for head in range(heads):
            part = slice(head * d, (head + 1) * d)
            logits = q[:, part] @ k[:, part].T / math.sqrt(d) + bias[..., head]
            if shift:
                logits = logits + mask[i]
            mixed.append(torch.softmax(logits, dim=-1) @ v[:, part])
        window_out = torch.cat(mixed, dim=-1) @ p["attn.proj.weight"].T + p["attn.proj.bias"]
        out[top:top + window, left:left + window] = window_out.view(window, window, c)
    x = x + torch.roll(out, (shift, shift), (0, 1))
    hidden = nn.functional.gelu(norm(x, "norm2") @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"])
    return x + hidden @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]


def test_maniqa_swin_blocks_follow_the_shifted_window_definition(maniqa_dir):
    maniqa = small_maniqa(maniqa_dir)
    x = torch.randn(2, 8, 8, 16, generator=torch.Generator().manual_seed(1))
    for index, shift in ((0, 0), (1, 2)):
        block = maniqa.swintransformer1.layers[1].blocks[index]
        assert block.shift == shift
        with torch.no_grad():
            ours = block(x)
        for b in range(2):
            # float32 against a float64 reference: float32 rounding through the block
            assert_close_relative(ours[b].double(), swin_block_reference(block, x[b].double(), 4, shift, 2), 1e-5)
    small = maniqa.swintransformer2.layers[0].blocks[1]
    with torch.no_grad():
        assert_close_relative(small(x[..., :8])[0].double(),
                              swin_block_reference(small, x[0, ..., :8].double(), 4, 2, 2), 1e-5)  # as above


def test_maniqa_transposed_attention_keeps_the_released_reshape(maniqa_dir):
    tab = small_maniqa(maniqa_dir).tablock1[1]
    x = torch.randn(2, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q, k, v = tab.c_q(x), tab.c_k(x), tab.c_v(x)
        mixed = torch.softmax(q @ k.transpose(1, 2) / 8, dim=-1) @ v  # (B, C, N): attention between channels
        # the released code reads the memory of mixed.transpose(1, 2), a (B, N, C) array, as (B, C, N):
        # element (c, n) is flat position f = c * N + n of that array, i.e. mixed[f % C, f // C]
        flat = torch.arange(96 * 64).view(96, 64)
        expected = mixed[:, flat % 96, flat // 96] + x
        ours = tab(x)
    assert_close_relative(ours, expected, 1e-5)  # float32 attention by hand vs torch's kernel
    assert relative_error(ours, mixed + x) > 1e-3


def test_maniqa_crop_score_is_the_weighted_mean_of_patch_scores(maniqa_dir):
    maniqa = small_maniqa(maniqa_dir, num_crops=3)
    crops = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        score, weight = maniqa.patch_scores(crops)
        crop_scores = maniqa.crop_scores(crops)
    assert score.shape == weight.shape == (3, 64) and (score >= 0).all() and ((weight > 0) & (weight < 1)).all()
    assert (score > 0).float().mean() > 0.5  # the fixture's heads give mostly positive patch scores
    assert_close_relative(crop_scores, (weight * score).sum(1) / weight.sum(1), 1e-6)  # float32 weighted mean
    assert ((score.min(1).values <= crop_scores) & (crop_scores <= score.max(1).values)).all()
    assert score.std() > 0 and crop_scores.std() > 0
    # identical patch scores give that score for any image, whatever the weights
    with torch.no_grad():
        maniqa.fc_score[3].weight.zero_()
        maniqa.fc_score[3].bias.fill_(0.7)
    images = torch.cat([smooth_image(12, 40, 48), torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(4))])
    assert_close_relative(maniqa(images), torch.full((2,), 0.7, dtype=torch.float64), 1e-6)  # 0.7 in float32


def test_maniqa_averages_seeded_random_crops(maniqa_dir):
    maniqa = small_maniqa(maniqa_dir, num_crops=5, seed=3)
    images = torch.cat([smooth_image(13, 40, 52), smooth_image(14, 40, 52)])
    positions = maniqa.crop_positions(40, 52)
    assert len(positions) == 5 and len(set(positions)) > 1
    assert all(0 <= top <= 8 and 0 <= left <= 20 for top, left in positions)
    x = images.movedim(-1, 1) * 2 - 1
    with torch.no_grad():
        by_hand = torch.stack([maniqa.crop_scores(x[..., top:top + 32, left:left + 32])
                               for top, left in positions]).mean(0)
    scores = maniqa(images)
    assert scores.shape == (2,) and scores.dtype == torch.float64
    assert_close_relative(scores, by_hand.double(), 1e-6)  # the same float32 crops, averaged in another order
    assert torch.equal(scores, maniqa(images, torch.zeros_like(images)))  # deterministic; the reference is ignored
    # batched float32 kernels round differently
    assert_close_relative(scores, torch.cat([maniqa(images[:1]), maniqa(images[1:])]), 1e-4)
    other = small_maniqa(maniqa_dir, num_crops=5, seed=4)
    assert other.crop_positions(40, 52) != positions and not torch.equal(other(images), scores)
    default = m.load_learned_metric("maniqa", maniqa_dir)
    assert (default.num_crops, default.seed) == (20, 0)
    # an image smaller than a crop is enlarged so its shorter side fits one crop
    assert maniqa.prepare(smooth_image(15, 20, 28)).shape == (1, 3, 32, 45)
    assert all(top == 0 for top, _ in maniqa.crop_positions(32, 45))
    assert torch.isfinite(maniqa(smooth_image(15, 20, 28))).all()
    with pytest.raises(ValueError, match="at least one crop"):
        small_maniqa(maniqa_dir, num_crops=0)


def test_maniqa_names_missing_and_foreign_files(maniqa_dir, small_musiq_path, tmp_path):
    with pytest.raises(m.MissingWeightsError) as err:
        m.load_learned_metric("maniqa", str(tmp_path))
    message = str(err.value)
    assert f"ckpt_koniq10k.pt in {os.path.join(str(tmp_path), 'maniqa')}" in message
    assert "ViT-B/8" in message and "IIGROUP/MANIQA" in message and "never downloads" in message
    path = str(tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"small\.pth is not a MANIQA file: it has no tensor 'vit\.pos_embed'"):
        m.MANIQA.from_file(small_musiq_path)
    state = torch.load(os.path.join(maniqa_dir, "maniqa", "ckpt_koniq10k.pt"), weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("vit.blocks.9.")}, path)
    with pytest.raises(ValueError, match=r"ckpt\.pt: the tensors do not fit the MANIQA network: missing 12: "
                                         r"vit\.blocks\.9\.norm1\.weight"):
        m.MANIQA.from_file(path)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # saved from a DataParallel wrapper
    image = smooth_image(16, 36, 36)
    assert torch.equal(m.MANIQA.from_file(path, num_crops=2)(image), small_maniqa(maniqa_dir, num_crops=2)(image))
