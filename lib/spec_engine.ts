// SpecEngine: the speculative step loop (one model + one speculator + live sequences): propose a
// tree per sequence -> ONE model forward over all trees of the batch -> verify -> commit the
// accepted nodes -> let the speculator sync -> emit -> statistics. It lives apart from the decoder
// so that a hybrid speculator can run the same loop on its draft model ("Medusa as the draft").
import type { CausalLM, ChainOptions, ForwardOptions, ForwardOutput, MedusaChainOptions, MedusaChainSequence, SequenceInput, SpecChainOptions, SpecChainSequence, StagedVerify, VerifiedPaths, VerifyStaging } from './models/causal_lm';
import type {
  DraftChainOffer,
  HeadsChainOffer,
  Proposal,
  ProposalBatch,
  ProposeContext,
  SamplingConfig,
  SeqRng,
  SpecSequence,
  Speculator,
  StepReport,
} from './strategies/speculator';
import { knownForwardCost } from './cost_model';
import { planPromptRows, recordPromptRows, tokenLogprobs, type LogprobsSink, type PromptRows } from './logprobs';
import { CHAIN_MAX_STEPS, CHAIN_SECONDS, chainLength, observeChainStep } from './plain_chain';
import type { GrammarCursor, GrammarState } from './grammar';
import { argmaxIds, maskTokens, NO_PENALTIES, penalize, penalizeRow, processLogits, resolvePenalties, treePaths, type Penalties, type PenaltyHistory, type ResolvedPenalties, type StopBan } from './sampling';
import { checkModel, checkSpeculator, codedError } from './strategies/speculator';
import { gatherRows, isSampling, pickTokens, samplingOptions, throwIfAborted } from './step_helpers';
import type { Tensor } from './tensor';
import { transferCounters, transfersSince, type TransferStats } from './transfers';
import { cutTree, flattenTrees, loneRoot, pruneTree, treeDepths, validateTree } from './tree';
import { verify, verifyMany, type VerifyInput, type VerifyMode, type VerifyOutput } from './verify';

// ---- statistics --------------------------------------------------------------------------------

export interface PhaseTimes {
  /** Target prefill (prompt) and catch-up forwards. */
  prefill: number;
  /** Speculator proposals (draft model forwards, Medusa heads, n-gram lookups). */
  draft: number;
  /** The verifying target forward. */
  target: number;
  /** Logits processing + verification. */
  verify: number;
  /** KV commit of the target. */
  commit: number;
  /** The speculator's update after verification (draft KV rollback, Medusa heads for the next step). */
  update: number;
}

export interface DecodeStats {
  /** New tokens emitted. */
  newTokens: number;
  /** Target forwards: the prefill (it yields the first token) + one per speculative step. */
  targetForwards: number;
  /** τ = newTokens / targetForwards (plain decoding: 1). */
  tokensPerForward: number;
  proposedDraftTokens: number;
  acceptedDraftTokens: number;
  /** acceptedDraftTokens / proposedDraftTokens (0 when nothing was proposed). */
  acceptanceRate: number;
  /** acceptedPerPosition[d] = steps whose accepted path reached draft depth d + 1. */
  acceptedPerPosition: number[];
  /** proposedPerPosition[d] = steps that proposed at least one node at depth d + 1. */
  proposedPerPosition: number[];
  /**
   * Proposal sizes the steps chose: nodes verified in the forward (root and lookahead window
   * included) -> steps. With cost-model sizing, the trees it picked for this hardware.
   */
  nodesPerStep: Record<number, number>;
  /** Seconds per phase (batch-wide: a batched step's time counts once for every run stat). */
  phases: PhaseTimes;
  /**
   * Host <-> device traffic from the run's start to its end (process-wide counters, so batch-wide
   * like phases, and including any concurrent run's traffic).
   */
  transfers: TransferStats;
  seconds: number;
  tokensPerSecond: number;
  /**
   * Prompt tokens taken from another sequence's KV cache rather than computed (an Engine's prefix
   * sharing or prefix cache, when the request was first admitted; OpenAI's
   * `usage.prompt_tokens_details.cached_tokens`). 0 elsewhere.
   */
  cachedPromptTokens: number;
  /**
   * Why the request's later steps ran without drafts, when they did: the speculator's own cache (a
   * draft model's) could not hold the request even alone, so the Engine recomputed it and decoded
   * it plainly rather than fail it. The tokens are the same either way.
   */
  speculationOff?: string;
}

export class StatsAcc {
  newTokens = 0;
  cachedPromptTokens = 0;
  targetForwards = 0;
  proposed = 0;
  accepted = 0;
  acceptedPerPosition: number[] = [];
  proposedPerPosition: number[] = [];
  nodesPerStep: Record<number, number> = {};
  private readonly counters0: TransferStats = transferCounters();

  /**
   * The forwards of the engine's last call for this sequence (one step, or a chain of them): tokens
   * emitted and nodes of each, so that dropTail can take whole steps off the end. (Two arrays reused
   * with a length: a small model records a step every ~40 us.)
   */
  private readonly recentEmitted: number[] = [];
  private readonly recentNodes: number[] = [];
  private readonly recentDepth: number[] = [];
  private recentLen = 0;

  private recent(emitted: number, nodes: number, depth: number): void {
    this.recentEmitted[this.recentLen] = emitted;
    this.recentNodes[this.recentLen] = nodes;
    this.recentDepth[this.recentLen++] = depth;
  }

  /** `steps` plain steps run as one native chain: a forward and a token each. */
  addPlainSteps(steps: number): void {
    this.targetForwards += steps;
    this.newTokens += steps;
    this.nodesPerStep[1] = (this.nodesPerStep[1] ?? 0) + steps;
    this.recentLen = 0;
    for (let i = 0; i < steps; i++) this.recent(1, 1, 0);
  }

  /**
   * The steps of a native draft chain (CausalLM.speculativeChain) for sequence b of B: drafted[i * B
   * + b] draft tokens proposed at step i (a chain), accepted[i * B + b] of them accepted.
   */
  addChainSteps(drafted: Int32Array, accepted: Int32Array, b: number, B: number): void {
    this.recentLen = 0;
    for (let i = b; i < drafted.length; i += B) {
      const k = drafted[i] as number;
      const a = accepted[i] as number;
      this.targetForwards++;
      this.nodesPerStep[k + 1] = (this.nodesPerStep[k + 1] ?? 0) + 1;
      this.newTokens += a + 1;
      this.recent(a + 1, k + 1, k);
      this.proposed += k;
      for (let d = 1; d <= k; d++) bump(this.proposedPerPosition, d - 1);
      this.accepted += a;
      for (let d = 1; d <= a; d++) bump(this.acceptedPerPosition, d - 1);
    }
  }

  /**
   * The steps of a native heads chain (CausalLM.medusaChain) for sequence b of B: trees of
   * nodes[i * B + b] nodes, depths[i * B + b] deep, accepted[i * B + b] drafts accepted.
   */
  addTreeSteps(nodes: Int32Array, depths: Int32Array, accepted: Int32Array, b: number, B: number): void {
    this.recentLen = 0;
    for (let i = b; i < nodes.length; i += B) {
      const n = nodes[i] as number;
      const depth = depths[i] as number;
      const a = accepted[i] as number;
      this.targetForwards++;
      this.nodesPerStep[n] = (this.nodesPerStep[n] ?? 0) + 1;
      this.newTokens += a + 1;
      this.recent(a + 1, n, depth);
      this.proposed += n - 1;
      for (let d = 1; d <= depth; d++) bump(this.proposedPerPosition, d - 1);
      this.accepted += a;
      for (let d = 1; d <= a; d++) bump(this.acceptedPerPosition, d - 1);
    }
  }

  /**
   * The last call's final n emitted tokens were cut (a stop, maxNewTokens): not counted as new
   * tokens; the steps of a chain whose tokens all lie past the cut made no output, and are not
   * counted as forwards or steps either.
   */
  dropTail(n: number): void {
    this.newTokens -= n;
    let i = this.recentLen - 1;
    while (i >= 0 && n >= (this.recentEmitted[i] as number)) {
      // (Only a chain's steps lie wholly past a cut.)
      const emitted = this.recentEmitted[i] as number;
      const nodes = this.recentNodes[i] as number;
      const depth = this.recentDepth[i] as number;
      n -= emitted;
      this.targetForwards--;
      const left = (this.nodesPerStep[nodes] as number) - 1;
      if (left > 0) this.nodesPerStep[nodes] = left;
      else delete this.nodesPerStep[nodes];
      this.proposed -= nodes - 1;
      for (let d = 1; d <= depth; d++) this.proposedPerPosition[d - 1] = (this.proposedPerPosition[d - 1] as number) - 1;
      this.accepted -= emitted - 1;
      for (let d = 1; d < emitted; d++) this.acceptedPerPosition[d - 1] = (this.acceptedPerPosition[d - 1] as number) - 1;
      i--;
    }
    this.recentLen = i + 1;
    // (As the steps left would have made them: no zeros past the last position reached.)
    while (this.proposedPerPosition[this.proposedPerPosition.length - 1] === 0) this.proposedPerPosition.pop();
    while (this.acceptedPerPosition[this.acceptedPerPosition.length - 1] === 0) this.acceptedPerPosition.pop();
  }

  addStep(proposal: Proposal, acceptedLen: number, emitted: number): void {
    this.recentLen = 0;
    this.recent(emitted, proposal.tokens.length, 0);
    this.targetForwards++;
    this.nodesPerStep[proposal.tokens.length] = (this.nodesPerStep[proposal.tokens.length] ?? 0) + 1;
    this.newTokens += emitted;
    if (proposal.tokens.length === 1) return;  // a lone root: nothing proposed, nothing accepted
    const depth = treeDepths(proposal.parents);
    let maxD = 0;
    for (const d of depth) {
      if (d > 0) this.proposed++;
      maxD = Math.max(maxD, d);
    }
    for (let d = 1; d <= maxD; d++) bump(this.proposedPerPosition, d - 1);
    this.accepted += acceptedLen - 1;
    for (let d = 1; d < acceptedLen; d++) bump(this.acceptedPerPosition, d - 1);
  }

  finish(phases: PhaseTimes, seconds: number): DecodeStats {
    return {
      newTokens: this.newTokens,
      targetForwards: this.targetForwards,
      tokensPerForward: this.targetForwards > 0 ? this.newTokens / this.targetForwards : 0,
      proposedDraftTokens: this.proposed,
      acceptedDraftTokens: this.accepted,
      acceptanceRate: this.proposed > 0 ? this.accepted / this.proposed : 0,
      acceptedPerPosition: this.acceptedPerPosition.slice(),
      proposedPerPosition: this.proposedPerPosition.slice(),
      nodesPerStep: { ...this.nodesPerStep },
      phases: { ...phases },
      transfers: transfersSince(this.counters0),
      seconds,
      tokensPerSecond: seconds > 0 ? this.newTokens / seconds : 0,
      cachedPromptTokens: this.cachedPromptTokens,
    };
  }
}

function bump(a: number[], i: number): void {
  while (a.length <= i) a.push(0);
  a[i] = (a[i] as number) + 1;
}

// ---- the engine ----------------------------------------------------------------------------------

/** A model sequence and its tokens: what a new sequence may start from (EngineSequence, or one the engine keeps). */
export interface PrefixSource {
  readonly modelSeq: number;
  /** Its tokens; the first `committed` are in its KV cache. */
  readonly history: ArrayLike<number>;
  readonly committed: number;
  /** Freed (its model sequence gone). */
  readonly released: boolean;
  /** A finished sequence whose speculator state the speculator keeps (Speculator.keep; SpecEngine.retain). */
  readonly kept?: SpecSequence | undefined;
}

/** A sequence to start from: its first `length` committed tokens are the new sequence's too. */
export interface SharedPrefix {
  readonly from: PrefixSource;
  readonly length: number;
  /** The source's prompt log-probabilities (entries 0 .. length - 1 are the new sequence's too). */
  readonly promptLogprobs?: LogprobsSink;
}

/** Engine-side state of a sequence (the speculator sees it read-only as a SpecSequence). */
export class EngineSequence implements SpecSequence {
  history: number[];
  committed = 0;
  maxDepth = 0;
  maxPosition: number;
  /** SpecSequence.maxNodes (the Engine sets it every step). */
  maxNodes = DEFAULT_TREE_RESERVE;
  released = false;
  /** Tokens that end the sequence (EOS, the request's stop tokens): a native chain stops after one. */
  stopTokens: Int32Array | undefined;
  /** GenerateOptions.prediction (SpecSequence.prediction). */
  prediction: Int32Array | undefined;
  /**
   * Where the log-probabilities of its emitted tokens go (the request's `logprobs`), in emission
   * order: from its root pick, its steps' verifications, or the native chains where the model
   * computes them in the chain (CausalLM.chainLogprobs; without it no chain is taken).
   */
  logprobs: LogprobsSink | undefined;
  /**
   * Where its prompt's log-probabilities go (the request's `promptLogprobs`): entry j is token
   * j + 1's under the target's raw distribution at position j. catchUp feeds the rows they are read
   * on with every row's logits before anything else.
   */
  promptLogprobs: LogprobsSink | undefined;
  /**
   * The request's min_tokens: its stop tokens (stopTokens, ascending) are banned on every row that
   * predicts an output position below it. 0: none.
   */
  minTokens = 0;
  /**
   * The request's grammar (GenerateOptions.grammar) along its output: every row it is picked or
   * verified from keeps only the tokens the grammar allows after that row's output (the history's,
   * plus its tree path), after the penalties.
   */
  grammar: GrammarCursor | undefined;
  /**
   * What the grammar threw when asked for a row's allowed tokens (it allows none there): the
   * sequence's rows went unmasked, and the engine fails its request with this, its tokens unseen.
   */
  grammarError: unknown = undefined;
  readonly stats = new StatsAcc();

  constructor(
    readonly key: number,
    readonly modelSeq: number,
    prompt: ArrayLike<number>,
    readonly promptLength: number,
    readonly rng: SeqRng,
    maxPositions: number,
  ) {
    this.history = Array.from(prompt);
    this.maxPosition = maxPositions - 1;
  }
}


/** KV tokens kept free per sequence for its next tree, and so the most nodes a tree has (EngineOptions.treeReserveTokens). */
export const DEFAULT_TREE_RESERVE = 64;

/** Sequence keys are unique in the process, so concurrent runs sharing a speculator never collide. */
let nextSequenceKey = 0;

export interface EngineOptions {
  readonly model: CausalLM;
  readonly speculator?: Speculator;
  readonly sampling?: SamplingConfig;
  /** Penalties on every row the engine picks or verifies from (its native chains apply them too). */
  readonly penalties?: Penalties;
}

/**
 * One model + one speculator + the sequences being decoded. Not safe for concurrent steps on the
 * same sequences; different engines may share a model (sequences are independent).
 */
export class SpecEngine {
  readonly model: CausalLM;
  readonly speculator: Speculator | undefined;
  readonly sampling: SamplingConfig | undefined;
  readonly penalties: ResolvedPenalties | undefined;
  readonly phases: PhaseTimes = { prefill: 0, draft: 0, target: 0, verify: 0, commit: 0, update: 0 };
  /**
   * The last shared step this engine took part in: whether it was a speculative step (one verifying
   * forward; false for a plain chain) and its seconds from the proposal to the speculator's update.
   * The Engine's loop prices what it adds around such a step (ForwardCost.observeLoopOverhead).
   */
  readonly lastStep = { speculative: false, seconds: 0, steps: 1 };

  constructor(opts: EngineOptions) {
    checkModel(opts.model, 'model');
    if (opts.speculator !== undefined) checkSpeculator(opts.speculator, 'speculator');
    this.model = opts.model;
    this.speculator = opts.speculator;
    this.sampling = isSampling(opts.sampling) ? opts.sampling : undefined;
    this.penalties = resolvePenalties(opts.penalties, 'penalties', opts.model.config.vocabSize);
  }

  ctx(signal?: AbortSignal): ProposeContext {
    // Without a signal the same (frozen) object every step: two allocations fewer per step.
    if (!signal && this.ctx0) return this.ctx0;
    const c: { sampling?: SamplingConfig; signal?: AbortSignal; penalties?: ResolvedPenalties } = {};
    if (this.sampling) c.sampling = this.sampling;
    if (this.penalties) c.penalties = this.penalties;
    if (signal) c.signal = signal;
    else this.ctx0 = Object.freeze(c);
    return c;
  }
  private ctx0: ProposeContext | undefined;

  /**
   * The context of a step this engine makes alone: ctx() with draftChains when the engine can run a
   * chain of speculative steps (the model has speculativeChain or medusaChain; a sampled engine runs
   * sampled draft chains, and speculators offer only the chains they can run sampled).
   */
  soloCtx(signal?: AbortSignal): ProposeContext {
    if (!(this.model.speculativeChain || this.model.medusaChain)) return this.ctx(signal);
    if (!signal && this.soloCtx0) return this.soloCtx0;
    const c: { sampling?: SamplingConfig; signal?: AbortSignal; penalties?: ResolvedPenalties; draftChains: true } = { draftChains: true };
    if (this.sampling) c.sampling = this.sampling;
    if (this.penalties) c.penalties = this.penalties;
    if (signal) c.signal = signal;
    else this.soloCtx0 = Object.freeze(c);
    return c;
  }
  private soloCtx0: ProposeContext | undefined;

  /** A new sequence over `history` (nothing cached yet). */
  open(history: ArrayLike<number>, promptLength: number, rng: SeqRng, prefix?: SharedPrefix): EngineSequence {
    for (let i = 0; i < history.length; i++) {
      const t = history[i] as number;
      if (!Number.isInteger(t) || t < 0 || t >= this.model.config.vocabSize) {
        throw codedError('E_ARG', `prompt[${i}] = ${t} is outside the vocabulary [0, ${this.model.config.vocabSize})`);
      }
    }
    if (!prefix) return new EngineSequence(nextSequenceKey++, this.model.createSequence(), history, promptLength, rng, this.model.config.maxPositions);
    // The source's committed pages, shared (copy-on-write), cut to the common prefix: its first
    // `length` tokens are this sequence's, their K/V the same bits a prefill of them would write.
    const src = prefix.from;
    if (src.released || prefix.length > src.committed || prefix.length >= history.length) {
      throw codedError('E_INTERNAL', `a shared prefix of ${prefix.length} tokens from a sequence with ${src.committed} committed, for ${history.length} tokens`);
    }
    for (let i = 0; i < prefix.length; i++) {
      if (src.history[i] !== history[i]) throw codedError('E_INTERNAL', `a shared prefix that differs at token ${i}`);
    }
    const modelSeq = this.model.forkSequence(src.modelSeq);
    try {
      if (this.model.sequenceLength(modelSeq) > prefix.length) this.model.truncate(modelSeq, prefix.length);
    } catch (e) {
      this.model.freeSequence(modelSeq);
      throw e;
    }
    const s = new EngineSequence(nextSequenceKey++, modelSeq, history, promptLength, rng, this.model.config.maxPositions);
    s.committed = prefix.length;
    const from = src instanceof EngineSequence ? src : src.kept;
    if (from && this.speculator?.shareFrom) {
      try {
        this.speculator.shareFrom(s, from, prefix.length);
      } catch (e) {
        // No room to fork the speculator's own cache: it starts fresh (sharing is an optimisation).
        if ((e as { code?: unknown } | null)?.code !== 'E_KV_FULL') {
          this.close(s);
          throw e;
        }
      }
    }
    return s;
  }

  /**
   * Keeps the sequence's model sequence (its KV cache), which the caller now owns (a prefix for
   * later sequences: Engine's prefixCache); close() then does nothing. The speculator keeps its
   * state too where it can (Speculator.keep): `kept` is then the sequence to pass as a source's
   * `kept` and, when the caller lets it go, to the speculator's release(); else it is released now.
   */
  retain(seq: EngineSequence): { modelSeq: number; kept: SpecSequence | undefined } {
    if (seq.released) throw codedError('E_INTERNAL', 'retain: the sequence was released');
    seq.released = true;
    if (this.speculator?.keep) {
      this.speculator.keep(seq);
      return { modelSeq: seq.modelSeq, kept: seq };
    }
    this.speculator?.release(seq);
    return { modelSeq: seq.modelSeq, kept: undefined };
  }

  /** Frees the sequence in the model and in the speculator (idempotent). */
  close(seq: EngineSequence): void {
    if (seq.released) return;
    seq.released = true;
    try {
      this.speculator?.release(seq);
    } finally {
      this.model.freeSequence(seq.modelSeq);
    }
  }

  /**
   * Feeds each sequence's uncached tokens (all but the root; with `pickRoot`, all of them, then the
   * token that follows is picked from the last row and becomes the root), commits them, and shows
   * the output to the speculator. Sequences with nothing to feed are skipped.
   */
  async catchUp(seqs: readonly EngineSequence[], pickRoot: boolean, signal?: AbortSignal): Promise<void> {
    for (const s of seqs) {
      if (s.promptLogprobs) {
        await this.feedPromptRows(seqs, signal);
        break;
      }
    }
    const t0 = performance.now();
    const todo = seqs.filter((s) => s.history.length - (pickRoot ? 0 : 1) > s.committed);
    if (todo.length === 0) return;
    const inputs: SequenceInput[] = todo.map((s) => ({
      seq: s.modelSeq,
      tokens: Int32Array.from(s.history.slice(s.committed, s.history.length - (pickRoot ? 0 : 1))),
    }));
    for (const [b, s] of todo.entries()) {
      const last = s.committed + (inputs[b] as SequenceInput).tokens.length - 1;
      if (last > s.maxPosition) throw codedError('E_ARG', `sequence of ${last + 1} tokens exceeds the model's ${s.maxPosition + 1} positions`);
    }
    throwIfAborted(signal);
    // Only the last row's logits are read (the root's pick): the model may skip the LM head elsewhere.
    const out = await this.model.forward(inputs, { ...forwardOptions(this.speculator?.wantsHidden === true, signal, undefined, this.speculator?.auxLayers), lastLogitsOnly: true });
    try {
      this.model.commit(
        todo.map((s) => s.modelSeq),
        inputs.map((i) => Int32Array.from({ length: i.tokens.length }, (_, k) => k)),
      );
      const lastRows = Int32Array.from(todo, (_, b) => (out.indptr[b + 1] as number) - 1);
      todo.forEach((s, b) => {
        s.committed += (inputs[b] as SequenceInput).tokens.length;
        s.stats.targetForwards++;
      });
      if (pickRoot) {
        const logitRows = out.logitsRows === 'last' ? Int32Array.from(todo, (_, b) => b) : lastRows;
        const pen = this.penalties;
        todo.forEach((s, b) => {
          const ban = stopBan(s);
          if (pen || ban) penalizeRow(out.logits, logitRows[b] as number, pen ?? NO_PENALTIES, { tokens: s.history, promptLength: s.promptLength }, ban);
        });
        if (anyGrammar(todo)) maskRootRows(out.logits, todo, logitRows);
        const roots = pickTokens(out.logits, logitRows, this.sampling, todo.map((s) => s.rng));
        todo.forEach((s, b) => {
          s.history.push(roots[b] as number);
          s.stats.newTokens++;
        });
        recordLogprobs(out.logits, todo, (b) => [logitRows[b] as number], (b) => Int32Array.of(roots[b] as number));
      }
      this.phases.prefill += (performance.now() - t0) / 1000;
      const t1 = performance.now();
      await this.speculator?.prefill(todo, out, lastRows, this.ctx(signal));
      this.phases.draft += (performance.now() - t1) / 1000;
    } finally {
      disposeOutput(out);
    }
  }

  /**
   * Feeds the prompt rows whose log-probabilities sequences still lack (EngineSequence.promptLogprobs:
   * positions up to promptLength - 2, so the root's row is catchUp's as usual), in forwards that
   * return every row's logits within promptLogitsBudget, and shows each to the speculator as a
   * catch-up: the same cache and speculator state as one prefill.
   */
  private async feedPromptRows(seqs: readonly EngineSequence[], signal?: AbortSignal): Promise<void> {
    const V = this.model.config.vocabSize;
    for (;;) {
      const items = seqs.map((s): PromptRows | undefined => (s.promptLogprobs ? { tokens: s.history, promptLength: s.promptLength, committed: s.committed, sink: s.promptLogprobs } : undefined));
      const counts = planPromptRows(items, V);
      if (!counts) return;
      throwIfAborted(signal);
      const t0 = performance.now();
      const todo: EngineSequence[] = [];
      const inputs: SequenceInput[] = [];
      const fed: PromptRows[] = [];
      seqs.forEach((s, b) => {
        const n = counts[b] as number;
        if (n === 0) return;
        todo.push(s);
        inputs.push({ seq: s.modelSeq, tokens: Int32Array.from(s.history.slice(s.committed, s.committed + n)) });
        fed.push(items[b] as PromptRows);
      });
      const out = await this.model.forward(inputs, forwardOptions(this.speculator?.wantsHidden === true, signal, undefined, this.speculator?.auxLayers));
      try {
        this.model.commit(
          todo.map((s) => s.modelSeq),
          inputs.map((i) => Int32Array.from({ length: i.tokens.length }, (_, k) => k)),
        );
        recordPromptRows(out.logits, out.indptr, fed, Int32Array.from(inputs, (i) => i.tokens.length));
        todo.forEach((s, b) => {
          s.committed += (inputs[b] as SequenceInput).tokens.length;
          s.stats.targetForwards++;
        });
        this.phases.prefill += (performance.now() - t0) / 1000;
        const t1 = performance.now();
        await this.speculator?.prefill(todo, out, Int32Array.from(todo, (_, b) => (out.indptr[b + 1] as number) - 1), this.ctx(signal));
        this.phases.draft += (performance.now() - t1) / 1000;
      } finally {
        disposeOutput(out);
      }
    }
  }

  /**
   * One speculative step for every sequence given (each must have maxDepth set and its root as the
   * last history token). Returns the emitted tokens per sequence (already appended to history).
   */
  async step(seqs: readonly EngineSequence[], signal?: AbortSignal): Promise<Int32Array[]> {
    return SpecEngine.stepShared([{ engine: this, seqs }], signal);
  }

  /**
   * One speculative step over several engines' sequences with ONE target forward: engines that
   * share the model and the speculator but differ in sampling settings (the continuous-batching
   * engine's requests). Each part proposes with its own settings, is verified on its own rows of
   * the shared forward (gathered into a tensor of their own when there is more than one part), and
   * is committed in the same commit call. Returns the emitted tokens per part, per sequence.
   */
  static async stepShared(parts: readonly StepPart[], signal?: AbortSignal): Promise<Int32Array[]> {
    let empty = false;
    for (const p of parts) empty ||= p.seqs.length === 0;
    const live = empty ? parts.filter((q) => q.seqs.length > 0) : parts;
    const first = live[0];
    if (!first) return [];
    const { model, speculator } = first.engine;
    for (const p of live) {
      if (p.engine.model !== model || p.engine.speculator !== speculator) {
        throw codedError('E_ARG', 'stepShared: every part must share the model and the speculator');
      }
    }
    // Phase boundaries, added to the statistics once the step is done (batch-wide phases count once
    // per engine taking part, as the statistics of a batch do; a failed step adds nothing).
    const t0 = performance.now();
    throwIfAborted(signal);
    const batches: ProposalBatch[] = [];
    const owned: Tensor[] = [];
    let out: ForwardOutput | undefined;
    try {
      for (const p of live) {
        let batch: ProposalBatch;
        if (speculator) {
          // (Awaited only when it is a promise: a synchronous speculator costs no microtask turn.)
          // (A sequence recording log-probabilities is offered a draft or heads chain where the model computes them in it.)
          // (A grammar's masks are the engine's, row by row: no native chain.)
          const r = speculator.propose(p.seqs, live.length === 1 && (model.chainLogprobs || !anyLogprobs(p.seqs)) && !anyGrammar(p.seqs) ? p.engine.soloCtx(signal) : p.engine.ctx(signal));
          batch = isThenable(r) ? await r : r;
        } else batch = { proposals: loneRoots(p.seqs) };
        batches.push(batch);
        if (batch.owned) for (const o of batch.owned) owned.push(o);
        if (batch.draftProbs) owned.push(batch.draftProbs);
      }
      const proposals = new Array<readonly Proposal[]>(live.length);
      for (let i = 0; i < live.length; i++) {
        const p = live[i] as StepPart;
        const batch = batches[i] as ProposalBatch;
        // The engine's own lone roots (no speculator) need no checking.
        if (!speculator) {
          proposals[i] = batch.proposals;
          continue;
        }
        const kept: (Int32Array | undefined)[] = [];
        const checked = p.engine.checkProposals(p.seqs, batch, kept);
        if (checked !== batch.proposals && batch.draftProbs) {
          // A pruned or cut tree keeps each node's children all, none, or the first ones in order,
          // so its nodes' rows are still the distributions their kept children were drawn from:
          // the batch's q rows become those of the kept nodes (gathered on the device).
          const probs = keptDraftRows(batch, kept, speculator.name);
          owned.push(probs);
          batches[i] = { ...batch, draftProbs: probs };
        }
        proposals[i] = checked;
      }
      const tDraft = performance.now();
      throwIfAborted(signal);
      const offer = (batches[0] as ProposalBatch).draftChain;
      if (offer) return await SpecEngine.draftChain(first, offer, t0, tDraft, signal);
      const heads = (batches[0] as ProposalBatch).headsChain;
      if (heads) return await SpecEngine.headsChain(first, heads, t0, tDraft, signal);
      // (Sequences recording log-probabilities take a plain chain where the model computes them in it.)
      const chain = (!model.chainLogprobs && live.some((p) => anyLogprobs(p.seqs))) || live.some((p) => anyGrammar(p.seqs)) ? undefined : plainChainSteps(live, batches, proposals, model, speculator);
      for (const p of live) p.engine.lastStep.speculative = false;
      if (chain) return await SpecEngine.plainChain(live, chain, t0, tDraft, signal);
      // (Loops rather than flat/flatMap/spreads: a small model's whole step is ~100 us, and this
      // runs once per step.)
      const single = live.length === 1;
      const allSeqs: readonly EngineSequence[] = single ? first.seqs : live.flatMap((p) => p.seqs);
      const allProposals: readonly Proposal[] = single ? (proposals[0] as readonly Proposal[]) : proposals.flat();
      const inputs: SequenceInput[] = new Array<SequenceInput>(allProposals.length);
      for (let b = 0; b < inputs.length; b++) inputs[b] = forwardInput((allSeqs[b] as EngineSequence).modelSeq, allProposals[b] as Proposal);
      // The verifications' inputs go with the forward's upload (one upload a step): one part's
      // trees as they are, several parts' each verified on their own rows (stage.parts).
      const staging = single ? oneStaging(first.engine.verifyInputs(allProposals, allSeqs)) : SpecEngine.stageParts(live, proposals);
      out = await model.forward(inputs, forwardOptions(speculator?.wantsHidden === true, signal, staging.stage, speculator?.auxLayers));
      const tTarget = performance.now();
      // The measured forward refines the model's cost curve (tree sizing reads it).
      const cost = knownForwardCost(model);
      const nodes = out.indptr[inputs.length] as number;
      const trees = nodes > inputs.length;
      // c(n) is the forward's own time where the model measures it; the rest of the call (its
      // crossing) is overhead, as a native chain's steps count it.
      const forwardSeconds = out.seconds ?? (tTarget - tDraft) / 1000;
      if (trees) cost?.observeStep(nodes, forwardSeconds);
      throwIfAborted(signal);
      // Penalties before verification: every row sees its sequence's history and its tree path.
      for (let i = 0, seq0 = 0; i < live.length; i++) {
        const p = live[i] as StepPart;
        const pen = p.engine.penalties ?? (anyStopBan(p.seqs) ? NO_PENALTIES : undefined);
        if (pen) penalizeRows(out, seq0, p.seqs, proposals[i] as readonly Proposal[], pen);
        if (anyGrammar(p.seqs)) maskTreeRows(out, seq0, p.seqs, proposals[i] as readonly Proposal[]);
        seq0 += p.seqs.length;
      }

      // Verification per part, on the part's rows of the forward; several parts in one native call
      // whose results are read back together (one wait a step).
      const results: PartResult[] = [];
      if (single) {
        const pre = staging.pres[0];
        const staged = pre && out.staged ? { handle: out.staged } : undefined;
        const r = first.engine.verifyPart(proposals[0] as readonly Proposal[], out, first.seqs, (batches[0] as ProposalBatch).draftProbs, owned, pre, staged);
        r.output = out;
        results.push(r as PartResult);
      } else {
        const subs = new Array<ForwardOutput>(live.length);
        const vins = new Array<VerifyInput>(live.length);
        for (let i = 0, seq0 = 0; i < live.length; i++) {
          const p = live[i] as StepPart;
          const sub = (subs[i] = partOutput(out, seq0, p.seqs.length, owned));
          const pre = staging.pres[i];
          const staged = pre && out.staged ? { handle: out.staged, part: i } : undefined;
          vins[i] = p.engine.verifyInput(proposals[i] as readonly Proposal[], sub, p.seqs, (batches[i] as ProposalBatch).draftProbs, (x) => owned.push(x), pre, staged);
          seq0 += p.seqs.length;
        }
        const vs = verifyMany(vins);
        for (let i = 0; i < vs.length; i++) {
          const r = partOf(vs[i] as VerifyOutput);
          r.output = subs[i] as ForwardOutput;
          results.push(r as PartResult);
        }
      }
      const tVerify = performance.now();

      const accepted: readonly Int32Array[] = single ? (results[0] as PartResult).accepted : results.flatMap((r) => r.accepted);
      const modelSeqs = new Array<number>(allSeqs.length);
      for (let b = 0; b < allSeqs.length; b++) modelSeqs[b] = (allSeqs[b] as EngineSequence).modelSeq;
      // (K/V of a verified step move from the verifications' device results: no upload.)
      let paths: VerifiedPaths | VerifiedPaths[] | undefined;
      if (single) paths = (results[0] as PartResult).paths;
      else for (const r of results) if (r.paths) (paths = (paths as VerifiedPaths[] | undefined) ?? []).push(r.paths);
      if (paths) model.commit(modelSeqs, accepted, paths);
      else model.commit(modelSeqs, accepted);
      for (let i = 0; i < live.length; i++) {
        const p = live[i] as StepPart;
        const r = results[i] as PartResult;
        const props = proposals[i] as readonly Proposal[];
        // Sampled deterministic drafts drew emitted token k at the step's offset + k (spec_math.h):
        // the counters move past all of them, so each token of the text has its own draw whatever
        // the trees (the same tokens as plain sampling).
        const perToken = p.engine.drawsPerToken((batches[i] as ProposalBatch).draftProbs);
        for (let b = 0; b < p.seqs.length; b++) {
          const s = p.seqs[b] as EngineSequence;
          const acc = r.accepted[b] as Int32Array;
          const em = r.emitted[b] as Int32Array;
          s.committed += acc.length;
          for (let k = 0; k < em.length; k++) s.history.push(em[k] as number);
          if (perToken) drawMore(s, em.length);
          s.stats.addStep(props[b] as Proposal, acc.length, em.length);
        }
      }
      // Log-probabilities of the emitted tokens, from the rows they were verified on (penalized):
      // emitted token k of sequence b follows its k-th accepted node.
      if (anyLogprobs(allSeqs)) {
        const emitted: readonly Int32Array[] = single ? (results[0] as PartResult).emitted : results.flatMap((r) => r.emitted);
        const o = out;
        recordLogprobs(o.logits, allSeqs, (b) => Array.from(accepted[b] as Int32Array, (node) => (o.indptr[b] as number) + node), (b) => emitted[b] as Int32Array);
      }
      const tCommit = performance.now();
      if (speculator) {
        for (let i = 0; i < live.length; i++) {
          const p = live[i] as StepPart;
          const r = results[i] as PartResult;
          const report: { -readonly [K in keyof StepReport]: StepReport[K] } = {
            proposals: proposals[i] as readonly Proposal[],
            output: r.output,
            acceptedNodes: r.accepted,
            emitted: r.emitted,
          };
          if (r.rowArgmax && speculator.wantsRowArgmax) report.rowArgmax = r.rowArgmax;
          if (r.headsTopK) report.headsTopK = r.headsTopK;
          const u = speculator.update(p.seqs, report, p.engine.ctx(signal));
          if (isThenable(u)) await u;
        }
      }
      const tEnd = performance.now();
      // What the step costs beside its forward and the speculator's proposal (verification, commit,
      // the speculator's update): the cost model adds it to every speculative step it prices. Only
      // steps that verified a tree count: a step of lone roots outside a chain is a plain step with
      // a strategy's extra work around it (Medusa's heads before a probe, a re-plan), and its
      // samples priced tree steps 50-70% above what they cost.
      if (trees) cost?.observeOverhead((tEnd - tDraft) / 1000 - forwardSeconds, speculator);
      for (const p of live) {
        p.engine.lastStep.speculative = trees;
        p.engine.lastStep.seconds = (tEnd - t0) / 1000;
        p.engine.lastStep.steps = 1;
      }
      addPhases(live, t0, tDraft, tTarget, tVerify, tCommit, tEnd);
      return single ? ((results[0] as PartResult).emitted as Int32Array[]) : results.flatMap((r) => r.emitted as Int32Array[]);
    } finally {
      for (const o of owned) o.dispose();
      if (out) disposeOutput(out);
    }
  }

  /**
   * Plain steps of every sequence in one native call (the model's greedyChain, or sampledChain for
   * one sampled part): steps[i] for the i-th sequence over the parts, each step a forward of the
   * root, its argmax (or draw) the next root, and the commit -- the same tokens and cache as that
   * many plain steps, without a return to JavaScript between them. The speculator (if any) hears of
   * them through updatePlain().
   */
  private static async plainChain(parts: readonly StepPart[], steps: number[], t0: number, tDraft: number, signal?: AbortSignal): Promise<Int32Array[]> {
    const first = parts[0] as StepPart;
    const { model, speculator } = first.engine;
    const seqs: readonly EngineSequence[] = parts.length === 1 ? first.seqs : parts.flatMap((p) => p.seqs);
    const recording = anyLogprobs(seqs);
    if (recording && !model.chainLogprobs) throw codedError('E_INTERNAL', 'a plain chain over a sequence that records log-probabilities, on a model without chainLogprobs');
    const inputs = new Array<SequenceInput>(seqs.length);
    let most = 0;
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as EngineSequence;
      inputs[b] = { seq: s.modelSeq, tokens: Int32Array.of(s.history[s.history.length - 1] as number) };
      most = Math.max(most, steps[b] as number);
    }
    // Penalties (one part: plainChainSteps): each pick sees its sequence's history and the chain's picks.
    const pen = first.engine.penalties;
    const opts: ChainOptions = { ...(signal ? { signal } : {}), ...chainPenalties(pen, seqs), ...(recording ? { logprobs: chainLogprobs(seqs) } : {}) };
    const sampling = first.engine.sampling;
    // Sampled (one part): each step's token is the sample op's draw at the sequence's next counter,
    // as a lone root's verification draws it (spec_math.h): the same tokens as one step at a time.
    // The counters are consecutive (SeqRng: base | counter); they move past the tokens kept.
    const firstOffsets = sampling ? seqs.map((s) => s.rng.next()) : undefined;
    const call = async (): Promise<Int32Array[]> => {
      if (!sampling) return (model.greedyChain as NonNullable<CausalLM['greedyChain']>).call(model, inputs, steps, opts);
      const offsets = (firstOffsets as bigint[]).map((o, b) => Array.from({ length: steps[b] as number }, (_, j) => o + BigInt(j)));
      const chain = model.sampledChain as NonNullable<CausalLM['sampledChain']>;
      const r = await chain.call(model, inputs, steps, samplingOptions(sampling), seqs.map((s) => s.rng.seed), offsets, opts);
      r.q.dispose();
      return r.picks;
    };
    const tStart = performance.now();
    let picks: Int32Array[];
    try {
      picks = await call();
    } catch (e) {
      // Out of KV pages for the whole chain: the one step the engine made room for. (A failed chain
      // leaves nothing committed.)
      if (most === 1 || (e as { code?: unknown } | null)?.code !== 'E_KV_FULL') throw e;
      steps.fill(1);
      most = 1;
      picks = await call();
    }
    const tTarget = performance.now();
    if (sampling) for (let b = 0; b < seqs.length; b++) drawMore(seqs[b] as EngineSequence, (picks[b] as Int32Array).length);
    observeChainStep(model, seqs.length, (tTarget - tStart) / 1000 / most);
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as EngineSequence;
      const got = picks[b] as Int32Array;
      s.committed += got.length;
      for (let k = 0; k < got.length; k++) s.history.push(got[k] as number);
      s.stats.addPlainSteps(got.length);
    }
    if (speculator?.updatePlain) {
      let b0 = 0;
      for (const p of parts) {
        speculator.updatePlain(p.seqs, steps.slice(b0, b0 + p.seqs.length), p.engine.ctx(signal));
        b0 += p.seqs.length;
      }
    }
    addPhases(parts, t0, tDraft, tTarget, tTarget, tTarget, performance.now());
    return picks;
  }

  /**
   * A speculator's draft chain (ProposalBatch.draftChain; offered only to a lone part, greedy or
   * sampled, on a model with speculativeChain): its steps in one native call, then their bookkeeping
   * as the ordinary steps would do it (chainDone) and the speculator's updateChain().
   */
  private static async draftChain(part: StepPart, offer: DraftChainOffer, t0: number, tDraft: number, signal?: AbortSignal): Promise<Int32Array[]> {
    const { model, speculator } = part.engine;
    const { seqs } = part;
    if (!speculator?.updateChain || !model.speculativeChain) throw codedError('E_INTERNAL', 'a draft chain without updateChain or speculativeChain');
    const recording = anyLogprobs(seqs);
    if (recording && !model.chainLogprobs) throw codedError('E_INTERNAL', 'a draft chain over a sequence that records log-probabilities, on a model without chainLogprobs');
    if (offer.seqs.length !== seqs.length) throw codedError('E_ARG', `${speculator.name}: a draft chain of ${offer.seqs.length} sequences for ${seqs.length}`);
    const B = seqs.length;
    const sampling = part.engine.sampling;
    const inputs = new Array<SpecChainSequence>(B);
    for (let b = 0; b < B; b++) {
      const s = seqs[b] as EngineSequence;
      const o = offer.seqs[b] as DraftChainOffer['seqs'][number];
      const i: { -readonly [K in keyof SpecChainSequence]: SpecChainSequence[K] } = { seq: s.modelSeq, draftSeq: o.draftSeq, draftFeed: o.draftFeed, k: Math.min(o.k, s.maxNodes - 1), budget: s.maxDepth + 1 };
      if (s.stopTokens) i.stop = s.stopTokens;
      if (sampling) {
        // The chain draws the sequence's counters from this one on (draws of them in all).
        i.seed = s.rng.seed;
        i.firstOffset = s.rng.next();
      }
      inputs[b] = i;
    }
    const opts: { -readonly [K in keyof SpecChainOptions]: SpecChainOptions[K] } = { maxSteps: offer.maxSteps, maxSeconds: CHAIN_SECONDS };
    if (signal) opts.signal = signal;
    if (sampling) opts.sampling = samplingOptions(sampling);
    const pen = chainPenalties(part.engine.penalties, seqs).penalties;
    if (pen) opts.penalties = pen;
    if (offer.draftPenalties !== undefined) opts.draftPenalties = offer.draftPenalties;
    if (recording) opts.logprobs = chainLogprobs(seqs);
    const tCall = performance.now();
    const r = await model.speculativeChain.call(model, offer.draft, inputs, opts);
    const tDone = performance.now();
    if (sampling) for (let b = 0; b < B; b++) drawMore(seqs[b] as EngineSequence, r.draws[b] as number);
    const nodes = new Int32Array(r.drafted.length);
    for (let i = 0; i < nodes.length; i++) nodes[i] = (r.drafted[i] as number) + 1;
    for (let b = 0; b < B; b++) (seqs[b] as EngineSequence).stats.addChainSteps(r.drafted, r.accepted, b, B);
    speculator.updateChain(seqs, r, part.engine.ctx(signal));
    return SpecEngine.chainDone(part, r, nodes, r.draftSeconds, t0, tDraft, tCall, tDone, offer.probe === true);
  }

  /**
   * A speculator's heads chain (ProposalBatch.headsChain; offered as a draft chain is): its steps in
   * one native call (CausalLM.medusaChain), then their bookkeeping as draftChain's.
   */
  private static async headsChain(part: StepPart, offer: HeadsChainOffer, t0: number, tDraft: number, signal?: AbortSignal): Promise<Int32Array[]> {
    const { model, speculator } = part.engine;
    const { seqs } = part;
    if (!speculator?.updateHeadsChain || !model.medusaChain) throw codedError('E_INTERNAL', 'a heads chain without updateHeadsChain or medusaChain');
    const recording = anyLogprobs(seqs);
    if (recording && !model.chainLogprobs) throw codedError('E_INTERNAL', 'a heads chain over a sequence that records log-probabilities, on a model without chainLogprobs');
    if (offer.seqs.length !== seqs.length) throw codedError('E_ARG', `${speculator.name}: a heads chain of ${offer.seqs.length} sequences for ${seqs.length}`);
    for (const s of seqs) {
      if (offer.template.parents.length > s.maxNodes) throw codedError('E_ARG', `${speculator.name}: a heads chain of ${offer.template.parents.length}-node trees > maxNodes ${s.maxNodes} (the KV room kept for a tree: treeReserveTokens)`);
    }
    const B = seqs.length;
    const sampling = part.engine.sampling;
    const inputs = new Array<MedusaChainSequence>(B);
    for (let b = 0; b < B; b++) {
      const s = seqs[b] as EngineSequence;
      const o = offer.seqs[b] as HeadsChainOffer['seqs'][number];
      const i: { -readonly [K in keyof MedusaChainSequence]: MedusaChainSequence[K] } = { seq: s.modelSeq, root: s.history[s.history.length - 1] as number, cands: o.cands, headsKnown: o.headsKnown, budget: s.maxDepth + 1 };
      if (s.stopTokens) i.stop = s.stopTokens;
      if (sampling) {
        // The chain draws one counter per emitted token from this one on (draws of them in all).
        i.seed = s.rng.seed;
        i.firstOffset = s.rng.next();
      }
      inputs[b] = i;
    }
    const opts: MedusaChainOptions = {
      topK: offer.topK, maxSteps: offer.maxSteps, maxSeconds: CHAIN_SECONDS, ...(signal ? { signal } : {}), ...(sampling ? { sampling: samplingOptions(sampling) } : {}),
      ...chainPenalties(part.engine.penalties, seqs),
      ...(recording ? { logprobs: chainLogprobs(seqs) } : {}),
    };
    const tCall = performance.now();
    const r = await model.medusaChain.call(model, offer.heads, inputs, offer.template, opts);
    const tDone = performance.now();
    if (sampling) for (let b = 0; b < B; b++) drawMore(seqs[b] as EngineSequence, r.draws[b] as number);
    const drafted = new Int32Array(r.nodes.length);
    for (let i = 0; i < drafted.length; i++) drafted[i] = (r.nodes[i] as number) - 1;
    for (let b = 0; b < B; b++) (seqs[b] as EngineSequence).stats.addTreeSteps(r.nodes, r.depths, r.accepted, b, B);
    speculator.updateHeadsChain(seqs, r, part.engine.ctx(signal));
    return SpecEngine.chainDone(part, r, r.nodes, undefined, t0, tDraft, tCall, tDone, offer.probe === true);
  }

  /**
   * After a native chain of steps (draftChain, headsChain): the histories, and the cost model's
   * samples -- each step's forward, and what the steps cost beside their forwards and drafting with
   * their share of the call's JavaScript -- the engine's last-step record and its phases. nodes: per
   * step and sequence (step-major).
   */
  private static chainDone(
    part: StepPart,
    r: { readonly steps: number; readonly emitted: Int32Array[]; readonly targetSeconds: Float64Array; readonly stepSeconds: Float64Array },
    nodes: Int32Array,
    draftSeconds: Float64Array | undefined,
    t0: number,
    tDraft: number,
    tCall: number,
    tDone: number,
    probe = false,
  ): Int32Array[] {
    const { model, speculator } = part.engine;
    const { seqs } = part;
    const B = seqs.length;
    for (let b = 0; b < B; b++) {
      const s = seqs[b] as EngineSequence;
      const em = r.emitted[b] as Int32Array;
      s.committed += em.length;
      for (let k = 0; k < em.length; k++) s.history.push(em[k] as number);
    }
    const tEnd = performance.now();
    const steps = r.steps;
    let native = 0;
    let draftS = 0;
    let targetS = 0;
    for (let i = 0; i < steps; i++) {
      native += r.stepSeconds[i] as number;
      draftS += draftSeconds ? (draftSeconds[i] as number) : 0;
      targetS += r.targetSeconds[i] as number;
    }
    const cost = knownForwardCost(model);
    let treeSteps = 0;
    let beside = 0;
    for (let i = 0; i < steps; i++) {
      let n = 0;
      for (let b = 0; b < B; b++) n += nodes[i * B + b] as number;
      if (n === B) continue;
      treeSteps++;
      beside += (r.stepSeconds[i] as number) - (draftSeconds ? (draftSeconds[i] as number) : 0) - (r.targetSeconds[i] as number);
      cost?.observeStep(n, r.targetSeconds[i] as number);
    }
    if (treeSteps > 0) {
      // One sample for the call: its steps' mean time beside drafting and forward, and its share of
      // the call's JavaScript (the proposal, the marshalling, the bookkeeping). A probe's call is one
      // step: its JavaScript is shared as a chain's would be (the steps CHAIN_SECONDS holds), so that
      // probes keep the estimate fresh while the choice is plain without pricing a step at a call.
      const js = Math.max(0, (tEnd - t0) / 1000 - native);
      const per = probe ? Math.min(CHAIN_MAX_STEPS, Math.max(1, Math.floor(CHAIN_SECONDS / Math.max(native / steps, 1e-9)))) : steps;
      cost?.observeOverhead(beside / treeSteps + js / per, speculator, treeSteps);
    }
    const ls = part.engine.lastStep;
    // (A probe's loop turn is no sample either: Engine prices what speculative steps add around them.)
    ls.speculative = treeSteps > 0 && !probe;
    ls.seconds = (tEnd - t0) / 1000;
    ls.steps = Math.max(1, steps);
    // Phases: the drafting, the forwards, the rest of the native steps as verification.
    const ph = part.engine.phases;
    ph.draft += (tDraft - t0) / 1000 + draftS;
    ph.target += targetS;
    ph.verify += Math.max(0, (tDone - tCall) / 1000 - draftS - targetS);
    ph.update += (tEnd - tDone) / 1000;
    return r.emitted;
  }

  /**
   * Several parts, each verified on its own rows: their trees' parents concatenated, their seeds and
   * counters at their sequences (zeros for a greedy part, which reads none), and the parts' sequence
   * offsets, so that the forward stages each part's node offsets too.
   */
  private static stageParts(parts: readonly StepPart[], proposals: readonly (readonly Proposal[])[]): Staging {
    const pres = parts.map((p, i) => p.engine.verifyInputs(proposals[i] as readonly Proposal[], p.seqs));
    if (pres.every((x) => x === undefined)) return { pres };
    const flats = pres.map((x, i) => x ?? flattenTrees(proposals[i] as readonly Proposal[]));
    const offs = new Int32Array(parts.length + 1);
    let nodes = 0;
    for (let i = 0; i < parts.length; i++) {
      offs[i + 1] = (offs[i] as number) + (parts[i] as StepPart).seqs.length;
      nodes += (flats[i] as FlatTrees).parents.length;
    }
    const parents = new Int32Array(nodes);
    for (let i = 0, at = 0; i < flats.length; i++) {
      parents.set((flats[i] as FlatTrees).parents, at);
      at += (flats[i] as FlatTrees).parents.length;
    }
    const stage: { parents: Int32Array; parts: Int32Array; seeds?: BigUint64Array; offsets?: BigUint64Array } = { parents, parts: offs };
    if (pres.some((x) => x?.seeds)) {
      const B = offs[parts.length] as number;
      stage.seeds = new BigUint64Array(B);
      stage.offsets = new BigUint64Array(B);
      pres.forEach((x, i) => {
        if (x?.seeds) stage.seeds?.set(x.seeds, offs[i] as number);
        if (x?.offsets) stage.offsets?.set(x.offsets, offs[i] as number);
      });
    }
    // Every part verifies (several parts go through verifyMany, lone roots included): each takes its staged arrays.
    return { pres: flats, stage };
  }

  /**
   * Whether this engine's sampled verification of a step without draft distributions takes one
   * counter per emitted token (rejection with deterministic drafts: Medusa's exact mode, lookahead,
   * prompt lookup, EAGLE, lone roots) rather than one per step.
   */
  drawsPerToken(draftProbs: Tensor | undefined): boolean {
    return !!this.sampling && !draftProbs && this.speculator?.samplingVerifyMode !== 'typical';
  }

  /**
   * The flattened trees (and the sampled verification's Philox keys and counters, drawn now) of a
   * step whose proposals need verify(), so that the forward can stage them; undefined when greedy
   * argmaxes alone decide (lone roots).
   */
  private verifyInputs(proposals: readonly Proposal[], seqs: readonly EngineSequence[]): VerifyStaging & FlatTrees | undefined {
    if (!this.sampling && allLoneRoots(proposals)) return undefined;
    const flat = flattenTrees(proposals);
    if (!this.sampling) return flat;
    return { ...flat, seeds: BigUint64Array.from(seqs, (s) => s.rng.seed), offsets: BigUint64Array.from(seqs, (s) => s.rng.next()) };
  }

  /**
   * Verifies one part's proposals against its rows (`out`); tensors it creates go to `owned`. `pre`:
   * verifyInputs() of these proposals, made before the forward (its counters are already drawn).
   */
  private verifyPart(
    proposals: readonly Proposal[],
    out: ForwardOutput,
    seqs: readonly EngineSequence[],
    draftProbs: Tensor | undefined,
    owned: Tensor[],
    pre?: VerifyStaging & FlatTrees,
    staged?: StagedRef,
  ): VerifiedPart {
    if (!this.sampling && allLoneRoots(proposals)) {
      // Greedy with nothing proposed (no speculator, or no n-gram match): greedy verification of a
      // lone root emits its argmax (the same order: lowest index on ties, NaN never wins), so the
      // argmax op alone gives the same tokens without the verify call's index arrays and outputs.
      const top = argmaxIds(out.logits);
      // One row per sequence: these are every row's argmax.
      const accepted = new Array<Int32Array>(proposals.length);
      const emitted = new Array<Int32Array>(proposals.length);
      for (let b = 0; b < proposals.length; b++) {
        accepted[b] = ROOT_ONLY;
        emitted[b] = top.subarray(b, b + 1);
      }
      return { accepted, emitted, rowArgmax: top };
    }
    return partOf(verify(this.verifyInput(proposals, out, seqs, draftProbs, (p) => owned.push(p), pre, staged)));
  }

  /**
   * The verification of the whole ragged batch (one native call: verify, or verifyMany for several
   * parts); keep(probs) hands the processed target rows back for disposal.
   */
  private verifyInput(
    proposals: readonly Proposal[],
    out: ForwardOutput,
    seqs: readonly EngineSequence[],
    draftProbs: Tensor | undefined,
    keep: (probs: Tensor) => void,
    pre?: VerifyStaging & FlatTrees,
    staged?: StagedRef,
  ): VerifyInput {
    const { logits, hidden } = out;
    const { nodeIndptr, parents, tokens } = pre ?? flattenTrees(proposals);
    const tails = proposals.some((p) => p.tail) ? proposals.map((p) => p.tail) : undefined;
    // (With penalties, the heads' candidates leave out what the penalized target avoids: each
    // sequence's history before this step's tokens, which only the device knows until the read.)
    const pen = this.penalties ? { penalties: { penalties: this.penalties, histories: histories(seqs) } } : {};
    const heads = this.speculator?.headsOnAccepted && hidden ? { ...this.speculator.headsOnAccepted, hidden, ...pen } : undefined;
    let vin: VerifyInput;
    if (!this.sampling) {
      vin = { mode: 'greedy', nodeIndptr, parents, tokens, target: logits };
      // (A staged forward applied the tails itself.)
      if (staged) setStaged(vin, staged);
      else if (tails) vin.tails = tails;
      if (this.speculator?.wantsRowArgmax) vin.argmaxOf = logits;
      if (heads) vin.headsOnAccepted = heads;
    } else {
      const probs = processLogits(logits, samplingOptions(this.sampling));
      keep(probs);
      const mode: VerifyMode = this.speculator?.samplingVerifyMode === 'typical' ? 'typical' : 'rejection';
      const v: { -readonly [K in keyof VerifyInput]: VerifyInput[K] } = {
        mode,
        nodeIndptr,
        parents,
        tokens,
        target: probs,
        seeds: pre?.seeds ?? BigUint64Array.from(seqs, (s) => s.rng.seed),
        offsets: pre?.offsets ?? BigUint64Array.from(seqs, (s) => s.rng.next()),
      };
      if (staged) setStaged(v, staged);
      else if (tails) v.tails = tails;
      if (mode === 'rejection' && draftProbs) v.draft = draftProbs;
      if (this.speculator?.wantsRowArgmax) v.argmaxOf = logits;
      if (heads) v.headsOnAccepted = heads;
      if (mode === 'typical') {
        if (this.speculator?.typicalThreshold !== undefined) v.typicalThreshold = this.speculator.typicalThreshold;
        if (this.speculator?.typicalAlpha !== undefined) v.typicalAlpha = this.speculator.typicalAlpha;
      }
      vin = v;
    }
    return vin;
  }

  /**
   * Validates the speculator's trees; prunes plain trees deeper than maxDepth, cuts those larger than
   * maxNodes. `kept[b]`, for a proposal changed so: the indices of its nodes that remain, in order.
   */
  checkProposals(seqs: readonly EngineSequence[], batch: ProposalBatch, kept?: (Int32Array | undefined)[]): readonly Proposal[] {
    const name = this.speculator?.name ?? 'plain';
    if (batch.proposals.length !== seqs.length) {
      throw codedError('E_ARG', `${name}: ${batch.proposals.length} proposals for ${seqs.length} sequences`);
    }
    let changed = false;
    const out = batch.proposals.map((p, b) => {
      const s = seqs[b] as EngineSequence;
      // A lone root (the speculator decodes plainly this step): only the root to check.
      if (p.tokens.length === 1 && p.parents.length === 1 && p.parents[0] === -1 && !p.mask && !p.positions && !p.tail) {
        if (p.tokens[0] !== s.history[s.history.length - 1]) {
          throw codedError('E_ARG', `${name} proposal[${b}]: node 0 is ${p.tokens[0]}, not the root ${s.history[s.history.length - 1]}`);
        }
        return p;
      }
      validateTree(p, `${name} proposal[${b}]`);
      if (p.tokens[0] !== s.history[s.history.length - 1]) {
        throw codedError('E_ARG', `${name} proposal[${b}]: node 0 is ${p.tokens[0]}, not the root ${s.history[s.history.length - 1]}`);
      }
      for (const tok of p.tokens) {
        if (tok < 0 || tok >= this.model.config.vocabSize) throw codedError('E_ARG', `${name} proposal[${b}]: token ${tok} outside the vocabulary`);
      }
      const hasNonCand = p.parents.some((x) => x === -2);
      if (hasNonCand && (!p.mask || !p.positions)) throw codedError('E_ARG', `${name} proposal[${b}]: -2 nodes need a mask and positions`);
      const depth = treeDepths(p.parents);
      let maxD = 0;
      for (const d of depth) maxD = Math.max(maxD, d);
      if (maxD > s.maxDepth) {
        if (p.mask || p.positions) throw codedError('E_ARG', `${name} proposal[${b}]: depth ${maxD} > maxDepth ${s.maxDepth}`);
        changed = true;
        // A device tail belongs to a chain: its pruned prefix keeps the same tail.
        if (p.tail && p.parents.some((x, i) => x !== i - 1)) throw codedError('E_ARG', `${name} proposal[${b}]: a device tail on a tree that is not a chain`);
        const prune = pruneTree(p, s.maxDepth);
        const pruned = cutTree(prune.tree, s.maxNodes);
        if (kept) kept[b] = prune.kept.subarray(0, pruned.tokens.length);
        return p.tail ? { ...pruned, tail: p.tail } : pruned;
      }
      if (p.tokens.length > s.maxNodes) {
        // More nodes than the KV room kept for the tree: its first maxNodes (a tree, see cutTree).
        if (p.mask || p.positions) throw codedError('E_ARG', `${name} proposal[${b}]: ${p.tokens.length} nodes > maxNodes ${s.maxNodes} (the KV room kept for a tree: treeReserveTokens)`);
        changed = true;
        const cut = cutTree(p, s.maxNodes);
        if (kept) kept[b] = Int32Array.from({ length: cut.tokens.length }, (_, i) => i);
        return p.tail ? { ...cut, tail: p.tail } : cut;
      }
      if (p.positions) {
        for (const pos of p.positions) {
          if (pos > s.maxPosition) throw codedError('E_ARG', `${name} proposal[${b}]: position ${pos} > ${s.maxPosition}`);
        }
      }
      return p;
    });
    return changed ? out : batch.proposals;
  }
}

/**
 * A batch's draft rows for its proposals as checkProposals left them: proposal b's rows are those of
 * its kept nodes (`kept[b]`, indices into its proposed nodes; undefined: all of them).
 */
function keptDraftRows(batch: ProposalBatch, kept: readonly (Int32Array | undefined)[], name: string): Tensor {
  const probs = batch.draftProbs as Tensor;
  const rows: number[] = [];
  let at = 0;
  batch.proposals.forEach((p, b) => {
    const k = kept[b];
    // A device tail carries draft state of its own that a cut would leave behind.
    if (k && p.tail) throw codedError('E_ARG', `${name}: proposal[${b}] has a device tail and draft probabilities, and is deeper than maxDepth or larger than maxNodes`);
    if (k) for (const i of k) rows.push(at + i);
    else for (let i = 0; i < p.tokens.length; i++) rows.push(at + i);
    at += p.tokens.length;
  });
  if (probs.shape.length !== 2 || probs.shape[0] !== at) {
    throw codedError('E_ARG', `${name}: draftProbs is [${probs.shape}], expected [${at}, V] (a row per proposed node)`);
  }
  return gatherRows(rows.map((row) => ({ tensor: probs, row })), probs.shape[1] as number, probs.device);
}

/** The sequences of one SpecEngine taking part in a shared step (SpecEngine.stepShared). */
export interface StepPart {
  readonly engine: SpecEngine;
  readonly seqs: readonly EngineSequence[];
}

/** A lone root's accepted path (read only: commit and the statistics never write it). */
const ROOT_ONLY = Int32Array.of(0);

/** verifyPart's result; stepShared adds the part's output. */
interface VerifiedPart {
  accepted: readonly Int32Array[];
  emitted: readonly Int32Array[];
  rowArgmax?: Int32Array;
  headsTopK?: Int32Array;
  paths?: VerifiedPaths;
  output?: ForwardOutput;
}

type FlatTrees = ReturnType<typeof flattenTrees>;

function partOf(v: VerifyOutput): VerifiedPart {
  const r: VerifiedPart = { accepted: v.acceptedNodes, emitted: v.emitted };
  if (v.paths) r.paths = v.paths;
  if (v.argmax) r.rowArgmax = v.argmax;
  if (v.headsTopK) r.headsTopK = v.headsTopK;
  return r;
}

/** A forward's staged verification inputs, and which of its parts a verification takes. */
interface StagedRef {
  readonly handle: StagedVerify;
  readonly part?: number;
}

function setStaged(v: { staged?: StagedVerify; stagedPart?: number }, s: StagedRef): void {
  v.staged = s.handle;
  if (s.part !== undefined) v.stagedPart = s.part;
}

/** Per part: what verifyPart needs made before the forward; and what the forward stages. */
interface Staging {
  readonly pres: readonly ((VerifyStaging & FlatTrees) | undefined)[];
  readonly stage?: VerifyStaging;
}

function oneStaging(pre: (VerifyStaging & FlatTrees) | undefined): Staging {
  return pre ? { pres: [pre], stage: pre } : { pres: [undefined] };
}


interface PartResult {
  readonly accepted: readonly Int32Array[];
  readonly emitted: readonly Int32Array[];
  readonly rowArgmax?: Int32Array;
  readonly headsTopK?: Int32Array;
  readonly paths?: VerifiedPaths;
  /** The part's rows of the forward (the forward itself when it is the only part). */
  readonly output: ForwardOutput;
}

/**
 * Sequences [seq0, seq0 + n) of a forward as an output of their own: their logits (and hidden) rows
 * gathered on the forward's device into tensors added to `owned`, indptr rebased to 0.
 */
function partOutput(out: ForwardOutput, seq0: number, n: number, owned: Tensor[]): ForwardOutput {
  const r0 = out.indptr[seq0] as number;
  const r1 = out.indptr[seq0 + n] as number;
  // A part's rows are contiguous: views, not copies (a copy of [rows, V] logits per part per step
  // costs bandwidth on a GPU at a large vocabulary).
  const rows = (x: Tensor): Tensor => {
    const v = x.rows(r0, r1);
    owned.push(v);
    return v;
  };
  const indptr = Int32Array.from({ length: n + 1 }, (_, b) => (out.indptr[seq0 + b] as number) - r0);
  return out.hidden ? { logits: rows(out.logits), hidden: rows(out.hidden), indptr } : { logits: rows(out.logits), indptr };
}

const NO_OPTIONS: ForwardOptions = {};
const HIDDEN: ForwardOptions = { hidden: true };

/** The forward's options (shared constant objects when there is no signal: one allocation fewer a step). */
function forwardOptions(hidden: boolean, signal: AbortSignal | undefined, stage?: VerifyStaging, auxLayers?: readonly number[]): ForwardOptions {
  if (auxLayers !== undefined && auxLayers.length > 0) return { ...forwardOptions(hidden, signal, stage), auxLayers };
  if (stage) {
    const o: { -readonly [K in keyof ForwardOptions]: ForwardOptions[K] } = { stage };
    if (hidden) o.hidden = hidden;
    if (signal) o.signal = signal;
    return o;
  }
  if (signal) return hidden ? { hidden, signal } : { signal };
  return hidden ? HIDDEN : NO_OPTIONS;
}

function isThenable<T>(x: T | PromiseLike<T>): x is PromiseLike<T> {
  return typeof (x as { then?: unknown } | undefined)?.then === 'function';
}

/** The sequences' histories as penalize() and the chains' penalties read them. */
function histories(seqs: readonly EngineSequence[]): PenaltyHistory[] {
  return seqs.map((s) => ({ tokens: s.history, promptLength: s.promptLength }));
}

/** A chain's penalties option for these sequences (none without penalties). */
function chainPenalties(pen: ResolvedPenalties | undefined, seqs: readonly EngineSequence[]): Pick<ChainOptions, 'penalties'> {
  const bans = anyStopBan(seqs) ? seqs.map(stopBan) : undefined;
  const p = pen ?? (bans ? NO_PENALTIES : undefined);
  return p ? { penalties: { penalties: p, histories: histories(seqs), ...(bans ? { bans } : {}) } } : {};
}

/** The sequence's stop ban this step (its min_tokens not reached: its stop tokens), if any. */
function stopBan(s: EngineSequence): StopBan | undefined {
  const before = s.minTokens - (s.history.length - s.promptLength);
  return before > 0 && s.stopTokens && s.stopTokens.length > 0 ? { tokens: s.stopTokens, before } : undefined;
}

function anyStopBan(seqs: readonly EngineSequence[]): boolean {
  for (const s of seqs) if (stopBan(s)) return true;
  return false;
}

/**
 * The penalties on the forward's rows of sequences seqs (the forward's sequences seq0 ..): each row
 * continues its sequence's history with the tokens of its tree path (read from the device where a
 * proposal's tokens are a draft's device tail: one read).
 */
function penalizeRows(out: ForwardOutput, seq0: number, seqs: readonly EngineSequence[], proposals: readonly Proposal[], pen: ResolvedPenalties): void {
  const r0 = out.indptr[seq0] as number, r1 = out.indptr[seq0 + seqs.length] as number;
  if (r1 <= r0) return;
  const rowSeq = new Int32Array(r1 - r0);
  const paths: Int32Array[] = [];
  const tails = new Map<Tensor, Int32Array>();
  for (let b = 0; b < seqs.length; b++) {
    const p = proposals[b] as Proposal;
    const tp = treePaths(proposalTokens(p, tails), p.parents);
    const a = (out.indptr[seq0 + b] as number) - r0;
    for (let i = 0; i < tp.length; i++) {
      rowSeq[a + i] = b;
      paths[a + i] = tp[i] as Int32Array;
    }
  }
  const rows = out.logits.rows(r0, r1);
  try {
    penalize(rows, pen, histories(seqs), rowSeq, paths, anyStopBan(seqs) ? seqs.map(stopBan) : undefined);
  } finally {
    rows.dispose();
  }
}

/** A proposal's tokens, a draft's device tail read (once per tail tensor, kept in `tails`). */
function proposalTokens(p: Proposal, tails: Map<Tensor, Int32Array>): Int32Array {
  if (!p.tail) return p.tokens;
  let ids = tails.get(p.tail.ids);
  if (!ids) tails.set(p.tail.ids, (ids = p.tail.ids.toInt32()));
  const tokens = Int32Array.from(p.tokens);
  tokens.set(ids.subarray(p.tail.offset, p.tail.offset + tokens.length - 1), 1);
  return tokens;
}

function anyGrammar(seqs: readonly EngineSequence[]): boolean {
  for (const s of seqs) if (s.grammar) return true;
  return false;
}

/**
 * s's grammar's allowed tokens at `st` for a row `depth` tokens below its root (its stop tokens
 * unless min_tokens bans them there), or undefined with what it threw kept in s.grammarError (its
 * request fails alone).
 */
function allowedOrError(s: EngineSequence, st: GrammarState, depth: number): Uint32Array | undefined {
  const ban = stopBan(s);
  try {
    return (s.grammar as GrammarCursor).grammar.allowed(st, ban && depth < ban.before ? undefined : s.stopTokens);
  } catch (e) {
    s.grammarError = e;
    return undefined;
  }
}

/**
 * Sequence s's grammar state after its history (its output so far, the root included); undefined,
 * with s.grammarError set, where the output left it (a grammar whose allowed() and next() disagree).
 */
function grammarState(s: EngineSequence): GrammarState | undefined {
  const c = s.grammar as GrammarCursor;
  const st = c.at(s.history, s.promptLength, s.history.length);
  if (!st) s.grammarError ??= codedError('E_INTERNAL', `${c.grammar.name}: the output left the grammar (a token it allowed, its next() refused)`);
  return st;
}

/** The grammars' masks on the root rows logitRows[b] of sequences seqs (their picks: the first output token). */
function maskRootRows(logits: Tensor, seqs: readonly EngineSequence[], logitRows: ArrayLike<number>): void {
  const rows: number[] = [];
  const masks: Uint32Array[] = [];
  seqs.forEach((s, b) => {
    const st = s.grammar && s.grammarError === undefined ? grammarState(s) : undefined;
    if (!st) return;
    const m = allowedOrError(s, st, 0);
    if (!m) return;
    rows.push(logitRows[b] as number);
    masks.push(m);
  });
  maskTokens(logits, rows, masks);
}

/**
 * The grammars' masks on the forward's rows of sequences seqs (the forward's sequences seq0 ..):
 * row i of a tree continues its sequence's output with the tokens of node i's path, and keeps the
 * tokens the grammar allows there. A row below a token the grammar rejects is never read (its
 * node has target probability 0), and is left as it is.
 */
function maskTreeRows(out: ForwardOutput, seq0: number, seqs: readonly EngineSequence[], proposals: readonly Proposal[]): void {
  const rows: number[] = [];
  const masks: Uint32Array[] = [];
  const tails = new Map<Tensor, Int32Array>();
  for (let b = 0; b < seqs.length; b++) {
    const s = seqs[b] as EngineSequence;
    if (!s.grammar || s.grammarError !== undefined) continue;
    const g = s.grammar.grammar;
    const p = proposals[b] as Proposal;
    const tokens = proposalTokens(p, tails);
    const r0 = out.indptr[seq0 + b] as number;
    // Node i's state from its parent's (parents precede their children); node 0 is the root, the
    // history's last token.
    const states = new Array<GrammarState | undefined>(tokens.length);
    const depths = new Int32Array(tokens.length);
    states[0] = grammarState(s);
    for (let i = 1; i < tokens.length; i++) {
      const up = states[p.parents[i] as number];
      states[i] = up === undefined ? undefined : g.next(up, tokens[i] as number);
      depths[i] = (depths[p.parents[i] as number] as number) + 1;
    }
    const at = rows.length;
    for (let i = 0; i < tokens.length; i++) {
      const st = states[i];
      if (!st) continue;
      const m = allowedOrError(s, st, depths[i] as number);
      if (!m) {
        // (None of this sequence's rows then: its request fails.)
        rows.length = masks.length = at;
        break;
      }
      rows.push(r0 + i);
      masks.push(m);
    }
  }
  maskTokens(out.logits, rows, masks);
}

/**
 * The steps of a plain chain per sequence (parts in order), or undefined for an ordinary step: the
 * decoding is greedy everywhere (the model has greedyChain) or sampled in one part (the model has
 * sampledChain), every proposal is a lone root, and the speculator (if any) offered plainSteps and
 * takes updatePlain. Never past a sequence's maxDepth + 1 tokens (maxNewTokens and the context).
 */
/** ChainOptions.logprobs for the sequences that record them: each pick's entry into its sink. */
function chainLogprobs(seqs: readonly EngineSequence[]): NonNullable<ChainOptions['logprobs']> {
  let k = 0;
  for (const s of seqs) if (s.logprobs) k = Math.max(k, s.logprobs.k);
  return { k, want: seqs.map((s) => s.logprobs !== undefined), sink: (b, lp) => (seqs[b] as EngineSequence).logprobs?.push(lp) };
}

/** Whether any of the sequences records log-probabilities (EngineSequence.logprobs). */
function anyLogprobs(seqs: readonly EngineSequence[]): boolean {
  for (const s of seqs) if (s.logprobs) return true;
  return false;
}

/**
 * The log-probabilities of sequence b's emitted tokens tokensOf(b) from rows rowsOf(b) of logits
 * (one native call for every sequence that records them), appended to their sinks.
 */
function recordLogprobs(logits: Tensor, seqs: readonly EngineSequence[], rowsOf: (b: number) => ArrayLike<number>, tokensOf: (b: number) => Int32Array): void {
  const rows: number[] = [];
  const tokens: number[] = [];
  let k = 0;
  for (let b = 0; b < seqs.length; b++) {
    const sink = (seqs[b] as EngineSequence).logprobs;
    if (!sink) continue;
    const r = rowsOf(b), t = tokensOf(b);
    for (let i = 0; i < t.length; i++) {
      rows.push(r[i] as number);
      tokens.push(t[i] as number);
    }
    k = Math.max(k, sink.k);
  }
  if (rows.length === 0) return;
  const lp = tokenLogprobs(logits, Int32Array.from(rows), Int32Array.from(tokens), k);
  for (let b = 0, at = 0; b < seqs.length; b++) {
    const sink = (seqs[b] as EngineSequence).logprobs;
    if (!sink) continue;
    const n = tokensOf(b).length;
    sink.push(lp, at, at + n);
    at += n;
  }
}

function plainChainSteps(
  parts: readonly StepPart[],
  batches: readonly ProposalBatch[],
  proposals: readonly (readonly Proposal[])[],
  model: CausalLM,
  speculator: Speculator | undefined,
): number[] | undefined {
  // Sampled plain steps chain too (one sampling setting: one part), drawing as the steps would.
  const sampled = (parts[0] as StepPart).engine.sampling !== undefined;
  if (sampled ? parts.length !== 1 || !model.sampledChain : !model.greedyChain) return undefined;
  let offer = Infinity;
  let n = 0;
  for (let i = 0; i < parts.length; i++) {
    if (!sampled && (parts[i] as StepPart).engine.sampling) return undefined;
    // (A chain takes one setting of penalties: a part with them chains alone.)
    if ((parts[i] as StepPart).engine.penalties && parts.length !== 1) return undefined;
    if (speculator) {
      const k = (batches[i] as ProposalBatch).plainSteps;
      if (!speculator.updatePlain || k === undefined || !(k >= 1)) return undefined;
      offer = Math.min(offer, Math.floor(k));
    }
    for (const p of proposals[i] as readonly Proposal[]) if (p.tokens.length !== 1 || p.tail || p.positions || p.mask) return undefined;
    n += (parts[i] as StepPart).seqs.length;
  }
  const len = Math.min(offer, chainLength(model, n));
  const steps = new Array<number>(n);
  let b = 0;
  for (const p of parts) for (const s of p.seqs) steps[b++] = Math.max(1, Math.min(len, s.maxDepth + 1));
  return steps;
}

/**
 * A call that took `draws` consecutive counters of a sequence, the first by rng.next() beforehand:
 * the sequence's counter moves past the others (SeqRng counters are consecutive: base | counter).
 */
function drawMore(s: EngineSequence, draws: number): void {
  for (let n = draws; n > 1; n--) s.rng.next();
}

function allLoneRoots(proposals: readonly Proposal[]): boolean {
  for (const p of proposals) if (p.tokens.length !== 1) return false;
  return true;
}

/** A step's phases from its boundaries (ms): draft, target forward, verify, commit, update. */
function addPhases(parts: readonly StepPart[], t0: number, draft: number, target: number, verify: number, commit: number, update: number): void {
  for (const p of parts) {
    const ph = p.engine.phases;
    ph.draft += (draft - t0) / 1000;
    ph.target += (target - draft) / 1000;
    ph.verify += (verify - target) / 1000;
    ph.commit += (commit - verify) / 1000;
    ph.update += (update - commit) / 1000;
  }
}

/** The lone-root proposal of each sequence (a plain step). */
function loneRoots(seqs: readonly EngineSequence[]): Proposal[] {
  const out = new Array<Proposal>(seqs.length);
  for (let b = 0; b < seqs.length; b++) {
    const h = (seqs[b] as EngineSequence).history;
    out[b] = loneRoot(h[h.length - 1] as number);
  }
  return out;
}

function forwardInput(seq: number, p: Proposal): SequenceInput {
  const i: { seq: number; tokens: Int32Array; parents?: Int32Array; positions?: Int32Array; mask?: Proposal['mask']; tail?: Proposal['tail'] } = {
    seq,
    tokens: p.tokens,
  };
  if (p.mask) i.mask = p.mask;
  else i.parents = p.parents;
  if (p.positions) i.positions = p.positions;
  if (p.tail) i.tail = p.tail;
  return i as SequenceInput;
}

export function disposeOutput(out: ForwardOutput): void {
  out.logits.dispose();
  out.hidden?.dispose();
  out.aux?.dispose();
}
