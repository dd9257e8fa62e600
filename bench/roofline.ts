// The performance model of the kernel benchmarks: what each kernel must move (bytes) and compute
// (FLOPs) for a shape, the roofline bound that implies on a device -- max(bytes / copy bandwidth,
// FLOPs / tensor-core peak) -- and the fraction of it a measured time reaches.
//
// On the machine that runs the bench the copy bandwidth is MEASURED (a device-to-device copy of
// 256 MiB: bytes read + written / time); no compute peak is measured there, so a bound from it is
// a memory bound only. Without a GPU, the bounds for an H100 / H200 are PREDICTIONS from the spec
// sheets (HBM bandwidth, dense bf16 tensor-core peak), for the goal shapes, and are labelled so.
import { Tensor } from '../lib/tensor';
import type { Device } from '../lib/tensor';
import { measure, round, syncTensor, type BenchRow, type KernelTime } from './common';

/** What a kernel call must at least move and compute. */
export interface Cost {
  readonly bytes: number;
  /** Tensor-core FLOPs (2 per multiply-add); 0 for memory-only kernels. */
  readonly flops: number;
}

export interface Peaks {
  readonly name: string;
  /** Bytes per second. */
  readonly bandwidth: number;
  /** FLOP/s of the dense bf16 tensor cores; null = unknown (the bound is then a memory bound). */
  readonly flopsPeak: number | null;
  readonly source: 'measured' | 'spec sheet';
}

/** Spec-sheet peaks used for predictions (SXM parts, dense bf16). */
export const PREDICTION_DEVICES: readonly Peaks[] = [
  { name: 'H100 SXM', bandwidth: 3.35e12, flopsPeak: 989e12, source: 'spec sheet' },
  { name: 'H200 SXM', bandwidth: 4.8e12, flopsPeak: 989e12, source: 'spec sheet' },
];

export interface Bound {
  readonly us: number;
  readonly by: 'memory' | 'compute';
}

export function bound(c: Cost, p: Peaks): Bound {
  const mem = (c.bytes / p.bandwidth) * 1e6;
  const comp = p.flopsPeak !== null ? (c.flops / p.flopsPeak) * 1e6 : 0;
  return comp > mem ? { us: comp, by: 'compute' } : { us: mem, by: 'memory' };
}

/**
 * Copy bandwidth of `device`, measured: 256 MiB (quick: 32 MiB) copied, bytes read + written / time.
 * CUDA: a device-to-device tensor copy (the caching allocator reuses the block); CPU: a memcpy into
 * a buffer already touched (a fresh one would time page faults).
 */
export async function measureCopyBandwidth(device: Device, quick = false): Promise<Peaks> {
  const bytes = (quick ? 32 : 256) << 20;
  if (device === 'cpu') {
    const a = new Float32Array(bytes / 4).fill(1);
    const b = new Float32Array(bytes / 4).fill(2);
    const t = await measure(() => b.set(a), { warmup: 1, samples: 5 });
    return { name: 'this cpu (one thread)', bandwidth: (2 * bytes) / (t.medianMs / 1000), flopsPeak: null, source: 'measured' };
  }
  const src = Tensor.zeros('f32', [bytes / 4], device);
  let last: Tensor | undefined;
  try {
    const t = await measure(
      () => {
        last?.dispose();
        last = src.to(device);
      },
      { warmup: 1, samples: 5, sync: () => last && syncTensor(last) },
    );
    return { name: `this ${device}`, bandwidth: (2 * bytes) / (t.medianMs / 1000), flopsPeak: null, source: 'measured' };
  } finally {
    last?.dispose();
    src.dispose();
  }
}

/** The roofline metrics of one measured row, and the note beside its time. */
export function rooflineOf(c: Cost, measuredUs: number, p: Peaks): { metrics: Record<string, unknown>; note: string } {
  const b = bound(c, p);
  const fraction = b.us / measuredUs;
  return {
    metrics: { bytes: c.bytes, flops: c.flops, boundUs: b.us, boundBy: b.by, fraction, peaks: p },
    note: `roofline ${round(b.us, 2)} us (${b.by}, ${round(100 * fraction, 1)}% reached)`,
  };
}

/** Adds the roofline (on the measured copy bandwidth) to a measured row. */
export function withRoofline(row: BenchRow, c: Cost, measuredUs: number, p: Peaks, kernel?: KernelTime): BenchRow {
  const r = rooflineOf(c, measuredUs, p);
  const withWall: BenchRow = { ...row, note: row.note ? `${row.note}; ${r.note}` : r.note, metrics: { ...row.metrics, roofline: r.metrics } };
  return kernel ? withKernelTime(withWall, c, kernel, p) : withWall;
}

/**
 * Adds the GPU time of the row's kernels (CUDA events; common.ts KernelTime) and their own roofline
 * fraction: the wall time per call includes the host's calls, this is what the kernels reached.
 */
export function withKernelTime(row: BenchRow, c: Cost, k: KernelTime, p: Peaks): BenchRow {
  const r = rooflineOf(c, k.usPerCall, p);
  const note = `GPU kernels ${round(k.usPerCall, 2)} us/call in ${round(k.launchesPerCall, 1)} launches (${round(100 * (r.metrics.fraction as number), 1)}% of the roofline)`;
  return { ...row, note: row.note ? `${row.note}; ${note}` : note, metrics: { ...row.metrics, kernel: { ...k, roofline: r.metrics } } };
}

/** Rows of predicted bounds (never measured) for each prediction device. */
export function predictionRows(kernel: string, shapes: readonly { name: string; cost: Cost }[]): BenchRow[] {
  const rows: BenchRow[] = [];
  for (const s of shapes)
    for (const p of PREDICTION_DEVICES) {
      const b = bound(s.cost, p);
      rows.push({
        name: `PREDICTION ${p.name}: ${kernel}, ${s.name}`,
        value: round(b.us, 2),
        unit: 'us (bound)',
        note: `${b.by}-bound; ${round(s.cost.bytes / 1e6, 2)} MB, ${round(s.cost.flops / 1e9, 2)} GFLOP; ${p.source} peaks, not a measurement`,
        metrics: { prediction: true, device: p.name, bytes: s.cost.bytes, flops: s.cost.flops, boundUs: b.us, boundBy: b.by, peaks: p },
      });
    }
  return rows;
}

// ---- the kernels' costs ---------------------------------------------------------------------------

export interface AttentionShape {
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  /** Bytes per K/V and per q/out element. */
  readonly kvBytes: number;
  readonly qBytes: number;
}

/**
 * Attention over a paged prefix for a batch of sequences: K/V of every slot read once per KV head,
 * q read and out written once; FLOPs 4 * d per (query head, visible slot) pair (QK^T and PV).
 * `visible[b][i]` = the number of slots row i of sequence b sees (prefix + its depth + 1).
 */
export function attentionCost(s: AttentionShape, prefix: readonly number[], visible: readonly (readonly number[])[]): Cost {
  let bytes = 0;
  let flops = 0;
  prefix.forEach((p, b) => {
    const rows = visible[b] as readonly number[];
    bytes += (p + rows.length) * s.hkv * s.d * 2 * s.kvBytes + 2 * rows.length * s.hq * s.d * s.qBytes;
    for (const v of rows) flops += 4 * s.d * v * s.hq;
  });
  return { bytes, flops };
}

/** Visible slots per node of a tree (parents[i] < i, -1 = root) over `prefix`. */
export function treeVisible(prefix: number, parents: ArrayLike<number>): number[] {
  const depth: number[] = [];
  for (let i = 0; i < parents.length; i++) {
    const p = parents[i] as number;
    depth.push(p < 0 ? 1 : (depth[p] as number) + 1);
  }
  return depth.map((d) => prefix + d);
}

/** Verification reads at least each visited row of the target (and the draft) once. */
export function verifyCost(rowsVisited: number, vocab: number, targetBytes: number, draft: boolean): Cost {
  return { bytes: rowsVisited * vocab * (targetBytes + (draft ? 4 : 0)), flops: 0 };
}

/** Row ops over [rows, vocab]: bytes read + written per element (argmax 4, processLogits 8, sample 4). */
export function rowOpCost(rows: number, vocab: number, bytesPerElement: number): Cost {
  return { bytes: rows * vocab * bytesPerElement, flops: 0 };
}

/** The goal shapes of the issue (Llama-3-8B-like heads: 32 q / 8 kv, d 128, bf16 cache). */
export const GOAL_ATTENTION: AttentionShape = { hq: 32, hkv: 8, d: 128, kvBytes: 2, qBytes: 2 };
