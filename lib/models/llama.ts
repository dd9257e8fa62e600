// The built-in Llama-family runner (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) as a
// CausalLM: config.json parsed here, weights memory-mapped and validated by the native loader
// (cpp/model/llama.cc), forward on the libuv pool, KV cache bookkeeping delegated to C++.
import * as fs from 'fs';
import * as path from 'path';
import { resolveDevice } from '../backend';
import { native } from '../native';
import { asTensor, type Device } from '../tensor';
import type { CausalLM, ForwardOptions, ForwardOutput, SequenceInput } from './causal_lm';
import { codedError, readLlamaConfig, toNativeConfig, type LlamaConfig } from './config';

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
  /** Sequences expected to be alive at once (sizes the default kvPages). Default 4. */
  readonly maxSequences?: number;
}

export interface KvInfo {
  readonly pageSize: number;
  readonly totalPages: number;
  readonly freePages: number;
  readonly dtype: string;
  readonly bytes: number;
}

const KV_BUDGET_BYTES = 2 * 1024 ** 3;
const SPARE_TREE_TOKENS = 64;

/** Where the weights of a checkpoint directory are (single file or sharded index). */
export function findWeights(dir: string): SpecdecNative.LlamaNativeSource {
  const index = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) {
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
    return { dir, weightMap };
  }
  if (fs.existsSync(path.join(dir, 'model.safetensors'))) return { dir, file: 'model.safetensors' };
  throw codedError('E_FORMAT', `${dir}: no model.safetensors or model.safetensors.index.json`);
}

function positiveInt(v: number | undefined, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v <= 0) throw codedError('E_ARG', `${name}: expected a positive integer, got ${v}`);
  return v;
}

export class LlamaModel implements CausalLM {
  private handle: SpecdecNative.LlamaNativeModel | undefined;
  private busy = false;

  private constructor(
    readonly config: LlamaConfig,
    readonly device: Device,
    readonly dir: string,
    handle: SpecdecNative.LlamaNativeModel,
  ) {
    this.handle = handle;
  }

  /** Loads a checkpoint directory (config.json + model.safetensors or a sharded index). */
  static async load(dir: string, options: LlamaLoadOptions = {}): Promise<LlamaModel> {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw codedError('E_FORMAT', `${dir}: not a model directory`);
    const config = readLlamaConfig(dir);
    const source = findWeights(dir);
    const device = resolveDevice(options.device ?? 'auto');
    const pageSize = positiveInt(options.pageSize, 'pageSize', 16);
    const maxSequences = positiveInt(options.maxSequences, 'maxSequences', 4);
    const kvDtype = options.kvDtype ?? defaultKvDtype(config, device);
    if (!['f32', 'f16', 'bf16'].includes(kvDtype)) throw codedError('E_ARG', `kvDtype: expected f32, f16 or bf16, got ${String(kvDtype)}`);
    let kvPages = options.kvPages;
    if (kvPages === undefined) {
      const perSeq = Math.ceil((config.maxPositions + SPARE_TREE_TOKENS) / pageSize);
      const pageBytes = config.numLayers * 2 * pageSize * config.numKvHeads * config.headDim * (kvDtype === 'f32' ? 4 : 2);
      kvPages = Math.max(Math.min(maxSequences * perSeq, Math.floor(KV_BUDGET_BYTES / pageBytes)), maxSequences);
    }
    kvPages = positiveInt(kvPages, 'kvPages', 1);
    const binding = native();
    if (typeof binding.llamaLoad !== 'function') {
      throw codedError('E_UNSUPPORTED', 'the loaded native addon has no Llama runner (an older build?): run `npm run build:native`');
    }
    const handle = await binding.llamaLoad(toNativeConfig(config), source, { device, pageSize, kvPages, kvDtype });
    return new LlamaModel(config, device, dir, handle);
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
    const native_inputs = inputs.map((s): SpecdecNative.LlamaNativeInput => ({
      seq: s.seq,
      tokens: s.tokens,
      ...(s.mask !== undefined ? { mask: { bits: s.mask.bits, words: s.mask.words } } : s.parents !== undefined ? { parents: s.parents } : {}),
      ...(s.positions !== undefined ? { positions: s.positions } : {}),
    }));
    this.busy = true;
    let r: SpecdecNative.LlamaNativeForward;
    try {
      r = await handle.forward(native_inputs, options.hidden === true);
    } finally {
      this.busy = false;
    }
    const logits = asTensor(r.logits);
    const hidden = r.hidden !== undefined ? asTensor(r.hidden) : undefined;
    if (options.signal?.aborted) {
      logits.dispose();
      hidden?.dispose();
      options.signal.throwIfAborted();
    }
    return { logits, indptr: r.indptr, ...(hidden !== undefined ? { hidden } : {}) };
  }

  commit(seqs: readonly number[], accepted: readonly Int32Array[]): void {
    this.h('commit').commit(Int32Array.from(seqs), accepted);
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

function defaultKvDtype(config: LlamaConfig, device: Device): KvDType {
  if (device === 'cpu') return 'f32';
  if (config.torchDtype === 'bfloat16') return 'bf16';
  if (config.torchDtype === 'float16') return 'f16';
  return 'f32';
}
