// Peak resident memory of loading a random ~1B bf16 Llama (hidden 2048, 16 layers, vocab 32000,
// ~2.1 GB of weights) and decoding a few tokens greedily, relative to the weight bytes: on the CPU
// the weights are used in place from the memory-mapped checkpoint, so the peak should stay near
// 1x (the rest: the node runtime, activations, the KV pages in use). Each measurement runs in a
// fresh child process (its peak RSS is the process's own); the checkpoint goes to the OS temp dir
// and is removed afterwards.
// Run: node dist/bench/memory.bench.js [--quick]   (or specdec bench --only memory)
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { round, standalone, tempDir, writeRandomLlama, type BenchModule, type BenchOptions, type BenchResult, type RandomLlamaSpec } from './common';

export const LLAMA_1B: RandomLlamaSpec = { vocab: 32000, hidden: 2048, intermediate: 8192, layers: 16, heads: 32, kvHeads: 8, maxPositions: 2048 };
const QUICK_MODEL: RandomLlamaSpec = { vocab: 512, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2, maxPositions: 128 };

interface ChildReport {
  /** RSS before loading (the node runtime and the addon), after loading, after decoding; bytes. */
  readonly rssStart: number;
  readonly rssLoaded: number;
  readonly rssDecoded: number;
  /** The process's peak RSS, bytes. */
  readonly maxRss: number;
  readonly loadSeconds: number;
  readonly decodeSeconds: number;
  readonly tokens: number;
}

/**
 * Peak RSS of this process in bytes: VmHWM of /proc/self/status (that of this program's own
 * memory map). getrusage's maxrss would do elsewhere, but on Linux it keeps the parent's peak
 * across fork + exec, which would count the spawning process too.
 */
export function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

async function child(dir: string, promptLen: number, newTokens: number): Promise<ChildReport> {
  const rssStart = process.memoryUsage().rss;
  const t0 = performance.now();
  const model = await LlamaModel.load(dir, { device: 'cpu', maxSequences: 1 });
  const t1 = performance.now();
  const rssLoaded = process.memoryUsage().rss;
  const vocab = model.config.vocabSize;
  const prompt = Int32Array.from({ length: promptLen }, (_, i) => (i * 7919 + 3) % vocab);
  const r = await plainGenerate(model, [prompt], { maxNewTokens: newTokens, stopTokens: [] });
  const t2 = performance.now();
  const rssDecoded = process.memoryUsage().rss;
  model.dispose();
  return {
    rssStart,
    rssLoaded,
    rssDecoded,
    maxRss: peakRss(),
    loadSeconds: (t1 - t0) / 1000,
    decodeSeconds: (t2 - t1) / 1000,
    tokens: r.tokens[0]?.length ?? 0,
  };
}

export const memoryBench: BenchModule = {
  name: 'memory',
  description: 'peak RSS of loading and decoding a random ~1B bf16 Llama on the CPU, relative to its weight bytes',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const spec = opts.quick ? QUICK_MODEL : LLAMA_1B;
    const promptLen = opts.quick ? 8 : 16;
    const newTokens = opts.quick ? 2 : 4;
    const tmp = tempDir('memory');
    try {
      opts.log(`memory: writing a random ${spec.hidden}x${spec.layers} model`);
      const params = writeRandomLlama(tmp.dir, spec, 0x1b1b1b);
      const weightBytes = params * 2;
      opts.log('memory: load + decode in a child process');
      const out = spawnSync(process.execPath, [__filename, '--child', tmp.dir, String(promptLen), String(newTokens)], { encoding: 'utf8', timeout: 900000 });
      if (out.status !== 0) throw new Error(`memory bench child failed: ${out.stderr}`);
      const rep = JSON.parse(out.stdout) as ChildReport;
      const gb = (b: number): number => round(b / 1e9, 3);
      return {
        bench: 'memory',
        device: 'cpu',
        quick: opts.quick,
        setup: { model: { params, dtype: 'bf16', weightBytes, ...spec }, promptLen, newTokens, kv: 'default (f32, one sequence)' },
        rows: [
          {
            name: 'peak RSS / weight bytes',
            value: round(rep.maxRss / weightBytes, 3),
            unit: 'x',
            note: `peak ${gb(rep.maxRss)} GB for ${gb(weightBytes)} GB of weights (runtime before loading ${gb(rep.rssStart)} GB)`,
            metrics: { ...rep, weightBytes },
          },
          {
            name: 'load',
            value: round(rep.loadSeconds, 3),
            unit: 's',
            note: `RSS after load ${gb(rep.rssLoaded)} GB, after ${rep.tokens} tokens ${gb(rep.rssDecoded)} GB`,
            metrics: { loadSeconds: rep.loadSeconds, decodeSeconds: rep.decodeSeconds },
          },
        ],
        notes: ['RSS counts the mapped checkpoint pages the process touched (file-backed, shared with the page cache)'],
        checks: { decoded: rep.tokens === newTokens },
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      tmp.remove();
    }
  },
};

if (require.main === module) {
  if (process.argv[2] === '--child') {
    void child(process.argv[3] as string, Number(process.argv[4]), Number(process.argv[5])).then((r) => process.stdout.write(JSON.stringify(r)));
  } else {
    void standalone(memoryBench);
  }
}
