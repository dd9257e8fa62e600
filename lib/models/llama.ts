// The built-in Llama-family runner (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM, Phi3ForCausalLM, SmolLM3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM,
// Olmo2ForCausalLM, GraniteForCausalLM; the text model of Gemma3ForConditionalGeneration) as a
// CausalLM: config.json parsed here, weights memory-mapped and validated by the native loader
// (cpp/model/llama.cc), forward on the libuv pool (tiny forwards on the calling thread, see
// syncForwardMaxMacs), KV cache bookkeeping delegated to C++.
import * as fs from 'fs';
import * as path from 'path';
import { resolveDevice } from '../backend';
import { optionsArg, pathArg } from '../errors';
import { checkLogprobs } from '../logprobs';
import { native } from '../native';
import { anyBan, nativePenalties, NO_PENALTIES, resolvePenalties, resolveSamplingOptions, type SamplingOptions } from '../sampling';
import { asTensor, type Device, type Tensor } from '../tensor';
import type { CausalLM, ChainOptions, ForwardOptions, ForwardOutput, MedusaChainOptions, MedusaChainResult, MedusaChainSequence, MedusaChainTemplate, SampledChainArgs, SequenceInput, SpecChainOptions, SpecChainResult, SpecChainSequence, StagedVerify, VerifiedPaths } from './causal_lm';
import { codedError, readLlamaConfig, TEXT_MODEL_LAYOUTS, toNativeConfig, type LlamaConfig } from './config';

export type KvDType = 'f32' | 'f16' | 'bf16';

export interface LlamaLoadOptions {
  /** 'auto' (default): CUDA when available, else CPU. */
  readonly device?: Device | 'auto';
  /** KV pages (each `pageSize` tokens, all layers). Default: room for `maxSequences` full contexts
   *  plus a speculative tree each, capped at 2 GiB of KV memory. */
  readonly kvPages?: number;
  readonly pageSize?: number;
  /** Default: f32 on the CPU; on CUDA the checkpoint's half type (torch_dtype) or f32. */
  readonly kvDtype?: KvDType;
  /** Positions a sequence may use (prompt + output), at most max_position_embeddings: lowers
   *  config.maxPositions, and with it the default kvPages. Default: max_position_embeddings. */
  readonly maxContext?: number;
  /** Sequences expected to be alive at once (sizes the default kvPages). Default 4. */
  readonly maxSequences?: number;
  /**
   * KV tokens per sequence beyond its context for a speculative tree (sizes the default kvPages;
   * match it to the engine's treeReserveTokens). Default 64.
   */
  readonly treeTokens?: number;
  /**
   * Forwards whose estimated work (multiply-adds: weights x new tokens + attention over the
   * context) is at most this run on the calling thread instead of the libuv pool; the returned
   * promise is then already settled. A tiny model's forward costs less than the round trip through
   * the pool and the event loop (tens of microseconds), while a big one must not block the event
   * loop. Runs of such forwards give the event loop a turn every few milliseconds (SYNC_SLICE_MS).
   * Default DEFAULT_SYNC_FORWARD_MACS; 0: always the pool.
   */
  readonly syncForwardMaxMacs?: number;
}

/**
 * 32M multiply-adds: about 2 ms of work on the 2-core AVX2 machine of bench/README.md, where the
 * round trip through the pool costs ~30-50 us, i.e. at most a few percent of a forward that stays
 * on the pool. The embedded default target (0.87M parameters) verifies a 5-token chain (~5M) and
 * a 17-node tree (~15-17M) on the calling thread; one token of a ~100M model stays on the pool.
 */
export const DEFAULT_SYNC_FORWARD_MACS = 32e6;

export interface KvInfo {
  readonly pageSize: number;
  readonly totalPages: number;
  readonly freePages: number;
  readonly dtype: string;
  readonly bytes: number;
}

const KV_BUDGET_BYTES = 2 * 1024 ** 3;
const SPARE_TREE_TOKENS = 64;

/** The weight_map of a sharded checkpoint's index (safetensors or PyTorch): tensor name -> a file in the directory. */
export function readWeightMap(index: string): Record<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(index, 'utf8'));
  } catch (e) {
    throw codedError('E_FORMAT', `${index}: invalid JSON (${(e as Error).message})`);
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw codedError('E_FORMAT', `${index}: missing 'weight_map' object`);
  const weightMap: Record<string, string> = {};
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    // Shard names stay inside the model directory.
    if (typeof file !== 'string' || file.length === 0 || path.isAbsolute(file) || file.split(/[\\/]/).includes('..')) {
      throw codedError('E_FORMAT', `${index}: weight_map['${name}'] is not a file name in the model directory`);
    }
    weightMap[name] = file;
  }
  return weightMap;
}

/** Where the weights of a checkpoint directory are (single file or sharded index). */
export function findWeights(dir: string): SpecdecNative.LlamaNativeSource {
  const index = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) return { dir, weightMap: readWeightMap(index) };
  if (fs.existsSync(path.join(dir, 'model.safetensors'))) return { dir, file: 'model.safetensors' };
  // Older checkpoints (e.g. the Vicuna bases of published Medusa and EAGLE heads) hold only PyTorch weights.
  const bin = ['pytorch_model.bin.index.json', 'pytorch_model.bin'].find((f) => fs.existsSync(path.join(dir, f)));
  if (bin) throw codedError('E_FORMAT', `${dir}: no model.safetensors or model.safetensors.index.json, only ${bin}; convert it once with: npx specdec convert ${dir}`);
  throw codedError('E_FORMAT', `${dir}: no model.safetensors or model.safetensors.index.json`);
}

function withMaxContext(config: LlamaConfig, maxContext: number | undefined): LlamaConfig {
  if (maxContext === undefined) return config;
  const n = positiveInt(maxContext, 'maxContext', config.maxPositions);
  if (n > config.maxPositions) throw codedError('E_ARG', `maxContext: ${n} is more than the model's ${config.maxPositions} positions (max_position_embeddings)`);
  return { ...config, maxPositions: n };
}

function positiveInt(v: number | undefined, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v <= 0) throw codedError('E_ARG', `${name}: expected a positive integer, got ${v}`);
  return v;
}

/**
 * Calling-thread forwards resolve without entering the event loop, so a long run of them would
 * starve timers, I/O and abort signals. Once they have held the loop for SYNC_SLICE_MS (all
 * models together), the next call first gives the event loop a turn (setImmediate), then runs on
 * the calling thread as before. (It used to go through the libuv pool instead, the loop turning
 * while it ran: on a 2-vCPU VM the pool thread's wakeup took ~1 ms against a 0.2 ms forward of the
 * embedded target, so a speculative run that started after a plain one often paid 1 ms for its
 * 7-token prefill: bench/README.md, 2026-12-04.)
 */
const SYNC_SLICE_MS = 4;
let sliceStart = 0;
let loopTurned = true;

/** The syncMaxMacs to pass to a native call now (0 = through the pool); starts a slice. */
function syncLimit(max: number): number {
  if (max === 0) return 0;
  if (loopTurned) {
    loopTurned = false;
    sliceStart = performance.now();
    setImmediate(() => (loopTurned = true));
  }
  return max;
}

/**
 * Whether calling-thread forwards have held the event loop for a whole slice: the caller then
 * awaits loopTurn() before its call. (A function of its own, not awaited on every call: most calls
 * find time left and pay no microtask turn.)
 */
function sliceSpent(max: number): boolean {
  return max !== 0 && !loopTurned && performance.now() - sliceStart >= SYNC_SLICE_MS;
}

/**
 * One event-loop turn (the slice's own setImmediate, queued before this one, has run by then),
 * then the call's abort signal again: an abort may have come in during the turn.
 */
async function loopTurn(signal: AbortSignal | undefined): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  signal?.throwIfAborted();
}

export class LlamaModel implements CausalLM {
  private handle: SpecdecNative.LlamaNativeModel | undefined;
  private busy = false;
  /** CausalLM.chainLogprobs: greedyChain and sampledChain compute ChainOptions.logprobs natively. */
  readonly chainLogprobs = true;

  private constructor(
    readonly config: LlamaConfig,
    readonly device: Device,
    readonly dir: string,
    handle: SpecdecNative.LlamaNativeModel,
    /** See LlamaLoadOptions.syncForwardMaxMacs. */
    readonly syncForwardMaxMacs: number,
  ) {
    this.handle = handle;
  }

  /** Loads a checkpoint directory (config.json + model.safetensors or a sharded index). */
  static async load(dir: string, options: LlamaLoadOptions = {}): Promise<LlamaModel> {
    pathArg(dir, 'LlamaModel.load: dir');
    optionsArg(options, 'LlamaModel.load options', true);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw codedError('E_FORMAT', `${dir}: not a model directory`);
    const config = withMaxContext(readLlamaConfig(dir), options.maxContext);
    const found = findWeights(dir);
    // A multimodal checkpoint: its text model's tensors, under either layout.
    const source = config.textOf !== undefined ? { ...found, layouts: TEXT_MODEL_LAYOUTS.map(([p, h]) => [p, h] as [string, string]) } : found;
    const device = resolveDevice(options.device ?? 'auto');
    const pageSize = positiveInt(options.pageSize, 'pageSize', 16);
    const maxSequences = positiveInt(options.maxSequences, 'maxSequences', 4);
    const treeTokens = positiveInt(options.treeTokens, 'treeTokens', SPARE_TREE_TOKENS);
    const kvDtype = options.kvDtype ?? defaultKvDtype(config, device);
    if (!['f32', 'f16', 'bf16'].includes(kvDtype)) throw codedError('E_ARG', `kvDtype: expected f32, f16 or bf16, got ${String(kvDtype)}`);
    let kvPages = options.kvPages;
    if (kvPages === undefined) {
      const perSeq = Math.ceil((config.maxPositions + treeTokens) / pageSize);
      const pageBytes = config.numLayers * 2 * pageSize * config.numKvHeads * config.headDim * (kvDtype === 'f32' ? 4 : 2);
      kvPages = Math.max(Math.min(maxSequences * perSeq, Math.floor(KV_BUDGET_BYTES / pageBytes)), maxSequences);
    }
    kvPages = positiveInt(kvPages, 'kvPages', 1);
    const syncMacs = options.syncForwardMaxMacs ?? DEFAULT_SYNC_FORWARD_MACS;
    if (typeof syncMacs !== 'number' || !(syncMacs >= 0)) throw codedError('E_ARG', `syncForwardMaxMacs: expected a number >= 0, got ${String(syncMacs)}`);
    const binding = native();
    if (typeof binding.llamaLoad !== 'function') {
      throw codedError('E_UNSUPPORTED', 'the loaded native addon has no Llama runner (an older build?): run `npm run build:native`');
    }
    const handle = await binding.llamaLoad(toNativeConfig(config), source, { device, pageSize, kvPages, kvDtype });
    return new LlamaModel(config, device, dir, handle, syncMacs);
  }

  private h(what: string, allowBusy = false): SpecdecNative.LlamaNativeModel {
    if (!this.handle) throw codedError('E_DISPOSED', `${what}: model was disposed`);
    // One operation at a time: the cache bookkeeping must not change under a running forward.
    if (this.busy && !allowBusy) throw codedError('E_BUSY', `${what}: a forward of this model is still running`);
    return this.handle;
  }

  /** The dtype the weights are stored in (that of the embedding table). */
  get weightDtype(): string {
    return this.h('weightDtype', true).weightDtype();
  }

  /** The embedding table and LM head as stored, sharing the model's storage (CausalLM.sharedWeights). */
  sharedWeights(): { readonly embedTokens: Tensor; readonly lmHead: Tensor } {
    const w = this.h('sharedWeights', true).sharedWeights();
    return { embedTokens: asTensor(w.embedTokens), lmHead: asTensor(w.lmHead) };
  }

  kvInfo(): KvInfo {
    return this.h('kvInfo', true).kvInfo();
  }

  createSequence(): number {
    return this.h('createSequence').createSequence();
  }
  forkSequence(seq: number): number {
    return this.h('forkSequence').forkSequence(seq);
  }
  freeSequence(seq: number): void {
    this.h('freeSequence').freeSequence(seq);
  }
  sequenceLength(seq: number): number {
    return this.h('sequenceLength').sequenceLength(seq);
  }
  truncate(seq: number, length: number): void {
    this.h('truncate').truncate(seq, length);
  }

  async forward(inputs: readonly SequenceInput[], options: ForwardOptions = {}): Promise<ForwardOutput> {
    const handle = this.h('forward');
    options.signal?.throwIfAborted();
    this.busy = true;
    let r: SpecdecNative.LlamaNativeForward;
    try {
      if (sliceSpent(this.syncForwardMaxMacs)) await loopTurn(options.signal);
      const aux = options.auxLayers !== undefined && options.auxLayers.length > 0 ? Int32Array.from(options.auxLayers) : undefined;
      r = await handle.forward(inputs.map(nativeInput), options.hidden === true, syncLimit(this.syncForwardMaxMacs), options.stage, options.lastLogitsOnly === true, aux);
    } finally {
      this.busy = false;
    }
    const logits = asTensor(r.logits);
    const hidden = r.hidden !== undefined ? asTensor(r.hidden) : undefined;
    const aux = r.aux !== undefined ? asTensor(r.aux) : undefined;
    if (options.signal?.aborted) {
      logits.dispose();
      hidden?.dispose();
      aux?.dispose();
      options.signal.throwIfAborted();
    }
    const out: { -readonly [K in keyof ForwardOutput]: ForwardOutput[K] } = { logits, indptr: r.indptr };
    if (hidden !== undefined) out.hidden = hidden;
    if (aux !== undefined) out.aux = aux;
    if (r.staged !== undefined) out.staged = r.staged as unknown as StagedVerify;
    if (options.lastLogitsOnly === true) out.logitsRows = 'last';
    out.seconds = r.seconds;
    return out;
  }

  async greedyChain(inputs: readonly SequenceInput[], steps: readonly number[], options: ChainOptions = {}): Promise<Int32Array[]> {
    const handle = this.h('greedyChain');
    options.signal?.throwIfAborted();
    checkSteps(steps, inputs.length);
    const pen = chainPenalties(options, inputs.length);
    const lp = chainLogprobsArg(options, inputs.length);
    this.busy = true;
    try {
      if (sliceSpent(this.syncForwardMaxMacs)) await loopTurn(options.signal);
      if (lp) {
        const r = await handle.greedyChain(inputs.map(nativeInput), Int32Array.from(steps), syncLimit(this.syncForwardMaxMacs), pen, lp);
        deliverChainLogprobs(options, r);
        return r.picks;
      }
      return pen
        ? await handle.greedyChain(inputs.map(nativeInput), Int32Array.from(steps), syncLimit(this.syncForwardMaxMacs), pen)
        : await handle.greedyChain(inputs.map(nativeInput), Int32Array.from(steps), syncLimit(this.syncForwardMaxMacs));
    } finally {
      this.busy = false;
    }
  }

  async greedyChainOnDevice(inputs: readonly SequenceInput[], steps: readonly number[], options: ChainOptions = {}): Promise<Tensor> {
    const handle = this.h('greedyChainOnDevice');
    options.signal?.throwIfAborted();
    checkSteps(steps, inputs.length);
    const pen = chainPenalties(options, inputs.length);
    this.busy = true;
    try {
      if (sliceSpent(this.syncForwardMaxMacs)) await loopTurn(options.signal);
      return asTensor(
        pen
          ? await handle.greedyChainOnDevice(inputs.map(nativeInput), Int32Array.from(steps), syncLimit(this.syncForwardMaxMacs), pen)
          : await handle.greedyChainOnDevice(inputs.map(nativeInput), Int32Array.from(steps), syncLimit(this.syncForwardMaxMacs)),
      );
    } finally {
      this.busy = false;
    }
  }

  async speculativeChain(draft: CausalLM, seqs: readonly SpecChainSequence[], options: SpecChainOptions): Promise<SpecChainResult> {
    const handle = this.h('speculativeChain');
    if (!(draft instanceof LlamaModel)) throw codedError('E_ARG', 'speculativeChain: the draft must be a LlamaModel');
    if (draft === this) throw codedError('E_ARG', 'speculativeChain: the draft is the target itself');
    const dh = draft.h('speculativeChain (draft)');
    options.signal?.throwIfAborted();
    this.busy = true;
    draft.busy = true;
    try {
      if (sliceSpent(this.syncForwardMaxMacs)) await loopTurn(options.signal);
      const limit = syncLimit(this.syncForwardMaxMacs);
      const pen = chainPenalties(options, seqs.length);
      const lp = chainLogprobsArg(options, seqs.length);
      if (lp) {
        const sampling = options.sampling ? resolveSamplingOptions(options.sampling) : undefined;
        const r = await handle.speculativeChain(dh, seqs, options.maxSteps, options.maxSeconds, limit, sampling, pen, options.draftPenalties, lp);
        deliverChainLogprobs(options, r);
        return r;
      }
      if (pen) {
        const sampling = options.sampling ? resolveSamplingOptions(options.sampling) : undefined;
        return await handle.speculativeChain(dh, seqs, options.maxSteps, options.maxSeconds, limit, sampling, pen, options.draftPenalties);
      }
      return options.sampling
        ? await handle.speculativeChain(dh, seqs, options.maxSteps, options.maxSeconds, limit, resolveSamplingOptions(options.sampling))
        : await handle.speculativeChain(dh, seqs, options.maxSteps, options.maxSeconds, limit);
    } finally {
      this.busy = false;
      draft.busy = false;
    }
  }

  async medusaChain(heads: SpecdecNative.NativeMedusaHeadSet, seqs: readonly MedusaChainSequence[], template: MedusaChainTemplate, options: MedusaChainOptions): Promise<MedusaChainResult> {
    const handle = this.h('medusaChain');
    options.signal?.throwIfAborted();
    this.busy = true;
    try {
      if (sliceSpent(this.syncForwardMaxMacs)) await loopTurn(options.signal);
      const limit = syncLimit(this.syncForwardMaxMacs);
      const pen = chainPenalties(options, seqs.length);
      const lp = chainLogprobsArg(options, seqs.length);
      if (lp) {
        const r = await handle.medusaChain(heads, seqs, template, options.topK, options.maxSteps, options.maxSeconds, limit, options.sampling ? resolveSamplingOptions(options.sampling) : undefined, pen, lp);
        deliverChainLogprobs(options, r);
        return r;
      }
      if (pen) return await handle.medusaChain(heads, seqs, template, options.topK, options.maxSteps, options.maxSeconds, limit, options.sampling ? resolveSamplingOptions(options.sampling) : undefined, pen);
      return options.sampling
        ? await handle.medusaChain(heads, seqs, template, options.topK, options.maxSteps, options.maxSeconds, limit, resolveSamplingOptions(options.sampling))
        : await handle.medusaChain(heads, seqs, template, options.topK, options.maxSteps, options.maxSeconds, limit);
    } finally {
      this.busy = false;
    }
  }

  async sampledChain(...args: SampledChainArgs): Promise<{ picks: Int32Array[]; q: Tensor }> {
    const r = await this.sampledChainCall('sampledChain', ...args);
    const q = asTensor(r.q);
    try {
      deliverChainLogprobs(args[5] ?? {}, r);
    } catch (e) {
      q.dispose();
      throw e;
    }
    return { picks: r.picks, q };
  }

  async sampledChainOnDevice(...args: SampledChainArgs): Promise<{ ids: Tensor; q: Tensor }> {
    const r = await this.sampledChainCall('sampledChainOnDevice', ...args);
    return { ids: asTensor(r.ids), q: asTensor(r.q) };
  }

  private async sampledChainCall(
    name: 'sampledChain' | 'sampledChainOnDevice',
    ...[inputs, steps, sampling, seeds, offsets, options = {}]: SampledChainArgs
  ): Promise<{ picks: Int32Array[]; ids: SpecdecNative.Tensor; q: SpecdecNative.Tensor } & Partial<SpecdecNative.NativeChainLogprobs>> {
    const handle = this.h(name);
    options.signal?.throwIfAborted();
    checkSteps(steps, inputs.length);
    if (seeds.length !== inputs.length || offsets.length !== inputs.length) {
      throw codedError('E_ARG', `${name}: ${inputs.length} inputs need as many seeds and offset lists (got ${seeds.length}, ${offsets.length})`);
    }
    steps.forEach((n, b) => {
      if (offsets[b]?.length !== n) throw codedError('E_ARG', `offsets[${b}]: expected ${n} counters (one per step), got ${offsets[b]?.length}`);
    });
    const flat = BigUint64Array.from(offsets.flat());
    const pen = chainPenalties(options, inputs.length);
    this.busy = true;
    try {
      if (sliceSpent(this.syncForwardMaxMacs)) await loopTurn(options.signal);
      // (Log-probabilities are read back with the picks: sampledChain only.)
      const lp = name === 'sampledChain' ? chainLogprobsArg(options, inputs.length) : undefined;
      const args = [inputs.map(nativeInput), Int32Array.from(steps), resolveSamplingOptions(sampling), BigUint64Array.from(seeds), flat, syncLimit(this.syncForwardMaxMacs), pen, lp] as const;
      // (One of the two shapes, per name: picks for sampledChain, ids for sampledChainOnDevice.)
      return (await (name === 'sampledChain' ? handle.sampledChain(...args) : handle.sampledChainOnDevice(...args))) as { picks: Int32Array[]; ids: SpecdecNative.Tensor; q: SpecdecNative.Tensor } & Partial<SpecdecNative.NativeChainLogprobs>;
    } finally {
      this.busy = false;
    }
  }

  commit(seqs: readonly number[], accepted: readonly Int32Array[], paths?: VerifiedPaths | readonly VerifiedPaths[]): void {
    this.h('commit').commit(Int32Array.from(seqs), accepted, paths as SpecdecNative.VerifiedPathsHandle | readonly SpecdecNative.VerifiedPathsHandle[] | undefined);
  }

  dispose(): void {
    // A running forward keeps the native model alive until it finishes.
    this.handle?.dispose();
    this.handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Chain drafting's steps: one integer >= 1 per input. */
function checkSteps(steps: readonly number[], inputs: number): void {
  if (steps.length !== inputs) throw codedError('E_ARG', `steps: ${steps.length} entries for ${inputs} inputs`);
  steps.forEach((n, b) => {
    if (!Number.isSafeInteger(n) || n < 1) throw codedError('E_ARG', `steps[${b}]: expected an integer >= 1, got ${n}`);
  });
}

function nativeInput(s: SequenceInput): SpecdecNative.LlamaNativeInput {
  const i: { -readonly [K in keyof SpecdecNative.LlamaNativeInput]: SpecdecNative.LlamaNativeInput[K] } = { seq: s.seq, tokens: s.tokens };
  if (s.mask !== undefined) i.mask = { bits: s.mask.bits, words: s.mask.words };
  else if (s.parents !== undefined) i.parents = s.parents;
  if (s.positions !== undefined) i.positions = s.positions;
  if (s.tail !== undefined) i.tail = { ids: s.tail.ids, offset: s.tail.offset };
  return i;
}

function defaultKvDtype(config: LlamaConfig, device: Device): KvDType {
  if (device === 'cpu') return 'f32';
  if (config.torchDtype === 'bfloat16') return 'bf16';
  if (config.torchDtype === 'float16') return 'f16';
  return 'f32';
}

/** A chain's penalties in the native form, or undefined for none (E_ARG unless one history per input). */
/** ChainOptions.logprobs as the native chains take it (checked), or undefined. */
function chainLogprobsArg(options: Pick<ChainOptions, 'logprobs'>, inputs: number): SpecdecNative.NativeChainLogprobsArg | undefined {
  const lp = options.logprobs;
  if (!lp) return undefined;
  checkLogprobs(lp.k, 'logprobs.k');
  if (!Array.isArray(lp.want) || lp.want.length !== inputs) throw codedError('E_ARG', `logprobs.want: ${Array.isArray(lp.want) ? lp.want.length : 'no'} entries for ${inputs} inputs`);
  if (typeof lp.sink !== 'function') throw codedError('E_ARG', 'logprobs.sink: expected a function');
  return { k: lp.k, want: Int32Array.from(lp.want, (w) => (w ? 1 : 0)) };
}

/** Hands a chain's log-probabilities to ChainOptions.logprobs.sink, input by input (those that want them). */
function deliverChainLogprobs(options: Pick<ChainOptions, 'logprobs'>, r: Partial<SpecdecNative.NativeChainLogprobs>): void {
  const lp = options.logprobs;
  if (!lp || !r.lp || !r.topLp || !r.topIds) return;
  for (let b = 0; b < lp.want.length; b++) {
    if (lp.want[b]) lp.sink(b, { k: lp.k, token: r.lp[b] as Float32Array, topIds: r.topIds[b] as Int32Array, topLogprobs: r.topLp[b] as Float32Array });
  }
}

function chainPenalties(options: Pick<ChainOptions, 'penalties'>, inputs: number): SpecdecNative.NativeChainPenalties | undefined {
  const p = options.penalties;
  if (!p) return undefined;
  const r = resolvePenalties(p.penalties) ?? (anyBan(p.bans) ? NO_PENALTIES : undefined);
  if (!r) return undefined;
  if (!Array.isArray(p.histories) || p.histories.length !== inputs) throw codedError('E_ARG', `penalties: ${Array.isArray(p.histories) ? p.histories.length : 'no'} histories for ${inputs} inputs`);
  return nativePenalties(r, p.histories, p.bans);
}
