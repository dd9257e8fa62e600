// ignoreEos (plainGenerate, SpeculativeDecoder, Engine; the CLI's --ignore-eos, the server's
// ignore_eos): the model's EOS ids no longer end a sequence, so a run takes maxNewTokens; the tokens
// up to the EOS are those of the run that stopped there, and speculative decoding past the EOS stays
// token for token the plain output. Also the CLI's --min-p.
import * as assert from 'assert';
import { generateCommand, parseGenerateFlags } from '../lib/cli/generate';
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import { TextTokenizer } from '../lib/tokenizer';

const EMBEDDED = defaultModelPaths();

describe('ignoreEos', () => {
  let target: LlamaModel;
  let draft: LlamaModel;
  let tok: TextTokenizer;
  before(async () => {
    target = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 4 });
    draft = await LlamaModel.load(EMBEDDED.draft, { device: 'cpu', maxSequences: 4 });
    tok = TextTokenizer.load(EMBEDDED.target) as TextTokenizer;
  });
  after(() => {
    target.dispose();
    draft.dispose();
  });

  it('plain and speculative runs go past the EOS to maxNewTokens, the same tokens up to it and after', async () => {
    // Greedy on the embedded target: "the end." is followed by EOS at once, the other after ~100 tokens.
    const prompts = ['the end.', 'the cat sat on the mat.'].map((p) => tok.encode(p));
    const eos = target.config.eosTokenIds;
    const stopped = await plainGenerate(target, prompts, { maxNewTokens: 120 });
    const going = await plainGenerate(target, prompts, { maxNewTokens: 120, ignoreEos: true });
    for (let i = 0; i < prompts.length; i++) {
      const s = stopped.tokens[i] as Int32Array, g = going.tokens[i] as Int32Array;
      assert.strictEqual(stopped.finishReasons[i], 'stop', `prompt ${i} stops at an EOS without ignoreEos`);
      assert.ok(eos.includes(s[s.length - 1] as number));
      assert.strictEqual(going.finishReasons[i], 'length');
      assert.strictEqual(g.length, 120);
      assert.deepStrictEqual(Array.from(g.subarray(0, s.length)), Array.from(s), `prompt ${i}: the tokens through the EOS`);
    }
    // stopTokens still stop a run that ignores the EOS.
    const third = (going.tokens[1] as Int32Array)[2] as number;
    const cut = await plainGenerate(target, [prompts[1] as Int32Array], { maxNewTokens: 120, ignoreEos: true, stopTokens: [third] });
    assert.strictEqual(cut.finishReasons[0], 'stop');
    assert.ok((cut.tokens[0] as Int32Array).length <= 3);
    // Speculative decoding past the EOS: the plain tokens (a draft model and prompt lookup).
    for (const speculator of [new DraftModelSpeculator({ draft, k: 4 }), new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1, numDraft: 4 })]) {
      const dec = new SpeculativeDecoder({ target, speculator });
      const rs = await dec.generateBatch(prompts, { maxNewTokens: 120, ignoreEos: true });
      rs.forEach((r, i) => {
        assert.strictEqual(r.finishReason, 'length', speculator.name);
        assert.deepStrictEqual(Array.from(r.tokens), Array.from(going.tokens[i] as Int32Array), `${speculator.name}, prompt ${i}`);
      });
      const [one] = await dec.generateBatch([prompts[0] as Int32Array], { maxNewTokens: 120 });
      assert.strictEqual(one?.finishReason, 'stop', `${speculator.name} without ignoreEos`);
    }
  });

  it('refuses a value that is not a boolean; the CLI takes --ignore-eos and --min-p', async () => {
    const prompt = tok.encode('the end.');
    await assert.rejects(plainGenerate(target, [prompt], { maxNewTokens: 4, ignoreEos: 'yes' as unknown as boolean }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /ignoreEos must be true or false/.test(e.message));
    const engine = new Engine({ model: target });
    try {
      await assert.rejects(engine.submit(prompt, { maxNewTokens: 4, ignoreEos: 1 as unknown as boolean }), (e: Error & { code?: string }) => e.code === 'E_ARG');
    } finally {
      engine.close();
    }
    const flags = parseGenerateFlags(['--prompt', 'x', '--ignore-eos', '--min-p', '0.2']);
    assert.strictEqual(flags.ignoreEos, true);
    assert.strictEqual(flags.minP, 0.2);
    assert.strictEqual(parseGenerateFlags(['--prompt', 'x']).ignoreEos, false);
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--ignore-eos=1']), /--ignore-eos takes no value/);
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--min-p', '1']), /--min-p: expected a number in \[0, 1\)/);
    // End to end: the run stops at the EOS without the flag and takes its 24 tokens with it, plain
    // and with a draft model.
    for (const extra of [[], ['--draft', 'default']]) {
      const lengths: number[] = [];
      for (const ignore of [false, true]) {
        let out = '';
        const code = await generateCommand(['--prompt', 'the end.', '--max-new-tokens', '24', '--device', 'cpu', '--json', ...extra, ...(ignore ? ['--ignore-eos'] : [])], { stdout: (s) => (out += s), stderr: () => undefined });
        assert.strictEqual(code, 0);
        const rec = JSON.parse(out) as { tokens: number[]; finishReason: string };
        assert.strictEqual(rec.finishReason, ignore ? 'length' : 'stop', `${extra.join(' ')} ignore ${ignore}`);
        lengths.push(rec.tokens.length);
      }
      assert.deepStrictEqual(lengths, [1, 24], extra.join(' '));
    }
    // --min-p reaches the sampler, plain and speculative: 0.99 keeps only the most probable token
    // (along this prompt's greedy path the runner-up has at most 0.95 of the top probability at
    // T 1.5), so seeded sampling at T 1.5 gives the greedy tokens; without it, not.
    const run = async (args: string[]): Promise<number[]> => {
      let out = '';
      assert.strictEqual(await generateCommand(['--prompt', 'the dog ran to the park', '--max-new-tokens', '16', '--device', 'cpu', '--json', ...args], { stdout: (s) => (out += s), stderr: () => undefined }), 0);
      return (JSON.parse(out) as { tokens: number[] }).tokens;
    };
    const greedy = await run([]);
    for (const extra of [[], ['--draft', 'default']]) {
      assert.deepStrictEqual(await run(['--temperature', '1.5', '--seed', '7', '--min-p', '0.99', ...extra]), greedy, `--min-p ${extra.join(' ')}`);
      assert.notDeepStrictEqual(await run(['--temperature', '1.5', '--seed', '7', ...extra]), greedy, `no --min-p ${extra.join(' ')}`);
    }
  });
});
