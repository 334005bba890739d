/**
 * Looks up local accounts for the executor's run-as check: `getent passwd NAME` (so NSS sources such
 * as LDAP count), falling back to reading /etc/passwd where getent is not installed.
 *
 * It never passes a name through a shell, and never looks up a name that is not a plain account name
 * (a name like `-s` or `0` would be read by getent as an option or a uid).
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';

export interface Account {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

/** POSIX portable user names, plus the trailing `$` of Samba machine accounts. */
const ACCOUNT_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,255}\$?$/;
const GETENT_TIMEOUT_MS = 5000;
const GETENT_NOT_FOUND = 2;

export function isValidAccountName(name: string): boolean {
  return ACCOUNT_NAME.test(name);
}

/** The account this process runs as. A uid with no passwd entry (some containers) is named by number. */
export function currentAccount(): Account {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  try {
    const info = userInfo();
    return { name: info.username, uid, gid, home: info.homedir, shell: info.shell ?? '/bin/sh' };
  } catch {
    return { name: String(uid), uid, gid, home: process.env.HOME ?? '/', shell: '/bin/sh' };
  }
}

/**
 * The passwd entry of `name`, or undefined when no such account exists.
 * Throws when the name is not a valid account name or the lookup itself fails.
 */
export async function lookupAccount(name: string): Promise<Account | undefined> {
  if (!isValidAccountName(name)) {
    throw new Error(`"${name}" is not a valid account name`);
  }
  const line = await getentPasswd(name);
  if (line !== null) return line === undefined ? undefined : parsePasswdLine(line, name);
  const passwd = await readFile('/etc/passwd', 'utf8');
  for (const entry of passwd.split('\n')) {
    const account = parsePasswdLine(entry, name);
    if (account !== undefined) return account;
  }
  return undefined;
}

/** The entry line; undefined when getent says there is none; null when getent is not installed. */
function getentPasswd(name: string): Promise<string | undefined | null> {
  return new Promise((resolve, reject) => {
    execFile('getent', ['passwd', name], { timeout: GETENT_TIMEOUT_MS }, (err, stdout) => {
      if (err === null) {
        resolve(stdout.split('\n')[0] ?? '');
      } else if (err.code === 'ENOENT') {
        resolve(null);
      } else if (err.code === GETENT_NOT_FOUND) {
        resolve(undefined);
      } else {
        reject(new Error(`getent passwd ${name} failed: ${err.message.trim()}`, { cause: err }));
      }
    });
  });
}

function parsePasswdLine(line: string, name: string): Account | undefined {
  const fields = line.split(':');
  if (fields.length < 7 || fields[0] !== name) return undefined;
  const uid = Number(fields[2]);
  const gid = Number(fields[3]);
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || fields[2] === '' || fields[3] === '') {
    return undefined;
  }
  return { name, uid, gid, home: fields[5] || '/', shell: fields[6] || '/bin/sh' };
}

/** The gid of group `name` (`getent group`, else /etc/group), or undefined when there is none. */
export async function lookupGroupId(name: string): Promise<number | undefined> {
  if (!isValidAccountName(name)) throw new Error(`"${name}" is not a valid group name`);
  const line = await new Promise<string | undefined | null>((resolve, reject) => {
    execFile('getent', ['group', name], { timeout: GETENT_TIMEOUT_MS }, (err, stdout) => {
      if (err === null) resolve(stdout.split('\n')[0] ?? '');
      else if (err.code === 'ENOENT') resolve(null);
      else if (err.code === GETENT_NOT_FOUND) resolve(undefined);
      else reject(new Error(`getent group ${name} failed: ${err.message.trim()}`, { cause: err }));
    });
  });
  const lines = line === null ? (await readFile('/etc/group', 'utf8')).split('\n') : line ? [line] : [];
  for (const entry of lines) {
    const fields = entry.split(':');
    if (fields[0] === name && fields[2] !== undefined && /^\d+$/.test(fields[2])) return Number(fields[2]);
  }
  return undefined;
}
