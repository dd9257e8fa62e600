// `specdec bench` smoke test through the real entry point (bin/specdec.js): --list, a --quick run of
// the kernel and end-to-end benches printing valid JSON with the machine header, --out, and bad
// flags failing with one line. Performance is measured by the benches, never asserted here.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { timeKernels } from '../bench/common';
import { matmul } from '../lib/layers';
import { Tensor } from '../lib/tensor';
import { cudaKernelProfile, setCudaKernelProfiling } from '../lib/transfers';
import { cudaSkipReason, describeCuda, randomArray, rng, testSeed } from './helpers';

const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');
const NAMES = ['attention', 'matmul', 'verify', 'sampling', 'plain_decode', 'forward_cost', 'memory', 'speculative', 'sizing', 'eagle', 'serve'];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function bench(args: string[]): Run {
  const r = spawnSync(process.execPath, [bin, 'bench', ...args], { encoding: 'utf8', env: { ...process.env, SPECDEC_BACKEND: 'cpu' }, timeout: 60000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

interface Row {
  name: string;
  value: number | null;
  unit: string;
  metrics: Record<string, unknown>;
}

interface Report {
  header: { device: string; node: string; date: string; cpu: { model: string; cores: number }; loadAverage: number[]; git: { commit: string | null }; backend: { available: string[]; cudaNotUsedBecause: string | null } };
  quick: boolean;
  ok: boolean;
  results: { bench: string; device: string; rows: Row[]; checks: Record<string, boolean>; setup: Record<string, unknown> }[];
}

function assertOneLineError(r: Run, re: RegExp): void {
  assert.notStrictEqual(r.code, 0, `expected a failure, got exit 0 (stdout ${r.stdout})`);
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  assert.strictEqual(lines.length, 1, `expected one stderr line, got:\n${r.stderr}`);
  assert.match(lines[0] as string, re);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

describe('specdec bench (cli)', function () {
  this.timeout(30000);
  let tmp: string;
  before(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-bench-test-'))));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('--list names every bench with a description; --list --json too', () => {
    const r = bench(['--list']);
    assert.strictEqual(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.deepStrictEqual(lines.map((l) => l.split(/\s+/)[0]), NAMES);
    for (const l of lines) assert.ok(l.trim().split(/\s+/).length > 3, `no description: ${l}`);
    const j = bench(['--list', '--json']);
    assert.strictEqual(j.code, 0, j.stderr);
    assert.deepStrictEqual((JSON.parse(j.stdout) as { name: string }[]).map((b) => b.name), NAMES);
  });

  it('--quick --json runs kernel benches and prints one JSON report with the machine header; --out writes it', () => {
    const out = path.join(tmp, 'sub', 'r.json');
    const r = bench(['--quick', '--only', 'verify,sampling,matmul', '--device', 'cpu', '--json', '--out', out]);
    assert.strictEqual(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as Report;
    assert.deepStrictEqual(JSON.parse(fs.readFileSync(out, 'utf8')), rep, '--out holds the printed report');
    assert.strictEqual(rep.quick, true);
    assert.strictEqual(rep.ok, true);
    assert.strictEqual(rep.header.device, 'cpu');
    assert.strictEqual(rep.header.node, process.version);
    assert.ok(rep.header.cpu.cores >= 1 && rep.header.cpu.model.length > 0);
    assert.strictEqual(rep.header.loadAverage.length, 3);
    assert.ok(!Number.isNaN(Date.parse(rep.header.date)));
    assert.deepStrictEqual(rep.results.map((x) => x.bench), ['matmul', 'verify', 'sampling'], 'benches run in registry order');
    const verify = rep.results[1]!;
    const mm = rep.results[0]!;
    assert.strictEqual(mm.checks['batchInvariant'], true, 'matmul: a row alone equals the same row in a batch');
    const tiny = mm.rows.filter((row) => row.name.startsWith('tiny '));
    assert.strictEqual(mm.rows.length - tiny.length, 2, 'matmul quick: one shape at N=1 and N=16');
    // The tiny model's shape on its k-serial pack against the lane kernel, at N=1 and N=5.
    assert.deepStrictEqual(tiny.map((row) => row.name), ['tiny 128x384, N=1: k-serial pack', 'tiny 128x384, N=5: k-serial pack']);
    // 2 trees x 4 modes in the quick run, each a positive finite time with its roofline; off a GPU,
    // predicted H100/H200 bounds follow, labelled as predictions.
    const measured = verify.rows.filter((row) => row.metrics['prediction'] !== true);
    assert.strictEqual(measured.length, 8);
    for (const row of measured) assert.ok(Number((row.metrics['roofline'] as { fraction: number }).fraction) > 0, `${row.name}: no roofline`);
    const predicted = verify.rows.filter((row) => row.metrics['prediction'] === true);
    assert.ok(predicted.length > 0 && predicted.every((row) => row.name.startsWith('PREDICTION ')), 'verify: labelled predictions');
    for (const modeName of ['greedy', 'rejection+draft', 'rejection one-hot', 'typical']) {
      assert.ok(verify.rows.some((row) => row.name.startsWith(modeName + ',')), `verify has no ${modeName} row`);
    }
    for (const x of rep.results) {
      assert.strictEqual(x.device, 'cpu');
      for (const row of x.rows) assert.ok(typeof row.value === 'number' && Number.isFinite(row.value) && row.value > 0, `${x.bench} ${row.name}: value ${row.value}`);
    }
    // Greedy verification with the first child planted high walks the whole chain: 5 drafts + bonus.
    const greedyChain = verify.rows.find((row) => row.name === 'greedy, batch 1, chain-5')!;
    assert.strictEqual(greedyChain.metrics['meanEmittedPerSequence'], 6);
  });

  it('--quick speculative: every strategy reproduces the plain output; the self-draft accepts everything', () => {
    const r = bench(['--quick', '--only', 'speculative', '--device', 'cpu', '--json']);
    assert.strictEqual(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as Report;
    const spec = rep.results[0]!;
    assert.strictEqual(spec.bench, 'speculative');
    assert.ok(Object.keys(spec.checks).length >= 7, `checks: ${JSON.stringify(spec.checks)}`);
    for (const [k, v] of Object.entries(spec.checks)) assert.strictEqual(v, true, k);
    for (const s of ['plain', 'draft model (random small', 'medusa', 'lookahead', 'prompt lookup', 'draft model (target itself']) {
      assert.ok(spec.rows.some((row) => row.name.startsWith(`random-tiny: ${s}`)), `no row for ${s}`);
    }
    const self = spec.rows.find((row) => row.name.includes('target itself'))!;
    assert.strictEqual(self.metrics['acceptanceRate'], 1);
    assert.ok((self.metrics['tokensPerForward'] as number) > 1, 'the self-draft emits more than one token per target forward');
    for (const row of spec.rows.filter((x) => x.unit === 'x plain')) {
      assert.strictEqual(row.metrics['lossless'], true, row.name);
      assert.ok((row.metrics['speedupVsPlain'] as number) > 0);
    }
  });

  it('--quick sizing: before/after rows on the embedded and the widened family, every output equal to plain', function () {
    const r = bench(['--quick', '--only', 'sizing', '--device', 'cpu', '--json']);
    assert.strictEqual(r.code, 0, r.stderr);
    const sizing = (JSON.parse(r.stdout) as Report).results[0]!;
    if (sizing.rows.length === 0) this.skip(); // no embedded family in this checkout
    for (const [k, v] of Object.entries(sizing.checks)) assert.strictEqual(v, true, k);
    for (const fam of ['embedded', 'widened 2x']) {
      for (const s of ['draft model, cost model', 'medusa, cost model', 'lookahead 7,4,7, cost model', 'prompt lookup 3, cost model', 'medusa, before']) {
        const row = sizing.rows.find((x) => x.name.startsWith(`${fam}: ${s}`));
        assert.ok(row, `no row ${fam}: ${s}`);
        assert.strictEqual(row.metrics['lossless'], true, row.name);
        assert.ok(typeof row.metrics['nodesPerStep'] === 'object', `${row.name}: the chosen sizes are reported`);
      }
    }
  });

  it('each row is logged when measured (a bench stopped by a time box keeps what it measured)', () => {
    const r = bench(['--quick', '--only', 'verify', '--device', 'cpu', '--json']);
    assert.strictEqual(r.code, 0, r.stderr);
    const rows = (JSON.parse(r.stdout) as Report).results[0]!.rows.filter((x) => !x.name.startsWith('PREDICTION'));
    const logged = r.stderr.split('\n').filter((l) => l.startsWith('  = '));
    assert.strictEqual(logged.length, rows.length, r.stderr);
    rows.forEach((row, i) => assert.ok((logged[i] as string).startsWith(`  = ${row.name}: ${row.value} ${row.unit}`), `${logged[i]} vs ${row.name}`));
  });

  it('the table is the default output and bad flags fail with one line', () => {
    const t = bench(['--quick', '--only', 'verify', '--device', 'cpu']);
    assert.strictEqual(t.code, 0, t.stderr);
    assert.match(t.stdout, /^specdec bench .* device cpu/);
    assert.match(t.stdout, /verify\s+greedy, batch 1, chain-5\s+[\d.]+\s+us\/call/);
    assertOneLineError(bench(['--only', 'nope']), /unknown bench 'nope'/);
    assertOneLineError(bench(['--device', 'tpu']), /--device: expected cpu, cuda or auto/);
    assertOneLineError(bench(['--frobnicate']), /unknown option '--frobnicate'/);
    assertOneLineError(bench(['--only']), /--only: missing value/);
  });
});

// The kernel benches time each case's kernels in one extra pass with the profiler switched on at run
// time (bench/common.ts timeKernels); the switch must time that pass only and restore the state.
describeCuda('kernel timing switched on for one pass', () => {
  it('times the launches of the pass (names, counts, GPU time) and none before or after it', async () => {
    const was = setCudaKernelProfiling(false);
    try {
      if (was) return;  // SPECDEC_CUDA_PROFILE=1 in this process: everything is timed anyway
      const rand = rng(testSeed);
      const x = Tensor.fromArray(randomArray(4 * 256, rand), 'f32', [4, 256], 'cuda');
      const w = Tensor.fromArray(randomArray(128 * 256, rand), 'bf16', [128, 256], 'cuda');
      try {
        cudaKernelProfile({ reset: true });
        matmul(x, w).dispose();
        assert.strictEqual(cudaKernelProfile({ reset: true }).launches, 0, 'timing off: nothing recorded');
        const k = await timeKernels(() => matmul(x, w).dispose(), 5);
        assert.ok(k, 'the pass was timed');
        assert.strictEqual(k.calls, 5);
        assert.ok(k.launchesPerCall >= 1 && k.usPerCall > 0 && k.spanUsPerCall >= k.usPerCall * 0.999, JSON.stringify(k));
        assert.match(k.kernels[0]!.name, /matmul/, JSON.stringify(k.kernels));
        assert.strictEqual(setCudaKernelProfiling(false), false, 'the previous state (off) is restored');
        matmul(x, w).dispose();
        assert.strictEqual(cudaKernelProfile({ reset: true }).launches, 0, 'off again after the pass');
      } finally {
        x.dispose();
        w.dispose();
      }
    } finally {
      setCudaKernelProfiling(was);
    }
  });
});

describe('kernel timing without a usable GPU', () => {
  it('cannot be switched on, and the bench timing pass gives nothing', async function () {
    if (cudaSkipReason() === undefined) this.skip();
    assert.strictEqual(setCudaKernelProfiling(true), false);
    assert.strictEqual(setCudaKernelProfiling(false), false, 'stays off');
    const p = cudaKernelProfile();
    assert.strictEqual(p.enabled, false);
    assert.ok(p.reason && p.reason.length > 0, 'says why');
    let calls = 0;
    assert.strictEqual(await timeKernels(() => calls++, 3), undefined);
    assert.strictEqual(calls, 0, 'no pass is run when nothing can be timed');
  });
});
