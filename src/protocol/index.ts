/**
 * The protocol component: every message between coordinator and agents.
 * The coordinator and the agent talk only through these types.
 */

export { type ClientConfig, defaultClientConfigPath } from './client-config.js';
export { decodeJoinToken, encodeJoinToken, type JoinToken } from './join-token.js';
export { API_BODY_LIMIT, PUSH_BODY_LIMIT } from './limits.js';
export * from './messages.js';
