// First timings of tree attention (not a test): 64 tree tokens over a 4k-token prefix, Llama-7B-like
// heads (32 query heads, 8 KV heads, head dim 128), f16 cache. CPU always; CUDA when available.
// Prints one JSON object. Run: npx tsc -p tsconfig.json && node dist/bench/attention.bench.js
import { backends } from '../lib/backend';
import { pagedBatch, treeAttention, treeMask } from '../lib/kv';
import { Tensor } from '../lib/tensor';
import type { Device } from '../lib/tensor';

const PREFIX = 4096;
const TREE = 64;
const HQ = 32;
const HKV = 8;
const D = 128;
const PAGE = 16;

function bench(device: Device, reps: number): number {
  const pages = Math.ceil((PREFIX + TREE) / PAGE);
  const layer = Tensor.fromArray(new Float32Array(pages * 2 * PAGE * HKV * D).map(() => Math.random() - 0.5), 'f16', [pages, 2, PAGE, HKV, D], device);
  const q = Tensor.fromArray(new Float32Array(TREE * HQ * D).map(() => Math.random() - 0.5), 'f16', [TREE, HQ, D], device);
  const parents = Int32Array.from({ length: TREE }, (_, i) => (i === 0 ? -1 : Math.floor(Math.random() * i)));
  const mask = Tensor.fromArray(treeMask(parents), 'u64', [TREE, 1], device);
  const batch = pagedBatch({ qoIndptr: [0, TREE], pageIndptr: [0, pages], pageIndices: Array.from({ length: pages }, (_, i) => i), prefixLen: [PREFIX], pageSize: PAGE, numPages: pages, device });
  const out = Tensor.empty('f16', [TREE, HQ, D], device);
  treeAttention(q, layer, batch, mask, 1 / Math.sqrt(D), out); // warm-up
  out.toFloat32();
  const t0 = process.hrtime.bigint();
  for (let r = 0; r < reps; r++) treeAttention(q, layer, batch, mask, 1 / Math.sqrt(D), out);
  out.toFloat32(); // waits for the device
  const ms = Number(process.hrtime.bigint() - t0) / 1e6 / reps;
  for (const t of [layer, q, mask, out]) t.dispose();
  return ms;
}

// One JSON object on stdout (like the other benches), with the device and CUDA versions.
const report = backends();
const cuda = report.available.includes('cuda');
console.log(
  JSON.stringify({
    bench: 'tree_attention',
    shape: { treeTokens: TREE, prefix: PREFIX, qoHeads: HQ, kvHeads: HKV, headDim: D, pageSize: PAGE, dtype: 'f16' },
    cpuMs: bench('cpu', 3),
    cudaMs: cuda ? bench('cuda', 50) : null,
    gpu: report.gpus[0]?.name ?? null,
    cudaRuntime: report.cudaRuntimeVersion ?? null,
    cudaDriver: report.cudaDriverVersion ?? null,
    ...(cuda ? {} : { cudaSkipped: report.cudaReason ?? 'unavailable' }),
  }),
);
