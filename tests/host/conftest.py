"""Tier-2 (host) fixtures: ComfyUI imported in-process on the CPU, tiny SDXL-layout models with seeded weights,
tiny SUPIR files in the official layout, and a real ComfyUI server on 127.0.0.1 with this pack loaded."""
import os
import sys

import pytest
import torch

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from host_env import setup  # noqa: E402

if COMFYUI_PATH:
    setup(COMFYUI_PATH)
from live_server import ComfyServer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vae():
    from tiny_models import tiny_vae as build
    return build(seed=3)


@pytest.fixture()
def tiny_model():
    from tiny_models import tiny_sdxl
    return tiny_sdxl(seed=0)


@pytest.fixture(scope="session")
def tiny_supir_sd(tiny_vae):
    from tiny_models import supir_state_dict
    return supir_state_dict(tiny_vae)


@pytest.fixture(scope="session")
def tiny_supir_file(tmp_path_factory, tiny_supir_sd):
    path = tmp_path_factory.mktemp("supir") / "tiny_supir.ckpt"
    torch.save({"state_dict": tiny_supir_sd}, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_supir(tiny_supir_file):
    from supir_restore.supir.host.supir_loader import load_supir
    return load_supir(tiny_supir_file, "fp32")


@pytest.fixture(scope="session")
def tiny_stablesr_file(tmp_path_factory):
    from stablesr_helpers import stablesr_file
    return stablesr_file(tmp_path_factory.mktemp("stablesr") / "tiny_stablesr.ckpt")


@pytest.fixture(scope="session")
def stablesr(tiny_stablesr_file):
    from supir_restore.supir.host.stablesr import load_stablesr
    return load_stablesr(tiny_stablesr_file, "fp32")


def write_tiny_checkpoint(path, model_patcher, vae, clip):
    """An SGM-layout SDXL checkpoint (UNet, VAE and both text encoders) in fp16, as CheckpointLoaderSimple reads."""
    import safetensors.torch
    from supir_restore.supir.host.lora_stack import checkpoint_state_dict
    sd = checkpoint_state_dict(model_patcher, clip, vae)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in sd.items()}, str(path))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """ComfyUI's main.py --cpu with this pack and the test shim loaded; stopped by PID at the end."""
    import safetensors.torch
    from stablesr_helpers import cfw_state_dict, stablesr_file
    from tiny_models import full_vae, supir_state_dict, tiny_clip, tiny_sd21_clip, tiny_sdxl
    base = tmp_path_factory.mktemp("comfy_server")
    for d in ("custom_nodes", "models/checkpoints", "models/supir", "models/loras", "models/model_patches"):
        os.makedirs(base / d, exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / "supir_restore")
    os.symlink(os.path.join(HERE, "shim_pack"), base / "custom_nodes" / "supir_test_shim")
    vae = full_vae(seed=5)
    write_tiny_checkpoint(base / "models/checkpoints/tiny_sdxl.safetensors", tiny_sdxl(seed=0), vae, tiny_clip(seed=2))
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in supir_state_dict(vae).items()},
                                str(base / "models/supir/tiny_supir_fp16.safetensors"))
    with open(base / "models/supir/corrupt.safetensors", "wb") as f:
        f.write(b"\x00" * 100)
    # models/model_patches, shared with ComfyUI's own loader: a SUPIR file with the prefix-less keys of a pruned
    # file, and a model patch that is not SUPIR (not listed by SUPIR Load Model)
    pruned = {k.removeprefix("model.").removeprefix("diffusion_model."): v.half().contiguous()
              for k, v in supir_state_dict(vae, with_mask=False).items()}
    safetensors.torch.save_file(pruned, str(base / "models/model_patches/supir_pruned.safetensors"))
    safetensors.torch.save_file({"blocks.0.weight": torch.zeros(2, 2)},
                                str(base / "models/model_patches/other_patch.safetensors"))
    # a StableSR checkpoint with its SD 2.1 parts, read by Load Checkpoint and by StableSR Load Model alike
    stablesr_file(base / "models/checkpoints/tiny_stablesr.ckpt", vae=vae, clip=tiny_sd21_clip(seed=2))
    os.makedirs(base / "models/stablesr", exist_ok=True)
    torch.save({"state_dict": cfw_state_dict(vae)}, base / "models/stablesr/tiny_cfw.ckpt")
    # tiny vision-language models in both caption folders (models/LLM as other packs use it)
    from caption_models import write_tiny_vlm
    write_tiny_vlm("llava", base / "models/vlm/tiny_llava", seed=1)
    write_tiny_vlm("idefics3", base / "models/LLM/tiny_smolvlm", seed=1)
    server = ComfyServer(COMFYUI_PATH, str(base))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_clip():
    from tiny_models import tiny_clip as build
    return build(seed=2)


@pytest.fixture()
def comfy_dirs(tmp_path, monkeypatch):
    """ComfyUI's input, output and models directories pointed at a temporary folder."""
    import folder_paths
    for d in ("input", "output", "models"):
        (tmp_path / d).mkdir()
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    return tmp_path


@pytest.fixture()
def lora_folder(tmp_path, monkeypatch):
    """ComfyUI's models/loras and output folders pointed at tmp_path/loras and tmp_path/output."""
    import folder_paths
    (tmp_path / "loras").mkdir()
    (tmp_path / "output").mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(tmp_path / "loras")], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    return tmp_path
