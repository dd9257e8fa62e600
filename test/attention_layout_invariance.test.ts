// The CPU tree attention reads K/V in place, works on blocks of 16 query rows, vectorizes (AVX2 +
// FMA + F16C when the CPU has them) and spreads blocks over the thread pool. None of that may
// change a row's bits: a row depends only on the ordered list of slots it sees. Checked here bit for
// bit: a tree node equals its root-to-node path committed and decoded one token at a time (the
// layout speculative decoding relies on), a sequence alone equals itself inside a ragged batch, and
// one thread equals the pool (child process with SPECDEC_CPU_THREADS=1). The portable kernel (used
// without AVX2) is checked against a float64 reference in a child with SPECDEC_CPU_SIMD=portable.
// Each holds under sliding windows too (a row sees the last `window` slots of its list), and with
// soft-capped scores (Gemma 2).
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import { pagedBatch, treeAttention, treeMask } from '../lib/kv';
import type { KvDType } from '../lib/kv';
import { native } from '../lib/native';
import { Tensor } from '../lib/tensor';
import { randomArray, rng, testSeed } from './helpers';

interface Geometry {
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly pageSize: number;
  readonly dtype: KvDType;
}

/** A paged layer whose sequence occupies `rows` (per slot: K and V of every KV head), on shuffled pages. */
function layerWith(g: Geometry, rows: readonly { k: Float32Array; v: Float32Array }[], rand: () => number): { layer: Tensor; pages: number[] } {
  const S = g.pageSize;
  const used = Math.max(1, Math.ceil(rows.length / S));
  const numPages = used + 2;
  const order = Array.from({ length: numPages }, (_, i) => i).sort(() => rand() - 0.5);
  const pages = order.slice(0, used);
  const row = g.hkv * g.d;
  const data = randomArray(numPages * 2 * S * row, rand); // other slots: noise that must not leak in
  rows.forEach((r, t) => {
    const page = pages[Math.floor(t / S)] as number;
    data.set(r.k, ((page * 2 + 0) * S + (t % S)) * row);
    data.set(r.v, ((page * 2 + 1) * S + (t % S)) * row);
  });
  return { layer: Tensor.fromArray(data, g.dtype, [numPages, 2, S, g.hkv, g.d]), pages };
}

function bitsOf(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

function sameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.strictEqual(a.length, b.length, `${what}: length`);
  const ua = bitsOf(a);
  const ub = bitsOf(b);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) assert.fail(`${what}: element ${i} differs (${a[i]} vs ${b[i]})`);
}

/**
 * Tree of `n` nodes over `prefix` slots, all nodes in one call, then every node alone over its
 * path laid out as a committed prefix (other pages, other page size). Returns both outputs.
 */
function treeVsPaths(g: Geometry, prefix: number, n: number, seed: number, window = 0): { tree: Float32Array; paths: Float32Array } {
  const rand = rng(seed);
  const row = g.hkv * g.d;
  const slot = (): { k: Float32Array; v: Float32Array } => ({ k: randomArray(row, rand), v: randomArray(row, rand) });
  const pre = Array.from({ length: prefix }, slot);
  const nodes = Array.from({ length: n }, slot);
  const parents = Int32Array.from({ length: n }, (_, i) => (i === 0 ? -1 : Math.floor(rand() * (i + 1)) - 1));
  const qAll = randomArray(n * g.hq * g.d, rand, -2, 2);
  const scale = 1 / Math.sqrt(g.d);

  const a = layerWith(g, [...pre, ...nodes], rand);
  const words = Math.ceil(n / 64);
  const mask = Tensor.fromArray(treeMask(parents), 'u64', [n, words]);
  const q = Tensor.fromArray(qAll, 'f32', [n, g.hq, g.d]);
  const batch = pagedBatch({ qoIndptr: [0, n], pageIndptr: [0, a.pages.length], pageIndices: a.pages, prefixLen: [prefix], pageSize: g.pageSize, numPages: a.layer.shape[0] as number });
  const tree = treeAttention(q, a.layer, batch, mask, scale, undefined, window).toFloat32();

  const paths = new Float32Array(n * g.hq * g.d);
  const gp: Geometry = { ...g, pageSize: g.pageSize === 16 ? 5 : 16 };
  for (let j = 0; j < n; j++) {
    const path: number[] = [];
    for (let x = j; x >= 0; x = parents[x] as number) path.unshift(x);
    const b = layerWith(gp, [...pre, ...path.map((x) => nodes[x] as { k: Float32Array; v: Float32Array })], rand);
    const q1 = Tensor.fromArray(qAll.subarray(j * g.hq * g.d, (j + 1) * g.hq * g.d), 'f32', [1, g.hq, g.d]);
    const b1 = pagedBatch({ qoIndptr: [0, 1], pageIndptr: [0, b.pages.length], pageIndices: b.pages, prefixLen: [prefix + path.length - 1], pageSize: gp.pageSize, numPages: b.layer.shape[0] as number });
    paths.set(treeAttention(q1, b.layer, b1, undefined, scale, undefined, window).toFloat32(), j * g.hq * g.d);
    for (const t of [b.layer, q1]) t.dispose();
    b1.dispose();
  }
  for (const t of [a.layer, mask, q]) t.dispose();
  batch.dispose();
  return { tree, paths };
}

/** A ragged batch of chains/trees in one call; returns the batch output and each sequence alone. */
function batchVsAlone(g: Geometry, seqs: readonly { prefix: number; qo: number }[], seed: number, window = 0, softcap = 0): { batch: Float32Array; alone: Float32Array } {
  const rand = rng(seed);
  const row = g.hkv * g.d;
  const S = g.pageSize;
  const pagesPer = seqs.map((s) => Math.ceil((s.prefix + s.qo) / S));
  const numPages = pagesPer.reduce((x, y) => x + y, 0) + 1;
  const order = Array.from({ length: numPages }, (_, i) => i).sort(() => rand() - 0.5);
  const layer = Tensor.fromArray(randomArray(numPages * 2 * S * row, rand), g.dtype, [numPages, 2, S, g.hkv, g.d]);
  const N = seqs.reduce((x, s) => x + s.qo, 0);
  const q = Tensor.fromArray(randomArray(N * g.hq * g.d, rand, -2, 2), 'f32', [N, g.hq, g.d]);
  const maxQo = Math.max(...seqs.map((s) => s.qo));
  const words = Math.ceil(maxQo / 64);
  const bits = new BigUint64Array(N * words);
  const qoIndptr = [0];
  const pageIndptr = [0];
  seqs.forEach((s, b) => {
    const parents = Int32Array.from({ length: s.qo }, (_, i) => (i === 0 ? -1 : b % 2 ? i - 1 : Math.floor(rand() * (i + 1)) - 1));
    const m = treeMask(parents);
    const w = Math.ceil(s.qo / 64);
    for (let i = 0; i < s.qo; i++) for (let x = 0; x < w; x++) bits[((qoIndptr[b] as number) + i) * words + x] = m[i * w + x] as bigint;
    qoIndptr.push((qoIndptr[b] as number) + s.qo);
    pageIndptr.push((pageIndptr[b] as number) + (pagesPer[b] as number));
  });
  const mask = Tensor.fromArray(bits, 'u64', [N, words]);
  const pageIndices = order.slice(0, pageIndptr[seqs.length] as number);
  const scale = 1 / Math.sqrt(g.d);
  const all = pagedBatch({ qoIndptr, pageIndptr, pageIndices, prefixLen: seqs.map((s) => s.prefix), pageSize: S, numPages });
  const batch = treeAttention(q, layer, all, mask, scale, undefined, window, softcap).toFloat32();
  const alone = new Float32Array(batch.length);
  seqs.forEach((s, b) => {
    const n0 = qoIndptr[b] as number;
    const p0 = pageIndptr[b] as number;
    const one = pagedBatch({ qoIndptr: [0, s.qo], pageIndptr: [0, pagesPer[b] as number], pageIndices: pageIndices.slice(p0, p0 + (pagesPer[b] as number)), prefixLen: [s.prefix], pageSize: S, numPages });
    const qs = q.rows(n0, n0 + s.qo);
    const ms = mask.rows(n0, n0 + s.qo);
    alone.set(treeAttention(qs, layer, one, ms, scale, undefined, window, softcap).toFloat32(), n0 * g.hq * g.d);
    for (const t of [qs, ms]) t.dispose();
    one.dispose();
  });
  for (const t of [layer, q, mask]) t.dispose();
  all.dispose();
  return { batch, alone };
}

const GEOMETRIES: readonly (Geometry & { readonly title: string })[] = [
  { title: 'f32 cache, GQA 8/2, d 64', hq: 8, hkv: 2, d: 64, pageSize: 16, dtype: 'f32' },
  { title: 'f16 cache, MQA 4/1, d 128', hq: 4, hkv: 1, d: 128, pageSize: 16, dtype: 'f16' },
  { title: 'bf16 cache, MHA 3/3, odd d 20 (tail lanes)', hq: 3, hkv: 3, d: 20, pageSize: 16, dtype: 'bf16' },
  { title: 'f32 cache, GQA 6/2, d 76 (AVX-512: 16-lane blocks, an 8-lane rest and tail lanes), pages of 8', hq: 6, hkv: 2, d: 76, pageSize: 8, dtype: 'f32' },
];

/** Every geometry's ragged batch, concatenated: what the instruction-set comparison computes. */
function childAll(seed: number): Float32Array {
  const seqs = [{ prefix: 3, qo: 1 }, { prefix: 90, qo: 23 }, { prefix: 0, qo: 7 }, { prefix: 600, qo: 12 }];
  const parts = GEOMETRIES.flatMap((g, k) => [batchVsAlone(g, seqs, seed + k).batch, batchVsAlone(g, seqs, seed + 50 + k, 45).batch, batchVsAlone(g, seqs, seed + 70 + k, 0, 0.5).batch]);
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** What the thread-count and portable checks compute (also run in child processes). */
function childCase(seed: number): Float32Array {
  const g: Geometry = { hq: 8, hkv: 2, d: 64, pageSize: 16, dtype: 'f16' };
  // Big enough to go to the pool: 2 sequences x 2 KV heads x 4 blocks of 16 rows over ~700 slots;
  // then the same shapes under a sliding window of 100 (seed + 1).
  const seqs = [{ prefix: 700, qo: 30 }, { prefix: 333, qo: 17 }];
  const a = batchVsAlone(g, seqs, seed).batch, b = batchVsAlone(g, seqs, seed + 1, CHILD_WINDOW).batch;
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
const CHILD_WINDOW = 100;

/** childCase's reference: both halves. */
function childCaseReference(seed: number): Float64Array {
  const a = childBatchReference(seed, 0), b = childBatchReference(seed + 1, CHILD_WINDOW);
  const out = new Float64Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** float64 reference of childCase's batch, recomputed from the same seed (tree masks as built there). */
function childBatchReference(seed: number, window: number): Float64Array {
  const g = { hq: 8, hkv: 2, d: 64, S: 16 };
  const seqs = [{ prefix: 700, qo: 30 }, { prefix: 333, qo: 17 }];
  const rand = rng(seed);
  const row = g.hkv * g.d;
  const pagesPer = seqs.map((s) => Math.ceil((s.prefix + s.qo) / g.S));
  const numPages = pagesPer.reduce((x, y) => x + y, 0) + 1;
  const order = Array.from({ length: numPages }, (_, i) => i).sort(() => rand() - 0.5);
  const kv = Tensor.fromArray(randomArray(numPages * 2 * g.S * row, rand), 'f16', [numPages * 2 * g.S * row]).toFloat32();
  const N = 47;
  const q = randomArray(N * g.hq * g.d, rand, -2, 2);
  const out = new Float64Array(N * g.hq * g.d);
  let n0 = 0;
  let p0 = 0;
  seqs.forEach((s, b) => {
    const parents = Int32Array.from({ length: s.qo }, (_, i) => (i === 0 ? -1 : b % 2 ? i - 1 : Math.floor(rand() * (i + 1)) - 1));
    const anc = (i: number, j: number): boolean => {
      for (let x = i; x >= 0; x = parents[x] as number) if (x === j) return true;
      return false;
    };
    const at = (t: number, which: number, h: number): number => (((order[p0 + Math.floor(t / g.S)] as number) * 2 + which) * g.S + (t % g.S)) * row + h * g.d;
    for (let i = 0; i < s.qo; i++)
      for (let h = 0; h < g.hq; h++) {
        const hk = Math.floor(h / (g.hq / g.hkv));
        const vis: number[] = [];
        for (let t = 0; t < s.prefix + s.qo; t++) if (t < s.prefix || anc(i, t - s.prefix)) vis.push(t);
        if (window > 0) vis.splice(0, Math.max(0, vis.length - window));
        const sc = vis.map((t) => {
          let dot = 0;
          for (let e = 0; e < g.d; e++) dot += (q[((n0 + i) * g.hq + h) * g.d + e] as number) * (kv[at(t, 0, hk) + e] as number);
          return dot / Math.sqrt(g.d);
        });
        const m = Math.max(...sc);
        let l = 0;
        const acc = new Float64Array(g.d);
        vis.forEach((t, c) => {
          const p = Math.exp((sc[c] as number) - m);
          l += p;
          for (let e = 0; e < g.d; e++) acc[e] = (acc[e] as number) + p * (kv[at(t, 1, hk) + e] as number);
        });
        for (let e = 0; e < g.d; e++) out[((n0 + i) * g.hq + h) * g.d + e] = (acc[e] as number) / l;
      }
    n0 += s.qo;
    p0 += pagesPer[b] as number;
  });
  return out;
}

function runChild(env: Record<string, string>, seed: number, mode = '--child'): Float32Array {
  const r = spawnSync(process.execPath, [__filename, mode, String(seed)], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000, maxBuffer: 64 << 20 });
  assert.strictEqual(r.status, 0, `child failed: ${r.stderr}`);
  const buf = Buffer.from(r.stdout.trim(), 'base64');
  return new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
}

if (process.argv[2] === '--child' || process.argv[2] === '--child-all') {
  const out = (process.argv[2] === '--child' ? childCase : childAll)(Number(process.argv[3]));
  process.stdout.write(Buffer.from(out.buffer, out.byteOffset, out.byteLength).toString('base64'));
} else {
  describe(`tree attention (cpu): bits independent of layout, batch and threads (seed ${testSeed})`, function () {
    this.timeout(120000);
    GEOMETRIES.forEach((g, k) => {
      it(`${g.title}: a tree node equals its path decoded one token at a time`, () => {
        for (const [prefix, n, window] of [[0, 9, 0], [37, 40, 0], [130, 21, 0], [37, 40, 9], [130, 21, 50], [0, 9, 2]] as const) {
          const r = treeVsPaths(g, prefix, n, testSeed + 10 * k + prefix + window, window);
          sameBits(r.tree, r.paths, `prefix ${prefix}, ${n} nodes, window ${window}`);
        }
      });
      it(`${g.title}: a sequence alone equals itself inside a ragged batch`, () => {
        const seqs = [{ prefix: 3, qo: 1 }, { prefix: 90, qo: 23 }, { prefix: 0, qo: 7 }, { prefix: 600, qo: 12 }, { prefix: 17, qo: 70 }];
        const r = batchVsAlone(g, seqs, testSeed + 50 + k);
        sameBits(r.batch, r.alone, 'batch vs alone');
        const w = batchVsAlone(g, seqs, testSeed + 60 + k, 33);
        sameBits(w.batch, w.alone, 'batch vs alone, window 33');
        const c = batchVsAlone(g, seqs, testSeed + 70 + k, 0, 0.5);
        sameBits(c.batch, c.alone, 'batch vs alone, soft-capped scores');
      });
    });
    it('one thread (SPECDEC_CPU_THREADS=1) gives the bits of the pool', () => {
      const seed = testSeed + 99;
      sameBits(runChild({ SPECDEC_CPU_THREADS: '1' }, seed), childCase(seed), 'threads 1 vs pool');
    });
    const best = native().cpuInfo().best;
    (best === 'avx512' ? it : it.skip)(`the AVX-512 kernels give the AVX2 kernels' bits, every geometry${best === 'avx512' ? '' : ` (skipped: this CPU's best is ${best})`}`, () => {
      const seed = testSeed + 97;
      const a = runChild({ SPECDEC_CPU_SIMD: 'avx2' }, seed, '--child-all');
      const b = runChild({ SPECDEC_CPU_SIMD: 'avx512' }, seed, '--child-all');
      sameBits(b, a, 'avx512 vs avx2');
    });
    it('the portable kernel (SPECDEC_CPU_SIMD=portable) matches a float64 reference', () => {
      const seed = testSeed + 98;
      const got = runChild({ SPECDEC_CPU_SIMD: 'portable' }, seed);
      const want = childCaseReference(seed);
      assert.strictEqual(got.length, want.length);
      for (let i = 0; i < want.length; i++) {
        // Output in f32 (the q dtype): f32 accumulation error only.
        if (!(Math.abs((got[i] as number) - (want[i] as number)) <= 1e-5)) assert.fail(`element ${i}: got ${got[i]}, want ${want[i]} (seed ${seed})`);
      }
      // The same reference holds the default kernel too.
      const mine = childCase(seed);
      for (let i = 0; i < want.length; i++) if (!(Math.abs((mine[i] as number) - (want[i] as number)) <= 1e-5)) assert.fail(`default kernel, element ${i}: got ${mine[i]}, want ${want[i]}`);
    });
  });
}
