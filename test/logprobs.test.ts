// Log-probabilities of output tokens (the `logprobs` option): the native op against a float64
// reference, plainGenerate against step-by-step reference decoding, every speculative strategy
// against plainGenerate (greedy and sampled), and the Engine's streamed chunks.
import * as assert from 'assert';
import { generateCommand, parseGenerateFlags } from '../lib/cli/generate';
import { SpeculativeDecoder } from '../lib/decoder';
import { Engine } from '../lib/engine/engine';
import { checkLogprobs, promptLogitsBudget, tokenLogprobs, type TokenLogprobs } from '../lib/logprobs';
import { LlamaModel } from '../lib/models/llama';
import { native } from '../lib/native';
import { plainGenerate } from '../lib/plain';
import { penalizeRow, resolvePenalties } from '../lib/sampling';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleSpeculator, type EagleHead } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaSpeculator, type MedusaHeads } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { Tensor } from '../lib/tensor';
import { generateText } from '../lib/text';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { assertThrowsCode, describeCuda, refPenalize, rng, testSeed } from './helpers';


/** log softmax of a row in float64 (the largest entry first, then the sum in index order). */
function refLogSoftmax(row: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < row.length; i++) if ((row[i] as number) > m) m = row[i] as number;
  const out = new Float64Array(row.length);
  if (m === -Infinity) return out.fill(-Infinity);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp((row[i] as number) - m);
  const lse = m + Math.log(s);
  for (let i = 0; i < row.length; i++) out[i] = (row[i] as number) - lse;
  return out;
}

/** The k largest entries' ids (descending, lower id first on ties). */
function refTop(row: ArrayLike<number>, k: number): number[] {
  return Array.from({ length: row.length }, (_, i) => i)
    .sort((a, b) => (row[b] as number) - (row[a] as number) || a - b)
    .slice(0, k);
}

function close(got: number, want: number, what: string): void {
  if (want === -Infinity) return assert.strictEqual(got, -Infinity, what);
  assert.ok(Math.abs(got - want) <= 2e-6 * Math.max(1, Math.abs(want)), `${what}: ${got} vs ${want}`);
}

/** tokenLogprobs on `device` against the float64 reference over random rows (ties, -inf, large values). */
function checkOp(device: 'cpu' | 'cuda'): void {
  const r = rng(testSeed + 91);
  for (let round = 0; round < 40; round++) {
    const V = [7, 50, 700, 3000][round % 4]!;
    const N = 1 + Math.floor(r() * 5);
    const x = Float32Array.from({ length: N * V }, () => {
      const u = r();
      return u < 0.05 ? -Infinity : u < 0.15 ? 2 : Math.fround((r() - 0.5) * (round % 3 === 0 ? 200 : 12));
    });
    if (round === 5) x.fill(-Infinity, 0, V);  // a row with nothing probable
    const M = 1 + Math.floor(r() * 8);
    const rows = Int32Array.from({ length: M }, () => Math.floor(r() * N));
    const tokens = Int32Array.from({ length: M }, () => Math.floor(r() * V));
    const k = [0, 1, 5, Math.min(V, 20)][round % 4]!;
    using t = Tensor.fromArray(x, 'f32', [N, V], device);
    const got = tokenLogprobs(t, rows, tokens, k);
    assert.strictEqual(got.token.length, M);
    assert.strictEqual(got.topIds.length, M * k);
    for (let m = 0; m < M; m++) {
      const row = x.subarray((rows[m] as number) * V, (rows[m] as number + 1) * V);
      const ref = refLogSoftmax(row);
      close(got.token[m] as number, ref[tokens[m] as number] as number, `round ${round}, entry ${m}`);
      assert.deepStrictEqual(Array.from(got.topIds.subarray(m * k, (m + 1) * k)), refTop(row, k), `round ${round}, entry ${m}: top ids`);
      for (let j = 0; j < k; j++) close(got.topLogprobs[m * k + j] as number, ref[got.topIds[m * k + j] as number] as number, `round ${round}, entry ${m}, top ${j}`);
    }
  }
}

/** Log-probabilities of `tokens` after `prompt` on `model`, the tokens fed one at a time (teacher forcing), each row penalized first. */
async function teacherForced(model: LlamaModel, prompt: Int32Array, tokens: Int32Array, k: number, p?: ReturnType<typeof resolvePenalties>): Promise<TokenLogprobs> {
  const seq = model.createSequence();
  const sink = { token: [] as number[], ids: [] as number[], lps: [] as number[] };
  try {
    let feed: Int32Array = prompt;
    const hist = Array.from(prompt);
    for (const t of tokens) {
      const fw = await model.forward([{ seq, tokens: feed }]);
      try {
        const row = fw.logits.shape[0]! - 1;
        if (p) penalizeRow(fw.logits, row, p, { tokens: hist, promptLength: prompt.length });
        const lp = tokenLogprobs(fw.logits, Int32Array.of(row), Int32Array.of(t), k);
        sink.token.push(lp.token[0]!);
        sink.ids.push(...lp.topIds);
        sink.lps.push(...lp.topLogprobs);
      } finally {
        fw.logits.dispose();
        fw.hidden?.dispose();
      }
      model.commit([seq], [Int32Array.from({ length: feed.length }, (_, i) => i)]);
      hist.push(t);
      feed = Int32Array.of(t);
    }
  } finally {
    model.freeSequence(seq);
  }
  return { k, token: Float32Array.from(sink.token), topIds: Int32Array.from(sink.ids), topLogprobs: Float32Array.from(sink.lps) };
}

describe('logprobs', () => {
  it('tokenLogprobs == a float64 log-softmax, and its top ids the sorted row (ties by id, -inf entries, a row of -inf)', () => {
    checkOp('cpu');
  });

  it('bad arguments are E_ARG naming them', () => {
    using t = Tensor.fromArray(new Float32Array(12), 'f32', [2, 6]);
    const op = native().samplingTokenLogprobs!;
    const one = Int32Array.of(0);
    assertThrowsCode(() => op(t, Int32Array.of(2), one, 1), 'E_ARG', /rows: row 2 \(entry 0\) is outside the 2 logits rows/);
    assertThrowsCode(() => op(t, one, Int32Array.of(6), 1), 'E_ARG', /tokens: token 6 \(entry 0\) is outside the vocabulary \[0, 6\)/);
    assertThrowsCode(() => op(t, one, Int32Array.of(0, 1), 1), 'E_ARG', /tokens: 2 entries for 1 rows/);
    assertThrowsCode(() => op(t, one, one, 7), 'E_ARG', /k: expected 0 <= k <= min\(1024, 6\)/);
    assertThrowsCode(() => op(t, one, one, -1), 'E_ARG', /k: expected 0 <= k <= 1024/);
    using h = Tensor.fromArray(new Float32Array(12), 'f16', [2, 6]);
    assertThrowsCode(() => op(h, one, one, 1), 'E_ARG', /logits/);
    // The option: an integer in [0, 20].
    for (const bad of [-1, 21, 1.5, '3', null]) assertThrowsCode(() => checkLogprobs(bad), 'E_ARG', /logprobs: expected an integer in \[0, 20\]/);
    assert.strictEqual(checkLogprobs(undefined), undefined);
    assert.strictEqual(checkLogprobs(0), 0);
  });

  describe('decoding with logprobs (the embedded family)', () => {
    let target: LlamaModel;
    let draft: LlamaModel;
    let heads: MedusaHeads;
    let eagle: EagleHead;
    const prompts = [Int32Array.of(1, 50, 60, 70, 50, 60), Int32Array.of(1, 80, 90)];
    const N = 24;
    let family: EmbeddedFamily;
    before(async () => {
      family = await loadEmbeddedFamily();
      ({ target, draft, heads, eagle } = family);
    });
    after(() => family.dispose());

    it('plainGenerate: each token\'s log-probability and top 4 == the reference\'s on the model\'s logits step by step (penalties and a logit bias applied first)', async () => {
      const pens = [undefined, resolvePenalties({ presence: 0.5, logitBias: { 5: -Infinity, 277: 1.5 } })!];
      for (const pen of pens) {
        const got = await plainGenerate(target, prompts, { maxNewTokens: N, logprobs: 4, ignoreEos: true, ...(pen ? { penalties: pen } : {}) });
        const bare = await plainGenerate(target, prompts, { maxNewTokens: N, ignoreEos: true, ...(pen ? { penalties: pen } : {}) });
        assert.deepStrictEqual(got.tokens, bare.tokens, 'logprobs change no token');
        for (const [i, prompt] of prompts.entries()) {
          const lp = got.logprobs![i]!;
          const toks = got.tokens[i]!;
          assert.strictEqual(lp.token.length, toks.length);
          const seq = target.createSequence();
          try {
            let feed: Int32Array = prompt;
            for (let k = 0; k < toks.length; k++) {
              const fw = await target.forward([{ seq, tokens: feed }]);
              const last = fw.logits.rows(fw.logits.shape[0]! - 1, fw.logits.shape[0]!);
              let row = last.toFloat32();
              last.dispose();
              fw.logits.dispose();
              fw.hidden?.dispose();
              target.commit([seq], [Int32Array.from({ length: feed.length }, (_, j) => j)]);
              if (pen) row = refPenalize(row, row.length, pen, [{ tokens: [...prompt, ...toks.subarray(0, k)], promptLength: prompt.length }], Int32Array.of(0), []);
              const ref = refLogSoftmax(row);
              close(lp.token[k] as number, ref[toks[k] as number] as number, `prompt ${i}, token ${k}`);
              assert.deepStrictEqual(Array.from(lp.topIds.subarray(4 * k, 4 * k + 4)), refTop(row, 4), `prompt ${i}, token ${k}: top 4`);
              // Greedy: the token is the most probable one.
              assert.strictEqual(lp.topIds[4 * k], toks[k]);
              feed = Int32Array.of(toks[k] as number);
            }
          } finally {
            target.freeSequence(seq);
          }
        }
      }
    });

    const speculators = (): [string, () => Speculator][] => [
      ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
      ['draft model tree [2,2,1]', () => new DraftModelSpeculator({ draft, treeBranching: [2, 2, 1] })],
      ['Medusa small_8', () => new MedusaSpeculator({ heads, choices: 'small_8' })],
      ['lookahead 4,3,4', () => new LookaheadSpeculator({ W: 4, N: 3, G: 4, sizing: 'fixed' })],
      ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1, numDraft: 4 })],
      ['EAGLE 4,3,12', () => new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 })],
      ['hybrid (draft + prompt lookup)', () => new HybridSpeculator({ draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4 })],
    ];

    /** a == b bit for bit (a node's row and the plain step's row are the same bits on the CPU backend). */
    const sameLogprobs = (a: TokenLogprobs, b: TokenLogprobs, what: string): void => {
      assert.strictEqual(a.k, b.k, what);
      assert.deepStrictEqual(Array.from(a.topIds), Array.from(b.topIds), `${what}: top ids`);
      a.token.forEach((v, i) => assert.ok(Object.is(v, b.token[i]), `${what}: token ${i}: ${v} vs ${b.token[i]}`));
      a.topLogprobs.forEach((v, i) => assert.ok(Object.is(v, b.topLogprobs[i]), `${what}: top ${i}: ${v} vs ${b.topLogprobs[i]}`));
    };

    it('every strategy, greedy and sampled (deterministic drafts), with and without penalties: plainGenerate\'s tokens and log-probabilities bit for bit, drafts accepted', async () => {
      const pen = resolvePenalties({ repetition: 1.2, logitBias: { 5: -2 } })!;
      for (const sampled of [false, true]) {
        for (const p of [undefined, pen]) {
          const o = { maxNewTokens: N, ignoreEos: true, ...(p ? { penalties: p } : {}) };
          const want = await plainGenerate(target, prompts, { ...o, logprobs: 3, ...(sampled ? { temperature: 0.8, seed: 4 } : {}) });
          for (const [name, make] of speculators()) {
            if (sampled && (name.startsWith('draft') || name.startsWith('hybrid'))) continue;  // sampled drafts: other draws
            using dec = new SpeculativeDecoder({ target, speculator: make(), ...(p ? { penalties: p } : {}), ...(sampled ? { sampling: { temperature: 0.8, seed: 4 } } : {}) });
            const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true, logprobs: 3 });
            const what = `${name}${sampled ? ', sampled' : ''}${p ? ', penalties' : ''}`;
            rs.forEach((r, i) => {
              assert.deepStrictEqual(Array.from(r.tokens), Array.from(want.tokens[i]!), `${what}, prompt ${i}: tokens`);
              sameLogprobs(r.logprobs!, want.logprobs![i]!, `${what}, prompt ${i}`);
            });
            if (!sampled) assert.ok(rs.some((r) => r.stats.acceptedDraftTokens > 0), `${what}: drafts accepted`);
          }
        }
      }
    });

    it('specdec generate --json --logprobs N: each token\'s log-probability and alternatives, plain and speculative, as the API\'s', async () => {
      const want = await plainGenerate(target, [prompts[0]!], { maxNewTokens: 10, logprobs: 2 });
      for (const extra of [[], ['--draft', 'default'], ['--medusa', 'default']]) {
        let out = '';
        const code = await generateCommand(['--prompt-ids', Array.from(prompts[0]!).join(','), '--max-new-tokens', '10', '--device', 'cpu', '--json', '--logprobs', '2', ...extra], { stdout: (t) => (out += t), stderr: () => undefined });
        assert.strictEqual(code, 0);
        const rec = JSON.parse(out) as { tokens: number[]; logprobs: { id: number; logprob: number; top: { id: number; logprob: number }[] }[] };
        assert.deepStrictEqual(rec.tokens, Array.from(want.tokens[0]!), extra.join(' '));
        assert.deepStrictEqual(rec.logprobs.map((e) => e.id), rec.tokens);
        assert.deepStrictEqual(rec.logprobs.map((e) => e.logprob), Array.from(want.logprobs![0]!.token), extra.join(' '));
        assert.deepStrictEqual(rec.logprobs.flatMap((e) => e.top.map((x) => x.id)), Array.from(want.logprobs![0]!.topIds));
      }
      assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--logprobs', '2']), /--logprobs needs --json/);
      assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--json', '--logprobs', '21']), /--logprobs: expected an integer in \[0, 20\]/);
      assert.strictEqual(parseGenerateFlags(['--prompt', 'x', '--json', '--logprobs', '0']).logprobs, 0);
    });

    it('the Engine: each chunk\'s log-probabilities (onTokens, generate().logprobsOf) add up to the result\'s; requests without them beside it keep their native chains; a stop cuts them with the tokens', async () => {
      const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
      try {
        const want = await plainGenerate(target, prompts, { maxNewTokens: N, ignoreEos: true, logprobs: 2 });
        const chunks: TokenLogprobs[] = [];
        const [a, b] = await Promise.all([
          engine.submit(prompts[0]!, { maxNewTokens: N, ignoreEos: true, logprobs: 2, onTokens: (t, lp) => chunks.push(lp!) }),
          engine.submit(prompts[1]!, { maxNewTokens: N, ignoreEos: true }),
        ]);
        sameLogprobs(a.logprobs!, want.logprobs![0]!, 'request 0');
        assert.strictEqual(b.logprobs, undefined);
        assert.deepStrictEqual(Array.from(b.tokens), Array.from(want.tokens[1]!));
        assert.ok(chunks.length > 1, `${chunks.length} chunks`);
        assert.deepStrictEqual(chunks.flatMap((c) => Array.from(c.token)), Array.from(a.logprobs!.token));
        assert.deepStrictEqual(chunks.flatMap((c) => Array.from(c.topIds)), Array.from(a.logprobs!.topIds));
        // generate(): logprobsOf reads what was yielded.
        const gen = engine.generate(prompts[0]!, { maxNewTokens: N, ignoreEos: true, logprobs: 2 });
        let at = 0;
        const seen: number[] = [];
        for await (const c of gen) {
          seen.push(...gen.logprobsOf!(at, at + c.length)!.token);
          at += c.length;
        }
        assert.deepStrictEqual(seen, Array.from(a.logprobs!.token));
        // A stop token cuts the log-probabilities with the tokens.
        const stopAt = want.tokens[0]![5]!;
        const cut = await engine.submit(prompts[0]!, { maxNewTokens: N, ignoreEos: true, stopTokens: [stopAt], logprobs: 2 });
        const n = Array.from(want.tokens[0]!).indexOf(stopAt) + 1;
        assert.strictEqual(cut.tokens.length, n);
        assert.deepStrictEqual(Array.from(cut.logprobs!.token), Array.from(want.logprobs![0]!.token.subarray(0, n)));
        await assert.rejects(engine.submit(prompts[0]!, { maxNewTokens: 2, logprobs: 21 }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /logprobs: expected an integer in \[0, 20\]/.test(e.message));
      } finally {
        engine.close();
      }
    });

    it('native chains with ChainOptions.logprobs (greedyChain, sampledChain; penalties; some inputs only): each pick\'s entry == tokenLogprobs of its row step by step, bit for bit; the picks unchanged', async () => {
      const pen = resolvePenalties({ repetition: 1.3, presence: 0.4, logitBias: { 7: -Infinity, 40: 1.5 } })!;
      const steps = [6, 3, 5];
      const ps = [prompts[0]!, prompts[1]!, Int32Array.of(1, 33, 44, 55)];
      for (const sampled of [false, true]) {
        for (const p of [undefined, pen]) {
          const want = [true, false, true];
          const got: (TokenLogprobs | undefined)[] = [];
          const seqs = ps.map(() => target.createSequence());
          let picks: Int32Array[];
          try {
            const opts = {
              ...(p ? { penalties: { penalties: p, histories: ps.map((x) => ({ tokens: Array.from(x), promptLength: x.length })) } } : {}),
              logprobs: { k: 3, want, sink: (b: number, lp: TokenLogprobs) => (got[b] = lp) },
            };
            const inputs = ps.map((x, b) => ({ seq: seqs[b]!, tokens: x }));
            if (sampled) {
              const r = await target.sampledChain(inputs, steps, { temperature: 0.7, topP: 0.9 }, ps.map(() => 9n), steps.map((n, b) => Array.from({ length: n }, (_, j) => BigInt(b * 100 + j))), opts);
              r.q.dispose();
              picks = r.picks;
            } else picks = await target.greedyChain(inputs, steps, opts);
          } finally {
            for (const q of seqs) target.freeSequence(q);
          }
          const what = `${sampled ? 'sampled' : 'greedy'}${p ? ', penalties' : ''}`;
          assert.strictEqual(got[1], undefined, `${what}: input 1 asked for none`);
          // Without logprobs: the same picks.
          if (!sampled) {
            const seqs2 = ps.map(() => target.createSequence());
            try {
              const bare = await target.greedyChain(ps.map((x, b) => ({ seq: seqs2[b]!, tokens: x })), steps, p ? { penalties: { penalties: p, histories: ps.map((x) => ({ tokens: Array.from(x), promptLength: x.length })) } } : {});
              assert.deepStrictEqual(bare, picks, `${what}: picks`);
            } finally {
              for (const q of seqs2) target.freeSequence(q);
            }
          }
          for (const b of [0, 2]) {
            const lp = got[b]!;
            assert.strictEqual(lp.token.length, steps[b], `${what}, input ${b}: entries`);
            // The reference: the same picks fed step by step, each row penalized, then tokenLogprobs.
            sameLogprobs(lp, await teacherForced(target, ps[b]!, picks[b]!, 3, p), `${what}, input ${b}`);
            if (!sampled) picks[b]!.forEach((t, j) => assert.strictEqual(lp.topIds[3 * j], t, `${what}, input ${b}, pick ${j}: greedy picks the top one`));
          }
        }
      }
      const seq = target.createSequence();
      try {
        await assert.rejects(target.greedyChain([{ seq, tokens: prompts[0]! }], [2], { logprobs: { k: 21, want: [true], sink: () => undefined } }), /logprobs.k: expected an integer in \[0, 20\]/);
        await assert.rejects(target.greedyChain([{ seq, tokens: prompts[0]! }], [2], { logprobs: { k: 1, want: [true, true], sink: () => undefined } }), /logprobs.want: 2 entries for 1 inputs/);
      } finally {
        target.freeSequence(seq);
      }
    });

    it('the Engine without a speculator: requests with logprobs run plain chains (several steps a call), plainGenerate\'s tokens and log-probabilities bit for bit', async () => {
      const engine = new Engine({ model: target });
      const calls: number[] = [];
      const orig = target.greedyChain.bind(target);
      target.greedyChain = async (inputs, steps, opts) => {
        if (opts?.logprobs) calls.push(Math.max(...steps));
        return orig(inputs, steps, opts);
      };
      try {
        const want = await plainGenerate(target, prompts, { maxNewTokens: N, ignoreEos: true, logprobs: 2 });
        const rs = await Promise.all(prompts.map((x, i) => engine.submit(x, { maxNewTokens: N, ignoreEos: true, ...(i === 0 ? { logprobs: 2 } : {}) })));
        sameLogprobs(rs[0]!.logprobs!, want.logprobs![0]!, 'request 0');
        assert.strictEqual(rs[1]!.logprobs, undefined);
        rs.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(want.tokens[i]!), `request ${i}`));
        assert.ok(calls.some((n) => n > 1), `chains with log-probabilities of ${calls.join(', ')} steps`);
      } finally {
        target.greedyChain = orig;
        engine.close();
      }
    });

    it('the draft-model and Medusa native chains compute them (greedy and sampled, with and without penalties): each token\'s entry == teacher-forced tokenLogprobs bit for bit; the chains ran with them', async () => {
      const pen = resolvePenalties({ repetition: 1.2, frequency: 0.3, logitBias: { 5: -2 } })!;
      const cases: [string, () => Speculator, 'speculativeChain' | 'medusaChain'][] = [
        ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 }), 'speculativeChain'],
        ['Medusa small_8', () => new MedusaSpeculator({ heads, choices: 'small_8' }), 'medusaChain'],
      ];
      for (const [name, make, method] of cases) {
        for (const sampled of [false, true]) {
          for (const p of [undefined, pen]) {
            const what = `${name}${sampled ? ', sampled' : ''}${p ? ', penalties' : ''}`;
            let chained = 0;
            const orig = target[method];
            const spy = async (...args: unknown[]): Promise<unknown> => {
              if ((args[args.length - 1] as { logprobs?: unknown }).logprobs) chained++;
              return (orig as (...a: unknown[]) => Promise<unknown>).apply(target, args);
            };
            (target as unknown as Record<string, unknown>)[method] = spy;
            try {
              using dec = new SpeculativeDecoder({ target, speculator: make(), ...(p ? { penalties: p } : {}), ...(sampled ? { sampling: { temperature: 0.8, seed: 3 } } : {}) });
              const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true, logprobs: 2 });
              const bare = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true });
              for (const [i, r] of rs.entries()) {
                assert.deepStrictEqual(Array.from(r.tokens), Array.from(bare[i]!.tokens), `${what}, prompt ${i}: the same tokens as without`);
                sameLogprobs(r.logprobs!, await teacherForced(target, prompts[i]!, r.tokens, 2, p), `${what}, prompt ${i}`);
              }
              assert.ok(chained > 0, `${what}: no ${method} with log-probabilities`);
            } finally {
              (target as unknown as Record<string, unknown>)[method] = orig;
            }
          }
        }
      }
    });

    describe('prompt log-probabilities (promptLogprobs)', () => {
      // A longer prompt: with a budget of 3 rows a forward, it is read in several forwards.
      const long = Int32Array.from({ length: 40 }, (_, i) => 1 + ((i * 37 + 11) % 300));
      const scored = [prompts[0]!, long, Int32Array.of(1), prompts[1]!];
      let saved = 0;
      beforeEach(() => (saved = promptLogitsBudget.bytes));
      afterEach(() => (promptLogitsBudget.bytes = saved));

      /** The reference: the prompt in one forward with every row's logits, token j + 1 read on row j. */
      const reference = async (prompt: Int32Array, k: number): Promise<{ lp: TokenLogprobs; rows: Float32Array }> => {
        const seq = target.createSequence();
        try {
          const fw = await target.forward([{ seq, tokens: prompt }]);
          try {
            const n = prompt.length - 1;
            return { lp: tokenLogprobs(fw.logits, Int32Array.from({ length: n }, (_, j) => j), prompt.subarray(1), k), rows: fw.logits.toFloat32() };
          } finally {
            fw.logits.dispose();
            fw.hidden?.dispose();
          }
        } finally {
          target.freeSequence(seq);
        }
      };

      it('plainGenerate: entry j == token j + 1 on the prompt\'s row j (a float64 log-softmax; the op on one whole forward bit for bit), read in one forward or in many, maxNewTokens 0 included; the output unchanged', async () => {
        const V = target.config.vocabSize;
        for (const rowsPerForward of [0, 3, 1]) {
          if (rowsPerForward > 0) promptLogitsBudget.bytes = rowsPerForward * 4 * V;
          const got = await plainGenerate(target, scored, { maxNewTokens: 6, ignoreEos: true, promptLogprobs: 3, logprobs: 1 });
          const bare = await plainGenerate(target, scored, { maxNewTokens: 6, ignoreEos: true, logprobs: 1 });
          assert.deepStrictEqual(got.tokens, bare.tokens, `${rowsPerForward}: the output`);
          got.logprobs!.forEach((lp, i) => sameLogprobs(lp, bare.logprobs![i]!, `${rowsPerForward}: prompt ${i}'s output`));
          const none = await plainGenerate(target, scored, { maxNewTokens: 0, promptLogprobs: 3 });
          assert.deepStrictEqual(none.tokens.map((t) => t.length), [0, 0, 0, 0]);
          for (const [i, p] of scored.entries()) {
            const { lp: want, rows } = await reference(p, 3);
            const lp = got.promptLogprobs![i]!;
            assert.strictEqual(lp.token.length, p.length - 1, `prompt ${i}: entries`);
            sameLogprobs(lp, want, `${rowsPerForward} rows a forward: prompt ${i}`);
            sameLogprobs(none.promptLogprobs![i]!, want, `${rowsPerForward} rows a forward, maxNewTokens 0: prompt ${i}`);
            for (let j = 0; j < p.length - 1; j++) {
              const row = rows.subarray(j * V, (j + 1) * V);
              close(lp.token[j] as number, refLogSoftmax(row)[p[j + 1] as number] as number, `prompt ${i}, token ${j + 1}`);
              assert.deepStrictEqual(Array.from(lp.topIds.subarray(3 * j, 3 * j + 3)), refTop(row, 3), `prompt ${i}, token ${j + 1}: top 3`);
            }
          }
        }
        await assert.rejects(plainGenerate(target, scored, { maxNewTokens: 1, promptLogprobs: 21 }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /promptLogprobs: expected an integer in \[0, 20\]/.test(e.message));
      });

      it('every strategy, prompts read 3 rows a forward: plainGenerate\'s prompt log-probabilities and output bit for bit, drafts accepted (the speculators see each forward as a catch-up)', async () => {
        promptLogitsBudget.bytes = 3 * 4 * target.config.vocabSize;
        const want = await plainGenerate(target, scored, { maxNewTokens: N, ignoreEos: true, promptLogprobs: 2, logprobs: 1 });
        for (const [name, make] of speculators()) {
          using dec = new SpeculativeDecoder({ target, speculator: make() });
          const rs = await dec.generateBatch(scored, { maxNewTokens: N, ignoreEos: true, promptLogprobs: 2 });
          const bare = await dec.generateBatch(scored, { maxNewTokens: N, ignoreEos: true });
          rs.forEach((r, i) => {
            // The same drafts as without: the speculator saw every prompt row (EAGLE's features).
            assert.strictEqual(r.stats.acceptedDraftTokens, bare[i]!.stats.acceptedDraftTokens, `${name}, prompt ${i}: accepted drafts`);
            assert.deepStrictEqual(Array.from(r.tokens), Array.from(want.tokens[i]!), `${name}, prompt ${i}: tokens`);
            sameLogprobs(r.promptLogprobs!, want.promptLogprobs![i]!, `${name}, prompt ${i}`);
            assert.strictEqual(r.logprobs, undefined);
          });
          assert.ok(rs.some((r) => r.stats.acceptedDraftTokens > 0), `${name}: drafts accepted`);
        }
        // generateText passes the option on: the result carries them.
        using dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
        const text = await generateText(dec, family.tokenizer, 'once upon a time', { maxNewTokens: 0, promptLogprobs: 2 }).result;
        const ids = family.tokenizer.encode('once upon a time');
        sameLogprobs(text.promptLogprobs!, (await plainGenerate(target, [ids], { maxNewTokens: 0, promptLogprobs: 2 })).promptLogprobs![0]!, 'generateText');
      });

      it('specdec generate --json --prompt-logprobs N (--max-new-tokens 0 allowed with it): the prompt\'s entries as the API\'s, plain and speculative', async () => {
        const want = await plainGenerate(target, [long], { maxNewTokens: 0, promptLogprobs: 2 });
        for (const extra of [[], ['--draft', 'default'], ['--eagle', 'default']]) {
          for (const n of ['0', '5']) {
            let out = '';
            const code = await generateCommand(['--prompt-ids', Array.from(long).join(','), '--max-new-tokens', n, '--device', 'cpu', '--json', '--prompt-logprobs', '2', ...extra], { stdout: (t) => (out += t), stderr: () => undefined });
            assert.strictEqual(code, 0, extra.join(' '));
            const rec = JSON.parse(out) as { tokens: number[]; promptLogprobs: { id: number; logprob: number; top: { id: number; logprob: number }[] }[] };
            assert.strictEqual(rec.tokens.length, Number(n));
            assert.deepStrictEqual(rec.promptLogprobs.map((e) => e.id), Array.from(long.subarray(1)));
            assert.deepStrictEqual(rec.promptLogprobs.map((e) => e.logprob), Array.from(want.promptLogprobs![0]!.token), `${extra.join(' ')}, ${n} new`);
            assert.deepStrictEqual(rec.promptLogprobs.flatMap((e) => e.top.map((x) => x.id)), Array.from(want.promptLogprobs![0]!.topIds));
          }
        }
        assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--prompt-logprobs', '2']), /--prompt-logprobs needs --json/);
        assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--max-new-tokens', '0']), /--max-new-tokens/);
        assert.strictEqual(parseGenerateFlags(['--prompt', 'x', '--json', '--prompt-logprobs', '0', '--max-new-tokens', '0']).maxNewTokens, 0);
      });

      it('the Engine: onPromptLogprobs once, before the first onTokens; maxNewTokens 0 reads the prompt and ends; beside requests without them; a throwing callback fails its request only; bad values are E_ARG', async () => {
        const engine = new Engine({ model: target, speculator: new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 }) });
        try {
          const want = await plainGenerate(target, scored, { maxNewTokens: N, ignoreEos: true, promptLogprobs: 1 });
          const events: string[] = [];
          let seen: TokenLogprobs | undefined;
          const [a, b, c, d] = await Promise.all([
            engine.submit(long, {
              maxNewTokens: N,
              ignoreEos: true,
              promptLogprobs: 1,
              onPromptLogprobs: (lp) => {
                events.push('prompt');
                seen = lp;
              },
              onTokens: () => events.push('tokens'),
            }),
            engine.submit(prompts[0]!, { maxNewTokens: 0, promptLogprobs: 1 }),
            engine.submit(prompts[1]!, { maxNewTokens: N, ignoreEos: true }),
            engine.submit(prompts[1]!, {
              maxNewTokens: N,
              promptLogprobs: 0,
              onPromptLogprobs: () => {
                throw new Error('consumer failed');
              },
            }).catch((e: unknown) => e),
          ]);
          assert.strictEqual(events[0], 'prompt');
          assert.strictEqual(events.filter((e) => e === 'prompt').length, 1);
          assert.ok(events.length > 2);
          sameLogprobs(seen!, want.promptLogprobs![1]!, 'onPromptLogprobs');
          sameLogprobs(a.promptLogprobs!, want.promptLogprobs![1]!, 'request a');
          assert.deepStrictEqual(Array.from(a.tokens), Array.from(want.tokens[1]!));
          assert.strictEqual(b.tokens.length, 0);
          assert.strictEqual(b.finishReason, 'length');
          sameLogprobs(b.promptLogprobs!, want.promptLogprobs![0]!, 'maxNewTokens 0');
          assert.strictEqual(c.promptLogprobs, undefined);
          assert.deepStrictEqual(Array.from(c.tokens), Array.from(want.tokens[3]!));
          assert.match(String((d as Error).message), /consumer failed/);
          await assert.rejects(engine.submit(prompts[0]!, { maxNewTokens: 2, promptLogprobs: 1.5 }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /promptLogprobs: expected an integer/.test(e.message));
          // Without promptLogprobs, maxNewTokens 0 reads nothing.
          const z = await engine.submit(prompts[0]!, { maxNewTokens: 0 });
          assert.strictEqual(z.promptLogprobs, undefined);
          assert.strictEqual(z.stats.targetForwards, 0);
        } finally {
          engine.close();
        }
      });
    });
  });
});

describeCuda('logprobs', () => {
  it('tokenLogprobs on CUDA == a float64 log-softmax, and its top ids the sorted row', () => {
    checkOp('cuda');
  });

  it('the native chains on CUDA (plain greedy and sampled, draft-model, Medusa): each token\'s entry == the teacher-forced tokenLogprobs of its row on CUDA, within f32 rounding; greedy picks are the top ids', async function () {
    this.timeout(300000);
    const { defaultModelPaths } = await import('../lib/default_models');
    const { MedusaHeads } = await import('../lib/strategies/medusa');
    const P = defaultModelPaths();
    const target = await LlamaModel.load(P.target, { device: 'cuda', maxSequences: 8 });
    const draft = await LlamaModel.load(P.draft, { device: 'cuda', maxSequences: 8 });
    const heads = MedusaHeads.load(P.medusa, { device: 'cuda' });
    try {
      const prompts = [Int32Array.of(1, 50, 60, 70, 50, 60), Int32Array.of(1, 80, 90)];
      const near = (got: TokenLogprobs, want: TokenLogprobs, what: string): void => {
        assert.strictEqual(got.token.length, want.token.length, what);
        got.token.forEach((v, i) => assert.ok(Math.abs(v - want.token[i]!) <= 1e-4 * Math.max(1, Math.abs(want.token[i]!)), `${what}, token ${i}: ${v} vs ${want.token[i]}`));
        got.topLogprobs.forEach((v, i) => assert.ok(Math.abs(v - want.topLogprobs[i]!) <= 1e-4 * Math.max(1, Math.abs(want.topLogprobs[i]!)), `${what}, top ${i}`));
      };
      const cases: [string, () => Speculator | undefined, boolean][] = [
        ['plain', () => undefined, false],
        ['plain, sampled', () => undefined, true],
        ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 }), false],
        ['Medusa small_8', () => new MedusaSpeculator({ heads, choices: 'small_8' }), false],
      ];
      for (const [name, make, sampled] of cases) {
        const spec = make();
        using dec = new SpeculativeDecoder({ target, ...(spec ? { speculator: spec } : {}), ...(sampled ? { sampling: { temperature: 0.8, seed: 2 } } : {}) });
        const rs = await dec.generateBatch(prompts, { maxNewTokens: 24, ignoreEos: true, logprobs: 2 });
        const bare = await dec.generateBatch(prompts, { maxNewTokens: 24, ignoreEos: true });
        for (const [i, r] of rs.entries()) {
          assert.deepStrictEqual(Array.from(r.tokens), Array.from(bare[i]!.tokens), `${name}, prompt ${i}: the same tokens as without`);
          near(r.logprobs!, await teacherForced(target, prompts[i]!, r.tokens, 2), `${name}, prompt ${i}`);
          if (!sampled) r.tokens.forEach((t, j) => assert.strictEqual(r.logprobs!.topIds[2 * j], t, `${name}, prompt ${i}, token ${j}: greedy picks the top one`));
        }
      }
    } finally {
      heads.dispose();
      draft.dispose();
      target.dispose();
    }
  });
});
