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
  let buf = '';
  let event = 'message';
  let data: string[] = [];
  let id = 0;
  let stopped = false;
  return (chunk) => {
    if (stopped) return true;
    buf += chunk;
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
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
      nl = buf.indexOf('\n');
    }
    return false;
  };
}
