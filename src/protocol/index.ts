/**
 * The protocol component: every message between coordinator and agents.
 * The coordinator and the agent talk only through these types.
 */

export { type ClientConfig, defaultClientConfigPath } from './client-config.js';
export { decodeJoinToken, encodeJoinToken, type JoinToken } from './join-token.js';
export {
  API_BODY_LIMIT,
  KILL_GRACE_MAX_S,
  MAX_OUTPUT_BYTES,
  MAX_TIMER_MS,
  PUSH_BODY_LIMIT,
  RUN_MAX_TIMEOUT_S,
} from './limits.js';
export * from './messages.js';
