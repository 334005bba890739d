// Temp directories with given files, removed after the test.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';

export function tempTree(t: TestContext | undefined, files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-test-'));
  for (const [path, text] of Object.entries(files)) {
    const full = join(dir, path);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, text);
  }
  t?.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
