"""Runs when a test server starts with the stand-in on PYTHONPATH. transformers checks once, at import, whether
torchvision is installed, and with the stand-in findable it would say yes and import torchvision's transforms. So
transformers looks first, while the stand-in is off the path: it finds no torchvision (the truth) and uses its PIL
image processors, as :func:`host_env.setup` arranges for in-process tests."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_at = next(i for i, p in enumerate(sys.path) if os.path.abspath(p or ".") == HERE)
del sys.path[_at]
try:
    import transformers.utils

    transformers.utils.is_torchvision_available()
finally:
    sys.path.insert(_at, HERE)
