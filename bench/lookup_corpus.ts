// What prompt lookup across requests (PromptLookupOptions.corpusTokens, `--lookup-corpus`) gives on
// the embedded family and on its 8x widening (bench/wide_family.ts: the same function at a 51M bf16
// target's cost): requests sent one after another to an Engine, greedy, as an agent's loop or a
// chat service sends them, with a fresh speculator (an empty corpus) per run:
//   repeat:  8 story prompts, then the same 8 again (regenerations, retries, an agent re-asking);
//   related: 16 prompts that open alike ("once upon a time, there was a ..."), different animals
//            and places: later stories share phrases with earlier ones;
//   predicted: the 8 story prompts, each with a prediction (GenerateOptions.prediction, OpenAI's
//            predicted outputs) that is its plain output edited: 8 of its tokens replaced near the
//            start, 6 dropped in the middle (a file edited in two places).
// Strategies: plain, prompt lookup without and with a corpus (both sized by the cost model), and
// with a corpus and a fixed 8-token draft. The outputs are checked equal to plain decoding's; the
// times and forwards are the median of the runs (interleaved: plain, lookup, lookup + corpus, ...;
// the sized ones decide anew each run, the cost model refined across them).
//
// Run: node dist/bench/lookup_corpus.js [--quick]
import * as path from 'path';
import { defaultModelPaths } from '../lib/default_models';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { TextTokenizer } from '../lib/tokenizer';
import { tempDir } from './common';
import { widenFamily } from './wide_family';

const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const reps = quick ? 2 : 5;
  const maxNew = quick ? 48 : 96;
  const P = defaultModelPaths();
  const tok = TextTokenizer.load(P.target) as TextTokenizer;
  const tmp = tempDir('lookup-corpus');
  try {
    const K = quick ? 2 : 8;
    const wide = widenFamily(path.dirname(P.target), tmp.dir, K).target as string;
    for (const [fname, dir] of [['embedded', P.target], [`widened ${K}x`, wide]] as const) {
      const target = await LlamaModel.load(dir, { device: 'cpu', maxSequences: 4 });
      await family(fname, target, tok, quick, reps, maxNew);
      target.dispose();
    }
  } finally {
    tmp.remove();
  }
}

async function family(fname: string, target: LlamaModel, tok: TextTokenizer, quick: boolean, reps: number, maxNew: number): Promise<void> {
  const stories = ['once upon a time', 'one day a little girl', 'there was a dog', 'a boy named tim', 'the sun was shining', 'lily liked to play', 'in the park', 'the cat was sad'];
  const animals = ['dog', 'cat', 'bird', 'fish', 'bear', 'duck', 'frog', 'bunny'];
  const places = ['park', 'garden'];
  const workloads: [string, string[], boolean][] = [
    ['repeat (8 prompts, then the same 8 again)', [...stories, ...stories], false],
    ['related (16 prompts that open alike)', places.flatMap((p) => animals.map((a) => `once upon a time, there was a ${a} in the ${p}`)), false],
    ['predicted (8 prompts, each with its output edited as a prediction)', stories, true],
  ];
  const lookupStrategies: [string, () => Speculator | undefined][] = [
    ['plain', () => undefined],
    ['prompt lookup (sized)', () => new PromptLookupSpeculator({ maxNgram: 3 })],
    ['prompt lookup + corpus (sized)', () => new PromptLookupSpeculator({ maxNgram: 3, corpusTokens: 65536 })],
    ['prompt lookup + corpus, 8 drafts', () => new PromptLookupSpeculator({ maxNgram: 3, numDraft: 8, corpusTokens: 65536 })],
  ];
  console.log(`${fname}, CPU, requests one after another, greedy, ${maxNew} new tokens each (ignoreEos), median of ${reps}${quick ? ' (quick)' : ''}`);
  const predictionStrategies: [string, () => Speculator | undefined][] = [
    ['plain', () => undefined],
    ['prompt lookup (sized), no prediction', () => new PromptLookupSpeculator({ maxNgram: 3 })],
    ['prompt lookup (sized) + prediction', () => new PromptLookupSpeculator({ maxNgram: 3 })],
    ['prompt lookup, 8 drafts + prediction', () => new PromptLookupSpeculator({ maxNgram: 3, numDraft: 8 })],
  ];
  for (const [wname, prompts, predicted] of workloads) {
    const ids = prompts.map((p) => tok.encode(p));
    const strategies = predicted ? predictionStrategies : lookupStrategies;
    // The predictions: each prompt's plain output, edited in two places.
    let predictions: number[][] | undefined;
    if (predicted) {
      const plain = new Engine({ model: target });
      predictions = [];
      for (const p of ids) {
        const t = Array.from((await plain.submit(p, { maxNewTokens: maxNew, ignoreEos: true })).tokens);
        predictions.push([...t.slice(0, 10), ...t.slice(0, 8).map((x) => 3 + ((x * 7) % 300)), ...t.slice(18, Math.floor(maxNew / 2)), ...t.slice(Math.floor(maxNew / 2) + 6)]);
      }
      plain.close();
    }
    const times = strategies.map(() => [] as number[]);
    const forwards = strategies.map(() => [] as number[]);
    let want: string | undefined;
    for (let r = 0; r <= reps; r++) {
      for (let s = 0; s < strategies.length; s++) {
        const spec = (strategies[s] as [string, () => Speculator | undefined])[1]();
        const engine = new Engine({ model: target, ...(spec ? { speculator: spec } : {}) });
        await engine.prepare();
        const t0 = performance.now();
        const out: string[] = [];
        let fw = 0;
        for (const [i, p] of ids.entries()) {
          const prediction = predictions && s >= 2 ? { prediction: predictions[i] as number[] } : {};
          const res = await engine.submit(p, { maxNewTokens: maxNew, ignoreEos: true, ...prediction });
          out.push(Array.from(res.tokens).join());
          fw += res.stats.targetForwards;
        }
        const dt = (performance.now() - t0) / 1000;
        engine.close();
        spec?.dispose();
        const got = out.join('|');
        want ??= got;
        if (got !== want) throw new Error(`${wname}, ${(strategies[s] as [string, unknown])[0]}: not plain decoding's tokens`);
        if (r === 0) continue;  // warm-up
        (times[s] as number[]).push(dt);
        (forwards[s] as number[]).push(fw);
      }
    }
    const tokens = ids.length * maxNew;
    console.log(`${wname}:`);
    strategies.forEach(([name], s) => {
      const t = med(times[s] as number[]);
      console.log(`  ${name.padEnd(34)} ${(t * 1000).toFixed(1).padStart(7)} ms   ${(tokens / med(forwards[s] as number[])).toFixed(2)} tokens / target forward   ${(med(times[0] as number[]) / t).toFixed(2)}x plain`);
    });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
