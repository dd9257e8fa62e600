// `specdec train-eagle` end to end on the embedded target (a few steps: the loss falls, the head
// loads and decodes losslessly, deeper trees get accepted), the embedded head behind
// `--eagle default`, and bad flags as one-line errors.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultModelPaths } from '../lib/default_models';
import { EagleHead } from '../lib/strategies/eagle';
import { storyText } from '../lib/train';
import { specByName, writeCheckpoint } from './fixtures/checkpoints';

const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, SPECDEC_BACKEND: 'cpu' } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

interface Rec {
  tokens: number[];
  stats: { tokensPerForward: number; targetForwards: number };
}

describe('specdec train-eagle (cli) and the embedded EAGLE head', function () {
  this.timeout(120000);
  let dir: string;
  let data: string;
  const target = defaultModelPaths().target;
  const prompt = 'once upon a time , there was a little cat named lily .';
  let plain: Rec;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-train-eagle-'));
    data = path.join(dir, 'data.txt');
    // Stories of the embedded family's grammar (other seeds than its training corpus).
    fs.writeFileSync(data, Array.from({ length: 40 }, (_, i) => storyText(5000 + i)).join('\n'));
    const p = cli(['generate', '--prompt', prompt, '--max-new-tokens', '40', '--json']);
    assert.strictEqual(p.code, 0, p.stderr);
    plain = JSON.parse(p.stdout) as Rec;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const distill of [false, true]) {
    it(`trains a head that loads and decodes losslessly${distill ? ' (--self-distill)' : ''}; the loss falls`, () => {
      const out = path.join(dir, distill ? 'head-distill' : 'head');
      const r = cli(['train-eagle', '--model', target, '--data', data, '--out', out, '--steps', '80', '--seq-len', '32', '--batch', '4', ...(distill ? ['--self-distill'] : [])]);
      assert.strictEqual(r.code, 0, r.stderr);
      const steps = [...r.stderr.matchAll(/^train-eagle: step (\d+)\/80 loss ([\d.]+) +\d+ tok\/s +ETA \d+ s$/gm)];
      assert.ok(steps.length >= 10, `progress lines:\n${r.stderr}`);
      assert.ok(Number(steps.at(-1)![2]) < 0.5 * Number(steps[0]![2]), `loss ${steps[0]![2]} -> ${steps.at(-1)![2]}`);
      assert.match(r.stderr, /train-eagle: wrote .* top-1 agreement with the model 0\.\d+\)/);
      const head = EagleHead.load(out, { device: 'cpu' });
      assert.strictEqual(head.config.version, 1);
      assert.strictEqual(head.config.hiddenSize, 128);
      head.dispose();
      const spec = cli(['generate', '--prompt', prompt, '--max-new-tokens', '40', '--eagle', out, '--eagle-tree', '4,4,12', '--json']);
      assert.strictEqual(spec.code, 0, spec.stderr);
      const s = JSON.parse(spec.stdout) as Rec;
      assert.deepStrictEqual(s.tokens, plain.tokens);
      // Measured: 2.35 on the data's stories, 4.0 on the model's own continuations of them.
      assert.ok(s.stats.tokensPerForward > (distill ? 3 : 1.5), `tokens per forward ${s.stats.tokensPerForward}`);
    });
  }

  it('--version 3: trains an EAGLE-3 head (training-time test) that loads with its draft vocabulary and decodes losslessly', () => {
    const out = path.join(dir, 'head3');
    const r = cli(['train-eagle', '--version', '3', '--model', target, '--data', data, '--out', out, '--steps', '80', '--seq-len', '32', '--batch', '4', '--draft-vocab', '200', '--ttt-steps', '3']);
    assert.strictEqual(r.code, 0, r.stderr);
    const steps = [...r.stderr.matchAll(/^train-eagle: step (\d+)\/80 loss ([\d.]+) +\d+ tok\/s +ETA \d+ s$/gm)];
    assert.ok(steps.length >= 10, `progress lines:\n${r.stderr}`);
    assert.ok(Number(steps.at(-1)![2]) < 0.6 * Number(steps[0]![2]), `loss ${steps[0]![2]} -> ${steps.at(-1)![2]}`);
    assert.match(r.stderr, /train-eagle: wrote .* \(EAGLE-3, features of layers 1, 2, 3, 200 draftable tokens; last batch top-1 agreement with the model by step 0\.\d+ 0\.\d+ 0\.\d+\)/);
    const head = EagleHead.load(out, { device: 'cpu' });
    assert.strictEqual(head.config.version, 3);
    assert.strictEqual(head.config.draftVocabSize, 200);
    assert.deepStrictEqual(head.config.auxLayers, [1, 2, 3]);
    head.dispose();
    const spec = cli(['generate', '--prompt', prompt, '--max-new-tokens', '40', '--eagle', out, '--eagle-tree', '4,4,12', '--json']);
    assert.strictEqual(spec.code, 0, spec.stderr);
    const s = JSON.parse(spec.stdout) as Rec;
    assert.deepStrictEqual(s.tokens, plain.tokens);
    assert.ok(s.stats.tokensPerForward > 1.5, `tokens per forward ${s.stats.tokensPerForward}`);
  });

  it('--eagle default: the embedded head reproduces plain output and accepts deep trees', function () {
    if (!fs.existsSync(path.join(defaultModelPaths().eagle, 'config.json'))) this.skip();
    for (const extra of [['--eagle-tree', '8,5,59'], []]) {
      const r = cli(['generate', '--prompt', prompt, '--max-new-tokens', '40', '--eagle', 'default', ...extra, '--json']);
      assert.strictEqual(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout) as Rec;
      assert.deepStrictEqual(s.tokens, plain.tokens, `--eagle default ${extra.join(' ')}`);
      // EAGLE-2's tree with the trained head: README of models/default, measured 6.1 tokens a forward.
      if (extra.length > 0) assert.ok(s.stats.tokensPerForward > 4, `tokens per forward ${s.stats.tokensPerForward}`);
    }
  });

  it('--eagle default3: the embedded EAGLE-3 head reproduces plain output and accepts deep chains', function () {
    if (!fs.existsSync(path.join(defaultModelPaths().eagle3, 'config.json'))) this.skip();
    const r = cli(['generate', '--prompt', prompt, '--max-new-tokens', '40', '--eagle', 'default3', '--eagle-tree', '1,6,6', '--json']);
    assert.strictEqual(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as Rec;
    assert.deepStrictEqual(s.tokens, plain.tokens);
    // models/default/README: training-time test keeps deep steps accepted (200 tokens: 5.4 a forward with this chain).
    assert.ok(s.stats.tokensPerForward > 4, `tokens per forward ${s.stats.tokensPerForward}`);
  });

  it('bad input is one line on stderr', () => {
    const one = (args: string[], re: RegExp): void => {
      const r = cli(['train-eagle', ...args]);
      assert.notStrictEqual(r.code, 0);
      const lines = r.stderr.trim().split('\n');
      assert.strictEqual(lines.length, 1, r.stderr);
      assert.match(lines[0]!, re);
    };
    one(['--model', target, '--data', data], /--out is required \(see specdec train-eagle --help\)/);
    one(['--model', target, '--data', data, '--out', dir, '--noise', '-1'], /--noise: expected a number in \[0, 100\)/);
    one(['--model', target, '--data', data, '--out', dir, '--heads', '2'], /unknown flag '--heads'/);
    one(['--model', target, '--data', data, '--out', dir, '--version', '4'], /--version: expected 1 \(EAGLE-1\/2\) or 3 \(EAGLE-3\), got '4'/);
    one(['--model', target, '--data', data, '--out', dir, '--draft-vocab', '100'], /--draft-vocab is an EAGLE-3 flag: add --version 3/);
    one(['--model', target, '--data', data, '--out', dir, '--version', '3', '--noise', '0.1'], /--noise: EAGLE-3 trains without feature noise/);
    one(['--model', target, '--data', data, '--out', dir, '--version', '3', '--layers', '2'], /--layers 2: an EAGLE-3 head has one layer/);
    one(['--model', target, '--data', data, '--out', dir, '--version', '3', '--aux-layers', '3,2,1'], /--aux-layers: expected three ascending layer indices/);
    one(['--model', target, '--data', data, '--out', path.join(dir, 'x3'), '--version', '3', '--aux-layers', '1,2,4'], /--aux-layers 1,2,4: the model has 4 layers/);
    one(['--model', target, '--data', data, '--out', path.join(dir, 'x3'), '--version', '3', '--draft-vocab', '400'], /--draft-vocab 400: the model's vocabulary has 325 tokens/);
    one(['--model', target, '--data', data, '--out', dir, '--seq-len', '256'], /--seq-len 256: the model has 256 positions \(seq-len \+ 1 must fit\)/);
    const qwen3 = path.join(dir, 'qwen3');
    writeCheckpoint(qwen3, { ...specByName('qwen3-qknorm-bf16'), tokenizer: true }, 7);
    one(['--model', qwen3, '--data', data, '--out', path.join(dir, 'q3-head')], /q\/k norms \(Qwen3\).*\[E_UNSUPPORTED\]|\[E_UNSUPPORTED\].*q\/k norms \(Qwen3\)/);
    const help = cli(['train-eagle', '--help']);
    assert.strictEqual(help.code, 0);
    assert.match(help.stdout, /usage: specdec train-eagle/);
  });
});
