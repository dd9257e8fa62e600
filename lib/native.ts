// Finds and loads the native addon. Order: SPECDEC_BINARY (a path) -> the local build (bindings)
// -> prebuilds/<platform>-<arch>/ (CUDA variant matching the driver first, then CPU) -> one error
// listing every candidate, why it failed, and what to do.
import * as fs from 'fs';
import * as path from 'path';

/// <reference path="../typings/native.d.ts" />
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

/** Prebuilt candidates: CUDA variants (newest CUDA first) then the CPU build. */
function prebuildCandidates(root: string): string[] {
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!fs.existsSync(dir)) return [dir];
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.node'));
  const cuda = files.filter((f) => /cuda/.test(f)).sort().reverse();
  const cpu = files.filter((f) => !/cuda/.test(f));
  return [...cuda, ...cpu].map((f) => path.join(dir, f));
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
  for (const p of prebuildCandidates(root)) {
    if (p.endsWith('.node')) {
      const b = tryRequire(p, attempts);
      // A CUDA prebuild whose runtime finds no usable device is skipped in favour of the CPU one.
      if (b && (!/cuda/.test(path.basename(p)) || b.backendInfo().cudaAvailable)) return { binding: b, path: p, attempts };
      if (b) attempts.push({ candidate: p, error: `loaded, but CUDA unusable: ${b.backendInfo().cudaReason}` });
    } else {
      attempts.push({ candidate: p, error: 'no prebuilt binaries for this platform' });
    }
  }
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
