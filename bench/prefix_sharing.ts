// What prefix sharing (EngineOptions.prefixSharing) saves, on the embedded family: requests that
// share a prompt prefix submitted together -- n sampled choices of one long prompt, and prompts that
// share a long "system prompt" with short questions after it -- through an Engine with sharing and
// one without, runs interleaved (A, B, A, B, ...), the median wall time of each kept, and the prompt
// tokens each computed. The outputs are the same (checked).
//
// Run: node dist/bench/prefix_sharing.js [--quick]
import { Engine } from '../lib/engine/engine';
import { defaultModelPaths } from '../lib/default_models';
import { LlamaModel } from '../lib/models/llama';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import type { Speculator } from '../lib/strategies/speculator';

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const reps = quick ? 2 : 5;
  const P = defaultModelPaths();
  const target = await LlamaModel.load(P.target, { device: 'cpu', maxSequences: 32 });
  const draft = await LlamaModel.load(P.draft, { device: 'cpu', maxSequences: 32 });
  const ids = (n: number, salt: number): number[] => Array.from({ length: n }, (_, i) => 3 + ((i * 37 + salt * 101) % 300));
  const long = ids(quick ? 120 : 240, 1);
  const workloads: [string, { prompt: number[]; stream: number }[], number][] = [
    [`8 choices of one ${long.length}-token prompt, 16 new tokens each`, Array.from({ length: 8 }, (_, i) => ({ prompt: long, stream: i })), 16],
    [`8 questions after one ${long.length}-token system prompt, 16 new tokens each`, Array.from({ length: 8 }, (_, i) => ({ prompt: [...long, ...ids(8, i + 2)], stream: 0 })), 16],
  ];
  const strategies: [string, () => Speculator | undefined][] = [
    ['plain', () => undefined],
    ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
  ];
  console.log(`embedded family, CPU, median of ${reps}`);
  for (const [sname, make] of strategies) {
    for (const [wname, reqs, maxNew] of workloads) {
      const engines = { off: new Engine({ model: target, ...(make() ? { speculator: make() as Speculator } : {}), prefixSharing: false }), on: new Engine({ model: target, ...(make() ? { speculator: make() as Speculator } : {}) }) };
      const times: Record<'off' | 'on', number[]> = { off: [], on: [] };
      const out: Record<'off' | 'on', string> = { off: '', on: '' };
      const shared = { off: 0, on: 0 };
      for (let r = 0; r <= reps; r++) {
        for (const mode of ['off', 'on'] as const) {
          const e = engines[mode];
          const before = e.metrics.sharedPromptTokens;
          const t0 = performance.now();
          const rs = await Promise.all(reqs.map((q) => e.submit(q.prompt, { maxNewTokens: maxNew, ignoreEos: true, sampling: { temperature: 0.8 }, seed: 3, stream: q.stream })));
          if (r === 0) continue;  // warm-up
          times[mode].push((performance.now() - t0) / 1000);
          out[mode] = rs.map((x) => Array.from(x.tokens).join()).join('|');
          shared[mode] = e.metrics.sharedPromptTokens - before;
        }
      }
      if (out.off !== out.on) throw new Error(`${sname}, ${wname}: sharing changed the output`);
      const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
      const promptTokens = reqs.reduce((n, q) => n + q.prompt.length, 0);
      console.log(`${sname}, ${wname}: without ${(med(times.off) * 1000).toFixed(1)} ms (${promptTokens} prompt tokens computed)   with ${(med(times.on) * 1000).toFixed(1)} ms (${promptTokens - shared.on} computed)   ratio ${(med(times.off) / med(times.on)).toFixed(2)}x`);
      engines.off.close();
      engines.on.close();
    }
  }
  draft.dispose();
  target.dispose();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
