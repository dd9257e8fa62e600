// Hybrid speculation: a draft model that is itself sped up by another speculator (Medusa heads of
// the draft, lookahead, prompt lookup...) drafts k tokens for a larger target. An inner
// speculative loop (SpecEngine, greedy, so lossless w.r.t. the draft's own greedy output) produces
// the k draft tokens; the outer verification on the target keeps the result exact (the drafts are
// deterministic: one-hot rejection when sampling).
import { optionsArg } from '../errors';
import { SpecEngine, type EngineSequence } from '../spec_engine';
import { makeRng } from '../step_helpers';
import type { CausalLM, ForwardOutput } from '../models/causal_lm';
import { penaltiesForVocabulary } from '../sampling';
import { chainTree } from '../tree';
import { checkDraftVocab, draftInput, noRoomOrAborted } from './draft_model';
import { checkModel, checkSpeculator, codedError, type ProposalBatch, type ProposeContext, type SpecSequence, type Speculator } from './speculator';

export interface HybridOptions {
  /** The draft model (the target's vocabulary, or a prefix of it: see draftInput). */
  readonly draft: CausalLM;
  /** The speculator that speeds up the draft (it drafts for the draft model). */
  readonly draftSpeculator: Speculator;
  /** Draft tokens per outer step (default 6). */
  readonly k?: number;
  /**
   * Under penalties, the draft decodes with them too (its drafts then follow the penalized target);
   * default true. As DraftModelOptions.draftPenalties: the output is the target's either way.
   */
  readonly draftPenalties?: boolean;
}

/** Inner engines kept for distinct penalty settings (a server's requests may bring many). */
const PENALIZED_ENGINES = 8;

interface InnerState {
  readonly seq: EngineSequence;
  /** Length of the prefix known to agree with the outer history. */
  synced: number;
}

export class HybridSpeculator implements Speculator {
  readonly name: string;
  readonly wantsHidden = false;
  readonly draft: CausalLM;
  readonly inner: Speculator;
  readonly k: number;
  readonly engine: SpecEngine;
  readonly draftPenalties: boolean;
  private readonly states = new Map<number, InnerState>();
  /** Inner engines with a run's penalties, by setting (oldest first); they step this.engine's sequences. */
  private readonly penalized = new Map<string, SpecEngine>();

  constructor(opts: HybridOptions) {
    optionsArg(opts, 'hybrid options');
    checkModel(opts.draft, 'hybrid: draft');
    checkSpeculator(opts.draftSpeculator, 'hybrid: draftSpeculator');
    this.draft = opts.draft;
    this.inner = opts.draftSpeculator;
    this.k = opts.k ?? 6;
    if (!Number.isInteger(this.k) || this.k < 1) throw codedError('E_ARG', `hybrid: k must be an integer >= 1, got ${this.k}`);
    this.name = `hybrid(${this.inner.name})`;
    this.inner.attach(this.draft);
    this.engine = new SpecEngine({ model: this.draft, speculator: this.inner });
    this.draftPenalties = opts.draftPenalties ?? true;
    if (typeof this.draftPenalties !== 'boolean') throw codedError('E_ARG', `hybrid: draftPenalties must be a boolean, got ${String(this.draftPenalties)}`);
  }

  /** The inner engine for a step: with the run's penalties when the draft drafts with them. */
  private engineFor(ctx: ProposeContext): SpecEngine {
    // (The draft's logit bias: the entries its vocabulary holds.)
    const pen = this.draftPenalties && ctx.penalties ? penaltiesForVocabulary(ctx.penalties, this.draft.config.vocabSize) : undefined;
    if (!pen) return this.engine;
    const key = `${pen.repetition} ${pen.presence} ${pen.frequency} ${pen.logitBias?.key() ?? ''}`;
    let e = this.penalized.get(key);
    if (!e) {
      if (this.penalized.size >= PENALIZED_ENGINES) this.penalized.delete(this.penalized.keys().next().value as string);
      this.penalized.set(key, (e = new SpecEngine({ model: this.draft, speculator: this.inner, penalties: pen })));
    }
    return e;
  }

  attach(model: CausalLM): void {
    checkDraftVocab('hybrid', this.draft, model);
  }

  /** The outer history as the draft sees it (ids it lacks as 0: draftInput). */
  private draftHistory(history: readonly number[]): number[] {
    const V = this.draft.config.vocabSize;
    return history.every((t) => t < V) ? history.slice() : Array.from(draftInput(history, V));
  }

  /**
   * The draft reads each sequence's history but its root now, with the target's prefill (its first
   * step would feed them anyway): a request that shares a prefix with it then starts from this
   * sequence (shareFrom). Best effort, as the draft model's: without room, or aborted, they are
   * left to the first step, which meets the error itself.
   */
  async prefill(seqs: readonly SpecSequence[], _output: ForwardOutput, _lastRows: Int32Array, ctx: ProposeContext = {}): Promise<void> {
    const room = this.draft.config.maxPositions;
    const todo = seqs.filter((s) => s.history.length < room).map((s) => this.state(s)).filter((st) => st.seq.committed < st.seq.history.length - 1);
    if (todo.length === 0 || ctx.signal?.aborted) return;
    try {
      await this.engine.catchUp(todo.map((st) => st.seq), false, ctx.signal);
    } catch (e) {
      if (noRoomOrAborted(e)) return;
      throw e;
    }
  }

  /** The inner strategy's measurements, on the draft model it speeds up. */
  async prepare(ctx: ProposeContext = {}): Promise<void> {
    await this.inner.prepare?.(ctx);
  }

  /** The sequence's draft sequence, its history the outer one (a shared one was opened before its root). */
  private state(s: SpecSequence): InnerState {
    let st = this.states.get(s.key);
    if (!st) {
      st = { seq: this.engine.open(this.draftHistory(s.history), s.promptLength, makeRng(0, 0)), synced: s.history.length };
      // (The request's prediction, for an inner prompt lookup: in the draft's ids.)
      if (s.prediction) st.seq.prediction = Int32Array.from(this.draftHistory(Array.from(s.prediction)));
      this.states.set(s.key, st);
    } else {
      this.sync(st, s);
    }
    return st;
  }

  async propose(seqs: readonly SpecSequence[], ctx: ProposeContext): Promise<ProposalBatch> {
    const inner = seqs.map((s) => this.state(s));
    const budgets = seqs.map((s) => Math.max(0, Math.min(this.k, s.maxDepth, s.maxNodes - 1, this.draft.config.maxPositions - s.history.length)));
    const work = inner.filter((_, b) => (budgets[b] as number) > 0);
    // The draft catches up on tokens it has not cached (prompt, bonus tokens), then decodes.
    const engine = this.engineFor(ctx);
    await engine.catchUp(work.map((st) => st.seq), false, ctx.signal);
    const start = seqs.map((s) => s.history.length);
    for (;;) {
      const active = inner.filter((st, b) => (budgets[b] as number) > 0 && st.seq.history.length - (start[b] as number) < (budgets[b] as number));
      if (active.length === 0) break;
      for (const st of active) {
        const b = inner.indexOf(st);
        const left = (budgets[b] as number) - (st.seq.history.length - (start[b] as number));
        st.seq.maxDepth = Math.max(0, Math.min(left - 1, st.seq.maxPosition - st.seq.committed));
        // The draft's trees in the draft's cache, sized as the target's (the same reserve).
        st.seq.maxNodes = (seqs[b] as SpecSequence).maxNodes;
      }
      await engine.step(active.map((st) => st.seq), ctx.signal);
    }
    return {
      proposals: seqs.map((s, b) => {
        const st = inner[b] as InnerState;
        const drafts = st.seq.history.slice(start[b] as number, (start[b] as number) + (budgets[b] as number));
        return chainTree(s.history[s.history.length - 1] as number, drafts);
      }),
    };
  }

  async update(seqs: readonly SpecSequence[]): Promise<void> {
    for (const s of seqs) {
      const st = this.states.get(s.key);
      if (st) this.sync(st, s);
    }
  }

  /** The draft sequence's history becomes the outer one (its cache cut to what still agrees). */
  private sync(st: InnerState, s: SpecSequence): void {
    const h = st.seq.history;
    if (st.synced === s.history.length && h.length === s.history.length) return;
    const outer = this.draftHistory(s.history);
    // Agreeing prefix of the draft's history and the outer one (the outer may have rejected
    // drafts and appended a different bonus).
    let common = Math.min(st.synced, h.length, outer.length);
    while (common < h.length && common < outer.length && h[common] === outer[common]) common++;
    const keep = Math.min(st.seq.committed, common, outer.length - 1);
    const diverged = common < h.length;
    if (keep < st.seq.committed) {
      this.draft.truncate(st.seq.modelSeq, keep);
      st.seq.committed = keep;
    }
    st.seq.history = outer;
    st.synced = outer.length;
    if (diverged) this.inner.rewind?.(st.seq);
  }

  /**
   * Speculator.shareFrom: seq's draft sequence starts from from's (its draft cache forked, and the
   * inner speculator's state: SpecEngine.open with a prefix), over the tokens both draft sequences
   * have cached in common.
   */
  shareFrom(seq: SpecSequence, from: SpecSequence, _length: number): void {
    const src = this.states.get(from.key);
    if (!src || src.seq.released || this.states.has(seq.key)) return;
    // The tokens the two draft sequences have in common (the outer `length` is the target's share;
    // the draft's may differ), less one where the inner speculator needs the next token too.
    const history = this.draftHistory(seq.history);
    const next = this.inner.shareNeedsNextToken === true ? 1 : 0;
    const max = Math.min(src.seq.committed + next, src.seq.history.length, history.length - 1 + next);
    let common = 0;
    while (common < max && src.seq.history[common] === history[common]) common++;
    const n = common - next;
    if (n < 1) return;
    const inner = this.engine.open(history, seq.promptLength, makeRng(0, 0), { from: src.seq, length: n });
    if (seq.prediction) inner.prediction = Int32Array.from(this.draftHistory(Array.from(seq.prediction)));
    this.states.set(seq.key, { seq: inner, synced: history.length });
  }

  /** Speculator.keep: the draft sequence stays for shareFrom until release(seq). */
  keep(_seq: SpecSequence): void {}

  release(seq: SpecSequence): void {
    const st = this.states.get(seq.key);
    if (!st) return;
    this.states.delete(seq.key);
    this.engine.close(st.seq);
  }

  /** Frees the inner sequences and disposes the inner speculator. */
  dispose(): void {
    for (const st of this.states.values()) this.engine.close(st.seq);
    this.states.clear();
    this.inner.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
