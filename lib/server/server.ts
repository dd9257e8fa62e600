// `specdec serve`: an OpenAI-compatible completions server on node:http over one Engine.
// POST /v1/completions and /v1/chat/completions (JSON or server-sent events), GET /v1/models,
// /health, /metrics.
// Bad requests get 400 with an OpenAI-style JSON error naming the field; bodies are size-limited;
// a client that disconnects cancels its request; close() drains in-flight requests.
import { createHash, randomBytes, randomInt, timingSafeEqual } from 'crypto';
import { setMaxListeners } from 'events';
import * as http from 'http';
import type { AddressInfo } from 'net';
import type { GenerateOptions } from '../decoder';
import type { Engine, RequestOptions } from '../engine/engine';
import { JsonGrammar, TokenVocabulary, type TokenGrammar } from '../grammar';
import { JsonSchemaGrammar } from '../json_schema';
import { MAX_LOGPROBS, type TokenLogprobs } from '../logprobs';
import type { Penalties } from '../sampling';
import type { SamplingConfig } from '../strategies/speculator';
import { generateText, IncrementalText, type TextCodec, type TextResult } from '../text';
import type { ChatMessage, ChatTemplateOptions } from '../tokenizer';
import { AfterReasoning, promptOpensReasoning, promptOpensReasoningIds, REASONING_FORMATS, ReasoningStream, splitReasoning, THINK_CLOSE, THINK_OPEN, type ReasoningFormat } from '../reasoning';
import { checkToolChoice, checkTools, MISTRAL_TOOL_CALLS, parseToolCalls, RequiredCallsReader, TOOL_CALL_FORMATS, toolCallGrammar, ToolCallStream, toolCallId, type ToolCall, type ToolCallFormat, type ToolDefinition } from '../tool_calls';
import { PROMETHEUS_CONTENT_TYPE, prometheusText } from './prometheus';

export interface ServerOptions {
  readonly engine: Engine;
  /** Text prompts, text output and stop strings need it; without one, prompts are token ids. */
  readonly tokenizer?: TextCodec;
  /** /v1/chat/completions needs it: a chat's prompt ids through the model's chat template. */
  readonly chat?: { encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions): Int32Array };
  /** The id /v1/models reports and requests may name. */
  readonly modelName: string;
  /** Largest accepted request body. Default 1 MiB. */
  readonly maxBodyBytes?: number;
  /**
   * When set, the API routes (/v1/*, /tokenize, /detokenize) answer only requests carrying
   * `Authorization: Bearer <apiKey>` (401 otherwise, as OpenAI's and vLLM's); /health and /metrics
   * stay open. Default: none.
   */
  readonly apiKey?: string;
  /**
   * How a chat reply with tool_choice 'auto' is read for tool calls (vLLM's --tool-call-parser:
   * 'hermes' for Qwen 2.5 / 3 and Hermes, 'llama3_json' for Llama 3.x, 'mistral' for Mistral's
   * [TOOL_CALLS] replies, which needs that token in the vocabulary). Without one, 'auto' is
   * refused (400); 'none', 'required' and a named function need none. Default: none.
   */
  readonly toolCallParser?: ToolCallFormat;
  /**
   * Chat replies of a reasoning model split into `reasoning_content` (its <think> block) and
   * `content` (vLLM's --reasoning-parser: 'deepseek_r1' or 'qwen3', which read the block alike); a
   * grammar (response_format, a tool call) and 'auto' tool calls then apply to the answer after the
   * block. Default: none (the block is content).
   */
  readonly reasoningParser?: ReasoningFormat;
}

/**
 * What a chat request's tools make of its reply: calls of a named function (its arguments
 * constrained), one or more calls ('required', constrained), or text read for calls ('auto').
 */
type ToolMode =
  | { readonly kind: 'named'; readonly name: string }
  | { readonly kind: 'required' }
  /** (mistral: the id of its [TOOL_CALLS] token, which decoded text leaves out.) */
  | { readonly kind: 'auto'; readonly format: ToolCallFormat; readonly markerId?: number };

/** A request error: HTTP status, the offending field (OpenAI's `param`) and a message. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string = status === 400 ? 'invalid_request_error' : 'server_error',
  ) {
    super(message);
  }
}

interface Completion {
  /** The prompts (completions take several, OpenAI's batch form: choice p * n + i is prompt p's i-th). */
  readonly prompts: Int32Array[];
  /** Choices per prompt: n requests, choice i sampling from stream (seed, i). */
  readonly n: number;
  /** best_of (>= n): candidates generated, the n of highest summed log-probability returned. */
  readonly bestOf: number;
  /** echo (completions): each prompt's text, put before each of its choices' text. */
  readonly echo: string[] | undefined;
  /** Per prompt: its echo is its ids decoded with their special tokens (sent as ids), not the text sent. */
  readonly echoSpecials: boolean[];
  /** Log-probabilities and this many alternatives per token (completions' logprobs, chat's top_logprobs). */
  readonly logprobs: number | undefined;
  /** vLLM's min_tokens: no stop token or stop string before it. */
  readonly minTokens: number;
  readonly maxTokens: number;
  readonly sampling: SamplingConfig | undefined;
  readonly penalties: Penalties | undefined;
  readonly seed: number;
  readonly stop: string[];
  readonly stopTokenIds: number[];
  readonly ignoreEos: boolean;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /** response_format (a JSON object, a schema) or tools ('required', a named function): the output's grammar. */
  readonly grammar: TokenGrammar | undefined;
  /** Chat with tools (tool_choice other than 'none'): how the reply becomes tool calls. */
  readonly tools: ToolMode | undefined;
  /** With a reasoning parser (chat): per prompt, whether its template opened the think block. */
  readonly reasoning: boolean[] | undefined;
  /** With a reasoning parser and a grammar: per prompt, the grammar of the answer after the block. */
  readonly grammars: TokenGrammar[] | undefined;
  /** OpenAI's prediction (predicted outputs): its tokens, which prompt lookup drafts from. */
  readonly prediction: Int32Array | undefined;
}

/** A promise and its resolve. */
interface Waiter<T> {
  readonly promise: Promise<T>;
  readonly resolve: (v: T) => void;
}

function waiter<T>(): Waiter<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** A prompt as sent (a string or token ids) and its ids. */
interface SentPrompt {
  readonly ids: Int32Array;
  readonly sent: unknown;
}

/** Most stop strings a request may give (OpenAI's limit is 4; lm-evaluation-harness sends a task's whole list, EOS added). */
const MAX_STOP_STRINGS = 16;
/** Most engine requests one body may make (prompts x best_of). */
const MAX_REQUESTS = 1024;
/** Schema grammars kept (response_format json_schema), each with its masks (at most SCHEMA_MASKS). */
const MAX_SCHEMAS = 16;
const SCHEMA_MASKS = 256;
/** Most choices (`n`) a request may ask for (OpenAI's limit). */
const MAX_CHOICES = 128;

export class CompletionServer {
  readonly engine: Engine;
  readonly http: http.Server;
  private readonly tokenizer: TextCodec | undefined;
  private readonly chat: ServerOptions['chat'];
  private readonly toolCallParser: ToolCallFormat | undefined;
  private readonly reasoningParser: ReasoningFormat | undefined;
  private readonly modelName: string;
  private readonly maxBodyBytes: number;
  /** sha256 of ServerOptions.apiKey (compared in constant time, whatever the length sent). */
  private readonly keyHash: Buffer | undefined;
  private readonly created = Math.floor(Date.now() / 1000);
  private draining = false;
  /** Handlers still running: close() waits for them to write their last bytes. */
  private readonly inFlight = new Set<Promise<void>>();

  constructor(opts: ServerOptions) {
    this.engine = opts.engine;
    this.tokenizer = opts.tokenizer;
    this.chat = opts.chat;
    if (opts.toolCallParser !== undefined && !TOOL_CALL_FORMATS.includes(opts.toolCallParser)) throw new TypeError(`toolCallParser: expected one of ${TOOL_CALL_FORMATS.join(', ')}, got ${JSON.stringify(opts.toolCallParser)}`);
    this.toolCallParser = opts.toolCallParser;
    if (opts.reasoningParser !== undefined && !REASONING_FORMATS.includes(opts.reasoningParser)) throw new TypeError(`reasoningParser: expected one of ${REASONING_FORMATS.join(', ')}, got ${JSON.stringify(opts.reasoningParser)}`);
    this.reasoningParser = opts.reasoningParser;
    this.modelName = opts.modelName;
    this.maxBodyBytes = opts.maxBodyBytes ?? 1 << 20;
    if (opts.apiKey !== undefined && (typeof opts.apiKey !== 'string' || opts.apiKey.length === 0)) throw new TypeError('apiKey: expected a non-empty string');
    this.keyHash = opts.apiKey !== undefined ? createHash('sha256').update(opts.apiKey).digest() : undefined;
    this.http = http.createServer((req, res) => {
      const handled = this.route(req, res)
        .catch((e: unknown) => this.sendError(res, e))
        .finally(() => this.inFlight.delete(handled));
      this.inFlight.add(handled);
    });
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  listen(port: number, host = '127.0.0.1'): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, host, () => {
        this.http.off('error', reject);
        resolve(this.http.address() as AddressInfo);
      });
    });
  }

  /** Stops taking requests (503), lets the in-flight ones finish, then closes every connection. */
  async close(): Promise<void> {
    this.draining = true;
    const closed = new Promise<void>((r) => this.http.close(() => r()));
    this.http.closeIdleConnections();
    await this.engine.idle();
    // The engine is idle once the last request resolved; its handler may still be writing the
    // stream's end (finish reason, usage, [DONE]).
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
    this.http.closeAllConnections();
    await closed;
  }

  /** close(): `await using server = ...` drains and closes it at the block's end. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const allow = (method: string): void => {
      if (req.method !== method) throw new HttpError(405, `${path} takes ${method}, not ${req.method}`);
    };
    if (this.draining) {
      res.setHeader('Connection', 'close');
      if (path !== '/metrics') throw new HttpError(503, 'the server is shutting down', null, 'unavailable');
    }
    if (this.keyHash && path !== '/health' && path !== '/metrics') this.authorize(req);
    switch (path) {
      case '/health':
        allow('GET');
        return this.sendJson(res, 200, { status: 'ok' });
      case '/metrics':
        allow('GET');
        res.writeHead(200, { 'Content-Type': PROMETHEUS_CONTENT_TYPE });
        res.end(prometheusText(this.engine));
        return;
      case '/v1/models':
        allow('GET');
        // (max_model_len: vLLM's field, the context clients size prompts against.)
        return this.sendJson(res, 200, { object: 'list', data: [{ id: this.modelName, object: 'model', created: this.created, owned_by: 'specdec', max_model_len: this.engine.model.config.maxPositions }] });
      case '/v1/completions': {
        allow('POST');
        const body = await this.readJson(req);
        return this.complete(res, this.parseCompletion(body, (b) => this.parsePrompts(b['prompt']), false), false);
      }
      case '/v1/chat/completions': {
        allow('POST');
        const body = await this.readJson(req);
        return this.complete(res, this.parseCompletion(body, (b, tools) => [{ ids: this.parseMessages(b['messages'], b['chat_template_kwargs'], tools), sent: undefined }], true), true);
      }
      case '/tokenize': {
        allow('POST');
        return this.sendJson(res, 200, this.tokenize(await this.readJson(req)));
      }
      case '/detokenize': {
        allow('POST');
        return this.sendJson(res, 200, this.detokenize(await this.readJson(req)));
      }
      default:
        throw new HttpError(404, `no route ${path} (try POST /v1/completions, POST /v1/chat/completions, POST /tokenize, POST /detokenize, GET /v1/models, /health, /metrics)`, null, 'not_found');
    }
  }

  /** ServerOptions.apiKey: the request's bearer token, or 401. */
  private authorize(req: http.IncomingMessage): void {
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
    if (!m) throw new HttpError(401, 'missing API key: send the header Authorization: Bearer <key>', null, 'invalid_api_key');
    const sent = createHash('sha256').update(m[1] as string).digest();
    if (!timingSafeEqual(sent, this.keyHash as Buffer)) throw new HttpError(401, 'incorrect API key', null, 'invalid_api_key');
  }

  /** A JSON object body, its `model` (when given) this server's. */
  private objectBody(body: unknown): Record<string, unknown> {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, 'the body must be a JSON object');
    const b = body as Record<string, unknown>;
    if (b['model'] !== undefined && b['model'] !== this.modelName) {
      throw new HttpError(400, `model: this server serves '${this.modelName}', not ${JSON.stringify(b['model'])}`, 'model');
    }
    return b;
  }

  /**
   * vLLM's POST /tokenize: { prompt: string, add_special_tokens?: boolean (default true) } or
   * { messages, chat_template_kwargs?, tools? } (through the chat template, as /v1/chat/completions reads
   * them) -> { tokens, count, max_model_len }.
   */
  private tokenize(body: unknown): Record<string, unknown> {
    const b = this.objectBody(body);
    let tokens: Int32Array;
    if (b['messages'] !== undefined) {
      if (b['prompt'] !== undefined) throw new HttpError(400, 'prompt: send prompt or messages, not both', 'prompt');
      tokens = this.parseMessages(b['messages'], b['chat_template_kwargs'], this.parseTools(b['tools']));
    } else {
      const p = b['prompt'];
      if (typeof p !== 'string') throw new HttpError(400, 'prompt: expected a string (or send messages)', 'prompt');
      if (!this.tokenizer) throw new HttpError(400, 'prompt: this model has no tokenizer', 'prompt');
      const add = b['add_special_tokens'];
      if (add !== undefined && add !== null && typeof add !== 'boolean') throw new HttpError(400, `add_special_tokens: expected true or false, got ${JSON.stringify(add)}`, 'add_special_tokens');
      tokens = this.tokenizer.encode(p, { addSpecialTokens: add !== false });
    }
    return { tokens: Array.from(tokens), count: tokens.length, max_model_len: this.engine.model.config.maxPositions };
  }

  /** vLLM's POST /detokenize: { tokens: number[] } -> { prompt } (special tokens kept, as vLLM's). */
  private detokenize(body: unknown): Record<string, unknown> {
    const b = this.objectBody(body);
    const t = b['tokens'];
    const V = this.engine.model.config.vocabSize;
    if (!Array.isArray(t)) throw new HttpError(400, 'tokens: expected an array of token ids', 'tokens');
    const bad = t.findIndex((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x >= V);
    if (bad >= 0) throw new HttpError(400, `tokens[${bad}] = ${JSON.stringify(t[bad])} is not a token id in [0, ${V})`, 'tokens');
    if (!this.tokenizer) throw new HttpError(400, 'tokens: this model has no tokenizer', 'tokens');
    return { prompt: this.tokenizer.decode(t as number[], { skipSpecialTokens: false }) };
  }

  private readJson(req: http.IncomingMessage): Promise<unknown> {
    const declared = Number(req.headers['content-length']);
    if (declared > this.maxBodyBytes) {
      req.resume();
      return Promise.reject(new HttpError(413, `request body of ${declared} bytes exceeds the limit of ${this.maxBodyBytes} bytes`));
    }
    return new Promise((resolve, reject) => {
      const parts: Buffer[] = [];
      let size = 0;
      req.on('data', (b: Buffer) => {
        size += b.length;
        if (size > this.maxBodyBytes) {
          reject(new HttpError(413, `request body exceeds the limit of ${this.maxBodyBytes} bytes`));
          req.destroy();
          return;
        }
        parts.push(b);
      });
      req.on('error', reject);
      req.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(parts).toString('utf8')));
        } catch (e) {
          reject(new HttpError(400, `the body is not valid JSON (${(e as Error).message})`));
        }
      });
    });
  }

  /** Validates an OpenAI completions (or chat completions) body; every error names its field. */
  private parseCompletion(body: unknown, promptsOf: (b: Record<string, unknown>, tools: readonly ToolDefinition[]) => SentPrompt[], chat: boolean): Completion {
    const b = this.objectBody(body);
    const num = (name: string, ok: (n: number) => boolean, want: string): number | undefined => {
      const v = b[name];
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new HttpError(400, `${name}: expected ${want}, got ${JSON.stringify(v)}`, name);
      return v;
    };
    const bool = (name: string): boolean => {
      const v = b[name];
      if (v === undefined || v === null) return false;
      if (typeof v !== 'boolean') throw new HttpError(400, `${name}: expected true or false, got ${JSON.stringify(v)}`, name);
      return v;
    };
    const n = num('n', (x) => Number.isSafeInteger(x) && x >= 1 && x <= MAX_CHOICES, `an integer in [1, ${MAX_CHOICES}]`) ?? 1;
    // best_of: that many candidates, the n of highest summed log-probability returned (vLLM's
    // ranking); completions only, not streamed (the best are known at the end), as OpenAI's.
    const bestOf = num('best_of', (x) => Number.isSafeInteger(x) && x >= n && x <= MAX_CHOICES, `an integer in [n (${n}), ${MAX_CHOICES}]`) ?? n;
    if (bestOf > n && chat) throw new HttpError(400, 'best_of: completions only', 'best_of');
    if (bestOf > n && bool('stream')) throw new HttpError(400, 'best_of: not with stream (the best candidates are known only at the end)', 'best_of');
    const echo = bool('echo');
    if (echo && chat) throw new HttpError(400, 'echo: not supported by chat completions', 'echo');
    // Completions: logprobs = the alternatives per token. Chat: logprobs true, top_logprobs the alternatives.
    let logprobs: number | undefined;
    if (chat) {
      const top = num('top_logprobs', (x) => Number.isSafeInteger(x) && x >= 0 && x <= MAX_LOGPROBS, `an integer in [0, ${MAX_LOGPROBS}]`);
      if (bool('logprobs')) logprobs = top ?? 0;
      else if (top !== undefined) throw new HttpError(400, 'top_logprobs: needs logprobs: true', 'top_logprobs');
    } else {
      logprobs = num('logprobs', (x) => Number.isSafeInteger(x) && x >= 0 && x <= MAX_LOGPROBS, `an integer in [0, ${MAX_LOGPROBS}]`);
      if (b['top_logprobs'] !== undefined && b['top_logprobs'] !== null) throw new HttpError(400, 'top_logprobs: chat completions only (completions take logprobs: N)', 'top_logprobs');
    }
    // Fields that change the output and are not implemented are refused unless they ask for nothing
    // (clients send their defaults); never silently ignored.
    const presence = num('presence_penalty', (x) => x >= -2 && x <= 2, 'a number in [-2, 2]') ?? 0;
    const frequency = num('frequency_penalty', (x) => x >= -2 && x <= 2, 'a number in [-2, 2]') ?? 0;
    const repetition = num('repetition_penalty', (x) => x > 0, 'a number > 0') ?? 1;
    const V = this.engine.model.config.vocabSize;
    // logit_bias: { "token id": bias in [-100, 100] }, added to the logits before the penalties.
    const lb = b['logit_bias'];
    let logitBias: Record<string, number> | undefined;
    if (lb !== undefined && lb !== null) {
      if (typeof lb !== 'object' || Array.isArray(lb)) throw new HttpError(400, `logit_bias: expected an object of token id -> bias in [-100, 100], got ${JSON.stringify(lb)}`, 'logit_bias');
      for (const [k, v] of Object.entries(lb as Record<string, unknown>)) {
        if (!/^(0|[1-9][0-9]*)$/.test(k) || Number(k) >= V) throw new HttpError(400, `logit_bias: ${JSON.stringify(k)} is not a token id in [0, ${V})`, 'logit_bias');
        if (typeof v !== 'number' || !Number.isFinite(v) || v < -100 || v > 100) throw new HttpError(400, `logit_bias: token ${k}'s bias: expected a number in [-100, 100], got ${JSON.stringify(v)}`, 'logit_bias');
      }
      if (Object.keys(lb).length > 0) logitBias = lb as Record<string, number>;
    }
    const penalties = presence !== 0 || frequency !== 0 || repetition !== 1 || logitBias ? { presence, frequency, repetition, ...(logitBias ? { logitBias } : {}) } : undefined;
    const minTokens = num('min_tokens', (x) => Number.isSafeInteger(x) && x >= 0, 'an integer >= 0') ?? 0;
    if (b['suffix'] !== undefined && b['suffix'] !== null && b['suffix'] !== '') throw new HttpError(400, 'suffix: not supported', 'suffix');
    let grammar = this.responseFormat(b['response_format']);
    const tools = this.parseTools(b['tools']);
    if (!chat && tools.length > 0) throw new HttpError(400, 'tools: chat completions only', 'tools');
    // OpenAI's deprecated function calling: refused (not ignored), pointing to its successor.
    for (const [k, now] of [['functions', 'tools'], ['function_call', 'tool_choice']] as const) {
      const v = b[k];
      if (v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0) && v !== 'none') throw new HttpError(400, `${k}: deprecated by OpenAI and not supported; send ${now}`, k);
    }
    const toolMode = chat ? this.toolMode(tools, b) : undefined;
    if (toolMode && toolMode.kind !== 'auto') {
      if (grammar) throw new HttpError(400, `response_format: not with tool_choice ${toolMode.kind === 'required' ? "'required'" : 'naming a function'} (the reply is a tool call)`, 'response_format');
      grammar = this.toolGrammar(tools, toolMode, b['parallel_tool_calls'] !== false);
    }
    const sent = promptsOf(b, tools);
    const prompts = sent.map((x) => x.ids);
    // A reasoning model's chat: where each prompt left the think block, and the grammar after it.
    const reasoning = chat && this.reasoningParser ? prompts.map((ids) => this.opensReasoning(ids)) : undefined;
    const grammars = reasoning && grammar ? this.afterReasoning(grammar, reasoning, toolMode && toolMode.kind !== 'auto' ? 'tool_choice' : 'response_format') : undefined;
    if (prompts.length * bestOf > MAX_REQUESTS) throw new HttpError(400, `prompt: ${prompts.length} prompts x ${bestOf} choices is more than ${MAX_REQUESTS} requests`, 'prompt');
    // Chat clients send max_completion_tokens (OpenAI's newer name); a chat gets room by default.
    const maxTokens =
      num('max_completion_tokens', (x) => Number.isSafeInteger(x) && x >= 0, 'an integer >= 0') ??
      num('max_tokens', (x) => Number.isSafeInteger(x) && x >= 0, 'an integer >= 0') ??
      ('messages' in b ? Math.max(0, this.engine.model.config.maxPositions - (prompts[0] as Int32Array).length) : 16);
    if (minTokens > maxTokens) throw new HttpError(400, `min_tokens: ${minTokens} is more than max_tokens (${maxTokens})`, 'min_tokens');
    const temperature = num('temperature', (x) => x >= 0, 'a number >= 0') ?? 1;
    const topP = num('top_p', (x) => x > 0 && x <= 1, 'a number in (0, 1]');
    const topK = num('top_k', (x) => Number.isSafeInteger(x) && x >= -1, 'an integer >= -1 (-1 or 0: off)');
    const minP = num('min_p', (x) => x >= 0 && x < 1, 'a number in [0, 1)');
    const seed = num('seed', (x) => Number.isSafeInteger(x) && x >= 0, 'a non-negative integer') ?? randomInt(2 ** 47);
    const stop = b['stop'] === undefined || b['stop'] === null ? [] : typeof b['stop'] === 'string' ? [b['stop']] : b['stop'];
    if (!Array.isArray(stop) || stop.length > MAX_STOP_STRINGS || !stop.every((s) => typeof s === 'string' && s.length > 0)) {
      throw new HttpError(400, `stop: expected a non-empty string or up to ${MAX_STOP_STRINGS} of them`, 'stop');
    }
    if (stop.length > 0 && !this.tokenizer) throw new HttpError(400, 'stop: stop strings need a tokenizer; this model has none (use stop_token_ids)', 'stop');
    const ids = b['stop_token_ids'] ?? [];
    if (!Array.isArray(ids) || !ids.every((t) => Number.isInteger(t) && t >= 0 && t < V)) {
      throw new HttpError(400, `stop_token_ids: expected token ids in [0, ${V})`, 'stop_token_ids');
    }
    const so = b['stream_options'];
    const includeUsage = typeof so === 'object' && so !== null && (so as Record<string, unknown>)['include_usage'] === true;
    const sampling: SamplingConfig | undefined =
      temperature > 0
        ? { temperature, ...(topP !== undefined && topP < 1 ? { topP } : {}), ...(topK !== undefined && topK > 0 ? { topK } : {}), ...(minP !== undefined && minP > 0 ? { minP } : {}) }
        : undefined;
    return {
      prompts,
      n,
      bestOf,
      echo: echo ? sent.map((x) => this.echoText(x)) : undefined,
      echoSpecials: sent.map((x) => typeof x.sent !== 'string'),
      logprobs,
      minTokens,
      maxTokens,
      sampling,
      penalties,
      seed,
      stop: stop as string[],
      stopTokenIds: ids as number[],
      ignoreEos: bool('ignore_eos'),
      stream: bool('stream'),
      includeUsage,
      grammar,
      tools: toolMode,
      reasoning,
      grammars,
      prediction: this.parsePrediction(b['prediction']),
    };
  }

  /** A token's text in log-probabilities: its own decoding, or vLLM's `token_id:N` without a tokenizer. */
  private tokenText(id: number): string {
    return this.tokenizer ? this.tokenizer.decode([id], { skipSpecialTokens: false }) : `token_id:${id}`;
  }

  /** The completion text's decoding (text offsets count its characters). */
  private readonly offsetDecode = (ids: readonly number[]): string => (this.tokenizer ? this.tokenizer.decode(ids, { skipSpecialTokens: true }) : '');

  /**
   * OpenAI's logprobs object for `tokens` (lp: theirs): chat's { content: [{ token, logprob, bytes,
   * top_logprobs }] }, or completions' { tokens, token_logprobs, top_logprobs, text_offset } (each
   * top_logprobs entry the k alternatives and the token itself; text offsets into the choice's text,
   * `all` holding the choice's tokens before these). A log-probability of -inf is written -9999.
   */
  private logprobsJson(lp: TokenLogprobs, tokens: Int32Array, chat: boolean, offsets: IncrementalText, all: number[] = [], base = 0): Record<string, unknown> {
    const num = (x: number): number => (x === -Infinity ? -9999 : x);
    const k = lp.k;
    if (chat) {
      const entry = (id: number, logprob: number): { token: string; logprob: number; bytes: number[] } => {
        const token = this.tokenText(id);
        return { token, logprob: num(logprob), bytes: Array.from(Buffer.from(token, 'utf8')) };
      };
      return {
        content: Array.from(tokens, (t, i) => ({
          ...entry(t, lp.token[i] as number),
          top_logprobs: Array.from({ length: k }, (_, j) => entry(lp.topIds[i * k + j] as number, lp.topLogprobs[i * k + j] as number)),
        })),
      };
    }
    const textOffset: number[] = [];
    const top: Record<string, number>[] = [];
    tokens.forEach((t, i) => {
      textOffset.push(base + offsets.of(all).length);
      all.push(t);
      const d: Record<string, number> = {};
      for (let j = 0; j < k; j++) d[this.tokenText(lp.topIds[i * k + j] as number)] ??= num(lp.topLogprobs[i * k + j] as number);
      d[this.tokenText(t)] ??= num(lp.token[i] as number);
      top.push(d);
    });
    return { tokens: Array.from(tokens, (t) => this.tokenText(t)), token_logprobs: Array.from(lp.token, num), top_logprobs: top, text_offset: textOffset };
  }

  /**
   * echo with logprobs: the prompt's entries of completions' logprobs (lp: tokens 1.. of it; the
   * first token has none, null as OpenAI's), text offsets into the prompt's decoding as the echo
   * shows it (with special tokens when it was sent as ids).
   */
  private promptLogprobsJson(lp: TokenLogprobs, prompt: Int32Array, specials: boolean): { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[]; text_offset: number[] } {
    const decode = specials ? (ids: readonly number[]): string => this.tokenizer?.decode(ids, { skipSpecialTokens: false }) ?? '' : this.offsetDecode;
    const rest = this.logprobsJson(lp, prompt.subarray(1), false, new IncrementalText(decode), [prompt[0] as number]) as { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] };
    return {
      tokens: [this.tokenText(prompt[0] as number), ...rest.tokens],
      token_logprobs: [null, ...rest.token_logprobs],
      top_logprobs: [null, ...rest.top_logprobs],
      text_offset: [0, ...rest.text_offset],
    };
  }

  /** The tokenizer's vocabulary as grammars read it (built on first use). */
  private vocabulary: TokenVocabulary | undefined;
  /** The JSON object grammar, and schema grammars by their schema's text (LRU): their masks are cached across requests. */
  private json: JsonGrammar | undefined;
  private readonly schemas = new Map<string, JsonSchemaGrammar>();

  /**
   * response_format: none or { type: 'text' } (undefined), { type: 'json_object' } (a JSON object),
   * { type: 'json_schema', json_schema: { schema, name?, strict? } } (a value valid for the schema:
   * lib/json_schema.ts's subset); anything else is refused (400), never ignored.
   */
  private responseFormat(rf: unknown): TokenGrammar | undefined {
    if (rf === undefined || rf === null) return undefined;
    const type = typeof rf === 'object' && !Array.isArray(rf) ? (rf as { type?: unknown }).type : undefined;
    if (type === 'text') return undefined;
    if (type !== 'json_object' && type !== 'json_schema') throw new HttpError(400, `response_format: expected { type: 'text' }, { type: 'json_object' } or { type: 'json_schema', json_schema: { schema } }, got ${JSON.stringify(rf)}`, 'response_format');
    const what = `response_format ${type}`;
    return this.grammarFor(what, 'response_format', (vocabulary) => {
      if (type === 'json_object') return (this.json ??= new JsonGrammar(vocabulary));
      const js = (rf as { json_schema?: unknown }).json_schema;
      const schema = typeof js === 'object' && js !== null ? (js as { schema?: unknown }).schema : undefined;
      if (schema === undefined) throw new HttpError(400, `${what}: expected json_schema: { schema, name?, strict? }`, 'response_format');
      return this.cachedSchema(JSON.stringify(schema), () => new JsonSchemaGrammar(vocabulary, schema, { cacheEntries: SCHEMA_MASKS }));
    });
  }

  /** A grammar over the tokenizer's vocabulary (built once); its errors as 400s naming `param`. */
  private grammarFor(what: string, param: string, build: (vocabulary: TokenVocabulary) => TokenGrammar): TokenGrammar {
    try {
      if (!this.vocabulary) {
        const t = this.tokenizer;
        if (typeof t?.tokenBytes !== 'function') throw new HttpError(400, `${what}: needs the model's tokenizer (its tokens' bytes); this server has none`, param);
        this.vocabulary = new TokenVocabulary(t.tokenBytes(this.engine.model.config.vocabSize));
      }
      return build(this.vocabulary);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code === 'E_UNSUPPORTED' || code === 'E_ARG') throw new HttpError(400, `${what}: ${(e as Error).message}`, param);
      throw e;
    }
  }

  /** A schema grammar by its key, kept (LRU, up to MAX_SCHEMAS, each with SCHEMA_MASKS masks: 64 MB at a 128k vocabulary). */
  private cachedSchema(key: string, build: () => JsonSchemaGrammar): JsonSchemaGrammar {
    let g = this.schemas.get(key);
    if (g) this.schemas.delete(key);
    else {
      g = build();
      if (this.schemas.size >= MAX_SCHEMAS) this.schemas.delete(this.schemas.keys().next().value as string);
    }
    this.schemas.set(key, g);
    return g;
  }

  /**
   * Whether a chat prompt leaves the think block open: by its marker tokens where the vocabulary has
   * them (a scan from the end; a long chat is not decoded per request), else by its text.
   */
  private opensReasoning(ids: Int32Array): boolean {
    const open = this.tokenizer?.tokenToId?.(THINK_OPEN), close = this.tokenizer?.tokenToId?.(THINK_CLOSE);
    if (open !== undefined && close !== undefined) return promptOpensReasoningIds(ids, open, close);
    return promptOpensReasoning(this.tokenizer?.decode(ids, { skipSpecialTokens: false }) ?? '');
  }

  /** Per prompt, `grammar` for the answer after the think block (its markers must be single tokens). */
  private afterReasoning(grammar: TokenGrammar, opened: readonly boolean[], param: string): TokenGrammar[] {
    const open = this.tokenizer?.tokenToId?.(THINK_OPEN), close = this.tokenizer?.tokenToId?.(THINK_CLOSE);
    if (open === undefined || close === undefined || !this.vocabulary) {
      throw new HttpError(400, `${param}: with --reasoning-parser the grammar applies after the think block, which needs ${THINK_OPEN} and ${THINK_CLOSE} to be tokens of the vocabulary; they are not`, param);
    }
    const vocabulary = this.vocabulary;
    // (Kept per grammar, opened or not: their masks are cached across requests.)
    let pair = this.afterReasoningOf.get(grammar);
    if (!pair) this.afterReasoningOf.set(grammar, (pair = [new AfterReasoning(grammar, vocabulary, open, close, false), new AfterReasoning(grammar, vocabulary, open, close, true)]));
    return opened.map((o) => pair[o ? 1 : 0]);
  }

  /** afterReasoning's grammars by their inner grammar (which the schema cache keeps or lets go). */
  private readonly afterReasoningOf = new WeakMap<TokenGrammar, [AfterReasoning, AfterReasoning]>();

  /**
   * OpenAI's `prediction` ({ type: 'content', content: text or text parts }): text the reply is
   * expected to repeat, as tokens. It changes speed only (prompt lookup drafts from it), never the output.
   */
  private parsePrediction(p: unknown): Int32Array | undefined {
    if (p === undefined || p === null) return undefined;
    const o = p as { type?: unknown; content?: unknown };
    let content = typeof p === 'object' && !Array.isArray(p) && o.type === 'content' ? o.content : undefined;
    if (Array.isArray(content)) content = content.every((x) => (x as { type?: unknown })?.type === 'text' && typeof (x as { text?: unknown }).text === 'string') ? content.map((x) => (x as { text: string }).text).join('') : undefined;
    if (typeof content !== 'string') throw new HttpError(400, `prediction: expected { type: 'content', content: text or text parts }, got ${JSON.stringify(p)}`, 'prediction');
    if (!this.tokenizer) throw new HttpError(400, 'prediction: this model has no tokenizer', 'prediction');
    return content === '' ? undefined : this.tokenizer.encode(content, { addSpecialTokens: false });
  }

  /** `tools` (OpenAI's function definitions; none: []). */
  private parseTools(t: unknown): ToolDefinition[] {
    if (t === undefined || t === null) return [];
    try {
      return checkTools(t);
    } catch (e) {
      throw new HttpError(400, (e as Error).message, 'tools');
    }
  }

  /** What tool_choice makes of a chat's reply (undefined: text, as without tools). */
  private toolMode(tools: readonly ToolDefinition[], b: Record<string, unknown>): ToolMode | undefined {
    let choice;
    try {
      choice = checkToolChoice(b['tool_choice'], tools);
    } catch (e) {
      throw new HttpError(400, (e as Error).message, 'tool_choice');
    }
    const ptc = b['parallel_tool_calls'];
    if (ptc !== undefined && ptc !== null && typeof ptc !== 'boolean') throw new HttpError(400, `parallel_tool_calls: expected true or false, got ${JSON.stringify(ptc)}`, 'parallel_tool_calls');
    if (choice === 'none') return undefined;
    if (choice === 'required') return { kind: 'required' };
    if (choice === 'auto') {
      if (!this.toolCallParser) throw new HttpError(400, "tool_choice: 'auto' (the default with tools) needs a server started with --tool-call-parser (hermes, llama3_json or mistral), which reads calls out of the reply; 'required', a named function and 'none' need none", 'tool_choice');
      if (this.toolCallParser === 'mistral') {
        const markerId = this.tokenizer?.tokenToId?.(MISTRAL_TOOL_CALLS);
        if (markerId === undefined) throw new HttpError(400, `tool_choice: 'auto' with --tool-call-parser mistral needs the vocabulary's ${MISTRAL_TOOL_CALLS} token; this tokenizer has none`, 'tool_choice');
        return { kind: 'auto', format: 'mistral', markerId };
      }
      return { kind: 'auto', format: this.toolCallParser };
    }
    return { kind: 'named', name: choice.function.name };
  }

  /** The grammar of a constrained tool reply ('required' or a named function), kept with the schema grammars. */
  private toolGrammar(tools: readonly ToolDefinition[], mode: ToolMode, parallel: boolean): TokenGrammar {
    const choice = mode.kind === 'named' ? { function: { name: mode.name } } : ('required' as const);
    const param = mode.kind === 'named' ? 'tool_choice' : 'tools';
    return this.grammarFor(`tool_choice ${mode.kind === 'named' ? `'${mode.name}'` : "'required'"}`, param, (vocabulary) =>
      this.cachedSchema(JSON.stringify(['tools', choice, parallel, tools.map((t) => [t.function.name, t.function.parameters ?? null])]), () => toolCallGrammar(vocabulary, tools, choice, { parallel, cacheEntries: SCHEMA_MASKS })),
    );
  }

  /** A prompt as echo shows it: the text sent, or its ids decoded ('' without a tokenizer). */
  private echoText(p: SentPrompt): string {
    if (typeof p.sent === 'string') return p.sent;
    return this.tokenizer ? this.tokenizer.decode(Array.from(p.ids), { skipSpecialTokens: false }) : '';
  }

  /**
   * The completions' `prompt`: a string, an array of token ids, or OpenAI's batch form, an array of
   * those (each prompt its own choices).
   */
  private parsePrompts(p: unknown): SentPrompt[] {
    const batch = Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string' || Array.isArray(x));
    const items: unknown[] = batch ? (p as unknown[]) : [p];
    if (items.length > MAX_REQUESTS) throw new HttpError(400, `prompt: ${items.length} prompts is more than ${MAX_REQUESTS}`, 'prompt');
    return items.map((x, i) => ({ ids: this.parsePrompt(x, batch ? `prompt[${i}]` : 'prompt'), sent: x }));
  }

  private parsePrompt(p: unknown, what: string): Int32Array {
    const V = this.engine.model.config.vocabSize;
    if (typeof p === 'string') {
      if (!this.tokenizer) throw new HttpError(400, `${what}: this model has no tokenizer; send token ids`, 'prompt');
      if (p.length === 0) throw new HttpError(400, `${what}: empty`, 'prompt');
      return this.tokenizer.encode(p);
    }
    if (Array.isArray(p) && p.length > 0 && p.every((t) => typeof t === 'number')) {
      const bad = p.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= V);
      if (bad >= 0) throw new HttpError(400, `${what}[${bad}] = ${String(p[bad])} is not a token id in [0, ${V})`, 'prompt');
      return Int32Array.from(p as number[]);
    }
    throw new HttpError(400, `${what}: expected a non-empty string or a non-empty array of token ids (or an array of those)`, 'prompt');
  }

  /**
   * A chat's messages (content a string, or OpenAI's text parts) as prompt ids through the chat
   * template; `chat_template_kwargs` (vLLM's extension, e.g. { "enable_thinking": false }) become
   * template variables, `tools` the template's tools. An assistant's tool_calls (its content then
   * null or absent) and a tool result's tool_call_id and name go to the template as sent.
   */
  private parseMessages(m: unknown, kwargs: unknown, tools: readonly ToolDefinition[] = []): Int32Array {
    if (kwargs !== undefined && kwargs !== null && (typeof kwargs !== 'object' || Array.isArray(kwargs))) {
      throw new HttpError(400, 'chat_template_kwargs: expected an object of template variables', 'chat_template_kwargs');
    }
    if (!this.chat) throw new HttpError(400, 'messages: this model has no chat template; use /v1/completions with a prompt', 'messages');
    if (!Array.isArray(m) || m.length === 0) throw new HttpError(400, 'messages: expected a non-empty array of { role, content }', 'messages');
    const messages: ChatMessage[] = m.map((x, i) => {
      const o = x as { role?: unknown; content?: unknown; tool_calls?: unknown; tool_call_id?: unknown; name?: unknown } | null;
      if (typeof o !== 'object' || o === null || typeof o.role !== 'string') throw new HttpError(400, `messages[${i}]: expected { role: string, content }`, 'messages');
      const calls = o.tool_calls === undefined || o.tool_calls === null ? undefined : this.messageToolCalls(o.tool_calls, i);
      let content = o.content ?? (calls ? '' : undefined);
      if (Array.isArray(content)) {
        // OpenAI's content parts: text only.
        content = content
          .map((part, j) => {
            const p = part as { type?: unknown; text?: unknown } | null;
            if (p?.type !== 'text' || typeof p.text !== 'string') throw new HttpError(400, `messages[${i}].content[${j}]: only { type: 'text', text } parts are supported`, 'messages');
            return p.text;
          })
          .join('');
      }
      if (typeof content !== 'string') throw new HttpError(400, `messages[${i}].content: expected a string or text parts`, 'messages');
      for (const k of ['tool_call_id', 'name'] as const) {
        if (o[k] !== undefined && o[k] !== null && typeof o[k] !== 'string') throw new HttpError(400, `messages[${i}].${k}: expected a string`, 'messages');
      }
      return {
        role: o.role,
        content,
        ...(calls ? { tool_calls: calls } : {}),
        ...(typeof o.tool_call_id === 'string' ? { tool_call_id: o.tool_call_id } : {}),
        ...(typeof o.name === 'string' ? { name: o.name } : {}),
      };
    });
    try {
      return this.chat.encodeChat(messages, { ...(kwargs ? { variables: kwargs as Record<string, unknown> } : {}), ...(tools.length > 0 ? { tools } : {}) });
    } catch (e) {
      const err = e as Error & { code?: string };
      if (err.code === 'E_ARG') throw new HttpError(400, `messages: ${err.message}`, 'messages');
      throw e;
    }
  }

  /** An assistant message's tool_calls as OpenAI sends them: [{ id, type: 'function', function: { name, arguments: JSON text } }]. */
  private messageToolCalls(v: unknown, i: number): ChatMessage['tool_calls'] {
    const want = `messages[${i}].tool_calls: expected [{ id, type: 'function', function: { name, arguments: JSON text } }]`;
    if (!Array.isArray(v)) throw new HttpError(400, want, 'messages');
    return v.map((c: unknown) => {
      const o = c as { id?: unknown; function?: { name?: unknown; arguments?: unknown } } | null;
      const f = o?.function;
      if (typeof o !== 'object' || o === null || typeof f !== 'object' || f === null || typeof f.name !== 'string' || typeof f.arguments !== 'string' || (o.id !== undefined && typeof o.id !== 'string')) throw new HttpError(400, want, 'messages');
      return { ...(typeof o.id === 'string' ? { id: o.id } : {}), type: 'function' as const, function: { name: f.name, arguments: f.arguments } };
    });
  }

  private async complete(res: http.ServerResponse, c: Completion, chat: boolean): Promise<void> {
    // The client going away cancels the request (the socket closes before the response ended), as
    // does a choice failing (the others stop with it).
    const cancel = new AbortController();
    const P = c.prompts.length;
    // (Each choice listens on it a few times: no warning for many choices.)
    setMaxListeners(4 * P * c.bestOf + 10, cancel.signal);
    res.on('close', () => {
      if (!res.writableEnded) cancel.abort();
    });
    const engine = this.engine;
    // echo with logprobs: each prompt's log-probabilities, read by its first candidate's request
    // (the same for every choice), as soon as its prompt is read.
    const promptLp = c.echo !== undefined && c.logprobs !== undefined ? c.prompts.map(() => waiter<TokenLogprobs | undefined>()) : undefined;
    // Candidate p * bestOf + i: prompt p's engine request sampling from stream (seed, i), as
    // sequence i of a batch would (a prompt's choices do not depend on the others sent with it).
    // (best_of > n: every candidate records its log-probabilities, which rank them.)
    const ranking = c.bestOf > c.n;
    const logprobs = c.logprobs ?? (ranking ? 0 : undefined);
    const gens = Array.from({ length: P * c.bestOf }, (_, q) => {
      const p = Math.floor(q / c.bestOf), i = q % c.bestOf;
      const source = {
        generate: (prompt: Int32Array | readonly number[], o: GenerateOptions) => {
          const r: { -readonly [K in keyof RequestOptions]: RequestOptions[K] } = { ...o, seed: c.seed, stream: i };
          if (c.sampling) r.sampling = c.sampling;
          if (c.penalties) r.penalties = c.penalties;
          if (i === 0 && promptLp) {
            r.promptLogprobs = c.logprobs as number;
            r.onPromptLogprobs = (promptLp[p] as Waiter<TokenLogprobs | undefined>).resolve;
          }
          return engine.generate(prompt, r);
        },
      };
      return generateText(source, this.tokenizer ?? NO_TEXT, c.prompts[p] as Int32Array, {
        maxNewTokens: c.maxTokens,
        signal: cancel.signal,
        ...(logprobs !== undefined ? { logprobs } : {}),
        ...(c.minTokens > 0 ? { minTokens: c.minTokens } : {}),
        ...(c.stop.length > 0 ? { stopStrings: c.stop } : {}),
        ...(c.stopTokenIds.length > 0 ? { stopTokens: c.stopTokenIds } : {}),
        ...(c.ignoreEos ? { ignoreEos: true } : {}),
        ...(c.grammar ? { grammar: c.grammars?.[p] ?? c.grammar } : {}),
        ...(c.prediction ? { prediction: c.prediction } : {}),
      });
    });
    // One choice failing ends the others (their results then reject as aborted: not reported).
    const results = gens.map((g) =>
      g.result.catch((e: unknown) => {
        cancel.abort();
        throw e;
      }),
    );
    // (Handled here: a stream that fails reads them all later, in firstError.)
    for (const r of results) r.catch(() => undefined);
    // (A first candidate failing before its prompt is read: nothing to wait for; its error is reported.)
    promptLp?.forEach((w, p) => results[p * c.bestOf]?.catch(() => w.resolve(undefined)));
    // The error to report: a choice's own, not the aborts it caused in the others.
    const firstError = async (): Promise<unknown> => {
      const settled = await Promise.allSettled(results);
      const failed = settled.filter((x): x is PromiseRejectedResult => x.status === 'rejected').map((x) => x.reason as Error);
      return failed.find((e) => e?.name !== 'AbortError') ?? failed[0];
    };
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const head = { id, object: chat ? 'chat.completion' : 'text_completion', created: Math.floor(Date.now() / 1000), model: this.modelName };
    const chunkHead = chat ? { ...head, object: 'chat.completion.chunk' } : head;
    // Each prompt counts once, whatever n is (OpenAI's usage).
    const promptTokens = c.prompts.reduce((a, x) => a + x.length, 0);
    // Of them, those found in the KV cache (prefix sharing, the prefix cache): per prompt, the fewest
    // any of its candidates took (OpenAI's prompt_tokens_details.cached_tokens; the first candidate of
    // a new prompt computes it, the others then share it).
    const cachedOf = (rs: readonly TextResult[]): number => {
      let n = 0;
      for (let p = 0; p < P; p++) {
        let least = Infinity;
        for (let i = 0; i < c.bestOf; i++) least = Math.min(least, rs[p * c.bestOf + i]?.stats.cachedPromptTokens ?? Infinity);
        if (least !== Infinity) n += least;
      }
      return n;
    };
    const usage = (completion: number, rs: readonly TextResult[]): Record<string, unknown> => ({
      prompt_tokens: promptTokens,
      completion_tokens: completion,
      total_tokens: promptTokens + completion,
      prompt_tokens_details: { cached_tokens: cachedOf(rs) },
    });
    const echoOf = (p: number): string => c.echo?.[p] ?? '';
    // echo with logprobs: the prompt's entries, then each choice's (their text offsets past the echo).
    const withPrompt = (lp: Record<string, unknown> | null, prompt: ReturnType<CompletionServer['promptLogprobsJson']> | undefined): Record<string, unknown> | null => {
      if (!prompt) return lp;
      const o = lp as { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] } | null;
      return {
        tokens: [...prompt.tokens, ...(o?.tokens ?? [])],
        token_logprobs: [...prompt.token_logprobs, ...(o?.token_logprobs ?? [])],
        top_logprobs: [...prompt.top_logprobs, ...(o?.top_logprobs ?? [])],
        text_offset: [...prompt.text_offset, ...(o?.text_offset ?? [])],
      };
    };
    // Prompt p's entries (computed once, whichever choice asks first).
    const promptEntries = new Map<number, Promise<ReturnType<CompletionServer['promptLogprobsJson']> | undefined>>();
    const promptJson = (p: number): Promise<ReturnType<CompletionServer['promptLogprobsJson']> | undefined> => {
      let e = promptEntries.get(p);
      if (!e) {
        const w = promptLp?.[p];
        e = w ? w.promise.then((lp) => (lp ? this.promptLogprobsJson(lp, c.prompts[p] as Int32Array, c.echoSpecials[p] as boolean) : undefined)) : Promise.resolve(undefined);
        promptEntries.set(p, e);
      }
      return e;
    };
    if (!c.stream) {
      // Submission errors (E_ARG...) surface here, before any header is sent.
      const rs = await Promise.all(results).catch(async () => {
        throw toHttpError(await firstError());
      });
      const choices: Record<string, unknown>[] = [];
      for (let p = 0; p < P; p++) {
        const prompt = await promptJson(p);
        const mine = rs.slice(p * c.bestOf, (p + 1) * c.bestOf);
        // best_of: the n candidates of highest summed log-probability, best first (ties: lower stream).
        const sum = (r: (typeof rs)[number]): number => (r.logprobs ? r.logprobs.token.reduce((a, x) => a + x, 0) : 0);
        const best = ranking ? mine.map((r, i) => ({ r, i, s: sum(r) })).sort((a, b) => b.s - a.s || a.i - b.i).slice(0, c.n).map((x) => x.r) : mine;
        const echo = echoOf(p);
        best.forEach((r, k) => {
          const index = p * c.n + k;
          const logprobs = withPrompt(r.logprobs && c.logprobs !== undefined ? this.logprobsJson(r.logprobs, r.tokens, chat, new IncrementalText(this.offsetDecode), [], echo.length) : null, prompt);
          choices.push(
            chat
              ? { index, ...chatReply(r.text, r.finishReason, c.tools, c.reasoning?.[p], r.tokens[0]), logprobs }
              : { index, text: echo + r.text, token_ids: Array.from(r.tokens), logprobs, finish_reason: finishReason(r.finishReason) },
          );
        });
      }
      this.sendJson(res, 200, { ...head, choices, usage: usage(rs.reduce((a, r) => a + r.tokens.length, 0), rs) });
      return;
    }
    // Streamed (best_of = n): choice index q is candidate q.
    const send = (obj: unknown): void => {
      if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    // A token chunk's event is the JSON of { ...head, choices: [{ index, text, token_ids, logprobs,
    // finish_reason: null }] } with the constant parts rendered once per choice: one event per
    // request per step runs on the thread that also feeds the forward's workers.
    // A chat chunk is { ...head, choices: [{ index, delta: { content }, logprobs, finish_reason: null }] },
    // each choice's first one also carrying the role (OpenAI's chat.completion.chunk).
    const pres = gens.map((_, index) =>
      chat
        ? `data: ${JSON.stringify({ ...chunkHead, choices: [{ index, delta: { content: '' } }] }).slice(0, -6)}`
        : `data: ${JSON.stringify({ ...head, choices: [{ index, text: '' }] }).slice(0, -5)}`,
    );
    const post = (tokens: Int32Array | readonly number[]): string => (chat ? '},"logprobs":null,"finish_reason":null}]}\n\n' : `,"token_ids":[${tokens.join(',')}],"logprobs":null,"finish_reason":null}]}\n\n`);
    let started = false;
    const start = (): void => {
      if (started) return;
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
      started = true;
    };
    // Each choice opens with its own first chunk: the role (chat), or the echo (no tokens; with
    // logprobs, the prompt's, so it waits for them).
    const open = async (index: number): Promise<void> => {
      const p = Math.floor(index / c.n);
      const prompt = promptLp ? await promptJson(p) : undefined;
      start();
      if (chat) send({ ...chunkHead, choices: [{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] });
      else if (c.echo !== undefined) send({ ...head, choices: [{ index, text: echoOf(p), token_ids: [], logprobs: withPrompt(null, prompt), finish_reason: null }] });
    };
    // Each choice streams its chunks as they come, then its finish; the usage and [DONE] follow the last.
    let completion = 0;
    const streamChoice = async (g: (typeof gens)[number], index: number): Promise<void> => {
      // With logprobs: each chunk's, the completions' text offsets running over the choice's tokens.
      const offsets = c.logprobs !== undefined ? new IncrementalText(this.offsetDecode) : undefined;
      const all: number[] = [];
      const base = echoOf(Math.floor(index / c.n)).length;
      let opened = false;
      const p = Math.floor(index / c.n);
      const deltas = chat && (c.tools || c.reasoning) ? new ChatDeltas(c.tools, c.reasoning?.[p]) : undefined;
      for await (const chunk of g) {
        if (!opened) {
          await open(index);
          opened = true;
        }
        if (deltas) {
          // Reasoning, content and call pieces as they become known (a held-back piece: its logprobs alone).
          const ds = deltas.push(chunk.text, chunk.tokens);
          const logprobs = offsets && chunk.logprobs ? this.logprobsJson(chunk.logprobs, chunk.tokens, chat, offsets, all, base) : null;
          if (ds.length === 0 && logprobs) ds.push({});
          ds.forEach((delta, k) => send({ ...chunkHead, choices: [{ index, delta, logprobs: k === 0 ? logprobs : null, finish_reason: null }] }));
        } else if (offsets && chunk.logprobs) {
          const logprobs = this.logprobsJson(chunk.logprobs, chunk.tokens, chat, offsets, all, base);
          send({ ...chunkHead, choices: [chat ? { index, delta: { content: chunk.text }, logprobs, finish_reason: null } : { index, text: chunk.text, token_ids: Array.from(chunk.tokens), logprobs, finish_reason: null }] });
        } else if (!res.writableEnded && !res.destroyed) res.write(`${pres[index] as string}${JSON.stringify(chunk.text)}${post(chunk.tokens)}`);
      }
      const r = await results[index]!;
      if (!opened) await open(index);
      completion += r.tokens.length;
      let finish: string = finishReason(r.finishReason);
      if (deltas) {
        const end = deltas.end(r.finishReason);
        for (const delta of end.deltas) send({ ...chunkHead, choices: [{ index, delta, logprobs: null, finish_reason: null }] });
        finish = end.finish;
      }
      const last = chat
        ? { index, delta: {}, logprobs: null, finish_reason: finish }
        : { index, text: '', token_ids: [], logprobs: null, finish_reason: finishReason(r.finishReason) };
      send({ ...chunkHead, choices: [last], ...(gens.length === 1 ? { usage: usage(r.tokens.length, [r]) } : {}) });
    };
    const streamed = gens.map((g, i) =>
      streamChoice(g, i).catch((e: unknown) => {
        cancel.abort();
        throw e;
      }),
    );
    for (const s of streamed) s.catch(() => undefined);
    try {
      await Promise.all(streamed);
      // (One choice's finish chunk carries the usage too; with several, only stream_options' chunk.)
      if (c.includeUsage) send({ ...chunkHead, choices: [], usage: usage(completion, await Promise.all(results)) });
      res.end('data: [DONE]\n\n');
    } catch {
      const e = await firstError();
      if (!started) throw toHttpError(e);
      // Headers are out: report in the stream, then end it.
      if ((e as Error)?.name !== 'AbortError') send({ error: errorBody(toHttpError(e)) });
      res.end();
    }
  }

  private sendJson(res: http.ServerResponse, status: number, obj: unknown): void {
    const body = JSON.stringify(obj);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }

  private sendError(res: http.ServerResponse, e: unknown): void {
    const err = toHttpError(e);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // (The body was not read: the connection goes with the reply.)
    if (err.status === 413 || err.status === 401) res.setHeader('Connection', 'close');
    this.sendJson(res, err.status, { error: errorBody(err) });
  }
}

/** Output text when the model has no tokenizer (prompts are ids; `token_ids` carries the output). */
const NO_TEXT: TextCodec = {
  encode: () => {
    throw new HttpError(400, 'prompt: this model has no tokenizer; send token ids', 'prompt');
  },
  decode: () => '',
};

function finishReason(r: string): 'stop' | 'length' {
  return r === 'stop' ? 'stop' : 'length';
}

/** A 'required' reply's calls, their arguments as written (cut short: the last as far as it got). */
function readRequiredCalls(text: string): ToolCall[] {
  const r = new RequiredCallsReader();
  r.push(text);
  return r.calls;
}

/**
 * A chat choice's message and finish reason: its text, or with tools its calls (OpenAI's content:
 * null beside tool_calls; finish 'tool_calls', but 'stop' for a named function, as OpenAI's). A named
 * function's call is the reply, its arguments the text as written; a 'required' reply's calls are
 * those begun, their arguments as written (cut short: the last as far as it got, finish 'length');
 * a reply without calls (cut before the first, or 'auto' text) is content.
 */
function chatReply(text: string, finish: string, mode: ToolMode | undefined, opened?: boolean, firstToken?: number): { message: Record<string, unknown>; finish_reason: string } {
  if (opened !== undefined) {
    // A reasoning model's reply: its think block, then the answer read as without one.
    const split = splitReasoning(text, opened);
    const answer = split.content === null ? { message: { role: 'assistant', content: null }, finish_reason: finishReason(finish) } : chatReply(split.content, finish, mode);
    return { message: { ...answer.message, reasoning_content: split.reasoning }, finish_reason: answer.finish_reason };
  }
  const plain = { message: { role: 'assistant', content: text }, finish_reason: finishReason(finish) };
  if (!mode) return plain;
  const parsed =
    mode.kind === 'auto'
      ? parseToolCalls(mode.markerId !== undefined && firstToken === mode.markerId ? MISTRAL_TOOL_CALLS + text : text, mode.format)
      : mode.kind === 'named'
        ? { content: null, calls: [{ id: toolCallId(), type: 'function', function: { name: mode.name, arguments: text } }] }
        : { content: null, calls: readRequiredCalls(text) };
  if (parsed.calls.length === 0) return plain;
  return { message: { role: 'assistant', content: parsed.content, tool_calls: parsed.calls }, finish_reason: finish !== 'stop' ? finishReason(finish) : mode.kind === 'named' ? 'stop' : 'tool_calls' };
}

/**
 * A streamed chat choice's deltas with a reasoning parser or tools: the think block's pieces as
 * `reasoning_content`, then the answer's as content or tool calls (ToolDeltas). Joined, chatReply's.
 */
class ChatDeltas {
  private readonly reasoning: ReasoningStream | undefined;
  private readonly tools: ToolDeltas | undefined;

  private readonly markerId: number | undefined;
  private seenToken = false;

  constructor(mode: ToolMode | undefined, opened: boolean | undefined) {
    this.reasoning = opened !== undefined ? new ReasoningStream(opened) : undefined;
    this.tools = mode ? new ToolDeltas(mode) : undefined;
    this.markerId = mode?.kind === 'auto' ? mode.markerId : undefined;
  }

  push(piece: string, tokens: ArrayLike<number> = []): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    let content = piece;
    // (Mistral's marker is a special token, left out of the text: put back where the reply opens with it.)
    if (!this.seenToken && tokens.length > 0) {
      this.seenToken = true;
      if (this.markerId !== undefined && tokens[0] === this.markerId && !this.reasoning) content = MISTRAL_TOOL_CALLS + content;
    }
    if (this.reasoning) {
      const r = this.reasoning.push(piece);
      if (r.reasoning) out.push({ reasoning_content: r.reasoning });
      content = r.content;
    }
    this.answer(content, out);
    return out;
  }

  end(finish: string): { deltas: Record<string, unknown>[]; finish: string } {
    const out: Record<string, unknown>[] = [];
    let content = '';
    if (this.reasoning) {
      const r = this.reasoning.end();
      if (r.reasoning) out.push({ reasoning_content: r.reasoning });
      content = r.content;
    }
    this.answer(content, out);
    if (!this.tools) return { deltas: out, finish: finishReason(finish) };
    const e = this.tools.end(finish);
    return { deltas: [...out, ...e.deltas], finish: e.finish };
  }

  private answer(content: string, out: Record<string, unknown>[]): void {
    if (this.tools) {
      const d = this.tools.push(content);
      if (d) out.push(d);
    } else if (content) out.push({ content });
  }
}

/**
 * A streamed chat choice's deltas with tools (OpenAI's chat.completion.chunk): a named function's
 * arguments as they come (the first piece with the call's id and name); otherwise content as soon as
 * it cannot be the start of a call, and each call whole at the end. Joined, they are chatReply's.
 */
class ToolDeltas {
  private readonly text: ToolCallStream | undefined;
  private readonly required: RequiredCallsReader | undefined;
  private readonly id = toolCallId();
  private args = '';
  /** 'required': the reply so far (content if no call begins in it). */
  private raw = '';

  constructor(private readonly mode: ToolMode) {
    this.text = mode.kind === 'auto' ? new ToolCallStream(mode.format) : undefined;
    this.required = mode.kind === 'required' ? new RequiredCallsReader() : undefined;
  }

  push(piece: string): Record<string, unknown> | undefined {
    if (this.mode.kind === 'named') {
      if (piece === '') return undefined;
      const first = this.args === '';
      this.args += piece;
      return { tool_calls: [first ? { index: 0, id: this.id, type: 'function', function: { name: this.mode.name, arguments: piece } } : { index: 0, function: { arguments: piece } }] };
    }
    if (this.required) {
      // Each call as it begins (its id and name), then its arguments' pieces.
      this.raw += piece;
      // (A call begun and its first arguments in the same piece: one entry.)
      const calls: { index: number; function: { arguments: string } }[] = [];
      for (const e of this.required.push(piece)) {
        const last = calls[calls.length - 1];
        if (e.kind === 'call') calls.push({ index: e.index, id: e.id, type: 'function', function: { name: e.name, arguments: '' } } as (typeof calls)[number]);
        else if (last && last.index === e.index) last.function.arguments += e.text;
        else calls.push({ index: e.index, function: { arguments: e.text } });
      }
      return calls.length > 0 ? { tool_calls: calls } : undefined;
    }
    const content = (this.text as ToolCallStream).push(piece);
    return content ? { content } : undefined;
  }

  end(finish: string): { deltas: Record<string, unknown>[]; finish: string } {
    if (this.mode.kind === 'named') return { deltas: [], finish: finishReason(finish) };
    if (this.required) {
      const begun = this.required.calls.length > 0;
      return { deltas: begun || this.raw === '' ? [] : [{ content: this.raw }], finish: begun && finish === 'stop' ? 'tool_calls' : finishReason(finish) };
    }
    const { content, calls } = (this.text as ToolCallStream).end();
    const deltas: Record<string, unknown>[] = [];
    if (content) deltas.push({ content });
    if (calls.length > 0) deltas.push({ tool_calls: calls.map((c, index) => ({ index, ...c })) });
    return { deltas, finish: calls.length > 0 && finish === 'stop' ? 'tool_calls' : finishReason(finish) };
  }
}

function errorBody(e: HttpError): Record<string, unknown> {
  return { message: e.message, type: e.code, param: e.param, code: e.code };
}

/** Engine errors as HTTP: bad input (E_ARG) and a request the cache can never hold (E_KV_FULL) are 400. */
function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  const err = e as Error & { code?: string };
  if (err?.code === 'E_ARG' || err?.code === 'E_KV_FULL') {
    const param = /^(prompt|maxNewTokens|temperature|topP|topK|seed)/.exec(err.message)?.[1] ?? null;
    const field = param === 'maxNewTokens' ? 'max_tokens' : param === 'topP' ? 'top_p' : param === 'topK' ? 'top_k' : param;
    return new HttpError(400, err.message, field);
  }
  if (err?.code === 'E_CLOSED') return new HttpError(503, err.message, null, 'unavailable');
  return new HttpError(500, err?.message ?? String(e));
}
