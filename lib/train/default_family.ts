// The recipe of the embedded default model family (models/default/): corpus -> tokenizer ->
// target -> draft -> Medusa heads on the target -> checkpoints + README. Fixed seeds and a fixed
// thread count make it reproducible; `npm run train:default` (scripts/train-default.js) runs it.
import * as fs from 'fs';
import * as path from 'path';

import { LlamaModel } from '../models/llama';
import { plainGenerate } from '../plain';
import { TextTokenizer } from '../tokenizer';
import { BOS_ID, corpusWords, EOS_ID, generateCorpus, storyText } from './corpus';
import { concat, selfDistill } from './self_distill';
import { buildVocab, writeTokenizerFiles } from './tokenizer_builder';
import { readLlamaConfig } from '../models/config';
import {
  BatchSampler,
  Eagle3Trainer,
  EagleTrainer,
  frequentIds,
  evalWindows,
  learningRate,
  LlamaTrainer,
  MedusaTrainer,
  type LlamaTrainConfig,
  type LrSchedule,
  type SaveDType,
} from './trainer';

export interface RunSpec {
  readonly steps: number;
  readonly batch: number;
  /** Positions per training window. */
  readonly seqLen: number;
  readonly lr: number;
  readonly minLr: number;
  readonly warmupSteps: number;
  readonly weightDecay: number;
}

export interface DefaultFamilyOptions {
  readonly outDir: string;
  /** Training tokens generated (default 2M). */
  readonly corpusTokens?: number;
  readonly threads?: number;
  /** Multiplies every run's step count (e.g. 0.05 for a smoke run). Default 1. */
  readonly stepScale?: number;
  readonly dtype?: SaveDType;
  readonly log?: (line: string) => void;
}

export const CORPUS_SEED = 20240601;
export const HELDOUT_SEED = 777;
const CONTEXT = 256;
/** The prompt of the README's greedy sample. */
export const SAMPLE_PROMPT = 'once upon a time , there was a little cat named lily .';

export function targetConfig(vocabSize: number): LlamaTrainConfig {
  return {
    vocabSize,
    hiddenSize: 128,
    intermediateSize: 384,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 2,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: false,
    maxPositions: CONTEXT,
    bosTokenId: BOS_ID,
    eosTokenId: EOS_ID,
  };
}

export function draftConfig(vocabSize: number): LlamaTrainConfig {
  return {
    vocabSize,
    hiddenSize: 64,
    intermediateSize: 192,
    numLayers: 1,
    numHeads: 2,
    numKvHeads: 1,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: true,
    maxPositions: CONTEXT,
    bosTokenId: BOS_ID,
    eosTokenId: EOS_ID,
  };
}

export const TARGET_RUN: RunSpec = { steps: 900, batch: 8, seqLen: CONTEXT, lr: 3e-3, minLr: 3e-4, warmupSteps: 40, weightDecay: 0.0 };
export const DRAFT_RUN: RunSpec = { steps: 800, batch: 8, seqLen: CONTEXT, lr: 5e-3, minLr: 5e-4, warmupSteps: 30, weightDecay: 0.0 };
/** The draft's second phase: the same stream the Medusa heads learn (half the target's own greedy continuations). */
export const DRAFT_DISTILL_RUN: RunSpec = { steps: 300, batch: 8, seqLen: CONTEXT, lr: 2e-3, minLr: 2e-4, warmupSteps: 10, weightDecay: 0.0 };
export const MEDUSA_RUN: RunSpec = { steps: 300, batch: 8, seqLen: CONTEXT, lr: 4e-3, minLr: 2e-4, warmupSteps: 20, weightDecay: 0.0 };
export const MEDUSA_HEADS = 4;
export const MEDUSA_LAYERS = 1;
/** Windows of 256 tokens: 255 rows, each with the next position's feature as its target. */
export const EAGLE_RUN: RunSpec = { steps: 300, batch: 8, seqLen: CONTEXT - 1, lr: 3e-3, minLr: 1.5e-4, warmupSteps: 20, weightDecay: 0.0 };
export const EAGLE_LAYERS = 1;
/** Width of the uniform noise on the input features (SafeAILab: 0.2 * 512 / sequence length). */
export const EAGLE_NOISE = 0.2;
/** The EAGLE-3 head: the same windows, training-time test of SafeAILab's 7 steps, the 256 most frequent tokens draftable. */
export const EAGLE3_RUN: RunSpec = { steps: 300, batch: 8, seqLen: CONTEXT - 1, lr: 3e-3, minLr: 1.5e-4, warmupSteps: 20, weightDecay: 0.0 };
export const EAGLE3_TTT_STEPS = 7;
export const EAGLE3_DRAFT_VOCAB = 256;

export interface RunResult {
  readonly steps: number;
  readonly tokens: number;
  readonly seconds: number;
  readonly finalTrainLoss: number;
  readonly heldoutLoss: number;
}

export interface EagleRunResult {
  readonly steps: number;
  readonly seconds: number;
  readonly params: number;
  /** The last batch's feature (SmoothL1) and token (cross-entropy) losses. */
  readonly vLoss: number;
  readonly pLoss: number;
  /** Held-out rows whose argmax is the target's next argmax (real features, no noise). */
  readonly heldoutAgreement: number;
}

export interface DraftRunResult extends RunResult {
  readonly params: number;
  /** The second phase, on the distilled stream (heldoutLoss: on the corpus's held-out text). */
  readonly distill: RunResult;
}

export interface MedusaRunResult {
  readonly steps: number;
  readonly seconds: number;
  readonly params: number;
  /** Tokens of the target's own continuations in the training stream (as many corpus tokens follow). */
  readonly distilledTokens: number;
  /** The last batch's loss and top-1 accuracy per head. */
  readonly headLoss: number[];
  readonly headAccuracy: number[];
}

export interface Eagle3RunResult {
  readonly steps: number;
  readonly seconds: number;
  readonly params: number;
  readonly auxLayers: readonly number[];
  readonly draftVocab: number;
  /** The last batch's cross-entropy per unrolled step. */
  readonly stepLoss: number[];
  /** Held-out rows whose argmax is the target's, per unrolled step (real features; deeper steps read the head's own outputs). */
  readonly heldoutAgreement: number[];
}

export interface DefaultFamilyResult {
  readonly vocabSize: number;
  readonly target: RunResult & { readonly params: number };
  readonly draft: DraftRunResult;
  readonly medusa: MedusaRunResult;
  readonly eagle: EagleRunResult;
  readonly eagle3: Eagle3RunResult;
  readonly bytes: Record<string, number>;
  readonly sample: string;
}

function scaled(run: RunSpec, scale: number): RunSpec {
  const steps = Math.max(2, Math.round(run.steps * scale));
  return { ...run, steps, warmupSteps: Math.max(1, Math.min(run.warmupSteps, Math.floor(steps / 4))) };
}

/** Trains a causal LM on the stream; logs every `every` steps. */
export async function trainCausalLM(
  model: LlamaTrainer,
  ids: Int32Array,
  heldout: Int32Array,
  run: RunSpec,
  seed: number,
  log: (line: string) => void,
  name: string,
): Promise<RunResult> {
  const sampler = new BatchSampler(ids, run.seqLen + 1, run.batch, seed);
  const sched: LrSchedule = { lr: run.lr, minLr: run.minLr, warmupSteps: run.warmupSteps, totalSteps: run.steps };
  const t0 = Date.now();
  let avg = NaN;
  const every = Math.max(1, Math.floor(run.steps / 20));
  for (let step = 0; step < run.steps; step++) {
    const lr = learningRate(step, sched);
    const r = await model.trainStep(sampler.next(), run.batch, run.seqLen, { lr, weightDecay: run.weightDecay, clip: 1.0, beta1: 0.9, beta2: 0.95 });
    avg = Number.isNaN(avg) ? r.loss : 0.9 * avg + 0.1 * r.loss;
    if (step % every === 0 || step === run.steps - 1) {
      const secs = (Date.now() - t0) / 1000;
      const tps = ((step + 1) * run.batch * run.seqLen) / Math.max(secs, 1e-9);
      log(`${name}: step ${step + 1}/${run.steps} loss ${r.loss.toFixed(4)} (avg ${avg.toFixed(4)}) lr ${lr.toExponential(2)} |g| ${r.gradNorm.toFixed(3)} ${tps.toFixed(0)} tok/s`);
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  const win = run.seqLen + 1;
  const ev = evalWindows(heldout, win, 16);
  const heldoutLoss = await model.evalLoss(ev, ev.length / win, run.seqLen);
  log(`${name}: done in ${seconds.toFixed(1)} s, held-out loss ${heldoutLoss.toFixed(4)} (perplexity ${Math.exp(heldoutLoss).toFixed(3)})`);
  return { steps: run.steps, tokens: run.steps * run.batch * run.seqLen, seconds, finalTrainLoss: avg, heldoutLoss };
}

function fileBytes(dir: string): number {
  let n = 0;
  for (const f of fs.readdirSync(dir)) {
    const p = path.join(dir, f);
    const st = fs.statSync(p);
    n += st.isDirectory() ? fileBytes(p) : st.size;
  }
  return n;
}

/** Runs the whole recipe and writes models/default-style directories under outDir. */
export async function trainDefaultFamily(options: DefaultFamilyOptions): Promise<DefaultFamilyResult> {
  const log = options.log ?? ((line: string) => void process.stderr.write(line + '\n'));
  const threads = options.threads ?? 2;
  const scale = options.stepScale ?? 1;
  const dtype = options.dtype ?? 'BF16';
  const t0 = Date.now();

  // 1. Corpus and tokenizer.
  const vocab = buildVocab(corpusWords());
  const ids = generateCorpus({ seed: CORPUS_SEED, tokens: options.corpusTokens ?? 2_000_000 }, vocab);
  const heldout = generateCorpus({ seed: HELDOUT_SEED, tokens: 20_000 }, vocab);
  log(`corpus: ${ids.length} tokens, vocabulary ${vocab.size} words`);

  const targetDir = path.join(options.outDir, 'target');
  const draftDir = path.join(options.outDir, 'draft');
  const medusaDir = path.join(options.outDir, 'medusa');

  // 2. Target.
  const tRun = scaled(TARGET_RUN, scale);
  const dRun = scaled(DRAFT_RUN, scale);
  const target = LlamaTrainer.create(targetConfig(vocab.size), { seed: 1, threads });
  log(`target: ${target.numParams()} parameters`);
  const targetResult = await trainCausalLM(target, ids, heldout, tRun, 101, log, 'target');

  // 3. The target's checkpoint, and the stream the draft's second phase and the Medusa heads learn:
  // the target's own greedy continuations of corpus prompts, then as many corpus tokens.
  const meta = { trainer: 'specdec (cpp/train)', recipe: 'npm run train:default', corpus_seed: String(CORPUS_SEED) };
  target.save(targetDir, { dtype, metadata: meta });
  writeTokenizerFiles(targetDir, vocab, CONTEXT);
  const distilled = await distilledStream(options.outDir, ids, log);

  // 4. Draft (same tokenizer, much smaller): the corpus, then the distilled stream.
  const draftResult = await trainDefaultDraft(options.outDir, vocab, ids, heldout, scaled(DRAFT_RUN, scale), scaled(DRAFT_DISTILL_RUN, scale), distilled.stream, threads, dtype, log);

  // 5. Medusa heads on the target as saved, on the distilled stream.
  const mRun = scaled(MEDUSA_RUN, scale);
  const medusa = await trainDefaultMedusaHeads(options.outDir, distilled, mRun, threads, dtype, log);

  // 6. The EAGLE head, on the target as saved (the weights --eagle default runs beside).
  const eagle = await trainDefaultEagleHead(options.outDir, ids, heldout, scaled(EAGLE_RUN, scale), threads, dtype, log);
  // 7. The EAGLE-3 head, likewise.
  const eagle3 = await trainDefaultEagle3Head(options.outDir, ids, heldout, scaled(EAGLE3_RUN, scale), threads, dtype, log);
  const result: DefaultFamilyResult = {
    vocabSize: vocab.size,
    target: { ...targetResult, params: target.numParams() },
    draft: draftResult,
    medusa,
    eagle,
    eagle3,
    bytes: {
      target: fileBytes(targetDir),
      draft: fileBytes(draftDir),
      medusa: fileBytes(medusaDir),
      eagle: fileBytes(path.join(options.outDir, 'eagle')),
      eagle3: fileBytes(path.join(options.outDir, 'eagle3')),
    },
    sample: await greedySample(targetDir, SAMPLE_PROMPT, 64),
  };
  target.dispose();
  log(`sample (greedy, runner): ${result.sample}`);
  writeReadme(options.outDir, result, tRun, dRun, scaled(DRAFT_DISTILL_RUN, scale), mRun, scaled(EAGLE_RUN, scale), scaled(EAGLE3_RUN, scale), (Date.now() - t0) / 1000, options.corpusTokens ?? 2_000_000);
  log(`all done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return result;
}

export interface DistilledStream {
  readonly stream: Int32Array;
  /** Its first part: the target's own continuations (the rest: as many corpus tokens). */
  readonly distilledTokens: number;
}

/**
 * Medusa's self-distillation data for the family: the saved target (through the runner) continues
 * 16-token prompts taken every MEDUSA_DISTILL_EVERY corpus tokens greedily; as many corpus tokens
 * follow. What greedy verification accepts is the target's own continuation, which the corpus text
 * is not; the corpus half keeps some of the spread sampling sees.
 */
export async function distilledStream(outDir: string, ids: Int32Array, log: (line: string) => void): Promise<DistilledStream> {
  const targetDir = path.join(outDir, 'target');
  const config = readLlamaConfig(targetDir);
  const t0 = Date.now();
  const prompts: Int32Array[] = [];
  for (let i = 0; i + MEDUSA_DISTILL_EVERY <= ids.length; i += MEDUSA_DISTILL_EVERY) prompts.push(ids.subarray(i, i + 16));
  const distilled = concat(await selfDistill(targetDir, prompts.length > 0 ? prompts : [ids.subarray(0, 16)], CONTEXT - 6, config.maxPositions));
  log(`distilled: ${distilled.length} tokens of the target's own continuations (${prompts.length} prompts, ${((Date.now() - t0) / 1000).toFixed(1)} s) + as many corpus tokens`);
  return { stream: concat([distilled, ids.subarray(0, Math.min(ids.length, distilled.length))]), distilledTokens: distilled.length };
}

/** Trains the draft (corpus, then the distilled stream) and writes it with its tokenizer to outDir/draft. */
export async function trainDefaultDraft(
  outDir: string,
  vocab: ReadonlyMap<string, number>,
  ids: Int32Array,
  heldout: Int32Array,
  run: RunSpec,
  distillRun: RunSpec,
  distilled: Int32Array,
  threads: number,
  dtype: SaveDType,
  log: (line: string) => void,
): Promise<DraftRunResult> {
  using draft = LlamaTrainer.create(draftConfig(vocab.size), { seed: 2, threads });
  log(`draft: ${draft.numParams()} parameters`);
  const corpus = await trainCausalLM(draft, ids, heldout, run, 202, log, 'draft');
  const distill = await trainCausalLM(draft, distilled, heldout, distillRun, 707, log, 'draft (distilled stream)');
  const draftDir = path.join(outDir, 'draft');
  draft.save(draftDir, { dtype, metadata: { trainer: 'specdec (cpp/train)', recipe: 'npm run train:default', corpus_seed: String(CORPUS_SEED) } });
  writeTokenizerFiles(draftDir, vocab, CONTEXT);
  return { ...corpus, params: draft.numParams(), distill };
}

/** Corpus tokens per self-distillation prompt (its first 16 tokens), as Medusa's training stream is built. */
export const MEDUSA_DISTILL_EVERY = 4096;

/**
 * Trains the Medusa heads on the saved target in outDir/target and writes them to outDir/medusa.
 * Their stream is the target's own greedy continuations of prompts from the corpus (Medusa's
 * self-distillation), then as many corpus tokens: heads that learn only the corpus miss how the
 * model itself continues (greedy verification accepts exactly that), heads that learn only the
 * model's greedy text lose some of the spread sampling sees.
 */
export async function trainDefaultMedusaHeads(outDir: string, distilled: DistilledStream, run: RunSpec, threads: number, dtype: SaveDType, log: (line: string) => void): Promise<MedusaRunResult> {
  const targetDir = path.join(outDir, 'target');
  const config = readLlamaConfig(targetDir);
  const { stream } = distilled;
  using target = LlamaTrainer.fromCheckpoint(targetDir, config, { seed: 1, threads });
  using heads = MedusaTrainer.create({ numHeads: MEDUSA_HEADS, numLayers: MEDUSA_LAYERS, hiddenSize: config.hiddenSize, vocabSize: config.vocabSize }, { seed: 3, threads });
  heads.initFromTarget(target);
  const sampler = new BatchSampler(stream, run.seqLen, run.batch, 303);
  const sched: LrSchedule = { lr: run.lr, minLr: run.minLr, warmupSteps: run.warmupSteps, totalSteps: run.steps };
  const tm = Date.now();
  let last = { headLoss: [] as number[], headAccuracy: [] as number[] };
  const every = Math.max(1, Math.floor(run.steps / 10));
  for (let step = 0; step < run.steps; step++) {
    const lr = learningRate(step, sched);
    const r = await heads.trainStep(target, sampler.next(), run.batch, run.seqLen, { lr, weightDecay: run.weightDecay, clip: 1.0 });
    last = { headLoss: r.headLoss, headAccuracy: r.headAccuracy };
    if (step % every === 0 || step === run.steps - 1) {
      log(
        `medusa: step ${step + 1}/${run.steps} loss ${r.loss.toFixed(4)} per head [${r.headLoss.map((x) => x.toFixed(3)).join(', ')}]` +
          ` top-1 [${r.headAccuracy.map((x) => x.toFixed(3)).join(', ')}] lr ${lr.toExponential(2)}`,
      );
    }
  }
  const seconds = (Date.now() - tm) / 1000;
  heads.save(path.join(outDir, 'medusa'), { dtype, baseModel: '../target' });
  return { steps: run.steps, seconds, params: heads.numParams(), distilledTokens: distilled.distilledTokens, ...last };
}

/**
 * Trains the EAGLE head on the saved target in outDir/target and writes it to outDir/eagle
 * (SafeAILab's layout, baseModel ../target).
 */
export async function trainDefaultEagleHead(
  outDir: string,
  ids: Int32Array,
  heldout: Int32Array,
  run: RunSpec,
  threads: number,
  dtype: SaveDType,
  log: (line: string) => void,
): Promise<EagleRunResult> {
  const targetDir = path.join(outDir, 'target');
  const config = readLlamaConfig(targetDir);
  using target = LlamaTrainer.fromCheckpoint(targetDir, config, { seed: 1, threads });
  using head = EagleTrainer.create(EagleTrainer.configFor(config, EAGLE_LAYERS), { seed: 4, threads });
  log(`eagle: ${head.numParams()} parameters`);
  const sampler = new BatchSampler(ids, run.seqLen + 1, run.batch, 404);
  const sched: LrSchedule = { lr: run.lr, minLr: run.minLr, warmupSteps: run.warmupSteps, totalSteps: run.steps };
  const t0 = Date.now();
  let last = { vLoss: NaN, pLoss: NaN };
  const every = Math.max(1, Math.floor(run.steps / 10));
  for (let step = 0; step < run.steps; step++) {
    const lr = learningRate(step, sched);
    const r = await head.trainStep(target, sampler.next(), run.batch, run.seqLen, { lr, weightDecay: run.weightDecay, clip: 0.5, noise: EAGLE_NOISE, noiseSeed: 4000 + step });
    last = r;
    if (step % every === 0 || step === run.steps - 1) {
      log(`eagle: step ${step + 1}/${run.steps} loss ${r.loss.toFixed(4)} (feature ${r.vLoss.toFixed(4)}, token ${r.pLoss.toFixed(4)}) top-1 ${r.accuracy.toFixed(3)} lr ${lr.toExponential(2)}`);
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  const heldoutAgreement = eagleAgreement(head, target, evalWindows(heldout, run.seqLen + 1, 16), run.seqLen);
  log(`eagle: done in ${seconds.toFixed(1)} s, held-out top-1 agreement with the target ${heldoutAgreement.toFixed(3)}`);
  head.save(path.join(outDir, 'eagle'), { dtype, metadata: { trainer: 'specdec (cpp/train)', recipe: 'npm run train:default', base_model: '../target' } });
  return { steps: run.steps, seconds, params: head.numParams(), vLoss: last.vLoss, pLoss: last.pLoss, heldoutAgreement };
}

/**
 * Trains the EAGLE-3 head on the saved target in outDir/target and writes it to outDir/eagle3
 * (features: the residual streams entering the target's last three layers; the corpus's most
 * frequent tokens draftable).
 */
export async function trainDefaultEagle3Head(
  outDir: string,
  ids: Int32Array,
  heldout: Int32Array,
  run: RunSpec,
  threads: number,
  dtype: SaveDType,
  log: (line: string) => void,
): Promise<Eagle3RunResult> {
  const targetDir = path.join(outDir, 'target');
  const config = readLlamaConfig(targetDir);
  using target = LlamaTrainer.fromCheckpoint(targetDir, config, { seed: 1, threads });
  const draftIds = frequentIds(ids, config.vocabSize, Math.min(EAGLE3_DRAFT_VOCAB, config.vocabSize));
  using head = Eagle3Trainer.create(Eagle3Trainer.configFor(config, draftIds), { seed: 5, threads });
  log(`eagle3: ${head.numParams()} parameters, features of layers ${head.config.auxLayers.join(', ')}, ${draftIds.length} draftable tokens`);
  const sampler = new BatchSampler(ids, run.seqLen + 1, run.batch, 505);
  const sched: LrSchedule = { lr: run.lr, minLr: run.minLr, warmupSteps: run.warmupSteps, totalSteps: run.steps };
  const t0 = Date.now();
  let stepLoss: number[] = [];
  const every = Math.max(1, Math.floor(run.steps / 10));
  for (let step = 0; step < run.steps; step++) {
    const lr = learningRate(step, sched);
    const r = await head.trainStep(target, sampler.next(), run.batch, run.seqLen, { lr, weightDecay: run.weightDecay, clip: 0.5, steps: EAGLE3_TTT_STEPS });
    stepLoss = r.stepLoss;
    if (step % every === 0 || step === run.steps - 1) {
      log(`eagle3: step ${step + 1}/${run.steps} loss ${r.loss.toFixed(4)} top-1 by step [${r.stepAccuracy.map((x) => x.toFixed(3)).join(', ')}] lr ${lr.toExponential(2)}`);
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  // Held-out agreement per step: the loss's own accounting on windows the head never saw.
  const windows = evalWindows(heldout, run.seqLen + 1, 16);
  const B = windows.length / (run.seqLen + 1);
  const t = target.forward(windows, B, run.seqLen + 1, head.config.auxLayers);
  const heldoutAgreement = head.lossAndGrad(windows, t.aux as SpecdecNative.TrainValues, t.logits, target.getParam('model.embed_tokens.weight'), B, run.seqLen, { steps: EAGLE3_TTT_STEPS }).stepAccuracy;
  log(`eagle3: done in ${seconds.toFixed(1)} s, held-out top-1 agreement with the target by step [${heldoutAgreement.map((x) => x.toFixed(3)).join(', ')}]`);
  head.save(path.join(outDir, 'eagle3'), { dtype, metadata: { trainer: 'specdec (cpp/train)', recipe: 'npm run train:default', base_model: '../target' } });
  return { steps: run.steps, seconds, params: head.numParams(), auxLayers: [...head.config.auxLayers], draftVocab: draftIds.length, stepLoss, heldoutAgreement };
}

/** Rows of `windows` [n, seqLen + 1] where the head's argmax equals the target's next argmax. */
export function eagleAgreement(head: EagleTrainer, target: LlamaTrainer, windows: Int32Array, seqLen: number): number {
  const B = windows.length / (seqLen + 1);
  const V = target.config.vocabSize;
  const t = target.forward(windows, B, seqLen + 1);
  const embed = target.getParam('model.embed_tokens.weight');
  const lm = target.config.tieWordEmbeddings ? embed : target.getParam('lm_head.weight');
  const { logits } = head.forward(windows, t.hidden, embed, lm, B, seqLen);
  const argmax = (a: ArrayLike<number>, at: number): number => {
    let best = 0;
    for (let i = 1; i < V; i++) if ((a[at + i] as number) > (a[at + best] as number)) best = i;
    return best;
  };
  let hits = 0;
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < seqLen; j++) {
      if (argmax(logits, (b * seqLen + j) * V) === argmax(t.logits, (b * (seqLen + 1) + j + 1) * V)) hits++;
    }
  }
  return hits / (B * seqLen);
}

/**
 * `npm run train:default -- --only medusa | eagle | eagle3`: those heads alone, on the family already
 * in outDir (its README's lines for them are rewritten; the rest is kept).
 */
export async function trainDefaultHeadsOnly(options: DefaultFamilyOptions & { readonly part: 'draft' | 'medusa' | 'eagle' | 'eagle3' }): Promise<DraftRunResult | MedusaRunResult | EagleRunResult | Eagle3RunResult> {
  const log = options.log ?? ((line: string) => void process.stderr.write(line + '\n'));
  const vocab = buildVocab(corpusWords());
  const ids = generateCorpus({ seed: CORPUS_SEED, tokens: options.corpusTokens ?? 2_000_000 }, vocab);
  const heldout = generateCorpus({ seed: HELDOUT_SEED, tokens: 20_000 }, vocab);
  const { part } = options;
  const scale = options.stepScale ?? 1;
  const run = scaled(part === 'draft' ? DRAFT_RUN : part === 'medusa' ? MEDUSA_RUN : part === 'eagle3' ? EAGLE3_RUN : EAGLE_RUN, scale);
  const threads = options.threads ?? 2,
    dtype = options.dtype ?? 'BF16';
  const r =
    part === 'draft' ? await trainDefaultDraft(options.outDir, vocab, ids, heldout, run, scaled(DRAFT_DISTILL_RUN, scale), (await distilledStream(options.outDir, ids, log)).stream, threads, dtype, log)
    : part === 'medusa' ? await trainDefaultMedusaHeads(options.outDir, await distilledStream(options.outDir, ids, log), run, threads, dtype, log)
    : part === 'eagle3' ? await trainDefaultEagle3Head(options.outDir, ids, heldout, run, threads, dtype, log)
    : await trainDefaultEagleHead(options.outDir, ids, heldout, run, threads, dtype, log);
  const readme = path.join(options.outDir, 'README.md');
  if (fs.existsSync(readme)) {
    const lines = fs.readFileSync(readme, 'utf8').split('\n');
    const bytes = fileBytes(path.join(options.outDir, part));
    const put = (prefix: string, text: string, after: string): void => {
      const at = lines.findIndex((l) => l.startsWith(prefix));
      if (at >= 0) lines[at] = text;
      else lines.splice(lines.findIndex((l) => l.startsWith(after)) + 1, 0, text);
    };
    if (part === 'draft') {
      put('- draft:', draftResultLine(r as DraftRunResult, run, scaled(DRAFT_DISTILL_RUN, scale)), '- target:');
    } else if (part === 'medusa') {
      put('| `medusa/`', medusaTableRow(r as MedusaRunResult, bytes), '| `draft/`');
      put('- medusa (', medusaResultLine(r as MedusaRunResult, run), '- draft:');
    } else if (part === 'eagle3') {
      put('| `eagle3/`', eagle3TableRow(r as Eagle3RunResult, bytes), '| `eagle/`');
      put('- eagle3 (', eagle3ResultLine(r as Eagle3RunResult, run), '- eagle (');
      put('npx specdec generate --prompt "once upon a time" --eagle default3', USE_EAGLE3, 'npx specdec generate --prompt "once upon a time" --eagle default');
    } else {
      put('| `eagle/`', eagleTableRow(r as EagleRunResult, bytes), '| `medusa/`');
      put('- eagle (', eagleResultLine(r as EagleRunResult, run), '- medusa (');
      put('npx specdec generate --prompt "once upon a time" --eagle default', USE_EAGLE, 'npx specdec generate --prompt "once upon a time" --medusa default');
    }
    const intro = lines.findIndex((l) => l.startsWith('Three small checkpoints'));
    if (intro >= 0) lines[intro] = (lines[intro] as string).replace('Three small checkpoints', 'Small checkpoints');
    fs.writeFileSync(readme, lines.join('\n'));
  }
  return r;
}

function runText(x: RunSpec): string {
  return `${x.steps} steps x ${x.batch} x ${x.seqLen} tokens, AdamW lr ${x.lr} (warmup ${x.warmupSteps}, cosine to ${x.minLr}), weight decay ${x.weightDecay}, clip 1.0`;
}

function draftResultLine(r: DraftRunResult, run: RunSpec, distillRun: RunSpec): string {
  return `- draft: ${runText(run)}. Final training loss ${r.finalTrainLoss.toFixed(4)}, held-out loss ${r.heldoutLoss.toFixed(4)} (perplexity ${Math.exp(r.heldoutLoss).toFixed(3)}), ${r.seconds.toFixed(0)} s. Then the Medusa heads' stream (half the target's own greedy continuations): ${runText(distillRun)}; held-out corpus loss ${r.distill.heldoutLoss.toFixed(4)}, ${r.distill.seconds.toFixed(0)} s.`;
}

function medusaTableRow(r: MedusaRunResult, bytes: number): string {
  return `| \`medusa/\` | ${MEDUSA_HEADS} Medusa heads for the target (FasterDecoding layout, ${MEDUSA_LAYERS} ResBlock each; head h predicts the token h + 2 ahead) | ${r.params} | ${(bytes / 1024).toFixed(0)} KiB |`;
}

function medusaResultLine(r: MedusaRunResult, run: RunSpec): string {
  return `- medusa (target frozen, LM heads initialised from the target's, ResBlocks from zero; data: ${r.distilledTokens} tokens of the target's own greedy continuations of 16-token corpus prompts, then as many corpus tokens): ${run.steps} steps x ${run.batch} x ${run.seqLen} tokens, AdamW lr ${run.lr} (warmup ${run.warmupSteps}, cosine to ${run.minLr}), weight decay ${run.weightDecay}, clip 1.0. Last batch per-head loss [${r.headLoss.map((x) => x.toFixed(3)).join(', ')}], top-1 accuracy [${r.headAccuracy.map((x) => x.toFixed(3)).join(', ')}], ${r.seconds.toFixed(0)} s.`;
}

const USE_EAGLE = 'npx specdec generate --prompt "once upon a time" --eagle default    # + the embedded EAGLE head';
const USE_EAGLE3 = 'npx specdec generate --prompt "once upon a time" --eagle default3   # + the embedded EAGLE-3 head';

function eagle3TableRow(r: Eagle3RunResult, bytes: number): string {
  return `| \`eagle3/\` | An EAGLE-3 head for the target (SafeAILab layout: fc over the residual streams entering layers ${r.auxLayers.join(', ')}, one layer over [norm(token embedding); norm(x)], its own norm and LM head over the ${r.draftVocab} most frequent tokens) | ${r.params} | ${(bytes / 1024).toFixed(0)} KiB |`;
}

function eagle3ResultLine(r: Eagle3RunResult, run: RunSpec): string {
  return `- eagle3 (target frozen, SafeAILab's training-time test: ${EAGLE3_TTT_STEPS} unrolled steps, cross-entropy against the target's distribution over the draft vocabulary weighted 0.8^step): ${run.steps} steps x ${run.batch} x ${run.seqLen} rows, AdamW lr ${run.lr} (warmup ${run.warmupSteps}, cosine to ${run.minLr}), clip 0.5. Last batch loss by step [${r.stepLoss.map((x) => x.toFixed(3)).join(', ')}]; held-out top-1 agreement with the target by step [${r.heldoutAgreement.map((x) => x.toFixed(3)).join(', ')}], ${r.seconds.toFixed(0)} s.`;
}

function eagleTableRow(r: EagleRunResult, bytes: number): string {
  return `| \`eagle/\` | An EAGLE-1/2 head for the target (SafeAILab layout: fc over [token embedding; target feature], ${EAGLE_LAYERS} Llama layer of the target's sizes, the target's LM head) | ${r.params} | ${(bytes / 1024).toFixed(0)} KiB |`;
}

function eagleResultLine(r: EagleRunResult, run: RunSpec): string {
  return `- eagle (target frozen, SafeAILab's losses: SmoothL1 on the next feature + 0.1 x cross-entropy against the target's next distribution, uniform feature noise of width ${EAGLE_NOISE}): ${run.steps} steps x ${run.batch} x ${run.seqLen} rows, AdamW lr ${run.lr} (warmup ${run.warmupSteps}, cosine to ${run.minLr}), clip 0.5. Last batch feature loss ${r.vLoss.toFixed(4)}, token loss ${r.pLoss.toFixed(4)}; held-out top-1 agreement with the target ${r.heldoutAgreement.toFixed(3)}, ${r.seconds.toFixed(0)} s.`;
}

/** Greedy continuation of `prompt` by the saved checkpoint, through the runner (a load check too). */
export async function greedySample(dir: string, prompt: string, maxNewTokens: number): Promise<string> {
  const tok = TextTokenizer.load(dir);
  if (!tok) throw new Error(`${dir}: no tokenizer.json`);
  const model = await LlamaModel.load(dir, { device: 'cpu', maxSequences: 1 });
  try {
    const r = await plainGenerate(model, [tok.encode(prompt)], { maxNewTokens });
    return prompt + ' ' + tok.decode(r.tokens[0] ?? new Int32Array(0), { skipSpecialTokens: true });
  } finally {
    model.dispose();
  }
}

function writeReadme(
  outDir: string,
  r: DefaultFamilyResult,
  tRun: RunSpec,
  dRun: RunSpec,
  fRun: RunSpec,
  mRun: RunSpec,
  eRun: RunSpec,
  e3Run: RunSpec,
  seconds: number,
  corpusTokens: number,
): void {
  const tc = targetConfig(r.vocabSize);
  const dc = draftConfig(r.vocabSize);
  const kb = (n: number): string => `${(n / 1024).toFixed(0)} KiB`;
  const run = runText;
  const text = `# The embedded default model family

Small checkpoints trained by specdec's own trainer (\`cpp/train/\`, hand-written forward and
backward in C++) so that \`specdec generate\` works out of the box, without downloading anything:

| dir | what | parameters | size |
| --- | --- | --- | --- |
| \`target/\` | LlamaForCausalLM: hidden ${tc.hiddenSize}, ${tc.numLayers} layers, ${tc.numHeads} heads / ${tc.numKvHeads} KV heads (GQA), SwiGLU ${tc.intermediateSize}, RoPE theta ${tc.ropeTheta}, untied LM head | ${r.target.params} | ${kb(r.bytes['target'] ?? 0)} |
| \`draft/\` | LlamaForCausalLM: hidden ${dc.hiddenSize}, ${dc.numLayers} layer, ${dc.numHeads} heads / ${dc.numKvHeads} KV head, SwiGLU ${dc.intermediateSize}, tied embeddings; same tokenizer | ${r.draft.params} | ${kb(r.bytes['draft'] ?? 0)} |
${medusaTableRow(r.medusa, r.bytes['medusa'] ?? 0)}
${eagleTableRow(r.eagle, r.bytes['eagle'] ?? 0)}
${eagle3TableRow(r.eagle3, r.bytes['eagle3'] ?? 0)}

Weights are stored as bfloat16 (\`model.safetensors\`, \`medusa_lm_head.safetensors\`); the context
is ${tc.maxPositions} positions (the training window). \`tokenizer.json\` is a word-level tokenizer
(${r.vocabSize} entries: \`<unk>\`, \`<s>\`, \`</s>\` and the corpus words; punctuation is its own word; \`<s>\` is
prepended; \`</s>\` (id ${EOS_ID}) ends a story).

## Corpus

Synthetic children's stories generated procedurally by \`lib/train/corpus.ts\` (a small probabilistic
grammar written for this project, seed ${CORPUS_SEED}, ${corpusTokens} tokens). The text is ours and
is under the project's licence. It is varied but very predictable (a fixed story arc, repeated
phrases, the hero's name and pronoun carried through), which is where speculative decoding shines.
A story (corpus seed 1):

> ${storyText(1)}

## Licence

MIT, like the rest of specdec: the corpus, the tokenizer and the weights are all produced by this
repository's code.

## Reproduce

\`\`\`
npm run build:native && npx tsc -p tsconfig.json
npm run train:default        # node scripts/train-default.js; about ${Math.ceil(seconds / 60)} minutes on 2 cores
\`\`\`

Fixed seeds and a fixed thread count (2) make the run reproducible on a given machine (f32
summation order is fixed; different compilers or CPUs may differ in the last bits).

## Training and results (this run: ${seconds.toFixed(0)} s)

- target: ${run(tRun)}. Final training loss ${r.target.finalTrainLoss.toFixed(4)}, held-out loss ${r.target.heldoutLoss.toFixed(4)} (perplexity ${Math.exp(r.target.heldoutLoss).toFixed(3)}), ${r.target.seconds.toFixed(0)} s.
${draftResultLine(r.draft, dRun, fRun)}
${medusaResultLine(r.medusa, mRun)}
${eagleResultLine(r.eagle, eRun)}
${eagle3ResultLine(r.eagle3, e3Run)}

Greedy sample of the target (through the runner, prompt "${SAMPLE_PROMPT}"):

> ${r.sample}

## Use

\`\`\`
npx specdec generate --prompt "once upon a time"                    # the embedded target
npx specdec generate --prompt "once upon a time" --draft default    # + the embedded draft
npx specdec generate --prompt "once upon a time" --medusa default   # + the embedded Medusa heads
${USE_EAGLE}
${USE_EAGLE3}
npx specdec generate --model models/default/target --draft models/default/draft --prompt "the cat"
\`\`\`
`;
  fs.writeFileSync(path.join(outDir, 'README.md'), text);
}
