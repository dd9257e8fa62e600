// Tree attention and kvAppend against a float64 reference on fresh random inputs (outputs
// poisoned with NaN first), batch invariance, and the validation of every argument.
import * as assert from 'assert';
import { Tensor } from '../lib/tensor';
import type { Device, DType } from '../lib/tensor';
import { causalMask, kvAppend, kvCommit, kvCopyPages, maskWords, pagedBatch, treeAttention, treeMask } from '../lib/kv';
import type { KvDType, PagedBatch } from '../lib/kv';
import { assertThrowsCode, describeCuda, randomArray, rng, testSeed } from './helpers';

type MaskKind = 'none' | 'causal' | 'tree' | 'random';
interface SeqSpec {
  readonly prefix: number;
  readonly qo: number;
}
interface Case {
  readonly seqs: readonly SeqSpec[];
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly pageSize: number;
  readonly kvDtype: KvDType;
  readonly qDtype: KvDType;
  readonly mask: MaskKind;
  /** Sliding window: each row sees the last `window` slots of its visible list (0 / undefined: all). */
  readonly window?: number;
  /** Gemma 2's soft-capping of the scores (0 / undefined: none). */
  readonly softcap?: number;
}

interface Built {
  readonly layer: Tensor;
  readonly batch: PagedBatch;
  readonly q: Tensor;
  readonly mask: Tensor | undefined;
  readonly bits: BigUint64Array | undefined;
  readonly words: number;
  readonly kv: Float32Array; // the layer as stored (after kvAppend), as f32
  readonly qHost: Float32Array; // q as stored
  readonly kNew: Float32Array; // appended k, v rounded to the cache dtype
  readonly vNew: Float32Array;
  readonly pageIndptr: Int32Array;
  readonly pageIndices: Int32Array;
  readonly qoIndptr: Int32Array;
}

function shuffled(n: number, rand: () => number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = a[i] as number;
    a[i] = a[j] as number;
    a[j] = t;
  }
  return a;
}

function randomParents(n: number, rand: () => number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i === 0 ? -1 : Math.floor(rand() * (i + 1)) - 1;
  return p;
}

/** Rows of `words` u64 words; random bits (~half set), with row 0 of each sequence left empty. */
function randomMaskRows(n: number, words: number, rand: () => number): BigUint64Array {
  const out = new BigUint64Array(n * words);
  for (let i = 1; i < n; i++)
    for (let j = 0; j < n; j++) if (rand() < 0.5) out[i * words + (j >> 6)] = (out[i * words + (j >> 6)] as bigint) | (1n << BigInt(j & 63));
  return out;
}

function buildCase(c: Case, rand: () => number, device: Device): Built {
  const B = c.seqs.length;
  const S = c.pageSize;
  const qoIndptr = new Int32Array(B + 1);
  const pageIndptr = new Int32Array(B + 1);
  c.seqs.forEach((s, b) => {
    qoIndptr[b + 1] = (qoIndptr[b] as number) + s.qo;
    // One spare page on odd sequences: a table may be longer than needed.
    pageIndptr[b + 1] = (pageIndptr[b] as number) + Math.ceil((s.prefix + s.qo) / S) + (b % 2);
  });
  const N = qoIndptr[B] as number;
  const numPages = (pageIndptr[B] as number) + 3;
  const pageIndices = shuffled(numPages, rand).slice(0, pageIndptr[B] as number); // non-contiguous ids
  const layerShape = [numPages, 2, S, c.hkv, c.d];
  const layer = Tensor.fromArray(randomArray(numPages * 2 * S * c.hkv * c.d, rand), c.kvDtype, layerShape, device);
  const batch = pagedBatch({ qoIndptr, pageIndptr, pageIndices, prefixLen: c.seqs.map((s) => s.prefix), pageSize: S, numPages, device });
  const kF = randomArray(N * c.hkv * c.d, rand);
  const vF = randomArray(N * c.hkv * c.d, rand);
  // k in q's dtype, v in f32: the append converts either to the cache dtype.
  const k = Tensor.fromArray(kF, c.qDtype, [N, c.hkv, c.d], device);
  const v = Tensor.fromArray(vF, 'f32', [N, c.hkv, c.d], device);
  kvAppend(layer, k, v, batch);
  const kNew = Tensor.fromArray(k.toFloat32(), c.kvDtype).toFloat32();
  const vNew = Tensor.fromArray(vF, c.kvDtype).toFloat32();
  k.dispose();
  v.dispose();
  const q = Tensor.fromArray(randomArray(N * c.hq * c.d, rand, -2, 2), c.qDtype, [N, c.hq, c.d], device);
  let bits: BigUint64Array | undefined;
  let words = 1;
  if (c.mask !== 'none') {
    const maxQo = Math.max(1, ...c.seqs.map((s) => s.qo));
    words = maskWords(maxQo) + (c.mask === 'random' ? 1 : 0); // wider rows than needed are fine
    bits = new BigUint64Array(N * words);
    c.seqs.forEach((s, b) => {
      const rows =
        c.mask === 'causal' ? causalMask(s.qo) : c.mask === 'tree' ? treeMask(randomParents(s.qo, rand)) : randomMaskRows(s.qo, words, rand);
      const w = c.mask === 'random' ? words : maskWords(s.qo);
      for (let i = 0; i < s.qo; i++)
        for (let x = 0; x < w; x++) (bits as BigUint64Array)[((qoIndptr[b] as number) + i) * words + x] = rows[i * w + x] as bigint;
    });
  }
  const mask = bits ? Tensor.fromArray(bits, 'u64', [N, words], device) : undefined;
  return { layer, batch, q, mask, bits, words, kv: layer.toFloat32(), qHost: q.toFloat32(), kNew, vNew, pageIndptr, pageIndices, qoIndptr };
}

/** float64 reference: softmax over the visible slots (prefix always; new tokens by mask or causally). */
function reference(c: Case, x: Built, smScale: number): Float64Array {
  const { hq, hkv, d, pageSize: S } = c;
  const G = hq / hkv;
  const N = x.qoIndptr[c.seqs.length] as number;
  const out = new Float64Array(N * hq * d);
  c.seqs.forEach((s, b) => {
    const kvLen = s.prefix + s.qo;
    const at = (t: number, kv: number, h: number): number => {
      const page = x.pageIndices[(x.pageIndptr[b] as number) + Math.floor(t / S)] as number;
      return ((((page * 2 + kv) * S + (t % S)) * hkv + h) * d) as number;
    };
    for (let i = 0; i < s.qo; i++) {
      const n = (x.qoIndptr[b] as number) + i;
      const visible = (t: number): boolean => {
        if (t < s.prefix) return true;
        const j = t - s.prefix;
        if (!x.bits) return j <= i;
        return ((((x.bits[n * x.words + (j >> 6)] as bigint) >> BigInt(j & 63)) & 1n) === 1n);
      };
      // The window keeps the last c.window visible slots, written independently of the kernels' lists.
      const seen: number[] = [];
      for (let t = 0; t < kvLen; t++) if (visible(t)) seen.push(t);
      const kept = new Set(c.window ? seen.slice(Math.max(0, seen.length - c.window)) : seen);
      for (let h = 0; h < hq; h++) {
        const hk = Math.floor(h / G);
        const scores: number[] = [];
        let m = -Infinity;
        for (let t = 0; t < kvLen; t++) {
          if (!kept.has(t)) {
            scores.push(-Infinity);
            continue;
          }
          const ko = at(t, 0, hk);
          let dot = 0;
          for (let e = 0; e < d; e++) dot += (x.qHost[(n * hq + h) * d + e] as number) * (x.kv[ko + e] as number);
          const sc = c.softcap ? c.softcap * Math.tanh((dot * smScale) / c.softcap) : dot * smScale;
          scores.push(sc);
          m = Math.max(m, sc);
        }
        if (m === -Infinity) continue; // sees nothing: zeros
        let l = 0;
        const acc = new Float64Array(d);
        for (let t = 0; t < kvLen; t++) {
          const sc = scores[t] as number;
          if (sc === -Infinity) continue;
          const p = Math.exp(sc - m);
          l += p;
          const vo = at(t, 1, hk);
          for (let e = 0; e < d; e++) acc[e] = (acc[e] as number) + p * (x.kv[vo + e] as number);
        }
        for (let e = 0; e < d; e++) out[(n * hq + h) * d + e] = (acc[e] as number) / l;
      }
    }
  });
  return out;
}

/** Half an ulp of the output format (relative) on top of f32 accumulation error. */
function tolerance(dtype: DType): (ref: number) => number {
  const rel = dtype === 'f16' ? 2 ** -11 : dtype === 'bf16' ? 2 ** -8 : 0;
  return (ref) => rel * Math.abs(ref) + 1e-5;
}

function poisoned(dtype: DType, shape: number[], device: Device): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.fromArray(new Float32Array(n).fill(NaN), dtype, shape, device);
}

function runCase(c: Case, seed: number, device: Device): void {
  const rand = rng(seed);
  const x = buildCase(c, rand, device);
  const N = x.qoIndptr[c.seqs.length] as number;
  // kvAppend put every new token at slot prefix + i of its sequence, converted to the cache dtype.
  c.seqs.forEach((s, b) => {
    for (let i = 0; i < s.qo; i++) {
      const t = s.prefix + i;
      const page = x.pageIndices[(x.pageIndptr[b] as number) + Math.floor(t / c.pageSize)] as number;
      const n = (x.qoIndptr[b] as number) + i;
      const row = c.hkv * c.d;
      for (let e = 0; e < row; e++) {
        const ko = ((page * 2 + 0) * c.pageSize + (t % c.pageSize)) * row + e;
        const vo = ((page * 2 + 1) * c.pageSize + (t % c.pageSize)) * row + e;
        if (x.kv[ko] !== x.kNew[n * row + e] || x.kv[vo] !== x.vNew[n * row + e])
          assert.fail(`kvAppend: seq ${b} token ${i} elem ${e}: got ${x.kv[ko]}/${x.kv[vo]}, want ${x.kNew[n * row + e]}/${x.vNew[n * row + e]}`);
      }
    }
  });
  const smScale = 1 / Math.sqrt(c.d);
  const out = poisoned(c.qDtype, [N, c.hq, c.d], device);
  const ret = treeAttention(x.q, x.layer, x.batch, x.mask, smScale, out, c.window, c.softcap);
  assert.strictEqual(ret, out, 'treeAttention returns the out tensor it was given');
  const got = out.toFloat32();
  const want = reference(c, x, smScale);
  const tol = tolerance(c.qDtype);
  let worst = 0;
  for (let k = 0; k < want.length; k++) {
    const err = Math.abs((got[k] as number) - (want[k] as number));
    if (!(err <= tol(want[k] as number))) assert.fail(`element ${k}: got ${got[k]}, want ${want[k]} (seed ${seed}, ${JSON.stringify(c)})`);
    worst = Math.max(worst, err);
  }
  assert.ok(want.some((w) => w !== 0), 'reference is not trivially zero');
  for (const t of [x.layer, x.q, x.mask, out]) t?.dispose();
  x.batch.dispose();
}

const base: Case = { seqs: [{ prefix: 17, qo: 6 }], hq: 4, hkv: 2, d: 64, pageSize: 16, kvDtype: 'f32', qDtype: 'f32', mask: 'tree' };

const cases: [string, Case][] = [
  ['random trees, GQA 8/2, d=64, ragged batch', { ...base, hq: 8, hkv: 2, seqs: [{ prefix: 0, qo: 5 }, { prefix: 17, qo: 12 }, { prefix: 40, qo: 9 }] }],
  ['chains (causal, no mask), prefix 0/1/15/16/17/50', { ...base, mask: 'none', seqs: [0, 1, 15, 16, 17, 50].map((p, i) => ({ prefix: p, qo: 1 + ((i * 3) % 5) })) }],
  ['explicit causal mask equals the reference', { ...base, mask: 'causal', seqs: [{ prefix: 16, qo: 20 }, { prefix: 3, qo: 1 }] }],
  ['lookahead-style arbitrary bit masks over 70 tokens (2+ words), empty rows', { ...base, mask: 'random', seqs: [{ prefix: 0, qo: 70 }, { prefix: 33, qo: 65 }, { prefix: 5, qo: 3 }] }],
  ['MQA 8/1, d=128', { ...base, hq: 8, hkv: 1, d: 128, seqs: [{ prefix: 31, qo: 7 }, { prefix: 2, qo: 11 }] }],
  ['MHA 3/3, odd head dim 80, page size 8', { ...base, hq: 3, hkv: 3, d: 80, pageSize: 8, seqs: [{ prefix: 9, qo: 4 }, { prefix: 0, qo: 8 }] }],
  ['head dim 16 and page size 5', { ...base, d: 16, pageSize: 5, seqs: [{ prefix: 23, qo: 13 }] }],
  ['long prefix (3000 tokens) with a tree', { ...base, hq: 4, hkv: 2, d: 64, seqs: [{ prefix: 3000, qo: 8 }] }],
  ['f16 cache, f16 q', { ...base, kvDtype: 'f16', qDtype: 'f16', seqs: [{ prefix: 45, qo: 10 }, { prefix: 0, qo: 3 }] }],
  ['bf16 cache, bf16 q, d=128', { ...base, d: 128, kvDtype: 'bf16', qDtype: 'bf16', seqs: [{ prefix: 20, qo: 9 }] }],
  ['bf16 cache, f32 q, d=64: decode rows, a tree over a long prefix', { ...base, kvDtype: 'bf16', seqs: [{ prefix: 1000, qo: 1 }, { prefix: 700, qo: 20 }, { prefix: 3, qo: 1 }] }],
  ['f16 cache, f32 q (mixed dtypes)', { ...base, kvDtype: 'f16', qDtype: 'f32', seqs: [{ prefix: 64, qo: 5 }] }],
  ['f32 cache, bf16 q (mixed dtypes), causal', { ...base, kvDtype: 'f32', qDtype: 'bf16', mask: 'none', seqs: [{ prefix: 7, qo: 12 }] }],
  ['sliding window 5: random trees deeper than it, chains, a prefill, GQA 8/2', { ...base, hq: 8, hkv: 2, window: 5, seqs: [{ prefix: 0, qo: 12 }, { prefix: 17, qo: 9 }, { prefix: 3, qo: 1 }] }],
  ['sliding window 70: causal prefill and decode rows over long prefixes (tiles below it skipped), bf16', { ...base, kvDtype: 'bf16', qDtype: 'bf16', mask: 'none', window: 70, seqs: [{ prefix: 1000, qo: 1 }, { prefix: 0, qo: 150 }, { prefix: 200, qo: 3 }] }],
  ['sliding window 1 (a row sees its last visible slot) under arbitrary bit masks', { ...base, mask: 'random', window: 1, seqs: [{ prefix: 0, qo: 70 }, { prefix: 9, qo: 6 }] }],
  ['soft-capped scores (Gemma 2), trees and chains', { ...base, hq: 8, hkv: 2, softcap: 0.5, seqs: [{ prefix: 40, qo: 9 }, { prefix: 0, qo: 6 }] }],
  ['soft-capped scores under a sliding window, bf16', { ...base, kvDtype: 'bf16', qDtype: 'bf16', softcap: 1, window: 20, seqs: [{ prefix: 300, qo: 12 }, { prefix: 5, qo: 1 }] }],
  ['sliding window 61 over a tree on a 3000-token prefix, f16, d=128, MQA', { ...base, hq: 4, hkv: 1, d: 128, kvDtype: 'f16', qDtype: 'f32', window: 61, seqs: [{ prefix: 3000, qo: 16 }] }],
];

describe('treeAttention (cpu)', () => {
  cases.forEach(([title, c], k) => {
    it(title, () => runCase(c, testSeed + k, 'cpu'));
  });

  it('a sliding window no shorter than any list gives the bits of no window; a shorter one changes them', () => {
    const c: Case = { ...base, hq: 8, hkv: 2, seqs: [{ prefix: 90, qo: 12 }, { prefix: 0, qo: 7 }] };
    const x = buildCase(c, rng(testSeed + 150), 'cpu');
    const full = treeAttention(x.q, x.layer, x.batch, x.mask, 0.125).toFloat32();
    assert.deepStrictEqual(treeAttention(x.q, x.layer, x.batch, x.mask, 0.125, undefined, 102).toFloat32(), full);
    const cut = treeAttention(x.q, x.layer, x.batch, x.mask, 0.125, undefined, 50).toFloat32();
    assert.ok(cut.some((v, k) => v !== full[k]), 'a window of 50 over 90+ slots changes the output');
    for (const t of [x.layer, x.q, x.mask]) t?.dispose();
    x.batch.dispose();
  });

  it('treeMask: ancestor closure; causalMask is the chain', () => {
    const parents = Int32Array.from([-1, 0, 0, 1, -1, 3]);
    const m = treeMask(parents);
    const rows = Array.from(m, (w) => Number(w));
    assert.deepStrictEqual(rows, [0b1, 0b11, 0b101, 0b1011, 0b10000, 0b101011]);
    const c = causalMask(130);
    assert.strictEqual(c.length, 130 * 3);
    assert.strictEqual(c[129 * 3 + 0], 2n ** 64n - 1n);
    assert.strictEqual(c[129 * 3 + 2], 0b11n);
    assert.strictEqual(c[64 * 3 + 1], 1n);
    assertThrowsCode(() => treeMask(Int32Array.from([-1, 1])), 'E_ARG', /parents\[1\]/);
  });

  it('a row that sees nothing (empty mask row, no prefix) is zeros; with a prefix it sees the prefix', () => {
    const rand = rng(testSeed + 100);
    const c: Case = { ...base, mask: 'none', seqs: [{ prefix: 0, qo: 2 }, { prefix: 5, qo: 2 }] };
    const x = buildCase(c, rand, 'cpu');
    // Row 0 of each sequence sees no new token; row 1 sees new token 0 only.
    const bits = BigUint64Array.from([0n, 1n, 0n, 1n]);
    const mask = Tensor.fromArray(bits, 'u64', [4, 1]);
    const out = treeAttention(x.q, x.layer, x.batch, mask, 0.125, poisoned('f32', [4, c.hq, c.d], 'cpu'));
    const got = out.toFloat32();
    const want = reference(c, { ...x, bits, words: 1 }, 0.125);
    const row = c.hq * c.d;
    for (let e = 0; e < row; e++) assert.strictEqual(got[e], 0);
    for (let k = row; k < got.length; k++) assert.ok(Math.abs((got[k] as number) - (want[k] as number)) <= 1e-5);
    assert.ok(Array.from(got.subarray(2 * row, 3 * row)).some((v) => v !== 0), 'prefix-only row is not zero');
  });

  it('batch invariant: a chain verified at once equals one token at a time, and a row alone equals it in a batch', () => {
    const rand = rng(testSeed + 200);
    const c: Case = { ...base, hq: 4, hkv: 1, mask: 'none', seqs: [{ prefix: 37, qo: 5 }, { prefix: 300, qo: 3 }] };
    const x = buildCase(c, rand, 'cpu');
    const all = treeAttention(x.q, x.layer, x.batch, undefined, 0.1).toFloat32();
    const row = c.hq * c.d;
    for (let i = 0; i < 5; i++) {
      // Token i as the only new token over a prefix of 37 + i (the same cache slots).
      const single = pagedBatch({
        qoIndptr: [0, 1],
        pageIndptr: [0, (x.pageIndptr[1] as number) - (x.pageIndptr[0] as number)],
        pageIndices: x.pageIndices.subarray(x.pageIndptr[0] as number, x.pageIndptr[1] as number),
        prefixLen: [37 + i],
        pageSize: c.pageSize,
        numPages: x.layer.shape[0] as number,
      });
      const q1 = x.q.rows(i, i + 1);
      const o = treeAttention(q1, x.layer, single, undefined, 0.1).toFloat32();
      assert.deepStrictEqual(o, all.subarray(i * row, (i + 1) * row), `token ${i}`);
    }
  });
});

/**
 * Tree = path, bit for bit: a random tree's rows against each node decoded as the one new token of a
 * sequence whose cache holds the prefix, then the node's ancestors (its path committed), in one batch
 * of such decode sequences. Rows with several query heads per KV head, prefixes that put the paths
 * across the kernels' key tiles, and a long prefix (split-KV on CUDA) in the same check.
 */
function treeEqualsPath(device: Device, kvDtype: KvDType, qDtype: KvDType, d: number, prefix: number, nodes: number, seed: number, window = 0, softcap = 0): void {
  const rand = rng(seed);
  const hq = 8, hkv = 2, S = 16, scale = 1 / Math.sqrt(d);
  const parents = randomParents(nodes, rand);
  const path: number[][] = [];
  for (let i = 0; i < nodes; i++) path.push([...(parents[i] as number) < 0 ? [] : (path[parents[i] as number] as number[]), i]);
  // The tree's cache: prefix slots then the nodes, one sequence on pages 0 .. tp-1.
  const slot = hkv * d;
  const tp = Math.ceil((prefix + nodes) / S);
  const pre = randomArray(2 * prefix * slot, rand);  // K then V per prefix slot
  const node = randomArray(2 * nodes * slot, rand);
  const layerOf = (pages: number, rows: { k: Float32Array; v: Float32Array }[], pageOf: (seq: number, t: number) => number, lens: number[]): Tensor => {
    const host = new Float32Array(pages * 2 * S * slot);
    lens.forEach((len, b) => {
      for (let t = 0; t < len; t++) {
        const pg = pageOf(b, t), at = ((pg * 2) * S + (t % S)) * slot;
        host.set((rows[b] as { k: Float32Array }).k.subarray(t * slot, (t + 1) * slot), at);
        host.set((rows[b] as { v: Float32Array }).v.subarray(t * slot, (t + 1) * slot), at + S * slot);
      }
    });
    return Tensor.fromArray(host, kvDtype, [pages, 2, S, hkv, d], device);
  };
  const kvOf = (slots: number[]): { k: Float32Array; v: Float32Array } => {
    const k = new Float32Array(slots.length * slot), v = new Float32Array(slots.length * slot);
    slots.forEach((t, j) => {
      const src = t < prefix ? pre : node, at = (t < prefix ? t : t - prefix) * 2 * slot;
      k.set(src.subarray(at, at + slot), j * slot);
      v.set(src.subarray(at + slot, at + 2 * slot), j * slot);
    });
    return { k, v };
  };
  const all = Array.from({ length: prefix + nodes }, (_, t) => t);
  const treeLayer = layerOf(tp, [kvOf(all)], (_, t) => Math.floor(t / S), [prefix + nodes]);
  const q = Tensor.fromArray(randomArray(nodes * hq * d, rand), qDtype, [nodes, hq, d], device);
  const mask = Tensor.fromArray(treeMask(parents), 'u64', [nodes, maskWords(nodes)], device);
  const tb = pagedBatch({ qoIndptr: [0, nodes], pageIndptr: [0, tp], pageIndices: Array.from({ length: tp }, (_, i) => i), prefixLen: [prefix], pageSize: S, numPages: tp, device });
  const treeOut = treeAttention(q, treeLayer, tb, mask, scale, undefined, window, softcap).toFloat32();
  // The paths: sequence i holds the prefix, node i's ancestors, then node i itself as its new token.
  const per = path.map((pt) => Math.ceil((prefix + pt.length) / S));
  const starts = per.reduce<number[]>((acc, n) => [...acc, (acc[acc.length - 1] as number) + n], [0]);
  const pathLayer = layerOf(starts[nodes] as number, path.map((pt) => kvOf([...all.slice(0, prefix), ...pt.map((i) => prefix + i)])),
    (b, t) => (starts[b] as number) + Math.floor(t / S), path.map((pt) => prefix + pt.length));
  const pb = pagedBatch({
    qoIndptr: Array.from({ length: nodes + 1 }, (_, i) => i), pageIndptr: starts, pageIndices: Array.from({ length: starts[nodes] as number }, (_, i) => i),
    prefixLen: path.map((pt) => prefix + pt.length - 1), pageSize: S, numPages: starts[nodes] as number, device,
  });
  const pathOut = treeAttention(q, pathLayer, pb, undefined, scale, undefined, window, softcap).toFloat32();
  const row = hq * d;
  let bad = 0;
  for (let i = 0; i < nodes; i++) {
    const a = treeOut.subarray(i * row, (i + 1) * row), b = pathOut.subarray(i * row, (i + 1) * row);
    if (a.some((x, k) => !Object.is(x, b[k]))) bad++;
  }
  assert.ok(treeOut.some((x) => x !== 0), 'the tree rows are not trivially zero');
  assert.strictEqual(bad, 0, `${bad} of ${nodes} nodes' rows differ from their path decoded token by token (${device}, ${kvDtype} cache, ${qDtype} q, d ${d}, prefix ${prefix}, window ${window}, seed ${seed})`);
  for (const t of [treeLayer, pathLayer, q, mask]) t.dispose();
  tb.dispose();
  pb.dispose();
}

describe('tree = path, bit for bit (cpu)', () => {
  it('bf16 and f32 caches, head dims 64 and 128, paths across key tiles', () => {
    treeEqualsPath('cpu', 'bf16', 'f32', 64, 55 + (testSeed % 16), 24, testSeed + 600);
    treeEqualsPath('cpu', 'f32', 'f32', 128, 120 + (testSeed % 16), 16, testSeed + 601);
  });
  it('under sliding windows: shorter than the tree is deep, and cutting into the prefix across key tiles', () => {
    treeEqualsPath('cpu', 'bf16', 'f32', 64, 55 + (testSeed % 16), 24, testSeed + 607, 3);
    treeEqualsPath('cpu', 'f32', 'f32', 64, 150 + (testSeed % 16), 24, testSeed + 608, 70 + (testSeed % 9));
  });
  it('with soft-capped scores (Gemma 2), with and without a window', () => {
    treeEqualsPath('cpu', 'bf16', 'f32', 64, 70 + (testSeed % 16), 20, testSeed + 611, 0, 0.5);
    treeEqualsPath('cpu', 'f32', 'f32', 128, 90 + (testSeed % 16), 20, testSeed + 612, 40, 2);
  });
});

describeCuda('tree = path, bit for bit (cuda)', () => {
  // bf16 caches with head dims 64 / 128 take the mma.sync kernel under SPECDEC_CUDA_ATTENTION=tc.
  it('bf16 caches, f32 / bf16 q, head dims 64 and 128, paths across key tiles, split-KV', () => {
    treeEqualsPath('cuda', 'bf16', 'f32', 64, 55 + (testSeed % 16), 24, testSeed + 602);
    treeEqualsPath('cuda', 'bf16', 'bf16', 128, 250 + (testSeed % 16), 20, testSeed + 603);
    treeEqualsPath('cuda', 'bf16', 'f32', 128, 3000 + (testSeed % 100), 24, testSeed + 604);
  });
  it('f16 and f32 caches', () => {
    treeEqualsPath('cuda', 'f16', 'f32', 64, 120 + (testSeed % 16), 16, testSeed + 605);
    treeEqualsPath('cuda', 'f32', 'f32', 128, 60, 16, testSeed + 606);
  });
  it('under sliding windows (the CUDA-core kernel serves them): shorter than the tree, and across chunks with split-KV', () => {
    treeEqualsPath('cuda', 'bf16', 'f32', 64, 55 + (testSeed % 16), 24, testSeed + 609, 3);
    treeEqualsPath('cuda', 'bf16', 'bf16', 128, 3000 + (testSeed % 100), 24, testSeed + 610, 300 + (testSeed % 40));
  });
  it('with soft-capped scores (Gemma 2), split-KV included', () => {
    treeEqualsPath('cuda', 'bf16', 'f32', 64, 70 + (testSeed % 16), 20, testSeed + 613, 0, 0.5);
    treeEqualsPath('cuda', 'bf16', 'f32', 128, 3000 + (testSeed % 100), 20, testSeed + 614, 0, 2);
  });
});

describe('tree attention validation', () => {
  const S = 16;
  const layer = Tensor.zeros('f32', [6, 2, S, 2, 32]);
  const good = (): PagedBatch => pagedBatch({ qoIndptr: [0, 3, 5], pageIndptr: [0, 2, 3], pageIndices: [4, 0, 5], prefixLen: [20, 1], pageSize: S, numPages: 6 });
  const q = Tensor.zeros('f32', [5, 4, 32]);

  it('pagedBatch rejects bad indptr, page ids and page counts, naming the argument', () => {
    const ok = { qoIndptr: [0, 3, 5], pageIndptr: [0, 2, 3], pageIndices: [4, 0, 5], prefixLen: [20, 1], pageSize: S, numPages: 6 };
    assert.strictEqual(good().totalNew, 5);
    assertThrowsCode(() => pagedBatch({ ...ok, qoIndptr: [0, 3] }), 'E_ARG', /qo_indptr: expected 3 entries/);
    assertThrowsCode(() => pagedBatch({ ...ok, pageIndptr: [0, 2, 3, 3] }), 'E_ARG', /page_indptr: expected 3 entries/);
    assertThrowsCode(() => pagedBatch({ ...ok, qoIndptr: [0, 3, 2] }), 'E_ARG', /qo_indptr: not monotone/);
    assertThrowsCode(() => pagedBatch({ ...ok, qoIndptr: [1, 3, 5] }), 'E_ARG', /qo_indptr: must start at 0/);
    assertThrowsCode(() => pagedBatch({ ...ok, pageIndptr: [0, 2, 1] }), 'E_ARG', /page_indptr: not monotone/);
    assertThrowsCode(() => pagedBatch({ ...ok, pageIndices: [4, 0, 6] }), 'E_ARG', /page_indices\[2\]: page id 6 out of range/);
    assertThrowsCode(() => pagedBatch({ ...ok, pageIndices: [4, -1, 5] }), 'E_ARG', /page_indices\[1\]/);
    assertThrowsCode(() => pagedBatch({ ...ok, pageIndices: [4, 0] }), 'E_ARG', /page_indptr: last entry 3 != page_indices length 2/);
    assertThrowsCode(() => pagedBatch({ ...ok, prefixLen: [30, 1] }), 'E_ARG', /sequence 0 has 2 pages of 16 tokens, too few for prefix_len 30 \+ 3/);
    assertThrowsCode(() => pagedBatch({ ...ok, prefixLen: [-1, 1] }), 'E_ARG', /prefix_len\[0\]/);
    assertThrowsCode(() => pagedBatch({ ...ok, pageSize: 0 }), 'E_ARG', /page_size/);
  });

  it('treeAttention rejects bad shapes, dtypes, masks and layers', () => {
    const b = good();
    assertThrowsCode(() => treeAttention(Tensor.zeros('f32', [4, 4, 32]), layer, b, undefined, 1), 'E_ARG', /q: expected shape \[5, \*, 32\]/);
    assertThrowsCode(() => treeAttention(Tensor.zeros('f32', [5, 4, 16]), layer, b, undefined, 1), 'E_ARG', /q: expected shape/);
    assertThrowsCode(() => treeAttention(Tensor.zeros('f32', [5, 3, 32]), layer, b, undefined, 1), 'E_ARG', /q: 3 query heads is not a multiple of 2/);
    assertThrowsCode(() => treeAttention(Tensor.zeros('i32', [5, 4, 32]), layer, b, undefined, 1), 'E_ARG', /q: expected dtype/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, 1, Tensor.zeros('f16', [5, 4, 32])), 'E_ARG', /out: expected dtype f32/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, 1, Tensor.zeros('f32', [5, 4, 31])), 'E_ARG', /out: expected shape/);
    assertThrowsCode(() => treeAttention(q, layer, b, Tensor.zeros('u32', [5, 2]), 1), 'E_ARG', /mask: expected dtype u64/);
    assertThrowsCode(() => treeAttention(q, layer, b, Tensor.zeros('u64', [4, 1]), 1), 'E_ARG', /mask: expected shape \[5, \*\]/);
    assertThrowsCode(() => treeAttention(q, layer, b, Tensor.zeros('u64', [5, 0]), 1), 'E_ARG', /mask: 0 words per row \(0 bits\) cannot cover a sequence with 3 new tokens/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, NaN), 'E_ARG', /smScale/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, 1, undefined, -1), 'E_ARG', /window: expected an integer >= 0/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, 1, undefined, 2.5), 'E_ARG', /window: expected an integer >= 0/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, 1, undefined, 0, -1), 'E_ARG', /softcap: expected 0 \(none\) or a positive number, got -1/);
    assertThrowsCode(() => treeAttention(q, layer, b, undefined, 1, undefined, 0, NaN), 'E_ARG', /softcap: expected a number, got NaN/);
    assertThrowsCode(() => treeAttention(q, Tensor.zeros('f32', [6, 2, S, 64]), b, undefined, 1), 'E_ARG', /kv_layer: expected 5 dimensions/);
    assertThrowsCode(() => treeAttention(q, Tensor.zeros('f32', [6, 3, S, 2, 32]), b, undefined, 1), 'E_ARG', /kv_layer: expected shape \[numPages, 2/);
    assertThrowsCode(() => treeAttention(q, Tensor.zeros('i32', [6, 2, S, 2, 32]), b, undefined, 1), 'E_ARG', /kv_layer: expected dtype/);
    // The batch must fit the layer: page ids inside it, pages of the layer's size.
    assertThrowsCode(() => treeAttention(q, Tensor.zeros('f32', [5, 2, S, 2, 32]), b, undefined, 1), 'E_ARG', /page id 5 out of range for kv_layer with 5 pages/);
    assertThrowsCode(() => treeAttention(q, Tensor.zeros('f32', [6, 2, 8, 2, 32]), b, undefined, 1), 'E_ARG', /sequence 0 has 2 pages of 8 tokens for 23 tokens/);
    assertThrowsCode(() => treeAttention(q, layer, {} as PagedBatch, undefined, 1), 'E_ARG', /batch: expected a PagedBatch/);
  });

  it('treeAttention rejects more than kMaxTreeTokens new tokens under a mask (causal prefill is fine)', () => {
    const n = 1025;
    const big = pagedBatch({ qoIndptr: [0, n], pageIndptr: [0, 65], pageIndices: Array.from({ length: 65 }, (_, i) => i), prefixLen: [0], pageSize: S, numPages: 65 });
    const lay = Tensor.zeros('f32', [65, 2, S, 1, 16]);
    const qq = Tensor.zeros('f32', [n, 1, 16]);
    assertThrowsCode(() => treeAttention(qq, lay, big, Tensor.zeros('u64', [n, 17]), 1), 'E_ARG', /mask: a sequence has 1025 new tokens, more than kMaxTreeTokens = 1024/);
    assert.strictEqual(treeAttention(qq, lay, big, undefined, 1).shape[0], n);
  });

  it('kvAppend, kvCommit and kvCopyPages reject bad arguments, naming them', () => {
    const b = good();
    const k = Tensor.zeros('f32', [5, 2, 32]);
    assertThrowsCode(() => kvAppend(layer, Tensor.zeros('f32', [4, 2, 32]), k, b), 'E_ARG', /k: expected shape \[5, 2, 32\]/);
    assertThrowsCode(() => kvAppend(layer, k, Tensor.zeros('f32', [5, 1, 32]), b), 'E_ARG', /v: expected shape/);
    assertThrowsCode(() => kvAppend(layer, k, Tensor.zeros('i32', [5, 2, 32]), b), 'E_ARG', /v: expected dtype/);
    const i32 = (a: number[]): Tensor => Tensor.fromArray(Int32Array.from(a), 'i32');
    assertThrowsCode(() => kvCommit([layer], b, i32([0, 1]), i32([0])), 'E_ARG', /acc_indptr: expected shape \[3\]/);
    assertThrowsCode(() => kvCommit([layer], b, i32([0, 2, 2]), i32([1, 0])), 'E_ARG', /acc_nodes\[1\]: accepted nodes of a sequence must be strictly increasing/);
    assertThrowsCode(() => kvCommit([layer], b, i32([0, 1, 2]), i32([0, 2])), 'E_ARG', /acc_nodes\[1\]: node 2 out of range \[0, 2\)/);
    assertThrowsCode(() => kvCommit([layer], b, i32([0, 4, 4]), i32([0, 1, 2, 3])), 'E_ARG', /acc_indptr: sequence 0 accepts 4 nodes but has only 3/);
    assertThrowsCode(() => kvCommit([layer], b, i32([0, 2, 1]), i32([0])), 'E_ARG', /acc_indptr: not monotone/);
    assertThrowsCode(() => kvCommit([layer], b, i32([0, 1, 1]), i32([0, 1])), 'E_ARG', /acc_indptr: last entry 1 != acc_nodes length 2/);
    assertThrowsCode(() => kvCommit([layer, Tensor.zeros('f16', [6, 2, S, 2, 32])], b, i32([0, 0, 0]), i32([])), 'E_ARG', /layers\[1\]/);
    assertThrowsCode(() => kvCommit([], b, i32([0, 0, 0]), i32([])), 'E_ARG', /layers: no layers/);
    assertThrowsCode(() => kvCopyPages([layer], i32([0, 6]), i32([1, 2])), 'E_ARG', /src_pages\[1\]: page id 6 out of range/);
    assertThrowsCode(() => kvCopyPages([layer], i32([0]), i32([1, 2])), 'E_ARG', /dst_pages: expected shape \[1\]/);
    assertThrowsCode(() => kvCopyPages([layer], i32([0, 1]), i32([1, 2])), 'E_ARG', /dst_pages\[0\]: page 1 is also a source/);
  });

  it('kvCommit moves accepted rows in place; kvCopyPages copies whole pages', () => {
    const rand = rng(testSeed + 300);
    const lay = Tensor.fromArray(randomArray(6 * 2 * S * 2 * 32, rand), 'f32', [6, 2, S, 2, 32]);
    const before = lay.toFloat32();
    const b = good(); // seq 0: prefix 20 on pages [4, 0]; seq 1: prefix 1 on page [5]
    kvCommit([lay], b, Tensor.fromArray(Int32Array.from([0, 2, 3]), 'i32'), Tensor.fromArray(Int32Array.from([1, 2, 1]), 'i32'));
    const after = lay.toFloat32();
    const row = 64;
    const slotOff = (page: number, kv: number, r: number): number => ((page * 2 + kv) * S + r) * row;
    for (const kv of [0, 1]) {
      // seq 0: slot 20 <- 21, 21 <- 22 (page 0 rows 4, 5, 6); seq 1: slot 1 <- 2 (page 5).
      assert.deepStrictEqual(after.subarray(slotOff(0, kv, 4), slotOff(0, kv, 4) + row), before.subarray(slotOff(0, kv, 5), slotOff(0, kv, 5) + row));
      assert.deepStrictEqual(after.subarray(slotOff(0, kv, 5), slotOff(0, kv, 5) + row), before.subarray(slotOff(0, kv, 6), slotOff(0, kv, 6) + row));
      assert.deepStrictEqual(after.subarray(slotOff(5, kv, 1), slotOff(5, kv, 1) + row), before.subarray(slotOff(5, kv, 2), slotOff(5, kv, 2) + row));
      assert.deepStrictEqual(after.subarray(slotOff(4, kv, 0), slotOff(4, kv, S)), before.subarray(slotOff(4, kv, 0), slotOff(4, kv, S)));
    }
    kvCopyPages([lay], Tensor.fromArray(Int32Array.from([4]), 'i32'), Tensor.fromArray(Int32Array.from([2]), 'i32'));
    const copied = lay.toFloat32();
    const page = 2 * S * row;
    assert.deepStrictEqual(copied.subarray(2 * page, 3 * page), after.subarray(4 * page, 5 * page));
  });
});

describeCuda('treeAttention parity with the float64 reference', () => {
  cases.forEach(([title, c], k) => {
    it(title, () => runCase(c, testSeed + k, 'cuda'));
  });
  it('also for head dims 32, 96 and 256 (generic path)', () => {
    for (const d of [32, 96, 256]) runCase({ ...base, d, seqs: [{ prefix: 300, qo: 9 }, { prefix: 1, qo: 4 }] }, testSeed + d, 'cuda');
  });

  it('split-KV (one long sequence alone) and in-CTA folding (inside a big batch) give the same bits', () => {
    const rand = rng(testSeed + 400);
    const seqs: SeqSpec[] = [{ prefix: 3000, qo: 6 }];
    for (let i = 0; i < 300; i++) seqs.push({ prefix: 20 + i, qo: 16 });
    const c: Case = { ...base, hq: 8, hkv: 2, mask: 'tree', seqs };
    const x = buildCase(c, rand, 'cuda');
    const all = treeAttention(x.q, x.layer, x.batch, x.mask, 0.125).toFloat32();
    const alone = pagedBatch({
      qoIndptr: [0, 6],
      pageIndptr: [0, (x.pageIndptr[1] as number) - (x.pageIndptr[0] as number)],
      pageIndices: x.pageIndices.subarray(0, x.pageIndptr[1] as number),
      prefixLen: [3000],
      pageSize: c.pageSize,
      numPages: x.layer.shape[0] as number,
      device: 'cuda',
    });
    const m1 = (x.mask as Tensor).rows(0, 6);
    const one = treeAttention(x.q.rows(0, 6), x.layer, alone, m1, 0.125).toFloat32();
    assert.deepStrictEqual(one, all.subarray(0, 6 * 8 * 64));
  });

  it('CUDA matches the CPU backend within f32 rounding for the same inputs', () => {
    const rand = rng(testSeed + 500);
    const c: Case = { ...base, hq: 8, hkv: 2, d: 128, kvDtype: 'f16', qDtype: 'f16', seqs: [{ prefix: 700, qo: 20 }, { prefix: 5, qo: 2 }] };
    const x = buildCase(c, rand, 'cuda');
    const gpu = treeAttention(x.q, x.layer, x.batch, x.mask, 0.09).toFloat32();
    const cpuBatch = pagedBatch({ qoIndptr: x.qoIndptr, pageIndptr: x.pageIndptr, pageIndices: x.pageIndices, prefixLen: [700, 5], pageSize: 16, numPages: x.layer.shape[0] as number });
    const cpu = treeAttention(x.q.to('cpu'), x.layer.to('cpu'), cpuBatch, x.mask?.to('cpu'), 0.09).toFloat32();
    for (let k = 0; k < cpu.length; k++) assert.ok(Math.abs((cpu[k] as number) - (gpu[k] as number)) <= 2 ** -10 * Math.abs(cpu[k] as number) + 1e-5, `elem ${k}`);
  });
});
