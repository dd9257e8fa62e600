// EAGLE (EAGLE-1 / EAGLE-2 heads): a one-layer draft that reads the target's own features. Draft row
// j takes the embedding of token t[j+1] and the target's final hidden state f[j] (after its last
// norm: the vector its LM head reads), x = fc([embed(t[j+1]); f[j]]), runs it through Llama decoder
// layers (layer 0 without its input norm) and returns h[j], its guess of f[j+1]; the TARGET's LM
// head on h[j] (no norm) gives the draft distribution of t[j+2]. Deeper guesses feed h back as the
// feature. Reference: SafeAILab/EAGLE, eagle/model/cnets1.py (Model.forward, topK_genrate).
//
// The tree is EAGLE-2's dynamic one: the root's top-k children, then `depth` times the top-k of the
// newest level (by cumulative draft log-probability) are expanded, each into its top-k children;
// from all the nodes made, the best prefix-closed subtree is proposed -- at most `totalTokens`
// nodes, and, unless fixed by the caller, as many as the target's measured cost curve says pay
// (tree_sizing.chooseSubtree, with the draft's probabilities as the acceptance estimates, which is
// EAGLE-2's premise). Greedy output equals plain decoding; when sampling, the tree is deterministic
// (one-hot drafts) and verified by exact tree rejection: lossless either way.
//
// Checkpoint: a directory with config.json (a Llama config: hidden_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads, intermediate_size, rms_norm_eps, rope_theta,
// rope_scaling; `bias`: fc has a bias, default true; `qkv_bias`) and model.safetensors holding
// fc.weight [H, 2H] (+ fc.bias), layers.{i}.self_attn.{q,k,v,o}_proj.weight,
// layers.{i}.input_layernorm.weight (i > 0), layers.{i}.post_attention_layernorm.weight and
// layers.{i}.mlp.{gate,up,down}_proj.weight (an optional "model." prefix). The embedding table and
// LM head are the target's (CausalLM.sharedWeights). EAGLE-3 heads (fc over three target layers, a
// draft vocabulary) are not read yet.
//
// The draft's KV cache is its own (lib/kv.ts). Rows with real target features are committed there;
// a tree level runs as one batch of single-token forks of its parents' sequences (copy-on-write
// pages), so every node attends to exactly its ancestors, as EAGLE's tree mask does; the forks are
// freed after the step.
import * as fs from 'fs';
import * as path from 'path';

import { resolveDevice } from '../backend';
import { forwardCost, RecentTimes } from '../cost_model';
import { KvCache, treeAttention, kvAppend, type KvDType, type PagedBatch } from '../kv';
import { addInplace, embedding, matmul, rmsnorm, rope, siluMul } from '../layers';
import type { CausalLM, ForwardOutput } from '../models/causal_lm';
import { parseLlamaConfig, toNativeConfig } from '../models/config';
import { native } from '../native';
import { openSafetensors } from '../safetensors';
import { processLogits, topK } from '../sampling';
import { gatherRows, isSampling } from '../step_helpers';
import { Tensor, type Device } from '../tensor';
import { loneRoot, type TokenTree } from '../tree';
import { backedOffProbeInterval, chooseChainLength, chooseSubtree, PROBE_AFTER_PLAIN_STEPS, RankRates, selectNodes, sizingCost, stepCost } from '../tree_sizing';
import type { ForwardCost } from '../cost_model';
import { codedError, type Proposal, type ProposalBatch, type ProposeContext, type SpecSequence, type Speculator, type StepReport } from './speculator';

export interface EagleHeadConfig {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly rmsNormEps: number;
  /** config.json's vocab_size (checked against the target's). */
  readonly vocabSize: number;
  readonly fcBias: boolean;
  readonly qkvBias: boolean;
}

interface LayerWeights {
  readonly inNorm: Tensor | undefined;
  readonly q: Tensor;
  readonly k: Tensor;
  readonly v: Tensor;
  readonly qb: Tensor | undefined;
  readonly kb: Tensor | undefined;
  readonly vb: Tensor | undefined;
  readonly o: Tensor;
  readonly postNorm: Tensor;
  readonly gate: Tensor;
  readonly up: Tensor;
  readonly down: Tensor;
}

/** Loaded EAGLE-1/2 head weights (on one device). */
export class EagleHead {
  private disposed = false;

  private constructor(
    readonly config: EagleHeadConfig,
    readonly device: Device,
    /** fc's columns that read the embedding and the feature: fc.weight[:, :H] and fc.weight[:, H:]. */
    private readonly fcEmbed: Tensor,
    private readonly fcFeature: Tensor,
    private readonly fcBias: Tensor | undefined,
    private readonly layers: readonly LayerWeights[],
    private readonly invFreq: Tensor,
  ) {}

  /** Loads an EAGLE-1/2 directory; E_IO / E_FORMAT / E_UNSUPPORTED naming the file and the problem. */
  static load(dir: string, opts: { device?: Device | 'auto' } = {}): EagleHead {
    const device = resolveDevice(opts.device ?? 'auto');
    const cfgPath = path.join(dir, 'config.json');
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(fs.readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw codedError(err.code === 'ENOENT' ? 'E_IO' : 'E_FORMAT', `EAGLE head: cannot read ${cfgPath}: ${err.message}`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw codedError('E_FORMAT', `EAGLE head: ${cfgPath}: expected a JSON object`);
    if (json['draft_vocab_size'] !== undefined || json['target_hidden_size'] !== undefined) {
      throw codedError('E_UNSUPPORTED', `EAGLE head: ${cfgPath} describes an EAGLE-3 head (draft_vocab_size / target_hidden_size): only EAGLE-1/2 heads are read`);
    }
    // EAGLE configs are Llama configs; some carry neither architectures nor model_type.
    const withArch = json['architectures'] === undefined && json['model_type'] === undefined ? { ...json, architectures: ['LlamaForCausalLM'] } : json;
    const c = parseLlamaConfig(withArch, cfgPath);
    const unsupported =
      c.gemma ? 'Gemma layers' : c.postNorms ? 'post-norm layers' : c.qkNorm ? 'q/k norms' : c.fusedProjections ? 'fused projections'
      : c.attentionWindows ? 'sliding windows' : c.ropeLayers ? 'layers without RoPE' : c.ropeDim !== c.headDim ? 'a partial rotation'
      : c.oBias ? 'an o_proj bias' : c.ropeScaling && c.ropeScaling.type !== 'linear' && c.ropeScaling.type !== 'llama3' ? `rope_scaling '${c.ropeScaling.type}'`
      : c.embeddingMultiplier !== undefined || c.residualMultiplier !== undefined || c.logitsScaling !== undefined ? 'Granite multipliers' : undefined;
    if (unsupported) throw codedError('E_UNSUPPORTED', `EAGLE head: ${cfgPath}: ${unsupported} are not supported in an EAGLE head (Llama decoder layers only)`);
    const H = c.hiddenSize;
    const fcBias = json['bias'] === undefined ? true : json['bias'] === true;
    if (json['bias'] !== undefined && typeof json['bias'] !== 'boolean') throw codedError('E_FORMAT', `EAGLE head: ${cfgPath}: 'bias' must be a boolean`);
    const qkvBias = json['qkv_bias'] === true || c.qkvBias;

    const stPath = path.join(dir, 'model.safetensors');
    if (!fs.existsSync(stPath)) {
      const bin = path.join(dir, 'pytorch_model.bin');
      if (fs.existsSync(bin)) {
        throw codedError('E_FORMAT', `EAGLE head: ${dir} holds pytorch_model.bin, which is not read (a pickle); convert it once: ` +
          `python -c "import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v in torch.load('${bin}').items()}, '${stPath}')"`);
      }
      throw codedError('E_IO', `EAGLE head: ${stPath} not found`);
    }
    const f = openSafetensors(stPath);
    const loaded: Tensor[] = [];
    try {
      const names = new Set(f.names());
      if ([...names].some((n) => n.startsWith('midlayer.'))) {
        throw codedError('E_UNSUPPORTED', `EAGLE head: ${stPath} holds an EAGLE-3 head (midlayer.*): only EAGLE-1/2 heads are read`);
      }
      const prefix = names.has('fc.weight') ? '' : names.has('model.fc.weight') ? 'model.' : undefined;
      if (prefix === undefined) throw codedError('E_FORMAT', `EAGLE head: ${stPath} has no tensor 'fc.weight' (is this an EAGLE head?)`);
      const load = (name: string, shape: readonly number[], optional = false): Tensor | undefined => {
        const full = prefix + name;
        if (!names.has(full)) {
          if (optional) return undefined;
          throw codedError('E_FORMAT', `EAGLE head: ${stPath} has no tensor '${full}'`);
        }
        const got = f.info(full).shape;
        if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
          throw codedError('E_FORMAT', `EAGLE head: ${stPath}: '${full}' has shape [${got}], expected [${shape}]`);
        }
        const t = f.load(full, device);
        loaded.push(t);
        return t;
      };
      const need = (name: string, shape: readonly number[]): Tensor => load(name, shape) as Tensor;
      // fc [H, 2H] split into its two column blocks (one conversion on the host, the weights' dtype kept).
      const fc = need('fc.weight', [H, 2 * H]);
      const fcHost = fc.to('cpu');
      const all = fcHost.toFloat32();
      if (fcHost !== fc) fcHost.dispose();
      const halves = [new Float32Array(H * H), new Float32Array(H * H)];
      for (let r = 0; r < H; r++) {
        (halves[0] as Float32Array).set(all.subarray(r * 2 * H, r * 2 * H + H), r * H);
        (halves[1] as Float32Array).set(all.subarray(r * 2 * H + H, (r + 1) * 2 * H), r * H);
      }
      const fcEmbed = Tensor.fromArray(halves[0] as Float32Array, fc.dtype, [H, H], device);
      loaded.push(fcEmbed);
      const fcFeature = Tensor.fromArray(halves[1] as Float32Array, fc.dtype, [H, H], device);
      loaded.push(fcFeature);
      const fcB = fcBias ? need('fc.bias', [H]) : undefined;
      const QD = c.numHeads * c.headDim;
      const KD = c.numKvHeads * c.headDim;
      const I = c.intermediateSize;
      const layers: LayerWeights[] = [];
      for (let l = 0; l < c.numLayers; l++) {
        const p = `layers.${l}.`;
        layers.push({
          // EAGLE's layer 0 has no input norm (fc's output goes straight in); a stored one is unused.
          inNorm: l === 0 ? undefined : need(`${p}input_layernorm.weight`, [H]),
          q: need(`${p}self_attn.q_proj.weight`, [QD, H]),
          k: need(`${p}self_attn.k_proj.weight`, [KD, H]),
          v: need(`${p}self_attn.v_proj.weight`, [KD, H]),
          qb: qkvBias ? need(`${p}self_attn.q_proj.bias`, [QD]) : undefined,
          kb: qkvBias ? need(`${p}self_attn.k_proj.bias`, [KD]) : undefined,
          vb: qkvBias ? need(`${p}self_attn.v_proj.bias`, [KD]) : undefined,
          o: need(`${p}self_attn.o_proj.weight`, [H, QD]),
          postNorm: need(`${p}post_attention_layernorm.weight`, [H]),
          gate: need(`${p}mlp.gate_proj.weight`, [I, H]),
          up: need(`${p}mlp.up_proj.weight`, [I, H]),
          down: need(`${p}mlp.down_proj.weight`, [H, I]),
        });
      }
      fc.dispose();
      loaded.splice(loaded.indexOf(fc), 1);
      const ropeInvFreq = native().llamaRopeInvFreq;
      if (!ropeInvFreq) throw codedError('E_UNSUPPORTED', 'the loaded native addon cannot compute rotary frequencies (an older build?): run `npm run build:native`');
      const invFreq = Tensor.fromArray(ropeInvFreq(toNativeConfig(c)), 'f32', undefined, device);
      loaded.push(invFreq);
      const config: EagleHeadConfig = {
        hiddenSize: H,
        intermediateSize: I,
        numLayers: c.numLayers,
        numHeads: c.numHeads,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        rmsNormEps: c.rmsNormEps,
        vocabSize: c.vocabSize,
        fcBias,
        qkvBias,
      };
      return new EagleHead(config, device, fcEmbed, fcFeature, fcB, layers, invFreq);
    } catch (e) {
      for (const t of loaded) t.dispose();
      throw e;
    } finally {
      f.close();
    }
  }

  /**
   * The draft layers over one planned batch of `cache` (tokens i32 [N] with features f32 [N, H] and
   * position ids; causal among each sequence's new rows): the K/V of the rows are written at their
   * slots (the caller commits them or not); returns h f32 [N, H], the layers' output without a norm.
   */
  forward(embed: Tensor, cache: KvCache, batch: PagedBatch, tokens: Int32Array, features: Tensor, positions: Int32Array): Tensor {
    if (this.disposed) throw codedError('E_DISPOSED', 'EAGLE head was disposed');
    const c = this.config;
    const N = tokens.length;
    const H = c.hiddenSize;
    const dev = this.device;
    const temps: Tensor[] = [];
    const t = <T extends Tensor>(x: T): T => {
      temps.push(x);
      return x;
    };
    let x: Tensor | undefined;
    try {
      const ids = t(Tensor.fromArray(tokens, 'i32', [N], dev));
      const pos = t(Tensor.fromArray(positions, 'i32', [N], dev));
      const e = t(embedding(embed, ids));
      x = matmul(e, this.fcEmbed);
      addInplace(x, t(matmul(features, this.fcFeature, this.fcBias)));
      const scale = 1 / Math.sqrt(c.headDim);
      for (let l = 0; l < this.layers.length; l++) {
        const L = this.layers[l] as LayerWeights;
        const h = L.inNorm ? t(rmsnorm(x, L.inNorm, c.rmsNormEps)) : x;
        const q = t(matmul(h, L.q, L.qb)).view([N, c.numHeads, c.headDim]);
        temps.push(q);
        const k = t(matmul(h, L.k, L.kb)).view([N, c.numKvHeads, c.headDim]);
        temps.push(k);
        const v = t(matmul(h, L.v, L.vb)).view([N, c.numKvHeads, c.headDim]);
        temps.push(v);
        rope(q, pos, this.invFreq);
        rope(k, pos, this.invFreq);
        const layer = t(cache.layer(l));
        kvAppend(layer, k, v, batch);
        const att = t(treeAttention(q, layer, batch, undefined, scale)).view([N, c.numHeads * c.headDim]);
        temps.push(att);
        addInplace(x, t(matmul(att, L.o)));
        const h2 = t(rmsnorm(x, L.postNorm, c.rmsNormEps));
        const g = t(matmul(h2, L.gate));
        siluMul(g, t(matmul(h2, L.up)), g);
        addInplace(x, t(matmul(g, L.down)));
      }
      if (x.shape[0] !== N || x.shape[1] !== H) throw codedError('E_INTERNAL', `EAGLE head: output is [${x.shape}], expected [${N}, ${H}]`);
      return x;
    } catch (e) {
      x?.dispose();
      throw e;
    } finally {
      for (const z of temps) z.dispose();
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const all = [this.fcEmbed, this.fcFeature, this.fcBias, this.invFreq];
    for (const L of this.layers) all.push(L.inNorm, L.q, L.k, L.v, L.qb, L.kb, L.vb, L.o, L.postNorm, L.gate, L.up, L.down);
    for (const z of all) z?.dispose();
  }
}

export interface EagleOptions {
  readonly head: EagleHead;
  /** Children per expanded node and nodes expanded per level (EAGLE-2's top_k). Default 8. */
  readonly topK?: number;
  /** Levels expanded after the root's children (EAGLE-2's depth): trees up to depth + 1 deep. Default 5. */
  readonly depth?: number;
  /**
   * Most draft nodes proposed (EAGLE-2's total_token - 1). Given: always that many (the best by
   * draft probability). Default: sized each step by the target's cost curve, at most 59, down to
   * plain decoding when no tree pays.
   */
  readonly totalTokens?: number;
  /** Tokens per page of the draft's KV cache. Default 4 (a fork copies its last, partial page). */
  readonly pageSize?: number;
}

interface EagleState {
  readonly seq: number;
  /** Draft rows j < cached are in the draft's cache (j >= base); features f[j] for j in [cached, cached + waiting) wait in `features`. */
  cached: number;
  /** The first row the draft's cache holds (> 0 after a gap in the features). */
  base: number;
  /** The waiting features, in order, as the chunks they came in (f32 [rows, H] each; not concatenated while plain steps pile them up). */
  features: Tensor[];
  waiting: number;
  /** Consecutive steps proposed without drafting (sized mode). */
  plainRun: number;
  /** This step's proposal was drafted. */
  drafted: boolean;
}

interface Node {
  readonly token: number;
  /** Index in the pool of the parent node, -1 for a child of the root. */
  readonly parent: number;
  readonly level: number;
  readonly logProb: number;
}

const DEFAULT_MAX_NODES = 59;

export class EagleSpeculator implements Speculator {
  readonly name = 'eagle';
  readonly wantsHidden = true;
  readonly head: EagleHead;
  readonly topK: number;
  readonly depth: number;
  readonly maxNodes: number;
  readonly sized: boolean;
  readonly pageSize: number;
  private target: CausalLM | undefined;
  private embed: Tensor | undefined;
  private lmHead: Tensor | undefined;
  private cache: KvCache | undefined;
  private readonly states = new Map<number, EagleState>();
  /** Seconds per draft row (catch-up and tree rows with their LM head rows; recent steps). */
  private readonly rowSeconds = new RecentTimes();
  /**
   * Sized mode: P(the accepted path reaches depth d + 1 | it reached depth d), online (the tree's
   * depth is what the plan chooses; its width only adds the siblings the draft found likely).
   */
  readonly rates: RankRates = new RankRates((depth) => (depth === 0 ? 0.6 : this.rates.rate(depth - 1)));
  /** Per sequence: the depth of the tree proposed (rates are recorded against it). */
  private readonly proposedDepth = new Map<number, number>();
  private probeAfter = PROBE_AFTER_PLAIN_STEPS;
  /** Per sequence key, per step: nodes proposed and drafts accepted (tests and stats read it). */
  readonly trace = new Map<number, { proposed: number; accepted: number }[]>();

  constructor(opts: EagleOptions) {
    this.head = opts.head;
    const int = (v: number | undefined, name: string, def: number, lo: number, hi: number): number => {
      const x = v ?? def;
      if (!Number.isInteger(x) || x < lo || x > hi) throw codedError('E_ARG', `eagle: ${name} must be an integer in [${lo}, ${hi}], got ${String(v)}`);
      return x;
    };
    this.topK = int(opts.topK, 'topK', 8, 1, 64);
    this.depth = int(opts.depth, 'depth', 5, 0, 32);
    this.sized = opts.totalTokens === undefined;
    this.maxNodes = int(opts.totalTokens, 'totalTokens', DEFAULT_MAX_NODES, 1, 1023);
    this.pageSize = int(opts.pageSize, 'pageSize', 4, 1, 1024);
  }

  attach(model: CausalLM): void {
    const c = this.head.config;
    if (c.hiddenSize !== model.config.hiddenSize) {
      throw codedError('E_ARG', `eagle: the head has hidden size ${c.hiddenSize} but the target has ${model.config.hiddenSize}`);
    }
    if (c.vocabSize !== model.config.vocabSize) {
      throw codedError('E_ARG', `eagle: the head was made for a vocabulary of ${c.vocabSize} but the target has ${model.config.vocabSize}`);
    }
    if (this.head.device !== model.device) throw codedError('E_ARG', `eagle: the head is on ${this.head.device} but the target is on ${model.device}`);
    if (!model.sharedWeights) throw codedError('E_UNSUPPORTED', 'eagle: the target does not share its embedding table and LM head (CausalLM.sharedWeights)');
    const w = model.sharedWeights();
    const V = model.config.vocabSize;
    for (const [name, t] of [['embedding table', w.embedTokens], ['LM head', w.lmHead]] as const) {
      if (t.shape.length !== 2 || t.shape[0] !== V || t.shape[1] !== c.hiddenSize) {
        throw codedError('E_ARG', `eagle: the target's ${name} is [${t.shape}], expected [${V}, ${c.hiddenSize}]`);
      }
    }
    this.releaseWeights();
    this.embed = w.embedTokens;
    this.lmHead = w.lmHead;
    this.target = model;
    if (!this.cache) {
      // As many tokens as the target's cache holds (when it says), plus room for the forks of a step.
      const info = (model as { kvInfo?: () => { pageSize: number; totalPages: number } }).kvInfo?.();
      const tokens = info ? info.pageSize * info.totalPages : 4 * model.config.maxPositions;
      const numPages = Math.ceil(tokens / this.pageSize) + 8 * (this.topK * (this.depth + 1) + 8);
      this.cache = new KvCache({
        numLayers: c.numLayers,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        pageSize: this.pageSize,
        numPages,
        dtype: (model.device === 'cpu' ? 'f32' : 'bf16') as KvDType,
        device: model.device,
      });
    }
  }

  private need(): { cache: KvCache; embed: Tensor; lmHead: Tensor } {
    if (!this.cache || !this.embed || !this.lmHead) throw codedError('E_ARG', 'eagle: not attached to a target (attach() first)');
    return { cache: this.cache, embed: this.embed, lmHead: this.lmHead };
  }

  private state(s: SpecSequence): EagleState {
    let st = this.states.get(s.key);
    if (!st) {
      st = { seq: this.need().cache.addSequence(), cached: 0, base: 0, features: [], waiting: 0, plainRun: 0, drafted: false };
      this.states.set(s.key, st);
    }
    return st;
  }

  /** Rows of the features of positions [from, from + rows.length) join the sequence's waiting ones. */
  private addFeatures(st: EagleState, from: number, parts: { tensor: Tensor; row: number }[]): void {
    if (from > st.cached + st.waiting) {
      // A gap (features the target never returned): start the draft's cache over at `from`.
      this.need().cache.truncate(st.seq, 0);
      dropFeatures(st);
      st.cached = st.base = from;
    } else if (from < st.cached + st.waiting) {
      // Rows already known (a catch-up over them): keep the newest only.
      parts = parts.slice(st.cached + st.waiting - from);
      if (parts.length === 0) return;
    }
    st.features.push(gatherRows(parts, this.head.config.hiddenSize, this.head.device));
    st.waiting += parts.length;
  }

  async prefill(seqs: readonly SpecSequence[], output: ForwardOutput, lastRows: Int32Array, ctx: ProposeContext = {}): Promise<void> {
    if (!output.hidden) throw codedError('E_ARG', 'eagle: the forward returned no hidden states');
    const hidden = output.hidden;
    seqs.forEach((s, b) => {
      const st = this.state(s);
      const first = output.indptr[b] as number;
      const last = lastRows[b] as number;
      // Row `last` is the target's output at position committed - 1; the rows before it precede it.
      const from = s.committed - 1 - (last - first);
      const parts: { tensor: Tensor; row: number }[] = [];
      for (let r = first; r <= last; r++) parts.push({ tensor: hidden, row: r });
      this.addFeatures(st, from, parts);
    });
    if (this.sized && this.target && !isSampling(ctx.sampling)) await forwardCost(this.target);
  }

  /** Feeds each sequence's waiting rows (real features) to the draft and commits them; returns h of each last row. */
  private catchUp(seqs: readonly SpecSequence[], sts: readonly EagleState[]): Tensor {
    const { cache, embed } = this.need();
    const H = this.head.config.hiddenSize;
    const counts = sts.map((st, b) => {
      const n = st.waiting;
      const s = seqs[b] as SpecSequence;
      if (n === 0 || st.cached + n !== s.committed) {
        throw codedError('E_INTERNAL', `eagle: sequence ${s.key} has features through ${st.cached + n} but ${s.committed} committed tokens`);
      }
      return n;
    });
    const tokens = new Int32Array(counts.reduce((a, n) => a + n, 0));
    const positions = new Int32Array(tokens.length);
    const parts: { tensor: Tensor; row: number }[] = [];
    let i = 0;
    sts.forEach((st, b) => {
      const s = seqs[b] as SpecSequence;
      let j = st.cached;
      for (const chunk of st.features) {
        for (let r = 0; r < (chunk.shape[0] as number); r++, i++, j++) {
          tokens[i] = s.history[j + 1] as number;
          positions[i] = j;
          parts.push({ tensor: chunk, row: r });
        }
      }
    });
    const feats = gatherRows(parts, H, this.head.device);
    const seqIds = sts.map((st) => st.seq);
    const batch = cache.plan(seqIds, counts);
    let h: Tensor | undefined;
    try {
      h = this.head.forward(embed, cache, batch, tokens, feats, positions);
      cache.commit(batch, seqIds, counts.map((n) => Int32Array.from({ length: n }, (_, r) => r)));
    } catch (e) {
      h?.dispose();
      throw e;
    } finally {
      feats.dispose();
      batch.dispose();
    }
    let end = 0;
    const lastRows = counts.map((n) => (end += n) - 1);
    sts.forEach((st, b) => {
      st.cached += counts[b] as number;
      dropFeatures(st);
    });
    try {
      return gatherRows(lastRows.map((row) => ({ tensor: h as Tensor, row })), H, this.head.device);
    } finally {
      h.dispose();
    }
  }

  /** Top-k children (log-probabilities) of each row of h: the target's LM head, softmax, top-k. */
  private children(h: Tensor): { ids: Int32Array; logp: Float32Array } {
    const { lmHead } = this.need();
    const logits = matmul(h, lmHead);
    try {
      const probs = processLogits(logits, { temperature: 1 });
      try {
        const k = Math.min(this.topK, this.head.config.vocabSize);
        const top = topK(probs, k);
        try {
          const p = top.values.toFloat32();
          const logp = new Float32Array(p.length);
          for (let i = 0; i < p.length; i++) logp[i] = Math.log(p[i] as number);
          return { ids: top.ids.toInt32(), logp };
        } finally {
          top.values.dispose();
          top.ids.dispose();
        }
      } finally {
        probs.dispose();
      }
    } finally {
      logits.dispose();
    }
  }

  propose(seqs: readonly SpecSequence[], ctx: ProposeContext = {}): ProposalBatch {
    const cost = sizingCost(this.sized, this.target, ctx);
    const drafting: number[] = [];
    const proposals: Proposal[] = seqs.map((s, b) => {
      const st = this.state(s);
      const root = s.history[s.history.length - 1] as number;
      // Sized: draft after a step that chose a tree, and as a probe after plainRun plain steps.
      const due = cost === undefined || st.plainRun === 0 || st.plainRun >= this.probeAfter;
      st.drafted = s.maxDepth > 0 && st.waiting > 0 && st.cached + st.waiting === s.committed && due;
      if (st.drafted) drafting.push(b);
      return loneRoot(root);
    });
    if (drafting.length === 0) return { proposals };
    let plan = cost ? this.plan(cost, seqs.length) : { levels: this.depth, width: this.topK };
    // A probe (plainRun steps after the plan chose plain) proposes at least the root's top child, so
    // that the rates see a trial and the choice can come back when the text gets easier.
    const probing = cost !== undefined && drafting.some((b) => this.state(seqs[b] as SpecSequence).plainRun >= this.probeAfter);
    if (plan.levels < 0 && probing) plan = { levels: 0, width: 1 };
    if (plan.levels < 0) {
      // Sized: no tree pays now; the sequences count it as a step that drafted and chose plain.
      return { proposals };
    }
    const t0 = performance.now();
    const draftSeqs = drafting.map((b) => seqs[b] as SpecSequence);
    const { trees, rows } = this.draftTrees(draftSeqs, plan.levels, plan.width, cost ? stepCost(cost, seqs.length) : undefined, probing);
    drafting.forEach((b, i) => {
      const tree = trees[i] as TokenTree;
      proposals[b] = tree;
      this.proposedDepth.set((seqs[b] as SpecSequence).key, treeDepth(tree.parents));
    });
    this.rowSeconds.add((performance.now() - t0) / 1000 / Math.max(1, rows));
    return { proposals };
  }

  /**
   * Sized mode: the tree depth with the most expected tokens per second under the target's cost
   * curve, the online rates and the draft's measured cost per row (levels = depth - 1 expansions;
   * -1: plain), and the expansion width: the widest (up to topK) whose extra rows per level cost at
   * most a tenth of a plain step (wide on a GPU, where a draft row is cheap beside the target's
   * forward; a chain of top-1 expansions on a CPU, where each row pays for a full LM head row).
   */
  private plan(cost: ForwardCost, batch: number): { levels: number; width: number } {
    const row = this.rowSeconds.value();
    const plainStep = stepCost(cost, batch)(1);
    let width = 1;
    while (width * 2 <= this.topK && row * width * 2 <= 0.1 * plainStep) width *= 2;
    if (row * this.topK <= 0.1 * plainStep) width = this.topK;
    // A tree of depth k: 1 + (k - 1) * width draft rows (the root's, then each expansion), k + 1 nodes at least.
    const step = stepCost(cost, batch, (n) => (n > 1 ? row * (1 + (n - 2) * width) : 0));
    const k = chooseChainLength((i) => this.rates.rate(i), this.depth + 1, step).size;
    return { levels: k - 1, width };
  }

  /**
   * EAGLE-2's expansion for these sequences (`levels` times, the `width` most probable newest nodes
   * each), then each one's best subtree; `rows`: draft rows computed (catch-up and tree).
   */
  private draftTrees(seqs: readonly SpecSequence[], levels: number, width: number, cost: ((nodes: number) => number) | undefined, probe = false): { trees: TokenTree[]; rows: number } {
    const { cache, embed } = this.need();
    const H = this.head.config.hiddenSize;
    const sts = seqs.map((s) => this.state(s));
    const forks: number[] = [];
    const pools: Node[][] = seqs.map(() => []);
    let hRoot: Tensor | undefined;
    let hLevel: Tensor | undefined;
    let rowCount = 0;
    try {
      rowCount += sts.reduce((a, st) => a + st.waiting, 0);
      hRoot = this.catchUp(seqs, sts);
      // Level 1: the root's children.
      const first = this.children(hRoot);
      const k1 = first.ids.length / seqs.length;
      seqs.forEach((_, b) => {
        for (let r = 0; r < k1; r++) pools[b]?.push({ token: first.ids[b * k1 + r] as number, parent: -1, level: 1, logProb: first.logp[b * k1 + r] as number });
      });
      // Each sequence's frontier: pool indices of the nodes to expand, their parents' draft sequence and h row.
      type Open = { node: number; parentSeq: number; hTensor: Tensor; hRow: number };
      let open: Open[][] = seqs.map((_, b) => {
        const st = sts[b] as EagleState;
        return Array.from({ length: k1 }, (_, r) => ({ node: r, parentSeq: st.seq, hTensor: hRoot as Tensor, hRow: b }));
      });
      const depth = Math.min(levels, ...seqs.map((s) => s.maxDepth - 1));
      for (let level = 1; level <= depth; level++) {
        // Expand the best topK nodes of the newest level (all of level 1).
        const rows: { b: number; open: Open }[] = [];
        seqs.forEach((_, b) => {
          const pool = pools[b] as Node[];
          const best = (open[b] as Open[]).slice().sort((x, y) => (pool[y.node] as Node).logProb - (pool[x.node] as Node).logProb || x.node - y.node);
          for (const o of best.slice(0, width)) rows.push({ b, open: o });
        });
        if (rows.length === 0) break;
        rowCount += rows.length;
        const seqIds = rows.map((r) => {
          const f = cache.fork(r.open.parentSeq);
          forks.push(f);
          return f;
        });
        const tokens = Int32Array.from(rows, (r) => (pools[r.b] as Node[])[r.open.node]?.token as number);
        const positions = Int32Array.from(rows, (r) => (seqs[r.b] as SpecSequence).committed - 1 + level);
        const feats = gatherRows(rows.map((r) => ({ tensor: r.open.hTensor, row: r.open.hRow })), H, this.head.device);
        const ones = rows.map(() => 1);
        const batch = cache.plan(seqIds, ones);
        let h: Tensor;
        try {
          h = this.head.forward(embed, cache, batch, tokens, feats, positions);
          cache.commit(batch, seqIds, rows.map(() => Int32Array.of(0)));
        } finally {
          feats.dispose();
          batch.dispose();
        }
        hLevel?.dispose();
        hLevel = h;
        const kids = this.children(h);
        const k = kids.ids.length / rows.length;
        const next: Open[][] = seqs.map(() => []);
        rows.forEach((r, i) => {
          const pool = pools[r.b] as Node[];
          const parent = pool[r.open.node] as Node;
          for (let j = 0; j < k; j++) {
            pool.push({ token: kids.ids[i * k + j] as number, parent: r.open.node, level: level + 1, logProb: parent.logProb + (kids.logp[i * k + j] as number) });
            (next[r.b] as Open[]).push({ node: pool.length - 1, parentSeq: seqIds[i] as number, hTensor: h, hRow: i });
          }
        });
        open = next;
      }
    } finally {
      for (const f of forks) cache.free(f);
      hRoot?.dispose();
      hLevel?.dispose();
    }
    return { trees: seqs.map((s, b) => this.pickTree(s, pools[b] as Node[], cost, probe)), rows: rowCount };
  }

  /** The best prefix-closed subtree of a pool (root + pool nodes) under the cost curve, or the maxNodes most probable. */
  private pickTree(s: SpecSequence, pool: readonly Node[], cost: ((nodes: number) => number) | undefined, probe = false): TokenTree {
    const root = s.history[s.history.length - 1] as number;
    const n = pool.length + 1;
    const parents = new Int32Array(n);
    const tokens = new Int32Array(n);
    const prob = new Float64Array(n);
    parents[0] = -1;
    tokens[0] = root;
    prob[0] = 1;
    pool.forEach((node, i) => {
      parents[i + 1] = node.parent + 1;
      tokens[i + 1] = node.token;
      prob[i + 1] = node.level <= s.maxDepth ? Math.exp(node.logProb) : 0;
    });
    const choice = chooseSubtree(parents, prob, cost ?? (() => 1), { maxNodes: Math.min(n, this.maxNodes + 1) });
    // A probe proposes the root's most probable child at least (pool node 0: top-k is descending).
    const keep = probe && choice.keep.length === 1 && n > 1 && s.maxDepth > 0 ? Int32Array.of(0, 1) : choice.keep;
    return selectNodes({ tokens, parents }, keep);
  }

  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext = {}): void {
    const hidden = report.output.hidden;
    if (!hidden) throw codedError('E_ARG', 'eagle: the forward returned no hidden states');
    const sized = sizingCost(this.sized, this.target, ctx) !== undefined;
    seqs.forEach((s, b) => {
      const st = this.state(s);
      const acc = report.acceptedNodes[b] as Int32Array;
      const base = report.output.indptr[b] as number;
      const proposed = (report.proposals[b] as Proposal).tokens.length - 1;
      // The accepted nodes (root first) sat at positions committed - acc.length .. committed - 1.
      this.addFeatures(st, s.committed - acc.length, Array.from(acc, (node) => ({ tensor: hidden, row: base + node })));
      const depth = this.proposedDepth.get(s.key) ?? 0;
      this.proposedDepth.delete(s.key);
      if (sized) for (let d = 0; d < depth; d++) {
        this.rates.record(d, d < acc.length - 1 ? 0 : -1);
        if (d >= acc.length - 1) break;
      }
      let tr = this.trace.get(s.key);
      if (!tr) this.trace.set(s.key, (tr = []));
      tr.push({ proposed, accepted: acc.length - 1 });
      if (sized && st.drafted) {
        // The next step drafts again only if this one chose a tree; a probe that chose none backs off.
        if (proposed > 0) this.probeAfter = PROBE_AFTER_PLAIN_STEPS;
        else if (st.plainRun >= this.probeAfter) this.probeAfter = backedOffProbeInterval(this.probeAfter);
        st.plainRun = proposed > 0 ? 0 : 1;
      } else if (sized) {
        st.plainRun++;
      }
      st.drafted = false;
    });
  }

  rewind(seq: SpecSequence): void {
    const st = this.states.get(seq.key);
    if (!st) return;
    const c = seq.committed;
    if (st.cached > c) {
      // Draft rows j >= c read tokens past the kept history.
      if (c >= st.base) this.need().cache.truncate(st.seq, c - st.base);
      else {
        this.need().cache.truncate(st.seq, 0);
        st.base = c;
      }
      st.cached = c;
      dropFeatures(st);
    } else if (st.cached + st.waiting > c) {
      // Keep the features of positions < c (f[j] depends on tokens <= j only).
      const parts: { tensor: Tensor; row: number }[] = [];
      for (const chunk of st.features) for (let r = 0; r < (chunk.shape[0] as number) && st.cached + parts.length < c; r++) parts.push({ tensor: chunk, row: r });
      const kept = parts.length > 0 ? gatherRows(parts, this.head.config.hiddenSize, this.head.device) : undefined;
      dropFeatures(st);
      if (kept) {
        st.features.push(kept);
        st.waiting = parts.length;
      }
    }
  }

  release(seq: SpecSequence): void {
    const st = this.states.get(seq.key);
    if (!st) return;
    dropFeatures(st);
    if (this.cache && !this.cache.disposed) this.cache.free(st.seq);
    this.states.delete(seq.key);
  }

  private releaseWeights(): void {
    this.embed?.dispose();
    this.lmHead?.dispose();
    this.embed = this.lmHead = undefined;
  }

  /** Frees the draft's cache and state; the head belongs to the caller (dispose it separately). */
  dispose(): void {
    for (const st of this.states.values()) dropFeatures(st);
    this.states.clear();
    this.cache?.dispose();
    this.cache = undefined;
    this.releaseWeights();
  }
}

function dropFeatures(st: EagleState): void {
  for (const t of st.features) t.dispose();
  st.features = [];
  st.waiting = 0;
}

/** Depth of a tree (root 0). */
function treeDepth(parents: Int32Array): number {
  const d = new Int32Array(parents.length);
  let most = 0;
  for (let i = 1; i < parents.length; i++) {
    d[i] = (d[parents[i] as number] as number) + 1;
    most = Math.max(most, d[i] as number);
  }
  return most;
}
