// `specdec generate`: plain autoregressive decoding (the baseline), or a speculative strategy
// (lib/cli/strategy_flags.ts parses those flags and runs them). Flags: DESIGN §6. Bad input exits non-zero with one
// line on stderr; results go to stdout: text streamed as it is generated, or one JSON document with --json.
import * as fs from 'fs';
import type { CausalLM } from '../models/causal_lm';
import { readLlamaConfig } from '../models/config';
import { LlamaModel } from '../models/llama';
import { plainGenerate } from '../plain';
import type { Device } from '../tensor';
import type { Penalties } from '../sampling';
import { IncrementalText, SettledText } from '../text';
import { TextTokenizer, type ChatMessage } from '../tokenizer';
import { JsonGrammar, TokenVocabulary, type TokenGrammar } from '../grammar';
import { JsonSchemaGrammar } from '../json_schema';
import { defaultModelPaths } from '../default_models';
import { codedError } from '../errors';
import { MAX_LOGPROBS } from '../logprobs';
import { logprobsRecord, type LogprobsRecord } from './logprobs_record';
import { parseStrategyFlags, strategyHook, STRATEGY_FLAGS, STRATEGY_USAGE, treeRoomFor, type StrategyFlags } from './strategy_flags';

/** The embedded default family (models/default, trained by scripts/train-default.js). */
export const EMBEDDED = defaultModelPaths();

export type { StrategyFlags } from './strategy_flags';

export interface GenerateFlags {
  readonly model?: string;
  readonly strategy: StrategyFlags;
  readonly prompt?: string;
  readonly promptIds?: Int32Array;
  readonly batchFile?: string;
  /** Text prompts are user messages, written through the model's chat template (--chat). */
  readonly chat?: boolean;
  /** A system message before each chat (--system; needs --chat). */
  readonly system?: string;
  /** More chat template variables (--chat-vars, a JSON object; needs --chat). */
  readonly chatVars?: Readonly<Record<string, unknown>>;
  readonly maxNewTokens: number;
  /** Positions per sequence the KV cache is sized for (prompt + output); default: the longest
   *  prompt + maxNewTokens, at most max_position_embeddings. */
  readonly maxContext?: number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  /** --min-p (default 0: off). */
  readonly minP?: number;
  readonly seed: number;
  /** --ignore-eos: the model's EOS ids do not end a sequence (default false). */
  readonly ignoreEos?: boolean;
  /** --repetition-penalty, --presence-penalty, --frequency-penalty, --logit-bias (default none). */
  readonly penalties?: Penalties;
  /** --logprobs N (with --json): each token's log-probability and its N most probable alternatives. */
  readonly logprobs?: number;
  /** --prompt-logprobs N (with --json): each prompt token's log-probability (the first's none) and N alternatives. */
  readonly promptLogprobs?: number;
  /** --min-tokens N: no stop token before N tokens (default 0). */
  readonly minTokens?: number;
  /** --response-format json_object: the output is a JSON object (a JsonGrammar over the tokenizer's vocabulary). */
  readonly responseFormat?: 'json_object';
  /** --json-schema FILE: the output is a JSON value valid for this JSON Schema (lib/json_schema.ts's subset). */
  readonly jsonSchema?: string;
  readonly device: Device | 'auto';
  readonly json: boolean;
}

/** What one sequence's run reports (the --json object, DESIGN §6). */
export interface GenerateRecord {
  tokens: number[];
  text: string;
  /** stop: a stop token (EOS); length: --max-new-tokens; context: the context is full; abort: interrupted. */
  finishReason: FinishReason;
  stats: {
    targetForwards: number;
    tokensPerForward: number;
    /** null when the run was interrupted before the decoder reported it. */
    acceptanceRate: number | null;
    acceptedPerPosition: number[];
    seconds: number;
    tokensPerSecond: number;
    /** Speculative runs: nodes verified per step -> steps (the sizes the cost model chose). */
    nodesPerStep?: Record<number, number>;
    /**
     * Speculative runs sized by the cost model: seconds its calibration took before the run
     * (SpeculativeDecoder.prepare; once per process, not part of `seconds`).
     */
    prepareSeconds?: number;
  };
  /** --logprobs: per token, its log-probability and the N most probable tokens (null: -infinity). */
  logprobs?: LogprobsRecord;
  /** --prompt-logprobs: the prompt's tokens after the first, as `logprobs` (under the target's raw distribution). */
  promptLogprobs?: LogprobsRecord;
}

export type FinishReason = 'stop' | 'length' | 'context' | 'abort';

/** A speculative strategy runner: gets the loaded target and the prompts, returns one record per prompt. */
export type StrategyHook = (ctx: {
  flags: GenerateFlags;
  target: CausalLM;
  prompts: Int32Array[];
  decode: (ids: ArrayLike<number>) => string;
  /** Called with each step's new tokens of prompt `index` (streaming, and what an abort keeps). */
  onTokens?: (index: number, tokens: Int32Array) => void;
  signal?: AbortSignal;
  /** --response-format: the grammar the output follows. */
  grammar?: TokenGrammar;
}) => Promise<GenerateRecord[]>;

export interface GenerateIo {
  readonly stdout?: (s: string) => void;
  readonly stderr?: (s: string) => void;
  /** Runs --draft/--medusa/--eagle/--lookahead/--prompt-lookup (default: strategyHook() of strategy_flags.ts). */
  readonly strategyHook?: StrategyHook;
  /** Stops the run (finishReason 'abort'); default: the first SIGINT. */
  readonly signal?: AbortSignal;
}

export const GENERATE_USAGE = `usage: specdec generate [--model DIR] [--draft DIR [--draft-k K]] [--medusa DIR | --eagle DIR | --lookahead W,N,G | --prompt-lookup N]
                       (--prompt TEXT | --prompt-ids 1,2,3 | --batch-file F) [--chat [--system TEXT] [--chat-vars JSON]]
                       [--max-new-tokens N] [--min-tokens N] [--max-context N] [--ignore-eos]
                       [--response-format json_object | --json-schema FILE]
                       [--temperature T --top-k K --top-p P --min-p P --seed S]
                       [--repetition-penalty R --presence-penalty P --frequency-penalty F] [--logit-bias ID=B,...]
                       [--device cpu|cuda|auto] [--json [--logprobs N] [--prompt-logprobs N]]

  --model DIR         Hugging Face checkpoint directory (config.json + model.safetensors[.index.json]);
                      default: the embedded model family (models/default); --draft default,
                      --medusa default and --eagle default select its draft, Medusa and EAGLE heads
  --prompt TEXT       prompt text (needs tokenizer.json in the model directory)
  --prompt-ids IDS    prompt token ids, comma-separated (bypasses the tokenizer)
  --batch-file F      JSON array of prompts (strings, id arrays, or chats: arrays of { role, content }),
                      run together as one batch; sequence i samples from RNG stream (seed, i)
  --chat              text prompts are user messages: written through the model's chat template
                      (chat_template.jinja or tokenizer_config.json), ending with the assistant's turn
  --system TEXT       a system message before each chat (with --chat)
  --chat-vars JSON    more chat template variables, e.g. '{"enable_thinking": false}' (Qwen3; with --chat)
  --max-new-tokens N  new tokens per prompt (default 64)
  --min-tokens N      no EOS before N new tokens (vLLM's min_tokens; default 0)
  --ignore-eos        the model's EOS tokens do not end a sequence: runs of --max-new-tokens each
                      (for timing; the text after an EOS is whatever the model makes of it)
  --response-format json_object
                      the output is a JSON object (OpenAI's response_format; EOS only once it is
                      complete; needs a byte-level or SentencePiece tokenizer). Default: text
  --json-schema FILE  the output is a JSON value valid for the JSON Schema in FILE (type, enum, const,
                      properties (written in the schema's order), required, items, minItems,
                      maxItems, $ref, anyOf of different types; other keywords are refused)
  --max-context N     positions per sequence (prompt + output) the KV cache is sized for; a run that
                      fills them ends with finishReason 'context' (default: the longest prompt +
                      --max-new-tokens, at most the model's max_position_embeddings)
  --temperature T     sampling temperature; 0 = greedy (default 0)
  --top-k K           sample among the K most likely tokens (default 0 = off)
  --top-p P           sample from the smallest set with probability >= P (default 1 = off)
  --min-p P           drop tokens less probable than P times the most probable one (default 0 = off)
  --repetition-penalty R  logits of tokens in the prompt or output: l / R if l > 0, else l * R
                      (transformers' repetition_penalty; default 1 = off)
  --presence-penalty P  subtracted from the logit of each token the output holds (OpenAI's; default 0)
  --frequency-penalty F subtracted per occurrence in the output (OpenAI's; default 0)
  --logprobs N         with --json: each token's log-probability and its N (0-20) most probable
                      alternatives (the target's distribution after penalties and bias, at T 1)
  --prompt-logprobs N  with --json: each prompt token's (after the first) log-probability and N
                      alternatives under the target's own distribution (scoring a text; with
                      --max-new-tokens 0 nothing is generated)
  --logit-bias ID=B,... added to token ID's logit before the penalties (OpenAI's logit_bias); B a
                      number, or -inf to ban the token. Penalties and biases apply to plain and
                      speculative decoding alike (the same output)
  --seed S            RNG seed (default 0); sequence i of a batch uses stream (S, i)
  --device D          cpu, cuda or auto (default auto)
  --json              one JSON object on stdout ({ tokens, text, finishReason, stats }), an array with
                      --batch-file; without --json the text streams to stdout as it is generated and
                      a summary (tokens/s, tokens per forward, finish reason) goes to stderr
  -h, --help          this help
${STRATEGY_USAGE}

A value that starts with '--' must be attached: --prompt=--text. Ctrl-C stops a run: what was
generated so far is printed, with finishReason 'abort' (exit code 130).`;

/** A user error: one line, exit code 2 (usage) or 1 (input). */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}

export function parseIntFlag(flag: string, v: string, min: number): number {
  if (!/^-?\d+$/.test(v.trim())) throw new CliError(`${flag}: expected an integer, got '${v}'`);
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new CliError(`${flag}: expected an integer >= ${min}, got '${v}'`);
  return n;
}

export function parseNumberFlag(flag: string, v: string, ok: (n: number) => boolean, want: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new CliError(`${flag}: expected ${want}, got '${v}'`);
  return n;
}

/** Largest token id an Int32Array holds; ids are checked against the vocabulary once the model is known. */
const MAX_TOKEN_ID = 0x7fffffff;

export function parseIdList(flag: string, v: string): Int32Array {
  const parts = v.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p))) throw new CliError(`${flag}: expected comma-separated token ids (e.g. 1,2,3), got '${v}'`);
  const ids = parts.map(Number);
  const bad = ids.findIndex((n) => !Number.isSafeInteger(n) || n > MAX_TOKEN_ID);
  if (bad >= 0) throw new CliError(`${flag}: ${parts[bad]} is not a token id (expected an integer in [0, ${MAX_TOKEN_ID}])`);
  return Int32Array.from(ids);
}

/** --logit-bias ID=B,...: B a number or -inf (ids are checked against the vocabulary once the model is known). */
export function parseLogitBias(v: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const part of v.split(',')) {
    const m = /^\s*(\d+)\s*=\s*(\S+)\s*$/.exec(part);
    const id = m ? Number(m[1]) : NaN;
    const b = m ? (/^-inf(inity)?$/i.test(m[2]!) ? -Infinity : Number(m[2])) : NaN;
    if (!m || !Number.isSafeInteger(id) || id > MAX_TOKEN_ID || !(Number.isFinite(b) || b === -Infinity)) {
      throw new CliError(`--logit-bias: expected ID=BIAS pairs separated by commas (BIAS a number or -inf, e.g. 13=-100,42=2.5), got '${part.trim()}'`);
    }
    out.set(id, b);
  }
  return out;
}

/** The flags of `generate` that take a value (the strategy flags are STRATEGY_FLAGS). */
const VALUE_FLAGS: readonly string[] = [
  '--model', '--prompt', '--prompt-ids', '--max-new-tokens', '--max-context',
  '--temperature', '--top-k', '--top-p', '--min-p', '--seed', '--repetition-penalty', '--presence-penalty', '--frequency-penalty', '--logit-bias', '--logprobs', '--prompt-logprobs', '--min-tokens', '--response-format', '--json-schema', '--device', '--batch-file', '--system', '--chat-vars',
];

/** Every flag `generate` accepts (each is described in GENERATE_USAGE). */
export const GENERATE_FLAGS: readonly string[] = [...VALUE_FLAGS, '--json', '--chat', '--ignore-eos', ...STRATEGY_FLAGS];

/**
 * Parses argv (after `generate`). The strategy flags are picked out first by parseStrategyFlags
 * (lib/cli/strategy_flags.ts). Throws CliError (or a coded E_ARG) with a one-line reason.
 */
export function parseGenerateFlags(argv: readonly string[]): GenerateFlags {
  const picked = parseStrategyFlags(argv);
  const strategy = picked.flags;
  argv = picked.rest;
  const values = new Map<string, string>();
  let json = false;
  let chat = false;
  let ignoreEos = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    if (name === '--json' || name === '--chat' || name === '--ignore-eos') {
      if (eq > 0) throw new CliError(`${name} takes no value`);
      if (name === '--json') json = true;
      else if (name === '--chat') chat = true;
      else ignoreEos = true;
      continue;
    }
    if (!VALUE_FLAGS.includes(name)) throw new CliError(arg.startsWith('-') ? `unknown flag '${name}'` : `unexpected argument '${arg}'`);
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else value = argv[++i];
    if (value === undefined) throw new CliError(`${name} needs a value`);
    if (eq < 0 && value.startsWith('--')) throw new CliError(`${name} needs a value, got the flag '${value}' (write ${name}=${value} for a value that starts with --)`);
    if (values.has(name)) throw new CliError(`${name} given twice`);
    values.set(name, value);
  }
  const get = (k: string): string | undefined => values.get(k);

  const prompt = get('--prompt');
  const promptIds = get('--prompt-ids');
  const batchFile = get('--batch-file');
  const sources = [prompt, promptIds, batchFile].filter((x) => x !== undefined).length;
  if (sources !== 1) throw new CliError('give exactly one of --prompt, --prompt-ids or --batch-file');
  const system = get('--system');
  if (system !== undefined && !chat) throw new CliError('--system needs --chat');
  const varsText = get('--chat-vars');
  if (varsText !== undefined && !chat) throw new CliError('--chat-vars needs --chat');
  let chatVars: Record<string, unknown> | undefined;
  if (varsText !== undefined) {
    try {
      chatVars = JSON.parse(varsText) as Record<string, unknown>;
    } catch (e) {
      throw new CliError(`--chat-vars: not valid JSON (${(e as Error).message})`);
    }
    if (typeof chatVars !== 'object' || chatVars === null || Array.isArray(chatVars)) throw new CliError(`--chat-vars: expected a JSON object of template variables, got '${varsText}'`);
  }
  if (chat && promptIds !== undefined) throw new CliError('--chat writes text prompts through the chat template: it takes --prompt or --batch-file, not --prompt-ids');

  const device = get('--device') ?? 'auto';
  if (device !== 'cpu' && device !== 'cuda' && device !== 'auto') throw new CliError(`--device: expected cpu, cuda or auto, got '${device}'`);
  const model = get('--model');
  const topP = get('--top-p');
  const minP = get('--min-p');
  const rep = get('--repetition-penalty'), pres = get('--presence-penalty'), freq = get('--frequency-penalty');
  const penalties: { repetition?: number; presence?: number; frequency?: number; logitBias?: Map<number, number> } = {};
  if (rep !== undefined) penalties.repetition = parseNumberFlag('--repetition-penalty', rep, (n) => n > 0, 'a number > 0');
  if (pres !== undefined) penalties.presence = parseNumberFlag('--presence-penalty', pres, (n) => n >= -2 && n <= 2, 'a number in [-2, 2]');
  if (freq !== undefined) penalties.frequency = parseNumberFlag('--frequency-penalty', freq, (n) => n >= -2 && n <= 2, 'a number in [-2, 2]');
  const bias = get('--logit-bias');
  if (bias !== undefined) penalties.logitBias = parseLogitBias(bias);
  const lp = get('--logprobs');
  const logprobs = lp !== undefined ? parseIntFlag('--logprobs', lp, 0) : undefined;
  if (logprobs !== undefined && logprobs > MAX_LOGPROBS) throw new CliError(`--logprobs: expected an integer in [0, ${MAX_LOGPROBS}], got '${lp}'`);
  if (logprobs !== undefined && !json) throw new CliError('--logprobs needs --json (the log-probabilities are written in its output)');
  const plp = get('--prompt-logprobs');
  const promptLogprobs = plp !== undefined ? parseIntFlag('--prompt-logprobs', plp, 0) : undefined;
  if (promptLogprobs !== undefined && promptLogprobs > MAX_LOGPROBS) throw new CliError(`--prompt-logprobs: expected an integer in [0, ${MAX_LOGPROBS}], got '${plp}'`);
  if (promptLogprobs !== undefined && !json) throw new CliError('--prompt-logprobs needs --json (the log-probabilities are written in its output)');
  const mt = get('--min-tokens');
  const minTokens = mt !== undefined ? parseIntFlag('--min-tokens', mt, 0) : undefined;
  const maxContext = get('--max-context');
  const rf = get('--response-format');
  if (rf !== undefined && rf !== 'text' && rf !== 'json_object') throw new CliError(`--response-format: expected text or json_object (a schema: --json-schema FILE), got '${rf}'`);
  const jsonSchema = get('--json-schema');
  if (jsonSchema !== undefined && rf === 'json_object') throw new CliError('--json-schema and --response-format json_object: one or the other');
  return {
    ...(model !== undefined ? { model } : {}),
    strategy,
    ...(prompt !== undefined ? { prompt } : {}),
    ...(promptIds !== undefined ? { promptIds: parseIdList('--prompt-ids', promptIds) } : {}),
    ...(batchFile !== undefined ? { batchFile } : {}),
    ...(chat ? { chat } : {}),
    ...(system !== undefined ? { system } : {}),
    ...(chatVars !== undefined ? { chatVars } : {}),
    maxNewTokens: get('--max-new-tokens') !== undefined ? parseIntFlag('--max-new-tokens', get('--max-new-tokens')!, promptLogprobs !== undefined ? 0 : 1) : 64,
    ...(maxContext !== undefined ? { maxContext: parseIntFlag('--max-context', maxContext, 2) } : {}),
    temperature: get('--temperature') !== undefined ? parseNumberFlag('--temperature', get('--temperature')!, (n) => n >= 0, 'a number >= 0') : 0,
    topK: get('--top-k') !== undefined ? parseIntFlag('--top-k', get('--top-k')!, 0) : 0,
    topP: topP !== undefined ? parseNumberFlag('--top-p', topP, (n) => n > 0 && n <= 1, 'a number in (0, 1]') : 1,
    minP: minP !== undefined ? parseNumberFlag('--min-p', minP, (n) => n >= 0 && n < 1, 'a number in [0, 1)') : 0,
    seed: get('--seed') !== undefined ? parseIntFlag('--seed', get('--seed')!, 0) : 0,
    ignoreEos,
    ...(Object.keys(penalties).length > 0 ? { penalties } : {}),
    ...(logprobs !== undefined ? { logprobs } : {}),
    ...(promptLogprobs !== undefined ? { promptLogprobs } : {}),
    ...(minTokens !== undefined ? { minTokens } : {}),
    ...(rf === 'json_object' ? { responseFormat: rf } : {}),
    ...(jsonSchema !== undefined ? { jsonSchema } : {}),
    device,
    json,
  };
}

/** The prompts of a run as token ids (text through the tokenizer). */
function resolvePrompts(flags: GenerateFlags, tokenizer: TextTokenizer | undefined, modelDir: string): Int32Array[] {
  const needTokenizer = (where: string): TextTokenizer => {
    if (!tokenizer) throw new CliError(`${where}: ${modelDir} has no tokenizer.json or tokenizer.model; pass token ids (--prompt-ids, or id arrays in the batch file)`, 1);
    return tokenizer;
  };
  const encodeChat = (messages: ChatMessage[], where: string): Int32Array => {
    const t = needTokenizer(where);
    if (!t.hasChatTemplate) throw new CliError(`${where}: ${modelDir} has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template); drop --chat to send the text as it is`, 1);
    return t.encodeChat(messages, flags.chatVars ? { variables: flags.chatVars } : {});
  };
  // --chat: a text prompt is the user's message (after --system's, if any).
  const encode = (text: string, where: string): Int32Array =>
    flags.chat ? encodeChat([...(flags.system !== undefined ? [{ role: 'system', content: flags.system }] : []), { role: 'user', content: text }], where) : needTokenizer(where).encode(text);
  if (flags.promptIds) return [flags.promptIds];
  if (flags.prompt !== undefined) return [encode(flags.prompt, '--prompt')];
  const file = flags.batchFile!;
  let items: unknown;
  try {
    items = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CliError(`--batch-file ${file}: ${(e as Error).message.split('\n')[0]}`, 1);
  }
  if (!Array.isArray(items) || items.length === 0) throw new CliError(`--batch-file ${file}: expected a non-empty JSON array of prompts`, 1);
  return items.map((item, i) => {
    if (typeof item === 'string') return encode(item, `--batch-file ${file}: item ${i}`);
    // A chat: an array of { role, content } (whatever --chat says: it cannot be anything else).
    if (Array.isArray(item) && item.length > 0 && item.every((m) => typeof m === 'object' && m !== null && !Array.isArray(m))) {
      const ok = item.every((m) => typeof (m as ChatMessage).role === 'string' && typeof (m as ChatMessage).content === 'string');
      if (!ok) throw new CliError(`--batch-file ${file}: item ${i}: a chat's messages are { role: string, content: string }`, 1);
      return encodeChat(item as ChatMessage[], `--batch-file ${file}: item ${i}`);
    }
    if (Array.isArray(item) && item.length > 0 && item.every((x) => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) <= 0x7fffffff)) {
      return Int32Array.from(item as number[]);
    }
    throw new CliError(`--batch-file ${file}: item ${i} must be a string, a non-empty array of token ids or a chat (an array of { role, content })`, 1);
  });
}

/**
 * Writes decoded text as tokens arrive: the text of the whole output, decoded a window at a time
 * (IncrementalText, lib/text.ts), less what was already written. An incomplete multi-byte
 * character (U+FFFD at the end) waits for its next token, unless the output ends there.
 */
export class TextStream {
  private readonly ids: number[] = [];
  private readonly text: IncrementalText;
  private readonly settle: SettledText;
  private shown = 0;

  /** decodeRaw: without the clean-up of tokenization spaces, which `cleanUp` says the text gets (SettledText). */
  constructor(
    decodeRaw: (ids: ArrayLike<number>) => string,
    cleanUp: boolean,
    private readonly write: (s: string) => void,
  ) {
    this.text = new IncrementalText(decodeRaw);
    this.settle = new SettledText(cleanUp);
  }

  push(tokens: ArrayLike<number>, final = false): void {
    for (let k = 0; k < tokens.length; k++) this.ids.push(tokens[k] as number);
    const now = this.settle.of(this.text.of(this.ids));
    const t = final ? now.full : now.settled;
    if (t.length > this.shown) {
      this.write(t.slice(this.shown));
      this.shown = t.length;
    }
  }
}

/** The default KV sizing: what the longest prompt needs, not max_position_embeddings. */
function contextFor(flags: GenerateFlags, prompts: readonly Int32Array[], modelPositions: number, modelDir: string): number {
  if (flags.maxContext !== undefined) {
    if (flags.maxContext > modelPositions) {
      throw new CliError(`--max-context: ${flags.maxContext} is more than the ${modelPositions} positions of ${modelDir} (max_position_embeddings)`);
    }
    return flags.maxContext;
  }
  const longest = prompts.reduce((n, p) => Math.max(n, p.length), 0);
  // (At least one position past the prompt: with --max-new-tokens 0 a prompt is still checked to leave room, as every generate call does.)
  return Math.min(modelPositions, longest + Math.max(1, flags.maxNewTokens));
}

/** A record for a run cut short (abort): what was emitted so far; one forward per step chunk. */
function partialRecord(tokens: number[], chunks: number, seconds: number, decode: (ids: ArrayLike<number>) => string): GenerateRecord {
  return {
    tokens,
    text: decode(tokens),
    finishReason: 'abort',
    stats: {
      targetForwards: chunks,
      tokensPerForward: chunks > 0 ? tokens.length / chunks : 0,
      acceptanceRate: null,
      acceptedPerPosition: [],
      seconds,
      tokensPerSecond: seconds > 0 ? tokens.length / seconds : 0,
    },
  };
}

/** "length" or "length x2, stop x1" */
function finishSummary(records: readonly GenerateRecord[]): string {
  const counts = new Map<string, number>();
  for (const r of records) counts.set(r.finishReason, (counts.get(r.finishReason) ?? 0) + 1);
  if (counts.size === 1 && records.length === 1) return records[0]!.finishReason;
  return [...counts].map(([k, n]) => `${k} x${n}`).join(', ');
}

export async function generateCommand(argv: string[], io: GenerateIo = {}): Promise<number> {
  const out = io.stdout ?? ((s: string) => void process.stdout.write(s));
  const err = io.stderr ?? ((s: string) => void process.stderr.write(s));
  if (argv.includes('--help') || argv.includes('-h')) {
    out(GENERATE_USAGE + '\n');
    return 0;
  }
  let model: LlamaModel | undefined;
  // The first Ctrl-C stops decoding and keeps what was generated; a second one kills as usual.
  const interrupt = new AbortController();
  const onSigint = (): void => interrupt.abort();
  if (!io.signal) process.once('SIGINT', onSigint);
  const signal = io.signal ?? interrupt.signal;
  try {
    const parsed = parseGenerateFlags(argv);
    const modelDir = parsed.model === undefined || parsed.model === 'default' ? EMBEDDED.target : parsed.model;
    if ((parsed.model === undefined || parsed.model === 'default') && !fs.existsSync(modelDir)) {
      throw new CliError(`the embedded default model is missing (${modelDir}); run 'npm run train:default' or pass --model DIR`, 1);
    }
    // Validate the directory before the tokenizer is looked for, so a bad path is named as such.
    const config = readLlamaConfig(modelDir);
    const speculative = Object.keys(parsed.strategy).length > 0;
    const tokenizer = TextTokenizer.load(modelDir);
    const prompts = resolvePrompts(parsed, tokenizer, modelDir);
    prompts.forEach((p, i) => {
      const bad = p.find((id) => id >= config.vocabSize);
      const where = parsed.batchFile !== undefined ? `--batch-file item ${i}` : '--prompt-ids';
      if (bad !== undefined) throw codedError('E_ARG', `${where}: token id ${bad} is outside the vocabulary [0, ${config.vocabSize}) of ${modelDir}`);
    });
    const maxContext = contextFor(parsed, prompts, config.maxPositions, modelDir);
    const flags: GenerateFlags = { ...parsed, model: modelDir, maxContext };
    // Loading a large checkpoint takes a while: say so on an interactive terminal only.
    if (process.stderr.isTTY && !flags.json && !io.stderr) err(`specdec: loading ${modelDir} ...\n`);
    // A cache with the KV room the strategy's trees take beside each sequence (strategyHook's reserve).
    const treeTokens = speculative ? treeRoomFor(flags.strategy as StrategyFlags, maxContext) : undefined;
    model = await LlamaModel.load(modelDir, { device: flags.device, maxSequences: prompts.length, maxContext, ...(treeTokens !== undefined ? { treeTokens } : {}) });
    const decode = (ids: ArrayLike<number>): string => (tokenizer ? tokenizer.decode(ids, { skipSpecialTokens: true }) : '');
    let grammar: TokenGrammar | undefined;
    if (flags.responseFormat === 'json_object' || flags.jsonSchema !== undefined) {
      const what = flags.jsonSchema !== undefined ? '--json-schema' : '--response-format json_object';
      if (!tokenizer) throw new CliError(`${what}: ${modelDir} has no tokenizer.json or tokenizer.model (the grammar reads the tokens' bytes)`, 1);
      let schema: unknown;
      if (flags.jsonSchema !== undefined) {
        try {
          schema = JSON.parse(fs.readFileSync(flags.jsonSchema, 'utf8'));
        } catch (e) {
          throw new CliError(`--json-schema: ${flags.jsonSchema}: ${(e as Error).message.split('\n')[0]}`, 1);
        }
      }
      try {
        const vocabulary = TokenVocabulary.fromTokenizer(tokenizer, config.vocabSize);
        grammar = flags.jsonSchema !== undefined ? new JsonSchemaGrammar(vocabulary, schema) : new JsonGrammar(vocabulary);
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        if (code === 'E_UNSUPPORTED' || code === 'E_ARG') throw new CliError(`${what}: ${(e as Error).message}`, 1);
        throw e;
      }
    }

    // Text streams when there is one sequence to show; a batch prints its texts in input order.
    const decodeRaw = (ids: ArrayLike<number>): string => (tokenizer ? tokenizer.decode(ids, { skipSpecialTokens: true, cleanUpSpaces: false }) : Array.from(ids).join(' '));
    const stream = !flags.json && prompts.length === 1 ? new TextStream(decodeRaw, tokenizer?.cleansUpSpaces === true, out) : undefined;
    const emitted: number[][] = prompts.map(() => []);
    const chunks = prompts.map(() => 0);
    const onTokens = (i: number, toks: Int32Array): void => {
      for (const t of toks) emitted[i]!.push(t);
      chunks[i]!++;
      stream?.push(toks);
    };
    const t0 = performance.now();
    let records: GenerateRecord[];
    try {
      if (speculative) {
        const hook = io.strategyHook ?? strategyHook({ defaults: { draft: EMBEDDED.draft, medusa: EMBEDDED.medusa, eagle: EMBEDDED.eagle, eagle3: EMBEDDED.eagle3 } });
        records = await hook({ flags, target: model, prompts, decode, onTokens, signal, ...(grammar ? { grammar } : {}) });
      } else {
        const res = await plainGenerate(model, prompts, {
          maxNewTokens: flags.maxNewTokens,
          temperature: flags.temperature,
          topK: flags.topK,
          topP: flags.topP,
          minP: flags.minP ?? 0,
          seed: flags.seed,
          ignoreEos: flags.ignoreEos === true,
          ...(flags.penalties ? { penalties: flags.penalties } : {}),
          ...(flags.logprobs !== undefined ? { logprobs: flags.logprobs } : {}),
          ...(flags.promptLogprobs !== undefined ? { promptLogprobs: flags.promptLogprobs } : {}),
          ...(flags.minTokens !== undefined ? { minTokens: flags.minTokens } : {}),
          ...(grammar ? { grammar } : {}),
          onTokens,
          signal,
        });
        const { seconds } = res.stats;
        records = res.tokens.map((t, i) => {
          const forwards = res.stats.sequenceForwards[i]!;
          return {
            tokens: Array.from(t),
            text: decode(t),
            finishReason: res.finishReasons[i]!,
            stats: {
              targetForwards: forwards,
              tokensPerForward: forwards > 0 ? t.length / forwards : 0,
              acceptanceRate: 0,
              acceptedPerPosition: [],
              seconds,
              tokensPerSecond: seconds > 0 ? t.length / seconds : 0,
            },
            ...(res.logprobs ? { logprobs: logprobsRecord(res.logprobs[i]!, t) } : {}),
            ...(res.promptLogprobs ? { promptLogprobs: logprobsRecord(res.promptLogprobs[i]!, prompts[i]!.subarray(1)) } : {}),
          };
        });
      }
    } catch (e) {
      if (!signal.aborted) throw e;
      const seconds = (performance.now() - t0) / 1000;
      records = emitted.map((t, i) => partialRecord(t, chunks[i]!, seconds, decode));
    }

    if (flags.json) {
      out(JSON.stringify(flags.batchFile !== undefined ? records : records[0]) + '\n');
    } else {
      if (stream) {
        stream.push([], true);
        out('\n');
      } else {
        for (const r of records) out((tokenizer ? r.text : r.tokens.join(' ')) + '\n');
      }
      const total = records.reduce((n, r) => n + r.tokens.length, 0);
      const forwards = records.reduce((n, r) => n + r.stats.targetForwards, 0);
      const secs = records[0]?.stats.seconds ?? 0;
      const prep = records[0]?.stats.prepareSeconds ?? 0;
      // Sized strategies decode plainly where no proposal pays: say so, or the run reads as a failure.
      let steps = 0;
      let plainSteps = 0;
      for (const r of records)
        for (const [nodes, n] of Object.entries(r.stats.nodesPerStep ?? {})) {
          steps += n;
          if (nodes === '1') plainSteps += n;
        }
      const plainNote =
        speculative && steps > 0 && plainSteps * 2 >= steps
          ? `; ${plainSteps} of ${steps} steps decoded plainly (no proposal paid on this hardware; a fixed size, --draft-k, --medusa-tree or --eagle-tree, forces one)`
          : '';
      err(
        `specdec: ${total} tokens in ${secs.toFixed(2)} s (${(secs > 0 ? total / secs : 0).toFixed(1)} tokens/s, ` +
          `${(forwards > 0 ? total / forwards : 0).toFixed(2)} tokens/forward, ${model.device}); finish: ${finishSummary(records)}` +
          (records.some((r) => r.finishReason === 'context') ? ` (the context of ${maxContext} positions is full; see --max-context)` : '') +
          plainNote +
          // (Under a millisecond: a strategy with fixed settings, which measures nothing.)
          (prep >= 0.001 ? `; cost model calibrated in ${(prep * 1000).toFixed(0)} ms before the run` : '') +
          '\n',
      );
    }
    return records.some((r) => r.finishReason === 'abort') ? 130 : 0;
  } catch (e) {
    const x = e as Error & { code?: string; exitCode?: number };
    const msg = (x && x.message ? x.message : String(e)).split('\n')[0];
    err(`specdec generate: ${msg}${x && x.code ? ` [${x.code}]` : ''}\n`);
    if (process.env['SPECDEC_DEBUG'] === '1' && x && x.stack) err(x.stack + '\n');
    return e instanceof CliError ? e.exitCode : 1;
  } finally {
    process.removeListener('SIGINT', onSigint);
    model?.dispose();
  }
}
