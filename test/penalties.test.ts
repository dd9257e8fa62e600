// Repetition / presence / frequency penalties and the logit bias: the native op against a plain
// JavaScript reference (bit for bit), its argument checks, and decoding with them: plainGenerate
// against step-by-step reference decoding, and every speculative strategy against plain decoding,
// greedy and sampled.
import * as assert from 'assert';
import { generateCommand, parseGenerateFlags } from '../lib/cli/generate';
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { native } from '../lib/native';
import { plainGenerate } from '../lib/plain';
import { nativePenalties, penalize, resolvePenalties, treePaths, type Penalties, type ResolvedPenalties } from '../lib/sampling';
import { DraftModelSpeculator, type DraftModelOptions } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import { verify } from '../lib/verify';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { assertThrowsCode, describeCuda, refPenalize, rng, testSeed } from './helpers';

const EMBEDDED = defaultModelPaths();

/** penalize on `device` against the JavaScript reference, bit for bit. */
function checkAgainstReference(device: 'cpu' | 'cuda'): void {
  const r = rng(testSeed + 71);
  let changed = 0, biased = 0, banned = 0;
  for (let round = 0; round < 60; round++) {
    const V = 5 + Math.floor(r() * 60);
    const S = 1 + Math.floor(r() * 3);
    const hist = Array.from({ length: S }, () => {
      const n = Math.floor(r() * 20);
      // Few distinct tokens: repeats in the prompt, the output and across both.
      const pool = Array.from({ length: 1 + Math.floor(r() * 8) }, () => Math.floor(r() * V));
      return { tokens: Array.from({ length: n }, () => pool[Math.floor(r() * pool.length)]!), promptLength: Math.floor(r() * (n + 1)) };
    });
    // Rows: per sequence a random tree (parents before children), each row's path from treePaths.
    const rowSeq: number[] = [];
    const paths: Int32Array[] = [];
    for (let s = 0; s < S; s++) {
      const n = 1 + Math.floor(r() * 6);
      const parents = Int32Array.from({ length: n }, (_, i) => (i === 0 ? -1 : r() < 0.1 ? -2 : Math.floor(r() * i)));
      const tokens = Int32Array.from({ length: n }, () => Math.floor(r() * V));
      const tp = treePaths(tokens, parents);
      for (let i = 0; i < n; i++) {
        rowSeq.push(s);
        paths.push(tp[i]!);
      }
    }
    // A logit bias on a few tokens (some in the histories and paths, some -Infinity, some tiny
    // against the logits: the f32 sum rounds).
    const bias = (): Map<number, number> => {
      const m = new Map<number, number>();
      for (let n = 1 + Math.floor(r() * 6); n > 0; n--) m.set(Math.floor(r() * V), [-Infinity, 1e-7, (r() - 0.5) * 30][Math.floor(r() * 3)]!);
      return m;
    };
    const kinds: ResolvedPenalties[] = [
      { repetition: 1.3, presence: 0, frequency: 0 },
      { repetition: 0.7, presence: 0, frequency: 0 },
      { repetition: 1, presence: 0.5, frequency: 0 },
      { repetition: 1, presence: 0, frequency: 0.3 },
      { repetition: 1 + r(), presence: r() * 4 - 2, frequency: r() * 4 - 2 },
      resolvePenalties({ logitBias: bias() }) ?? { repetition: 1, presence: 0, frequency: 0 },
      resolvePenalties({ repetition: 0.5 + r(), presence: r() * 4 - 2, frequency: r() * 4 - 2, logitBias: bias() })!,
    ];
    const p = kinds[round % kinds.length]!;
    const N = rowSeq.length;
    const x = Float32Array.from({ length: N * V }, () => Math.fround((r() - 0.5) * 20));
    // Stop bans (min_tokens) in half the rounds: some sequences' stop tokens on their rows whose path
    // is shorter than `before`.
    const bans = round % 2 === 1 ? hist.map(() => (r() < 0.7 ? { tokens: Int32Array.from(new Set(Array.from({ length: 1 + Math.floor(r() * 3) }, () => Math.floor(r() * V)))).sort(), before: Math.floor(r() * 4) } : undefined)) : undefined;
    const want = refPenalize(x, V, p, hist, Int32Array.from(rowSeq), paths, bans);
    using t = Tensor.fromArray(x, 'f32', [N, V], device);
    penalize(t, p, hist, Int32Array.from(rowSeq), paths, bans);
    const got = t.toFloat32();
    for (let i = 0; i < got.length; i++) {
      assert.ok(Object.is(got[i], want[i]), `round ${round}, element ${i}: ${got[i]} != ${want[i]} (${JSON.stringify(p)} ${p.logitBias?.key() ?? ''})`);
      if (got[i] !== x[i]) changed++;
      if (got[i] !== x[i] && p.logitBias) biased++;
      if (got[i] === -Infinity && x[i] !== -Infinity && bans && !p.logitBias) banned++;
    }
  }
  assert.ok(changed > 200, `${changed} logits changed`);
  assert.ok(biased > 40, `${biased} logits changed under a logit bias`);
  assert.ok(banned > 40, `${banned} logits banned`);
  // A view of some rows: only those change.
  const V = 8;
  const x = Float32Array.from({ length: 3 * V }, (_, i) => i - 10);
  using all = Tensor.fromArray(x, 'f32', [3, V], device);
  using mid = all.rows(1, 2);
  penalize(mid, { presence: 1 }, [{ tokens: [2, 2], promptLength: 1 }], Int32Array.of(0));
  const y = all.toFloat32();
  assert.deepStrictEqual(Array.from(y).map((v, i) => v - (x[i] as number)).filter((d) => d !== 0), [-1]);
  assert.strictEqual(y[V + 2], x[V + 2]! - 1);
}

describe('penalties', () => {
  it('penalize == the JavaScript reference, bit for bit (random histories, tree paths, repeated tokens, negative logits, every penalty alone and together)', () => {
    checkAgainstReference('cpu');
  });

  describe('decoding with penalties (the embedded family)', () => {
    let target: LlamaModel;
    let draft: LlamaModel;
    let heads: MedusaHeads;
    let eagle: EagleHead;
    let prompts: Int32Array[];
    let family: EmbeddedFamily;
    before(async () => {
      family = await loadEmbeddedFamily();
      ({ target, draft, heads, eagle } = family);
      prompts = ['once upon a time', 'the dog ran to the park and'].map((t) => family.tokenizer.encode(t));
      // Logit biases that move greedy output: the plain outputs' most frequent tokens banned or
      // lowered, a prompt token raised; alone, and with a presence penalty.
      const plain = await plainGenerate(target, prompts, { maxNewTokens: N, ignoreEos: true });
      const freq = new Map<number, number>();
      for (const t of plain.tokens) for (const x of t) freq.set(x, (freq.get(x) ?? 0) + 1);
      const top = [...freq.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map((e) => e[0]);
      P.push(
        resolvePenalties({ logitBias: { [top[0]!]: -Infinity, [top[1]!]: -3, [prompts[0]![1]!]: 2.5 } })!,
        resolvePenalties({ presence: 0.4, logitBias: new Map([[top[2]!, -Infinity], [top[0]!, -1.5]]) })!,
      );
      BANNED.push([top[0]!], [top[2]!]);
    });
    after(() => family.dispose());
    const P: ResolvedPenalties[] = [
      { repetition: 1.3, presence: 0, frequency: 0 },
      { repetition: 1, presence: 0.6, frequency: 0.4 },
    ];
    // P[i + 2]'s tokens banned (a logit bias of -Infinity).
    const BANNED: number[][] = [];
    const N = 40;

    it('plainGenerate with penalties == step-by-step reference decoding (JavaScript penalties and argmax on the model\'s logits); they change the output', async () => {
      for (const p of P) {
        let changed = 0;
        const got = await plainGenerate(target, prompts, { maxNewTokens: N, penalties: p, ignoreEos: true });
        const bare = await plainGenerate(target, prompts, { maxNewTokens: N, ignoreEos: true });
        for (let i = 0; i < prompts.length; i++) {
          const prompt = prompts[i] as Int32Array;
          const out: number[] = [];
          const seq = target.createSequence();
          try {
            let feed: Int32Array = prompt;
            for (let k = 0; k < N; k++) {
              const fw = await target.forward([{ seq, tokens: feed }]);
              const V = target.config.vocabSize;
              const last = fw.logits.rows(fw.logits.shape[0]! - 1, fw.logits.shape[0]!);
              const row = last.toFloat32();
              last.dispose();
              fw.logits.dispose();
              fw.hidden?.dispose();
              target.commit([seq], [Int32Array.from({ length: feed.length }, (_, j) => j)]);
              const x = refPenalize(row, V, p, [{ tokens: [...prompt, ...out], promptLength: prompt.length }], Int32Array.of(0), []);
              let best = 0;
              for (let t = 1; t < V; t++) if ((x[t] as number) > (x[best] as number)) best = t;
              out.push(best);
              feed = Int32Array.of(best);
            }
          } finally {
            target.freeSequence(seq);
          }
          assert.deepStrictEqual(Array.from(got.tokens[i] as Int32Array), out, `${JSON.stringify(p)}, prompt ${i}`);
          if (Array.from(got.tokens[i] as Int32Array).join() !== Array.from(bare.tokens[i] as Int32Array).join()) changed++;
        }
        assert.ok(changed > 0, `${JSON.stringify(p)} changes an output`);
      }
    });

    it('native chains with penalties (greedy and sampled; the picks so far read as each row\'s path) == the same steps one at a time', async () => {
      // The target without its chain calls: plainGenerate then steps one at a time.
      const stepwise = Object.create(target, { greedyChain: { value: undefined }, sampledChain: { value: undefined } }) as LlamaModel;
      for (const p of P) {
        for (const sampled of [false, true]) {
          const o = { maxNewTokens: N, penalties: p, ignoreEos: true, ...(sampled ? { temperature: 0.9, topK: 40, seed: 5 } : {}) };
          const chained = await plainGenerate(target, prompts, o);
          const one = await plainGenerate(stepwise, prompts, o);
          chained.tokens.forEach((t, i) => assert.deepStrictEqual(Array.from(t), Array.from(one.tokens[i] as Int32Array), `${JSON.stringify(p)}, ${sampled ? 'sampled' : 'greedy'}, prompt ${i}`));
        }
      }
      // A chain's histories must be one per input.
      const seq = target.createSequence();
      try {
        await assert.rejects(target.greedyChain([{ seq, tokens: prompts[0] as Int32Array }], [2], { penalties: { penalties: P[0]!, histories: [] } }),
          (e: Error & { code?: string }) => e.code === 'E_ARG' && /penalties: 0 histories for 1 inputs/.test(e.message));
        assert.strictEqual(target.sequenceLength(seq), 0, 'nothing committed');
      } finally {
        target.freeSequence(seq);
      }
    });

    const speculators = (): [string, () => Speculator][] => [
      ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
      ['draft model, sized', () => new DraftModelSpeculator({ draft })],
      ['draft model k=4, drafting without the penalties', () => new DraftModelSpeculator({ draft, k: 4, draftPenalties: false })],
      ['draft model, confidence (the JavaScript chain)', () => new DraftModelSpeculator({ draft, adaptive: 'confidence' })],
      ['draft model tree [2,2,1]', () => new DraftModelSpeculator({ draft, treeBranching: [2, 2, 1] })],
      ['Medusa small_8', () => new MedusaSpeculator({ heads, choices: 'small_8' })],
      ['Medusa, sized', () => new MedusaSpeculator({ heads })],
      ['lookahead 4,3,4', () => new LookaheadSpeculator({ W: 4, N: 3, G: 4, sizing: 'fixed' })],
      ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1, numDraft: 4 })],
      ['EAGLE 4,3,12', () => new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 })],
      ['EAGLE, sized', () => new EagleSpeculator({ head: eagle })],
      ['hybrid (draft + prompt lookup)', () => new HybridSpeculator({ draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4 })],
    ];

    it('greedy: every strategy with penalties emits plainGenerate\'s tokens with them (batches of 2), and drafts were accepted', async () => {
      for (const p of P) {
        const want = await plainGenerate(target, prompts, { maxNewTokens: N, penalties: p, ignoreEos: true });
        for (const [name, make] of speculators()) {
          using dec = new SpeculativeDecoder({ target, speculator: make(), penalties: p });
          const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true });
          rs.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(want.tokens[i] as Int32Array), `${name}, ${JSON.stringify(p)}, prompt ${i}`));
          if (!name.includes('sized')) assert.ok(rs.some((r) => r.stats.acceptedDraftTokens > 0), `${name}: some drafts accepted`);
        }
      }
    });

    it('damaged history arrays given to the native chains (greedy, draft-model, Medusa): E_ARG naming them before any is read, nothing committed', async () => {
      const nt = (target as unknown as { handle: SpecdecNative.LlamaNativeModel }).handle;
      const nd = (draft as unknown as { handle: SpecdecNative.LlamaNativeModel }).handle;
      const V = target.config.vocabSize;
      const good = { repetition: 1.3, presence: 0.5, frequency: 0.25, histIndptr: Int32Array.of(0, 2, 3), histTokens: Int32Array.of(4, 9, 7), histCounts: Int32Array.of(0, 1, 2) };
      const damaged: [Record<string, unknown>, RegExp][] = [
        [{ histIndptr: Int32Array.of(0, 900, 3) }, /histIndptr: passes the tokens' end at sequence 0/],
        [{ histTokens: Int32Array.of(9, 4, 7) }, /distinct and ascending/],
        [{ histTokens: Int32Array.of(4, V, 7) }, /outside the vocabulary/],
        [{ histCounts: Int32Array.of(0, -3, 2) }, /histCounts: -3/],
        [{ histIndptr: Int32Array.of(0, 3), histTokens: Int32Array.of(4, 7, 9) }, /histories, expected 2|inputs, expected 2|names sequence 1 of 1/],
        [{ biasTokens: Int32Array.of(3, V), biasValues: Float32Array.of(1, 1) }, new RegExp(`logitBias: token ${V} is outside the vocabulary`)],
        [{ biasTokens: Int32Array.of(9, 4), biasValues: Float32Array.of(1, 1) }, /logitBias: the tokens must be distinct and ascending \(9 then 4\)/],
        [{ biasTokens: Int32Array.of(4), biasValues: Float32Array.of(NaN) }, /logitBias: token 4's bias is nan/i],
        [{ biasTokens: Int32Array.of(4, 5), biasValues: Float32Array.of(1) }, /logitBias: 1 values for 2 tokens/],
      ];
      const ts = [target.createSequence(), target.createSequence()];
      const ds = [draft.createSequence(), draft.createSequence()];
      try {
        const p = prompts.map((x) => Int32Array.from(x));
        for (const [d, re] of damaged) {
          const pen = { ...good, ...d } as unknown as SpecdecNative.NativeChainPenalties;
          const codeOf = async (f: () => Promise<unknown>): Promise<void> => {
            await assert.rejects(f(), (e: Error & { code?: string }) => e.code === 'E_ARG' && re.test(e.message), `${JSON.stringify(Object.keys(d))}: ${re}`);
          };
          await codeOf(() => nt.greedyChain(p.map((tokens, i) => ({ seq: ts[i]!, tokens })), Int32Array.of(3, 3), 0, pen));
          await codeOf(() => nt.speculativeChain(nd, p.map((x, i) => ({ seq: ts[i]!, draftSeq: ds[i]!, draftFeed: x, k: 3, budget: 8 })), 2, 1, 0, undefined, pen));
          const H = heads.config.numHeads;
          await codeOf(() =>
            nt.medusaChain(heads.weights(), p.map((x, i) => ({ seq: ts[i]!, root: x[x.length - 1]!, cands: new Int32Array(H * 2), headsKnown: H, budget: 8 })),
              { parents: Int32Array.of(-1, 0), head: Int32Array.of(-1, 0), rank: Int32Array.of(0, 0) }, 2, 2, 1, 0, undefined, pen));
          // The heads' penalties (medusaTopK: one row per row of x).
          using x = Tensor.zeros('f32', [2, heads.config.hiddenSize]);
          const rows = { rowSeq: Int32Array.of(0, 1), pathIndptr: new Int32Array(3), pathTokens: new Int32Array(0) };
          assertThrowsCode(() => native().medusaTopK(x, heads.weights(), 2, { ...pen, ...rows }), 'E_ARG', re);
          for (const x of ts) assert.strictEqual(target.sequenceLength(x), 0, 'nothing committed');
          for (const x of ds) assert.strictEqual(draft.sequenceLength(x), 0, 'nothing committed in the draft');
        }
        using x = Tensor.zeros('f32', [2, heads.config.hiddenSize]);
        const ok = { ...good, pathIndptr: new Int32Array(3), pathTokens: new Int32Array(0) };
        assertThrowsCode(() => native().medusaTopK(x, heads.weights(), 2, { ...ok, rowSeq: Int32Array.of(0) }), 'E_ARG', /penalties\.rowSeq: 1 entries for 2 rows/);
        assert.strictEqual(native().medusaTopK(x, heads.weights(), 2, { ...ok, rowSeq: Int32Array.of(1, 0) }).length, heads.config.numHeads * 2 * 2);
        // The verification's heads (headsOnAccepted): one history per sequence.
        using lg = Tensor.zeros('f32', [3, V]);
        using hid = Tensor.zeros('f32', [3, heads.config.hiddenSize]);
        const vin = { mode: 'greedy' as const, nodeIndptr: Int32Array.of(0, 2, 3), parents: Int32Array.of(-1, 0, -1), tokens: Int32Array.of(1, 2, 3), target: lg };
        const hp = (n: number) => ({ heads: heads.weights(), k: 2, hidden: hid, penalties: { penalties: { repetition: 1.3, presence: 0, frequency: 0 }, histories: Array.from({ length: n }, () => ({ tokens: [5, 6], promptLength: 1 })) } });
        assertThrowsCode(() => verify({ ...vin, headsOnAccepted: hp(1) }), 'E_ARG', /medusa\.penalties\.rowSeq: 1 entries for 2 sequences/);
        assert.strictEqual(verify({ ...vin, headsOnAccepted: hp(2) }).headsTopK?.length, heads.config.numHeads * 2 * 2);
      } finally {
        ts.forEach((x) => target.freeSequence(x));
        ds.forEach((x) => draft.freeSequence(x));
      }
    });

    it('a draft that is the target drafts with its penalties: every chain draft accepted (greedy and sampled: q is the penalized p), every tree step its full depth, a hybrid\'s inner decoding too; without them, drafts rejected', async () => {
      const twin = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 8 });
      try {
        const p: Penalties = { repetition: 1.3, presence: 0.6, frequency: 0.4 };
        const modes: [string, Partial<DraftModelOptions>][] = [
          ['native chain k=4', { k: 4 }],
          ['one native draft chain a step (heuristic k)', { k: 4, adaptive: 'heuristic' }],
          ['JavaScript chain (confidence)', { adaptive: 'confidence' }],
          ['tree [2,1,1]', { treeBranching: [2, 1, 1] }],
        ];
        // A hybrid's inner decoding of the twin (sped up by prompt lookup) follows the penalized target too.
        for (const draftPenalties of [true, false]) {
          using dec = new SpeculativeDecoder({ target, speculator: new HybridSpeculator({ draft: twin, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4, draftPenalties }), penalties: p });
          const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true });
          const acc = rs.reduce((a, r) => a + r.stats.acceptedDraftTokens, 0), prop = rs.reduce((a, r) => a + r.stats.proposedDraftTokens, 0);
          if (draftPenalties) assert.ok(prop > 0 && acc === prop, `hybrid: ${acc} of ${prop} drafts accepted`);
          else assert.ok(acc < prop, `hybrid without the draft's penalties: ${acc} of ${prop} accepted`);
        }
        for (const sampling of [undefined, { temperature: 0.9, topK: 40, seed: 3 }]) {
          for (const [name, o] of modes) {
            const tree = o.treeBranching !== undefined;
            if (tree && sampling) continue;  // one-hot tree drafts: a draw outside the tree rejects them
            const run = async (draftPenalties: boolean): Promise<{ accepted: number; proposed: number; forwards: number }> => {
              using dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: twin, ...o, draftPenalties }), penalties: p, ...(sampling ? { sampling } : {}) });
              const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true });
              const sum = (f: (r: (typeof rs)[number]) => number): number => rs.reduce((a, r) => a + f(r), 0);
              return { accepted: sum((r) => r.stats.acceptedDraftTokens), proposed: sum((r) => r.stats.proposedDraftTokens), forwards: sum((r) => r.stats.targetForwards) };
            };
            const what = `${name}, ${sampling ? 'sampled' : 'greedy'}`;
            const on = await run(true);
            const off = await run(false);
            if (tree) {
              // The prefill's token, then steps of depth 3 + 1 tokens, each its full depth.
              assert.strictEqual(on.forwards, prompts.length * (1 + Math.ceil((N - 1) / 4)), what);
              assert.ok(off.forwards > on.forwards, `${what}: without the draft's penalties a step falls short`);
            } else {
              assert.ok(on.proposed > 0 && on.accepted === on.proposed, `${what}: ${on.accepted} of ${on.proposed} drafts accepted`);
              assert.ok(off.accepted < off.proposed, `${what}: without the draft's penalties ${off.accepted} of ${off.proposed} accepted`);
            }
          }
        }
      } finally {
        twin.dispose();
      }
    });

    it('sampled: deterministic drafts with penalties emit the tokens of the decoder without a speculator, which are plainGenerate\'s', async () => {
      const sampling = { temperature: 0.9, topK: 40, seed: 11 };
      for (const p of P) {
        const plain = await plainGenerate(target, prompts, { maxNewTokens: N, temperature: 0.9, topK: 40, seed: 11, penalties: p, ignoreEos: true });
        using none = new SpeculativeDecoder({ target, sampling, penalties: p });
        const want = await none.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true });
        want.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i] as Int32Array), `no speculator == plainGenerate, prompt ${i}`));
        for (const t of BANNED[P.indexOf(p) - 2] ?? []) assert.ok(want.every((r) => !r.tokens.includes(t)), `banned token ${t} drawn`);
        for (const [name, make] of speculators()) {
          if (name.startsWith('draft') || name.startsWith('hybrid')) continue;  // sampled drafts: the same distribution, other draws
          using dec = new SpeculativeDecoder({ target, speculator: make(), sampling, penalties: p });
          const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true });
          rs.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(want[i]!.tokens), `${name}, sampled, ${JSON.stringify(p)}, prompt ${i}`));
        }
      }
    });

    it('specdec generate --repetition-penalty / --presence-penalty / --frequency-penalty / --logit-bias: plain and speculative, plainGenerate\'s tokens', async () => {
      const tok = TextTokenizer.load(EMBEDDED.target) as TextTokenizer;
      const want = await plainGenerate(target, [tok.encode('once upon a time')], { maxNewTokens: 24, penalties: { repetition: 1.3, presence: 0.5, frequency: 0.25 } });
      for (const extra of [[], ['--draft', 'default'], ['--medusa', 'default'], ['--prompt-lookup', '2']]) {
        let out = '';
        const code = await generateCommand(['--prompt', 'once upon a time', '--max-new-tokens', '24', '--device', 'cpu', '--json', '--repetition-penalty', '1.3', '--presence-penalty', '0.5', '--frequency-penalty', '0.25', ...extra],
          { stdout: (t) => (out += t), stderr: () => undefined });
        assert.strictEqual(code, 0);
        assert.deepStrictEqual((JSON.parse(out) as { tokens: number[] }).tokens, Array.from(want.tokens[0] as Int32Array), extra.join(' '));
      }
      // --logit-bias: a banned token and a raised one.
      const b = P[2]!.logitBias!;
      const flag = Array.from(b.tokens, (t, i) => `${t}=${b.values[i] === -Infinity ? '-inf' : b.values[i]}`).join(',');
      const wantBiased = await plainGenerate(target, [tok.encode('once upon a time')], { maxNewTokens: 24, penalties: { presence: 0.5, logitBias: b } });
      assert.notDeepStrictEqual(wantBiased.tokens[0], want.tokens[0]);
      for (const extra of [[], ['--draft', 'default'], ['--eagle', 'default']]) {
        let out = '';
        const code = await generateCommand(['--prompt', 'once upon a time', '--max-new-tokens', '24', '--device', 'cpu', '--json', '--presence-penalty', '0.5', '--logit-bias', flag, ...extra],
          { stdout: (t) => (out += t), stderr: () => undefined });
        assert.strictEqual(code, 0);
        assert.deepStrictEqual((JSON.parse(out) as { tokens: number[] }).tokens, Array.from(wantBiased.tokens[0] as Int32Array), `--logit-bias ${flag} ${extra.join(' ')}`);
      }
      assert.deepStrictEqual(parseGenerateFlags(['--prompt', 'x', '--logit-bias', '5=-inf, 7=2.5,5=-1']).penalties, { logitBias: new Map([[5, -1], [7, 2.5]]) });
      for (const bad of ['5', '5=', 'x=1', '-1=2', '5=inf', '5=nan', '5=1,,6=2']) assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--logit-bias', bad]), /--logit-bias: expected ID=BIAS pairs/, bad);
      let err = '';
      const code = await generateCommand(['--prompt', 'x', '--max-new-tokens', '2', '--device', 'cpu', '--logit-bias', `${target.config.vocabSize}=1`], { stdout: () => undefined, stderr: (t) => (err += t) });
      assert.notStrictEqual(code, 0);
      assert.match(err, new RegExp(`logitBias: token ${target.config.vocabSize} is outside the vocabulary`));
      assert.deepStrictEqual(parseGenerateFlags(['--prompt', 'x', '--presence-penalty', '-1']).penalties, { presence: -1 });
      assert.strictEqual(parseGenerateFlags(['--prompt', 'x']).penalties, undefined);
      assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--repetition-penalty', '0']), /--repetition-penalty: expected a number > 0/);
      assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--frequency-penalty', '3']), /--frequency-penalty: expected a number in \[-2, 2\]/);
    });

    it('one engine step serves requests with and without penalties (parts of one forward), each its own plain output', async () => {
      const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
      try {
        const runs = await Promise.all([
          engine.submit(prompts[0] as Int32Array, { maxNewTokens: N, penalties: P[0]!, ignoreEos: true }),
          engine.submit(prompts[0] as Int32Array, { maxNewTokens: N, ignoreEos: true }),
          engine.submit(prompts[1] as Int32Array, { maxNewTokens: N, penalties: P[1]!, ignoreEos: true }),
          engine.submit(prompts[1] as Int32Array, { maxNewTokens: N, penalties: P[2]!, ignoreEos: true }),
          // The same logit bias as an object (a setting of its own only by its entries).
          engine.submit(prompts[0] as Int32Array, { maxNewTokens: N, penalties: { logitBias: Object.fromEntries(Array.from(P[2]!.logitBias!.tokens, (t, i) => [t, P[2]!.logitBias!.values[i] as number])) }, ignoreEos: true }),
          // Another logit bias alone: not P[2]'s engine.
          engine.submit(prompts[0] as Int32Array, { maxNewTokens: N, penalties: { logitBias: { [BANNED[1]![0]!]: -Infinity } }, ignoreEos: true }),
        ]);
        const want = [
          await plainGenerate(target, [prompts[0] as Int32Array], { maxNewTokens: N, penalties: P[0]!, ignoreEos: true }),
          await plainGenerate(target, [prompts[0] as Int32Array], { maxNewTokens: N, ignoreEos: true }),
          await plainGenerate(target, [prompts[1] as Int32Array], { maxNewTokens: N, penalties: P[1]!, ignoreEos: true }),
          await plainGenerate(target, [prompts[1] as Int32Array], { maxNewTokens: N, penalties: P[2]!, ignoreEos: true }),
          await plainGenerate(target, [prompts[0] as Int32Array], { maxNewTokens: N, penalties: P[2]!, ignoreEos: true }),
          await plainGenerate(target, [prompts[0] as Int32Array], { maxNewTokens: N, penalties: { logitBias: { [BANNED[1]![0]!]: -Infinity } }, ignoreEos: true }),
        ];
        runs.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(want[i]!.tokens[0] as Int32Array), `request ${i}`));
        await assert.rejects(engine.submit(prompts[0] as Int32Array, { maxNewTokens: 2, penalties: { repetition: -1 } }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /repetition/.test(e.message));
        // A token outside the vocabulary: refused at submit (E_ARG), the requests beside it unharmed.
        const V = target.config.vocabSize;
        const [bad, good] = await Promise.allSettled([
          engine.submit(prompts[0] as Int32Array, { maxNewTokens: 4, penalties: { logitBias: { [V]: 1 } } }),
          engine.submit(prompts[0] as Int32Array, { maxNewTokens: 4, penalties: P[2]!, ignoreEos: true }),
        ]);
        assert.ok(bad.status === 'rejected' && (bad.reason as { code?: string }).code === 'E_ARG' && new RegExp(`penalties.logitBias: token ${V} is outside the vocabulary`).test(String(bad.reason)), String(bad.status === 'rejected' ? bad.reason : 'fulfilled'));
        assert.ok(good.status === 'fulfilled' && good.value.tokens.length === 4);
      } finally {
        engine.close();
      }
    });
  });

  it('hostile penalties options and index arrays: a coded error naming the field, or a result (never another exception)', async () => {
    const r = rng(testSeed + 73);
    const hostile = (): unknown => {
      const xs: unknown[] = [undefined, null, NaN, Infinity, -Infinity, -1, 0, -0, 0.5, 1, 2, 1e9, 1e308, '', '1', true, [], {}, 10n, Symbol('x'), 1.25, -2];
      return xs[Math.floor(r() * xs.length)];
    };
    let refused = 0, ran = 0;
    for (let k = 0; k < 300; k++) {
      const p: Record<string, unknown> = {};
      for (const f of ['repetition', 'presence', 'frequency']) if (r() < 0.7) p[f] = r() < 0.5 ? hostile() : r() * 4 - 1;
      if (r() < 0.4) {
        const key = (): unknown => (r() < 0.5 ? Math.floor(r() * 40) - 4 : hostile());
        const u = r();
        p['logitBias'] = u < 0.2 ? hostile() : u < 0.6 ? Object.fromEntries([[String(key()), r() < 0.5 ? hostile() : r() * 10 - 5]]) : new Map([[key(), r() < 0.5 ? hostile() : r() * 10 - 5]]);
      }
      try {
        const ok = resolvePenalties(p as Penalties, 'penalties', 32);
        if (ok) for (const v of [ok.repetition, ok.presence, ok.frequency, ...(ok.logitBias?.values ?? [])]) assert.ok(Number.isFinite(v) || v === -Infinity);
        if (ok?.logitBias) assert.ok(ok.logitBias.tokens.every((t, i) => t >= 0 && t < 32 && (i === 0 || t > ok.logitBias!.tokens[i - 1]!)));
        ran++;
      } catch (e) {
        assert.strictEqual((e as { code?: string }).code, 'E_ARG', String(e));
        refused++;
      }
    }
    assert.ok(refused > 50 && ran > 50, `${refused} refused, ${ran} accepted`);
    // The native op's arrays damaged: E_ARG, or logits changed only at tokens the arrays name.
    const pen = native().samplingPenalize!;
    const V = 16;
    const arr = (n: number): Int32Array => Int32Array.from({ length: n }, () => (r() < 0.8 ? Math.floor(r() * 20) - 2 : [2 ** 31 - 1, -(2 ** 31)][Math.floor(r() * 2)]!));
    let nativeRefused = 0;
    for (let k = 0; k < 400; k++) {
      using t = Tensor.fromArray(new Float32Array(3 * V).fill(1), 'f32', [3, V]);
      const o: Record<string, unknown> = {
        repetition: 2, presence: 0.5, frequency: 0.25,
        rowSeq: arr(Math.floor(r() * 5)), histIndptr: arr(Math.floor(r() * 4)), histTokens: arr(Math.floor(r() * 6)), histCounts: arr(Math.floor(r() * 6)),
        pathIndptr: arr(Math.floor(r() * 5)), pathTokens: arr(Math.floor(r() * 5)),
      };
      if (r() < 0.3) {
        const n = Math.floor(r() * 4);
        o['biasTokens'] = arr(n);
        o['biasValues'] = Float32Array.from({ length: r() < 0.8 ? n : n + 1 }, () => [-Infinity, Infinity, NaN, 1e38, -3][Math.floor(r() * 5)]!);
      }
      if (r() < 0.1) o[['rowSeq', 'histTokens', 'pathIndptr', 'biasTokens', 'biasValues'][Math.floor(r() * 5)]!] = hostile();
      try {
        pen(t, o as unknown as Parameters<typeof pen>[1]);
        for (const v of t.toFloat32()) assert.ok(Number.isFinite(v) || v === -Infinity);
      } catch (e) {
        assert.ok(['E_ARG'].includes((e as { code?: string }).code as string), String(e));
        nativeRefused++;
      }
    }
    assert.ok(nativeRefused > 300, `${nativeRefused} of 400 damaged calls refused`);
  });

  it('histories\' counts kept across calls (a history grown by appends, changed in place, cut, its prompt length changed) == counted afresh', () => {
    const r = rng(testSeed + 79);
    const fresh = (h: { tokens: ArrayLike<number>; promptLength: number }): [number[], number[]] => {
      const m = new Map<number, number>();
      const np = Math.max(0, Math.min(h.promptLength, h.tokens.length));
      for (let i = 0; i < h.tokens.length; i++) m.set(h.tokens[i] as number, (m.get(h.tokens[i] as number) ?? 0) + (i >= np ? 1 : 0));
      const toks = [...m.keys()].sort((a, b) => a - b);
      return [toks, toks.map((t) => m.get(t) as number)];
    };
    const p = { repetition: 1.5, presence: 0.5, frequency: 0.25 };
    let kinds = 0;
    for (let round = 0; round < 40; round++) {
      const V = 2 + Math.floor(r() * 300);
      const hs = Array.from({ length: 1 + Math.floor(r() * 3) }, () => ({ tokens: Array.from({ length: Math.floor(r() * 50) }, () => Math.floor(r() * V)), promptLength: Math.floor(r() * 30) }));
      for (let step = 0; step < 60; step++) {
        const h = hs[Math.floor(r() * hs.length)]!;
        const u = r();
        if (u < 0.7) for (let n = Math.floor(r() * 5); n > 0; n--) h.tokens.push(Math.floor(r() * V));
        else if (u < 0.8 && h.tokens.length > 0) (h.tokens[Math.floor(r() * h.tokens.length)] = Math.floor(r() * V)), kinds++;
        else if (u < 0.9) (h.tokens.length = Math.floor(r() * (h.tokens.length + 1))), kinds++;
        else (h.promptLength = Math.floor(r() * 40)), kinds++;
        const got = nativePenalties(p, hs);
        hs.forEach((x, s) => {
          const [toks, counts] = fresh(x);
          const a = got.histIndptr[s] as number, b = got.histIndptr[s + 1] as number;
          assert.deepStrictEqual([Array.from(got.histTokens.subarray(a, b)), Array.from(got.histCounts.subarray(a, b))], [toks, counts], `round ${round}, step ${step}, history ${s}`);
        });
      }
    }
    assert.ok(kinds > 100, `${kinds} changes other than appends`);
  });

  it('bad penalties and bad index arrays are E_ARG naming them; neutral penalties do nothing', () => {
    assert.strictEqual(resolvePenalties({ repetition: 1, presence: 0, frequency: 0 }), undefined);
    assert.strictEqual(resolvePenalties({}), undefined);
    assertThrowsCode(() => resolvePenalties({ repetition: 0 }), 'E_ARG', /penalties\.repetition: expected a finite number > 0/);
    assertThrowsCode(() => resolvePenalties({ presence: NaN }), 'E_ARG', /penalties\.presence/);
    assertThrowsCode(() => resolvePenalties({ frequency: Infinity }), 'E_ARG', /penalties\.frequency/);
    assertThrowsCode(() => resolvePenalties(3 as unknown as Penalties), 'E_ARG', /penalties/);
    const V = 6;
    using t = Tensor.fromArray(new Float32Array(2 * V), 'f32', [2, V]);
    const ok = { presence: 1, rowSeq: Int32Array.of(0, 0), histIndptr: Int32Array.of(0, 2), histTokens: Int32Array.of(1, 3), histCounts: Int32Array.of(0, 2), pathIndptr: Int32Array.of(0, 0, 1), pathTokens: Int32Array.of(5) };
    const pen = native().samplingPenalize!;
    pen(t, ok);
    assert.deepStrictEqual(Array.from(t.toFloat32()), [0, 0, 0, -1, 0, 0, 0, 0, 0, -1, 0, -1]);
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ rowSeq: Int32Array.of(0) }, /rowSeq: 1 entries for 2 logits rows/],
      [{ rowSeq: Int32Array.of(0, 1) }, /rowSeq: row 1 names sequence 1 of 1/],
      [{ histTokens: Int32Array.of(3, 1) }, /distinct and ascending/],
      [{ histTokens: Int32Array.of(1, 6) }, /histTokens: token 6 of sequence 0 is outside the vocabulary/],
      [{ histCounts: Int32Array.of(0, -1) }, /histCounts: -1/],
      [{ histCounts: Int32Array.of(0) }, /histCounts: 1 entries for 2 tokens/],
      [{ histIndptr: Int32Array.of(0, 3) }, /histIndptr: ends at 3, expected 2/],
      // An offset past the tokens that a later one undercuts (the last is right): refused before a read.
      [{ histIndptr: Int32Array.of(0, 9, 2), rowSeq: Int32Array.of(0, 1) }, /histIndptr: passes the tokens' end at sequence 0/],
      [{ pathIndptr: Int32Array.of(0, 1) }, /pathIndptr: expected 3 offsets/],
      [{ pathTokens: Int32Array.of(-1) }, /pathTokens: token -1/],
      [{ repetition: -1 }, /repetitionPenalty: expected a finite number > 0/],
      [{ presence: NaN }, /presence/],
      [{ frequency: Infinity }, /frequency/],
      [{ biasTokens: Int32Array.of(6), biasValues: Float32Array.of(1) }, /logitBias: token 6 is outside the vocabulary \[0, 6\)/],
      [{ biasTokens: Int32Array.of(-1), biasValues: Float32Array.of(1) }, /logitBias: token -1 is outside/],
      [{ biasTokens: Int32Array.of(2, 2), biasValues: Float32Array.of(1, 1) }, /distinct and ascending \(2 then 2\)/],
      [{ biasTokens: Int32Array.of(2), biasValues: Float32Array.of(Infinity) }, /logitBias: token 2's bias is inf/],
      [{ biasTokens: Int32Array.of(2), biasValues: Float32Array.of(1, 2) }, /logitBias: 2 values for 1 tokens/],
      [{ biasTokens: Int32Array.of(2), biasValues: Int32Array.of(1) }, /biasValues: expected a Float32Array/],
      [{ biasTokens: Int32Array.of(2) }, /biasValues: expected a Float32Array/],
      [{ banIndptr: Int32Array.of(0, 1), banTokens: Int32Array.of(2) }, /banBefore/],
      [{ banIndptr: Int32Array.of(0, 1, 1), banTokens: Int32Array.of(2), banBefore: Int32Array.of(1) }, /banIndptr: expected 2 offsets from 0/],
      [{ banIndptr: Int32Array.of(0, 1), banTokens: Int32Array.of(2), banBefore: Int32Array.of(-1) }, /banBefore: -1 for sequence 0/],
      [{ banIndptr: Int32Array.of(0, 1), banTokens: Int32Array.of(6), banBefore: Int32Array.of(1) }, /banTokens: token 6 of sequence 0 is outside the vocabulary/],
      [{ banIndptr: Int32Array.of(0, 2), banTokens: Int32Array.of(3, 2), banBefore: Int32Array.of(1) }, /banTokens: sequence 0's tokens must be distinct and ascending \(3 then 2\)/],
      [{ banIndptr: Int32Array.of(0, 2), banTokens: Int32Array.of(2), banBefore: Int32Array.of(1) }, /banIndptr: ends at 2, expected 1/],
    ];
    for (const [bad, re] of cases) assertThrowsCode(() => pen(t, { ...ok, ...bad } as typeof ok), 'E_ARG', re);
    using h = Tensor.fromArray(new Float32Array(2 * V), 'f16', [2, V]);
    assertThrowsCode(() => pen(h, ok), 'E_ARG', /logits/);
    // The bias first, then the penalties on the sums: token 3 (count 2 in the output, presence 1)
    // biased +5 then penalized, token 0 banned, token 5 biased in row 0 and on row 1's path.
    using u = Tensor.fromArray(new Float32Array(2 * V), 'f32', [2, V]);
    pen(u, { ...ok, repetition: 2, biasTokens: Int32Array.of(0, 3, 5), biasValues: Float32Array.of(-Infinity, 5, -0.5) });
    assert.deepStrictEqual(Array.from(u.toFloat32()), [-Infinity, 0, 0, 1.5, 0, -0.5, -Infinity, 0, 0, 1.5, 0, -2]);
    // A stop ban of tokens 3 and 4 on the rows whose path is shorter than 1 (row 0; row 1 has one
    // path token), after the penalties: row 0's 3 and 4 are -inf, row 1 as without.
    using w = Tensor.fromArray(new Float32Array(2 * V), 'f32', [2, V]);
    pen(w, { ...ok, banIndptr: Int32Array.of(0, 2), banTokens: Int32Array.of(3, 4), banBefore: Int32Array.of(1) });
    assert.deepStrictEqual(Array.from(w.toFloat32()), [0, 0, 0, -Infinity, -Infinity, 0, 0, 0, 0, -1, 0, -1]);

    // The option: a Map or an object of token id -> bias (f32), checked against the vocabulary when
    // it is known; zero biases dropped; a resolved bias passes through.
    const lb = (b: unknown, vocab?: number) => resolvePenalties({ logitBias: b } as Penalties, 'penalties', vocab)?.logitBias;
    assert.strictEqual(resolvePenalties({ logitBias: {} }), undefined);
    assert.strictEqual(resolvePenalties({ logitBias: { 3: 0, 4: -0 } }), undefined);
    const got = lb({ 7: 1.1, 2: -Infinity, 0: -0, 5: 3 }, 8)!;
    assert.deepStrictEqual([Array.from(got.tokens), Array.from(got.values)], [[2, 5, 7], [-Infinity, 3, Math.fround(1.1)]]);
    assert.strictEqual(lb(got, 8), got);
    assert.deepStrictEqual(JSON.parse(JSON.stringify(got)), { 2: null, 5: 3, 7: Math.fround(1.1) });
    assert.deepStrictEqual(Array.from(lb(new Map([[9, 2], [1, 1]]))!.tokens), [1, 9]);
    assert.deepStrictEqual(resolvePenalties({ presence: 0.5, logitBias: { 1: 0 } }), { repetition: 1, presence: 0.5, frequency: 0 });
    const badOptions: [unknown, RegExp, number?][] = [
      [{ 8: 1 }, /penalties\.logitBias: token 8 is outside the vocabulary \[0, 8\)/, 8],
      [got, /penalties\.logitBias: token 7 is outside the vocabulary \[0, 6\)/, 6],
      [{ '-1': 1 }, /"-1" is not a token id/],
      [{ '1.5': 1 }, /"1.5" is not a token id/],
      [{ '01': 1 }, /"01" is not a token id/],
      [new Map([[2.5, 1]]), /2\.5 is not a token id/],
      [{ 3: NaN }, /token 3's bias is NaN/],
      [{ 3: Infinity }, /token 3's bias is Infinity/],
      [{ 3: '1' }, /token 3's bias is 1 \(expected a finite number or -Infinity\)/],
      [{ 3: 1e39 }, /token 3's bias 1e\+39 does not fit in f32/],
      [{ 0: -Infinity, 1: -Infinity }, /bans every token of the vocabulary \(2\)/, 2],
      [[1, 2], /expected a Map or an object of token id -> bias, got an array/],
      ['x', /expected a Map or an object/],
    ];
    for (const [b, re, vocab] of badOptions) assertThrowsCode(() => lb(b, vocab), 'E_ARG', re);
    // forVocabulary (a draft's smaller vocabulary) and mapTokens (EAGLE-3's draft ids).
    assert.strictEqual(got.forVocabulary(8), got);
    assert.deepStrictEqual(Array.from(got.forVocabulary(6)!.tokens), [2, 5]);
    assert.strictEqual(got.forVocabulary(2), undefined);
    const m = got.mapTokens((t) => (t === 5 ? -1 : 10 - t))!;
    assert.deepStrictEqual([Array.from(m.tokens), Array.from(m.values)], [[3, 8], [Math.fround(1.1), -Infinity]]);
  });
});

describeCuda('penalties', () => {
  it('the CUDA kernel == the JavaScript reference, bit for bit', () => {
    checkAgainstReference('cuda');
  });

  it('greedy draft-model decoding with penalties on CUDA emits plainGenerate\'s tokens with them', async () => {
    const target = await LlamaModel.load(EMBEDDED.target, { device: 'cuda', maxSequences: 4 });
    const draft = await LlamaModel.load(EMBEDDED.draft, { device: 'cuda', maxSequences: 4 });
    try {
      const tok = TextTokenizer.load(EMBEDDED.target) as TextTokenizer;
      const prompts = ['once upon a time', 'the dog ran to the park and'].map((t) => tok.encode(t));
      const p = { repetition: 1.2, presence: 0.3, frequency: 0.2 };
      const want = await plainGenerate(target, prompts, { maxNewTokens: 40, penalties: p, ignoreEos: true });
      using dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 4 }), penalties: p });
      const rs = await dec.generateBatch(prompts, { maxNewTokens: 40, ignoreEos: true });
      rs.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(want.tokens[i] as Int32Array), `prompt ${i}`));
    } finally {
      target.dispose();
      draft.dispose();
    }
  });
});
