"""Tier 1: the layering. Only the host layers (``supir/host/``, ``lora_train/host/``, ``nodes/``) may import
ComfyUI; every other module of the pack imports, and is tested, without it."""
import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "supir_restore"  # the package name tests/conftest.py gives the repository
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "latent_preview",
                 "node_helpers", "execution", "server"}
HOST_LAYERS = ("supir/host/", "lora_train/host/")
LIBRARIES = ("supir", "lora_train")


def comfy_free_files() -> list[str]:
    files = []
    for library in LIBRARIES:
        for folder, _, names in os.walk(os.path.join(REPO, library)):
            rel = os.path.relpath(folder, REPO).replace(os.sep, "/") + "/"
            if not rel.startswith(HOST_LAYERS):
                files += [rel + n for n in sorted(names) if n.endswith(".py")]
    return files


def module_name(path: str) -> str:
    parts = path[:-len(".py")].split("/")
    return ".".join([PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def test_the_comfy_free_layers_are_the_libraries_minus_their_host_packages():
    files = comfy_free_files()
    assert "supir/model/control.py" in files and "supir/tiling/exact_vae.py" in files
    assert not any(f.startswith(HOST_LAYERS) for f in files) and len(files) > 20


def test_no_comfy_free_module_names_comfyui_anywhere_in_its_code():
    offenders = []
    for path in comfy_free_files():
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            offenders += [f"{path}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in COMFY_MODULES]
    assert not offenders, "\n".join(offenders)


def test_every_comfy_free_module_imports_with_comfyui_unavailable():
    """In a fresh interpreter where importing any ComfyUI module fails, as on a machine without ComfyUI."""
    modules = [module_name(p) for p in comfy_free_files()]
    script = f"""
import importlib, importlib.abc, sys, types
BLOCKED = {sorted(COMFY_MODULES)!r}

class NoComfy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is ComfyUI")

sys.meta_path.insert(0, NoComfy())
package = types.ModuleType({PACKAGE!r})
package.__path__ = [{REPO!r}]
sys.modules[{PACKAGE!r}] = package
for name in {modules!r}:
    importlib.import_module(name)
print(len({modules!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(len(modules))


def test_only_the_batch_command_imports_ray():
    """Ray is optional (requirements-batch.txt): the node pack, the libraries and the client never import it, and
    the batch command only inside the function that runs it (so --help and bad arguments work without Ray)."""
    offenders = []
    for folder, _, names in os.walk(REPO):
        if any(part.startswith(".") for part in os.path.relpath(folder, REPO).split(os.sep)) or "tests" in folder:
            continue
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            rel = os.path.relpath(path, REPO).replace(os.sep, "/")
            for node in ast.walk(tree):
                names_ = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                if any(n.split(".")[0] == "ray" for n in names_):
                    offenders.append((rel, node.col_offset))
    assert [rel for rel, indent in offenders if not (rel == "workflows/batch/cli.py" and indent > 0)] == []
    assert ("workflows/batch/cli.py", 8) in offenders, "the batch command imports Ray inside a function"


def test_the_batch_command_names_the_install_command_when_ray_is_missing(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")
    script = """
import importlib.abc, sys
class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError("No module named 'ray'")
sys.meta_path.insert(0, NoRay())
from workflows.batch.cli import main
sys.exit(main(sys.argv[1:]))
"""
    result = subprocess.run([sys.executable, "-c", script, "supir_restore_basic", "--input", str(tmp_path),
                             "--output", str(tmp_path / "out"), "--servers", "http://127.0.0.1:9"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "the batch command needs Ray" in result.stderr
    assert "pip install -r requirements-batch.txt" in result.stderr
