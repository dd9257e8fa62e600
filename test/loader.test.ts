import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { chooseCudaVariants, cudaVariantVersion, loadBinding, loadedBinding, NativeLoadError, packageRoot } from '../lib/native';
import { backends, resolveDevice } from '../lib/backend';

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-loader-'));
}

describe('native loader', () => {
  it('loads the local build and reports where it came from', () => {
    const l = loadedBinding();
    assert.ok(fs.existsSync(l.path) || l.path.startsWith('bindings'), l.path);
    assert.strictEqual(typeof l.binding.backendInfo, 'function');
  });

  it('a missing SPECDEC_BINARY is one error naming the candidate and the fix', () => {
    const missing = path.join(tmpdir(), 'nope.node');
    assert.throws(
      () => loadBinding({ SPECDEC_BINARY: missing }),
      (e: unknown) => {
        assert.ok(e instanceof NativeLoadError);
        assert.strictEqual(e.code, 'E_LOAD');
        assert.match(e.message, new RegExp(`SPECDEC_BINARY=${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not found`));
        assert.match(e.message, /npm run build:native/);
        return true;
      },
    );
  });

  it('a broken SPECDEC_BINARY (not a shared object) fails without falling back', () => {
    const bad = path.join(tmpdir(), 'broken.node');
    fs.writeFileSync(bad, 'this is not an ELF file');
    assert.throws(() => loadBinding({ SPECDEC_BINARY: bad }), (e: unknown) => {
      assert.ok(e instanceof NativeLoadError);
      assert.strictEqual(e.attempts.length, 1);
      assert.match(e.message, /broken\.node: .*(invalid ELF|file too short|not a|cannot open)/i);
      return true;
    });
  });

  it('a module that is not specdec is rejected', () => {
    const dir = tmpdir();
    const other = path.join(dir, 'other.js');
    fs.writeFileSync(other, 'module.exports = { hello: 1 };');
    assert.throws(() => loadBinding({ SPECDEC_BINARY: other }), /not a specdec addon/);
  });

  it('with no build and no prebuilds, lists every candidate tried', () => {
    const empty = tmpdir();
    assert.throws(() => loadBinding({}, empty), (e: unknown) => {
      assert.ok(e instanceof NativeLoadError);
      const tried = e.attempts.map((a) => a.candidate).join('\n');
      assert.match(tried, /build\/Release\/specdec\.node/);
      assert.match(tried, /bindings/);
      assert.match(tried, /prebuilds/);
      return true;
    });
  });

  it('finds a prebuilt CPU binary under prebuilds/<platform>-<arch>/', () => {
    const root = tmpdir();
    const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(loadedBinding().path, path.join(dir, 'specdec.node'));
    const l = loadBinding({}, root);
    assert.strictEqual(l.path, path.join(dir, 'specdec.node'));
  });
});

describe('CUDA prebuild choice', () => {
  const files = ['specdec.cuda12.4.node', 'specdec.cuda12.10.node', 'specdec.cuda13.0.node', 'specdec.cuda11.8.node'];

  it('compares versions as numbers: 12.10 > 12.4', () => {
    assert.strictEqual(cudaVariantVersion('specdec.cuda12.10.node'), 12100);
    assert.strictEqual(cudaVariantVersion('/x/specdec.cuda12.4.node'), 12040);
    assert.strictEqual(cudaVariantVersion('specdec.node'), undefined);
    assert.ok(cudaVariantVersion('specdec.cuda12.10.node')! > cudaVariantVersion('specdec.cuda12.4.node')!);
  });

  it('takes the newest variant the driver can run, newest first, and says why the others were skipped', () => {
    // A CUDA 12.8 driver (cuDriverGetVersion 12080): 13.0 and nothing newer than 12.8.
    const r = chooseCudaVariants(files, 12080);
    assert.deepStrictEqual(r.usable, ['specdec.cuda12.4.node', 'specdec.cuda11.8.node']);
    assert.deepStrictEqual(r.skipped.map((s) => s.candidate), ['specdec.cuda13.0.node', 'specdec.cuda12.10.node']);
    assert.match(r.skipped[1]!.error, /needs a driver for CUDA >= 12\.10, the driver supports CUDA 12\.8/);
    assert.deepStrictEqual(chooseCudaVariants(files, 12100).usable[0], 'specdec.cuda12.10.node');
    assert.deepStrictEqual(chooseCudaVariants(files, 13020).usable, ['specdec.cuda13.0.node', 'specdec.cuda12.10.node', 'specdec.cuda12.4.node', 'specdec.cuda11.8.node']);
    assert.deepStrictEqual(chooseCudaVariants(files, 11000).usable, []);
  });

  it('no driver: every CUDA variant is skipped with the reason', () => {
    const r = chooseCudaVariants(files, 0, 'no NVIDIA driver: libcuda.so.1 not found');
    assert.deepStrictEqual(r.usable, []);
    assert.strictEqual(r.skipped.length, 4);
    for (const s of r.skipped) assert.match(s.error, /skipped: no NVIDIA driver/);
  });

  it('the addon asks libcuda for the driver version (here: none, with the reason)', function () {
    const probe = loadedBinding().binding.cudaDriverProbe?.();
    assert.ok(probe, 'the addon exports cudaDriverProbe');
    if (probe.version > 0) {
      assert.ok(probe.version >= 10000 && probe.version % 10 === 0, `driver version ${probe.version}`);
      this.skip(); // a machine with a driver: the no-driver path cannot be checked here
    }
    assert.strictEqual(probe.version, 0);
    assert.match(probe.reason ?? '', /libcuda/);
  });

  it('prebuilds/ with a CUDA variant and no driver: loads the CPU build and records why', function () {
    if ((loadedBinding().binding.cudaDriverProbe?.().version ?? 0) > 0) this.skip();
    const root = tmpdir();
    const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(loadedBinding().path, path.join(dir, 'specdec.node'));
    // Never loaded: skipped on the driver's answer alone (not even a valid binary).
    fs.writeFileSync(path.join(dir, 'specdec.cuda12.10.node'), 'not a binary');
    const l = loadBinding({}, root);
    assert.strictEqual(l.path, path.join(dir, 'specdec.node'));
    const skip = l.attempts.find((a) => a.candidate.endsWith('specdec.cuda12.10.node'));
    assert.ok(skip, l.attempts.map((a) => a.candidate).join('\n'));
    assert.match(skip.error, /skipped: no NVIDIA driver/);
  });
});

describe('backends', () => {
  it('serves the CPU backend and explains why CUDA is not in use on a machine without a GPU', function () {
    const r = backends();
    assert.ok(r.available.includes('cpu'));
    if (r.available.includes('cuda')) this.skip(); // a GPU machine: nothing to explain
    assert.strictEqual(r.default, 'cpu');
    assert.ok(r.cudaReason && r.cudaReason.length > 10, `reason: ${r.cudaReason}`);
    assert.throws(() => resolveDevice('cuda'), (e: unknown) => {
      assert.strictEqual((e as { code?: string }).code, 'E_NO_CUDA');
      assert.ok((e as Error).message.includes(r.cudaReason as string));
      return true;
    });
    assert.strictEqual(resolveDevice('auto'), 'cpu');
  });

  it('a binary built with nvcc carries sm_80 and sm_90 machine code and compute_90 PTX', function () {
    const r = backends();
    if (!r.compiled.includes('cuda')) this.skip();
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { cudaArchs } = require(path.join(packageRoot, 'scripts', 'cuda-archs.js')) as { cudaArchs: (f: string) => string[] };
    const archs = cudaArchs(loadedBinding().path);
    for (const a of ['sm_80', 'sm_90', 'compute_90']) assert.ok(archs.includes(a), `${a} missing from ${archs.join(',')}`);
    assert.deepStrictEqual([...r.cudaArchs].sort(), ['compute_90', 'sm_80', 'sm_90']);
  });

  it('the binary does not need libcudart at load time (static CUDA runtime)', function () {
    const r = backends();
    if (!r.compiled.includes('cuda') || process.platform !== 'linux') this.skip();
    const ldd = spawnSync('ldd', [loadedBinding().path], { encoding: 'utf8' });
    if (ldd.status !== 0) this.skip();
    assert.doesNotMatch(ldd.stdout, /libcudart/);
    assert.doesNotMatch(ldd.stdout, /not found/);
  });

  it('`specdec info` explains the backend choice (text and --json)', () => {
    const bin = path.join(packageRoot, 'bin', 'specdec.js');
    const text = spawnSync(process.execPath, [bin, 'info'], { encoding: 'utf8' });
    assert.strictEqual(text.status, 0, text.stderr);
    assert.match(text.stdout, /backends compiled: cpu/);
    const json = spawnSync(process.execPath, [bin, 'info', '--json'], { encoding: 'utf8' });
    assert.strictEqual(json.status, 0, json.stderr);
    const info = JSON.parse(json.stdout) as { backends: { default: string }; cuda: { notUsedBecause: string | null } };
    const r = backends();
    assert.strictEqual(info.backends.default, r.default);
    assert.strictEqual(info.cuda.notUsedBecause, r.cudaReason ?? null);
    const bad = spawnSync(process.execPath, [bin, 'info', '--bogus'], { encoding: 'utf8' });
    assert.notStrictEqual(bad.status, 0);
    assert.strictEqual(bad.stderr.trim().split('\n').length, 1);
  });

  it('SPECDEC_BACKEND=cpu forces the CPU backend and says so', () => {
    const bin = path.join(packageRoot, 'bin', 'specdec.js');
    const out = spawnSync(process.execPath, [bin, 'info', '--json'], {
      encoding: 'utf8',
      env: { ...process.env, SPECDEC_BACKEND: 'cpu' },
    });
    const info = JSON.parse(out.stdout) as { backends: { default: string } };
    assert.strictEqual(info.backends.default, 'cpu');
  });
});
