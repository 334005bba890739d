/**
 * transfer: moving file content onto hosts safely. A library: it never
 * imports a daemon (coordinator, agent, cli); they compose it.
 *
 * - install.ts: destination checks against an agent's roots, the atomic
 *   install (temp file, fsync, validate, backup, rename, fsync dir),
 *   backups and rollback, and the MD5 cache behind warm checks.
 */
export {
  type DestCheck,
  type FileState,
  fixMeta,
  type InstallOptions,
  type InstallResult,
  installFile,
  Md5Cache,
  md5File,
  md5Of,
  metaDiffers,
  type RollbackResult,
  removeStaleTemps,
  resolveDest,
  rollback,
} from './install.js';
