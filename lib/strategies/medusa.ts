// Medusa: extra decoding heads on the target's last hidden state. Head h predicts the token h + 2
// positions ahead of the node whose hidden state it reads (the target's own LM head predicts +1:
// the bonus token, which becomes the next root). Candidates form a tree given by medusaChoices.
//
// Heads use the FasterDecoding layout: a directory with config.json (medusa_num_heads,
// medusa_num_layers, base_model_name_or_path) and medusa_lm_head.safetensors holding, per head h,
// `{h}.{l}.linear.weight` [H, H] and `{h}.{l}.linear.bias` [H] for l < L (ResBlock:
// x + SiLU(W x + b)) and `{h}.{L}.weight` [V, H] (the head's LM head), L = medusa_num_layers.
//
// Modes: greedy (temperature 0, lossless), exact sampling (one-hot tree rejection: candidates are
// deterministic top-k picks, lossless), and Medusa's typical acceptance (LOSSY: it accepts any
// candidate whose target probability exceeds min(posteriorThreshold, posteriorAlpha * exp(-H(p))),
// so the output does not follow the target distribution exactly).
import { optionsArg, pathArg } from '../errors';
import * as fs from 'fs';
import * as path from 'path';

import { resolveDevice } from '../backend';
import { forwardCostIfRoom, RecentTimes, type ForwardCost } from '../cost_model';
import { gatherRows, isSampling } from '../step_helpers';
import { addInplace, matmul, siluInplace } from '../layers';
import type { CausalLM, ForwardOutput, MedusaChainResult, MedusaChainTemplate } from '../models/causal_lm';
import { CHAIN_MAX_STEPS, wholeChains } from '../plain_chain';
import { native } from '../native';
import { nativeRowPenalties, type HistoryPenalties } from '../sampling';
import { openWeightsFile } from '../torch_checkpoint';
import { Tensor, type Device } from '../tensor';
import { cutTree, loneRoot, MC_SIM_7B_63, MEDUSA_PRESETS, medusaTree, medusaTreeShape, pruneTree, type MedusaChoices, type MedusaTreeShape } from '../tree';
import { backedOffProbeInterval, choosePlanSize, chooseSubtree, PlanOutcomes, PROBE_AFTER_PLAIN_STEPS, RankRates, selectNodes, sizingCost, stepCost, treeProbabilities } from '../tree_sizing';
import {
  codedError,
  type HeadsChainOffer,
  type HeadsOnAccepted,
  type Proposal,
  type ProposalBatch,
  type ProposeContext,
  type SpecSequence,
  type Speculator,
  type StepReport,
} from './speculator';

/** Steps a sized Medusa choice is used for before it is recomputed (a plain one: PLAIN_PLAN_USES). */
const PLAN_USES = 8;
const PLAIN_PLAN_USES = 32;
/** Untimed runs of the heads before their calibration's timed ones, at most (first-call costs: the embedded heads timed 33 us cold, 12 us warm). */
const HEADS_WARMUP = 64;

export interface MedusaConfig {
  readonly numHeads: number;
  readonly numLayers: number;
  readonly baseModel: string | undefined;
  readonly hiddenSize: number;
  readonly vocabSize: number;
}

interface HeadWeights {
  readonly blocks: { readonly w: Tensor; readonly b: Tensor }[];
  readonly lmHead: Tensor;
}

/** Loaded Medusa heads (weights on one device). */
export class MedusaHeads {
  private disposed = false;

  /** The heads held natively, parsed and packed once (all heads; sets of fewer heads share it). */
  private readonly set: SpecdecNative.NativeMedusaHeadSet;
  private readonly sets = new Map<number, SpecdecNative.NativeMedusaHeadSet>();
  /** The k-serial packs the set's calls use (apply() uses the same, for the same bits). */
  private readonly packs: { ws: (SpecdecNative.SerialWeight | null)[]; lmHead: SpecdecNative.SerialWeight | null }[];

  private constructor(
    readonly config: MedusaConfig,
    private readonly heads: HeadWeights[],
    readonly device: Device,
  ) {
    const b = native();
    this.set = b.medusaHeadSet(heads.map((h) => ({ w: h.blocks.map((bl) => bl.w), b: h.blocks.map((bl) => bl.b), lmHead: h.lmHead })));
    this.sets.set(heads.length, this.set);
    this.packs = b.medusaHeadSetPacks(this.set);
  }

  /**
   * Loads a FasterDecoding-layout directory; E_IO / E_FORMAT naming the file on problems.
   * `device` defaults to 'auto', as `LlamaModel.load`'s does, so that heads and target loaded with
   * defaults are on the same device (CUDA when usable, else the CPU).
   */
  static load(dir: string, opts: { device?: Device | 'auto' } = {}): MedusaHeads {
    pathArg(dir, 'MedusaHeads.load: dir');
    optionsArg(opts, 'MedusaHeads.load options', true);
    const device = resolveDevice(opts.device ?? 'auto');
    const cfgPath = path.join(dir, 'config.json');
    let cfg: Record<string, unknown>;
    try {
      cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw codedError(err.code === 'ENOENT' ? 'E_IO' : 'E_FORMAT', `Medusa heads: cannot read ${cfgPath}: ${err.message}`);
    }
    const numHeads = cfg['medusa_num_heads'];
    const numLayers = cfg['medusa_num_layers'];
    if (typeof numHeads !== 'number' || !Number.isInteger(numHeads) || numHeads < 1) {
      throw codedError('E_FORMAT', `Medusa heads: ${cfgPath}: medusa_num_heads must be a positive integer, got ${JSON.stringify(numHeads)}`);
    }
    if (typeof numLayers !== 'number' || !Number.isInteger(numLayers) || numLayers < 0) {
      throw codedError('E_FORMAT', `Medusa heads: ${cfgPath}: medusa_num_layers must be a non-negative integer, got ${JSON.stringify(numLayers)}`);
    }
    const base = cfg['base_model_name_or_path'];
    // FasterDecoding's repositories hold medusa_lm_head.safetensors, medusa_lm_head.pt or both.
    const f = openWeightsFile(dir, ['medusa_lm_head.safetensors', 'medusa_lm_head.pt'], 'Medusa heads');
    const stPath = f.path;
    const loaded: Tensor[] = [];
    try {
      const need = (name: string, rank: number): number[] => {
        if (!f.has(name)) throw codedError('E_FORMAT', `Medusa heads: ${stPath} has no tensor '${name}'`);
        const shape = f.info(name).shape;
        if (shape.length !== rank) throw codedError('E_FORMAT', `Medusa heads: ${stPath}: '${name}' has shape [${shape}], expected rank ${rank}`);
        return shape;
      };
      const lm0 = need(`0.${numLayers}.weight`, 2);
      const [V, H] = lm0 as [number, number];
      // A head over an empty vocabulary or hidden state is no head (and would draft nothing valid).
      if (!(V >= 1 && H >= 1)) throw codedError('E_FORMAT', `Medusa heads: ${stPath}: '0.${numLayers}.weight' is [${lm0}]: expected [vocabulary >= 1, hidden >= 1]`);
      const heads: HeadWeights[] = [];
      for (let h = 0; h < numHeads; h++) {
        const blocks: { w: Tensor; b: Tensor }[] = [];
        for (let l = 0; l < numLayers; l++) {
          const wn = `${h}.${l}.linear.weight`;
          const bn = `${h}.${l}.linear.bias`;
          const ws = need(wn, 2);
          const bs = need(bn, 1);
          if (ws[0] !== H || ws[1] !== H || bs[0] !== H) {
            throw codedError('E_FORMAT', `Medusa heads: ${stPath}: '${wn}' [${ws}] / '${bn}' [${bs}] do not match hidden size ${H}`);
          }
          const w = f.load(wn, device);
          loaded.push(w);
          const b = f.load(bn, device);
          loaded.push(b);
          blocks.push({ w, b });
        }
        const ln = `${h}.${numLayers}.weight`;
        const ls = need(ln, 2);
        if (ls[0] !== V || ls[1] !== H) throw codedError('E_FORMAT', `Medusa heads: ${stPath}: '${ln}' is [${ls}], expected [${V}, ${H}]`);
        const lmHead = f.load(ln, device);
        loaded.push(lmHead);
        heads.push({ blocks, lmHead });
      }
      return new MedusaHeads(
        { numHeads, numLayers, baseModel: typeof base === 'string' ? base : undefined, hiddenSize: H, vocabSize: V },
        heads,
        device,
      );
    } catch (e) {
      for (const t of loaded) t.dispose();
      throw e;
    } finally {
      f.close();
    }
  }

  /** Head logits for hidden states x f32 [B, H]: one f32 [B, V] tensor per head (caller disposes). */
  apply(x: Tensor, numHeads = this.config.numHeads): Tensor[] {
    if (this.disposed) throw codedError('E_DISPOSED', 'Medusa heads were disposed');
    const out: Tensor[] = [];
    try {
      for (let h = 0; h < numHeads; h++) {
        const head = this.heads[h] as HeadWeights;
        const packs = this.packs[h];
        let cur = x;
        for (const [l, { w, b }] of head.blocks.entries()) {
          // ResBlock: cur + silu(W cur + b), into a fresh tensor (x is shared by all heads).
          const y = matmul(cur, w, b, undefined, packs?.ws[l] ?? undefined);
          siluInplace(y);
          addInplace(y, cur);
          if (cur !== x) cur.dispose();
          cur = y;
        }
        out.push(matmul(cur, head.lmHead, undefined, undefined, packs?.lmHead ?? undefined));
        if (cur !== x) cur.dispose();
      }
      return out;
    } catch (e) {
      for (const t of out) t.dispose();
      throw e;
    }
  }

  /**
   * The candidates of heads 0..numHeads-1 for hidden states x f32 [R, H]: ids[(h * R + r) * k + j] is
   * head h's j-th most likely token for row r (ties: lower index). One native call; only the ids are
   * read back (the same tokens as topK over apply()'s logits).
   */
  topKIds(x: Tensor, k: number, numHeads = this.config.numHeads, penalties?: HistoryPenalties): Int32Array {
    const w = this.weights(numHeads);
    return penalties ? native().medusaTopK(x, w, k, nativeRowPenalties(penalties.penalties, penalties.histories)) : native().medusaTopK(x, w, k);
  }

  /**
   * Heads 0..numHeads-1 as one native handle (the same tensors and k-serial packs as every call of
   * these heads: topKIds, the verification's headsOnAccepted). Made once per count.
   */
  weights(numHeads = this.config.numHeads): SpecdecNative.NativeMedusaHeadSet {
    if (this.disposed) throw codedError('E_DISPOSED', 'Medusa heads were disposed');
    if (!Number.isInteger(numHeads) || numHeads < 1 || numHeads > this.config.numHeads) {
      throw codedError('E_ARG', `Medusa heads: numHeads must be an integer in 1..${this.config.numHeads}, got ${numHeads}`);
    }
    let s = this.sets.get(numHeads);
    if (!s) {
      s = native().medusaHeadSet(this.set, numHeads);
      this.sets.set(numHeads, s);
    }
    return s;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    // The native sets' references to the tensors and packs go now, not when the handles are collected.
    for (const s of this.sets.values()) native().medusaHeadSetRelease(s);
    this.sets.clear();
    this.packs.length = 0;
    for (const h of this.heads) {
      for (const { w, b } of h.blocks) {
        w.dispose();
        b.dispose();
      }
      h.lmHead.dispose();
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface MedusaOptions {
  readonly heads: MedusaHeads;
  /**
   * A preset name (mc_sim_7b_63, small_16, small_8, chain_4) or any choices list: that tree, every
   * step. Default: sized for the hardware — each step the best subtree of mc_sim_7b_63 (without the
   * choices deeper than the number of heads) under the target's cost curve and the heads' online
   * acceptance rates, down to plain decoding (the heads do not run then) when no tree pays.
   */
  readonly choices?: MedusaChoices | string;
  /** When sampling: 'exact' (tree rejection, lossless; default) or 'typical' (LOSSY). */
  readonly sampling?: 'exact' | 'typical';
  /** Typical acceptance epsilon (Medusa posterior_threshold). */
  readonly posteriorThreshold?: number;
  /** Typical acceptance delta (Medusa posterior_alpha). */
  readonly posteriorAlpha?: number;
}

export class MedusaSpeculator implements Speculator {
  readonly name = 'medusa';
  /**
   * The forward's hidden states are needed for the heads; a sized step whose update will run none
   * (the plan decodes plainly and no sequence probes next) leaves them out (propose() decides; true
   * again after update(), so a prefill between steps always gets them).
   */
  get wantsHidden(): boolean {
    return this.hiddenThisStep;
  }
  private hiddenThisStep = true;
  /** A propose() of this step has set hiddenThisStep (the engine's parts each propose, then one forward). */
  private hiddenDecided = false;
  /** A part of this step proposed without a sized plan (sampling): it reads every head's candidates. */
  private unsizedThisStep = false;
  readonly heads: MedusaHeads;
  readonly shape: MedusaTreeShape;
  readonly samplingVerifyMode: 'rejection' | 'typical';
  /** The heads the engine runs with the verification: fusedHeads[D - 1] = the first D heads. */
  private readonly fusedHeads: HeadsOnAccepted[] = [];
  readonly typicalThreshold: number;
  readonly typicalAlpha: number;
  /** Per sequence: top-k candidate ids of each head for the next step ([head][rank]). */
  private readonly cands = new Map<number, Int32Array[]>();
  /** The tree is chosen per step by the cost model (no explicit choices). */
  readonly sized: boolean;
  /** Hit rate of rank r of head d given the path to depth d was accepted (sized mode). */
  readonly rates = new RankRates((_d, r) => 0.5 / ((r + 1) * (r + 1)));
  /** Seconds the heads take per step and sequence (recent steps; sized mode). */
  private readonly headsSeconds = new RecentTimes();
  private headsCalibrated = false;
  /** Per sequence: consecutive steps decoded plainly (sized mode). */
  private readonly plainRun = new Map<number, number>();

  /**
   * A sequence's plain run starts at 0 with each request: once probes back off past a request's
   * length, a plan that decodes plainly stops probing. (Carrying the run over from request to
   * request kept probing, but the sized Medusa fell from 0.89x to 0.81x of plain in the sizing bench
   * on the embedded family, where rare speculative steps run cold: a process's first ones took
   * 0.5-0.9 ms beside their forward against ~40 us warm.)
   */
  private run(s: SpecSequence): number {
    return this.plainRun.get(s.key) ?? 0;
  }
  /**
   * Sized mode: plain steps before a probe runs the heads (for every sequence, like the rates).
   * Each probe after which the plan still decodes plainly backs it off (backedOffProbeInterval): on
   * a small model a probe's heads cost more than a plain step (~100 us, cold).
   */
  private probeAfter = PROBE_AFTER_PLAIN_STEPS;
  private target: CausalLM | undefined;
  /** depth: heads the kept subtree reads (its deepest node's depth). */
  private planned: { keep: Int32Array; speculate: boolean; batch: number; age: number; depth: number; expected: number; seconds: number } | undefined;
  /** Sized mode: tokens per step plans of each size gave against their prediction (plan()). */
  readonly outcomes = new PlanOutcomes();
  /** The root and the choice tree's rank-0 chain (a probe's tree). */
  private readonly probeKeep: Int32Array;

  constructor(opts: MedusaOptions) {
    optionsArg(opts, 'medusa options');
    if (!(opts.heads instanceof MedusaHeads)) throw codedError('E_ARG', `medusa: heads: expected MedusaHeads (MedusaHeads.load), got ${opts.heads === null ? 'null' : typeof opts.heads}`);
    this.heads = opts.heads;
    if (opts.choices === null) throw codedError('E_ARG', 'medusa: choices must be a preset name or a choices list (or left out: sized), got null');
    // The default preset is cut to the heads there are; an explicit list must fit them.
    const choices =
      typeof opts.choices === 'string'
        ? MEDUSA_PRESETS[opts.choices]
        : (opts.choices ?? MC_SIM_7B_63.filter((c) => c.length <= opts.heads.config.numHeads));
    if (!choices) throw codedError('E_ARG', `medusa: unknown choices preset '${String(opts.choices)}' (have ${Object.keys(MEDUSA_PRESETS).join(', ')})`);
    this.shape = medusaTreeShape(choices);
    // The probe: every head's best guess, a chain down the choice tree's rank-0 nodes, so that each
    // probe is a trial of every head's first rank (with head 0's guess alone the deeper heads' rates
    // stayed at their priors, and a plan that decoded plainly never learned what they were worth).
    const probe = [0];
    for (let at = 0; ; ) {
      let next = -1;
      for (let i = at + 1; i < this.shape.parents.length && next < 0; i++) if (this.shape.parents[i] === at && this.shape.rank[i] === 0) next = i;
      if (next < 0) break;
      probe.push(next);
      at = next;
    }
    this.probeKeep = Int32Array.from(probe);
    this.sized = opts.choices === undefined;
    if (this.shape.depth > this.heads.config.numHeads) {
      throw codedError('E_ARG', `medusa: the choices are ${this.shape.depth} deep but there are only ${this.heads.config.numHeads} heads`);
    }
    if (this.shape.topK > this.heads.config.vocabSize) throw codedError('E_ARG', `medusa: choices need top-${this.shape.topK} > vocabulary`);
    // The engine runs the heads at each last accepted node with the verification (one wait a step).
    for (let d = 1; d <= this.shape.depth; d++) this.fusedHeads.push({ heads: this.heads.weights(d), k: this.shape.topK });
    if (opts.sampling !== undefined && opts.sampling !== 'exact' && opts.sampling !== 'typical') {
      throw codedError('E_ARG', `medusa: sampling must be 'exact' or 'typical', got ${String(opts.sampling)}`);
    }
    const real = (v: number | undefined, name: string, def: number, lo: number, hi: number): number => {
      const x = v ?? def;
      if (typeof x !== 'number' || !(x >= lo && x <= hi)) throw codedError('E_ARG', `medusa: ${name} must be a number in [${lo}, ${hi}], got ${String(v)}`);
      return x;
    };
    this.samplingVerifyMode = opts.sampling === 'typical' ? 'typical' : 'rejection';
    this.typicalThreshold = real(opts.posteriorThreshold, 'posteriorThreshold', 0.09, 0, 1);
    this.typicalAlpha = real(opts.posteriorAlpha, 'posteriorAlpha', 0.3, 0, Number.MAX_VALUE);
  }

  attach(model: CausalLM): void {
    const c = this.heads.config;
    if (c.hiddenSize !== model.config.hiddenSize) {
      throw codedError('E_ARG', `medusa: heads have hidden size ${c.hiddenSize} but the target has ${model.config.hiddenSize}`);
    }
    if (c.vocabSize !== model.config.vocabSize) {
      throw codedError('E_ARG', `medusa: heads have vocabulary ${c.vocabSize} but the target has ${model.config.vocabSize}`);
    }
    if (this.heads.device !== model.device) {
      throw codedError('E_ARG', `medusa: heads are on ${this.heads.device} but the target is on ${model.device}`);
    }
    this.target = model;
  }

  /**
   * Runs the heads on output rows `rows` (one per sequence) and stores the top-k candidates (with
   * penalties, penalized by each sequence's history: the candidates leave out what the target avoids).
   */
  private observe(seqs: readonly SpecSequence[], out: ForwardOutput, rows: number[], ctx: ProposeContext): void {
    if (!out.hidden) throw codedError('E_ARG', 'medusa: the forward returned no hidden states');
    const H = this.heads.config.hiddenSize;
    const x = gatherRows(rows.map((row) => ({ tensor: out.hidden as Tensor, row })), H, this.heads.device);
    const K = this.shape.topK;
    const t0 = performance.now();
    try {
      const pen = ctx.penalties ? { penalties: ctx.penalties, histories: seqs.map((s) => ({ tokens: s.history, promptLength: s.promptLength })) } : undefined;
      this.setCands(seqs, seqs.keys(), this.heads.topKIds(x, K, this.shape.depth, pen));
      this.headsSeconds.add((performance.now() - t0) / 1000 / seqs.length);
    } finally {
      x.dispose();
    }
  }

  async prefill(seqs: readonly SpecSequence[], output: ForwardOutput, lastRows: Int32Array, ctx: ProposeContext = {}): Promise<void> {
    // While the sized plan decodes plainly the first step proposes the root alone: its candidates
    // would go unused (the heads run again before a step that speculates or probes).
    const cost = sizingCost(this.sizedFor(ctx), this.target, ctx);
    if (!(cost && this.planned && this.planned.batch === seqs.length && !this.planned.speculate)) this.observe(seqs, output, Array.from(lastRows), ctx);
    await this.prepare();
  }

  /**
   * Whether this step is sized: sized mode, and not sampling with typical acceptance (whose tokens
   * depend on the tree verified: the fixed shape keeps a seed's output). Exact sampling is sized.
   */
  private sizedFor(ctx: ProposeContext): boolean {
    return this.sized && !(this.samplingVerifyMode === 'typical' && isSampling(ctx.sampling));
  }

  /** Sized mode: the target's cost curve (measured once per model) and the heads' cost. */
  async prepare(): Promise<void> {
    if (!this.sized || !this.target) return;
    await forwardCostIfRoom(this.target);
    if (!this.headsCalibrated) {
      this.headsCalibrated = true;
      this.calibrateHeads();
    }
  }

  /**
   * The heads' cost per sequence, timed on a row of zeros once (with the first prepare()). Otherwise
   * the first samples (the requests' prefills) are all there is while the plan decodes plainly, and
   * they carry first-call costs: up to 6x the heads' steady cost, enough to rule out every tree.
   */
  private calibrateHeads(): void {
    const x = Tensor.zeros('f32', [1, this.heads.config.hiddenSize], this.heads.device);
    try {
      // Warm-up runs up to HEADS_WARMUP or 10 ms (at least 2), then up to a window of timed runs or
      // 50 ms (at least 3): a tiny model's heads warm up fully, a big model's cost a few runs.
      // (The native call topKIds makes, so that a count of the heads' runs while decoding -- the
      // tests' -- leaves this one-off measurement out.)
      const run = (): Int32Array => native().medusaTopK(x, this.heads.weights(this.shape.depth), this.shape.topK);
      const t0 = performance.now();
      for (let i = 0; i < HEADS_WARMUP && (i < 2 || performance.now() - t0 < 10); i++) run();
      const t1 = performance.now();
      for (let i = 0; i < RecentTimes.WINDOW && (i < 3 || performance.now() - t1 < 50); i++) {
        const t = performance.now();
        run();
        this.headsSeconds.add((performance.now() - t) / 1000);
      }
    } finally {
      x.dispose();
    }
  }

  /** Node probabilities of the choice tree under the current rates, weighed optimistically (RankRates.upper). */
  private nodeProbabilities(): Float64Array {
    return treeProbabilities(this.shape.parents, (i) => this.rates.upper(this.shape.head[i] as number, this.shape.rank[i] as number));
  }

  /** The nodes of the choice tree to propose this step (sized mode; the heads already ran). */
  /**
   * The sized choice: the subtree to propose once the heads have run, and whether a tree pays for
   * running the heads at all. Recomputed every PLAN_USES uses or when the batch size changes (the
   * rates move by one step's counts at a time; a 63-node choice costs tens of microseconds, as much
   * as a tiny target's forward).
   */
  private plan(cost: ForwardCost, batch: number, use = true): { keep: Int32Array; speculate: boolean } {
    const p = this.planned;
    // (A use is a step's proposal: update() reads the same plan without aging it.)
    // (A plain plan is kept longer: plain steps record nothing, so only the cost curve moves.)
    if (p && p.batch === batch && (use ? p.age++ : p.age) < (p.speculate ? PLAN_USES : PLAIN_PLAN_USES)) return p;
    const prob = this.nodeProbabilities();
    // The heads' cost is the heads' own until the step overhead is measured: the heads then run in
    // the verification (headsOnAccepted), inside the overhead measured (counted twice otherwise).
    const heads = cost.overheadMeasuredOf(this) ? 0 : this.headsSeconds.value();
    const price = stepCost(cost, batch, undefined, this);
    const choice = chooseSubtree(this.shape.parents, prob, price);
    const speculate = chooseSubtree(this.shape.parents, prob, stepCost(cost, batch, (n) => (n > 1 ? heads : 0), this)).size > 0;
    // The size as the outcomes of recent plans correct it (or a near tie explored: PlanOutcomes).
    let keep = choice.keep;
    let expected = choice.expectedTokens;
    if (choice.size > 0) {
      const { count } = choosePlanSize(choice, price, this.outcomes);
      if (count !== choice.size + 1) keep = Int32Array.from(choice.order.subarray(0, count)).sort();
      expected = choice.expectedByCount[count - 1] as number;
    }
    let depth = 1;
    for (const i of keep) depth = Math.max(depth, (this.shape.head[i] as number) + 1);
    this.planned = { keep, speculate, batch, age: 1, depth, expected, seconds: price(keep.length) };
    if (speculate) this.probeAfter = PROBE_AFTER_PLAIN_STEPS;
    return this.planned;
  }

  /** Sized mode: whether the next step should speculate, i.e. run the heads now. */
  private wantsNextTree(s: SpecSequence, cost: ForwardCost, batch: number): boolean {
    const run = this.run(s);
    return run >= this.probeAfter || this.plan(cost, batch, false).speculate;
  }

  /** Sized mode: head d's candidates against the tokens this step emitted (known through depth emitted.length). */
  private record(cands: Int32Array[], emitted: Int32Array): void {
    for (let d = 0; d < Math.min(cands.length, emitted.length); d++) {
      this.rates.record(d, (cands[d] as Int32Array).indexOf(emitted[d] as number));
    }
  }

  propose(seqs: readonly SpecSequence[], ctx: ProposeContext = {}): ProposalBatch {
    const cost = sizingCost(this.sizedFor(ctx), this.target, ctx);
    const plan = cost ? this.plan(cost, seqs.length) : undefined;
    const keep = plan?.keep;
    if (!plan) this.unsizedThisStep = true;
    // The heads run after this step only for a plan that speculates or a sequence due to probe.
    let need = !plan || plan.speculate;
    for (let b = 0; b < seqs.length && !need; b++) need = this.run(seqs[b] as SpecSequence) + 1 >= this.probeAfter;
    this.hiddenThisStep = need || (this.hiddenDecided && this.hiddenThisStep);
    this.hiddenDecided = true;
    const chain = this.chainOffer(seqs, ctx, plan);
    if (chain) return chain;
    const batch: ProposalBatch = {
      proposals: seqs.map((s) => {
        const root = s.history[s.history.length - 1] as number;
        const c = this.cands.get(s.key);
        if (!c || s.maxDepth === 0) return loneRoot(root);
        // Heads past the candidates' (a plan recomputed deeper since they ran) stand in with the root:
        // their nodes are cut below.
        const full = medusaTree(this.shape, root, (h, r) => (h < c.length ? (c[h] as Int32Array)[r] as number : root));
        // A probe (the heads ran after probeAfter plain steps) proposes every head's best guess
        // (probeKeep), so that it is a trial of the rates and ends the plain run (with the root
        // alone it ended nothing, and the heads then ran after every step).
        const probe = keep !== undefined && keep.length === 1 && this.run(s) >= this.probeAfter;
        const tree = probe ? selectNodes(full, c.length >= this.shape.depth ? this.probeKeep : this.within(this.probeKeep, c.length)) : keep ? selectNodes(full, c.length >= this.shape.depth ? keep : this.within(keep, c.length)) : full;
        return cutTree(this.shape.depth > s.maxDepth ? pruneTree(tree, s.maxDepth).tree : tree, s.maxNodes);
      }),
    };
    const ahead = need || !plan ? 0 : this.plainStepsAhead(seqs, batch.proposals);
    return ahead > 0 ? { proposals: batch.proposals, plainSteps: ahead } : batch;
  }

  /**
   * Steps (greedy, or sampled by exact rejection) of a tree that speculates (the sized plan's
   * subtree, or the fixed choices), where the engine runs them natively (ctx.draftChains, a model with medusaChain): up to CHAIN_MAX_STEPS
   * steps in one call, reported with updateHeadsChain(). Every head runs after each verification
   * (the plan's subtree may read fewer: the rates of all depths stay fed). A probe of a plain plan is
   * a one-step chain when every sequence is due; plain steps keep the step-by-step path.
   */
  private chainOffer(seqs: readonly SpecSequence[], ctx: ProposeContext, plan: { keep: Int32Array; speculate: boolean } | undefined): ProposalBatch | undefined {
    // (Sampled: exact rejection of the candidates only; typical acceptance keeps the step path.)
    if (ctx.draftChains !== true || (isSampling(ctx.sampling) && this.samplingVerifyMode !== 'rejection') || !this.target?.medusaChain) return undefined;
    let keep: Int32Array | undefined;
    let probe = false;
    if (this.sized) {
      if (plan && plan.speculate && plan.keep.length > 1) keep = plan.keep;
      else if (plan && plan.keep.length === 1 && seqs.every((s) => this.run(s) >= this.probeAfter && this.cands.has(s.key))) {
        // Every sequence due to probe: the probe's tree as a one-step chain (propose()'s probe).
        keep = this.probeKeep;
        probe = true;
      } else return undefined;
    }
    let template = keep ? this.templates.get(keep) : this.fullTemplate;
    if (!template) {
      const nodes = keep ?? Int32Array.from(this.shape.parents, (_, i) => i);
      const at = new Int32Array(this.shape.parents.length).fill(-1);
      const t = { parents: new Int32Array(nodes.length), head: new Int32Array(nodes.length), rank: new Int32Array(nodes.length) };
      for (let i = 0; i < nodes.length; i++) {
        const n = nodes[i] as number;
        at[n] = i;
        const p = this.shape.parents[n] as number;
        t.parents[i] = p < 0 ? -1 : (at[p] as number);
        t.head[i] = this.shape.head[n] as number;
        t.rank[i] = this.shape.rank[n] as number;
      }
      template = t;
      if (keep) this.templates.set(keep, t);
      else this.fullTemplate = t;
    }
    // A template larger than a sequence's KV room (a fixed tree past treeReserveTokens): the step path, which cuts it.
    for (const s of seqs) if (template.parents.length > s.maxNodes) return undefined;
    const K = this.shape.topK;
    const offer = new Array<HeadsChainOffer['seqs'][number]>(seqs.length);
    const proposals = new Array<Proposal>(seqs.length);
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      const c = this.cands.get(s.key);
      proposals[b] = loneRoot(s.history[s.history.length - 1] as number);
      if (!c) {
        offer[b] = { cands: new Int32Array(0), headsKnown: 0 };
        continue;
      }
      const flat = new Int32Array(c.length * K);
      for (let h = 0; h < c.length; h++) flat.set(c[h] as Int32Array, h * K);
      offer[b] = { cands: flat, headsKnown: c.length };
    }
    const heads = (this.fusedHeads[this.shape.depth - 1] as HeadsOnAccepted).heads as SpecdecNative.NativeMedusaHeadSet;
    return { proposals, headsChain: probe ? { heads, topK: K, template, seqs: offer, maxSteps: 1, probe } : { heads, topK: K, template, seqs: offer, maxSteps: CHAIN_MAX_STEPS } };
  }
  /** Chain templates per plan subtree (a plan's keep array is reused while the plan is). */
  private readonly templates = new WeakMap<Int32Array, MedusaChainTemplate>();
  private fullTemplate: MedusaChainTemplate | undefined;

  /** The engine ran this batch's headsChain: each step's bookkeeping, as update() does it. */
  updateHeadsChain(seqs: readonly SpecSequence[], r: MedusaChainResult, ctx: ProposeContext = {}): void {
    try {
      const cost = sizingCost(this.sizedFor(ctx), this.target, ctx);
      const B = seqs.length;
      const D = r.depth;
      const plan = cost && this.planned?.speculate ? this.planned : undefined;
      for (let b = 0; b < B; b++) {
        const s = seqs[b] as SpecSequence;
        let run = this.run(s);
        for (let i = 0; i < r.steps; i++) {
          if (cost) {
            for (let d = 0; d < D; d++) {
              const rank = r.ranks[(i * B + b) * D + d] as number;
              if (rank !== -2) this.rates.record(d, rank);
            }
          }
          // The plan's outcome (a step whose tree a budget or the heads known cut is not its plan's).
          // (Timed against a measured curve only: a pinned one is a statement of the costs, and the
          // steps one at a time, untimed, then choose as the chains do.)
          if (plan && r.nodes[i * B + b] === plan.keep.length) {
            const seconds = cost?.frozen ? undefined : { predicted: plan.seconds, realized: (r.stepSeconds[i] as number) / B };
            this.outcomes.record(plan.keep.length, plan.expected, (r.accepted[i * B + b] as number) + 1, seconds);
          }
          const tree = (r.nodes[i * B + b] as number) > 1;
          // A probe the plan still ignores: the next one comes twice as late (as update() does).
          if (cost && tree && this.planned && !this.planned.speculate) this.probeAfter = backedOffProbeInterval(this.probeAfter);
          run = tree ? 0 : run + 1;
        }
        if (cost) this.plainRun.set(s.key, run);
      }
      // The plan's uses: the step proposed used one (propose), the chain's other steps one each.
      if (this.planned) this.planned.age += r.steps - 1;
      const K = this.shape.topK;
      for (let b = 0; b < B; b++) {
        const s = seqs[b] as SpecSequence;
        if (cost && !this.wantsNextTree(s, cost, B)) {
          this.cands.delete(s.key);
          continue;
        }
        const flat = r.cands[b] as Int32Array;
        const c = new Array<Int32Array>(flat.length / K);
        for (let h = 0; h < c.length; h++) c[h] = flat.subarray(h * K, (h + 1) * K);
        this.cands.set(s.key, c);
      }
    } finally {
      this.hiddenThisStep = true;
      this.hiddenDecided = false;
      this.unsizedThisStep = false;
    }
  }

  /** The nodes of `keep` that read heads 0..depth-1 only (prefix-closed, as keep is). */
  private within(keep: Int32Array, depth: number): Int32Array {
    return keep.filter((i) => (this.shape.head[i] as number) < depth);
  }

  /**
   * Sized mode, a plain plan: this step and the next ones that are sure to be plain and to run no
   * heads after them -- every sequence proposed its root alone, the plan stays plain for that many
   * uses, and no sequence comes due to probe (its heads run after the step before the probe, on
   * that step's hidden states, which a chain does not return). 0: none.
   */
  private plainStepsAhead(seqs: readonly SpecSequence[], proposals: readonly Proposal[]): number {
    const p = this.planned;
    if (!p || p.speculate || p.batch !== seqs.length) return 0;
    // This step is the plan's use p.age; it has PLAIN_PLAN_USES - p.age uses left after it. (Without
    // the step itself, the plan's last use came back as 0: a step out of the chain, forward and
    // commit apart, every PLAIN_PLAN_USES plain steps.) The uses stretch to the end of a chain (the
    // plan is recomputed a few steps late rather than a chain cut short); the probes do not.
    let steps = 1 + wholeChains(this.target, seqs.length, PLAIN_PLAN_USES - p.age);
    for (let b = 0; b < seqs.length; b++) {
      if ((proposals[b] as Proposal).tokens.length !== 1) return 0;
      // After update j of the chain the run is run + j; the heads are wanted once it reaches probeAfter.
      steps = Math.min(steps, this.probeAfter - this.run(seqs[b] as SpecSequence) - 1);
    }
    return steps;
  }

  /** The engine ran steps[b] plain steps of sequence b at once (after plainSteps): m plain runs, the plan's uses. */
  updatePlain(seqs: readonly SpecSequence[], steps: readonly number[]): void {
    let most = 0;
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      const m = steps[b] as number;
      most = Math.max(most, m);
      this.plainRun.set(s.key, this.run(s) + m);
      this.cands.delete(s.key);
    }
    if (this.planned) this.planned.age += most - 1;
    this.hiddenThisStep = true;
    this.hiddenDecided = false;
    this.unsizedThisStep = false;
  }

  /**
   * Candidates of sequences `which` from ids[(h * seqs.length + b) * K + j] (the heads' top-K, as
   * topKIds and the engine's headsOnAccepted lay them out).
   */
  private setCands(seqs: readonly SpecSequence[], which: Iterable<number>, ids: Int32Array): void {
    const K = this.shape.topK, B = seqs.length, D = ids.length / (B * K);
    for (const b of which) {
      // Views of the step's ids (a fresh array per call), in a plain loop: Array.from with a map
      // function was most of update()'s time on a small model.
      const c = new Array<Int32Array>(D);
      for (let h = 0; h < D; h++) c[h] = ids.subarray((h * B + b) * K, (h * B + b + 1) * K);
      this.cands.set((seqs[b] as SpecSequence).key, c);
    }
  }

  /**
   * The heads the engine runs at each last accepted node with the verification (one wait a step):
   * always, unless the cost model's current plan is to decode plainly (then update() runs them only
   * for the sequences about to probe a tree again).
   */
  get headsOnAccepted(): HeadsOnAccepted | undefined {
    const all = this.fusedHeads[this.shape.depth - 1];
    const p = this.planned;
    if (!this.sized || !p || this.unsizedThisStep) return all;
    if (!p.speculate) return undefined;
    // Sized: only the heads the plan's subtree reads (a head is a ResBlock and an LM head: on the
    // widened family 0.12 ms each, beside a 3-4 ms step), and all of them on the plan's last use, so
    // that the next plan has every head's candidates and every depth's rates stay fed.
    return p.age >= PLAN_USES ? all : this.fusedHeads[p.depth - 1];
  }

  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext = {}): void {
    try {
      this.updateCands(seqs, report, ctx);
    } finally {
      this.hiddenThisStep = true;
      this.hiddenDecided = false;
      this.unsizedThisStep = false;
    }
  }

  private updateCands(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext): void {
    const cost = sizingCost(this.sizedFor(ctx), this.target, ctx);
    // (Loops, not map/forEach/filter: this runs every step, also the plain ones.)
    const next: number[] = [];
    for (let b = 0; b < seqs.length; b++) {
      const s = seqs[b] as SpecSequence;
      if (!cost) {
        next.push(b);
        continue;
      }
      const c = this.cands.get(s.key);
      if (c) this.record(c, report.emitted[b] as Int32Array);
      const nodes = (report.proposals[b] as { tokens: Int32Array }).tokens.length;
      const tree = c !== undefined && nodes > 1;
      const plan = this.planned;
      if (tree && plan?.speculate && nodes === plan.keep.length) this.outcomes.record(nodes, plan.expected, (report.emitted[b] as Int32Array).length);
      // A probe the plan still ignores: the next one comes twice as late.
      if (tree && this.planned && !this.planned.speculate) this.probeAfter = backedOffProbeInterval(this.probeAfter);
      this.plainRun.set(s.key, tree ? 0 : this.run(s) + 1);
    }
    if (cost) {
      // Heads only for sequences whose next step will speculate: a plain step skips them.
      for (let b = 0; b < seqs.length; b++) {
        const s = seqs[b] as SpecSequence;
        if (this.wantsNextTree(s, cost, seqs.length)) next.push(b);
        else this.cands.delete(s.key);
      }
      if (next.length === 0) return;
    }
    if (report.headsTopK) {
      this.setCands(seqs, next, report.headsTopK);
      return;
    }
    // A plan recomputed since propose() may want heads this step left the hidden states out for:
    // those sequences decode the next step plainly (no candidates) and get heads after it.
    if (!report.output.hidden) return;
    // The heads read the hidden state of the last accepted node (the one that produced the bonus).
    const rows = next.map((b) => {
      const acc = report.acceptedNodes[b] as Int32Array;
      return (report.output.indptr[b] as number) + (acc[acc.length - 1] as number);
    });
    this.observe(next.map((b) => seqs[b] as SpecSequence), report.output, rows, ctx);
  }

  rewind(seq: SpecSequence): void {
    this.cands.delete(seq.key);
  }

  release(seq: SpecSequence): void {
    this.cands.delete(seq.key);
    this.plainRun.delete(seq.key);
  }

  /** Frees the candidate state; the heads belong to the caller (dispose them separately). */
  dispose(): void {
    this.cands.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
