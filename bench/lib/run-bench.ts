/**
 * The shell every benchmark runs in: `cleanup` (synchronous: kill the PIDs
 * it started, remove its temp dirs) runs on normal exit, on failure and on
 * SIGINT/SIGTERM/SIGHUP; the exit code is main's, or 1 if it threw.
 */
export async function runBench(
  name: string,
  main: () => Promise<number>,
  cleanup: () => void,
): Promise<void> {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`${name}: ${sig}, cleaning up\n`);
      cleanup();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
  process.on('exit', cleanup);
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    process.stderr.write(`${name}: ${(err as Error).stack ?? (err as Error).message}\n`);
  } finally {
    cleanup();
  }
  process.exitCode = code;
}
