// Lookahead decoding (Fu et al. 2024): a 2-D Jacobi window of N-1 levels x W columns guesses
// future tokens; each step the target runs the window (the lookahead branch) AND up to G cached
// n-grams whose first token is the root (the verification branch) in ONE forward with a custom
// mask. The window then shifts (level l <- level l+1, the last level <- the forward's argmax at the
// last level) and every column yields a new N-gram for the pool (keyed by its first token, LRU, at
// most G per key).
//
// Node layout of one step: [root, candidate chains..., level 0 (W tokens), ..., level N-2].
// Relative positions: root 0; a candidate node at depth d: d; window token (l, j): l + j + 1.
// Window token (l, j) sees the root, level-0 tokens (0, j') for j' <= j, and its own column's
// tokens (l', j) for 1 <= l' <= l: a contiguous context of relative positions 0 .. l + j + 1.
// Window tokens are not candidates (parent -2 for verification), so exactness only rests on the
// candidate chains, which are deterministic (greedy: longest match; sampling: one-hot rejection).
import { pickRowsArgmax } from './draft_model';
import type { CausalLM } from '../models/causal_lm';
import { emptyMask, setMaskBit, type PackedMask } from '../tree';
import { codedError, type Proposal, type ProposalBatch, type SpecSequence, type Speculator, type StepReport } from './speculator';

export interface LookaheadOptions {
  /** Window width (columns). */
  readonly W: number;
  /** N-gram size (the window has N - 1 levels). */
  readonly N: number;
  /** Candidate n-grams verified per step, and n-grams kept per first token. */
  readonly G: number;
  /** Also put the prompt's own N-grams in the pool at the start (default true). */
  readonly seedPoolFromPrompt?: boolean;
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
  const levels = withWindow ? N - 1 : 0;
  const nCand = candidateLengths.reduce((a, b) => a + b, 0);
  const windowStart = 1 + nCand;
  const n = windowStart + levels * W;
  const parents = new Int32Array(n);
  const rel = new Int32Array(n);
  const mask = emptyMask(n);
  parents[0] = -1;
  setMaskBit(mask, 0, 0);
  let i = 1;
  for (const len of candidateLengths) {
    for (let d = 1; d <= len; d++, i++) {
      parents[i] = d === 1 ? 0 : i - 1;
      rel[i] = d;
      // A chain node sees the root, its chain predecessors and itself.
      setMaskBit(mask, i, 0);
      for (let k = i - d + 1; k <= i; k++) setMaskBit(mask, i, k);
    }
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
    const key = ngram[0] as number;
    const rest = ngram.slice(1);
    let list = this.map.get(key);
    if (!list) {
      list = [];
      this.map.set(key, list);
    }
    const at = list.findIndex((c) => c.length === rest.length && c.every((t, k) => t === rest[k]));
    if (at >= 0) list.splice(at, 1);
    list.push(rest);
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

interface LookaheadState {
  /** window[l][j]. */
  window: number[][];
  pool: NgramPool;
  /** The last step's layout, when it ran the window. */
  lastLayout?: LookaheadLayout;
}

export class LookaheadSpeculator implements Speculator {
  readonly name = 'lookahead';
  readonly wantsHidden = false;
  readonly W: number;
  readonly N: number;
  readonly G: number;
  readonly seedPoolFromPrompt: boolean;
  private readonly states = new Map<number, LookaheadState>();

  constructor(opts: LookaheadOptions) {
    this.W = opts.W;
    this.N = opts.N;
    this.G = opts.G;
    this.seedPoolFromPrompt = opts.seedPoolFromPrompt ?? true;
    const ok = (x: number, lo: number): boolean => Number.isInteger(x) && x >= lo;
    if (!ok(this.W, 1) || !ok(this.N, 2) || !ok(this.G, 1)) {
      throw codedError('E_ARG', `lookahead: need W >= 1, N >= 2, G >= 1 (integers), got W=${this.W}, N=${this.N}, G=${this.G}`);
    }
    // One step is a masked forward of 1 + (W + G) * (N - 1) tokens; the native side takes at most
    // MAX_MASKED_TOKENS (kMaxTreeTokens), and a huge W would exhaust memory before getting there.
    const nodes = 1 + (this.W + this.G) * (this.N - 1);
    if (nodes > MAX_MASKED_TOKENS) {
      throw codedError('E_ARG', `lookahead: W=${this.W}, N=${this.N}, G=${this.G} make steps of ${nodes} tokens, more than the ${MAX_MASKED_TOKENS} of a masked forward (need 1 + (W + G) * (N - 1) <= ${MAX_MASKED_TOKENS})`);
    }
  }

  attach(_model: CausalLM): void {}

  /** The n-gram pool of a sequence (tests). */
  pool(key: number): NgramPool | undefined {
    return this.states.get(key)?.pool;
  }

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
      st = { window, pool: new NgramPool(this.G) };
      // The prompt's N-grams are free candidates (text often repeats its prompt).
      if (this.seedPoolFromPrompt) for (let i = 0; i + this.N <= prompt.length; i++) st.pool.add(prompt.slice(i, i + this.N));
      this.states.set(s.key, st);
    }
    return st;
  }

  async prefill(): Promise<void> {}

  async propose(seqs: readonly SpecSequence[]): Promise<ProposalBatch> {
    const proposals: Proposal[] = seqs.map((s) => {
      const st = this.state(s);
      const root = s.history[s.history.length - 1] as number;
      const cands = s.maxDepth > 0 ? st.pool.get(root).slice(0, this.G).map((c) => c.slice(0, s.maxDepth)) : [];
      // Run the window only while its positions fit the model.
      const withWindow = s.committed + this.N + this.W - 2 <= s.maxPosition;
      const layout = lookaheadLayout(this.W, this.N, cands.map((c) => c.length), withWindow);
      if (withWindow) st.lastLayout = layout;
      else delete st.lastLayout;
      const tokens = new Int32Array(layout.parents.length);
      tokens[0] = root;
      let i = 1;
      for (const c of cands) for (const t of c) tokens[i++] = t;
      if (withWindow) for (const row of st.window) for (const t of row) tokens[i++] = t;
      const positions = Int32Array.from(layout.relPositions, (r) => s.committed + r);
      return { tokens, parents: layout.parents, positions, mask: layout.mask };
    });
    return { proposals };
  }

  async update(seqs: readonly SpecSequence[], report: StepReport): Promise<void> {
    if (!seqs.some((s) => this.states.get(s.key)?.lastLayout)) return;
    const ids = pickRowsArgmax(report.output, Int32Array.from({ length: report.output.indptr[seqs.length] as number }, (_, r) => r));
    seqs.forEach((s, b) => {
      const st = this.states.get(s.key);
      const layout = st?.lastLayout;
      if (!st || !layout) return;
      const base = report.output.indptr[b] as number;
      const last = this.N - 2;
      const outs = st.window[last]!.map((_, j) => ids[base + layout.windowStart + last * this.W + j] as number);
      // Harvest one N-gram per column, then shift the window up by one level.
      for (let j = 0; j < this.W; j++) {
        st.pool.add([...st.window.map((row) => row[j] as number), outs[j] as number]);
      }
      st.window = [...st.window.slice(1), outs];
      delete st.lastLayout;
    });
  }

  release(seq: SpecSequence): void {
    this.states.delete(seq.key);
  }

  dispose(): void {
    this.states.clear();
  }
}
