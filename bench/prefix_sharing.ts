// What prefix sharing (EngineOptions.prefixSharing) saves, on the embedded family: requests that
// share a prompt prefix submitted together -- n sampled choices of one long prompt, and prompts that
// share a long "system prompt" with short questions after it -- through an Engine with sharing and
// one without, runs interleaved (A, B, A, B, ...), the median wall time of each kept, and the prompt
// tokens each computed. The outputs are the same (checked). Then a chat's turns (EngineOptions
// prefixCache): each turn is the last turn's prompt and answer and a new question, sent after it
// finished, through an Engine that keeps finished sequences and one that does not.
//
// Run: node dist/bench/prefix_sharing.js [--quick]
import { Engine } from '../lib/engine/engine';
import { defaultModelPaths } from '../lib/default_models';
import { LlamaModel } from '../lib/models/llama';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';

/** Whether the strategy has a speculator (one made and disposed to tell). */
function spec0(make: () => Speculator | undefined): boolean {
  const s = make();
  s?.dispose();
  return s !== undefined;
}

const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const reps = quick ? 2 : 5;
  const P = defaultModelPaths();
  const target = await LlamaModel.load(P.target, { device: 'cpu', maxSequences: 32 });
  const draft = await LlamaModel.load(P.draft, { device: 'cpu', maxSequences: 32 });
  const eagle = EagleHead.load(P.eagle, { device: 'cpu' });
  const ids = (n: number, salt: number): number[] => Array.from({ length: n }, (_, i) => 3 + ((i * 37 + salt * 101) % 300));
  const long = ids(quick ? 120 : 240, 1);
  const workloads: [string, { prompt: number[]; stream: number }[], number][] = [
    [`8 choices of one ${long.length}-token prompt, 16 new tokens each`, Array.from({ length: 8 }, (_, i) => ({ prompt: long, stream: i })), 16],
    [`8 questions after one ${long.length}-token system prompt, 16 new tokens each`, Array.from({ length: 8 }, (_, i) => ({ prompt: [...long, ...ids(8, i + 2)], stream: 0 })), 16],
  ];
  const strategies: [string, () => Speculator | undefined][] = [
    ['plain', () => undefined],
    ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
    ['hybrid (draft + prompt lookup) k=4', () => new HybridSpeculator({ draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4 })],
    ['EAGLE top-4 depth 3', () => new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 })],
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
      const promptTokens = reqs.reduce((n, q) => n + q.prompt.length, 0);
      console.log(`${sname}, ${wname}: without ${(med(times.off) * 1000).toFixed(1)} ms (${promptTokens} prompt tokens computed)   with ${(med(times.on) * 1000).toFixed(1)} ms (${promptTokens - shared.on} computed)   ratio ${(med(times.off) / med(times.on)).toFixed(2)}x`);
      engines.off.close();
      engines.on.close();
    }
  }
  // A chat: turn t + 1's prompt is turn t's and its answer and a question of 8 tokens; each turn
  // sent after the last finished. Timed: the turns after the first.
  // (Within the embedded models' 256 positions: 72 + 3 x 40 + 32.)
  const turns = quick ? 3 : 4;
  const first = ids(64, 7);
  for (const [sname, make] of strategies) {
    // 'target': the kept turns' target caches only (the speculator's state not kept: Speculator.keep off).
    const times: Record<'off' | 'target' | 'on', number[]> = { off: [], target: [], on: [] };
    const out: Record<'off' | 'target' | 'on', string> = { off: '', target: '', on: '' };
    let shared = 0;
    const accepted = { off: 0, target: 0, on: 0 };
    for (let r = 0; r <= reps; r++) {
      for (const mode of ['off', 'target', 'on'] as const) {
        const spec = make();
        if (spec && mode === 'target') Object.assign(spec, { keep: undefined });
        const e = new Engine({ model: target, ...(spec ? { speculator: spec } : {}), prefixCache: mode === 'off' ? 0 : 4 });
        let prompt = [...first, ...ids(8, 50)];
        const answers: string[] = [];
        let t0 = 0;
        for (let t = 0; t < turns; t++) {
          if (t === 1) t0 = performance.now();
          const res = await e.submit(prompt, { maxNewTokens: 32, ignoreEos: true, sampling: { temperature: 0.8 }, seed: 3 + t });
          answers.push(Array.from(res.tokens).join());
          if (r === 0 && t > 0) accepted[mode] += res.stats.acceptedDraftTokens;
          prompt = [...prompt, ...res.tokens, ...ids(8, 60 + t)];
        }
        const dt = (performance.now() - t0) / 1000;
        if (mode === 'on') shared = e.metrics.sharedPromptTokens;
        e.close();
        await e.idle();
        spec?.dispose();
        if (r === 0) continue;
        times[mode].push(dt);
        out[mode] = answers.join('|');
      }
    }
    if (out.off !== out.on || out.off !== out.target) throw new Error(`${sname}, chat: the prefix cache changed the output`);
    const keptOnly = spec0(make) ? `   target caches only ${(med(times.target) * 1000).toFixed(1)} ms (${(med(times.off) / med(times.target)).toFixed(2)}x, ${accepted.target} drafts accepted)` : '';
    console.log(`${sname}, a chat of ${turns} turns after a ${first.length + 8}-token first prompt, 32 new tokens a turn (turns 2..${turns} timed): without a prefix cache ${(med(times.off) * 1000).toFixed(1)} ms${keptOnly}   with ${(med(times.on) * 1000).toFixed(1)} ms (${shared} prompt tokens from kept turns, ${accepted.on} drafts accepted; ${accepted.off} without)   ratio ${(med(times.off) / med(times.on)).toFixed(2)}x`);
  }
  eagle.dispose();
  draft.dispose();
  target.dispose();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
