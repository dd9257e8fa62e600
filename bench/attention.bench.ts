// Tree attention timing (not a test): 64 tree tokens over a 4k-token paged prefix with Llama-7B-like
// heads (32 query heads, 8 KV heads, head dim 128), f16 cache, random tree. Also a 1-token decode
// query over the same prefix, so the cost of verifying a tree can be read against plain decoding.
// Also the shapes the CPU benches' models verify (f32 cache, 64-token prefix, 1 / 5 / 17 new tokens):
// the embedded default target (4 query / 2 KV heads, d 32) and the random ~100M Llama (12 / 4, d 64),
// where a call is microseconds and its fixed costs (allocation, gathering) show.
// Run: node dist/bench/attention.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only attention)
import { pagedBatch, treeAttention, treeMask } from '../lib/kv';
import { Tensor } from '../lib/tensor';
import type { Device } from '../lib/tensor';
import { measureKernel, randomF32, round, standalone, syncOn, xorshift, type BenchModule, type BenchOptions, type BenchResult, type BenchRow } from './common';

interface AttShape {
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly dtype: 'f16' | 'f32';
}
const BIG: AttShape = { hq: 32, hkv: 8, d: 128, dtype: 'f16' };
const MODEL_SHAPES: readonly (AttShape & { readonly name: string })[] = [
  { name: 'default target (4/2 heads, d 32)', hq: 4, hkv: 2, d: 32, dtype: 'f32' },
  { name: '100M (12/4 heads, d 64)', hq: 12, hkv: 4, d: 64, dtype: 'f32' },
];
const PAGE = 16;

/** Median ms of one treeAttention call with `tree` new tokens over `prefix` cached tokens. */
async function timeAttention(device: Device, prefix: number, tree: number, samples: number, calls: number, seed: number, shape: AttShape = BIG): Promise<number> {
  const { hq: HQ, hkv: HKV, d: D, dtype } = shape;
  const rand = xorshift(seed);
  const pages = Math.ceil((prefix + tree) / PAGE);
  const layer = Tensor.fromArray(randomF32(pages * 2 * PAGE * HKV * D, rand, -0.5, 0.5), dtype, [pages, 2, PAGE, HKV, D], device);
  const q = Tensor.fromArray(randomF32(tree * HQ * D, rand, -0.5, 0.5), dtype, [tree, HQ, D], device);
  const parents = Int32Array.from({ length: tree }, (_, i) => (i === 0 ? -1 : Math.floor(rand() * i)));
  const mask = Tensor.fromArray(treeMask(parents), 'u64', [tree, Math.ceil(tree / 64)], device);
  const batch = pagedBatch({ qoIndptr: [0, tree], pageIndptr: [0, pages], pageIndices: Array.from({ length: pages }, (_, i) => i), prefixLen: [prefix], pageSize: PAGE, numPages: pages, device });
  const out = Tensor.empty(dtype, [tree, HQ, D], device);
  try {
    const t = await measureKernel(() => treeAttention(q, layer, batch, mask, 1 / Math.sqrt(D), out), { warmup: 1, samples, calls, sync: syncOn(out), device });
    return t.medianMs;
  } finally {
    for (const x of [layer, q, mask, out]) x.dispose();
  }
}

export const attentionBench: BenchModule = {
  name: 'attention',
  description: 'fused tree attention: 64-node tree and 1-token decode over a 4k paged prefix (32/8 heads, d 128, f16)',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const prefix = opts.quick ? 256 : 4096;
    const tree = opts.quick ? 16 : 64;
    const cuda = opts.device === 'cuda';
    const samples = opts.quick ? 2 : cuda ? 10 : 5;
    const calls = cuda ? 20 : 1;
    opts.log(`attention: tree ${tree} + decode 1 over prefix ${prefix} on ${opts.device}`);
    const treeMs = await timeAttention(opts.device, prefix, tree, samples, calls, 11);
    const oneMs = await timeAttention(opts.device, prefix, 1, samples, calls, 12);
    const rows: BenchRow[] = [
      { name: `tree ${tree} tokens / prefix ${prefix}`, value: round(treeMs, 4), unit: 'ms', note: `x${round(treeMs / oneMs, 2)} the 1-token query`, metrics: { ms: treeMs, tokens: tree, prefix, msPerToken: treeMs / tree } },
      { name: `decode 1 token / prefix ${prefix}`, value: round(oneMs, 4), unit: 'ms', metrics: { ms: oneMs, tokens: 1, prefix } },
    ];
    // Model shapes: many calls per sample (a call is microseconds).
    for (const m of MODEL_SHAPES) {
      let one = 0;
      for (const n of [1, 5, 17]) {
        const ms = await timeAttention(opts.device, 64, n, samples, opts.quick ? 20 : cuda ? 200 : 2000, 13 + n, m);
        if (n === 1) one = ms;
        rows.push({ name: `${m.name}: ${n} token${n > 1 ? 's (tree)' : ''} / prefix 64`, value: round(ms * 1000, 3), unit: 'us', note: n > 1 ? `x${round(ms / one, 2)} the 1-token query` : 'f32 cache', metrics: { ms, tokens: n, prefix: 64, ...m } });
      }
    }
    return {
      bench: 'attention',
      device: opts.device,
      quick: opts.quick,
      setup: { qoHeads: BIG.hq, kvHeads: BIG.hkv, headDim: BIG.d, pageSize: PAGE, dtype: BIG.dtype, modelShapes: MODEL_SHAPES, prefix, treeTokens: tree, samples, callsPerSample: calls, tree: 'random parents' },
      rows,
      notes: [],
      checks: {},
      seconds: (performance.now() - t0) / 1000,
    };
  },
};

if (require.main === module) void standalone(attentionBench);
