// EAGLE heads (lib/strategies/eagle.ts): the draft layer against a float64 reference, greedy output
// equal to plain decoding on random Llama targets, a head that predicts its target (deep trees
// accepted), and the load errors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { ForwardCost, setForwardCost } from '../lib/cost_model';
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { KvCache } from '../lib/kv';
import { LlamaModel } from '../lib/models/llama';
import { writeSafetensors } from '../lib/safetensors';
import { KEPT_TRACES } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator, type EagleOptions } from '../lib/strategies/eagle';
import { native } from '../lib/native';
import { plainGenerate } from '../lib/plain';
import type { Penalties } from '../lib/sampling';
import { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import { transferCounters } from '../lib/transfers';
import { configJson, randomWeights, specByName, type CheckpointSpec } from './fixtures/checkpoints';
import { eagle3DraftIds, eagle3HeadTensors, eagleHeadTensors, writeEagle3Head, writeEagleHead, type Eagle3HeadSpec, type EagleHeadSpec } from './fixtures/eagle_head';
import { LlamaReference } from './reference/llama_ref';
import { assertThrowsCode, describeCuda, rng, testSeed } from './helpers';

const f64 = (e: { data: unknown }): Float64Array => Float64Array.from(e.data as Float32Array);
const PEN = { repetition: 1.3, presence: 0.5, frequency: 0.3 } as const;

// ---- float64 references ------------------------------------------------------------------------

/** y = W x (+ b), W [m, k] row-major. */
function lin(x: Float64Array, W: Float64Array, m: number, k: number, b?: Float64Array): Float64Array {
  const y = new Float64Array(m);
  for (let i = 0; i < m; i++) {
    let acc = b ? (b[i] as number) : 0;
    for (let j = 0; j < k; j++) acc += (W[i * k + j] as number) * (x[j] as number);
    y[i] = acc;
  }
  return y;
}

/** RMSNorm with eps 1e-5 (the fixtures' configs). */
function rmsNorm(x: Float64Array, g: Float64Array): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + 1e-5);
  return x.map((v, i) => v * r * (g[i] as number));
}

/** HF rotate_half RoPE of each head of x in place. */
function rotate(x: Float64Array, heads: number, D: number, pos: number, theta = 10000): void {
  const half = D / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const f = pos * Math.pow(theta, (-2 * i) / D);
      const a = x[h * D + i] as number, b = x[h * D + i + half] as number;
      x[h * D + i] = a * Math.cos(f) - b * Math.sin(f);
      x[h * D + i + half] = b * Math.cos(f) + a * Math.sin(f);
    }
  }
}

/** Causal GQA attention of row j over rows 0..j. */
function attend(qs: Float64Array[], ks: Float64Array[], vs: Float64Array[], j: number, heads: number, kvHeads: number, D: number): Float64Array {
  const att = new Float64Array(heads * D);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / (heads / kvHeads));
    const sc = Array.from({ length: j + 1 }, (_, t) => {
      let acc = 0;
      for (let d = 0; d < D; d++) acc += (qs[j]![h * D + d] as number) * (ks[t]![g * D + d] as number);
      return acc / Math.sqrt(D);
    });
    const m = Math.max(...sc);
    const e = sc.map((v) => Math.exp(v - m));
    const z = e.reduce((acc, v) => acc + v, 0);
    for (let t = 0; t <= j; t++) for (let d = 0; d < D; d++) att[h * D + d]! += ((e[t] as number) / z) * (vs[t]![g * D + d] as number);
  }
  return att;
}

/** y + down(silu(gate(n)) * up(n)) for n = post_attention_layernorm(y). */
function mlpBlock(y: Float64Array, get: (n: string) => Float64Array, p: string, H: number, I: number): Float64Array {
  const h2 = rmsNorm(y, get(p + 'post_attention_layernorm.weight'));
  const gate = lin(h2, get(p + 'mlp.gate_proj.weight'), I, H);
  const up = lin(h2, get(p + 'mlp.up_proj.weight'), I, H);
  const act = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * (up[i] as number));
  const down = lin(act, get(p + 'mlp.down_proj.weight'), H, I);
  return y.map((v, i) => v + (down[i] as number));
}

const cat = (...xs: Float64Array[]): Float64Array => {
  const out = new Float64Array(xs.reduce((acc, x) => acc + x.length, 0));
  let at = 0;
  for (const x of xs) {
    out.set(x, at);
    at += x.length;
  }
  return out;
};

/** float64 EAGLE-1/2 draft rows 0..n-1 of one sequence: h[j] for (tokens[j], features[j]) at position positions[j], causal. */
function referenceDraft(spec: EagleHeadSpec, embed: Float64Array, tokens: number[], features: Float64Array[], positions: number[]): Float64Array[] {
  const w = eagleHeadTensors(spec);
  const H = spec.hidden;
  const D = H / spec.heads;
  const KD = spec.kvHeads * D;
  const get = (n: string): Float64Array => f64(w[n] as { data: unknown });
  const fcB = spec.fcBias === false ? undefined : get('fc.bias');
  let xs = tokens.map((t, j) => lin(cat(embed.subarray(t * H, (t + 1) * H), features[j] as Float64Array), get('fc.weight'), H, 2 * H, fcB));
  for (let l = 0; l < (spec.layers ?? 1); l++) {
    const p = `layers.${l}.`;
    const hs = xs.map((x) => (l === 0 ? x : rmsNorm(x, get(p + 'input_layernorm.weight'))));
    const b = (n: string): Float64Array | undefined => (spec.qkvBias ? get(p + `self_attn.${n}_proj.bias`) : undefined);
    const proj = (n: string, m: number, heads: number): Float64Array[] =>
      hs.map((h, j) => {
        const y = lin(h, get(p + `self_attn.${n}_proj.weight`), m, H, b(n));
        if (heads > 0) rotate(y, heads, D, positions[j] as number, spec.ropeTheta ?? 10000);
        return y;
      });
    const qs = proj('q', H, spec.heads);
    const ks = proj('k', KD, spec.kvHeads);
    const vs = proj('v', KD, 0);
    xs = xs.map((x, j) => {
      const o = lin(attend(qs, ks, vs, j, spec.heads, spec.kvHeads, D), get(p + 'self_attn.o_proj.weight'), H, H);
      return mlpBlock(x.map((v, i) => v + (o[i] as number)), get, p, H, spec.intermediate);
    });
  }
  return xs;
}

/**
 * float64 EAGLE-3 draft rows of one sequence: h[j] for tokens[j] with either the three target
 * features of row j (fc over their concatenation) or a Float64Array, the draft's own h (a deeper
 * row); causal attention over all rows. Also the draft logits lm_head(norm(h)).
 */
function referenceDraft3(spec: Eagle3HeadSpec, embed: Float64Array, tokens: number[], inputs: (Float64Array[] | Float64Array)[], positions: number[]): { h: Float64Array[]; logits: Float64Array[] } {
  const w = eagle3HeadTensors(spec);
  const H = spec.hidden;
  const Ht = spec.targetHidden ?? H;
  const D = H / spec.heads;
  const KD = spec.kvHeads * D;
  const get = (n: string): Float64Array => f64(w[n] as { data: unknown });
  const xs = inputs.map((inp) => (Array.isArray(inp) ? lin(cat(...inp), get('fc.weight'), H, 3 * Ht) : inp.slice()));
  const ins = xs.map((x, j) =>
    cat(rmsNorm(embed.subarray(tokens[j]! * H, (tokens[j]! + 1) * H), get('midlayer.input_layernorm.weight')), rmsNorm(x, get('midlayer.hidden_norm.weight'))),
  );
  const proj = (n: string, m: number, heads: number): Float64Array[] =>
    ins.map((v, j) => {
      const y = lin(v, get(`midlayer.self_attn.${n}_proj.weight`), m, 2 * H);
      if (heads > 0) rotate(y, heads, D, positions[j] as number);
      return y;
    });
  const qs = proj('q', H, spec.heads);
  const ks = proj('k', KD, spec.kvHeads);
  const vs = proj('v', KD, 0);
  const hs = xs.map((x, j) => {
    const o = lin(attend(qs, ks, vs, j, spec.heads, spec.kvHeads, D), get('midlayer.self_attn.o_proj.weight'), H, H);
    return mlpBlock(x.map((v, i) => v + (o[i] as number)), get, 'midlayer.', H, spec.intermediate);
  });
  return { h: hs, logits: hs.map((h) => lin(rmsNorm(h, get('norm.weight')), get('lm_head.weight'), spec.draftVocab, H)) };
}

/** A target checkpoint of `spec` with custom weights. */
function writeTarget(spec: CheckpointSpec, seed: number, edit?: (w: ReturnType<typeof randomWeights>) => void): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-eagle-target-'));
  const w = randomWeights(spec, seed);
  edit?.(w);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(configJson(spec)));
  writeSafetensors(path.join(dir, 'model.safetensors'), w, { format: 'pt' });
  return dir;
}

/**
 * A target whose blocks add nothing (o_proj, down_proj zero) and whose final norm weights are 1: its
 * logits are lm_head(e / rms(e)) for the last token's embedding e, which an echo head drafts exactly.
 */
function writeEchoTarget(spec: CheckpointSpec, seed: number): string {
  return writeTarget(spec, seed, (w) => {
    for (const [name, e] of Object.entries(w)) {
      if (/o_proj\.weight|down_proj\.weight/.test(name)) (e.data as Float32Array).fill(0);
      if (name === 'model.norm.weight') (e.data as Float32Array).fill(1);
    }
  });
}

describe('EAGLE heads', function () {
  this.timeout(120000);
  const seed = testSeed;
  // vocab 96, hidden 32, 4 heads / 2 KV heads; no EOS, so that every run generates all its tokens.
  const { eos: _eos, ...spec } = specByName('llama-gqa-f32');
  const headSpec: EagleHeadSpec = { hidden: spec.hidden, heads: 4, kvHeads: 2, intermediate: 48, layers: 2, vocab: spec.vocab, seed: seed + 1, qkvBias: true };

  it('the draft layers match a float64 reference (two calls over one cache, GQA, biases, 2 layers)', () => {
    const dir = writeEagleHead(headSpec);
    const head = EagleHead.load(dir, { device: 'cpu' });
    const r = rng(seed);
    const H = spec.hidden;
    const embed = Float64Array.from({ length: spec.vocab * H }, () => 2 * r() - 1);
    const embedT = Tensor.fromArray(Float32Array.from(embed), 'f32', [spec.vocab, H]);
    const n = 9;
    const tokens = Array.from({ length: n }, () => Math.floor(r() * spec.vocab));
    const positions = tokens.map((_, j) => 3 + j);
    const features = tokens.map(() => Float64Array.from({ length: H }, () => 2 * r() - 1));
    const ref = referenceDraft(headSpec, embed, tokens, features, positions);
    const cache = new KvCache({ numLayers: 2, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages: 16, dtype: 'f32' });
    const seq = cache.addSequence();
    let worst = 0;
    try {
      for (const [a, b] of [[0, 5], [5, n]] as const) {
        const batch = cache.plan([seq], [b - a]);
        const feats = Tensor.fromArray(Float32Array.from(features.slice(a, b).flatMap((f) => Array.from(f))), 'f32', [b - a, H]);
        const h = head.forward(embedT, cache, batch, Int32Array.from(tokens.slice(a, b)), [feats], Int32Array.from(positions.slice(a, b)));
        cache.commit(batch, [seq], [Int32Array.from({ length: b - a }, (_, i) => i)]);
        const got = h.toFloat32();
        for (let j = a; j < b; j++) {
          const want = ref[j] as Float64Array;
          const scale = Math.max(...Array.from(want, Math.abs));
          for (let i = 0; i < H; i++) worst = Math.max(worst, Math.abs((got[(j - a) * H + i] as number) - (want[i] as number)) / scale);
        }
        h.dispose();
        feats.dispose();
        batch.dispose();
      }
    } finally {
      cache.dispose();
      embedT.dispose();
      head.dispose();
    }
    assert.ok(worst < 2e-5, `largest error relative to the row's scale: ${worst}`);
  });

  it('greedy output equals plain decoding (random target and head; sized, fixed and narrow trees; a batch)', async () => {
    const target = await LlamaModel.load(writeTarget(spec, seed), { device: 'cpu', maxSequences: 4 });
    const head = EagleHead.load(writeEagleHead(headSpec), { device: 'cpu' });
    try {
      const r = rng(seed + 7);
      const prompts = [5, 1, 12, 3].map((n) => Int32Array.from({ length: n }, () => 3 + Math.floor(r() * (spec.vocab - 3))));
      const plain = await new SpeculativeDecoder({ target }).generateBatch(prompts, { maxNewTokens: 24 });
      for (const opts of [{}, { totalTokens: 20 }, { topK: 2, depth: 3, totalTokens: 6 }, { topK: 1, depth: 8, totalTokens: 8 }]) {
        const spec2 = new EagleSpeculator({ head, ...opts });
        try {
          const got = await new SpeculativeDecoder({ target, speculator: spec2 }).generateBatch(prompts, { maxNewTokens: 24 });
          got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain[i]!.tokens), `${JSON.stringify(opts)} prompt ${i}`));
          if (opts.totalTokens !== undefined) assert.ok(got.some((g) => g.stats.proposedDraftTokens > 0), `${JSON.stringify(opts)}: nothing proposed`);
        } finally {
          spec2.dispose();
        }
      }
    } finally {
      head.dispose();
      target.dispose();
    }
  });

  it('a head that predicts its target: deep trees accepted, output still plain', async () => {
    // The echo head gives h = 8 embed(t[j+1]): the echo target's vector up to a positive factor, so
    // the same greedy token, drafted with confidence (deep trees).
    const target = await LlamaModel.load(writeEchoTarget(spec, seed), { device: 'cpu', maxSequences: 2 });
    const head = EagleHead.load(writeEagleHead({ ...headSpec, echo: 8, fcBias: false, qkvBias: false, layers: 1 }), { device: 'cpu' });
    const speculator = new EagleSpeculator({ head, topK: 4, depth: 5, totalTokens: 24 });
    try {
      const prompts = [Int32Array.of(7, 8, 9), Int32Array.of(40)];
      const plain = await new SpeculativeDecoder({ target }).generateBatch(prompts, { maxNewTokens: 40 });
      const got = await new SpeculativeDecoder({ target, speculator }).generateBatch(prompts, { maxNewTokens: 40 });
      got.forEach((g, i) => {
        assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain[i]!.tokens));
        // 6 levels a step: at most 7 tokens a forward. At least three are accepted in every step (the
        // last may be cut by the budget); deeper ones mostly, unless the echo target's text settles on
        // one repeated token, where the head's fourth level misses (~3% of fixture seeds: tau 4.0).
        const steps = g.stats.targetForwards - 1;
        assert.ok(g.stats.tokensPerForward >= 4, `tokens per forward ${g.stats.tokensPerForward}`);
        assert.ok((g.stats.acceptedPerPosition[2] ?? 0) >= steps - 1, `accepted per position ${JSON.stringify(g.stats.acceptedPerPosition)} over ${steps} steps`);
      });
    } finally {
      speculator.dispose();
      head.dispose();
      target.dispose();
    }
  });

  it(`keeps the traces of live sequences and of the ${KEPT_TRACES} last released ones only (a server sees every request)`, async () => {
    const target = await LlamaModel.load(writeEchoTarget(spec, seed), { device: 'cpu', maxSequences: 1 });
    const head = EagleHead.load(writeEagleHead({ ...headSpec, echo: 8, fcBias: false, qkvBias: false, layers: 1 }), { device: 'cpu' });
    const speculator = new EagleSpeculator({ head, topK: 2, depth: 2, totalTokens: 4 });
    try {
      const dec = new SpeculativeDecoder({ target, speculator });
      for (let i = 0; i < KEPT_TRACES + 10; i++) await dec.generate(Int32Array.of(7, 8, 9), { maxNewTokens: 3 }).result;
      assert.strictEqual(speculator.trace.size, KEPT_TRACES);
      assert.ok([...speculator.trace.values()].at(-1)!.length >= 1);
    } finally {
      speculator.dispose();
      head.dispose();
      target.dispose();
    }
  });

  it('sized: deep, wide trees where the forward cost is flat; plain (with rare probes) where each node costs a forward', async () => {
    const target = await LlamaModel.load(writeEchoTarget(spec, seed), { device: 'cpu', maxSequences: 1 });
    const head = EagleHead.load(writeEagleHead({ ...headSpec, echo: 8, fcBias: false, qkvBias: false, layers: 1 }), { device: 'cpu' });
    const prompt = [Int32Array.of(7, 8, 9)];
    try {
      const plain = await new SpeculativeDecoder({ target }).generateBatch(prompt, { maxNewTokens: 48 });
      const run = async (cost: ForwardCost): Promise<{ tau: number; nodes: number[] }> => {
        setForwardCost(target, cost);
        const speculator = new EagleSpeculator({ head, topK: 4, depth: 5 });
        try {
          const [g] = await new SpeculativeDecoder({ target, speculator }).generateBatch(prompt, { maxNewTokens: 48 });
          assert.deepStrictEqual(Array.from(g!.tokens), Array.from(plain[0]!.tokens));
          return { tau: g!.stats.tokensPerForward, nodes: [...speculator.trace.values()].flat().map((t) => t.proposed) };
        } finally {
          speculator.dispose();
        }
      };
      // A second a forward whatever its size: every row of the draft is free beside it.
      const flat = await run(ForwardCost.fromFunction(() => 1, { frozen: true }));
      assert.ok(flat.tau > 4, `flat cost: tokens per forward ${flat.tau}`);
      assert.ok(Math.max(...flat.nodes) > 6, `flat cost: largest tree ${Math.max(...flat.nodes)} nodes (wide trees expected)`);
      // Each token costs a whole forward: no tree can pay; only probes propose (one node each).
      const linear = await run(ForwardCost.fromFunction((n) => n, { frozen: true }));
      assert.ok(linear.nodes.every((n) => n <= 1), `linear cost: trees of ${linear.nodes.filter((n) => n > 1).join(', ')} nodes`);
      assert.ok(linear.tau < 1.5, `linear cost: tokens per forward ${linear.tau}`);
      // Plain runs go to native chains (plainSteps): most of the 48 steps never reach update().
      assert.ok(linear.nodes.length < 16, `linear cost: ${linear.nodes.length} steps went through update (chains expected)`);
    } finally {
      head.dispose();
      target.dispose();
    }
  });

  it('the runner returns the inputs of chosen layers (auxLayers) as the float64 reference computes them', async () => {
    const deep = { ...spec, layers: 8 };
    const dir = writeTarget(deep, seed + 3);
    const model = await LlamaModel.load(dir, { device: 'cpu', maxSequences: 1 });
    try {
      const tokens = [5, 17, 3, 88, 41, 9];
      const ref = new LlamaReference(dir).forward(tokens);
      const seq = model.createSequence();
      const layers = [0, 2, 4, 5];
      const out = await model.forward([{ seq, tokens: Int32Array.from(tokens) }], { auxLayers: layers, hidden: true });
      try {
        assert.deepStrictEqual(out.aux?.shape, [layers.length, tokens.length, deep.hidden]);
        const got = out.aux!.toFloat32();
        let worst = 0;
        layers.forEach((l, k) => {
          const want = ref.layerInputs[l] as Float64Array;
          const scale = Math.max(...Array.from(want, Math.abs));
          for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[k * want.length + i]! - want[i]!) / scale);
        });
        assert.ok(worst < 1e-4, `largest error relative to the block's scale: ${worst}`);
      } finally {
        out.logits.dispose();
        out.hidden?.dispose();
        out.aux?.dispose();
      }
      await assert.rejects(model.forward([{ seq, tokens: Int32Array.of(1) }], { auxLayers: [8] }), /auxLayers\[0\] = 8 is not a layer/);
    } finally {
      model.dispose();
    }
  });

  const head3: Eagle3HeadSpec = { hidden: spec.hidden, heads: 4, kvHeads: 2, intermediate: 48, vocab: spec.vocab, draftVocab: 40, seed: seed + 5 };

  it('EAGLE-3: the midlayer, its logits and d2t match a float64 reference (own embedding, wider target features)', () => {
    const s3: Eagle3HeadSpec = { ...head3, targetHidden: 48, ownEmbed: true };
    const head = EagleHead.load(writeEagle3Head(s3), { device: 'cpu' });
    assert.strictEqual(head.config.version, 3);
    const r = rng(seed + 11);
    const H = s3.hidden;
    const embed = f64(eagle3HeadTensors(s3)['embed_tokens.weight'] as { data: unknown });
    const cache = new KvCache({ numLayers: 1, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages: 16, dtype: 'f32' });
    const seq = cache.addSequence();
    const unused = Tensor.zeros('f32', [spec.vocab, H]);
    const n1 = 5;
    const tokens = Array.from({ length: n1 + 2 }, () => Math.floor(r() * spec.vocab));
    const positions = tokens.map((_, j) => 2 + j);
    const feats = Array.from({ length: n1 }, () => [0, 1, 2].map(() => Float64Array.from({ length: 48 }, () => 2 * r() - 1)));
    let worst = 0;
    const compare = (got: Float32Array, want: Float64Array[], width: number, from: number): void => {
      want.forEach((row, j) => {
        const scale = Math.max(...Array.from(row, Math.abs));
        for (let i = 0; i < width; i++) worst = Math.max(worst, Math.abs(got[j * width + i]! - row[i]!) / scale);
      });
      void from;
    };
    try {
      // Rows with target features, then two deeper rows fed the draft's own h of rows 3 and 4.
      let batch = cache.plan([seq], [n1]);
      const blocks = [0, 1, 2].map((k) => Tensor.fromArray(Float32Array.from(feats.flatMap((f) => Array.from(f[k]!))), 'f32', [n1, 48]));
      const h1 = head.forward(unused, cache, batch, Int32Array.from(tokens.slice(0, n1)), blocks, Int32Array.from(positions.slice(0, n1)), true);
      cache.commit(batch, [seq], [Int32Array.from({ length: n1 }, (_, i) => i)]);
      batch.dispose();
      const h1v = h1.toFloat32();
      const own = [3, 4].map((j) => Float64Array.from(h1v.subarray(j * H, (j + 1) * H)));
      const ref = referenceDraft3(s3, embed, tokens, [...feats, ...own], positions);
      compare(h1v, ref.h.slice(0, n1), H, 0);
      batch = cache.plan([seq], [2]);
      const ownT = Tensor.fromArray(Float32Array.from([...own[0]!, ...own[1]!]), 'f32', [2, H]);
      const h2 = head.forward(unused, cache, batch, Int32Array.from(tokens.slice(n1)), [ownT], Int32Array.from(positions.slice(n1)), false);
      batch.dispose();
      compare(h2.toFloat32(), ref.h.slice(n1), H, n1);
      const logits = head.logits(h1, unused);
      assert.deepStrictEqual(logits.shape, [n1, s3.draftVocab]);
      compare(logits.toFloat32(), ref.logits.slice(0, n1), s3.draftVocab, 0);
      const ids = eagle3DraftIds(s3);
      assert.deepStrictEqual(Array.from(head.toTargetIds(Int32Array.of(0, 7, 39))), [ids[0], ids[7], ids[39]]);
      for (const t of [...blocks, ownT, h1, h2, logits]) t.dispose();
    } finally {
      cache.dispose();
      unused.dispose();
      head.dispose();
    }
    assert.ok(worst < 2e-5, `largest error relative to the row's scale: ${worst}`);
  });

  it('the native draft layers (eagleForward) give the bits of the op-by-op composition (both versions, two calls, deeper rows)', function () {
    if (!native().eagleForward) this.skip();
    const r = rng(seed + 13);
    for (const v3 of [false, true]) {
      const head = EagleHead.load(v3 ? writeEagle3Head({ ...head3, targetHidden: 48, ownEmbed: true }) : writeEagleHead(headSpec), { device: 'cpu' });
      const H = spec.hidden;
      const Ht = v3 ? 48 : H;
      const layers = v3 ? 1 : 2;
      const table = Tensor.fromArray(Float32Array.from({ length: spec.vocab * H }, () => 2 * r() - 1), 'f32', [spec.vocab, H]);
      const caches = [0, 1].map(() => new KvCache({ numLayers: layers, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages: 16, dtype: 'f32' }));
      const seqs = caches.map((c) => c.addSequence());
      try {
        const n = 6;
        const tokens = Int32Array.from({ length: n + 3 }, () => Math.floor(r() * spec.vocab));
        const positions = Int32Array.from(tokens, (_, j) => 4 + j);
        const blocks = Array.from({ length: v3 ? 3 : 1 }, () => Tensor.fromArray(Float32Array.from({ length: n * Ht }, () => 2 * r() - 1), 'f32', [n, Ht]));
        const own = Tensor.fromArray(Float32Array.from({ length: 3 * H }, () => 2 * r() - 1), 'f32', [3, H]);
        const outs = caches.map((cache, i) => {
          const run = i === 0 ? head.forward.bind(head) : head.composedForward.bind(head);
          let batch = cache.plan([seqs[i]!], [n]);
          const before = transferCounters();
          const h1 = run(table, cache, batch, tokens.subarray(0, n), blocks, positions.subarray(0, n), true);
          // The native call sends its ids and positions as one upload (the composition: one per array).
          if (i === 0) assert.strictEqual(transferCounters().uploads - before.uploads, 1, 'uploads of one native draft call');
          cache.commit(batch, [seqs[i]!], [Int32Array.from({ length: n }, (_, j) => j)]);
          batch.dispose();
          // The second call: EAGLE-3's deeper rows read the draft's own h; EAGLE-1/2 reads features again.
          batch = cache.plan([seqs[i]!], [3]);
          const second = v3 ? [own] : [Tensor.fromArray(Float32Array.from({ length: 3 * H }, () => 0.5), 'f32', [3, H])];
          const h2 = run(table, cache, batch, tokens.subarray(n), second, positions.subarray(n), !v3);
          batch.dispose();
          const out = [h1.toFloat32(), h2.toFloat32()];
          for (const t of [h1, h2, ...(v3 ? [] : second)]) t.dispose();
          return out;
        });
        assert.deepStrictEqual(outs[0]![0], outs[1]![0], `EAGLE-${v3 ? 3 : 1}: first call`);
        assert.deepStrictEqual(outs[0]![1], outs[1]![1], `EAGLE-${v3 ? 3 : 1}: second call`);
        for (const t of [...blocks, own]) t.dispose();
      } finally {
        for (const c of caches) c.dispose();
        table.dispose();
        head.dispose();
      }
      // A disposed head's native weights are released: its forward is an error, not a read of freed memory.
      const cache = new KvCache({ numLayers: layers, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages: 4, dtype: 'f32' });
      try {
        const batch = cache.plan([cache.addSequence()], [1]);
        assertThrowsCode(() => head.forward(Tensor.zeros('f32', [spec.vocab, H]), cache, batch, Int32Array.of(1), [Tensor.zeros('f32', [1, Ht])], Int32Array.of(0)), 'E_DISPOSED');
        batch.dispose();
      } finally {
        cache.dispose();
      }
    }
  });

  it('the native expansion (eagleExpand) proposes the trees of the op-by-op levels, in fewer calls and reads (both versions, wide trees and chains, greedy and sampled, with and without penalties)', async function () {
    if (!native().eagleExpand) this.skip();
    const deep = { ...spec, layers: 8 };
    const target = await LlamaModel.load(writeTarget(deep, seed + 5), { device: 'cpu', maxSequences: 4 });
    const heads = [EagleHead.load(writeEagleHead(headSpec), { device: 'cpu' }), EagleHead.load(writeEagle3Head(head3), { device: 'cpu' })];
    try {
      const r = rng(seed + 10);
      const prompts = [5, 1, 9].map((n) => Int32Array.from({ length: n }, () => 3 + Math.floor(r() * (spec.vocab - 3))));
      // Fixed trees only: a sized tree depends on the measured level costs, which the two paths differ in.
      const cases = [{ topK: 4, depth: 3, totalTokens: 12 }, { topK: 1, depth: 5, totalTokens: 5 }, { topK: 8, depth: 5, totalTokens: 40 }] as const;
      const bare = new Map<string, string[]>();
      const penalizedDiffer = new Set<number>();
      for (const [h, head] of heads.entries()) {
        for (const opts of cases) {
          // Penalized rows read their paths on the device natively (tree_paths), from the host's pools op by op.
          for (const [sampling, penalties] of [[undefined, undefined], [{ temperature: 0.8 }, undefined], [undefined, PEN], [{ temperature: 0.8 }, PEN]] as const) {
            // One after the other: the counters are the process's.
            const run = async (nativeExpansion: boolean) => {
              const { speculator, trees } = recordingEagle(head, opts, nativeExpansion);
              try {
                const before = transferCounters();
                const out = await new SpeculativeDecoder({ target, speculator, ...(penalties ? { penalties } : {}) }).generateBatch(prompts, { maxNewTokens: 16, ...(sampling ? { sampling, seed: 7 } : {}) });
                const after = transferCounters();
                return { trees, tokens: out.map((o) => Array.from(o.tokens)), napi: after.napiCalls - before.napiCalls, waits: after.blockingWaits - before.blockingWaits, drafted: out.reduce((a, o) => a + o.stats.proposedDraftTokens, 0) };
              } finally {
                speculator.dispose();
              }
            };
            const nat = await run(true);
            const js = await run(false);
            const what = `EAGLE-${h === 0 ? 1 : 3} ${JSON.stringify(opts)} ${sampling ? 'sampled' : 'greedy'}${penalties ? ', penalties' : ''}`;
            assert.ok(nat.drafted > 0, `${what}: nothing drafted`);
            assert.deepStrictEqual(nat.trees, js.trees, `${what}: trees`);
            assert.deepStrictEqual(nat.tokens, js.tokens, `${what}: tokens`);
            // A level is one call and one read natively (the loop: a dozen calls and two reads).
            assert.ok(nat.napi < 0.5 * js.napi, `${what}: ${nat.napi} N-API calls natively, ${js.napi} op by op`);
            assert.ok(nat.waits < js.waits, `${what}: ${nat.waits} waits natively, ${js.waits} op by op`);
            const key = `${h} ${JSON.stringify(opts)} ${sampling ? 's' : 'g'}`;
            if (!penalties) bare.set(key, nat.trees);
            else if (JSON.stringify(nat.trees) !== JSON.stringify(bare.get(key))) penalizedDiffer.add(h);
          }
        }
      }
      // The penalties reached the head's rows: some trees changed, for each version.
      assert.deepStrictEqual([...penalizedDiffer].sort(), [0, 1], 'penalized trees differ from the unpenalized ones');
    } finally {
      for (const h of heads) h.dispose();
      target.dispose();
    }
  });

  it('with penalties, each row\'s children avoid what the target will penalize: its history\'s output and the nodes above it; with a logit bias banning tokens, no node is one (both versions, native and op by op); draftPenalties: false does not', async function () {
    if (!native().eagleExpand) this.skip();
    const target = await LlamaModel.load(writeTarget({ ...spec, layers: 8 }, seed + 7), { device: 'cpu', maxSequences: 4 });
    const heads = [EagleHead.load(writeEagleHead(headSpec), { device: 'cpu' }), EagleHead.load(writeEagle3Head(head3), { device: 'cpu' })];
    try {
      const r = rng(seed + 13);
      const prompts = [4, 7].map((n) => Int32Array.from({ length: n }, () => 3 + Math.floor(r() * (spec.vocab - 3))));
      // A presence penalty no logit outweighs: a penalized token is never among a row's top 3 while
      // unpenalized ones remain (16 output tokens and a 4-deep path leave most of either vocabulary).
      // A logit bias banning a third of the target's vocabulary: EAGLE-3 bans their draft ids.
      const banned = new Set(Array.from({ length: spec.vocab }, (_, t) => t).filter((t) => t % 3 === 1));
      const settings = [
        { what: 'presence', penalties: { repetition: 1, presence: 1e4, frequency: 0 } as Penalties, hits: (t: number, output: Set<number>, above: Set<number>) => output.has(t) || above.has(t) },
        { what: 'logit bias', penalties: { logitBias: new Map([...banned].map((t) => [t, -Infinity])) } as Penalties, hits: (t: number) => banned.has(t) },
      ];
      for (const { what: kind, penalties, hits: isHit } of settings) {
        for (const [h, head] of heads.entries()) {
          for (const nativeExpansion of [true, false]) {
            const hits: number[] = [];
            for (const draftPenalties of [true, false]) {
              const speculator = new EagleSpeculator({ head, topK: 3, depth: 3, totalTokens: 10, draftPenalties });
              speculator.nativeExpansion = nativeExpansion;
              let hit = 0;
              let nodes = 0;
              const propose = speculator.propose.bind(speculator);
              speculator.propose = (seqs, ctx) => {
                const batch = propose(seqs, ctx);
                batch.proposals.forEach((p, b) => {
                  const s = seqs[b]!;
                  const output = new Set(s.history.slice(s.promptLength));
                  for (let i = 1; i < p.tokens.length; i++) {
                    const above = new Set<number>();
                    for (let a = p.parents[i]!; a > 0; a = p.parents[a]!) above.add(p.tokens[a]!);
                    nodes++;
                    if (isHit(p.tokens[i]!, output, above)) hit++;
                  }
                });
                return batch;
              };
              try {
                const want = await plainGenerate(target, prompts, { maxNewTokens: 16, penalties, ignoreEos: true });
                const got = await new SpeculativeDecoder({ target, speculator, penalties }).generateBatch(prompts, { maxNewTokens: 16, ignoreEos: true });
                got.forEach((o, i) => assert.deepStrictEqual(Array.from(o.tokens), Array.from(want.tokens[i]!), `prompt ${i}: the penalized target's tokens`));
              } finally {
                speculator.dispose();
              }
              assert.ok(nodes > 20, `${nodes} nodes drafted`);
              hits.push(hit);
            }
            const what = `EAGLE-${h === 0 ? 1 : 3}, ${nativeExpansion ? 'native' : 'op by op'}, ${kind}`;
            assert.strictEqual(hits[0], 0, `${what}: ${hits[0]} drafted nodes repeat their sequence's output or a node above them, or are banned`);
            assert.ok(hits[1]! > 0, `${what}: without draftPenalties no node repeated one (the check has no power)`);
          }
        }
      }
    } finally {
      for (const h of heads) h.dispose();
      target.dispose();
    }
  });

  it('expanding no wider or deeper than the largest tree (totalTokens, the KV room) changes no tree', async () => {
    // With n nodes kept, a node ranked past n - 1 among its level's nodes never makes the tree, nor
    // does a level past n - 1: 40-wide expansions cut to 9 rows a level, 30 levels cut to 4.
    const target = await LlamaModel.load(writeTarget(spec, seed + 6), { device: 'cpu', maxSequences: 4 });
    const head = EagleHead.load(writeEagleHead(headSpec), { device: 'cpu' });
    try {
      const r = rng(seed + 12);
      const prompts = [6, 2, 9].map((n) => Int32Array.from({ length: n }, () => 3 + Math.floor(r() * (spec.vocab - 3))));
      const trees = async (opts: Omit<EagleOptions, 'head'>, capExpansion = true): Promise<string[]> => {
        const rec = recordingEagle(head, opts, true);
        rec.speculator.capExpansion = capExpansion;
        try {
          await new SpeculativeDecoder({ target, speculator: rec.speculator }).generateBatch(prompts, { maxNewTokens: 20 });
          return rec.trees;
        } finally {
          rec.speculator.dispose();
        }
      };
      for (const opts of [{ topK: 40, depth: 4, totalTokens: 9 }, { topK: 2, depth: 30, totalTokens: 5 }, { topK: 12, depth: 12, totalTokens: 6 }]) {
        const capped = await trees(opts);
        assert.ok(capped.some((t) => t.split('|')[0]!.split(',').length === opts.totalTokens + 1), `${JSON.stringify(opts)}: full trees`);
        assert.deepStrictEqual(capped, await trees(opts, false), JSON.stringify(opts));
      }
    } finally {
      head.dispose();
      target.dispose();
    }
  });

  it('the embedded family\'s heads: greedy = plain, native and op-by-op trees the same (the body of the CUDA test below)', async function () {
    if (!native().eagleExpand) this.skip();
    await embeddedHeadsAgree('cpu');
  });

  it('the native expansion: its forks are freed after success and after a full cache; bad arguments name the problem', function () {
    if (!native().eagleExpand) this.skip();
    const r = rng(seed + 11);
    const H = spec.hidden;
    const head = EagleHead.load(writeEagleHead(headSpec), { device: 'cpu' });
    const rand = (rows: number, cols: number) => Tensor.fromArray(Float32Array.from({ length: rows * cols }, () => 2 * r() - 1), 'f32', [rows, cols]);
    const embed = rand(spec.vocab, H);
    const lmHead = rand(spec.vocab, H);
    const hRoot = rand(2, H);
    const make = (numPages: number) => new KvCache({ numLayers: headSpec.layers!, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages, dtype: 'f32' });
    const seqsOf = (cache: KvCache) => {
      const a = cache.addSequence(), b = cache.addSequence();
      return { draftSeqs: Int32Array.of(a, b), positions: Int32Array.of(3, 7), maxLevels: Int32Array.of(3, 1) };
    };
    const caches: KvCache[] = [];
    try {
      const roomy = make(64);
      caches.push(roomy);
      const seqs = seqsOf(roomy);
      const free = roomy.freePages;
      const x = head.expand(embed, lmHead, roomy, hRoot, seqs, 3, 2, 4)!;
      assert.strictEqual(roomy.freePages, free, 'the forks are freed');
      // Sequence 0 expands 3 levels of 2 rows (4 children each), sequence 1 one level (its maxLevels).
      assert.deepStrictEqual(Array.from(x.levelRows), [4, 2, 2]);
      assert.deepStrictEqual(x.pools.map((p) => p.tokens.length), [4 + 3 * 2 * 4, 4 + 2 * 4]);
      for (const p of x.pools) {
        for (let i = 0; i < p.tokens.length; i++) {
          const parent = p.parents[i]!;
          assert.ok(parent < i && p.levels[i] === (parent < 0 ? 1 : p.levels[parent]! + 1), `node ${i}: parent ${parent}`);
          assert.ok(p.logProbs[i]! <= (parent < 0 ? 0 : p.logProbs[parent]!) + 1e-12 && p.tokens[i]! >= 0 && p.tokens[i]! < spec.vocab);
        }
      }
      // Out of pages at the first level's forks: E_KV_FULL, and every page back.
      const tight = make(3);
      caches.push(tight);
      const seqs2 = seqsOf(tight);
      const free2 = tight.freePages;
      assertThrowsCode(() => head.expand(embed, lmHead, tight, hRoot, seqs2, 3, 4, 4), 'E_KV_FULL');
      assert.strictEqual(tight.freePages, free2, 'the forks of a failed expansion are freed');
      // Out of pages at the second level (the first takes 4 of 5): the same.
      const mid = make(5);
      caches.push(mid);
      const seqs3 = seqsOf(mid);
      const free3 = mid.freePages;
      assertThrowsCode(() => head.expand(embed, lmHead, mid, hRoot, seqs3, 3, 2, 4), 'E_KV_FULL');
      assert.strictEqual(mid.freePages, free3, 'the forks of an expansion failed at its second level are freed');
      // One upload and one read for the whole expansion, whatever its depth.
      const before = transferCounters();
      head.expand(embed, lmHead, roomy, hRoot, seqs, 3, 2, 4);
      const after = transferCounters();
      assert.strictEqual(after.blockingWaits - before.blockingWaits, 1, 'waits of a 3-level expansion');
      assert.strictEqual(after.uploads - before.uploads, 1, 'uploads of a 3-level expansion');
      assertThrowsCode(() => head.expand(embed, lmHead, roomy, rand(3, H), seqs, 3, 2, 4), 'E_ARG');
      assertThrowsCode(() => head.expand(embed, lmHead, roomy, hRoot, { ...seqs, positions: Int32Array.of(1) }, 3, 2, 4), 'E_ARG');
      assertThrowsCode(() => head.expand(embed, lmHead, roomy, hRoot, { ...seqs, draftSeqs: Int32Array.of(0, 99) }, 3, 2, 4), 'E_ARG');
      assertThrowsCode(() => head.expand(embed, lmHead, roomy, hRoot, seqs, 3, 0, 4), 'E_ARG');
      // Penalties: one history per sequence, in the head's vocabulary, checked before anything runs.
      const pen = { repetition: 1.2, presence: 0.5, frequency: 0.1, histIndptr: Int32Array.of(0, 1, 3), histTokens: Int32Array.of(5, 2, 7), histCounts: Int32Array.of(1, 0, 2) };
      const withPen = head.expand(embed, lmHead, roomy, hRoot, seqs, 3, 2, 4, pen)!;
      assert.strictEqual(roomy.freePages, free, 'the forks of a penalized expansion are freed');
      assert.deepStrictEqual(withPen.pools.map((p) => p.tokens.length), [4 + 3 * 2 * 4, 4 + 2 * 4]);
      for (const [bad, re] of [
        [{ histIndptr: Int32Array.of(0, 3), histTokens: Int32Array.of(2, 5, 7), histCounts: Int32Array.of(0, 1, 2) }, /penalties for 1 sequences, expected 2/],
        [{ histTokens: Int32Array.of(5, 2, spec.vocab) }, /outside the vocabulary/],
        [{ histTokens: Int32Array.of(5, 7, 2) }, /distinct and ascending/],
        [{ repetition: 0 }, /repetitionPenalty/],
      ] as const) {
        assertThrowsCode(() => head.expand(embed, lmHead, roomy, hRoot, seqs, 3, 2, 4, { ...pen, ...bad }), 'E_ARG', re);
        assert.strictEqual(roomy.freePages, free, `${re}: no page taken`);
      }
      roomy.dispose();
      assertThrowsCode(() => head.expand(embed, lmHead, roomy, hRoot, seqs, 3, 2, 4), 'E_DISPOSED');
    } finally {
      for (const c of caches) c.dispose();
      for (const t of [embed, lmHead, hRoot]) t.dispose();
      head.dispose();
    }
  });

  it('EAGLE-3: greedy output equals plain decoding (8-layer target; sized, fixed, narrow trees; layers from the config)', async () => {
    const deep = { ...spec, layers: 8 };
    const target = await LlamaModel.load(writeTarget(deep, seed + 4), { device: 'cpu', maxSequences: 3 });
    const heads = [EagleHead.load(writeEagle3Head(head3), { device: 'cpu' }), EagleHead.load(writeEagle3Head({ ...head3, auxLayers: [1, 6, 3] }), { device: 'cpu' })];
    try {
      const r = rng(seed + 9);
      const prompts = [6, 2, 9].map((n) => Int32Array.from({ length: n }, () => 3 + Math.floor(r() * (spec.vocab - 3))));
      const plain = await new SpeculativeDecoder({ target }).generateBatch(prompts, { maxNewTokens: 20 });
      for (const [i, opts] of [[0, {}], [0, { totalTokens: 12 }], [0, { topK: 2, depth: 3, totalTokens: 5 }], [1, { totalTokens: 8 }]] as const) {
        const speculator = new EagleSpeculator({ head: heads[i]!, ...opts });
        try {
          const got = await new SpeculativeDecoder({ target, speculator }).generateBatch(prompts, { maxNewTokens: 20 });
          got.forEach((g, b) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain[b]!.tokens), `${JSON.stringify(opts)} prompt ${b}`));
          assert.deepStrictEqual(speculator.auxLayers, i === 0 ? [2, 4, 5] : [1, 6, 3]);
          if (opts.totalTokens !== undefined) assert.ok(got.some((g) => g.stats.proposedDraftTokens > 0), `${JSON.stringify(opts)}: nothing proposed`);
        } finally {
          speculator.dispose();
        }
      }
    } finally {
      for (const h of heads) h.dispose();
      target.dispose();
    }
  });

  it('EAGLE-3: load and attach errors name the problem', async () => {
    assertThrowsCode(() => EagleHead.load(writeEagle3Head({ ...head3, omit: 'd2t' }), { device: 'cpu' }), 'E_FORMAT', /'d2t'/);
    assertThrowsCode(() => EagleHead.load(writeEagle3Head({ ...head3, omit: 'midlayer.hidden_norm.weight' }), { device: 'cpu' }), 'E_FORMAT', /midlayer\.hidden_norm\.weight/);
    const head = EagleHead.load(writeEagle3Head(head3), { device: 'cpu' });
    const shallow = await LlamaModel.load(writeTarget({ ...spec, layers: 4 }, seed), { device: 'cpu', maxSequences: 1 });
    const wideHead = EagleHead.load(writeEagle3Head({ ...head3, targetHidden: 48 }), { device: 'cpu' });
    try {
      // Layers 2, 2 and 1 of a 4-layer target: not three distinct ones.
      assertThrowsCode(() => new EagleSpeculator({ head }).attach(shallow), 'E_UNSUPPORTED', /three distinct/);
      assertThrowsCode(() => new EagleSpeculator({ head: wideHead }).attach(shallow), 'E_ARG', /features of size 48/);
    } finally {
      head.dispose();
      wideHead.dispose();
      shallow.dispose();
    }
  });

  it('load and attach errors name the problem', async () => {
    assertThrowsCode(() => EagleHead.load(path.join(os.tmpdir(), 'specdec-no-such-eagle')), 'E_IO');
    // An EAGLE-3 config over EAGLE-1 weights: fc reads [embedding; hidden], not three features.
    const mixed = writeEagleHead({ ...headSpec, layers: 1, config: { draft_vocab_size: 32 } });
    assertThrowsCode(() => EagleHead.load(mixed, { device: 'cpu' }), 'E_FORMAT', /'fc\.weight' has shape \[32,64\], expected \[32,96\]/);
    const missing = writeEagleHead({ ...headSpec, omit: 'layers.1.mlp.up_proj.weight' });
    assertThrowsCode(() => EagleHead.load(missing, { device: 'cpu' }), 'E_FORMAT', /layers\.1\.mlp\.up_proj\.weight/);
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-eagle-bin-'));
    fs.copyFileSync(path.join(missing, 'config.json'), path.join(bin, 'config.json'));
    fs.writeFileSync(path.join(bin, 'pytorch_model.bin'), 'not read');
    // A pytorch_model.bin is read (test/torch_checkpoint.test.ts); a damaged one names itself.
    assertThrowsCode(() => EagleHead.load(bin, { device: 'cpu' }), 'E_FORMAT', /pytorch_model\.bin: not a readable PyTorch zip checkpoint/);
    const prefixed = EagleHead.load(writeEagleHead({ ...headSpec, prefix: 'model.' }), { device: 'cpu' });
    assert.strictEqual(prefixed.config.numLayers, 2);
    prefixed.dispose();
    const wide = EagleHead.load(writeEagleHead({ ...headSpec, hidden: 48, heads: 4, kvHeads: 2 }), { device: 'cpu' });
    const target = await LlamaModel.load(writeTarget(spec, seed), { device: 'cpu', maxSequences: 1 });
    try {
      assertThrowsCode(() => new EagleSpeculator({ head: wide }).attach(target), 'E_ARG', /features of size 48/);
      assertThrowsCode(() => new EagleSpeculator({ head: wide, topK: 0 }), 'E_ARG', /topK/);
    } finally {
      wide.dispose();
      target.dispose();
    }
  });
});

describeCuda('EAGLE on CUDA', function () {
  this.timeout(300_000);
  it('the embedded family\'s heads: greedy = CUDA plain greedy; the native catch-up and expansion propose the op-by-op trees, with fewer waits', async () => {
    await embeddedHeadsAgree('cuda');
  });
});

/**
 * The embedded family's EAGLE-1/2 and EAGLE-3 heads on `device`, fixed trees (a wide one, a chain):
 * greedy output equals plain greedy decoding there, and the native catch-up and expansion propose
 * the trees of the op-by-op loop with fewer blocking waits.
 */
async function embeddedHeadsAgree(device: 'cpu' | 'cuda'): Promise<void> {
  const paths = defaultModelPaths();
  const target = await LlamaModel.load(paths.target, { device, maxSequences: 4 });
  const heads = [EagleHead.load(paths.eagle, { device }), EagleHead.load(paths.eagle3, { device })];
  try {
    const prompt = TextTokenizer.load(paths.target)!.encode('once upon a time');
    for (const [h, head] of heads.entries()) {
      // With penalties the rows' paths are read on the device (tree_paths) and penalized there.
      for (const [opts, penalties] of [[{ topK: 8, depth: 5, totalTokens: 24 }, undefined], [{ topK: 1, depth: 4, totalTokens: 4 }, undefined], [{ topK: 8, depth: 5, totalTokens: 24 }, PEN]] as const) {
        const plain = await plainGenerate(target, [prompt], { maxNewTokens: 48, ...(penalties ? { penalties } : {}) });
        const what = `${device} EAGLE-${h === 0 ? 1 : 3} ${JSON.stringify(opts)}${penalties ? ', penalties' : ''}`;
        const runs: { trees: string[]; tokens: number[]; waits: number; forwards: number }[] = [];
        for (const nativeExpansion of [true, false]) {
          const { speculator, trees } = recordingEagle(head, opts, nativeExpansion);
          try {
            const r = await new SpeculativeDecoder({ target, speculator, ...(penalties ? { penalties } : {}) }).generate(prompt, { maxNewTokens: 48 }).result;
            runs.push({ trees, tokens: Array.from(r.tokens), waits: r.stats.transfers.blockingWaits, forwards: r.stats.targetForwards });
          } finally {
            speculator.dispose();
          }
        }
        const [nat, js] = runs as [(typeof runs)[0], (typeof runs)[0]];
        assert.deepStrictEqual(nat.tokens, Array.from(plain.tokens[0]!), `${what}: plain greedy tokens`);
        assert.deepStrictEqual(nat.trees, js.trees, `${what}: trees`);
        assert.ok(nat.trees.some((t) => t.includes(',')), `${what}: nothing drafted`);
        assert.ok(nat.waits < js.waits, `${what}: ${nat.waits} waits natively, ${js.waits} op by op`);
        // A step waits twice: for its tree (the expansion's one read, however deep) and for its result.
        assert.ok(nat.waits <= 2 * nat.forwards, `${what}: ${nat.waits} waits in ${nat.forwards} target forwards`);
      }
      // One expansion, penalized or not, is one upload and one read (the penalties' arrays are staged in it).
      const c = head.config;
      const cache = new KvCache({ numLayers: c.numLayers, numKvHeads: c.numKvHeads, headDim: c.headDim, pageSize: 4, numPages: 256, dtype: device === 'cpu' ? 'f32' : 'bf16', device });
      const w = target.sharedWeights!();
      const hRoot = Tensor.fromArray(Float32Array.from({ length: 2 * c.hiddenSize }, (_, i) => Math.sin(i)), 'f32', [2, c.hiddenSize], device);
      try {
        const seqs = { draftSeqs: Int32Array.of(cache.addSequence(), cache.addSequence()), positions: Int32Array.of(0, 0), maxLevels: Int32Array.of(3, 2) };
        const pen = { ...PEN, histIndptr: Int32Array.of(0, 2, 3), histTokens: Int32Array.of(3, 5, 4), histCounts: Int32Array.of(1, 0, 2) };
        for (const p of [undefined, pen]) {
          const before = transferCounters();
          const x = head.expand(w.embedTokens, w.lmHead, cache, hRoot, seqs, 3, 2, 4, p)!;
          const after = transferCounters();
          assert.strictEqual(x.pools.length, 2);
          assert.strictEqual(after.uploads - before.uploads, 1, `${device} EAGLE-${h === 0 ? 1 : 3}${p ? ', penalized' : ''}: uploads of an expansion`);
          assert.strictEqual(after.blockingWaits - before.blockingWaits, 1, `${device} EAGLE-${h === 0 ? 1 : 3}${p ? ', penalized' : ''}: waits of an expansion`);
        }
      } finally {
        hRoot.dispose();
        w.embedTokens.dispose();
        w.lmHead.dispose();
        cache.dispose();
      }
    }
  } finally {
    for (const h of heads) h.dispose();
    target.dispose();
  }
}

/** An EAGLE speculator that records each proposal it makes ("tokens|parents"), with its draft side native or op by op. */
function recordingEagle(head: EagleHead, opts: Omit<EagleOptions, 'head'>, nativeExpansion: boolean): { speculator: EagleSpeculator; trees: string[] } {
  const speculator = new EagleSpeculator({ head, ...opts });
  speculator.nativeExpansion = nativeExpansion;
  const trees: string[] = [];
  const propose = speculator.propose.bind(speculator);
  speculator.propose = (seqs, ctx) => {
    const batch = propose(seqs, ctx);
    for (const p of batch.proposals) trees.push(`${Array.from(p.tokens).join(',')}|${Array.from(p.parents).join(',')}`);
    return batch;
  };
  return { speculator, trees };
}
