from . import functional  # noqa: F401


def __getattr__(name):
    raise ImportError(f"torchvision.transforms.{name} is not available in this test environment")
