// Lookahead decoding (Fu et al. 2024): a 2-D Jacobi window of N-1 levels x W columns guesses
// future tokens; each step the target runs the window (the lookahead branch) AND up to G cached
// n-grams whose first token is the root (the verification branch) in ONE forward with a custom
// mask. The window then shifts (level l <- level l+1, the last level <- the forward's argmax at the
// last level) and every column yields a new N-gram for the pool (keyed by its first token, LRU, at
// most G per key).
//
// Node layout of one step: [root, candidate trie..., level 0 (W tokens), ..., level N-2].
// The candidates form a trie (chains with a common prefix share its nodes): greedy verification
// follows one child per token, so with separate chains a longer match in a later chain sharing
// the first tokens of an earlier one would be lost.
// Relative positions: root 0; a candidate node at depth d: d; window token (l, j): l + j + 1.
// Window token (l, j) sees the root, level-0 tokens (0, j') for j' <= j, and its own column's
// tokens (l', j) for 1 <= l' <= l: a contiguous context of relative positions 0 .. l + j + 1.
// Window tokens are not candidates (parent -2 for verification), so exactness only rests on the
// candidate chains, which are deterministic (greedy: longest match; sampling: one-hot rejection).
//
// Sized for the hardware (the default): each step proposes the subtree of the candidate trie and
// the number of window columns with the most expected tokens per second under the target's cost
// curve, from online rates (first-token hits by candidate rank, continuation rates by depth, and
// the tokens window-harvested n-grams later yield per column run); N-grams of the emitted text also
// enter the pool, so with the window off it still finds the text's repeats.
import { optionsArg } from '../errors';
import { forwardCostIfRoom, RecentTimes, type ForwardCost } from '../cost_model';
import { pickRowsArgmax } from './draft_model';
import type { CausalLM } from '../models/causal_lm';
import { wholeChains } from '../plain_chain';
import { chainTree, emptyMask, loneRoot, setMaskBit, type PackedMask } from '../tree';
import { chooseSubtree, RankRates, selectNodes, sizingCost, stepCost, WEIGH_SHARE } from '../tree_sizing';
import { codedError, type Proposal, type ProposalBatch, type ProposeContext, type SpecSequence, type Speculator, type StepReport } from './speculator';

export interface LookaheadOptions {
  /** Window width (columns). */
  readonly W: number;
  /** N-gram size (the window has N - 1 levels). */
  readonly N: number;
  /** Candidate n-grams verified per step, and n-grams kept per first token. */
  readonly G: number;
  /** Also put the prompt's own N-grams in the pool at the start (default true). */
  readonly seedPoolFromPrompt?: boolean;
  /**
   * 'cost' (default): W and G are the most the step uses, the cost model picks the candidate
   * subtree and window columns per step (plain decoding when nothing pays). 'fixed': the whole
   * window and G candidates every step.
   */
  readonly sizing?: 'cost' | 'fixed';
}

export interface LookaheadLayout {
  /** Verification parents: -1 root, candidate chains under it, -2 for window tokens. */
  readonly parents: Int32Array;
  /** Positions relative to the root. */
  readonly relPositions: Int32Array;
  readonly mask: PackedMask;
  /** Index of window token (0, 0); token (l, j) is at windowStart + l * W + j. */
  readonly windowStart: number;
}

/** Tokens of one sequence in a masked forward (kMaxTreeTokens of cpp/core/ops_attention.h). */
const MAX_MASKED_TOKENS = 1024;

/** The node layout of one lookahead step with candidate chains of the given lengths. */
export function lookaheadLayout(W: number, N: number, candidateLengths: readonly number[], withWindow = true): LookaheadLayout {
  const parents = [-1];
  for (const len of candidateLengths) for (let d = 1; d <= len; d++) parents.push(d === 1 ? 0 : parents.length - 1);
  return lookaheadTreeLayout(N, Int32Array.from(parents), withWindow ? W : 0);
}

/**
 * The node layout of one lookahead step: candidates as a tree (candParents: node 0 the root, then
 * the candidate nodes in topological order) and the first `columns` columns of the window.
 */
export function lookaheadTreeLayout(N: number, candParents: Int32Array, columns: number): LookaheadLayout {
  const W = columns;
  const levels = columns > 0 ? N - 1 : 0;
  const windowStart = candParents.length;
  const n = windowStart + levels * columns;
  const parents = new Int32Array(n);
  const rel = new Int32Array(n);
  const mask = emptyMask(n);
  parents[0] = -1;
  setMaskBit(mask, 0, 0);
  for (let i = 1; i < windowStart; i++) {
    parents[i] = candParents[i] as number;
    rel[i] = (rel[parents[i] as number] as number) + 1;
    // A candidate node sees the root, its ancestors and itself.
    for (let k = i; k > 0; k = parents[k] as number) setMaskBit(mask, i, k);
    setMaskBit(mask, i, 0);
  }
  for (let l = 0; l < levels; l++) {
    for (let j = 0; j < W; j++) {
      const node = windowStart + l * W + j;
      parents[node] = -2;
      rel[node] = l + j + 1;
      setMaskBit(mask, node, 0);
      for (let jj = 0; jj <= j; jj++) setMaskBit(mask, node, windowStart + jj);
      for (let ll = 1; ll <= l; ll++) setMaskBit(mask, node, windowStart + ll * W + j);
    }
  }
  return { parents, relPositions: rel, mask, windowStart };
}

/** The mask of a step with G full-length (N - 1 token) candidates and the full window. */
export function lookaheadMask(W: number, N: number, G: number): PackedMask {
  return lookaheadLayout(W, N, new Array<number>(G).fill(N - 1)).mask;
}

/** N-gram pool: first token -> up to G continuations (N - 1 tokens), least recently used first. */
export class NgramPool {
  private readonly map = new Map<number, number[][]>();
  constructor(readonly G: number) {}

  add(ngram: readonly number[]): void {
    this.addSlice(ngram, 0, ngram.length);
  }

  /**
   * add(src.slice(start, end)) without the copies: a continuation already in the pool moves to the
   * most recent place as it is (the learning runs on every step, also the plain ones).
   */
  addSlice(src: readonly number[], start: number, end: number): void {
    const key = src[start] as number;
    const len = end - start - 1;
    let list = this.map.get(key);
    if (!list) {
      list = [];
      this.map.set(key, list);
    }
    let at = -1;
    for (let i = 0; i < list.length && at < 0; i++) {
      const c = list[i] as number[];
      let same = c.length === len;
      for (let k = 0; k < len && same; k++) same = c[k] === src[start + 1 + k];
      if (same) at = i;
    }
    list.push(at >= 0 ? (list.splice(at, 1)[0] as number[]) : src.slice(start + 1, end));
    if (list.length > this.G) list.shift();
  }

  /** Continuations for `first`, most recently used first. */
  get(first: number): number[][] {
    return (this.map.get(first) ?? []).slice().reverse();
  }

  get size(): number {
    let n = 0;
    for (const l of this.map.values()) n += l.length;
    return n;
  }
}

/** Candidate n-grams merged into a trie under the root (node 0); each node keeps its best (lowest) chain rank. */
export interface CandidateTrie {
  readonly tokens: Int32Array;
  readonly parents: Int32Array;
  readonly depth: Int32Array;
  /** The lowest rank (position in the candidate list) of the chains through the node; root -1. */
  readonly rank: Int32Array;
}

/** Merges candidate chains (best first) into a trie; nodes in topological order, first-seen order among siblings. */
export function candidateTrie(root: number, chains: readonly (readonly number[])[]): CandidateTrie {
  const tokens = [root];
  const parents = [-1];
  const depth = [0];
  const rank = [-1];
  const children = new Map<string, number>();
  chains.forEach((chain, r) => {
    let at = 0;
    for (const t of chain) {
      const key = `${at}:${t}`;
      let next = children.get(key);
      if (next === undefined) {
        next = tokens.length;
        children.set(key, next);
        tokens.push(t);
        parents.push(at);
        depth.push((depth[at] as number) + 1);
        rank.push(r);
      }
      at = next;
    }
  });
  return { tokens: Int32Array.from(tokens), parents: Int32Array.from(parents), depth: Int32Array.from(depth), rank: Int32Array.from(rank) };
}

interface LookaheadState {
  /** window[l][j]. */
  window: number[][];
  pool: NgramPool;
  /**
   * The last step's layout and window columns, when it ran the window. (Cleared by assigning
   * undefined, not `delete`: a deleted property turns the object into a slow dictionary-mode one.)
   */
  lastLayout?: LookaheadLayout | undefined;
  lastColumns?: number | undefined;
  /** The last step's candidates (sized mode: their outcome feeds the rates). */
  lastTrie?: CandidateTrie | undefined;
  /** N-grams harvested from the window that are still unused (sized mode: credited when accepted). */
  fromWindow: Set<string>;
  /** Sized mode: steps left that decode plainly without weighing again (see PLAIN_RECHECK_STEPS). */
  plainSteps: number;
  /** Sized mode: weighings in a row that chose a plain step. */
  plainRun: number;
}

/**
 * After sizing chose a plain step, the next PLAIN_RECHECK_STEPS steps without candidates decode
 * plainly without weighing again, twice as many after each further plain choice in a row (up to
 * MAX_PLAIN_RECHECK_STEPS). Steps with candidates skip the weighing too when it costs more than
 * WEIGH_SHARE of a one-token forward (the embedded family weighed three quarters of its steps, at
 * ~10-20 us against a ~70 us step); on a big model they are always weighed.
 */
const PLAIN_RECHECK_STEPS = 7;
const MAX_PLAIN_RECHECK_STEPS = 56;

export class LookaheadSpeculator implements Speculator {
  readonly name = 'lookahead';
  readonly wantsHidden = false;
  readonly wantsRowArgmax = true;
  readonly W: number;
  readonly N: number;
  readonly G: number;
  readonly seedPoolFromPrompt: boolean;
  readonly sized: boolean;
  /** Sized mode: P(the depth-1 candidate of rank r is right) at depth 0; P(a matched node's continuation is right) at depth d. */
  readonly firstRates = new RankRates((_d, r) => 0.3 / (r + 1));
  readonly deeperRates = new RankRates(() => 0.5);
  /** Sized mode: accepted tokens that came from window-harvested n-grams, and window columns run. */
  private windowCredit = 0;
  private windowColumns = 0;
  /** Sized mode: seconds a weighing (size()) takes, recent lower quartile. */
  private readonly weighSeconds = new RecentTimes();
  private target: CausalLM | undefined;
  private readonly states = new Map<number, LookaheadState>();

  constructor(opts: LookaheadOptions) {
    optionsArg(opts, 'lookahead options');
    this.W = opts.W;
    this.N = opts.N;
    this.G = opts.G;
    this.seedPoolFromPrompt = opts.seedPoolFromPrompt ?? true;
    this.sized = (opts.sizing ?? 'cost') === 'cost';
    const ok = (x: number, lo: number): boolean => Number.isInteger(x) && x >= lo;
    if (!ok(this.W, 1) || !ok(this.N, 2) || !ok(this.G, 1)) {
      throw codedError('E_ARG', `lookahead: need W >= 1, N >= 2, G >= 1 (integers), got W=${this.W}, N=${this.N}, G=${this.G}`);
    }
    if (opts.sizing !== undefined && opts.sizing !== 'cost' && opts.sizing !== 'fixed') throw codedError('E_ARG', `lookahead: sizing must be 'cost' or 'fixed', got '${String(opts.sizing)}'`);
    // One step is a masked forward of 1 + (W + G) * (N - 1) tokens; the native side takes at most
    // MAX_MASKED_TOKENS (kMaxTreeTokens), and a huge W would exhaust memory before getting there.
    const nodes = 1 + (this.W + this.G) * (this.N - 1);
    if (nodes > MAX_MASKED_TOKENS) {
      throw codedError('E_ARG', `lookahead: W=${this.W}, N=${this.N}, G=${this.G} make steps of ${nodes} tokens, more than the ${MAX_MASKED_TOKENS} of a masked forward (need 1 + (W + G) * (N - 1) <= ${MAX_MASKED_TOKENS})`);
    }
  }

  attach(model: CausalLM): void {
    this.target = model;
  }

  /** The n-gram pool of a sequence (tests). */
  pool(key: number): NgramPool | undefined {
    return this.states.get(key)?.pool;
  }

  /**
   * Sized mode: the plain run of the sequence weighed last. A new sequence starts from it (the window's
   * worth and the rates are shared, so a request after plain ones rechecks as rarely at once: starting
   * each request from 7 steps cut its plain chains 5 times in 128 tokens on the embedded family).
   */
  private lastPlainRun = 0;

  private state(s: SpecSequence): LookaheadState {
    let st = this.states.get(s.key);
    if (!st) {
      // Seed the window with prompt tokens picked by a fixed hash (deterministic per sequence).
      const prompt = s.history.slice(0, Math.max(1, s.promptLength));
      const window: number[][] = [];
      // Hash of the prompt, not of the sequence key: the same prompt gets the same window (reproducible runs).
      let h = 0x9e3779b9;
      for (const t of prompt) h = Math.imul(h ^ t, 0x01000193) >>> 0;
      for (let l = 0; l < this.N - 1; l++) {
        const row: number[] = [];
        for (let j = 0; j < this.W; j++) {
          h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) + 0x6d2b79f5;
          row.push(prompt[(h >>> 0) % prompt.length] as number);
        }
        window.push(row);
      }
      st = { window, pool: new NgramPool(this.G), fromWindow: new Set(), plainSteps: 0, plainRun: this.lastPlainRun, lastLayout: undefined, lastColumns: undefined, lastTrie: undefined };
      // The prompt's N-grams are free candidates (text often repeats its prompt).
      if (this.seedPoolFromPrompt) for (let i = 0; i + this.N <= prompt.length; i++) st.pool.add(prompt.slice(i, i + this.N));
      this.states.set(s.key, st);
    }
    return st;
  }

  async prefill(): Promise<void> {
    await this.prepare();
  }

  /** Sized mode: the target's cost curve (measured once per model). */
  async prepare(): Promise<void> {
    if (this.sized && this.target) await forwardCostIfRoom(this.target);
  }

  /** Sized mode: the candidate subtree and window columns with the most expected tokens per second. */
  private size(trie: CandidateTrie, columns: number, batch: number, cost: ForwardCost, maxNodes: number): { keep: Int32Array; columns: number } {
    const prob = new Float64Array(trie.tokens.length);
    prob[0] = 1;
    for (let i = 1; i < prob.length; i++) {
      const p = trie.parents[i] as number;
      const d = trie.depth[i] as number;
      // Siblings past the first (best-ranked) one are long shots below depth 1.
      const sib = d === 1 ? 1 : trie.parents.indexOf(p) === i ? 1 : 0.25;
      prob[i] = d === 1 ? this.firstRates.rate(0, trie.rank[i] as number) : (prob[p] as number) * this.deeperRates.rate(d - 1) * sib;
    }
    const perColumn = (this.windowCredit + 0.2) / (this.windowColumns + 4);
    const step = stepCost(cost, batch, undefined, this);
    let best: { keep: Int32Array; columns: number; tps: number } | undefined;
    for (const w of columns > 0 ? [0, columns] : [0]) {
      // The window's tokens ride along in the same forward; their worth is the tokens harvested n-grams yield later.
      const window = w * (this.N - 1);
      const pick = chooseSubtree(trie.parents, prob, (nodes) => step(nodes + window), { extraValue: perColumn * w, maxNodes: maxNodes - window });
      if (!best || pick.tokensPerSecond > best.tps) best = { keep: pick.keep, columns: w, tps: pick.tokensPerSecond };
    }
    return best as { keep: Int32Array; columns: number };
  }

  propose(seqs: readonly SpecSequence[], ctx: ProposeContext = {}): ProposalBatch {
    const cost = sizingCost(this.sized, this.target, ctx);
    const proposals: Proposal[] = seqs.map((s) => {
      const st = this.state(s);
      const root = s.history[s.history.length - 1] as number;
      // Weighing costs a sizeable part of a step: after a plain choice, skip it (and the lookup).
      const skip = cost !== undefined && st.plainSteps > 0 && this.weighSeconds.value() > WEIGH_SHARE * cost.predict(1);
      const chains = s.maxDepth > 0 && !skip ? st.pool.get(root).slice(0, this.G).map((c) => c.slice(0, s.maxDepth)) : [];
      // Run the window only while its positions fit the model.
      let columns = s.committed + this.N + this.W - 2 <= s.maxPosition ? this.W : 0;
      if (cost && st.plainSteps > 0 && (skip || chains.length === 0)) {
        // Nothing to verify (or not weighed, see above), and the window did not pay when last
        // weighed: a plain step, without weighing again.
        st.plainSteps--;
        st.lastLayout = undefined;
        return loneRoot(root);
      }
      let trie = candidateTrie(root, chains);
      if (cost) {
        // The window columns that fit maxNodes beside the root; the weighing fits the candidates beside them.
        columns = Math.min(columns, Math.max(0, Math.floor((s.maxNodes - 1) / (this.N - 1))));
        const t0 = performance.now();
        const choice = this.size(trie, columns, seqs.length, cost, s.maxNodes);
        this.weighSeconds.add((performance.now() - t0) / 1000);
        // Weighed to a plain step: the next few steps skip the weighing (more after each plain choice in a row).
        const plain = choice.columns === 0 && choice.keep.length === 1;
        st.plainRun = plain ? st.plainRun + 1 : 0;
        this.lastPlainRun = st.plainRun;
        st.plainSteps = plain ? wholeChains(this.target, seqs.length, Math.min(MAX_PLAIN_RECHECK_STEPS, PLAIN_RECHECK_STEPS * 2 ** (st.plainRun - 1))) : 0;
        const kept = selectNodes(trie, choice.keep);
        const depth = new Int32Array(choice.keep.length);
        const rank = new Int32Array(choice.keep.length);
        for (let j = 0; j < depth.length; j++) {
          depth[j] = trie.depth[choice.keep[j] as number] as number;
          rank[j] = trie.rank[choice.keep[j] as number] as number;
        }
        trie = { tokens: kept.tokens, parents: kept.parents, depth, rank };
        columns = choice.columns;
        st.lastTrie = trie;
      }
      // Fixed mode, at most maxNodes nodes (the KV room kept for the tree; sized mode chose within
      // it): the window takes up to half the room beyond the root, the candidates' first nodes the
      // rest, and the window whatever they leave. (The window first left a 3-node room no candidate:
      // nothing was ever accepted. Candidates first would stop the window that finds them.)
      const levels = this.N - 1;
      if (trie.tokens.length + columns * levels > s.maxNodes) {
        const half = Math.min(columns, Math.floor((s.maxNodes - 1) / 2 / levels));
        const n = Math.max(1, Math.min(trie.tokens.length, s.maxNodes - half * levels));
        if (n < trie.tokens.length) trie = { tokens: trie.tokens.slice(0, n), parents: trie.parents.slice(0, n), depth: trie.depth.slice(0, n), rank: trie.rank.slice(0, n) };
        columns = Math.min(columns, Math.floor((s.maxNodes - n) / levels));
        if (cost) st.lastTrie = trie;
      }
      // Without the window the candidates are an ordinary tree (its ancestor mask and depth positions).
      if (columns === 0 && cost) {
        st.lastLayout = undefined;
        return { tokens: trie.tokens, parents: trie.parents };
      }
      const layout = lookaheadTreeLayout(this.N, trie.parents, columns);
      if (columns > 0) {
        st.lastLayout = layout;
        st.lastColumns = columns;
      } else st.lastLayout = undefined;
      const tokens = new Int32Array(layout.parents.length);
      tokens.set(trie.tokens);
      let i = trie.tokens.length;
      for (const row of st.window) for (let j = 0; j < columns; j++) tokens[i++] = row[j] as number;
      const positions = Int32Array.from(layout.relPositions, (r) => s.committed + r);
      return { tokens, parents: layout.parents, positions, mask: layout.mask };
    });
    return cost ? { proposals, plainSteps: this.plainStepsAhead(seqs, proposals, cost) } : { proposals };
  }

  /**
   * This step and the next ones that are sure to be plain as well: every sequence proposed its root
   * alone, and the weighing is dear enough to be skipped for its remaining plain steps (propose()'s
   * `skip`: those steps then decode plainly whatever the pool holds).
   */
  private plainStepsAhead(seqs: readonly SpecSequence[], proposals: readonly Proposal[], cost: ForwardCost): number {
    if (!(this.weighSeconds.value() > WEIGH_SHARE * cost.predict(1))) return 1;
    let ahead = Infinity;
    for (let b = 0; b < seqs.length; b++) {
      if ((proposals[b] as Proposal).tokens.length !== 1) return 1;
      ahead = Math.min(ahead, this.states.get((seqs[b] as SpecSequence).key)?.plainSteps ?? 0);
    }
    return 1 + (ahead === Infinity ? 0 : ahead);
  }

  /** The engine ran steps[b] plain steps of sequence b at once (after plainSteps): their bookkeeping and n-grams. */
  updatePlain(seqs: readonly SpecSequence[], steps: readonly number[], ctx: ProposeContext = {}): void {
    const sizedNow = sizingCost(this.sized, this.target, ctx) !== undefined;
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      const st = this.states.get(s.key);
      if (!st) continue;
      const m = steps[b] as number;
      st.plainSteps = Math.max(0, st.plainSteps - (m - 1));
      st.lastLayout = undefined;
      // As m updates of lone roots would: the pool learns the n-grams the m new tokens complete.
      if (sizedNow) this.learn(s, st, ROOT_ONLY, Int32Array.from(s.history.slice(s.history.length - m)));
    }
  }

  /** Sized mode: the outcome of the last step's candidates feeds the rates; the emitted text feeds the pool. */
  private learn(s: SpecSequence, st: LookaheadState, accepted: Int32Array, emitted: Int32Array): void {
    const trie = st.lastTrie;
    st.lastTrie = undefined;
    if (trie && trie.tokens.length > 1) {
      const firstHit = Array.from(trie.parents).findIndex((p, i) => p === 0 && trie.tokens[i] === emitted[0]);
      this.firstRates.record(0, firstHit >= 0 ? (trie.rank[firstHit] as number) : -1);
      // Each accepted node with children was a trial of its continuation.
      for (let k = 1; k < accepted.length; k++) {
        const node = accepted[k] as number;
        if (!trie.parents.includes(node)) continue;
        this.deeperRates.record(trie.depth[node] as number, k + 1 < accepted.length ? 0 : -1);
      }
      if (accepted.length > 1) {
        // Credit the window when the accepted path came from an n-gram it harvested.
        const stepRoot = s.history[s.history.length - emitted.length - 1] as number;
        const key = ngramKey(stepRoot, Array.from(emitted.subarray(0, accepted.length - 1)));
        for (const k of st.fromWindow) {
          if (k.startsWith(key)) {
            this.windowCredit += accepted.length - 1;
            st.fromWindow.delete(k);
            break;
          }
        }
      }
    }
    // The N-grams the new tokens complete (the window-less pool grows from the text itself).
    const h = s.history;
    for (let e = h.length - emitted.length; e < h.length; e++) if (e - this.N + 1 >= 0) st.pool.addSlice(h, e - this.N + 1, e + 1);
  }

  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext = {}): void {
    const sizedNow = sizingCost(this.sized, this.target, ctx) !== undefined;
    // (Loops, not forEach/some: this runs every step, also the plain ones.)
    let windows = false;
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      const st = this.states.get(s.key);
      if (!st) continue;
      if (sizedNow) this.learn(s, st, report.acceptedNodes[b] as Int32Array, report.emitted[b] as Int32Array);
      windows ||= st.lastLayout !== undefined;
    }
    if (!windows) return;
    const rows = report.output.indptr[seqs.length] as number;
    // The engine reads the argmaxes with the verification result (wantsRowArgmax): no extra wait.
    const ids = report.rowArgmax ?? pickRowsArgmax(report.output, Int32Array.from({ length: rows }, (_, r) => r));
    seqs.forEach((s, b) => {
      const st = this.states.get(s.key);
      const layout = st?.lastLayout;
      if (!st || !layout) return;
      const cols = st.lastColumns ?? this.W;
      const base = report.output.indptr[b] as number;
      const last = this.N - 2;
      const outs = Array.from({ length: cols }, (_, j) => ids[base + layout.windowStart + last * cols + j] as number);
      // Harvest one N-gram per column run, then shift those columns up by one level.
      for (let j = 0; j < cols; j++) {
        const ngram = [...st.window.map((row) => row[j] as number), outs[j] as number];
        st.pool.add(ngram);
        if (sizedNow) st.fromWindow.add(ngramKey(ngram[0] as number, ngram.slice(1)));
      }
      // The oldest harvests go first (a Set iterates in insertion order): the pool keeps few per key anyway.
      for (const k of st.fromWindow) {
        if (st.fromWindow.size <= FROM_WINDOW_KEPT) break;
        st.fromWindow.delete(k);
      }
      if (sizedNow) this.windowColumns += cols;
      for (let l = 0; l < last; l++) for (let j = 0; j < cols; j++) (st.window[l] as number[])[j] = (st.window[l + 1] as number[])[j] as number;
      for (let j = 0; j < cols; j++) (st.window[last] as number[])[j] = outs[j] as number;
      st.lastLayout = undefined;
    });
  }

  release(seq: SpecSequence): void {
    this.states.delete(seq.key);
  }

  dispose(): void {
    this.states.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** A lone root's accepted path. */
const ROOT_ONLY = Int32Array.of(0);

/** Window-harvested n-grams remembered per sequence for crediting the window. */
const FROM_WINDOW_KEPT = 256;

/** "first:t1,t2,...," (a path's key is a prefix of the keys of the n-grams that contain it). */
function ngramKey(first: number, rest: readonly number[]): string {
  return `${first}:${rest.map((t) => `${t},`).join('')}`;
}
