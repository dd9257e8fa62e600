// Draft-model speculation: a smaller CausalLM with the same vocabulary drafts k tokens (a chain),
// or a tree of its top-k branches; the target verifies them in one forward. The draft's vocabulary
// may be a prefix of the target's (padded vocabularies: Qwen2.5-0.5B's 151936 ids under
// Qwen2.5-7B's 152064, Gemma 3 1B's 262144 under 4B's 262208): its distributions are zero on the
// ids it lacks, and those ids reach it as id 0 (see draftInput).
//
// The draft's KV cache is kept in sync with the decoded history. Chain drafting commits each
// drafted token in the draft right away (so the next draft step sees it) and, after verification,
// truncates the draft back to the accepted prefix. Tokens of the history the draft has not cached
// yet (the prompt at first; the bonus token, which neither model has cached; accepted tree nodes)
// are fed in front of the first draft step.
import { optionsArg } from '../errors';
import { ChainCost, chainTokenCost, forwardCostIfRoom, type ForwardCost } from '../cost_model';
import { gatherRows, isSampling, samplingOptions } from '../step_helpers';
import { backedOffProbeInterval, chooseChainLength, PROBE_AFTER_PLAIN_STEPS, RankRates, sizingCost, stepCost } from '../tree_sizing';
import type { CausalLM, ChainOptions, ForwardOutput, SequenceInput, SpecChainResult } from '../models/causal_lm';
import { CHAIN_MAX_STEPS, wholeChains } from '../plain_chain';
import { argmax, maskTokens, penalize, penaltiesForVocabulary, processLogits, sample, topK, type PenaltyHistory } from '../sampling';
import { draftMask } from '../grammar';
import type { Tensor } from '../tensor';
import { chainTree, loneRoot, type TokenTree } from '../tree';
import {
  checkModel,
  codedError,
  type DraftChainOffer,
  type Proposal,
  type ProposalBatch,
  type ProposeContext,
  type SamplingConfig,
  type SpecSequence,
  type Speculator,
  type StepReport,
} from './speculator';

export type AdaptiveMode = 'fixed' | 'heuristic' | 'confidence' | 'cost';

/**
 * 'cost' mode: steps a plain choice of the draft length is reused before it is weighed again; each
 * weighing that chooses plain again keeps it twice as long, up to MAX_PLAIN_CHOICE_USES (between
 * probes nothing but the cost curve moves, and each weighing ends the engine's plain chain early).
 */
const PLAIN_CHOICE_USES = 8;
/** Released sequences whose per-step records (kHistory, trace) are kept. */
export const KEPT_TRACES = 64;
const MAX_PLAIN_CHOICE_USES = 64;

export interface DraftModelOptions {
  /**
   * The draft model: the target's tokenizer, with the target's vocabulary or a prefix of it (a padded
   * target vocabulary); never more ids than the target.
   */
  readonly draft: CausalLM;
  /** Draft tokens per step (the starting value when adaptive). Default 4. */
  readonly k?: number;
  /**
   * 'fixed': always k. 'heuristic' (HF assistant): k += 2 after a fully accepted draft, k -= 1
   * otherwise, within [minK, maxK]. 'confidence': draft up to maxK tokens, stopping once the draft's
   * max probability falls below confidenceThreshold (the first token is always drafted). 'cost'
   * (the default when neither k nor adaptive is given): each step the k in [0, maxK] with the most
   * expected tokens per second under the target's and the draft's measured costs and the online
   * acceptance rate per draft position; k = 0 decodes plainly.
   */
  readonly adaptive?: AdaptiveMode;
  readonly minK?: number;
  readonly maxK?: number;
  readonly confidenceThreshold?: number;
  /**
   * Tree drafting: children per node at each depth (e.g. [3, 2, 1]: the draft's top-3, each with
   * its top-2, each with its top-1). Deterministic drafts: exact one-hot rejection when sampling.
   */
  readonly treeBranching?: readonly number[];
  /**
   * Under penalties (repetition / presence / frequency), draft with them too: each draft token is
   * picked from the draft's row penalized by its sequence's history and the drafts above it, so the
   * draft predicts the penalized target. Default true; false drafts from the raw rows. The output is
   * the target's either way; only the acceptance changes.
   */
  readonly draftPenalties?: boolean;
}

interface DraftState {
  readonly draftSeq: number;
  /** History tokens the draft has committed (a prefix of the history). */
  cached: number;
  /** Current draft length (adaptive). */
  k: number;
  /** Drafts proposed at the last step (for the heuristic). */
  lastDrafted: number;
  /** Consecutive steps without drafts ('cost' mode). */
  plainRun: number;
  /** 'cost' mode: the last step was a probe. */
  probed: boolean;
}

export class DraftModelSpeculator implements Speculator {
  readonly name = 'draft-model';
  readonly wantsHidden = false;
  readonly draft: CausalLM;
  readonly adaptive: AdaptiveMode;
  readonly k: number;
  readonly minK: number;
  readonly maxK: number;
  readonly confidenceThreshold: number;
  readonly treeBranching: readonly number[] | undefined;
  readonly draftPenalties: boolean;
  private readonly states = new Map<number, DraftState>();
  /** q rows go to the verifier, on the target's device. */
  private targetDevice: CausalLM['device'] | undefined;
  /**
   * Per sequence key: the draft length used at each step (tests and stats read it). Kept for live
   * sequences and the KEPT_TRACES most recently released ones (a server's speculator sees every
   * request: kept for all, they grew by a record a step without end).
   */
  readonly kHistory = new Map<number, number[]>();
  /** Per sequence key, per step: k before the step, tokens drafted, drafts accepted (kept as kHistory). */
  readonly trace = new Map<number, { k: number; drafted: number; accepted: number }[]>();
  /** Released sequence keys whose kHistory and trace are still kept, oldest first. */
  private readonly releasedKeys: number[] = [];
  /** 'cost' mode: P(draft i + 1 accepted | drafts 1..i accepted), online. */
  // A depth with few trials leans on the depth before it, not on a fixed prior: chained drafts
  // that got this far are at least as likely to go on (acceptance is correlated), and a fixed 0.6
  // kept the chain short after it had only ever tried short chains (deeper rates never observed).
  readonly rates: RankRates = new RankRates((depth) => (depth === 0 ? 0.6 : this.rates.rate(depth - 1)));
  /**
   * 'cost' mode: plain steps before a probe (shared by the sequences, like the rates). A probe feeds
   * the draft the tokens it skipped (~30 on the embedded family: 3-4x a one-token draft step), so it
   * backs off (backedOffProbeInterval) while the choice stays plain after probes.
   */
  private probeAfter = PROBE_AFTER_PLAIN_STEPS;
  /** 'cost' mode: seconds of a step's drafting per sequence, fixed + per drafted token (recent steps). */
  private draftCost: ChainCost | undefined;
  private target: CausalLM | undefined;
  /** Width of the q rows the verifier reads: the target's vocabulary (the draft's may be shorter). */
  private targetVocab: number | undefined;

  constructor(opts: DraftModelOptions) {
    optionsArg(opts, 'draft model options');
    checkModel(opts.draft, 'draft');
    this.draft = opts.draft;
    const int = (x: number, lo: number): boolean => Number.isInteger(x) && x >= lo;
    this.k = opts.k ?? 4;
    // Before maxK's default reads it (Math.max of a BigInt is a TypeError, not an E_ARG).
    if (!int(this.k, 1)) throw codedError('E_ARG', `draft model: k must be an integer >= 1, got ${this.k}`);
    this.adaptive = opts.adaptive ?? (opts.k === undefined && opts.treeBranching === undefined ? 'cost' : 'fixed');
    this.minK = opts.minK ?? (this.adaptive === 'cost' ? 0 : 1);
    this.maxK = opts.maxK ?? (this.adaptive === 'confidence' || this.adaptive === 'cost' ? Math.max(this.k, 8) : Math.max(this.k, 16));
    this.confidenceThreshold = opts.confidenceThreshold ?? 0.4;
    this.treeBranching = opts.treeBranching;
    this.draftPenalties = opts.draftPenalties ?? true;
    if (typeof this.draftPenalties !== 'boolean') throw codedError('E_ARG', `draft model: draftPenalties must be a boolean, got ${String(this.draftPenalties)}`);
    if (!int(this.minK, this.adaptive === 'cost' ? 0 : 1) || !int(this.maxK, Math.max(1, this.minK))) {
      throw codedError('E_ARG', `draft model: need ${this.adaptive === 'cost' ? 0 : 1} <= minK <= maxK, maxK >= 1, got ${this.minK}, ${this.maxK}`);
    }
    if (!['fixed', 'heuristic', 'confidence', 'cost'].includes(this.adaptive)) throw codedError('E_ARG', `draft model: unknown adaptive mode '${this.adaptive}'`);
    if (!(this.confidenceThreshold >= 0 && this.confidenceThreshold <= 1)) throw codedError('E_ARG', `draft model: confidenceThreshold must be in [0, 1]`);
    if (this.treeBranching !== undefined) {
      if (!Array.isArray(this.treeBranching) || this.treeBranching.length === 0 || !this.treeBranching.every((b) => int(b, 1))) {
        throw codedError('E_ARG', `draft model: treeBranching must be a non-empty list of integers >= 1`);
      }
    }
  }

  attach(model: CausalLM): void {
    checkDraftVocab('draft model', this.draft, model);
    this.targetDevice = model.device;
    this.target = model;
    this.targetVocab = model.config.vocabSize;
  }

  async prefill(seqs: readonly SpecSequence[], _output?: ForwardOutput, _lastRows?: Int32Array, ctx: ProposeContext = {}): Promise<void> {
    await this.prefillDraft(seqs, ctx);
    await this.prepare();
  }

  /**
   * The draft reads each sequence's history but its root now, with the target's prefill (its first
   * step would feed them anyway): a request that shares a prefix with it (prefix sharing) then forks
   * this cache too (shareFrom). Best effort: a draft without room leaves them to that first step.
   */
  private async prefillDraft(seqs: readonly SpecSequence[], ctx: ProposeContext): Promise<void> {
    const V = this.draft.config.vocabSize, room = this.draft.config.maxPositions;
    const todo = seqs.filter((s) => s.history.length < room && (this.states.get(s.key)?.cached ?? 0) < s.history.length - 1);
    if (todo.length === 0 || ctx.signal?.aborted) return;
    const states = todo.map((s) => this.state(s));
    const inputs: SequenceInput[] = todo.map((s, b) => ({ seq: (states[b] as DraftState).draftSeq, tokens: draftInput(s.history.slice((states[b] as DraftState).cached, s.history.length - 1), V) }));
    let out: ForwardOutput;
    try {
      out = await this.draft.forward(inputs, { lastLogitsOnly: true, ...(ctx.signal ? { signal: ctx.signal } : {}) });
    } catch (e) {
      if (noRoomOrAborted(e)) return;
      throw e;
    }
    try {
      this.draft.commit(
        states.map((st) => st.draftSeq),
        inputs.map((i) => Int32Array.from({ length: i.tokens.length }, (_, k) => k)),
      );
      states.forEach((st, b) => (st.cached += (inputs[b] as SequenceInput).tokens.length));
    } finally {
      out.logits.dispose();
      out.hidden?.dispose();
    }
  }

  /** 'cost' mode: the target's cost curve and the draft chain's cost per token (measured once per model). */
  async prepare(): Promise<void> {
    if (this.adaptive !== 'cost' || !this.target) return;
    if (!(await forwardCostIfRoom(this.target))) return;
    if (!this.draftCost) {
      const chained = await chainTokenCost(this.draft);
      const single = chained ?? (await forwardCostIfRoom(this.draft))?.predict(1);
      if (single !== undefined) this.draftCost ??= new ChainCost(single);
    }
  }

  /** 'cost' mode: this step's draft length for every sequence (the choice depends only on shared statistics). */
  private chooseK(seqs: readonly SpecSequence[], states: DraftState[], ctx: ProposeContext): void {
    // Sampled drafts are verified against their distributions, so the tokens depend on k: a sampled
    // run keeps the fixed k (a seed reproduces its tokens).
    const cost = sizingCost(!isSampling(ctx.sampling), this.target, ctx);
    if (!cost) return;
    const draft = this.draftCost;
    if (!draft) return;
    // A plain choice is kept for a few steps (plain steps record no acceptance, so only the cost
    // curve moves meanwhile; weighing every step was a sizeable part of a small model's plain step);
    // a choice to draft is made again every step.
    const kept = this.plainChoice;
    let size: number;
    // A probe's acceptance is weighed at once.
    let probed = false;
    for (const st of states) probed ||= st.probed;
    if (kept && kept.batch === seqs.length && !probed && kept.uses++ < kept.limit) size = 0;
    else {
      size = this.weighK(cost, draft, seqs.length);
      // Plain again for the same batch: kept twice as long.
      const again = kept !== undefined && kept.batch === seqs.length;
      this.plainChoice = size === 0 ? { batch: seqs.length, uses: 1, limit: again ? Math.min(MAX_PLAIN_CHOICE_USES, 2 * kept.limit) : PLAIN_CHOICE_USES } : undefined;
    }
    for (const st of states) {
      let k = Math.max(this.minK, size);
      // A probe now and then keeps the acceptance statistics alive while decoding plainly; when the
      // choice is still plain right after one, the next comes twice as late.
      if (k === 0 && st.probed) this.probeAfter = backedOffProbeInterval(this.probeAfter);
      else if (k > 0) this.probeAfter = PROBE_AFTER_PLAIN_STEPS;
      st.probed = false;
      if (k === 0 && ++st.plainRun > this.probeAfter) {
        k = 1;
        st.probed = true;
      }
      if (k > 0) st.plainRun = 0;
      st.k = k;
    }
  }

  /** 'cost' mode: the draft length that maximises expected tokens per second now (0: plain), on the optimistic rates (RankRates.upper). */
  private weighK(cost: ForwardCost, draft: ChainCost, batch: number): number {
    return chooseChainLength((i) => this.rates.upper(i), this.maxK, stepCost(cost, batch, (nodes) => draft.cost(nodes - 1), this)).size;
  }

  /**
   * 'cost' mode, after a plain choice for every sequence: this step and the steps after it that are
   * sure to be plain too -- the plain choice's remaining uses, and no sequence due to probe.
   */
  private plainStepsAhead(states: readonly DraftState[]): number {
    const kept = this.plainChoice;
    if (!kept || this.minK > 0) return 1;
    // The choice's uses stretch to the end of a chain (weighed a few steps late rather than a chain
    // cut short: the uses run on across requests, so their end fell mid-chain in most requests).
    let ahead = wholeChains(this.target, states.length, kept.limit - kept.uses);
    for (const st of states) ahead = Math.min(ahead, this.probeAfter - st.plainRun);
    return 1 + Math.max(0, ahead);
  }

  /** The engine ran steps[b] plain steps of sequence b at once (after plainSteps): their bookkeeping. */
  updatePlain(seqs: readonly SpecSequence[], steps: readonly number[]): void {
    let most = 0;
    for (let b = 0; b < seqs.length; b++) {
      const m = steps[b] as number;
      most = Math.max(most, m);
      const s = seqs[b] as SpecSequence;
      const st = this.states.get(s.key);
      if (!st) continue;
      // The propose() rounds after the first, then every round's update(): nothing drafted.
      st.plainRun += m - 1;
      const ks = this.kHistory.get(s.key);
      let tr = this.trace.get(s.key);
      if (!tr) this.trace.set(s.key, (tr = []));
      for (let j = 0; j < m; j++) {
        if (j > 0) ks?.push(0);
        tr.push({ k: st.k, drafted: 0, accepted: 0 });
      }
    }
    if (this.plainChoice) this.plainChoice.uses += most - 1;
  }

  /** 'cost' mode: a plain choice still in use (see chooseK). */
  private plainChoice: { readonly batch: number; uses: number; readonly limit: number } | undefined;

  private state(s: SpecSequence): DraftState {
    let st = this.states.get(s.key);
    if (!st) {
      st = { draftSeq: this.draft.createSequence(), cached: 0, k: this.k, lastDrafted: 0, plainRun: 0, probed: false };
      this.states.set(s.key, st);
      this.kHistory.set(s.key, []);
    }
    return st;
  }

  /** Speculator.shareFrom: seq's draft cache starts as a fork of from's, cut to the shared tokens. */
  shareFrom(seq: SpecSequence, from: SpecSequence, length: number): void {
    const src = this.states.get(from.key);
    const n = Math.min(length, src?.cached ?? 0);
    if (!src || n < 1 || this.states.has(seq.key)) return;
    const draftSeq = this.draft.forkSequence(src.draftSeq);
    try {
      if (this.draft.sequenceLength(draftSeq) > n) this.draft.truncate(draftSeq, n);
    } catch (e) {
      this.draft.freeSequence(draftSeq);
      throw e;
    }
    this.states.set(seq.key, { draftSeq, cached: n, k: this.k, lastDrafted: 0, plainRun: 0, probed: false });
    this.kHistory.set(seq.key, []);
  }

  /** Speculator.keep: the draft cache stays for shareFrom until release(seq). */
  keep(_seq: SpecSequence): void {}

  /** Current draft length of a sequence (undefined before its first step). */
  currentK(key: number): number | undefined {
    return this.states.get(key)?.k;
  }

  propose(seqs: readonly SpecSequence[], ctx: ProposeContext): ProposalBatch | Promise<ProposalBatch> {
    const states = new Array<DraftState>(seqs.length);
    for (let b = 0; b < seqs.length; b++) states[b] = this.state(seqs[b] as SpecSequence);
    if (this.treeBranching) return this.proposeTree(seqs, states, ctx);
    if (this.adaptive !== 'cost') return this.chainOffer(seqs, states, ctx) ?? this.proposeChain(seqs, states, ctx);
    this.chooseK(seqs, states, ctx);
    if (states.every((st) => st.k === 0)) {
      // A plain step for every sequence: nothing for the draft to do (it catches up at the next
      // step that drafts).
      const proposals = new Array<Proposal>(seqs.length);
      for (let b = 0; b < seqs.length; b++) {
        const s = seqs[b] as SpecSequence;
        (states[b] as DraftState).lastDrafted = 0;
        this.kHistory.get(s.key)?.push(0);
        proposals[b] = loneRoot(s.history[s.history.length - 1] as number);
      }
      // (Returned as it is, not as a promise: a plain step costs the engine no microtask turn.)
      return { proposals, plainSteps: this.plainStepsAhead(states) };
    }
    return this.chainOffer(seqs, states, ctx) ?? this.proposeTimed(seqs, states, ctx);
  }

  /**
   * Chains of a fixed k ('fixed', and 'cost' between its weighings), greedy or sampled, where the
   * engine runs them natively (ctx.draftChains; the draft a model of the target's kind, on its
   * device): the steps as one native call (CausalLM.speculativeChain), reported with updateChain().
   * A probe is one step (its acceptance is weighed at once); a chosen k holds for the chain (up to
   * CHAIN_MAX_STEPS steps, or the chain's time).
   */
  private chainOffer(seqs: readonly SpecSequence[], states: DraftState[], ctx: ProposeContext): ProposalBatch | undefined {
    if (ctx.draftChains !== true || (this.adaptive !== 'fixed' && this.adaptive !== 'cost')) return undefined;
    const target = this.target;
    if (!target?.speculativeChain || !this.draft.speculativeChain || target.device !== this.draft.device || target === this.draft) return undefined;
    const proposals = new Array<Proposal>(seqs.length);
    const offer = new Array<DraftChainOffer['seqs'][number]>(seqs.length);
    let probe = false;
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      const st = states[b] as DraftState;
      probe ||= st.probed;
      proposals[b] = loneRoot(s.history[s.history.length - 1] as number);
      offer[b] = { draftSeq: st.draftSeq, draftFeed: Int32Array.from(s.history.slice(st.cached)), k: this.adaptive === 'fixed' ? this.k : st.k };
    }
    const pen = ctx.penalties ? { draftPenalties: this.draftPenalties } : {};
    if (probe) return { proposals, draftChain: { draft: this.draft, seqs: offer, maxSteps: 1, probe, ...pen } };
    // A choice weighed on few trials at its deepest position is weighed again sooner: the chain runs
    // at most as many steps as that position has trials (at least 2). A fresh speculator's first
    // choice comes from the prior (k = 1 on the embedded family) and ran 16 steps before.
    let maxSteps = CHAIN_MAX_STEPS;
    if (this.adaptive === 'cost') {
      let k = 0;
      for (const o of offer) k = Math.max(k, o.k);
      maxSteps = Math.max(2, Math.min(CHAIN_MAX_STEPS, this.rates.trialCounts()[k - 1] ?? 0));
    }
    return { proposals, draftChain: { draft: this.draft, seqs: offer, maxSteps, ...pen } };
  }

  /** The engine ran this batch's draftChain: each step's bookkeeping, as update() and proposeTimed() do it. */
  updateChain(seqs: readonly SpecSequence[], r: SpecChainResult, ctx: ProposeContext): void {
    const B = seqs.length;
    const cost = this.adaptive === 'cost' && !isSampling(ctx.sampling);
    for (let b = 0; b < B; b++) {
      const s = seqs[b] as SpecSequence;
      const st = this.states.get(s.key);
      if (!st) continue;
      st.cached = r.draftCached[b] as number;
      const ks = this.kHistory.get(s.key);
      let tr = this.trace.get(s.key);
      if (!tr) this.trace.set(s.key, (tr = []));
      for (let i = 0; i < r.steps; i++) {
        const drafted = r.drafted[i * B + b] as number;
        const acc = r.accepted[i * B + b] as number;
        ks?.push(drafted);
        tr.push({ k: st.k, drafted, accepted: acc });
        if (cost) for (let j = 0; j < Math.min(acc + 1, drafted); j++) this.rates.record(j, j < acc ? 0 : -1);
        st.lastDrafted = drafted;
      }
    }
    // The draft's cost per token from the steps after the first (which may feed a long uncached
    // history), as proposeTimed measures it.
    for (let i = 1; i < r.steps; i++) {
      let drafted = 0;
      for (let b = 0; b < B; b++) drafted += r.drafted[i * B + b] as number;
      if (drafted > 0) this.draftCost?.add(drafted / B, (r.draftSeconds[i] as number) / B);
    }
  }

  /** 'cost' mode, a step that drafts: proposeChain, its time refining the draft's cost per token. */
  private async proposeTimed(seqs: readonly SpecSequence[], states: DraftState[], ctx: ProposeContext): Promise<ProposalBatch> {
    // A step that first feeds a long uncached history (after plain steps) says little about the
    // steady-state cost per draft token: only steps feeding at most the bonus and one more count.
    const steady = seqs.every((s, b) => s.history.length - (states[b] as DraftState).cached <= 2);
    const t0 = performance.now();
    const batch = await this.proposeChain(seqs, states, ctx);
    const drafted = states.reduce((a, st) => a + st.lastDrafted, 0);
    // Per sequence: k drafts each, the step's time shared (one batched draft forward per token).
    if (drafted > 0 && steady) this.draftCost?.add(drafted / seqs.length, (performance.now() - t0) / 1000 / seqs.length);
    return batch;
  }

  /** The draft's chain penalties for seqs[b] of `active` (undefined: none, or draftPenalties off). */
  private penaltiesOf(seqs: readonly SpecSequence[], active: readonly number[], ctx: ProposeContext): ChainOptions['penalties'] {
    if (!ctx.penalties || !this.draftPenalties) return undefined;
    const v = this.draft.config.vocabSize;
    return { penalties: penaltiesForVocabulary(ctx.penalties, v), histories: active.map((b) => draftHistory(seqs[b] as SpecSequence, v)) };
  }

  /** Per-sequence budget this step. */
  private budget(s: SpecSequence, st: DraftState): number {
    const k = this.adaptive === 'confidence' ? this.maxK : st.k;
    return Math.max(0, Math.min(k, s.maxDepth, s.maxNodes - 1, this.draft.config.maxPositions - s.history.length));
  }

  private async proposeChain(seqs: readonly SpecSequence[], states: DraftState[], ctx: ProposeContext): Promise<ProposalBatch> {
    const sampling = isSampling(ctx.sampling) ? ctx.sampling : undefined;
    const budgets = seqs.map((s, b) => this.budget(s, states[b] as DraftState));
    // A fixed number of steps per sequence: all k draft steps in one native call when the draft
    // offers it (the same tokens and draws as the loop below; it saves k - 1 round trips).
    // (A grammar masks each draft row here: no native chain then.)
    if (this.adaptive !== 'confidence' && (sampling ? this.draft.sampledChain : this.draft.greedyChain) && !seqs.some((s) => s.grammar)) {
      return this.proposeNativeChain(seqs, states, budgets, sampling, ctx);
    }
    const drafts: number[][] = seqs.map(() => []);
    // q rows (sampling): qRows[b][j] = the distribution drafts[b][j] was drawn from.
    const qRows: { tensor: Tensor; row: number }[][] = seqs.map(() => []);
    const keep: Tensor[] = [];
    try {
      let active = seqs.map((_, b) => b).filter((b) => (budgets[b] as number) > 0);
      let first = true;
      while (active.length > 0) {
        // Feed: the uncached history (first step) or the last drafted token; commit it in the draft.
        const inputs: SequenceInput[] = active.map((b) => {
          const s = seqs[b] as SpecSequence;
          const st = states[b] as DraftState;
          const toks = first ? s.history.slice(st.cached) : [drafts[b]![drafts[b]!.length - 1] as number];
          return { seq: st.draftSeq, tokens: draftInput(toks, this.draft.config.vocabSize) };
        });
        first = false;
        const out = await this.draft.forward(inputs, ctx.signal ? { signal: ctx.signal } : {});
        let probs: Tensor | undefined;
        try {
          this.draft.commit(
            active.map((b) => (states[b] as DraftState).draftSeq),
            inputs.map((i) => Int32Array.from({ length: i.tokens.length }, (_, k) => k)),
          );
          active.forEach((b, i) => ((states[b] as DraftState).cached += (inputs[i] as SequenceInput).tokens.length));
          const rows = Int32Array.from(active, (_, i) => (out.indptr[i + 1] as number) - 1);
          // Each pick's row continues its sequence's history with the drafts above it.
          const pen = this.penaltiesOf(seqs, active, ctx);
          if (pen) penalizeRows(out, rows, pen, active.map((b) => drafts[b] as number[]));
          // Drafts that follow the request's grammar (the target accepts no other).
          maskDraftRows(out, rows, active.map((b) => seqs[b] as SpecSequence), active.map((b) => drafts[b] as number[]), this.draft.config.vocabSize);
          let picked: number[];
          if (sampling) {
            probs = processLogits(out.logits, samplingOptions(sampling));
            keep.push(probs);
            picked = active.map((b, i) => {
              const s = seqs[b] as SpecSequence;
              const r = rows[i] as number;
              const row = (probs as Tensor).rows(r, r + 1);
              try {
                qRows[b]!.push({ tensor: probs as Tensor, row: r });
                return sample(row, BigUint64Array.of(s.rng.seed), BigUint64Array.of(s.rng.next()))[0] as number;
              } finally {
                row.dispose();
              }
            });
          } else {
            picked = pickRowsArgmax(out, rows);
          }
          const conf = this.adaptive === 'confidence' ? maxProbs(sampling ? (probs as Tensor) : out.logits, !sampling, rows) : undefined;
          const next: number[] = [];
          active.forEach((b, i) => {
            const d = drafts[b] as number[];
            // Confidence mode: stop before a token the draft is unsure of (always keep the first).
            if (conf && d.length > 0 && (conf[i] as number) < this.confidenceThreshold) return;
            d.push(picked[i] as number);
            if (conf && (conf[i] as number) < this.confidenceThreshold) return;
            if (d.length < (budgets[b] as number)) next.push(b);
          });
          active = next;
        } finally {
          out.logits.dispose();
          out.hidden?.dispose();
        }
      }
      states.forEach((st, b) => {
        st.lastDrafted = (drafts[b] as number[]).length;
        this.kHistory.get(seqs[b]!.key)?.push(st.lastDrafted);
      });
      const proposals = seqs.map((s, b) => chainTree(s.history[s.history.length - 1] as number, drafts[b] as number[]));
      if (!sampling || !qRows.some((q) => q.length > 0)) return { proposals };
      // One q row per node: node j's children were drawn from qRows[b][j]; a leaf's row is unused
      // (its parent's row is repeated), and a root-only tree borrows any row.
      const anyRow = qRows.find((q) => q.length > 0)![0]!;
      const parts: { tensor: Tensor; row: number }[] = [];
      proposals.forEach((p, b) => {
        const q = qRows[b] as { tensor: Tensor; row: number }[];
        for (let j = 0; j < p.tokens.length; j++) parts.push(q[Math.min(j, q.length - 1)] ?? anyRow);
      });
      return { proposals, draftProbs: gatherRows(parts, this.targetVocab ?? this.draft.config.vocabSize, this.targetDevice ?? this.draft.device) };
    } finally {
      for (const t of keep) t.dispose();
    }
  }

  /**
   * All draft steps of a fixed-length chain in one native call (greedyChain, or sampledChain when
   * sampling): the same tokens, draws and cache state as proposeChain's loop, without its k - 1
   * round trips; sampled q rows stay on the device.
   */
  private async proposeNativeChain(
    seqs: readonly SpecSequence[],
    states: DraftState[],
    budgets: readonly number[],
    sampling: SamplingConfig | undefined,
    ctx: ProposeContext,
  ): Promise<ProposalBatch> {
    const active = seqs.map((_, b) => b).filter((b) => (budgets[b] as number) > 0);
    const drafts: Int32Array[] = seqs.map(() => new Int32Array(0));
    let q: Tensor | undefined;
    // With the target on the draft's device the picks stay there (greedy or sampled) and feed the
    // target's forward and the verification directly (drafts then hold placeholders; no read-back).
    let onDevice: Tensor | undefined;
    const sameDevice = this.targetDevice === this.draft.device;
    try {
      if (active.length > 0) {
        const inputs: SequenceInput[] = active.map((b) => {
          const st = states[b] as DraftState;
          return { seq: st.draftSeq, tokens: draftInput((seqs[b] as SpecSequence).history.slice(st.cached), this.draft.config.vocabSize) };
        });
        const steps = active.map((b) => budgets[b] as number);
        const penalties = this.penaltiesOf(seqs, active, ctx);
        const opts: ChainOptions = { ...(ctx.signal ? { signal: ctx.signal } : {}), ...(penalties ? { penalties } : {}) };
        let picks: Int32Array[];
        if (sampling) {
          // The counters the step-by-step loop would draw, in its order (one per pick of a sequence).
          const offsets = active.map((b, i) => Array.from({ length: steps[i] as number }, () => (seqs[b] as SpecSequence).rng.next()));
          const seeds = active.map((b) => (seqs[b] as SpecSequence).rng.seed);
          if (this.draft.sampledChainOnDevice && sameDevice) {
            const r = await this.draft.sampledChainOnDevice(inputs, steps, samplingOptions(sampling), seeds, offsets, opts);
            q = r.q;
            onDevice = r.ids;
            picks = steps.map((n) => new Int32Array(n));
          } else {
            const r = await (this.draft.sampledChain as NonNullable<CausalLM['sampledChain']>).call(this.draft, inputs, steps, samplingOptions(sampling), seeds, offsets, opts);
            q = r.q;
            picks = r.picks;
          }
        } else if (this.draft.greedyChainOnDevice && sameDevice) {
          onDevice = await this.draft.greedyChainOnDevice(inputs, steps, opts);
          picks = steps.map((n) => new Int32Array(n));
        } else {
          picks = await (this.draft.greedyChain as NonNullable<CausalLM['greedyChain']>).call(this.draft, inputs, steps, opts);
        }
        active.forEach((b, i) => {
          const d = picks[i] as Int32Array;
          if (d.length !== steps[i]) throw codedError('E_INTERNAL', `draft model: the native chain gave ${d.length} tokens, expected ${steps[i]}`);
          drafts[b] = d;
          // Fed: the uncached history, then every picked token but the last.
          (states[b] as DraftState).cached += (inputs[i] as SequenceInput).tokens.length + d.length - 1;
        });
      }
      states.forEach((st, b) => {
        st.lastDrafted = (drafts[b] as Int32Array).length;
        this.kHistory.get(seqs[b]!.key)?.push(st.lastDrafted);
      });
      const proposals: Proposal[] = seqs.map((s, b) => chainTree(s.history[s.history.length - 1] as number, drafts[b] as Int32Array));
      let owned: Tensor[] | undefined;
      if (onDevice) {
        const ids = onDevice;
        let offset = 0;
        proposals.forEach((p, b) => {
          const n = (drafts[b] as Int32Array).length;
          if (n > 0) proposals[b] = { ...p, tail: { ids, offset } };
          offset += n;
        });
        onDevice = undefined;  // the decoder disposes it after the step
        owned = [ids];
      }
      if (!q) return owned ? { proposals, owned } : { proposals };
      // One q row per node, as in proposeChain: node j's children were drawn from pick j's row (q is
      // input by input); a leaf repeats its parent's, a root-only tree borrows any row.
      const parts: { tensor: Tensor; row: number }[] = [];
      let first = 0;
      proposals.forEach((p, b) => {
        const n = (drafts[b] as Int32Array).length;
        for (let j = 0; j < p.tokens.length; j++) parts.push({ tensor: q as Tensor, row: n > 0 ? first + Math.min(j, n - 1) : 0 });
        first += n;
      });
      const draftProbs = gatherRows(parts, this.targetVocab ?? this.draft.config.vocabSize, this.targetDevice ?? this.draft.device);
      return owned ? { proposals, draftProbs, owned } : { proposals, draftProbs };
    } finally {
      q?.dispose();
      onDevice?.dispose();
    }
  }

  private async proposeTree(seqs: readonly SpecSequence[], states: DraftState[], ctx: ProposeContext): Promise<ProposalBatch> {
    const branching = this.treeBranching as readonly number[];
    const budgets = seqs.map((s, b) => Math.min(this.budget(s, states[b] as DraftState), branching.length));
    const trees: { tokens: number[]; parents: number[]; frontier: number[] }[] = seqs.map((s) => ({
      tokens: [s.history[s.history.length - 1] as number],
      parents: [-1],
      frontier: [0],
    }));
    for (let depth = 0; ; depth++) {
      const active = seqs.map((_, b) => b).filter((b) => depth < (budgets[b] as number) && (depth === 0 || trees[b]!.frontier.length > 0));
      if (active.length === 0) break;
      // depth 0: feed the uncached history (root last) and commit it; deeper: the tree so far
      // (uncommitted) under the cached root.
      const inputs: SequenceInput[] = active.map((b) => {
        const st = states[b] as DraftState;
        const s = seqs[b] as SpecSequence;
        if (depth === 0) return { seq: st.draftSeq, tokens: draftInput(s.history.slice(st.cached), this.draft.config.vocabSize) };
        const t = trees[b]!;
        return { seq: st.draftSeq, tokens: Int32Array.from(t.tokens.slice(1)), parents: Int32Array.from(t.parents.slice(1), (p) => p - 1) };
      });
      const out = await this.draft.forward(inputs, ctx.signal ? { signal: ctx.signal } : {});
      try {
        if (depth === 0) {
          this.draft.commit(
            active.map((b) => (states[b] as DraftState).draftSeq),
            inputs.map((i) => Int32Array.from({ length: i.tokens.length }, (_, k) => k)),
          );
          active.forEach((b, i) => ((states[b] as DraftState).cached += (inputs[i] as SequenceInput).tokens.length));
        }
        const width = branching[depth] as number;
        const k = Math.min(width, this.draft.config.vocabSize);
        const pen = this.penaltiesOf(seqs, active, ctx);
        const grammar = active.some((b) => (seqs[b] as SpecSequence).grammar);
        if (pen || grammar) {
          // Each frontier node's row continues its sequence's history with the node's path: the
          // penalties read it, and its drafts follow the grammar after it.
          const rows: number[] = [], paths: number[][] = [], of: number[] = [];
          active.forEach((b, i) => {
            const t = trees[b]!;
            for (const f of t.frontier) {
              const path: number[] = [];
              for (let v = f; v > 0; v = t.parents[v] as number) path.push(t.tokens[v] as number);
              rows.push(depth === 0 ? (out.indptr[i + 1] as number) - 1 : (out.indptr[i] as number) + f - 1);
              paths.push(path.reverse());
              of.push(i);
            }
          });
          if (pen) penalizeRows(out, rows, { penalties: pen.penalties, histories: of.map((i) => pen.histories[i] as PenaltyHistory) }, paths);
          if (grammar) maskDraftRows(out, rows, of.map((i) => seqs[active[i] as number] as SpecSequence), paths, this.draft.config.vocabSize);
        }
        const top = topK(out.logits, k);
        const ids = top.ids.toInt32();
        top.ids.dispose();
        top.values.dispose();
        active.forEach((b, i) => {
          const t = trees[b]!;
          const base = out.indptr[i] as number;
          const next: number[] = [];
          // At most maxNodes nodes (the KV room kept for the tree): the first ones in this order.
          const room = (seqs[b] as SpecSequence).maxNodes;
          for (const f of t.frontier) {
            // Row of node f: depth 0 -> the last fed token; deeper -> node f's row (index f - 1).
            const row = depth === 0 ? (out.indptr[i + 1] as number) - 1 : base + f - 1;
            for (let c = 0; c < k && t.tokens.length < room; c++) {
              t.tokens.push(ids[row * k + c] as number);
              t.parents.push(f);
              next.push(t.tokens.length - 1);
            }
          }
          t.frontier = next;
        });
      } finally {
        out.logits.dispose();
        out.hidden?.dispose();
      }
    }
    return {
      proposals: trees.map((t, b) => {
        (states[b] as DraftState).lastDrafted = budgets[b] as number;
        this.kHistory.get(seqs[b]!.key)?.push(budgets[b] as number);
        const tree: TokenTree = { tokens: Int32Array.from(t.tokens), parents: Int32Array.from(t.parents) };
        return tree;
      }),
    };
  }

  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext = {}): void {
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      const st = this.states.get(s.key);
      if (!st) continue;
      // The draft may hold drafted tokens past the accepted ones: keep only what matches the
      // history (everything but the bonus, which no model has cached).
      const valid = s.history.length - 1;
      if (st.cached > valid) {
        this.draft.truncate(st.draftSeq, valid);
        st.cached = valid;
      }
      const acceptedDrafts = (report.acceptedNodes[b] as Int32Array).length - 1;
      let tr = this.trace.get(s.key);
      if (!tr) this.trace.set(s.key, (tr = []));
      tr.push({ k: st.k, drafted: st.lastDrafted, accepted: acceptedDrafts });
      if (this.adaptive === 'cost' && !isSampling(ctx.sampling)) {
        for (let i = 0; i < Math.min(acceptedDrafts + 1, st.lastDrafted); i++) this.rates.record(i, i < acceptedDrafts ? 0 : -1);
      }
      if (this.adaptive === 'heuristic' && st.lastDrafted > 0) {
        st.k = acceptedDrafts >= st.lastDrafted ? Math.min(this.maxK, st.k + 2) : Math.max(this.minK, st.k - 1);
      }
    }
  }

  rewind(seq: SpecSequence): void {
    const st = this.states.get(seq.key);
    if (st && st.cached > seq.history.length - 1) {
      this.draft.truncate(st.draftSeq, seq.history.length - 1);
      st.cached = seq.history.length - 1;
    }
  }

  release(seq: SpecSequence): void {
    if (this.kHistory.has(seq.key) || this.trace.has(seq.key)) {
      this.releasedKeys.push(seq.key);
      while (this.releasedKeys.length > KEPT_TRACES) {
        const old = this.releasedKeys.shift() as number;
        this.kHistory.delete(old);
        this.trace.delete(old);
      }
    }
    const st = this.states.get(seq.key);
    if (!st) return;
    this.states.delete(seq.key);
    this.draft.freeSequence(st.draftSeq);
  }

  dispose(): void {
    for (const st of this.states.values()) this.draft.freeSequence(st.draftSeq);
    this.states.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The draft's penalties on the rows it picks from, in one call: rows[i] continues pen.histories[i]
 * with paths[i] after it. The forward's other rows read an empty history (left as they are).
 */
function penalizeRows(out: ForwardOutput, rows: ArrayLike<number>, pen: NonNullable<ChainOptions['penalties']>, paths: readonly ArrayLike<number>[]): void {
  const n = rows.length;
  const rowSeq = new Int32Array(out.indptr[out.indptr.length - 1] as number).fill(n);
  const rowPaths = new Array<ArrayLike<number> | undefined>(rowSeq.length);
  for (let i = 0; i < n; i++) {
    rowSeq[rows[i] as number] = i;
    rowPaths[rows[i] as number] = paths[i];
  }
  penalize(out.logits, pen.penalties, [...pen.histories, NO_HISTORY], rowSeq, rowPaths);
}

const NO_HISTORY: PenaltyHistory = { tokens: [], promptLength: 0 };

/**
 * A sequence's history as the draft's penalties read it: without the ids the draft's vocabulary
 * lacks (it reads them as id 0 and never picks them); the history itself when it has none.
 */
function draftHistory(s: SpecSequence, draftVocab: number): PenaltyHistory {
  const h = s.history;
  if (h.every((t) => t < draftVocab)) return { tokens: h, promptLength: s.promptLength };
  let promptLength = 0;
  for (let i = 0; i < s.promptLength && i < h.length; i++) if ((h[i] as number) < draftVocab) promptLength++;
  return { tokens: h.filter((t) => t < draftVocab), promptLength };
}

/**
 * Target tokens as a draft's input. A draft whose vocabulary is a prefix of the target's has no
 * embedding for the target's extra ids (padding rows, or Gemma 3's image tokens): they reach it as
 * id 0. Only the acceptance can suffer (the target verifies every draft), never the output.
 */
export function draftInput(tokens: ArrayLike<number>, draftVocab: number): Int32Array {
  return Int32Array.from(tokens, (t) => (t < draftVocab ? t : 0));
}

/**
 * An eager draft prefill's failure that is no fault (best effort: the first step feeds those tokens,
 * and meets the error itself): no room in the draft's cache, or the request aborted.
 */
export function noRoomOrAborted(e: unknown): boolean {
  const err = e as { code?: unknown; name?: unknown } | null;
  return err?.code === 'E_KV_FULL' || err?.name === 'AbortError';
}

/**
 * A draft fits a target when its vocabulary is the target's or a prefix of it (the same tokenizer,
 * the target's embedding padded further: Qwen2.5 0.5B-3B under 7B-72B, Gemma 3 1B under 4B-27B).
 */
export function checkDraftVocab(who: string, draft: CausalLM, target: CausalLM): void {
  const vd = draft.config.vocabSize;
  const vt = target.config.vocabSize;
  if (vd > vt) {
    throw codedError(
      'E_ARG',
      `${who}: the draft's vocabulary (${vd} ids) is larger than the target's (${vt}); a draft must share the target's tokenizer, with at most the target's ids (fewer is fine: a padded target vocabulary)`,
    );
  }
}

/** rows[i] of the draft's output masked to seqs[i]'s grammar after paths[i] (draftMask; rows without a mask as they are). */
function maskDraftRows(out: ForwardOutput, rows: ArrayLike<number>, seqs: readonly SpecSequence[], paths: readonly (readonly number[])[], vocab: number): void {
  const r: number[] = [];
  const m: Uint32Array[] = [];
  seqs.forEach((s, i) => {
    const mask = s.grammar ? draftMask(s, paths[i] as readonly number[], vocab) : undefined;
    if (!mask) return;
    r.push(rows[i] as number);
    m.push(mask);
  });
  maskTokens(out.logits, r, m);
}

/** Argmax of the given rows (one native argmax over the whole output, then picked). */
export function pickRowsArgmax(out: ForwardOutput, rows: Int32Array): number[] {
  const ids = argmax(out.logits);
  try {
    const all = ids.toInt32();
    return Array.from(rows, (r) => all[r] as number);
  } finally {
    ids.dispose();
  }
}

/** Max probability of the given rows: of `probs` directly, or of softmax(logits) when `fromLogits`. */
function maxProbs(t: Tensor, fromLogits: boolean, rows: Int32Array): number[] {
  const p = fromLogits ? processLogits(t, { temperature: 1 }) : t;
  try {
    const top = topK(p, 1);
    const vals = top.values.toFloat32();
    top.values.dispose();
    top.ids.dispose();
    return Array.from(rows, (r) => vals[r] as number);
  } finally {
    if (fromLogits) p.dispose();
  }
}
