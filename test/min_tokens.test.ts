// min_tokens (GenerateOptions.minTokens, vLLM's min_tokens): the stop tokens banned on every row that
// predicts an output position below it. plainGenerate (native chains included) against step-by-step
// reference decoding, every speculative strategy against plainGenerate (greedy and sampled), the
// Engine's stop strings and options.
import * as assert from 'assert';
import { generateCommand, parseGenerateFlags } from '../lib/cli/generate';
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { resolvePenalties } from '../lib/sampling';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleSpeculator, type EagleHead } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaSpeculator, type MedusaHeads } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { generateText } from '../lib/text';
import { TextTokenizer } from '../lib/tokenizer';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';

const EMBEDDED = defaultModelPaths();

describe('min_tokens (the embedded family)', () => {
  let target: LlamaModel;
  let draft: LlamaModel;
  let heads: MedusaHeads;
  let eagle: EagleHead;
  let prompts: Int32Array[];
  let eos: number;
  let family: EmbeddedFamily;
  before(async () => {
    family = await loadEmbeddedFamily();
    ({ target, draft, heads, eagle } = family);
    // The first ends at once without min_tokens (its first token is EOS); the second is a story.
    prompts = ['the end.', 'once upon a time'].map((t) => family.tokenizer.encode(t));
    eos = target.config.eosTokenIds[0]!;
  });
  after(() => family.dispose());

  it('plainGenerate: no stop token before minTokens, then the model\'s own; == step-by-step reference decoding (stop tokens -inf below it), native chains and steps alike', async () => {
    const bare = await plainGenerate(target, prompts, { maxNewTokens: 24 });
    assert.deepStrictEqual(Array.from(bare.tokens[0]!), [eos], 'the first prompt ends at once without min_tokens');
    // The target without its chain calls: the same steps one at a time.
    const stepwise = Object.create(target, { greedyChain: { value: undefined }, sampledChain: { value: undefined } }) as LlamaModel;
    for (const [minTokens, stopTokens] of [[5, []], [9, [5]], [1, []]] as [number, number[]][]) {
      const got = await plainGenerate(target, prompts, { maxNewTokens: 24, minTokens, stopTokens });
      const one = await plainGenerate(stepwise, prompts, { maxNewTokens: 24, minTokens, stopTokens });
      assert.deepStrictEqual(got.tokens, one.tokens, `minTokens ${minTokens}: native chains == steps`);
      const stops = new Set([...target.config.eosTokenIds, ...stopTokens]);
      for (const [i, prompt] of prompts.entries()) {
        const toks = Array.from(got.tokens[i]!);
        // Reference: greedy steps with the stop tokens at -inf while the output is shorter than minTokens.
        const want: number[] = [];
        const seq = target.createSequence();
        try {
          let feed: Int32Array = prompt;
          for (;;) {
            const fw = await target.forward([{ seq, tokens: feed }]);
            const last = fw.logits.rows(fw.logits.shape[0]! - 1, fw.logits.shape[0]!);
            const row = last.toFloat32();
            last.dispose();
            fw.logits.dispose();
            fw.hidden?.dispose();
            target.commit([seq], [Int32Array.from({ length: feed.length }, (_, j) => j)]);
            if (want.length < minTokens) for (const t of stops) row[t] = -Infinity;
            let best = 0;
            for (let t = 1; t < row.length; t++) if ((row[t] as number) > (row[best] as number)) best = t;
            want.push(best);
            if (stops.has(best) || want.length >= 24) break;
            feed = Int32Array.of(best);
          }
        } finally {
          target.freeSequence(seq);
        }
        assert.deepStrictEqual(toks, want, `minTokens ${minTokens}, prompt ${i}`);
        assert.ok(toks.slice(0, minTokens).every((t) => !stops.has(t)), `minTokens ${minTokens}, prompt ${i}: a stop token early`);
      }
      if (minTokens > 1) assert.ok(got.tokens[0]!.length > minTokens, 'the first prompt goes on past minTokens');
    }
  });

  const speculators = (): [string, () => Speculator][] => [
    ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
    ['draft model tree [2,2,1]', () => new DraftModelSpeculator({ draft, treeBranching: [2, 2, 1] })],
    ['Medusa small_8', () => new MedusaSpeculator({ heads, choices: 'small_8' })],
    ['Medusa, sized', () => new MedusaSpeculator({ heads })],
    ['lookahead 4,3,4', () => new LookaheadSpeculator({ W: 4, N: 3, G: 4, sizing: 'fixed' })],
    ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1, numDraft: 4 })],
    ['EAGLE 4,3,12', () => new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 })],
    ['hybrid (draft + prompt lookup)', () => new HybridSpeculator({ draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4 })],
  ];

  it('every strategy, greedy and sampled (deterministic drafts), with and without penalties: plainGenerate\'s tokens with minTokens (batches of 2, native chains included)', async () => {
    const pen = resolvePenalties({ presence: 0.4, logitBias: { 5: -1 } })!;
    for (const sampled of [false, true]) {
      for (const p of [undefined, pen]) {
        for (const minTokens of [7, 15]) {
          const o = { maxNewTokens: 24, minTokens, ...(p ? { penalties: p } : {}) };
          const want = await plainGenerate(target, prompts, { ...o, ...(sampled ? { temperature: 0.8, seed: 6 } : {}) });
          for (const [name, make] of speculators()) {
            if (sampled && (name.startsWith('draft') || name.startsWith('hybrid'))) continue;  // sampled drafts: other draws
            using dec = new SpeculativeDecoder({ target, speculator: make(), ...(p ? { penalties: p } : {}), ...(sampled ? { sampling: { temperature: 0.8, seed: 6 } } : {}) });
            const rs = await dec.generateBatch(prompts, { maxNewTokens: 24, minTokens });
            rs.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(want.tokens[i]!), `${name}${sampled ? ', sampled' : ''}${p ? ', penalties' : ''}, minTokens ${minTokens}, prompt ${i}`));
          }
        }
      }
    }
  });

  it('a draft that is the target drafts with the bans in the native chain: every draft accepted through the min_tokens window', async () => {
    const twin = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 8 });
    try {
      using dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: twin, k: 4 }) });
      const [r] = await dec.generateBatch([prompts[0]!], { maxNewTokens: 16, minTokens: 10 });
      const want = await plainGenerate(target, [prompts[0]!], { maxNewTokens: 16, minTokens: 10 });
      assert.deepStrictEqual(Array.from(r!.tokens), Array.from(want.tokens[0]!));
      // (Without the bans the twin drafts EOS after 'the end.' at once, and the target rejects it.)
      assert.ok(r!.stats.proposedDraftTokens > 0 && r!.stats.acceptedDraftTokens === r!.stats.proposedDraftTokens, `${r!.stats.acceptedDraftTokens} of ${r!.stats.proposedDraftTokens} accepted`);
    } finally {
      twin.dispose();
    }
  });

  it('specdec generate --min-tokens N: plainGenerate\'s tokens with minTokens, plain and speculative', async () => {
    const want = await plainGenerate(target, [prompts[0]!], { maxNewTokens: 16, minTokens: 8 });
    assert.ok(want.tokens[0]!.length > 8);
    for (const extra of [[], ['--draft', 'default'], ['--medusa', 'default']]) {
      let out = '';
      const code = await generateCommand(['--prompt', 'the end.', '--max-new-tokens', '16', '--min-tokens', '8', '--device', 'cpu', '--json', ...extra], { stdout: (t) => (out += t), stderr: () => undefined });
      assert.strictEqual(code, 0);
      assert.deepStrictEqual((JSON.parse(out) as { tokens: number[] }).tokens, Array.from(want.tokens[0]!), extra.join(' '));
    }
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--min-tokens', '-1']), /--min-tokens: expected an integer >= 0/);
  });

  it('the Engine: stop strings are not asked before minTokens; bad minTokens is E_ARG', async () => {
    const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
    try {
      // A stop that holds at once stops at minTokens exactly.
      const r = await engine.submit(prompts[1]!, { maxNewTokens: 20, minTokens: 6, shouldStop: () => true });
      assert.strictEqual(r.tokens.length, 6);
      assert.strictEqual(r.finishReason, 'stop');
      const plain = await plainGenerate(target, [prompts[1]!], { maxNewTokens: 6 });
      assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[0]!));
      // The engine's plain runs (no speculator) and stop_token_ids too.
      const plainEngine = new Engine({ model: target });
      try {
        const got = await plainEngine.submit(prompts[0]!, { maxNewTokens: 24, minTokens: 9, stopTokens: [5] });
        const want = await plainGenerate(target, [prompts[0]!], { maxNewTokens: 24, minTokens: 9, stopTokens: [5] });
        assert.deepStrictEqual(Array.from(got.tokens), Array.from(want.tokens[0]!));
      } finally {
        plainEngine.close();
      }
      // generateText: a stop string inside the first minTokens tokens' text neither stops nor cuts;
      // past it, it does; the streamed chunks add up to the result's text.
      const tok = TextTokenizer.load(EMBEDDED.target) as TextTokenizer;
      using dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
      const whole = await generateText(dec, tok, 'once upon a time', { maxNewTokens: 16 }).result;
      const word = whole.text.trim().split(' ')[1]!;
      for (const minTokens of [16, 0]) {
        const g = generateText(dec, tok, 'once upon a time', { maxNewTokens: 16, minTokens, stopStrings: [word] });
        let streamed = '';
        for await (const c of g) streamed += c.text;
        const res = await g.result;
        assert.strictEqual(streamed, res.text);
        if (minTokens > 0) assert.deepStrictEqual([res.text, res.stopString, res.finishReason], [whole.text, undefined, 'length']);
        else assert.ok(res.stopString === word && res.text.length < whole.text.length, `cut at '${word}'`);
      }
      for (const bad of [-1, 1.5, '3'])
        await assert.rejects(engine.submit(prompts[0]!, { maxNewTokens: 2, minTokens: bad as number }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /minTokens must be an integer >= 0/.test(e.message));
    } finally {
      engine.close();
    }
  });
});
