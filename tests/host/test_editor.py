"""Tier 2, in the editor as users see it: every shipped workflow opened in ComfyUI's own frontend (the one its
requirements install) in a headless Chromium driven by Playwright, from the template browser's card and from the
JSON file. Each opens with no dialog and no missing node or console error of the pack's; every widget shows the
API twin's value (and the frontend's ``graphToPrompt()`` gives the API twin); no two node bodies overlap; pressing
Run with the tiny models substituted (as in test_workflows.py) saves every output the API workflow saves. Saved
workflows in the layout before the seeds' control widget still load with their values.

A screenshot of each workflow as it opens is saved in ``SUPIR_SCREENSHOTS`` (default: ``supir_editor_screenshots``
in the system's temporary folder). Needs Debian's Chromium (``/usr/bin/chromium``, or ``SUPIR_CHROMIUM``) and the
``playwright`` package (no Playwright browser download): skipped with that reason when either is missing, and
failed instead under CI (``CI=true``)."""
import copy
import json
import os
import shutil
import tempfile

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

from supir_restore.workflows.build import (VIEW, VIEW_ORIGIN, WINDOW, has_control_widget, input_names,  # noqa: E402
                                           input_specs, is_widget, paths, template_texts)
from supir_restore.workflows.specs import SPECS  # noqa: E402
from test_workflows import check_saved_outputs, load, object_info, tiny_run  # noqa: E402,F401

CHROMIUM = os.environ.get("SUPIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = dict(zip(("width", "height"), WINDOW))  # the window the workflows' opening views are made for
SAVING_NODES = ("SaveImage", "SUPIRBenchmarkReport", "SUPIRTrainLoRA")
SCREENSHOTS = os.environ.get("SUPIR_SCREENSHOTS", os.path.join(tempfile.gettempdir(), "supir_editor_screenshots"))
CATEGORY = template_texts()["templateWorkflows"]["category"]["supir_restore"]  # the pack's name in the browser
NODES_WITH_OLD_LAYOUT = ("SUPIRCaptionVLM", "SUPIRTrainLoRA")  # their seed's control widget changed
LOAD_TIMEOUT_MS = 60_000


def browser_unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the editor tests need the playwright package (pip install playwright; no browser download)"
    if not shutil.which(CHROMIUM):
        return f"the editor tests need Chromium at {CHROMIUM} (apt-get install chromium, or set SUPIR_CHROMIUM)"
    return None


class Editor:
    """One page of ComfyUI's frontend, with the console errors and failed requests seen since the last check."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console: {m.text} ({m.location.get('url', '')})"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        page.goto(url)
        page.wait_for_function("window.app?.graph && window.app.extensionManager?.command", timeout=LOAD_TIMEOUT_MS)
        # the minimap, on by default in a wide window, would cover the screenshots' lower right corner
        self.evaluate("() => window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")

    def our_problems(self) -> list[str]:
        """Console errors, page errors and failed requests that concern this pack (its extension, templates,
        thumbnails or nodes); the frontend's own (a missing user.css, no network) are not ours to fix."""
        return [p for p in self.problems if any(word in p.lower() for word in ("supir", "stablesr"))]

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def wait_for_graph(self, ui: dict) -> None:
        self.page.wait_for_function("n => window.app.graph.nodes.length === n", arg=len(ui["nodes"]),
                                    timeout=LOAD_TIMEOUT_MS)
        self.page.wait_for_timeout(500)  # the canvas draws on the next frames

    def open_template(self, name: str, ui: dict) -> None:
        """Templates in the side bar → the pack's category → the workflow's card, as a user opens it."""
        self.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
        dialog = self.page.get_by_role("dialog")
        dialog.get_by_role("button", name=CATEGORY, exact=True).click()
        card = dialog.locator(f"[data-testid='template-workflow-{name}']")
        # the card list re-renders while the category's thumbnails load, and a click on a card being replaced is
        # lost on a busy machine: click again (at most three times) until the dialog closes on the loaded workflow
        for attempt in range(3):
            card.wait_for(state="visible", timeout=LOAD_TIMEOUT_MS)
            card.click()
            try:
                self.page.get_by_role("dialog").wait_for(state="detached", timeout=LOAD_TIMEOUT_MS // 3)
                break
            except PlaywrightTimeoutError:
                if attempt == 2:
                    raise
        self.wait_for_graph(ui)

    def open_file(self, path: str, ui: dict) -> None:
        """Workflow → Open: the file chosen in the editor's file picker."""
        self.clear()
        with self.page.expect_file_chooser() as chooser:
            self.evaluate("() => window.app.extensionManager.command.execute('Comfy.OpenWorkflow')")
        chooser.value.set_files(path)
        self.wait_for_graph(ui)

    def clear(self) -> None:
        self.evaluate("() => window.app.graph.clear()")

    def dialogs(self) -> list[str]:
        return self.evaluate("() => Array.from(document.querySelectorAll('[role=dialog]')).map(d => d.innerText)")

    def missing_nodes(self) -> list[str]:
        return self.evaluate("() => window.app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type] "
                             "|| n.has_errors).map(n => n.type)")

    def widgets(self) -> dict[str, dict]:
        """Node id -> widget name -> value, as the editor shows them."""
        return self.evaluate("() => Object.fromEntries(window.app.graph.nodes.map(n => [String(n.id), "
                             "Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value]))]))")

    def prompt(self) -> dict:
        return self.evaluate("async () => (await window.app.graphToPrompt()).output")

    def node_bodies(self) -> list[tuple[int, str, str, list[float], list[float]]]:
        """(id, title, type, [x, y, width, height] with the title bar, [width, height] below it) of every node, in
        graph units."""
        return self.evaluate("() => window.app.graph.nodes.map(n => [n.id, n.title, n.type, "
                             "Array.from(n.boundingRect), Array.from(n.size)])")

    def view(self) -> tuple[float, list[float]]:
        return self.evaluate("() => [window.app.canvas.ds.scale, Array.from(window.app.canvas.ds.offset)]")

    def set_widgets(self, values: dict[str, dict]) -> None:
        self.evaluate("""values => { for (const [id, inputs] of Object.entries(values)) {
            const node = window.app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(inputs)) node.widgets.find(w => w.name === name).value = value;
        } }""", values)

    def run(self) -> str:
        """Press Run; the id of the prompt it queued."""
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as sent:
            self.page.locator("[data-testid='queue-button']").click()
        assert sent.value.status == 200, sent.value.text()
        return sent.value.json()["prompt_id"]


@pytest.fixture(scope="module")
def editor(comfy_server, object_info, tmp_path_factory):  # noqa: F811 (object_info: the files the runs read)
    reason = browser_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the editor tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    os.makedirs(SCREENSHOTS, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport=VIEWPORT)
        try:
            yield Editor(context.pages[0] if context.pages else context.new_page(), comfy_server.url)
        finally:
            context.close()


def assert_shows(editor: Editor, name: str, ui: dict, api: dict) -> None:
    """What every opening must show: no dialog, every node known, no error of ours, the API twin's values in the
    widgets and from graphToPrompt, every node at its saved size, no node body over another, and the saving nodes
    on screen."""
    assert editor.dialogs() == [], f"{name}: a dialog is open"
    assert editor.missing_nodes() == [], f"{name}: nodes missing or in error"
    widgets = editor.widgets()
    for nid, node in api.items():
        for key, value in node["inputs"].items():
            if not isinstance(value, list):
                assert widgets[nid].get(key) == value, f"{name}: node {nid} ({node['_meta']['title']}).{key} shows " \
                                                       f"{widgets[nid].get(key)!r}, the API file holds {value!r}"
    sent = editor.prompt()
    assert {nid: (node["class_type"], node["inputs"]) for nid, node in sent.items()} == \
        {nid: (node["class_type"], node["inputs"]) for nid, node in api.items()}, f"{name}: graphToPrompt differs"
    bodies = editor.node_bodies()
    saved = {node["id"]: node["size"] for node in ui["nodes"]}
    for nid, title, _, _, size in bodies:  # a node the editor grows may reach into its neighbour
        assert size == pytest.approx(saved[nid]), f"{name}: the editor resized '{title}' to {size}"
    for i, (_, title_a, _, (xa, ya, wa, ha), _) in enumerate(bodies):
        for _, title_b, _, (xb, yb, wb, hb), _ in bodies[i + 1:]:
            assert min(xa + wa, xb + wb) <= max(xa, xb) or min(ya + ha, yb + hb) <= max(ya, yb), \
                f"{name}: '{title_a}' and '{title_b}' overlap"
    scale, (dx, dy) = editor.view()
    (left, top), (width, height) = VIEW_ORIGIN, VIEW
    for _, title, kind, (x, y, w, h), _ in bodies:
        if kind in SAVING_NODES:  # the outputs are on screen, below the top bar and right of the side bar
            assert left <= (x + dx) * scale and (x + w + dx) * scale <= left + width and top <= (y + dy) * scale \
                and (y + h + dy) * scale <= top + height, f"{name}: '{title}' is not on screen at the opening view"
    assert editor.our_problems() == [], f"{name}: {editor.our_problems()}"


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_workflow_in_the_editor(comfy_server, editor, spec):
    name = spec["name"]
    ui_path, api_path = paths(name)
    ui, api = load(ui_path), load(api_path)
    editor.problems.clear()
    editor.open_template(name, ui)
    editor.page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"))
    assert_shows(editor, f"{name} (template)", ui, api)
    editor.open_file(ui_path, ui)
    assert_shows(editor, f"{name} (file)", ui, api)

    prompt = tiny_in_the_editor(api, seed=100 + SPECS.index(spec))
    editor.set_widgets({nid: {key: value for key, value in node["inputs"].items()
                              if not isinstance(value, list) and value != api[nid]["inputs"][key]}
                        for nid, node in prompt.items()})
    assert {nid: node["inputs"] for nid, node in editor.prompt().items()} == \
        {nid: node["inputs"] for nid, node in prompt.items()}
    result = comfy_server.wait_for(editor.run(), timeout=900)
    check_saved_outputs(comfy_server, name, prompt, result)
    assert editor.our_problems() == [], f"{name} (run): {editor.our_problems()}"


def tiny_in_the_editor(api: dict, seed: int) -> dict:
    """test_workflows.tiny_run's prompt (a restore seed of its own, so that ComfyUI's cache skips no node) as a
    user sets it in the editor: a small tile size that tiny_run puts in place of a link from an Int node is set
    in that node."""
    prompt = tiny_run(api, seed)
    for node, tiny in zip(api.values(), prompt.values()):
        for key, value in node["inputs"].items():
            if isinstance(value, list) and not isinstance(tiny["inputs"][key], list):
                assert api[value[0]]["class_type"] == "PrimitiveInt", key
                prompt[value[0]]["inputs"]["value"] = tiny["inputs"][key]
                tiny["inputs"][key] = value
    return prompt


def old_layout(ui: dict, object_info: dict) -> dict:  # noqa: F811
    """The UI file as saved before the seeds of SUPIR Caption (VLM) and SUPIR Train Restoration LoRA declared their
    control widget: Caption's as this pack shipped it, with no control value after the seed; Train LoRA's as the
    editor saved it, with the control value it added after any seed ("randomize" on a new node)."""
    ui = copy.deepcopy(ui)
    for node in ui["nodes"]:
        if node["type"] in NODES_WITH_OLD_LAYOUT:
            specs = input_specs(object_info[node["type"]])
            values = [n for n in input_names(object_info[node["type"]]) if is_widget(specs[n])
                      for _ in range(2 if has_control_widget(n, specs[n]) else 1)]  # a name per value
            if has_control_widget("seed", specs["seed"]):
                del node["widgets_values"][values.index("seed") + 1]
            else:
                node["widgets_values"].insert(values.index("seed") + 1, "randomize")
    return ui


@pytest.mark.parametrize("name", [s["name"] for s in SPECS if any(
    n["class_type"] in NODES_WITH_OLD_LAYOUT for n in s["nodes"].values())])
def test_old_layout_still_loads(editor, object_info, tmp_path, name):  # noqa: F811
    ui_path, api_path = paths(name)
    old = old_layout(load(ui_path), object_info)
    assert old != load(ui_path)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(old))
    editor.problems.clear()
    editor.open_file(str(path), old)
    assert_shows(editor, f"{name} (saved in the old layout)", old, load(api_path))
