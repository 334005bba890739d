/** `canopy token create`, `canopy agents`, `canopy agents revoke NAME`: small API calls. */
import { NAME_RE, parseDuration } from '../agent/config.js';
import { COMMON_OPTIONS, parse, usage } from './args.js';
import { ApiClient, CLIENT_OPTIONS, clientSettings } from './client.js';
import { type CliIO, palette, writeJson } from './io.js';

export const TOKEN_HELP = `usage: canopy token create [--ttl 1h] [--name HOST] [--json]

Creates a one-time join token: it carries the coordinator's address, the
SHA-256 fingerprint of its CA and a secret. Give it to one agent:
  canopy agent --join TOKEN --data DIR
With --name, only an agent joining under that name may use it.
`;

export const AGENTS_HELP = `usage: canopy agents [--json]
       canopy agents revoke NAME

Lists the agents that joined: online state, last heartbeat, address, facts.
\`revoke\` makes the coordinator refuse that agent's certificates from now on
(it must re-join with a new token).
`;

export async function tokenCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse('token', argv, {
    ...COMMON_OPTIONS,
    ...CLIENT_OPTIONS,
    ttl: { type: 'string' },
    name: { type: 'string' },
  });
  if (values.help) {
    io.out.write(TOKEN_HELP);
    return 0;
  }
  if (positionals[0] !== 'create' || positionals.length !== 1)
    throw usage('token', 'the only subcommand is: canopy token create');
  const ttl = values.ttl ? parseDuration(values.ttl, '--ttl') / 1000 : 3600;
  const api = new ApiClient(clientSettings(values, io));
  const t = await api.call<{ token: string; id: string; expiresAt: number }>('POST', '/v1/tokens', {
    ttl,
    ...(values.name ? { name: values.name } : {}),
  });
  if (values.json) writeJson(io, t);
  else {
    io.out.write(`${t.token}\n`);
    io.err.write(`one-time token ${t.id}, valid until ${new Date(t.expiresAt).toISOString()}\n`);
  }
  return 0;
}

export async function agentsCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse('agents', argv, { ...COMMON_OPTIONS, ...CLIENT_OPTIONS });
  if (values.help) {
    io.out.write(AGENTS_HELP);
    return 0;
  }
  const api = new ApiClient(clientSettings(values, io));
  if (positionals[0] === 'revoke') {
    const name = positionals[1];
    if (!name || positionals.length !== 2) throw usage('agents', 'revoke takes one agent name');
    // An agent name is a host name: ".." or "a/b" would name another route once in a URL.
    if (!NAME_RE.test(name)) {
      throw usage('agents', `revoke: "${name}" is not an agent name (see canopy agents for the names)`);
    }
    const r = await api.call<{ name: string; revokedAt: number }>(
      'DELETE',
      `/v1/agents/${encodeURIComponent(name)}`,
    );
    if (values.json) writeJson(io, r);
    else io.out.write(`revoked ${r.name}: the coordinator refuses its certificates from now on\n`);
    return 0;
  }
  if (positionals.length > 0)
    throw usage('agents', `unknown subcommand "${positionals[0]}" (only: revoke NAME)`);
  const { agents } = await api.call<{ agents: AgentRow[] }>('GET', '/v1/agents');
  if (values.json) {
    writeJson(io, { agents });
    return 0;
  }
  const p = palette(io.out, io.env);
  const now = Date.now();
  const rows = agents.map((a) => [
    a.name,
    a.revoked ? p.red('revoked') : a.online ? p.green('online') : p.yellow('offline'),
    a.lastHeartbeat ? `${Math.round((now - a.lastHeartbeat) / 1000)}s ago` : 'never',
    a.connectedFrom ?? '-',
    a.facts ? `${a.facts.os} ${a.facts.kernel} load ${a.facts.load.join(' ')}` : '-',
    a.facts
      ? Object.entries(a.facts.labels)
          .map(([k, v]) => `${k}=${v}`)
          .join(',')
      : '',
  ]);
  const head = ['NAME', 'STATE', 'HEARTBEAT', 'ADDRESS', 'FACTS', 'LABELS'];
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => stripAnsi(r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c + ' '.repeat(Math.max(0, (width[i] ?? 0) - stripAnsi(c).length)))
      .join('  ')
      .trimEnd();
  io.out.write(`${line(head)}\n${rows.map(line).join('\n')}${rows.length ? '\n' : ''}`);
  const online = agents.filter((a) => a.online).length;
  io.out.write(`${online} online, ${agents.length - online} not, ${agents.length} total\n`);
  return 0;
}

interface AgentRow {
  name: string;
  online: boolean;
  revoked: boolean;
  lastHeartbeat: number | null;
  connectedFrom: string | null;
  facts: { os: string; kernel: string; load: number[]; labels: Record<string, string> } | null;
}

function stripAnsi(s: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: SGR sequences
  return s.replace(/\u001b\[\d+m/g, '');
}
