// SpeculativeDecoder: propose a tree per sequence -> ONE model forward over all trees of the
// batch -> verify (greedy at temperature 0, exact rejection when sampling, Medusa's typical mode on
// request) -> commit the accepted nodes -> let the speculator sync -> emit -> statistics.
//
// The step loop lives in SpecEngine (one model + one speculator + live sequences) so that a hybrid
// speculator can run the same loop on its draft model ("Medusa as the draft").
import type { CausalLM, ForwardOutput, SequenceInput } from './models/causal_lm';
import { argmax, processLogits, sample, type SamplingOptions } from './sampling';
import type {
  Proposal,
  ProposalBatch,
  ProposeContext,
  SamplingConfig,
  SeqRng,
  SpecSequence,
  Speculator,
} from './strategies/speculator';
import { codedError } from './strategies/speculator';
import type { Tensor } from './tensor';
import { Tensor as TensorFactory } from './tensor';
import { chainTree, flattenTrees, pruneTree, treeDepths, validateTree } from './tree';
import { verify, type VerifyInput, type VerifyMode } from './verify';

// ---- RNG streams -------------------------------------------------------------------------------
// As in lib/plain.ts: sequence i of a batch uses Philox key = seed and counter offsets
// (i << 32) | c, c = 0, 1, ... one per native sample/verify call (each call separates its own
// draws by node and purpose, so one offset step per call never reuses a counter).

export function makeRng(seed: number | bigint, index: number): SeqRng {
  let counter = 0n;
  const base = BigInt(index) << 32n;
  return {
    seed: BigInt(seed),
    next(): bigint {
      return base | counter++;
    },
  };
}

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
  /** Seconds per phase (batch-wide: a batched step's time counts once for every run stat). */
  phases: PhaseTimes;
  seconds: number;
  tokensPerSecond: number;
}

class StatsAcc {
  newTokens = 0;
  targetForwards = 0;
  proposed = 0;
  accepted = 0;
  acceptedPerPosition: number[] = [];
  proposedPerPosition: number[] = [];

  addStep(proposal: Proposal, acceptedLen: number, emitted: number): void {
    this.targetForwards++;
    this.newTokens += emitted;
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
      phases: { ...phases },
      seconds,
      tokensPerSecond: seconds > 0 ? this.newTokens / seconds : 0,
    };
  }
}

function bump(a: number[], i: number): void {
  while (a.length <= i) a.push(0);
  a[i] = (a[i] as number) + 1;
}

// ---- the engine ----------------------------------------------------------------------------------

/** Engine-side state of a sequence (the speculator sees it read-only as a SpecSequence). */
export class EngineSequence implements SpecSequence {
  history: number[];
  committed = 0;
  maxDepth = 0;
  maxPosition: number;
  released = false;
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

export function abortError(signal?: AbortSignal): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  const e = new Error('the generation was aborted') as Error & { code: string };
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}

function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortError(signal);
}

/** The logits processing of a sampling config (applied alike to target p and draft q). */
export function samplingOptions(s: SamplingConfig): SamplingOptions {
  const o: { temperature: number; topK?: number; topP?: number; minP?: number } = { temperature: s.temperature };
  if (s.topK !== undefined) o.topK = s.topK;
  if (s.topP !== undefined) o.topP = s.topP;
  if (s.minP !== undefined) o.minP = s.minP;
  return o;
}

/** Greedy when undefined or temperature 0. */
export function isSampling(s: SamplingConfig | undefined): s is SamplingConfig {
  return s !== undefined && s.temperature > 0;
}

/**
 * Picks one token per row `rows[b]` of `logits`: argmax when greedy, else a draw from the processed
 * distribution with seqs[b]'s stream. Used for the token that follows a prefill.
 */
export function pickTokens(logits: Tensor, rows: Int32Array, sampling: SamplingConfig | undefined, rngs: readonly SeqRng[]): number[] {
  const out: number[] = [];
  for (let b = 0; b < rows.length; b++) {
    const r = rows[b] as number;
    const row = logits.rows(r, r + 1);
    try {
      if (!isSampling(sampling)) {
        const ids = argmax(row);
        out.push((ids.toInt32()[0] as number));
        ids.dispose();
      } else {
        const rng = rngs[b] as SeqRng;
        const probs = processLogits(row, samplingOptions(sampling));
        try {
          out.push(sample(probs, BigUint64Array.of(rng.seed), BigUint64Array.of(rng.next()))[0] as number);
        } finally {
          probs.dispose();
        }
      }
    } finally {
      row.dispose();
    }
  }
  return out;
}

/** Copies rows of (possibly several) tensors into one f32 [rows, V] tensor on `device`. */
export function gatherRows(parts: readonly { tensor: Tensor; row: number }[], vocab: number, device: Tensor['device']): Tensor {
  // Host round trip: the ops contract has no row-gather op yet (a native one would avoid it).
  const host = new Float32Array(parts.length * vocab);
  parts.forEach((p, i) => {
    const r = p.tensor.rows(p.row, p.row + 1);
    host.set(r.toFloat32(), i * vocab);
    r.dispose();
  });
  return TensorFactory.fromArray(host, 'f32', [parts.length, vocab], device);
}

/** Sequence keys are unique in the process, so concurrent runs sharing a speculator never collide. */
let nextSequenceKey = 0;

export interface EngineOptions {
  readonly model: CausalLM;
  readonly speculator?: Speculator;
  readonly sampling?: SamplingConfig;
}

/**
 * One model + one speculator + the sequences being decoded. Not safe for concurrent steps on the
 * same sequences; different engines may share a model (sequences are independent).
 */
export class SpecEngine {
  readonly model: CausalLM;
  readonly speculator: Speculator | undefined;
  readonly sampling: SamplingConfig | undefined;
  readonly phases: PhaseTimes = { prefill: 0, draft: 0, target: 0, verify: 0, commit: 0, update: 0 };

  constructor(opts: EngineOptions) {
    this.model = opts.model;
    this.speculator = opts.speculator;
    this.sampling = isSampling(opts.sampling) ? opts.sampling : undefined;
  }

  private ctx(signal?: AbortSignal): ProposeContext {
    const c: { sampling?: SamplingConfig; signal?: AbortSignal } = {};
    if (this.sampling) c.sampling = this.sampling;
    if (signal) c.signal = signal;
    return c;
  }

  /** A new sequence over `history` (nothing cached yet). */
  open(history: ArrayLike<number>, promptLength: number, rng: SeqRng): EngineSequence {
    for (let i = 0; i < history.length; i++) {
      const t = history[i] as number;
      if (!Number.isInteger(t) || t < 0 || t >= this.model.config.vocabSize) {
        throw codedError('E_ARG', `prompt[${i}] = ${t} is outside the vocabulary [0, ${this.model.config.vocabSize})`);
      }
    }
    const modelSeq = this.model.createSequence();
    return new EngineSequence(nextSequenceKey++, modelSeq, history, promptLength, rng, this.model.config.maxPositions);
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
    const out = await this.model.forward(inputs, this.speculator?.wantsHidden ? { hidden: true, ...sig(signal) } : sig(signal));
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
        const roots = pickTokens(out.logits, lastRows, this.sampling, todo.map((s) => s.rng));
        todo.forEach((s, b) => {
          s.history.push(roots[b] as number);
          s.stats.newTokens++;
        });
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
   * One speculative step for every sequence given (each must have maxDepth set and its root as the
   * last history token). Returns the emitted tokens per sequence (already appended to history).
   */
  async step(seqs: readonly EngineSequence[], signal?: AbortSignal): Promise<Int32Array[]> {
    const ctx = this.ctx(signal);
    let t = performance.now();
    const lap = (phase: keyof PhaseTimes): void => {
      const now = performance.now();
      this.phases[phase] += (now - t) / 1000;
      t = now;
    };
    throwIfAborted(signal);
    let batch: ProposalBatch;
    if (this.speculator) batch = await this.speculator.propose(seqs, ctx);
    else batch = { proposals: seqs.map((s) => chainTree(s.history[s.history.length - 1] as number)) };
    let draftProbs = batch.draftProbs;
    let probs: Tensor | undefined;
    let out: ForwardOutput | undefined;
    try {
      const proposals = this.checkProposals(seqs, batch);
      if (proposals !== batch.proposals && draftProbs) {
        // A pruned tree no longer lines up with the draft rows; q rows are not needed for the
        // deterministic shapes speculators prune, but a mismatch must not pass silently.
        throw codedError('E_ARG', `${this.speculator?.name}: proposal deeper than maxDepth together with draft probabilities`);
      }
      lap('draft');
      throwIfAborted(signal);
      const inputs: SequenceInput[] = proposals.map((p, b) => forwardInput((seqs[b] as EngineSequence).modelSeq, p));
      out = await this.model.forward(inputs, this.speculator?.wantsHidden ? { hidden: true, ...sig(signal) } : sig(signal));
      lap('target');
      throwIfAborted(signal);

      let accepted: readonly Int32Array[];
      let emitted: readonly Int32Array[];
      if (!this.sampling && proposals.every((p) => p.tokens.length === 1)) {
        // Greedy with nothing proposed (no speculator, or no n-gram match): greedy verification of a
        // lone root emits its argmax (the same order: lowest index on ties, NaN never wins), so the
        // argmax op alone gives the same tokens without the verify call's index arrays and outputs.
        const ids = argmax(out.logits);
        let top: Int32Array;
        try {
          top = ids.toInt32();
        } finally {
          ids.dispose();
        }
        accepted = proposals.map(() => Int32Array.of(0));
        emitted = proposals.map((_, b) => top.subarray(b, b + 1));
      } else {
        ({ acceptedNodes: accepted, emitted } = this.verifyBatch(proposals, out.logits, seqs, draftProbs, (p) => (probs = p)));
      }
      lap('verify');

      this.model.commit(
        seqs.map((s) => s.modelSeq),
        accepted,
      );
      seqs.forEach((s, b) => {
        const acc = accepted[b] as Int32Array;
        const em = emitted[b] as Int32Array;
        s.committed += acc.length;
        for (const tok of em) s.history.push(tok);
        s.stats.addStep(proposals[b] as Proposal, acc.length, em.length);
      });
      lap('commit');
      await this.speculator?.update(seqs, { proposals, output: out, acceptedNodes: accepted, emitted }, ctx);
      lap('update');
      return emitted as Int32Array[];
    } finally {
      probs?.dispose();
      draftProbs?.dispose();
      draftProbs = undefined;
      if (out) disposeOutput(out);
    }
  }

  /** Verification over the whole ragged batch in one native call; keep(probs) hands the processed target rows back for disposal. */
  private verifyBatch(
    proposals: readonly Proposal[],
    logits: Tensor,
    seqs: readonly EngineSequence[],
    draftProbs: Tensor | undefined,
    keep: (probs: Tensor) => void,
  ): { acceptedNodes: Int32Array[]; emitted: Int32Array[] } {
    const { nodeIndptr, parents, tokens } = flattenTrees(proposals);
    let vin: VerifyInput;
    if (!this.sampling) {
      vin = { mode: 'greedy', nodeIndptr, parents, tokens, target: logits };
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
        seeds: BigUint64Array.from(seqs, (s) => s.rng.seed),
        offsets: BigUint64Array.from(seqs, (s) => s.rng.next()),
      };
      if (mode === 'rejection' && draftProbs) v.draft = draftProbs;
      if (mode === 'typical') {
        if (this.speculator?.typicalThreshold !== undefined) v.typicalThreshold = this.speculator.typicalThreshold;
        if (this.speculator?.typicalAlpha !== undefined) v.typicalAlpha = this.speculator.typicalAlpha;
      }
      vin = v;
    }
    return verify(vin);
  }

  /** Validates the speculator's trees; prunes plain trees deeper than maxDepth. */
  private checkProposals(seqs: readonly EngineSequence[], batch: ProposalBatch): readonly Proposal[] {
    const name = this.speculator?.name ?? 'plain';
    if (batch.proposals.length !== seqs.length) {
      throw codedError('E_ARG', `${name}: ${batch.proposals.length} proposals for ${seqs.length} sequences`);
    }
    let changed = false;
    const out = batch.proposals.map((p, b) => {
      const s = seqs[b] as EngineSequence;
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
        return pruneTree(p, s.maxDepth).tree;
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

function sig(signal?: AbortSignal): { signal?: AbortSignal } {
  return signal ? { signal } : {};
}

function forwardInput(seq: number, p: Proposal): SequenceInput {
  const i: { seq: number; tokens: Int32Array; parents?: Int32Array; positions?: Int32Array; mask?: Proposal['mask'] } = {
    seq,
    tokens: p.tokens,
  };
  if (p.mask) i.mask = p.mask;
  else i.parents = p.parents;
  if (p.positions) i.positions = p.positions;
  return i as SequenceInput;
}

export function disposeOutput(out: ForwardOutput): void {
  out.logits.dispose();
  out.hidden?.dispose();
}

// ---- the decoder -------------------------------------------------------------------------------

export interface DecoderSampling extends SamplingConfig {
  readonly seed?: number | bigint;
}

export interface SpeculativeDecoderOptions {
  readonly target: CausalLM;
  readonly speculator?: Speculator;
  /** Omitted or temperature 0: greedy (bitwise the plain greedy output). */
  readonly sampling?: DecoderSampling;
}

export interface GenerateOptions {
  readonly maxNewTokens: number;
  /** Generation stops after emitting one of these (it is included in the output). */
  readonly stopTokens?: readonly number[];
  /**
   * Checked after each emitted token with the sequence's new tokens so far; true stops the sequence
   * there (finishReason 'stop'). Stop strings are built on this (lib/text.ts).
   */
  readonly shouldStop?: (newTokens: readonly number[]) => boolean;
  readonly signal?: AbortSignal;
}

export interface GenerateResult {
  /** The new tokens only. */
  readonly tokens: Int32Array;
  readonly finishReason: 'length' | 'stop' | 'max-positions';
  readonly stats: DecodeStats;
}

export interface BatchOptions extends GenerateOptions {
  /** Called with each step's emitted tokens of sequence `index`. */
  readonly onTokens?: (index: number, tokens: Int32Array) => void;
}

/** generate(): the step chunks as an async iterable, and the final result. */
export interface Generation extends AsyncIterable<Int32Array> {
  readonly result: Promise<GenerateResult>;
}

interface RunSeq {
  seq: EngineSequence;
  index: number;
  maxNew: number;
  newTokens: number[];
  done: GenerateResult['finishReason'] | undefined;
  t0: number;
  result?: GenerateResult;
}

export class SpeculativeDecoder {
  readonly target: CausalLM;
  readonly speculator: Speculator | undefined;
  readonly sampling: DecoderSampling | undefined;

  constructor(opts: SpeculativeDecoderOptions) {
    this.target = opts.target;
    this.speculator = opts.speculator;
    this.sampling = isSampling(opts.sampling) ? opts.sampling : undefined;
    opts.speculator?.attach(opts.target);
  }

  /**
   * Decodes one prompt; iterate for the per-step chunks, await `.result` for tokens + stats.
   * Breaking out of the iteration early stops the run (`.result` then rejects with AbortError).
   */
  generate(prompt: Int32Array | readonly number[], opts: GenerateOptions): Generation {
    const queue: Int32Array[] = [];
    let wake: (() => void) | undefined;
    let finished = false;
    let failure: unknown;
    // Leaving the for-await loop early stops the run (and frees its sequences), like an abort.
    const stopper = new AbortController();
    const user = opts.signal;
    if (user) {
      if (user.aborted) stopper.abort(user.reason);
      else user.addEventListener('abort', () => stopper.abort(user.reason), { once: true });
    }
    const result = this.generateBatch([prompt], {
      maxNewTokens: opts.maxNewTokens,
      ...(opts.stopTokens ? { stopTokens: opts.stopTokens } : {}),
      ...(opts.shouldStop ? { shouldStop: opts.shouldStop } : {}),
      signal: stopper.signal,
      onTokens: (_i, toks) => {
        queue.push(toks);
        wake?.();
      },
    }).then(
      (r) => {
        finished = true;
        wake?.();
        return r[0] as GenerateResult;
      },
      (e: unknown) => {
        finished = true;
        failure = e;
        wake?.();
        throw e;
      },
    );
    result.catch(() => undefined); // the iterator or the caller observes it
    return {
      result,
      async *[Symbol.asyncIterator](): AsyncGenerator<Int32Array> {
        try {
          for (;;) {
            const chunk = queue.shift();
            if (chunk) {
              yield chunk;
              continue;
            }
            if (finished) {
              if (failure !== undefined) throw failure;
              return;
            }
            await new Promise<void>((r) => (wake = r));
            wake = undefined;
          }
        } finally {
          if (!finished) stopper.abort();
        }
      },
    };
  }

  /**
   * Decodes several prompts together: one target forward per step over all live sequences' trees
   * (ragged; no padding), each sequence accepting its own number of tokens; finished sequences
   * leave the batch. Sequence i samples from stream (seed, i). Results in input order.
   */
  async generateBatch(prompts: readonly (Int32Array | readonly number[])[], opts: BatchOptions): Promise<GenerateResult[]> {
    const { maxNewTokens, signal } = opts;
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) throw codedError('E_ARG', `maxNewTokens must be a non-negative integer, got ${maxNewTokens}`);
    // Like plainGenerate: the model's EOS ids stop a sequence too (the stop token is emitted).
    const stop = new Set([...this.target.config.eosTokenIds, ...(opts.stopTokens ?? [])]);
    const seed = this.sampling?.seed ?? 0;
    const engineOpts: { model: CausalLM; speculator?: Speculator; sampling?: SamplingConfig } = { model: this.target };
    if (this.speculator) engineOpts.speculator = this.speculator;
    if (this.sampling) engineOpts.sampling = this.sampling;
    const engine = new SpecEngine(engineOpts);
    const runs: RunSeq[] = [];
    const tStart = performance.now();
    try {
      throwIfAborted(signal);
      prompts.forEach((p, i) => {
        if (p.length === 0) throw codedError('E_ARG', `prompts[${i}] is empty`);
        runs.push({
          seq: engine.open(p, p.length, makeRng(seed, i)),
          index: i,
          maxNew: maxNewTokens,
          newTokens: [],
          done: maxNewTokens === 0 ? 'length' : undefined,
          t0: tStart,
        });
      });
      const emit = (r: RunSeq, toks: ArrayLike<number>): void => {
        // Cut at a stop token or at maxNewTokens; the step may have emitted more.
        const chunk: number[] = [];
        for (let k = 0; k < toks.length && r.done === undefined; k++) {
          const tok = toks[k] as number;
          chunk.push(tok);
          r.newTokens.push(tok);
          if (stop.has(tok) || opts.shouldStop?.(r.newTokens) === true) r.done = 'stop';
          else if (r.newTokens.length >= r.maxNew) r.done = 'length';
        }
        // As plainGenerate: stop once prompt + output fill the context.
        if (r.done === undefined && r.seq.history.length > r.seq.maxPosition) r.done = 'max-positions';
        if (chunk.length > 0) opts.onTokens?.(r.index, Int32Array.from(chunk));
      };
      const finish = (r: RunSeq): void => {
        engine.close(r.seq);
        r.result = {
          tokens: Int32Array.from(r.newTokens),
          finishReason: r.done ?? 'length',
          stats: r.seq.stats.finish(engine.phases, (performance.now() - tStart) / 1000),
        };
      };

      let live = runs.filter((r) => r.done === undefined);
      for (const r of runs) if (r.done !== undefined) finish(r);
      if (live.length > 0) {
        for (const r of live) {
          if (r.seq.history.length > r.seq.maxPosition) {
            throw codedError('E_ARG', `prompts[${r.index}]: ${r.seq.history.length} tokens leave no room to generate in the model's ${r.seq.maxPosition + 1} positions`);
          }
        }
        await engine.catchUp(live.map((r) => r.seq), true, signal);
        for (const r of live) emit(r, [r.seq.history[r.seq.history.length - 1] as number]);
      }
      for (;;) {
        for (const r of live) if (r.done !== undefined) finish(r);
        live = live.filter((r) => r.done === undefined);
        if (live.length === 0) break;
        for (const r of live) {
          // Never draft past maxNewTokens or past the context (the history may reach maxPositions).
          r.seq.maxDepth = Math.max(0, Math.min(r.maxNew - r.newTokens.length - 1, r.seq.maxPosition - r.seq.committed - 1));
        }
        const emitted = await engine.step(live.map((r) => r.seq), signal);
        live.forEach((r, b) => emit(r, emitted[b] as Int32Array));
      }
      return runs.map((r) => r.result as GenerateResult);
    } finally {
      // Abort or error: free every sequence still held (target and speculator KV pages).
      for (const r of runs) engine.close(r.seq);
    }
  }

  dispose(): void {
    this.speculator?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
