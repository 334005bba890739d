/**
 * Compiling and rendering templates as Ansible's template module does.
 *
 * nunjucks with Ansible's settings: trimBlocks on, lstripBlocks off, the
 * trailing newline kept, no autoescape, undefined variables (and undefined
 * attributes of defined mappings) are errors, values print as Jinja2 prints
 * them, and Ansible's filters. Each template is compiled once per engine and
 * rendered per host. Templates, includes and imports resolve inside the
 * template root only: `../`, absolute names and symlinks leading out of the
 * root are refused. Every failure is a CanopyError naming template file and
 * line, the host, and the variable.
 */
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { CanopyError, isCanopyError } from '../errors/index.js';
import { ansibleFilters } from './filters.js';
import { jinjaFilters } from './jinja-filters.js';
import { parseTemplate } from './jinja-parser.js';
import type { VarMap } from './merge.js';
import {
  type NjCompiler,
  type NjEnvironment,
  type NjNode,
  type NjTemplate,
  type NjTemplateError,
  nunjucks,
  transformer,
} from './nunjucks-internals.js';
import { pyStr } from './py-format.js';
import { type MarkedNode, markLookups, STR_FILTER } from './strict-ast.js';
import { FilterFailure, StrictRuntime, UndefinedLookup } from './strict-runtime.js';
import { closest } from './suggest.js';
import { jinjaTests } from './tests.js';

const LEXER_OPTIONS = { trimBlocks: true, lstripBlocks: false, autoescape: false };

export interface TemplateEngineOptions {
  /** The directory templates, includes and imports are resolved in. */
  root: string;
  /** How messages name the root (a push renders from a temporary copy: name what it came from). */
  rootLabel?: string;
}

export class TemplateEngine {
  readonly root: string;
  readonly #realRoot: string;
  readonly #label: string;
  readonly #env: NjEnvironment;
  readonly #templates = new Map<string, CompiledTemplate>();

  constructor(options: TemplateEngineOptions) {
    this.root = resolve(options.root);
    if (!existsSync(this.root) || !statSync(this.root).isDirectory()) {
      throw new CanopyError('INPUT_NOT_FOUND', `template root ${this.root} is not a directory`, {
        path: this.root,
      });
    }
    this.#realRoot = realpathSync(this.root);
    this.#label = options.rootLabel ?? this.root;
    const loader = { cache: {}, getSource: (name: string) => this.#source(name) };
    this.#env = new nunjucks.Environment([loader], { ...LEXER_OPTIONS, throwOnUndefined: false, dev: true });
    this.#env.canopyStrict = new StrictRuntime();
    for (const [name, fn] of Object.entries(jinjaFilters())) this.#env.addFilter(name, fn);
    for (const [name, fn] of Object.entries(ansibleFilters())) this.#env.addFilter(name, fn);
    for (const [name, fn] of Object.entries(jinjaTests())) this.#env.addTest(name, fn);
    this.#env.addFilter(STR_FILTER, printable);
  }

  /** The compiled template at `name` (relative to the root, or a path inside it). */
  template(name: string): CompiledTemplate {
    const rel = this.#relativeName(name);
    let t = this.#templates.get(rel);
    if (!t) {
      t = new CompiledTemplate(rel, join(this.root, rel), this.#env.getTemplate(rel));
      this.#templates.set(rel, t);
    }
    return t;
  }

  #relativeName(name: string): string {
    const full = isAbsolute(name) ? resolve(name) : resolve(this.root, name);
    const rel = relative(this.root, full);
    if (rel === '' || rel.startsWith(`..${sep}`) || rel === '..' || isAbsolute(rel)) {
      throw new CanopyError(
        'RENDER_OUTSIDE_ROOT',
        `template "${name}" is outside the template root ${this.#label}; ` +
          'templates, includes and imports must name files inside it',
        { template: name, path: this.root },
      );
    }
    return rel.split(sep).join('/');
  }

  /** The nunjucks loader hook: read, check and compile one template. */
  #source(name: string): { src: { type: 'code'; obj: unknown }; path: string; noCache: boolean } {
    const rel = this.#relativeName(name);
    const file = join(this.root, rel);
    if (!existsSync(file)) {
      throw new CanopyError('RENDER_TEMPLATE_NOT_FOUND', `template "${rel}" not found in ${this.#label}`, {
        template: rel,
        path: file,
      });
    }
    const real = realpathSync(file);
    if (real !== this.#realRoot && !real.startsWith(this.#realRoot + sep)) {
      throw new CanopyError(
        'RENDER_OUTSIDE_ROOT',
        `template "${rel}" is a symlink to ${real}, outside the template root ${this.#label}; copy the file into the root instead`,
        { template: rel, path: real },
      );
    }
    return {
      src: { type: 'code', obj: compileSource(readFileSync(file, 'utf8'), rel) },
      path: rel,
      noCache: false,
    };
  }
}

export class CompiledTemplate {
  /** The name relative to the template root. */
  readonly name: string;
  readonly file: string;
  readonly #template: NjTemplate;

  constructor(name: string, file: string, template: NjTemplate) {
    this.name = name;
    this.file = file;
    this.#template = template;
  }

  /** Renders for one host; `vars` are the host's template variables. */
  render(vars: VarMap, host: string): string {
    try {
      return this.#template.render(vars);
    } catch (err) {
      throw renderError(err, this.name, host);
    }
  }
}

/** Compiles template source with canopy's strict lookups; returns nunjucks' template properties. */
function compileSource(src: string, name: string): unknown {
  let ast: NjNode;
  try {
    ast = parseTemplate(src, LEXER_OPTIONS);
  } catch (err) {
    // nunjucks' parser reports 1-based positions; its lexer reports none.
    const e = err as NjTemplateError;
    if (!e.lineno && /end of file/.test(String(e.message))) e.lineno = src.split('\n').length;
    const where = e.lineno ? `${name}:${e.lineno}:${e.colno ?? 1}` : name;
    const reason = String(e.message)
      .replace(/^\(unknown path\)\s*(\[[^\]]*\])?\s*/, '')
      .trim();
    throw new CanopyError('RENDER_SYNTAX', `${where}: template syntax error: ${reason}`, {
      template: name,
      ...(e.lineno ? { line: e.lineno, column: e.colno ?? 1 } : {}),
      cause: err,
    });
  }
  markLookups(ast);
  const compiler = strictCompiler(name);
  compiler.compile(transformer.transform(ast, [], name));
  return new Function(fastLoopVars(compiler.getCode()))();
}

/**
 * nunjucks' loops set seven `loop.*` variables one by one on every iteration
 * (frame.set splits each dotted name and writes a dictionary-mode object: a
 * quarter of all render time on the push workload). This sets one fresh
 * `loop` object instead: the same values, one write. If nunjucks ever emits
 * different code, the pattern does not match and the code is left as it is.
 */
export function fastLoopVars(code: string): string {
  return code.replace(
    LOOP_VARS,
    (_m, i: string, n: string) =>
      `frame.variables.loop = { index: ${i} + 1, index0: ${i}, revindex: ${n} - ${i}, revindex0: ${n} - ${i} - 1, ` +
      `first: ${i} === 0, last: ${i} === ${n} - 1, length: ${n} };`,
  );
}

const LOOP_VARS = new RegExp(
  [
    'frame\\.set\\("loop\\.index", (t_\\d+) \\+ 1\\);',
    'frame\\.set\\("loop\\.index0", \\1\\);',
    'frame\\.set\\("loop\\.revindex", (t_\\d+) - \\1\\);',
    'frame\\.set\\("loop\\.revindex0", \\2 - \\1 - 1\\);',
    'frame\\.set\\("loop\\.first", \\1 === 0\\);',
    'frame\\.set\\("loop\\.last", \\1 === \\2 - 1\\);',
    'frame\\.set\\("loop\\.length", \\2\\);',
  ].join('\\n'),
  'g',
);

/** A nunjucks compiler whose lookups and filter calls go through StrictRuntime. */
function strictCompiler(name: string): NjCompiler {
  const c = new nunjucks.compiler.Compiler(name, false);
  const tpl = JSON.stringify(name);
  const symbol = c.compileSymbol.bind(c);
  const lookupVal = c.compileLookupVal.bind(c);
  const filter = c.compileFilter.bind(c);
  const pos = (n: NjNode) => `${tpl}, ${n.lineno + 1}, ${n.colno + 1}`;
  c.compileSymbol = (node, frame) => {
    const n = node as MarkedNode;
    if (!n.canopyMode || frame.lookup(String(n.value))) return symbol(node, frame);
    c._emit(
      `env.canopyStrict.symbol(context, frame, ${JSON.stringify(n.value)}, ${n.canopyMode === 'strict'}, ${pos(n)})`,
    );
  };
  c.compileLookupVal = (node, frame) => {
    const n = node as MarkedNode;
    if (!n.canopyMode) return lookupVal(node, frame);
    c._emit('env.canopyStrict.member((');
    c._compileExpression(n.target as NjNode, frame);
    c._emit('),');
    c._compileExpression(n.val as NjNode, frame);
    c._emit(`, ${n.canopyMode === 'strict'}, ${JSON.stringify(n.canopyPath)}, ${pos(n)})`);
  };
  c.compileFilter = (node, frame) => {
    const fname = String((node.name as NjNode).value);
    if (fname === STR_FILTER) return filter(node, frame);
    c._emit(`env.canopyStrict.filter(context, ${JSON.stringify(fname)}, ${pos(node)}, `);
    c._compileAggregate(node.args as NjNode, frame);
    c._emit(')');
  };
  return c;
}

/** What `{{ value }}` prints: Jinja2's str() of the value. */
function printable(value: unknown): unknown {
  if (typeof value === 'string' || value instanceof String) return value;
  return pyStr(value);
}

/** Turns whatever a render threw into a CanopyError naming template, line, host and variable. */
function renderError(err: unknown, template: string, host: string): CanopyError {
  const chain: unknown[] = [];
  for (let e: unknown = err; e && chain.length < 10; e = (e as { cause?: unknown }).cause) chain.push(e);
  const undef = chain.find((e): e is UndefinedLookup => e instanceof UndefinedLookup);
  if (undef) return undefinedError(undef, host);
  const failure = chain.find((e): e is FilterFailure => e instanceof FilterFailure);
  const canopy = chain.find((e): e is CanopyError => isCanopyError(e));
  if (failure) {
    const inner = isCanopyError(failure.cause) ? failure.cause : undefined;
    return new CanopyError(
      inner?.code ?? 'RENDER_FILTER_FAILED',
      `${failure.template}:${failure.line}: ${failure.message} (host ${host})`,
      {
        template: failure.template,
        line: failure.line,
        column: failure.column,
        host,
        filter: failure.filter,
        cause: err,
      },
    );
  }
  if (canopy) {
    return new CanopyError(canopy.code, `${canopy.message} (rendering ${template} for host ${host})`, {
      ...canopy.subject,
      host,
      cause: canopy,
    });
  }
  const nj = chain.find((e): e is NjTemplateError => typeof (e as NjTemplateError)?.lineno === 'number');
  const line = nj?.lineno ?? 0;
  const reason = String((err as Error)?.message ?? err)
    .replace(/^\([^)]*\)\s*(\[[^\]]*\])?\s*/, '')
    .replace(/^Error: /, '')
    .trim();
  return new CanopyError('RENDER_FAILED', `${template}:${line}: ${reason} (host ${host})`, {
    template,
    line,
    host,
    cause: err,
  });
}

function undefinedError(u: UndefinedLookup, host: string): CanopyError {
  let hint = '';
  if (u.parentIsNone) {
    hint = `; its parent is undefined or none`;
  } else {
    const guess = closest(u.key, u.candidates);
    if (guess) hint = `; did you mean "${u.parent ? `${u.parent}.` : ''}${guess}"?`;
  }
  const root = u.path.split(/[.[]/)[0] ?? u.path;
  return new CanopyError(
    'RENDER_UNDEFINED_VAR',
    `${u.template}:${u.line}: "${u.path}" is undefined for host ${host}${hint} ` +
      `(set it in group or host vars, or give a default: {{ ${u.path} | default(...) }}; see: canopy vars explain ${host} ${root})`,
    { template: u.template, line: u.line, column: u.column, host, variable: u.path },
  );
}
