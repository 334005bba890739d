/**
 * A server-sent-events parser (text/event-stream, the subset the API sends:
 * `event:`, `data:`, `id:` and `:` comments). Feed it chunks as they arrive.
 */

/**
 * Returns a feed function that calls `onEvent` for each complete event. If
 * `onEvent` returns true (stop), the feed returns true and ignores the rest.
 */
export function sseParser(
  onEvent: (event: string, data: string, id: number) => unknown,
): (chunk: string) => boolean {
  let pending: string[] = [];
  let event = 'message';
  let data: string[] = [];
  let id = 0;
  let stopped = false;
  return (chunk) => {
    if (stopped) return true;
    // The pieces of an unfinished line are joined once its end arrives: a long line (a large
    // result) in many chunks costs one copy, not one per chunk.
    let start = 0;
    for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', start)) {
      pending.push(chunk.slice(start, nl));
      start = nl + 1;
      const line = pending.length === 1 ? (pending[0] ?? '') : pending.join('');
      pending = [];
      if (line === '') {
        if (data.length > 0 && onEvent(event, data.join('\n'), id) === true) {
          stopped = true;
          return true;
        }
        event = 'message';
        data = [];
      } else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
      else if (line.startsWith('id: ')) id = Number(line.slice(4));
    }
    if (start < chunk.length) pending.push(chunk.slice(start));
    return false;
  };
}
