"""Test-only stand-in for torchvision, which has no CPU wheel matching the local torch here. ComfyUI imports it
at start-up for Stable Cascade / Cosmos / ACE nodes only; any use raises. transformers is told there is no
torchvision (see ../sitecustomize.py)."""
from . import models, transforms  # noqa: F401


def __getattr__(name):
    raise ImportError(f"torchvision.{name} is not available in this test environment")
