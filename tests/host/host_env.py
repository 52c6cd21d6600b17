"""ComfyUI imported in-process on the CPU (for host tests and benchmarks): call ``setup(comfyui_path)`` before
importing anything from ``comfy``. ComfyUI's folders (models, input, output, temp, user) are put in a temporary
base directory, so the ComfyUI tree is only read."""
import atexit
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHVISION_STUB = os.path.join(HERE, "torchvision_stub")


def uses_torchvision_stub() -> bool:
    """Whether this process imports the stand-in (a server subprocess then needs it on PYTHONPATH too)."""
    try:
        import torchvision
    except Exception:
        return False
    return os.path.abspath(torchvision.__file__).startswith(TORCHVISION_STUB)


def needs_torchvision_stub() -> bool:
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:
        return True


def setup(comfyui_path: str) -> bool:
    """Put ComfyUI (and, where no usable torchvision exists, the stand-in) on sys.path and select the CPU.
    Returns whether the torchvision stand-in is used (a server subprocess needs it on PYTHONPATH too)."""
    stub = needs_torchvision_stub()
    sys.path.insert(0, os.path.abspath(comfyui_path))
    sys.path.insert(0, HERE)
    if stub:
        # transformers decides once whether torchvision is installed: asked before the stand-in is findable, it
        # finds none and uses its PIL image processors (torchvision_stub/sitecustomize.py does this in servers)
        import transformers.utils
        transformers.utils.is_torchvision_available()
        sys.path.insert(0, TORCHVISION_STUB)
    from comfy.cli_args import args
    args.cpu = True
    args.base_directory = tempfile.mkdtemp(prefix="supir-host-base-")
    atexit.register(shutil.rmtree, args.base_directory, ignore_errors=True)
    import comfy.model_management  # noqa: F401  (device detection must follow args.cpu)
    return stub
