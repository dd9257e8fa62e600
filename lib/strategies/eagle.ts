// EAGLE heads: a one-layer draft that reads the target's own features. EAGLE-1/2: draft row j
// takes the embedding of token t[j+1] and the target's final hidden state f[j] (after its last norm),
// x = fc([embed(t[j+1]); f[j]]), runs Llama decoder layers (layer 0 without its input norm) and
// returns h[j], its guess of f[j+1]; the TARGET's LM head on h[j] (no norm) gives the draft
// distribution of t[j+2]. EAGLE-3: f[j] is the residual stream entering three target layers (2,
// L/2, L - 3), x = fc([f2; f_mid; f_last]); the one layer ("midlayer") attends over
// [input_layernorm(embed); hidden_norm(x)] (q/k/v 2H wide), and its own norm and LM head give logits
// over a draft vocabulary that d2t maps to target ids. Deeper guesses feed h back instead of f (in
// place of fc's output for EAGLE-3). Reference: SafeAILab/EAGLE, eagle/model/cnets1.py (EAGLE-1/2),
// cnets.py (EAGLE-3) and modeling_llama_kv.py (which layers).
//
// The tree is EAGLE-2's dynamic one: the root's top-k children, then `depth` times the `width` most
// probable nodes of the newest level (by cumulative draft log-probability) are expanded, each into
// its top-k children; from all the nodes made, the best prefix-closed subtree is proposed -- at most
// `totalTokens` nodes, and, unless fixed by the caller, as many as the target's measured cost curve
// says pay (tree_sizing.chooseSubtree, with the draft's probabilities as the acceptance estimates,
// which is EAGLE-2's premise, calibrated online against what was accepted). Sized, the depth comes
// from the online rates and the measured cost of the draft's calls, and the expansion is wide only
// where the target verifies a wider tree nearly for free (a GPU; top-1 chains on a CPU); plain runs
// go to native chains between probes. Greedy output equals plain decoding; when sampling, the tree is
// deterministic (one-hot drafts) and verified by exact tree rejection: lossless either way.
//
// Checkpoints: a directory with config.json (a Llama config: hidden_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads, intermediate_size, rms_norm_eps, rope_theta,
// rope_scaling; EAGLE-1/2: `bias` (fc has a bias, default true), `qkv_bias`; EAGLE-3:
// draft_vocab_size, target_hidden_size, eagle_config.eagle_aux_hidden_state_layer_ids) and
// model.safetensors (an optional "model." prefix). EAGLE-1/2: fc.weight [H, 2H] (+ fc.bias),
// layers.{i}.self_attn.{q,k,v,o}_proj.weight, layers.{i}.input_layernorm.weight (i > 0),
// layers.{i}.post_attention_layernorm.weight, layers.{i}.mlp.{gate,up,down}_proj.weight. EAGLE-3:
// fc.weight [H, 3 Ht], midlayer.{hidden_norm,input_layernorm,post_attention_layernorm}.weight,
// midlayer.self_attn.{q,k,v}_proj.weight [*, 2H], midlayer.self_attn.o_proj.weight,
// midlayer.mlp.*, norm.weight, lm_head.weight [Vd, H], d2t (I64 [Vd]: target id = d + d2t[d]),
// embed_tokens.weight when it has its own. The target's embedding table and LM head come from
// CausalLM.sharedWeights.
//
// The draft's KV cache is its own (lib/kv.ts). Rows with real target features are committed there;
// a tree level runs as one batch of single-token forks of its parents' draft sequences
// (copy-on-write pages), so every node attends to exactly its ancestors, as EAGLE's tree mask does;
// the forks are freed after the step. The draft layers run as one native call (cpp/model/eagle.cc)
// where the addon has it, else composed op by op here (composedForward: the same bits).
import { optionsArg, pathArg } from '../errors';
import * as fs from 'fs';
import * as path from 'path';

import { resolveDevice } from '../backend';
import { forwardCostIfRoom } from '../cost_model';
import { KvCache, treeAttention, kvAppend, type KvDType, type PagedBatch } from '../kv';
import { addInplace, embedding, matmul, rmsnorm, rope, siluMul } from '../layers';
import type { CausalLM, ForwardOutput } from '../models/causal_lm';
import { parseLlamaConfig, toNativeConfig } from '../models/config';
import { native } from '../native';
import { openWeightsFile } from '../torch_checkpoint';
import { nativePenalties, penalize, processLogits, topK, type HistoryPenalties, type LogitBias, type PenaltyHistory, type ResolvedPenalties } from '../sampling';
import { gatherRows } from '../step_helpers';
import { asTensor, Tensor, type Device } from '../tensor';
import { loneRoot, type TokenTree } from '../tree';
import { backedOffProbeInterval, chooseChainLength, chooseSubtree, ConfidenceCalibration, PROBE_AFTER_PLAIN_STEPS, RankRates, RowsCost, selectNodes, sizingCost, stepCost } from '../tree_sizing';
import type { ForwardCost } from '../cost_model';
import { KEPT_TRACES } from './draft_model';
import { codedError, type Proposal, type ProposalBatch, type ProposeContext, type SpecSequence, type Speculator, type StepReport } from './speculator';

export interface EagleHeadConfig {
  /** 1: EAGLE-1/2 (fc over [embedding; final hidden state], the target's LM head); 3: EAGLE-3. */
  readonly version: 1 | 3;
  /** The draft's hidden size (EAGLE-1/2: the target's). */
  readonly hiddenSize: number;
  /** The target's hidden size the features have (EAGLE-3's target_hidden_size; else hiddenSize). */
  readonly targetHiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly rmsNormEps: number;
  /** config.json's vocab_size (checked against the target's). */
  readonly vocabSize: number;
  /** EAGLE-3: the draft's own LM head's vocabulary (draft_vocab_size; d2t maps it to target ids). */
  readonly draftVocabSize: number;
  /** EAGLE-3: the target layers whose inputs are the features, if config.json names them (else 2, L/2, L - 3). */
  readonly auxLayers: readonly number[] | undefined;
  readonly fcBias: boolean;
  readonly qkvBias: boolean;
}

interface LayerWeights {
  readonly inNorm: Tensor | undefined;
  /** EAGLE-3: q/k/v's columns that read the normed embedding (q/k/v) and the normed hidden state (qH/kH/vH). */
  readonly q: Tensor;
  readonly k: Tensor;
  readonly v: Tensor;
  readonly qH: Tensor | undefined;
  readonly kH: Tensor | undefined;
  readonly vH: Tensor | undefined;
  readonly hiddenNorm: Tensor | undefined;
  readonly qb: Tensor | undefined;
  readonly kb: Tensor | undefined;
  readonly vb: Tensor | undefined;
  readonly o: Tensor;
  readonly postNorm: Tensor;
  readonly gate: Tensor;
  readonly up: Tensor;
  readonly down: Tensor;
}

interface HeadWeights {
  /** EAGLE-1/2: fc's columns that read the embedding (fc.weight[:, :H]); EAGLE-3: none. */
  readonly fcEmbed: Tensor | undefined;
  /** fc's column blocks that read the features: one (EAGLE-1/2: fc.weight[:, H:]) or three (EAGLE-3). */
  readonly fcFeature: readonly Tensor[];
  readonly fcBias: Tensor | undefined;
  readonly layers: readonly LayerWeights[];
  readonly invFreq: Tensor;
  /** EAGLE-3: the final norm, its own LM head, its own embedding table (when stored), d2t as target ids. */
  readonly norm: Tensor | undefined;
  readonly lmHead: Tensor | undefined;
  readonly embed: Tensor | undefined;
  readonly draftToTarget: Int32Array | undefined;
}

/** The column blocks of a host [rows, cols] weight as separate tensors on `device` (dtype kept). */
function splitColumns(w: Tensor, widths: readonly number[], device: Device): Tensor[] {
  const [rows, cols] = w.shape as [number, number];
  const all = w.toFloat32();
  const out: Tensor[] = [];
  try {
    let at = 0;
    for (const width of widths) {
      const part = new Float32Array(rows * width);
      for (let r = 0; r < rows; r++) part.set(all.subarray(r * cols + at, r * cols + at + width), r * width);
      out.push(Tensor.fromArray(part, w.dtype, [rows, width], device));
      at += width;
    }
    return out;
  } catch (e) {
    for (const t of out) t.dispose();
    throw e;
  }
}

/** Loaded EAGLE-1/2 or EAGLE-3 head weights (on one device). */
export class EagleHead {
  private disposed = false;
  /** The weights as one native handle (eagleForward), made at the first forward. */
  private nativeWeights: SpecdecNative.NativeEagleWeights | undefined;

  private constructor(
    readonly config: EagleHeadConfig,
    readonly device: Device,
    private readonly w: HeadWeights,
  ) {}

  /**
   * Loads an EAGLE-1/2 or EAGLE-3 directory (SafeAILab's layouts); E_IO / E_FORMAT / E_UNSUPPORTED
   * naming the file and the problem.
   */
  static load(dir: string, opts: { device?: Device | 'auto' } = {}): EagleHead {
    pathArg(dir, 'EagleHead.load: dir');
    optionsArg(opts, 'EagleHead.load options', true);
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
    // EAGLE configs are Llama configs under their own architecture names (LlamaForCausalLMEagle3), or none.
    const archs = json['architectures'];
    const known = Array.isArray(archs) && archs.some((a) => a === 'LlamaForCausalLM' || a === 'Qwen2ForCausalLM' || a === 'MistralForCausalLM');
    const c = parseLlamaConfig(known ? json : { ...json, architectures: ['LlamaForCausalLM'] }, cfgPath);
    const unsupported =
      c.gemma ? 'Gemma layers' : c.postNorms ? 'post-norm layers' : c.qkNorm ? 'q/k norms' : c.fusedProjections ? 'fused projections'
      : c.attentionWindows ? 'sliding windows' : c.ropeLayers ? 'layers without RoPE' : c.ropeDim !== c.headDim ? 'a partial rotation'
      : c.oBias ? 'an o_proj bias' : c.ropeScaling && c.ropeScaling.type !== 'linear' && c.ropeScaling.type !== 'llama3' ? `rope_scaling '${c.ropeScaling.type}'`
      : c.embeddingMultiplier !== undefined || c.residualMultiplier !== undefined || c.logitsScaling !== undefined ? 'Granite multipliers' : undefined;
    if (unsupported) throw codedError('E_UNSUPPORTED', `EAGLE head: ${cfgPath}: ${unsupported} are not supported in an EAGLE head (Llama decoder layers only)`);
    const posInt = (key: string, v: unknown): number => {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw codedError('E_FORMAT', `EAGLE head: ${cfgPath}: '${key}' must be a positive integer, got ${JSON.stringify(v)}`);
      return v;
    };
    const H = c.hiddenSize;
    if (json['bias'] !== undefined && typeof json['bias'] !== 'boolean') throw codedError('E_FORMAT', `EAGLE head: ${cfgPath}: 'bias' must be a boolean`);
    const qkvBias = json['qkv_bias'] === true || c.qkvBias;

    // SafeAILab publishes its heads as pytorch_model.bin (torch.save of a state dict): read in place.
    const f = openWeightsFile(dir, ['model.safetensors', 'pytorch_model.bin'], 'EAGLE head');
    const stPath = f.path;
    const loaded: Tensor[] = [];
    try {
      const names = new Set(f.names());
      const prefix = names.has('fc.weight') ? '' : names.has('model.fc.weight') ? 'model.' : undefined;
      if (prefix === undefined) throw codedError('E_FORMAT', `EAGLE head: ${stPath} has no tensor 'fc.weight' (is this an EAGLE head?)`);
      const v3 = names.has(prefix + 'midlayer.self_attn.q_proj.weight') || json['draft_vocab_size'] !== undefined;
      const has = (name: string): boolean => names.has(prefix + name);
      // Weights that are split into column blocks load on the host (split once, then uploaded).
      const load = (name: string, shape: readonly number[], on: Device = device): Tensor => {
        const full = prefix + name;
        if (!names.has(full)) throw codedError('E_FORMAT', `EAGLE head: ${stPath} has no tensor '${full}'`);
        const got = f.info(full).shape;
        if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
          throw codedError('E_FORMAT', `EAGLE head: ${stPath}: '${full}' has shape [${got}], expected [${shape}]`);
        }
        const t = f.load(full, on);
        loaded.push(t);
        return t;
      };
      const split = (t: Tensor, widths: number[]): Tensor[] => {
        const parts = splitColumns(t, widths, device);
        loaded.push(...parts);
        loaded.splice(loaded.indexOf(t), 1);
        t.dispose();
        return parts;
      };
      const QD = c.numHeads * c.headDim;
      const KD = c.numKvHeads * c.headDim;
      const I = c.intermediateSize;
      const Ht = v3 && json['target_hidden_size'] !== undefined ? posInt('target_hidden_size', json['target_hidden_size']) : H;
      const Vd = v3 && json['draft_vocab_size'] !== undefined ? posInt('draft_vocab_size', json['draft_vocab_size']) : c.vocabSize;
      let auxLayers: number[] | undefined;
      const ec = json['eagle_config'];
      if (v3 && ec !== null && typeof ec === 'object' && (ec as Record<string, unknown>)['eagle_aux_hidden_state_layer_ids'] !== undefined) {
        const ids = (ec as Record<string, unknown>)['eagle_aux_hidden_state_layer_ids'];
        if (!Array.isArray(ids) || ids.length !== 3 || ids.some((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0)) {
          throw codedError('E_FORMAT', `EAGLE head: ${cfgPath}: eagle_config.eagle_aux_hidden_state_layer_ids must be three layer indices, got ${JSON.stringify(ids)}`);
        }
        auxLayers = ids as number[];
      }
      const layer = (p: string, first: boolean): LayerWeights => {
        const inW = v3 ? 2 * H : H;
        const [q, qH] = v3 ? split(load(`${p}self_attn.q_proj.weight`, [QD, inW], 'cpu'), [H, H]) : [load(`${p}self_attn.q_proj.weight`, [QD, H])];
        const [k, kH] = v3 ? split(load(`${p}self_attn.k_proj.weight`, [KD, inW], 'cpu'), [H, H]) : [load(`${p}self_attn.k_proj.weight`, [KD, H])];
        const [v, vH] = v3 ? split(load(`${p}self_attn.v_proj.weight`, [KD, inW], 'cpu'), [H, H]) : [load(`${p}self_attn.v_proj.weight`, [KD, H])];
        return {
          // EAGLE-1/2's layer 0 has no input norm (fc's output goes straight in); a stored one is unused.
          // EAGLE-3's normalizes the embedding with it (and the hidden state with hidden_norm).
          inNorm: first && !v3 ? undefined : load(`${p}input_layernorm.weight`, [H]),
          q: q as Tensor,
          k: k as Tensor,
          v: v as Tensor,
          qH,
          kH,
          vH,
          hiddenNorm: v3 ? load(`${p}hidden_norm.weight`, [H]) : undefined,
          qb: qkvBias ? load(`${p}self_attn.q_proj.bias`, [QD]) : undefined,
          kb: qkvBias ? load(`${p}self_attn.k_proj.bias`, [KD]) : undefined,
          vb: qkvBias ? load(`${p}self_attn.v_proj.bias`, [KD]) : undefined,
          o: load(`${p}self_attn.o_proj.weight`, [H, QD]),
          postNorm: load(`${p}post_attention_layernorm.weight`, [H]),
          gate: load(`${p}mlp.gate_proj.weight`, [I, H]),
          up: load(`${p}mlp.up_proj.weight`, [I, H]),
          down: load(`${p}mlp.down_proj.weight`, [H, I]),
        };
      };
      let weights: Omit<HeadWeights, 'invFreq'>;
      let fcBias = false;
      if (v3) {
        if (c.numLayers !== 1) throw codedError('E_UNSUPPORTED', `EAGLE head: ${cfgPath}: an EAGLE-3 head has one layer (midlayer), config says ${c.numLayers}`);
        const fcFeature = split(load('fc.weight', [H, 3 * Ht], 'cpu'), [Ht, Ht, Ht]);
        let draftToTarget: Int32Array | undefined;
        if (Vd !== c.vocabSize) {
          if (!has('d2t')) throw codedError('E_FORMAT', `EAGLE head: ${stPath} has no tensor '${prefix}d2t' (draft_vocab_size ${Vd} < vocab_size ${c.vocabSize} needs it)`);
          const r = f.raw(prefix + 'd2t');
          if ((r.dtype !== 'I64' && r.dtype !== 'I32') || r.shape.length !== 1 || r.shape[0] !== Vd) {
            throw codedError('E_FORMAT', `EAGLE head: ${stPath}: '${prefix}d2t' is ${r.dtype} [${r.shape}], expected I64 [${Vd}]`);
          }
          const bytes = r.bytes.slice();
          const off = r.dtype === 'I64' ? new BigInt64Array(bytes.buffer, 0, Vd) : new Int32Array(bytes.buffer, 0, Vd);
          draftToTarget = new Int32Array(Vd);
          for (let d = 0; d < Vd; d++) {
            const t = d + Number(off[d]);
            if (!(t >= 0 && t < c.vocabSize)) throw codedError('E_FORMAT', `EAGLE head: ${stPath}: d2t maps draft id ${d} to ${t}, outside the vocabulary of ${c.vocabSize}`);
            draftToTarget[d] = t;
          }
        }
        weights = {
          fcEmbed: undefined,
          fcFeature,
          fcBias: undefined,
          layers: [layer('midlayer.', true)],
          norm: load('norm.weight', [H]),
          lmHead: load('lm_head.weight', [Vd, H]),
          embed: has('embed_tokens.weight') ? load('embed_tokens.weight', [c.vocabSize, H]) : undefined,
          draftToTarget,
        };
      } else {
        fcBias = json['bias'] === undefined ? true : json['bias'] === true;
        const [fcEmbed, fcFeat] = split(load('fc.weight', [H, 2 * H], 'cpu'), [H, H]);
        weights = {
          fcEmbed,
          fcFeature: [fcFeat as Tensor],
          fcBias: fcBias ? load('fc.bias', [H]) : undefined,
          layers: Array.from({ length: c.numLayers }, (_, l) => layer(`layers.${l}.`, l === 0)),
          norm: undefined,
          lmHead: undefined,
          embed: undefined,
          draftToTarget: undefined,
        };
      }
      const ropeInvFreq = native().llamaRopeInvFreq;
      if (!ropeInvFreq) throw codedError('E_UNSUPPORTED', 'the loaded native addon cannot compute rotary frequencies (an older build?): run `npm run build:native`');
      const invFreq = Tensor.fromArray(ropeInvFreq(toNativeConfig(c)), 'f32', undefined, device);
      loaded.push(invFreq);
      const config: EagleHeadConfig = {
        version: v3 ? 3 : 1,
        hiddenSize: H,
        targetHiddenSize: Ht,
        intermediateSize: I,
        numLayers: c.numLayers,
        numHeads: c.numHeads,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        rmsNormEps: c.rmsNormEps,
        vocabSize: c.vocabSize,
        draftVocabSize: Vd,
        auxLayers,
        fcBias,
        qkvBias,
      };
      return new EagleHead(config, device, { ...weights, invFreq });
    } catch (e) {
      for (const t of loaded) t.dispose();
      throw e;
    } finally {
      f.close();
    }
  }

  /** EAGLE-3: the head's own embedding table, when its checkpoint stores one. */
  get ownEmbedding(): Tensor | undefined {
    return this.w.embed;
  }

  /**
   * The draft layers over one planned batch of `cache`: tokens i32 [N] at `positions`, causal among
   * each sequence's new rows; the K/V of the rows are written at their slots (the caller commits them
   * or not). `features`: the rows' feature blocks f32 [N, targetHidden] (from the target: one for
   * EAGLE-1/2, three for EAGLE-3) or, with fromTarget false, the draft's own h [N, hidden] for
   * deeper rows. Returns h f32 [N, hidden], the layers' output before any norm.
   */
  forward(embed: Tensor, cache: KvCache, batch: PagedBatch, tokens: Int32Array, features: readonly Tensor[], positions: Int32Array, fromTarget = true): Tensor {
    if (this.disposed) throw codedError('E_DISPOSED', 'EAGLE head was disposed');
    const b = native();
    if (!b.eagleForward || !b.eagleWeights) return this.composedForward(embed, cache, batch, tokens, features, positions, fromTarget);
    this.nativeWeights ??= b.eagleWeights(this.nativeSpec());
    const layers = this.w.layers.map((_, l) => cache.layer(l));
    try {
      return asTensor(b.eagleForward(this.nativeWeights, embed, layers, batch, tokens, positions, [...features], fromTarget));
    } finally {
      for (const t of layers) t.dispose();
    }
  }

  /** The weights as eagleWeights takes them. */
  private nativeSpec(): SpecdecNative.NativeEagleSpec {
    const c = this.config;
    const w = this.w;
    const opt = <K extends string>(key: K, t: Tensor | undefined): { [P in K]?: Tensor } => (t ? ({ [key]: t } as { [P in K]?: Tensor }) : {});
    return {
      version: c.version === 3 ? 3 : 1,
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      eps: c.rmsNormEps,
      ...opt('embed', w.embed),
      ...opt('fcEmbed', w.fcEmbed),
      fcFeature: w.fcFeature,
      ...opt('fcBias', w.fcBias),
      invFreq: w.invFreq,
      layers: w.layers.map((L) => ({
        ...opt('inNorm', L.inNorm),
        ...opt('hiddenNorm', L.hiddenNorm),
        q: L.q,
        k: L.k,
        v: L.v,
        ...opt('qH', L.qH),
        ...opt('kH', L.kH),
        ...opt('vH', L.vH),
        ...opt('qb', L.qb),
        ...opt('kb', L.kb),
        ...opt('vb', L.vb),
        o: L.o,
        postNorm: L.postNorm,
        gate: L.gate,
        up: L.up,
        down: L.down,
      })),
      ...opt('norm', w.norm),
      ...opt('lmHead', w.lmHead),
      ...(w.draftToTarget ? { draftToTarget: w.draftToTarget } : {}),
    };
  }

  /**
   * The catch-up over the target's features in one native call (eagleCatchUp, cpp/model/eagle.h):
   * rows of `tokens` at `positions` (counts per draft sequence), row i's feature block k being
   * parts[k][i]; every row committed; returns each sequence's last h row. Undefined where the build
   * lacks it.
   */
  catchUp(embed: Tensor, cache: KvCache, seqs: readonly number[], counts: readonly number[], tokens: Int32Array, positions: Int32Array, parts: readonly (readonly { tensor: Tensor; row: number }[])[]): Tensor | undefined {
    if (this.disposed) throw codedError('E_DISPOSED', 'EAGLE head was disposed');
    const b = native();
    if (!b.eagleCatchUp || !b.eagleWeights) return undefined;
    this.nativeWeights ??= b.eagleWeights(this.nativeSpec());
    const rows = Int32Array.from(parts[0] ?? [], (p) => p.row);
    const feats = parts.map((p) => p.map((x) => x.tensor));
    return asTensor(b.eagleCatchUp(this.nativeWeights, embed, cache.nativeCache, Int32Array.from(seqs), Int32Array.from(counts), tokens, positions, feats, rows, this.config.targetHiddenSize));
  }

  /**
   * EAGLE-2's tree expansion in one native call (eagleExpand, cpp/model/eagle.h): what
   * EagleSpeculator's level loop does op by op, with the same pools; undefined where the build lacks it.
   */
  expand(
    embed: Tensor,
    targetLmHead: Tensor,
    cache: KvCache,
    hRoot: Tensor,
    seqs: { draftSeqs: Int32Array; positions: Int32Array; maxLevels: Int32Array },
    levels: number,
    width: number,
    topK: number,
    penalties?: SpecdecNative.NativeChainPenalties,
  ): SpecdecNative.NativeEagleExpansion | undefined {
    if (this.disposed) throw codedError('E_DISPOSED', 'EAGLE head was disposed');
    const b = native();
    if (!b.eagleExpand || !b.eagleWeights) return undefined;
    this.nativeWeights ??= b.eagleWeights(this.nativeSpec());
    const lmHead = this.config.version === 1 ? targetLmHead : null;
    return penalties
      ? b.eagleExpand(this.nativeWeights, embed, lmHead, cache.nativeCache, hRoot, seqs.draftSeqs, seqs.positions, seqs.maxLevels, levels, width, topK, penalties)
      : b.eagleExpand(this.nativeWeights, embed, lmHead, cache.nativeCache, hRoot, seqs.draftSeqs, seqs.positions, seqs.maxLevels, levels, width, topK);
  }

  /**
   * forward() composed op by op from JavaScript: what the native eagleForward does in one call
   * (tests check the two agree bit for bit), and the path of a build without it.
   */
  composedForward(embed: Tensor, cache: KvCache, batch: PagedBatch, tokens: Int32Array, features: readonly Tensor[], positions: Int32Array, fromTarget = true): Tensor {
    if (this.disposed) throw codedError('E_DISPOSED', 'EAGLE head was disposed');
    const c = this.config;
    const w = this.w;
    const N = tokens.length;
    const H = c.hiddenSize;
    const dev = this.device;
    const temps: Tensor[] = [];
    const t = <T extends Tensor>(x: T): T => {
      temps.push(x);
      return x;
    };
    const sum = (parts: Tensor[]): Tensor => {
      const [first, ...rest] = parts as [Tensor, ...Tensor[]];
      for (const p of rest) addInplace(first, t(p));
      return first;
    };
    let x: Tensor | undefined;
    try {
      const ids = t(Tensor.fromArray(tokens, 'i32', [N], dev));
      const pos = t(Tensor.fromArray(positions, 'i32', [N], dev));
      const e = t(embedding(w.embed ?? embed, ids));
      if (c.version === 1) {
        // x = fc([e; f]) as its two column blocks.
        x = sum([matmul(e, w.fcEmbed as Tensor), matmul(features[0] as Tensor, w.fcFeature[0] as Tensor, w.fcBias)]);
      } else if (fromTarget) {
        if (features.length !== 3) throw codedError('E_ARG', `EAGLE-3 head: ${features.length} feature blocks, expected 3`);
        x = sum(features.map((fk, k) => matmul(fk, w.fcFeature[k] as Tensor)));
      } else {
        x = gatherRows(Array.from({ length: N }, (_, row) => ({ tensor: features[0] as Tensor, row })), H, dev);
      }
      const scale = 1 / Math.sqrt(c.headDim);
      for (let l = 0; l < w.layers.length; l++) {
        const L = w.layers[l] as LayerWeights;
        let q: Tensor, k: Tensor, v: Tensor;
        if (c.version === 3) {
          // EAGLE-3's midlayer: attention over [input_layernorm(e); hidden_norm(x)], as column blocks.
          const en = t(rmsnorm(e, L.inNorm as Tensor, c.rmsNormEps));
          const hn = t(rmsnorm(x, L.hiddenNorm as Tensor, c.rmsNormEps));
          q = t(sum([matmul(en, L.q, L.qb), matmul(hn, L.qH as Tensor)]));
          k = t(sum([matmul(en, L.k, L.kb), matmul(hn, L.kH as Tensor)]));
          v = t(sum([matmul(en, L.v, L.vb), matmul(hn, L.vH as Tensor)]));
        } else {
          const h = L.inNorm ? t(rmsnorm(x, L.inNorm, c.rmsNormEps)) : x;
          q = t(matmul(h, L.q, L.qb));
          k = t(matmul(h, L.k, L.kb));
          v = t(matmul(h, L.v, L.vb));
        }
        const q3 = t(q.view([N, c.numHeads, c.headDim]));
        const k3 = t(k.view([N, c.numKvHeads, c.headDim]));
        const v3 = t(v.view([N, c.numKvHeads, c.headDim]));
        rope(q3, pos, w.invFreq);
        rope(k3, pos, w.invFreq);
        const layer = t(cache.layer(l));
        kvAppend(layer, k3, v3, batch);
        const att = t(t(treeAttention(q3, layer, batch, undefined, scale)).view([N, c.numHeads * c.headDim]));
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

  /**
   * Draft logits of h f32 [N, hidden]: EAGLE-1/2 the target's LM head on h (no norm), EAGLE-3 its own
   * LM head on norm(h), over the draft vocabulary (ids mapped by toTargetIds).
   */
  logits(h: Tensor, targetLmHead: Tensor): Tensor {
    if (this.disposed) throw codedError('E_DISPOSED', 'EAGLE head was disposed');
    if (this.config.version === 1) return matmul(h, targetLmHead);
    const n = rmsnorm(h, this.w.norm as Tensor, this.config.rmsNormEps);
    try {
      return matmul(n, this.w.lmHead as Tensor);
    } finally {
      n.dispose();
    }
  }

  /** Draft-vocabulary ids as target ids, in place (EAGLE-3's d2t; the identity otherwise). */
  toTargetIds(ids: Int32Array): Int32Array {
    const m = this.w.draftToTarget;
    if (m) for (let i = 0; i < ids.length; i++) ids[i] = m[ids[i] as number] as number;
    return ids;
  }

  /** Whether the head has a draft vocabulary of its own (EAGLE-3's d2t): its penalties read mapped histories. */
  get ownVocabulary(): boolean {
    return this.w.draftToTarget !== undefined;
  }

  private t2d: Int32Array | undefined;
  /**
   * A target id as a draft-vocabulary id: EAGLE-3's d2t inverted (the lowest draft id mapped to it;
   * -1 where the draft has none, as the native expansion's paths read it); the id itself otherwise.
   */
  toDraftId(t: number): number {
    const m = this.w.draftToTarget;
    if (!m) return t;
    if (!this.t2d) {
      let most = -1;
      for (let d = 0; d < m.length; d++) most = Math.max(most, m[d] as number);
      const inv = new Int32Array(most + 1).fill(-1);
      for (let d = m.length - 1; d >= 0; d--) inv[m[d] as number] = d;
      this.t2d = inv;
    }
    return t >= 0 && t < this.t2d.length ? (this.t2d[t] as number) : -1;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    // The native handle's references to the tensors go now, not when the handle is collected.
    if (this.nativeWeights) native().eagleWeightsRelease?.(this.nativeWeights);
    this.nativeWeights = undefined;
    const w = this.w;
    const all = [w.fcEmbed, ...w.fcFeature, w.fcBias, w.invFreq, w.norm, w.lmHead, w.embed];
    for (const L of w.layers) all.push(L.inNorm, L.q, L.k, L.v, L.qH, L.kH, L.vH, L.hiddenNorm, L.qb, L.kb, L.vb, L.o, L.postNorm, L.gate, L.up, L.down);
    for (const z of all) z?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
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
  /**
   * With penalties (repetition, presence, frequency): whether the head's rows are penalized as the
   * target's will be (each by its sequence's history and the nodes above it) before their children
   * are chosen. Default true: the tree then holds what the penalized target prefers. Either way
   * the output is the target's.
   */
  readonly draftPenalties?: boolean;
}

interface EagleState {
  readonly seq: number;
  /** Draft rows j < cached are in the draft's cache (j >= base); features f[j] for j in [cached, cached + waiting) wait in `features`. */
  cached: number;
  /** The first row the draft's cache holds (> 0 after a gap in the features). */
  base: number;
  /** The waiting features, in order, as the chunks they came in (not concatenated while plain steps pile them up). */
  features: FeatureChunk[];
  waiting: number;
  /** Consecutive steps proposed without drafting (sized mode). */
  plainRun: number;
  /** This step's proposal was drafted. */
  drafted: boolean;
  /** This step drafted a tree (the plan chose one, not plain). */
  treeDrafted: boolean;
  /** Consecutive drafted trees cut to the root by the draft's own confidence. */
  rootOnly: number;
  /** This step is a probe the plan did not choose (sized: the least tree, to keep the rates alive). */
  forcedProbe: boolean;
  /** EAGLE-3 with penalties: the history in the draft's vocabulary, grown in place (historyOf). */
  draftHistory?: { tokens: number[]; promptLength: number; from: number; source: readonly number[]; promptFrom: number } | undefined;
}

/** Feature rows of consecutive positions: one block per feature (EAGLE-1/2: the final hidden state; EAGLE-3: three layers' inputs), f32 [rows, targetHidden] each. */
interface FeatureChunk {
  readonly blocks: Tensor[];
  readonly rows: number;
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
  /** Its draft's row j pairs the target's feature at j with token j + 1 (see shareFrom). */
  readonly shareNeedsNextToken = true;

  /** EAGLE-1/2 read the final hidden states; EAGLE-3 the inputs of three layers (auxLayers). */
  get wantsHidden(): boolean {
    return this.head.config.version === 1;
  }
  /** EAGLE-3: the target layers whose inputs are its features (set by attach()). */
  auxLayers: readonly number[] | undefined;
  readonly head: EagleHead;
  readonly topK: number;
  readonly depth: number;
  readonly maxNodes: number;
  readonly sized: boolean;
  readonly pageSize: number;
  readonly draftPenalties: boolean;
  private target: CausalLM | undefined;
  private embed: Tensor | undefined;
  private lmHead: Tensor | undefined;
  private cache: KvCache | undefined;
  private readonly states = new Map<number, EagleState>();
  /** Seconds of a draft call (catch-up, or one level of the expansion) by its rows. */
  private readonly levelCost = new RowsCost();
  /** The catch-up and the tree's levels as one native call each (EagleHead.catchUp, expand) where the build has them; false: op by op from JavaScript (tests compare the two). */
  nativeExpansion = true;
  /** Expansions no wider or deeper than the largest tree a sequence may take (see propose); false: as configured (tests compare the two). */
  capExpansion = true;
  /**
   * Sized mode: P(the accepted path reaches depth d + 1 | it reached depth d), online (the tree's
   * depth is what the plan chooses; its width only adds the siblings the draft found likely).
   */
  readonly rates: RankRates = new RankRates((depth) => (depth === 0 ? 0.6 : this.rates.rate(depth - 1)));
  /** Per sequence: the depth of the tree proposed (rates are recorded against it). */
  private readonly proposedDepth = new Map<number, number>();
  private probeAfter = PROBE_AFTER_PLAIN_STEPS;
  /** Sized mode: the draft's conditional confidences as acceptance estimates, calibrated online. */
  private readonly calibration = new ConfidenceCalibration();
  /** Per sequence: the proposed tree's parents and each node's conditional draft confidence (for the calibration). */
  private readonly proposedCond = new Map<number, { parents: Int32Array; cond: Float64Array; rank: Int32Array }>();
  /** Per sequence key, per step: nodes proposed and drafts accepted (tests and stats read it): live sequences and the KEPT_TRACES most recently released. */
  readonly trace = new Map<number, { proposed: number; accepted: number }[]>();
  private readonly releasedKeys: number[] = [];

  constructor(opts: EagleOptions) {
    optionsArg(opts, 'eagle options');
    if (!(opts.head instanceof EagleHead)) throw codedError('E_ARG', `eagle: head: expected an EagleHead (EagleHead.load), got ${opts.head === null ? 'null' : typeof opts.head}`);
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
    if (opts.draftPenalties !== undefined && typeof opts.draftPenalties !== 'boolean') throw codedError('E_ARG', `eagle: draftPenalties must be a boolean, got ${String(opts.draftPenalties)}`);
    this.draftPenalties = opts.draftPenalties ?? true;
  }

  attach(model: CausalLM): void {
    const c = this.head.config;
    if (c.targetHiddenSize !== model.config.hiddenSize) {
      throw codedError('E_ARG', `eagle: the head reads features of size ${c.targetHiddenSize} but the target's hidden size is ${model.config.hiddenSize}`);
    }
    if (c.version === 3) {
      // EAGLE-3's features: the residual stream entering layers 2, L/2 and L - 3 (SafeAILab's
      // modeling_llama_kv), unless the head's config names them.
      const L = model.config.numLayers;
      const layers = c.auxLayers ?? [2, Math.floor(L / 2), L - 3];
      if (new Set(layers).size !== 3 || layers.some((l) => l < 0 || l >= L)) {
        throw codedError('E_UNSUPPORTED', `eagle: an EAGLE-3 head reads three distinct layers' inputs; layers ${layers.join(', ')} of a ${L}-layer target are not`);
      }
      this.auxLayers = c.auxLayers ? layers : layers.slice().sort((a, b) => a - b);
    }
    if (c.vocabSize !== model.config.vocabSize) {
      throw codedError('E_ARG', `eagle: the head was made for a vocabulary of ${c.vocabSize} but the target has ${model.config.vocabSize}`);
    }
    if (this.head.device !== model.device) throw codedError('E_ARG', `eagle: the head is on ${this.head.device} but the target is on ${model.device}`);
    if (!model.sharedWeights) throw codedError('E_UNSUPPORTED', 'eagle: the target does not share its embedding table and LM head (CausalLM.sharedWeights)');
    const w = model.sharedWeights();
    const V = model.config.vocabSize;
    // The target's embedding table serves unless the head has its own (EAGLE-3 with another hidden size).
    const checks: (readonly [string, Tensor])[] = [];
    if (c.version === 1) checks.push(['LM head', w.lmHead]);
    if (!this.head.ownEmbedding) checks.push(['embedding table', w.embedTokens]);
    for (const [name, t] of checks) {
      if (t.shape.length !== 2 || t.shape[0] !== V || t.shape[1] !== c.hiddenSize) {
        w.embedTokens.dispose();
        w.lmHead.dispose();
        throw codedError('E_ARG', `eagle: the target's ${name} is [${t.shape}], expected [${V}, ${c.hiddenSize}] for this head`);
      }
    }
    this.releaseWeights();
    this.embed = w.embedTokens;
    this.lmHead = w.lmHead;
    this.target = model;
    if (!this.cache) {
      // As many tokens as the target's cache holds (when it says), plus room for the forks of a step:
      // a row of the native expansion holds its own copy of every page its path touches past the
      // sequence's full pages (its parent is chosen on the device, so it cannot share them).
      const info = (model as { kvInfo?: () => { pageSize: number; totalPages: number } }).kvInfo?.();
      const tokens = info ? info.pageSize * info.totalPages : 4 * model.config.maxPositions;
      const rowPages = 1 + Math.ceil(this.depth / this.pageSize);
      const numPages = Math.ceil(tokens / this.pageSize) + 8 * (this.topK * (this.depth + 1) + 8) * rowPages;
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

  /**
   * A sequence's history as the head's penalties read it: in the draft's vocabulary (EAGLE-3: ids
   * mapped by d2t inverted, those the draft lacks left out, kept per sequence and grown in place);
   * the history itself for EAGLE-1/2.
   */
  private draftBias: { from: LogitBias; bias: LogitBias | undefined } | undefined;
  /** The run's penalties as the head's rows take them: EAGLE-3's logit bias in its draft ids (those it has; the last mapping kept). */
  private draftPenaltiesOf(p: ResolvedPenalties): ResolvedPenalties {
    const b = p.logitBias;
    if (!b || !this.head.ownVocabulary) return p;
    if (this.draftBias?.from !== b) this.draftBias = { from: b, bias: b.mapTokens((t) => this.head.toDraftId(t)) };
    const { logitBias: _, ...rest } = p;
    return this.draftBias.bias ? { ...rest, logitBias: this.draftBias.bias } : rest;
  }

  private historyOf(s: SpecSequence): PenaltyHistory {
    if (!this.head.ownVocabulary) return { tokens: s.history, promptLength: s.promptLength };
    const st = this.state(s);
    let m = st.draftHistory;
    if (!m || m.source !== s.history || m.from > s.history.length || m.promptFrom !== Math.min(s.promptLength, s.history.length)) {
      m = st.draftHistory = { tokens: [], promptLength: 0, from: 0, source: s.history, promptFrom: Math.min(s.promptLength, s.history.length) };
    }
    for (; m.from < s.history.length; m.from++) {
      const d = this.head.toDraftId(s.history[m.from] as number);
      if (d < 0) continue;
      m.tokens.push(d);
      if (m.from < m.promptFrom) m.promptLength++;
    }
    return { tokens: m.tokens, promptLength: m.promptLength };
  }

  private state(s: SpecSequence): EagleState {
    let st = this.states.get(s.key);
    if (!st) {
      st = { seq: this.need().cache.addSequence(), cached: 0, base: 0, features: [], waiting: 0, plainRun: 0, drafted: false, treeDrafted: false, rootOnly: 0, forcedProbe: false };
      this.states.set(s.key, st);
    }
    return st;
  }

  /** The features of output rows `rows` (positions [from, from + rows.length)) join the sequence's waiting ones. */
  private addFeatures(st: EagleState, from: number, out: ForwardOutput, rows: number[]): void {
    if (from > st.cached + st.waiting) {
      // A gap (features the target never returned): start the draft's cache over at `from`.
      this.need().cache.truncate(st.seq, 0);
      dropFeatures(st);
      st.cached = st.base = from;
    } else if (from < st.cached + st.waiting) {
      // Rows already known (a catch-up over them): keep the newest only.
      rows = rows.slice(st.cached + st.waiting - from);
      if (rows.length === 0) return;
    }
    st.features.push({ blocks: this.featureRows(out, rows), rows: rows.length });
    st.waiting += rows.length;
  }

  /** The feature blocks of output rows `rows`: the hidden states (EAGLE-1/2) or the three layer inputs (EAGLE-3). */
  private featureRows(out: ForwardOutput, rows: readonly number[]): Tensor[] {
    const Ht = this.head.config.targetHiddenSize;
    if (this.head.config.version === 1) {
      if (!out.hidden) throw codedError('E_ARG', 'eagle: the forward returned no hidden states');
      return [gatherRows(rows.map((row) => ({ tensor: out.hidden as Tensor, row })), Ht, this.head.device)];
    }
    const aux = out.aux;
    const A = this.auxLayers?.length ?? 0;
    if (!aux || aux.shape.length !== 3 || aux.shape[0] !== A) {
      throw codedError('E_UNSUPPORTED', `eagle: the target's forward returned no inputs of layers ${this.auxLayers?.join(', ')} (ForwardOptions.auxLayers), which an EAGLE-3 head reads`);
    }
    const N = aux.shape[1] as number;
    const flat = aux.view([A * N, Ht]);
    try {
      const blocks: Tensor[] = [];
      for (let k = 0; k < A; k++) blocks.push(gatherRows(rows.map((row) => ({ tensor: flat, row: k * N + row })), Ht, this.head.device));
      return blocks;
    } finally {
      flat.dispose();
    }
  }

  async prefill(seqs: readonly SpecSequence[], output: ForwardOutput, lastRows: Int32Array, ctx: ProposeContext = {}): Promise<void> {
    seqs.forEach((s, b) => {
      const st = this.state(s);
      const first = output.indptr[b] as number;
      const last = lastRows[b] as number;
      // Row `last` is the target's output at position committed - 1; the rows before it precede it.
      const rows: number[] = [];
      for (let r = first; r <= last; r++) rows.push(r);
      this.addFeatures(st, s.committed - 1 - (last - first), output, rows);
    });
    await this.prepare(ctx);
  }

  /** Sized mode: the target's cost curve (measured once per model; sampled steps size too: one-hot drafts). */
  async prepare(ctx: ProposeContext = {}): Promise<void> {
    if (this.sized && this.target) await forwardCostIfRoom(this.target);
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
    const nBlocks = this.head.config.version === 1 ? 1 : 3;
    const parts: { tensor: Tensor; row: number }[][] = Array.from({ length: nBlocks }, () => []);
    let i = 0;
    sts.forEach((st, b) => {
      const s = seqs[b] as SpecSequence;
      let j = st.cached;
      for (const chunk of st.features) {
        for (let r = 0; r < chunk.rows; r++, i++, j++) {
          tokens[i] = s.history[j + 1] as number;
          positions[i] = j;
          for (let k = 0; k < nBlocks; k++) (parts[k] as { tensor: Tensor; row: number }[]).push({ tensor: chunk.blocks[k] as Tensor, row: r });
        }
      }
    });
    const seqIds = sts.map((st) => st.seq);
    // One native call where the build has it (the same rows, cache and h as the calls below).
    const root = this.nativeExpansion ? this.head.catchUp(embed, cache, seqIds, counts, tokens, positions, parts) : undefined;
    if (root) {
      sts.forEach((st, b) => {
        st.cached += counts[b] as number;
        dropFeatures(st);
      });
      return root;
    }
    const feats = parts.map((p) => gatherRows(p, this.head.config.targetHiddenSize, this.head.device));
    const batch = cache.plan(seqIds, counts);
    let h: Tensor | undefined;
    try {
      h = this.head.forward(embed, cache, batch, tokens, feats, positions, true);
      cache.commit(batch, seqIds, counts.map((n) => Int32Array.from({ length: n }, (_, r) => r)));
    } catch (e) {
      h?.dispose();
      throw e;
    } finally {
      for (const t of feats) t.dispose();
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

  /** Top-k children (target ids, log-probabilities) of each row of h: the head's logits, softmax, top-k. */
  /**
   * A level's children: each row's top-k under the head's logits at temperature 1 (with `pen`,
   * penalized first: row i by history rowSeq[i] and its path, in the draft's vocabulary).
   */
  private children(h: Tensor, pen?: HistoryPenalties & { readonly rowSeq: Int32Array; readonly paths: readonly (readonly number[])[] }): { ids: Int32Array; logp: Float32Array } {
    const { lmHead } = this.need();
    const logits = this.head.logits(h, lmHead);
    try {
      if (pen) penalize(logits, pen.penalties, pen.histories, pen.rowSeq, pen.paths);
      const probs = processLogits(logits, { temperature: 1 });
      try {
        const k = Math.min(this.topK, this.head.config.draftVocabSize);
        const top = topK(probs, k);
        try {
          const p = top.values.toFloat32();
          const logp = new Float32Array(p.length);
          for (let i = 0; i < p.length; i++) logp[i] = Math.log(p[i] as number);
          return { ids: this.head.toTargetIds(top.ids.toInt32()), logp };
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
    if (drafting.length === 0) {
      const ahead = cost ? this.plainStepsAhead(seqs) : 0;
      return ahead > 0 ? { proposals, plainSteps: ahead } : { proposals };
    }
    let plan = cost ? this.plan(cost, seqs.length) : { levels: this.depth, width: this.topK };
    // A probe (plainRun steps after the plan chose plain) proposes at least the root's top child, so
    // that the rates see a trial and the choice can come back when the text gets easier.
    const probing = cost !== undefined && drafting.some((b) => this.state(seqs[b] as SpecSequence).plainRun >= this.probeAfter);
    if (plan.levels < 0 && probing) {
      plan = { levels: 0, width: 1 };
      for (const b of drafting) this.state(seqs[b] as SpecSequence).forcedProbe = true;
    }
    if (plan.levels < 0) {
      // Sized: no tree pays now; the sequences count it as a step that drafted and chose plain
      // (update: plain run 1). Where every sequence's next steps are sure to be plain too, this step
      // opens their native chain instead (updatePlain then counts it in the run): a new request's
      // first step was a forward of its own, ~2% of a 128-token request on the embedded family.
      const ahead = this.plainStepsAhead(seqs, drafting);
      if (ahead > 0) {
        for (const b of drafting) {
          const st = this.state(seqs[b] as SpecSequence);
          st.drafted = false;
          st.rootOnly = 0;
        }
      }
      return ahead > 0 ? { proposals, plainSteps: ahead } : { proposals };
    }
    for (const b of drafting) this.state(seqs[b] as SpecSequence).treeDrafted = true;
    const draftSeqs = drafting.map((b) => seqs[b] as SpecSequence);
    // A tree of n nodes is at most n - 1 deep, and a node ranked past n - 1 at its level has n - 1
    // more probable nodes beside it: expanding deeper or wider than the largest tree any sequence
    // may take (totalTokens, SpecSequence.maxNodes) changes no tree. (A forced 64,32 expansion cut
    // to 64 nodes made 4096 candidates a level.)
    if (this.capExpansion) {
      let most = 1;
      for (const s of draftSeqs) most = Math.max(most, Math.min(this.maxNodes + 1, s.maxNodes));
      plan = { levels: Math.min(plan.levels, Math.max(0, most - 2)), width: Math.min(plan.width, Math.max(1, most - 1)) };
    }
    const pen = ctx.penalties && this.draftPenalties ? { penalties: this.draftPenaltiesOf(ctx.penalties), histories: draftSeqs.map((s) => this.historyOf(s)) } : undefined;
    const { trees } = this.draftTrees(draftSeqs, plan.levels, plan.width, cost ? stepCost(cost, seqs.length, undefined, this) : undefined, probing, pen);
    drafting.forEach((b, i) => {
      const tree = trees[i] as TokenTree;
      proposals[b] = tree;
      this.proposedDepth.set((seqs[b] as SpecSequence).key, treeDepth(tree.parents));
    });
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
    const call = (rows: number): number => this.levelCost.predict(rows);
    // A tree of depth k (k + 1 nodes at least): the catch-up call (whose last rows give the root's
    // children), then k - 1 expansion calls of `width` rows per sequence.
    const draft = (w: number) => (n: number): number => (n > 1 ? call(batch) + (n - 2) * call(batch * w) : 0);
    const k = chooseChainLength((i) => this.rates.upper(i), this.depth + 1, stepCost(cost, batch, draft(1), this)).size;
    if (k < 1) return { levels: -1, width: 1 };
    // Wider expansions only where they are nearly free: the step with every node of a w-wide
    // expansion verified (the most the subtree choice can keep) costs at most a tenth more than the
    // chain's. On a GPU the target verifies tens of nodes for the price of one (wide trees); on a
    // CPU each node costs (top-1 chains).
    const full = (w: number): number => stepCost(cost, batch, draft(w), this)(Math.min(this.maxNodes, (k - 1) * w + 1) + 1);
    const chain = full(1);
    let width = 1;
    while (width * 2 <= this.topK && full(width * 2) <= 1.1 * chain) width *= 2;
    if (full(this.topK) <= 1.1 * chain) width = this.topK;
    return { levels: k - 1, width };
  }

  /**
   * EAGLE-2's expansion for these sequences (`levels` times, the `width` most probable newest nodes
   * each), then each one's best subtree; `rows`: draft rows computed (catch-up and tree).
   */
  private draftTrees(seqs: readonly SpecSequence[], levels: number, width: number, cost: ((nodes: number) => number) | undefined, probe = false, pen?: HistoryPenalties): { trees: TokenTree[]; rows: number } {
    const { cache, embed } = this.need();
    const H = this.head.config.hiddenSize;
    const sts = seqs.map((s) => this.state(s));
    const forks: number[] = [];
    const pools: Node[][] = seqs.map(() => []);
    let hRoot: Tensor | undefined;
    let hLevel: Tensor | undefined;
    let rowCount = 0;
    try {
      const waiting = sts.reduce((a, st) => a + st.waiting, 0);
      rowCount += waiting;
      let t0 = performance.now();
      hRoot = this.catchUp(seqs, sts);
      // The levels in one native call where the build has it (the same pools as the loop below).
      const expansion = this.nativeExpansion ? this.expandNatively(seqs, sts, hRoot, levels, width, pen) : undefined;
      if (expansion) {
        this.levelCost.add(waiting, (performance.now() - t0) / 1000 - expansion.levelSeconds.reduce((a, x) => a + x, 0));
        expansion.levelRows.forEach((n, i) => {
          rowCount += n;
          this.levelCost.add(n, expansion.levelSeconds[i] as number);
        });
        expansion.pools.forEach((p, b) => {
          const pool = pools[b] as Node[];
          for (let i = 0; i < p.tokens.length; i++) pool.push({ token: p.tokens[i] as number, parent: p.parents[i] as number, level: p.levels[i] as number, logProb: p.logProbs[i] as number });
        });
        return { trees: seqs.map((s, b) => this.pickTree(s, pools[b] as Node[], cost, probe)), rows: rowCount };
      }
      // Level 1: the root's children (penalized by the history alone).
      const first = this.children(hRoot, pen && { ...pen, rowSeq: Int32Array.from(seqs, (_, b) => b), paths: [] });
      this.levelCost.add(waiting, (performance.now() - t0) / 1000);
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
      // Each sequence expands to its own depth limit (a batch-wide one would make a sequence's tree,
      // and so a sampled sequence's output, depend on the sequences beside it).
      const depth = Math.min(levels, Math.max(...seqs.map((s) => s.maxDepth - 1)));
      for (let level = 1; level <= depth; level++) {
        // Expand the best topK nodes of the newest level (all of level 1).
        const rows: { b: number; open: Open }[] = [];
        seqs.forEach((s, b) => {
          if (level > s.maxDepth - 1) return;
          const pool = pools[b] as Node[];
          const best = (open[b] as Open[]).slice().sort((x, y) => (pool[y.node] as Node).logProb - (pool[x.node] as Node).logProb || x.node - y.node);
          for (const o of best.slice(0, width)) rows.push({ b, open: o });
        });
        if (rows.length === 0) break;
        rowCount += rows.length;
        t0 = performance.now();
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
          h = this.head.forward(embed, cache, batch, tokens, [feats], positions, false);
          cache.commit(batch, seqIds, rows.map(() => Int32Array.of(0)));
        } finally {
          feats.dispose();
          batch.dispose();
        }
        hLevel?.dispose();
        hLevel = h;
        // Penalized, a row continues its sequence's history with its node and the nodes above it.
        const kids = this.children(
          h,
          pen && {
            ...pen,
            rowSeq: Int32Array.from(rows, (r) => r.b),
            paths: rows.map((r) => {
              const pool = pools[r.b] as Node[];
              const path: number[] = [];
              for (let e = r.open.node; e >= 0; e = (pool[e] as Node).parent) {
                const d = this.head.toDraftId((pool[e] as Node).token);
                if (d >= 0) path.push(d);
              }
              return path;
            }),
          },
        );
        this.levelCost.add(rows.length, (performance.now() - t0) / 1000);
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

  /** draftTrees' levels as one native call (EagleHead.expand); undefined where the build lacks it. */
  private expandNatively(seqs: readonly SpecSequence[], sts: readonly EagleState[], hRoot: Tensor, levels: number, width: number, pen?: HistoryPenalties): SpecdecNative.NativeEagleExpansion | undefined {
    const { cache, embed, lmHead } = this.need();
    const k = Math.min(this.topK, this.head.config.draftVocabSize);
    const draftSeqs = Int32Array.from(sts, (st) => st.seq);
    const positions = Int32Array.from(seqs, (s) => s.committed - 1);
    const maxLevels = Int32Array.from(seqs, (s) => Math.max(0, s.maxDepth - 1));
    return this.head.expand(embed, lmHead, cache, hRoot, { draftSeqs, positions, maxLevels }, levels, width, k, pen && nativePenalties(pen.penalties, pen.histories));
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
    const cond = new Float64Array(n);
    const rank = new Int32Array(n);
    const children = new Int32Array(n);
    pool.forEach((node, i) => {
      parents[i + 1] = node.parent + 1;
      tokens[i + 1] = node.token;
      const c = Math.exp(node.logProb - (node.parent < 0 ? 0 : (pool[node.parent] as Node).logProb));
      cond[i + 1] = c;
      // Siblings come in descending order (top-k): the count so far is the node's rank.
      rank[i + 1] = (children[node.parent + 1] as number)++;
      // Sized: acceptance estimates from the calibrated confidences; fixed: EAGLE-2's own ranking.
      const p = cost ? (prob[node.parent + 1] as number) * this.calibration.estimate(c, rank[i + 1] as number) : Math.exp(node.logProb);
      prob[i + 1] = node.level <= s.maxDepth ? p : 0;
    });
    const choice = chooseSubtree(parents, prob, cost ?? (() => 1), { maxNodes: Math.min(n, this.maxNodes + 1, s.maxNodes) });
    // A probe proposes the root's most probable child at least (pool node 0: top-k is descending).
    const keep = probe && choice.keep.length === 1 && n > 1 && s.maxDepth > 0 && s.maxNodes > 1 ? Int32Array.of(0, 1) : choice.keep;
    const tree = selectNodes({ tokens, parents }, keep);
    if (cost) this.proposedCond.set(s.key, { parents: tree.parents, cond: Float64Array.from(keep, (i) => cond[i] as number), rank: Int32Array.from(keep, (i) => rank[i] as number) });
    return tree;
  }

  /**
   * Sized mode, in a plain run: this step and the next ones sure to be plain (no sequence drafts
   * now, none comes due to probe within them), for the engine to run as one native chain. The step
   * before a probe stays out of the chain: its forward returns the features the probe drafts from
   * (a chain returns none; the draft's cache starts over after such a gap). 0: none.
   * `choseNow`: the batch indices whose draft the plan just declined (their plain run starts here).
   */
  private plainStepsAhead(seqs: readonly SpecSequence[], choseNow: readonly number[] = []): number {
    let steps = Infinity;
    for (let b = 0; b < seqs.length; b++) {
      const st = this.state(seqs[b] as SpecSequence);
      const now = choseNow.includes(b);
      if (!now && (st.drafted || st.plainRun === 0)) return 0;
      steps = Math.min(steps, this.probeAfter - (now ? 0 : st.plainRun) - 1);
    }
    return steps >= 1 && Number.isFinite(steps) ? steps : 0;
  }

  /** The engine ran steps[b] plain steps of sequence b at once (after plainSteps): their features never came. */
  updatePlain(seqs: readonly SpecSequence[], steps: readonly number[]): void {
    seqs.forEach((s, b) => {
      const st = this.state(s);
      st.plainRun += steps[b] as number;
      st.drafted = false;
      st.treeDrafted = false;
    });
  }

  update(seqs: readonly SpecSequence[], report: StepReport, ctx: ProposeContext = {}): void {
    const sized = sizingCost(this.sized, this.target, ctx) !== undefined;
    seqs.forEach((s, b) => {
      const st = this.state(s);
      const acc = report.acceptedNodes[b] as Int32Array;
      const base = report.output.indptr[b] as number;
      const proposed = (report.proposals[b] as Proposal).tokens.length - 1;
      // The accepted nodes (root first) sat at positions committed - acc.length .. committed - 1.
      this.addFeatures(st, s.committed - acc.length, report.output, Array.from(acc, (node) => base + node));
      const depth = this.proposedDepth.get(s.key) ?? 0;
      this.proposedDepth.delete(s.key);
      const tried = this.proposedCond.get(s.key);
      this.proposedCond.delete(s.key);
      if (sized && tried) {
        // Every node whose parent was accepted was tried: accepted or not, at its confidence.
        const onPath = new Set(Array.from(acc));
        for (let i = 1; i < tried.parents.length; i++) {
          if (onPath.has(tried.parents[i] as number)) this.calibration.record(tried.cond[i] as number, tried.rank[i] as number, onPath.has(i));
        }
      }
      if (sized) for (let d = 0; d < depth; d++) {
        this.rates.record(d, d < acc.length - 1 ? 0 : -1);
        if (d >= acc.length - 1) break;
      }
      let tr = this.trace.get(s.key);
      if (!tr) this.trace.set(s.key, (tr = []));
      tr.push({ proposed, accepted: acc.length - 1 });
      if (sized && st.drafted) {
        // The next step drafts again only if this one chose a tree; a probe that chose none backs off.
        // One tree cut to its root by the draft's own confidence (the plan chose a tree: an
        // unpredictable position, such as a name) drafts again at the next step; a second in a row
        // counts as plain.
        const unsure = proposed === 0 && st.treeDrafted && st.plainRun === 0 && st.rootOnly === 0;
        st.rootOnly = proposed === 0 && st.treeDrafted ? st.rootOnly + 1 : 0;
        // A tree the plan chose brings the probes back to their first interval; a forced probe (or
        // one that proposed nothing) moves the next twice as far (until 2026-12-06 a forced probe,
        // which always proposes, reset it: EAGLE probed every 33 steps while nothing paid).
        if (proposed > 0 && !st.forcedProbe) this.probeAfter = PROBE_AFTER_PLAIN_STEPS;
        else if (st.plainRun >= this.probeAfter) this.probeAfter = backedOffProbeInterval(this.probeAfter);
        st.plainRun = proposed > 0 || unsure ? 0 : 1;
      } else if (sized) {
        st.plainRun++;
      }
      st.drafted = false;
      st.treeDrafted = false;
      st.forcedProbe = false;
    });
  }

  rewind(seq: SpecSequence): void {
    const st = this.states.get(seq.key);
    if (!st) return;
    st.draftHistory = undefined;
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
      const keep = c - st.cached;
      const kept = keep > 0 ? this.firstWaiting(st, keep) : undefined;
      dropFeatures(st);
      if (kept) {
        st.features.push({ blocks: kept, rows: keep });
        st.waiting = keep;
      }
    }
  }

  /** Copies of st's first `n` waiting feature rows (n <= st.waiting), a tensor per feature block. */
  private firstWaiting(st: EagleState, n: number): Tensor[] {
    return (st.features[0]?.blocks ?? []).map((_, k) => {
      const parts: { tensor: Tensor; row: number }[] = [];
      for (const chunk of st.features) for (let r = 0; r < chunk.rows && parts.length < n; r++) parts.push({ tensor: chunk.blocks[k] as Tensor, row: r });
      return gatherRows(parts, this.head.config.targetHiddenSize, this.head.device);
    });
  }

  /**
   * Speculator.shareFrom: seq's draft rows j < length (the target's feature at j with token j + 1:
   * the engine shares `length` tokens where length + 1 are common, shareNeedsNextToken) are
   * from's: a fork of its head cache cut to them, and copies of its waiting features up to
   * `length`. Where from's rows do not cover [its base, length), seq starts fresh: its draft's
   * context then begins at `length` (the output is the same; its drafts are worse).
   */
  shareFrom(seq: SpecSequence, from: SpecSequence, length: number): void {
    const src = this.states.get(from.key);
    if (!src || this.states.has(seq.key) || length < 1 || length < src.base || src.cached + src.waiting < length) return;
    const { cache } = this.need();
    const inCache = Math.min(length, src.cached);
    const q = cache.fork(src.seq);
    try {
      if (cache.length(q) > inCache - src.base) cache.truncate(q, inCache - src.base);
      const st: EagleState = { seq: q, cached: inCache, base: src.base, features: [], waiting: 0, plainRun: 0, drafted: false, treeDrafted: false, rootOnly: 0, forcedProbe: false };
      const rows = length - inCache;
      if (rows > 0) {
        st.features.push({ blocks: this.firstWaiting(src, rows), rows });
        st.waiting = rows;
      }
      this.states.set(seq.key, st);
    } catch (e) {
      cache.free(q);
      throw e;
    }
  }

  /** Speculator.keep: the head's cache and waiting features stay for shareFrom until release(seq). */
  keep(seq: SpecSequence): void {
    this.proposedDepth.delete(seq.key);
    this.proposedCond.delete(seq.key);
  }

  release(seq: SpecSequence): void {
    this.proposedDepth.delete(seq.key);
    this.proposedCond.delete(seq.key);
    // The traces of the KEPT_TRACES most recently released sequences stay (a server sees every request).
    if (this.trace.has(seq.key)) {
      this.releasedKeys.push(seq.key);
      while (this.releasedKeys.length > KEPT_TRACES) this.trace.delete(this.releasedKeys.shift() as number);
    }
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

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function dropFeatures(st: EagleState): void {
  for (const chunk of st.features) for (const t of chunk.blocks) t.dispose();
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
