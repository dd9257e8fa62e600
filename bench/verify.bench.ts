// Verification timing at a Llama-3 vocabulary (128256): one verify() call over a ragged batch of 1 or
// 8 sequences, each a chain of 5 drafts (6 nodes) or the 63-node Medusa tree (mc_sim_7b_63, 64 nodes
// with the root), and on CUDA also 32 chains of 8 drafts (the goal shape), in every mode:
// greedy (logits), exact rejection with a real draft distribution, one-hot tree rejection
// (deterministic drafts), Medusa typical acceptance.
//
// Inputs are random logits in [-1, 1] with each node's FIRST child token planted at +8, so greedy
// accepts the rank-0 path to the leaf (the longest walk, the most rows read) and sampling accepts
// part of it. The target probabilities (and the draft's) are processLogits(logits, temperature 1).
// Each row carries its roofline (bench/roofline.ts: one read of every row the walk visits -- target,
// and draft when given -- over the measured copy bandwidth) and the fraction reached; off a GPU,
// predicted H100/H200 bounds for the goal shape (batch 32, 8 drafts, vocab 128256) follow.
// Run: node dist/bench/verify.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only verify)
import { processLogits } from '../lib/sampling';
import { Tensor } from '../lib/tensor';
import { chainTree, flattenTrees, MC_SIM_7B_63, medusaTree, medusaTreeShape, type TokenTree } from '../lib/tree';
import { verify, type VerifyInput, type VerifyMode } from '../lib/verify';
import { logRow, measureKernel, round, standalone, xorshift, type BenchModule, type BenchOptions, type BenchResult, type BenchRow } from './common';
import { measureCopyBandwidth, predictionRows, rowOpCost, verifyCost, withRoofline } from './roofline';

const VOCAB = 128256;
const PLANT = 8;

interface Case {
  readonly batch: number;
  readonly treeName: string;
  readonly tree: (rand: () => number, V: number) => TokenTree;
}

function chain5(rand: () => number, V: number): TokenTree {
  return chainTree(Math.floor(rand() * V), Array.from({ length: 5 }, () => Math.floor(rand() * V)));
}

function chain8(rand: () => number, V: number): TokenTree {
  return chainTree(Math.floor(rand() * V), Array.from({ length: 8 }, () => Math.floor(rand() * V)));
}

function medusa63(rand: () => number, V: number): TokenTree {
  const shape = medusaTreeShape(MC_SIM_7B_63);
  // Distinct candidate tokens per (head, rank), as a Medusa top-k would give.
  const ids = Array.from({ length: shape.depth }, () => Array.from({ length: shape.topK }, () => Math.floor(rand() * V)));
  return medusaTree(shape, Math.floor(rand() * V), (h, r) => (ids[h] as number[])[r] as number);
}

/** Random logits [N, V] with each node's first child token planted at +PLANT in the node's row. */
function plantedLogits(trees: readonly TokenTree[], V: number, rand: () => number): Float32Array {
  const N = trees.reduce((n, t) => n + t.tokens.length, 0);
  const host = new Float32Array(N * V);
  for (let i = 0; i < host.length; i++) host[i] = rand() * 2 - 1;
  let base = 0;
  for (const t of trees) {
    const seen = new Set<number>();
    for (let i = 1; i < t.tokens.length; i++) {
      const p = t.parents[i] as number;
      if (seen.has(p)) continue;
      seen.add(p);
      host[(base + p) * V + (t.tokens[i] as number)] = PLANT;
    }
    base += t.tokens.length;
  }
  return host;
}

export const verifyBench: BenchModule = {
  name: 'verify',
  description: 'verify() at vocab 128256: greedy / rejection (draft) / one-hot tree / typical, batch 1 and 8, chain-5 and 63-node Medusa tree',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const V = opts.quick ? 4096 : VOCAB;
    const cuda = opts.device === 'cuda';
    const samples = opts.quick ? 2 : cuda ? 20 : 7;
    const cases: Case[] = opts.quick
      ? [
          { batch: 1, treeName: 'chain-5', tree: chain5 },
          { batch: 2, treeName: 'medusa-63', tree: medusa63 },
        ]
      : [
          { batch: 1, treeName: 'chain-5', tree: chain5 },
          { batch: 8, treeName: 'chain-5', tree: chain5 },
          { batch: 1, treeName: 'medusa-63', tree: medusa63 },
          { batch: 8, treeName: 'medusa-63', tree: medusa63 },
          // The goal shape (batch 32, 8 drafts), measured where it is predicted: on CUDA.
          ...(cuda ? [{ batch: 32, treeName: 'chain-8', tree: chain8 }] : []),
        ];
    const modes: { name: string; mode: VerifyMode; draft: boolean }[] = [
      { name: 'greedy', mode: 'greedy', draft: false },
      { name: 'rejection+draft', mode: 'rejection', draft: true },
      { name: 'rejection one-hot', mode: 'rejection', draft: false },
      { name: 'typical', mode: 'typical', draft: false },
    ];
    const rows: BenchRow[] = [];
    const rand = xorshift(0x5eed);
    const peaks = await measureCopyBandwidth(opts.device, opts.quick);
    for (const c of cases) {
      const trees = Array.from({ length: c.batch }, () => c.tree(rand, V));
      const { nodeIndptr, parents, tokens } = flattenTrees(trees);
      const N = nodeIndptr[c.batch] as number;
      opts.log(`verify: batch ${c.batch} x ${c.treeName} (${N} rows x ${V})`);
      const logits = Tensor.fromArray(plantedLogits(trees, V, rand), 'f32', [N, V], opts.device);
      const draftLogits = Tensor.fromArray(plantedLogits(trees, V, rand), 'f32', [N, V], opts.device);
      const probs = processLogits(logits, { temperature: 1 });
      const draftProbs = processLogits(draftLogits, { temperature: 1 });
      try {
        for (const m of modes) {
          const input: VerifyInput = {
            mode: m.mode,
            nodeIndptr,
            parents,
            tokens,
            target: m.mode === 'greedy' ? logits : probs,
            seeds: new BigUint64Array(c.batch).fill(7n),
            offsets: BigUint64Array.from({ length: c.batch }, (_, b) => BigInt(b) << 32n),
            ...(m.draft ? { draft: draftProbs } : {}),
          };
          let accepted = 0;
          let calls = 0;
          // Each call advances the offsets (a fresh draw, as the decoder does), so sampling modes
          // average over acceptance outcomes; verify() returns host arrays, so it is synchronous.
          const t = await measureKernel(
            () => {
              const offsets = input.offsets as BigUint64Array;
              for (let b = 0; b < c.batch; b++) offsets[b] = (offsets[b] as bigint) + 1n;
              const r = verify(input);
              for (const n of r.acceptCount) accepted += n;
              calls++;
            },
            { warmup: 1, samples, device: opts.device },
          );
          const us = t.medianMs * 1000;
          // The walk visits as many rows as it emits tokens (one per accepted node and the root).
          const cost = verifyCost(accepted / calls, V, 4, m.draft);
          rows.push(logRow(opts, withRoofline({
            name: `${m.name}, batch ${c.batch}, ${c.treeName}`,
            value: round(us, 1),
            unit: 'us/call',
            note: `emits ${round(accepted / calls / c.batch, 2)}/seq (max ${c.treeName === 'chain-5' ? 6 : c.treeName === 'chain-8' ? 9 : 5})`,
            metrics: { mode: m.name, batch: c.batch, tree: c.treeName, nodesPerSequence: N / c.batch, vocab: V, medianUs: us, minUs: t.minMs * 1000, samples: t.samples, meanEmittedPerSequence: accepted / calls / c.batch },
          }, cost, us, peaks, t.kernel)));
        }
      } finally {
        for (const x of [logits, draftLogits, probs, draftProbs]) x.dispose();
      }
    }
    if (!cuda) {
      // Goal: batch 32, a chain of 8 drafts (9 rows per sequence), all accepted (the most rows read).
      const goalRows = 32 * 9;
      rows.push(...predictionRows('verify', [
        { name: 'greedy on f32 logits, batch 32 x 8 drafts, all accepted', cost: verifyCost(goalRows, VOCAB, 4, false) },
        { name: 'greedy on bf16 logits, batch 32 x 8 drafts, all accepted', cost: verifyCost(goalRows, VOCAB, 2, false) },
        { name: 'rejection + draft, batch 32 x 8 drafts, all accepted', cost: verifyCost(goalRows, VOCAB, 4, true) },
        { name: 'processLogits of target + draft rows, then rejection (the sampled step)', cost: { bytes: 2 * rowOpCost(goalRows, VOCAB, 8).bytes + verifyCost(goalRows, VOCAB, 4, true).bytes, flops: 0 } },
      ]));
    }
    return {
      bench: 'verify',
      device: opts.device,
      quick: opts.quick,
      setup: { vocab: V, samples, plantedLogit: PLANT, inputs: 'random logits in [-1,1], first child planted; probs = processLogits(T=1)', medusaTree: 'mc_sim_7b_63 (64 nodes with the root)' },
      rows,
      notes: [
        '"emits" = tokens emitted per sequence per call (accepted drafts + the bonus/correction token), averaged over the timed calls.',
        `roofline: one read of each visited row (f32 target, + f32 draft) / measured copy bandwidth (${round(peaks.bandwidth / 1e9, 1)} GB/s on this ${opts.device}); a lower bound (rejection also rewrites residual rows)`,
        ...(cuda ? [] : ['PREDICTION rows: bounds on H100/H200 from spec-sheet bandwidth, not measurements']),
      ],
      checks: {},
      seconds: (performance.now() - t0) / 1000,
    };
  },
};

if (require.main === module) void standalone(verifyBench);
