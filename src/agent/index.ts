/**
 * The agent component: the daemon on each host. It dials the coordinator,
 * runs what it is sent under its own allowlists, and never runs a task twice.
 */
export { Agent, type AgentOptions, controlSocket } from './agent.js';
export {
  type AgentConfig,
  checkAgentConfig,
  DEFAULT_AGENT_CONFIG,
  loadAgentConfig,
  parseDuration,
  parseSize,
} from './config.js';
export {
  type AgentIdentity,
  httpsJson,
  joinCoordinator,
  loadIdentity,
  loadRevoked,
  saveIdentity,
  saveRevoked,
} from './identity.js';
