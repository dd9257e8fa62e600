// The forward_cost measurements of two builds of specdec in one run: before / after a change (e.g.
// the commit an issue was filed at against HEAD). Each build runs in a child process of its own, in
// the order A B B A, on one random ~300M bf16 checkpoint (forward_cost's), so both see the same
// weights and the same machine state as far as a shared machine allows; ratios are per round.
// A build is a checkout with dist/ compiled and its addon built (its own build/Release, or
// SPECDEC_BINARY for both when they share an ABI: usually they do not).
// Run: node dist/bench/forward_cost_ab.js --roots OLD_CHECKOUT,NEW_CHECKOUT [--rounds N] [--out F.json]
// Measured per child: the prefill of 512 tokens (all logits, as every build can; and the last row's
// logits only where the build has ForwardOptions.lastLogitsOnly), then k = 1, 4, 8, 16, 64 new
// tokens over the committed 512 (median of 8 calls after one warm-up).
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { LLAMA_300M } from './forward_cost.bench';
import { machineHeader, median, round, tempDir, writeRandomLlama } from './common';

const WIDTHS = [1, 4, 8, 16, 64];
const CONTEXT = 512;

interface ChildResult {
  readonly root: string;
  readonly prefillMs: number;
  /** NaN where the build has no lastLogitsOnly (it computes every row's logits). */
  readonly prefillLastMs: number;
  readonly forwardMs: Record<string, number>;
}

/** The child: measures one build (argv: --child ROOT CHECKPOINT). */
async function child(root: string, ckpt: string): Promise<void> {
  const { LlamaModel } = require(path.join(root, 'dist/lib/models/llama')) as typeof import('../lib/models/llama');
  const model = await LlamaModel.load(ckpt, { device: 'cpu', maxSequences: 1, syncForwardMaxMacs: 0 });
  const seq = model.createSequence();
  const V = model.config.vocabSize;
  const prompt = Int32Array.from({ length: CONTEXT }, (_, i) => (i * 7919 + 13) % V);
  const timed = async (n: number, fn: () => Promise<void>): Promise<number> => {
    await fn();  // warm-up
    const ts: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await fn();
      ts.push(performance.now() - t);
    }
    return median(ts);
  };
  const prefill = (last: boolean) => async (): Promise<void> => {
    model.truncate(seq, 0);
    const r = await model.forward([{ seq, tokens: prompt }], last ? { lastLogitsOnly: true } : undefined);
    r.logits.dispose();
  };
  const prefillMs = await timed(3, prefill(false));
  // A build without lastLogitsOnly ignores the option and returns every row's logits.
  const probe = await model.forward([{ seq: model.createSequence(), tokens: prompt.subarray(0, 4) }], { lastLogitsOnly: true });
  const hasLast = probe.logits.shape[0] === 1;
  probe.logits.dispose();
  const prefillLastMs = hasLast ? await timed(3, prefill(true)) : NaN;
  await prefill(false)();
  model.commit([seq], [Int32Array.from({ length: CONTEXT }, (_, i) => i)]);
  const forwardMs: Record<string, number> = {};
  for (const k of WIDTHS) {
    const tokens = Int32Array.from({ length: k }, (_, i) => (i * 31 + 5) % V);
    forwardMs[`k${k}`] = await timed(8, async () => {
      const r = await model.forward([{ seq, tokens }]);
      r.logits.dispose();
    });
  }
  model.dispose();
  const res: ChildResult = { root, prefillMs, prefillLastMs, forwardMs };
  process.stdout.write(JSON.stringify(res) + '\n');
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(process.argv[3] as string, process.argv[4] as string);
  const roots = (arg('--roots') ?? '').split(',').filter((s) => s.length > 0).map((r) => path.resolve(r));
  if (roots.length !== 2) throw new Error('usage: node dist/bench/forward_cost_ab.js --roots OLD,NEW [--rounds N] [--out F.json]');
  for (const r of roots) {
    if (!fs.existsSync(path.join(r, 'dist/lib/models/llama.js'))) throw new Error(`${r}: no dist/lib/models/llama.js (run npx tsc -p tsconfig.json there)`);
  }
  const rounds = Number(arg('--rounds') ?? '1');
  const tmp = tempDir('fcab');
  try {
    writeRandomLlama(tmp.dir, LLAMA_300M, 0x3005eed);
    const runs: ChildResult[] = [];
    for (let r = 0; r < rounds; r++) {
      for (const root of [roots[0], roots[1], roots[1], roots[0]] as string[]) {
        const out = execFileSync(process.execPath, [__filename, '--child', root, tmp.dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
        const res = JSON.parse(out.trim().split('\n').pop() as string) as ChildResult;
        runs.push(res);
        process.stderr.write(`${path.basename(root)}: prefill ${round(res.prefillMs, 1)} ms (last row ${round(res.prefillLastMs, 1)}), ${WIDTHS.map((k) => `k${k} ${round(res.forwardMs[`k${k}`] as number, 2)}`).join(', ')}\n`);
      }
    }
    const of = (root: string, f: (r: ChildResult) => number): number => median(runs.filter((r) => r.root === root).map(f));
    const [a, b] = roots as [string, string];
    const summary: Record<string, number> = {};
    // (NaN went through JSON as null.)
    const bestPrefill = (r: ChildResult): number => (typeof r.prefillLastMs === 'number' && !Number.isNaN(r.prefillLastMs) ? r.prefillLastMs : r.prefillMs);
    summary['prefill, all logits: old / new'] = of(a, (r) => r.prefillMs) / of(b, (r) => r.prefillMs);
    summary['prefill as decoding runs it (last row where the build can): old / new'] = of(a, bestPrefill) / of(b, bestPrefill);
    for (const k of WIDTHS) summary[`forward k=${k}: old / new`] = of(a, (r) => r.forwardMs[`k${k}`] as number) / of(b, (r) => r.forwardMs[`k${k}`] as number);
    for (const root of roots) summary[`k=16 / k=1, ${path.basename(root)}`] = of(root, (r) => r.forwardMs['k16'] as number) / of(root, (r) => r.forwardMs['k1'] as number);
    // Which code each root held (a checkout's commit, and whether its tracked files differ from it).
    const commits = roots.map((r) => {
      const git = (args: string[]): string => {
        try {
          return execFileSync('git', args, { cwd: r, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
        } catch {
          return '';
        }
      };
      return { root: r, commit: git(['rev-parse', 'HEAD']) || 'unknown', dirty: git(['status', '--porcelain', '--untracked-files=no']) !== '' };
    });
    const report = { header: machineHeader('cpu'), model: LLAMA_300M, context: CONTEXT, order: 'A B B A per round', roots: commits, runs, summary };
    const outFile = arg('--out');
    if (outFile) fs.writeFileSync(outFile, JSON.stringify(report, null, 2) + '\n');
    process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  } finally {
    tmp.remove();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
