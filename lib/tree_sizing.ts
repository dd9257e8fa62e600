// Tree sizing: online acceptance statistics per tree position, and the choice of the proposal
// with the most expected tokens per second under a step cost (lib/cost_model.ts). Every choice
// here is a pure function of its inputs (rates and a cost function), so it is deterministic and
// testable with synthetic curves; plain decoding (the root alone) is always one of the options.
//
// Expected tokens of a tree = 1 (the bonus token) + the sum over its draft nodes of P(node on the
// accepted path). With deterministic candidates (greedy, or one-hot drafts) siblings are exclusive
// and a node's probability is its parent's times the conditional rate of its own position, so the
// best tree of n nodes is grown greedily from the root, best frontier node first (Sequoia-style).
import { knownForwardCost, RecentTimes, type ForwardCost } from './cost_model';
import type { CausalLM } from './models/causal_lm';
import type { ProposeContext } from './strategies/speculator';

/**
 * Hit rates of candidates by (depth, rank), conditional on the depth being reached: per depth,
 * at most one rank hits per trial (the ranks are exclusive guesses for the same token). A Beta
 * prior of `weight` trials with mean prior(depth, rank) keeps early estimates sane.
 */
export class RankRates {
  private readonly trials: number[] = [];
  private readonly hits: number[][] = [];

  constructor(
    private readonly prior: (depth: number, rank: number) => number,
    private readonly weight = 2,
  ) {}

  /** One trial at `depth` (0-based): `rank` hit, or -1 when no candidate did. */
  record(depth: number, rank: number): void {
    while (this.trials.length <= depth) {
      this.trials.push(0);
      this.hits.push([]);
    }
    this.trials[depth] = (this.trials[depth] as number) + 1;
    if (rank >= 0) {
      const h = this.hits[depth] as number[];
      while (h.length <= rank) h.push(0);
      h[rank] = (h[rank] as number) + 1;
    }
  }

  rate(depth: number, rank = 0): number {
    const n = this.trials[depth] ?? 0;
    const h = this.hits[depth]?.[rank] ?? 0;
    return (h + this.weight * this.prior(depth, rank)) / (n + this.weight);
  }

  /**
   * An optimistic rate: the estimate plus one standard error of a rate seen over this depth's trials
   * and the prior's weight, at most 1. A choice made on it explores while the evidence is thin and
   * comes to the estimate as trials accumulate (one miss early on no longer locks a speculator into
   * plain decoding, where it would learn nothing until a probe).
   */
  upper(depth: number, rank = 0): number {
    const p = this.rate(depth, rank);
    const n = (this.trials[depth] ?? 0) + this.weight;
    return Math.min(1, p + Math.sqrt(Math.max(0, p * (1 - p)) / n));
  }

  /** Trials recorded at each depth (statistics). */
  trialCounts(): number[] {
    return this.trials.slice();
  }
}

/** What a choice is worth: its size, expected tokens per step and per second. */
/**
 * Seconds of a batched draft call as a function of its rows: the recent lower quartile per
 * power-of-two bucket of rows, interpolated between the buckets seen (proportional above the
 * largest, flat below the smallest). Why not a cost per row: on a CPU a draft layer's call costs
 * mostly its weights' read, so a 1-row call costs nearly what a 4-row one does; charged per row, a
 * chain of 1-row levels looked cheap and wide levels dear (an EAGLE head on the widened, deepened
 * family: width 4 chosen, 1.81x plain, where top-1 chains gave 2.05x).
 */
export class RowsCost {
  private readonly buckets = new Map<number, RecentTimes>();

  add(rows: number, seconds: number): void {
    if (!(rows >= 1)) return;
    const key = Math.round(Math.log2(rows));
    let t = this.buckets.get(key);
    if (!t) this.buckets.set(key, (t = new RecentTimes()));
    t.add(seconds);
  }

  /** The predicted seconds of a call of `rows` rows (0 before anything was measured). */
  predict(rows: number): number {
    if (this.buckets.size === 0) return 0;
    const x = Math.log2(Math.max(1, rows));
    let lo: number | undefined;
    let hi: number | undefined;
    for (const k of this.buckets.keys()) {
      if (k <= x && (lo === undefined || k > lo)) lo = k;
      if (k >= x && (hi === undefined || k < hi)) hi = k;
    }
    const at = (k: number): number => (this.buckets.get(k) as RecentTimes).value();
    if (lo !== undefined && hi !== undefined) {
      if (lo === hi) return at(lo);
      const r0 = 2 ** lo, r1 = 2 ** hi;
      return at(lo) + ((at(hi) - at(lo)) * (rows - r0)) / (r1 - r0);
    }
    if (lo !== undefined) return (at(lo) * rows) / 2 ** lo;
    return at(hi as number);
  }
}

/**
 * A draft's confidence turned into an acceptance estimate, learned online: a node's conditional
 * probability p (given its parent) and its rank among its siblings (0 = the draft's top choice, 1,
 * 2 or more) select a bin (ten of p per rank); each bin keeps the nodes tried there (their parent
 * was accepted) and those accepted, and estimates (hits + weight * p) / (tried + weight): the raw p
 * until evidence says otherwise. Why: under greedy verification a node is accepted when it is the
 * target's argmax, which for the draft's top choice happens far more often than the draft's
 * probability of it when the target's own distribution is spread (a head trained to match that
 * distribution is right in its argmax and modest in its probabilities), and for the others less
 * often; raw confidence cuts trees that would be accepted and keeps siblings that would not.
 */
export class ConfidenceCalibration {
  private static readonly RANKS = 3;
  private readonly tried = new Float64Array(10 * ConfidenceCalibration.RANKS);
  private readonly hits = new Float64Array(10 * ConfidenceCalibration.RANKS);

  constructor(private readonly weight = 4) {}

  private static bin(p: number, rank: number): number {
    const r = Math.min(ConfidenceCalibration.RANKS - 1, Math.max(0, rank));
    return r * 10 + Math.min(9, Math.max(0, Math.floor(p * 10)));
  }

  /** A node of confidence p and sibling rank `rank` was tried (its parent accepted): accepted or not. */
  record(p: number, rank: number, accepted: boolean): void {
    const b = ConfidenceCalibration.bin(p, rank);
    this.tried[b] = (this.tried[b] as number) + 1;
    if (accepted) this.hits[b] = (this.hits[b] as number) + 1;
  }

  estimate(p: number, rank: number): number {
    const b = ConfidenceCalibration.bin(p, rank);
    return ((this.hits[b] as number) + this.weight * clamp01(p)) / ((this.tried[b] as number) + this.weight);
  }
}

export interface SizeChoice {
  /** Draft tokens (chain length, or tree nodes without the root). 0 = plain decoding. */
  readonly size: number;
  readonly expectedTokens: number;
  readonly tokensPerSecond: number;
}

/**
 * Seconds of one step that verifies `nodes` tokens (root included) for each of `batch` sequences:
 * the batch's forward and per-step overhead shared by its sequences, plus the speculator's own
 * cost of producing that proposal. `owner`: the speculator whose measured step overhead applies
 * (ForwardCost.stepOverheadOf; every speculator's steps' without).
 */
export function stepCost(cost: ForwardCost, batch = 1, speculatorCost: (nodes: number) => number = () => 0, owner?: object): (nodes: number) => number {
  const b = Math.max(1, batch);
  // A plain step (one node) is a chained one where chains ran: no return to JavaScript per step.
  const chain = cost.chainStep(b);
  const overhead = cost.stepOverheadOf(owner);
  return (nodes) => {
    const step = (cost.predict(b * nodes) + overhead) / b;
    return (nodes === 1 && chain !== undefined ? Math.min(step, chain / b) : step) + speculatorCost(nodes);
  };
}

/**
 * The chain length k in [0, maxK] with the most expected tokens per second; alpha(i) = P(draft
 * i + 1 accepted | drafts 1..i accepted); E(k) = 1 + sum_{j<=k} prod_{i<j} alpha(i); a step of k
 * drafts costs cost(k + 1). Ties go to the shorter chain.
 */
export function chooseChainLength(alpha: (i: number) => number, maxK: number, cost: (nodes: number) => number): SizeChoice {
  let best: SizeChoice = { size: 0, expectedTokens: 1, tokensPerSecond: 1 / cost(1) };
  let expected = 1;
  let reach = 1;
  for (let k = 1; k <= maxK; k++) {
    reach *= clamp01(alpha(k - 1));
    expected += reach;
    const tps = expected / cost(k + 1);
    if (tps > best.tokensPerSecond) best = { size: k, expectedTokens: expected, tokensPerSecond: tps };
  }
  return best;
}

export interface SubtreeChoice extends SizeChoice {
  /** Kept node indices, ascending, root (0) first: a prefix-closed subtree. */
  readonly keep: Int32Array;
  /** Every node with prob > 0 in the order the subtrees grow (root first): the subtree of c nodes is its first c. */
  readonly order: Int32Array;
  /** Expected tokens of the subtree of c nodes at [c - 1] (extraValue included). */
  readonly expectedByCount: Float64Array;
}

/**
 * The prefix-closed subtree (root kept) with the most expected tokens per second. prob[i] = P(node
 * i is on the accepted path), non-increasing from parent to child; parents[i] < i. The subtree of
 * each size is grown from the root by adding the most probable frontier node (lowest index on
 * ties); sizes up to maxNodes (root included) are compared, ties going to the smaller tree.
 * `extraValue` adds expected tokens that do not come from the tree (lookahead's window).
 */
export function chooseSubtree(
  parents: Int32Array,
  prob: ArrayLike<number>,
  cost: (nodes: number) => number,
  opts: { readonly maxNodes?: number; readonly extraValue?: number } = {},
): SubtreeChoice {
  const n = parents.length;
  const maxNodes = Math.min(n, opts.maxNodes ?? n);
  const extra = opts.extraValue ?? 0;
  const taken = new Uint8Array(n);
  taken[0] = 1;
  const order: number[] = [0];
  let expected = 1 + extra;
  const expectedByCount: number[] = [expected];
  let best = { count: 1, expectedTokens: expected, tokensPerSecond: expected / cost(1) };
  // Most probable first, lower index on ties: since a child is never more probable than its parent
  // (and comes after it), this order adds every node after its parent, i.e. it is the greedy
  // frontier growth; a node whose parent is not in yet (a malformed prob) waits for the next pass.
  let m = 0;
  const ranked = new Int32Array(n - 1);
  for (let i = 1; i < n; i++) if ((prob[i] as number) > 0) ranked[m++] = i;
  // Insertion sort: tens of nodes, mostly in order already (choice trees list likely nodes first).
  // A large pool (EAGLE's expansion of a forced wide, deep tree: 64 x 32 gave 131k nodes, 90 s a
  // run) is sorted in n log n.
  if (m > 256) {
    ranked.subarray(0, m).sort((x, y) => (prob[y] as number) - (prob[x] as number) || x - y);
  } else for (let i = 1; i < m; i++) {
    const x = ranked[i] as number;
    const px = prob[x] as number;
    let j = i - 1;
    for (; j >= 0; j--) {
      const y = ranked[j] as number;
      const py = prob[y] as number;
      if (py > px || (py === px && y < x)) break;
      ranked[j + 1] = y;
    }
    ranked[j + 1] = x;
  }
  for (let progress = true; progress && order.length < maxNodes; ) {
    progress = false;
    for (let r = 0; r < m; r++) {
      const pick = ranked[r] as number;
      if (order.length >= maxNodes) break;
      if (taken[pick] || !taken[parents[pick] as number]) continue;
      progress = true;
      taken[pick] = 1;
      order.push(pick);
      expected += clamp01(prob[pick] as number);
      expectedByCount.push(expected);
      const tps = expected / cost(order.length);
      if (tps > best.tokensPerSecond) best = { count: order.length, expectedTokens: expected, tokensPerSecond: tps };
    }
  }
  const keep = Int32Array.from(order.slice(0, best.count)).sort();
  return {
    keep,
    size: best.count - 1,
    expectedTokens: best.expectedTokens,
    tokensPerSecond: best.tokensPerSecond,
    order: Int32Array.from(order),
    expectedByCount: Float64Array.from(expectedByCount),
  };
}

/**
 * What plans of each size (node count) gave against what the model predicted for them: tokens per
 * step and, where the steps were timed, seconds per step; recent steps weigh more (half-life
 * HALF_LIFE steps of any size: a size not in use is tried again after ~200 steps). Why: the rates a
 * speculator measures are measured under the plan in use, and where the text has structure the
 * steps meet it differently under another plan -- on the embedded family Medusa's heads were right
 * 0.94/0.88/0.90 of the time at depths 1-3 with 4-node steps and 1.0/0.96/0.96 with 5-node steps,
 * so 5 nodes gave 4.70 tokens a step against a predicted 4.2; and the curve c(n) is shared by
 * everything that runs on the model -- beside draft-model decoders on the same target its 6-token
 * point read 99 us against 77 us in Medusa's own steps. The sized Medusa kept 4 nodes and ran at
 * 1.38x of plain where the fixed 5-node chain ran at 1.7x.
 */
export class PlanOutcomes {
  static readonly HALF_LIFE = 128;
  /** Decayed steps a size needs before its correction counts (6 steps in a row make 5.9). */
  static readonly MIN_WEIGHT = 5;
  private readonly sizes = new Map<number, Outcome>();
  private clock = 0;

  /**
   * One step of a plan of `size` nodes: `predicted` tokens expected when it was chosen, `realized`
   * emitted; with `seconds`, the step's predicted and measured seconds (per sequence).
   */
  record(size: number, predicted: number, realized: number, seconds?: { readonly predicted: number; readonly realized: number }): void {
    if (!(predicted > 0) || !(realized >= 0)) return;
    this.clock++;
    let e = this.sizes.get(size);
    if (!e) this.sizes.set(size, (e = { real: 0, predicted: 0, weight: 0, realS: 0, predictedS: 0, weightS: 0, at: this.clock }));
    this.decay(e);
    e.real += realized;
    e.predicted += predicted;
    e.weight += 1;
    if (seconds && seconds.predicted > 0 && seconds.realized > 0) {
      e.realS += seconds.realized;
      e.predictedS += seconds.predicted;
      e.weightS += 1;
    }
  }

  /**
   * Realized over predicted tokens per second of plans of this size (tokens per step where the
   * steps were not timed), or undefined with too few recent steps.
   */
  correction(size: number): number | undefined {
    const e = this.sizes.get(size);
    if (!e) return undefined;
    this.decay(e);
    if (!(e.weight >= PlanOutcomes.MIN_WEIGHT)) return undefined;
    const tokens = e.real / e.predicted;
    return e.weightS >= PlanOutcomes.MIN_WEIGHT ? (tokens * e.predictedS) / e.realS : tokens;
  }

  private decay(e: Outcome): void {
    if (e.at === this.clock) return;
    const f = 0.5 ** ((this.clock - e.at) / PlanOutcomes.HALF_LIFE);
    e.real *= f;
    e.predicted *= f;
    e.weight *= f;
    e.realS *= f;
    e.predictedS *= f;
    e.weightS *= f;
    e.at = this.clock;
  }
}

interface Outcome {
  real: number;
  predicted: number;
  weight: number;
  realS: number;
  predictedS: number;
  weightS: number;
  at: number;
}

/**
 * A plan's size from a subtree choice and what plans of each size gave (PlanOutcomes): the size with
 * the most corrected expected tokens per second (sizes >= 2). A size without recent outcomes borrows
 * the correction of the nearest size that has some (what misled the prediction -- a cost curve priced
 * by other steps, rates measured under another plan -- misleads it for the sizes beside it too; with
 * its own prediction alone, a size out of use looked worse than the corrected one in use and was
 * never tried again). Once the best size has outcomes of its own, the best size without any whose
 * value is within EXPLORE_SHARE of it is tried (a near tie is not decided by borrowed numbers). For
 * a choice that speculates (size >= 1). Returns the node count.
 */
export function choosePlanSize(choice: SubtreeChoice, cost: (nodes: number) => number, outcomes: PlanOutcomes): { count: number; explore: boolean } {
  const exp = choice.expectedByCount;
  // Sizes up to twice the predicted best's (a correction past that is not credible) and their values.
  const last = Math.min(exp.length, 2 * (choice.size + 1) + 1);
  const own = new Array<number | undefined>(last + 1);
  let measured = false;
  for (let c = 2; c <= last; c++) measured = (own[c] = outcomes.correction(c)) !== undefined || measured;
  const value = new Float64Array(last + 1);
  let best = choice.size + 1;
  let bestValue = -Infinity;
  for (let c = 2; c <= last; c++) {
    let corr = own[c];
    // The nearest measured size's (the smaller one on a tie).
    for (let d = 1; corr === undefined && measured && (c - d >= 2 || c + d <= last); d++) corr = (c - d >= 2 ? own[c - d] : undefined) ?? (c + d <= last ? own[c + d] : undefined);
    value[c] = ((exp[c - 1] as number) / cost(c)) * (corr ?? 1);
    if ((value[c] as number) > bestValue) {
      bestValue = value[c] as number;
      best = c;
    }
  }
  // (The best size itself unmeasured: it is the one to measure first.)
  if (!(bestValue > 0) || own[best] === undefined) return { count: best, explore: own[best] === undefined && measured };
  let explore = 0;
  let exploreValue = EXPLORE_SHARE * bestValue;
  for (let c = 2; c <= last; c++) {
    if (c === best || own[c] !== undefined) continue;
    if ((value[c] as number) >= exploreValue) {
      exploreValue = value[c] as number;
      explore = c;
    }
  }
  return explore > 0 ? { count: explore, explore: true } : { count: best, explore: false };
}
export const EXPLORE_SHARE = 0.9;

/** Node probabilities of a tree whose node i guesses rank[i] at depth depth[i] (root: 1). */
export function treeProbabilities(parents: Int32Array, rate: (node: number) => number): Float64Array {
  const p = new Float64Array(parents.length);
  p[0] = 1;
  for (let i = 1; i < parents.length; i++) p[i] = (p[parents[i] as number] as number) * clamp01(rate(i));
  return p;
}

function clamp01(x: number): number {
  return x > 1 ? 1 : x > 0 ? x : 0;
}

/** The nodes `keep` (ascending, root first, prefix-closed) of a tree, parents renumbered. */
export function selectNodes<T extends { readonly tokens: Int32Array; readonly parents: Int32Array }>(tree: T, keep: Int32Array): { tokens: Int32Array; parents: Int32Array } {
  const at = new Int32Array(tree.parents.length).fill(-1);
  const tokens = new Int32Array(keep.length);
  const parents = new Int32Array(keep.length);
  // (Plain loops: Int32Array.from with a map function iterates slowly, and this runs every step.)
  for (let i = 0; i < keep.length; i++) {
    const node = keep[i] as number;
    at[node] = i;
    tokens[i] = tree.tokens[node] as number;
    const p = tree.parents[node] as number;
    parents[i] = p < 0 ? p : (at[p] as number);
  }
  return { tokens, parents };
}

/**
 * The cost curve a sized speculator goes by this step, or undefined: not sized or no curve yet.
 * Sampled steps are sized too: the speculators that call this propose deterministic drafts, whose
 * sampled tokens do not depend on the tree verified (spec_math.h: one draw per emitted token), so a
 * choice driven by timings changes neither a seed's output nor a sequence's output in its batch. A
 * speculator whose sampled tokens do depend on its trees (Medusa's typical acceptance; drafts with
 * distributions) keeps its fixed shape when sampling (`sized` false then).
 */
export function sizingCost(sized: boolean, target: CausalLM | undefined, _ctx: ProposeContext): ForwardCost | undefined {
  return sized && target ? knownForwardCost(target) : undefined;
}

/**
 * After this many consecutive plain steps a sized speculator proposes once more, so its
 * acceptance statistics (and with them the choice) can recover when the text gets easier.
 */
export const PROBE_AFTER_PLAIN_STEPS = 32;

/**
 * The interval after a probe the choice ignored: twice the last, up to 256 plain steps. (A probe
 * costs more than a plain step: the draft catches up on the tokens it skipped, Medusa's heads run
 * cold; while nothing pays, probes get rarer.)
 */
export function backedOffProbeInterval(interval: number): number {
  return Math.min(256, 2 * interval);
}

/**
 * A speculator that weighs its proposal every step (a lookup, then the sizing) stops weighing for
 * a few steps after choosing a plain step when a weighing costs more than this share of the
 * target's one-token forward: a small model's step (~70 us on the embedded family) is then
 * comparable to the ~10-20 us of weighing, a big model's never is.
 */
export const WEIGH_SHARE = 0.02;
