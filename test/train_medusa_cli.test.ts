// `specdec train-medusa` end to end on the embedded target: trains a few steps (plain and
// self-distilled), the heads load and decode losslessly, the loss falls, progress lines are
// plain on a pipe and a bar on a terminal, bad flags are one-line errors.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultModelPaths } from '../lib/default_models';
import { MedusaHeads } from '../lib/strategies/medusa';
import { progressLine } from '../lib/cli/train_medusa';
import { specByName, writeCheckpoint } from './fixtures/checkpoints';

const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, SPECDEC_BACKEND: 'cpu' } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('specdec train-medusa (cli)', function () {
  this.timeout(120000);
  let dir: string;
  let data: string;
  const target = defaultModelPaths().target;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-train-medusa-'));
    data = path.join(dir, 'data.txt');
    const lines = ['once upon a time there was a little cat', 'the dog ran to the park and saw a bird', 'she liked to play ball with her friend'];
    fs.writeFileSync(data, Array.from({ length: 60 }, (_, i) => `${lines[i % 3]} ${lines[(i * 2 + 1) % 3]}`).join('\n'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const distill of [false, true]) {
    it(`trains heads that load and decode losslessly${distill ? ' (--self-distill)' : ''}; the loss falls`, () => {
      const out = path.join(dir, distill ? 'heads-distill' : 'heads');
      const r = cli(['train-medusa', '--model', target, '--data', data, '--heads', '2', '--out', out, '--steps', '24', '--seq-len', '32', '--batch', '4', ...(distill ? ['--self-distill'] : [])]);
      assert.strictEqual(r.code, 0, r.stderr);
      const steps = [...r.stderr.matchAll(/^train-medusa: step (\d+)\/24 loss ([\d.]+) +\d+ tok\/s +ETA \d+ s$/gm)];
      assert.ok(steps.length >= 10, `progress lines:\n${r.stderr}`);
      assert.ok(Number(steps.at(-1)![2]) < 0.5 * Number(steps[0]![2]), `loss ${steps[0]![2]} -> ${steps.at(-1)![2]}`);
      const heads = MedusaHeads.load(out, { device: 'cpu' });
      assert.strictEqual(heads.config.numHeads, 2);
      heads.dispose();
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as { base_model_name_or_path: string };
      assert.strictEqual(path.resolve(out, cfg.base_model_name_or_path), path.resolve(target));
      const plain = cli(['generate', '--prompt', 'once upon a time', '--max-new-tokens', '24', '--json']);
      // A fixed tree: the default sizes it by the cost model, which may well decode plainly on this CPU.
      const medusa = cli(['generate', '--prompt', 'once upon a time', '--max-new-tokens', '24', '--medusa', out, '--medusa-tree', 'mc_sim_7b_63', '--json']);
      assert.strictEqual(medusa.code, 0, medusa.stderr);
      const [p, m] = [plain, medusa].map((x) => JSON.parse(x.stdout) as { tokens: number[]; stats: { tokensPerForward: number } });
      assert.deepStrictEqual(m!.tokens, p!.tokens);
      assert.ok(m!.stats.tokensPerForward > 1, `tokens per forward ${m!.stats.tokensPerForward}`);
    });
  }

  it('progress: a bar on a terminal, a plain line otherwise', () => {
    const p = { step: 10, steps: 40, loss: 1.23456, tokensPerSecond: 1500, seconds: 5 };
    assert.strictEqual(progressLine(p, true), '[########......................] 10/40  loss 1.2346  1500 tok/s  ETA 15 s');
    assert.strictEqual(progressLine(p, false), 'train-medusa: step 10/40 loss 1.2346  1500 tok/s  ETA 15 s');
  });

  it('bad input is one line on stderr', () => {
    const one = (args: string[], re: RegExp): void => {
      const r = cli(['train-medusa', ...args]);
      assert.notStrictEqual(r.code, 0);
      const lines = r.stderr.trim().split('\n');
      assert.strictEqual(lines.length, 1, r.stderr);
      assert.match(lines[0]!, re);
    };
    one(['--model', target, '--data', data, '--out', dir], /--heads is required/);
    one(['--model', target, '--data', data, '--heads', '0', '--out', dir], /--heads: expected an integer >= 1/);
    one(['--model', target, '--data', path.join(dir, 'none.txt'), '--heads', '2', '--out', dir], /none\.txt.*\[E_IO\]/);
    one(['--model', target, '--data', data, '--heads', '2', '--out', dir, '--seq-len', '300'], /--seq-len 300: the model has 256 positions/);
    one(['--model', target, '--data', '--heads', '2'], /--data needs a value/);
    // The trainer's own forward has no q/k norms: a Qwen3 target is refused by name, not mistrained.
    const qwen3 = path.join(dir, 'qwen3');
    writeCheckpoint(qwen3, { ...specByName('qwen3-qknorm-bf16'), tokenizer: true }, 7);
    one(['--model', qwen3, '--data', data, '--heads', '2', '--out', path.join(dir, 'q3-heads')], /q\/k norms \(Qwen3\).*\[E_UNSUPPORTED\]|\[E_UNSUPPORTED\].*q\/k norms \(Qwen3\)/);
    // Its forward attends over whole sequences: a sliding-window model only while --seq-len fits the window.
    const swa = path.join(dir, 'mistral-swa');
    writeCheckpoint(swa, { ...specByName('mistral-swa-bf16'), tokenizer: true }, 8);
    one(['--model', swa, '--data', data, '--heads', '2', '--out', path.join(dir, 'swa-heads'), '--seq-len', '16'], /--seq-len 16: the model's attention slides over 6 positions .*use --seq-len <= 6/);
    const help = cli(['train-medusa', '--help']);
    assert.strictEqual(help.code, 0);
    for (const f of ['--model', '--data', '--heads', '--out', '--layers', '--steps', '--batch', '--seq-len', '--lr', '--self-distill', '--seed', '--threads', '--dtype']) {
      assert.match(help.stdout, new RegExp(`^\\s+${f}\\b`, 'm'), f);
    }
  });
});
