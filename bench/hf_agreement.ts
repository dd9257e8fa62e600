// Agreement of specdec with Hugging Face transformers, and tokens/s side by side with transformers'
// own generation. Inputs come from scripts/hf_fixtures.py (run on the GPU machine):
//
//  - agreement: each fixture dir is a checkpoint saved by transformers plus reference.json (prompts,
//    transformers' logits of the prompt's last positions and greedy continuation with the top-2
//    margin per step, and the same in float64 from the saved weights). specdec loads the dir on each
//    device and must match:
//      f32 checkpoints  logits within F32_LOGIT_TOL of transformers' f32 logits; greedy tokens
//                       identical to transformers' for every step (64), no excuses;
//      bf16 checkpoints specdec keeps activations in f32 (bf16 weights are upcast exactly), so with an
//                       f32 KV cache its logits must be within F32_LOGIT_TOL of the float64 logits and
//                       its greedy tokens equal the float64 ones up to a float64 near-tie; with the
//                       default KV cache (bf16 on CUDA) its tokens may leave transformers' bf16 tokens
//                       only at a step where transformers' margin is a near-tie (nearTie below), and
//                       its logits must be no further from float64 than transformers' bf16 logits are.
//    Before any number, the config specdec parsed is compared with the settings transformers
//    computed with (rope theta and scaling, heads, eps, tying), so a misread config.json is named.
//  - side by side: hf_throughput.json (transformers' plain generate(), assisted generation with a
//    random draft and with the target itself, tokens/s) next to specdec plain and draft-model
//    decoding on the same checkpoints, prompts and lengths, in the same run.
//
// Run: node dist/bench/hf_agreement.js --fixtures DIR [--devices cuda,cpu] [--throughput FILE] [--out FILE]
// Exit 0 when every check held, 1 when one failed, 2 on bad arguments.
import * as fs from 'fs';
import * as path from 'path';
import { SpeculativeDecoder } from '../lib/decoder';
import { codedError } from '../lib/errors';
import { readLlamaConfig, type LlamaConfig } from '../lib/models/config';
import { LlamaModel, type KvDType } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator, type DraftModelOptions } from '../lib/strategies/draft_model';
import type { Device } from '../lib/tensor';
import { machineHeader, median, round, type MachineHeader } from './common';

export const REFERENCE_FORMAT = 'specdec-hf-reference/1';
export const THROUGHPUT_FORMAT = 'specdec-hf-throughput/1';

/**
 * Largest |got - want| / (1 + |want|) allowed between two f32 computations of the same logits (or
 * one against float64). Rounding in f32 over a few layers of width <= 512 stays near 1e-6 to 1e-5
 * (test/model.test.ts observes ~2e-6 at width 128 against float64); a real bug (rope theta or
 * scaling, a mask, a bias, GQA head mapping, tying) moves logits by O(0.1). 1e-4 leaves 10x for
 * reduction-order differences (cuBLAS vs our kernels) without hiding a bug.
 */
export const F32_LOGIT_TOL = 1e-4;

/**
 * Near-tie rule: at a step whose reference top-2 margin is m, two implementations whose logits are
 * off the truth by at most eRef and eOurs (largest absolute difference from float64, measured on the
 * prompt's logits) can legitimately pick different tokens only if m < 2 * (eRef + eOurs): each
 * side's error can move either of the two logits. The factor 2 also covers the longer contexts of
 * later steps. eRef is the reference's own error (0 for float64), so a divergence from transformers
 * is excused by transformers' imprecision, never by ours alone beyond what the logit check allows.
 */
export function nearTie(eRef: number, eOurs: number): number {
  return 2 * (eRef + eOurs);
}

// ---- reference.json ----------------------------------------------------------------------------------

export interface ReferenceSide {
  readonly tokens: number[];
  readonly margins: number[];
  /** Logits of the prompt's last min(logitPositions, prompt length) positions, row by row. */
  readonly logits: number[][];
}

export interface ReferencePrompt {
  readonly ids: number[];
  /** transformers in the checkpoint's dtype (the test's stand-in: see test/fixtures/hf_reference.ts). */
  readonly hf: ReferenceSide;
  /** float64 from the saved weights. */
  readonly f64: ReferenceSide;
}

export interface Reference {
  readonly format: string;
  readonly name: string;
  readonly architecture: string;
  readonly dtype: 'float32' | 'bfloat16';
  readonly generator: Record<string, unknown>;
  /** The settings transformers computed with (scripts/hf_fixtures.py: effective_config). */
  readonly config: Record<string, unknown>;
  readonly newTokens: number;
  readonly logitPositions: number;
  readonly prompts: ReferencePrompt[];
}

function isNumArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'number');
}

/** Reads and validates dir/reference.json (E_FORMAT naming the file and field). */
export function readReference(dir: string): Reference {
  const file = path.join(dir, 'reference.json');
  const bad = (msg: string): never => {
    throw codedError('E_FORMAT', `${file}: ${msg}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return bad(`cannot read (${(e as Error).message})`);
  }
  const r = json as Partial<Reference> | null;
  if (typeof r !== 'object' || r === null) return bad('expected a JSON object');
  if (r.format !== REFERENCE_FORMAT) bad(`format ${JSON.stringify(r.format)}, expected '${REFERENCE_FORMAT}'`);
  if (r.dtype !== 'float32' && r.dtype !== 'bfloat16') bad(`dtype ${JSON.stringify(r.dtype)}, expected 'float32' or 'bfloat16'`);
  if (typeof r.config !== 'object' || r.config === null) bad("missing 'config' object");
  if (!Number.isSafeInteger(r.newTokens) || (r.newTokens as number) < 1) bad("'newTokens' must be a positive integer");
  if (!Array.isArray(r.prompts) || r.prompts.length === 0) bad("'prompts' must be a non-empty array");
  (r.prompts as unknown[]).forEach((p, i) => {
    const q = p as Partial<ReferencePrompt> | null;
    if (typeof q !== 'object' || q === null || !isNumArray(q.ids) || q.ids.length === 0) bad(`prompts[${i}].ids must be a non-empty array of token ids`);
    for (const side of ['hf', 'f64'] as const) {
      const s = (q as Record<string, unknown>)[side] as Partial<ReferenceSide> | undefined;
      const where = `prompts[${i}].${side}`;
      if (typeof s !== 'object' || s === null) return bad(`missing ${where}`);
      if (!isNumArray(s.tokens) || s.tokens.length !== r.newTokens) bad(`${where}.tokens must hold newTokens (${r.newTokens}) ids`);
      if (!isNumArray(s.margins) || s.margins.length !== r.newTokens) bad(`${where}.margins must hold newTokens (${r.newTokens}) numbers`);
      if (!Array.isArray(s.logits) || s.logits.length === 0 || !s.logits.every(isNumArray)) bad(`${where}.logits must be a non-empty array of rows`);
    }
  });
  return r as Reference;
}

/** The fixture dirs under root (those holding a reference.json), sorted by name. */
export function findFixtures(root: string): string[] {
  if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw codedError('E_ARG', `--fixtures: ${root} is not a directory`);
  const dirs = fs
    .readdirSync(root)
    .map((n) => path.join(root, n))
    .filter((d) => fs.existsSync(path.join(d, 'reference.json')))
    .sort();
  if (dirs.length === 0) throw codedError('E_ARG', `--fixtures: no <dir>/reference.json under ${root} (run scripts/hf_fixtures.py agreement first)`);
  return dirs;
}

// ---- comparisons ------------------------------------------------------------------------------------

export interface Check {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** Largest relative (|d| / (1 + |want|)) and absolute difference between P x V logits and reference rows. */
export function logitError(got: Float32Array, want: readonly (readonly number[])[]): { rel: number; abs: number } {
  const V = want[0]?.length ?? 0;
  if (got.length !== want.length * V || want.some((row) => row.length !== V)) {
    throw codedError('E_FORMAT', `logits: ${got.length} values against ${want.length} reference rows of ${V}`);
  }
  let rel = 0;
  let abs = 0;
  want.forEach((row, p) => {
    row.forEach((w, v) => {
      const d = Math.abs((got[p * V + v] as number) - w);
      // NaN never passes: !(x <= m) catches it.
      if (!(d <= abs)) abs = d;
      const r = d / (1 + Math.abs(w));
      if (!(r <= rel)) rel = r;
    });
  });
  return { rel, abs };
}

function refLogitError(a: readonly (readonly number[])[], b: readonly (readonly number[])[]): { rel: number; abs: number } {
  return logitError(Float32Array.from(a.flat()), b);
}

/** Index of the first step where the two token lists differ (length mismatch counts), or -1. */
export function firstDivergence(got: ArrayLike<number>, want: ArrayLike<number>): number {
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return i;
  return got.length === want.length ? -1 : n;
}

interface TokenVerdict {
  readonly ok: boolean;
  readonly detail: string;
  readonly divergedAt: number;
}

/** Tokens must equal the reference's; if `tie` is given, a first divergence at a margin below it is excused. */
function judgeTokens(got: ArrayLike<number>, ref: ReferenceSide, tie: number | undefined): TokenVerdict {
  const at = firstDivergence(got, ref.tokens);
  if (at < 0) return { ok: true, detail: `${ref.tokens.length}/${ref.tokens.length} identical`, divergedAt: -1 };
  const margin = ref.margins[at];
  const where = `step ${at}: got ${got[at] ?? 'nothing'}, reference ${ref.tokens[at]} (reference margin ${margin?.toPrecision(3)}`;
  if (tie !== undefined && margin !== undefined && margin < tie) return { ok: true, detail: `diverged at a near-tie, ${where} < ${tie.toPrecision(3)})`, divergedAt: at };
  return { ok: false, detail: `${where}${tie !== undefined ? `, near-tie threshold ${tie.toPrecision(3)}` : ', no divergence allowed'})`, divergedAt: at };
}

/** The config fields transformers computed with vs what specdec parsed; one line per mismatch. */
export function configMismatches(ours: LlamaConfig, theirs: Record<string, unknown>, dtype: string): string[] {
  const out: string[] = [];
  const eq = (field: string, mine: unknown, want: unknown): void => {
    const same = typeof mine === 'number' && typeof want === 'number' ? Math.abs(mine - want) <= 1e-9 * Math.max(1, Math.abs(want)) : mine === want;
    if (!same) out.push(`${field}: specdec ${JSON.stringify(mine)}, transformers ${JSON.stringify(want)}`);
  };
  eq('vocab_size', ours.vocabSize, theirs['vocab_size']);
  eq('hidden_size', ours.hiddenSize, theirs['hidden_size']);
  eq('intermediate_size', ours.intermediateSize, theirs['intermediate_size']);
  eq('num_hidden_layers', ours.numLayers, theirs['num_hidden_layers']);
  eq('num_attention_heads', ours.numHeads, theirs['num_attention_heads']);
  eq('num_key_value_heads', ours.numKvHeads, theirs['num_key_value_heads']);
  eq('head_dim', ours.headDim, theirs['head_dim']);
  // Rotated values per head (transformers: int(head_dim x partial_rotary_factor)); older references lack it.
  if (typeof theirs['partial_rotary_factor'] === 'number' && typeof theirs['head_dim'] === 'number') {
    eq('rotary dims', ours.ropeDim, Math.floor(theirs['head_dim'] * theirs['partial_rotary_factor']));
  }
  // Sliding windows per layer, as transformers' attention modules hold them (newer versions); a window
  // as long as the context is none on both sides.
  if (Array.isArray(theirs['attention_windows'])) {
    const max = ours.maxPositions;
    const norm = (w: unknown): number => (typeof w === 'number' && w > 0 && w < max ? w : 0);
    const mine = Array.from({ length: ours.numLayers }, (_, l) => norm(ours.attentionWindows?.[l] ?? 0));
    eq('sliding windows per layer', mine.join(','), (theirs['attention_windows'] as unknown[]).map(norm).join(','));
  }
  eq('rms_norm_eps', ours.rmsNormEps, theirs['rms_norm_eps']);
  eq('rope_theta', ours.ropeTheta, theirs['rope_theta']);
  eq('tie_word_embeddings', ours.tieWordEmbeddings, theirs['tie_word_embeddings']);
  // specdec picks its default KV dtype on CUDA from this field (transformers >= 5 writes it as 'dtype').
  eq('torch_dtype', ours.torchDtype, dtype);
  const type = String(theirs['rope_type'] ?? 'default');
  eq('rope_type', ours.ropeScaling?.type ?? 'default', type);
  const rope = (theirs['rope'] ?? {}) as Record<string, unknown>;
  const s = ours.ropeScaling;
  if (s !== undefined && s.type === type) {
    if (s.type === 'longrope') {
      const list = (v: unknown): string => (Array.isArray(v) ? v.map((x) => Number(x)).join(',') : JSON.stringify(v));
      eq('rope short_factor', list(s.shortFactor), list(rope['short_factor']));
      eq('rope long_factor', list(s.longFactor), list(rope['long_factor']));
    } else {
      eq('rope factor', s.factor, rope['factor']);
      if (s.type === 'llama3') {
        eq('rope low_freq_factor', s.lowFreqFactor, rope['low_freq_factor']);
        eq('rope high_freq_factor', s.highFreqFactor, rope['high_freq_factor']);
        eq('rope original_max_position_embeddings', s.originalMaxPositions, rope['original_max_position_embeddings']);
      }
    }
  }
  return out;
}

// ---- agreement ----------------------------------------------------------------------------------------

export interface FixtureResult {
  readonly fixture: string;
  readonly dtype: string;
  readonly device: Device;
  readonly checks: Check[];
  /** Per KV dtype run and prompt: errors, divergence steps, thresholds. */
  readonly metrics: Record<string, unknown>[];
  readonly seconds: number;
}

interface PromptRun {
  readonly logits: Float32Array;
  readonly tokens: Int32Array;
}

/** The prompt's last P logits rows (one forward of the whole prompt) and a greedy continuation. */
async function runPrompt(model: LlamaModel, ids: readonly number[], positions: number, newTokens: number): Promise<PromptRun> {
  const prompt = Int32Array.from(ids);
  const seq = model.createSequence();
  let logits: Float32Array;
  try {
    const out = await model.forward([{ seq, tokens: prompt }]);
    try {
      const rows = out.logits.rows(prompt.length - positions, prompt.length);
      logits = rows.toFloat32();
      rows.dispose();
    } finally {
      out.logits.dispose();
      out.hidden?.dispose();
    }
  } finally {
    model.freeSequence(seq);
  }
  const gen = await plainGenerate(model, [prompt], { maxNewTokens: newTokens });
  return { logits, tokens: gen.tokens[0] as Int32Array };
}

/** Runs every prompt of one fixture on one device and judges it (see the file comment). */
export async function checkFixture(dir: string, device: Device, opts: { kvDtypes?: readonly KvDType[] } = {}): Promise<FixtureResult> {
  const t0 = performance.now();
  const ref = readReference(dir);
  const checks: Check[] = [];
  const metrics: Record<string, unknown>[] = [];
  const add = (name: string, ok: boolean, detail: string): void => void checks.push({ name, ok, detail });

  const mism = configMismatches(readLlamaConfig(dir), ref.config, ref.dtype);
  add('config: specdec reads the settings transformers computes with', mism.length === 0, mism.length === 0 ? 'all fields equal' : mism.join('; '));

  // f32 KV first (the strict checks), then the KV dtype a plain load picks where that differs (bf16
  // on CUDA for a bf16 checkpoint whose config.json says so): what users get.
  const probe = await LlamaModel.load(dir, { device, maxSequences: 2 });
  const defaultKv = probe.kvInfo().dtype as KvDType;
  probe.dispose();
  // opts.kvDtypes (tests): these instead, the last judged as the default is (e.g. bf16 on the CPU).
  const kvs: readonly KvDType[] = opts.kvDtypes ?? (defaultKv === 'f32' ? ['f32'] : ['f32', defaultKv]);
  const judgedKv = kvs[kvs.length - 1];
  for (const kv of kvs) {
    const model = await LlamaModel.load(dir, { device, kvDtype: kv, maxSequences: 2 });
    try {
      const worst = { relHf: 0, relF64: 0, absF64: 0, hfAbsF64: 0, hfRelF64: 0 };
      const tokenVerdicts: { vsHf: TokenVerdict; vsF64: TokenVerdict }[] = [];
      for (const [i, p] of ref.prompts.entries()) {
        const P = p.hf.logits.length;
        const run = await runPrompt(model, p.ids, P, ref.newTokens);
        const eHf = logitError(run.logits, p.hf.logits);
        const eF64 = logitError(run.logits, p.f64.logits);
        const hfOwn = refLogitError(p.hf.logits, p.f64.logits); // transformers' own error vs float64
        worst.relHf = Math.max(worst.relHf, eHf.rel);
        worst.relF64 = Math.max(worst.relF64, eF64.rel);
        worst.absF64 = Math.max(worst.absF64, eF64.abs);
        worst.hfAbsF64 = Math.max(worst.hfAbsF64, hfOwn.abs);
        worst.hfRelF64 = Math.max(worst.hfRelF64, hfOwn.rel);
        // f32 checkpoints: identical to transformers, no excuse. bf16: near-tie rule on each side.
        const vsHf = judgeTokens(run.tokens, p.hf, ref.dtype === 'float32' ? undefined : nearTie(hfOwn.abs, eF64.abs));
        const vsF64 = judgeTokens(run.tokens, p.f64, nearTie(0, eF64.abs));
        tokenVerdicts.push({ vsHf, vsF64 });
        metrics.push({
          kv,
          prompt: i,
          promptTokens: p.ids.length,
          logitRelErrVsTransformers: eHf.rel,
          logitRelErrVsFloat64: eF64.rel,
          logitAbsErrVsFloat64: eF64.abs,
          transformersAbsErrVsFloat64: hfOwn.abs,
          tokensVsTransformers: vsHf.detail,
          tokensVsFloat64: vsF64.detail,
          matchedTransformersTokens: vsHf.divergedAt < 0 ? ref.newTokens : vsHf.divergedAt,
        });
      }
      const tag = `[kv ${kv}${kv === defaultKv ? ', the default' : ''}]`;
      const list = (pick: (v: { vsHf: TokenVerdict; vsF64: TokenVerdict }) => TokenVerdict): string =>
        tokenVerdicts.map((v, i) => `prompt ${i}: ${pick(v).detail}`).join('; ');
      if (ref.dtype === 'float32') {
        add(`${tag} logits vs transformers f32 <= ${F32_LOGIT_TOL}`, worst.relHf <= F32_LOGIT_TOL, `max rel err ${worst.relHf.toPrecision(3)} (vs float64 ${worst.relF64.toPrecision(3)}; transformers f32 vs float64 ${worst.hfRelF64.toPrecision(3)})`);
        add(`${tag} greedy tokens == transformers f32, all ${ref.newTokens}`, tokenVerdicts.every((v) => v.vsHf.ok), list((v) => v.vsHf));
      } else if (kv === 'f32') {
        add(`${tag} logits vs float64 (bf16 weights) <= ${F32_LOGIT_TOL}`, worst.relF64 <= F32_LOGIT_TOL, `max rel err ${worst.relF64.toPrecision(3)} (transformers bf16 vs float64: ${worst.hfRelF64.toPrecision(3)})`);
        add(`${tag} greedy tokens == float64, up to a float64 near-tie`, tokenVerdicts.every((v) => v.vsF64.ok), list((v) => v.vsF64));
      }
      if (ref.dtype === 'bfloat16' && kv === judgedKv) {
        // The configuration users get (default KV): judged against transformers bf16 itself.
        add(`${tag} logits no further from float64 than transformers bf16's`, worst.absF64 <= worst.hfAbsF64, `max abs err vs float64: specdec ${worst.absF64.toPrecision(3)}, transformers bf16 ${worst.hfAbsF64.toPrecision(3)}`);
        add(`${tag} greedy tokens == transformers bf16, up to a transformers near-tie`, tokenVerdicts.every((v) => v.vsHf.ok), list((v) => v.vsHf));
      }
    } finally {
      model.dispose();
    }
  }
  return { fixture: ref.name, dtype: ref.dtype, device, checks, metrics, seconds: round((performance.now() - t0) / 1000, 2) };
}

// ---- side by side with transformers' generation ---------------------------------------------------------

interface HfRun {
  readonly tokensPerSecond: number;
  readonly tokensPerForward: number;
  readonly tokens: number[][];
}

export interface HfThroughput {
  readonly format: string;
  readonly env: Record<string, unknown>;
  readonly target: string;
  readonly draft: string;
  readonly prompts: number[][];
  readonly newTokens: number;
  readonly reps: number;
  readonly assistantSettings: { num_assistant_tokens?: number | null; num_assistant_tokens_schedule?: string | null; assistant_confidence_threshold?: number | null };
  readonly results: Record<string, HfRun>;
}

export function readThroughput(file: string): HfThroughput {
  let j: Partial<HfThroughput>;
  try {
    j = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<HfThroughput>;
  } catch (e) {
    throw codedError('E_FORMAT', `${file}: cannot read (${(e as Error).message})`);
  }
  if (j.format !== THROUGHPUT_FORMAT) throw codedError('E_FORMAT', `${file}: format ${JSON.stringify(j.format)}, expected '${THROUGHPUT_FORMAT}'`);
  if (!Array.isArray(j.prompts) || !j.prompts.every(isNumArray) || j.prompts.length === 0) throw codedError('E_FORMAT', `${file}: 'prompts' must be arrays of token ids`);
  if (!Number.isSafeInteger(j.newTokens) || !Number.isSafeInteger(j.reps)) throw codedError('E_FORMAT', `${file}: 'newTokens' and 'reps' must be integers`);
  if (typeof j.target !== 'string' || typeof j.draft !== 'string' || typeof j.results !== 'object') throw codedError('E_FORMAT', `${file}: missing target, draft or results`);
  return j as HfThroughput;
}

/** The draft settings that mirror transformers' assistant (its schedule, first k and confidence stop). */
export function hfLikeDraft(s: HfThroughput['assistantSettings']): Omit<DraftModelOptions, 'draft'> {
  const k = s.num_assistant_tokens ?? 20;
  if (s.num_assistant_tokens_schedule === 'heuristic') return { k, adaptive: 'heuristic' };
  const thr = s.assistant_confidence_threshold ?? 0;
  return thr > 0 ? { k: 1, maxK: k, adaptive: 'confidence', confidenceThreshold: thr } : { k };
}

export interface SideBySideRow {
  readonly specdec: string;
  readonly specdecTokensPerSecond: number;
  readonly tokensPerForward: number;
  readonly transformers: string;
  readonly transformersTokensPerSecond: number | null;
  readonly transformersTokensPerForward: number | null;
  readonly lossless: boolean;
}

export interface SideBySide {
  readonly rows: SideBySideRow[];
  readonly checks: Check[];
  /** Steps specdec's plain greedy tokens followed transformers' plain greedy tokens, per prompt (bf16: near-ties may part them). */
  readonly plainAgreementSteps: number[];
  readonly hfEnv: Record<string, unknown>;
  readonly setup: Record<string, unknown>;
}

/** specdec on the checkpoints of hf_throughput.json, on `device`, same prompts, lengths and repetitions. */
export async function sideBySide(file: string, device: Device, log: (line: string) => void): Promise<SideBySide> {
  const hf = readThroughput(file);
  const owned: LlamaModel[] = [];
  const load = async (dir: string): Promise<LlamaModel> => {
    const m = await LlamaModel.load(dir, { device, maxSequences: 2 });
    owned.push(m);
    return m;
  };
  try {
    const target = await load(hf.target);
    const draft = await load(hf.draft);
    const self = await load(hf.target); // same weights, its own KV cache: acceptance 1
    const like = hfLikeDraft(hf.assistantSettings);
    const modes: { name: string; hfName: string; make: (() => DraftModelSpeculator) | undefined }[] = [
      { name: 'plain', hfName: 'plain', make: undefined },
      { name: 'draft model (random draft, k=4)', hfName: 'assisted (random draft)', make: () => new DraftModelSpeculator({ draft, k: 4 }) },
      { name: `draft model (random draft, as transformers: ${JSON.stringify(like)})`, hfName: 'assisted (random draft)', make: () => new DraftModelSpeculator({ draft, ...like }) },
      { name: 'draft model (target itself, k=4)', hfName: 'assisted (target itself)', make: () => new DraftModelSpeculator({ draft: self, k: 4 }) },
      { name: `draft model (target itself, as transformers)`, hfName: 'assisted (target itself)', make: () => new DraftModelSpeculator({ draft: self, ...like }) },
    ];
    const prompts = hf.prompts.map((p) => Int32Array.from(p));
    const plainTokens: Int32Array[] = [];
    const rows: SideBySideRow[] = [];
    const checks: Check[] = [];
    for (const mode of modes) {
      const dec = mode.make ? new SpeculativeDecoder({ target, speculator: mode.make() }) : undefined;
      // Wall time of one call, prefill included: what the python side measures around generate().
      const once = async (prompt: Int32Array, n: number): Promise<{ tokens: Int32Array; seconds: number; tau: number }> => {
        const t0 = performance.now();
        if (!dec) {
          const r = await plainGenerate(target, [prompt], { maxNewTokens: n });
          return { tokens: r.tokens[0] as Int32Array, seconds: (performance.now() - t0) / 1000, tau: 1 };
        }
        const [r] = await dec.generateBatch([prompt], { maxNewTokens: n });
        if (!r) throw codedError('E_INTERNAL', 'no result');
        return { tokens: r.tokens, seconds: (performance.now() - t0) / 1000, tau: r.stats.tokensPerForward };
      };
      log(`side by side: ${mode.name}`);
      await once(prompts[0] as Int32Array, 8); // warm-up
      const tps: number[] = [];
      const taus: number[] = [];
      let lossless = true;
      for (const [i, prompt] of prompts.entries()) {
        for (let rep = 0; rep < hf.reps; rep++) {
          const r = await once(prompt, hf.newTokens);
          tps.push(r.tokens.length / r.seconds);
          taus.push(r.tau);
          if (!dec && rep === 0) plainTokens[i] = r.tokens;
          else if (firstDivergence(r.tokens, plainTokens[i] as Int32Array) >= 0) lossless = false;
        }
      }
      const hfRun = hf.results[mode.hfName];
      rows.push({
        specdec: mode.name,
        specdecTokensPerSecond: round(median(tps), 2),
        tokensPerForward: round(median(taus), 3),
        transformers: mode.hfName,
        transformersTokensPerSecond: hfRun ? round(hfRun.tokensPerSecond, 2) : null,
        transformersTokensPerForward: hfRun ? round(hfRun.tokensPerForward, 3) : null,
        lossless,
      });
      checks.push({ name: `side by side: ${mode.name} output == specdec plain output`, ok: lossless, detail: lossless ? 'every run' : 'a run differed' });
    }
    const hfPlain = hf.results['plain']?.tokens ?? [];
    const plainAgreementSteps = plainTokens.map((t, i) => {
      const at = firstDivergence(t, hfPlain[i] ?? []);
      return at < 0 ? t.length : at;
    });
    return {
      rows,
      checks,
      plainAgreementSteps,
      hfEnv: hf.env,
      setup: { device, target: hf.target, draft: hf.draft, newTokens: hf.newTokens, reps: hf.reps, prompts: prompts.length, promptTokens: prompts.map((p) => p.length), transformersAssistant: hf.assistantSettings },
    };
  } finally {
    for (const m of owned) m.dispose();
  }
}

// ---- the whole run ----------------------------------------------------------------------------------------

export interface AgreementReport {
  readonly header: MachineHeader;
  readonly tolerances: { f32LogitRelTol: number; nearTie: string };
  readonly fixtures: FixtureResult[];
  readonly sideBySide?: SideBySide;
  /** Parts that could not run (e.g. the side by side), as failed checks. */
  readonly errors: Check[];
  readonly ok: boolean;
}

export interface AgreementOptions {
  readonly fixtures?: string;
  readonly devices: readonly Device[];
  readonly throughput?: string;
  readonly log?: (line: string) => void;
}

export async function runAgreement(opts: AgreementOptions): Promise<AgreementReport> {
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  if (opts.devices.length === 0) throw codedError('E_ARG', '--devices: empty list');
  const dirs = opts.fixtures !== undefined ? findFixtures(opts.fixtures) : [];
  const fixtures: FixtureResult[] = [];
  // An error (a load that fails, a crash of one device) becomes a failed check, and the run goes on:
  // on a rented GPU every other number is still worth having.
  const failedRun = (what: string, e: unknown): Check => {
    const err = e as Error & { code?: string };
    log(`${what}: ${err.message}`);
    return { name: `${what} ran`, ok: false, detail: `${err.message}${err.code ? ` [${err.code}]` : ''}` };
  };
  for (const device of opts.devices) {
    for (const dir of dirs) {
      log(`agreement: ${path.basename(dir)} on ${device}`);
      try {
        fixtures.push(await checkFixture(dir, device));
      } catch (e) {
        fixtures.push({ fixture: path.basename(dir), dtype: '?', device, checks: [failedRun('agreement', e)], metrics: [], seconds: 0 });
      }
    }
  }
  let sbs: SideBySide | undefined;
  const extra: Check[] = [];
  if (opts.throughput !== undefined) {
    try {
      sbs = await sideBySide(opts.throughput, opts.devices[0] as Device, log);
    } catch (e) {
      extra.push(failedRun('side by side', e));
    }
  }
  const all = [...fixtures.flatMap((f) => f.checks), ...(sbs?.checks ?? []), ...extra];
  return {
    header: machineHeader(opts.devices[0] as Device),
    tolerances: { f32LogitRelTol: F32_LOGIT_TOL, nearTie: '2 * (reference abs error vs float64 + specdec abs error vs float64), measured on the prompt logits' },
    fixtures,
    ...(sbs !== undefined ? { sideBySide: sbs } : {}),
    errors: extra,
    ok: all.length > 0 && all.every((c) => c.ok),
  };
}

export function formatReport(r: AgreementReport): string {
  const lines: string[] = [];
  for (const f of r.fixtures) {
    for (const c of f.checks) lines.push(`${c.ok ? 'ok  ' : 'FAIL'}  ${f.device.padEnd(4)}  ${f.fixture}  ${c.name}: ${c.detail}`);
  }
  const s = r.sideBySide;
  if (s) {
    lines.push('', `side by side (${String(s.setup['device'])}, ${String(s.setup['newTokens'])} new tokens, batch 1, greedy; tok/s median of prompts x reps, prefill included)`);
    lines.push('specdec | tok/s | tau | transformers | tok/s | tau | specdec / transformers');
    for (const row of s.rows) {
      const ratio = row.transformersTokensPerSecond ? `${round(row.specdecTokensPerSecond / row.transformersTokensPerSecond, 2)}x` : '-';
      lines.push(`${row.specdec} | ${row.specdecTokensPerSecond} | ${row.tokensPerForward} | ${row.transformers} | ${row.transformersTokensPerSecond ?? '-'} | ${row.transformersTokensPerForward ?? '-'} | ${ratio}`);
    }
    for (const c of s.checks) if (!c.ok) lines.push(`FAIL  ${c.name}: ${c.detail}`);
    lines.push(`specdec plain greedy followed transformers' plain greedy for ${s.plainAgreementSteps.join(', ')} steps (per prompt; bf16 near-ties may part them)`);
  }
  for (const c of r.errors) lines.push(`FAIL  ${c.name}: ${c.detail}`);
  lines.push(r.ok ? 'hf agreement: every check held' : 'hf agreement: SOME CHECKS FAILED');
  return lines.join('\n');
}

const USAGE = 'usage: node dist/bench/hf_agreement.js [--fixtures DIR] [--devices cuda,cpu] [--throughput FILE] [--out FILE]';

export function parseArgs(argv: readonly string[]): AgreementOptions & { out?: string } {
  const o: { fixtures?: string; devices: Device[]; throughput?: string; out?: string } = { devices: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i] as string;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw codedError('E_ARG', `${flag}: missing value\n${USAGE}`);
      return v;
    };
    if (flag === '--fixtures') o.fixtures = value();
    else if (flag === '--throughput') o.throughput = value();
    else if (flag === '--out') o.out = value();
    else if (flag === '--devices') {
      o.devices = value().split(',').map((d) => {
        if (d !== 'cpu' && d !== 'cuda') throw codedError('E_ARG', `--devices: expected cpu and/or cuda, got '${d}'`);
        return d;
      });
    } else throw codedError('E_ARG', `unknown flag '${flag}'\n${USAGE}`);
  }
  if (o.fixtures === undefined && o.throughput === undefined) throw codedError('E_ARG', `nothing to do: give --fixtures and/or --throughput\n${USAGE}`);
  if (o.devices.length === 0) o.devices = ['cpu'];
  return o;
}

if (require.main === module) {
  (async (): Promise<number> => {
    let opts: ReturnType<typeof parseArgs>;
    try {
      opts = parseArgs(process.argv.slice(2));
    } catch (e) {
      process.stderr.write(`hf_agreement: ${(e as Error).message}\n`);
      return 2;
    }
    const report = await runAgreement(opts);
    if (opts.out !== undefined) fs.writeFileSync(opts.out, JSON.stringify(report, null, 1) + '\n');
    process.stdout.write(formatReport(report) + '\n');
    return report.ok ? 0 : 1;
  })().then(
    (code) => (process.exitCode = code),
    (e: unknown) => {
      const err = e as Error & { code?: string };
      process.stderr.write(`hf_agreement: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
      process.exitCode = 1;
    },
  );
}
