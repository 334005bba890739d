/**
 * Limits shared by the coordinator, the agents and the CLI: the API's bodies
 * and command runs (clients check them before they send, so an oversized
 * request fails at once with a message that names what to change, instead
 * of being cut off mid-send), and the longest wait a timer holds.
 */

/** The largest body POST /v1/pushes takes: templates and inline files, base64, in one JSON request. */
export const PUSH_BODY_LIMIT = 96 * 1024 * 1024;

/** The largest body every other API route takes. */
export const API_BODY_LIMIT = 1024 * 1024;

/** The most output of one stream a command's result keeps (the result must fit one control message). */
export const MAX_OUTPUT_BYTES = 8 * 1024 * 1024;

/** The longest a command run may take, in seconds (7 days). */
export const RUN_MAX_TIMEOUT_S = 7 * 86_400;

/** The longest wait between TERM and KILL, in seconds. */
export const KILL_GRACE_MAX_S = 600;

/** The longest wait setTimeout keeps (2^31 - 1 ms, 24.8 days); node fires a longer one at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
