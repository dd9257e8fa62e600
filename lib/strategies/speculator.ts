// The Speculator interface: what the decoder asks of a strategy. A speculator proposes one token
// tree per sequence (node 0 = the root, the last emitted token not yet in the model's KV cache),
// sees the model's outputs of the forward that verified it, and keeps its own state in sync
// (e.g. a draft model's KV cache). Speculators depend only on CausalLM.
import type { CausalLM, DeviceTail, ForwardOutput, MedusaChainResult, MedusaChainTemplate, SpecChainResult } from '../models/causal_lm';
import { codedError } from '../errors';
import type { ResolvedPenalties } from '../sampling';
import type { Tensor } from '../tensor';
import type { PackedMask, TokenTree } from '../tree';
import type { GrammarCursor } from '../grammar';

/** Sampling configuration of a run; undefined = greedy. */
export interface SamplingConfig {
  readonly temperature: number;
  readonly topK?: number;
  readonly topP?: number;
  readonly minP?: number;
}

/** A sequence's counter-based RNG stream: a fixed Philox key and a fresh counter offset per draw call. */
export interface SeqRng {
  readonly seed: bigint;
  /** The next unused counter offset (each native sample/verify call takes one). */
  next(): bigint;
}

/** What a speculator may read about a sequence. */
export interface SpecSequence {
  /** Unique per decoder run (use it to key per-sequence state). */
  readonly key: number;
  /** All tokens so far: prompt + emitted; the last one is the root (not yet in the model's cache). */
  readonly history: readonly number[];
  readonly promptLength: number;
  /** The model's committed length (= history.length - 1). */
  readonly committed: number;
  /** Deepest draft node worth proposing this step (so a step never overshoots maxNewTokens). */
  readonly maxDepth: number;
  /** Largest position id the model accepts (maxPositions - 1). */
  readonly maxPosition: number;
  /**
   * Most nodes (root included) a proposal may have this step: the KV room the engine keeps for the
   * sequence's tree (EngineOptions.treeReserveTokens, less where the cache has less left). The
   * engine cuts a larger plain tree to its first maxNodes nodes and refuses a larger tree with a
   * mask, positions or draft probabilities; a native chain's k is cut to maxNodes - 1.
   */
  readonly maxNodes: number;
  readonly rng: SeqRng;
  /**
   * The request's grammar (GenerateOptions.grammar) along the output, if any: the target's rows are
   * masked to it, so a draft that follows it (lib/grammar.ts draftMask) gets more accepted.
   */
  readonly grammar?: GrammarCursor | undefined;
  /** Tokens that end the sequence (the grammar allows them where its text is complete). */
  readonly stopTokens?: Int32Array | undefined;
  /** The request's prediction (GenerateOptions.prediction): tokens the output is expected to repeat. */
  readonly prediction?: Int32Array | undefined;
}

/** One sequence's proposal: a tree, optionally with its own positions and mask (lookahead). */
export interface Proposal extends TokenTree {
  /** Absolute position ids; default committed + depth. Required when the tree has -2 nodes. */
  readonly positions?: Int32Array;
  /** Visibility among the nodes; default the ancestor mask. Required when the tree has -2 nodes. */
  readonly mask?: PackedMask;
  /**
   * A chain whose nodes 1.. are a draft's picks still on the device (tokens[1..] are placeholders):
   * the target's forward and the verification read them there, and the emitted tokens tell them.
   */
  readonly tail?: DeviceTail;
}

export interface ProposalBatch {
  readonly proposals: readonly Proposal[];
  /**
   * Sampling only: f32 [sum of nodes, V], row i = the draft distribution node i's children were
   * drawn from (without replacement, in child order). Omitted = deterministic drafts (one-hot).
   * The decoder disposes it.
   */
  readonly draftProbs?: Tensor;
  /** Tensors the proposals refer to (their tails' ids); the decoder disposes them after the step. */
  readonly owned?: readonly Tensor[];
  /**
   * Every proposal is a lone root, and the speculator would propose lone roots for the next
   * plainSteps - 1 steps as well, whatever tokens they emit. When decoding greedily on a model with
   * greedyChain, the engine may then run up to plainSteps plain steps (this one included) in one
   * native call and report them with updatePlain() instead of update(). Needs updatePlain.
   */
  readonly plainSteps?: number;
  /**
   * Only where the context allows it (ProposeContext.draftChains): instead of proposals (which are
   * then lone roots, not verified), greedy draft-model steps for the engine to run in one native
   * call (CausalLM.speculativeChain); it reports them with updateChain() instead of update().
   */
  readonly draftChain?: DraftChainOffer;
  /** As draftChain, for Medusa's heads (CausalLM.medusaChain), reported with updateHeadsChain(). */
  readonly headsChain?: HeadsChainOffer;
}

/** A ProposalBatch's heads chain: what CausalLM.medusaChain needs beyond the target's side. */
export interface HeadsChainOffer {
  /** The heads run after each verification. */
  readonly heads: SpecdecNative.NativeMedusaHeadSet;
  readonly topK: number;
  readonly template: MedusaChainTemplate;
  /** Per sequence (the batch's order): its candidates (heads known * topK). */
  readonly seqs: readonly { readonly cands: Int32Array; readonly headsKnown: number }[];
  readonly maxSteps: number;
  /** A probe, as DraftChainOffer.probe. */
  readonly probe?: boolean;
}

/** A ProposalBatch's draft chain: what CausalLM.speculativeChain needs beyond the target's side. */
export interface DraftChainOffer {
  readonly draft: CausalLM;
  /** Per sequence (the batch's order): the draft's sequence, its uncached history (root last), k. */
  readonly seqs: readonly { readonly draftSeq: number; readonly draftFeed: Int32Array; readonly k: number }[];
  /** Steps at most (>= 1). */
  readonly maxSteps: number;
  /** With penalties (ProposeContext.penalties): whether the draft drafts with them (SpecChainOptions.draftPenalties; default true). */
  readonly draftPenalties?: boolean;
  /**
   * A probe (one step to try the drafts while the choice is plain): its call's JavaScript is priced
   * as a chain's would share it, since it carries a whole call alone (counted in full, each probe
   * looked 40-60 us dearer than a chain's step, which kept the sized draft model plain).
   */
  readonly probe?: boolean;
}

export interface ProposeContext {
  readonly sampling?: SamplingConfig;
  readonly signal?: AbortSignal;
  /**
   * The run's penalties on the model's rows (undefined: none). A speculator may draft with them
   * (each sequence's history is in SpecSequence) to predict the penalized model better; the
   * output never depends on it.
   */
  readonly penalties?: ResolvedPenalties;
  /**
   * The engine runs a ProposalBatch's draftChain this step: the decoding is greedy, the step has one
   * part, and the model has speculativeChain.
   */
  readonly draftChains?: boolean;
}

/** What the model's verifying forward produced and what verification kept, per sequence. */
export interface StepReport {
  readonly proposals: readonly Proposal[];
  /** The model's forward over the proposals (rows ragged by output.indptr). Valid only during update(). */
  readonly output: ForwardOutput;
  /** Accepted node indices per sequence, root first (committed to the model's cache). */
  readonly acceptedNodes: readonly Int32Array[];
  /** Emitted tokens per sequence: accepted drafts + the bonus (the next root). */
  readonly emitted: readonly Int32Array[];
  /** Argmax of every row of output.logits, when the speculator asked for it (wantsRowArgmax). */
  readonly rowArgmax?: Int32Array;
  /**
   * headsOnAccepted's result: ids[(h * B + b) * k + j] = head h's j-th candidate at sequence b's
   * last accepted node (read with the verification result).
   */
  readonly headsTopK?: Int32Array;
}

/** Heads (Medusa's layout) to run on each sequence's last accepted node, right after verification. */
export interface HeadsOnAccepted {
  /** MedusaHeads.weights(): the native head set (or the heads' tensors, parsed on every call). */
  readonly heads: SpecdecNative.NativeMedusaHeadSet | readonly { readonly w: readonly Tensor[]; readonly b: readonly Tensor[]; readonly lmHead: Tensor }[];
  readonly k: number;
}

export interface Speculator {
  readonly name: string;
  /** The verifying forward must return hidden states (Medusa heads). */
  readonly wantsHidden: boolean;
  /** The forwards (prefill and verifying) must return the residual stream entering these layers (EAGLE-3). */
  readonly auxLayers?: readonly number[] | undefined;
  /**
   * prefill() reads every prompt row the target computes and cannot start from another sequence's
   * state (a speculator without shareFrom that needs the target's features): a sequence must then
   * read its whole prompt, not start from another's cached prefix (EngineOptions.prefixSharing).
   */
  readonly readsPromptRows?: boolean;
  /**
   * `seq` (new) starts with the first `length` tokens of `from` (live, or kept: see keep), whose
   * target cache it shares (EngineOptions.prefixSharing): the speculator may start its own state
   * for seq from from's (a draft model: a fork of from's draft cache; EAGLE: of its head's cache
   * and waiting features). Optional; the output does not depend on it.
   */
  shareFrom?(seq: SpecSequence, from: SpecSequence, length: number): void;
  /**
   * shareFrom's state at a prefix's last position also depends on the token after it (EAGLE: its
   * draft's row j pairs the target's feature at j with token j + 1), and the sequence must have the
   * target compute that position: the engine then shares one token fewer than the two have in common.
   */
  readonly shareNeedsNextToken?: boolean;
  /**
   * `seq` finished, and the engine keeps its tokens' cache for later requests' prefixes
   * (EngineOptions.prefixCache): instead of release(seq) now, the speculator keeps what shareFrom
   * reads of it (a draft cache) until release(seq), called when the engine lets it go. Optional
   * (without it the engine releases seq at once, and a later request's speculator state starts fresh).
   */
  keep?(seq: SpecSequence): void;
  /**
   * update() reads the argmax of every row of the forward (lookahead's window): the engine then
   * gets it in the same native read as the verification result.
   */
  readonly wantsRowArgmax?: boolean;
  /**
   * Heads whose top-k at each sequence's last accepted node update() needs (Medusa): the engine has
   * them run on the device right after verification and read with its result (one wait a step).
   * Needs wantsHidden.
   */
  readonly headsOnAccepted?: HeadsOnAccepted | undefined;
  /** Verification mode when sampling: 'rejection' (exact, default) or 'typical' (Medusa; LOSSY). */
  readonly samplingVerifyMode?: 'rejection' | 'typical';
  readonly typicalThreshold?: number;
  readonly typicalAlpha?: number;
  /** Checks compatibility with the model it drafts for (vocabulary, hidden size). Throws E_ARG. */
  attach(model: CausalLM): void;
  /**
   * Measures now what sizing would otherwise measure during the first request: the cost model's
   * calibration of the target's forwards (and of a draft model's chain), once per model. Call it
   * after attach() (SpeculativeDecoder.prepare() and Engine.prepare() do) so that the first
   * request's time is decoding only. Optional; idempotent (a later call returns at once); a
   * speculator with fixed settings measures nothing.
   */
  prepare?(ctx?: ProposeContext): Promise<void>;
  /**
   * The model consumed a chain of tokens for these sequences (prompt prefill, or a catch-up):
   * output row lastRows[b] is the model's output at the token right before seqs[b]'s root (hidden
   * states; the logits hold only those rows, row b for sequence b, when output.logitsRows is 'last').
   */
  prefill(seqs: readonly SpecSequence[], output: ForwardOutput, lastRows: Int32Array, ctx: ProposeContext): Promise<void>;
  /**
   * This step's trees. A speculator with nothing to await may return the batch itself rather than
   * a promise (the engine then takes it without a microtask turn: a small model's step is ~100 us).
   */
  propose(seqs: readonly SpecSequence[], ctx: ProposeContext): ProposalBatch | Promise<ProposalBatch>;
  /**
   * After verification and the model's commit; seqs' histories already include the emitted tokens.
   * May return nothing instead of a promise, as propose() may.
   */
  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext): void | Promise<void>;
  /**
   * After a batch that offered plainSteps, when the engine ran steps[b] >= 1 plain steps of
   * sequence b in one native call (the first is the step proposed): account for them as that many
   * rounds of propose() and update() with lone roots. The histories include every emitted token.
   * The steps had no forward output to report (no logits, hidden states or argmax rows).
   */
  updatePlain?(seqs: readonly SpecSequence[], steps: readonly number[], ctx: ProposeContext): void;
  /**
   * After a batch that offered a draftChain, which the engine ran: the steps' drafts and
   * acceptances (result.drafted / accepted, step-major), the draft's cached lengths, the timings.
   * The histories include every emitted token; the model's and the draft's caches are committed.
   */
  updateChain?(seqs: readonly SpecSequence[], result: SpecChainResult, ctx: ProposeContext): void;
  /** After a batch that offered a headsChain, which the engine ran (as updateChain). */
  updateHeadsChain?(seqs: readonly SpecSequence[], result: MedusaChainResult, ctx: ProposeContext): void;
  /**
   * The sequence's history was cut back (an outer verification rejected tokens this speculator's
   * model had already taken): drop any state past history.length.
   */
  rewind?(seq: SpecSequence): void;
  /** The sequence left the batch (finished or aborted): free its state (e.g. draft KV pages). */
  release(seq: SpecSequence): void;
  dispose(): void;
}

export { codedError } from '../errors';

/**
 * E_ARG unless `x` looks like a Speculator (its required methods and name): an option that is not
 * one is an error naming it, not a TypeError deep inside the engine.
 */
export function checkSpeculator(x: unknown, what: string): asserts x is Speculator {
  const o = x as Record<string, unknown> | null;
  const missing = typeof x !== 'object' || o === null ? ['an object'] : (['attach', 'prefill', 'propose', 'update', 'release', 'dispose'] as const).filter((m) => typeof o[m] !== 'function');
  if (missing.length > 0 || typeof o?.['name'] !== 'string') {
    throw codedError('E_ARG', `${what}: expected a Speculator (name, attach, prefill, propose, update, release, dispose), got ${x === null ? 'null' : typeof x}${missing.length > 0 && typeof x === 'object' && x !== null ? ` without ${missing.join(', ')}` : ''}`);
  }
}

/** E_ARG unless `x` looks like a CausalLM (a config and forward()). */
export function checkModel(x: unknown, what: string): asserts x is CausalLM {
  const o = x as Record<string, unknown> | null;
  if (typeof x !== 'object' || o === null || typeof o['forward'] !== 'function' || typeof o['config'] !== 'object' || o['config'] === null) {
    throw codedError('E_ARG', `${what}: expected a model (CausalLM: a config and forward()), got ${x === null ? 'null' : typeof x}`);
  }
}
