// CUDA graphs of the layer stack (SPECDEC_CUDA_GRAPHS=1, cuda/graphs.cu) change no bit: the same
// forwards (1-token decode, chains, trees, decode steps returning aux layers' inputs, native plain
// chains) in a process with graphs and in one
// without give identical logits and tokens, and the graphs were really replayed. The bookkeeping
// itself runs on every machine in test/emu/graphs_emu.cc (test/cuda_emu.test.ts).
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { KernelProfile } from '../lib/transfers';
import { specByName, writeCheckpoint } from './fixtures/checkpoints';
import { backends } from '../lib/backend';
import { describeCuda, testSeed } from './helpers';

interface ChildResult { logits: string; tokens: number[]; graphLaunches: number; graphCaptures: number; deviceOps: number; profile: KernelProfile }

function runChild(dir: string, graphs: '0' | '1', device: 'cuda' | 'cpu' = 'cuda', profile = false): ChildResult {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'cuda_graphs', 'child.js'), dir, device], {
    encoding: 'utf8',
    timeout: 120000,
    env: { ...process.env, SPECDEC_CUDA_GRAPHS: graphs, SPECDEC_CUDA_PROFILE: profile ? '1' : '0' },
  });
  assert.strictEqual(r.status, 0, `child (SPECDEC_CUDA_GRAPHS=${graphs}) failed:\n${r.stdout}\n${r.stderr}`);
  // A disabled runner says why on stderr: that is a failure of this test, not a fallback to accept.
  assert.doesNotMatch(r.stderr, /CUDA graphs disabled/, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as ChildResult;
}

describe('CUDA graphs: the on/off comparison script', function () {
  this.timeout(120000);
  it('runs its forwards, commits and plain decoding on the CPU, the same twice, with no graph (CPU: graphs do not apply)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-graphs-cpu-'));
    try {
      writeCheckpoint(dir, specByName('llama-gqa-f32'), testSeed + 11);
      const a = runChild(dir, '1', 'cpu');
      const b = runChild(dir, '0', 'cpu');
      // 49 hand-driven forwards' picks, then plain decoding's (up to 2 x 20: the model's EOS may stop it).
      assert.ok(a.tokens.length > 49 && a.tokens.length <= 89, `${a.tokens.length} tokens`);
      // Everything but the op count, which follows the native plain chains' lengths: those are sized
      // by measured step times (lib/plain_chain.ts), so they vary with the machine's load (the GPU
      // machine's parallel suite: 1731 vs 1791 ops).
      const { deviceOps: opsA, profile: pa, ...restA } = a;
      const { deviceOps: opsB, profile: pb, ...restB } = b;
      assert.ok(!pa.enabled && !pb.enabled && pa.launches === 0, 'no kernel profile without SPECDEC_CUDA_PROFILE=1');
      assert.deepStrictEqual(restA, restB);
      assert.strictEqual(a.graphLaunches, 0);
      assert.ok(opsA > 0 && opsB > 0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('CUDA kernel profile (SPECDEC_CUDA_PROFILE=1) where CUDA is not usable', function () {
  this.timeout(120000);
  it('reports itself off with the reason, and the run is unchanged', function () {
    if (backends().available.includes('cuda')) this.skip(); // the [cuda] test below covers GPU machines
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-profile-cpu-'));
    try {
      writeCheckpoint(dir, specByName('llama-gqa-f32'), testSeed + 11);
      const p = runChild(dir, '0', 'cpu', true).profile;
      assert.strictEqual(p.enabled, false);
      assert.match(p.reason ?? '', /CUDA is not usable here|no CUDA backend/);
      assert.deepStrictEqual([p.rows.length, p.launches, p.busyUs], [0, 0, 0]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeCuda('CUDA kernel profile (SPECDEC_CUDA_PROFILE=1)', function () {
  this.timeout(300000);
  it('times every launch by kernel (graph replays as one), within the span, and changes no result', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-profile-'));
    try {
      writeCheckpoint(dir, specByName('llama-sharded-bf16'), testSeed + 11);
      const plain = runChild(dir, '0');
      for (const graphs of ['0', '1'] as const) {
        const r = runChild(dir, graphs, 'cuda', true);
        assert.deepStrictEqual([r.tokens, r.logits], [plain.tokens, plain.logits], `graphs ${graphs}: the profiled run's results`);
        const p = r.profile;
        assert.strictEqual(p.enabled, true, p.reason);
        assert.strictEqual(p.truncated, false);
        assert.strictEqual(p.rows.reduce((s, x) => s + x.calls, 0), p.launches);
        assert.ok(Math.abs(p.rows.reduce((s, x) => s + x.totalUs, 0) - p.busyUs) <= 1e-6 * p.busyUs + 1e-3);
        assert.ok(p.busyUs > 0 && p.busyUs <= p.spanUs * 1.001, `busy ${p.busyUs} us within the span ${p.spanUs} us`);
        const names = p.rows.map((x) => x.name).join(' | ');
        assert.match(names, /matmul/, names);
        const replays = p.rows.find((x) => x.name === 'cuda graph: layer stack')?.calls ?? 0;
        assert.strictEqual(replays, r.graphLaunches, `graphs ${graphs}: replays timed = graph launches (${names})`);
        if (graphs === '0') assert.match(names, /attention/, names);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeCuda('CUDA graphs of the layer stack', function () {
  this.timeout(300000);
  for (const name of ['llama-gqa-f32', 'llama-sharded-bf16']) {
    it(`${name}: graphs on == graphs off, bit for bit, and the graphs were replayed`, () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-graphs-'));
      try {
        writeCheckpoint(dir, specByName(name), testSeed + 11);
        const off = runChild(dir, '0');
        const on = runChild(dir, '1');
        assert.strictEqual(off.graphLaunches, 0);
        assert.deepStrictEqual(on.tokens, off.tokens);
        assert.strictEqual(on.logits, off.logits, 'logits differ with graphs on');
        // 24 decode steps of one shape: at most a few eager steps per attention plan.
        assert.ok(on.graphLaunches >= 30, `expected >= 30 graph launches, got ${on.graphLaunches}`);
        assert.ok(on.graphCaptures >= 1 && on.graphCaptures < on.graphLaunches, `captures ${on.graphCaptures}`);
        assert.ok(on.deviceOps < off.deviceOps, `deviceOps with graphs ${on.deviceOps}, without ${off.deviceOps}`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
