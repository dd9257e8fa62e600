// EAGLE heads under penalties (EagleOptions.draftPenalties) on the embedded family: how often a
// head row's top-1 is the penalized target's next token, with the row penalized and raw, on the SAME
// positions (paired: along the plain output with the penalties, each row computed both ways), and
// then decoding (tokens per forward, ms) with the rows penalized and raw, beside plainGenerate with
// the penalties. Greedy, `ignoreEos`; the output is the same either way (checked), only the drafts
// differ.
//
//   root rows      one-draft steps (topK 1, depth 0): every step's root row;
//   deeper rows    4-deep chains: each expanded row whose path is the true output so far, also
//                  penalized by the history alone (no path), to show what the paths add.
//
// Run: node dist/bench/eagle_penalties.js [--quick] [--penalties '{"repetition":1.2,...}']
// Op by op (nativeExpansion false) so that each row can be read both ways; the native expansion
// proposes the same trees (test/eagle.test.ts).
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import type { Penalties, PenaltyHistory, ResolvedPenalties } from '../lib/sampling';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import type { SpecSequence } from '../lib/strategies/speculator';
import type { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';

const PROMPTS = ['once upon a time , there was a little cat', 'the dog ran to the park and', 'lily wanted to play with her friend', 'tom had a big red ball', 'one day , a little bird', 'the sun was shining and the girl'];

type RowPenalties = { penalties: ResolvedPenalties; histories: readonly PenaltyHistory[]; rowSeq: Int32Array; paths: readonly (readonly number[])[] };
type Children = (h: Tensor, pen?: RowPenalties) => { ids: Int32Array; logp: Float32Array };

interface Agreement {
  root: { n: number; pen: number; raw: number };
  deep: { n: number; pen: number; hist: number; raw: number };
}

/** Paired agreement of one head over the prompts (see the header). */
async function agreement(target: LlamaModel, head: EagleHead, prompts: Int32Array[], penalties: Penalties, N: number): Promise<Agreement> {
  const a: Agreement = { root: { n: 0, pen: 0, raw: 0 }, deep: { n: 0, pen: 0, hist: 0, raw: 0 } };
  for (const [depth, totalTokens] of [[0, 1], [4, 5]] as const) {
    for (const prompt of prompts) {
      const want = Array.from((await plainGenerate(target, [prompt], { maxNewTokens: N, penalties, ignoreEos: true })).tokens[0] as Int32Array);
      const full = [...prompt, ...want];
      const spec = new EagleSpeculator({ head, topK: 1, depth, totalTokens });
      spec.nativeExpansion = false;
      const s = spec as unknown as { children: Children; propose: EagleSpeculator['propose'] };
      const children = s.children.bind(spec);
      let seqs: readonly SpecSequence[] = [];
      const propose = s.propose.bind(spec);
      s.propose = (q, ctx) => {
        seqs = q;
        return propose(q, ctx);
      };
      s.children = (h, pen) => {
        const got = children(h, pen);
        if (!pen) return got;
        const raw = children(h, undefined);
        if (pen.paths.length === 0) {
          // Root rows (one per drafting sequence).
          if (depth !== 0) return got;
          seqs.forEach((q, i) => {
            const next = full[q.history.length];
            if (next === undefined) return;
            a.root.n++;
            if (got.ids[i] === next) a.root.pen++;
            if (raw.ids[i] === next) a.root.raw++;
          });
          return got;
        }
        const hist = children(h, { ...pen, paths: pen.paths.map(() => []) });
        pen.paths.forEach((p, i) => {
          const q = seqs[pen.rowSeq[i] as number] as SpecSequence;
          const path = head.toTargetIds(Int32Array.from(p)).reverse();
          const L = q.history.length;
          if (path.some((t, j) => full[L + j] !== t)) return;
          const next = full[L + path.length];
          if (next === undefined) return;
          a.deep.n++;
          if (got.ids[i] === next) a.deep.pen++;
          if (hist.ids[i] === next) a.deep.hist++;
          if (raw.ids[i] === next) a.deep.raw++;
        });
        return got;
      };
      try {
        const [r] = await new SpeculativeDecoder({ target, speculator: spec, penalties }).generateBatch([prompt], { maxNewTokens: N, ignoreEos: true });
        if (Array.from(r!.tokens).join() !== want.join()) throw new Error('eagle_penalties: speculative output != plain output with the penalties');
      } finally {
        spec.dispose();
      }
    }
  }
  return a;
}

/** Decoding over the prompts: tokens per forward and the median ms per prompt (runs alternated with plainGenerate). */
async function decoding(target: LlamaModel, head: EagleHead, prompts: Int32Array[], penalties: Penalties, N: number, reps: number): Promise<string[]> {
  const configs = [{ topK: 1, depth: 5, totalTokens: 5 }, { topK: 8, depth: 5, totalTokens: 12 }];
  const times = new Map<string, number[]>();
  const tau = new Map<string, number>();
  const push = (k: string, ms: number) => (times.get(k) ?? times.set(k, []).get(k)!).push(ms);
  for (let rep = 0; rep < reps; rep++) {
    let t0 = performance.now();
    for (const p of prompts) await plainGenerate(target, [p], { maxNewTokens: N, penalties, ignoreEos: true });
    push('plain', performance.now() - t0);
    for (const c of configs) {
      for (const draftPenalties of [false, true]) {
        const key = `${JSON.stringify(c)} ${draftPenalties ? 'penalized' : 'raw'}`;
        const spec = new EagleSpeculator({ head, ...c, draftPenalties });
        try {
          const dec = new SpeculativeDecoder({ target, speculator: spec, penalties });
          let tokens = 0;
          let forwards = 0;
          t0 = performance.now();
          for (const p of prompts) {
            const [r] = await dec.generateBatch([p], { maxNewTokens: N, ignoreEos: true });
            tokens += r!.stats.newTokens;
            forwards += r!.stats.targetForwards;
          }
          push(key, performance.now() - t0);
          tau.set(key, tokens / forwards);
        } finally {
          spec.dispose();
        }
      }
    }
  }
  const med = (xs: number[]) => xs.slice().sort((x, y) => x - y)[xs.length >> 1] as number;
  const plain = med(times.get('plain')!);
  const lines = [`  plainGenerate with the penalties: ${(plain / prompts.length).toFixed(2)} ms per prompt`];
  for (const [k, xs] of times) if (k !== 'plain') lines.push(`  ${k}: ${tau.get(k)!.toFixed(2)} tokens/forward, ${(med(xs) / prompts.length).toFixed(2)} ms per prompt, ${(plain / med(xs)).toFixed(2)}x`);
  return lines;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const at = args.indexOf('--penalties');
  const penalties: Penalties = at >= 0 ? (JSON.parse(args[at + 1] as string) as Penalties) : { repetition: 1.2, presence: 0.3, frequency: 0.2 };
  const paths = defaultModelPaths();
  const target = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 4 });
  const tok = TextTokenizer.load(paths.target);
  if (!tok) throw new Error(`eagle_penalties: no tokenizer in ${paths.target}`);
  const prompts = (quick ? PROMPTS.slice(0, 2) : PROMPTS).map((t) => tok.encode(t));
  const N = quick ? 32 : 128;
  const pct = (x: number, n: number) => `${((100 * x) / Math.max(n, 1)).toFixed(1)}%`;
  console.log(`EAGLE rows under penalties ${JSON.stringify(penalties)}: the embedded family, ${prompts.length} prompts x ${N} tokens, greedy`);
  try {
    for (const name of ['eagle', 'eagle3'] as const) {
      const head = EagleHead.load(paths[name], { device: 'cpu' });
      try {
        const a = await agreement(target, head, prompts, penalties, N);
        console.log(`${name}: root rows ${a.root.n}: penalized ${pct(a.root.pen, a.root.n)}, raw ${pct(a.root.raw, a.root.n)}; ` +
          `deeper rows on the true path ${a.deep.n}: penalized ${pct(a.deep.pen, a.deep.n)}, history only ${pct(a.deep.hist, a.deep.n)}, raw ${pct(a.deep.raw, a.deep.n)}`);
        for (const l of await decoding(target, head, prompts, penalties, N, quick ? 1 : 11)) console.log(l);
      } finally {
        head.dispose();
      }
    }
  } finally {
    target.dispose();
  }
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
