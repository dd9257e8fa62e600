// Paged KV cache: commit/rollback of accepted tree paths, truncate, copy-on-write forks, page
// accounting, E_KV_FULL, and bad input. Cache contents are read back slot by slot and compared
// with the tokens that should be there; attention over the cache is compared (bitwise, same
// backend) with attention over a cache built directly from those tokens.
import * as assert from 'assert';
import { Tensor } from '../lib/tensor';
import type { Device } from '../lib/tensor';
import { KvCache, kvAppend, treeAttention } from '../lib/kv';
import type { KvDType, PagedBatch } from '../lib/kv';
import { assertThrowsCode, describeCuda, randomArray, rng, testSeed } from './helpers';

const L = 2; // layers
const H = 2; // KV heads
const D = 32;
const S = 4; // page size: small, so every scenario crosses page boundaries
const HQ = 4;
const ROW = H * D;

/** K/V rows of one token in every layer (already rounded to the cache dtype). */
interface TokenKv {
  readonly k: Float32Array[];
  readonly v: Float32Array[];
}

class Harness {
  readonly cache: KvCache;
  /** What each sequence's committed slots must hold. */
  readonly contents = new Map<number, TokenKv[]>();
  constructor(
    readonly device: Device,
    readonly dtype: KvDType,
    readonly rand: () => number,
    numPages = 64,
  ) {
    this.cache = new KvCache({ numLayers: L, numKvHeads: H, headDim: D, pageSize: S, numPages, dtype, device });
  }
  add(): number {
    const s = this.cache.addSequence();
    this.contents.set(s, []);
    return s;
  }
  fork(seq: number): number {
    const s = this.cache.fork(seq);
    this.contents.set(s, [...(this.contents.get(seq) as TokenKv[])]);
    return s;
  }
  /** plan + kvAppend of fresh random K/V (or the given tokens) in every layer; returns the batch and the tokens. */
  speculate(seqs: number[], counts: number[], given?: TokenKv[][]): { batch: PagedBatch; tokens: TokenKv[][] } {
    const batch = this.cache.plan(seqs, counts);
    const tokens: TokenKv[][] = counts.map((n, b) =>
      given
        ? (given[b] as TokenKv[])
        : Array.from({ length: n }, () => ({
            k: Array.from({ length: L }, () => Tensor.fromArray(randomArray(ROW, this.rand), this.dtype).toFloat32()),
            v: Array.from({ length: L }, () => Tensor.fromArray(randomArray(ROW, this.rand), this.dtype).toFloat32()),
          })),
    );
    const flat = tokens.flat();
    for (let l = 0; l < L; l++) {
      const k = new Float32Array(flat.length * ROW);
      const v = new Float32Array(flat.length * ROW);
      flat.forEach((t, i) => {
        k.set(t.k[l] as Float32Array, i * ROW);
        v.set(t.v[l] as Float32Array, i * ROW);
      });
      const kt = Tensor.fromArray(k, 'f32', [flat.length, H, D], this.device);
      const vt = Tensor.fromArray(v, 'f32', [flat.length, H, D], this.device);
      const layer = this.cache.layer(l);
      kvAppend(layer, kt, vt, batch);
      for (const t of [kt, vt, layer]) t.dispose();
    }
    return { batch, tokens };
  }
  commit(batch: PagedBatch, seqs: number[], tokens: TokenKv[][], accepted: Int32Array[]): void {
    this.cache.commit(batch, seqs, accepted);
    seqs.forEach((s, b) => {
      const c = this.contents.get(s) as TokenKv[];
      for (const j of accepted[b] as Int32Array) c.push((tokens[b] as TokenKv[])[j] as TokenKv);
    });
  }
  /** Commits `n` fresh tokens for each sequence (a prefill). */
  prefill(seqs: number[], counts: number[]): void {
    const { batch, tokens } = this.speculate(seqs, counts);
    this.commit(batch, seqs, tokens, counts.map((n) => Int32Array.from({ length: n }, (_, i) => i)));
  }
  truncate(seq: number, len: number): void {
    this.cache.truncate(seq, len);
    (this.contents.get(seq) as TokenKv[]).length = len;
  }
  /** The committed slots of `seq`, read back through its page table. */
  read(seq: number): TokenKv[] {
    const len = this.cache.length(seq);
    const batch = this.cache.plan([seq], [0]);
    const out: TokenKv[] = Array.from({ length: len }, () => ({ k: [], v: [] }));
    for (let l = 0; l < L; l++) {
      const layer = this.cache.layer(l);
      const data = layer.toFloat32();
      layer.dispose();
      for (let t = 0; t < len; t++) {
        const page = batch.pageIndices[Math.floor(t / S)] as number;
        const off = (kv: number): number => ((page * 2 + kv) * S + (t % S)) * ROW;
        (out[t] as TokenKv).k.push(data.slice(off(0), off(0) + ROW));
        (out[t] as TokenKv).v.push(data.slice(off(1), off(1) + ROW));
      }
    }
    batch.dispose();
    return out;
  }
  check(seq: number, what: string): void {
    const got = this.read(seq);
    const want = this.contents.get(seq) as TokenKv[];
    assert.strictEqual(got.length, want.length, `${what}: length of sequence ${seq}`);
    got.forEach((t, i) => {
      for (let l = 0; l < L; l++) {
        assert.deepStrictEqual(t.k[l], (want[i] as TokenKv).k[l], `${what}: seq ${seq} slot ${i} layer ${l} K`);
        assert.deepStrictEqual(t.v[l], (want[i] as TokenKv).v[l], `${what}: seq ${seq} slot ${i} layer ${l} V`);
      }
    });
  }
  /** Attention of 2 fixed probe tokens per sequence over its cache, every layer; leaves the cache as it was. */
  probe(seqs: number[], seed: number): Float32Array {
    const r = rng(seed);
    const probeTokens = seqs.map(() =>
      Array.from({ length: 2 }, () => ({
        k: Array.from({ length: L }, () => Tensor.fromArray(randomArray(ROW, r), this.dtype).toFloat32()),
        v: Array.from({ length: L }, () => Tensor.fromArray(randomArray(ROW, r), this.dtype).toFloat32()),
      })),
    );
    const q = Tensor.fromArray(randomArray(seqs.length * 2 * HQ * D, r, -2, 2), 'f32', [seqs.length * 2, HQ, D], this.device);
    const { batch } = this.speculate(seqs, seqs.map(() => 2), probeTokens);
    const outs: Float32Array[] = [];
    for (let l = 0; l < L; l++) {
      const layer = this.cache.layer(l);
      const o = treeAttention(q, layer, batch, undefined, 1 / Math.sqrt(D));
      outs.push(o.toFloat32());
      o.dispose();
      layer.dispose();
    }
    q.dispose();
    batch.dispose();
    // Drop the probe's pages again (nothing was committed).
    for (const s of seqs) this.cache.truncate(s, this.cache.length(s));
    const all = new Float32Array(outs.reduce((n, o) => n + o.length, 0));
    let at = 0;
    for (const o of outs) {
      all.set(o, at);
      at += o.length;
    }
    return all;
  }
  /** A fresh cache holding exactly the expected contents of `seqs` (built by one prefill). */
  rebuilt(seqs: number[]): { h: Harness; seqs: number[] } {
    const h = new Harness(this.device, this.dtype, this.rand);
    const ids = seqs.map(() => h.add());
    const given = seqs.map((s) => this.contents.get(s) as TokenKv[]);
    const { batch, tokens } = h.speculate(ids, given.map((g) => g.length), given);
    h.commit(batch, ids, tokens, given.map((g) => Int32Array.from({ length: g.length }, (_, i) => i)));
    return { h, seqs: ids };
  }
  pagesInUse(): number {
    return this.cache.totalPages - this.cache.freePages;
  }
}

function randomParents(n: number, rand: () => number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i === 0 ? -1 : Math.floor(rand() * (i + 1)) - 1;
  return p;
}
/** The root-to-node path of a random node (increasing indices), or nothing. */
function randomPath(parents: Int32Array, rand: () => number, allowEmpty: boolean): Int32Array {
  if (allowEmpty && rand() < 0.2) return new Int32Array(0);
  const path: number[] = [];
  for (let i = Math.floor(rand() * parents.length); i >= 0; i = parents[i] as number) path.push(i);
  return Int32Array.from(path.reverse());
}

/** Prefill, then rounds of tree speculation with random accepted paths; checks contents each round. */
function commitScenario(device: Device, dtype: KvDType, seed: number): Harness {
  const rand = rng(seed);
  const h = new Harness(device, dtype, rand);
  const seqs = [h.add(), h.add(), h.add()];
  h.prefill(seqs, [5, 16, 0]);
  for (let round = 0; round < 3; round++) {
    const counts = [7, 10, 4 + round];
    const { batch, tokens } = h.speculate(seqs, counts);
    const accepted = counts.map((n, b) => randomPath(randomParents(n, rand), rand, b === 2 && round === 0));
    if (round === 1) accepted[1] = Int32Array.from({ length: counts[1] as number }, (_, i) => i); // all accepted (a chain)
    h.commit(batch, seqs, tokens, accepted);
    batch.dispose();
    for (const s of seqs) h.check(s, `round ${round}`);
  }
  const needed = seqs.reduce((n, s) => n + Math.ceil(h.cache.length(s) / S), 0);
  assert.strictEqual(h.pagesInUse(), needed, 'pages past the committed lengths are released');
  return h;
}

function suite(device: Device): void {
  for (const dtype of ['f32', 'f16'] as const) {
    it(`commit of random accepted paths = a cache built from the accepted tokens (${dtype})`, () => {
      const h = commitScenario(device, dtype, testSeed + (dtype === 'f32' ? 1 : 2));
      const seqs = [0, 1, 2];
      const b = h.rebuilt(seqs);
      for (const s of seqs) b.h.check(b.seqs[s] as number, 'rebuilt');
      assert.deepStrictEqual(h.probe(seqs, 99), b.h.probe(b.seqs, 99), 'attention over the committed cache');
      h.cache.dispose();
      b.h.cache.dispose();
    });
  }

  it('truncate rolls back committed tokens and releases their pages', () => {
    const h = new Harness(device, 'f32', rng(testSeed + 3));
    const s = h.add();
    h.prefill([s], [14]);
    assert.strictEqual(h.pagesInUse(), 4);
    h.truncate(s, 9);
    assert.strictEqual(h.cache.length(s), 9);
    assert.strictEqual(h.pagesInUse(), 3);
    h.check(s, 'after truncate');
    const b = h.rebuilt([s]);
    assert.deepStrictEqual(h.probe([s], 5), b.h.probe(b.seqs, 5));
    h.prefill([s], [6]); // overwrites the dropped slots
    h.check(s, 'after re-growing');
    h.truncate(s, 0);
    assert.strictEqual(h.pagesInUse(), 0);
    h.cache.dispose();
    b.h.cache.dispose();
  });

  it('fork shares pages copy-on-write: writes never leak between parent and child', () => {
    const h = new Harness(device, 'f32', rng(testSeed + 4));
    const p = h.add();
    h.prefill([p], [10]); // 3 pages, the last one half full
    const before = h.probe([p], 7);
    const used = h.pagesInUse();
    const c = h.fork(p);
    assert.strictEqual(h.pagesInUse(), used, 'fork allocates nothing');
    assert.strictEqual(h.cache.length(c), 10);
    // The child writes into the shared, partly filled page: it gets its own copy first.
    const { batch, tokens } = h.speculate([c], [5]);
    h.commit(batch, [c], tokens, [Int32Array.from([0, 2, 3])]);
    h.check(p, 'parent after child commit');
    h.check(c, 'child after commit');
    assert.deepStrictEqual(h.probe([p], 7), before, "the parent's attention is unchanged");
    // And the other way round: the parent writes, the child keeps its contents.
    const childView = h.probe([c], 8);
    h.prefill([p], [3]);
    h.check(c, 'child after parent writes');
    h.check(p, 'parent after its writes');
    assert.deepStrictEqual(h.probe([c], 8), childView);
    // A fork of a fork, then frees in any order: shared pages return only with their last owner.
    const g = h.fork(c);
    h.cache.free(c);
    h.contents.delete(c);
    h.check(g, 'grandchild after its parent is freed');
    h.cache.free(p);
    h.cache.free(g);
    assert.strictEqual(h.cache.freePages, h.cache.totalPages, 'every page is free again');
    h.cache.dispose();
  });

  it('E_KV_FULL names the numbers and leaves the cache unchanged', () => {
    const h = new Harness(device, 'f32', rng(testSeed + 5), 4);
    const a = h.add();
    h.prefill([a], [10]); // 3 of 4 pages
    assert.strictEqual(h.cache.freePages, 1);
    assertThrowsCode(() => h.cache.plan([a], [7]), 'E_KV_FULL', /sequence 0 needs 2 more pages for 10 \+ 7 tokens.*only 1 of 4 pages of 4 tokens are free/);
    const b = h.add();
    assertThrowsCode(() => h.cache.plan([a, b], [3, 4]), 'E_KV_FULL', /sequence 1 needs 1 more pages for 0 \+ 4 tokens \(2 pages needed by this batch so far\)/);
    assert.strictEqual(h.cache.freePages, 1);
    assert.strictEqual(h.cache.length(a), 10);
    h.check(a, 'after E_KV_FULL');
    // Copy-on-write needs a page too: fork, use the last free page, then write into the shared page.
    const c = h.fork(a);
    h.prefill([b], [4]);
    assertThrowsCode(() => h.cache.plan([c], [1]), 'E_KV_FULL', /sequence 2 needs 1 more pages for 10 \+ 1 tokens/);
    h.cache.free(b);
    h.prefill([c], [1]);
    h.check(a, 'parent after the child un-shared');
    h.check(c, 'child');
    h.cache.dispose();
  });

  it('free returns pages; bytes and layer views describe the storage', () => {
    const h = new Harness(device, 'f16', rng(testSeed + 6), 10);
    assert.strictEqual(h.cache.bytes, L * 10 * 2 * S * H * D * 2);
    const layer = h.cache.layer(1);
    assert.deepStrictEqual(layer.shape, [10, 2, S, H, D]);
    assert.strictEqual(layer.dtype, 'f16');
    assert.strictEqual(layer.device, device);
    layer.dispose();
    const a = h.add();
    const b = h.add();
    h.prefill([a, b], [9, 4]);
    assert.strictEqual(h.cache.freePages, 6);
    h.cache.free(a);
    assert.strictEqual(h.cache.freePages, 9);
    assert.strictEqual(h.cache.alive(a), false);
    h.cache.free(b);
    assert.strictEqual(h.cache.freePages, 10);
    h.cache.dispose();
    assert.strictEqual(h.cache.disposed, true);
    assertThrowsCode(() => h.cache.addSequence(), 'E_DISPOSED');
  });
}

describe('KvCache (cpu)', () => {
  suite('cpu');

  it('rejects bad input with coded errors naming the argument', () => {
    const h = new Harness('cpu', 'f32', rng(testSeed + 7), 8);
    const a = h.add();
    h.prefill([a], [5]);
    assertThrowsCode(() => h.cache.length(7), 'E_ARG', /seq: no live sequence with id 7/);
    assertThrowsCode(() => h.cache.fork(-1), 'E_ARG', /seq: no live sequence/);
    assertThrowsCode(() => h.cache.truncate(a, 6), 'E_ARG', /len: 6 is outside \[0, 5\]/);
    assertThrowsCode(() => h.cache.plan([a], [1, 2]), 'E_ARG', /newTokens: 2 entries for 1 sequences/);
    assertThrowsCode(() => h.cache.plan([a, a], [1, 2]), 'E_ARG', /seqs: sequence 0 appears twice/);
    assertThrowsCode(() => h.cache.plan([a], [-1]), 'E_ARG', /newTokens\[0\]: must be >= 0/);
    assertThrowsCode(() => h.cache.plan([3], [1]), 'E_ARG', /seqs: no live sequence with id 3/);
    const batch = h.cache.plan([a], [4]);
    assertThrowsCode(() => h.cache.commit(batch, [a], [Int32Array.from([1, 0])]), 'E_ARG', /acc_nodes\[1\]: accepted nodes of a sequence must be strictly increasing/);
    assertThrowsCode(() => h.cache.commit(batch, [a], [Int32Array.from([4])]), 'E_ARG', /acc_nodes\[0\]: node 4 out of range \[0, 4\)/);
    assertThrowsCode(() => h.cache.commit(batch, [a], []), 'E_ARG', /accepted: 0 entries for 1 sequences/);
    assertThrowsCode(() => h.cache.commit(batch, [a, 1], [[], []]), 'E_ARG', /seqs: 2 sequences for a batch of 1/);
    assertThrowsCode(() => h.cache.commit({} as PagedBatch, [a], [[0]]), 'E_ARG', /batch: expected a PagedBatch/);
    h.truncate(a, 3);
    assertThrowsCode(() => h.cache.commit(batch, [a], [Int32Array.from([0])]), 'E_ARG', /batch: planned for sequence 0 at length 5 but it now has 3 tokens/);
    const other = new KvCache({ numLayers: L, numKvHeads: H, headDim: D, pageSize: S, numPages: 8, dtype: 'f32' });
    const o = other.addSequence();
    other.plan([o], [3]);
    other.commit(other.plan([o], [0]), [o], [[]]);
    const foreign = other.plan([o], [3]);
    const b2 = h.add();
    h.prefill([b2], [0]);
    assertThrowsCode(() => h.cache.commit(foreign, [b2], [[0]]), 'E_ARG', /batch: its pages for sequence 1 are not the sequence's pages/);
    assertThrowsCode(() => h.cache.layer(L), 'E_ARG', /layer: index 2 out of range/);
    assertThrowsCode(() => new KvCache({ numLayers: 1, numKvHeads: 1, headDim: 8, numPages: 0 }), 'E_ARG', /numPages: must be positive/);
    assertThrowsCode(() => new KvCache({ numLayers: 1, numKvHeads: 1, headDim: 8, numPages: 2, dtype: 'i32' as KvDType }), 'E_ARG', /dtype: a KV cache holds f32, f16 or bf16/);
    assertThrowsCode(() => new KvCache({ numLayers: 1, numKvHeads: 0, headDim: 8, numPages: 2 }), 'E_ARG', /numKvHeads: must be positive/);
    h.cache.dispose();
    other.dispose();
  });

  it('defaults: pageSize 16, dtype f16, device cpu; using disposes', () => {
    {
      using c = new KvCache({ numLayers: 1, numKvHeads: 1, headDim: 8, numPages: 2 });
      assert.strictEqual(c.pageSize, 16);
      assert.strictEqual(c.dtype, 'f16');
      assert.strictEqual(c.device, 'cpu');
      assert.strictEqual(c.bytes, 2 * 2 * 16 * 8 * 2);
      const s = c.addSequence();
      const b = c.plan([s], [20]);
      assert.deepStrictEqual(Array.from(b.pageIndices), [0, 1]);
      assert.deepStrictEqual(Array.from(b.qoIndptr), [0, 20]);
      assert.strictEqual(b.maxKvLen, 20);
    }
  });
});

describeCuda('KvCache', () => {
  suite('cuda');

  it('commit on CUDA leaves the same bits in the cache as on the CPU', () => {
    const gpu = commitScenario('cuda', 'f16', testSeed + 11);
    const cpu = commitScenario('cpu', 'f16', testSeed + 11);
    for (const s of [0, 1, 2]) assert.deepStrictEqual(gpu.read(s), cpu.read(s));
    gpu.cache.dispose();
    cpu.cache.dispose();
  });
});
