/**
 * The coordinator component: the daemon that holds the fleet's state, the
 * CA, the control sessions of every agent and the HTTP API.
 */
export { Coordinator, type CoordinatorOptions, DEFAULT_CERT_TTL_MS } from './coordinator.js';
export type { DistProgress } from './dists.js';
export type { AgentView } from './fleet.js';
export type { RunSummary } from './runs.js';
export type { HostFinalState, HostResult, RunRecord } from './store.js';
export { HOST_FINAL_STATES } from './store.js';
