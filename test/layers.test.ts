// Model layer ops against float64 references on fresh random inputs (outputs poisoned with NaN
// first), on the CPU and, when a GPU is present, on CUDA (the same references).
import * as assert from 'assert';
import { addInplace, addRmsnorm, embedding, geluTanhMul, matmul, matmulGroup, rmsnorm, rope, ropeInvFreq, siluInplace, siluMul } from '../lib/layers';
import { Tensor, type Device } from '../lib/tensor';
import { assertThrowsCode, describeCuda, randomArray, rng, testSeed } from './helpers';

type WDType = 'f32' | 'f16' | 'bf16';
const WDTYPES: WDType[] = ['f32', 'f16', 'bf16'];

/** A tensor whose contents are NaN, so any element an op fails to write shows up. */
function poisoned(shape: number[], device: Device): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.fromArray(new Float32Array(n).fill(NaN), 'f32', shape, device);
}

/** Values as stored in `dtype` (the rounding the op sees), read back as numbers. */
function rounded(x: Float32Array, dtype: WDType): Float32Array {
  return Tensor.fromArray(x, dtype).toFloat32();
}

function assertClose(got: Float32Array, want: ArrayLike<number>, tol: (i: number) => number, what: string): void {
  assert.strictEqual(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    assert.ok(Number.isFinite(g) && Math.abs(g - w) <= tol(i), `${what}[${i}]: got ${g}, want ${w} (tol ${tol(i)})`);
  }
}

function assertBitEqual(a: Float32Array, b: Float32Array, what: string): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  assert.strictEqual(ua.length, ub.length, `${what}: length`);
  for (let i = 0; i < ua.length; i++) assert.strictEqual(ua[i], ub[i], `${what}[${i}]: ${a[i]} vs ${b[i]} differ in bits`);
}

const silu = (v: number): number => v / (1 + Math.exp(-v));

/** The op tests, run once per device. */
function layerSuite(device: Device, seed: number): void {
  const rand = rng(seed);
  const t = (x: Float32Array | Int32Array, dtype: 'f32' | 'f16' | 'bf16' | 'i32', shape: number[]): Tensor =>
    Tensor.fromArray(x, dtype, shape, device);
  const ints = (n: number, lo: number, hi: number): Int32Array => {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = lo + Math.floor(rand() * (hi - lo));
    return a;
  };

  describe('embedding', () => {
    for (const dt of WDTYPES) {
      it(`gathers ${dt} rows exactly as f32`, () => {
        const V = 37, H = 19, N = 11;
        const table = randomArray(V * H, rand, -2, 2);
        const ids = ints(N, 0, V);
        ids[0] = 0;
        ids[1] = V - 1;
        const tab = rounded(table, dt);
        const out = embedding(t(table, dt, [V, H]), t(ids, 'i32', [N]), poisoned([N, H], device));
        assert.deepStrictEqual(out.shape, [N, H]);
        const want = new Float32Array(N * H);
        for (let n = 0; n < N; n++) for (let h = 0; h < H; h++) want[n * H + h] = tab[ids[n]! * H + h]!;
        assertBitEqual(out.toFloat32(), want, 'embedding');
      });
    }
    for (const dt of ['f16', 'bf16'] as const) {
      it(`converts every ${dt} bit pattern exactly (subnormals, inf, NaN)`, () => {
        const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
        const table = Tensor.fromArray(bits, dt, [4096, 16], device);
        const ids = Int32Array.from({ length: 4096 }, (_, i) => 4095 - i);
        const out = embedding(table, t(ids, 'i32', [4096])).toFloat32();
        const ref = table.toFloat32();
        const want = new Float32Array(65536);
        for (let n = 0; n < 4096; n++) want.set(ref.subarray(ids[n]! * 16, ids[n]! * 16 + 16), n * 16);
        assertBitEqual(out, want, `${dt} table`);
      });
    }
    it('rejects ids outside the vocabulary, naming the id and the size', () => {
      const table = t(randomArray(5 * 3, rand), 'f32', [5, 3]);
      assertThrowsCode(() => embedding(table, t(Int32Array.from([0, 5]), 'i32', [2])), 'E_ARG', /ids\[1\] = 5 .*vocabulary size 5/);
      assertThrowsCode(() => embedding(table, t(Int32Array.from([-1]), 'i32', [1])), 'E_ARG', /ids\[0\] = -1 .*vocabulary size 5/);
      assertThrowsCode(() => embedding(table, t(Float32Array.from([1]), 'f32', [1])), 'E_ARG', /ids: expected dtype/);
      assertThrowsCode(() => embedding(table, t(Int32Array.from([1]), 'i32', [1]), poisoned([1, 4], device)), 'E_ARG', /out: expected shape/);
    });
  });

  describe('rmsnorm', () => {
    for (const dt of WDTYPES) {
      it(`matches float64 with ${dt} weights (odd H, in place too)`, () => {
        const N = 3, H = 67, eps = 1e-5;
        const x = randomArray(N * H, rand, -3, 3);
        const w = randomArray(H, rand, 0.5, 1.5);
        const wr = rounded(w, dt);
        const want = new Float64Array(N * H);
        for (let n = 0; n < N; n++) {
          let ss = 0;
          for (let h = 0; h < H; h++) ss += x[n * H + h]! ** 2;
          const inv = 1 / Math.sqrt(ss / H + Math.fround(eps));
          for (let h = 0; h < H; h++) want[n * H + h] = x[n * H + h]! * inv * wr[h]!;
        }
        const tol = (i: number): number => 2e-6 * Math.abs(want[i]!) + 1e-7;
        const wt = t(w, dt, [H]);
        const out = rmsnorm(t(x, 'f32', [N, H]), wt, eps, poisoned([N, H], device));
        assertClose(out.toFloat32(), want, tol, `rmsnorm ${dt}`);
        const xi = t(x, 'f32', [N, H]);
        const same = rmsnorm(xi, wt, eps, xi);
        assert.strictEqual(same, xi, 'returns the given out tensor');
        assertClose(xi.toFloat32(), want, tol, `rmsnorm in place ${dt}`);
      });
    }
    it('each row of a batch has the bits it has alone (rows summed four at a time)', () => {
      const N = 9, H = 131, eps = 1e-6;
      const x = randomArray(N * H, rand, -3, 3);
      const wt = t(randomArray(H, rand, 0.5, 1.5), 'bf16', [H]);
      const all = rmsnorm(t(x, 'f32', [N, H]), wt, eps).toFloat32();
      for (let n = 0; n < N; n++) {
        const one = rmsnorm(t(x.subarray(n * H, (n + 1) * H), 'f32', [1, H]), wt, eps).toFloat32();
        assert.deepStrictEqual(all.subarray(n * H, (n + 1) * H), one, `row ${n}`);
      }
    });
    it('rejects a mismatched weight and a bad eps', () => {
      const x = t(randomArray(6, rand), 'f32', [2, 3]);
      assertThrowsCode(() => rmsnorm(x, t(randomArray(4, rand), 'f32', [4]), 1e-5), 'E_ARG', /w: expected shape \[3\]/);
      assertThrowsCode(() => rmsnorm(x, t(randomArray(3, rand), 'f32', [3]), -1), 'E_ARG', /eps/);
    });

    for (const dt of WDTYPES) {
      it(`addRmsnorm (residual add + next norm as one op) gives addInplace then rmsnorm's bits (${dt}; into out and in place)`, () => {
        for (const [N, H] of [[1, 64], [5, 2048], [3, 100], [2, 1000]] as [number, number][]) {
          const x = randomArray(N * H, rand, -3, 3);
          const y = randomArray(N * H, rand, -3, 3);
          const wt = t(randomArray(H, rand, 0.5, 1.5), dt, [H]);
          const eps = 1e-5;
          const xa = t(x, 'f32', [N, H]);
          addInplace(xa, t(y, 'f32', [N, H]));
          const want = rmsnorm(xa, wt, eps).toFloat32();
          const wantX = xa.toFloat32();
          const xb = t(x, 'f32', [N, H]);
          const out = addRmsnorm(xb, t(y, 'f32', [N, H]), wt, eps, poisoned([N, H], device));
          assertBitEqual(out.toFloat32(), want, `out N=${N} H=${H}`);
          assertBitEqual(xb.toFloat32(), wantX, `x += y N=${N} H=${H}`);
          const xc = t(x, 'f32', [N, H]);
          assert.strictEqual(addRmsnorm(xc, t(y, 'f32', [N, H]), wt, eps, xc), xc, 'returns the given out tensor');
          assertBitEqual(xc.toFloat32(), want, `in place N=${N} H=${H}`);
        }
      });
    }
    it('addRmsnorm rejects a mismatched y, weight or out, an out that aliases y, and a bad eps', () => {
      const x = t(randomArray(6, rand), 'f32', [2, 3]);
      const y = t(randomArray(6, rand), 'f32', [2, 3]);
      const w = t(randomArray(3, rand), 'f32', [3]);
      assertThrowsCode(() => addRmsnorm(x, t(randomArray(4, rand), 'f32', [2, 2]), w, 1e-5), 'E_ARG', /y: expected shape \[2, 3\]/);
      assertThrowsCode(() => addRmsnorm(x, y, t(randomArray(4, rand), 'f32', [4]), 1e-5), 'E_ARG', /w: expected shape \[3\]/);
      assertThrowsCode(() => addRmsnorm(x, y, w, 1e-5, poisoned([3, 3], device)), 'E_ARG', /out: expected shape \[2, 3\]/);
      assertThrowsCode(() => addRmsnorm(x, y, w, 1e-5, y), 'E_ARG', /out/);
      assertThrowsCode(() => addRmsnorm(x, y, w, Number.NaN), 'E_ARG', /eps/);
    });
  });

  describe('matmul', () => {
    /** float64 reference on the weights/bias as stored; also returns sum |x w| per output for the tolerance. */
    function reference(x: Float32Array, w: Float32Array, b: Float32Array | undefined, N: number, K: number, M: number) {
      const y = new Float64Array(N * M);
      const mag = new Float64Array(N * M);
      for (let n = 0; n < N; n++)
        for (let m = 0; m < M; m++) {
          let s = 0, a = 0;
          for (let k = 0; k < K; k++) {
            const p = x[n * K + k]! * w[m * K + k]!;
            s += p;
            a += Math.abs(p);
          }
          if (b) { s += b[m]!; a += Math.abs(b[m]!); }
          y[n * M + m] = s;
          mag[n * M + m] = a;
        }
      return { y, mag };
    }

    const sizes: [number, number, number][] = [[1, 67, 33], [3, 129, 70], [17, 200, 45], [5, 515, 301]];
    for (const dt of WDTYPES)
      for (const [N, K, M] of sizes)
        for (const withBias of [false, true]) {
          it(`${dt} weights, N=${N} K=${K} M=${M}${withBias ? ' + bias' : ''}`, () => {
            const x = randomArray(N * K, rand, -1, 1);
            const w = randomArray(M * K, rand, -1, 1);
            const b = withBias ? randomArray(M, rand, -1, 1) : undefined;
            const { y, mag } = reference(x, rounded(w, dt), b && rounded(b, dt), N, K, M);
            const out = matmul(t(x, 'f32', [N, K]), t(w, dt, [M, K]), b && t(b, dt, [M]), poisoned([N, M], device));
            assert.deepStrictEqual(out.shape, [N, M]);
            // f32 accumulation: error grows like eps_f32 * sqrt(K) * sum|x w|; 1e-5 relative to that
            // sum still catches any wrong or missing term (each is ~1/K of the sum).
            assertClose(out.toFloat32(), y, (i) => 1e-5 * mag[i]! + 1e-7, `matmul ${dt}`);
          });
        }

    it('takes a bias of another float dtype than the weights (f16 w + f32 bias, f32 w + bf16 bias)', () => {
      const N = 3, K = 45, M = 21;
      for (const [wd, bd] of [['f16', 'f32'], ['f32', 'bf16'], ['bf16', 'f16']] as [WDType, WDType][]) {
        const x = randomArray(N * K, rand);
        const w = randomArray(M * K, rand);
        const b = randomArray(M, rand);
        const { y, mag } = reference(x, rounded(w, wd), rounded(b, bd), N, K, M);
        const out = matmul(t(x, 'f32', [N, K]), t(w, wd, [M, K]), t(b, bd, [M]), poisoned([N, M], device));
        assertClose(out.toFloat32(), y, (i) => 1e-5 * mag[i]! + 1e-7, `matmul w ${wd} bias ${bd}`);
      }
    });

    for (const dt of WDTYPES) {
      it(`is batch invariant: rows of an N=17 batch equal N=1 calls bit for bit (${dt})`, () => {
        const N = 17, K = 301, M = 900; // the batch takes the threaded path, single rows do not
        const x = randomArray(N * K, rand, -1, 1);
        const wt = t(randomArray(M * K, rand, -1, 1), dt, [M, K]);
        const bt = t(randomArray(M, rand, -1, 1), dt, [M]);
        const xt = t(x, 'f32', [N, K]);
        const all = matmul(xt, wt, bt).toFloat32();
        for (const n of [0, 1, 3, 4, 7, 15, 16]) {
          const one = matmul(xt.rows(n, n + 1), wt, bt).toFloat32();
          assertBitEqual(one, all.subarray(n * M, (n + 1) * M), `row ${n}`);
          const three = matmul(xt.rows(Math.max(0, n - 2), n + 1), wt, bt).toFloat32();
          const r = n - Math.max(0, n - 2);
          assertBitEqual(three.subarray(r * M, (r + 1) * M), all.subarray(n * M, (n + 1) * M), `row ${n} in a batch of 3`);
        }
      });
    }

    for (const dt of WDTYPES) {
      it(`matmulGroup gives each part matmul's bits (${dt}; parts of uneven block counts, threaded and not)`, () => {
        // q/k/v-like parts (M not a multiple of the 48-row block) and gate/up-like ones, for row
        // counts below and above the threading grain.
        for (const [N, K, Ms] of [
          [1, 128, [128, 64, 64]],
          [5, 128, [130, 40, 64]],
          [7, 96, [384, 384]],
          [33, 160, [200, 50, 97]],
        ] as [number, number, number[]][]) {
          const xt = t(randomArray(N * K, rand, -1, 1), 'f32', [N, K]);
          const ws = Ms.map((M) => t(randomArray(M * K, rand, -1, 1), dt, [M, K]));
          const bs = Ms.map((M, i) => (i % 2 === 0 ? t(randomArray(M, rand, -1, 1), dt, [M]) : undefined));
          const got = matmulGroup(xt, ws, bs);
          Ms.forEach((_, i) => assertBitEqual(got[i]!.toFloat32(), matmul(xt, ws[i]!, bs[i]).toFloat32(), `N=${N} part ${i}`));
          for (const g of got) g.dispose();
        }
      });
    }

    it('rejects mismatched shapes, dtypes and an out that aliases x', () => {
      const x = t(randomArray(2 * 8, rand), 'f32', [2, 8]);
      const w = t(randomArray(3 * 8, rand), 'f32', [3, 8]);
      assertThrowsCode(() => matmul(x, t(randomArray(3 * 7, rand), 'f32', [3, 7])), 'E_ARG', /w: expected shape \[\*, 8\]/);
      assertThrowsCode(() => matmul(x, w, t(randomArray(4, rand), 'f32', [4])), 'E_ARG', /bias: expected shape \[3\]/);
      assertThrowsCode(() => matmul(x, w, t(Int32Array.from([1, 2, 3]), 'i32', [3])), 'E_ARG', /bias: expected dtype/);
      assertThrowsCode(() => matmul(t(randomArray(16, rand), 'f16', [2, 8]), w), 'E_ARG', /x: expected dtype/);
      assertThrowsCode(() => matmul(x, t(Int32Array.from([1, 2, 3, 4, 5, 6, 7, 8]), 'i32', [1, 8])), 'E_ARG', /w: expected dtype/);
      assertThrowsCode(() => matmul(x, w, undefined, poisoned([2, 4], device)), 'E_ARG', /out: expected shape \[2, 3\]/);
      const sq = t(randomArray(4 * 4, rand), 'f32', [4, 4]);
      assertThrowsCode(() => matmul(sq, t(randomArray(16, rand), 'f32', [4, 4]), undefined, sq), 'E_ARG', /out: must not overlap x/);
    });
  });

  describe('rope', () => {
    it('matches the HF rotate_half formula (float64, f32 angles)', () => {
      const N = 5, heads = 3, D = 10, half = D / 2;
      const x = randomArray(N * heads * D, rand, -2, 2);
      const pos = ints(N, 0, 5000);
      pos[0] = 0;
      const invFreq = ropeInvFreq(D, 10000);
      const want = new Float64Array(N * heads * D);
      for (let n = 0; n < N; n++) {
        // HF: freqs = pos * inv_freq (f32); emb = cat(freqs, freqs); q*cos(emb) + rotate_half(q)*sin(emb)
        const emb = new Float64Array(D);
        for (let i = 0; i < half; i++) emb[i] = emb[i + half] = Math.fround(pos[n]! * invFreq[i]!);
        for (let h = 0; h < heads; h++) {
          const q = x.subarray((n * heads + h) * D, (n * heads + h + 1) * D);
          for (let d = 0; d < D; d++) {
            const rot = d < half ? -q[d + half]! : q[d - half]!;
            want[(n * heads + h) * D + d] = q[d]! * Math.cos(emb[d]!) + rot * Math.sin(emb[d]!);
          }
        }
      }
      const xt = t(x, 'f32', [N, heads, D]);
      rope(xt, t(pos, 'i32', [N]), t(invFreq, 'f32', [half]));
      assertClose(xt.toFloat32(), want, () => 2e-6, 'rope');
    });
    it('the cos / sin table a call keeps for the next follows the positions, frequencies and scale it is given', () => {
      // (cpu/layers.cc reuses the last call's table while these are the same values: a forward's layers.)
      const N = 4, heads = 2, D = 8, half = D / 2;
      const x = randomArray(N * heads * D, rand, -2, 2);
      const ref = (pos: Int32Array, inv: Float32Array): Float64Array => {
        const want = new Float64Array(N * heads * D);
        for (let n = 0; n < N; n++)
          for (let h = 0; h < heads; h++)
            for (let d = 0; d < D; d++) {
              const q = x.subarray((n * heads + h) * D, (n * heads + h + 1) * D);
              const a = Math.fround(pos[n]! * inv[d % half]!);
              want[(n * heads + h) * D + d] = q[d]! * Math.cos(a) + (d < half ? -q[d + half]! : q[d - half]!) * Math.sin(a);
            }
        return want;
      };
      const run = (pos: Int32Array, inv: Float32Array): Float32Array => {
        const xt = t(x, 'f32', [N, heads, D]);
        const p = t(pos, 'i32', [N]);
        const f = t(inv, 'f32', [half]);
        rope(xt, p, f);
        const out = xt.toFloat32();
        for (const y of [xt, p, f]) y.dispose();
        return out;
      };
      const posA = Int32Array.of(3, 4, 5, 6), posB = Int32Array.of(3, 4, 5, 7);
      const f1 = ropeInvFreq(D, 10000), f2 = ropeInvFreq(D, 500000);
      const first = run(posA, f1);
      assertClose(first, ref(posA, f1), () => 2e-6, 'A, f1');
      assertClose(run(posB, f1), ref(posB, f1), () => 2e-6, 'B, f1 (one position differs)');
      assertClose(run(posA, f2), ref(posA, f2), () => 2e-6, 'A, f2 (other frequencies)');
      assert.deepStrictEqual(run(posA, f1), first, 'A, f1 again: the same bits');
    });
    it('rejects an odd head dim and mismatched positions / inv_freq', () => {
      assertThrowsCode(() => rope(t(randomArray(9, rand), 'f32', [1, 1, 9]), t(Int32Array.from([0]), 'i32', [1]), t(randomArray(4, rand), 'f32', [4])), 'E_ARG', /head dim must be even/);
      const x = t(randomArray(2 * 8, rand), 'f32', [2, 1, 8]);
      assertThrowsCode(() => rope(x, t(Int32Array.from([0]), 'i32', [1]), t(randomArray(4, rand), 'f32', [4])), 'E_ARG', /positions: expected shape \[2\]/);
      assertThrowsCode(() => rope(x, t(Int32Array.from([0, 1]), 'i32', [2]), t(randomArray(5, rand), 'f32', [5])), 'E_ARG', /inv_freq: expected 1 \.\. 4 frequencies \(head dim 8: rotary dims \/ 2\)/);
      assertThrowsCode(() => rope(x, t(Int32Array.from([0, 1]), 'i32', [2]), t(randomArray(4, rand), 'f32', [2, 2])), 'E_ARG', /inv_freq/);
    });
    it('a partial rotation (inv_freq shorter than head dim / 2): pairs (i, i + R/2) of the first R values, the rest untouched', () => {
      const N = 4, heads = 2, D = 16, half = 6; // R = 12 of 16, as Phi-4-mini's 3/4
      const x = randomArray(N * heads * D, rand, -2, 2);
      const pos = ints(N, 0, 5000);
      const invFreq = ropeInvFreq(2 * half, 10000);
      const want = Float64Array.from(x);
      for (let n = 0; n < N; n++)
        for (let h = 0; h < heads; h++)
          for (let i = 0; i < half; i++) {
            const o = (n * heads + h) * D;
            const a = Math.fround(pos[n]! * invFreq[i]!);
            want[o + i] = x[o + i]! * Math.cos(a) - x[o + i + half]! * Math.sin(a);
            want[o + i + half] = x[o + i + half]! * Math.cos(a) + x[o + i]! * Math.sin(a);
          }
      const xt = t(x, 'f32', [N, heads, D]);
      rope(xt, t(pos, 'i32', [N]), t(invFreq, 'f32', [half]));
      const got = xt.toFloat32();
      assertClose(got, want, () => 2e-6, 'partial rope');
      for (let r = 0; r < N * heads; r++) for (let d = 2 * half; d < D; d++) assert.strictEqual(got[r * D + d], x[r * D + d], 'pass-through values are exact');
    });
  });

  describe('elementwise', () => {
    it('siluMul matches float64 (and may write into gate)', () => {
      const N = 3, I = 77;
      const g = randomArray(N * I, rand, -20, 20);
      const u = randomArray(N * I, rand, -2, 2);
      const want = Array.from(g, (v, i) => silu(v) * u[i]!);
      const tol = (i: number): number => 8e-7 * Math.abs(want[i]!) + 1e-12;
      const out = siluMul(t(g, 'f32', [N, I]), t(u, 'f32', [N, I]), poisoned([N, I], device));
      assertClose(out.toFloat32(), want, tol, 'siluMul');
      const gt = t(g, 'f32', [N, I]);
      siluMul(gt, t(u, 'f32', [N, I]), gt);
      assertClose(gt.toFloat32(), want, tol, 'siluMul in place');
      assertThrowsCode(() => siluMul(gt, t(u.subarray(0, I), 'f32', [1, I])), 'E_ARG', /up: expected shape/);
    });
    it('siluMul / siluInplace: an element\'s bits depend on its value alone, wherever it sits (any length and offset: the vector tail, the pool\'s ranges)', () => {
      // The whole array once (long enough to be split over the pool), then windows of it that put
      // the same values in vector tails and at other range boundaries: the same bits.
      const L = 20011;
      const g = randomArray(L, rand, -20, 20);
      const u = randomArray(L, rand, -2, 2);
      const whole = siluMul(t(g, 'f32', [1, L]), t(u, 'f32', [1, L])).toFloat32();
      const alone = t(g, 'f32', [1, L]);
      siluInplace(alone);
      const wholeSilu = alone.toFloat32();
      for (const n of [1, 3, 7, 9, 15, 17, 33, 100, 1001, 4099]) {
        for (const at of [0, 1, 5, 8, 13]) {
          const gw = g.subarray(at, at + n), uw = u.subarray(at, at + n);
          const got = siluMul(t(gw, 'f32', [1, n]), t(uw, 'f32', [1, n])).toFloat32();
          for (let i = 0; i < n; i++) assert.ok(Object.is(got[i], whole[at + i]), `siluMul: element ${at + i} in a window of ${n} at ${at}: ${got[i]} vs ${whole[at + i]}`);
          const x = t(gw, 'f32', [1, n]);
          siluInplace(x);
          const s1 = x.toFloat32();
          for (let i = 0; i < n; i++) assert.ok(Object.is(s1[i], wholeSilu[at + i]), `siluInplace: element ${at + i} in a window of ${n} at ${at}`);
        }
      }
    });
    it('geluTanhMul matches float64 gelu_pytorch_tanh (and may write into gate)', () => {
      const N = 3, I = 77;
      const g = randomArray(N * I, rand, -12, 12);
      const u = randomArray(N * I, rand, -2, 2);
      const gelu = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
      const want = Array.from(g, (v, i) => gelu(v) * u[i]!);
      // Relative, plus ~ulp(1) |g u| where tanh nears -1 and 1 + tanh cancels (as in torch's f32 kernel).
      const tol = (i: number): number => 4e-6 * Math.abs(want[i]!) + 2e-7 * Math.abs(g[i]! * u[i]!);
      const out = geluTanhMul(t(g, 'f32', [N, I]), t(u, 'f32', [N, I]), poisoned([N, I], device));
      assertClose(out.toFloat32(), want, tol, 'geluTanhMul');
      const gt = t(g, 'f32', [N, I]);
      geluTanhMul(gt, t(u, 'f32', [N, I]), gt);
      assertClose(gt.toFloat32(), want, tol, 'geluTanhMul in place');
      assertThrowsCode(() => geluTanhMul(gt, t(u.subarray(0, I), 'f32', [1, I])), 'E_ARG', /up: expected shape/);
    });
    it('addInplace and siluInplace match float64', () => {
      const a = randomArray(3 * 41, rand, -5, 5);
      const b = randomArray(3 * 41, rand, -5, 5);
      const at = t(a, 'f32', [3, 41]);
      addInplace(at, t(b, 'f32', [3, 41]));
      assertBitEqual(at.toFloat32(), Float32Array.from(a, (v, i) => v + b[i]!), 'addInplace'); // one f32 rounding
      assertThrowsCode(() => addInplace(at, t(b, 'f32', [41, 3])), 'E_ARG', /y: expected shape \[3, 41\]/);
      const s = randomArray(200, rand, -100, 100);
      const st = t(s, 'f32', [200]);
      siluInplace(st);
      assertClose(st.toFloat32(), Array.from(s, silu), (i) => 6e-7 * Math.abs(silu(s[i]!)) + 1e-30, 'siluInplace');
    });
  });
}

describe(`layers (cpu, seed ${testSeed})`, () => {
  layerSuite('cpu', testSeed);
});

describeCuda(`layers (seed ${testSeed})`, () => {
  layerSuite('cuda', testSeed + 1);

  it('CUDA matmul equals the CPU within f32 rounding and is itself batch invariant', () => {
    const rand = rng(testSeed + 2);
    const N = 40, K = 1000, M = 257; // larger N: the same kernel as decode must be used
    for (const dt of WDTYPES) {
      const x = randomArray(N * K, rand);
      const w = Tensor.fromArray(randomArray(M * K, rand), dt, [M, K]);
      const xc = Tensor.fromArray(x, 'f32', [N, K], 'cuda');
      const wc = w.to('cuda');
      const gpu = matmul(xc, wc).toFloat32();
      const cpu = matmul(Tensor.fromArray(x, 'f32', [N, K]), w).toFloat32();
      assertClose(gpu, cpu, (i) => 1e-5 * (Math.abs(cpu[i]!) + 1) , `cuda vs cpu ${dt}`);
      for (const n of [0, 13, 39]) assertBitEqual(matmul(xc.rows(n, n + 1), wc).toFloat32(), gpu.subarray(n * M, (n + 1) * M), `cuda row ${n}`);
    }
  });

  it('the streaming kernel (any row count, grouped parts) gives matmul_tc_kernel\'s bits (cuda/gemm_tc_stream.cuh)', () => {
    // K = 2056: 9 slices of 256, more than the ring's stages, the last one partial. Aligned x with
    // K % 8 == 0 streams (1, 2 or 4 row tiles a warp; past 64 rows two weight tiles a block and two
    // row groups); the same rows one float off 16-byte alignment run matmul_tc_kernel, the reference.
    // All must agree bit for bit, alone and as a q/k/v-like group.
    const rand = rng(testSeed + 3);
    const N = 72, K = 2056, Ms = [272, 40, 40];
    for (const dt of ['bf16', 'f16'] as WDType[]) {
      const xh = randomArray(N * K, rand, -1, 1);
      const x = Tensor.fromArray(xh, 'f32', [N, K], 'cuda');
      const padded = new Float32Array(N * K + 1);
      padded.set(xh, 1);
      const xOff = Tensor.fromArray(padded, 'f32', [N * K + 1, 1], 'cuda').rows(1, 1 + N * K).view([N, K]);
      const ws = Ms.map((M) => Tensor.fromArray(randomArray(M * K, rand, -1, 1), dt, [M, K], 'cuda'));
      const bs = Ms.map((M, i) => (i === 1 ? undefined : Tensor.fromArray(randomArray(M, rand, -1, 1), dt, [M], 'cuda')));
      const ref = ws.map((w, i) => matmul(xOff, w, bs[i]).toFloat32());
      for (const [lo, hi] of [[0, 1], [3, 8], [8, 24], [5, 27], [30, 63], [6, 70], [0, 72]] as [number, number][]) {
        const got = matmulGroup(x.rows(lo, hi), ws, bs);
        got.forEach((g, i) => {
          const M = Ms[i]!;
          assertBitEqual(g.toFloat32(), ref[i]!.subarray(lo * M, hi * M), `${dt} rows ${lo}..${hi} part ${i} (group)`);
          assertBitEqual(matmul(x.rows(lo, hi), ws[i]!, bs[i]).toFloat32(), ref[i]!.subarray(lo * M, hi * M), `${dt} rows ${lo}..${hi} part ${i}`);
          g.dispose();
        });
      }
    }
  });
});
