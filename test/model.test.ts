// The Llama-family runner against a float64 reference (test/reference/llama_ref.ts) on random
// checkpoints (test/fixtures/checkpoints.ts): logits, greedy decoding, batch invariance, trees,
// KV bookkeeping, loader validation and input errors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../lib/models/llama';
import { parseLlamaConfig } from '../lib/models/config';
import { plainGenerate, streamOffset } from '../lib/plain';
import { processLogits } from '../lib/sampling';
import { TextTokenizer } from '../lib/tokenizer';
import type { Tensor } from '../lib/tensor';
import { CHECKPOINTS, configJson, specByName, writeCheckpoint, type CheckpointSpec } from './fixtures/checkpoints';
import { assertChiSquareFits, assertThrowsCode, describeCuda, redrawOnce, rng, testSeed } from './helpers';
import { LlamaReference } from './reference/llama_ref';

// f32 activations vs float64 over 2 layers of width <= 128: rounding stays far below 3e-5 relative;
// a real bug (wrong rope, mask, bias, scaling) moves logits by O(0.1). Observed: ~2e-6.
const TOL = 3e-5;

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol = TOL): void {
  assert.strictEqual(got.length, want.length, `${what}: length`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    const g = got[i] as number;
    const w = want[i] as number;
    const err = Math.abs(g - w) / (1 + Math.abs(w));
    if (!(err <= worst)) {
      worst = err;
      at = i;
    }
  }
  assert.ok(worst <= tol, `${what}: max relative error ${worst} at ${at} (got ${got[at]}, want ${want[at]}), tolerance ${tol}`);
}

function randomTokens(n: number, vocab: number, r: () => number): Int32Array {
  return Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
}

function readLogits(t: Tensor): Float32Array {
  const a = t.toFloat32();
  t.dispose();
  return a;
}

/**
 * Greedy tokens must equal the reference's; past a step where the reference's top-2 logits are
 * closer than f32 rounding can resolve, the two may legitimately part ways, so comparison stops.
 */
function assertSameGreedy(got: ArrayLike<number>, ref: { tokens: number[]; gaps: number[] }, what: string): void {
  for (let s = 0; s < ref.tokens.length; s++) {
    if (got[s] !== ref.tokens[s]) {
      assert.ok(ref.gaps[s]! < 1e-3, `${what}: step ${s}: got ${got[s]}, reference ${ref.tokens[s]} (top-2 gap ${ref.gaps[s]})`);
      return;
    }
  }
  assert.strictEqual(got.length, ref.tokens.length, `${what}: length`);
}

async function expectCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error & { code?: string }) => {
    assert.strictEqual(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    if (message) assert.match(e.message, message);
    return true;
  });
}

describe('Llama runner (cpu)', function () {
  this.timeout(60000);
  let root: string;
  const dirs = new Map<string, string>();
  const refs = new Map<string, LlamaReference>();
  const r = rng(testSeed);

  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-model-test-'));
    CHECKPOINTS.forEach((spec, k) => {
      const dir = path.join(root, spec.name);
      writeCheckpoint(dir, spec, testSeed + 17 * k);
      dirs.set(spec.name, dir);
      refs.set(spec.name, new LlamaReference(dir));
    });
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  const load = (name: string, opts: Parameters<typeof LlamaModel.load>[1] = {}): Promise<LlamaModel> =>
    LlamaModel.load(dirs.get(name)!, { device: 'cpu', kvDtype: 'f32', ...opts });

  describe('logits and greedy decoding vs the float64 reference', () => {
    for (const spec of CHECKPOINTS) {
      it(`${spec.name}: prompt logits, hidden states, and an 8-token greedy continuation`, async () => {
        const ref = refs.get(spec.name)!;
        const model = await load(spec.name);
        try {
          assert.strictEqual(model.weightDtype, spec.dtype.toLowerCase());
          assert.strictEqual(model.config.architecture, spec.architecture);
          const prompt = randomTokens(20, spec.vocab, r);
          const seq = model.createSequence();
          const out = await model.forward([{ seq, tokens: prompt }], { hidden: true });
          assert.deepStrictEqual(out.logits.shape, [20, spec.vocab]);
          assert.deepStrictEqual(Array.from(out.indptr), [0, 20]);
          const want = ref.forward(Array.from(prompt));
          assertClose(readLogits(out.logits), want.logits, `${spec.name} logits`);
          assertClose(out.hidden!.toFloat32(), want.hidden, `${spec.name} hidden`);
          out.hidden!.dispose();
          model.freeSequence(seq);

          const gen = await plainGenerate(model, [prompt], { maxNewTokens: 8 });
          assertSameGreedy(gen.tokens[0]!, ref.greedy(Array.from(prompt), 8, model.config.eosTokenIds), spec.name);
          assert.strictEqual(gen.stats.targetForwards, gen.tokens[0]!.length);
        } finally {
          model.dispose();
        }
      });
    }

    it('a KV cache in f16 / bf16 matches the reference with K and V rounded the same way', async () => {
      const ref = refs.get('llama-gqa-f32')!;
      for (const kvDtype of ['f16', 'bf16'] as const) {
        const model = await load('llama-gqa-f32', { kvDtype });
        try {
          assert.strictEqual(model.kvInfo().dtype, kvDtype);
          const prompt = randomTokens(12, 96, r);
          const seq = model.createSequence();
          // Prompt first, then a chain of 4 reading the rounded cache.
          await model.forward([{ seq, tokens: prompt.subarray(0, 8) }]).then((o) => o.logits.dispose());
          model.commit([seq], [Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7])]);
          const out = await model.forward([{ seq, tokens: prompt.subarray(8) }]);
          const want = ref.forward(Array.from(prompt), { kvRound: kvDtype }).logits.subarray(8 * 96);
          // Rounding K/V of an f32 vs an f64 value can differ by one half-precision ulp now and then.
          assertClose(readLogits(out.logits), want, `kv ${kvDtype}`, kvDtype === 'f16' ? 2e-3 : 1e-2);
        } finally {
          model.dispose();
        }
      }
    });
  });

  describe('batch invariance (bit-identical logits)', () => {
    it('a sequence alone equals the same sequence inside a ragged batch', async () => {
      const model = await load('llama-mqa-bf16');
      try {
        const a = randomTokens(13, 96, r);
        const s0 = model.createSequence();
        const alone = readLogits((await model.forward([{ seq: s0, tokens: a }])).logits);
        model.freeSequence(s0);
        const [x, y, z] = [model.createSequence(), model.createSequence(), model.createSequence()];
        const out = await model.forward([
          { seq: x, tokens: randomTokens(5, 96, r) },
          { seq: y, tokens: a },
          { seq: z, tokens: randomTokens(21, 96, r) },
        ]);
        assert.deepStrictEqual(Array.from(out.indptr), [0, 5, 18, 39]);
        const all = readLogits(out.logits);
        assert.deepStrictEqual(all.subarray(5 * 96, 18 * 96), alone);
      } finally {
        model.dispose();
      }
    });

    it('lastLogitsOnly: each sequence\'s last row, the same bits as in the full logits; hidden states unchanged', async () => {
      const model = await load('llama-gqa-f32');
      try {
        const V = model.config.vocabSize;
        const seqs = [model.createSequence(), model.createSequence(), model.createSequence()];
        const inputs = [5, 1, 12].map((n, b) => ({ seq: seqs[b]!, tokens: randomTokens(n, V, r) }));
        // Neither forward is committed: both see the same (empty) context.
        const full = await model.forward(inputs, { hidden: true });
        const last = await model.forward(inputs, { hidden: true, lastLogitsOnly: true });
        assert.strictEqual(last.logitsRows, 'last');
        assert.strictEqual(full.logitsRows, undefined);
        assert.deepStrictEqual(last.logits.shape, [3, V]);
        assert.deepStrictEqual(Array.from(last.indptr), [0, 5, 6, 18]);
        const all = readLogits(full.logits);
        const got = readLogits(last.logits);
        [5, 6, 18].forEach((end, b) => assert.deepStrictEqual(got.subarray(b * V, (b + 1) * V), all.subarray((end - 1) * V, end * V), `sequence ${b}`));
        assert.deepStrictEqual(last.hidden!.toFloat32(), full.hidden!.toFloat32());
        last.hidden!.dispose();
        full.hidden!.dispose();
        // One token each: every row is a last row.
        const one = await model.forward(inputs.map((x) => ({ ...x, tokens: x.tokens.subarray(0, 1) })), { lastLogitsOnly: true });
        assert.deepStrictEqual(one.logits.shape, [3, V]);
        one.logits.dispose();
      } finally {
        model.dispose();
      }
    });

    it('a 16-token chain verified at once equals feeding it one token at a time', async () => {
      const model = await load('qwen2-bias-f16');
      try {
        const V = 96;
        const prompt = randomTokens(7, V, r);
        const chain = randomTokens(16, V, r);
        const [s1, s2] = [model.createSequence(), model.createSequence()];
        for (const s of [s1, s2]) {
          (await model.forward([{ seq: s, tokens: prompt }])).logits.dispose();
          model.commit([s], [Int32Array.from(prompt.keys())]);
        }
        const once = readLogits((await model.forward([{ seq: s1, tokens: chain }])).logits);
        for (let i = 0; i < 16; i++) {
          const step = readLogits((await model.forward([{ seq: s2, tokens: chain.subarray(i, i + 1) }])).logits);
          model.commit([s2], [Int32Array.of(0)]);
          assert.deepStrictEqual(step, once.subarray(i * V, (i + 1) * V), `token ${i}`);
        }
        assert.strictEqual(model.sequenceLength(s2), 23);
        assert.strictEqual(model.sequenceLength(s1), 7, 'an uncommitted forward leaves the length alone');
      } finally {
        model.dispose();
      }
    });
  });

  describe('token trees', () => {
    // Node:    0   1   2   3   4   5   6
    // parent: -1   0   0   1   1   2  -1   (two roots, siblings at every level)
    const parents = Int32Array.from([-1, 0, 0, 1, 1, 2, -1]);
    const pathOf = (i: number): number[] => (i < 0 ? [] : [...pathOf(parents[i]!), i]);

    it('each node gets the logits of its own path; an accepted path commits and decoding continues', async () => {
      const name = 'llama3-rope-f32';
      const ref = refs.get(name)!;
      const V = 96;
      const model = await load(name);
      try {
        const prompt = randomTokens(9, V, r);
        const tree = randomTokens(7, V, r);
        const seq = model.createSequence();
        (await model.forward([{ seq, tokens: prompt }])).logits.dispose();
        model.commit([seq], [Int32Array.from(prompt.keys())]);
        const other = model.createSequence(); // a chain in the same batch
        const otherTokens = randomTokens(4, V, r);
        const out = await model.forward([
          { seq: other, tokens: otherTokens },
          { seq, tokens: tree, parents },
        ]);
        const logits = readLogits(out.logits);
        for (let i = 0; i < 7; i++) {
          const path = [...prompt, ...pathOf(i).map((j) => tree[j]!)];
          const want = ref.forward(path).logits.subarray((path.length - 1) * V);
          assertClose(logits.subarray((4 + i) * V, (5 + i) * V), want, `node ${i}`);
        }
        assertClose(logits.subarray(0, 4 * V), ref.forward(Array.from(otherTokens)).logits, 'chain beside the tree');

        // The same tree as an explicit mask (ancestor closure) with explicit positions: identical.
        const bits = new BigUint64Array(7);
        for (let i = 0; i < 7; i++) for (const j of pathOf(i)) bits[i] = bits[i]! | (1n << BigInt(j));
        const depth = Int32Array.from({ length: 7 }, (_, i) => 9 + pathOf(i).length - 1);
        const masked = readLogits((await model.forward([{ seq, tokens: tree, mask: { bits, words: 1 }, positions: depth }])).logits);
        assert.deepStrictEqual(masked, logits.subarray(4 * V));
        // A mask with more words than needed (zeros past the last token) means the same.
        const wide = new BigUint64Array(14);
        for (let i = 0; i < 7; i++) wide[2 * i] = bits[i]!;
        const maskedWide = readLogits((await model.forward([{ seq, tokens: tree, mask: { bits: wide, words: 2 }, positions: depth }])).logits);
        assert.deepStrictEqual(maskedWide, masked);

        // Accept the path 0 -> 1 -> 4, then feed one more token: it must see prompt + that path.
        (await model.forward([{ seq, tokens: tree, parents }])).logits.dispose();
        model.commit([seq], [Int32Array.from([0, 1, 4])]);
        assert.strictEqual(model.sequenceLength(seq), 12);
        const next = randomTokens(1, V, r);
        const after = readLogits((await model.forward([{ seq, tokens: next }])).logits);
        const full = [...prompt, tree[0]!, tree[1]!, tree[4]!, next[0]!];
        assertClose(after, ref.forward(full).logits.subarray(12 * V), 'after commit');
      } finally {
        model.dispose();
      }
    });

    it('a tree wider than one mask word (70 nodes): deep nodes and a late sibling see only their paths', async () => {
      const name = 'qwen2-bias-f16';
      const ref = refs.get(name)!;
      const V = 96;
      const model = await load(name);
      try {
        // A chain 0..68 and node 69 a child of node 3 (its mask bits live in word 0, its row in word 1).
        const n = 70;
        const par = Int32Array.from({ length: n }, (_, i) => (i === 69 ? 3 : i - 1));
        const toks = randomTokens(n, V, r);
        const seq = model.createSequence();
        const logits = readLogits((await model.forward([{ seq, tokens: toks, parents: par }])).logits);
        const full = ref.forward(Array.from(toks.subarray(0, 69))).logits;
        for (const i of [0, 63, 64, 68]) assertClose(logits.subarray(i * V, (i + 1) * V), full.subarray(i * V, (i + 1) * V), `chain node ${i}`);
        const side = [toks[0]!, toks[1]!, toks[2]!, toks[3]!, toks[69]!];
        assertClose(logits.subarray(69 * V), ref.forward(side).logits.subarray(4 * V), 'sibling node 69');
      } finally {
        model.dispose();
      }
    });

    it('commit rejects nodes that are not a root-to-node path, and a second commit', async () => {
      const model = await load('llama-gqa-f32');
      try {
        const seq = model.createSequence();
        (await model.forward([{ seq, tokens: randomTokens(7, 96, r), parents }])).logits.dispose();
        assert.throws(() => model.commit([seq], [Int32Array.from([0, 2, 3])]), (e: Error & { code?: string }) => e.code === 'E_ARG' && /not a path/.test(e.message));
        assert.throws(() => model.commit([seq], [Int32Array.from([1])]), /not a path/);
        assert.throws(() => model.commit([seq], [Int32Array.from([0, 9])]), /outside the 7 tokens/);
        model.commit([seq], [Int32Array.from([0, 2, 5])]);
        assert.strictEqual(model.sequenceLength(seq), 3);
        assert.throws(() => model.commit([seq], [Int32Array.from([0])]), (e: Error & { code?: string }) => e.code === 'E_ARG' && /no uncommitted forward/.test(e.message));
      } finally {
        model.dispose();
      }
    });
  });

  describe('sequences: fork, truncate, free', () => {
    it('a fork continues from the shared prefix independently; truncate rolls back', async () => {
      const name = 'mistral-bf16';
      const ref = refs.get(name)!;
      const V = 96;
      const model = await load(name, { pageSize: 4 });
      try {
        const prompt = randomTokens(10, V, r); // 2.5 pages: the fork shares a partly filled page
        const a = model.createSequence();
        (await model.forward([{ seq: a, tokens: prompt }])).logits.dispose();
        model.commit([a], [Int32Array.from(prompt.keys())]);
        const b = model.forkSequence(a);
        assert.strictEqual(model.sequenceLength(b), 10);
        const [ta, tb] = [randomTokens(3, V, r), randomTokens(5, V, r)];
        const out = await model.forward([
          { seq: a, tokens: ta },
          { seq: b, tokens: tb },
        ]);
        model.commit([a, b], [Int32Array.from([0, 1, 2]), Int32Array.from([0, 1, 2, 3, 4])]);
        const got = readLogits(out.logits);
        assertClose(got.subarray(0, 3 * V), ref.forward([...prompt, ...ta]).logits.subarray(10 * V), 'fork parent');
        assertClose(got.subarray(3 * V), ref.forward([...prompt, ...tb]).logits.subarray(10 * V), 'fork child');

        model.truncate(b, 6);
        assert.strictEqual(model.sequenceLength(b), 6);
        const tc = randomTokens(2, V, r);
        const again = readLogits((await model.forward([{ seq: b, tokens: tc }])).logits);
        assertClose(again, ref.forward([...prompt.subarray(0, 6), ...tc]).logits.subarray(6 * V), 'after truncate');
        const before = model.kvInfo().freePages;
        model.freeSequence(b);
        assert.ok(model.kvInfo().freePages > before, 'free returns pages');
        await expectCode(model.forward([{ seq: b, tokens: tc }]), 'E_ARG', /does not exist/);
      } finally {
        model.dispose();
      }
    });
  });

  describe('input errors', () => {
    it('ids outside the vocabulary, bad parents, positions past the context: coded errors, state unchanged', async () => {
      const model = await load('llama-gqa-f32');
      try {
        const seq = model.createSequence();
        await expectCode(model.forward([{ seq, tokens: Int32Array.from([1, 96]) }]), 'E_ARG', /inputs\[0\]\.tokens\[1\]: token id 96 is outside the vocabulary \[0, 96\)/);
        await expectCode(model.forward([{ seq, tokens: Int32Array.from([1, -1]) }]), 'E_ARG', /token id -1/);
        await expectCode(model.forward([{ seq, tokens: Int32Array.from([1, 2]), parents: Int32Array.from([-1, 1]) }]), 'E_ARG', /parents\[1\]/);
        await expectCode(model.forward([{ seq, tokens: Int32Array.from([1, 2]), positions: Int32Array.from([0, 128]) }]), 'E_ARG', /position 128/);
        await expectCode(model.forward([{ seq, tokens: new Int32Array(129) }]), 'E_ARG', /outside the context of 128 positions/);
        await expectCode(model.forward([{ seq, tokens: Int32Array.of(1) }, { seq, tokens: Int32Array.of(2) }]), 'E_ARG', /appears twice/);
        await expectCode(model.forward([{ seq, tokens: Int32Array.of(1, 2), mask: { bits: BigUint64Array.of(1n, 1n), words: 1 } }]), 'E_ARG', /does not see token 1 itself/);
        await expectCode(model.forward([]), 'E_ARG', /empty batch/);
        assert.strictEqual(model.sequenceLength(seq), 0);
        // plainGenerate checks prompts up front.
        await expectCode(plainGenerate(model, [Int32Array.from([3, 200])], { maxNewTokens: 2 }), 'E_ARG', /prompts\[0\]\[1\]: token id 200/);
        await expectCode(plainGenerate(model, [new Int32Array(128)], { maxNewTokens: 2 }), 'E_ARG', /128 tokens do not fit the context of 128/);
        // Still usable.
        const ok = await model.forward([{ seq, tokens: Int32Array.of(5, 6) }]);
        ok.logits.dispose();
      } finally {
        model.dispose();
      }
    });

    it('a full KV cache is E_KV_FULL naming the numbers, and changes nothing', async () => {
      const model = await load('llama-gqa-f32', { kvPages: 3, pageSize: 4 });
      try {
        const seq = model.createSequence();
        (await model.forward([{ seq, tokens: randomTokens(8, 96, r) }])).logits.dispose();
        model.commit([seq], [Int32Array.from({ length: 8 }, (_, i) => i)]);
        await expectCode(model.forward([{ seq, tokens: randomTokens(5, 96, r) }]), 'E_KV_FULL', /KV cache full.*\b3\b/); // names the page count
        assert.strictEqual(model.sequenceLength(seq), 8);
        const out = await model.forward([{ seq, tokens: randomTokens(4, 96, r) }]);
        out.logits.dispose();
      } finally {
        model.dispose();
      }
    });

    it('one operation at a time: commit during a forward is E_BUSY; disposed models are E_DISPOSED', async () => {
      const model = await load('llama-gqa-f32');
      const seq = model.createSequence();
      const p = model.forward([{ seq, tokens: randomTokens(4, 96, r) }]);
      assert.throws(() => model.commit([seq], [Int32Array.of(0)]), (e: Error & { code?: string }) => e.code === 'E_BUSY');
      (await p).logits.dispose();
      model.dispose();
      assert.throws(() => model.createSequence(), (e: Error & { code?: string }) => e.code === 'E_DISPOSED');
    });
  });

  describe('loader validation', () => {
    const copyOf = (name: string): string => {
      const dir = fs.mkdtempSync(path.join(root, `${name}-copy-`));
      for (const f of fs.readdirSync(dirs.get(name)!)) fs.copyFileSync(path.join(dirs.get(name)!, f), path.join(dir, f));
      return dir;
    };
    const rewriteConfig = (dir: string, edit: (c: Record<string, unknown>) => void): void => {
      const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      edit(c);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c));
    };
    const loadErr = (dir: string, re: RegExp, code = 'E_FORMAT'): Promise<void> => expectCode(LlamaModel.load(dir, { device: 'cpu' }), code, re);

    it('config.json: missing, malformed, unsupported architecture, missing or invalid fields', async () => {
      const dir = copyOf('llama-gqa-f32');
      fs.unlinkSync(path.join(dir, 'config.json'));
      await loadErr(dir, /config\.json: not found/);
      fs.writeFileSync(path.join(dir, 'config.json'), '{ "architectures": [');
      await loadErr(dir, /config\.json: invalid JSON/);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...configJson(specByName('llama-gqa-f32')), architectures: ['GPT2LMHeadModel'] }));
      await loadErr(dir, /config\.json: unsupported architecture \["GPT2LMHeadModel"\]/);
      rewriteConfig(dir, (c) => {
        c['architectures'] = ['LlamaForCausalLM'];
        delete c['hidden_size'];
      });
      await loadErr(dir, /config\.json: missing field 'hidden_size'/);
      rewriteConfig(dir, (c) => {
        c['hidden_size'] = 32;
        c['num_key_value_heads'] = 3;
      });
      await loadErr(dir, /not a multiple of num_key_value_heads/);
      rewriteConfig(dir, (c) => {
        c['num_key_value_heads'] = 2;
        c['rope_scaling'] = { rope_type: 'dynamic', factor: 4 };
      });
      await loadErr(dir, /rope_scaling type "dynamic" is not supported/);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('llama-gqa-f32')), vocab_size: -3 }), /'vocab_size' must be an integer >= 1/);
      await loadErr(path.join(root, 'no-such-dir'), /not a model directory/);
    });

    it('generation_config.json: its eos_token_id joins config.json\'s stop tokens (a list, a number, null); a bad one is named', async () => {
      const { readLlamaConfig } = await import('../lib/models/config');
      const dir = copyOf('llama-gqa-f32');
      assert.deepStrictEqual(readLlamaConfig(dir).eosTokenIds, [2]);
      const gen = (v: unknown): void => fs.writeFileSync(path.join(dir, 'generation_config.json'), typeof v === 'string' ? v : JSON.stringify(v));
      gen({ bos_token_id: 1, eos_token_id: [2, 7, 9], do_sample: true });
      assert.deepStrictEqual(readLlamaConfig(dir).eosTokenIds, [2, 7, 9]);
      gen({ eos_token_id: 5 });
      assert.deepStrictEqual(readLlamaConfig(dir).eosTokenIds, [2, 5]);
      gen({ eos_token_id: null });
      assert.deepStrictEqual(readLlamaConfig(dir).eosTokenIds, [2]);
      // The runner stops there: plain decoding ends at a generation_config-only stop token.
      gen({ eos_token_id: [2, 7] });
      const m = await LlamaModel.load(dir, { device: 'cpu' });
      assert.deepStrictEqual(m.config.eosTokenIds, [2, 7]);
      m.dispose();
      gen({ eos_token_id: [2, 96] });
      assert.throws(() => readLlamaConfig(dir), /generation_config\.json: field 'eos_token_id' must be a token id or a list of token ids in \[0, 96\), got \[2,96\]/);
      gen('{ "eos_token_id": ');
      assert.throws(() => readLlamaConfig(dir), /generation_config\.json: invalid JSON/);
    });

    it('weights: missing tensor, wrong shape, wrong dtype, corrupt file, broken shard index — naming file and tensor', async () => {
      const { writeSafetensors } = await import('../lib/safetensors');
      const { randomWeights } = await import('./fixtures/checkpoints');
      const spec: CheckpointSpec = specByName('llama-gqa-f32');
      const dir = copyOf('llama-gqa-f32');
      const file = path.join(dir, 'model.safetensors');
      const weights = randomWeights(spec, 5);

      const { ['model.layers.1.mlp.up_proj.weight']: _up, ...missing } = weights;
      writeSafetensors(file, missing);
      await loadErr(dir, /model\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'/);

      writeSafetensors(file, { ...weights, 'model.layers.0.self_attn.k_proj.weight': { dtype: 'F32', shape: [32, 32], data: new Float32Array(1024).fill(0.1) } });
      await loadErr(dir, /model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[32, 32\], expected \[16, 32\]/);

      writeSafetensors(file, { ...weights, 'model.norm.weight': { dtype: 'I32', shape: [32], data: new Int32Array(32).fill(1) } });
      await loadErr(dir, /model\.safetensors: tensor 'model\.norm\.weight' has dtype i32, expected F32, F16 or BF16/);

      writeSafetensors(file, weights);
      const bytes = fs.readFileSync(file);
      fs.writeFileSync(file, bytes.subarray(0, bytes.length - 100)); // data section cut short
      await loadErr(dir, /model\.safetensors/);
      fs.writeFileSync(file, Buffer.from('not a safetensors file at all'));
      await loadErr(dir, /model\.safetensors/);

      // Sharded: the index names a tensor its shard does not hold, or lacks a required one.
      const sdir = copyOf('llama-sharded-bf16');
      const indexFile = path.join(sdir, 'model.safetensors.index.json');
      const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
      const shardOf = index.weight_map['model.norm.weight']!;
      const wrongShard = Object.values(index.weight_map).find((f) => f !== shardOf)!;
      fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...index.weight_map, 'model.norm.weight': wrongShard } }));
      await loadErr(sdir, new RegExp(`${wrongShard.replace(/\./g, '\\.')}: missing tensor 'model\\.norm\\.weight'`));
      const { ['model.norm.weight']: _n, ...rest } = index.weight_map;
      fs.writeFileSync(indexFile, JSON.stringify({ weight_map: rest }));
      await loadErr(sdir, /weight_map has no entry for tensor 'model\.norm\.weight'/);
      fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...rest, 'model.norm.weight': '../escape.safetensors' } }));
      await loadErr(sdir, /not a file name in the model directory/);

      fs.rmSync(path.join(dir, 'model.safetensors'));
      await loadErr(dir, /no model\.safetensors or model\.safetensors\.index\.json/);
    });

    it('config parsing: defaults, head_dim, tied embeddings, rope scaling, Qwen2 biases', () => {
      const c = parseLlamaConfig(configJson(specByName('qwen2-bias-f16')));
      assert.strictEqual(c.qkvBias, true);
      assert.strictEqual(c.oBias, false);
      assert.strictEqual(c.tieWordEmbeddings, true);
      assert.strictEqual(c.headDim, 8);
      assert.strictEqual(c.rmsNormEps, 1e-5);
      const m = parseLlamaConfig(configJson(specByName('mistral-bf16')));
      assert.strictEqual(m.headDim, 16);
      assert.strictEqual(m.attentionWindows, undefined);
      const l3 = parseLlamaConfig(configJson(specByName('llama3-rope-f32')));
      assert.deepStrictEqual(l3.ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 16 });
      const eos = parseLlamaConfig({ ...configJson(specByName('llama-gqa-f32')), eos_token_id: [2, 5] });
      assert.deepStrictEqual(eos.eosTokenIds, [2, 5]);
      const byType = parseLlamaConfig({ ...configJson(specByName('llama-gqa-f32')), architectures: undefined, model_type: 'qwen2' });
      assert.strictEqual(byType.architecture, 'Qwen2ForCausalLM');
      assert.strictEqual(byType.qkNorm, false);
    });

    it('config parsing, Qwen3: q/k norms, head_dim apart from hidden / heads, attention_bias on all four projections, no window unless used', () => {
      const q3 = parseLlamaConfig(configJson(specByName('qwen3-qknorm-bf16')));
      assert.strictEqual(q3.architecture, 'Qwen3ForCausalLM');
      assert.deepStrictEqual([q3.qkNorm, q3.qkvBias, q3.oBias, q3.headDim, q3.tieWordEmbeddings], [true, false, false, 16, true]);
      assert.strictEqual(q3.maxPositions, 128, 'sliding_window null, use_sliding_window false: the whole context');
      const biased = parseLlamaConfig({ ...configJson(specByName('qwen3-qknorm-bf16')), attention_bias: true });
      assert.deepStrictEqual([biased.qkvBias, biased.oBias], [true, true]);
      // Qwen3 writes a sliding_window that applies only with use_sliding_window (as Qwen2).
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('qwen3-qknorm-bf16')), sliding_window: 32 }).attentionWindows, undefined);
      const slid = parseLlamaConfig({ ...configJson(specByName('qwen3-qknorm-bf16')), sliding_window: 32, use_sliding_window: true, max_window_layers: 1 });
      assert.deepStrictEqual([slid.attentionWindows, slid.maxPositions], [[0, 32], 128]);
      const byType = parseLlamaConfig({ ...configJson(specByName('qwen3-qknorm-bf16')), architectures: undefined, model_type: 'qwen3' });
      assert.strictEqual(byType.architecture, 'Qwen3ForCausalLM');
      assert.strictEqual(byType.qkNorm, true);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('qwen3-qknorm-bf16')), architectures: ['Qwen3MoeForCausalLM'] }), /unsupported architecture \["Qwen3MoeForCausalLM"\] \(supported: .*Qwen3ForCausalLM/);
      // Quantized checkpoints are refused by their method (their packed weights have other names).
      const q3c = configJson(specByName('qwen3-qknorm-bf16'));
      for (const [qc, re] of [
        [{ quant_method: 'gptq', bits: 4, group_size: 128 }, /config\.json: quantized checkpoint \(quantization_config, quant_method 'gptq'\): specdec runs f32 \/ f16 \/ bf16 weights/],
        [{ quant_method: 'fp8', weight_block_size: [128, 128] }, /quant_method 'fp8'/],
        ['awq', /quantized checkpoint \(quantization_config\): /],
      ] as const) assertThrowsCode(() => parseLlamaConfig({ ...q3c, quantization_config: qc }), 'E_FORMAT', re);
      assert.strictEqual(parseLlamaConfig({ ...q3c, quantization_config: null }).architecture, 'Qwen3ForCausalLM');
    });

    it('config parsing, Phi-3: fused projections, no biases whatever attention_bias says, its window, LongRoPE, partial rotation', () => {
      const phi = parseLlamaConfig(configJson(specByName('phi3-fused-f16')));
      assert.deepStrictEqual([phi.architecture, phi.fusedProjections, phi.qkvBias, phi.oBias, phi.qkNorm, phi.ropeTheta], ['Phi3ForCausalLM', true, false, false, false, 250000]);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), architectures: undefined, model_type: 'phi3' }).architecture, 'Phi3ForCausalLM');
      assert.deepStrictEqual([parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), attention_bias: true }).qkvBias], [false]);
      // Phi-3-mini-4k's window (2047): every layer slides, over the whole context.
      const win = parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), sliding_window: 47 });
      assert.deepStrictEqual([win.attentionWindows, win.maxPositions], [[47, 47], 128]);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), partial_rotary_factor: 1 }).ropeDim, 8);
      // Phi-4-mini: int(head_dim x 0.75) values rotate; LongRoPE's factors are per rotated pair.
      const p4 = parseLlamaConfig(configJson(specByName('phi4mini-partial-f32')));
      assert.deepStrictEqual([p4.headDim, p4.ropeDim, p4.maxPositions, p4.tieWordEmbeddings], [16, 12, 64, true]);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), partial_rotary_factor: 0.25 }).ropeDim, 2);
      // transformers 5 may write it inside rope_parameters.
      const v5 = { ...configJson(specByName('phi3-fused-f16')), rope_theta: undefined, rope_parameters: { rope_type: 'default', rope_theta: 250000, partial_rotary_factor: 0.5 } };
      assert.strictEqual(parseLlamaConfig(v5).ropeDim, 4);
      assert.throws(() => parseLlamaConfig({ ...v5, partial_rotary_factor: 0.75 }), /partial_rotary_factor 0\.75 and rope_parameters\.partial_rotary_factor 0\.5 disagree/);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), partial_rotary_factor: 0.4 }), /partial_rotary_factor 0\.4 rotates 3 of head_dim 8 values: must be an even number >= 2/);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), partial_rotary_factor: 1.5 }), /'partial_rotary_factor' must be a number in \(0, 1\], got 1\.5/);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('phi4mini-partial-f32')), rope_scaling: { type: 'longrope', short_factor: [1, 1, 1, 1, 1, 1, 1, 1], long_factor: [1, 1, 1, 1, 1, 1, 1, 1] } }), /short_factor must be 6 positive numbers \(one per rotated pair: 12 rotary dims\)/);
      // LongRoPE: the short factors, the attention factor from max / original positions, the context
      // capped where transformers would switch to the long factors.
      const lr = parseLlamaConfig(configJson(specByName('phi3-longrope-bf16')));
      assert.strictEqual(lr.maxPositions, 32);
      assert.ok(lr.ropeScaling?.type === 'longrope');
      assert.deepStrictEqual(lr.ropeScaling.shortFactor, [1, 1.25, 2.5, 6]);
      assert.strictEqual(lr.ropeScaling.originalMaxPositions, 32);
      assert.ok(Math.abs(lr.ropeScaling.attentionFactor - Math.sqrt(1 + Math.log(4) / Math.log(32))) < 1e-12);
      const given = parseLlamaConfig({ ...configJson(specByName('phi3-longrope-bf16')), rope_scaling: { ...specByName('phi3-longrope-bf16').ropeScaling, attention_factor: 1.5 } });
      assert.strictEqual(given.ropeScaling?.type === 'longrope' && given.ropeScaling.attentionFactor, 1.5);
      const short = { type: 'longrope', short_factor: [1], long_factor: [2, 2, 2, 2] };
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), rope_scaling: short }), /rope_scaling\.short_factor must be 4 positive numbers \(one per rotated pair: 8 rotary dims\)/);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('phi3-fused-f16')), rope_scaling: { type: 'dynamic', factor: 4 } }), /rope_scaling type "dynamic" is not supported \(supported: default, linear, llama3, longrope, yarn\)/);
      assert.strictEqual(parseLlamaConfig(configJson(specByName('llama-gqa-f32'))).fusedProjections, false);
    });

    it('config parsing, sliding windows: per layer as transformers sets them, no context cap, bad layer_types named', () => {
      // Mistral v0.1: every layer; no cap on the context any more.
      const m = parseLlamaConfig({ ...configJson(specByName('mistral-bf16')), sliding_window: 64 });
      assert.deepStrictEqual([m.attentionWindows, m.maxPositions], [[64, 64], 128]);
      // A window as long as the context is no window (Phi-4-mini writes 262144 over 131072 positions).
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('mistral-bf16')), sliding_window: 128 }).attentionWindows, undefined);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('phi4mini-partial-f32')), sliding_window: 262144 }).attentionWindows, undefined);
      // Llama's config class has no window: a stray sliding_window changes nothing (as in transformers).
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('llama-gqa-f32')), sliding_window: 16 }).attentionWindows, undefined);
      // Qwen2: use_sliding_window from max_window_layers on (28 by default), or as layer_types lists them.
      const q2 = configJson(specByName('qwen2-swa-f32'));
      assert.deepStrictEqual(parseLlamaConfig(q2).attentionWindows, [0, 5]);
      assert.deepStrictEqual(parseLlamaConfig({ ...q2, max_window_layers: undefined, num_hidden_layers: 30 }).attentionWindows, [...Array<number>(28).fill(0), 5, 5]);
      assert.deepStrictEqual(parseLlamaConfig({ ...q2, layer_types: ['sliding_attention', 'full_attention'] }).attentionWindows, [5, 0]);
      assert.strictEqual(parseLlamaConfig({ ...q2, use_sliding_window: false }).attentionWindows, undefined);
      assert.throws(() => parseLlamaConfig({ ...q2, layer_types: ['sliding_attention'] }), /'layer_types' must give 'sliding_attention' or 'full_attention' for each of the 2 layers/);
      assert.throws(() => parseLlamaConfig({ ...q2, layer_types: ['sliding', 'full_attention'] }), /'layer_types' must give/);
      assert.throws(() => parseLlamaConfig({ ...q2, sliding_window: 0 }), /'sliding_window' must be an integer >= 1, got 0/);
    });

    it('config parsing, Gemma 3: its layer, sliding and local-RoPE layers by pattern or layer_types, transformers 5 rope_parameters, refusals named', () => {
      const g = parseLlamaConfig(configJson(specByName('gemma3-bf16')));
      assert.deepStrictEqual([g.architecture, g.gemma, g.qkNorm, g.tieWordEmbeddings, g.ropeTheta, g.ropeLocalTheta], ['Gemma3ForCausalLM', true, true, true, 1000000, 10000]);
      assert.deepStrictEqual([g.attentionWindows, g.ropeLocalLayers], [[5, 5, 0], [true, true, false]]);
      assert.ok(Math.abs(g.attnScale! - 1 / Math.sqrt(24)) < 1e-15);
      assert.deepStrictEqual(g.ropeScaling, { type: 'linear', factor: 8 });
      const cfg = configJson(specByName('gemma3-bf16'));
      assert.strictEqual(parseLlamaConfig({ ...cfg, architectures: undefined, model_type: 'gemma3_text' }).architecture, 'Gemma3ForCausalLM');
      // Defaults of Gemma3TextConfig: every sixth layer global, window 4096, rope 1e6 / 1e4, scalar 256.
      const bare: Record<string, unknown> = { ...cfg, num_hidden_layers: 7, max_position_embeddings: 8192 };
      for (const k of ['sliding_window_pattern', 'sliding_window', 'rope_theta', 'rope_local_base_freq', 'query_pre_attn_scalar']) delete bare[k];
      const d = parseLlamaConfig(bare);
      assert.deepStrictEqual([d.attentionWindows, d.ropeTheta, d.ropeLocalTheta, d.attnScale], [[4096, 4096, 4096, 4096, 4096, 0, 4096], 1000000, 10000, 1 / 16]);
      // A window as long as the context drops the window, not the local rotation.
      const long = parseLlamaConfig({ ...cfg, sliding_window: 128 });
      assert.deepStrictEqual([long.attentionWindows, long.ropeLocalLayers], [undefined, [true, true, false]]);
      const typed = parseLlamaConfig({ ...cfg, layer_types: ['full_attention', 'sliding_attention', 'full_attention'] });
      assert.deepStrictEqual([typed.attentionWindows, typed.ropeLocalLayers], [[0, 5, 0], [false, true, false]]);
      // transformers 5: rope_parameters per layer type.
      const { rope_theta: _rt, rope_scaling: _rs, rope_local_base_freq: _rl, ...noRope } = cfg;
      const v5 = parseLlamaConfig({ ...noRope, rope_parameters: { full_attention: { rope_type: 'linear', factor: 8, rope_theta: 1000000 }, sliding_attention: { rope_type: 'default', rope_theta: 10000 } } });
      assert.deepStrictEqual([v5.ropeTheta, v5.ropeScaling, v5.ropeLocalTheta], [1000000, { type: 'linear', factor: 8 }, 10000]);
      assert.throws(() => parseLlamaConfig({ ...cfg, final_logit_softcapping: 30 }), /final_logit_softcapping = 30: Gemma 3 has no logit soft-capping/);
      assert.throws(() => parseLlamaConfig({ ...cfg, hidden_activation: 'gelu' }), /hidden_activation "gelu" is not supported for Gemma 3/);
    });

    it('config parsing, Gemma3ForConditionalGeneration: its text_config over Gemma3TextConfig\'s defaults, the top level\'s eos, errors named', () => {
      // The form of gemma-3-4b-it's config.json: the text config as a diff against the defaults.
      const g4b = {
        architectures: ['Gemma3ForConditionalGeneration'],
        boi_token_index: 255999,
        eoi_token_index: 256000,
        eos_token_id: [1, 106],
        image_token_index: 262144,
        mm_tokens_per_image: 256,
        model_type: 'gemma3',
        text_config: { hidden_size: 2560, intermediate_size: 10240, model_type: 'gemma3_text', num_hidden_layers: 34, rope_scaling: { factor: 8.0, rope_type: 'linear' }, sliding_window: 1024 },
        torch_dtype: 'bfloat16',
        vision_config: { hidden_size: 1152, image_size: 896, model_type: 'siglip_vision_model', num_hidden_layers: 27, patch_size: 14 },
      };
      const c = parseLlamaConfig(g4b);
      assert.deepStrictEqual(
        [c.architecture, c.textOf, c.vocabSize, c.hiddenSize, c.intermediateSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim, c.maxPositions, c.eosTokenIds, c.bosTokenId, c.torchDtype],
        ['Gemma3ForCausalLM', 'Gemma3ForConditionalGeneration', 262208, 2560, 10240, 34, 8, 4, 256, 131072, [1, 106], 2, 'bfloat16'],
      );
      assert.deepStrictEqual([c.ropeTheta, c.ropeScaling, c.ropeLocalTheta, c.attnScale, c.tieWordEmbeddings, c.qkNorm, c.gemma], [1000000, { type: 'linear', factor: 8 }, 10000, 1 / 16, true, true, true]);
      // Every sixth layer global, the others sliding over 1024 positions.
      assert.deepStrictEqual(c.attentionWindows, Array.from({ length: 34 }, (_, l) => ((l + 1) % 6 === 0 ? 0 : 1024)));
      // model_type alone; no text_config at all is Gemma3TextConfig() itself.
      const { architectures: _a, ...byType } = g4b;
      assert.strictEqual(parseLlamaConfig(byType).textOf, 'Gemma3ForConditionalGeneration');
      const bare = parseLlamaConfig({ architectures: ['Gemma3ForConditionalGeneration'] });
      assert.deepStrictEqual([bare.hiddenSize, bare.numLayers, bare.eosTokenIds, bare.attentionWindows?.[0]], [2304, 26, [1], 4096]);
      // A text checkpoint listed beside it wins (its config is the text config).
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('gemma3-bf16')), architectures: ['Gemma3ForConditionalGeneration', 'Gemma3ForCausalLM'] }).textOf, undefined);
      assert.throws(() => parseLlamaConfig({ ...g4b, text_config: { ...g4b.text_config, model_type: 'llama' } }), /Gemma3ForConditionalGeneration: text_config\.model_type is "llama", expected 'gemma3_text'/);
      assert.throws(() => parseLlamaConfig({ ...g4b, text_config: [] }), /field 'text_config' must be an object/);
      // Found by the fuzzer: per-layer lists of an absurd layer count ran the heap out.
      assert.throws(() => parseLlamaConfig({ ...g4b, text_config: { ...g4b.text_config, num_hidden_layers: 2 ** 31 - 1 } }), /'num_hidden_layers' is 2147483647; no checkpoint has more than 4096 layers/);
      assert.throws(() => parseLlamaConfig({ ...g4b, text_config: { ...g4b.text_config, num_hidden_layers: 0 } }), /config\.json: text_config: field 'num_hidden_layers' must be an integer >= 1/);
      assert.throws(() => parseLlamaConfig({ ...g4b, architectures: ['Mistral3ForConditionalGeneration'] }), /unsupported architecture Mistral3ForConditionalGeneration: the text model of multimodal Mistral 3/);
    });

    it('config parsing, OLMo 2: post-norms and whole-projection q/k norms, attention_bias on all four, rms_norm_eps 1e-5 by default', () => {
      const cfg = configJson(specByName('olmo2-bf16'));
      const c = parseLlamaConfig(cfg);
      assert.deepStrictEqual([c.architecture, c.postNorms, c.qkNorm, c.qkvBias, c.oBias, c.gemma, c.rmsNormEps, c.ropeTheta], ['Olmo2ForCausalLM', true, false, true, true, undefined, 1e-5, 500000]);
      const { rms_norm_eps: _e, architectures: _a, ...byType } = cfg;
      const d = parseLlamaConfig({ ...byType, attention_bias: false });
      assert.deepStrictEqual([d.architecture, d.rmsNormEps, d.qkvBias, d.oBias], ['Olmo2ForCausalLM', 1e-5, false, false]);
      assert.throws(() => parseLlamaConfig({ ...cfg, hidden_act: 'gelu' }), /hidden_act 'gelu' is not supported/);
    });

    it('config parsing, YaRN: factor, ramp bounds and the attention factor as transformers computes them; a factor the two transformers conventions disagree on is refused', () => {
      const cfg = configJson(specByName('qwen2-yarn-f32'));
      const c = parseLlamaConfig(cfg);
      assert.deepStrictEqual(c.ropeScaling, { type: 'yarn', factor: 4, originalMaxPositions: 32, attentionFactor: 0.1 * Math.log(4) + 1, betaFast: 32, betaSlow: 1, truncate: true });
      // Explicit attention_factor, betas, truncate; mscale over mscale_all_dim (DeepSeek's).
      const rs = cfg['rope_scaling'] as Record<string, unknown>;
      const e = parseLlamaConfig({ ...cfg, rope_scaling: { ...rs, attention_factor: 1.5, beta_fast: 16, beta_slow: 2, truncate: false } });
      assert.deepStrictEqual(e.ropeScaling, { type: 'yarn', factor: 4, originalMaxPositions: 32, attentionFactor: 1.5, betaFast: 16, betaSlow: 2, truncate: false });
      const m = parseLlamaConfig({ ...cfg, rope_scaling: { ...rs, mscale: 0.707, mscale_all_dim: 1 } });
      assert.ok(Math.abs((m.ropeScaling as { attentionFactor: number }).attentionFactor - (0.1 * 0.707 * Math.log(4) + 1) / (0.1 * Math.log(4) + 1)) < 1e-15);
      // Without original_max_position_embeddings both conventions take factor (and the context as the original).
      const { original_max_position_embeddings: _o, ...noOrig } = rs;
      assert.strictEqual((parseLlamaConfig({ ...cfg, rope_scaling: noOrig }).ropeScaling as { originalMaxPositions: number }).originalMaxPositions, 128);
      // Qwen's documented edit (factor 4 over 32768, max_position_embeddings left at 32768): refused with the fix.
      assert.throws(
        () => parseLlamaConfig({ ...cfg, max_position_embeddings: 32768, rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32768 } }),
        /yarn factor 4 disagrees with max_position_embeddings \/ original_max_position_embeddings = 32768 \/ 32768: .*set max_position_embeddings to 131072/,
      );
      assert.throws(() => parseLlamaConfig({ ...cfg, rope_scaling: { ...rs, truncate: 'no' } }), /rope_scaling\.truncate must be a boolean/);
    });

    it('config parsing, EXAONE 4: post-norms with per-head q/k norms; sliding layers by layer_types or sliding_window_pattern, global layers without RoPE', () => {
      const cfg = configJson(specByName('exaone4-bf16'));
      const c = parseLlamaConfig(cfg);
      assert.deepStrictEqual([c.architecture, c.postNorms, c.qkNorm, c.qkvBias, c.rmsNormEps], ['Exaone4ForCausalLM', true, true, false, 1e-5]);
      assert.deepStrictEqual([c.attentionWindows, c.ropeLayers], [[5, 5, 5, 0], [true, true, true, false]]);
      // A string pattern repeats from layer 0 with the last layer global; an integer p globalizes every p-th.
      const six = parseLlamaConfig({ ...cfg, num_hidden_layers: 6, sliding_window_pattern: 'LG' });
      assert.deepStrictEqual([six.attentionWindows, six.ropeLayers], [[5, 0, 5, 0, 5, 0], [true, false, true, false, true, false]]);
      const odd = parseLlamaConfig({ ...cfg, num_hidden_layers: 3, sliding_window_pattern: 'LLLG' });
      assert.deepStrictEqual(odd.ropeLayers, [true, true, false]);
      assert.deepStrictEqual(parseLlamaConfig({ ...cfg, sliding_window_pattern: 2 }).attentionWindows, [5, 0, 5, 0]);
      assert.deepStrictEqual(parseLlamaConfig({ ...cfg, layer_types: ['full_attention', 'sliding_attention', 'sliding_attention', 'full_attention'] }).ropeLayers, [false, true, true, false]);
      // No window at all (sliding_window null, EXAONE-4.0-1.2B): every layer full and rotating.
      const none = parseLlamaConfig({ ...cfg, sliding_window: null });
      assert.deepStrictEqual([none.attentionWindows, none.ropeLayers], [undefined, undefined]);
      // Absent: Exaone4Config's 4096 -- longer than this context, so no window, but the global layers stay NoPE.
      const { sliding_window: _w, sliding_window_pattern: _p, ...bare } = cfg;
      const d = parseLlamaConfig(bare);
      assert.deepStrictEqual([d.attentionWindows, d.ropeLayers], [undefined, [true, true, true, false]]);
      assert.throws(() => parseLlamaConfig({ ...cfg, sliding_window_pattern: 'LXG' }), /field 'sliding_window_pattern' must be an integer >= 1, got "LXG"/);
    });

    it('config parsing, Granite: its four multipliers (GraniteConfig\'s defaults 1; attention_multiplier is the softmax scale), errors named', () => {
      const cfg = configJson(specByName('granite-bf16'));
      const g = parseLlamaConfig(cfg);
      assert.deepStrictEqual([g.architecture, g.attnScale, g.embeddingMultiplier, g.residualMultiplier, g.logitsScaling, g.tieWordEmbeddings], ['GraniteForCausalLM', 0.0625, 12, 0.22, 8, true]);
      const { embedding_multiplier: _e, residual_multiplier: _r, attention_multiplier: _a, logits_scaling: _l, architectures: _x, ...bare } = cfg;
      const d = parseLlamaConfig(bare);
      assert.deepStrictEqual([d.architecture, d.attnScale, d.embeddingMultiplier, d.residualMultiplier, d.logitsScaling], ['GraniteForCausalLM', 1, 1, 1, 1]);
      assert.throws(() => parseLlamaConfig({ ...cfg, logits_scaling: 0 }), /field 'logits_scaling' must be a positive number, got 0/);
      assert.throws(() => parseLlamaConfig({ ...cfg, residual_multiplier: 'x' }), /field 'residual_multiplier' must be a positive number/);
      // Not read for other architectures.
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('llama-gqa-f32')), residual_multiplier: 0.5 }).residualMultiplier, undefined);
    });

    it('weights, OLMo 2: a q_norm of one head\'s width (Qwen3\'s layout) is E_FORMAT naming the whole projection\'s width', async () => {
      const { writeSafetensors } = await import('../lib/safetensors');
      const { randomWeights } = await import('./fixtures/checkpoints');
      const spec = specByName('olmo2-bf16');
      const dir = copyOf(spec.name);
      const weights = randomWeights(spec, 5);
      writeSafetensors(path.join(dir, 'model.safetensors'), { ...weights, 'model.layers.1.self_attn.q_norm.weight': { dtype: 'BF16', shape: [8], data: new Float32Array(8).fill(1) } });
      await loadErr(dir, /tensor 'model\.layers\.1\.self_attn\.q_norm\.weight' has shape \[8\], expected \[32\] \(num_attention_heads\*head_dim\)/);
      const { ['model.layers.0.post_feedforward_layernorm.weight']: _p, ...missing } = weights;
      writeSafetensors(path.join(dir, 'model.safetensors'), missing);
      await loadErr(dir, /missing tensor 'model\.layers\.0\.post_feedforward_layernorm\.weight'/);
    });

    it('config parsing, Gemma 2: its layer, soft-capping (defaults 50 / 30, null turns one off), even layers sliding, no q/k norms', () => {
      const cfg = configJson(specByName('gemma2-f32'));
      const g = parseLlamaConfig(cfg);
      assert.deepStrictEqual([g.architecture, g.gemma, g.qkNorm, g.tieWordEmbeddings, g.ropeTheta, g.ropeLocalLayers], ['Gemma2ForCausalLM', true, false, true, 10000, undefined]);
      assert.deepStrictEqual([g.attentionWindows, g.attnSoftcap, g.finalSoftcap], [[5, 0, 5], 1.5, 4]);
      assert.ok(Math.abs(g.attnScale! - 1 / Math.sqrt(20)) < 1e-15);
      assert.strictEqual(parseLlamaConfig({ ...cfg, architectures: undefined, model_type: 'gemma2' }).architecture, 'Gemma2ForCausalLM');
      const bare: Record<string, unknown> = { ...cfg };
      for (const k of ['attn_logit_softcapping', 'final_logit_softcapping', 'query_pre_attn_scalar']) delete bare[k];
      const d = parseLlamaConfig(bare);
      assert.deepStrictEqual([d.attnSoftcap, d.finalSoftcap, d.attnScale], [50, 30, 1 / 16]);
      const off = parseLlamaConfig({ ...cfg, attn_logit_softcapping: null });
      assert.deepStrictEqual([off.attnSoftcap, off.finalSoftcap], [undefined, 4]);
      assert.throws(() => parseLlamaConfig({ ...cfg, final_logit_softcapping: -1 }), /'final_logit_softcapping' must be a positive number, got -1/);
      assert.deepStrictEqual(parseLlamaConfig({ ...cfg, layer_types: ['full_attention', 'sliding_attention', 'sliding_attention'] }).attentionWindows, [0, 5, 5]);
    });

    it('config parsing, SmolLM3: no_rope_layers as written, or every fourth layer without RoPE by default; the window only when used', () => {
      const s = parseLlamaConfig(configJson(specByName('smollm3-nope-bf16')));
      assert.deepStrictEqual([s.architecture, s.ropeLayers, s.maxPositions, s.oBias], ['SmolLM3ForCausalLM', [true, false, true, false], 128, false]);
      const { no_rope_layers: _n, ...derived } = configJson({ ...specByName('smollm3-nope-bf16'), layers: 8 });
      assert.deepStrictEqual(parseLlamaConfig(derived).ropeLayers, [true, true, true, false, true, true, true, false]);
      assert.deepStrictEqual(parseLlamaConfig({ ...derived, no_rope_layer_interval: 2 }).ropeLayers, [true, false, true, false, true, false, true, false]);
      assert.throws(() => parseLlamaConfig({ ...configJson(specByName('smollm3-nope-bf16')), no_rope_layers: [1, 0, 1] }), /'no_rope_layers' must list 0 or 1 for each of the 4 layers/);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('smollm3-nope-bf16')), sliding_window: 64 }).attentionWindows, undefined);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('smollm3-nope-bf16')), attention_bias: true }).oBias, true);
      assert.strictEqual(parseLlamaConfig({ ...configJson(specByName('smollm3-nope-bf16')), architectures: undefined, model_type: 'smollm3' }).architecture, 'SmolLM3ForCausalLM');
      assert.strictEqual(parseLlamaConfig(configJson(specByName('llama-gqa-f32'))).ropeLayers, undefined);
    });

    it('weights, Phi-3: a fused projection of the wrong height is E_FORMAT naming it and how it is made up', async () => {
      const { writeSafetensors } = await import('../lib/safetensors');
      const { randomWeights } = await import('./fixtures/checkpoints');
      const spec = specByName('phi3-fused-f16');
      const dir = copyOf(spec.name);
      const file = path.join(dir, 'model.safetensors');
      const weights = randomWeights(spec, 5);
      // q and k only (a checkpoint whose v went missing): 64 rows where q + k + v make 96.
      writeSafetensors(file, { ...weights, 'model.layers.1.self_attn.qkv_proj.weight': { dtype: 'F16', shape: [64, 32], data: new Float32Array(64 * 32).fill(0.1) } });
      await loadErr(dir, /tensor 'model\.layers\.1\.self_attn\.qkv_proj\.weight' has shape \[64, 32\], expected \[96, 32\] \(\(num_attention_heads \+ 2\*num_key_value_heads\)\*head_dim x hidden_size\)/);
      const { ['model.layers.0.mlp.gate_up_proj.weight']: _gu, ...missing } = weights;
      writeSafetensors(file, missing);
      await loadErr(dir, /missing tensor 'model\.layers\.0\.mlp\.gate_up_proj\.weight'/);
    });

    it('weights, Gemma3ForConditionalGeneration: the text model from either layout, logits bit for bit the text checkpoint\'s; no text model is E_FORMAT naming the names tried', async () => {
      const { writeGemma3Multimodal } = await import('./fixtures/checkpoints');
      const spec = specByName('gemma3-bf16');
      const seed = testSeed + 17 * CHECKPOINTS.indexOf(spec);
      const prompts = [Int32Array.from([1, 9, 4, 33, 2, 60, 7, 7]), Int32Array.from([5, 90])];
      const logitsOf = async (dir: string): Promise<Float32Array> => {
        const m = await LlamaModel.load(dir, { device: 'cpu', kvDtype: 'f32' });
        try {
          const out = await m.forward(prompts.map((tokens) => ({ seq: m.createSequence(), tokens })));
          const l = out.logits.toFloat32();
          out.logits.dispose();
          return l;
        } finally {
          m.dispose();
        }
      };
      const want = await logitsOf(dirs.get(spec.name)!);
      for (const layout of [0, 1] as const) {
        const dir = fs.mkdtempSync(path.join(root, `gemma3-multimodal-${layout}-`));
        writeGemma3Multimodal(dir, spec, seed, layout);
        const m = await LlamaModel.load(dir, { device: 'cpu' });
        assert.deepStrictEqual([m.config.textOf, m.config.eosTokenIds, m.config.attentionWindows], ['Gemma3ForConditionalGeneration', [2, 7], [5, 5, 0]]);
        m.dispose();
        const got = await logitsOf(dir);
        assert.ok(got.length === want.length && got.every((v, i) => Object.is(v, want[i])), `layout ${layout}: logits differ from the text checkpoint's`);
      }
      const dir = fs.mkdtempSync(path.join(root, 'gemma3-multimodal-none-'));
      writeGemma3Multimodal(dir, spec, seed, 0);
      const { writeSafetensors } = await import('../lib/safetensors');
      writeSafetensors(path.join(dir, 'model.safetensors'), { 'vision_tower.x': { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
      await loadErr(dir, /model\.safetensors: the text model's embedding is not there \(tried 'language_model\.model\.embed_tokens\.weight', 'model\.language_model\.embed_tokens\.weight'\)/);
    });

    it('weights, Qwen3: a missing or misshapen q_norm / k_norm is E_FORMAT naming the tensor and head_dim', async () => {
      const { writeSafetensors } = await import('../lib/safetensors');
      const { randomWeights } = await import('./fixtures/checkpoints');
      const spec = specByName('qwen3-qknorm-bf16');
      const dir = copyOf(spec.name);
      const file = path.join(dir, 'model.safetensors');
      const weights = randomWeights(spec, 5);
      const { ['model.layers.1.self_attn.k_norm.weight']: _k, ...missing } = weights;
      writeSafetensors(file, missing);
      await loadErr(dir, /model\.safetensors: missing tensor 'model\.layers\.1\.self_attn\.k_norm\.weight'/);
      // A norm over the whole q row (hidden_size wide) instead of one head's values.
      writeSafetensors(file, { ...weights, 'model.layers.0.self_attn.q_norm.weight': { dtype: 'BF16', shape: [64], data: new Float32Array(64).fill(1) } });
      await loadErr(dir, /tensor 'model\.layers\.0\.self_attn\.q_norm\.weight' has shape \[64\], expected \[16\] \(head_dim\)/);
    });
  });

  describe('plainGenerate', () => {
    it('batched greedy equals each prompt alone; stops at EOS and stop tokens; frees its sequences', async () => {
      const model = await load('llama-gqa-f32', { maxSequences: 4 });
      try {
        const prompts = [randomTokens(6, 96, r), randomTokens(11, 96, r), randomTokens(3, 96, r)];
        const batch = await plainGenerate(model, prompts, { maxNewTokens: 10, stopTokens: [] });
        for (let i = 0; i < 3; i++) {
          const alone = await plainGenerate(model, [prompts[i]!], { maxNewTokens: 10 });
          assert.deepStrictEqual(batch.tokens[i], alone.tokens[0], `prompt ${i}`);
        }
        assert.strictEqual(model.kvInfo().freePages, model.kvInfo().totalPages, 'all pages free again');
        // Stop token: the first greedy token of prompt 0 ends its sequence at once (and is emitted).
        const first = batch.tokens[0]![0]!;
        const stopped = await plainGenerate(model, prompts, { maxNewTokens: 10, stopTokens: [first] });
        assert.deepStrictEqual(Array.from(stopped.tokens[0]!), [first]);
        // EOS (id 2 in this config) never appears except as the last token.
        for (const t of batch.tokens) {
          const k = Array.from(t).indexOf(2);
          assert.ok(k === -1 || k === t.length - 1);
        }
        assert.strictEqual(batch.stats.targetForwards, Math.max(...batch.tokens.map((t) => t.length)));
      } finally {
        model.dispose();
      }
    });

    it('an aborted run rejects and still frees its sequences', async () => {
      const model = await load('llama-gqa-f32');
      try {
        const ac = new AbortController();
        ac.abort();
        await assert.rejects(plainGenerate(model, [randomTokens(4, 96, r)], { maxNewTokens: 4, signal: ac.signal }), /abort/i);
        assert.strictEqual(model.kvInfo().freePages, model.kvInfo().totalPages);
      } finally {
        model.dispose();
      }
    });

    it('sampling: stream (seed, i) is reproducible and independent of the batch; first draws follow softmax(logits / T)', async () => {
      const name = 'llama-gqa-f32';
      const V = 96;
      const count = 400;
      const model = await load(name, { maxSequences: count, kvPages: count * 2 + 8, pageSize: 16 });
      try {
        const a = randomTokens(5, V, r);
        const b = randomTokens(7, V, r);
        const opts = { maxNewTokens: 6, temperature: 0.8, seed: 1234 + Math.floor(r() * 1000) };
        const ab = await plainGenerate(model, [a, b], opts);
        const ab2 = await plainGenerate(model, [a, b], opts);
        assert.deepStrictEqual(ab.tokens, ab2.tokens);
        const ac = await plainGenerate(model, [a, randomTokens(3, V, r)], opts);
        assert.deepStrictEqual(ac.tokens[0], ab.tokens[0], 'sequence 0 does not depend on sequence 1');

        // Many copies of one prompt: index i draws from stream (seed, i), so the first tokens are
        // independent samples of the same distribution.
        const T = 1.5;
        const ref = refs.get(name)!.forward(Array.from(a)).logits.subarray(4 * V);
        const mx = Math.max(...ref);
        const p = Array.from(ref, (x) => Math.exp((x - mx) / T));
        const z = p.reduce((s, x) => s + x, 0);
        await redrawOnce(async (attempt) => {
          const many = await plainGenerate(model, Array.from({ length: count }, () => a), { maxNewTokens: 1, temperature: T, seed: opts.seed + attempt * 1000003 });
          const counts = new Array<number>(V).fill(0);
          for (const t of many.tokens) counts[t[0]!]!++;
          assertChiSquareFits('first draws', counts, p.map((x) => x / z), count);
        });
        assert.strictEqual(streamOffset(3, 7), (3n << 32n) | 7n);
      } finally {
        model.dispose();
      }
    });
  });

  describe('tokenizer', () => {
    it('encodes and decodes with the checkpoint tokenizer.json; a model without one has none', () => {
      const tok = TextTokenizer.load(dirs.get('llama-gqa-f32')!)!;
      const ids = tok.encode('The cat sat on the mat');
      assert.deepStrictEqual(Array.from(ids), [1, 3, 4, 6, 7, 3, 8]);
      assert.strictEqual(tok.decode(ids, { skipSpecialTokens: true }), 'the cat sat on the mat');
      assert.strictEqual(TextTokenizer.load(dirs.get('mistral-bf16')!), undefined);
    });
  });
});

describeCuda('Llama runner', function () {
  this.timeout(120000);
  let root: string;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-model-cuda-'));
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  for (const name of ['llama-gqa-f32', 'qwen2-bias-f16', 'llama-sharded-bf16', 'llama3-rope-f32', 'qwen3-qknorm-bf16', 'phi3-fused-f16', 'phi4mini-partial-f32', 'smollm3-nope-bf16', 'mistral-swa-bf16', 'qwen2-swa-f32', 'gemma3-bf16', 'gemma2-f32', 'olmo2-bf16', 'exaone4-bf16', 'granite-bf16', 'qwen2-yarn-f32']) {
    it(`${name}: CUDA logits match the float64 reference, batch invariance holds, greedy matches`, async () => {
      const spec = specByName(name);
      const dir = path.join(root, name);
      writeCheckpoint(dir, spec, testSeed + 3);
      const ref = new LlamaReference(dir);
      const r = rng(testSeed + 5);
      const model = await LlamaModel.load(dir, { device: 'cuda', kvDtype: 'f32' });
      try {
        assert.strictEqual(model.device, 'cuda');
        const prompt = randomTokens(20, spec.vocab, r);
        const s = model.createSequence();
        const out = await model.forward([{ seq: s, tokens: prompt }]);
        const got = out.logits.toFloat32();
        out.logits.dispose();
        // The CUDA layers keep activations in f32 (no tensor-core rounding): the CPU tolerance holds.
        assertClose(got, ref.forward(Array.from(prompt)).logits, `${name} cuda logits`);
        const cpu = await LlamaModel.load(dir, { device: 'cpu', kvDtype: 'f32' });
        try {
          const cs = cpu.createSequence();
          assertClose(readLogits((await cpu.forward([{ seq: cs, tokens: prompt }])).logits), got, `${name} cuda vs cpu`);
        } finally {
          cpu.dispose();
        }
        const s2 = model.createSequence();
        const both = await model.forward([
          { seq: s2, tokens: randomTokens(9, spec.vocab, r) },
          { seq: model.createSequence(), tokens: prompt },
        ]);
        assert.deepStrictEqual(both.logits.toFloat32().subarray(9 * spec.vocab), got);
        both.logits.dispose();
        const gen = await plainGenerate(model, [prompt], { maxNewTokens: 8 });
        assertSameGreedy(gen.tokens[0]!, ref.greedy(Array.from(prompt), 8, model.config.eosTokenIds), name);
      } finally {
        model.dispose();
      }
    });
  }
  it('processLogits on CUDA logits works (device round trip)', async () => {
    const spec = specByName('llama-gqa-f32');
    const dir = path.join(root, 'pl');
    writeCheckpoint(dir, spec, testSeed);
    const model = await LlamaModel.load(dir, { device: 'cuda' });
    try {
      const s = model.createSequence();
      const out = await model.forward([{ seq: s, tokens: Int32Array.of(1, 2, 3) }]);
      const probs = processLogits(out.logits, { temperature: 1 });
      const p = probs.toFloat32();
      assert.ok(Math.abs(p.subarray(0, 96).reduce((a, b) => a + b, 0) - 1) < 1e-4);
      probs.dispose();
      out.logits.dispose();
    } finally {
      model.dispose();
    }
  });
});
