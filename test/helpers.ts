// Shared test utilities: CUDA gating, seeded random data, float64 helpers.
import * as assert from 'assert';
import { backends } from '../lib/backend';
import { seededRandom } from '../lib/train/corpus';
import type { ResolvedPenalties, StopBan } from '../lib/sampling';

/** Why CUDA tests cannot run here (undefined when they can). */
export function cudaSkipReason(): string | undefined {
  const r = backends();
  return r.available.includes('cuda') ? undefined : (r.cudaReason ?? 'CUDA backend not available');
}

/**
 * describe() for CUDA tests: skipped with the reason when no GPU is usable, unless
 * SPECDEC_REQUIRE_CUDA=1, in which case the suite fails instead of skipping.
 */
export function describeCuda(title: string, fn: (this: Mocha.Suite) => void): void {
  const reason = cudaSkipReason();
  if (reason === undefined) {
    describe(`${title} [cuda]`, fn);
  } else if (process.env['SPECDEC_REQUIRE_CUDA'] === '1') {
    describe(`${title} [cuda]`, () => {
      it('requires CUDA (SPECDEC_REQUIRE_CUDA=1)', () => {
        assert.fail(`CUDA required but unavailable: ${reason}`);
      });
    });
  } else {
    describe(`${title} [cuda] (skipped: ${reason})`, function () {
      it.skip(`needs a GPU: ${reason}`, () => undefined);
    });
  }
}

/** Small deterministic PRNG (mulberry32, the trainer's) for test inputs. */
export const rng: (seed: number) => () => number = seededRandom;

/** Uniform random values in [lo, hi) (never all zeros). */
export function randomArray(n: number, rand: () => number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rand();
  return a;
}

/** Seed for fresh random inputs: SPECDEC_TEST_SEED or time-based (printed on failure by mocha title). */
export const testSeed: number = Number(process.env['SPECDEC_TEST_SEED'] ?? Date.now() % 1e9);

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.strictEqual(a.length, b.length, 'length mismatch');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

/** Asserts that fn throws an Error whose code and message match. */
export function assertThrowsCode(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    const err = e as Error & { code?: string };
    assert.strictEqual(err.code, code, `expected code ${code}, got ${err.code}: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

/** Chi-square statistic and a conservative p-value bound check helper: returns the statistic. */
export function chiSquare(observed: ArrayLike<number>, expectedProbs: ArrayLike<number>, total: number): { stat: number; dof: number } {
  let stat = 0;
  let dof = -1;
  for (let i = 0; i < observed.length; i++) {
    const e = (expectedProbs[i] as number) * total;
    if (e <= 0) {
      assert.strictEqual(observed[i], 0, `token ${i} has zero probability but was drawn ${observed[i]} times`);
      continue;
    }
    stat += ((observed[i] as number) - e) ** 2 / e;
    dof++;
  }
  return { stat, dof: Math.max(dof, 1) };
}

/** Upper critical value of chi-square(dof) at significance ~1e-4 (Wilson–Hilferty approximation). */
export function chiSquareCritical(dof: number, z = 3.719): number {
  const h = 2 / (9 * dof);
  return dof * Math.pow(1 - h + z * Math.sqrt(h), 3);
}

/** The reference: sm::penalized_logit in doubles rounded as the native op rounds (f32 ops are exact in double, then rounded once). */
function refLogit(l: number, count: number, inHistory: boolean, p: ResolvedPenalties): number {
  if (!inHistory) return l;
  const r = Math.fround(p.repetition);
  if (r !== 1) l = l > 0 ? Math.fround(l / r) : Math.fround(l * r);
  if (count > 0) l = Math.fround(l - (Math.fround(p.frequency) * count + Math.fround(p.presence)));
  return l;
}

/**
 * Penalties applied to rows of x f32 [N, V] as ops::penalize applies them (row r continues
 * hist[rowSeq[r]], then paths[r]): the logit bias first (an f32 sum: the double sum rounded once),
 * then the penalties on the sums.
 */
export function refPenalize(
  x: Float32Array,
  V: number,
  p: ResolvedPenalties,
  hist: { tokens: number[]; promptLength: number }[],
  rowSeq: Int32Array,
  paths: Int32Array[],
  bans?: readonly (StopBan | undefined)[],
): Float32Array {
  const out = Float32Array.from(x);
  for (let r = 0; r < rowSeq.length; r++) {
    p.logitBias?.tokens.forEach((t, i) => (out[r * V + t] = Math.fround((out[r * V + t] as number) + (p.logitBias?.values[i] as number))));
    const h = hist[rowSeq[r] as number]!;
    const all = [...h.tokens, ...(paths[r] ?? [])];
    const seen = new Set(all);
    for (const t of seen) {
      let c = 0;
      for (let i = h.promptLength; i < all.length; i++) c += all[i] === t ? 1 : 0;
      out[r * V + t] = refLogit(out[r * V + t] as number, c, true, p);
    }
    // Bans last: a banned token is -inf whatever the bias and penalties made of it.
    const ban = bans?.[rowSeq[r] as number];
    if (ban && (paths[r]?.length ?? 0) < ban.before) for (const t of ban.tokens) out[r * V + t] = -Infinity;
  }
  return out;
}
