/**
 * transfer: moving file content onto hosts safely. A library: it never
 * imports a daemon (coordinator, agent, cli); they compose it.
 *
 * - install.ts: destination checks against an agent's roots, the atomic
 *   install (temp file, fsync, validate, backup, rename, fsync dir),
 *   backups and rollback, and the MD5 cache behind warm checks.
 * - manifest.ts: a blob's manifest (size, chunk size, BLAKE3 per chunk,
 *   whole-file MD5) and its id (the BLAKE3 of its canonical encoding).
 * - chunk-store.ts: an agent's content-addressed chunk store (verified
 *   before visible, crash-safe index, quota with LRU eviction, pins), with
 *   chunk-index.ts (its index log), chunk-recovery.ts (reconciling the index
 *   with the files at open) and chunk-files.ts (file and sink helpers);
 *   chunk-pool.ts: received chunk buffers used again (explicit release); and
 *   pack.ts: a distribution's blob in it as one file (chunk i at its offset,
 *   a side log of the chunks held, the MD5 computed in order on the way).
 * - peer-server.ts, peer-client.ts, peer-wire.ts: the agents' chunk relay
 *   over mutual TLS (fleet agents only, authorized blobs only, verified).
 * - peer-stream.ts, rsync.ts: rsync pulls over the peer channel (a stream
 *   connection to `rsync --server --sender` on the parent, validated there;
 *   syncFromPeer runs the local rsync with `canopy peer-rsh` as remote shell).
 * - rate-limit.ts: a shared token bucket for upload and download caps.
 * - planner.ts: the pure distribution planner (striped trees per IDC, one
 *   crossing per IDC, rack locality, re-parenting, a finish-time model),
 *   with planner-fleet.ts (its input checks and output), planner-groups.ts
 *   (per-IDC groups and their links), planner-repair.ts (re-parenting,
 *   rejoin) and planner-estimate.ts (the finish-time model).
 */

export { ChunkPool, type ChunkPoolStats } from './chunk-pool.js';
export {
  type AssembleOptions,
  type AssembleTarget,
  ChunkStore,
  type ChunkStoreOptions,
  type PutOptions,
  type RecoveryReport,
} from './chunk-store.js';
export { replaceSynced, syncDir, writeSynced } from './durable.js';
export {
  type CommitOptions,
  commitInstall,
  copyBeside,
  type DestCheck,
  type FileState,
  fileState,
  fixMeta,
  type InstallOptions,
  type InstallResult,
  installFile,
  isInside,
  Md5Cache,
  type MetaOptions,
  md5File,
  md5Of,
  metaDiffers,
  type RollbackResult,
  recheckDest,
  removeStaleTemps,
  resolveDest,
  rollback,
  setidRefusal,
  setMeta,
  tempPathFor,
} from './install.js';
export {
  buildManifest,
  chunkCount,
  chunkDigest,
  chunkRange,
  DEFAULT_CHUNK_SIZE,
  encodeManifest,
  isChunkDigest,
  type Manifest,
  manifestId,
  parseManifest,
  validateManifest,
} from './manifest.js';
export { Pack } from './pack.js';
export { type DialOptions, type FetchOptions, PeerClient, type PeerClientOptions } from './peer-client.js';
export {
  type ChunkSource,
  type PeerLog,
  PeerServer,
  type PeerServerOptions,
  type PeerServerStats,
  type TreeGrant,
} from './peer-server.js';
export { type PeerRsyncOptions, type RsyncStats, runPeerRsync } from './peer-stream.js';
export { PEER_ALPN, PEER_CODES } from './peer-wire.js';
export {
  type ChooseOptions,
  childrenOf,
  choosePlan,
  DEFAULT_STRIPES,
  type EstimateOptions,
  estimateSeconds,
  type Plan,
  type PlanHost,
  type PlanInput,
  plan,
  rejoinParents,
  replan,
} from './planner.js';
export { RateLimiter, type RateLimiterOptions } from './rate-limit.js';
export {
  bwlimitKiB,
  formatRshError,
  PARTIAL_DIR,
  type PeerAddress,
  Progress2Reader,
  parseRshError,
  parseRsyncStats,
  rsyncClientArgv,
  type SyncFromPeerOptions,
  type SyncProgress,
  type SyncResult,
  syncFromPeer,
  treeFilter,
} from './rsync.js';
