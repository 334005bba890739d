/**
 * Limits of the coordinator's API that its clients check before they send,
 * so an oversized request fails at once with a message that names what to
 * change, instead of being cut off mid-send.
 */

/** The largest body POST /v1/pushes takes: templates and inline files, base64, in one JSON request. */
export const PUSH_BODY_LIMIT = 96 * 1024 * 1024;

/** The largest body every other API route takes. */
export const API_BODY_LIMIT = 1024 * 1024;
