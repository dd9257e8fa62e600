// Logits processing, argmax, top-k and sampling: against float64 references on fresh random rows,
// chi-square for the sampler, and CUDA vs CPU parity when a GPU is present.
import * as assert from 'assert';
import { argmax, philox4x32, processLogits, sample, topK, type SamplingOptions } from '../lib/sampling';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { native } from '../lib/native';
import { Tensor } from '../lib/tensor';
import { assertChiSquareFits, assertThrowsCode, describeCuda, redrawOnce, rng, StatisticalFailure, testSeed } from './helpers';

// ---------------- references (float64) ----------------

/** The rank order of top-k / top-p (spec_math.h float_key): value desc, +0 above -0, NaN last; then index asc. */
function orderDesc(x: ArrayLike<number>): number[] {
  const idx = Array.from({ length: x.length }, (_, i) => i);
  return idx.sort((a, b) => {
    const va = x[a] as number, vb = x[b] as number;
    const na = Number.isNaN(va), nb = Number.isNaN(vb);
    if (na || nb) return na && nb ? a - b : na ? 1 : -1;
    if (va !== vb) return vb - va;
    if (va === 0 && Object.is(va, -0) !== Object.is(vb, -0)) return Object.is(va, -0) ? 1 : -1;
    return a - b;
  });
}

function argmaxRef(x: ArrayLike<number>): number {
  let b = -1;
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    if (Number.isNaN(v)) continue;
    if (b < 0 || v > (x[b] as number)) b = i;
  }
  return Math.max(b, 0);
}

/** The contract of processLogits in float64 (spec_math.h). */
function processRef(logits: ArrayLike<number>, o: Required<SamplingOptions>): Float64Array {
  const V = logits.length;
  const out = new Float64Array(V);
  if (o.temperature === 0) {
    out[argmaxRef(logits)] = 1;
    return out;
  }
  const x = Array.from(logits, (l) => l / o.temperature);
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v); // not Math.max(...x): V = 128k overflows the stack
  let z = 0;
  for (let i = 0; i < V; i++) z += (out[i] = Math.exp((x[i] as number) - m));
  let pmax = 0;
  for (let i = 0; i < V; i++) pmax = Math.max(pmax, (out[i] = (out[i] as number) / z));
  const order = orderDesc(x);
  let keep = o.topK > 0 && o.topK < V ? o.topK : V;
  if (o.topP < 1) {
    let total = 0;
    for (let j = 0; j < keep; j++) total += out[order[j] as number] as number;
    let cum = 0;
    let j = 0;
    while (j < keep) {
      cum += out[order[j++] as number] as number;
      if (cum >= o.topP * total) break;
    }
    keep = j;
  }
  for (let j = keep; j < V; j++) out[order[j] as number] = 0;
  for (let i = 0; i < V; i++) if ((out[i] as number) < o.minP * pmax) out[i] = 0;
  let s = 0;
  for (let i = 0; i < V; i++) s += out[i] as number;
  for (let i = 0; i < V; i++) out[i] = (out[i] as number) / s;
  return out;
}

/** A top-p value half-way between two consecutive prefix masses (so rounding cannot move the cut). */
function safeTopP(logits: ArrayLike<number>, o: Required<SamplingOptions>, cut: number): number {
  const p = processRef(logits, { ...o, topP: 1, minP: 0 });
  const order = orderDesc(Array.from(logits, (l) => l / o.temperature));
  let cum = 0;
  const prefix: number[] = [];
  for (const i of order) prefix.push((cum += p[i] as number));
  // Keep c tokens: a value between the masses of the first c - 1 and the first c.
  const nonzero = Array.from(p).filter((x) => x > 0).length;
  const c = Math.max(1, Math.min(cut, nonzero));
  return Math.min(1, ((prefix[c - 2] ?? 0) + (prefix[c - 1] as number)) / 2);
}

/** A min-p value whose threshold is not within 1e-3 (relative) of any probability. */
function safeMinP(probs: ArrayLike<number>, r: () => number): number {
  let pmax = 0;
  for (let i = 0; i < probs.length; i++) pmax = Math.max(pmax, probs[i] as number);
  for (;;) {
    const mp = 0.02 + 0.5 * r();
    let ok = true;
    for (let i = 0; i < probs.length && ok; i++) ok = Math.abs((probs[i] as number) - mp * pmax) > 1e-3 * mp * pmax;
    if (ok) return mp;
  }
}

// The sampler's exact rule (spec_math.h), with BigInt: used to check the native draws bit for bit.
function philoxBits(seed: bigint, offset: bigint, node: number, purpose: number): bigint {
  const c = Uint32Array.from([Number(offset & 0xffffffffn), Number((offset >> 32n) & 0xffffffffn), node, purpose]);
  const k = Uint32Array.from([Number(seed & 0xffffffffn), Number((seed >> 32n) & 0xffffffffn)]);
  const r = philox4x32(c, k);
  return (BigInt(r[0] as number) << 32n) | BigInt(r[1] as number);
}
function quantize(p: number): bigint {
  if (!(p > 0)) return 0n;
  if (p >= 1) return 1n << 40n;
  return BigInt(Math.ceil(p * 2 ** 40));
}
function sampleRule(row: ArrayLike<number>, bits: bigint): number {
  const w = Array.from(row, quantize);
  const mass = w.reduce((a, b) => a + b, 0n);
  const t = (bits * mass) >> 64n;
  let before = 0n;
  for (let i = 0; i < w.length; i++) {
    const wi = w[i] as bigint;
    if (wi > 0n && before <= t && t - before < wi) return i;
    before += wi;
  }
  return -1;
}

function randomLogits(rows: number, V: number, r: () => number, spread: number): Float32Array {
  const a = new Float32Array(rows * V);
  for (let i = 0; i < a.length; i++) a[i] = (r() * 2 - 1) * spread;
  return a;
}

function full(o: SamplingOptions): Required<SamplingOptions> {
  return { temperature: o.temperature ?? 1, topK: o.topK ?? 0, topP: o.topP ?? 1, minP: o.minP ?? 0 };
}

/** Checks processLogits on `device` against processRef: identical support, 1e-5 relative values. */
function checkProcess(logits: Float32Array, rows: number, V: number, opts: SamplingOptions[], device: 'cpu' | 'cuda'): void {
  for (let r = 0; r < rows; r++) {
    const o = opts[r % opts.length] as SamplingOptions;
    const row = logits.subarray(r * V, (r + 1) * V);
    using t = Tensor.fromArray(row, 'f32', [1, V], device);
    using p = processLogits(t, o);
    assert.strictEqual(p.device, device);
    const got = p.toFloat32();
    const want = processRef(row, full(o));
    let sum = 0;
    for (let i = 0; i < V; i++) {
      const g = got[i] as number;
      const w = want[i] as number;
      sum += g;
      if (w === 0) assert.strictEqual(g, 0, `row ${r} token ${i}: expected 0, got ${g} (${JSON.stringify(o)})`);
      else assert.ok(Math.abs(g - w) <= 1e-5 * w + 1e-12, `row ${r} token ${i}: ${g} vs ${w} (${JSON.stringify(o)})`);
    }
    assert.ok(Math.abs(sum - 1) < 1e-5, `row ${r} sums to ${sum}`);
  }
}

function optionSets(logits: Float32Array, rows: number, V: number, r: () => number): SamplingOptions[] {
  const opts: SamplingOptions[] = [];
  for (let row = 0; row < rows; row++) {
    const l = logits.subarray(row * V, (row + 1) * V);
    const T = 0.5 + r();
    const k = 1 + Math.floor(r() * Math.min(V - 1, 60));
    switch (row % 7) {
      case 0: opts.push({ temperature: T }); break;
      case 1: opts.push({ temperature: T, topK: k }); break;
      case 2: opts.push({ temperature: T, topP: safeTopP(l, full({ temperature: T }), 1 + Math.floor(r() * 30)) }); break;
      case 3: opts.push({ temperature: T, minP: safeMinP(processRef(l, full({ temperature: T })), r) }); break;
      case 4: {
        const topP = safeTopP(l, full({ temperature: T, topK: k }), 1 + Math.floor(r() * k));
        opts.push({ temperature: T, topK: k, topP });
        break;
      }
      case 5: {
        const base = full({ temperature: T, topK: k, topP: safeTopP(l, full({ temperature: T, topK: k }), k) });
        opts.push({ ...base, minP: safeMinP(processRef(l, base), r) });
        break;
      }
      default: opts.push({ temperature: 0 });
    }
  }
  return opts;
}

describe('sampling: processLogits', () => {
  it('matches a float64 reference for temperature, top-k, top-p, min-p and their combinations', () => {
    const r = rng(testSeed);
    for (const [V, rows, spread] of [[7, 70, 3], [1000, 21, 6], [32000, 7, 10]] as const) {
      const logits = randomLogits(rows, V, r, spread);
      checkProcess(logits, rows, V, optionSets(logits, rows, V, r), 'cpu');
    }
  });

  it('top-k / top-p on rows shaped like a language model\'s (a tail of candidates over a far body), at the cut: ties kept by index, +0 above -0; flat rows with large nuclei; a wide spread that ranks the whole row', () => {
    const r = rng(testSeed + 7);
    const gauss = (): number => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
    const cases: { name: string; V: number; row: (i: number) => number; opts: (l: Float32Array) => SamplingOptions[] }[] = [
      {
        // A body around 0 and 300 candidates at 6-20: the ranked candidates are a few hundred.
        name: 'peaked',
        V: 50000,
        row: () => (r() < 0.006 ? 6 + 14 * r() : 2 * gauss()),
        opts: (l) => [
          { temperature: 1, topK: 50 },
          { temperature: 0.7, topP: safeTopP(l, full({ temperature: 0.7 }), 20) },
          { temperature: 1.3, topK: 80, topP: safeTopP(l, full({ temperature: 1.3, topK: 80 }), 40) },
          { temperature: 1, topK: 1 },
        ],
      },
      {
        // 40 logits exactly at the cut (10): top-k keeps the lowest-index ones.
        name: 'ties at the cut',
        V: 5000,
        row: (i) => (i === 17 ? 12 : i % 97 === 3 ? 10 : gauss()),
        opts: () => [{ temperature: 1, topK: 20 }, { temperature: 1, topK: 2 }, { temperature: 0.5, topK: 41 }],
      },
      {
        // +0 and -0 interleaved at the cut: +0 ranks first.
        name: '+0 / -0 at the cut',
        V: 3000,
        row: (i) => (i === 5 ? 3 : i < 60 ? (i % 2 ? -0 : 0) : -40 - r()),
        opts: () => [{ temperature: 1, topK: 11 }, { temperature: 1, topK: 40 }],
      },
      {
        // Flat rows, top-p alone: tens of thousands of candidates, so the kept prefix is found by mass
        // histograms (cpu top_p_boundary), not by sorting; nuclei of most of the row and of a few.
        name: 'flat, large nuclei',
        V: 40000,
        row: () => 2 * r() - 1,
        opts: (l) => [
          { temperature: 0.9, topP: safeTopP(l, full({ temperature: 0.9 }), 30000) },
          { temperature: 1, topP: safeTopP(l, full({ temperature: 1 }), 9001) },
          { temperature: 2, topP: safeTopP(l, full({ temperature: 2 }), 3) },
        ],
      },
      {
        // Three values, ten thousand each: the cut falls inside a tie (kept by index).
        name: 'flat ties at a large cut',
        V: 30000,
        row: (i) => [0, 0.25, 0.5][(i * 7919) % 3] as number,
        opts: (l) => [{ temperature: 1, topP: safeTopP(l, full({ temperature: 1 }), 15001) }, { temperature: 1, topP: safeTopP(l, full({ temperature: 1 }), 10000) }],
      },
      {
        // 16384 equal logits: each probability is 2^-14 exactly, and top-p 0.5 needs exactly the mass
        // of 8192 of them: the prefix that reaches it (>=) ends there, the first 8192 by index.
        name: 'equal logits, a cut exactly at the mass',
        V: 16384,
        row: () => 0,
        opts: () => [{ temperature: 1, topP: 0.5 }, { temperature: 1, topP: 0.25 }],
      },
      {
        // +0 and -0 interleaved over most of the row: +0 ranks first, then -0 by index.
        name: '+0 / -0, large cut',
        V: 20000,
        row: (i) => (i < 16000 ? (i % 2 ? -0 : 0) : -1 - r()),
        opts: (l) => [{ temperature: 1, topP: safeTopP(l, full({ temperature: 1 }), 9001) }, { temperature: 1, topP: safeTopP(l, full({ temperature: 1 }), 7999) }],
      },
      {
        // Logits 0 .. -2000: no distance from the max holds 600 of them, the whole row is ranked.
        name: 'wide spread',
        V: 4000,
        row: () => -2000 * r(),
        opts: (l) => [{ temperature: 1, topK: 600 }, { temperature: 50, topK: 300, topP: safeTopP(l, full({ temperature: 50, topK: 300 }), 150) }],
      },
    ];
    for (const c of cases) {
      const l = Float32Array.from({ length: c.V }, (_, i) => c.row(i));
      const opts = c.opts(l);
      try {
        checkProcess(new Float32Array(Array.from({ length: opts.length }, () => Array.from(l)).flat()), opts.length, c.V, opts, 'cpu');
      } catch (e) {
        throw new Error(`${c.name}: ${(e as Error).message}`);
      }
    }
  });

  it('processLogits gives the same bits on every instruction set (the portable path runs the vector exp\'s steps)', function () {
    this.timeout(120000);
    const best = native().cpuInfo().best;
    const paths = (['portable', 'avx2', 'avx512'] as const).filter((p, i) => i <= ['portable', 'avx2', 'avx512'].indexOf(best));
    const run = (simd: string): string => {
      const out = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'process_logits_child.js'), String(testSeed)], { encoding: 'utf8', env: { ...process.env, SPECDEC_CPU_SIMD: simd }, timeout: 120000 });
      assert.strictEqual(out.status, 0, `SPECDEC_CPU_SIMD=${simd}: ${out.stderr}`);
      return out.stdout;
    };
    const want = run('portable');
    assert.ok(want.split('\n').length > 20, want);
    for (const p of paths.slice(1)) assert.strictEqual(run(p), want, `${p} differs from portable`);
  });

  it('processes a batch row by row (same result as one row at a time) and accepts f16/bf16 logits', () => {
    const r = rng(testSeed + 1);
    const V = 300;
    const logits = randomLogits(5, V, r, 4);
    const o = { temperature: 0.7, topK: 50, topP: 0.9 };
    using all = Tensor.fromArray(logits, 'f32', [5, V]);
    using pa = processLogits(all, o);
    const batch = pa.toFloat32();
    for (let row = 0; row < 5; row++) {
      using one = Tensor.fromArray(logits.subarray(row * V, (row + 1) * V), 'f32', [1, V]);
      using p1 = processLogits(one, o);
      assert.deepStrictEqual(p1.toFloat32(), batch.subarray(row * V, (row + 1) * V));
    }
    for (const dt of ['f16', 'bf16'] as const) {
      using h = Tensor.fromArray(logits, dt, [5, V]);
      const rounded = h.toFloat32();
      using ph = processLogits(h, { temperature: 0.7 });
      const got = ph.toFloat32();
      for (let row = 0; row < 5; row++) {
        const want = processRef(rounded.subarray(row * V, (row + 1) * V), full({ temperature: 0.7 }));
        for (let i = 0; i < V; i++) {
          const g = got[row * V + i] as number;
          const w = want[i] as number;
          assert.ok(Math.abs(g - w) <= 1e-5 * w + 1e-12, `${dt} row ${row} token ${i}: ${g} vs ${w}`);
        }
      }
    }
  });

  it('T = 0 is one-hot at the argmax, lowest index on ties; top-p always keeps one token', () => {
    using t = Tensor.fromArray([1, 5, 5, 2, -1, -1, -3, -1], 'f32', [2, 4]);
    using p = processLogits(t, { temperature: 0 });
    assert.deepStrictEqual(Array.from(p.toFloat32()), [0, 1, 0, 0, 1, 0, 0, 0]);
    using q = processLogits(t, { topP: 1e-6 });
    assert.deepStrictEqual(Array.from(q.toFloat32()), [0, 1, 0, 0, 1, 0, 0, 0]);
    using k = processLogits(t, { topK: 1 });
    assert.deepStrictEqual(Array.from(k.toFloat32()), [0, 1, 0, 0, 1, 0, 0, 0]);
  });

  it('rejects bad options and tensors with coded errors naming the argument', () => {
    using t = Tensor.fromArray([1, 2, 3, 4], 'f32', [2, 2]);
    assertThrowsCode(() => processLogits(t, { temperature: -1 }), 'E_ARG', /temperature/);
    assertThrowsCode(() => processLogits(t, { temperature: NaN }), 'E_ARG', /temperature/);
    assertThrowsCode(() => processLogits(t, { topK: 1.5 }), 'E_ARG', /topK/);
    assertThrowsCode(() => processLogits(t, { topK: -1 }), 'E_ARG', /topK/);
    assertThrowsCode(() => processLogits(t, { topP: 0 }), 'E_ARG', /topP/);
    assertThrowsCode(() => processLogits(t, { topP: 1.5 }), 'E_ARG', /topP/);
    assertThrowsCode(() => processLogits(t, { minP: 1 }), 'E_ARG', /minP/);
    assertThrowsCode(() => processLogits(t, { minP: -0.1 }), 'E_ARG', /minP/);
    using v = Tensor.fromArray([1, 2, 3, 4], 'f32', [4]);
    assertThrowsCode(() => processLogits(v), 'E_ARG', /logits/);
    using i = Tensor.fromArray([1, 2, 3, 4], 'i32', [2, 2]);
    assertThrowsCode(() => processLogits(i), 'E_ARG', /logits: expected dtype/);
    using e = Tensor.empty('f32', [2, 0]);
    assertThrowsCode(() => processLogits(e), 'E_ARG', /vocabulary is empty/);
  });
});

describe('sampling: argmax and topK', () => {
  it('argmax takes the lowest index on ties, ignores NaN, reads f16/bf16', () => {
    const r = rng(testSeed + 2);
    const V = 257;
    const rows = 40;
    const x = new Float32Array(rows * V);
    for (let i = 0; i < x.length; i++) x[i] = Math.floor(r() * 20) - 10;  // many ties
    x[3] = NaN;
    x[V + 5] = NaN;
    x[V + 6] = 1e9;
    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      using t = Tensor.fromArray(x, dt, [rows, V]);
      const xs = t.toFloat32();
      using a = argmax(t);
      const got = a.toInt32();
      for (let row = 0; row < rows; row++) assert.strictEqual(got[row], argmaxRef(xs.subarray(row * V, (row + 1) * V)), `${dt} row ${row}`);
    }
  });

  it('argmax: adversarial rows (NaN, -inf, signed zeros, ties across vector blocks, odd lengths)', () => {
    // The CPU argmax runs in SIMD blocks of 16 with a scalar tail: lengths around the block size,
    // the maximum in the tail, ties straddling blocks, rows with nothing but NaN / -inf.
    const r = rng(testSeed + 21);
    const cases: (readonly number[])[] = [];
    for (const V of [1, 3, 15, 16, 17, 31, 33, 64, 100, 1001]) {
      const fill = (f: (i: number) => number): number[] => Array.from({ length: V }, (_, i) => f(i));
      cases.push(fill(() => NaN));
      cases.push(fill((i) => (i % 3 === 0 ? NaN : -Infinity)));
      cases.push(fill(() => -Infinity));
      cases.push(fill((i) => (i % 2 === 0 ? -0 : 0)));
      cases.push(fill((i) => (i === V - 1 ? 5 : 1)));  // the maximum in the last element (the tail)
      cases.push(fill((i) => (i === 0 ? NaN : i === V - 1 ? Infinity : -i)));
      cases.push(fill((i) => (i % 16 === 15 || i % 16 === 0 ? 7 : Math.floor(r() * 7))));  // ties at block edges
      cases.push(fill(() => (r() < 0.2 ? NaN : Math.floor(r() * 4) - 2)));
      // One maximum, then NaN in every later element of its vector lane: a max that let NaN in would lose it.
      for (const at of [0, 2, 5]) cases.push(fill((i) => (i === at ? 9 : i % 4 === at % 4 && i > at ? NaN : -1)));
    }
    for (const row of cases) {
      const V = row.length;
      for (const dt of ['f32', 'bf16'] as const) {
        using t = Tensor.fromArray(Float32Array.from(row), dt, [1, V]);
        const xs = t.toFloat32();
        using a = argmax(t);
        const want = argmaxRef(xs);
        assert.strictEqual(a.toInt32()[0], want, `${dt} V=${V} [${Array.from(xs.subarray(0, 8)).join(',')}...]`);
        // Greedy processLogits is one-hot at the same index.
        using p = processLogits(t, { temperature: 0 });
        assert.strictEqual(p.toFloat32().indexOf(1), want, `processLogits ${dt} V=${V}`);
      }
    }
  });

  it('topK returns the k largest, descending, ties by lower index', () => {
    const r = rng(testSeed + 3);
    for (const [V, k] of [[10, 1], [10, 10], [1000, 37], [5000, 300]] as const) {
      const rows = 6;
      const x = new Float32Array(rows * V);
      for (let i = 0; i < x.length; i++) x[i] = Math.floor(r() * 50) / 7 - 3;  // ties
      using t = Tensor.fromArray(x, 'f32', [rows, V]);
      const { values, ids } = topK(t, k);
      assert.deepStrictEqual(values.shape, [rows, k]);
      const vs = values.toFloat32();
      const is = ids.toInt32();
      for (let row = 0; row < rows; row++) {
        const xr = x.subarray(row * V, (row + 1) * V);
        const want = orderDesc(xr).slice(0, k);
        assert.deepStrictEqual(Array.from(is.subarray(row * k, (row + 1) * k)), want, `V=${V} k=${k} row ${row}`);
        assert.deepStrictEqual(Array.from(vs.subarray(row * k, (row + 1) * k)), want.map((i) => xr[i]));
      }
      values.dispose();
      ids.dispose();
    }
    using t = Tensor.fromArray([1, 2, 3], 'f32', [1, 3]);
    assertThrowsCode(() => topK(t, 0), 'E_ARG', /k/);
    assertThrowsCode(() => topK(t, 4), 'E_ARG', /k: expected 1 <= k <= 3/);
  });
});

describe('test statistics: assertChiSquareFits and redrawOnce', () => {
  it('a fit passes, a bias fails (a StatisticalFailure), a zero-probability draw fails outright; only a StatisticalFailure is redrawn, once', async () => {
    const p = [0.5, 0.3, 0.2, 0, 0.001];
    assertChiSquareFits('exact', [500, 300, 200, 0, 0], p, 1000);
    assert.throws(() => assertChiSquareFits('biased', [600, 250, 150, 0, 0], p, 1000), (e: unknown) => e instanceof StatisticalFailure && /biased: chi-square/.test(e.message));
    assert.throws(() => assertChiSquareFits('support', [500, 299, 200, 1, 0], p, 1000), (e: unknown) => !(e instanceof StatisticalFailure) && /token 3 has zero probability/.test((e as Error).message));
    const attempts: number[] = [];
    const warn = console.warn;
    console.warn = () => undefined;
    try {
      await redrawOnce((a) => {
        attempts.push(a);
        if (a === 0) throw new StatisticalFailure('first');
      });
      assert.deepStrictEqual(attempts, [0, 1]);
      await assert.rejects(redrawOnce(() => { throw new StatisticalFailure('always'); }), /always/);
      attempts.length = 0;
      await assert.rejects(redrawOnce((a) => { attempts.push(a); assert.fail('structural'); }), /structural/);
      assert.deepStrictEqual(attempts, [0], 'other failures are not redrawn');
    } finally {
      console.warn = warn;
    }
  });
});

describe('sampling: sample', () => {
  it('Philox4x32-10 matches the Random123 known answers', () => {
    assert.deepStrictEqual(Array.from(philox4x32(new Uint32Array(4), new Uint32Array(2))), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    assert.deepStrictEqual(
      Array.from(philox4x32(Uint32Array.from([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344]), Uint32Array.from([0xa4093822, 0x299f31d0]))),
      [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    );
  });

  it('draws follow the probabilities (chi-square over 10^5 draws); zero-probability tokens never appear', async () => {
    const r = rng(testSeed + 4);
    const V = 10;
    const p = new Float32Array(V);
    for (let i = 0; i < V; i++) p[i] = i === 3 || i === 7 ? 0 : 0.05 + r();
    const s = p.reduce((a, b) => a + b, 0);
    for (let i = 0; i < V; i++) p[i] = (p[i] as number) / s;
    const rows = 2000;
    const probs = new Float32Array(rows * V);
    for (let row = 0; row < rows; row++) probs.set(p, row * V);
    using t = Tensor.fromArray(probs, 'f32', [rows, V]);
    const calls = 50;
    await redrawOnce((attempt) => {
      const seeds = BigUint64Array.from({ length: rows }, (_, i) => (BigInt(testSeed) + BigInt(attempt) * 7919n) * 1000003n + BigInt(i));
      const counts = new Array<number>(V).fill(0);
      for (let c = 0; c < calls; c++) {
        const toks = sample(t, seeds, new BigUint64Array(rows).fill(BigInt(c)));
        for (const tok of toks) counts[tok] = (counts[tok] as number) + 1;
      }
      assertChiSquareFits('draws', counts, p, rows * calls);
    });
  });

  it('is the exact inverse CDF of the counter-based uniform; reproducible, different per offset, batch invariant', () => {
    const r = rng(testSeed + 5);
    const V = 33;
    const rows = 300;
    const probs = new Float32Array(rows * V);
    for (let i = 0; i < probs.length; i++) probs[i] = r() < 0.3 ? 0 : r();  // unnormalised rows are fine
    for (let row = 0; row < rows; row++) probs[row * V + (row % V)] = 0.5;
    using t = Tensor.fromArray(probs, 'f32', [rows, V]);
    const seeds = BigUint64Array.from({ length: rows }, () => BigInt(Math.floor(r() * 2 ** 32)) * 2n ** 32n + BigInt(Math.floor(r() * 2 ** 32)));
    const offsets = BigUint64Array.from({ length: rows }, () => BigInt(Math.floor(r() * 2 ** 40)));
    const a = sample(t, seeds, offsets);
    for (let row = 0; row < rows; row++) {
      const want = sampleRule(probs.subarray(row * V, (row + 1) * V), philoxBits(seeds[row] as bigint, offsets[row] as bigint, 0, 2));
      assert.strictEqual(a[row], want, `row ${row}`);
    }
    assert.deepStrictEqual(sample(t, seeds, offsets), a);
    const b = sample(t, seeds, offsets.map((o) => o + 1n));
    let diff = 0;
    for (let row = 0; row < rows; row++) diff += a[row] !== b[row] ? 1 : 0;
    assert.ok(diff > rows / 4, `only ${diff} of ${rows} rows changed with the offset`);
    using one = Tensor.fromArray(probs.subarray(7 * V, 8 * V), 'f32', [1, V]);
    assert.strictEqual(sample(one, seeds.subarray(7, 8), offsets.subarray(7, 8))[0], a[7]);
  });

  it('never returns a zero-probability token, even for u ~ 1 or u ~ 0; a row without mass is E_NUMERIC', () => {
    // Find the offsets whose uniforms are closest to 1 and to 0 among 20000.
    const seed = BigInt(testSeed);
    let hi = 0n;
    let hiBits = 0n;
    let lo = 0n;
    let loBits = 1n << 64n;
    for (let o = 0n; o < 20000n; o++) {
      const bits = philoxBits(seed, o, 0, 2);
      if (bits > hiBits) [hi, hiBits] = [o, bits];
      if (bits < loBits) [lo, loBits] = [o, bits];
    }
    assert.ok(Number(hiBits >> 11n) / 2 ** 53 > 0.999, 'search found a u close to 1');
    using t = Tensor.fromArray([0, 0.3, 0.7 - 1e-7, 1e-7, 0.5, 0.5, 0, 0], 'f32', [2, 4]);
    const seeds = new BigUint64Array(2).fill(seed);
    const high = sample(t, seeds, new BigUint64Array(2).fill(hi));
    assert.strictEqual(high[1], 1);
    assert.ok(high[0] === 2 || high[0] === 3, `u ~ 1 drew token ${high[0]}`);
    assert.deepStrictEqual(Array.from(sample(t, seeds, new BigUint64Array(2).fill(lo))), [1, 0]);
    // No mass (all zero; all NaN, as from NaN logits): an error naming the row, never a token.
    using z = Tensor.fromArray([0.5, 0.5, 0, 0, NaN, NaN], 'f32', [3, 2]);
    for (const row of [[0, 0], [NaN, NaN]]) {
      using r = Tensor.fromArray(row, 'f32', [1, 2]);
      assertThrowsCode(() => sample(r, new BigUint64Array(1), new BigUint64Array(1)), 'E_NUMERIC', /row 0: no probability mass/);
    }
    assertThrowsCode(() => sample(z, new BigUint64Array(3), new BigUint64Array(3)), 'E_NUMERIC', /probs row 1: no probability mass/);
  });

  it('rejects bad seeds, offsets and probs', () => {
    using t = Tensor.fromArray([0.5, 0.5], 'f32', [1, 2]);
    assertThrowsCode(() => sample(t, new BigUint64Array(2), new BigUint64Array(1)), 'E_ARG', /seeds/);
    assertThrowsCode(() => sample(t, new BigUint64Array(1), new BigUint64Array(0)), 'E_ARG', /offsets/);
    assertThrowsCode(() => sample(t, [1n] as unknown as BigUint64Array, new BigUint64Array(1)), 'E_ARG', /seeds: expected a BigUint64Array/);
    using h = Tensor.fromArray([0.5, 0.5], 'f16', [1, 2]);
    assertThrowsCode(() => sample(h, new BigUint64Array(1), new BigUint64Array(1)), 'E_ARG', /probs: expected dtype f32/);
  });
});

describeCuda('sampling', () => {
  it('processLogits on CUDA matches the float64 reference (V up to 128k)', () => {
    const r = rng(testSeed + 10);
    for (const [V, rows, spread] of [[7, 14, 3], [32000, 7, 10], [128256, 7, 12]] as const) {
      const logits = randomLogits(rows, V, r, spread);
      checkProcess(logits, rows, V, optionSets(logits, rows, V, r), 'cuda');
    }
  });

  it('processLogits is batch invariant: a few rows (vocabulary slices) give the bits they get among 300 (a block per row)', () => {
    const r = rng(testSeed + 12);
    const many = 300; // more rows than any GPU has SMs: the block-per-row path
    for (const V of [32000, 128256]) {
      const x = randomLogits(many, V, r, 12);
      for (let i = 0; i < V; i += 3) x[i] = Math.round(x[i] as number); // ties across slices
      using all = Tensor.fromArray(x, 'f32', [many, V], 'cuda');
      using few = Tensor.fromArray(x.subarray(0, 3 * V), 'f32', [3, V], 'cuda');
      const sets: SamplingOptions[] = [{}, { temperature: 0 }, { temperature: 0.7, topK: 5000 }, { temperature: 1.1, topK: 40, topP: 0.8, minP: 0.02 }, { topP: 0.5 }];
      for (const o of sets) {
        using pa = processLogits(all, o);
        using pf = processLogits(few, o);
        using head = pa.rows(0, 3);
        const bits = (v: Float32Array): Uint32Array => new Uint32Array(v.buffer, v.byteOffset, v.length);
        const a = bits(head.toFloat32());
        const f = bits(pf.toFloat32());
        assert.ok(a.every((v, i) => v === f[i]), `V=${V} ${JSON.stringify(o)}: 3 rows alone differ from the same rows among ${many}`);
      }
    }
  });

  it('argmax, topK and sample agree with the CPU bit for bit', () => {
    const r = rng(testSeed + 11);
    for (const V of [5, 4099, 128256]) {
      const rows = 9;
      const x = new Float32Array(rows * V);
      for (let i = 0; i < x.length; i++) x[i] = Math.floor(r() * 1000) / 37;
      using c = Tensor.fromArray(x, 'f32', [rows, V]);
      using g = c.to('cuda');
      using ac = argmax(c);
      using ag = argmax(g);
      assert.deepStrictEqual(ag.toInt32(), ac.toInt32());
      const k = Math.min(V, 50);
      const tc = topK(c, k);
      const tg = topK(g, k);
      assert.deepStrictEqual(tg.ids.toInt32(), tc.ids.toInt32());
      assert.deepStrictEqual(tg.values.toFloat32(), tc.values.toFloat32());
      for (const t of [tc, tg]) t.values.dispose(), t.ids.dispose();
      using pc = processLogits(c, { temperature: 0.9 });
      using pg = pc.to('cuda');
      const seeds = BigUint64Array.from({ length: rows }, (_, i) => BigInt(testSeed + i));
      const offsets = BigUint64Array.from({ length: rows }, (_, i) => BigInt(i * 7));
      assert.deepStrictEqual(sample(pg, seeds, offsets), sample(pc, seeds, offsets));
    }
  });
});
