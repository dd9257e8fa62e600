// Runs the benchmarks in-process and collects one report: the machine header, then each bench's
// result. `specdec bench` (lib/cli/bench.ts) and `node dist/bench/run.js` both come here; run
// directly, this writes bench/results/<device>-<date>.json (unless --quick or --out says otherwise)
// and prints the summary table.
import * as os from 'os';
import * as path from 'path';
import { resolveDevice } from '../lib/backend';
import type { Device } from '../lib/tensor';
import { attentionBench } from './attention.bench';
import { eagleBench } from './eagle.bench';
import { machineHeader, round, type BenchModule, type BenchResult, type MachineHeader } from './common';
import { forwardCostBench } from './forward_cost.bench';
import { matmulBench } from './matmul.bench';
import { memoryBench } from './memory.bench';
import { plainDecodeBench } from './plain_decode.bench';
import { samplingBench } from './sampling.bench';
import { sizingBench } from './sizing.bench';
import { serveBench } from './serve.bench';
import { speculativeBench } from './speculative.bench';
import { verifyBench } from './verify.bench';

/** Every bench, in the order a full run executes them (cheap kernels first). */
export const BENCHES: readonly BenchModule[] = [attentionBench, matmulBench, verifyBench, samplingBench, plainDecodeBench, forwardCostBench, memoryBench, speculativeBench, sizingBench, eagleBench, serveBench];

export interface RunOptions {
  /** Bench names to run (default: all). */
  readonly only?: readonly string[];
  readonly device: Device | 'auto';
  readonly quick: boolean;
  readonly log?: (line: string) => void;
}

export interface RunReport {
  readonly header: MachineHeader;
  readonly quick: boolean;
  readonly results: BenchResult[];
  /** Every check of every bench held (e.g. speculative output == plain output). */
  readonly ok: boolean;
  /** Load average when the run ended (compare with header.loadAverage: a busy machine skews CPU numbers). */
  readonly loadAverageAtEnd: number[];
}

/** Resolves --only names; E_ARG naming the unknown ones. */
export function selectBenches(only: readonly string[] | undefined): BenchModule[] {
  if (only === undefined || only.length === 0) return [...BENCHES];
  const unknown = only.filter((n) => !BENCHES.some((b) => b.name === n));
  if (unknown.length > 0) {
    const e = new Error(`--only: unknown bench ${unknown.map((n) => `'${n}'`).join(', ')} (have ${BENCHES.map((b) => b.name).join(', ')})`);
    throw Object.assign(e, { code: 'E_ARG' });
  }
  return BENCHES.filter((b) => only.includes(b.name));
}

export async function runBenches(opts: RunOptions): Promise<RunReport> {
  const selected = selectBenches(opts.only);
  const device = resolveDevice(opts.device);
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const header = machineHeader(device);
  const results: BenchResult[] = [];
  for (const b of selected) {
    log(`bench ${b.name} (${device}${opts.quick ? ', quick' : ''})`);
    results.push(await b.run({ device, quick: opts.quick, log }));
  }
  const ok = results.every((r) => Object.values(r.checks).every((c) => c));
  return { header, quick: opts.quick, results, ok, loadAverageAtEnd: os.loadavg().map((x) => round(x, 2)) };
}

/** bench/results/<device>-<YYYY-MM-DD>.json in the source tree (next to this file's source). */
export function defaultResultsFile(report: RunReport): string {
  return path.resolve(__dirname, '..', '..', 'bench', 'results', `${report.header.device}-${report.header.date.slice(0, 10)}.json`);
}

function fmt(v: number | null): string {
  if (v === null || !Number.isFinite(v)) return '-';
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : a >= 0.01 ? v.toFixed(4) : v.toPrecision(3);
}

/** The short summary table: one line per row of every bench. */
export function formatTable(report: RunReport): string {
  const h = report.header;
  const gpu = h.backend.gpus[0];
  const lines = [
    `specdec bench  ${h.date}  device ${h.device}${gpu ? ` (${gpu.name}, CUDA ${h.backend.cudaRuntime}, driver ${h.backend.nvidiaDriver ?? h.backend.cudaDriver})` : ` (CPU: ${h.cpu.model}, ${h.cpu.cores} cores)`}`,
    `node ${h.node}  commit ${h.git.commit?.slice(0, 10) ?? '?'}${h.git.dirty ? '+dirty' : ''}  load ${h.loadAverage.join(' ')} -> ${report.loadAverageAtEnd.join(' ')}${report.quick ? '  [QUICK: smoke-test sizes, not numbers to quote]' : ''}`,
  ];
  const table: string[][] = [['bench', 'case', 'value', 'unit', 'note']];
  for (const r of report.results) {
    for (const row of r.rows) table.push([r.bench, row.name, fmt(row.value), row.unit, row.note ?? '']);
    for (const [k, v] of Object.entries(r.checks)) if (!v) table.push([r.bench, `CHECK FAILED: ${k}`, '', '', '']);
  }
  const widths = (table[0] as string[]).map((_, c) => Math.max(...table.map((row) => (row[c] as string).length)));
  for (const [i, row] of table.entries()) {
    lines.push(row.map((cell, c) => (c === 2 ? cell.padStart(widths[c] as number) : cell.padEnd(widths[c] as number))).join('  ').trimEnd());
    if (i === 0) lines.push(widths.map((w) => '-'.repeat(w)).join('  '));
  }
  for (const r of report.results) for (const n of r.notes) lines.push(`note (${r.bench}): ${n}`);
  return lines.join('\n');
}

if (require.main === module) {
  // Same flags as `specdec bench`; a full run writes the default results file unless --out is given.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { benchCommand } = require('../lib/cli/bench') as typeof import('../lib/cli/bench');
  const argv = process.argv.slice(2);
  const withOut = argv.includes('--out') || argv.includes('--quick') || argv.includes('--list') ? argv : [...argv, '--out', 'default'];
  benchCommand(withOut).then(
    (code) => (process.exitCode = code),
    (e: unknown) => {
      const err = e as Error & { code?: string };
      process.stderr.write(`bench: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
      process.exitCode = 1;
    },
  );
}
