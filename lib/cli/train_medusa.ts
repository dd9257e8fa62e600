// `specdec train-medusa --model DIR --data FILE --heads N --out DIR`: Medusa-1 heads for a
// checkpoint, on the project's trainer (cpp/train): the base model is frozen, head h learns the
// token h + 2 ahead from the base model's last hidden state; FasterDecoding's initialisation (LM
// heads copied from the model's, ResBlocks zero) and layout on disk. With --self-distill the heads
// learn from text the model itself generates from the data's lines (Medusa-1 self-distillation),
// so they match the model's distribution rather than the data's.
// Progress: a bar on a terminal (loss, tokens/s, ETA), plain lines otherwise.
import * as fs from 'fs';
import * as path from 'path';
import { codedError } from '../errors';
import { readLlamaConfig, type LlamaConfig } from '../models/config';
import { findWeights, LlamaModel } from '../models/llama';
import { plainGenerate } from '../plain';
import { openSafetensors } from '../safetensors';
import { TextTokenizer } from '../tokenizer';
import { BatchSampler, learningRate, LlamaTrainer, MedusaTrainer, type SaveDType } from '../train/trainer';

export const TRAIN_MEDUSA_USAGE = `usage: specdec train-medusa --model DIR --data FILE --heads N --out DIR [options]

Trains Medusa-1 heads on a frozen Llama-family checkpoint (f32 on the CPU) and writes them in the
FasterDecoding layout (config.json + medusa_lm_head.safetensors), ready for --medusa DIR.

  --model DIR         the base model (config.json, model.safetensors, tokenizer.json)
  --data FILE         training text (UTF-8; one document per line), or a JSON array of token-id arrays
  --heads N           Medusa heads; head h predicts the token h + 2 ahead
  --out DIR           output directory
  --layers L          ResBlocks per head (default 1)
  --steps S           optimizer steps (default 300)
  --batch B           sequences per step (default 8)
  --seq-len T         tokens per sequence (default 64, at most the model's context)
  --lr X              peak learning rate (default 4e-3; warmup, then cosine decay to lr/20)
  --self-distill      train on the model's own greedy continuations of the data's lines
  --seed S            initialisation and batch-sampling seed (default 0)
  --threads N         trainer threads (default 2)
  --dtype D           bf16 or f32 weights on disk (default bf16)
  -h, --help          this help`;

export interface TrainMedusaFlags {
  readonly model: string;
  readonly data: string;
  readonly heads: number;
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

const VALUE_FLAGS = ['--model', '--data', '--heads', '--out', '--layers', '--steps', '--batch', '--seq-len', '--lr', '--seed', '--threads', '--dtype'];

function int(flag: string, v: string | undefined, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) throw codedError('E_ARG', `${flag}: expected an integer >= ${min}, got '${v}'`);
  return n;
}

export function parseTrainMedusaFlags(argv: readonly string[]): TrainMedusaFlags {
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
    if (!VALUE_FLAGS.includes(name)) throw codedError('E_ARG', arg.startsWith('-') ? `unknown flag '${name}'` : `unexpected argument '${arg}'`);
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--'))) throw codedError('E_ARG', `${name} needs a value`);
    if (values.has(name)) throw codedError('E_ARG', `${name} given twice`);
    values.set(name, value);
  }
  const need = (flag: string): string => {
    const v = values.get(flag);
    if (v === undefined) throw codedError('E_ARG', `${flag} is required (see specdec train-medusa --help)`);
    return v;
  };
  const lrText = values.get('--lr');
  const lr = lrText === undefined ? 4e-3 : Number(lrText);
  if (!(lr > 0 && lr < 1)) throw codedError('E_ARG', `--lr: expected a number in (0, 1), got '${lrText}'`);
  const dtype = (values.get('--dtype') ?? 'bf16').toLowerCase();
  if (dtype !== 'bf16' && dtype !== 'f32') throw codedError('E_ARG', `--dtype: expected bf16 or f32, got '${dtype}'`);
  return {
    model: need('--model'),
    data: need('--data'),
    heads: int('--heads', need('--heads'), 0, 1),
    out: need('--out'),
    layers: int('--layers', values.get('--layers'), 1, 1),
    steps: int('--steps', values.get('--steps'), 300, 1),
    batch: int('--batch', values.get('--batch'), 8, 1),
    seqLen: int('--seq-len', values.get('--seq-len'), 64, 4),
    lr,
    selfDistill,
    seed: int('--seed', values.get('--seed'), 0, 0),
    threads: int('--threads', values.get('--threads'), 2, 1),
    dtype: dtype === 'bf16' ? 'BF16' : 'F32',
  };
}

/** The checkpoint's weights in a trainer (f32); the trainer covers Llama without biases, q/k norms, fused projections or RoPE scaling. */
function loadTrainer(dir: string, config: LlamaConfig, seed: number, threads: number): LlamaTrainer {
  if (config.qkvBias || config.oBias || config.qkNorm || config.fusedProjections || config.ropeScaling !== undefined || config.ropeDim !== config.headDim || config.ropeLayers !== undefined || config.gemma === true || config.postNorms === true || config.residualMultiplier !== undefined) {
    throw codedError('E_UNSUPPORTED', `${dir}: the trainer covers Llama without attention biases, q/k norms (Qwen3), fused projections (Phi-3), rope_scaling, a partial rotation, layers without RoPE (SmolLM3), Gemma's layer, post-norms (OLMo 2, EXAONE 4) or Granite's multipliers`);
  }
  // A LlamaConfig is a LlamaTrainConfig (same field names; the extra ones are ignored).
  const trainer = LlamaTrainer.create(config, { seed, threads });
  try {
    const source = findWeights(dir);
    const fileOf = (name: string): string => path.join(dir, source.file ?? source.weightMap?.[name] ?? '');
    const readers = new Map<string, ReturnType<typeof openSafetensors>>();
    try {
      for (const p of trainer.paramInfo()) {
        const file = fileOf(p.name);
        let r = readers.get(file);
        if (!r) readers.set(file, (r = openSafetensors(file)));
        if (!r.has(p.name)) throw codedError('E_FORMAT', `${file}: missing tensor '${p.name}'`);
        const t = r.load(p.name);
        try {
          if (t.shape.join(',') !== p.shape.join(',')) throw codedError('E_FORMAT', `${file}: '${p.name}' is [${t.shape}], expected [${p.shape}]`);
          trainer.setParam(p.name, t.toFloat32());
        } finally {
          t.dispose();
        }
      }
    } finally {
      for (const r of readers.values()) r.close();
    }
    return trainer;
  } catch (e) {
    trainer.dispose();
    throw e;
  }
}

/** The data file as one token stream: JSON id arrays as they are, text line by line through the tokenizer. */
function readData(file: string, tokenizer: TextTokenizer | undefined, vocabSize: number): Int32Array[] {
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

function concat(docs: readonly Int32Array[]): Int32Array {
  const out = new Int32Array(docs.reduce((n, d) => n + d.length, 0));
  let o = 0;
  for (const d of docs) {
    out.set(d, o);
    o += d.length;
  }
  return out;
}

/** Medusa-1 self-distillation: each line's first tokens, continued greedily by the model itself. */
async function selfDistill(dir: string, docs: readonly Int32Array[], seqLen: number, maxPositions: number): Promise<Int32Array[]> {
  const model = await LlamaModel.load(dir, { device: 'cpu', maxSequences: Math.min(docs.length, 64) });
  try {
    const promptLen = Math.max(1, Math.min(16, Math.floor(seqLen / 4)));
    const maxNew = Math.max(1, Math.min(seqLen, maxPositions - promptLen - 1));
    const out: Int32Array[] = [];
    for (let i = 0; i < docs.length; i += 64) {
      const prompts = docs.slice(i, i + 64).map((d) => d.slice(0, promptLen));
      const r = await plainGenerate(model, prompts, { maxNewTokens: maxNew });
      r.tokens.forEach((t, b) => out.push(concat([prompts[b]!, t])));
    }
    return out;
  } finally {
    model.dispose();
  }
}

/** One progress line: a bar on a terminal, a plain line otherwise. */
export function progressLine(p: { step: number; steps: number; loss: number; tokensPerSecond: number; seconds: number }, bar: boolean): string {
  const eta = p.step > 0 ? (p.seconds / p.step) * (p.steps - p.step) : 0;
  const stats = `loss ${p.loss.toFixed(4)}  ${p.tokensPerSecond.toFixed(0)} tok/s  ETA ${eta.toFixed(0)} s`;
  if (!bar) return `train-medusa: step ${p.step}/${p.steps} ${stats}`;
  const width = 30;
  const done = Math.round((width * p.step) / p.steps);
  return `[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${p.step}/${p.steps}  ${stats}`;
}

export async function trainMedusaCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(TRAIN_MEDUSA_USAGE + '\n');
    return 0;
  }
  const f = parseTrainMedusaFlags(argv);
  const config = readLlamaConfig(f.model);
  if (f.seqLen + f.heads + 1 > config.maxPositions) {
    throw codedError('E_ARG', `--seq-len ${f.seqLen}: the model has ${config.maxPositions} positions (seq-len + heads + 1 must fit)`);
  }
  // The trainer's forward attends over the whole sequence: exact for a sliding-window model while
  // the sequence fits in its shortest window.
  const window = Math.min(...(config.attentionWindows ?? []).filter((w) => w > 0));
  if (f.seqLen > window) {
    throw codedError('E_ARG', `--seq-len ${f.seqLen}: the model's attention slides over ${window} positions and the trainer attends over whole sequences; use --seq-len <= ${window}`);
  }
  const tokenizer = TextTokenizer.load(f.model);
  let docs = readData(f.data, tokenizer, config.vocabSize);
  if (f.selfDistill) docs = await selfDistill(f.model, docs, f.seqLen, config.maxPositions);
  const stream = concat(docs);
  if (stream.length < f.seqLen) throw codedError('E_ARG', `--data ${f.data}: ${stream.length} tokens are fewer than one sequence of --seq-len ${f.seqLen}`);

  using target = loadTrainer(f.model, config, f.seed, f.threads);
  using heads = MedusaTrainer.create({ numHeads: f.heads, numLayers: f.layers, hiddenSize: config.hiddenSize, vocabSize: config.vocabSize }, { seed: f.seed, threads: f.threads });
  heads.initFromTarget(target);
  const sampler = new BatchSampler(stream, f.seqLen, f.batch, f.seed + 1);
  const schedule = { lr: f.lr, minLr: f.lr / 20, warmupSteps: Math.min(20, Math.ceil(f.steps / 10)), totalSteps: f.steps };
  const bar = process.stderr.isTTY === true;
  const every = bar ? 1 : Math.max(1, Math.floor(f.steps / 20));
  const t0 = performance.now();
  let last: { headLoss: number[]; headAccuracy: number[] } = { headLoss: [], headAccuracy: [] };
  for (let step = 0; step < f.steps; step++) {
    const r = await heads.trainStep(target, sampler.next(), f.batch, f.seqLen, { lr: learningRate(step, schedule), weightDecay: 0, clip: 1.0 });
    last = r;
    if ((step + 1) % every === 0 || step === f.steps - 1) {
      const seconds = (performance.now() - t0) / 1000;
      const line = progressLine({ step: step + 1, steps: f.steps, loss: r.loss, tokensPerSecond: ((step + 1) * f.batch * f.seqLen) / seconds, seconds }, bar);
      process.stderr.write(bar ? `\r${line}` : `${line}\n`);
    }
  }
  if (bar) process.stderr.write('\n');
  heads.save(f.out, { dtype: f.dtype, baseModel: path.relative(path.resolve(f.out), path.resolve(f.model)) || '.' });
  process.stderr.write(
    `train-medusa: wrote ${f.out} (${f.heads} heads; last batch loss per head [${last.headLoss.map((x) => x.toFixed(3)).join(', ')}],` +
      ` top-1 [${last.headAccuracy.map((x) => x.toFixed(3)).join(', ')}])\n`,
  );
  return 0;
}
