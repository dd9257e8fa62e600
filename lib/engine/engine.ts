// Engine: continuous batching of speculative decoding over one CausalLM + one speculator.
// Requests wait in a FIFO queue, join the running batch at a step boundary when the KV cache has
// room for them, and leave at once when finished or aborted. When the live sequences would not fit
// their next speculative trees, the youngest is preempted (its pages freed) and recomputed later
// from its history, as vLLM does, instead of failing mid-generation.
//
// Output does not depend on the batch: each request samples from its own stream (seed, stream),
// the kernels are batch-invariant, and a step that fails for lack of pages restores the streams of
// its sequences before they are recomputed. Requests with different sampling settings share each
// step's target forward; each setting's group proposes and is verified on its own rows.
import { availableParallelism } from 'os';
import type { GenerateOptions, GenerateResult, Generation } from '../decoder';
import { checkIgnoreEos, checkMinTokens, checkPrediction, checkStopTokens, codedError, optionsArg } from '../errors';
import type { CausalLM } from '../models/causal_lm';
import { native } from '../native';
import { checkLogprobs, LogprobsSink, type TokenLogprobs } from '../logprobs';
import { knownForwardCost } from '../cost_model';
import { DEFAULT_TREE_RESERVE, SpecEngine, StatsAcc, type EngineSequence, type PhaseTimes, type PrefixSource, type SharedPrefix, type StepPart } from '../spec_engine';
import { abortError, isSampling } from '../step_helpers';
import { resolvePenalties, type Penalties, type ResolvedPenalties } from '../sampling';
import { checkModel, checkSpeculator, type SamplingConfig, type SeqRng, type SpecSequence, type Speculator } from '../strategies/speculator';
import { streamGeneration } from './generation';
import { EngineMetrics } from './metrics';
import { checkGrammar, GrammarCursor } from '../grammar';

export interface EngineOptions {
  readonly model: CausalLM;
  readonly speculator?: Speculator;
  /**
   * A new request whose prompt begins with at least MIN_SHARED_PREFIX tokens of a live sequence's
   * (another request's, or one admitted with it: n choices of one prompt, a shared system prompt)
   * starts from a copy-on-write fork of that sequence's KV cache and computes only the rest: the
   * same output (the prefix's K/V are the bits its own prefill would write). A request with
   * promptLogprobs shares with a source that recorded them (at least as many alternatives), taking
   * its entries over the prefix. The speculator's own state starts from the source's where it can
   * (Speculator.shareFrom: a draft model's cache, EAGLE's). Not with a speculator that reads every
   * prompt row and cannot (Speculator.readsPromptRows). Default true.
   */
  readonly prefixSharing?: boolean;
  /**
   * Finished sequences kept for later requests' prefixes (with prefixSharing): up to this many, the
   * least recently used going first. Their KV pages stay taken until they go: when a request waits
   * for pages or a step runs short (before any live sequence is preempted), beyond this count, and
   * once the engine is closed and idle (or at dropPrefixCache()). Multi-turn chats resend the
   * conversation: its next turn starts after the last one's tokens, the speculator's state too
   * where it keeps it (Speculator.keep: a draft model's cache, EAGLE's). Default 0 (none kept).
   */
  readonly prefixCache?: number;
  /** Most sequences decoded together; further requests wait in the queue. Default 64. */
  readonly maxBatch?: number;
  /**
   * KV tokens kept free per live sequence for its next speculative tree: requests are admitted, and
   * the youngest preempted, so that every live sequence has this room. Default 64 with a
   * speculator, 1 without (a plain step adds one token; a reserve of 64 refused a 3-token prompt
   * on a 64-token cache). It is also the most nodes a proposed tree has (SpecSequence.maxNodes):
   * a larger one is cut, by its speculator or by the engine.
   */
  readonly treeReserveTokens?: number;
  /**
   * Lend the CPU pool one core while onTokens consumers keep this thread busy (see README,
   * Serving). Default: when the model runs on the CPU and the pool has a thread on every core.
   */
  readonly lendCore?: boolean;
}

export interface RequestOptions extends GenerateOptions {
  /** Omitted or temperature 0: greedy. */
  readonly sampling?: SamplingConfig;
  readonly seed?: number | bigint;
  /** The RNG stream (seed, stream) the request samples from. Default 0. */
  readonly stream?: number;
  /** Repetition / presence / frequency penalties and a logit bias (default none; the bias's ids are checked at submit); greedy or sampled, the output is plain decoding's with them. */
  readonly penalties?: Penalties;
  /**
   * Called with each step's new tokens, in order. A step's tokens are handed over once the next
   * step's forward has started (so what the callback does overlaps the compute), or when the
   * request ends; aborting from here stops the request after that running step. A throw fails
   * this request only. With the `logprobs` option, the tokens' log-probabilities come along.
   */
  readonly onTokens?: (tokens: Int32Array, logprobs?: TokenLogprobs) => void;
  /**
   * With the `promptLogprobs` option: called once with them when the prompt has been read (before
   * the first onTokens; with maxNewTokens 0, before the request resolves). A throw fails this
   * request only.
   */
  readonly onPromptLogprobs?: (logprobs: TokenLogprobs) => void;
}

export interface KvPages {
  readonly pageSize: number;
  readonly totalPages: number;
  readonly freePages: number;
}

/** Stream (seed, index) as makeRng (lib/step_helpers.ts), with a counter a failed step can restore. */
class RequestRng implements SeqRng {
  counter = 0n;
  private readonly base: bigint;
  constructor(
    readonly seed: bigint,
    index: number,
  ) {
    this.base = BigInt(index) << 32n;
  }
  next(): bigint {
    return this.base | this.counter++;
  }
}

class Request {
  /** Prompt + emitted tokens while queued (a live request's history is its sequence's). */
  history: number[];
  readonly newTokens: number[] = [];
  done: GenerateResult['finishReason'] | undefined;
  seq: EngineSequence | undefined;
  /** Statistics carried over preemptions. */
  stats = new StatsAcc();
  aborted = false;
  /** The RNG counter before the running step (restored when the step fails). */
  savedCounter = 0n;
  /** The sequence's committed length before the running step (the pages it takes: endStep). */
  committedAtStep = 0;
  /** Target forwards of the sequence when the step began (a step may run several: plain chains). */
  forwardsAtStep = 0;
  /** The stop set as an array (EngineSequence.stopTokens: a native chain stops after one). */
  stopArray: Int32Array | undefined;
  /** onTokens threw: the request fails at the next step boundary. */
  failure: { readonly error: unknown } | undefined;
  /**
   * Chunks emitted but not yet handed to onTokens. They are delivered once the next forward is
   * running (or when the request settles), so that what consumers do with them (an HTTP server's
   * writes) overlaps the compute instead of sitting between two forwards.
   */
  readonly outbox: Int32Array[] = [];
  /** With the `logprobs` option: the log-probabilities of the emitted tokens, kept over preemptions. */
  readonly logprobs: LogprobsSink | undefined;
  /** With the `promptLogprobs` option: the prompt's log-probabilities (filled by the first prefill, kept over preemptions). */
  readonly promptLogprobs: LogprobsSink | undefined;
  /** onPromptLogprobs has been called. */
  promptAnnounced = false;
  /** Why it decodes without drafts (DecodeStats.speculationOff): set once, by recover. */
  draftsOff: string | undefined;
  /** Tokens handed to onTokens so far (where the next chunk's log-probabilities start). */
  delivered = 0;
  readonly t0 = performance.now();
  /** The group's phase times when the request arrived: its statistics report the difference. */
  readonly phases0: PhaseTimes;

  readonly promptLength: number;

  constructor(
    readonly id: number,
    prompt: ArrayLike<number>,
    readonly opts: RequestOptions,
    readonly group: SpecEngine,
    readonly rng: RequestRng,
    readonly stop: ReadonlySet<number>,
    readonly settle: { resolve(r: GenerateResult): void; reject(e: unknown): void },
  ) {
    this.history = Array.from(prompt);
    this.promptLength = prompt.length;
    this.phases0 = { ...group.phases };
    this.logprobs = opts.logprobs !== undefined ? new LogprobsSink(opts.logprobs) : undefined;
    this.promptLogprobs = opts.promptLogprobs !== undefined ? new LogprobsSink(opts.promptLogprobs) : undefined;
  }
}

/** A step between beginStep and endStep: its requests in stepShared's order, and its parts. */
interface RunningStep {
  readonly reqs: readonly Request[];
  readonly parts: readonly StepPart[];
  readonly t0: number;
}

/** The fewest prompt tokens a request takes from another sequence's cache (EngineOptions.prefixSharing). */
export const MIN_SHARED_PREFIX = 16;

/**
 * Tokens request r may take from a source with these tokens (`cached` of them in its KV cache):
 * their common prefix, never r's last token. With r's promptLogprobs, also within the source's
 * recorded prompt log-probabilities (`recorded` entries of sink, with at least r's alternatives),
 * and one less: entry j is read on row j for token j + 1, which must be the source's too.
 */
function shareable(history: ArrayLike<number>, cached: number, sink: LogprobsSink | undefined, recorded: number, r: Request, needsNextToken: boolean): number {
  // (Speculator.shareNeedsNextToken: n cached tokens shared where n + 1 are common.)
  const n = needsNextToken
    ? Math.max(0, commonPrefix(history, r.history, Math.min(cached + 1, history.length, r.history.length)) - 1)
    : commonPrefix(history, r.history, Math.min(cached, r.history.length - 1));
  const lp = r.promptLogprobs;
  if (!lp || !needsPromptEntries(r)) return n;
  if (!sink || sink.k < lp.k) return 0;
  return Math.min(n - 1, recorded);
}

/** Whether r still lacks some of its prompt's log-probabilities (it has the option). */
function needsPromptEntries(r: Request): boolean {
  return r.promptLogprobs !== undefined && r.promptLogprobs.length < r.promptLength - 1;
}

/** Tokens a and b have in common from the start, at most `max`. */
function commonPrefix(a: ArrayLike<number>, b: ArrayLike<number>, max: number): number {
  let n = 0;
  while (n < max && a[n] === b[n]) n++;
  return n;
}

/** Steps makeRoom trusts its page accounting before it asks the model again (see kvKnown). */
const KV_RECHECK_STEPS = 64;

/** The longest the engine runs steps without giving the event loop a turn. */
const LOOP_SLICE_MS = 2;
// Lending a core to this thread's consumers (see delivering) is worth it from this much of their
// work per step.
const LEND_MIN_MS = 0.1;

/** The CPU pool's lend word (cpuLendFlag), fetched once; null without an addon that has one. */
let lendWord: Int32Array | null | undefined;
function lendFlag(): Int32Array | null {
  if (lendWord === undefined) {
    try {
      const b = native();
      lendWord = typeof b.cpuLendFlag === 'function' ? b.cpuLendFlag() : null;
    } catch {
      lendWord = null;  // no addon to lend from
    }
  }
  return lendWord;
}

/** Whether the CPU backend's pool has a thread on every core (no core is left for this thread). */
let poolFillsCores: boolean | undefined;
function cpuPoolFillsCores(): boolean {
  if (poolFillsCores === undefined) {
    try {
      poolFillsCores = lendFlag() !== null && native().cpuInfo().threads >= availableParallelism();
    } catch {
      poolFillsCores = false;
    }
  }
  return poolFillsCores;
}

/**
 * One forward at a time per model: engines sharing a model take turns by whole steps, in arrival
 * order. A free lock is taken at once (no promise to wait on: a small model's steps are ~100 us,
 * and each await of a settled promise is a microtask turn); a held one is handed to the next waiter.
 */
interface ModelLock {
  held: boolean;
  readonly waiters: (() => void)[];
}
const modelLocks = new WeakMap<CausalLM, ModelLock>();

function lockOf(model: CausalLM): ModelLock {
  let lock = modelLocks.get(model);
  if (!lock) modelLocks.set(model, (lock = { held: false, waiters: [] }));
  return lock;
}

/** Takes the lock: at once when free (undefined: nothing to await), else a promise of the hand-over. */
function acquireLock(lock: ModelLock): Promise<void> | undefined {
  if (!lock.held) {
    lock.held = true;
    return undefined;
  }
  return new Promise<void>((r) => lock.waiters.push(r));
}

function releaseLock(lock: ModelLock): void {
  // Handed over held: nobody can slip in between this release and the waiter's resumption.
  const next = lock.waiters.shift();
  if (next) next();
  else lock.held = false;
}

export async function withModelLock<T>(model: CausalLM, fn: () => Promise<T>): Promise<T> {
  const lock = lockOf(model);
  const wait = acquireLock(lock);
  if (wait) await wait;
  try {
    return await fn();
  } finally {
    releaseLock(lock);
  }
}

const shared = new WeakMap<CausalLM, Map<Speculator | undefined, Map<number | undefined, Engine>>>();

/** The engine that SpeculativeDecoder.generate() calls on `model` with `speculator` (and that tree reserve) share. */
export function sharedEngine(model: CausalLM, speculator: Speculator | undefined, treeReserveTokens?: number): Engine {
  let byModel = shared.get(model);
  if (!byModel) shared.set(model, (byModel = new Map()));
  let bySpeculator = byModel.get(speculator);
  if (!bySpeculator) byModel.set(speculator, (bySpeculator = new Map()));
  let e = bySpeculator.get(treeReserveTokens);
  if (!e) {
    e = new Engine({ model, ...(speculator ? { speculator } : {}), ...(treeReserveTokens !== undefined ? { treeReserveTokens } : {}) });
    bySpeculator.set(treeReserveTokens, e);
  }
  return e;
}

/**
 * The engines of a model that keep prefixes (EngineOptions.prefixCache): one short of pages frees
 * the others' kept sequences too (they hold the model's pages, which it cannot see otherwise).
 */
const keepersOf = new WeakMap<CausalLM, Set<Engine>>();

/** Sampling settings an Engine keeps a SpecEngine for beyond those its requests hold (Engine.groups). */
export const MAX_GROUPS = 32;

export class Engine {
  readonly model: CausalLM;
  readonly speculator: Speculator | undefined;
  readonly maxBatch: number;
  readonly treeReserveTokens: number;
  readonly metrics = new EngineMetrics();
  /** EngineOptions.prefixSharing, off where the speculator reads every prompt row (readsPromptRows). */
  private readonly prefixSharing: boolean;
  /** EngineOptions.prefixCache, and the sequences kept (least recently used first). */
  private readonly prefixCache: number;
  private readonly retained: { modelSeq: number; history: number[]; committed: number; released: boolean; promptLogprobs: LogprobsSink | undefined; kept: SpecSequence | undefined }[] = [];
  private readonly queue: Request[] = [];
  private readonly live: Request[] = [];
  /**
   * One SpecEngine per sampling setting, least recently used first; beyond MAX_GROUPS the ones no
   * request holds go (a server whose clients send many settings, say a temperature each, kept one
   * per setting ever seen).
   */
  private readonly groups = new Map<string, SpecEngine>();
  /** Lowered after a step ran out of pages despite the reserve; back to maxBatch when one finishes. */
  private liveCap: number;
  private nextId = 0;
  private running = false;
  private closed = false;
  private idleWaiters: (() => void)[] = [];

  constructor(opts: EngineOptions) {
    optionsArg(opts, 'Engine options');
    checkModel(opts.model, 'model');
    if (opts.speculator !== undefined) checkSpeculator(opts.speculator, 'speculator');
    this.model = opts.model;
    this.speculator = opts.speculator;
    this.maxBatch = opts.maxBatch ?? 64;
    this.treeReserveTokens = opts.treeReserveTokens ?? (opts.speculator ? DEFAULT_TREE_RESERVE : 1);
    if (!Number.isSafeInteger(this.maxBatch) || this.maxBatch < 1) throw codedError('E_ARG', `maxBatch: expected an integer >= 1, got ${this.maxBatch}`);
    if (!Number.isSafeInteger(this.treeReserveTokens) || this.treeReserveTokens < 1) {
      throw codedError('E_ARG', `treeReserveTokens: expected an integer >= 1, got ${this.treeReserveTokens}`);
    }
    this.liveCap = this.maxBatch;
    if (opts.prefixSharing !== undefined && typeof opts.prefixSharing !== 'boolean') throw codedError('E_ARG', `prefixSharing: expected a boolean, got ${String(opts.prefixSharing)}`);
    if (!Number.isSafeInteger(opts.prefixCache ?? 0) || (opts.prefixCache ?? 0) < 0) throw codedError('E_ARG', `prefixCache: expected an integer >= 0, got ${String(opts.prefixCache)}`);
    this.prefixSharing = (opts.prefixSharing ?? true) && this.speculator?.readsPromptRows !== true;
    this.prefixCache = this.prefixSharing ? (opts.prefixCache ?? 0) : 0;
    this.lendCore = opts.lendCore ?? (this.model.device === 'cpu' && cpuPoolFillsCores());
    this.speculator?.attach(this.model);
    // (Last, once the options are valid and the speculator attached: a refused engine is never among its model's keepers.)
    if (this.prefixCache > 0) {
      let keepers = keepersOf.get(this.model);
      if (!keepers) keepersOf.set(this.model, (keepers = new Set()));
      keepers.add(this);
    }
  }

  /** Requests waiting for admission. */
  get queued(): number {
    return this.queue.length;
  }

  /** Sequences in the running batch. */
  get batchSize(): number {
    return this.live.length;
  }

  /** The model's KV pages, when it reports them (the built-in LlamaModel does). */
  kvPages(): KvPages | undefined {
    const m = this.model as CausalLM & { kvInfo?: () => KvPages };
    return typeof m.kvInfo === 'function' ? m.kvInfo() : undefined;
  }

  /**
   * makeRoom's last answer from kvPages(), the pages this engine's steps took since (their committed
   * growth) and the steps since. Asked again at least every KV_RECHECK_STEPS steps, since other
   * engines on the model take pages this one does not see.
   */
  private kvKnown: { kv: KvPages; spent: number; age: number } | undefined;
  /**
   * The free pages at makeRoom's last answer when they did not cover every live sequence's reserve
   * (one sequence left, or a cache smaller than its reserve); the step's trees then share them.
   */
  private shortPages: number | undefined;
  /** Whether lending a core can help: the CPU pool has a thread on every core (see delivering). */
  private readonly lendCore: boolean;
  private lent = false;
  private measuring = false;
  /** How long the last step's consumers kept this thread busy (ms). */
  private consumerMs = 0;

  /** Decodes one prompt in the shared batch; resolves with its tokens and statistics. */
  submit(prompt: Int32Array | readonly number[], opts: RequestOptions): Promise<GenerateResult> {
    return new Promise<GenerateResult>((resolve, reject) => {
      optionsArg(opts, 'request options');
      if (this.closed) throw codedError('E_CLOSED', 'the engine is closed and takes no new requests');
      this.validate(prompt, opts);
      if (opts.signal?.aborted) throw abortError(opts.signal);
      const sampling = isSampling(opts.sampling) ? withoutZeroTopK(opts.sampling) : undefined;
      const rng = new RequestRng(BigInt(opts.seed ?? 0), opts.stream ?? 0);
      const stop = new Set([...(opts.ignoreEos === true ? [] : this.model.config.eosTokenIds), ...(opts.stopTokens ?? [])]);
      const r = new Request(this.nextId++, prompt, opts, this.group(sampling, resolvePenalties(opts.penalties, 'penalties', this.model.config.vocabSize)), rng, stop, { resolve, reject });
      this.metrics.submitted++;
      this.metrics.promptTokens += prompt.length;
      // (With promptLogprobs, the prompt is read all the same: the engine then ends it.)
      if (opts.maxNewTokens === 0 && opts.promptLogprobs === undefined) {
        r.done = 'length';
        this.finish(r);
        return;
      }
      opts.signal?.addEventListener(
        'abort',
        () => {
          r.aborted = true;
          const i = this.queue.indexOf(r);
          if (i >= 0) {
            this.queue.splice(i, 1);
            this.settleAbort(r);
          }
        },
        { once: true },
      );
      this.queue.push(r);
      this.kick();
    });
  }

  /** submit() as a stream of per-step chunks (leaving the loop early cancels the request). */
  generate(prompt: Int32Array | readonly number[], opts: RequestOptions): Generation {
    optionsArg(opts, 'generate options');
    return streamGeneration((onTokens, signal) => this.submit(prompt, { ...opts, signal, onTokens }), opts.signal);
  }

  /**
   * Runs the speculator's measurements now (Speculator.prepare: the cost model's calibration of
   * the target, and of a draft model's chain), between steps, so that no request waits for them;
   * resolves with their wall time. Idempotent: later calls resolve at once (seconds ~0). With no
   * speculator, or one with fixed settings, there is nothing to measure.
   */
  async prepare(opts: { readonly sampling?: SamplingConfig } = {}): Promise<{ readonly seconds: number }> {
    const speculator = this.speculator;
    if (!speculator?.prepare) return { seconds: 0 };
    const t0 = performance.now();
    const sampling = isSampling(opts.sampling) ? opts.sampling : undefined;
    await withModelLock(this.model, () => (speculator.prepare as NonNullable<Speculator['prepare']>).call(speculator, sampling ? { sampling } : {}));
    return { seconds: (performance.now() - t0) / 1000 };
  }

  /** Resolves once no request is queued or running. */
  idle(): Promise<void> {
    if (!this.running && this.queue.length === 0 && this.live.length === 0) return Promise.resolve();
    return new Promise<void>((r) => this.idleWaiters.push(r));
  }

  /** Takes no new requests (E_CLOSED); those already submitted run to the end. */
  close(): void {
    this.closed = true;
    if (!this.running) this.forgetPrefixes();
  }

  /** Closed and idle: the kept prefixes go, and this engine leaves its model's keepers. */
  private forgetPrefixes(): void {
    this.dropPrefixCache();
    keepersOf.get(this.model)?.delete(this);
  }

  /** Frees the finished sequences kept for prefixes (EngineOptions.prefixCache); returns how many. */
  dropPrefixCache(): number {
    const n = this.retained.length;
    while (this.retained.length > 0) this.evictOne();
    return n;
  }

  /** dropPrefixCache() of every engine on this model (called while this one holds the model's lock). */
  private dropModelPrefixCaches(): number {
    let n = this.dropPrefixCache();
    for (const e of keepersOf.get(this.model) ?? []) if (e !== this) n += e.dropPrefixCache();
    return n;
  }

  /** Whether this engine or another on its model keeps prefixes now. */
  private anyKept(): boolean {
    for (const e of keepersOf.get(this.model) ?? []) if (e.retained.length > 0) return true;
    return false;
  }

  /** Sequences kept for prefixes now (EngineOptions.prefixCache). */
  get prefixCached(): number {
    return this.retained.length;
  }

  private evictOne(): void {
    const e = this.retained.shift();
    if (!e) return;
    e.released = true;
    this.kvKnown = undefined;
    try {
      if (e.kept) this.speculator?.release(e.kept);
    } finally {
      this.model.freeSequence(e.modelSeq);
    }
  }

  /** close(): `using engine = new Engine(...)` closes it at the block's end. */
  [Symbol.dispose](): void {
    this.close();
  }

  private validate(prompt: Int32Array | readonly number[], opts: RequestOptions): void {
    const c = this.model.config;
    if (!Number.isSafeInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) {
      throw codedError('E_ARG', `maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
    }
    if (prompt.length === 0) throw codedError('E_ARG', 'prompt is empty');
    for (let i = 0; i < prompt.length; i++) {
      const t = prompt[i] as number;
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw codedError('E_ARG', `prompt[${i}] = ${t} is outside the vocabulary [0, ${c.vocabSize})`);
    }
    if (prompt.length >= c.maxPositions) {
      throw codedError('E_ARG', `prompt: ${prompt.length} tokens leave no room to generate in the model's ${c.maxPositions} positions`);
    }
    if (opts.stream !== undefined && (!Number.isSafeInteger(opts.stream) || opts.stream < 0 || opts.stream >= 2 ** 32)) {
      throw codedError('E_ARG', `stream must be an integer in [0, 2^32), got ${opts.stream}`);
    }
    checkStopTokens(opts.stopTokens);
    checkIgnoreEos(opts.ignoreEos);
    checkLogprobs(opts.logprobs);
    checkLogprobs(opts.promptLogprobs, 'promptLogprobs');
    checkMinTokens(opts.minTokens);
    checkGrammar(opts.grammar, c.vocabSize);
    checkPrediction(opts.prediction, c.vocabSize);
    const seed = opts.seed;
    if (seed !== undefined && !(typeof seed === 'bigint' ? seed >= 0n && seed < 2n ** 64n : Number.isSafeInteger(seed) && seed >= 0)) {
      throw codedError('E_ARG', `seed must be a non-negative integer below 2^64, got ${String(seed)}`);
    }
    const s = opts.sampling;
    if (s) {
      if (!(Number.isFinite(s.temperature) && s.temperature >= 0)) throw codedError('E_ARG', `temperature must be a finite number >= 0, got ${s.temperature}`);
      // 0 is "off", as in processLogits, the CLI's --top-k and the server's top_k.
      if (s.topK !== undefined && !(Number.isSafeInteger(s.topK) && s.topK >= 0)) throw codedError('E_ARG', `topK must be an integer >= 0 (0: off), got ${s.topK}`);
      if (s.topP !== undefined && !(s.topP > 0 && s.topP <= 1)) throw codedError('E_ARG', `topP must be in (0, 1], got ${s.topP}`);
      if (s.minP !== undefined && !(s.minP >= 0 && s.minP < 1)) throw codedError('E_ARG', `minP must be in [0, 1), got ${s.minP}`);
    }
  }

  private group(sampling: SamplingConfig | undefined, penalties: ResolvedPenalties | undefined): SpecEngine {
    const key = (sampling ? `t${sampling.temperature} k${sampling.topK} p${sampling.topP} m${sampling.minP}` : 'greedy') +
      (penalties ? ` r${penalties.repetition} pr${penalties.presence} f${penalties.frequency}` : '') +
      (penalties?.logitBias ? ` b${penalties.logitBias.key()}` : '');
    let g = this.groups.get(key);
    if (g) {
      // Most recently used last.
      this.groups.delete(key);
      this.groups.set(key, g);
      return g;
    }
    const o: { model: CausalLM; speculator?: Speculator; sampling?: SamplingConfig; penalties?: Penalties } = { model: this.model };
    if (this.speculator) o.speculator = this.speculator;
    if (sampling) o.sampling = sampling;
    if (penalties) o.penalties = penalties;
    this.groups.set(key, (g = new SpecEngine(o)));
    if (this.groups.size > MAX_GROUPS) this.dropIdleGroups(g);
    return g;
  }

  /** Settings no queued or live request holds (nor `keep`, the one being made), least recently used first, down to MAX_GROUPS. */
  private dropIdleGroups(keep: SpecEngine): void {
    const held = new Set<SpecEngine>([keep]);
    for (const r of this.queue) held.add(r.group);
    for (const r of this.live) held.add(r.group);
    for (const [k, g] of this.groups) {
      if (this.groups.size <= MAX_GROUPS) break;
      if (!held.has(g)) this.groups.delete(k);
    }
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      // Requests submitted in the same synchronous run as the one that started the loop are
      // admitted together with it.
      await Promise.resolve();
      let turned = performance.now();
      const lock = lockOf(this.model);
      // The loop's own work around a speculative step (the iteration less the step itself) is part
      // of what such a step costs: the cost model prices it (its loop overhead). The turn given to
      // the event loop after an iteration is not: other engines' requests, I/O and the caller's own
      // code run in it (priced in, they made a sized speculator decode plainly for good: 2026-12-06),
      // and a plain step's iterations give the same turns.
      while (this.queue.length > 0 || this.live.length > 0) {
        const tIter = performance.now();
        let spec: number | undefined;
        let specSteps = 1;
        // A step boundary: drop finished/aborted, admit, make room, one step of every live request.
        // (Inlined here rather than in async helpers: each async call is a promise and a microtask
        // turn, and a small model's whole step is ~100 us.)
        const wait = acquireLock(lock);
        if (wait) await wait;
        // Only an iteration that took the lock at once, admitted nothing and made a speculative step
        // is a sample (a wait for another engine's step, or a prefill, is not this step's cost).
        let sample = !wait;
        try {
          this.reap();
          // (Only awaited when there is something to admit: most steps have nothing queued.)
          if (this.queue.length > 0 && this.live.length < this.liveCap) {
            sample = false;
            await this.admit();
          }
          this.makeRoom();
          const groups = this.stepGroups();
          if (groups.length > 0) {
            const step = this.beginStep(groups);
            let emitted: Int32Array[] | undefined;
            try {
              emitted = await this.delivering(() => SpecEngine.stepShared(step.parts));
            } catch (e) {
              for (const r of step.reqs) r.rng.counter = r.savedCounter;
              this.recover(step.reqs, e);
            }
            if (emitted) this.endStep(step, emitted);
            const last = step.parts[0]?.engine.lastStep;
            if (emitted && sample && last?.speculative) {
              spec = last.seconds;
              specSteps = last.steps;
            }
          }
          this.reap();
        } finally {
          releaseLock(lock);
        }
        // (A draft chain's steps share their loop iteration.)
        if (spec !== undefined) knownForwardCost(this.model)?.observeLoopOverhead(Math.max(0, (performance.now() - tIter) / 1000 - spec) / specSteps, this.speculator);
        // Let I/O, timers, aborts and new requests in between steps, at least every
        // LOOP_SLICE_MS: a small model's forward runs on this thread, so awaiting it turns no
        // event loop. Not after every step: a turn costs ~10 us, a tenth of a tiny model's step.
        // (A forward through the pool turns the loop while it runs; the check phase then follows
        // at once.)
        if (performance.now() - turned >= LOOP_SLICE_MS) {
          await new Promise<void>((r) => setImmediate(r));
          turned = performance.now();
        }
      }
    } catch (e) {
      // Not expected (tick handles request errors): fail everything rather than hang.
      for (const r of [...this.live, ...this.queue.splice(0)]) this.fail(r, e);
    } finally {
      this.running = false;
      if (this.queue.length > 0 || this.live.length > 0) this.kick();
      else {
        if (this.closed) this.forgetPrefixes();
        for (const w of this.idleWaiters.splice(0)) w();
      }
    }
  }

  /** The requests that take part in the next step, by sampling group (non-empty groups only). */
  private stepGroups(): Request[][] {
    // Usually every request shares one sampling setting: then no map.
    const ready: Request[] = [];
    let mixed = false;
    for (const r of this.live) {
      if (r.done !== undefined || r.aborted || r.failure || r.seq === undefined) continue;
      if (ready.length > 0 && r.group !== (ready[0] as Request).group) mixed = true;
      ready.push(r);
    }
    if (!mixed) return ready.length > 0 ? [ready] : [];
    const byGroup = new Map<SpecEngine, Request[]>();
    for (const r of ready) {
      const list = byGroup.get(r.group);
      if (list) list.push(r);
      else byGroup.set(r.group, [r]);
    }
    return [...byGroup.values()];
  }

  private reap(): void {
    let any = false;
    for (const r of this.live) any ||= r.aborted || r.failure !== undefined || r.done !== undefined;
    if (!any) return;
    for (const r of this.live.slice()) {
      if (r.aborted) {
        this.release(r);
        this.settleAbort(r);
      } else if (r.failure) {
        this.fail(r, r.failure.error);
      } else if (r.done !== undefined) {
        this.finish(r);
      }
    }
  }

  private pagesFor(tokens: number, pageSize: number): number {
    return Math.ceil(tokens / pageSize);
  }

  /** Pages a live sequence may still take for its next tree. */
  private growth(r: Request, pageSize: number): number {
    const committed = (r.seq as EngineSequence).committed;
    return this.pagesFor(committed + this.treeReserveTokens, pageSize) - this.pagesFor(committed, pageSize);
  }

  private async admit(): Promise<void> {
    if (this.queue.length === 0 || this.live.length >= this.liveCap) return;  // nothing to admit: no KV query
    const kv = this.kvPages();
    let free = kv ? kv.freePages - this.live.reduce((n, r) => n + this.growth(r, kv.pageSize), 0) : Infinity;
    const fresh: Request[] = [];
    const resumed: Request[] = [];
    // maxNewTokens 0 with promptLogprobs: the prompt is read for its log-probabilities, no token picked.
    const scored: Request[] = [];
    // Fresh requests sharing a prefix with one admitted here: opened from its cache once it is read.
    const later: Request[] = [];
    while (this.queue.length > 0 && this.live.length < this.liveCap) {
      const r = this.queue[0] as Request;
      const need = kv ? this.pagesFor(r.history.length + this.treeReserveTokens, kv.pageSize) : 0;
      if (kv && need > kv.totalPages) {
        this.queue.shift();
        this.fail(r, codedError('E_KV_FULL', `request needs ${need} KV pages for ${r.history.length} tokens + a ${this.treeReserveTokens}-token tree, but the cache has ${kv.totalPages} pages of ${kv.pageSize} tokens`));
        continue;
      }
      // Kept prefixes give way first.
      if (kv && need > free && this.anyKept()) {
        const had = (this.kvPages() as KvPages).freePages;
        free += this.evictFor(had + need - free) - had;
      }
      // FIFO: the head waits for room (unless nothing runs, then it is tried and fails if it must).
      if (need > free && this.live.length > 0) break;
      this.queue.shift();
      free -= need;
      const sharing = this.sharing(r);
      const prefix = sharing ? this.livePrefix(r) : undefined;
      // (A source admitted here has read its prompt, and recorded its log-probabilities, by phase B.)
      if (sharing && !prefix && r.newTokens.length === 0 && [...fresh, ...scored].some((f) => shareable(f.history, f.history.length, f.promptLogprobs, f.promptLength - 1, r, this.speculator?.shareNeedsNextToken === true) >= MIN_SHARED_PREFIX)) {
        later.push(r);
        continue;
      }
      if (!this.openSeq(r, prefix)) continue;
      this.live.push(r);
      this.kvKnown = undefined;  // the admitted prefill takes pages makeRoom has not seen
      if (r.opts.maxNewTokens === 0) scored.push(r);
      else if (r.newTokens.length === 0) fresh.push(r);
      else {
        Object.assign((r.seq as EngineSequence).stats, r.stats);
        resumed.push(r);
      }
    }
    for (const group of new Set([...fresh, ...resumed, ...scored].map((r) => r.group))) {
      await this.catchUp(group, fresh.filter((r) => r.group === group), true);
      await this.catchUp(group, resumed.filter((r) => r.group === group), false);
      await this.catchUp(group, scored.filter((r) => r.group === group), false);
    }
    for (const r of scored) if (r.done === undefined && r.promptAnnounced) r.done = 'length';
    if (later.length === 0) return;
    // Their sources are read now (or failed: then they read their prompts whole).
    const opened: Request[] = [];
    for (const r of later) {
      if (!this.openSeq(r, this.livePrefix(r))) continue;
      this.live.push(r);
      this.kvKnown = undefined;
      opened.push(r);
    }
    for (const group of new Set(opened.map((r) => r.group))) {
      await this.catchUp(group, opened.filter((r) => r.group === group && r.opts.maxNewTokens > 0), true);
      await this.catchUp(group, opened.filter((r) => r.group === group && r.opts.maxNewTokens === 0), false);
    }
    for (const r of opened) if (r.opts.maxNewTokens === 0 && r.done === undefined && r.promptAnnounced) r.done = 'length';
  }

  /** Whether r may start from another sequence's cache (EngineOptions.prefixSharing). */
  private sharing(r: Request): boolean {
    // (A request recording its prompt's log-probabilities shares before it recorded any, or once it
    // has them all: a preempted one coming back.)
    const recorded = r.promptLogprobs?.length ?? 0;
    return this.prefixSharing && (recorded === 0 || !needsPromptEntries(r)) && r.history.length > MIN_SHARED_PREFIX;
  }

  /**
   * The live or kept sequence whose committed tokens begin r's prompt the longest (MIN_SHARED_PREFIX
   * or more; never the prompt's last token). A kept one found becomes the most recently used.
   */
  private livePrefix(r: Request): SharedPrefix | undefined {
    let best: SharedPrefix | undefined;
    const consider = (s: PrefixSource, sink: LogprobsSink | undefined): void => {
      if (s.released || s.committed < MIN_SHARED_PREFIX) return;
      const n = shareable(s.history, s.committed, sink, sink?.length ?? 0, r, this.speculator?.shareNeedsNextToken === true);
      if (n >= MIN_SHARED_PREFIX && n > (best?.length ?? 0)) best = { from: s, length: n, ...(r.promptLogprobs && sink ? { promptLogprobs: sink } : {}) };
    };
    for (const o of this.live) if (o.seq) consider(o.seq, o.promptLogprobs);
    for (const e of this.retained) consider(e, e.promptLogprobs);
    const kept = best ? this.retained.indexOf(best.from as (typeof this.retained)[number]) : -1;
    if (kept >= 0) this.retained.push(...this.retained.splice(kept, 1));
    return best;
  }

  /** Keeps a finished request's model sequence for later prefixes (EngineOptions.prefixCache), else frees it. */
  private retire(r: Request): void {
    const s = r.seq;
    if (!s || this.prefixCache === 0 || s.released || s.committed < MIN_SHARED_PREFIX) return this.release(r);
    const i = this.live.indexOf(r);
    if (i >= 0) this.live.splice(i, 1);
    r.seq = undefined;
    const { modelSeq, kept } = r.group.retain(s);
    this.retained.push({ modelSeq, history: s.history.slice(0, s.committed + 1), committed: s.committed, released: false, promptLogprobs: r.promptLogprobs, kept });
    while (this.retained.length > this.prefixCache) this.evictOne();
  }

  /**
   * Frees kept sequences (this engine's least recently used first, then other engines' on the model)
   * until the cache has `pages` free or none is kept; the free pages then.
   */
  private evictFor(pages: number): number {
    let kv = this.kvPages();
    const keepers = [this, ...[...(keepersOf.get(this.model) ?? [])].filter((e) => e !== this)];
    for (const e of keepers) {
      while (e.retained.length > 0 && kv && kv.freePages < pages) {
        e.evictOne();
        kv = this.kvPages();
      }
    }
    return kv ? kv.freePages : Infinity;
  }

  /** Opens r's sequence (from `prefix` when given); false when that failed (r failed with the reason). */
  private openSeq(r: Request, prefix: SharedPrefix | undefined): boolean {
    try {
      r.seq = r.group.open(r.history, r.promptLength, r.rng, prefix);
      // (Ascending: a stop ban's tokens, StopBan.)
      r.seq.stopTokens = r.stopArray ??= Int32Array.from(r.stop).sort();
      r.seq.logprobs = r.logprobs;
      r.seq.promptLogprobs = r.promptLogprobs;
      r.seq.minTokens = r.opts.minTokens ?? 0;
      if (r.opts.grammar) r.seq.grammar = new GrammarCursor(r.opts.grammar);
      if (r.opts.prediction !== undefined && r.opts.prediction.length > 0) r.seq.prediction = Int32Array.from(r.opts.prediction);
      // Its prompt's log-probabilities over the shared prefix: the source's (the same rows).
      if (prefix?.promptLogprobs && r.promptLogprobs && needsPromptEntries(r)) r.promptLogprobs.push(prefix.promptLogprobs.slice(0, prefix.length), 0, prefix.length);
    } catch (e) {
      if (r.seq) r.group.close(r.seq);
      r.seq = undefined;
      this.fail(r, e);
      return false;
    }
    if (prefix) {
      this.metrics.sharedPromptTokens += prefix.length;
      // (A preempted request keeps the count of its first admission: its stats come back with it.)
      if (r.newTokens.length === 0) (r.seq as EngineSequence).stats.cachedPromptTokens = prefix.length;
    }
    return true;
  }

  /** Prefill of newly admitted sequences (pickRoot: the first token is picked) or recompute of preempted ones. */
  private async catchUp(group: SpecEngine, reqs: Request[], pickRoot: boolean): Promise<void> {
    if (reqs.length === 0) return;
    const saved = reqs.map((r) => r.rng.counter);
    try {
      await this.delivering(() =>
        group.catchUp(
          reqs.map((r) => r.seq as EngineSequence),
          pickRoot,
        ),
      );
      this.metrics.forwards++;
    } catch (e) {
      reqs.forEach((r, i) => (r.rng.counter = saved[i] as bigint));
      this.recover(reqs, e);
      return;
    }
    for (const r of reqs) {
      if (!r.promptLogprobs || r.promptAnnounced) continue;
      r.promptAnnounced = true;
      try {
        r.opts.onPromptLogprobs?.(r.promptLogprobs.slice(0, r.promptLogprobs.length));
      } catch (e) {
        r.failure ??= { error: e };
      }
    }
    if (pickRoot) for (const r of reqs) if (!this.grammarFailed(r)) this.emit(r, [r.seq!.history[r.seq!.history.length - 1] as number]);
  }

  /** Whether r's grammar could not mask its rows this step (EngineSequence.grammarError): r fails with it, its tokens unseen. */
  private grammarFailed(r: Request): boolean {
    const e = r.seq?.grammarError;
    if (e === undefined) return false;
    r.failure ??= { error: e };
    return true;
  }

  /** Preempts the youngest live sequences until every one has room for its next tree. */
  private makeRoom(): void {
    const active = (): Request[] => this.live.filter((r) => r.seq !== undefined && r.done === undefined && !r.aborted);
    // The model is asked for its free pages only when the room left at the last answer, less what
    // this engine's steps have committed since (endStep), might not cover the next step, or every
    // KV_RECHECK_STEPS steps: a steady batch then makes no extra call into the addon per step.
    const known = this.kvKnown;
    if (known && known.age++ < KV_RECHECK_STEPS) {
      // (A loop rather than active().reduce(): this runs every step.)
      let need = 0;
      for (const r of this.live) if (r.seq !== undefined && r.done === undefined && !r.aborted) need += this.growth(r, known.kv.pageSize);
      if (known.kv.freePages - known.spent >= 2 * need) {
        this.shortPages = undefined;
        return;
      }
    }
    this.shortPages = undefined;
    let kv = this.kvPages();
    if (!kv) return;
    const pageSize = kv.pageSize;
    this.kvKnown = { kv, spent: 0, age: 0 };
    let need = active().reduce((n, r) => n + this.growth(r, pageSize), 0);
    // Kept prefixes give way before any live sequence is preempted.
    if (need > kv.freePages && this.anyKept()) {
      kv = { ...kv, freePages: this.evictFor(need) };
      this.kvKnown = { kv, spent: 0, age: 0 };
    }
    while (need > kv.freePages && active().length > 1) {
      const victim = active().reduce((a, b) => (b.id > a.id ? b : a));
      need -= this.growth(victim, pageSize);
      this.preempt(victim);
    }
    if (need > kv.freePages) this.shortPages = kv.freePages;
  }

  /** The most nodes a sequence's tree may have this step: the reserve, or its share of what is left. */
  private treeRoom(committed: number, sequences: number): number {
    const short = this.shortPages;
    const ps = this.kvKnown?.kv.pageSize;
    if (short === undefined || ps === undefined) return this.treeReserveTokens;
    const room = this.pagesFor(committed, ps) * ps - committed + Math.floor(short / sequences) * ps;
    return Math.max(1, Math.min(this.treeReserveTokens, room));
  }

  /**
   * A step of every live request (one target forward, verification per sampling group) as
   * SpecEngine.stepShared's parts; the loop runs it and hands the result to endStep.
   */
  private beginStep(groups: readonly Request[][]): RunningStep {
    // (Loops, not flat()/map(): a small model's whole step is ~100 us, and each allocation here
    // adds to the minor collections between steps.)
    const reqs: Request[] = groups.length === 1 ? (groups[0] as Request[]) : [];
    const parts = new Array<StepPart>(groups.length);
    let sequences = 0;
    for (const g of groups) sequences += g.length;
    for (let i = 0; i < groups.length; i++) {
      const g = groups[i] as Request[];
      const seqs = new Array<EngineSequence>(g.length);
      for (let b = 0; b < g.length; b++) {
        const r = g[b] as Request;
        const s = r.seq as EngineSequence;
        // Never draft past maxNewTokens or past the context (the history may reach maxPositions).
        s.maxDepth = Math.max(0, Math.min(r.opts.maxNewTokens - r.newTokens.length - 1, s.maxPosition - s.committed - 1));
        // (Drafts off: lone roots, from every speculator; maxDepth still bounds plain chains.)
        s.maxNodes = r.draftsOff ? 1 : this.treeRoom(s.committed, sequences);
        r.savedCounter = r.rng.counter;
        r.committedAtStep = s.committed;
        r.forwardsAtStep = s.stats.targetForwards;
        seqs[b] = s;
        if (groups.length > 1) reqs.push(r);
      }
      parts[i] = { engine: (g[0] as Request).group, seqs };
    }
    return { reqs, parts, t0: performance.now() };
  }

  /** The step's emitted tokens go to their requests. */
  private endStep(step: RunningStep, emitted: readonly Int32Array[]): void {
    this.metrics.observeStep((performance.now() - step.t0) / 1000);
    const { reqs } = step;
    // The pages the step took: its sequences' committed growth.
    const known = this.kvKnown;
    if (known) {
      const ps = known.kv.pageSize;
      for (const r of reqs) if (r.seq) known.spent += this.pagesFor(r.seq.committed, ps) - this.pagesFor(r.committedAtStep, ps);
    }
    for (let b = 0; b < reqs.length; b++) if (!this.grammarFailed(reqs[b] as Request)) this.emit(reqs[b] as Request, emitted[b] as Int32Array);
    // One forward a step, or the steps of a plain chain (SpecEngine.stepShared) that made output
    // (as the requests' statistics count them, after emit's cut).
    let forwards = 1;
    for (const r of reqs) if (r.seq) forwards = Math.max(forwards, r.seq.stats.targetForwards - r.forwardsAtStep);
    this.metrics.forwards += forwards;
  }

  /**
   * A batch call failed. Out of pages (a draft model's cache, or a native chain's later steps): the
   * sequences are recomputed later from their histories and the batch shrinks by one; a sequence
   * that fails alone, or any other error, fails its requests.
   */
  private recover(reqs: readonly Request[], e: unknown): void {
    this.kvKnown = undefined;  // a failed step's pages are not accounted for: ask again
    const kvFull = (e as { code?: unknown } | null)?.code === 'E_KV_FULL';
    if (kvFull && (this.live.length > 1 || this.anyKept())) {
      // Out of pages with prefixes kept: they go, and the step's requests are recomputed. Else the
      // batch shrinks.
      if (this.dropModelPrefixCaches() === 0) this.liveCap = Math.max(1, this.live.length - 1);
      for (const r of reqs) this.preempt(r);
      return;
    }
    // Alone and still out of pages: where a speculator drafts, its own cache may be what is full (a
    // draft model's cache smaller than the target's): the request is recomputed once without drafts
    // (if the target's cache is what is full, that fails too, and the request then fails).
    const lone = reqs.length === 1 ? (reqs[0] as Request) : undefined;
    if (kvFull && lone && this.speculator && lone.draftsOff === undefined && lone.seq) {
      lone.draftsOff = `out of KV pages with drafts, alone (${(e as Error).message}); decoded without them`;
      this.metrics.speculationOff++;
      this.preempt(lone);
      return;
    }
    for (const r of reqs) this.fail(r, e);
  }

  /**
   * Starts `forward` (its native work is queued, or a small model's forward has already run), then
   * hands every live request its pending chunks while it runs.
   *
   * While consumers work on this thread (a server's writes, and what they wake up), a CPU forward
   * whose threads fill every core would lose one of them to this thread, and each fork-join
   * barrier of the forward would wait for the preempted one: 3x the consumers' own time, measured
   * (bench/README.md, Serving). So when the last step's consumers kept this thread busy for
   * LEND_MIN_MS or more, the pool is lent one core until they are done (two event-loop turns, or
   * the next forward) and runs the forward's ops on the others meanwhile.
   */
  private delivering<T>(forward: () => Promise<T>): Promise<T> {
    this.returnCore();  // a new forward: whatever the last consumers did is over
    const started = forward();
    let pending = false;
    for (const r of this.live) pending ||= r.outbox.length > 0;
    if (!pending) return started;
    const t = performance.now();
    const flag = this.lendCore && this.consumerMs >= LEND_MIN_MS ? lendFlag() : null;
    if (flag) {
      // A count, not a switch: engines lending at once each take theirs back.
      Atomics.add(flag, 0, 1);
      this.lent = true;
    }
    for (const r of this.live) this.deliver(r);
    // One measurement at a time: a small model's steps run back to back on this thread, several
    // per loop turn, and need not queue a pair of immediates each.
    if (!this.measuring) {
      this.measuring = true;
      setImmediate(() =>
        setImmediate(() => {
          this.measuring = false;
          this.consumerMs = performance.now() - t;
          this.returnCore();
        }),
      );
    }
    return started;
  }

  private returnCore(): void {
    if (!this.lent) return;
    this.lent = false;
    const flag = lendFlag();
    if (flag) Atomics.sub(flag, 0, 1);
  }

  /** Hands the request's pending chunks to onTokens, in order; a throw marks the request failed. */
  private deliver(r: Request): void {
    while (r.outbox.length > 0 && r.failure === undefined) {
      const chunk = r.outbox.shift() as Int32Array;
      const from = r.delivered;
      r.delivered += chunk.length;
      try {
        r.opts.onTokens?.(chunk, r.logprobs?.slice(from, r.delivered));
      } catch (e) {
        r.failure = { error: e };
      }
    }
  }

  /** Frees a live sequence's pages and puts it back in the queue (in arrival order) for recompute. */
  private preempt(r: Request): void {
    this.deliver(r);
    if (r.failure) return this.fail(r, r.failure.error);
    const s = r.seq as EngineSequence;
    r.history = s.history;
    r.stats = s.stats;
    this.release(r);
    let i = 0;
    while (i < this.queue.length && (this.queue[i] as Request).id < r.id) i++;
    this.queue.splice(i, 0, r);
    this.metrics.preemptions++;
  }

  private emit(r: Request, toks: Int32Array | readonly number[]): void {
    const s = r.seq as EngineSequence;
    // Cut at a stop token or at maxNewTokens; the step may have emitted more.
    let k = 0;
    while (k < toks.length && r.done === undefined) {
      const tok = toks[k++] as number;
      r.newTokens.push(tok);
      // (Before min_tokens the stop tokens are banned, and shouldStop is not asked.)
      if (r.stop.has(tok) || (r.newTokens.length >= (r.opts.minTokens ?? 0) && r.opts.shouldStop?.(r.newTokens) === true)) r.done = 'stop';
      else if (r.newTokens.length >= r.opts.maxNewTokens) r.done = 'length';
    }
    if (r.done === undefined && s.history.length > s.maxPosition) r.done = 'context';
    // Tokens past the cut are no output: the statistics drop them (and, after a plain chain, the
    // forwards that made them: the chain could not know where the request stops).
    if (k < toks.length) s.stats.dropTail(toks.length - k);
    this.metrics.generatedTokens += k;
    // A step's emitted array is fresh (nothing writes it afterwards): handed over as it is when it is
    // the whole of its buffer; a view into a batch's shared result is copied (its buffer holds the
    // other requests' tokens).
    const whole = toks instanceof Int32Array && k === toks.length && toks.byteOffset === 0 && toks.byteLength === toks.buffer.byteLength;
    if (k > 0) r.outbox.push(whole ? (toks as Int32Array) : Int32Array.from(toks.slice(0, k)));
  }

  /** Frees the request's sequence (model and speculator) and takes it out of the batch. */
  private release(r: Request): void {
    const i = this.live.indexOf(r);
    if (i >= 0) this.live.splice(i, 1);
    const s = r.seq;
    r.seq = undefined;
    if (s) r.group.close(s);
  }

  private finish(r: Request): void {
    this.deliver(r);
    if (r.failure) return this.fail(r, r.failure.error);
    const s = r.seq;
    // The group's phases accumulate over every request it served: report this request's lifetime.
    const now = r.group.phases;
    const phases: PhaseTimes = { prefill: 0, draft: 0, target: 0, verify: 0, commit: 0, update: 0 };
    for (const k of Object.keys(phases) as (keyof PhaseTimes)[]) phases[k] = now[k] - r.phases0[k];
    const stats = (s ? s.stats : r.stats).finish(phases, (performance.now() - r.t0) / 1000);
    if (r.draftsOff !== undefined) stats.speculationOff = r.draftsOff;
    try {
      this.retire(r);
    } catch (e) {
      this.fail(r, e);
      return;
    }
    this.liveCap = this.maxBatch;
    this.metrics.finished(r.done ?? 'length', stats);
    const tokens = Int32Array.from(r.newTokens);
    r.settle.resolve({ tokens, finishReason: r.done ?? 'length', stats, ...(r.logprobs ? { logprobs: r.logprobs.slice(0, tokens.length) } : {}), ...(r.promptLogprobs ? { promptLogprobs: r.promptLogprobs.slice(0, r.promptLogprobs.length) } : {}) });
  }

  private settleAbort(r: Request): void {
    this.deliver(r);
    this.metrics.aborted++;
    r.settle.reject(abortError(r.opts.signal));
  }

  private fail(r: Request, e: unknown): void {
    this.deliver(r);
    try {
      this.release(r);
    } catch {
      // The request fails with its first error.
    }
    this.metrics.failed++;
    r.settle.reject(e);
  }
}

/** topK 0 means no top-k: dropped, so that it groups (and samples) with the configs that leave it out. */
function withoutZeroTopK(s: SamplingConfig): SamplingConfig {
  if (s.topK !== 0) return s;
  const { topK: _off, ...rest } = s;
  return rest;
}
