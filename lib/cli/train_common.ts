// What `specdec train-medusa` and `specdec train-eagle` share: flag parsing, the base model's config
// checks, the data (text or token ids, optionally self-distilled), the progress line and the
// training loop's schedule. (The frozen base model itself: LlamaTrainer.fromCheckpoint.)
import * as fs from 'fs';
import * as path from 'path';
import { codedError } from '../errors';
import { readLlamaConfig, type LlamaConfig } from '../models/config';
import { TextTokenizer } from '../tokenizer';
import { concat, selfDistill } from '../train/self_distill';
import type { LrSchedule, SaveDType } from '../train/trainer';

/** The flags both training commands take. */
export interface TrainFlags {
  readonly model: string;
  readonly data: string;
  readonly out: string;
  readonly layers: number;
  readonly steps: number;
  readonly batch: number;
  readonly seqLen: number;
  readonly lr: number;
  readonly selfDistill: boolean;
  readonly seed: number;
  readonly threads: number;
  readonly dtype: SaveDType;
}

export const COMMON_TRAIN_FLAGS = ['--model', '--data', '--out', '--layers', '--steps', '--batch', '--seq-len', '--lr', '--seed', '--threads', '--dtype'];

/** The value of a required flag (E_ARG naming it and the command's help otherwise). */
export function requireFlag(values: ReadonlyMap<string, string>, flag: string, command: string): string {
  const v = values.get(flag);
  if (v === undefined) throw codedError('E_ARG', `${flag} is required (see specdec ${command} --help)`);
  return v;
}

export function intFlag(flag: string, v: string | undefined, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) throw codedError('E_ARG', `${flag}: expected an integer >= ${min}, got '${v}'`);
  return n;
}

/**
 * Parses `argv` of `command` (value flags: COMMON_TRAIN_FLAGS plus `extra`; --self-distill is the
 * one switch). Returns the common flags and the raw values of every flag given.
 */
export function parseTrainFlags(
  argv: readonly string[],
  command: string,
  extra: readonly string[],
  defaults: { readonly lr: number },
): { flags: TrainFlags; values: ReadonlyMap<string, string> } {
  const known = [...COMMON_TRAIN_FLAGS, ...extra];
  const values = new Map<string, string>();
  let selfDistill = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    if (name === '--self-distill' && eq < 0) {
      selfDistill = true;
      continue;
    }
    if (!known.includes(name)) throw codedError('E_ARG', arg.startsWith('-') ? `unknown flag '${name}'` : `unexpected argument '${arg}'`);
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--'))) throw codedError('E_ARG', `${name} needs a value`);
    if (values.has(name)) throw codedError('E_ARG', `${name} given twice`);
    values.set(name, value);
  }
  const need = (flag: string): string => requireFlag(values, flag, command);
  const lrText = values.get('--lr');
  const lr = lrText === undefined ? defaults.lr : Number(lrText);
  if (!(lr > 0 && lr < 1)) throw codedError('E_ARG', `--lr: expected a number in (0, 1), got '${lrText}'`);
  const dtype = (values.get('--dtype') ?? 'bf16').toLowerCase();
  if (dtype !== 'bf16' && dtype !== 'f32') throw codedError('E_ARG', `--dtype: expected bf16 or f32, got '${dtype}'`);
  const flags: TrainFlags = {
    model: need('--model'),
    data: need('--data'),
    out: need('--out'),
    layers: intFlag('--layers', values.get('--layers'), 1, 1),
    steps: intFlag('--steps', values.get('--steps'), 300, 1),
    batch: intFlag('--batch', values.get('--batch'), 8, 1),
    seqLen: intFlag('--seq-len', values.get('--seq-len'), 64, 4),
    lr,
    selfDistill,
    seed: intFlag('--seed', values.get('--seed'), 0, 0),
    threads: intFlag('--threads', values.get('--threads'), 2, 1),
    dtype: dtype === 'bf16' ? 'BF16' : 'F32',
  };
  return { flags, values };
}

/** The data file as one token stream: JSON id arrays as they are, text line by line through the tokenizer. */
export function readData(file: string, tokenizer: TextTokenizer | undefined, vocabSize: number): Int32Array[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw codedError('E_IO', `--data ${file}: ${(e as Error).message.split('\n')[0]}`);
  }
  let docs: Int32Array[];
  if (/\.json$/i.test(file)) {
    let items: unknown;
    try {
      items = JSON.parse(text);
    } catch (e) {
      throw codedError('E_FORMAT', `--data ${file}: ${(e as Error).message.split('\n')[0]}`);
    }
    const ok = Array.isArray(items) && items.every((d) => Array.isArray(d) && d.every((x) => Number.isSafeInteger(x) && x >= 0 && x < vocabSize));
    if (!ok) throw codedError('E_FORMAT', `--data ${file}: expected a JSON array of token-id arrays (ids in [0, ${vocabSize}))`);
    docs = (items as number[][]).map((d) => Int32Array.from(d));
  } else {
    if (!tokenizer) throw codedError('E_ARG', `--data ${file}: text needs tokenizer.json in the model directory (or pass a .json file of token ids)`);
    docs = text.split('\n').filter((l) => l.trim().length > 0).map((l) => tokenizer.encode(l));
  }
  docs = docs.filter((d) => d.length > 0);
  if (docs.length === 0) throw codedError('E_ARG', `--data ${file}: no training text`);
  return docs;
}


/** One progress line: a bar on a terminal, a plain line (named by `command`) otherwise. */
export function progressLine(command: string, p: { step: number; steps: number; loss: number; tokensPerSecond: number; seconds: number }, bar: boolean): string {
  const eta = p.step > 0 ? (p.seconds / p.step) * (p.steps - p.step) : 0;
  const stats = `loss ${p.loss.toFixed(4)}  ${p.tokensPerSecond.toFixed(0)} tok/s  ETA ${eta.toFixed(0)} s`;
  if (!bar) return `${command}: step ${p.step}/${p.steps} ${stats}`;
  const width = 30;
  const done = Math.round((width * p.step) / p.steps);
  return `[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${p.step}/${p.steps}  ${stats}`;
}

/**
 * The base model's config, checked for `positions` (what a training window and the objective's
 * look-ahead need) and `forwardTokens` (the base model's forward per window, against sliding
 * windows), and the training stream (the data, self-distilled if asked).
 */
export async function prepareTraining(
  f: TrainFlags,
  need: { readonly positions: number; readonly positionsText: string; readonly forwardTokens: number },
): Promise<{ config: LlamaConfig; stream: Int32Array }> {
  const { positions, forwardTokens } = need;
  const config = readLlamaConfig(f.model);
  if (positions > config.maxPositions) {
    throw codedError('E_ARG', `--seq-len ${f.seqLen}: the model has ${config.maxPositions} positions (${need.positionsText} must fit)`);
  }
  // The trainer's forward attends over the whole sequence: exact for a sliding-window model while
  // the sequence fits in its shortest window.
  const window = Math.min(...(config.attentionWindows ?? []).filter((w) => w > 0));
  if (forwardTokens > window) {
    throw codedError('E_ARG', `--seq-len ${f.seqLen}: the model's attention slides over ${window} positions and the trainer attends over whole sequences; use --seq-len <= ${window - (forwardTokens - f.seqLen)}`);
  }
  const tokenizer = TextTokenizer.load(f.model);
  let docs = readData(f.data, tokenizer, config.vocabSize);
  if (f.selfDistill) docs = await selfDistill(f.model, docs, f.seqLen, config.maxPositions);
  const stream = concat(docs);
  if (stream.length < positions) throw codedError('E_ARG', `--data ${f.data}: ${stream.length} tokens are fewer than one training window of ${forwardTokens} tokens`);
  return { config, stream };
}

/** The commands' schedule: warmup over a tenth of the steps (at most 20), cosine decay to lr / 20. */
export function trainSchedule(f: TrainFlags): LrSchedule {
  return { lr: f.lr, minLr: f.lr / 20, warmupSteps: Math.min(20, Math.ceil(f.steps / 10)), totalSteps: f.steps };
}

/** Runs `steps` steps of `step`, printing progress to stderr every twentieth (every step on a terminal). */
export async function trainLoop(command: string, f: TrainFlags, windowTokens: number, step: (i: number) => Promise<{ loss: number }>): Promise<void> {
  const bar = process.stderr.isTTY === true;
  const every = bar ? 1 : Math.max(1, Math.floor(f.steps / 20));
  const t0 = performance.now();
  for (let i = 0; i < f.steps; i++) {
    const r = await step(i);
    if ((i + 1) % every === 0 || i === f.steps - 1) {
      const seconds = (performance.now() - t0) / 1000;
      const line = progressLine(command, { step: i + 1, steps: f.steps, loss: r.loss, tokensPerSecond: ((i + 1) * f.batch * windowTokens) / seconds, seconds }, bar);
      process.stderr.write(bar ? `\r${line}` : `${line}\n`);
    }
  }
  if (bar) process.stderr.write('\n');
}

/** The base model's path as the output directory's config names it. */
export function relativeBase(out: string, model: string): string {
  return path.relative(path.resolve(out), path.resolve(model)) || '.';
}

