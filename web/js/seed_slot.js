// Saved workflows of SUPIR Caption (VLM) and SUPIR Train Restoration LoRA from before their seeds declared a
// "control after generate" widget hold no value for it, so every widget after the seed would take its
// neighbour's value. Such a node holds one value fewer than the widgets the editor builds: the "fixed" control
// value is put back after the seed before the graph is configured.
import { app } from "../../../scripts/app.js";

const NODES_WITHOUT_SLOT_BEFORE = new Set(["SUPIRCaptionVLM", "SUPIRTrainLoRA"]);
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const layouts = {}; // node type -> {seed: index of the seed's value, count: number of widget values}

function hasControlWidget(name, type, options) {
  if (options.control_after_generate != null) return Boolean(options.control_after_generate);
  return type === "INT" && (name === "seed" || name === "noise_seed");
}

function widgetLayout(nodeData) {
  const order = nodeData.input_order ?? {};
  const specs = { ...(nodeData.input?.required ?? {}), ...(nodeData.input?.optional ?? {}) };
  let count = 0;
  let seed = -1;
  for (const name of [...(order.required ?? []), ...(order.optional ?? [])]) {
    const [type, options = {}] = specs[name] ?? [];
    if (!(Array.isArray(type) || WIDGET_TYPES.has(type)) || options.forceInput) continue;
    if (name === "seed") seed = count;
    count += hasControlWidget(name, type, options) ? 2 : 1;
  }
  return { seed, count };
}

function restoreSeedSlot(node) {
  const layout = layouts[node.type];
  const values = node.widgets_values;
  if (!layout || layout.seed < 0 || !Array.isArray(values) || values.length !== layout.count - 1) return;
  values.splice(layout.seed + 1, 0, "fixed");
}

app.registerExtension({
  name: "supir_restore.seedSlot",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (NODES_WITHOUT_SLOT_BEFORE.has(nodeData.name)) layouts[nodeData.name] = widgetLayout(nodeData);
  },
  async beforeConfigureGraph(graph) {
    const subgraphs = graph?.definitions?.subgraphs ?? [];
    for (const nodes of [graph?.nodes ?? [], ...subgraphs.map((s) => s.nodes ?? [])]) nodes.forEach(restoreSeedSlot);
  },
});
