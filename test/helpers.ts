// Shared test utilities: CUDA gating, seeded random data, float64 helpers.
import * as assert from 'assert';
import { backends } from '../lib/backend';
import { seededRandom } from '../lib/train/corpus';

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
