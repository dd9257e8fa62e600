// SpeculativeDecoder: the public decoding API (streaming generate, generateBatch, statistics) over
// SpecEngine (lib/spec_engine.ts), which runs the step loop.
import { sharedEngine, withModelLock, type RequestOptions } from './engine/engine';
import type { CausalLM } from './models/causal_lm';
import { SpecEngine, type DecodeStats, type EngineSequence } from './spec_engine';
import { isSampling, makeRng, throwIfAborted } from './step_helpers';
import type { SamplingConfig, Speculator } from './strategies/speculator';
import { codedError } from './strategies/speculator';

export type { DecodeStats, PhaseTimes } from './spec_engine';
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
  /** 'context': prompt + output filled the model's positions (maxPositions). */
  readonly finishReason: 'length' | 'stop' | 'context';
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
    const seed: unknown = opts.sampling?.seed;
    if (seed !== undefined && !(typeof seed === 'bigint' ? seed >= 0n && seed < 2n ** 64n : Number.isSafeInteger(seed) && (seed as number) >= 0))
      throw codedError('E_ARG', `sampling.seed: expected an integer in [0, 2^64), got ${String(seed)}`);
    this.target = opts.target;
    this.speculator = opts.speculator;
    this.sampling = isSampling(opts.sampling) ? opts.sampling : undefined;
    opts.speculator?.attach(opts.target);
  }

  /**
   * Decodes one prompt; iterate for the per-step chunks, await `.result` for tokens + stats.
   * Breaking out of the iteration early stops the run (`.result` then rejects with AbortError).
   * Concurrent calls on one model join one running batch (lib/engine/engine.ts).
   */
  generate(prompt: Int32Array | readonly number[], opts: GenerateOptions): Generation {
    const req: { -readonly [K in keyof RequestOptions]: RequestOptions[K] } = { ...opts, seed: this.sampling?.seed ?? 0 };
    if (this.sampling) req.sampling = this.sampling;
    return sharedEngine(this.target, this.speculator).generate(prompt, req);
  }

  /**
   * Decodes several prompts together: one target forward per step over all live sequences' trees
   * (ragged; no padding), each sequence accepting its own number of tokens; finished sequences
   * leave the batch. Sequence i samples from stream (seed, i). Results in input order.
   */
  generateBatch(prompts: readonly (Int32Array | readonly number[])[], opts: BatchOptions): Promise<GenerateResult[]> {
    // Takes its turn on the model with the engines of concurrent generate() calls.
    return withModelLock(this.target, () => this.runBatch(prompts, opts));
  }

  private async runBatch(prompts: readonly (Int32Array | readonly number[])[], opts: BatchOptions): Promise<GenerateResult[]> {
    const { maxNewTokens, signal } = opts;
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) throw codedError('E_ARG', `maxNewTokens must be a non-negative integer, got ${maxNewTokens}`);
    // Like plainGenerate: the model's EOS ids stop a sequence too (the stop token is emitted).
    const stopTokens = opts.stopTokens ?? [];
    if (!(Array.isArray(stopTokens) || ArrayBuffer.isView(stopTokens)) || !Array.from(stopTokens as ArrayLike<unknown>).every((t) => Number.isInteger(t)))
      throw codedError('E_ARG', `stopTokens must be an array of integer token ids, got ${String(stopTokens)}`);
    const stop = new Set([...this.target.config.eosTokenIds, ...stopTokens]);
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
        if (r.done === undefined && r.seq.history.length > r.seq.maxPosition) r.done = 'context';
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
