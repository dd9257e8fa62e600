// Paged KV cache and fused tree attention: typed wrappers over the native ops (cpp/core/kv_cache.h,
// cpp/core/ops_attention.h). The model runner drives the same C++ objects directly; this module is
// for tests, benchmarks and engine authors.
import { argError } from './errors';
import { native } from './native';
import { asTensor } from './tensor';
import type { Device, Tensor } from './tensor';

/// <reference path="../typings/kv.d.ts" />
export type PagedBatch = SpecdecNative.PagedBatch;
export type PagedBatchOptions = SpecdecNative.PagedBatchOptions;
export type KvDType = 'f32' | 'f16' | 'bf16';

export interface KvCacheOptions {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Tokens per page (default 16). */
  readonly pageSize?: number;
  readonly numPages: number;
  /** Storage dtype (default 'f16'). */
  readonly dtype?: KvDType;
  readonly device?: Device;
}



/**
 * A paged KV cache: per layer [numPages, 2, pageSize, numKvHeads, headDim] (K at 0, V at 1), page
 * tables per sequence, copy-on-write forks. The speculative cycle is plan() -> kvAppend/treeAttention
 * per layer -> commit(). Running out of pages throws E_KV_FULL (naming the numbers) and changes nothing.
 */
export class KvCache {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly pageSize: number;
  readonly dtype: KvDType;
  readonly device: Device;
  private readonly cache: SpecdecNative.KvCacheNative;

  constructor(options: KvCacheOptions) {
    this.numLayers = options.numLayers;
    this.numKvHeads = options.numKvHeads;
    this.headDim = options.headDim;
    this.pageSize = options.pageSize ?? 16;
    this.dtype = options.dtype ?? 'f16';
    this.device = options.device ?? 'cpu';
    this.cache = new (native().KvCache)({
      numLayers: options.numLayers,
      numKvHeads: options.numKvHeads,
      headDim: options.headDim,
      pageSize: this.pageSize,
      numPages: options.numPages,
      dtype: this.dtype,
      device: this.device,
    });
  }

  /** The native cache, for native code that drives it directly (the EAGLE head's eagleExpand). */
  get nativeCache(): SpecdecNative.KvCacheNative {
    return this.cache;
  }
  /** A new empty sequence; returns its id. */
  addSequence(): number {
    return this.cache.addSequence();
  }
  /** A new sequence sharing `seq`'s committed pages (copy-on-write). */
  fork(seq: number): number {
    return this.cache.fork(seq);
  }
  /** Releases the sequence and its pages. */
  free(seq: number): void {
    this.cache.free(seq);
  }
  /** Drops committed tokens past `len` (<= length(seq)) and the pages they held. */
  truncate(seq: number, len: number): void {
    this.cache.truncate(seq, len);
  }
  /** Committed tokens of `seq`. */
  length(seq: number): number {
    return this.cache.length(seq);
  }
  alive(seq: number): boolean {
    return this.cache.alive(seq);
  }
  get freePages(): number {
    return this.cache.freePages;
  }
  get totalPages(): number {
    return this.cache.totalPages;
  }
  /** Bytes of K/V storage (all layers). */
  get bytes(): number {
    return this.cache.bytes;
  }
  get disposed(): boolean {
    return this.cache.disposed;
  }

  /**
   * Room for newTokens[i] tokens after the committed prefix of seqs[i] (allocates pages, un-shares
   * a forked page before it is written). New token j of seqs[i] goes to slot length + j.
   */
  plan(seqs: readonly number[] | Int32Array, newTokens: readonly number[] | Int32Array): PagedBatch {
    return this.cache.plan(seqs, newTokens);
  }

  /**
   * Keeps accepted[i] (increasing indices among seqs[i]'s new tokens of `batch`, the last plan):
   * their K/V move right after the committed prefix in every layer (one launch), the length grows
   * by their count, the rest is dropped.
   */
  commit(batch: PagedBatch, seqs: readonly number[] | Int32Array, accepted: readonly (Int32Array | readonly number[])[]): void {
    this.cache.commit(batch, seqs, accepted);
  }

  /** Layer l's storage [numPages, 2, pageSize, numKvHeads, headDim] (a view; dispose it when done). */
  layer(l: number): Tensor {
    return asTensor(this.cache.layer(l));
  }

  dispose(): void {
    this.cache.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** A batch from explicit page tables (validated: monotone indptr, page ids in range, enough pages). */
export function pagedBatch(options: PagedBatchOptions): PagedBatch {
  return native().pagedBatch(options);
}

/** Stores new tokens' K/V ([N, numKvHeads, headDim], RoPE applied) at their slots in one layer. */
export function kvAppend(kvLayer: Tensor, k: Tensor, v: Tensor, batch: PagedBatch): void {
  native().kvAppend(kvLayer, k, v, batch);
}

/**
 * Fused tree attention: q [N, numQoHeads, headDim] over each sequence's committed prefix (always
 * visible) and its new tokens (visible per `mask`, a u64 [N, words] tensor of packed rows; undefined
 * = causal). Returns [N, numQoHeads, headDim] in q's dtype (written into `out` when given). A row
 * that sees nothing at all (empty mask row and no prefix) is zeros. `window` > 0: sliding-window
 * attention, each row sees only the last `window` slots of its list (the prefix, then its visible new
 * tokens in order): under a tree mask, the keys at positions > its own - window (0, the default: all).
 * `softcap` > 0 (Gemma 2): each score s = q.k smScale becomes softcap tanh(s / softcap) first.
 */
export function treeAttention(q: Tensor, kvLayer: Tensor, batch: PagedBatch, mask: Tensor | undefined, smScale: number, out?: Tensor, window = 0, softcap = 0): Tensor {
  return asTensor(native().treeAttention(q, kvLayer, batch, mask, smScale, out, window, softcap));
}

/** The raw commit op (KvCache.commit does the bookkeeping around it). */
export function kvCommit(layers: readonly Tensor[], batch: PagedBatch, accIndptr: Tensor, accNodes: Tensor): void {
  native().kvCommit(layers, batch, accIndptr, accNodes);
}

/** Copies whole pages src[i] -> dst[i] in every layer. */
export function kvCopyPages(layers: readonly Tensor[], srcPages: Tensor, dstPages: Tensor): void {
  native().kvCopyPages(layers, srcPages, dstPages);
}

/** u64 words per mask row for n new tokens. */
export function maskWords(n: number): number {
  return Math.max(1, Math.ceil(n / 64));
}

/**
 * Ancestor mask of a token tree: row i sees i and its ancestors. parents[i] in [-2, i) (-1: a child
 * of the last committed token; -2: a non-candidate node, seeing only itself). Rows of maskWords(n) words, bit j of row i at word j >> 6.
 */
export function treeMask(parents: Int32Array): BigUint64Array {
  const n = parents.length;
  const w = maskWords(n);
  const out = new BigUint64Array(n * w);
  // 32-bit halves of the same buffer (little-endian: the low half of word k is halves[2k]).
  const halves = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) {
    const p = parents[i] as number;
    // -1: a root (child of the committed prefix); -2: a non-candidate node (verification marks
    // lookahead's own branch so) which, in a tree mask, also sees only the prefix and itself.
    if (!Number.isInteger(p) || p < -2 || p >= i) throw argError(`parents[${i}]: ${p} is not in [-2, ${i})`);
    if (p >= 0) halves.copyWithin(2 * i * w, 2 * p * w, 2 * (p + 1) * w);
    const h = 2 * i * w + (i >> 5);
    halves[h] = ((halves[h] as number) | (1 << (i & 31))) >>> 0;
  }
  return out;
}

/** Causal mask among n new tokens (row i sees j <= i): the mask of a chain. */
export function causalMask(n: number): BigUint64Array {
  const parents = new Int32Array(n);
  for (let i = 0; i < n; i++) parents[i] = i - 1;
  return treeMask(parents);
}
