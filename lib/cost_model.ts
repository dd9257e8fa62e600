// The cost model of a model's forward on its device: c(n), seconds for a forward over n new tokens
// at the current context, measured at first use (a short calibration on a scratch sequence) and
// refined online from the step timings the engine reports. Speculators size their trees with it
// (lib/tree_sizing.ts): a wide tree pays only where c(n) grows slower than the tokens it adds.
//
// One curve per model object (a model lives on one device), shared by every decoder and
// speculator that uses the model; setForwardCost pins a curve (tests, or an engine that knows
// its costs).
import type { CausalLM } from './models/causal_lm';
import { argError, codedError, optionsArg } from './errors';

/** Forward sizes measured by the calibration (the curve interpolates between them). */
export const CALIBRATION_SIZES: readonly number[] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];

/**
 * A robust running estimate of a time: the lower quartile of the last WINDOW samples. On a shared
 * machine interference only ever adds time (another process, a GC pause, a forward that waited for
 * a pool thread), so the low side of recent samples is the cost to plan with, and a burst of
 * outliers moves it only once it fills most of the window.
 */
export class RecentTimes {
  static readonly WINDOW = 16;
  private readonly samples: number[] = [];
  /** The same samples, ascending (kept sorted as they come and go: read every step, no sort). */
  private readonly sorted: number[] = [];
  private next = 0;

  constructor(initial?: number) {
    if (initial !== undefined) this.add(initial);
  }

  add(seconds: number): void {
    if (!(seconds >= 0) || !Number.isFinite(seconds)) return;
    const { samples, sorted } = this;
    if (samples.length < RecentTimes.WINDOW) {
      samples.push(seconds);
      sorted.push(seconds);
    } else {
      // Drop the oldest sample's copy from the sorted list, then put the new one in its place.
      const old = samples[this.next] as number;
      samples[this.next] = seconds;
      let i = sorted.indexOf(old);
      for (; i + 1 < sorted.length; i++) sorted[i] = sorted[i + 1] as number;
      sorted[sorted.length - 1] = seconds;
    }
    // Insertion of the last element into the sorted rest.
    let j = sorted.length - 1;
    for (; j > 0 && (sorted[j - 1] as number) > seconds; j--) sorted[j] = sorted[j - 1] as number;
    sorted[j] = seconds;
    this.next = (this.next + 1) % RecentTimes.WINDOW;
  }

  get count(): number {
    return this.samples.length;
  }

  /** The lower quartile of the recent samples (0 when there are none). */
  value(): number {
    const n = this.sorted.length;
    return n === 0 ? 0 : (this.sorted[Math.floor((n - 1) / 4)] as number);
  }

  /** Forgets every sample. */
  clear(): void {
    this.samples.length = 0;
    this.sorted.length = 0;
    this.next = 0;
  }
}

/**
 * The time of a step that drafts k tokens (per sequence), as a fixed part plus a per-token part:
 * fixed + perToken * k. Measured as a time per drafted token instead, the fixed part (the call,
 * its wait, the first step feeding the bonus token) was charged k times, so longer chains always
 * looked too dear and the choice stuck at short ones (embedded family: k = 1, 0.60x plain, where
 * k = 4 gave 0.82x). perToken is the least-squares slope over the recent (k, seconds) samples when
 * they hold at least two values of k (clamped to [0.2, 1.5] x the prior), else the prior: a chained
 * token's measured cost (chainTokenCost) or the draft's one-token forward; fixed is the lower
 * quartile of the samples' seconds - perToken * k, >= 0.
 */
export class ChainCost {
  static readonly WINDOW = 32;
  private readonly ks: number[] = [];
  private readonly ts: number[] = [];
  private next = 0;
  private fit: { fixed: number; perToken: number } | undefined;

  /** oneToken: the per-token prior (chainTokenCost, else the draft's one-token forward). */
  constructor(private readonly oneToken: number) {}

  add(k: number, seconds: number): void {
    if (!(k > 0) || !(seconds >= 0) || !Number.isFinite(seconds) || !Number.isFinite(k)) return;
    if (this.ks.length < ChainCost.WINDOW) {
      this.ks.push(k);
      this.ts.push(seconds);
    } else {
      this.ks[this.next] = k;
      this.ts[this.next] = seconds;
    }
    this.next = (this.next + 1) % ChainCost.WINDOW;
    this.fit = undefined;
  }

  get count(): number {
    return this.ks.length;
  }

  /** Seconds of a step drafting k tokens per sequence (0 for k = 0). */
  cost(k: number): number {
    if (k <= 0) return 0;
    const f = this.parts();
    return f.fixed + f.perToken * k;
  }

  parts(): { readonly fixed: number; readonly perToken: number } {
    if (this.fit) return this.fit;
    const n = this.ks.length;
    let perToken = this.oneToken;
    if (n >= 2) {
      let mk = 0;
      let mt = 0;
      for (let i = 0; i < n; i++) {
        mk += this.ks[i] as number;
        mt += this.ts[i] as number;
      }
      mk /= n;
      mt /= n;
      let sxy = 0;
      let sxx = 0;
      for (let i = 0; i < n; i++) {
        const dk = (this.ks[i] as number) - mk;
        sxy += dk * ((this.ts[i] as number) - mt);
        sxx += dk * dk;
      }
      if (sxx > 1e-9) perToken = Math.min(1.5 * this.oneToken, Math.max(0.2 * this.oneToken, sxy / sxx));
    }
    const rest = this.ts.map((t, i) => t - perToken * (this.ks[i] as number)).sort((a, b) => a - b);
    const fixed = rest.length === 0 ? 0 : Math.max(0, rest[Math.floor((rest.length - 1) / 4)] as number);
    this.fit = { fixed, perToken };
    return this.fit;
  }
}

/**
 * A step overhead's samples (ForwardCost.stepOverhead): within the step and around it in the
 * engine's loop, each after ForwardCost.OVERHEAD_WARMUP cold ones; 0 until OVERHEAD_MIN_SAMPLES are in.
 */
class OverheadSamples {
  private readonly within = new RecentTimes();
  private readonly around = new RecentTimes();
  seen = 0;
  private loopSeen = 0;
  /** ForwardCost.clock() at the last in-step sample, and the quiet seconds after which the samples expire. */
  private last = 0;
  private quiet = ForwardCost.OVERHEAD_STALE_SECONDS;

  /** A sample standing for `steps` steps (a native chain's: one per call), counted as many towards the warm-up. */
  inStep(seconds: number, steps = 1): void {
    this.expire();
    if (this.seen >= ForwardCost.OVERHEAD_WARMUP) this.within.add(seconds);
    this.seen += steps;
    this.last = ForwardCost.clock();
    // A full window after an expiry: the speculator speculates again, steadily.
    if (this.within.count >= RecentTimes.WINDOW) this.quiet = ForwardCost.OVERHEAD_STALE_SECONDS;
  }

  loop(seconds: number): void {
    if (this.loopSeen++ >= ForwardCost.OVERHEAD_WARMUP) this.around.add(seconds);
  }

  measured(): boolean {
    this.expire();
    return this.within.count >= ForwardCost.OVERHEAD_MIN_SAMPLES;
  }

  /**
   * Samples older than `quiet` seconds with none since are forgotten (the overhead counts as 0
   * again, after a new warm-up): only speculative steps make samples, so an estimate that made the
   * choice plain could otherwise never move again -- a burst of slow steps, priced in, would keep a
   * speculator that pays decoding plainly for good. Each expiry doubles the next quiet time (up to
   * OVERHEAD_STALE_MAX_SECONDS): where speculating truly does not pay, the exploration it buys
   * (a few steps) comes ever more rarely.
   */
  private expire(): void {
    if (this.seen === 0) return;
    if (ForwardCost.clock() - this.last <= this.quiet * 1000) return;
    this.within.clear();
    this.around.clear();
    this.seen = 0;
    this.loopSeen = 0;
    this.quiet = Math.min(ForwardCost.OVERHEAD_STALE_MAX_SECONDS, 2 * this.quiet);
  }

  value(): number {
    this.expire();
    // (The lower quartile: the least sample, tried 2026-12-06 against the cold samples, priced the
    // embedded draft model's steps so low under a busy machine's noise that it drafted at 0.83x.)
    const warm = (t: RecentTimes): number => (t.count >= ForwardCost.OVERHEAD_MIN_SAMPLES ? t.value() : 0);
    return warm(this.within) + warm(this.around);
  }
}

/** A piecewise-linear, non-decreasing cost curve c(n) in seconds, refined by observations. */
export class ForwardCost {
  private readonly ns: number[];
  private readonly ts: RecentTimes[];
  /** Every speculative step's overhead samples, and each speculator's own (stepOverheadOf). */
  private readonly shared = new OverheadSamples();
  private readonly owned = new WeakMap<object, OverheadSamples>();
  /** The non-decreasing point values predict() interpolates (recomputed after an observation). */
  private readonly monotone: number[];
  private stale = true;
  /** Observations taken in since construction (tests and statistics). */
  observations = 0;

  /**
   * points: [n, seconds] pairs, n >= 1 distinct integers, seconds > 0 (any order). `frozen`: the
   * curve ignores observations (a fixed synthetic curve).
   */
  constructor(
    points: readonly (readonly [number, number])[],
    readonly frozen = false,
  ) {
    const sorted = points.slice().sort((a, b) => a[0] - b[0]);
    if (sorted.length === 0) throw argError('ForwardCost: no points');
    sorted.forEach(([n, t], i) => {
      if (!Number.isInteger(n) || n < 1 || (i > 0 && n === sorted[i - 1]![0])) throw argError(`ForwardCost: sizes must be distinct integers >= 1, got ${n}`);
      if (!(t > 0) || !Number.isFinite(t)) throw argError(`ForwardCost: cost of ${n} tokens must be a positive number of seconds, got ${t}`);
    });
    this.ns = sorted.map((p) => p[0]);
    this.ts = sorted.map((p) => new RecentTimes(p[1]));
    this.monotone = new Array<number>(sorted.length).fill(0);
  }

  /** A curve from a function of n sampled at the calibration sizes (synthetic curves in tests). */
  static fromFunction(f: (n: number) => number, opts: { readonly sizes?: readonly number[]; readonly frozen?: boolean; readonly stepOverhead?: number } = {}): ForwardCost {
    const c = new ForwardCost((opts.sizes ?? CALIBRATION_SIZES).map((n) => [n, f(n)] as const), opts.frozen ?? false);
    if (opts.stepOverhead !== undefined) c.overheadPrior = opts.stepOverhead;
    return c;
  }

  /**
   * Per-step time outside the forward and the speculator, seconds: within the step (verification,
   * commit, the speculator's update) plus around it in the engine's loop (delivering the tokens,
   * admitting, the loop's turns). (Commit alone was counted until 2026-12-06: on the embedded
   * family that missed ~40 us a step, about one plain token, and the sized draft model drafted at
   * 0.89-0.95x of plain.)
   */
  get stepOverhead(): number {
    return this.overheadPrior + this.shared.value();
  }

  /**
   * stepOverhead from the steps of one speculator (the SpecEngine's, `owner` of its samples) alone:
   * what a step costs beside the forward depends on the strategy (its update, what runs inside its
   * verification, its trees' sizes), and strategies sharing a model (a benchmark's, an application's
   * decoders) priced each other's steps otherwise -- on the embedded family a 63-node Medusa's and a
   * 59-node EAGLE's steps made every sized strategy decode plainly. Without an owner, all steps'.
   */
  stepOverheadOf(owner: object | undefined): number {
    if (owner === undefined) return this.stepOverhead;
    return this.overheadPrior + (this.owned.get(owner)?.value() ?? 0);
  }

  /** overheadMeasured for one speculator's steps (stepOverheadOf). */
  overheadMeasuredOf(owner: object | undefined): boolean {
    if (owner === undefined) return this.overheadMeasured;
    return this.owned.get(owner)?.measured() ?? false;
  }

  /**
   * Speculative steps whose samples are skipped at first (per curve, so per model): a process's first
   * speculative steps run cold (code not yet optimized, caches cold) at up to 10x a warm step's
   * overhead, and a plain choice probes too rarely for many more samples to replace them. Until
   * OVERHEAD_MIN_SAMPLES warm samples exist the overhead counts as 0, so early steps explore rather
   * than settle on plain; the steps' forwards (observeStep) are skipped alike (the calibration
   * stands for them). (Measured on the embedded family, 2026-12-06: Medusa's steps stay 2-3x their
   * warm overhead for ~80 steps, but skipping 64 made the sized draft model explore at 0.81x of
   * plain through a whole benchmark; 8 it is.)
   */
  static readonly OVERHEAD_WARMUP = 8;

  /** Whether stepOverhead holds measured overhead (OVERHEAD_MIN_SAMPLES warm in-step samples), not only the prior. */
  get overheadMeasured(): boolean {
    return this.shared.measured();
  }
  static readonly OVERHEAD_MIN_SAMPLES = 4;
  /** Seconds without a speculative step after which a speculator's overhead samples expire (OverheadSamples.expire). */
  static readonly OVERHEAD_STALE_SECONDS = 30;
  static readonly OVERHEAD_STALE_MAX_SECONDS = 960;
  /** Milliseconds, monotonic (tests replace it). */
  static clock: () => number = () => performance.now();
  /** A fixed part of the step overhead (synthetic curves: fromFunction's stepOverhead). */
  private overheadPrior = 0;

  /** Predicted seconds of a forward over n >= 1 new tokens (linear beyond the last point). */
  predict(n: number): number {
    const { ns } = this;
    // Non-decreasing by the minimum over wider points: a narrower forward never costs more than a
    // wider one, and interference only adds time, so a point above a wider one is the noisy one.
    const ts = this.monotone;
    if (this.stale) {
      // (In place: an observation every step makes this run every step.)
      for (let i = ts.length - 1; i >= 0; i--) {
        const v = (this.ts[i] as RecentTimes).value();
        ts[i] = i + 1 < ts.length ? Math.min(v, ts[i + 1] as number) : v;
      }
      this.stale = false;
    }
    for (let i = 0; i < ns.length; i++) {
      const ni = ns[i] as number;
      if (n <= ni) {
        if (i === 0) return ts[0] as number;
        const n0 = ns[i - 1] as number;
        return (ts[i - 1] as number) + ((ts[i] as number) - (ts[i - 1] as number)) * ((n - n0) / (ni - n0));
      }
    }
    const k = ns.length - 1;
    if (k === 0) return ((ts[0] as number) * n) / (ns[0] as number);
    const slope = ((ts[k] as number) - (ts[k - 1] as number)) / ((ns[k] as number) - (ns[k - 1] as number));
    return (ts[k] as number) + slope * (n - (ns[k] as number));
  }

  /**
   * Takes in a measured forward of n tokens: a sample of the nearest grid point, scaled by the
   * curve's own ratio between the two sizes when n is not on the grid.
   */
  observe(n: number, seconds: number): void {
    if (this.frozen || !(seconds > 0) || !Number.isFinite(seconds) || !(n >= 1)) return;
    const { ns } = this;
    let at = 0;
    for (let i = 1; i < ns.length; i++) if (Math.abs((ns[i] as number) - n) < Math.abs((ns[at] as number) - n)) at = i;
    const grid = ns[at] as number;
    const scaled = grid === n ? seconds : (seconds * this.predict(grid)) / this.predict(n);
    (this.ts[at] as RecentTimes).add(scaled);
    this.stale = true;
    this.observations++;
  }

  /**
   * Takes in a speculative step's forward of n tokens (observe), once the curve's first
   * OVERHEAD_WARMUP speculative steps (counted by observeOverhead) are behind it.
   */
  observeStep(n: number, seconds: number): void {
    if (this.shared.seen >= ForwardCost.OVERHEAD_WARMUP) this.observe(n, seconds);
  }

  /**
   * Takes in a speculative step's time after its forward (seconds): verification, commit, update;
   * `owner`: the speculator whose step it was (also counted among all steps'). A native chain gives
   * one sample per call, its steps' mean (`steps` of them): per-step samples of one call share its
   * JavaScript, so one slow call filled the whole window and its lower quartile.
   */
  observeOverhead(seconds: number, owner?: object, steps = 1): void {
    if (this.frozen) return;
    this.shared.inStep(seconds, steps);
    if (owner !== undefined) this.samplesOf(owner).inStep(seconds, steps);
  }

  /** Takes in the time the engine's loop spent around a speculative step (seconds) of `owner`'s. */
  observeLoopOverhead(seconds: number, owner?: object): void {
    if (this.frozen) return;
    this.shared.loop(seconds);
    if (owner !== undefined) this.samplesOf(owner).loop(seconds);
  }

  private samplesOf(owner: object): OverheadSamples {
    let o = this.owned.get(owner);
    if (!o) this.owned.set(owner, (o = new OverheadSamples()));
    return o;
  }

  /** Per batch size: seconds of a plain step run in a native chain (lib/plain_chain.ts), all of it. */
  private readonly chained = new Map<number, RecentTimes>();

  /** Takes in a plain chain's seconds per step at this batch size. */
  observeChainStep(batch: number, seconds: number): void {
    if (this.frozen) return;
    let t = this.chained.get(batch);
    if (!t) this.chained.set(batch, (t = new RecentTimes()));
    t.add(seconds);
  }

  /**
   * Seconds of a plain step at this batch size when it runs in a chain (undefined until one ran):
   * the cost of decoding plainly where chains are used, with no step overhead on top.
   */
  chainStep(batch: number): number | undefined {
    const t = this.chained.get(batch);
    return t && t.count > 0 ? t.value() : undefined;
  }

  /** The curve's points (n, seconds). */
  points(): [number, number][] {
    return this.ns.map((n, i) => [n, (this.ts[i] as RecentTimes).value()]);
  }
}

// ---- calibration ---------------------------------------------------------------------------------

export interface CalibrationOptions {
  /** Forward sizes to measure (default CALIBRATION_SIZES, cut to what the context holds). */
  readonly sizes?: readonly number[];
  /** Committed context of the scratch sequence (default 32 tokens, cut to the context). */
  readonly prefix?: number;
  /** Timed rounds over the sizes at most (default 5; at least one). */
  readonly reps?: number;
  /**
   * Sizes stop at the first whose forward costs more than this many 1-token forwards (default 4):
   * wider trees would need more accepted tokens than that to pay, and the curve extrapolates.
   */
  readonly maxRatio?: number;
  /** Time for the timed rounds after the first, in 1-token forwards (default 20; at least 0.2 s). */
  readonly budget?: number;
}

/**
 * Measures c(n) on a scratch sequence of `model`: a committed prefix, then uncommitted chains of
 * n tokens (a forward that is not committed leaves the cache as it was). The sequence is freed.
 * Its cost is bounded for big models: a first pass finds the sizes worth measuring, then rounds
 * over them repeat while the time budget lasts.
 */
export async function calibrateForwardCost(model: CausalLM, opts: CalibrationOptions = {}): Promise<ForwardCost> {
  optionsArg(opts, 'calibrateForwardCost options', true);
  const V = model.config.vocabSize;
  const maxPos = model.config.maxPositions;
  // The scratch sequence takes KV pages: within what the cache has free (a request may hold the rest).
  const free = kvRoom(model);
  if (free < 2) throw codedError('E_KV_FULL', `calibrateForwardCost: the KV cache has ${free} free tokens; measuring needs 2 at least (a prefix and a forward)`);
  const room = Math.min(maxPos, free);
  const prefix = Math.max(1, Math.min(opts.prefix ?? 32, Math.floor(maxPos / 4), Math.floor(room / 2)));
  const candidates = (opts.sizes ?? CALIBRATION_SIZES).filter((n) => prefix + n <= room);
  const reps = Math.max(1, opts.reps ?? 5);
  if (candidates.length === 0) throw argError(`calibrateForwardCost: ${room === maxPos ? `a context of ${maxPos} positions` : `${room} free KV tokens`} leave no room to measure`);
  // Token ids spread over the vocabulary (the values do not change the cost).
  const tokens = (n: number, from: number): Int32Array => Int32Array.from({ length: n }, (_, i) => ((from + i) * 7919) % V);
  const seq = model.createSequence();
  const time = async (n: number, from: number): Promise<number> => {
    // A turn of the event loop first: each forward runs as a decode step's would (a tiny one on the
    // calling thread, see LlamaLoadOptions.syncForwardMaxMacs), not pushed to the pool by the
    // calibration's own run of calls.
    await new Promise((r) => setImmediate(r));
    const t0 = performance.now();
    const out = await model.forward([{ seq, tokens: tokens(n, from) }]);
    // The forward's own time where the model measures it: steps in native chains observe that time
    // (the crossing from JavaScript is part of a step's overhead, measured per speculator).
    const dt = out.seconds ?? (performance.now() - t0) / 1000;
    out.logits.dispose();
    out.hidden?.dispose();
    return dt;
  };
  let curve: ForwardCost;
  try {
    const pre = await model.forward([{ seq, tokens: tokens(prefix, 0) }]);
    pre.logits.dispose();
    pre.hidden?.dispose();
    model.commit([seq], [Int32Array.from({ length: prefix }, (_, i) => i)]);
    // Untimed pass (warm-up), which also finds where the sizes stop paying to measure.
    const first = Math.min(await time(candidates[0] as number, prefix), await time(candidates[0] as number, prefix));
    const sizes: number[] = [];
    const limit = (opts.maxRatio ?? 4) * first;
    for (const n of candidates) {
      sizes.push(n);
      // Measured twice before it ends the list: one slow sample is more often interference.
      if ((await time(n, prefix)) > limit && (await time(n, prefix)) > limit) break;
    }
    // Timed rounds, sizes interleaved in a rotating order so that a burst of another process hits
    // them alike (and no size always follows the widest one); every forward is a sample of its point.
    const times = sizes.map((): number[] => []);
    const budget = Math.max(0.2, (opts.budget ?? 20) * first);
    const t0 = performance.now();
    for (let r = 0; r < reps && (r === 0 || (performance.now() - t0) / 1000 < budget); r++) {
      for (let i = 0; i < sizes.length; i++) {
        const k = (i + r) % sizes.length;
        (times[k] as number[]).push(await time(sizes[k] as number, prefix + r + 1));
      }
    }
    const c = new ForwardCost(sizes.map((n, k): [number, number] => [n, Math.max(1e-9, Math.min(...(times[k] as number[])))]));
    sizes.forEach((n, k) => {
      for (const t of times[k] as number[]) c.observe(n, t);
    });
    curve = c;
  } finally {
    model.freeSequence(seq);
  }
  // What a plain step costs where the engine runs plain steps in native chains (a model with
  // greedyChain), before any chain has run: without it a sized strategy priced decoding plainly
  // as a standalone forward plus a step's overhead (the embedded target: 78 us against 40 us
  // chained) and drafted where drafting lost.
  // (Only where a forward is short: it costs ~18 more forwards, and beside a long forward a chain
  // saves little: a 1B model's CPU forward takes ~60 ms against a chain's ~30 us per call.)
  // (After the scratch sequence is freed: the chain's own takes pages.)
  if (curve.predict(1) <= CHAIN_PRIOR_MAX_FORWARD) {
    const chained = await chainTokenCost(model);
    if (chained !== undefined) curve.observeChainStep(1, chained);
  }
  return curve;
}

/** KV tokens a new sequence of `model` can take now (Infinity where the model does not report its pages). */
function kvRoom(model: CausalLM): number {
  const info = (model as CausalLM & { kvInfo?: () => { readonly freePages: number; readonly pageSize: number } }).kvInfo?.();
  return info ? info.freePages * info.pageSize : Infinity;
}

/**
 * forwardCost(model), or undefined while the model's KV cache has no room to measure it (E_KV_FULL:
 * requests hold every page). A sized speculator then proposes as an unsized one would (its trees
 * cut to the room) until a later prepare() measures the curve.
 */
export async function forwardCostIfRoom(model: CausalLM): Promise<ForwardCost | undefined> {
  try {
    return await forwardCost(model);
  } catch (e) {
    if ((e as { code?: unknown } | null)?.code === 'E_KV_FULL') return undefined;
    throw e;
  }
}

/** Calibration times a chained plain step (chainTokenCost) when a one-token forward takes at most this (seconds). */
export const CHAIN_PRIOR_MAX_FORWARD = 0.002;

const curves = new WeakMap<CausalLM, ForwardCost>();
const pending = new WeakMap<CausalLM, Promise<ForwardCost>>();
const chainSlopes = new WeakMap<CausalLM, Promise<number | undefined>>();

/**
 * Seconds per token of a draft chain (greedyChain) on `model`: the difference between chains of 1
 * and 5 steps, over 4, the fastest of 3 tries each, on a scratch sequence (freed). A chained token
 * costs less than a standalone one-token forward (no call, no wait, no result to hand over), which
 * is what ChainCost must assume otherwise. Once per model; undefined when the model has no chain
 * call or no room (then the standalone forward stands in).
 */
export function chainTokenCost(model: CausalLM): Promise<number | undefined> {
  let p = chainSlopes.get(model);
  if (!p) {
    // No room in the cache now: not measured, and not remembered as unmeasurable.
    if (kvRoom(model) < CHAIN_SLOPE_TOKENS) return Promise.resolve(undefined);
    p = measureChainSlope(model);
    chainSlopes.set(model, p);
  }
  return p;
}

/** KV tokens measureChainSlope's scratch sequence may take at most: 3 tries of chains of 1 and 5 steps, each after a fed token. */
const CHAIN_SLOPE_TOKENS = 3 * (1 + 1 + 1 + 5) + 1;

async function measureChainSlope(model: CausalLM): Promise<number | undefined> {
  const chain = model.greedyChain?.bind(model);
  const tries = 3;
  const [short, long] = [1, 5];
  const V = model.config.vocabSize;
  if (!chain || 2 + tries * (short + long) >= model.config.maxPositions) return undefined;
  const seq = model.createSequence();
  try {
    const best = [Infinity, Infinity];
    for (let r = 0; r < tries; r++) {
      for (const [i, k] of [short, long].entries()) {
        await new Promise((res) => setImmediate(res));
        const t0 = performance.now();
        await chain([{ seq, tokens: Int32Array.of((r * 7919 + k) % V) }], [k]);
        best[i] = Math.min(best[i] as number, (performance.now() - t0) / 1000);
      }
    }
    const slope = ((best[1] as number) - (best[0] as number)) / (long - short);
    return slope > 0 && Number.isFinite(slope) ? slope : undefined;
  } finally {
    model.freeSequence(seq);
  }
}

/** The model's cost curve, calibrating it at the first call (once per model, concurrent callers share it). */
export async function forwardCost(model: CausalLM): Promise<ForwardCost> {
  const known = curves.get(model);
  if (known) return known;
  let p = pending.get(model);
  if (!p) {
    p = calibrateForwardCost(model).then(
      (c) => {
        curves.set(model, c);
        pending.delete(model);
        return c;
      },
      (e: unknown) => {
        pending.delete(model);
        throw e;
      },
    );
    pending.set(model, p);
  }
  return p;
}

/** The model's cost curve if it has one already (no calibration). */
export function knownForwardCost(model: CausalLM): ForwardCost | undefined {
  return curves.get(model);
}

/** Pins the cost curve of a model (synthetic curves in tests; an engine that knows its costs). */
export function setForwardCost(model: CausalLM, cost: ForwardCost): void {
  curves.set(model, cost);
}
