/**
 * Folds host names into ranges, as clush and pdsh print them:
 * web-01, web-02, web-03, db-1 -> `db-1,web-[01-03]`.
 */
export function foldHosts(names: readonly string[]): string {
  const groups = new Map<string, { prefix: string; suffix: string; width: number; nums: number[] }>();
  const plain: string[] = [];
  for (const name of names) {
    const m = /^(.*?)(\d+)(\D*)$/.exec(name);
    if (!m) {
      plain.push(name);
      continue;
    }
    const [, prefix = '', digits = '', suffix = ''] = m;
    const width = digits.length > 1 && digits.startsWith('0') ? digits.length : 0;
    const key = `${prefix}\0${suffix}\0${width}`;
    const g = groups.get(key) ?? { prefix, suffix, width, nums: [] };
    g.nums.push(Number(digits));
    groups.set(key, g);
  }
  const parts: string[] = [...plain];
  for (const g of groups.values()) {
    const nums = [...new Set(g.nums)].sort((a, b) => a - b);
    const pad = (n: number) => String(n).padStart(g.width, '0');
    if (nums.length === 1) {
      parts.push(`${g.prefix}${pad(nums[0] ?? 0)}${g.suffix}`);
      continue;
    }
    const ranges: string[] = [];
    let start = nums[0] ?? 0;
    let prev = start;
    for (const n of [...nums.slice(1), Number.NaN]) {
      if (n === prev + 1) {
        prev = n;
        continue;
      }
      ranges.push(start === prev ? pad(start) : `${pad(start)}-${pad(prev)}`);
      start = n;
      prev = n;
    }
    parts.push(`${g.prefix}[${ranges.join(',')}]${g.suffix}`);
  }
  return parts.sort().join(',');
}
