// The fuzz targets of fuzz/ (safetensors reader, model loader, forward/commit inputs, tree attention,
// verification, KV cache, EAGLE's tree expansion ops, penalties) built with the plain driver under
// AddressSanitizer + UBSan (any C++ compiler; libFuzzer is not needed): every committed corpus input
// and every regression input of fuzz/regressions/ (each a crash or wrong answer that was found and
// fixed) runs once, then a few hundred seeded mutants per target. A finding aborts the driver, so the test fails naming it.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { testSeed } from './helpers';

const root = path.resolve(__dirname, '..', '..');

interface FuzzScript {
  TARGETS: string[];
  build(kind: 'replay', o: { jobs?: number }): Promise<{ exes: Record<string, string> }>;
  replayArgs(target: string, mutants: number, seed: number): string[];
  SAN_ENV: Record<string, string>;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fuzz = require(path.join(root, 'scripts', 'fuzz.js')) as FuzzScript;

const MUTANTS = 300;

describe(`fuzz targets: corpus + regressions + ${MUTANTS} mutants each under ASan/UBSan (seed ${testSeed})`, function () {
  this.timeout(600000);
  let exes: Record<string, string> = {};
  let buildError: Error | undefined;
  let cwd = ''; // a mutant that dies is saved there as replay-crash-input
  before(async function () {
    cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-fuzz-'));
    const cxx = process.env['CXX'] ?? 'c++';
    if (spawnSync(cxx, ['--version']).status !== 0) this.skip();
    try {
      exes = (await fuzz.build('replay', { jobs: 2 })).exes;
    } catch (e) {
      buildError = e as Error;
    }
  });

  after(() => {
    if (cwd) fs.rmSync(cwd, { recursive: true, force: true });
  });

  it('every target has a seed corpus', () => {
    for (const t of fuzz.TARGETS) {
      const dir = path.join(root, 'fuzz', 'corpus', t);
      assert.ok(fs.existsSync(dir) && fs.readdirSync(dir).length > 0, `fuzz/corpus/${t} is empty`);
    }
  });

  for (const t of fuzz.TARGETS) {
    it(`${t}: no finding`, function () {
      if (buildError && /lib[au]san|cannot find -l|unsupported/i.test(buildError.message)) this.skip(); // no sanitizer runtime
      assert.ifError(buildError);
      const run = spawnSync(exes[t]!, fuzz.replayArgs(t, MUTANTS, testSeed), {
        encoding: 'utf8',
        timeout: 120000, // a hang is a finding too
        env: { ...process.env, ...fuzz.SAN_ENV },
        cwd,
      });
      const out = `${run.stdout}\n${run.stderr}`;
      assert.ok(!run.error, `replay of ${t} did not finish: ${run.error?.message}\n${out.slice(-4000)}`);
      assert.strictEqual(run.status, 0, `replay of ${t} found something (exit ${run.status}):\n${out.slice(-6000)}`);
      assert.doesNotMatch(out, /Sanitizer|FUZZ FINDING/);
      const m = /replayed (\d+) inputs and (\d+) mutants: no findings/.exec(run.stdout);
      assert.ok(m && Number(m[1]) > 0 && Number(m[2]) === MUTANTS, run.stdout);
    });
  }
});
