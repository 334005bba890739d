/**
 * Writes a YAML node tree as text: a port of PyYAML's Emitter for the events its Serializer produces
 * (block and flow collections, `? key` complex keys, plain/single/double-quoted scalars folded at
 * the width, the `...` after a plain top-level scalar).
 *
 * It only lays out the nodes it is given: it never decides a value's tag or style of collection
 * (py-yaml.ts's representer does), and it imports nothing of canopy's outside py-yaml-scalar.
 */

import {
  analyzeScalar,
  BREAKS,
  doubleQuoteEscape,
  needsDoubleQuoteEscape,
  type ScalarAnalysis,
} from './py-yaml-scalar.js';

/** The tags PyYAML's SafeRepresenter gives plain values. */
export type YamlTag = 'str' | 'int' | 'float' | 'bool' | 'null';

/** A representer's output: scalars with their tag and implicit resolution, collections with their style. */
export type YamlNode =
  | { kind: 'scalar'; value: string; tag: YamlTag; plainImplicit: boolean; quotedImplicit: boolean }
  | { kind: 'seq'; items: YamlNode[]; flow: boolean }
  | { kind: 'map'; pairs: Array<[YamlNode, YamlNode]>; flow: boolean };

interface NodeContext {
  root?: boolean;
  mapping?: boolean;
  simpleKey?: boolean;
}

/** Writes one document; a new emitter per document (it keeps the column and indentation state). */
export class YamlEmitter {
  private readonly out: string[] = [];
  private column = 0;
  private whitespace = true;
  private indention = true;
  private openEnded = false;
  private indent: number | null = null;
  private readonly indents: Array<number | null> = [];
  private flowLevel = 0;
  private rootContext = false;
  private mappingContext = false;
  private simpleKeyContext = false;

  constructor(
    private readonly bestIndent: number,
    private readonly bestWidth: number,
  ) {}

  emitDocument(root: YamlNode, explicitStart: boolean): string {
    if (explicitStart) {
      this.writeIndent();
      this.writeIndicator('---', true);
    }
    this.expectNode(root, { root: true });
    this.writeIndent();
    if (this.openEnded) {
      this.writeIndicator('...', true);
      this.writeIndent();
    }
    return this.out.join('');
  }

  private expectNode(node: YamlNode, ctx: NodeContext, analysis?: ScalarAnalysis): void {
    this.rootContext = ctx.root ?? false;
    this.mappingContext = ctx.mapping ?? false;
    this.simpleKeyContext = ctx.simpleKey ?? false;
    if (node.kind === 'scalar') {
      this.expectScalar(node, analysis ?? analyzeScalar(node.value));
      return;
    }
    const empty = node.kind === 'seq' ? node.items.length === 0 : node.pairs.length === 0;
    const flow = this.flowLevel > 0 || node.flow || empty;
    if (node.kind === 'seq') {
      if (flow) this.flowSequence(node.items);
      else this.blockSequence(node.items);
    } else if (flow) this.flowMapping(node.pairs);
    else this.blockMapping(node.pairs);
  }

  // -- collections

  private flowSequence(items: YamlNode[]): void {
    this.writeIndicator('[', true, true);
    this.flowLevel++;
    this.increaseIndent(true);
    items.forEach((item, i) => {
      if (i > 0) this.writeIndicator(',', false);
      if (this.column > this.bestWidth) this.writeIndent();
      this.expectNode(item, {});
    });
    this.popIndent();
    this.flowLevel--;
    this.writeIndicator(']', false);
  }

  private flowMapping(pairs: Array<[YamlNode, YamlNode]>): void {
    this.writeIndicator('{', true, true);
    this.flowLevel++;
    this.increaseIndent(true);
    pairs.forEach(([key, value], i) => {
      if (i > 0) this.writeIndicator(',', false);
      if (this.column > this.bestWidth) this.writeIndent();
      const simple = this.simpleKey(key);
      if (simple) {
        this.expectNode(key, { mapping: true, simpleKey: true }, simple);
        this.writeIndicator(':', false);
      } else {
        this.writeIndicator('?', true);
        this.expectNode(key, { mapping: true });
        if (this.column > this.bestWidth) this.writeIndent();
        this.writeIndicator(':', true);
      }
      this.expectNode(value, { mapping: true });
    });
    this.popIndent();
    this.flowLevel--;
    this.writeIndicator('}', false);
  }

  private blockSequence(items: YamlNode[]): void {
    this.increaseIndent(false, this.mappingContext && !this.indention);
    for (const item of items) {
      this.writeIndent();
      this.writeIndicator('-', true, false, true);
      this.expectNode(item, {});
    }
    this.popIndent();
  }

  private blockMapping(pairs: Array<[YamlNode, YamlNode]>): void {
    this.increaseIndent(false);
    for (const [key, value] of pairs) {
      this.writeIndent();
      const simple = this.simpleKey(key);
      if (simple) {
        this.expectNode(key, { mapping: true, simpleKey: true }, simple);
        this.writeIndicator(':', false);
      } else {
        this.writeIndicator('?', true, false, true);
        this.expectNode(key, { mapping: true });
        this.writeIndent();
        this.writeIndicator(':', true, false, true);
      }
      this.expectNode(value, { mapping: true });
    }
    this.popIndent();
  }

  /** The key's analysis when it can be written as `key:`, else undefined (`? key`). */
  private simpleKey(key: YamlNode): ScalarAnalysis | undefined {
    if (key.kind !== 'scalar') return undefined;
    const analysis = analyzeScalar(key.value);
    const length = `!!${key.tag}`.length + analysis.chars.length;
    return length < 128 && !analysis.empty && !analysis.multiline ? analysis : undefined;
  }

  private increaseIndent(flow: boolean, indentless = false): void {
    this.indents.push(this.indent);
    if (this.indent === null) this.indent = flow ? this.bestIndent : 0;
    else if (!indentless) this.indent += this.bestIndent;
  }

  private popIndent(): void {
    this.indent = this.indents.pop() ?? null;
  }

  // -- scalars

  private expectScalar(node: YamlNode & { kind: 'scalar' }, analysis: ScalarAnalysis): void {
    this.increaseIndent(true);
    const style = this.chooseScalarStyle(node, analysis);
    const split = !this.simpleKeyContext;
    if (style === '"') this.writeDoubleQuoted(analysis.chars, split);
    else if (style === "'") this.writeSingleQuoted(analysis.chars, split);
    else this.writePlain(analysis.chars, split);
    this.popIndent();
  }

  private chooseScalarStyle(node: YamlNode & { kind: 'scalar' }, a: ScalarAnalysis): '' | "'" | '"' {
    const plainAllowed = this.flowLevel > 0 ? a.allowFlowPlain : a.allowBlockPlain;
    if (node.plainImplicit && !(this.simpleKeyContext && (a.empty || a.multiline)) && plainAllowed) return '';
    if (a.allowSingleQuoted && !(this.simpleKeyContext && a.multiline)) return "'";
    return '"';
  }

  private writePlain(text: string[], split: boolean): void {
    if (this.rootContext) this.openEnded = true;
    if (text.length === 0) return;
    if (!this.whitespace) this.write(' ');
    this.whitespace = false;
    this.indention = false;
    let spaces = false;
    let start = 0;
    for (let end = 0; end <= text.length; end++) {
      const ch = text[end];
      if (spaces && ch !== ' ') {
        if (start + 1 === end && this.column > this.bestWidth && split) {
          this.writeIndent();
          this.whitespace = false;
          this.indention = false;
        } else this.write(text.slice(start, end).join(''));
        start = end;
      } else if (!spaces && (ch === undefined || ch === ' ')) {
        // Plain scalars never hold line breaks: analyzeScalar forbids them.
        this.write(text.slice(start, end).join(''));
        start = end;
      }
      if (ch !== undefined) spaces = ch === ' ';
    }
  }

  private writeSingleQuoted(text: string[], split: boolean): void {
    this.writeIndicator("'", true);
    let spaces = false;
    let breaks = false;
    let start = 0;
    for (let end = 0; end <= text.length; end++) {
      const ch = text[end];
      if (spaces) {
        if (ch !== ' ') {
          const fold = start + 1 === end && this.column > this.bestWidth && split;
          if (fold && start !== 0 && end !== text.length) this.writeIndent();
          else this.write(text.slice(start, end).join(''));
          start = end;
        }
      } else if (breaks) {
        if (ch === undefined || !BREAKS.includes(ch)) {
          this.writeBreaks(text.slice(start, end));
          this.writeIndent();
          start = end;
        }
      } else if (ch === undefined || ch === "'" || ` ${BREAKS}`.includes(ch)) {
        if (start < end) this.write(text.slice(start, end).join(''));
        start = end;
      }
      if (ch === "'") {
        this.write("''");
        start = end + 1;
      }
      if (ch !== undefined) {
        spaces = ch === ' ';
        breaks = BREAKS.includes(ch);
      }
    }
    this.writeIndicator("'", false);
  }

  /** Line breaks inside a quoted scalar: a `\n` needs an extra (empty) line to survive folding. */
  private writeBreaks(breaks: string[]): void {
    if (breaks[0] === '\n') this.writeLineBreak();
    for (const br of breaks) this.writeLineBreak(br);
  }

  private writeDoubleQuoted(text: string[], split: boolean): void {
    this.writeIndicator('"', true);
    let start = 0;
    for (let end = 0; end <= text.length; end++) {
      const ch = text[end];
      if (ch === undefined || needsDoubleQuoteEscape(ch)) {
        if (start < end) this.write(text.slice(start, end).join(''));
        start = end;
        if (ch !== undefined) {
          this.write(doubleQuoteEscape(ch));
          start = end + 1;
        }
      }
      const fits = this.column + (end - start) <= this.bestWidth;
      if (0 < end && end < text.length - 1 && (ch === ' ' || start >= end) && !fits && split) {
        this.write(`${text.slice(start, end).join('')}\\`);
        if (start < end) start = end;
        this.writeIndent();
        this.whitespace = false;
        this.indention = false;
        if (text[start] === ' ') this.write('\\');
      }
    }
    this.writeIndicator('"', false);
  }

  // -- low-level writers

  private writeIndicator(indicator: string, needWhitespace: boolean, whitespace = false, indention = false) {
    this.write(this.whitespace || !needWhitespace ? indicator : ` ${indicator}`);
    this.whitespace = whitespace;
    this.indention = this.indention && indention;
    this.openEnded = false;
  }

  private writeIndent(): void {
    const indent = this.indent ?? 0;
    if (!this.indention || this.column > indent || (this.column === indent && !this.whitespace)) {
      this.writeLineBreak();
    }
    if (this.column < indent) {
      this.whitespace = true;
      this.write(' '.repeat(indent - this.column));
    }
  }

  private writeLineBreak(data = '\n'): void {
    this.whitespace = true;
    this.indention = true;
    this.out.push(data);
    this.column = 0;
  }

  private write(data: string): void {
    this.out.push(data);
    for (const _ of data) this.column++;
  }
}
