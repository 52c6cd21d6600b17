"""Metrics: PSNR/SSIM agree with scikit-image on its sample photographs under the SR-paper conventions; learned
metrics load only local weight files and name any missing one."""
import json
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


@pytest.mark.parametrize("name, needs", [("musiq", "koniq_ckpt.npz"), ("maniqa", "ckpt_koniq10k.pt")])
def test_listed_but_unimplemented_metrics_say_so(name, needs, tmp_path):
    with pytest.raises(NotImplementedError, match=rf"not implemented in this version of the pack \(it would read "
                                                  rf"{needs} from .*{name}\); implemented learned metrics: lpips, "
                                                  r"dists, clipiqa\."):
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
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny transformers CLIPModel folder (ViT vision tower, 32x32 input) with tokenizer and preprocessing."""
    transformers = pytest.importorskip("transformers", reason="CLIP-IQA needs transformers (ComfyUI installs it)")
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
    np.testing.assert_allclose(scores.numpy(), good, rtol=0, atol=1e-5)
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
        torch.testing.assert_close(preprocess(image), expected["pixel_values"], rtol=0, atol=1e-6)
    assert preprocess.output_size(57, 33) == (int(32 * 57 / 33), 32)


def test_clip_preprocessing_reads_the_old_integer_config(tmp_path):
    preprocessor_config(str(tmp_path), size=224, crop_size=224, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    pre = m.CLIPPreprocess.from_config(os.path.join(str(tmp_path), "preprocessor_config.json"))
    assert (pre.shortest_edge, pre.size, pre.crop) == (224, None, (224, 224))
    out = pre(torch.full((1, 300, 448, 3), 204 / 255))
    assert out.shape == (1, 3, 224, 224) and torch.allclose(out, torch.tensor(1.2), atol=1e-6)  # (0.8-0.5)/0.25


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
