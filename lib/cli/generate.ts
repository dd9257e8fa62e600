// `specdec generate`: plain autoregressive decoding (the baseline), or a speculative strategy
// (lib/cli/strategy_flags.ts parses those flags and runs them). Flags: DESIGN §6. Bad input exits non-zero with one
// line on stderr; results go to stdout (text, or one JSON document with --json).
import * as fs from 'fs';
import * as path from 'path';
import type { CausalLM } from '../models/causal_lm';
import { readLlamaConfig } from '../models/config';
import { LlamaModel } from '../models/llama';
import { plainGenerate } from '../plain';
import type { Device } from '../tensor';
import { TextTokenizer } from '../tokenizer';
import { packageRoot } from '../native';
import { parseStrategyFlags, strategyHook, type StrategyFlags } from './strategy_flags';

/** The embedded default family (models/default, trained by scripts/train-default.js). */
export const EMBEDDED = {
  target: path.join(packageRoot, 'models', 'default', 'target'),
  draft: path.join(packageRoot, 'models', 'default', 'draft'),
  medusa: path.join(packageRoot, 'models', 'default', 'medusa'),
} as const;

export type { StrategyFlags } from './strategy_flags';

export interface GenerateFlags {
  readonly model?: string;
  readonly strategy: StrategyFlags;
  readonly prompt?: string;
  readonly promptIds?: Int32Array;
  readonly batchFile?: string;
  readonly maxNewTokens: number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seed: number;
  readonly device: Device | 'auto';
  readonly json: boolean;
}

/** What one sequence's run reports (the --json object, DESIGN §6). */
export interface GenerateRecord {
  tokens: number[];
  text: string;
  stats: {
    targetForwards: number;
    tokensPerForward: number;
    acceptanceRate: number;
    acceptedPerPosition: number[];
    seconds: number;
    tokensPerSecond: number;
  };
}

/** A speculative strategy runner: gets the loaded target and the prompts, returns one record per prompt. */
export type StrategyHook = (ctx: {
  flags: GenerateFlags;
  target: CausalLM;
  prompts: Int32Array[];
  decode: (ids: ArrayLike<number>) => string;
}) => Promise<GenerateRecord[]>;

export interface GenerateIo {
  readonly stdout?: (s: string) => void;
  readonly stderr?: (s: string) => void;
  /** Runs --draft/--medusa/--lookahead/--prompt-lookup (default: strategyHook() of strategy_flags.ts). */
  readonly strategyHook?: StrategyHook;
}

export const GENERATE_USAGE = `usage: specdec generate [--model DIR] [--draft DIR | --medusa DIR | --lookahead W,N,G | --prompt-lookup N]
                       (--prompt TEXT | --prompt-ids 1,2,3 | --batch-file F) [--max-new-tokens N]
                       [--temperature T --top-k K --top-p P --seed S] [--device cpu|cuda|auto] [--json]

  --model DIR         Hugging Face checkpoint directory (config.json + model.safetensors[.index.json]);
                      default: the embedded model family (models/default); --draft default and
                      --medusa default select its draft and Medusa heads
  --prompt TEXT       prompt text (needs tokenizer.json in the model directory)
  --prompt-ids IDS    prompt token ids, comma-separated (bypasses the tokenizer)
  --batch-file F      JSON array of prompts (strings or id arrays), run together as one batch;
                      sequence i samples from RNG stream (seed, i)
  --max-new-tokens N  new tokens per prompt (default 64)
  --temperature T     0 = greedy (default 0); --top-k K (0 = off), --top-p P (1 = off), --seed S (default 0)
  --device D          cpu, cuda or auto (default auto)
  --json              one JSON object on stdout ({ tokens, text, stats }), an array with --batch-file
  --draft/--medusa/--lookahead/--prompt-lookup   speculative strategies`;

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

export function parseIdList(flag: string, v: string): Int32Array {
  const parts = v.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p))) throw new CliError(`${flag}: expected comma-separated token ids (e.g. 1,2,3), got '${v}'`);
  return Int32Array.from(parts.map(Number));
}

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
  const takesValue = new Set([
    '--model', '--prompt', '--prompt-ids', '--max-new-tokens',
    '--temperature', '--top-k', '--top-p', '--seed', '--device', '--batch-file',
  ]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    if (name === '--json') {
      if (eq > 0) throw new CliError('--json takes no value');
      json = true;
      continue;
    }
    if (!takesValue.has(name)) throw new CliError(arg.startsWith('-') ? `unknown flag '${name}'` : `unexpected argument '${arg}'`);
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else value = argv[++i];
    if (value === undefined) throw new CliError(`${name} needs a value`);
    if (values.has(name)) throw new CliError(`${name} given twice`);
    values.set(name, value);
  }
  const get = (k: string): string | undefined => values.get(k);

  const prompt = get('--prompt');
  const promptIds = get('--prompt-ids');
  const batchFile = get('--batch-file');
  const sources = [prompt, promptIds, batchFile].filter((x) => x !== undefined).length;
  if (sources !== 1) throw new CliError('give exactly one of --prompt, --prompt-ids or --batch-file');

  const device = get('--device') ?? 'auto';
  if (device !== 'cpu' && device !== 'cuda' && device !== 'auto') throw new CliError(`--device: expected cpu, cuda or auto, got '${device}'`);
  const model = get('--model');
  const topP = get('--top-p');
  return {
    ...(model !== undefined ? { model } : {}),
    strategy,
    ...(prompt !== undefined ? { prompt } : {}),
    ...(promptIds !== undefined ? { promptIds: parseIdList('--prompt-ids', promptIds) } : {}),
    ...(batchFile !== undefined ? { batchFile } : {}),
    maxNewTokens: get('--max-new-tokens') !== undefined ? parseIntFlag('--max-new-tokens', get('--max-new-tokens')!, 1) : 64,
    temperature: get('--temperature') !== undefined ? parseNumberFlag('--temperature', get('--temperature')!, (n) => n >= 0, 'a number >= 0') : 0,
    topK: get('--top-k') !== undefined ? parseIntFlag('--top-k', get('--top-k')!, 0) : 0,
    topP: topP !== undefined ? parseNumberFlag('--top-p', topP, (n) => n > 0 && n <= 1, 'a number in (0, 1]') : 1,
    seed: get('--seed') !== undefined ? parseIntFlag('--seed', get('--seed')!, 0) : 0,
    device,
    json,
  };
}

/** The prompts of a run as token ids (text through the tokenizer). */
function resolvePrompts(flags: GenerateFlags, tokenizer: TextTokenizer | undefined, modelDir: string): Int32Array[] {
  const encode = (text: string, where: string): Int32Array => {
    if (!tokenizer) throw new CliError(`${where}: ${modelDir} has no tokenizer.json; pass token ids (--prompt-ids, or id arrays in the batch file)`, 1);
    return tokenizer.encode(text);
  };
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
    if (Array.isArray(item) && item.length > 0 && item.every((x) => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) <= 0x7fffffff)) {
      return Int32Array.from(item as number[]);
    }
    throw new CliError(`--batch-file ${file}: item ${i} must be a string or a non-empty array of token ids`, 1);
  });
}

export async function generateCommand(argv: string[], io: GenerateIo = {}): Promise<number> {
  const out = io.stdout ?? ((s: string) => void process.stdout.write(s));
  const err = io.stderr ?? ((s: string) => void process.stderr.write(s));
  if (argv.includes('--help') || argv.includes('-h')) {
    out(GENERATE_USAGE + '\n');
    return 0;
  }
  let model: LlamaModel | undefined;
  try {
    const parsed = parseGenerateFlags(argv);
    const modelDir = parsed.model === undefined || parsed.model === 'default' ? EMBEDDED.target : parsed.model;
    const flags: GenerateFlags = { ...parsed, model: modelDir };
    if ((parsed.model === undefined || parsed.model === 'default') && !fs.existsSync(modelDir)) {
      throw new CliError(`the embedded default model is missing (${modelDir}); run 'npm run train:default' or pass --model DIR`, 1);
    }
    // Validate the directory before the tokenizer is looked for, so a bad path is named as such.
    readLlamaConfig(modelDir);
    const speculative = Object.keys(flags.strategy).length > 0;
    const tokenizer = TextTokenizer.load(modelDir);
    const prompts = resolvePrompts(flags, tokenizer, modelDir);
    // Loading a large checkpoint takes a while: say so on an interactive terminal only.
    if (process.stderr.isTTY && !flags.json && !io.stderr) err(`specdec: loading ${modelDir} ...\n`);
    model = await LlamaModel.load(modelDir, { device: flags.device, maxSequences: prompts.length });
    const decode = (ids: ArrayLike<number>): string => (tokenizer ? tokenizer.decode(ids, { skipSpecialTokens: true }) : '');

    let records: GenerateRecord[];
    if (speculative) {
      const hook = io.strategyHook ?? strategyHook({ defaults: { draft: EMBEDDED.draft, medusa: EMBEDDED.medusa } });
      records = await hook({ flags, target: model, prompts, decode });
    } else {
      const res = await plainGenerate(model, prompts, {
        maxNewTokens: flags.maxNewTokens,
        temperature: flags.temperature,
        topK: flags.topK,
        topP: flags.topP,
        seed: flags.seed,
      });
      const { seconds } = res.stats;
      records = res.tokens.map((t, i) => {
        const forwards = res.stats.sequenceForwards[i]!;
        return {
          tokens: Array.from(t),
          text: decode(t),
          stats: {
            targetForwards: forwards,
            tokensPerForward: forwards > 0 ? t.length / forwards : 0,
            acceptanceRate: 0,
            acceptedPerPosition: [],
            seconds,
            tokensPerSecond: seconds > 0 ? t.length / seconds : 0,
          },
        };
      });
    }

    if (flags.json) {
      out(JSON.stringify(flags.batchFile !== undefined ? records : records[0]) + '\n');
    } else {
      for (const r of records) out((tokenizer ? r.text : r.tokens.join(' ')) + '\n');
      const total = records.reduce((n, r) => n + r.tokens.length, 0);
      const secs = records[0]?.stats.seconds ?? 0;
      err(`specdec: ${total} tokens in ${secs.toFixed(2)} s (${(secs > 0 ? total / secs : 0).toFixed(1)} tokens/s, ${model.device})\n`);
    }
    return 0;
  } catch (e) {
    const x = e as Error & { code?: string; exitCode?: number };
    const msg = (x && x.message ? x.message : String(e)).split('\n')[0];
    err(`specdec generate: ${msg}${x && x.code ? ` [${x.code}]` : ''}\n`);
    if (process.env['SPECDEC_DEBUG'] === '1' && x && x.stack) err(x.stack + '\n');
    return e instanceof CliError ? e.exitCode : 1;
  } finally {
    model?.dispose();
  }
}
