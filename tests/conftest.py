"""Test set-up shared by both tiers.

The repository is imported as the package ``supir_restore`` (as ComfyUI imports a pack by its folder) without
running its ``__init__``, so tier-1 tests import ``supir_restore.supir.*`` with no host. Tier-2 tests live in
``tests/host`` and run when ``COMFYUI_PATH`` points at a ComfyUI checkout; they are skipped otherwise.
"""
import os
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "supir_restore"

if PACKAGE not in sys.modules:
    pkg = types.ModuleType(PACKAGE)
    pkg.__path__ = [REPO]
    sys.modules[PACKAGE] = pkg

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
HOST_SKIP_REASON = ("tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI source tree "
                    "(0.8.0 to 0.12.1; see README, 'Tests')")


def pytest_configure(config):
    config.addinivalue_line("markers", "server: a host test that runs a live ComfyUI server (set by fixture use)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "comfy_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason=HOST_SKIP_REASON)
    for item in items:
        if "host" in item.keywords:
            item.add_marker(skip)
