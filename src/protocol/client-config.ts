/**
 * The client config the coordinator writes for the CLI (mode 0600):
 * `{url, token, ca}`. Where it lives: $CANOPY_CONFIG, else
 * $XDG_CONFIG_HOME/canopy/client.json, else ~/.config/canopy/client.json
 * (and always DATA/client.json beside the coordinator's state).
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface ClientConfig {
  url: string;
  token: string;
  ca: string;
}

export function defaultClientConfigPath(
  env: Readonly<Record<string, string | undefined>> = process.env,
): string {
  if (env.CANOPY_CONFIG) return env.CANOPY_CONFIG;
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return join(base, 'canopy', 'client.json');
}
