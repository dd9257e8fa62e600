// The trainer (cpp/train/ via lib/train/): finite-difference gradient checks of the full Llama
// backward, of the Medusa heads and of the EAGLE head (in float64), training actually lowers the
// loss, and the checkpoints it writes load in the runner (LlamaModel, MedusaHeads, EagleHead) with
// the same outputs as the trainer's own forward. Plus the corpus/tokenizer contract and argument errors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { readLlamaConfig } from '../lib/models/config';
import { LlamaModel } from '../lib/models/llama';
import { KvCache } from '../lib/kv';
import { EagleHead } from '../lib/strategies/eagle';
import { MedusaHeads } from '../lib/strategies/medusa';
import { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import {
  BatchSampler,
  buildVocab,
  corpusWords,
  defaultAuxLayers,
  Eagle3Trainer,
  EagleTrainer,
  EOS_ID,
  frequentIds,
  generateCorpus,
  learningRate,
  LlamaTrainer,
  MAX_VOCAB,
  MEDUSA_HEADS,
  MedusaTrainer,
  SAMPLE_PROMPT,
  trainDefaultFamily,
  story,
  seededRandom,
  writeTokenizerFiles,
  type LlamaTrainConfig,
} from '../lib/train';
import { rng, testSeed } from './helpers';

function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `specdec-train-${tag}-`));
}

function randomTokens(n: number, vocab: number, r: () => number): Int32Array {
  return Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** Random parameters of a sensible scale (norm weights around 1, matrices ~ 1/sqrt(fan_in) * 2),
 *  so every path of the network carries signal and the logits are spread out. */
function randomizeParams(
  t: { paramInfo(): readonly { readonly name: string; readonly shape: readonly number[] }[]; setParam(n: string, v: Float64Array): void },
  r: () => number,
): void {
  for (const p of t.paramInfo()) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    const fanIn = p.shape[p.shape.length - 1] ?? 1;
    const v = new Float64Array(n);
    if (p.shape.length === 1 && !p.name.endsWith('bias')) for (let i = 0; i < n; i++) v[i] = 0.6 + 0.8 * r();
    else for (let i = 0; i < n; i++) v[i] = (2 * r() - 1) * (p.shape.length === 1 ? 0.5 : 2 / Math.sqrt(fanIn));
    t.setParam(p.name, v);
  }
}

const tiny = (over: Partial<LlamaTrainConfig> = {}): LlamaTrainConfig => ({
  vocabSize: 23,
  hiddenSize: 16,
  intermediateSize: 24,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  tieWordEmbeddings: false,
  maxPositions: 64,
  ...over,
});

/** Checks analytic gradients against central differences: a random direction over all
 *  parameters, and single entries of every tensor. */
function gradCheck(
  name: string,
  params: Float64Array,
  grads: Float64Array,
  info: { name: string; shape: number[] }[],
  loss: (p: Float64Array) => number,
  r: () => number,
): void {
  const eps = 1e-5;
  const at = (p: Float64Array): number => loss(p);
  // Directional derivative over every parameter at once. Along a direction that moves every
  // parameter the central difference's own error (eps^2 f'''/6) reached 1.3e-6 for one seed
  // (413417339), so the reference is Richardson-extrapolated: (4 D(eps/2) - D(eps)) / 3 cancels the
  // eps^2 term, leaving O(eps^4).
  const d = Float64Array.from({ length: params.length }, () => 2 * r() - 1);
  const central = (h: number): number =>
    (at(Float64Array.from(params, (x, i) => x + h * d[i]!)) - at(Float64Array.from(params, (x, i) => x - h * d[i]!))) / (2 * h);
  const numeric = (4 * central(eps / 2) - central(eps)) / 3;
  let analytic = 0;
  for (let i = 0; i < params.length; i++) analytic += grads[i]! * d[i]!;
  assert.ok(Math.abs(numeric - analytic) <= 1e-6 * Math.max(1, Math.abs(numeric)), `${name}: directional derivative ${analytic} vs numeric ${numeric}`);
  // Entries of every tensor (three random ones each).
  let offset = 0;
  for (const p of info) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    for (let k = 0; k < 3; k++) {
      const i = offset + Math.floor(r() * n);
      const q = Float64Array.from(params);
      q[i] = params[i]! + eps;
      const lp = at(q);
      q[i] = params[i]! - eps;
      const lm = at(q);
      const num = (lp - lm) / (2 * eps);
      const g = grads[i]!;
      assert.ok(Math.abs(num - g) <= 1e-7 + 1e-5 * Math.abs(num), `${name}: d loss / d ${p.name}[${i - offset}] = ${g}, numeric ${num}`);
    }
    offset += n;
  }
  assert.strictEqual(offset, params.length);
  // The gradient is not trivially zero.
  assert.ok(grads.some((g) => Math.abs(g) > 1e-4), `${name}: gradient is all zero`);
}

describe(`trainer (seed ${testSeed})`, function () {
  this.timeout(60000);

  describe('corpus and tokenizer', () => {
    it('the grammar only emits vocabulary words, fits the vocabulary limit, and the tokenizer agrees', () => {
      const vocab = buildVocab(corpusWords());
      assert.ok(vocab.size <= MAX_VOCAB, `vocabulary ${vocab.size} > ${MAX_VOCAB}`);
      assert.strictEqual(vocab.get('<unk>'), 0);
      assert.strictEqual(vocab.get('<s>'), 1);
      assert.strictEqual(vocab.get('</s>'), EOS_ID);
      const ids = generateCorpus({ seed: testSeed, tokens: 50000 }, vocab);
      assert.ok(ids.length >= 50000);
      assert.ok(!ids.includes(0), 'the corpus contains <unk>');
      // The same seed gives the same corpus.
      assert.deepStrictEqual(generateCorpus({ seed: testSeed, tokens: 2000 }, vocab), ids.slice(0, generateCorpus({ seed: testSeed, tokens: 2000 }, vocab).length));

      const dir = tmpDir('tok');
      writeTokenizerFiles(dir, vocab);
      const tok = TextTokenizer.load(dir);
      assert.ok(tok);
      for (let s = 0; s < 5; s++) {
        const words = story(seededRandom(testSeed + s));
        const text = words.filter((w) => w !== '<s>' && w !== '</s>').join(' ');
        const expected = Int32Array.from(words.filter((w) => w !== '</s>').map((w) => vocab.get(w)!));
        assert.deepStrictEqual(tok.encode(text), expected, 'tokenizer.json encodes a story to the corpus ids');
        // Decoding joins words with spaces and cleans up before punctuation.
        const decoded = tok.decode(expected, { skipSpecialTokens: true });
        assert.strictEqual(decoded.replace(/ /g, ''), text.replace(/ /g, ''));
        assert.ok(!decoded.includes(' .'));
      }
      // Case folding, punctuation splitting and unknown words.
      assert.deepStrictEqual(Array.from(tok.encode('The CAT, zebra.')), [1, vocab.get('the'), vocab.get('cat'), vocab.get(','), 0, vocab.get('.')]);
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('batch sampler windows are stream slices; the schedule warms up and decays', () => {
      const ids = Int32Array.from({ length: 1000 }, (_, i) => i);
      const s = new BatchSampler(ids, 17, 5, testSeed);
      const b = s.next();
      assert.strictEqual(b.length, 85);
      for (let r = 0; r < 5; r++) for (let i = 1; i < 17; i++) assert.strictEqual(b[r * 17 + i], b[r * 17]! + i);
      const sched = { lr: 1, minLr: 0.1, warmupSteps: 10, totalSteps: 110 };
      assert.ok(Math.abs(learningRate(0, sched) - 0.1) < 1e-12);
      assert.ok(Math.abs(learningRate(9, sched) - 1) < 1e-12);
      assert.ok(Math.abs(learningRate(60, sched) - 0.55) < 1e-12);
      assert.ok(Math.abs(learningRate(110, sched) - 0.1) < 1e-12);
      assert.throws(() => new BatchSampler(ids.subarray(0, 5), 17, 1, 1), (e: Error & { code?: string }) => e.code === 'E_ARG');
    });
  });

  describe('Llama backward', () => {
    for (const tie of [false, true]) {
      it(`matches finite differences (f64, GQA, ${tie ? 'tied' : 'untied'} LM head)`, () => {
        const r = rng(testSeed + (tie ? 1 : 0));
        const cfg = tiny({ tieWordEmbeddings: tie });
        using m = LlamaTrainer.create(cfg, { seed: testSeed, precision: 'f64', threads: 2 });
        randomizeParams(m, r);
        const B = 3,
          T = 7;
        const tokens = randomTokens(B * (T + 1), cfg.vocabSize, r);
        const p0 = m.getParams() as Float64Array;
        assert.ok(p0 instanceof Float64Array);
        const loss0 = m.lossAndGrad(tokens, B, T);
        assert.ok(Number.isFinite(loss0) && loss0 > 0);
        const g = Float64Array.from(m.getGrads());
        const info = m.paramInfo().map((p) => ({ name: p.name, shape: [...p.shape] }));
        assert.strictEqual(info.some((p) => p.name === 'lm_head.weight'), !tie);
        gradCheck('llama', p0, g, info, (p) => {
          m.setParams(p);
          return m.lossAndGrad(tokens, B, T);
        }, r);
        // Threads only split the batch: one thread gives the same loss and gradient.
        m.setParams(p0);
        using one = LlamaTrainer.create(cfg, { seed: 1, precision: 'f64', threads: 1 });
        one.setParams(p0);
        assert.ok(Math.abs(one.lossAndGrad(tokens, B, T) - loss0) < 1e-12);
        const g1 = one.getGrads();
        for (let i = 0; i < g.length; i++) assert.ok(Math.abs(g1[i]! - g[i]!) < 1e-12 * Math.max(1, Math.abs(g[i]!)));
      });
    }

    it('f32 gradients agree with f64 gradients', () => {
      const r = rng(testSeed + 7);
      const cfg = tiny();
      using m64 = LlamaTrainer.create(cfg, { seed: 1, precision: 'f64' });
      randomizeParams(m64, r);
      using m32 = LlamaTrainer.create(cfg, { seed: 1, precision: 'f32', threads: 2 });
      m32.setParams(m64.getParams());
      const tokens = randomTokens(2 * 9, cfg.vocabSize, r);
      const l64 = m64.lossAndGrad(tokens, 2, 8);
      const l32 = m32.lossAndGrad(tokens, 2, 8);
      assert.ok(Math.abs(l64 - l32) < 1e-4 * l64, `${l32} vs ${l64}`);
      const g64 = m64.getGrads(),
        g32 = m32.getGrads();
      assert.ok(g32 instanceof Float32Array);
      let num = 0,
        den = 0;
      for (let i = 0; i < g64.length; i++) {
        num += (g32[i]! - g64[i]!) ** 2;
        den += g64[i]! ** 2;
      }
      assert.ok(Math.sqrt(num / den) < 1e-4, `relative gradient error ${Math.sqrt(num / den)}`);
    });
  });

  describe('training', () => {
    it('lowers the loss on a small corpus (and evalLoss agrees with the step loss)', async () => {
      const vocab = buildVocab(corpusWords());
      const ids = generateCorpus({ seed: testSeed, tokens: 20000 }, vocab);
      using m = LlamaTrainer.create(
        { ...tiny(), vocabSize: vocab.size, hiddenSize: 32, intermediateSize: 64, numLayers: 1, numHeads: 2, numKvHeads: 1 },
        { seed: testSeed, threads: 2 },
      );
      const sampler = new BatchSampler(ids, 33, 8, testSeed);
      const evalBatch = sampler.next();
      const before = await m.evalLoss(evalBatch, 8, 32);
      assert.ok(Math.abs(before - Math.log(vocab.size)) < 0.3, `initial loss ${before} should be near ln(V) = ${Math.log(vocab.size)}`);
      let first = NaN;
      for (let step = 0; step < 80; step++) {
        const batch = step === 0 ? evalBatch : sampler.next();
        const res = await m.trainStep(batch, 8, 32, { lr: learningRate(step, { lr: 1e-2, minLr: 1e-3, warmupSteps: 5, totalSteps: 80 }) });
        if (step === 0) first = res.loss;
        assert.ok(Number.isFinite(res.loss) && Number.isFinite(res.gradNorm));
      }
      assert.ok(Math.abs(first - before) < 1e-5, 'the first step reports the loss before the update');
      const after = await m.evalLoss(evalBatch, 8, 32);
      assert.ok(after < before - 1.5, `loss ${before} -> ${after}`);
    });
  });

  describe('checkpoints load in the runner', () => {
    for (const tie of [false, true]) {
      it(`LlamaModel logits and hidden states equal the trainer's forward (${tie ? 'tied' : 'untied'})`, async () => {
        const r = rng(testSeed + 11 + (tie ? 1 : 0));
        const cfg = tiny({ tieWordEmbeddings: tie, hiddenSize: 32, numHeads: 4, numKvHeads: 2, intermediateSize: 48, vocabSize: 40 });
        using m = LlamaTrainer.create(cfg, { seed: testSeed, threads: 2 });
        randomizeParams(m, r);
        const T = 19;
        const tokens = randomTokens(T, cfg.vocabSize, r);
        const ref = m.forward(tokens, 1, T);
        const dir = tmpDir('ckpt');
        m.save(dir, { dtype: 'F32' });
        const cfgJson = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
        assert.strictEqual(cfgJson['tie_word_embeddings'], tie);
        const model = await LlamaModel.load(dir, { device: 'cpu' });
        try {
          const seq = model.createSequence();
          const out = await model.forward([{ seq, tokens }], { hidden: true });
          const logits = out.logits.toFloat32();
          const hidden = out.hidden!.toFloat32();
          out.logits.dispose();
          out.hidden!.dispose();
          assert.strictEqual(logits.length, ref.logits.length);
          let scale = 0;
          for (const x of ref.logits) scale = Math.max(scale, Math.abs(x));
          for (let i = 0; i < logits.length; i++) assert.ok(Math.abs(logits[i]! - ref.logits[i]!) <= 1e-4 * scale, `logit ${i}: runner ${logits[i]} trainer ${ref.logits[i]}`);
          for (let i = 0; i < hidden.length; i++) assert.ok(Math.abs(hidden[i]! - ref.hidden[i]!) <= 1e-4, `hidden ${i}`);
          // Greedy choices agree too.
          for (let t = 0; t < T; t++) {
            const row = (a: ArrayLike<number>): number => {
              let best = 0;
              for (let v = 1; v < cfg.vocabSize; v++) if (a[t * cfg.vocabSize + v]! > a[t * cfg.vocabSize + best]!) best = v;
              return best;
            };
            assert.strictEqual(row(logits), row(ref.logits));
          }
        } finally {
          model.dispose();
          fs.rmSync(dir, { recursive: true, force: true });
        }
      });
    }
  });

  describe('Medusa heads', () => {
    const H = 12,
      V = 17;

    it('loss matches a float64 reference and the backward matches finite differences', () => {
      const r = rng(testSeed + 21);
      using heads = MedusaTrainer.create({ numHeads: 3, numLayers: 2, hiddenSize: H, vocabSize: V }, { seed: testSeed, precision: 'f64', threads: 2 });
      randomizeParams(heads, r);
      const B = 2,
        T = 6;
      const hidden = Float64Array.from({ length: B * T * H }, () => 2 * r() - 1);
      const tokens = randomTokens(B * T, V, r);
      const res = heads.lossAndGrad(hidden, tokens, B, T);
      // Reference: head h at position t predicts tokens[t + h + 2].
      const P = (name: string): Float64Array => heads.getParam(name) as Float64Array;
      let total = 0;
      for (let h = 0; h < 3; h++) {
        let sum = 0,
          count = 0;
        for (let b = 0; b < B; b++)
          for (let t = 0; t + h + 2 < T; t++) {
            let x = Array.from(hidden.subarray((b * T + t) * H, (b * T + t + 1) * H));
            for (let l = 0; l < 2; l++) {
              const w = P(`${h}.${l}.linear.weight`),
                bias = P(`${h}.${l}.linear.bias`);
              x = x.map((xi, i) => {
                let z = bias[i]!;
                for (let k = 0; k < H; k++) z += w[i * H + k]! * x[k]!;
                return xi + z / (1 + Math.exp(-z));
              });
            }
            const lm = P(`${h}.2.weight`);
            const logits = Array.from({ length: V }, (_, v) => x.reduce((s, xk, k) => s + lm[v * H + k]! * xk, 0));
            const mx = Math.max(...logits);
            const lse = mx + Math.log(logits.reduce((s, z) => s + Math.exp(z - mx), 0));
            sum += lse - logits[tokens[b * T + t + h + 2]!]!;
            count++;
          }
        assert.ok(Math.abs(res.headLoss[h]! - sum / count) < 1e-10, `head ${h}: ${res.headLoss[h]} vs ${sum / count}`);
        total += sum / count;
      }
      assert.ok(Math.abs(res.loss - total) < 1e-10);
      const p0 = heads.getParams() as Float64Array;
      const g = Float64Array.from(heads.getGrads());
      const info = heads.paramInfo().map((p) => ({ name: p.name, shape: [...p.shape] }));
      gradCheck('medusa', p0, g, info, (p) => {
        heads.setParams(p);
        return heads.lossAndGrad(hidden, tokens, B, T).loss;
      }, r);
    });

    it('trainStep feeds the target hidden states, learns, and saved heads give the runner the same logits', async () => {
      const r = rng(testSeed + 31);
      using target = LlamaTrainer.create(tiny({ hiddenSize: H, numHeads: 2, numKvHeads: 1, vocabSize: V }), { seed: testSeed, threads: 2 });
      randomizeParams(target, r);
      using heads = MedusaTrainer.create({ numHeads: 2, numLayers: 1, hiddenSize: H, vocabSize: V }, { seed: testSeed, threads: 2 });
      heads.initFromTarget(target);
      // Zero ResBlocks: each head starts as the target's LM head.
      const lm = target.getParam('lm_head.weight');
      assert.deepStrictEqual(heads.getParam('1.1.weight'), lm);
      // A periodic sequence: token t+2 is a function of token t, which the heads can learn.
      const B = 4,
        T = 24;
      const tokens = Int32Array.from({ length: B * T }, (_, i) => ((i % T) * 5 + Math.floor(i / T)) % V);
      const { hidden } = target.forward(tokens, B, T);
      const expect = heads.lossAndGrad(hidden, tokens, B, T);
      const first = await heads.trainStep(target, tokens, B, T, { lr: 1e-2 });
      assert.ok(Math.abs(first.loss - expect.loss) < 1e-4 * expect.loss, `trainStep loss ${first.loss} vs lossAndGrad on target hidden ${expect.loss}`);
      let last = first;
      for (let s = 0; s < 60; s++) last = await heads.trainStep(target, tokens, B, T, { lr: 1e-2 });
      assert.ok(last.loss < first.loss * 0.5, `medusa loss ${first.loss} -> ${last.loss}`);
      // The target is frozen.
      assert.deepStrictEqual(target.getParam('lm_head.weight'), lm);

      const dir = tmpDir('medusa');
      heads.save(dir, { dtype: 'F32', baseModel: '../target' });
      const loaded = MedusaHeads.load(dir, { device: 'cpu' });
      try {
        assert.strictEqual(loaded.config.numHeads, 2);
        assert.strictEqual(loaded.config.numLayers, 1);
        const N = 5;
        const x = Float32Array.from({ length: N * H }, () => 2 * r() - 1);
        const ref = heads.forward(x);
        using xt = Tensor.fromArray(x, 'f32', [N, H]);
        const outs = loaded.apply(xt);
        outs.forEach((o, h) => {
          const a = o.toFloat32();
          o.dispose();
          for (let i = 0; i < N * V; i++) assert.ok(Math.abs(a[i]! - ref[h * N * V + i]!) < 1e-4, `head ${h} logit ${i}: ${a[i]} vs ${ref[h * N * V + i]}`);
        });
      } finally {
        loaded.dispose();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('EAGLE head', () => {
    const H = 16,
      V = 19,
      cfg = { vocabSize: V, hiddenSize: H, intermediateSize: 20, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, maxPositions: 64 };

    it("the trainer's head is the runtime's (EagleHead.load of what it saves: h at positions 0..T-1)", () => {
      const r = rng(testSeed + 41);
      using head = EagleTrainer.create(cfg, { seed: testSeed, precision: 'f64' });
      randomizeParams(head, r);
      const T = 7;
      const tokens = randomTokens(T + 1, V, r);
      const features = Float64Array.from({ length: (T + 1) * H }, () => 2 * r() - 1);
      const embed = Float64Array.from({ length: V * H }, () => 2 * r() - 1);
      const lm = Float64Array.from({ length: V * H }, () => 2 * r() - 1);
      const want = head.forward(tokens, features, embed, lm, 1, T).h;
      const dir = tmpDir('eagle');
      try {
        head.save(dir, { dtype: 'F32' });
        const loaded = EagleHead.load(dir, { device: 'cpu' });
        const cache = new KvCache({ numLayers: 2, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages: 8, dtype: 'f32' });
        try {
          assert.strictEqual(loaded.config.version, 1);
          assert.strictEqual(loaded.config.fcBias, true);
          const seq = cache.addSequence();
          const batch = cache.plan([seq], [T]);
          using embedT = Tensor.fromArray(Float32Array.from(embed), 'f32', [V, H]);
          using feats = Tensor.fromArray(Float32Array.from(features.subarray(0, T * H)), 'f32', [T, H]);
          // Row j: token t[j + 1] with f[j] at position j, as the speculator feeds it.
          using h = loaded.forward(embedT, cache, batch, tokens.subarray(1), [feats], Int32Array.from({ length: T }, (_, j) => j));
          batch.dispose();
          const got = h.toFloat32();
          let worst = 0;
          for (let i = 0; i < T * H; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (1 + Math.abs(want[i]!)));
          assert.ok(worst < 2e-5, `runtime vs trainer: ${worst}`);
        } finally {
          cache.dispose();
          loaded.dispose();
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('losses match a float64 reference (SmoothL1 + soft cross-entropy) and the backward matches finite differences', () => {
      const r = rng(testSeed + 43);
      using head = EagleTrainer.create({ ...cfg, fcBias: true }, { seed: testSeed, precision: 'f64', threads: 2 });
      randomizeParams(head, r);
      const B = 2,
        T = 5;
      const tokens = randomTokens(B * (T + 1), V, r);
      // Features of unit scale and some beyond +-1 from h, so both branches of SmoothL1 are taken.
      const features = Float64Array.from({ length: B * (T + 1) * H }, () => 3 * (2 * r() - 1));
      const logits = Float64Array.from({ length: B * (T + 1) * V }, () => 3 * (2 * r() - 1));
      const embed = Float64Array.from({ length: V * H }, () => 2 * r() - 1);
      const lm = Float64Array.from({ length: V * H }, () => (2 * r() - 1) / 2);
      const opts = { vWeight: 0.7, pWeight: 0.3 };
      const res = head.lossAndGrad(tokens, features, logits, embed, lm, B, T, opts);
      const out = head.forward(tokens, features, embed, lm, B, T);
      let v = 0,
        p = 0,
        hits = 0,
        big = 0;
      for (let b = 0; b < B; b++) {
        for (let j = 0; j < T; j++) {
          const row = b * T + j;
          const next = b * (T + 1) + j + 1;
          let sl = 0;
          for (let i = 0; i < H; i++) {
            // h = lm-independent; its logits are lm h.
            const d = out.h[row * H + i]! - features[next * H + i]!;
            sl += Math.abs(d) < 1 ? 0.5 * d * d : Math.abs(d) - 0.5;
            if (Math.abs(d) >= 1) big++;
          }
          v += sl / H;
          const z = Array.from({ length: V }, (_, k) => {
            let acc = 0;
            for (let i = 0; i < H; i++) acc += lm[k * H + i]! * out.h[row * H + i]!;
            return acc;
          });
          z.forEach((zk, k) => assert.ok(Math.abs(zk - out.logits[row * V + k]!) < 1e-9));
          const tz = Array.from(logits.subarray(next * V, (next + 1) * V));
          const lse = (a: number[]): number => {
            const m = Math.max(...a);
            return m + Math.log(a.reduce((s, x) => s + Math.exp(x - m), 0));
          };
          const zl = lse(z),
            tl = lse(tz);
          p -= tz.reduce((s, x, k) => s + Math.exp(x - tl) * (z[k]! - zl), 0);
          if (z.indexOf(Math.max(...z)) === tz.indexOf(Math.max(...tz))) hits++;
        }
      }
      assert.ok(big > 0 && big < B * T * H, `both SmoothL1 branches taken (${big} of ${B * T * H} beyond 1)`);
      const n = B * T;
      assert.ok(Math.abs(res.vLoss - v / n) < 1e-10, `feature loss ${res.vLoss} vs ${v / n}`);
      assert.ok(Math.abs(res.pLoss - p / n) < 1e-10, `token loss ${res.pLoss} vs ${p / n}`);
      assert.ok(Math.abs(res.loss - (0.7 * v + 0.3 * p) / n) < 1e-10);
      assert.ok(Math.abs(res.accuracy - hits / n) < 1e-12, `accuracy ${res.accuracy} vs ${hits / n}`);
      const p0 = head.getParams() as Float64Array;
      const g = Float64Array.from(head.getGrads());
      const info = head.paramInfo().map((q) => ({ name: q.name, shape: [...q.shape] }));
      assert.ok(!info.some((q) => q.name === 'layers.0.input_layernorm.weight'), 'layer 0 has no input norm');
      assert.ok(info.some((q) => q.name === 'layers.1.input_layernorm.weight'));
      gradCheck('eagle', p0, g, info, (q) => {
        head.setParams(q);
        return head.lossAndGrad(tokens, features, logits, embed, lm, B, T, opts).loss;
      }, r);
      // Noise changes the loss, reproducibly for a seed.
      head.setParams(p0);
      const n1 = head.lossAndGrad(tokens, features, logits, embed, lm, B, T, { ...opts, noise: 0.5, noiseSeed: 3 }).loss;
      const n2 = head.lossAndGrad(tokens, features, logits, embed, lm, B, T, { ...opts, noise: 0.5, noiseSeed: 3 }).loss;
      const n3 = head.lossAndGrad(tokens, features, logits, embed, lm, B, T, { ...opts, noise: 0.5, noiseSeed: 4 }).loss;
      assert.strictEqual(n1, n2);
      assert.ok(n1 !== res.loss && n1 !== n3, `noise: ${res.loss}, ${n1}, ${n3}`);
    });

    it('trainStep reads the frozen target (features, logits, embedding, LM head) and learns', async () => {
      const r = rng(testSeed + 47);
      using target = LlamaTrainer.create(tiny({ hiddenSize: H, vocabSize: V }), { seed: testSeed, threads: 2 });
      randomizeParams(target, r);
      using head = EagleTrainer.create(EagleTrainer.configFor(tiny({ hiddenSize: H, vocabSize: V }), 1), { seed: testSeed, threads: 2 });
      const B = 4,
        T = 20;
      const tokens = Int32Array.from({ length: B * (T + 1) }, (_, i) => ((i % (T + 1)) * 7 + Math.floor(i / (T + 1))) % V);
      const { logits, hidden } = target.forward(tokens, B, T + 1);
      const embed = target.getParam('model.embed_tokens.weight');
      const lm = target.getParam('lm_head.weight');
      const expect = head.lossAndGrad(tokens, hidden, logits, embed, lm, B, T);
      const first = await head.trainStep(target, tokens, B, T, { lr: 3e-3 });
      assert.ok(Math.abs(first.loss - expect.loss) < 1e-5 * expect.loss, `trainStep loss ${first.loss} vs lossAndGrad on the target's outputs ${expect.loss}`);
      let last = first;
      for (let s = 0; s < 150; s++) last = await head.trainStep(target, tokens, B, T, { lr: 3e-3, noise: 0.05, noiseSeed: s });
      assert.ok(last.loss < first.loss * 0.5, `eagle loss ${first.loss} -> ${last.loss}`);
      assert.ok(last.accuracy > first.accuracy, `agreement ${first.accuracy} -> ${last.accuracy}`);
      assert.deepStrictEqual(target.getParam('lm_head.weight'), lm, 'the target is frozen');
    });
  });

  describe('EAGLE-3 head', () => {
    const H = 16,
      V = 21,
      base = { vocabSize: V, hiddenSize: H, intermediateSize: 20, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, maxPositions: 64 };
    // A draft vocabulary of 13 of the 21 ids (so d2t maps and some target choices are not draftable).
    const draftIds = Int32Array.of(0, 1, 3, 4, 6, 8, 9, 11, 12, 15, 17, 18, 20);
    const cfg = { ...base, draftIds, auxLayers: [1, 2, 3] as [number, number, number] };

    it("the trainer's head is the runtime's: catch-up rows from the target's features, then deeper steps from its own outputs", () => {
      const r = rng(testSeed + 61);
      using head = Eagle3Trainer.create(cfg, { seed: testSeed, precision: 'f64' });
      randomizeParams(head, r);
      const T = 7,
        S = 3;
      const tokens = randomTokens(T + 1, V, r);
      const features = Float64Array.from({ length: (T + 1) * 3 * H }, () => 2 * r() - 1);
      const embed = Float64Array.from({ length: V * H }, () => 2 * r() - 1);
      const want = head.forward(tokens, features, embed, 1, T, S);
      const Vd = draftIds.length;
      const dir = tmpDir('eagle3');
      try {
        head.save(dir, { dtype: 'F32' });
        const loaded = EagleHead.load(dir, { device: 'cpu' });
        const cache = new KvCache({ numLayers: 1, numKvHeads: 2, headDim: H / 4, pageSize: 4, numPages: 8, dtype: 'f32' });
        try {
          assert.strictEqual(loaded.config.version, 3);
          assert.strictEqual(loaded.config.draftVocabSize, Vd);
          assert.deepStrictEqual(loaded.config.auxLayers, [1, 2, 3]);
          assert.deepStrictEqual(loaded.toTargetIds(Int32Array.from({ length: Vd }, (_, d) => d)), draftIds, 'd2t maps draft ids to the draft vocabulary');
          using embedT = Tensor.fromArray(Float32Array.from(embed), 'f32', [V, H]);
          let worst = 0;
          const compare = (h: Tensor, step: number, rows: number[]): void => {
            const got = h.toFloat32();
            using lg = loaded.logits(h, embedT);
            const gotLogits = lg.toFloat32();
            rows.forEach((j, i) => {
              for (let c = 0; c < H; c++) {
                const w = want.h[(step * T + j) * H + c]!;
                worst = Math.max(worst, Math.abs(got[i * H + c]! - w) / (1 + Math.abs(w)));
              }
              for (let d = 0; d < Vd; d++) {
                const w = want.logits[(step * T + j) * Vd + d]!;
                worst = Math.max(worst, Math.abs(gotLogits[i * Vd + d]! - w) / (1 + Math.abs(w)));
              }
            });
          };
          // Row j = T - S: the catch-up of rows 0..j (token t[i + 1], features of position i, at i),
          // then steps 1 and 2 of row j (token t[j + s + 1], the previous step's h, at j + s).
          const j = T - S;
          const seq = cache.addSequence();
          const blocks = [0, 1, 2].map((k) =>
            Tensor.fromArray(Float32Array.from({ length: (j + 1) * H }, (_, i) => features[(Math.floor(i / H) * 3 + k) * H + (i % H)]!), 'f32', [j + 1, H]),
          );
          let batch = cache.plan([seq], [j + 1]);
          let h = loaded.forward(embedT, cache, batch, tokens.subarray(1, j + 2), blocks, Int32Array.from({ length: j + 1 }, (_, i) => i));
          cache.commit(batch, [seq], [Int32Array.from({ length: j + 1 }, (_, i) => i)]);
          batch.dispose();
          for (const b of blocks) b.dispose();
          compare(h, 0, Array.from({ length: j + 1 }, (_, i) => i));
          let rowAt = j; // row j's place in the last output
          for (let step = 1; step < S; step++) {
            const hj = Tensor.fromArray(h.toFloat32().slice(rowAt * H, rowAt * H + H), 'f32', [1, H]);
            h.dispose();
            batch = cache.plan([seq], [1]);
            h = loaded.forward(embedT, cache, batch, Int32Array.of(tokens[j + step + 1]!), [hj], Int32Array.of(j + step), false);
            cache.commit(batch, [seq], [Int32Array.of(0)]);
            batch.dispose();
            hj.dispose();
            rowAt = 0;
            compare(h, step, [j]);
          }
          h.dispose();
          assert.ok(worst < 2e-5, `runtime vs trainer: ${worst}`);
        } finally {
          cache.dispose();
          loaded.dispose();
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('the loss matches a float64 reference (masked where the target picks an undraftable token) and the backward matches finite differences', () => {
      const r = rng(testSeed + 67);
      using head = Eagle3Trainer.create(cfg, { seed: testSeed, precision: 'f64', threads: 2 });
      randomizeParams(head, r);
      const B = 2,
        T = 5,
        steps = 3,
        decay = 0.7;
      const Vd = draftIds.length;
      const tokens = randomTokens(B * (T + 1), V, r);
      const features = Float64Array.from({ length: B * (T + 1) * 3 * H }, () => 2 * r() - 1);
      const logits = Float64Array.from({ length: B * (T + 1) * V }, () => 3 * (2 * r() - 1));
      // Both kinds of rows for sure: the target's choice undraftable (ids 2, 5) at two positions, draftable (id 0) at one.
      logits[(0 * (T + 1) + 2) * V + 2] = 10;
      logits[(1 * (T + 1) + 4) * V + 5] = 10;
      logits[(0 * (T + 1) + 1) * V + 0] = 10;
      const embed = Float64Array.from({ length: V * H }, () => 2 * r() - 1);
      const res = head.lossAndGrad(tokens, features, logits, embed, B, T, { steps, decay });
      const out = head.forward(tokens, features, embed, B, T, steps);
      const inDraft = new Set(draftIds);
      const lse = (a: number[]): number => {
        const m = Math.max(...a);
        return m + Math.log(a.reduce((s, x) => s + Math.exp(x - m), 0));
      };
      let total = 0,
        masked = 0,
        rows = 0;
      for (let s = 0; s < steps; s++) {
        let loss = 0,
          hits = 0;
        for (let b = 0; b < B; b++) {
          for (let j = 0; j < T - s; j++) {
            rows++;
            const tz = Array.from(logits.subarray((b * (T + 1) + j + s + 1) * V, (b * (T + 1) + j + s + 2) * V));
            if (!inDraft.has(tz.indexOf(Math.max(...tz)))) {
              masked++;
              continue;
            }
            const z = Array.from(out.logits.subarray(((b * steps + s) * T + j) * Vd, ((b * steps + s) * T + j + 1) * Vd));
            const td = Array.from(draftIds, (t) => tz[t]!);
            const zl = lse(z),
              tl = lse(td);
            loss -= td.reduce((acc, x, d) => acc + Math.exp(x - tl) * (z[d]! - zl), 0);
            if (z.indexOf(Math.max(...z)) === td.indexOf(Math.max(...td))) hits++;
          }
        }
        assert.ok(Math.abs(res.stepLoss[s]! - loss / (B * T)) < 1e-10, `step ${s} loss ${res.stepLoss[s]} vs ${loss / (B * T)}`);
        assert.ok(Math.abs(res.stepAccuracy[s]! - hits / (B * (T - s))) < 1e-12, `step ${s} accuracy ${res.stepAccuracy[s]} vs ${hits / (B * (T - s))}`);
        total += decay ** s * (loss / (B * T));
      }
      assert.ok(masked > 0 && masked < rows, `some rows masked (${masked} of ${rows})`);
      assert.ok(Math.abs(res.loss - total) < 1e-10, `loss ${res.loss} vs ${total}`);
      assert.strictEqual(res.stepLoss.length, steps);
      const p0 = head.getParams() as Float64Array;
      const g = Float64Array.from(head.getGrads());
      const info = head.paramInfo().map((q) => ({ name: q.name, shape: [...q.shape] }));
      assert.deepStrictEqual(info.find((q) => q.name === 'midlayer.self_attn.q_proj.weight')?.shape, [16, 2 * H]);
      assert.deepStrictEqual(info.find((q) => q.name === 'lm_head.weight')?.shape, [Vd, H]);
      gradCheck('eagle3', p0, g, info, (q) => {
        head.setParams(q);
        return head.lossAndGrad(tokens, features, logits, embed, B, T, { steps, decay }).loss;
      }, r);
      // One step alone: step 0's rows are an ordinary causal layer; the later steps change the gradient.
      head.setParams(p0);
      const one = head.lossAndGrad(tokens, features, logits, embed, B, T, { steps: 1 });
      assert.ok(Math.abs(one.loss - res.stepLoss[0]!) < 1e-12 && one.stepLoss.length === 1);
    });

    it('trainStep reads the frozen target (three residual streams, logits, embedding) and learns', async () => {
      const r = rng(testSeed + 71);
      const targetCfg = tiny({ hiddenSize: H, vocabSize: V, numLayers: 4 });
      using target = LlamaTrainer.create(targetCfg, { seed: testSeed, threads: 2 });
      randomizeParams(target, r);
      assert.deepStrictEqual(defaultAuxLayers(4), [1, 2, 3]);
      assert.deepStrictEqual(defaultAuxLayers(32), [2, 16, 29]);
      const B = 4,
        T = 20;
      const tokens = Int32Array.from({ length: B * (T + 1) }, (_, i) => ((i % (T + 1)) * 7 + Math.floor(i / (T + 1))) % V);
      const ids = frequentIds(tokens, V, 15);
      assert.strictEqual(ids.length, 15);
      assert.ok(ids.every((t, i) => i === 0 || t > ids[i - 1]!), 'ascending');
      using head = Eagle3Trainer.create(Eagle3Trainer.configFor(targetCfg, ids), { seed: testSeed, threads: 2 });
      const { logits, aux } = target.forward(tokens, B, T + 1, [1, 2, 3]);
      assert.ok(aux !== undefined && aux.length === B * (T + 1) * 3 * H);
      const embed = target.getParam('model.embed_tokens.weight');
      const lm = target.getParam('lm_head.weight');
      const expect = head.lossAndGrad(tokens, aux, logits, embed, B, T, { steps: 4 });
      const first = await head.trainStep(target, tokens, B, T, { lr: 3e-3, steps: 4 });
      assert.ok(Math.abs(first.loss - expect.loss) < 1e-5 * expect.loss, `trainStep loss ${first.loss} vs lossAndGrad on the target's outputs ${expect.loss}`);
      // The soft cross-entropy's floor: the entropy of the target's draft-vocabulary distributions (KL above it is what can be learnt).
      const inDraft = new Set(ids);
      let floor = 0;
      for (let s = 0; s < 4; s++) {
        for (let b = 0; b < B; b++) {
          for (let j = 0; j < T - s; j++) {
            const z = Array.from(logits.subarray((b * (T + 1) + j + s + 1) * V, (b * (T + 1) + j + s + 2) * V));
            if (!inDraft.has(z.indexOf(Math.max(...z)))) continue;
            const zd = Array.from(ids, (t) => z[t]!);
            const m = Math.max(...zd);
            const ls = m + Math.log(zd.reduce((a, x) => a + Math.exp(x - m), 0));
            floor -= (0.8 ** s * zd.reduce((a, x) => a + Math.exp(x - ls) * (x - ls), 0)) / (B * T);
          }
        }
      }
      let last = first;
      for (let s = 0; s < 150; s++) last = await head.trainStep(target, tokens, B, T, { lr: 3e-3, steps: 4 });
      assert.ok(first.loss > floor && last.loss > floor - 1e-6, `losses ${first.loss}, ${last.loss} above the entropy ${floor}`);
      assert.ok(last.loss - floor < (first.loss - floor) * 0.5, `eagle-3 loss above its floor ${floor}: ${first.loss} -> ${last.loss}`);
      assert.ok(last.stepAccuracy[3]! > first.stepAccuracy[3]!, `step-3 agreement ${first.stepAccuracy[3]} -> ${last.stepAccuracy[3]}`);
      assert.deepStrictEqual(target.getParam('lm_head.weight'), lm, 'the target is frozen');
      assert.deepStrictEqual(target.getParam('model.embed_tokens.weight'), embed, 'the target is frozen');
    });
  });

  describe('default family recipe', () => {
    it('a scaled-down run writes loadable target, draft, Medusa heads, tokenizers and a README', async function () {
      this.timeout(60000);
      const dir = tmpDir('family');
      const lines: string[] = [];
      try {
        const r = await trainDefaultFamily({ outDir: dir, corpusTokens: 30000, stepScale: 0.003, threads: 2, log: (l) => lines.push(l) });
        assert.ok(lines.some((l) => l.startsWith('target: step')));
        for (const run of [r.target, r.draft]) assert.ok(Number.isFinite(run.heldoutLoss) && run.heldoutLoss > 0);
        const target = readLlamaConfig(path.join(dir, 'target'));
        const draft = readLlamaConfig(path.join(dir, 'draft'));
        assert.strictEqual(target.vocabSize, r.vocabSize);
        assert.strictEqual(draft.vocabSize, r.vocabSize);
        assert.deepStrictEqual(target.eosTokenIds, [EOS_ID]);
        assert.strictEqual(target.torchDtype, 'bfloat16');
        const model = await LlamaModel.load(path.join(dir, 'draft'), { device: 'cpu', maxSequences: 1 });
        assert.strictEqual(model.weightDtype, 'bf16');
        model.dispose();
        const heads = MedusaHeads.load(path.join(dir, 'medusa'), { device: 'cpu' });
        assert.strictEqual(heads.config.numHeads, MEDUSA_HEADS);
        assert.strictEqual(heads.config.hiddenSize, target.hiddenSize);
        assert.strictEqual(heads.config.baseModel, '../target');
        heads.dispose();
        const eagle = EagleHead.load(path.join(dir, 'eagle'), { device: 'cpu' });
        assert.strictEqual(eagle.config.hiddenSize, target.hiddenSize);
        eagle.dispose();
        assert.ok(r.eagle.heldoutAgreement >= 0 && r.eagle.heldoutAgreement <= 1);
        const eagle3 = EagleHead.load(path.join(dir, 'eagle3'), { device: 'cpu' });
        assert.strictEqual(eagle3.config.version, 3);
        assert.deepStrictEqual(eagle3.config.auxLayers, [1, 2, 3]);
        assert.strictEqual(eagle3.config.draftVocabSize, Math.min(256, r.vocabSize));
        eagle3.dispose();
        assert.strictEqual(r.eagle3.heldoutAgreement.length, 7);
        assert.ok(r.eagle3.heldoutAgreement.every((a) => a >= 0 && a <= 1));
        for (const d of ['target', 'draft']) assert.ok(TextTokenizer.load(path.join(dir, d)));
        assert.ok(fs.readFileSync(path.join(dir, 'README.md'), 'utf8').includes('MIT'));
        assert.ok(r.sample.startsWith(SAMPLE_PROMPT));
        const total = Object.values(r.bytes).reduce((a, b) => a + b, 0);
        assert.ok(total < 10 * 1024 * 1024, `${total} bytes`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('argument errors', () => {
    const code = (c: string) => (e: Error & { code?: string }) => e.code === c && e.message.length > 0;
    it('names the bad argument', () => {
      assert.throws(() => LlamaTrainer.create(tiny({ numHeads: 3, numKvHeads: 2, hiddenSize: 18 }), { seed: 1 }), code('E_ARG'));
      using m = LlamaTrainer.create(tiny(), { seed: 1 });
      assert.throws(() => m.lossAndGrad(new Int32Array(3 * 8).fill(23), 3, 7), (e: Error & { code?: string }) => e.code === 'E_ARG' && /tokens\[0\] = 23/.test(e.message));
      assert.throws(() => m.lossAndGrad(new Int32Array(10), 3, 7), (e: Error & { code?: string }) => e.code === 'E_ARG' && /tokens/.test(e.message));
      assert.throws(() => m.forward(new Int32Array(7).fill(-1), 1, 7), code('E_ARG'));
      assert.throws(() => m.setParam('nope', new Float32Array(1)), (e: Error & { code?: string }) => e.code === 'E_ARG' && /nope/.test(e.message));
      assert.throws(() => m.setParam('model.norm.weight', new Float32Array(3)), code('E_ARG'));
      assert.throws(() => m.setParam('model.norm.weight', new Float32Array(16).fill(NaN)), code('E_ARG'));
      assert.throws(() => void m.trainStep(new Int32Array(8), 1, 7, { lr: -1 }), code('E_ARG'));
      using heads = MedusaTrainer.create({ numHeads: 1, numLayers: 1, hiddenSize: 8, vocabSize: 23 }, { seed: 1 });
      assert.throws(() => void heads.trainStep(m, new Int32Array(8), 1, 8, { lr: 1e-3 }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /target/.test(e.message));
      assert.throws(() => heads.lossAndGrad(new Float32Array(8 * 4), new Int32Array(3), 1, 4), code('E_ARG'));
      m.dispose();
      assert.throws(() => m.getParams(), code('E_DISPOSED'));
    });

    it('refuses a second step while one is running', async () => {
      using m = LlamaTrainer.create(tiny(), { seed: 1, threads: 2 });
      const tokens = new Int32Array(2 * 33).fill(1);
      const p = m.trainStep(tokens, 2, 32, { lr: 1e-3 });
      assert.throws(() => m.getParams(), code('E_BUSY'));
      await p;
      assert.ok(m.getParams().length > 0);
    });
  });
});
