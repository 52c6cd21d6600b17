"""Headless client: runs an API-format workflow (a shipped one by name, or any file) on a ComfyUI server, one job
per input image, and downloads the results. The code is the package ``workflows/headless``.

    python -m workflows.client supir_restore_basic --input photos/ --output restored/ --seed 7
    python workflows/client.py my_workflow_api.json --input photo.png --set 8.steps=30
"""
import sys
from pathlib import Path

if __package__:
    from .headless.cli import main
else:  # run as a script (python workflows/client.py): the repository folder makes the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from workflows.headless.cli import main

if __name__ == "__main__":
    sys.exit(main())
