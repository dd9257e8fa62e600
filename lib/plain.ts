// Plain autoregressive decoding: the baseline every speculative strategy is compared against, so
// it is kept simple. All live sequences go through one (ragged) forward per step.
//
// RNG streams: sequence i of a call draws its k-th new token (k = 0, 1, ...) with
//   Philox(key = seed, counter offset = (i << 32) | k),
// so (seed, i, k) alone determine a draw: the same prompt at the same batch index gives the same
// output whatever else is in the batch.
import { checkIgnoreEos, checkMinTokens, checkStopTokens, optionsArg } from './errors';
import type { CausalLM, ChainOptions, SequenceInput } from './models/causal_lm';
import { codedError } from './models/config';
import { chainLength, observeChainStep } from './plain_chain';
import { anyBan, argmax, argmaxIds, maskTokens, NO_PENALTIES, penalizeRow, processLogits, resolvePenalties, sample, type Penalties, type PenaltyHistory, type ResolvedPenalties, type StopBan } from './sampling';
import type { Tensor } from './tensor';
import { checkLogprobs, LogprobsSink, planPromptRows, recordPromptRows, tokenLogprobs, type TokenLogprobs } from './logprobs';
import { checkGrammar, GrammarCursor, type TokenGrammar } from './grammar';

export interface PlainOptions {
  readonly maxNewTokens: number;
  /** 0 (default): greedy argmax. */
  readonly temperature?: number;
  readonly topK?: number;
  readonly topP?: number;
  readonly minP?: number;
  readonly seed?: number;
  /** Extra tokens that end a sequence (besides the model's EOS ids); the stop token is emitted. */
  readonly stopTokens?: readonly number[];
  /** The model's EOS ids do not end a sequence (stopTokens still do): runs of a fixed length, for benchmarks. Default false. */
  readonly ignoreEos?: boolean;
  /** Repetition / presence / frequency penalties and a logit bias on each step's logits (default none); native chains apply them too. */
  readonly penalties?: Penalties;
  readonly signal?: AbortSignal;
  /** Called with each new token of sequence `index` as soon as it is chosen (for streaming). */
  readonly onTokens?: (index: number, tokens: Int32Array) => void;
  /** Record each token's log-probability and this many alternatives (GenerateOptions.logprobs; computed in the native chains where the model has chainLogprobs, else the steps run one at a time). */
  readonly logprobs?: number;
  /** Record the prompt's log-probabilities and this many alternatives (GenerateOptions.promptLogprobs; read even with maxNewTokens 0). */
  readonly promptLogprobs?: number;
  /** The fewest tokens before a stop token may be emitted (GenerateOptions.minTokens). Default 0. */
  readonly minTokens?: number;
  /** Constrain the output to a grammar (GenerateOptions.grammar); the steps then run one at a time. */
  readonly grammar?: TokenGrammar;
}

export interface PlainStats {
  /** Forward passes of the model. */
  readonly targetForwards: number;
  readonly seconds: number;
  /** New tokens of all sequences per second. */
  readonly tokensPerSecond: number;
  /** Forward passes each sequence took part in (= its new tokens for plain decoding). */
  readonly sequenceForwards: number[];
}

export interface PlainResult {
  /** New tokens of each prompt (ending with the stop token when one was emitted). */
  readonly tokens: Int32Array[];
  /** Why each sequence ended: a stop token, maxNewTokens, or the model's context (maxPositions). */
  readonly finishReasons: ('stop' | 'length' | 'context')[];
  readonly stats: PlainStats;
  /** With the `logprobs` option: each prompt's tokens' log-probabilities. */
  readonly logprobs?: TokenLogprobs[];
  /** With the `promptLogprobs` option: each prompt's, entry j for its token j + 1. */
  readonly promptLogprobs?: TokenLogprobs[];
}

/** Philox offset of draw k of sequence i (see the file comment). */
export function streamOffset(i: number, k: number): bigint {
  return (BigInt(i) << 32n) | BigInt(k);
}

export async function plainGenerate(model: CausalLM, prompts: readonly Int32Array[], options: PlainOptions): Promise<PlainResult> {
  optionsArg(options, 'plainGenerate options');
  const { vocabSize, maxPositions, eosTokenIds } = model.config;
  const maxNew = options.maxNewTokens;
  if (!Number.isSafeInteger(maxNew) || maxNew < 0) throw codedError('E_ARG', `maxNewTokens: expected an integer >= 0, got ${maxNew}`);
  const temperature = options.temperature ?? 0;
  if (!(temperature >= 0)) throw codedError('E_ARG', `temperature: expected a number >= 0, got ${temperature}`);
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw codedError('E_ARG', `seed: expected an integer >= 0, got ${seed}`);
  if (prompts.length === 0) throw codedError('E_ARG', 'prompts: empty batch');
  prompts.forEach((p, i) => {
    if (p.length === 0) throw codedError('E_ARG', `prompts[${i}]: empty prompt`);
    if (p.length >= maxPositions) {
      throw codedError('E_ARG', `prompts[${i}]: ${p.length} tokens do not fit the context of ${maxPositions} positions (max_position_embeddings) with room to generate`);
    }
    p.forEach((id, j) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw codedError('E_ARG', `prompts[${i}][${j}]: token id ${id} is outside the vocabulary [0, ${vocabSize})`);
    });
  });
  checkStopTokens(options.stopTokens);
  checkIgnoreEos(options.ignoreEos);
  const logprobsK = checkLogprobs(options.logprobs);
  const promptK = checkLogprobs(options.promptLogprobs, 'promptLogprobs');
  const promptSinks = promptK === undefined ? undefined : prompts.map(() => new LogprobsSink(promptK));
  checkMinTokens(options.minTokens);
  const minTokens = options.minTokens ?? 0;
  checkGrammar(options.grammar, vocabSize);
  const cursors = options.grammar ? prompts.map(() => new GrammarCursor(options.grammar!)) : undefined;
  const sinks = logprobsK === undefined ? undefined : prompts.map(() => new LogprobsSink(logprobsK));
  const stops = new Set<number>([...(options.ignoreEos === true ? [] : eosTokenIds), ...(options.stopTokens ?? [])]);
  const sampling = { temperature, topK: options.topK ?? 0, topP: options.topP ?? 1, minP: options.minP ?? 0 };
  const penalties = resolvePenalties(options.penalties, 'penalties', vocabSize);

  const t0 = performance.now();
  const out: number[][] = prompts.map(() => []);
  // Sequence i's stop ban while its output is shorter than minTokens (stop tokens ascending).
  const stopList = Int32Array.from(stops).sort();
  const banOf = (i: number): StopBan | undefined => (minTokens > out[i]!.length && stopList.length > 0 ? { tokens: stopList, before: minTokens - out[i]!.length } : undefined);
  // Each sequence's prompt + output, grown in place (penalize() keeps its counts per array).
  const hist: number[][] = penalties || minTokens > 0 ? prompts.map((p) => Array.from(p)) : [];
  const historyOf = (i: number): PenaltyHistory => ({ tokens: hist[i]!, promptLength: prompts[i]!.length });
  const finishReasons: ('stop' | 'length' | 'context')[] = prompts.map(() => 'length');
  const forwards = prompts.map(() => 0);
  let targetForwards = 0;
  const seqs: number[] = [];
  let failed = true;
  try {
    for (let i = 0; i < prompts.length; i++) seqs.push(model.createSequence());
    // feed[i]: tokens sequence i sends in the next forward (its prompt, then its last new token).
    const feed: Int32Array[] = prompts.map((p) => p);
    // Prompt log-probabilities: the prompts' rows but the last, in forwards with every row's logits.
    const fedPrompt = prompts.map(() => 0);
    while (promptSinks) {
      const items = prompts.map((p, i) => ({ tokens: p, promptLength: p.length, committed: fedPrompt[i]!, sink: promptSinks[i]! }));
      const counts = planPromptRows(items, vocabSize);
      if (!counts) break;
      options.signal?.throwIfAborted();
      const idx = prompts.map((_, i) => i).filter((i) => counts[i]! > 0);
      const fw = await model.forward(
        idx.map((i) => ({ seq: seqs[i]!, tokens: prompts[i]!.subarray(fedPrompt[i]!, fedPrompt[i]! + counts[i]!) })),
        options.signal !== undefined ? { signal: options.signal } : {},
      );
      targetForwards++;
      try {
        recordPromptRows(fw.logits, fw.indptr, idx.map((i) => items[i]!), Int32Array.from(idx, (i) => counts[i]!));
      } finally {
        fw.logits.dispose();
        fw.hidden?.dispose();
      }
      model.commit(idx.map((i) => seqs[i]!), idx.map((i) => Int32Array.from({ length: counts[i]! }, (_, j) => j)));
      for (const i of idx) {
        fedPrompt[i]! += counts[i]!;
        feed[i] = prompts[i]!.subarray(fedPrompt[i]!);
      }
    }
    let active = maxNew > 0 ? prompts.map((_, i) => i) : [];
    // Steps run as native chains (lib/plain_chain.ts): the same tokens as one at a time, sampled
    // ones included (a chain draws step j of sequence i at streamOffset(i, k + j), as below).
    // (Penalties go with the chain: each pick sees the history and the chain's own picks.)
    // (With logprobs where the model's chains compute them, ChainOptions.logprobs; else one at a time.)
    const chain = (sinks && !model.chainLogprobs) || cursors ? undefined : chainCall(model, sampling, seed, penalties);
    while (chain && active.length > 0) {
      options.signal?.throwIfAborted();
      const len = chainLength(model, active.length);
      // k picks feed k - 1 of them: each fed token's position stays below maxPositions.
      const steps = active.map((i) => Math.max(1, Math.min(len, maxNew - out[i]!.length, maxPositions - prompts[i]!.length - out[i]!.length)));
      const t = performance.now();
      const chainLp: (TokenLogprobs | undefined)[] = [];
      const picks = await chain(
        active.map((i) => ({ seq: seqs[i]!, tokens: feed[i]! })),
        steps,
        temperature === 0 ? [] : active.map((i, b) => Array.from({ length: steps[b]! }, (_, j) => streamOffset(i, out[i]!.length + j))),
        options.signal,
        penalties || active.some((i) => banOf(i)) ? active.map(historyOf) : undefined,
        active.map(banOf),
        sinks && logprobsK !== undefined ? { k: logprobsK, want: active.map(() => true), sink: (b, lp) => (chainLp[b] = lp) } : undefined,
      );
      const most = Math.max(...steps);
      // (A chain that starts with a prompt says nothing about a step's cost.)
      if (active.every((i) => feed[i]!.length === 1)) observeChainStep(model, active.length, (performance.now() - t) / 1000 / most);
      // (Picks past a stop ran, but no statistic counts them: they are not output.)
      let made = 0;
      const still: number[] = [];
      active.forEach((i, b) => {
        const got = picks[b]!;
        let done = false;
        let k = 0;
        for (; k < got.length && !done; k++) {
          const tok = got[k]!;
          if (tok < 0) throw codedError('E_INTERNAL', `sequence ${i}: no token has positive probability (non-finite logits?)`);
          forwards[i]!++;
          out[i]!.push(tok);
          hist[i]?.push(tok);
          options.onTokens?.(i, Int32Array.of(tok));
          const length = prompts[i]!.length + out[i]!.length;
          if (stops.has(tok) || out[i]!.length >= maxNew || length >= maxPositions) {
            finishReasons[i] = stops.has(tok) ? 'stop' : out[i]!.length >= maxNew ? 'length' : 'context';
            done = true;
          }
        }
        made = Math.max(made, k);
        // (The picks past a stop are not output: neither are their log-probabilities.)
        if (sinks) {
          const lp = chainLp[b];
          if (!lp || lp.token.length !== got.length) throw codedError('E_INTERNAL', `sequence ${i}: the chain returned ${lp?.token.length ?? 'no'} log-probabilities for ${got.length} picks`);
          sinks[i]!.push(lp, 0, k);
        }
        if (!done) {
          feed[i] = Int32Array.of(got[got.length - 1]!);
          still.push(i);
        }
      });
      targetForwards += made;
      active = still;
    }
    while (active.length > 0) {
      options.signal?.throwIfAborted();
      const fw = await model.forward(
        active.map((i) => ({ seq: seqs[i]!, tokens: feed[i]! })),
        options.signal !== undefined ? { signal: options.signal } : {},
      );
      targetForwards++;
      let next: Int32Array;
      try {
        // Each sequence's last row, with its prompt and output so far as the history.
        active.forEach((i, b) => {
          const ban = banOf(i);
          if (penalties || ban) penalizeRow(fw.logits, (fw.indptr[b + 1] as number) - 1, penalties ?? NO_PENALTIES, historyOf(i), ban);
        });
        // The grammar's allowed tokens after each output so far (a stop token only where it is complete).
        if (cursors) {
          const rows: number[] = [];
          const masks: Uint32Array[] = [];
          active.forEach((i, b) => {
            const st = cursors[i]!.at(out[i]!, 0, out[i]!.length);
            if (!st) throw codedError('E_INTERNAL', `sequence ${i}: its output left the grammar`);
            rows.push((fw.indptr[b + 1] as number) - 1);
            // (No stop token where min_tokens bans it.)
            masks.push(options.grammar!.allowed(st, banOf(i) ? undefined : stopList));
          });
          maskTokens(fw.logits, rows, masks);
        }
        next = pickTokens(fw.logits, fw.indptr, active, sampling, seed, (i) => out[i]!.length);
        // (A draw without mass is reported below, as without logprobs.)
        if (sinks && logprobsK !== undefined && next.every((t) => t >= 0)) {
          const lp = tokenLogprobs(fw.logits, Int32Array.from(active, (_, b) => (fw.indptr[b + 1] as number) - 1), next, logprobsK);
          active.forEach((i, b) => sinks[i]!.push(lp, b, b + 1));
        }
      } finally {
        fw.logits.dispose();
        fw.hidden?.dispose();
      }
      // Every fed token becomes committed context.
      model.commit(
        active.map((i) => seqs[i]!),
        active.map((i) => Int32Array.from({ length: feed[i]!.length }, (_, j) => j)),
      );
      const still: number[] = [];
      active.forEach((i, b) => {
        const tok = next[b]!;
        if (tok < 0) throw codedError('E_INTERNAL', `sequence ${i}: no token has positive probability (non-finite logits?)`);
        out[i]!.push(tok);
        hist[i]?.push(tok);
        forwards[i]!++;
        options.onTokens?.(i, Int32Array.of(tok));
        // Stop at a stop token, at maxNewTokens, or when the context is full (the next token
        // could not be fed).
        const length = prompts[i]!.length + out[i]!.length;
        if (!stops.has(tok) && out[i]!.length < maxNew && length < maxPositions) {
          feed[i] = Int32Array.of(tok);
          still.push(i);
        } else {
          finishReasons[i] = stops.has(tok) ? 'stop' : out[i]!.length >= maxNew ? 'length' : 'context';
        }
      });
      active = still;
    }
    failed = false;
  } finally {
    for (const s of seqs) {
      try {
        model.freeSequence(s);
      } catch (e) {
        // On the error path the original error is the one worth reporting.
        if (!failed) throw e;
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const total = out.reduce((n, t) => n + t.length, 0);
  return {
    tokens: out.map((t) => Int32Array.from(t)),
    finishReasons,
    stats: { targetForwards, seconds, tokensPerSecond: seconds > 0 ? total / seconds : 0, sequenceForwards: forwards },
    ...(sinks ? { logprobs: sinks.map((s) => s.slice(0, s.length)) } : {}),
    ...(promptSinks ? { promptLogprobs: promptSinks.map((s) => s.slice(0, s.length)) } : {}),
  };
}

type ChainFn = (
  inputs: readonly SequenceInput[],
  steps: readonly number[],
  offsets: readonly (readonly bigint[])[],
  signal: AbortSignal | undefined,
  histories?: readonly PenaltyHistory[],
  bans?: readonly (StopBan | undefined)[],
  logprobs?: ChainOptions['logprobs'],
) => Promise<Int32Array[]>;

/** The model's chain call for this sampling (greedyChain, or sampledChain with its q rows let go), if it has one. */
function chainCall(model: CausalLM, sampling: { temperature: number; topK: number; topP: number; minP: number }, seed: number, penalties?: ResolvedPenalties): ChainFn | undefined {
  // (Stop bans alone ride on neutral penalties.)
  const opts = (signal: AbortSignal | undefined, histories: readonly PenaltyHistory[] | undefined, bans: readonly (StopBan | undefined)[] | undefined, logprobs: ChainOptions['logprobs']): ChainOptions => {
    const p = penalties ?? (anyBan(bans) ? NO_PENALTIES : undefined);
    return { ...(signal ? { signal } : {}), ...(p && histories ? { penalties: { penalties: p, histories, ...(anyBan(bans) ? { bans: bans! } : {}) } } : {}), ...(logprobs ? { logprobs } : {}) };
  };
  if (sampling.temperature === 0) {
    const greedy = model.greedyChain;
    return greedy ? (inputs, steps, _offsets, signal, histories, bans, logprobs) => greedy.call(model, inputs, steps, opts(signal, histories, bans, logprobs)) : undefined;
  }
  const sampled = model.sampledChain;
  if (!sampled) return undefined;
  return async (inputs, steps, offsets, signal, histories, bans, logprobs) => {
    const r = await sampled.call(model, inputs, steps, sampling, inputs.map(() => BigInt(seed)), offsets, opts(signal, histories, bans, logprobs));
    r.q.dispose();
    return r.picks;
  };
}

/** The next token of each active sequence from the last logits row of its input. */
function pickTokens(
  logits: Tensor,
  indptr: Int32Array,
  active: readonly number[],
  sampling: { temperature: number; topK: number; topP: number; minP: number },
  seed: number,
  drawIndex: (i: number) => number,
): Int32Array {
  const B = active.length;
  // Usually every sequence fed one token, so its rows are exactly the last rows; after a prompt
  // they are not, and each sequence's last row is taken separately.
  const rowsOf = (b: number): Tensor => logits.rows(indptr[b + 1]! - 1, indptr[b + 1]!);
  const oneRowEach = indptr[B] === B;
  if (sampling.temperature === 0) {
    if (oneRowEach) return argmaxIds(logits);
    const out = new Int32Array(B);
    for (let b = 0; b < B; b++) {
      const row = rowsOf(b);
      const ids = argmax(row);
      out[b] = ids.toInt32()[0]!;
      ids.dispose();
      row.dispose();
    }
    return out;
  }
  const seeds = new BigUint64Array(B).fill(BigInt(seed));
  const offsets = BigUint64Array.from(active, (i) => streamOffset(i, drawIndex(i)));
  const sample1 = (rows: Tensor, s: BigUint64Array, o: BigUint64Array): Int32Array => {
    const probs = processLogits(rows, sampling);
    try {
      return sample(probs, s, o);
    } finally {
      probs.dispose();
    }
  };
  if (oneRowEach) return sample1(logits, seeds, offsets);
  const out = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    const row = rowsOf(b);
    out[b] = sample1(row, seeds.subarray(b, b + 1), offsets.subarray(b, b + 1))[0]!;
    row.dispose();
  }
  return out;
}
