// Native binding of the model layer ops (cpp/napi/layers_napi.cc) and the safetensors reader.
// Augments SpecdecNative.NativeBinding (typings/native.d.ts) by interface merging.

declare namespace SpecdecNative {
  /** Dtype names as they appear in safetensors headers (those the native reader loads). */
  type SafetensorsNativeDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'F64' | 'U32' | 'U64';
  /** Valid dtypes the reader keeps as bytes only (raw()): load() names them. */
  type SafetensorsRawDType = 'I64' | 'I16' | 'I8' | 'U16' | 'U8' | 'BOOL' | 'F8_E4M3' | 'F8_E5M2' | 'F8_E8M0' | 'C64';

  /** A small CPU weight packed for the k-serial matmul (opaque; holds its own copy and the weight). */
  interface SerialWeight {
    readonly __serialWeight: unique symbol;
  }

  /** An open, memory-mapped, validated safetensors file. */
  interface SafetensorsFile {
    /** Tensor names, sorted. */
    names(): string[];
    /** dtype and shape of `name` (E_FORMAT if there is no such tensor). */
    info(name: string): { dtype: SafetensorsNativeDType | SafetensorsRawDType; shape: number[] };
    /** A copy of `name` as a tensor on `device` (dtype kept; E_UNSUPPORTED for the raw-only dtypes). */
    load(name: string, device?: Device): Tensor;
    /** A copy of the stored bytes of any tensor, I64 / BOOL / U8 / F8 ... included. */
    raw(name: string): { dtype: SafetensorsNativeDType | SafetensorsRawDType; shape: number[]; bytes: Uint8Array };
    /** The "__metadata__" strings. */
    metadata(): Record<string, string>;
    path(): string;
    /** Unmaps the file; loaded tensors stay valid. Further calls throw E_DISPOSED. */
    close(): void;
  }

  interface NativeMedusaHead {
    w: readonly Tensor[];
    b: readonly Tensor[];
    lmHead: Tensor;
  }

  /** Medusa heads held natively (medusaHeadSet; opaque): parsed, and their small weights packed, once. */
  interface NativeMedusaHeadSet {
    readonly __medusaHeadSet: unique symbol;
  }

  /** An EAGLE head's tensors for eagleWeights (cpp/model/eagle.h); optional ones undefined. */
  interface NativeEagleSpec {
    version: 1 | 3;
    heads: number;
    kvHeads: number;
    headDim: number;
    eps: number;
    embed?: Tensor;
    fcEmbed?: Tensor;
    fcFeature: readonly Tensor[];
    fcBias?: Tensor;
    invFreq: Tensor;
    layers: readonly {
      inNorm?: Tensor;
      hiddenNorm?: Tensor;
      q: Tensor;
      k: Tensor;
      v: Tensor;
      qH?: Tensor;
      kH?: Tensor;
      vH?: Tensor;
      qb?: Tensor;
      kb?: Tensor;
      vb?: Tensor;
      o: Tensor;
      postNorm: Tensor;
      gate: Tensor;
      up: Tensor;
      down: Tensor;
    }[];
    /** EAGLE-3: the final norm, the LM head over the draft vocabulary and d2t, for eagleExpand. */
    norm?: Tensor;
    lmHead?: Tensor;
    draftToTarget?: Int32Array;
  }

  /** eagleExpand's result: the nodes of each sequence's tree, in the order they were made. */
  interface NativeEagleExpansion {
    /** Seconds of the root's children (logits, top-k, their read). */
    firstSeconds: number;
    /** Per level expanded: rows computed, and seconds (forks to the children's read). */
    levelRows: Int32Array;
    levelSeconds: Float64Array;
    /** Per sequence: each node's token, parent (pool index; -1: the root), level, path log probability. */
    pools: { tokens: Int32Array; parents: Int32Array; levels: Int32Array; logProbs: Float64Array }[];
  }

  /** Opaque: an EAGLE head's weights held natively (eagleWeights). */
  type NativeEagleWeights = { readonly __eagleWeights: unique symbol };

  interface NativeBinding {
    /** An EAGLE head's weights as one native handle (optional: older builds lack it). */
    eagleWeights?(spec: NativeEagleSpec): NativeEagleWeights;
    /** Drops the handle's references to the tensors (a later eagleForward with it is an E_DISPOSED). */
    eagleWeightsRelease?(weights: NativeEagleWeights): void;
    /** The EAGLE draft layers in one call: h f32 [N, H] (cpp/model/eagle.h). */
    eagleForward?(weights: NativeEagleWeights, embed: Tensor, kvLayers: Tensor[], batch: unknown, ids: Int32Array, positions: Int32Array, features: Tensor[], fromTarget: boolean): Tensor;
    /** The draft's catch-up over the target's features in one call: each sequence's last h row [B, H] (cpp/model/eagle.h). */
    eagleCatchUp?(weights: NativeEagleWeights, embed: Tensor, cache: KvCacheNative, seqs: Int32Array, counts: Int32Array, tokens: Int32Array, positions: Int32Array, features: Tensor[][], rows: Int32Array, width: number): Tensor;
    /**
     * EAGLE-2's tree expansion in one call (cpp/model/eagle.h, eagle_expand): the root's children
     * from hRoot [B, H], then `levels` expansions of the `width` best newest nodes of each sequence over
     * forks of draftSeqs[b] (freed at the end). lmHead: the target's (EAGLE-1/2), else null.
     */
    eagleExpand?(weights: NativeEagleWeights, embed: Tensor, lmHead: Tensor | null, cache: KvCacheNative, hRoot: Tensor, draftSeqs: Int32Array, positions: Int32Array, maxLevels: Int32Array, levels: number, width: number, topK: number, penalties?: NativeChainPenalties): NativeEagleExpansion;
    /** Fused Medusa heads: ResBlocks + LM head + top-k per head; ids [heads * R * k] (cpp/model/medusa.h). */
    medusaTopK(x: Tensor, heads: readonly NativeMedusaHead[] | NativeMedusaHeadSet, k: number, penalties?: NativePenalties): Int32Array;
    /**
     * A handle over Medusa heads (cpp/napi/medusa_napi.cc): from arrays, the heads with their small CPU
     * weights packed for the k-serial kernel (cpp/model/medusa.h, pack_medusa_heads); from a set, its
     * first `count` heads (the same tensors and packs).
     */
    medusaHeadSet(heads: readonly NativeMedusaHead[] | NativeMedusaHeadSet, count?: number): NativeMedusaHeadSet;
    /** The packs a set's calls use, per head (null where a weight is not packed). */
    medusaHeadSetPacks(set: NativeMedusaHeadSet): { ws: (SerialWeight | null)[]; lmHead: SerialWeight | null }[];
    /** Drops the set's references to its tensors and packs (a later use is an E_DISPOSED). */
    medusaHeadSetRelease(set: NativeMedusaHeadSet): void;
    /** out[n] = table[ids[n]] as f32. E_ARG names a bad id and the vocabulary size. */
    layerEmbedding(table: Tensor, ids: Tensor, out?: Tensor): Tensor;
    /** out = x / sqrt(mean(x^2) + eps) * w (out may be x). */
    layerRmsnorm(x: Tensor, w: Tensor, eps: number, out?: Tensor): Tensor;
    layerAddRmsnorm?(x: Tensor, y: Tensor, w: Tensor, eps: number, out?: Tensor): Tensor;
    /** out = x @ w^T (+ bias); batch invariant per row; with `serial`, w's k-serial pack (its order). */
    layerMatmul(x: Tensor, w: Tensor, bias?: Tensor | null, out?: Tensor, serial?: SerialWeight | null): Tensor;
    /** w packed for the CPU's k-serial kernel (cpp/cpu/matmul_serial.h), or null when it does not qualify. */
    layerPackSerial(w: Tensor): SerialWeight | null;
    /** Up to 3 matmuls of one x in one op (same bits as layerMatmul each); optional: older builds lack it. */
    layerMatmulGroup?(x: Tensor, ws: Tensor[], biases: (Tensor | null)[]): Tensor[];
    /** Rotary embedding in place (HF rotate_half layout). */
    layerRope(x: Tensor, positions: Tensor, invFreq: Tensor): void;
    /** out = silu(gate) * up (out may be gate). */
    layerSiluMul(gate: Tensor, up: Tensor, out?: Tensor): Tensor;
    layerGeluTanhMul(gate: Tensor, up: Tensor, out?: Tensor): Tensor;
    layerAddInplace(x: Tensor, y: Tensor): void;
    layerSiluInplace(x: Tensor): void;
    /** Opens and validates a safetensors file: E_IO (missing/unreadable) or E_FORMAT (invalid). */
    safetensorsOpen(path: string): SafetensorsFile;
  }
}
