// Shared pieces of the benchmarks: the bench module contract (so `specdec bench` and bench/run.ts
// call every bench in-process as a function), the machine header recorded with every result
// (device, GPU, driver, CUDA, CPU model, load average, node, git commit), timing with warm-up and
// median of N, random checkpoints for model benches, and JSON output. (Interleaving of A/B runs,
// so that ratios measured in one run cancel a shared machine's noise, is in speculative.bench.ts.)
import Benchmark from 'benchmark';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends } from '../lib/backend';
import { cudaKernelProfile, setCudaKernelProfiling } from '../lib/transfers';
import { f32ToBf16Bits, writeSafetensors, type SafetensorsEntry } from '../lib/safetensors';
import type { Device, Tensor } from '../lib/tensor';

// ---- the bench module contract ------------------------------------------------------------------

export interface BenchOptions {
  /** The resolved device (never 'auto'). */
  readonly device: Device;
  /** Small shapes and few repetitions: a smoke run (seconds), not numbers to quote. */
  readonly quick: boolean;
  /** Progress lines (stderr by default); results never go through it. */
  readonly log: (line: string) => void;
}

/** One measured case. `value`/`unit` is what the summary table shows; `metrics` has everything. */
export interface BenchRow {
  readonly name: string;
  readonly value: number | null;
  readonly unit: string;
  /** A short remark for the table (e.g. "x2.1 vs plain, tau 3.4"). */
  readonly note?: string;
  readonly metrics: Record<string, unknown>;
}

export interface BenchResult {
  readonly bench: string;
  readonly device: Device;
  readonly quick: boolean;
  /** The fixed shapes / model / settings of the bench. */
  readonly setup: Record<string, unknown>;
  readonly rows: BenchRow[];
  /** Caveats worth reading next to the numbers (e.g. "random draft: acceptance near 0"). */
  readonly notes: string[];
  /** Checks the bench made on its own results (e.g. lossless); false fails `specdec bench`. */
  readonly checks: Record<string, boolean>;
  readonly seconds: number;
}

export interface BenchModule {
  readonly name: string;
  readonly description: string;
  run(opts: BenchOptions): Promise<BenchResult>;
}

/**
 * Logs a finished row as a progress line and returns it: a bench stopped by a time box (the GPU
 * check's steps) still leaves the rows it measured in its log.
 */
export function logRow(opts: BenchOptions, row: BenchRow): BenchRow {
  opts.log(`  = ${row.name}: ${row.value ?? '-'} ${row.unit}${row.note ? ` (${row.note})` : ''}`);
  return row;
}

// ---- the machine header -------------------------------------------------------------------------

export interface MachineHeader {
  readonly date: string;
  readonly device: Device;
  readonly node: string;
  readonly platform: string;
  readonly git: { readonly commit: string | null; readonly dirty: boolean | null };
  readonly cpu: { readonly model: string; readonly cores: number; readonly flags: string[] };
  readonly memoryGiB: number;
  /** os.loadavg() at the start: 1, 5, 15 minutes (a loaded shared machine skews CPU numbers). */
  readonly loadAverage: number[];
  readonly backend: {
    readonly binary: string;
    readonly compiled: string[];
    readonly available: string[];
    readonly cudaNotUsedBecause: string | null;
    readonly cudaRuntime: string | null;
    /** CUDA driver API version (e.g. 12.4). */
    readonly cudaDriver: string | null;
    /** NVIDIA driver version from nvidia-smi (e.g. 550.54.15), when there is one. */
    readonly nvidiaDriver: string | null;
    readonly gpus: { name: string; computeCapability: string; memoryGiB: number }[];
  };
}

const repoRoot = path.resolve(__dirname, '..', '..');

function tryExec(cmd: string, args: string[], cwd?: string): string | null {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
  } catch {
    return null;
  }
}

/** CPU model name (from /proc/cpuinfo where there is one) and the SIMD flags that matter for GEMM. */
function cpuInfo(): MachineHeader['cpu'] {
  let model = os.cpus()[0]?.model ?? 'unknown';
  let flags: string[] = [];
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const name = /^model name\s*:\s*(.+)$/m.exec(text);
    if (name?.[1]) model = name[1].trim();
    const f = /^flags\s*:\s*(.+)$/m.exec(text);
    if (f?.[1]) {
      const have = new Set(f[1].split(/\s+/));
      flags = ['avx', 'avx2', 'fma', 'f16c', 'avx512f', 'avx512_bf16', 'amx_bf16'].filter((x) => have.has(x));
    }
  } catch {
    // Not Linux: os.cpus() is all there is.
  }
  return { model, cores: os.cpus().length, flags };
}

export function machineHeader(device: Device): MachineHeader {
  const b = backends();
  const status = tryExec('git', ['status', '--porcelain', '--untracked-files=no'], repoRoot);
  const smi = b.gpus.length > 0 ? tryExec('nvidia-smi', ['--query-gpu=driver_version', '--format=csv,noheader']) : null;
  return {
    date: new Date().toISOString(),
    device,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    git: { commit: tryExec('git', ['rev-parse', 'HEAD'], repoRoot), dirty: status === null ? null : status.length > 0 },
    cpu: cpuInfo(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
    backend: {
      binary: b.binary,
      compiled: [...b.compiled],
      available: [...b.available],
      cudaNotUsedBecause: device === 'cuda' ? null : (b.cudaReason ?? (b.available.includes('cuda') ? 'not requested' : null)),
      cudaRuntime: b.cudaRuntimeVersion ?? null,
      cudaDriver: b.cudaDriverVersion ?? null,
      nvidiaDriver: smi?.split('\n')[0] ?? null,
      gpus: b.gpus.map((g) => ({ name: g.name, computeCapability: g.computeCapability, memoryGiB: Math.round((g.totalMemory / 2 ** 30) * 10) / 10 })),
    },
  };
}

// ---- timing ---------------------------------------------------------------------------------------

export interface Timing {
  /** Median over the samples, milliseconds per call. */
  readonly medianMs: number;
  readonly minMs: number;
  readonly maxMs: number;
  readonly samples: number;
  /** Calls per sample (their mean is one sample; amortises the device sync). */
  readonly callsPerSample: number;
  /** measureKernel on CUDA: the GPU time of the kernels themselves, from a separate timed pass. */
  readonly kernel?: KernelTime;
}

/**
 * GPU time per call of the kernels a call launched, from CUDA events around each launch (one extra
 * pass of the calls with cudaKernelProfile's timing switched on): what the kernels cost apart from
 * the host's time to call them. Wall time per call minus this is host overhead the GPU waited out
 * (when wall > span) or overlapped. Copies (uploads, read-backs) are not kernels and not included.
 */
export interface KernelTime {
  /** Sum of the kernels' intervals, microseconds per call. */
  readonly usPerCall: number;
  /** First launch's start to last launch's end, per call: kernels plus the gaps between them. */
  readonly spanUsPerCall: number;
  readonly launchesPerCall: number;
  readonly calls: number;
  /** Per kernel (the most time first, at most 4): microseconds and launches per call. */
  readonly kernels: readonly { readonly name: string; readonly usPerCall: number; readonly launchesPerCall: number }[];
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export interface MeasureOptions {
  readonly warmup?: number;
  readonly samples?: number;
  /** Calls per sample (default 1). */
  readonly calls?: number;
  /** Waits for the device after a sample's calls (CUDA kernels are asynchronous). */
  readonly sync?: () => void;
  /** measureKernel: where the kernel runs; on the CPU the calls are synchronous, sync is skipped. */
  readonly device?: Device;
  /** measureKernel on CUDA: also time the kernels with CUDA events in a separate pass (default true). */
  readonly kernelTime?: boolean;
}

/** Times `fn`: `warmup` untimed calls, then `samples` samples of `calls` calls each; median per call. */
export async function measure(fn: () => unknown, opts: MeasureOptions = {}): Promise<Timing> {
  const warmup = opts.warmup ?? 1;
  const samples = Math.max(1, opts.samples ?? 5);
  const calls = Math.max(1, opts.calls ?? 1);
  // Synchronous ops are not awaited (a microtask per call would show in microsecond timings).
  const call = async (): Promise<void> => {
    const r = fn();
    if (r instanceof Promise) await r;
  };
  for (let i = 0; i < warmup; i++) await call();
  opts.sync?.();
  const ms: number[] = [];
  for (let s = 0; s < samples; s++) {
    const t0 = performance.now();
    for (let c = 0; c < calls; c++) {
      const r = fn();
      if (r instanceof Promise) await r;
    }
    opts.sync?.();
    ms.push((performance.now() - t0) / calls);
  }
  return { medianMs: median(ms), minMs: Math.min(...ms), maxMs: Math.max(...ms), samples, callsPerSample: calls };
}

/** Shortest benchmark.js sample: long against the timer's resolution, short enough for --quick. */
const MIN_SAMPLE_S = 0.02;

/**
 * Times a JS-visible kernel call with the `benchmark` package: `warmup` untimed calls, then
 * benchmark.js's calibrated cycles, at least `samples` of them (each at least MIN_SAMPLE_S long).
 * One benchmark op is `calls` calls then `sync()`; with a sync (CUDA kernels are asynchronous) or
 * an asynchronous fn the op runs in benchmark.js's deferred mode, so the device wait is inside the
 * timing. Same Timing as measure() (per call). The end-to-end benches keep measure(): their calls
 * change state (KV caches) and must run an exact number of times.
 */
export async function measureKernel(fn: () => unknown, opts: MeasureOptions = {}): Promise<Timing> {
  const calls = Math.max(1, opts.calls ?? 1);
  const sync = opts.device === 'cpu' ? undefined : opts.sync;
  let isAsync = false;
  for (let i = 0; i < Math.max(1, opts.warmup ?? 1); i++) {
    const r = fn();
    if (r instanceof Promise) {
      isAsync = true;
      await r;
    }
  }
  sync?.();
  const deferred = isAsync || sync !== undefined;
  const bench = new Benchmark({
    defer: deferred,
    minSamples: Math.max(1, opts.samples ?? 5),
    minTime: MIN_SAMPLE_S,
    maxTime: 0,
    initCount: 1,
    fn: deferred
      ? (d: Benchmark.Deferred) => {
          void (async () => {
            for (let c = 0; c < calls; c++) {
              const r = fn();
              if (r instanceof Promise) await r;
            }
            sync?.();
          })().then(() => d.resolve());
        }
      : () => {
          for (let c = 0; c < calls; c++) fn();
        },
  });
  await new Promise<void>((resolve, reject) => {
    bench.on('complete', () => resolve());
    bench.on('error', () => reject(bench.error));
    bench.run({ async: deferred });
  });
  // stats.sample: seconds per op (op = `calls` calls).
  const ms = bench.stats.sample.map((sec) => (sec * 1000) / calls);
  const timing: Timing = { medianMs: median(ms), minMs: Math.min(...ms), maxMs: Math.max(...ms), samples: ms.length, callsPerSample: calls };
  const kernel = opts.device === 'cuda' && opts.kernelTime !== false ? await timeKernels(fn, Math.max(3, calls)) : undefined;
  return kernel ? { ...timing, kernel } : timing;
}

/**
 * The kernels' GPU time over `calls` calls of fn (KernelTime), with the profiler's timing switched
 * on for this pass only; undefined where it cannot be on (no usable GPU, an older binary) or the
 * calls launched nothing.
 */
export async function timeKernels(fn: () => unknown, calls: number): Promise<KernelTime | undefined> {
  const was = setCudaKernelProfiling(true);
  try {
    if (!cudaKernelProfile({ reset: true }).enabled) return undefined;  // also drops earlier entries
    for (let c = 0; c < calls; c++) {
      const r = fn();
      if (r instanceof Promise) await r;
    }
    const p = cudaKernelProfile({ reset: true });  // waits for the stream
    if (p.launches === 0 || p.truncated) return undefined;
    return {
      usPerCall: p.busyUs / calls,
      spanUsPerCall: p.spanUs / calls,
      launchesPerCall: p.launches / calls,
      calls,
      kernels: p.rows.slice(0, 4).map((k) => ({ name: k.name, usPerCall: k.totalUs / calls, launchesPerCall: k.calls / calls })),
    };
  } finally {
    setCudaKernelProfiling(was);
  }
}


/**
 * Least process CPU time (user + system, all threads) of one call of `fn`, in ms, over `samples`
 * calls: on a machine shared with other processes a stabler figure than wall time (with
 * SPECDEC_CPU_THREADS=1, no pool and no spinning, it is the work itself).
 */
export async function cpuMs(fn: () => unknown, samples: number): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < samples; i++) {
    const c0 = process.cpuUsage();
    const r = fn();
    if (r instanceof Promise) await r;
    const c = process.cpuUsage(c0);
    best = Math.min(best, (c.user + c.system) / 1000);
  }
  return best;
}

/**
 * Waits for the work queued on t's device by reading one element back (the native ops have no
 * explicit sync; a copy on the same stream waits for every earlier kernel). No-op on the CPU.
 */
export function syncTensor(t: Tensor): void {
  if (t.device !== 'cuda') return;
  const flat = t.view([t.numel]);
  const one = flat.rows(0, 1);
  one.toArray();
  one.dispose();
  flat.dispose();
}

/** A `sync` for measure() that waits on t's device. */
export function syncOn(t: Tensor): () => void {
  return () => syncTensor(t);
}

// ---- random inputs and checkpoints -------------------------------------------------------------------

/** xorshift32 stream in [0, 1): fast enough to fill 100M-element buffers. */
export function xorshift(seed: number): () => number {
  let s = seed | 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

/** n uniform values in [lo, hi). */
export function randomF32(n: number, rand: () => number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  const w = hi - lo;
  for (let i = 0; i < n; i++) a[i] = lo + w * rand();
  return a;
}

export interface RandomLlamaSpec {
  readonly vocab: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly maxPositions?: number;
}

/** The ~100M-parameter random Llama of the plain-decode and speculative benches (bf16, tied embeddings). */
export const LLAMA_100M: RandomLlamaSpec = { vocab: 32000, hidden: 768, intermediate: 2048, layers: 12, heads: 12, kvHeads: 4 };

/**
 * Writes a random bf16 Llama checkpoint (uniform weights scaled by 1/sqrt(fan-in), unit norms, tied
 * embeddings), one shard per layer to keep peak memory low. Returns the parameter count.
 */
export function writeRandomLlama(dir: string, spec: RandomLlamaSpec, seed: number, opts: { readonly zeroBlockOutputs?: boolean; readonly untied?: boolean } = {}): number {
  fs.mkdirSync(dir, { recursive: true });
  const H = spec.hidden;
  const D = H / spec.heads;
  const KV = spec.kvHeads * D;
  const rand = xorshift(seed);
  const weightMap: Record<string, string> = {};
  let params = 0;
  const shard = (file: string, tensors: Record<string, number[]>): void => {
    const entries: Record<string, SafetensorsEntry> = {};
    for (const [name, shape] of Object.entries(tensors)) {
      const n = shape.reduce((x, y) => x * y, 1);
      const data = new Uint16Array(n);
      if (shape.length === 1) data.fill(f32ToBf16Bits(1));
      else if (opts.zeroBlockOutputs === true && /o_proj|down_proj/.test(name)) data.fill(0);
      else {
        const a = Math.sqrt(3 / (shape[shape.length - 1] as number));
        for (let i = 0; i < n; i++) data[i] = f32ToBf16Bits((rand() * 2 - 1) * a);
      }
      entries[name] = { dtype: 'BF16', shape, data };
      weightMap[name] = file;
      params += n;
    }
    writeSafetensors(path.join(dir, file), entries);
  };
  shard('embed.safetensors', { 'model.embed_tokens.weight': [spec.vocab, H], 'model.norm.weight': [H], ...(opts.untied === true ? { 'lm_head.weight': [spec.vocab, H] } : {}) });
  for (let l = 0; l < spec.layers; l++) {
    const p = `model.layers.${l}.`;
    shard(`layer-${l}.safetensors`, {
      [p + 'input_layernorm.weight']: [H],
      [p + 'self_attn.q_proj.weight']: [H, H],
      [p + 'self_attn.k_proj.weight']: [KV, H],
      [p + 'self_attn.v_proj.weight']: [KV, H],
      [p + 'self_attn.o_proj.weight']: [H, H],
      [p + 'post_attention_layernorm.weight']: [H],
      [p + 'mlp.gate_proj.weight']: [spec.intermediate, H],
      [p + 'mlp.up_proj.weight']: [spec.intermediate, H],
      [p + 'mlp.down_proj.weight']: [H, spec.intermediate],
    });
  }
  const config = {
    architectures: ['LlamaForCausalLM'],
    vocab_size: spec.vocab,
    hidden_size: H,
    intermediate_size: spec.intermediate,
    num_hidden_layers: spec.layers,
    num_attention_heads: spec.heads,
    num_key_value_heads: spec.kvHeads,
    max_position_embeddings: spec.maxPositions ?? 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: opts.untied !== true,
    torch_dtype: 'bfloat16',
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return params;
}

/** bf16 tensors filled by a function of the index, and uniform weights scaled by 1/sqrt(fan-in). */
function bf16Tensors(seed: number): {
  entries: Record<string, SafetensorsEntry>;
  put: (name: string, shape: number[], f: (i: number) => number) => void;
  uni: (fanIn: number) => () => number;
} {
  const rand = xorshift(seed);
  const entries: Record<string, SafetensorsEntry> = {};
  const put = (name: string, shape: number[], f: (i: number) => number): void => {
    const n = shape.reduce((x, y) => x * y, 1);
    const data = new Uint16Array(n);
    for (let i = 0; i < n; i++) data[i] = f32ToBf16Bits(f(i));
    entries[name] = { dtype: 'BF16', shape, data };
  };
  return { entries, put, uni: (k) => () => (rand() * 2 - 1) * Math.sqrt(3 / k) };
}

/**
 * An EAGLE-1/2 head (SafeAILab's layout, bf16, one layer) for a model of `spec`'s shapes: random, or
 * (echo) fc = [s I | 0] with o_proj and down_proj zero, so that it drafts s embed(token) -- the next
 * token exactly, for a target whose blocks add nothing (writeRandomLlama's zeroBlockOutputs). s =
 * 64 sqrt(H) makes the draft confident (writeRandomLlama's embeddings have an RMS of 1 / sqrt(H)).
 */
export function writeRandomEagle(dir: string, spec: RandomLlamaSpec, seed: number, echo: boolean): void {
  fs.mkdirSync(dir, { recursive: true });
  const H = spec.hidden;
  const D = H / spec.heads;
  const KV = spec.kvHeads * D;
  const { entries, put, uni } = bf16Tensors(seed);
  const zero = (): number => 0;
  const s = 64 * Math.sqrt(H);
  put('fc.weight', [H, 2 * H], echo ? (i) => (i % (2 * H) === Math.floor(i / (2 * H)) ? s : 0) : uni(2 * H));
  put('fc.bias', [H], zero);
  put('layers.0.self_attn.q_proj.weight', [H, H], uni(H));
  put('layers.0.self_attn.k_proj.weight', [KV, H], uni(H));
  put('layers.0.self_attn.v_proj.weight', [KV, H], uni(H));
  put('layers.0.self_attn.o_proj.weight', [H, H], echo ? zero : uni(H));
  put('layers.0.post_attention_layernorm.weight', [H], () => 1);
  put('layers.0.mlp.gate_proj.weight', [spec.intermediate, H], uni(H));
  put('layers.0.mlp.up_proj.weight', [spec.intermediate, H], uni(H));
  put('layers.0.mlp.down_proj.weight', [H, spec.intermediate], echo ? zero : uni(spec.intermediate));
  writeSafetensors(path.join(dir, 'model.safetensors'), entries);
  const config = {
    architectures: ['LlamaForCausalLM'], vocab_size: spec.vocab, hidden_size: H, intermediate_size: spec.intermediate,
    num_hidden_layers: 1, num_attention_heads: spec.heads, num_key_value_heads: spec.kvHeads,
    max_position_embeddings: spec.maxPositions ?? 2048, rms_norm_eps: 1e-5, rope_theta: 10000, bias: true, torch_dtype: 'bfloat16',
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
}

/**
 * A random EAGLE-3 head (SafeAILab's layout, bf16) for a model of `spec`'s shapes, with a draft
 * vocabulary of the first `draftVocab` ids (d2t zero).
 */
export function writeRandomEagle3(dir: string, spec: RandomLlamaSpec, seed: number, draftVocab: number): void {
  fs.mkdirSync(dir, { recursive: true });
  const H = spec.hidden;
  const D = H / spec.heads;
  const KV = spec.kvHeads * D;
  const { entries, put, uni } = bf16Tensors(seed);
  const one = (): number => 1;
  put('fc.weight', [H, 3 * H], uni(3 * H));
  for (const n of ['hidden_norm', 'input_layernorm', 'post_attention_layernorm']) put(`midlayer.${n}.weight`, [H], one);
  put('midlayer.self_attn.q_proj.weight', [H, 2 * H], uni(2 * H));
  put('midlayer.self_attn.k_proj.weight', [KV, 2 * H], uni(2 * H));
  put('midlayer.self_attn.v_proj.weight', [KV, 2 * H], uni(2 * H));
  put('midlayer.self_attn.o_proj.weight', [H, H], uni(H));
  put('midlayer.mlp.gate_proj.weight', [spec.intermediate, H], uni(H));
  put('midlayer.mlp.up_proj.weight', [spec.intermediate, H], uni(H));
  put('midlayer.mlp.down_proj.weight', [H, spec.intermediate], uni(spec.intermediate));
  put('norm.weight', [H], one);
  put('lm_head.weight', [draftVocab, H], uni(H));
  entries['d2t'] = { dtype: 'I64', shape: [draftVocab], data: new BigInt64Array(draftVocab) };
  writeSafetensors(path.join(dir, 'model.safetensors'), entries);
  const config = {
    architectures: ['LlamaForCausalLMEagle3'], vocab_size: spec.vocab, draft_vocab_size: draftVocab, hidden_size: H,
    intermediate_size: spec.intermediate, num_hidden_layers: 1, num_attention_heads: spec.heads, num_key_value_heads: spec.kvHeads,
    max_position_embeddings: spec.maxPositions ?? 2048, rms_norm_eps: 1e-5, rope_theta: 10000, torch_dtype: 'bfloat16',
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
}

/** Random Medusa heads (FasterDecoding layout, bf16) for a model of hidden size H and vocabulary V. */
export function writeRandomMedusa(dir: string, numHeads: number, numLayers: number, H: number, V: number, seed: number): void {
  fs.mkdirSync(dir, { recursive: true });
  const rand = xorshift(seed);
  const bf16 = (n: number, a: number): Uint16Array => {
    const out = new Uint16Array(n);
    for (let i = 0; i < n; i++) out[i] = f32ToBf16Bits((rand() * 2 - 1) * a);
    return out;
  };
  const t: Record<string, SafetensorsEntry> = {};
  const a = Math.sqrt(3 / H);
  for (let h = 0; h < numHeads; h++) {
    for (let l = 0; l < numLayers; l++) {
      t[`${h}.${l}.linear.weight`] = { dtype: 'BF16', shape: [H, H], data: bf16(H * H, a) };
      t[`${h}.${l}.linear.bias`] = { dtype: 'BF16', shape: [H], data: bf16(H, a) };
    }
    t[`${h}.${numLayers}.weight`] = { dtype: 'BF16', shape: [V, H], data: bf16(V * H, a) };
  }
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ medusa_num_heads: numHeads, medusa_num_layers: numLayers, base_model_name_or_path: 'random' }));
  writeSafetensors(path.join(dir, 'medusa_lm_head.safetensors'), t);
}

/** A fresh temp dir removed by the returned function. */
export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `specdec-bench-${prefix}-`));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

// ---- output ----------------------------------------------------------------------------------------

/** Rounds numbers for JSON (3 significant decimals is plenty for timings). */
export function round(x: number, digits = 3): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/**
 * Standalone entry of a bench file: `node dist/bench/x.bench.js [--device D] [--quick] [--out F]`
 * is `specdec bench --only x --json ...`: one JSON report on stdout.
 */
export async function standalone(mod: BenchModule, argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  // Loaded lazily: lib/cli/bench loads run.ts, which imports every bench module.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { benchCommand } = require('../lib/cli/bench') as typeof import('../lib/cli/bench');
  try {
    process.exitCode = await benchCommand(['--only', mod.name, '--json', ...argv]);
  } catch (e) {
    const err = e as Error & { code?: string };
    process.stderr.write(`${mod.name} bench: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
    process.exitCode = 1;
  }
}
