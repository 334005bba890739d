/**
 * The protocol component: every message between coordinator and agents.
 * The coordinator and the agent talk only through these types.
 */

export { type ClientConfig, defaultClientConfigPath } from './client-config.js';
export { decodeJoinToken, encodeJoinToken, type JoinToken } from './join-token.js';
export * from './messages.js';
