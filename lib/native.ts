// Finds and loads the native addon. Order: SPECDEC_BINARY (a path) -> the local build (bindings)
// -> prebuilds/<platform>-<arch>/: the newest CUDA variant the driver can run (the CPU prebuild
// asks libcuda for the driver's CUDA version first), else the CPU build -> one error listing every
// candidate, why it failed, and what to do.
// The references come first (before any import) so that they stay in the emitted .d.ts: without
// them a user's `tsc` cannot see the SpecdecNative namespace of the shipped typings.
/// <reference path="../typings/native.d.ts" preserve="true" />
/// <reference path="../typings/kv.d.ts" preserve="true" />
/// <reference path="../typings/layers.d.ts" preserve="true" />
/// <reference path="../typings/model.d.ts" preserve="true" />
/// <reference path="../typings/sampling.d.ts" preserve="true" />
/// <reference path="../typings/train.d.ts" preserve="true" />
import * as fs from 'fs';
import * as path from 'path';

export type NativeBinding = SpecdecNative.NativeBinding;

export interface LoadAttempt {
  readonly candidate: string;
  readonly error: string;
}

export interface LoadedBinding {
  readonly binding: NativeBinding;
  readonly path: string;
  readonly attempts: readonly LoadAttempt[];
}

export class NativeLoadError extends Error {
  readonly code = 'E_LOAD';
  constructor(readonly attempts: readonly LoadAttempt[]) {
    super(
      'specdec: could not load the native addon. Tried:\n' +
        attempts.map((a) => `  - ${a.candidate}: ${a.error}`).join('\n') +
        '\nTo fix: run `npm run build:native` in the specdec package (needs cmake and a C++17 compiler;' +
        ' nvcc for the CUDA backend), or point SPECDEC_BINARY at a built specdec.node.',
    );
    this.name = 'NativeLoadError';
  }
}

export const packageRoot = path.resolve(__dirname, '..', '..');

function tryRequire(file: string, attempts: LoadAttempt[]): NativeBinding | undefined {
  if (!fs.existsSync(file)) {
    attempts.push({ candidate: file, error: 'not found' });
    return undefined;
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const b = require(file) as NativeBinding;
    if (typeof b.backendInfo !== 'function' || typeof b.Tensor !== 'function') {
      attempts.push({ candidate: file, error: 'not a specdec addon (missing exports)' });
      return undefined;
    }
    return b;
  } catch (e) {
    attempts.push({ candidate: file, error: (e as Error).message.split('\n')[0] ?? String(e) });
    return undefined;
  }
}

/** A CUDA prebuild's file name carries its toolkit version: specdec.cuda<major>.<minor>.node. */
const CUDA_VARIANT = /^specdec\.cuda(\d+)\.(\d+)\.node$/;

/** The toolkit version of a CUDA prebuild file name in cuDriverGetVersion's encoding (12.4 -> 12040), or undefined. */
export function cudaVariantVersion(file: string): number | undefined {
  const m = CUDA_VARIANT.exec(path.basename(file));
  return m ? Number(m[1]) * 1000 + Number(m[2]) * 10 : undefined;
}

/** 12040 -> '12.4', 12100 -> '12.10'. */
export function formatCudaVersion(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/**
 * Orders the CUDA prebuilds a driver can run, newest first, comparing versions as numbers
 * (12.10 > 12.4). A variant runs when its toolkit version is at most the driver's: the kernels
 * carry PTX for newer GPUs, and JIT-compiling PTX needs a driver at least as new as the toolkit
 * that wrote it. `driverVersion` is cuDriverGetVersion's value, 0 for no driver.
 */
export function chooseCudaVariants(
  files: readonly string[],
  driverVersion: number,
  noDriverReason = 'no CUDA driver',
): { usable: string[]; skipped: LoadAttempt[] } {
  const variants = files
    .map((file) => ({ file, version: cudaVariantVersion(file) }))
    .filter((v): v is { file: string; version: number } => v.version !== undefined)
    .sort((a, b) => b.version - a.version);
  const usable: string[] = [];
  const skipped: LoadAttempt[] = [];
  for (const v of variants) {
    if (driverVersion <= 0) skipped.push({ candidate: v.file, error: `skipped: ${noDriverReason}` });
    else if (v.version > driverVersion) {
      skipped.push({ candidate: v.file, error: `skipped: needs a driver for CUDA >= ${formatCudaVersion(v.version)}, the driver supports CUDA ${formatCudaVersion(driverVersion)}` });
    } else usable.push(v.file);
  }
  return { usable, skipped };
}

/** The prebuilt binaries for this platform: the newest runnable CUDA variant, else the CPU build. */
function loadPrebuild(root: string, attempts: LoadAttempt[]): LoadedBinding | undefined {
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!fs.existsSync(dir)) {
    attempts.push({ candidate: dir, error: 'no prebuilt binaries for this platform' });
    return undefined;
  }
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.node')).sort();
  const cudaFiles = files.filter((f) => CUDA_VARIANT.test(f)).map((f) => path.join(dir, f));
  // The CPU build is loaded first: it is the fallback, and it asks the driver (dlopen of libcuda)
  // which CUDA versions this machine can run, before any CUDA binary is touched.
  let cpu: { binding: NativeBinding; path: string } | undefined;
  for (const f of files.filter((x) => !/cuda/.test(x))) {
    const p = path.join(dir, f);
    const b = tryRequire(p, attempts);
    if (b) {
      cpu = { binding: b, path: p };
      break;
    }
  }
  if (cudaFiles.length > 0) {
    const probe = cpu?.binding.cudaDriverProbe?.() ?? { version: 0, reason: 'no CPU prebuild to ask the driver with' };
    const { usable, skipped } = chooseCudaVariants(cudaFiles, probe.version, probe.reason);
    attempts.push(...skipped);
    for (const p of usable) {
      const b = tryRequire(p, attempts);
      // A CUDA prebuild whose runtime finds no usable device is skipped in favour of the CPU one.
      if (b && b.backendInfo().cudaAvailable) return { binding: b, path: p, attempts };
      if (b) attempts.push({ candidate: p, error: `loaded, but CUDA unusable: ${b.backendInfo().cudaReason}` });
    }
  }
  if (cpu) return { ...cpu, attempts };
  if (files.length === 0) attempts.push({ candidate: dir, error: 'no .node files' });
  return undefined;
}

/** Loads the addon; `env` and `root` are injectable for tests. */
export function loadBinding(env: NodeJS.ProcessEnv = process.env, root: string = packageRoot): LoadedBinding {
  const attempts: LoadAttempt[] = [];
  const override = env['SPECDEC_BINARY'];
  if (override) {
    const p = path.resolve(override);
    const b = tryRequire(p, attempts);
    if (b) return { binding: b, path: p, attempts };
    // An explicit override that fails is an error: do not silently fall back to another binary.
    throw new NativeLoadError(attempts.map((a) => ({ ...a, candidate: `SPECDEC_BINARY=${a.candidate}` })));
  }
  for (const rel of ['build/Release/specdec.node', 'build/Debug/specdec.node', 'build/default/specdec.node']) {
    const b = tryRequire(path.join(root, rel), attempts);
    if (b) return { binding: b, path: path.join(root, rel), attempts };
  }
  try {
    // `bindings` knows more layouts (node-gyp's, out/, etc.).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => NativeBinding;
    const b = bindings({ bindings: 'specdec.node', module_root: root });
    if (typeof b.backendInfo === 'function') return { binding: b, path: 'bindings(specdec.node)', attempts };
  } catch (e) {
    attempts.push({ candidate: 'bindings("specdec.node")', error: (e as Error).message.split('\n')[0] ?? String(e) });
  }
  const pre = loadPrebuild(root, attempts);
  if (pre) return pre;
  throw new NativeLoadError(attempts);
}

let cached: LoadedBinding | undefined;

/** The process-wide binding (loaded on first use). */
export function native(): NativeBinding {
  if (!cached) cached = loadBinding();
  return cached.binding;
}

export function loadedBinding(): LoadedBinding {
  native();
  return cached as LoadedBinding;
}
