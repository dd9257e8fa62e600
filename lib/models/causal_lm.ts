// The model interface every strategy and the decoder depend on (DESIGN §4). The built-in Llama
// runner implements it; engines implement it for their own models.
import type { TokenLogprobs } from '../logprobs';
import type { Penalties, PenaltyHistory, SamplingOptions, StopBan } from '../sampling';
import type { Device, Tensor } from '../tensor';

export interface ModelConfig {
  /** Architecture name from config.json, e.g. "LlamaForCausalLM". */
  readonly architecture: string;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Longest sequence (prompt + generated) the model accepts. */
  readonly maxPositions: number;
  readonly bosTokenId?: number;
  readonly eosTokenIds: readonly number[];
}

/** One sequence's new tokens in a forward pass: a chain, a tree, or any masked set. */
export interface SequenceInput {
  /** Sequence id from createSequence(). */
  readonly seq: number;
  /** New tokens, in topological order (a parent before its children). */
  readonly tokens: Int32Array;
  /**
   * parents[i]: index (in this input) of token i's parent, or -1 for a child of the last committed
   * token. Omitted: a chain (parents[i] = i - 1). Ignored when `mask` is given.
   */
  readonly parents?: Int32Array;
  /** Position ids; default: committed length + depth in the tree (chain: committed length + i). */
  readonly positions?: Int32Array;
  /**
   * Packed visibility among the new tokens: row i has `words` u64 words, bit j set <=> token i sees
   * token j (the committed prefix is always visible). For masks a tree cannot express (lookahead).
   */
  readonly mask?: { readonly bits: BigUint64Array; readonly words: number };
  /** tokens[1..] are on the device (a draft chain's picks), tokens[1..] here are placeholders. */
  readonly tail?: DeviceTail;
}

/** The arguments of sampledChain and sampledChainOnDevice. */
export type SampledChainArgs = [
  inputs: readonly SequenceInput[],
  steps: readonly number[],
  sampling: SamplingOptions,
  seeds: readonly bigint[],
  offsets: readonly (readonly bigint[])[],
  options?: ChainOptions,
];

/** Options of the native chains (greedyChain, sampledChain). */
export interface ChainOptions {
  readonly signal?: AbortSignal;
  /**
   * Penalties on every pick, with each input's whole history (its fed tokens included) and its picks
   * so far: the same tokens as plain steps with these penalties. Omitted: none. `bans`: per input,
   * its stop tokens banned on the picks before its min_tokens (StopBan; neutral penalties allowed).
   */
  readonly penalties?: { readonly penalties: Penalties; readonly histories: readonly PenaltyHistory[]; readonly bans?: readonly (StopBan | undefined)[] };
  /**
   * Also each pick's log-probability and `k` alternatives (TokenLogprobs of the row it was picked
   * from, after the penalties, at temperature 1: what a step's tokenLogprobs reads) for the inputs
   * with want[b], handed to sink(b, lp) once the chain is done (one entry per pick). greedyChain and
   * sampledChain only, on a model with chainLogprobs.
   */
  readonly logprobs?: { readonly k: number; readonly want: readonly boolean[]; readonly sink: (input: number, lp: TokenLogprobs) => void };
}

/**
 * Token ids that stay on the device: ids[offset ..] of a tensor made by greedyChainOnDevice or
 * sampledChainOnDevice (the library vouches that they are in the vocabulary, or mark a sampled draw
 * from a row without probability mass, which verification reports as E_NUMERIC; other tensors are
 * refused with E_ARG).
 */
export interface DeviceTail {
  readonly ids: Tensor;
  readonly offset: number;
}

/**
 * What verifying a forward's own trees needs beyond the forward's inputs, sent with the forward's
 * one upload (ForwardOptions.stage): verify() then uploads nothing (one upload per step on CUDA).
 * The trees are the inputs' tokens, sequence by sequence (verify's nodeIndptr = the forward's indptr).
 */
export interface VerifyStaging {
  /** i32 [N]: the trees' parents as verify() reads them (local indices, -2 for a non-candidate). */
  readonly parents: Int32Array;
  /** u64 [B] each: the verification's Philox keys and counters, when it samples. */
  readonly seeds?: BigUint64Array;
  readonly offsets?: BigUint64Array;
  /**
   * Sequence offsets [0, ..., B] of parts verified separately (each on its own rows, with its own
   * settings): verify() then takes `stagedPart` and that part's arrays (nodeIndptr from 0).
   */
  readonly parts?: Int32Array;
}

/** Opaque: verification inputs a forward staged (ForwardOutput.staged, for VerifyInput.staged). */
export interface StagedVerify {
  readonly __specdecStagedVerify: never;
}

/** Opaque: a verification's accepted paths left on the device (VerifyOutput.paths, for commit()). */
export interface VerifiedPaths {
  readonly __specdecVerifiedPaths: never;
}

export interface ForwardOptions {
  /** Also return the final hidden states (after the last norm), e.g. for Medusa heads. */
  readonly hidden?: boolean;
  /**
   * Also return the residual stream entering these layers (layer 0: the embeddings), as
   * ForwardOutput.aux, e.g. for EAGLE-3 heads (layers 2, L/2 and L - 3). A model that cannot leaves
   * aux undefined.
   */
  readonly auxLayers?: readonly number[];
  readonly signal?: AbortSignal;
  /** Send the verification's inputs with this forward's upload (a model may ignore it). */
  readonly stage?: VerifyStaging;
  /**
   * Only each sequence's last logits row is wanted (a prompt's prefill): a model that honours it
   * returns logits [B, vocab] and sets `logitsRows: 'last'`, and skips the LM head on the other rows
   * (the same bits for the rows it computes). Default false.
   */
  readonly lastLogitsOnly?: boolean;
}

export interface ForwardOutput {
  /**
   * f32 [N, vocab], rows in input order (sequences concatenated); with `logitsRows: 'last'`,
   * [B, vocab]: row b is sequence b's last row. Caller disposes.
   */
  readonly logits: Tensor;
  /** 'last' when the logits hold each sequence's last row only (ForwardOptions.lastLogitsOnly). */
  readonly logitsRows?: 'last';
  /** f32 [N, hidden] when requested. Caller disposes. */
  readonly hidden?: Tensor;
  /** With auxLayers (A of them): f32 [A, N, hidden], block k for auxLayers[k]. Caller disposes. */
  readonly aux?: Tensor;
  /** Row offsets per sequence: rows indptr[b] .. indptr[b+1] belong to inputs[b]. */
  readonly indptr: Int32Array;
  /** With options.stage, when the model supports it: pass it to verify() as `staged`. */
  readonly staged?: StagedVerify;
  /**
   * Seconds of the forward itself, when the model measures it (LlamaModel, natively): without the
   * call's crossing from JavaScript. The cost model's c(n) is this time, so that forwards run by a
   * native chain (CausalLM.speculativeChain, which times them alike) and by JavaScript price alike.
   */
  readonly seconds?: number;
}

/**
 * A causal LM with its own paged KV cache. forward() writes the new tokens' K/V after each
 * sequence's committed prefix (speculatively); commit() keeps the accepted ones and drops the rest.
 * A forward that is not committed leaves the committed state unchanged.
 */
export interface CausalLM {
  readonly config: ModelConfig;
  readonly device: Device;
  createSequence(): number;
  /** A new sequence sharing `seq`'s committed prefix (copy-on-write pages). */
  forkSequence(seq: number): number;
  freeSequence(seq: number): void;
  /** Committed tokens of `seq`. */
  sequenceLength(seq: number): number;
  /** Drop committed tokens past `length`. */
  truncate(seq: number, length: number): void;
  forward(inputs: readonly SequenceInput[], options?: ForwardOptions): Promise<ForwardOutput>;
  /**
   * After forward(inputs): accepted[b] lists the indices (into inputs[b].tokens, strictly increasing,
   * each the parent of the next) whose K/V become committed, in order, for the sequence inputs[b].seq.
   * `paths`: the verification of this forward's trees (VerifyOutput.paths), or one per part verified
   * separately (VerifyStaging.parts); where their accepted nodes are exactly `accepted`, K/V move
   * from their results on the device (no upload). Optional to honour.
   */
  commit(seqs: readonly number[], accepted: readonly Int32Array[], paths?: VerifiedPaths | readonly VerifiedPaths[]): void;
  /**
   * Optional fast path for greedy chain drafting (DraftModelSpeculator uses it when present):
   * the same tokens and cache state as, for each input with steps[b] >= 1, forward + commit of its
   * tokens, then steps[b] times: t = argmax (lowest index on ties) of its last logits row, and while
   * steps remain, forward + commit of [t]. Resolves with the picked tokens (steps[b] per input).
   * Inputs are chains (no parents, positions or mask). On an error nothing of the call stays
   * committed.
   */
  greedyChain?(inputs: readonly SequenceInput[], steps: readonly number[], options?: ChainOptions): Promise<Int32Array[]>;
  /** greedyChain and sampledChain take ChainOptions.logprobs (a model without it is not given them). */
  readonly chainLogprobs?: boolean;
  /**
   * greedyChain whose picks stay on the device: i32 [sum(steps)], input by input, usable as the
   * `tail` of the target's inputs and of verification (no read-back at all). Caller disposes.
   */
  greedyChainOnDevice?(inputs: readonly SequenceInput[], steps: readonly number[], options?: ChainOptions): Promise<Tensor>;
  /**
   * Optional fast path for sampled chain drafting: greedyChain with each pick drawn instead of
   * taken as the argmax, exactly as processLogits(last row, sampling) + sample(probs, seeds[b],
   * offsets[b][j]) for input b's j-th pick. Resolves with the picks and q, the probs rows they were
   * drawn from (f32 [sum(steps), V], input by input), which stay on the model's device.
   */
  sampledChain?(...args: SampledChainArgs): Promise<{ picks: Int32Array[]; q: Tensor }>;
  /**
   * sampledChain whose picks stay on the device (as greedyChainOnDevice's: i32 [sum(steps)], input
   * by input, usable as a `tail`), with no read-back at all; the same draws. Caller disposes both.
   */
  sampledChainOnDevice?(...args: SampledChainArgs): Promise<{ ids: Tensor; q: Tensor }>;
  /**
   * Optional fast path for greedy draft-model speculation (SpecEngine uses it when a speculator
   * offers a draft chain, DraftModelSpeculator): up to maxSteps speculative steps in one call, each
   * the same as the engine's step with a DraftModelSpeculator -- the draft's greedy chain of
   * min(k, budget left - 1, the draft's context) tokens after its uncached history, this model's
   * forward over the root and that chain, greedy verification, the commit of the accepted path,
   * and the draft truncated to the history -- so the tokens and both caches are those steps'. No
   * step starts after maxSeconds (the first always runs), nor once a sequence's budget is spent, a
   * sequence emitted one of its stop tokens, or no sequence can draft. `draft` must be a model of the same class on the same device.
   */
  speculativeChain?(draft: CausalLM, seqs: readonly SpecChainSequence[], options: SpecChainOptions): Promise<SpecChainResult>;
  /**
   * Optional fast path for greedy Medusa speculation (SpecEngine uses it when a speculator offers a
   * heads chain, MedusaSpeculator): up to maxSteps steps in one call, each the engine's step with
   * headsOnAccepted -- the template's tree over the candidates (cut to the budget and to the heads
   * with candidates), this model's forward with hidden states, greedy verification with the heads'
   * top-k at each last accepted node, the commit. The same stopping rules as speculativeChain.
   */
  medusaChain?(heads: SpecdecNative.NativeMedusaHeadSet, seqs: readonly MedusaChainSequence[], template: MedusaChainTemplate, options: MedusaChainOptions): Promise<MedusaChainResult>;
  /**
   * Optional: the input embedding table and the LM head, f32|f16|bf16 [vocab, hidden] each on the
   * model's device, sharing its storage (the same tensor when tied). EAGLE heads draft with them.
   * The caller disposes the handles (the storage lives while either the model or a handle does).
   */
  sharedWeights?(): { readonly embedTokens: Tensor; readonly lmHead: Tensor };
  dispose(): void;
}

/** One sequence of CausalLM.medusaChain. */
export interface MedusaChainSequence {
  readonly seq: number;
  /** The last emitted token (not cached). */
  readonly root: number;
  /** cands[h * topK + r]: head h's r-th candidate at the root's parent node, for h < headsKnown. */
  readonly cands: Int32Array;
  readonly headsKnown: number;
  readonly budget: number;
  readonly stop?: Int32Array;
  /** Sampled chains: the sequence's Philox key and its next counter (one counter per emitted token). */
  readonly seed?: bigint;
  readonly firstOffset?: bigint;
}

/** The tree each step of medusaChain proposes: node 0 the root, node i > 0 rank[i] of head[i] under parents[i]. */
export interface MedusaChainTemplate {
  readonly parents: Int32Array;
  readonly head: Int32Array;
  readonly rank: Int32Array;
}

export interface MedusaChainOptions extends SpecChainOptions {
  readonly topK: number;
}

export interface MedusaChainResult {
  readonly steps: number;
  /** The template's depth (D). */
  readonly depth: number;
  /** Per step and sequence (step-major): nodes verified, the tree's depth, drafts accepted. */
  readonly nodes: Int32Array;
  readonly depths: Int32Array;
  readonly accepted: Int32Array;
  /** [steps * B * D]: rank of the emitted token at depth d among head d's candidates (-1: none; -2: not recorded). */
  readonly ranks: Int32Array;
  readonly emitted: Int32Array[];
  /** Per sequence: every head's top-k at the last accepted node ([heads * topK]). */
  readonly cands: Int32Array[];
  /** Sampled, per sequence: the counters drawn (firstOffset onwards; empty when greedy). */
  readonly draws: Int32Array;
  readonly targetSeconds: Float64Array;
  readonly stepSeconds: Float64Array;
}

/** One sequence of CausalLM.speculativeChain. */
export interface SpecChainSequence {
  /** This model's sequence (its committed history: everything but the root). */
  readonly seq: number;
  /** The draft's sequence. */
  readonly draftSeq: number;
  /** The history tokens the draft has not cached, the root last (target ids). */
  readonly draftFeed: Int32Array;
  /** Draft tokens per step (0: the sequence's steps are lone roots). */
  readonly k: number;
  /** Tokens the call may emit for the sequence at most (>= 1). */
  readonly budget: number;
  /** Tokens that end the sequence: no step follows one that emitted any of them. */
  readonly stop?: Int32Array;
  /**
   * Sampled chains (SpecChainOptions.sampling): the sequence's Philox key, and the counter of its
   * next draw; each step draws its picks' counters in order, then its verification's (as the
   * engine's sampled draft-model step draws them), and the result says how many it drew.
   */
  readonly seed?: bigint;
  readonly firstOffset?: bigint;
}

export interface SpecChainOptions {
  readonly maxSteps: number;
  readonly maxSeconds: number;
  readonly signal?: AbortSignal;
  /**
   * Sample instead of greedy steps: speculativeChain draws the draft's picks and verifies by exact
   * rejection against the processed target rows; medusaChain verifies its deterministic candidates
   * so (each emitted token plain sampling's draw). Every sequence then needs seed and firstOffset.
   */
  readonly sampling?: SamplingOptions;
  /**
   * Penalties on the target's rows, with each sequence's history when the call starts (its root
   * included); the steps add what they emit, and a row's path is the tokens above it in its tree
   * (ChainOptions.penalties).
   */
  readonly penalties?: NonNullable<ChainOptions['penalties']>;
  /**
   * With penalties: the draft drafts with them too, each pick penalized by its sequence's history
   * and the picks above it (ids outside the draft's vocabulary dropped), so it predicts the
   * penalized target. Default true; false drafts from the draft's raw rows. The output is the same.
   */
  readonly draftPenalties?: boolean;
  /**
   * Also the emitted tokens' log-probabilities (ChainOptions.logprobs: each token's on the target
   * row it was verified on, as penalized), one entry per emitted token, handed to the sink per
   * sequence once the call is done. On a model with chainLogprobs.
   */
  readonly logprobs?: NonNullable<ChainOptions['logprobs']>;
}

export interface SpecChainResult {
  readonly steps: number;
  /** Per step and sequence (step-major, [steps * B]): tokens drafted, drafts accepted. */
  readonly drafted: Int32Array;
  readonly accepted: Int32Array;
  /** Per sequence, every emitted token in order. */
  readonly emitted: Int32Array[];
  /** Per sequence: the draft's cached length at the end. */
  readonly draftCached: Int32Array;
  /** Sampled, per sequence: the counters drawn (firstOffset onwards). */
  readonly draws: Int32Array;
  /** Per step, seconds: the draft's chain, the target's forward, the whole step. */
  readonly draftSeconds: Float64Array;
  readonly targetSeconds: Float64Array;
  readonly stepSeconds: Float64Array;
}
