// SpeculativeDecoder: the public decoding API (streaming generate, generateBatch, statistics) over
// SpecEngine (lib/spec_engine.ts), which runs the step loop.
import { setMaxListeners } from 'events';
import { sharedEngine, type RequestOptions } from './engine/engine';
import type { CausalLM } from './models/causal_lm';
import type { DecodeStats } from './spec_engine';
import { resolvePenalties, type Penalties, type ResolvedPenalties } from './sampling';
import { isSampling, throwIfAborted } from './step_helpers';
import type { SamplingConfig, Speculator } from './strategies/speculator';
import { checkModel, checkSpeculator, codedError } from './strategies/speculator';
import { optionsArg } from './errors';
import type { TokenLogprobs } from './logprobs';
import type { TokenGrammar } from './grammar';

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
  /** Repetition / presence / frequency penalties and a logit bias (default none): the output is plain decoding's with them (plainGenerate's `penalties`). */
  readonly penalties?: Penalties;
  /**
   * KV tokens kept free per sequence for its next tree, and so the most nodes a tree has
   * (EngineOptions.treeReserveTokens; default 64 with a speculator). Raise it, with a cache that
   * holds it (LlamaLoadOptions.treeTokens), for trees larger than 64 nodes.
   */
  readonly treeReserveTokens?: number;
}

export interface GenerateOptions {
  readonly maxNewTokens: number;
  /** Generation stops after emitting one of these (it is included in the output), or one of the model's EOS ids. */
  readonly stopTokens?: readonly number[];
  /** The model's EOS ids do not end generation (stopTokens still do): runs of a fixed length, for benchmarks. Default false. */
  readonly ignoreEos?: boolean;
  /**
   * Checked after each emitted token with the sequence's new tokens so far; true stops the sequence
   * there (finishReason 'stop'). Stop strings are built on this (lib/text.ts).
   */
  readonly shouldStop?: (newTokens: readonly number[]) => boolean;
  readonly signal?: AbortSignal;
  /**
   * The fewest tokens to emit before a stop token (the model's EOS ids, stopTokens) may be: vLLM's
   * min_tokens. The stop tokens are banned (logit -inf) on every row that predicts an earlier
   * position, speculative rows alike, and shouldStop is not asked before. Default 0.
   */
  readonly minTokens?: number;
  /**
   * Record each output token's log-probability and this many most probable alternatives (0 ..
   * 20; default: none): GenerateResult.logprobs (TokenLogprobs: the target's distribution after
   * penalties and logit bias, at temperature 1). The tokens are the same with or without. The
   * native chains (plain, draft-model, Medusa heads) compute them in the chain, read back once with
   * its tokens; a speculative step outside a chain reads them after its verification (one read
   * more a step on CUDA).
   */
  readonly logprobs?: number;
  /**
   * Record the prompt's log-probabilities and this many alternatives per token (0 .. 20; default:
   * none): GenerateResult.promptLogprobs, entry j for prompt token j + 1 under the target's own
   * distribution at position j (its raw logits: no penalties or bias, temperature 1), what
   * loglikelihood scoring reads. The prompt is then read in forwards that return every row's
   * logits (at most promptLogitsBudget's bytes each). With maxNewTokens 0 the prompt is read all
   * the same, and no token is generated.
   */
  readonly promptLogprobs?: number;
  /**
   * Constrain the output to a grammar (lib/grammar.ts; e.g. `new JsonGrammar(vocabulary)` for a
   * JSON object, OpenAI's response_format json_object): every row the target picks or verifies
   * from keeps only the tokens the grammar allows after its output, and a stop token only where
   * the grammar's text is complete. Speculation stays lossless (the output is plain constrained
   * decoding's); drafts the grammar forbids are rejected (a draft model drafts within it). Steps
   * then run one at a time (no native chains). Log-probabilities (`logprobs`) are the constrained
   * distribution's (the forbidden tokens' -inf). Its vocabSize must be the model's. A grammar that
   * allows no token where one must be picked fails the request (E_UNSUPPORTED, its reason).
   */
  readonly grammar?: TokenGrammar;
  /**
   * Tokens the output is expected to repeat (OpenAI's predicted outputs: a file being edited, an
   * answer regenerated): prompt lookup (PromptLookupSpeculator, alone or in a hybrid's place)
   * drafts from them too. It changes speed only, never the output; other speculators ignore it.
   * Ids must be in the vocabulary.
   */
  readonly prediction?: Int32Array | readonly number[];
}

export interface GenerateResult {
  /** The new tokens only. */
  readonly tokens: Int32Array;
  /** With the `logprobs` option: one entry per token of `tokens`. */
  readonly logprobs?: TokenLogprobs;
  /** With the `promptLogprobs` option: prompt.length - 1 entries, entry j for prompt token j + 1. */
  readonly promptLogprobs?: TokenLogprobs;
  /** 'context': prompt + output filled the model's positions (maxPositions). */
  readonly finishReason: 'length' | 'stop' | 'context';
  readonly stats: DecodeStats;
}

export interface BatchOptions extends GenerateOptions {
  /** Called with each step's emitted tokens of sequence `index` (timing as RequestOptions.onTokens), and their log-probabilities with the `logprobs` option. */
  readonly onTokens?: (index: number, tokens: Int32Array, logprobs?: TokenLogprobs) => void;
}

/** generate(): the step chunks as an async iterable, and the final result. */
export interface Generation extends AsyncIterable<Int32Array> {
  readonly result: Promise<GenerateResult>;
  /**
   * With the `logprobs` option: the log-probabilities of output tokens [from, to) among those the
   * iteration has yielded so far (a chunk's own, as it is yielded); undefined without the option.
   * (Optional: a TokenGenerator of one's own need not record them.)
   */
  logprobsOf?(from: number, to: number): TokenLogprobs | undefined;
}


export class SpeculativeDecoder {
  readonly target: CausalLM;
  readonly speculator: Speculator | undefined;
  readonly sampling: DecoderSampling | undefined;
  readonly penalties: ResolvedPenalties | undefined;
  readonly treeReserveTokens: number | undefined;

  constructor(opts: SpeculativeDecoderOptions) {
    optionsArg(opts, 'SpeculativeDecoder options');
    if (opts.sampling !== undefined) optionsArg(opts.sampling, 'sampling');
    const seed: unknown = opts.sampling?.seed;
    if (seed !== undefined && !(typeof seed === 'bigint' ? seed >= 0n && seed < 2n ** 64n : Number.isSafeInteger(seed) && (seed as number) >= 0))
      throw codedError('E_ARG', `sampling.seed: expected an integer in [0, 2^64), got ${String(seed)}`);
    checkModel(opts.target, 'target');
    if (opts.speculator !== undefined) checkSpeculator(opts.speculator, 'speculator');
    this.target = opts.target;
    this.speculator = opts.speculator;
    this.sampling = isSampling(opts.sampling) ? opts.sampling : undefined;
    this.penalties = resolvePenalties(opts.penalties, 'penalties', opts.target.config.vocabSize);
    const reserve: unknown = opts.treeReserveTokens;
    if (reserve !== undefined && !(Number.isSafeInteger(reserve) && (reserve as number) >= 1)) throw codedError('E_ARG', `treeReserveTokens: expected an integer >= 1, got ${String(reserve)}`);
    this.treeReserveTokens = opts.treeReserveTokens;
    opts.speculator?.attach(opts.target);
  }

  /**
   * Measures now what the speculator's sizing needs (the cost model's calibration of the target,
   * and of a draft model's chain: tens of milliseconds on the embedded family, a few seconds on a
   * 1B model on the CPU), so that the first generate() does not wait for it; resolves with the
   * wall time it took. Once per model: later calls, and decoders on the same models, resolve at
   * once. Without it the first request measures them itself. Nothing to do for plain decoding or
   * fixed settings.
   */
  prepare(): Promise<{ readonly seconds: number }> {
    return sharedEngine(this.target, this.speculator, this.treeReserveTokens).prepare(this.sampling ? { sampling: this.sampling } : {});
  }

  /**
   * Decodes one prompt; iterate for the per-step chunks, await `.result` for tokens + stats.
   * Breaking out of the iteration early stops the run (`.result` then rejects with AbortError).
   * Concurrent calls on one model join one running batch (lib/engine/engine.ts).
   */
  generate(prompt: Int32Array | readonly number[], opts: GenerateOptions): Generation {
    optionsArg(opts, 'generate options');
    const req: { -readonly [K in keyof RequestOptions]: RequestOptions[K] } = { ...opts, seed: this.sampling?.seed ?? 0 };
    if (this.sampling) req.sampling = this.sampling;
    if (this.penalties) req.penalties = this.penalties;
    return sharedEngine(this.target, this.speculator, this.treeReserveTokens).generate(prompt, req);
  }

  /**
   * Decodes several prompts together in the model's shared batch (the engine behind generate()):
   * one target forward per step over all live sequences' trees (ragged; no padding), each sequence
   * accepting its own number of tokens; finished sequences leave the batch, and concurrent
   * generate() / generateBatch() calls on the model join the same steps. Sequence i samples from
   * stream (seed, i). Results in input order; the first failure cancels the other prompts.
   */
  async generateBatch(prompts: readonly (Int32Array | readonly number[])[], opts: BatchOptions): Promise<GenerateResult[]> {
    const { maxNewTokens, signal } = optionsArg(opts, 'generateBatch options');
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) throw codedError('E_ARG', `maxNewTokens must be a non-negative integer, got ${maxNewTokens}`);
    // Every prompt is checked before any is submitted: a bad one fails the call with no work done.
    const c = this.target.config;
    prompts.forEach((p, i) => {
      if (p.length === 0) throw codedError('E_ARG', `prompts[${i}] is empty`);
      if (p.length >= c.maxPositions) throw codedError('E_ARG', `prompts[${i}]: ${p.length} tokens leave no room to generate in the model's ${c.maxPositions} positions`);
    });
    throwIfAborted(signal);
    // A batch's first failure cancels its other prompts: they listen on one controller. (A lone
    // prompt has no others; it listens on the caller's signal alone. A controller and its listeners
    // cost ~10 us a call, a few tenths of a percent of a 128-token request on a tiny model.)
    const cancel = prompts.length > 1 ? new AbortController() : undefined;
    if (cancel) setMaxListeners(prompts.length + 10, cancel.signal);
    const onAbort = (): void => cancel?.abort(signal?.reason);
    if (cancel) signal?.addEventListener('abort', onAbort, { once: true });
    const engine = sharedEngine(this.target, this.speculator, this.treeReserveTokens);
    const seed = this.sampling?.seed ?? 0;
    let firstError: { e: unknown } | undefined;
    try {
      const runs = prompts.map((p, i) => {
        const req: { -readonly [K in keyof RequestOptions]: RequestOptions[K] } = { maxNewTokens, seed, stream: i };
        const reqSignal = cancel ? cancel.signal : signal;
        if (reqSignal) req.signal = reqSignal;
        if (this.sampling) req.sampling = this.sampling;
        if (this.penalties) req.penalties = this.penalties;
        if (opts.stopTokens !== undefined) req.stopTokens = opts.stopTokens;
        if (opts.ignoreEos !== undefined) req.ignoreEos = opts.ignoreEos;
        if (opts.shouldStop) req.shouldStop = opts.shouldStop;
        if (opts.logprobs !== undefined) req.logprobs = opts.logprobs;
        if (opts.promptLogprobs !== undefined) req.promptLogprobs = opts.promptLogprobs;
        if (opts.minTokens !== undefined) req.minTokens = opts.minTokens;
        if (opts.grammar !== undefined) req.grammar = opts.grammar;
        if (opts.prediction !== undefined) req.prediction = opts.prediction;
        const onTokens = opts.onTokens;
        if (onTokens) req.onTokens = (toks, lp) => onTokens(i, toks, lp);
        return engine.submit(p, req).catch((e: unknown) => {
          // The first failure (or the caller's abort) cancels the rest of the batch.
          if (!firstError) firstError = { e: prefixed(e, i) };
          cancel?.abort(e);
          return undefined;
        });
      });
      const results = await Promise.all(runs);
      if (firstError) throw firstError.e;
      return results as GenerateResult[];
    } finally {
      if (cancel) signal?.removeEventListener('abort', onAbort);
    }
  }

  dispose(): void {
    this.speculator?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** A batch member's coded error names the prompt it came from (an abort stays as it is). */
function prefixed(e: unknown, i: number): unknown {
  if (e instanceof Error && e.name !== 'AbortError' && typeof (e as { code?: unknown }).code === 'string' && !e.message.startsWith('prompts[')) {
    e.message = `prompts[${i}]: ${e.message}`;
  }
  return e;
}
