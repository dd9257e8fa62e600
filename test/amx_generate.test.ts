// The embedded (bf16) family end to end with its matmuls in the AMX tile order (SPECDEC_CPU_AMX=
// emulate: the emulated engine, on any CPU; cpp/cpu/matmul_amx.h). That order is batch invariant
// like the vector one, so greedy speculation must still reproduce plain decoding token for token,
// and a prompt's tokens must not depend on the batch it runs in.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');

/**
 * In a child with SPECDEC_CPU_AMX=emulate: the embedded target's logits for a prompt alone and the
 * same prompt inside a ragged batch of three (13 of 39 rows), as f32 bits.
 */
async function childLogits(): Promise<void> {
  const { LlamaModel } = await import('../lib/models/llama');
  const { defaultModelPaths } = await import('../lib/default_models');
  const { native } = await import('../lib/native');
  const model = await LlamaModel.load(defaultModelPaths().target, { device: 'cpu' });
  try {
    const V = model.config.vocabSize;
    const ids = (n: number, o: number): Int32Array => Int32Array.from({ length: n }, (_, i) => (7 * i + o) % V);
    const prompt = ids(13, 3);
    const s0 = model.createSequence();
    const alone = (await model.forward([{ seq: s0, tokens: prompt }])).logits;
    const a = alone.toFloat32();
    alone.dispose();
    model.freeSequence(s0);
    const [x, y, z] = [model.createSequence(), model.createSequence(), model.createSequence()];
    const out = await model.forward([
      { seq: x, tokens: ids(5, 11) },
      { seq: y, tokens: prompt },
      { seq: z, tokens: ids(21, 5) },
    ]);
    const all = out.logits.toFloat32().subarray(5 * V, 18 * V);
    out.logits.dispose();
    let differ = 0;
    const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
    const ub = new Uint32Array(all.buffer, all.byteOffset, all.length);
    for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) differ++;
    process.stdout.write(JSON.stringify({ matmul: native().cpuInfo().matmul, values: ua.length, differ }));
  } finally {
    model.dispose();
  }
}

interface Rec {
  tokens: number[];
  stats: { targetForwards: number; tokensPerForward: number };
}

function specdec(args: string[]): string {
  const r = spawnSync(process.execPath, [bin, ...args], {
    encoding: 'utf8',
    env: { ...process.env, SPECDEC_CPU_AMX: 'emulate', SPECDEC_BACKEND: 'cpu' },
    timeout: 240000,
  });
  assert.strictEqual(r.status, 0, `specdec ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

function generate(args: string[]): Rec | Rec[] {
  return JSON.parse(specdec(['generate', '--device', 'cpu', '--json', ...args])) as Rec | Rec[];
}

if (process.argv[2] === '--child') {
  void childLogits();
} else describe('the embedded family on the emulated AMX matmul (SPECDEC_CPU_AMX=emulate)', function () {
  this.timeout(600000);
  const prompt = ['--prompt', 'once upon a time there was a', '--max-new-tokens', '20'];

  it('runs its bf16 matmuls on the tile order', () => {
    const info = JSON.parse(specdec(['info', '--json'])) as { cpu: { matmul: string; amx: { mode: string } } };
    assert.strictEqual(info.cpu.matmul, 'amx-emulated');
    assert.strictEqual(info.cpu.amx.mode, 'emulated');
  });

  it('a prompt alone and inside a ragged batch give the same logits, bit for bit', () => {
    const r = spawnSync(process.execPath, [__filename, '--child'], { encoding: 'utf8', env: { ...process.env, SPECDEC_CPU_AMX: 'emulate' }, timeout: 240000 });
    assert.strictEqual(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { matmul: string; values: number; differ: number };
    assert.strictEqual(got.matmul, 'amx-emulated');
    assert.ok(got.values > 1000);
    assert.strictEqual(got.differ, 0, `${got.differ} of ${got.values} logits differ between the prompt alone and in a batch`);
  });

  it('greedy draft, Medusa tree and lookahead give the plain tokens; a prompt gives the same tokens alone and in a batch', () => {
    const plain = generate(prompt) as Rec;
    assert.ok(plain.tokens.length > 0);
    const strategies: string[][] = [
      ['--draft', 'default', '--draft-k', '4'],
      ['--medusa', 'default', '--medusa-tree', 'small_16'],
      ['--lookahead', '4,3,4'],
    ];
    for (const s of strategies) {
      const r = generate([...prompt, ...s]) as Rec;
      assert.deepStrictEqual(r.tokens, plain.tokens, `greedy ${s.join(' ')} differs from plain`);
      if (s[0] === '--draft') assert.ok(r.stats.tokensPerForward > 1.5, `the draft barely speculated: ${JSON.stringify(r.stats)}`);
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-amx-'));
    const batchFile = path.join(dir, 'batch.json');
    fs.writeFileSync(batchFile, JSON.stringify(['the cat sat on', 'once upon a time there was a', 'a b c']));
    const batch = generate(['--batch-file', batchFile, '--max-new-tokens', '20']) as Rec[];
    assert.deepStrictEqual(batch[1]!.tokens, plain.tokens, 'the prompt in a batch of 3 differs from the prompt alone');
    const drafted = generate(['--batch-file', batchFile, '--max-new-tokens', '20', '--draft', 'default', '--draft-k', '3']) as Rec[];
    assert.deepStrictEqual(drafted.map((r) => r.tokens), batch.map((r) => r.tokens), 'batched greedy draft differs from batched plain');
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
