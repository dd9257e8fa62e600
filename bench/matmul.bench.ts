// The model runner's matmul (layers.matmul: out = x @ w^T, x f32, w bf16) at model shapes, for the
// row counts of decode (1), verification of a tree (16, 64) and prefill (512): ms per call, the
// weight bytes streamed per second (what bounds decode) and the arithmetic rate (what bounds
// prefill). On CUDA, bf16 weights take the tensor cores: the streaming kernel (cuda/gemm_tc_stream.cuh;
// several weights of one x in one launch: the "group" rows, as the model's q/k/v and gate/up); run once
// more with SPECDEC_CUDA_MATMUL=tc-warp (the earlier kernel, cuda/gemm_tc.cuh: the same bits) or =simt
// (CUDA cores) to compare in one session.
// Shapes: Llama-3-8B's projections on CUDA; the random ~100M and ~300M models' (bench/common.ts,
// forward_cost.bench.ts) on the CPU. On the CPU it also measures the peak f32 FMA rate of the
// instruction set the kernels use (native cpuPeakGflops: independent FMA chains on registers on
// every pool thread, the best ~1 ms round over 1 s) and prints each row's fraction of it; both
// that peak and the rows' `bestGflops` are best-of-N figures, which a shared machine distorts least.
// CPU rows `tiny KxM`: a tiny model's shapes on the k-serial pack against the lane kernel (the ratio
// of their best times, alternated), with the pack's batch invariance in the checks.
// Run: node dist/bench/matmul.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only matmul)
import { matmul, matmulGroup, packSerialWeight } from '../lib/layers';
import { native } from '../lib/native';
import { Tensor } from '../lib/tensor';
import { cpuMs, logRow, measureKernel, randomF32, round, standalone, syncTensor, xorshift, type BenchModule, type BenchOptions, type BenchResult, type BenchRow } from './common';
import { measureCopyBandwidth, predictionRows, withRoofline, type Cost } from './roofline';

/** What one call must move (weights once, x once, out once) and its tensor-core work (x in 3 bf16 pieces: 3 mma per product). */
function matmulCost(N: number, K: number, M: number): Cost {
  return { bytes: M * K * 2 + N * K * 4 + N * M * 4, flops: 3 * 2 * N * K * M };
}

interface Shape {
  readonly name: string;
  readonly K: number;
  readonly M: number;
  /** Several weights of one x through matmulGroup (their rows sum to M). */
  readonly parts?: readonly number[];
}

const CUDA_SHAPES: Shape[] = [
  { name: 'q/o proj 4096x4096', K: 4096, M: 4096 },
  { name: 'gate/up 4096->14336', K: 4096, M: 14336 },
  { name: 'down 14336->4096', K: 14336, M: 4096 },
  { name: 'q/k/v group 4096->4096+1024+1024', K: 4096, M: 6144, parts: [4096, 1024, 1024] },
  { name: 'gate/up group 4096->2x14336', K: 4096, M: 28672, parts: [14336, 14336] },
];
const CPU_SHAPES: Shape[] = [
  { name: 'q/o proj 768x768', K: 768, M: 768 },
  { name: 'gate/up 768->2048', K: 768, M: 2048 },
  { name: 'down 2048->768', K: 2048, M: 768 },
  { name: 'q/o proj 1024x1024', K: 1024, M: 1024 },
  { name: 'gate/up 1024->2816', K: 1024, M: 2816 },
  { name: 'down 2816->1024', K: 2816, M: 1024 },
];
const QUICK_SHAPES: Shape[] = [{ name: 'quick 256x384', K: 256, M: 384 }];
/** K x M of the embedded target (q/o, gate/up, down, LM head) and draft (gate/up). */
const TINY_SHAPES: readonly (readonly [number, number])[] = [
  [128, 128],
  [128, 384],
  [384, 128],
  [128, 325],
  [64, 192],
];

export const matmulBench: BenchModule = {
  name: 'matmul',
  description: 'model matmul (f32 x bf16 weights): decode, tree and prefill row counts; GB/s of weights and TFLOP/s',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const cuda = opts.device === 'cuda';
    const shapes = opts.quick ? QUICK_SHAPES : cuda ? CUDA_SHAPES : CPU_SHAPES;
    const rowCounts = opts.quick ? [1, 16] : cuda ? [1, 16, 64, 512] : [1, 16, 64, 512];
    const samples = opts.quick ? 2 : 7;
    const rand = xorshift(0x5eed);
    const rows: BenchRow[] = [];
    let invariant = true;
    // The CPU's unit: the instruction set in use and its measured peak (absent from older addons).
    const binding = native();
    const cpu = !cuda && typeof binding.cpuInfo === 'function' ? binding.cpuInfo() : undefined;
    // bf16 weights on AMX tiles: their unit's peak is TDPBF16PS's, three bf16 products per f32-accurate
    // multiply-add (x in 3 pieces); emulated tiles have no peak to quote.
    const onTiles = cpu !== undefined && (cpu.matmul === 'amx' || cpu.matmul === 'amx-emulated');
    const seconds = opts.quick ? 0.05 : 1;
    const peakGflops = !cpu ? undefined : !onTiles ? binding.cpuPeakGflops(cpu.simd, seconds) : cpu.matmul === 'amx' ? binding.cpuPeakGflops('amx', seconds) / 3 : undefined;
    const peakUnit = onTiles ? 'AMX-BF16 (TDPBF16PS chains on tiles, every pool thread, divided by the 3 products per multiply-add)' : `${cpu?.simd} (cpuPeakGflops: FMA chains on registers, every pool thread, best ~1 ms round over 1 s)`;
    const mode = process.env['SPECDEC_CUDA_MATMUL'];
    // On CUDA each row's roofline: bytes / the measured copy bandwidth (a memory bound; no compute peak is measured).
    const peaks = cuda ? await measureCopyBandwidth('cuda', opts.quick) : undefined;
    const path = cuda ? (mode === 'simt' ? 'CUDA cores (SPECDEC_CUDA_MATMUL=simt)' : mode === 'tc-warp' ? 'tensor cores, warp-loaded for every row count (SPECDEC_CUDA_MATMUL=tc-warp)' : 'tensor cores (streaming)') : `CPU${cpu ? ` ${onTiles ? `${cpu.matmul} (AMX-BF16 tiles, x in 3 bf16 pieces; vector path ${cpu.simd})` : cpu.simd}, ${cpu.threads} threads` : ''}`;
    for (const s of shapes) {
      opts.log(`matmul ${s.name}`);
      const ws = (s.parts ?? [s.M]).map((M) => Tensor.fromArray(randomF32(M * s.K, rand, -0.05, 0.05), 'bf16', [M, s.K], opts.device));
      const w = ws[0]!;
      const none = ws.map(() => undefined);
      try {
        const maxN = Math.max(...rowCounts);
        const xAll = Tensor.fromArray(randomF32(maxN * s.K, rand), 'f32', [maxN, s.K], opts.device);
        try {
          // Batch invariance spot check: row 0 alone == row 0 of the widest batch, bit for bit.
          const x0 = xAll.rows(0, 1);
          const oneT = matmul(x0, w);
          const wideT = matmul(xAll, w);
          const one = oneT.toFloat32();
          const wide = wideT.toFloat32().subarray(0, s.M);
          invariant = invariant && one.every((v, i) => Object.is(v, wide[i]));
          for (const t of [x0, oneT, wideT]) t.dispose();
          for (const N of rowCounts) {
            const x = xAll.rows(0, N);
            const calls = cuda ? 20 : N === 1 ? 20 : N >= 512 ? 1 : 4;
            // Into one output, as the runner's forwards write their scratch: a fresh output per call
            // would time the allocator too (from 4 MiB on the CPU, a new mapping faulting page by page).
            const out = matmul(x, w);
            const t = await measureKernel(
              () => {
                if (s.parts) for (const o of matmulGroup(x, ws, none)) o.dispose();
                else matmul(x, w, undefined, out);
              },
              { warmup: 2, samples, calls, sync: () => syncTensor(out), device: cuda ? 'cuda' : 'cpu' },
            );
            // CPU time per call (CPU only): the stable figure on a shared machine.
            const cpu = cuda ? undefined : await cpuMs(() => void matmul(x, w, undefined, out), samples);
            out.dispose();
            x.dispose();
            const { kernel: _kernel, ...timing } = t;  // the kernel time goes with the roofline
            const weightGBs = (s.M * s.K * 2) / (t.medianMs * 1e-3) / 1e9;
            const tflops = (2 * N * s.K * s.M) / (t.medianMs * 1e-3) / 1e12;
            const bestGflops = (2 * N * s.K * s.M) / (t.minMs * 1e-3) / 1e9;
            const cpuGflops = cpu !== undefined ? (2 * N * s.K * s.M) / (cpu * 1e-3) / 1e9 : undefined;
            const ofPeak = peakGflops !== undefined ? bestGflops / peakGflops : undefined;
            const row: BenchRow = {
              name: `${s.name}, N=${N}`,
              value: round(t.medianMs, 4),
              unit: 'ms',
              note: `${round(weightGBs, 3)} GB/s of weights, ${round(tflops, 3)} TFLOP/s${ofPeak !== undefined && N >= 16 ? `, best ${round(bestGflops, 1)} GFLOP/s = ${round(100 * ofPeak, 1)}% of peak` : ''}${cpuGflops !== undefined ? `, ${round(cpuGflops, 1)} GFLOP/s of CPU time` : ''}`,
              metrics: { ...timing, N, K: s.K, M: s.M, weightGBs, tflops, bestGflops, ...(cpu !== undefined ? { cpuMs: cpu, cpuGflops } : {}), ...(ofPeak !== undefined ? { fractionOfPeak: ofPeak } : {}) },
            };
            rows.push(logRow(opts, peaks ? withRoofline(row, matmulCost(N, s.K, s.M), t.medianMs * 1000, peaks, t.kernel) : row));
          }
        } finally {
          xAll.dispose();
        }
      } finally {
        for (const t of ws) t.dispose();
      }
    }
    // Tiny models' shapes (the embedded target's and draft's) on the CPU: the lane kernel against the
    // k-serial pack the model runner gives such weights (cpp/cpu/matmul_serial.h), same inputs, alternated.
    if (!cuda) {
      for (const [K, M] of opts.quick ? TINY_SHAPES.slice(1, 2) : TINY_SHAPES) {
        const w = Tensor.fromArray(randomF32(M * K, rand, -0.05, 0.05), 'bf16', [M, K]);
        const pack = packSerialWeight(w);
        const xAll = Tensor.fromArray(randomF32(16 * K, rand), 'f32', [16, K]);
        try {
          if (!pack) throw new Error(`matmul: ${K} x ${M} bf16 was not packed`);
          const wideT = matmul(xAll, w, undefined, undefined, pack);
          const wide = wideT.toFloat32();
          wideT.dispose();
          for (const N of opts.quick ? [1, 5] : [1, 5, 16]) {
            const x = xAll.rows(0, N);
            const out = matmul(x, w);
            const got = matmul(x, w, undefined, undefined, pack);
            invariant = invariant && got.toFloat32().every((v, i) => Object.is(v, wide[i]));
            got.dispose();
            const calls = 200;
            const time = async (serial: boolean): Promise<number> =>
              (await measureKernel(() => void matmul(x, w, undefined, out, serial ? pack : undefined), { warmup: 2, samples, calls, sync: () => syncTensor(out), device: 'cpu' })).minMs;
            // Alternated (lane, serial, serial, lane), best of each: the same minutes for both.
            const a1 = await time(false);
            const b1 = await time(true);
            const b2 = await time(true);
            const a2 = await time(false);
            const lane = Math.min(a1, a2);
            const serial = Math.min(b1, b2);
            const gf = (ms: number): number => (2 * N * K * M) / (ms * 1e-3) / 1e9;
            rows.push(
              logRow(opts, {
                name: `tiny ${K}x${M}, N=${N}: k-serial pack`,
                value: round(lane / serial, 3),
                unit: 'x lane',
                note: `best ${round(serial * 1000, 2)} us (${round(gf(serial), 1)} GFLOP/s) vs the lane kernel's ${round(lane * 1000, 2)} us (${round(gf(lane), 1)} GFLOP/s), ${calls} calls a sample`,
                metrics: { N, K, M, laneMs: lane, serialMs: serial, laneGflops: gf(lane), serialGflops: gf(serial) },
              }),
            );
            out.dispose();
            x.dispose();
          }
        } finally {
          for (const t of [w, xAll]) t.dispose();
        }
      }
    }
    // Without a GPU: the bounds of Llama-3-8B's shapes on an H100 / H200 (spec sheets; never measured).
    if (!cuda && !opts.quick)
      rows.push(...predictionRows('matmul (x f32 in 3 bf16 pieces)', CUDA_SHAPES.flatMap((s) => [1, 16, 64, 512].map((N) => ({ name: `${s.name}, N=${N}`, cost: matmulCost(N, s.K, s.M) })))));
    return {
      bench: 'matmul',
      device: opts.device,
      quick: opts.quick,
      setup: { shapes, rowCounts, samples, weights: 'bf16 uniform [-0.05, 0.05]', activations: 'f32 uniform [-1, 1]', path, ...(cpu ? { cpu, peakGflops } : {}) },
      rows,
      notes: [`path: ${path}`, ...(peaks ? [`roofline: bytes / measured copy bandwidth (${round(peaks.bandwidth / 1e9, 1)} GB/s); a memory bound`] : []), ...(peakGflops !== undefined ? [`peak of ${peakUnit}: ${round(peakGflops, 1)} GFLOP/s`] : [])],
      checks: { batchInvariant: invariant },
      seconds: (performance.now() - t0) / 1000,
    };
  },
};

if (require.main === module) void standalone(matmulBench);
