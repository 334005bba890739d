/**
 * The parts of nunjucks' internals canopy compiles with, typed narrowly.
 *
 * canopy runs its own compile pipeline (parse, mark lookups strict or
 * lenient, transform, compile with a few overridden emitters) instead of
 * patching nunjucks' shared runtime: nothing here changes nunjucks for any
 * other user in the process. Pinned to nunjucks 3.2.x; the template tests
 * fail loudly if an upgrade changes these shapes.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export interface NjNode {
  typename: string;
  lineno: number;
  colno: number;
  fields: string[];
  children?: NjNode[];
  value?: unknown;
  [field: string]: unknown;
}

type NodeCtor = new (lineno: number, colno: number, ...fields: unknown[]) => NjNode;

export interface NjCompiler {
  compile(node: NjNode, frame?: unknown): void;
  getCode(): string;
  _emit(code: string): void;
  _compileExpression(node: NjNode, frame: unknown): void;
  _compileAggregate(node: NjNode, frame: unknown, start?: string, end?: string): void;
  compileSymbol(node: NjNode, frame: { lookup(name: string): string | undefined }): void;
  compileLookupVal(node: NjNode, frame: unknown): void;
  compileFilter(node: NjNode, frame: unknown): void;
}

interface NunjucksModule {
  Environment: new (loaders: unknown[], opts: Record<string, unknown>) => NjEnvironment;
  Template: new (src: { type: 'code'; obj: unknown }, env: NjEnvironment, path: string) => NjTemplate;
  parser: {
    parse(src: string, extensions: unknown[], opts: Record<string, unknown>): NjNode;
    Parser: new (tokens: NjTokenizer) => NjParser;
  };
  lexer: { lex(src: string, opts: Record<string, unknown>): NjTokenizer };
  compiler: { Compiler: new (name: string, throwOnUndefined: boolean) => NjCompiler };
  nodes: Record<'Filter' | 'Symbol' | 'NodeList' | 'Literal', NodeCtor>;
}

export interface NjToken {
  type: string;
  value: string;
  lineno: number;
  colno: number;
}

export interface NjTokenizer {
  trimBlocks: boolean;
  nextToken(): NjToken | null;
  current(): string;
  forward(): void;
  back(): void;
}

export interface NjParser {
  tokens: NjTokenizer;
  extensions: unknown[];
  parseRaw(tagName?: string): NjNode;
  parseAsRoot(): NjNode;
}

export interface NjEnvironment {
  opts: Record<string, unknown>;
  globals: Record<string, unknown>;
  addFilter(name: string, fn: (...args: never[]) => unknown): void;
  addTest(name: string, fn: (...args: never[]) => unknown): void;
  getFilter(name: string): ((...args: unknown[]) => unknown) | undefined;
  getTemplate(name: string): NjTemplate;
  [key: string]: unknown;
}

export interface NjTemplate {
  render(ctx: Record<string, unknown>): string;
}

export const nunjucks = require('nunjucks') as NunjucksModule;
export const transformer = require('nunjucks/src/transformer.js') as {
  transform(ast: NjNode, asyncFilters: string[], name: string): NjNode;
};

/** nunjucks' TemplateError: where it happened, and the error it wraps. */
export interface NjTemplateError extends Error {
  lineno?: number;
  colno?: number;
  cause?: unknown;
}
