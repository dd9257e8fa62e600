// `specdec generate` with each strategy flag, end to end through bin/specdec.js on random
// checkpoints: greedy output is token-for-token the plain output, the stats are reported, and
// sampled runs are reproducible per (seed, sequence).
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeCheckpoint, specByName } from './fixtures/checkpoints';
import { writeMedusaHeads } from './fixtures/medusa_heads';
import { writeEagle3Head, writeEagleHead } from './fixtures/eagle_head';
import { testSeed } from './helpers';

const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');

interface Stats {
  targetForwards: number;
  tokensPerForward: number;
  acceptanceRate: number;
  acceptedPerPosition: number[];
  seconds: number;
  tokensPerSecond: number;
  prepareSeconds?: number;
}
interface Rec {
  tokens: number[];
  text: string;
  stats: Stats;
}

function generate(args: string[]): Rec | Rec[] {
  const r = spawnSync(process.execPath, [bin, 'generate', '--device', 'cpu', '--json', ...args], { encoding: 'utf8' });
  assert.strictEqual(r.status, 0, `specdec generate ${args.join(' ')} failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Rec | Rec[];
}

describe('specdec generate: strategies end to end', function () {
  this.timeout(120000);
  // No EOS, so every run generates exactly max-new-tokens (random weights would stop anywhere).
  const { eos: _eos, ...noEos } = specByName('llama-gqa-f32');
  const spec = { ...noEos, maxPositions: 256 };
  let target: string;
  let draft: string;
  let medusa: string;
  let eagle: string;
  let batchFile: string;
  // A repetitive prompt so that prompt lookup and lookahead find n-grams.
  const prompt = '5,6,7,8,9,5,6,7,8,9,5,6,7';

  before(() => {
    target = makeCheckpoint(spec, testSeed);
    draft = makeCheckpoint({ ...spec, name: 'draft', layers: 1, hidden: 32, intermediate: 32 }, testSeed + 1);
    medusa = writeMedusaHeads({ numHeads: 3, numLayers: 1, hiddenSize: spec.hidden, vocabSize: spec.vocab, seed: testSeed });
    eagle = writeEagleHead({ hidden: spec.hidden, heads: 4, kvHeads: 2, intermediate: 48, vocab: spec.vocab, seed: testSeed });
    batchFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-cli-')), 'batch.json');
    fs.writeFileSync(batchFile, JSON.stringify([[3, 4, 5, 3, 4, 5, 3], [10, 11], [7, 7, 7, 7, 7, 7, 7, 7, 7]]));
  });

  it('every strategy flag reproduces plain greedy decoding, single prompt and batch file', () => {
    const plain = generate(['--model', target, '--prompt-ids', prompt, '--max-new-tokens', '24']) as Rec;
    assert.strictEqual(plain.tokens.length, 24);
    const plainBatch = generate(['--model', target, '--batch-file', batchFile, '--max-new-tokens', '16']) as Rec[];
    const strategies: string[][] = [
      ['--draft', draft],
      ['--draft', target, '--draft-k', '5'],
      ['--medusa', medusa],
      ['--eagle', eagle],
      ['--eagle', eagle, '--eagle-tree', '3,2,5'],
      // A fixed tree past the default 64 tokens of KV room kept per sequence (the room grows to the context).
      ['--eagle', eagle, '--eagle-tree', '8,4,100'],
      ['--lookahead', '4,3,4'],
      ['--prompt-lookup', '3'],
      ['--draft', draft, '--prompt-lookup', '2'],
    ];
    for (const s of strategies) {
      const r = generate(['--model', target, '--prompt-ids', prompt, '--max-new-tokens', '24', ...s]) as Rec;
      assert.deepStrictEqual(r.tokens, plain.tokens, `greedy ${s.join(' ')} differs from plain`);
      assert.ok(r.stats.targetForwards >= 1 && r.stats.tokensPerForward >= 1, JSON.stringify(r.stats));
      assert.ok(r.stats.acceptanceRate >= 0 && r.stats.acceptanceRate <= 1);
      const batch = generate(['--model', target, '--batch-file', batchFile, '--max-new-tokens', '16', ...s]) as Rec[];
      assert.deepStrictEqual(batch.map((b) => b.tokens), plainBatch.map((b) => b.tokens), `batched ${s.join(' ')}`);
    }
    // The target as its own draft accepts (nearly) everything: fewer target forwards than tokens.
    // An explicit --draft-k: a draft as costly as the target never pays, so the cost model would decode plainly.
    const self = generate(['--model', target, '--prompt-ids', prompt, '--max-new-tokens', '24', '--draft', target, '--draft-k', '4']) as Rec;
    assert.ok(self.stats.acceptanceRate > 0.9, `self-draft acceptance ${self.stats.acceptanceRate}`);
    assert.ok(self.stats.tokensPerForward > 2, `self-draft tokens per forward ${self.stats.tokensPerForward}`);
    assert.ok(self.stats.acceptedPerPosition.length > 0);
  });

  it("a sized strategy's calibration runs before the run and is reported beside it (JSON and the summary line)", () => {
    const sized = generate(['--model', target, '--prompt-ids', prompt, '--max-new-tokens', '8', '--draft', draft]) as Rec;
    assert.ok(sized.stats.prepareSeconds !== undefined && sized.stats.prepareSeconds > 0, JSON.stringify(sized.stats));
    const fixed = generate(['--model', target, '--prompt-ids', prompt, '--max-new-tokens', '8', '--draft', draft, '--draft-k', '3']) as Rec;
    assert.ok(!(fixed.stats.prepareSeconds! >= 0.001), `a fixed draft length measures nothing: ${JSON.stringify(fixed.stats)}`);
    const r = spawnSync(process.execPath, [bin, 'generate', '--device', 'cpu', '--model', target, '--prompt-ids', prompt, '--max-new-tokens', '8', '--draft', draft], { encoding: 'utf8' });
    assert.strictEqual(r.status, 0, r.stderr);
    assert.match(r.stderr, /; cost model calibrated in \d+ ms before the run\n$/);
    // A draft three times as costly as the target never pays: the sized run decodes plainly and says
    // so. (With the target itself as the draft the two choices tie even at full acceptance, and timing
    // noise decided them: the run drafted at 4 tokens a forward in one CI run of seven.)
    const costly = makeCheckpoint({ ...spec, name: 'costly', layers: 3 * spec.layers }, testSeed + 5);
    const self = spawnSync(process.execPath, [bin, 'generate', '--device', 'cpu', '--model', target, '--prompt-ids', prompt, '--max-new-tokens', '16', '--draft', costly], { encoding: 'utf8' });
    assert.strictEqual(self.status, 0, self.stderr);
    assert.match(self.stderr, /; \d+ of \d+ steps decoded plainly \(no proposal paid on this hardware; a fixed size, --draft-k, --medusa-tree or --eagle-tree, forces one\)/);
    const forced = spawnSync(process.execPath, [bin, 'generate', '--device', 'cpu', '--model', target, '--prompt-ids', prompt, '--max-new-tokens', '16', '--draft', target, '--draft-k', '4'], { encoding: 'utf8' });
    assert.strictEqual(forced.status, 0, forced.stderr);
    assert.doesNotMatch(forced.stderr, /decoded plainly/);
  });

  it('--eagle with an EAGLE-3 head (8-layer target) reproduces plain greedy decoding, fixed tree and sized', () => {
    const deep = makeCheckpoint({ ...spec, name: 'deep', layers: 8 }, testSeed + 2);
    const head = writeEagle3Head({ hidden: spec.hidden, heads: 4, kvHeads: 2, intermediate: 48, vocab: spec.vocab, draftVocab: 40, seed: testSeed });
    const plain = generate(['--model', deep, '--prompt-ids', prompt, '--max-new-tokens', '16']) as Rec;
    for (const extra of [['--eagle-tree', '3,2,5'], []]) {
      const r = generate(['--model', deep, '--prompt-ids', prompt, '--max-new-tokens', '16', '--eagle', head, ...extra]) as Rec;
      assert.deepStrictEqual(r.tokens, plain.tokens, `--eagle ${extra.join(' ')}`);
    }
  });

  it('sampling without --top-k (or with --top-k 0: off) runs with a strategy, as plain decoding does', () => {
    // A speculative run used to refuse the CLI's default --top-k 0 ("topK must be an integer >= 1").
    const args = ['--model', target, '--prompt-ids', '3,4,5,3,4,5,3', '--max-new-tokens', '12', '--temperature', '0.8', '--seed', '7'];
    for (const strategy of [['--draft', draft], ['--prompt-lookup', '2']]) {
      const a = generate([...args, ...strategy]) as Rec;
      const b = generate([...args, ...strategy, '--top-k', '0']) as Rec;
      assert.strictEqual(a.tokens.length, 12, strategy.join(' '));
      assert.deepStrictEqual(a.tokens, b.tokens, `${strategy.join(' ')}: --top-k 0 is no top-k`);
    }
  });

  it('sampled speculative runs are reproducible and sequence i does not depend on the rest of the batch', () => {
    const args = ['--model', target, '--max-new-tokens', '12', '--temperature', '0.8', '--top-k', '20', '--seed', '7', '--draft', draft];
    const a = generate([...args, '--batch-file', batchFile]) as Rec[];
    const b = generate([...args, '--batch-file', batchFile]) as Rec[];
    assert.deepStrictEqual(a.map((x) => x.tokens), b.map((x) => x.tokens));
    const single = generate([...args, '--prompt-ids', '3,4,5,3,4,5,3']) as Rec;
    assert.deepStrictEqual(single.tokens, a[0]!.tokens);
  });
});
