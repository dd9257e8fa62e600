// EAGLE heads (lib/strategies/eagle.ts): the draft layer against a float64 reference, greedy output
// equal to plain decoding on random Llama targets, a head that predicts its target (deep trees
// accepted), and the load errors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { ForwardCost, setForwardCost } from '../lib/cost_model';
import { SpeculativeDecoder } from '../lib/decoder';
import { KvCache } from '../lib/kv';
import { LlamaModel } from '../lib/models/llama';
import { writeSafetensors } from '../lib/safetensors';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { Tensor } from '../lib/tensor';
import { configJson, randomWeights, specByName, type CheckpointSpec } from './fixtures/checkpoints';
import { eagleHeadTensors, writeEagleHead, type EagleHeadSpec } from './fixtures/eagle_head';
import { assertThrowsCode, rng, testSeed } from './helpers';

const f64 = (e: { data: unknown }): Float64Array => Float64Array.from(e.data as Float32Array);

/** float64 EAGLE draft rows 0..n-1 of one sequence: h[j] for (tokens[j], features[j]) at position positions[j], causal. */
function referenceDraft(spec: EagleHeadSpec, embed: Float64Array, tokens: number[], features: Float64Array[], positions: number[]): Float64Array[] {
  const w = eagleHeadTensors(spec);
  const H = spec.hidden;
  const D = H / spec.heads;
  const KD = spec.kvHeads * D;
  const I = spec.intermediate;
  const get = (n: string): Float64Array => f64(w[n] as { data: unknown });
  const lin = (x: Float64Array, W: Float64Array, m: number, k: number, b?: Float64Array): Float64Array => {
    const y = new Float64Array(m);
    for (let i = 0; i < m; i++) {
      let s = b ? (b[i] as number) : 0;
      for (let j = 0; j < k; j++) s += (W[i * k + j] as number) * (x[j] as number);
      y[i] = s;
    }
    return y;
  };
  const norm = (x: Float64Array, g: Float64Array): Float64Array => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + 1e-5);
    return x.map((v, i) => v * r * (g[i] as number));
  };
  const rot = (x: Float64Array, heads: number, pos: number): void => {
    const half = D / 2;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const f = pos * Math.pow(spec.ropeTheta ?? 10000, (-2 * i) / D);
        const a = x[h * D + i] as number, b = x[h * D + i + half] as number;
        x[h * D + i] = a * Math.cos(f) - b * Math.sin(f);
        x[h * D + i + half] = b * Math.cos(f) + a * Math.sin(f);
      }
    }
  };
  const fcW = get('fc.weight');
  const fcB = spec.fcBias === false ? undefined : get('fc.bias');
  let xs = tokens.map((t, j) => {
    const cat = new Float64Array(2 * H);
    cat.set(embed.subarray(t * H, (t + 1) * H), 0);
    cat.set(features[j] as Float64Array, H);
    return lin(cat, fcW, H, 2 * H, fcB);
  });
  for (let l = 0; l < (spec.layers ?? 1); l++) {
    const p = `layers.${l}.`;
    const hs = xs.map((x) => (l === 0 ? x : norm(x, get(p + 'input_layernorm.weight'))));
    const b = (n: string): Float64Array | undefined => (spec.qkvBias ? get(p + `self_attn.${n}_proj.bias`) : undefined);
    const qs = hs.map((h, j) => {
      const q = lin(h, get(p + 'self_attn.q_proj.weight'), H, H, b('q'));
      rot(q, spec.heads, positions[j] as number);
      return q;
    });
    const ks = hs.map((h, j) => {
      const k = lin(h, get(p + 'self_attn.k_proj.weight'), KD, H, b('k'));
      rot(k, spec.kvHeads, positions[j] as number);
      return k;
    });
    const vs = hs.map((h) => lin(h, get(p + 'self_attn.v_proj.weight'), KD, H, b('v')));
    xs = xs.map((x, j) => {
      const att = new Float64Array(H);
      for (let h = 0; h < spec.heads; h++) {
        const g = Math.floor(h / (spec.heads / spec.kvHeads));
        const sc = Array.from({ length: j + 1 }, (_, t) => {
          let s = 0;
          for (let d = 0; d < D; d++) s += (qs[j]![h * D + d] as number) * (ks[t]![g * D + d] as number);
          return s / Math.sqrt(D);
        });
        const m = Math.max(...sc);
        const e = sc.map((s) => Math.exp(s - m));
        const z = e.reduce((a, v) => a + v, 0);
        for (let t = 0; t <= j; t++) for (let d = 0; d < D; d++) att[h * D + d]! += ((e[t] as number) / z) * (vs[t]![g * D + d] as number);
      }
      const y = x.map((v, i) => v + (lin(att, get(p + 'self_attn.o_proj.weight'), H, H)[i] as number));
      const h2 = norm(y, get(p + 'post_attention_layernorm.weight'));
      const gate = lin(h2, get(p + 'mlp.gate_proj.weight'), I, H);
      const up = lin(h2, get(p + 'mlp.up_proj.weight'), I, H);
      const act = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * (up[i] as number));
      const down = lin(act, get(p + 'mlp.down_proj.weight'), H, I);
      return y.map((v, i) => v + (down[i] as number));
    });
  }
  return xs;
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
        const h = head.forward(embedT, cache, batch, Int32Array.from(tokens.slice(a, b)), feats, Int32Array.from(positions.slice(a, b)));
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
        // 6 levels a step: at most 7 tokens a forward, 40 tokens in >= 7 forwards.
        assert.ok(g.stats.tokensPerForward > 4, `tokens per forward ${g.stats.tokensPerForward}`);
      });
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
    } finally {
      head.dispose();
      target.dispose();
    }
  });

  it('load and attach errors name the problem', async () => {
    assertThrowsCode(() => EagleHead.load(path.join(os.tmpdir(), 'specdec-no-such-eagle')), 'E_IO');
    const eagle3 = writeEagleHead({ ...headSpec, config: { draft_vocab_size: 32 } });
    assertThrowsCode(() => EagleHead.load(eagle3, { device: 'cpu' }), 'E_UNSUPPORTED', /EAGLE-3/);
    const missing = writeEagleHead({ ...headSpec, omit: 'layers.1.mlp.up_proj.weight' });
    assertThrowsCode(() => EagleHead.load(missing, { device: 'cpu' }), 'E_FORMAT', /layers\.1\.mlp\.up_proj\.weight/);
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-eagle-bin-'));
    fs.copyFileSync(path.join(missing, 'config.json'), path.join(bin, 'config.json'));
    fs.writeFileSync(path.join(bin, 'pytorch_model.bin'), 'not read');
    assertThrowsCode(() => EagleHead.load(bin, { device: 'cpu' }), 'E_FORMAT', /pytorch_model\.bin.*convert/);
    const prefixed = EagleHead.load(writeEagleHead({ ...headSpec, prefix: 'model.' }), { device: 'cpu' });
    assert.strictEqual(prefixed.config.numLayers, 2);
    prefixed.dispose();
    const wide = EagleHead.load(writeEagleHead({ ...headSpec, hidden: 48, heads: 4, kvHeads: 2 }), { device: 'cpu' });
    const target = await LlamaModel.load(writeTarget(spec, seed), { device: 'cpu', maxSequences: 1 });
    try {
      assertThrowsCode(() => new EagleSpeculator({ head: wide }).attach(target), 'E_ARG', /hidden size 48/);
      assertThrowsCode(() => new EagleSpeculator({ head: wide, topK: 0 }), 'E_ARG', /topK/);
    } finally {
      wide.dispose();
      target.dispose();
    }
  });
});
