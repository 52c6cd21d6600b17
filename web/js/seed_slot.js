// Workflows saved before the pack's seeds declared their "control after generate" widget keep their values.
// SUPIR Caption (VLM) now has one: the workflows this pack shipped held no value for it, so such a node holds one
// value fewer than its widgets and "fixed" is put back after the seed. SUPIR Train Restoration LoRA now has none
// (a resumed training must keep its seed): the editor used to add one after any seed, so such a node holds one
// control value more, which is dropped. Both before the graph is configured.
import { app } from "../../../scripts/app.js";

const CHANGED_NODES = new Set(["SUPIRCaptionVLM", "SUPIRTrainLoRA"]);
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const CONTROL_VALUES = new Set(["fixed", "increment", "decrement", "randomize"]);
const layouts = {}; // node type -> {seed: index of the seed's value, control: whether a control value follows, count}

function hasControlWidget(name, type, options) {
  if (options.control_after_generate != null) return Boolean(options.control_after_generate);
  return type === "INT" && (name === "seed" || name === "noise_seed");
}

function widgetLayout(nodeData) {
  const order = nodeData.input_order ?? {};
  const specs = { ...(nodeData.input?.required ?? {}), ...(nodeData.input?.optional ?? {}) };
  const layout = { seed: -1, control: false, count: 0 };
  for (const name of [...(order.required ?? []), ...(order.optional ?? [])]) {
    const [type, options = {}] = specs[name] ?? [];
    if (!(Array.isArray(type) || WIDGET_TYPES.has(type)) || options.forceInput) continue;
    const control = hasControlWidget(name, type, options);
    if (name === "seed") Object.assign(layout, { seed: layout.count, control });
    layout.count += control ? 2 : 1;
  }
  return layout;
}

function migrateSeedSlot(node) {
  const layout = layouts[node.type];
  const values = node.widgets_values;
  if (!layout || layout.seed < 0 || !Array.isArray(values)) return;
  const after = layout.seed + 1;
  if (layout.control && values.length === layout.count - 1 && !CONTROL_VALUES.has(values[after])) {
    values.splice(after, 0, "fixed");
  } else if (!layout.control && values.length === layout.count + 1 && CONTROL_VALUES.has(values[after])) {
    values.splice(after, 1);
  }
}

app.registerExtension({
  name: "supir_restore.seedSlot",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (CHANGED_NODES.has(nodeData.name)) layouts[nodeData.name] = widgetLayout(nodeData);
  },
  async beforeConfigureGraph(graph) {
    const subgraphs = graph?.definitions?.subgraphs ?? [];
    for (const nodes of [graph?.nodes ?? [], ...subgraphs.map((s) => s.nodes ?? [])]) nodes.forEach(migrateSeedSlot);
  },
});
