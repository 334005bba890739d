/**
 * nunjucks' parser, made to read templates exactly as Jinja2 does with
 * Ansible's settings:
 *  - newlines are normalised to `\n` (Jinja2's newline_sequence, Ansible's
 *    default), so a CRLF template renders with LF line ends;
 *  - `trim_blocks` also drops the newline after a comment (`{# ... #}`) and
 *    after `{% endraw %}`, but not after `{% raw %}`: nunjucks does the
 *    opposite for raw and nothing for comments, so a template opening with a
 *    comment line rendered with an extra blank line.
 * Never changes anything else.
 */
import { type NjNode, type NjTokenizer, nunjucks } from './nunjucks-internals.js';

export function parseTemplate(src: string, options: Record<string, unknown>): NjNode {
  const tokens = nunjucks.lexer.lex(src.replace(/\r\n?/g, '\n'), options);
  if (options.trimBlocks) {
    const next = tokens.nextToken.bind(tokens);
    tokens.nextToken = () => {
      const tok = next();
      if (tok?.type === 'comment') skipNewline(tokens);
      return tok;
    };
  }
  const parser = new nunjucks.parser.Parser(tokens);
  parser.extensions = [];
  if (options.trimBlocks) {
    const parseRaw = parser.parseRaw.bind(parser);
    parser.parseRaw = (tagName) => {
      // The raw tag's own block end is lexed inside parseRaw: keep its newline.
      parser.tokens.trimBlocks = false;
      const node = parseRaw(tagName);
      parser.tokens.trimBlocks = true;
      skipNewline(parser.tokens);
      return node;
    };
  }
  return parser.parseAsRoot();
}

/** Consumes one newline at the tokenizer's position, if there is one. */
function skipNewline(tokens: NjTokenizer): void {
  if (tokens.current() === '\n') tokens.forward();
}
