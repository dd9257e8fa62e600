// Native binding of the paged KV cache and tree attention (cpp/napi/kv_napi.cc).
declare namespace SpecdecNative {
  interface KvCacheOptions {
    numLayers: number;
    numKvHeads: number;
    headDim: number;
    /** Tokens per page (default 16). */
    pageSize?: number;
    numPages: number;
    /** Storage dtype (default 'f16'). */
    dtype?: 'f32' | 'f16' | 'bf16';
    device?: Device;
  }

  /** Where each sequence of a ragged batch lives, for one launch (read-only host copies). */
  interface PagedBatch {
    readonly batchSize: number;
    readonly totalNew: number;
    readonly maxQoLen: number;
    readonly maxKvLen: number;
    readonly device: Device;
    readonly qoIndptr: Int32Array;
    readonly pageIndptr: Int32Array;
    readonly pageIndices: Int32Array;
    readonly prefixLen: Int32Array;
    dispose(): void;
  }

  interface PagedBatchOptions {
    qoIndptr: Int32Array | readonly number[];
    pageIndptr: Int32Array | readonly number[];
    pageIndices: Int32Array | readonly number[];
    prefixLen: Int32Array | readonly number[];
    pageSize: number;
    numPages: number;
    device?: Device;
  }

  interface KvCacheNative {
    addSequence(): number;
    fork(seq: number): number;
    free(seq: number): void;
    truncate(seq: number, len: number): void;
    length(seq: number): number;
    alive(seq: number): boolean;
    plan(seqs: Int32Array | readonly number[], newTokens: Int32Array | readonly number[]): PagedBatch;
    commit(batch: PagedBatch, seqs: Int32Array | readonly number[], accepted: readonly (Int32Array | readonly number[])[]): void;
    layer(l: number): Tensor;
    dispose(): void;
    readonly freePages: number;
    readonly totalPages: number;
    readonly bytes: number;
    readonly disposed: boolean;
  }

  interface NativeBinding {
    readonly KvCache: new (options: KvCacheOptions) => KvCacheNative;
    pagedBatch(options: PagedBatchOptions): PagedBatch;
    kvAppend(kvLayer: Tensor, k: Tensor, v: Tensor, batch: PagedBatch): void;
    treeAttention(q: Tensor, kvLayer: Tensor, batch: PagedBatch, mask: Tensor | undefined, smScale: number, out?: Tensor, window?: number, softcap?: number): Tensor;
    kvCommit(layers: readonly Tensor[], batch: PagedBatch, accIndptr: Tensor, accNodes: Tensor): void;
    kvCopyPages(layers: readonly Tensor[], srcPages: Tensor, dstPages: Tensor): void;
  }
}
