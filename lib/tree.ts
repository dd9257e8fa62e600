// Token trees for speculation: builders, depths/positions, packed ancestor masks and the Medusa
// choice presets. A tree is { tokens, parents } in topological order; node 0 is the ROOT (the last
// emitted token, not yet in the target's KV cache; parent -1). Other nodes have parents[i] in
// [0, i); -2 marks a node that is in the forward pass but is not a candidate (lookahead's branch).
// Chains are trees. These are small host arrays (tens of nodes), built per step.
import { argError } from './errors';
import { maskWords, treeMask } from './kv';

export interface TokenTree {
  readonly tokens: Int32Array;
  readonly parents: Int32Array;
}

/** Packed visibility: row i has `words` u64 words; bit j of row i set <=> node i sees node j. */
export interface PackedMask {
  readonly bits: BigUint64Array;
  readonly words: number;
}

const treeError = argError;

/** A lone root's parents, shared by every loneRoot() tree: read only (nothing in the library writes a proposal's arrays). */
const LONE_PARENTS = Int32Array.of(-1);

/** The root alone (a plain step): chainTree(root) without allocating its parents array. */
export function loneRoot(root: number): TokenTree {
  return { tokens: Int32Array.of(root), parents: LONE_PARENTS };
}

/** A chain root -> drafts[0] -> drafts[1] ... */
export function chainTree(root: number, drafts: ArrayLike<number> = []): TokenTree {
  const n = drafts.length + 1;
  const tokens = new Int32Array(n);
  const parents = new Int32Array(n);
  tokens[0] = root;
  parents[0] = -1;
  for (let i = 1; i < n; i++) {
    tokens[i] = drafts[i - 1] as number;
    parents[i] = i - 1;
  }
  return { tokens, parents };
}

/** Checks the tree invariants; throws E_ARG naming the offending node. */
export function validateTree(tree: TokenTree, what = 'tree'): void {
  const { tokens, parents } = tree;
  if (tokens.length !== parents.length) throw treeError(`${what}: ${tokens.length} tokens but ${parents.length} parents`);
  if (tokens.length === 0) throw treeError(`${what}: empty (node 0 must be the root)`);
  if (parents[0] !== -1) throw treeError(`${what}: node 0 must be the root (parent -1), got ${parents[0]}`);
  for (let i = 1; i < parents.length; i++) {
    const p = parents[i] as number;
    if (p !== -2 && (p < 0 || p >= i)) throw treeError(`${what}: parents[${i}] = ${p} is not in [0, ${i}) nor -2`);
    if (p >= 0 && (parents[p] as number) === -2) throw treeError(`${what}: node ${i} hangs under non-candidate node ${p}`);
  }
}

/** Depth of each node (root 0). Non-candidate nodes (-2) get depth -1. */
export function treeDepths(parents: Int32Array): Int32Array {
  const d = new Int32Array(parents.length);
  for (let i = 0; i < parents.length; i++) {
    const p = parents[i] as number;
    d[i] = p === -1 ? 0 : p === -2 ? -1 : (d[p] as number) + 1;
  }
  return d;
}

/** Absolute positions for a tree: base (= committed length) + depth. */
export function treePositions(parents: Int32Array, base: number): Int32Array {
  const d = treeDepths(parents);
  const out = new Int32Array(parents.length);
  for (let i = 0; i < d.length; i++) out[i] = base + (d[i] as number);
  return out;
}

/** Number of u64 words per mask row for n nodes. */
export { maskWords } from './kv';

export function setMaskBit(mask: PackedMask, row: number, col: number): void {
  const w = row * mask.words + (col >> 6);
  mask.bits[w] = (mask.bits[w] as bigint) | (1n << BigInt(col & 63));
}

export function maskBit(mask: PackedMask, row: number, col: number): boolean {
  const w = row * mask.words + (col >> 6);
  return (((mask.bits[w] as bigint) >> BigInt(col & 63)) & 1n) === 1n;
}

export function emptyMask(n: number): PackedMask {
  const words = maskWords(n);
  return { bits: new BigUint64Array(n * words), words };
}

/** Ancestor-or-self mask of a tree (parents -1 = root of the forward; -2 nodes see only themselves). */
export function ancestorMask(parents: Int32Array): PackedMask {
  return { bits: treeMask(parents), words: maskWords(parents.length) };
}

/** Root-first path of node `node` (indices). */
export function pathTo(parents: Int32Array, node: number): number[] {
  const path: number[] = [];
  for (let i = node; i >= 0; i = parents[i] as number) path.push(i);
  return path.reverse();
}

/**
 * Keeps only candidate nodes with depth <= maxDepth (and drops -2 nodes when `keepNonCandidates` is
 * false), renumbering parents. Returns the kept indices too.
 */
export function pruneTree(tree: TokenTree, maxDepth: number): { tree: TokenTree; kept: Int32Array } {
  const depth = treeDepths(tree.parents);
  const remap = new Int32Array(tree.tokens.length).fill(-1);
  const kept: number[] = [];
  for (let i = 0; i < depth.length; i++) {
    const d = depth[i] as number;
    if (d >= 0 && d <= maxDepth) {
      remap[i] = kept.length;
      kept.push(i);
    }
  }
  const tokens = new Int32Array(kept.length);
  const parents = new Int32Array(kept.length);
  kept.forEach((old, k) => {
    tokens[k] = tree.tokens[old] as number;
    const p = tree.parents[old] as number;
    parents[k] = p < 0 ? p : (remap[p] as number);
  });
  return { tree: { tokens, parents }, kept: Int32Array.from(kept) };
}

/**
 * The tree's first `maxNodes` nodes (at least the root). Parents precede children, so they form a
 * tree, each node keeping the first of its children in order: a valid candidate set for greedy and
 * for rejection sampling of children drawn in that order. The tree itself when it is small enough.
 */
export function cutTree(tree: TokenTree, maxNodes: number): TokenTree {
  if (tree.tokens.length <= maxNodes) return tree;
  const n = Math.max(1, Math.floor(maxNodes));
  return { tokens: tree.tokens.slice(0, n), parents: tree.parents.slice(0, n) };
}

/**
 * Builds a tree by expanding, level by level, each frontier node with the top-`branching[d]`
 * children proposed by `children(pathTokens)` (best first). Used by tree drafting.
 */
export function buildTopKTree(root: number, branching: readonly number[], children: (path: number[], k: number) => number[]): TokenTree {
  const tokens = [root];
  const parents = [-1];
  let frontier = [0];
  for (const k of branching) {
    const next: number[] = [];
    for (const f of frontier) {
      const path = pathTo(Int32Array.from(parents), f).map((i) => tokens[i] as number);
      for (const t of children(path, k).slice(0, k)) {
        tokens.push(t);
        parents.push(f);
        next.push(tokens.length - 1);
      }
    }
    frontier = next;
  }
  return { tokens: Int32Array.from(tokens), parents: Int32Array.from(parents) };
}

// ---- Medusa choices ---------------------------------------------------------------------------
// A choice is a path of top-k ranks: [i0, i1, ...] = rank i0 of head 0, then rank i1 of head 1
// under it, and so on. Every prefix of a choice must itself be a choice.

export type MedusaChoices = readonly (readonly number[])[];

/** The standard 63-node tree of FasterDecoding/Medusa (medusa_choices.py, "mc_sim_7b_63"). */
export const MC_SIM_7B_63: MedusaChoices = [
  [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0], [0, 5], [0, 0, 1],
  [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0], [0, 9], [8], [9], [1, 0, 0],
  [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5], [0, 0, 0, 0], [0, 1, 1], [0, 0, 6],
  [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9], [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2],
  [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0],
  [0, 0, 0, 1], [1, 6], [0, 7, 0],
];

/** Smaller presets: a 3-wide, 4-deep tree (16 nodes) and a plain chain per head. */
export const MEDUSA_SMALL_16: MedusaChoices = [
  [0], [1], [2], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0],
  [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0],
];
export const MEDUSA_SMALL_8: MedusaChoices = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]];

/** A chain of `depth` top-1 choices: [[0], [0,0], ...]. */
export function medusaChain(depth: number): MedusaChoices {
  const out: number[][] = [];
  for (let d = 1; d <= depth; d++) out.push(new Array<number>(d).fill(0));
  return out;
}

export const MEDUSA_PRESETS: Readonly<Record<string, MedusaChoices>> = {
  mc_sim_7b_63: MC_SIM_7B_63,
  small_16: MEDUSA_SMALL_16,
  small_8: MEDUSA_SMALL_8,
  chain_4: medusaChain(4),
};

/** The shape of a Medusa tree, independent of tokens: cached per choices list. */
export interface MedusaTreeShape {
  /** parents of the tree nodes (node 0 = root). */
  readonly parents: Int32Array;
  /** head index (depth - 1) of each node; -1 for the root. */
  readonly head: Int32Array;
  /** top-k rank within its head of each node; -1 for the root. */
  readonly rank: Int32Array;
  /** Deepest choice (number of heads used). */
  readonly depth: number;
  /** Largest rank + 1 (top-k the heads must provide). */
  readonly topK: number;
}

/** Sorts choices (by length, then lexicographically), checks prefixes, and builds the shape. */
export function medusaTreeShape(choices: MedusaChoices): MedusaTreeShape {
  // Checked as a caller may pass them (a number, a string, a list of numbers), not only as typed.
  const raw: unknown = choices;
  if (!Array.isArray(raw)) throw treeError(`medusaChoices: expected an array of rank paths (e.g. [[0], [0, 0], [1]]), got ${typeof raw === 'string' ? `'${raw}'` : String(raw)}`);
  if (choices.length === 0) throw treeError('medusaChoices: empty list');
  const bad = (raw as unknown[]).findIndex((c) => !Array.isArray(c) && !ArrayBuffer.isView(c));
  if (bad >= 0) throw treeError(`medusaChoices[${bad}]: expected an array of ranks, got ${String(choices[bad])}`);
  const sorted = choices.map((c) => Array.from(c)).sort((a, b) => a.length - b.length || cmpLex(a, b));
  const index = new Map<string, number>([['', 0]]);
  const n = sorted.length + 1;
  const parents = new Int32Array(n);
  const head = new Int32Array(n);
  const rank = new Int32Array(n);
  parents[0] = -1;
  head[0] = -1;
  rank[0] = -1;
  let depth = 0;
  let topK = 0;
  sorted.forEach((c, k) => {
    const key = c.join(',');
    if (c.length === 0) throw treeError('medusaChoices: empty choice');
    for (const r of c) if (!Number.isInteger(r) || r < 0) throw treeError(`medusaChoices: bad rank in [${key}]`);
    if (index.has(key)) throw treeError(`medusaChoices: duplicate choice [${key}]`);
    const parent = index.get(c.slice(0, -1).join(','));
    if (parent === undefined) throw treeError(`medusaChoices: [${key}] has no parent choice [${c.slice(0, -1).join(',')}]`);
    index.set(key, k + 1);
    parents[k + 1] = parent;
    head[k + 1] = c.length - 1;
    rank[k + 1] = c[c.length - 1] as number;
    depth = Math.max(depth, c.length);
    topK = Math.max(topK, (c[c.length - 1] as number) + 1);
  });
  return { parents, head, rank, depth, topK };
}

function cmpLex(a: number[], b: number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return (a[i] as number) - (b[i] as number);
  return a.length - b.length;
}

/**
 * Fills a Medusa tree with tokens: topIds(head, rank) gives the rank-th candidate of `head`.
 * Siblings with equal tokens are kept (verification handles duplicates exactly).
 */
export function medusaTree(shape: MedusaTreeShape, root: number, topIds: (head: number, rank: number) => number): TokenTree {
  const n = shape.parents.length;
  const tokens = new Int32Array(n);
  tokens[0] = root;
  for (let i = 1; i < n; i++) tokens[i] = topIds(shape.head[i] as number, shape.rank[i] as number);
  return { tokens, parents: shape.parents.slice() };
}

/** A ragged batch of trees flattened for verify(): nodeIndptr (B+1), parents and tokens concatenated. */
export function flattenTrees(trees: readonly TokenTree[]): { nodeIndptr: Int32Array; parents: Int32Array; tokens: Int32Array } {
  const nodeIndptr = new Int32Array(trees.length + 1);
  trees.forEach((t, b) => (nodeIndptr[b + 1] = (nodeIndptr[b] as number) + t.tokens.length));
  const total = nodeIndptr[trees.length] as number;
  const parents = new Int32Array(total);
  const tokens = new Int32Array(total);
  trees.forEach((t, b) => {
    parents.set(t.parents, nodeIndptr[b] as number);
    tokens.set(t.tokens, nodeIndptr[b] as number);
  });
  return { nodeIndptr, parents, tokens };
}
