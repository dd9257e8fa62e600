// Tool calls (OpenAI's `tools` / `tool_choice`, as vLLM serves them): the tools checked, the grammar
// that makes the output a call (a named function: its arguments; 'required': a list of calls), and
// the parsers that read calls out of free text ('auto') in the formats models are trained on:
//   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, text before them the
//                content (Qwen 2.5 / 3, Hermes, many fine-tunes);
//   llama3_json  {"name": ..., "parameters": {...}} as the whole reply, several joined by ';'
//                (Llama 3.1 / 3.2 / 3.3 with their JSON tool prompt; <|python_tag|> may open it);
//   mistral      [TOOL_CALLS] then [{"name": ..., "arguments": {...}}, ...] (Mistral 7B v0.3,
//                Mixtral, Nemo) or name[ARGS]{...} per call (tokenizers v11 and later). The markers
//                are special tokens, which decoded text leaves out: the caller puts MISTRAL_TOOL_CALLS
//                before the text when the reply's first token was it (the server does).
// A reply that does not parse as calls is content, whole (never half read).
import { randomBytes } from 'crypto';
import { codedError } from './errors';
import type { TokenVocabulary } from './grammar';
import { JsonSchemaGrammar, type JsonSchemaGrammarOptions } from './json_schema';

export interface ToolFunction {
  /** [a-zA-Z0-9_-], at most 64 characters (OpenAI's rule). */
  readonly name: string;
  readonly description?: string;
  /** A JSON Schema of its arguments (an object). Default: no arguments ({}). */
  readonly parameters?: Readonly<Record<string, unknown>>;
  readonly strict?: boolean | null;
}

/** A tool the model may call (OpenAI's { type: 'function', function }). */
export interface ToolDefinition {
  readonly type: 'function';
  readonly function: ToolFunction;
}

/** A call of a tool: its arguments as JSON text (OpenAI's tool_calls entries). */
export interface ToolCall {
  readonly id: string;
  readonly type: 'function';
  readonly function: { readonly name: string; readonly arguments: string };
}

/**
 * 'none': the model writes text; 'auto': text or calls, read by a ToolCallFormat; 'required': one
 * or more calls (the output constrained to them); a named function: a call of it (its arguments
 * constrained to its parameters).
 */
export type ToolChoice = 'none' | 'auto' | 'required' | { readonly type: 'function'; readonly function: { readonly name: string } };

/** The text format 'auto' reads calls in (see this file's comment). */
export type ToolCallFormat = 'hermes' | 'llama3_json' | 'mistral';
export const TOOL_CALL_FORMATS: readonly ToolCallFormat[] = ['hermes', 'llama3_json', 'mistral'];

/** Mistral's marker token, which opens a reply of calls. */
export const MISTRAL_TOOL_CALLS = '[TOOL_CALLS]';

const NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/** `tools` checked: E_ARG naming the entry and field at fault. */
export function checkTools(tools: unknown): ToolDefinition[] {
  if (!Array.isArray(tools)) throw codedError('E_ARG', `tools: expected an array of { type: 'function', function: { name, description?, parameters? } }`);
  const seen = new Set<string>();
  return tools.map((t, i) => {
    const o = t as { type?: unknown; function?: unknown } | null;
    if (typeof o !== 'object' || o === null || o.type !== 'function' || typeof o.function !== 'object' || o.function === null) {
      throw codedError('E_ARG', `tools[${i}]: expected { type: 'function', function: { name, description?, parameters? } }`);
    }
    const f = o.function as Record<string, unknown>;
    if (typeof f['name'] !== 'string' || !NAME.test(f['name'])) throw codedError('E_ARG', `tools[${i}].function.name: expected 1-64 of a-z, A-Z, 0-9, _ and -, got ${JSON.stringify(f['name'])}`);
    if (seen.has(f['name'])) throw codedError('E_ARG', `tools[${i}].function.name: '${f['name']}' is given twice`);
    seen.add(f['name']);
    if (f['description'] !== undefined && f['description'] !== null && typeof f['description'] !== 'string') throw codedError('E_ARG', `tools[${i}].function.description: expected a string`);
    const p = f['parameters'];
    if (p !== undefined && p !== null && (typeof p !== 'object' || Array.isArray(p))) throw codedError('E_ARG', `tools[${i}].function.parameters: expected a JSON Schema object`);
    return t as ToolDefinition;
  });
}

/** `tool_choice` checked against the tools (default: 'auto' with tools, 'none' without, as OpenAI's). */
export function checkToolChoice(choice: unknown, tools: readonly ToolDefinition[]): ToolChoice {
  if (choice === undefined || choice === null) return tools.length > 0 ? 'auto' : 'none';
  if (choice === 'none' || choice === 'auto' || choice === 'required') {
    if (choice !== 'none' && tools.length === 0) throw codedError('E_ARG', `tool_choice: '${choice}' needs tools`);
    return choice;
  }
  const name = typeof choice === 'object' && (choice as { type?: unknown }).type === 'function' ? ((choice as { function?: { name?: unknown } }).function?.name) : undefined;
  if (typeof name !== 'string') throw codedError('E_ARG', `tool_choice: expected 'none', 'auto', 'required' or { type: 'function', function: { name } }, got ${JSON.stringify(choice)}`);
  if (!tools.some((t) => t.function.name === name)) throw codedError('E_ARG', `tool_choice: no tool named '${name}' among the tools`);
  return { type: 'function', function: { name } };
}

/** A function's parameters schema (none: an object without properties). */
function parametersOf(t: ToolDefinition): Record<string, unknown> {
  return (t.function.parameters as Record<string, unknown> | undefined) ?? { type: 'object', properties: {} };
}

/**
 * The JSON Schema of a constrained tool reply: a named function's arguments (its parameters), or
 * for 'required' a non-empty array of { "name": <a tool>, "parameters": <its arguments> } (vLLM's
 * form; one call at most unless `parallel`).
 */
export function toolCallSchema(tools: readonly ToolDefinition[], choice: 'required' | { readonly function: { readonly name: string } }, parallel = true): Record<string, unknown> {
  if (choice !== 'required') {
    const t = tools.find((x) => x.function.name === choice.function.name);
    if (!t) throw codedError('E_ARG', `tool_choice: no tool named '${choice.function.name}' among the tools`);
    return parametersOf(t);
  }
  if (tools.length === 0) throw codedError('E_ARG', `tool_choice: 'required' needs tools`);
  const calls = tools.map((t) => ({ type: 'object', properties: { name: { const: t.function.name }, parameters: parametersOf(t) }, required: ['name', 'parameters'] }));
  return { type: 'array', minItems: 1, ...(parallel ? {} : { maxItems: 1 }), items: calls.length === 1 ? calls[0] : { anyOf: calls } };
}

/**
 * The grammar of a constrained tool reply (toolCallSchema) over a vocabulary. A tool whose
 * parameters fall outside JsonSchemaGrammar's subset is named in the E_ARG.
 */
export function toolCallGrammar(
  vocabulary: TokenVocabulary,
  tools: readonly ToolDefinition[],
  choice: 'required' | { readonly function: { readonly name: string } },
  options: JsonSchemaGrammarOptions & { readonly parallel?: boolean } = {},
): JsonSchemaGrammar {
  // Each tool's parameters alone first, so that an error names the tool rather than a path into the combined schema.
  tools.forEach((t, i) => {
    if (choice !== 'required' && t.function.name !== choice.function.name) return;
    try {
      new JsonSchemaGrammar(vocabulary, parametersOf(t), { cacheEntries: 1 });
    } catch (e) {
      throw codedError((e as { code?: string }).code === 'E_ARG' ? 'E_ARG' : 'E_INTERNAL', `tools[${i}].function.parameters ('${t.function.name}'): ${(e as Error).message}`);
    }
  });
  const { parallel, ...rest } = options;
  return new JsonSchemaGrammar(vocabulary, toolCallSchema(tools, choice, parallel ?? true), rest);
}

/** A new call id (OpenAI's form: 'call_' and 24 hex digits). */
export function toolCallId(): string {
  return `call_${randomBytes(12).toString('hex')}`;
}

function call(name: unknown, args: unknown): ToolCall | undefined {
  if (typeof name !== 'string' || name.length === 0) return undefined;
  // Arguments as JSON text (a model that wrote them as a string of JSON: that string).
  const text = args === undefined ? '{}' : typeof args === 'string' ? args : typeof args === 'object' && args !== null && !Array.isArray(args) ? JSON.stringify(args) : undefined;
  return text === undefined ? undefined : { id: toolCallId(), type: 'function', function: { name, arguments: text } };
}

/**
 * The calls of a constrained reply (toolCallSchema's JSON text); undefined when it is not complete.
 * A named function's arguments are the text as written.
 */
export function constrainedToolCalls(text: string, choice: 'required' | { readonly function: { readonly name: string } }): ToolCall[] | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (choice !== 'required') return typeof v === 'object' && v !== null && !Array.isArray(v) ? [call(choice.function.name, text) as ToolCall] : undefined;
  if (!Array.isArray(v) || v.length === 0) return undefined;
  const r = new RequiredCallsReader();
  r.push(text);
  return r.done && r.calls.length === v.length ? r.calls : undefined;
}

/** What a 'required' reply adds as it grows: a call begun (its name known) or a piece of its arguments. */
export type RequiredCallEvent = { readonly kind: 'call'; readonly index: number; readonly id: string; readonly name: string } | { readonly kind: 'arguments'; readonly index: number; readonly text: string };

// A call's opening: the array's (first) or after the last call's closing brace (next), up to its arguments.
const CALL_HEAD = String.raw`\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"parameters"\s*:\s*`;
const FIRST_CALL = new RegExp(String.raw`\s*\[\s*` + CALL_HEAD, 'y');
const NEXT_CALL = new RegExp(String.raw`\s*\}\s*,\s*` + CALL_HEAD, 'y');
const LAST_CALL = /\s*\}\s*\]/y;

/**
 * Reads a 'required' reply (toolCallSchema's text, which the grammar guarantees) as it grows: each
 * call as soon as its name and "parameters" key are written, then its arguments' text as written
 * (the object, raw: what a named function's call carries too). Incomplete text waits for more; a
 * reply cut short leaves its last call's arguments as far as they got.
 */
export class RequiredCallsReader {
  private text = '';
  private pos = 0;
  /** Inside a call's arguments: their start (-1 before their '{'), nesting depth, whether in a string and after a backslash. */
  private argsFrom = -1;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private inArgs = false;
  private readonly all: { id: string; name: string; args: string }[] = [];
  /** The closing ']' was read. */
  done = false;

  /** The calls so far (the last one's arguments possibly partial). */
  get calls(): ToolCall[] {
    return this.all.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.args } }));
  }

  push(piece: string): RequiredCallEvent[] {
    this.text += piece;
    const out: RequiredCallEvent[] = [];
    while (!this.done) {
      if (!this.inArgs) {
        const head = this.all.length === 0 ? FIRST_CALL : NEXT_CALL;
        head.lastIndex = this.pos;
        const m = head.exec(this.text);
        if (!m) {
          LAST_CALL.lastIndex = this.pos;
          if (this.all.length > 0 && LAST_CALL.exec(this.text)) this.done = true;
          break;
        }
        const c = { id: toolCallId(), name: m[1] as string, args: '' };
        this.all.push(c);
        out.push({ kind: 'call', index: this.all.length - 1, id: c.id, name: c.name });
        this.pos = head.lastIndex;
        this.inArgs = true;
        this.argsFrom = -1;
        this.depth = 0;
      }
      // The arguments: from their '{' to its match, strings and escapes skipped.
      const start = this.pos;
      let closed = false;
      for (; this.pos < this.text.length && !closed; this.pos++) {
        const ch = this.text[this.pos];
        if (this.argsFrom < 0) {
          if (ch !== '{') continue;
          this.argsFrom = this.pos;
        }
        if (this.inString) {
          if (this.escaped) this.escaped = false;
          else if (ch === '\\') this.escaped = true;
          else if (ch === '"') this.inString = false;
        } else if (ch === '"') this.inString = true;
        else if (ch === '{' || ch === '[') this.depth++;
        else if ((ch === '}' || ch === ']') && --this.depth === 0) closed = true;
      }
      const from = Math.max(start, this.argsFrom);
      if (this.argsFrom >= 0 && this.pos > from) {
        const piece = this.text.slice(from, this.pos);
        (this.all[this.all.length - 1] as { args: string }).args += piece;
        out.push({ kind: 'arguments', index: this.all.length - 1, text: piece });
      }
      if (!closed) break;
      this.inArgs = false;
    }
    return out;
  }
}

/** A reply read as content and calls. */
export interface ParsedReply {
  /** The text that is not calls; null when there is none (OpenAI's content: null beside tool_calls). */
  readonly content: string | null;
  readonly calls: ToolCall[];
}

const HERMES_OPEN = '<tool_call>';
const HERMES_CLOSE = '</tool_call>';
const PYTHON_TAG = '<|python_tag|>';

/** The end of the JSON value that begins at text[from] ('{' or '['), or -1 (strings and escapes skipped). */
function jsonEnd(text: string, from: number): number {
  let depth = 0;
  let inString = false;
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      if (--depth === 0) return i + 1;
    }
  }
  return -1;
}

function parseObject(s: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(s);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Content and calls of a reply written in `format` (a reply that does not parse: all content, no calls). */
export function parseToolCalls(text: string, format: ToolCallFormat): ParsedReply {
  const none: ParsedReply = { content: text, calls: [] };
  if (format === 'hermes') {
    const first = text.indexOf(HERMES_OPEN);
    if (first < 0) return none;
    const calls: ToolCall[] = [];
    // Each <tool_call> {JSON} </tool_call> (the JSON read to its end, so a '</tool_call>' inside a
    // string does not cut it; the last call may be left open at the end of the reply).
    for (let at = first; at >= 0; at = text.indexOf(HERMES_OPEN, at)) {
      let from = at + HERMES_OPEN.length;
      while (/\s/.test(text[from] ?? '')) from++;
      const end = text[from] === '{' ? jsonEnd(text, from) : -1;
      const o = end < 0 ? undefined : parseObject(text.slice(from, end));
      const c = o ? call(o['name'], o['arguments'] ?? o['parameters']) : undefined;
      if (!c) return none;
      calls.push(c);
      const rest = text.slice(end).trimStart();
      if (rest === '') break;
      if (!rest.startsWith(HERMES_CLOSE)) return none;
      at = text.length - rest.length + HERMES_CLOSE.length;
    }
    const before = text.slice(0, first);
    return { content: before.trim() === '' ? null : before, calls };
  }
  if (format === 'llama3_json') {
    let s = text.trimStart();
    if (s.startsWith(PYTHON_TAG)) s = s.slice(PYTHON_TAG.length).trimStart();
    if (!s.startsWith('{')) return none;
    const calls: ToolCall[] = [];
    let at = 0;
    for (;;) {
      const end = jsonEnd(s, at);
      const o = end < 0 ? undefined : parseObject(s.slice(at, end));
      const c = o ? call(o['name'], o['parameters'] ?? o['arguments']) : undefined;
      if (!c) return none;
      calls.push(c);
      const rest = s.slice(end).trimStart();
      if (rest === '') break;
      if (!rest.startsWith(';')) return none;
      s = rest.slice(1).trimStart();
      at = 0;
      if (!s.startsWith('{')) return none;
    }
    return { content: null, calls };
  }
  if (format === 'mistral') {
    let s = text.trimStart();
    if (!s.startsWith(MISTRAL_TOOL_CALLS)) return none;
    s = s.slice(MISTRAL_TOOL_CALLS.length).trimStart();
    const calls: ToolCall[] = [];
    if (s.startsWith('[')) {
      // [{"name": ..., "arguments": {...}}, ...]
      const end = jsonEnd(s, 0);
      if (end < 0 || s.slice(end).trim() !== '') return none;
      let v: unknown;
      try {
        v = JSON.parse(s.slice(0, end));
      } catch {
        return none;
      }
      if (!Array.isArray(v) || v.length === 0) return none;
      for (const o of v) {
        const c = typeof o === 'object' && o !== null ? call((o as Record<string, unknown>)['name'], (o as Record<string, unknown>)['arguments'] ?? (o as Record<string, unknown>)['parameters']) : undefined;
        if (!c) return none;
        calls.push(c);
      }
      return { content: null, calls };
    }
    // name{...} per call (their [ARGS] and later [TOOL_CALLS] markers decoded away, or written).
    while (s !== '') {
      const m = /^([A-Za-z0-9_-]+)\s*(?:\[ARGS\])?\s*/.exec(s);
      if (!m || s[m[0].length] !== '{') return none;
      const end = jsonEnd(s, m[0].length);
      const o = end < 0 ? undefined : parseObject(s.slice(m[0].length, end));
      const c = o ? call(m[1], o) : undefined;
      if (!c) return none;
      calls.push(c);
      s = s.slice(end).trimStart();
      if (s.startsWith(MISTRAL_TOOL_CALLS)) s = s.slice(MISTRAL_TOOL_CALLS.length).trimStart();
    }
    return calls.length > 0 ? { content: null, calls } : none;
  }
  throw codedError('E_ARG', `tool call format: expected one of ${TOOL_CALL_FORMATS.join(', ')}, got ${JSON.stringify(format)}`);
}

/**
 * A reply read as it streams: push() each piece of text and get the content that can be shown now
 * (text that cannot be the start of a call); end() gives what is left and the calls. What push()
 * and end() return, joined, is parseToolCalls's content (null: ''), and the calls are its calls.
 * (A constrained 'required' reply streams through RequiredCallsReader.)
 */
export class ToolCallStream {
  private text = '';
  private shown = 0;
  /** llama3_json, mistral: the reply opened with a call (held to the end). */
  private heldCall = false;
  constructor(private readonly format: ToolCallFormat) {}

  push(piece: string): string {
    this.text += piece;
    const safe = this.safeLength();
    if (safe <= this.shown) return '';
    const out = this.text.slice(this.shown, safe);
    this.shown = safe;
    return out;
  }

  /** The content not shown yet, and the calls (none when the reply does not parse as calls). */
  end(): { readonly content: string; readonly calls: ToolCall[] } {
    const r = parseToolCalls(this.text, this.format);
    return { content: (r.content ?? '').slice(this.shown), calls: r.calls };
  }

  /** How much of the text is content whatever follows (each push looks at what it added, not the whole text again). */
  private safeLength(): number {
    const t = this.text;
    // Content shown already: the reply is text (llama3_json), or text up to a <tool_call> not yet seen (hermes).
    if (this.format === 'llama3_json' || this.format === 'mistral') {
      if (this.shown > 0) return t.length;
      if (this.heldCall) return 0;
      // A reply opening with a call is calls (or, if it does not parse, content shown at the end).
      const s = t.trimStart();
      const mark = this.format === 'mistral' ? MISTRAL_TOOL_CALLS : PYTHON_TAG;
      this.heldCall = s.startsWith(mark) || (this.format === 'llama3_json' && s.startsWith('{'));
      return this.heldCall || s === '' || mark.startsWith(s) ? 0 : t.length;
    }
    // hermes: text before <tool_call> (held back while it could be its start; none begins before
    // what was shown), and nothing while it is only whitespace.
    let safe = t.indexOf(HERMES_OPEN, Math.max(0, this.shown - HERMES_OPEN.length));
    if (safe < 0) {
      safe = t.length;
      for (let k = Math.min(HERMES_OPEN.length - 1, t.length); k > 0; k--) {
        if (HERMES_OPEN.startsWith(t.slice(t.length - k))) {
          safe = t.length - k;
          break;
        }
      }
    }
    return this.shown === 0 && t.slice(0, safe).trim() === '' ? 0 : safe;
  }
}
