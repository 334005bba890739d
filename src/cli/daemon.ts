/** What the two daemon commands share: the logger and waiting for a stop signal. */
import { type Logger, pino } from 'pino';

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
