// What recording log-probabilities (the `logprobs` option) costs, on the embedded family: tokens/s
// with and without logprobs: 5, plainly and with two strategies, greedy, `ignoreEos`, runs
// interleaved (A, B, A, B, ...) and the median of each kept. The native chains (plain, draft-model,
// Medusa heads) compute them in the chain (one read at its end); a step outside a chain makes one
// more native call (one more read on CUDA). The tokens are the same (checked).
//
// Run: node dist/bench/logprobs.js [--quick]
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { LlamaModel } from '../lib/models/llama';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import type { Speculator } from '../lib/strategies/speculator';
import { TextTokenizer } from '../lib/tokenizer';

const PROMPTS = ['once upon a time , there was a little cat', 'the dog ran to the park and', 'lily wanted to play with her friend', 'tom had a big red ball'];

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const N = quick ? 48 : 160, reps = quick ? 2 : 5;
  const P = defaultModelPaths();
  const target = await LlamaModel.load(P.target, { device: 'cpu', maxSequences: 16 });
  const draft = await LlamaModel.load(P.draft, { device: 'cpu', maxSequences: 16 });
  const eagle = EagleHead.load(P.eagle, { device: 'cpu' });
  const heads = MedusaHeads.load(P.medusa, { device: 'cpu' });
  const tok = TextTokenizer.load(P.target) as TextTokenizer;
  const prompts = PROMPTS.map((t) => tok.encode(t));
  const cases: [string, () => Speculator | undefined][] = [
    ['plain (no speculator)', () => undefined],
    ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
    ['Medusa small_8', () => new MedusaSpeculator({ heads, choices: 'small_8' })],
    ['EAGLE, sized', () => new EagleSpeculator({ head: eagle })],
  ];
  console.log(`embedded family, CPU, ${prompts.length} prompts x ${N} tokens, median of ${reps}`);
  for (const [name, make] of cases) {
    const spec = make();
    const dec = new SpeculativeDecoder({ target, ...(spec ? { speculator: spec } : {}) });
    await dec.generateBatch(prompts, { maxNewTokens: 8, ignoreEos: true });  // warm-up
    const times: Record<'off' | 'on', number[]> = { off: [], on: [] };
    let tokens: { off?: string; on?: string } = {};
    const forwards = { off: 0, on: 0 };
    for (let r = 0; r < reps; r++) {
      for (const mode of ['off', 'on'] as const) {
        const t0 = performance.now();
        const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true, ...(mode === 'on' ? { logprobs: 5 } : {}) });
        times[mode].push((performance.now() - t0) / 1000);
        tokens = { ...tokens, [mode]: rs.map((x) => Array.from(x.tokens).join()).join('|') };
        forwards[mode] = rs.reduce((a, x) => a + x.stats.targetForwards, 0);
      }
    }
    if (tokens.off !== tokens.on) throw new Error(`${name}: logprobs changed the tokens`);
    const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
    const tps = (m: 'off' | 'on'): number => (prompts.length * N) / med(times[m]);
    console.log(`${name.padEnd(24)} without: ${tps('off').toFixed(0)} tok/s (${forwards.off} forwards)   logprobs 5: ${tps('on').toFixed(0)} tok/s (${forwards.on} forwards)   ratio ${(tps('on') / tps('off')).toFixed(3)}`);
    dec.dispose();
  }
  eagle.dispose();
  heads.dispose();
  draft.dispose();
  target.dispose();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
