// Prompt lookup decoding: find the longest n-gram (maxNgram down to minNgram) ending the history
// that occurred before in prompt + output (most recent occurrence), and propose the tokens that
// followed it as a chain. No model; drafts are deterministic (one-hot rejection when sampling).
// With a corpus (corpusTokens), finished requests' tokens are searched too: a longer n-gram there
// wins over the request's own match (SuffixDecoding's observation: agents, tool calls and templated
// answers repeat what earlier requests wrote).
import { optionsArg } from '../errors';
import { forwardCostIfRoom, RecentTimes } from '../cost_model';
import type { CausalLM } from '../models/causal_lm';
import { wholeChains } from '../plain_chain';
import { chainTree, loneRoot } from '../tree';
import { backedOffProbeInterval, chooseChainLength, PROBE_AFTER_PLAIN_STEPS, RankRates, sizingCost, stepCost, WEIGH_SHARE } from '../tree_sizing';
import { LookupCorpus, type CorpusMatch } from './lookup_corpus';
import { codedError, type ProposalBatch, type ProposeContext, type SpecSequence, type Speculator, type StepReport } from './speculator';

export interface PromptLookupOptions {
  readonly maxNgram?: number;
  readonly minNgram?: number;
  /**
   * Tokens proposed per step: exactly up to this many (what the match provides). Default: sized
   * for the hardware, each step the length (at most 10) with the most expected tokens per second
   * under the target's cost curve and the online acceptance rate per draft position.
   */
  readonly numDraft?: number;
  /**
   * Tokens of finished requests (prompt and output) kept for lookups across requests (a
   * LookupCorpus, the oldest leaving first). Lossless as any draft; what it changes is speed, and
   * so how long a request takes depends on what others wrote before (a timing side channel, as
   * with any shared cache): off unless asked for. Default 0 (this request's tokens only).
   */
  readonly corpusTokens?: number;
}

/**
 * The continuation after the most recent earlier occurrence of the longest suffix n-gram of
 * `history` (n from maxNgram down to minNgram), at most `numDraft` tokens; [] when none.
 */
export function promptLookup(history: readonly number[], maxNgram: number, minNgram: number, numDraft: number): number[] {
  return promptLookupMatch(history, maxNgram, minNgram, numDraft)?.drafts ?? [];
}

/** promptLookup's match: the n-gram length too; undefined when none. */
export function promptLookupMatch(history: readonly number[], maxNgram: number, minNgram: number, numDraft: number): CorpusMatch | undefined {
  const L = history.length;
  for (let n = Math.min(maxNgram, L - 1); n >= minNgram; n--) {
    // Most recent occurrence first: start positions i < L - n (the suffix itself excluded).
    for (let i = L - n - 1; i >= 0; i--) {
      let match = true;
      for (let k = 0; k < n; k++) {
        if (history[i + k] !== history[L - n + k]) {
          match = false;
          break;
        }
      }
      if (match) return { n, drafts: history.slice(i + n, Math.min(i + n + numDraft, L)) as number[] };
    }
  }
  return undefined;
}

/** Where a proposal's drafts came from: the request's own tokens, the corpus, the request's prediction. */
type DraftSource = 'own' | 'corpus' | 'prediction';

/**
 * Up to `numDraft` tokens of `prediction` to follow `history`: where the output has got to in the
 * prediction (`from`: after the last drafts taken from it, those accepted and the token after them)
 * when the history's last 2+ tokens end there; else after the longest n-gram (maxNgram down to
 * minNgram) ending the history that occurs in the prediction with a token after it, its first
 * occurrence ending at or after `from` (the output moves through the prediction in order, so a
 * phrase that repeats is taken where the output is), else its first. `at`: where the drafts begin.
 */
export function predictionLookup(prediction: ArrayLike<number>, history: readonly number[], maxNgram: number, minNgram: number, numDraft: number, from = 0): (CorpusMatch & { at: number }) | undefined {
  const L = history.length, P = prediction.length;
  const drafts = (at: number): number[] => Array.from({ length: Math.min(numDraft, P - at) }, (_, j) => prediction[at + j] as number);
  // Where the output has got to, first (a single token there may be chance: an edit took the output elsewhere).
  for (let n = Math.min(maxNgram, L, from); n >= Math.max(minNgram, 2) && from < P; n--) {
    let aligned = true;
    for (let j = 0; j < n && aligned; j++) aligned = prediction[from - n + j] === history[L - n + j];
    if (aligned) return { n, at: from, drafts: drafts(from) };
  }
  for (let n = Math.min(maxNgram, L); n >= minNgram; n--) {
    let first = -1;
    for (let i = 0; i + n < P; i++) {
      let match = true;
      for (let j = 0; j < n && match; j++) match = prediction[i + j] === history[L - n + j];
      if (!match) continue;
      if (first < 0) first = i;
      if (i + n >= from) {
        first = i;
        break;
      }
    }
    if (first >= 0) return { n, at: first + n, drafts: drafts(first + n) };
  }
  return undefined;
}

/**
 * Sized mode: lookups skipped after a plain choice when weighing is dear (WEIGH_SHARE) or no match
 * could pay, twice as many after each further plain choice in a row, up to MAX_PLAIN_SKIP_STEPS
 * (lookahead's rule). A skipped step runs inside a native chain of plain steps; a weighing step cannot.
 */
const PLAIN_SKIP_STEPS = 7;
const MAX_PLAIN_SKIP_STEPS = 56;

export class PromptLookupSpeculator implements Speculator {
  readonly name = 'prompt-lookup';
  readonly wantsHidden = false;
  readonly maxNgram: number;
  readonly minNgram: number;
  readonly numDraft: number;
  /** The draft length is chosen per step by the cost model (numDraft not given). */
  readonly sized: boolean;
  /** P(draft i + 1 accepted | drafts 1..i accepted), online (sized mode): drafts from the request's own tokens. */
  readonly rates = new RankRates(() => 0.5);
  /**
   * The same for drafts from the corpus, apart: they are right at other rates (a repeated answer
   * all the way, where the request's own story rarely repeats itself), and pooled the corpus's would
   * never be tried where the own matches taught the sizing to decode plainly.
   */
  readonly corpusRates = new RankRates(() => 0.5);
  /**
   * The same for drafts from requests' predictions (GenerateOptions.prediction), whose prior is
   * high: a caller that predicts the output expects most of it repeated (an edited file). With the
   * others' 0.5 the sizing on the embedded family never drafted from a right prediction (368 of
   * 384 forwards; 48 with 8 drafts fixed).
   */
  readonly predictionRates = new RankRates(() => 0.9);
  /** Per sequence: where its last proposal's drafts came from. */
  private readonly sourceOf = new Map<number, DraftSource>();
  /** Per sequence with a prediction: where its output has got to in it (the alignment; predictionLookup's `from`). */
  private readonly predictionAt = new Map<number, number>();
  /** Sized mode, per sequence: matches not proposed in a row (a probe after PROBE_AFTER_PLAIN_STEPS). */
  private readonly unproposed = new Map<number, number>();
  /** Sized mode, per sequence: steps left that decode plainly without a lookup (see WEIGH_SHARE). */
  private readonly skipLeft = new Map<number, number>();
  /** Sized mode, per sequence: weighings in a row that chose a plain step. */
  private readonly plainRun = new Map<number, number>();
  /**
   * Sized mode: the plain run of the sequence weighed last. A new sequence starts from it: the choice
   * depends on the shared rates and cost curve, not on the sequence, so a request after plain ones
   * skips its lookups as long at once (starting each request from 7 skipped steps cut its plain
   * chains 5 times in 128 tokens, against 8 chains in all without a speculator).
   */
  private lastPlainRun = 0;
  private runOf(key: number): number {
    return this.plainRun.get(key) ?? this.lastPlainRun;
  }
  /** Sized mode: sequences whose last weighed step was a probe. */
  private readonly probed = new Set<number>();
  /**
   * Sized mode: unproposed matches before a probe. Probes that leave the choice plain back it off
   * (each breaks a native chain of plain steps and weighs twice); a choice to draft resets it.
   */
  private probeAfter = PROBE_AFTER_PLAIN_STEPS;
  /** Sized mode: seconds of a lookup and its sizing, recent lower quartile. */
  private readonly weighSeconds = new RecentTimes();
  private target: CausalLM | undefined;
  /** Finished requests' tokens (corpusTokens > 0). */
  readonly corpus: LookupCorpus | undefined;

  constructor(opts: PromptLookupOptions = {}) {
    optionsArg(opts, 'prompt lookup options', true);
    this.maxNgram = opts.maxNgram ?? 3;
    this.minNgram = opts.minNgram ?? 1;
    this.numDraft = opts.numDraft ?? 10;
    this.sized = opts.numDraft === undefined;
    if (!(Number.isInteger(this.minNgram) && this.minNgram >= 1 && Number.isInteger(this.maxNgram) && this.maxNgram >= this.minNgram)) {
      throw codedError('E_ARG', `prompt lookup: need 1 <= minNgram <= maxNgram, got ${this.minNgram}, ${this.maxNgram}`);
    }
    if (!(Number.isInteger(this.numDraft) && this.numDraft >= 1)) throw codedError('E_ARG', `prompt lookup: numDraft must be >= 1, got ${this.numDraft}`);
    const corpus = opts.corpusTokens ?? 0;
    if (!(Number.isSafeInteger(corpus) && corpus >= 0)) throw codedError('E_ARG', `prompt lookup: corpusTokens must be an integer >= 0, got ${String(opts.corpusTokens)}`);
    this.corpus = corpus > 0 ? new LookupCorpus(corpus, this.maxNgram) : undefined;
  }

  /**
   * The drafts for a sequence: its prediction where the output is aligned with it, else the longest
   * match among its prediction, its own tokens and the corpus (ties in that order: the prediction is
   * what the output is expected to be), and their source.
   */
  private lookup(s: SpecSequence, k: number): { drafts: number[]; source: DraftSource } {
    const own = promptLookupMatch(s.history, this.maxNgram, this.minNgram, k);
    const from = this.predictionAt.get(s.key) ?? 0;
    const pred = s.prediction ? predictionLookup(s.prediction, s.history, this.maxNgram, this.minNgram, k, from) : undefined;
    let best: { drafts: number[]; n: number; source: DraftSource } | undefined = pred && (pred.at === from || !own || pred.n >= own.n) ? { ...pred, source: 'prediction' } : own ? { ...own, source: 'own' } : undefined;
    const aligned = best?.source === 'prediction' && pred?.at === from;
    const other = aligned ? undefined : this.corpus?.lookup(s.history, best ? best.n + 1 : this.minNgram, k);
    if (other) best = { ...other, source: 'corpus' };
    if (best?.source === 'prediction') this.predictionAt.set(s.key, (pred as { at: number }).at);
    return best ? { drafts: best.drafts, source: best.source } : { drafts: [], source: 'own' };
  }

  private ratesOf(source: DraftSource): RankRates {
    return source === 'corpus' ? this.corpusRates : source === 'prediction' ? this.predictionRates : this.rates;
  }

  /** Whether any draft of up to k tokens could pay for sequence s: under the best rates of the sources it has. */
  private couldPay(s: SpecSequence, k: number, price: (nodes: number) => number): boolean {
    const sources: RankRates[] = [this.rates, ...(this.corpus ? [this.corpusRates] : []), ...(s.prediction ? [this.predictionRates] : [])];
    return chooseChainLength((i) => Math.max(...sources.map((r) => r.rate(i))), k, price).size > 0;
  }

  attach(model: CausalLM): void {
    this.target = model;
  }

  async prefill(): Promise<void> {
    await this.prepare();
  }

  /** Sized mode: the target's cost curve (measured once per model). */
  async prepare(): Promise<void> {
    if (this.sized && this.target) await forwardCostIfRoom(this.target);
  }

  propose(seqs: readonly SpecSequence[], ctx: ProposeContext = {}): ProposalBatch {
    const cost = sizingCost(this.sized, this.target, ctx);
    const proposals = seqs.map((s) => {
        const root = s.history[s.history.length - 1] as number;
        const k = Math.min(this.numDraft, s.maxDepth, s.maxNodes - 1);
        const left = this.skipLeft.get(s.key) ?? 0;
        if (cost && k > 0 && left > 0) {
          // A plain step without a lookup; it counts towards the next probe, which does look.
          this.skipLeft.set(s.key, left - 1);
          const run = (this.unproposed.get(s.key) ?? 0) + 1;
          if (run <= this.probeAfter) {
            this.unproposed.set(s.key, run);
            return loneRoot(root);
          }
        }
        const t0 = performance.now();
        const found = k > 0 ? this.lookup(s, k) : { drafts: [], source: 'own' as DraftSource };
        let drafts = found.drafts;
        this.sourceOf.set(s.key, found.source);
        if (cost && drafts.length > 0) {
          const price = stepCost(cost, seqs.length, undefined, this);
          const rates = this.ratesOf(found.source);
          const chosen = chooseChainLength((i) => rates.rate(i), drafts.length, price).size;
          // A probe after which the choice stays plain backs the next one off: each breaks a native
          // chain of plain steps (a return to JavaScript and a step of its own: on the embedded family
          // probes every 33 steps cost prompt lookup ~3% against plain decoding).
          if (chosen > 0) this.probeAfter = PROBE_AFTER_PLAIN_STEPS;
          else if (this.probed.has(s.key)) this.probeAfter = backedOffProbeInterval(this.probeAfter);
          // Now and then one token anyway, so the rates can recover when the text starts repeating.
          const run = chosen > 0 ? 0 : (this.unproposed.get(s.key) ?? 0) + 1;
          const n = run > this.probeAfter ? 1 : chosen;
          if (n > chosen) this.probed.add(s.key);
          else this.probed.delete(s.key);
          this.unproposed.set(s.key, n > 0 ? 0 : run);
          drafts = drafts.slice(0, n);
          this.weighSeconds.add((performance.now() - t0) / 1000);
          // Plain by choice: the next lookups are skipped (the steps then run in a native chain) when
          // weighing is a sizeable part of a step, or when not even the longest draft this sequence
          // may get would pay -- then no match can change the choice until a probe moves the rates
          // (the choice only grows with the draft's length). Otherwise each step with a match was a
          // chain of its own.
          const plainRun = chosen > 0 ? 0 : this.runOf(s.key) + 1;
          this.plainRun.set(s.key, plainRun);
          this.lastPlainRun = plainRun;
          if (n === 0 && (this.weighSeconds.value() > WEIGH_SHARE * cost.predict(1) || (k > drafts.length ? !this.couldPay(s, k, price) : true)))
            this.skipLeft.set(s.key, wholeChains(this.target, seqs.length, Math.min(MAX_PLAIN_SKIP_STEPS, PLAIN_SKIP_STEPS * 2 ** (plainRun - 1))));
        } else if (cost && k > 0 && !this.couldPay(s, k, stepCost(cost, seqs.length, undefined, this))) {
          // No match, and none could pay: skipped lookups as after a plain choice (a step without a
          // match was a chain of its own, 6 of a 128-token request's 15 calls on the embedded family).
          const plainRun = this.runOf(s.key) + 1;
          this.plainRun.set(s.key, plainRun);
          this.lastPlainRun = plainRun;
          this.skipLeft.set(s.key, wholeChains(this.target, seqs.length, Math.min(MAX_PLAIN_SKIP_STEPS, PLAIN_SKIP_STEPS * 2 ** (plainRun - 1))));
        }
        return chainTree(root, drafts);
    });
    return cost ? { proposals, plainSteps: this.plainStepsAhead(seqs, proposals) } : { proposals };
  }

  /**
   * This step and the next ones that are sure to be plain as well: every sequence proposed its
   * root alone and skips its lookups for that many more steps, with no probe due.
   */
  private plainStepsAhead(seqs: readonly SpecSequence[], proposals: readonly { tokens: Int32Array }[]): number {
    let ahead = Infinity;
    for (let b = 0; b < seqs.length; b++) {
      if ((proposals[b] as { tokens: Int32Array }).tokens.length !== 1) return 1;
      const key = (seqs[b] as SpecSequence).key;
      ahead = Math.min(ahead, this.skipLeft.get(key) ?? 0, this.probeAfter - (this.unproposed.get(key) ?? 0));
    }
    return 1 + Math.max(0, ahead === Infinity ? 0 : ahead);
  }

  /** The engine ran steps[b] plain steps of sequence b at once (after plainSteps): the skipped lookups. */
  updatePlain(seqs: readonly SpecSequence[], steps: readonly number[]): void {
    for (let b = 0; b < seqs.length; b++) {
      const key = (seqs[b] as SpecSequence).key;
      const extra = (steps[b] as number) - 1;
      if (extra <= 0) continue;
      this.skipLeft.set(key, Math.max(0, (this.skipLeft.get(key) ?? 0) - extra));
      this.unproposed.set(key, (this.unproposed.get(key) ?? 0) + extra);
    }
  }

  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext = {}): void {
    // Drafts taken from a prediction: the output is now past those accepted and the token after them.
    seqs.forEach((s, b) => {
      if (this.sourceOf.get(s.key) === 'prediction') this.predictionAt.set(s.key, (this.predictionAt.get(s.key) ?? 0) + (report.acceptedNodes[b] as Int32Array).length);
    });
    const cost = sizingCost(this.sized, this.target, ctx);
    if (!cost) return;
    seqs.forEach((s, b) => {
      const drafted = (report.proposals[b] as { tokens: Int32Array }).tokens.length - 1;
      const accepted = (report.acceptedNodes[b] as Int32Array).length - 1;
      const rates = this.ratesOf(this.sourceOf.get(s.key) ?? 'own');
      for (let i = 0; i < Math.min(accepted + 1, drafted); i++) rates.record(i, i < accepted ? 0 : -1);
      // A probe whose outcome leaves no draft able to pay backs the next one off now. (Left to the
      // sequence's next weighing, a probe late in a request was never judged -- the request ended
      // first -- so every 128-token request on the embedded family probed at its 65th token: two
      // lookups and a forward of their own, ~2-3% of the request.)
      if (drafted > 0 && this.probed.has(s.key) && !this.couldPay(s, this.numDraft, stepCost(cost, seqs.length, undefined, this))) {
        this.probed.delete(s.key);
        this.probeAfter = backedOffProbeInterval(this.probeAfter);
      }
    });
  }
  release(seq: SpecSequence): void {
    // (A finished request's tokens, root included, for later requests' lookups.)
    this.corpus?.add(seq.history);
    this.sourceOf.delete(seq.key);
    this.predictionAt.delete(seq.key);
    this.unproposed.delete(seq.key);
    this.skipLeft.delete(seq.key);
    this.plainRun.delete(seq.key);
    this.probed.delete(seq.key);
  }
  dispose(): void {}

  [Symbol.dispose](): void {
    this.dispose();
  }
}
