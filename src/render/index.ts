/**
 * render: the fleet's inventory, layered variables, and template rendering.
 *
 * A pure library: it reads inventories and templates from disk and returns
 * values; it never talks to the network and never imports a daemon
 * (coordinator, agent, cli). Everything outside src/render imports it only
 * through this file.
 */
export { type Diagnostic, formatDiagnostic } from './diagnostics.js';
export { type ExplainEntry, type ExplainStatus, type Explanation, explainVar } from './explain.js';
export { type LoadOptions, loadInventory } from './inventory.js';
export {
  GROUP_KINDS,
  type Group,
  type GroupKind,
  type Host,
  type Inventory,
  LAYER_KINDS,
  type LayerKind,
  RESERVED_VAR,
  type VarSource,
} from './inventory-model.js';
export { deepMerge, getPath, isMapping, type VarMap } from './merge.js';
export { pyStr } from './py-format.js';
export { closest, didYouMean } from './suggest.js';
export { parseTaskVars, parseVarFlag, readVarsFile, type TaskVarInput } from './task-vars.js';
export { CompiledTemplate, TemplateEngine, type TemplateEngineOptions } from './template-engine.js';
export { type HostFacts, hostFacts, hostLayers, type Layer, requireHost, VarResolver } from './vars.js';
export { formatPos, type SourcePos, YamlSource } from './yaml-source.js';
