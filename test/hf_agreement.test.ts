// bench/hf_agreement.ts on fixtures in scripts/hf_fixtures.py's format made here from the float64
// reference (test/fixtures/hf_reference.ts): the comparison passes on the real thing and fails on
// perturbed checkpoints, configs and references (negative controls), and its near-tie rule excuses a
// divergence only where the reference's margin is small.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeRandomLlama } from '../bench/common';
import { checkFixture, hfLikeDraft, parseArgs, readReference, runAgreement, THROUGHPUT_FORMAT, type FixtureResult, type Reference } from '../bench/hf_agreement';
import { writeSafetensors } from '../lib/safetensors';
import { randomWeights, specByName, type CheckpointSpec } from './fixtures/checkpoints';
import { writeHfStyleFixture } from './fixtures/hf_reference';
import { describeCuda } from './helpers';

// Fixed seeds: the f32 check allows no divergence at all, so the fixtures must not depend on a
// time-based seed that could land on an f32 near-tie.
const LLAMA_F32: CheckpointSpec = { ...specByName('llama3-rope-f32'), name: 'hf-llama3-rope-f32' };
const QWEN2_BF16: CheckpointSpec = { ...specByName('qwen2-bias-f16'), name: 'hf-qwen2-bias-tied-bf16', dtype: 'BF16' };
const { eos: _q3eos, ...QWEN3_SPEC } = specByName('qwen3-qknorm-bf16');
const QWEN3_F32: CheckpointSpec = { ...QWEN3_SPEC, name: 'hf-qwen3-qknorm-tied-f32', dtype: 'F32' };
const OPTS = { promptLengths: [5, 17], newTokens: 64, logitPositions: 4 } as const;
const SEEDS = { [LLAMA_F32.name]: 101, [QWEN2_BF16.name]: 202, [QWEN3_F32.name]: 303 };

function makeFixtures(root: string): Map<string, string> {
  const dirs = new Map<string, string>();
  for (const spec of [LLAMA_F32, QWEN2_BF16, QWEN3_F32]) {
    const dir = path.join(root, spec.name);
    writeHfStyleFixture(dir, spec, SEEDS[spec.name] as number, OPTS);
    dirs.set(spec.name, dir);
  }
  return dirs;
}

/** A copy of a fixture dir under a new name, for perturbing. */
function copyFixture(dir: string, name: string): string {
  const to = path.join(path.dirname(dir), '..', 'perturbed', name);
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.cpSync(dir, to, { recursive: true });
  return to;
}

function editJson<T>(file: string, edit: (j: T) => void): void {
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  edit(j);
  fs.writeFileSync(file, JSON.stringify(j));
}

function check(r: FixtureResult, namePart: string): { ok: boolean; detail: string } {
  const c = r.checks.filter((x) => x.name.includes(namePart));
  assert.strictEqual(c.length, 1, `one check named like '${namePart}' in ${r.checks.map((x) => x.name).join(' | ')}`);
  return c[0] as { ok: boolean; detail: string };
}

describe('hf agreement comparison (cpu)', function () {
  this.timeout(60000);
  let root: string;
  let dirs: Map<string, string>;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-hf-agreement-'));
    dirs = makeFixtures(path.join(root, 'fixtures'));
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('every check holds on faithful fixtures (f32: exact tokens; bf16: float64 and near-tie rules)', async () => {
    const report = await runAgreement({ fixtures: path.join(root, 'fixtures'), devices: ['cpu'], log: () => undefined });
    assert.deepStrictEqual(report.fixtures.map((f) => f.fixture).sort(), [LLAMA_F32.name, QWEN2_BF16.name, QWEN3_F32.name].sort());
    for (const f of report.fixtures) {
      const failed = f.checks.filter((c) => !c.ok);
      assert.deepStrictEqual(failed, [], `${f.fixture}: ${JSON.stringify(failed)}`);
    }
    const f32 = report.fixtures.find((f) => f.fixture === LLAMA_F32.name) as FixtureResult;
    const q3 = report.fixtures.find((f) => f.fixture === QWEN3_F32.name) as FixtureResult;
    assert.match(check(q3, 'greedy tokens == transformers f32').detail, /prompt 0: 64\/64 identical; prompt 1: 64\/64 identical/);
    assert.strictEqual(check(q3, 'config').detail, 'all fields equal');
    assert.match(check(f32, 'greedy tokens == transformers f32').detail, /prompt 0: 64\/64 identical; prompt 1: 64\/64 identical/);
    // 3 checks for f32 (config, logits, tokens); 5 for bf16 on the CPU (config, logits and tokens vs
    // float64, accuracy and tokens vs the transformers stand-in).
    assert.strictEqual(f32.checks.length, 3);
    assert.strictEqual((report.fixtures.find((f) => f.dtype === 'bfloat16') as FixtureResult).checks.length, 5);
    assert.strictEqual(report.ok, true);
  });

  it('a bf16 KV cache on the CPU (what a bf16 checkpoint gets on CUDA by default): every check holds, against the stand-in that rounds K/V too', async () => {
    // On the first GPU run the CUDA suite failed here (specdec's bf16-KV logits 0.037 from float64,
    // a stand-in rounding only the logits 0.031): the CPU now runs the same path in CI.
    const r = await checkFixture(dirs.get(QWEN2_BF16.name) as string, 'cpu', { kvDtypes: ['f32', 'bf16'] });
    assert.deepStrictEqual(r.checks.filter((c) => !c.ok), []);
    assert.strictEqual(r.checks.length, 5);
    assert.match(check(r, '[kv bf16] logits no further').detail, /specdec 0\.0[1-9]/, 'the bf16 KV cache is really used (its error is ~1e-2, not f32 noise)');
  });

  it('negative control: a 1% change of one weight fails the logits check', async () => {
    const dir = copyFixture(dirs.get(LLAMA_F32.name) as string, 'one-weight');
    const w = randomWeights(LLAMA_F32, SEEDS[LLAMA_F32.name] as number);
    const norm = w['model.norm.weight'] as { data: Float32Array };
    norm.data[3] = (norm.data[3] as number) * 1.01;
    writeSafetensors(path.join(dir, 'model.safetensors'), w, { format: 'pt' });
    const r = await checkFixture(dir, 'cpu');
    assert.strictEqual(check(r, 'config').ok, true);
    const logits = check(r, 'logits vs transformers f32');
    assert.strictEqual(logits.ok, false, logits.detail);
    assert.match(logits.detail, /max rel err/);
  });

  it('negative control: a rope_theta that differs from transformers is named by the config check and fails the logits', async () => {
    const dir = copyFixture(dirs.get(LLAMA_F32.name) as string, 'theta');
    editJson<Record<string, unknown>>(path.join(dir, 'config.json'), (c) => (c['rope_theta'] = 10 * (c['rope_theta'] as number)));
    const r = await checkFixture(dir, 'cpu');
    const cfg = check(r, 'config');
    assert.strictEqual(cfg.ok, false);
    assert.match(cfg.detail, /rope_theta: specdec 5000000, transformers 500000/);
    assert.strictEqual(check(r, 'logits vs transformers f32').ok, false);
  });

  it('negative control: one changed reference token fails the f32 token check at that step', async () => {
    const dir = copyFixture(dirs.get(LLAMA_F32.name) as string, 'token');
    editJson<Reference>(path.join(dir, 'reference.json'), (j) => {
      const t = j.prompts[1]!.hf.tokens;
      t[10] = (t[10]! + 1) % LLAMA_F32.vocab;
    });
    const r = await checkFixture(dir, 'cpu');
    const tokens = check(r, 'greedy tokens == transformers f32');
    assert.strictEqual(tokens.ok, false);
    assert.match(tokens.detail, /prompt 1: step 10: got \d+, reference \d+ .*no divergence allowed/);
  });

  it('bf16: a divergence from transformers is excused at a recorded near-tie and only there', async () => {
    for (const margin of [0, 50]) {
      const dir = copyFixture(dirs.get(QWEN2_BF16.name) as string, `margin-${margin}`);
      editJson<Reference>(path.join(dir, 'reference.json'), (j) => {
        const side = j.prompts[0]!.hf;
        side.tokens[5] = (side.tokens[5]! + 1) % QWEN2_BF16.vocab;
        side.margins[5] = margin;
      });
      const c = check(await checkFixture(dir, 'cpu'), 'greedy tokens == transformers bf16');
      assert.strictEqual(c.ok, margin === 0, c.detail);
      assert.match(c.detail, margin === 0 ? /prompt 0: diverged at a near-tie, step 5/ : /prompt 0: step 5: .*near-tie threshold/);
    }
  });

  it('side by side: specdec plain and draft-model rows beside a transformers timing file, all lossless', async () => {
    const dir = path.join(root, 'side-by-side');
    writeRandomLlama(path.join(dir, 'target'), { vocab: 256, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2 }, 7);
    writeRandomLlama(path.join(dir, 'draft'), { vocab: 256, hidden: 32, intermediate: 64, layers: 1, heads: 2, kvHeads: 1 }, 8);
    const file = path.join(dir, 'hf_throughput.json');
    const assistantSettings = { num_assistant_tokens: 20, num_assistant_tokens_schedule: 'constant', assistant_confidence_threshold: 0.4 };
    fs.writeFileSync(file, JSON.stringify({
      format: THROUGHPUT_FORMAT, env: { transformers: 'stand-in' }, target: path.join(dir, 'target'), draft: path.join(dir, 'draft'),
      prompts: [[3, 1, 4, 1, 5]], newTokens: 12, reps: 2, assistantSettings,
      results: { plain: { tokensPerSecond: 100, tokensPerForward: 1, tokens: [[-1]] } },
    }));
    const report = await runAgreement({ throughput: file, devices: ['cpu'], log: () => undefined });
    assert.deepStrictEqual(report.errors, []);
    const s = report.sideBySide!;
    assert.strictEqual(s.rows.length, 5);
    for (const row of s.rows) {
      assert.ok(row.lossless && row.specdecTokensPerSecond > 0 && row.tokensPerForward >= 1, JSON.stringify(row));
      assert.strictEqual(row.transformersTokensPerSecond, row.transformers === 'plain' ? 100 : null);
    }
    // The target as its own draft accepts everything: more than one token per target forward.
    assert.ok(s.rows.filter((r) => r.specdec.includes('target itself')).every((r) => r.tokensPerForward > 1.5));
    assert.deepStrictEqual(s.plainAgreementSteps, [0]);
    assert.strictEqual(report.ok, true);
    assert.deepStrictEqual(hfLikeDraft(assistantSettings), { k: 1, maxK: 20, adaptive: 'confidence', confidenceThreshold: 0.4 });
    assert.deepStrictEqual(hfLikeDraft({ num_assistant_tokens: 5, num_assistant_tokens_schedule: 'heuristic' }), { k: 5, adaptive: 'heuristic' });
  });

  it('bad input: malformed reference.json is E_FORMAT naming the field; bad flags are E_ARG', () => {
    const dir = copyFixture(dirs.get(QWEN2_BF16.name) as string, 'malformed');
    editJson<Reference>(path.join(dir, 'reference.json'), (j) => void j.prompts[0]!.f64.margins.pop());
    assert.throws(() => readReference(dir), (e: Error & { code?: string }) => e.code === 'E_FORMAT' && /prompts\[0\]\.f64\.margins/.test(e.message));
    fs.writeFileSync(path.join(dir, 'reference.json'), '{"format": "something else"}');
    assert.throws(() => readReference(dir), (e: Error & { code?: string }) => e.code === 'E_FORMAT' && /format "something else"/.test(e.message));
    assert.throws(() => parseArgs(['--devices', 'tpu', '--fixtures', dir]), (e: Error & { code?: string }) => e.code === 'E_ARG' && /tpu/.test(e.message));
    assert.throws(() => parseArgs([]), (e: Error & { code?: string }) => e.code === 'E_ARG' && /nothing to do/.test(e.message));
  });
});

describeCuda('hf agreement comparison', function () {
  this.timeout(120000);
  let root: string;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-hf-agreement-cuda-'));
    makeFixtures(root);
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('every check holds on CUDA (f32 KV and the default bf16 KV)', async () => {
    const report = await runAgreement({ fixtures: root, devices: ['cuda'], log: () => undefined });
    for (const f of report.fixtures) assert.deepStrictEqual(f.checks.filter((c) => !c.ok), [], f.fixture);
    // bf16 on CUDA runs twice: f32 KV (strict) and bf16 KV (the default), 5 checks in all (config; logits and tokens vs float64; accuracy and tokens vs transformers).
    assert.strictEqual((report.fixtures.find((f) => f.dtype === 'bfloat16') as FixtureResult).checks.length, 5);
  });
});
