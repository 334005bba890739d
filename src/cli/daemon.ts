/** What the two daemon commands share: the logger and waiting for a stop signal. */
import { createRequire } from 'node:module';
import type * as Pino from 'pino';
import type { Logger } from 'pino';

// pino is CommonJS: required, not imported, so the agent does not pay for Node's ESM export lexer.
const { pino } = createRequire(import.meta.url)('pino') as typeof Pino;

export function daemonLogger(component: string, level: string | undefined, env: CliEnv): Logger {
  return pino(
    {
      level: level ?? env.CANOPY_LOG_LEVEL ?? 'info',
      base: { component, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ fd: 2, sync: true }),
  );
}

type CliEnv = Readonly<Record<string, string | undefined>>;

/** Resolves on the first SIGINT or SIGTERM. */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
