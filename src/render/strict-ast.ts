/**
 * The compile-time half of Ansible's undefined-variable rules.
 *
 * Walks a parsed nunjucks template and marks every variable and attribute
 * lookup `strict` (an undefined name is an error, as with Ansible's
 * StrictUndefined) or `lenient` (undefined is a value): lenient only where
 * Jinja2 lets a template ask about an undefined value, namely the subject of
 * `is defined` / `is undefined` and the first argument of `default`, `d` and
 * `mandatory`, including a whole attribute chain there (`a.b.c | default(1)`).
 * It also routes every printed value through `__canopy_str`, so that values
 * print as Jinja2 prints them (`True`, `None`, `['a', 'b']`). Binding sites
 * (set/for/macro targets, filter and test names) are never marked.
 */
import { type NjNode, nunjucks } from './nunjucks-internals.js';

export type LookupMode = 'strict' | 'lenient';

/** Properties the pass adds to Symbol and LookupVal nodes. */
export interface MarkedNode extends NjNode {
  canopyMode?: LookupMode;
  canopyPath?: string;
}

export const STR_FILTER = '__canopy_str';
const LENIENT_FILTERS = new Set(['default', 'd', 'mandatory']);
const LENIENT_TESTS = new Set(['defined', 'undefined']);

export function markLookups(root: NjNode): void {
  visit(root, false);
}

function isNode(x: unknown): x is NjNode {
  return typeof x === 'object' && x !== null && typeof (x as NjNode).typename === 'string';
}

function visitAll(xs: unknown, lenient: boolean): void {
  if (Array.isArray(xs)) for (const x of xs) visit(x, lenient);
  else visit(xs, lenient);
}

function visit(node: unknown, lenient: boolean): void {
  if (!isNode(node)) return;
  const n = node as MarkedNode;
  switch (n.typename) {
    case 'Symbol':
      n.canopyMode = lenient ? 'lenient' : 'strict';
      n.canopyPath = String(n.value);
      return;
    case 'LookupVal':
      n.canopyMode = lenient ? 'lenient' : 'strict';
      n.canopyPath = pathText(n);
      visit(n.target, lenient);
      visit(n.val, false);
      return;
    case 'Filter':
    case 'FilterAsync':
      visitFilter(n);
      return;
    case 'Is': {
      const right = n.right as NjNode;
      const test = right.typename === 'FunCall' ? (right.name as NjNode).value : right.value;
      visit(n.left, LENIENT_TESTS.has(String(test)));
      if (right.typename === 'FunCall') visit(right.args, false);
      return;
    }
    case 'Set':
      visit(n.value, false);
      visit(n.body, false);
      return;
    case 'For':
    case 'AsyncEach':
    case 'AsyncAll':
      visit(n.arr, false);
      visit(n.body, false);
      visit(n.else_, false);
      return;
    case 'Macro':
    case 'Caller':
      for (const arg of (n.args as NjNode).children ?? [])
        if (arg.typename === 'KeywordArgs') visit(arg, false);
      visit(n.body, false);
      return;
    case 'Import':
    case 'FromImport':
      visit(n.template, false);
      return;
    case 'Pair':
      if ((n.key as NjNode).typename !== 'Symbol') visit(n.key, false);
      visit(n.value, false);
      return;
    case 'Output':
      visitOutput(n);
      return;
    case 'Block':
      visit(n.body, false);
      return;
    case 'Super':
    case 'CallExtension':
    case 'CallExtensionAsync':
    case 'TemplateData':
    case 'Literal':
      return;
    default:
      for (const field of n.fields) visitAll(n[field], false);
  }
}

function visitFilter(n: MarkedNode): void {
  const name = String((n.name as NjNode).value);
  const args = (n.args as NjNode).children ?? [];
  args.forEach((arg, i) => {
    visit(arg, i === 0 && LENIENT_FILTERS.has(name));
  });
  // mandatory(value, msg=None): give it the variable's name for its message.
  const first = args[0] as MarkedNode | undefined;
  if (name === 'mandatory' && first && !args.some((a) => a.typename === 'KeywordArgs')) {
    const { Literal } = nunjucks.nodes;
    if (args.length === 1) args.push(new Literal(n.lineno, n.colno, null));
    args.push(new Literal(n.lineno, n.colno, first.canopyPath ?? 'value'));
  }
}

function visitOutput(n: NjNode): void {
  const { Filter, Symbol: SymbolNode, NodeList } = nunjucks.nodes;
  const children = n.children ?? [];
  children.forEach((child, i) => {
    if (child.typename === 'TemplateData') return;
    visit(child, false);
    const name = new SymbolNode(child.lineno, child.colno, STR_FILTER);
    children[i] = new Filter(
      child.lineno,
      child.colno,
      name,
      new NodeList(child.lineno, child.colno, [child]),
    );
  });
}

/** `app.db.port`, `servers[0].name`, `m[key]`: how an operator would write the lookup. */
export function pathText(node: NjNode): string {
  if (node.typename === 'Symbol') return String(node.value);
  if (node.typename === 'LookupVal') {
    const target = pathText(node.target as NjNode);
    const val = node.val as NjNode;
    if (val.typename === 'Literal') {
      if (typeof val.value === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(val.value))
        return `${target}.${val.value}`;
      return `${target}[${JSON.stringify(val.value)}]`;
    }
    return `${target}[${pathText(val)}]`;
  }
  if (node.typename === 'FunCall') return `${pathText(node.name as NjNode)}(...)`;
  return '(expression)';
}
