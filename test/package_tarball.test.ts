// The package as a dependency (scripts/tarball-test.js): the packed tarball installs into a fresh
// app without cmake or nvcc on the PATH, loads its prebuilt binary, and the README's TypeScript
// example compiles with `tsc --strict` against the shipped typings (CommonJS and ESM) and runs.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as path from 'path';

const root = path.resolve(__dirname, '..', '..');

describe('package tarball', function () {
  this.timeout(300000);

  it('installs with its prebuild (nothing compiled); the README example compiles strictly and runs as CJS and ESM', () => {
    const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'tarball-test.js'), '--json'], { encoding: 'utf8', maxBuffer: 16 << 20 });
    assert.strictEqual(r.status, 0, r.stderr);
    const summary = JSON.parse(r.stdout) as { ok: boolean; binary: string; text: string; seconds: Record<string, number> };
    assert.strictEqual(summary.ok, true);
    assert.match(summary.binary, /node_modules[\\/]specdec[\\/]prebuilds[\\/].*specdec\.node$/);
    assert.ok(summary.text.length > 20, summary.text);
  });
});
