// How a decoding step talks to the device, counted (lib/transfers.ts): uploads, reads to the host
// (each one a wait on CUDA), calls from JS. The counting points are shared by both backends, so these
// CPU runs assert the structure the CUDA backend gets: one packed upload per forward, no read-back
// of indices the host already has, greedy draft chains read back once, nothing bulky through JS.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { SpeculativeDecoder } from '../lib/decoder';
import { Engine } from '../lib/engine/engine';
import type { StagedVerify, VerifiedPaths } from '../lib/models/causal_lm';
import { LlamaModel } from '../lib/models/llama';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import { argmax, argmaxIds, processLogits, topK } from '../lib/sampling';
import { gatherRows } from '../lib/step_helpers';
import { Tensor } from '../lib/tensor';
import { MC_SIM_7B_63 } from '../lib/tree';
import { transferCounters, transfersSince, type TransferStats } from '../lib/transfers';
import { verify, verifyMany, type VerifyOutput } from '../lib/verify';
import { randomWeights, specByName, writeCheckpoint } from './fixtures/checkpoints';
import { writeSafetensors } from '../lib/safetensors';
import { withoutFastPaths } from './fixtures/without_fast_paths';
import { assertThrowsCode, rng, testSeed } from './helpers';

const DEFAULT = path.join(__dirname, '..', '..', 'models', 'default');

async function counted<T>(fn: () => T | Promise<T>): Promise<{ value: T; t: TransferStats }> {
  const c0 = transferCounters();
  const value = await fn();
  return { value, t: transfersSince(c0) };
}

describe('transfers: host <-> device traffic of a step', function () {
  let dir: string;
  let model: LlamaModel;
  const V = specByName('llama-gqa-f32').vocab;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-transfers-'));
    writeCheckpoint(dir, { ...specByName('llama-gqa-f32'), name: 'transfers' }, testSeed);
    model = await LlamaModel.load(dir);
  });
  after(() => {
    model.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a forward is one upload (ids, positions, mask and page tables together) and no wait', async () => {
    const seq = model.createSequence();
    const r = rng(testSeed);
    const prompt = Int32Array.from({ length: 21 }, () => Math.floor(r() * V));
    const a = await counted(() => model.forward([{ seq, tokens: prompt }]));
    assert.deepStrictEqual([a.t.uploads, a.t.readbacks, a.t.blockingWaits], [1, 0, 0], JSON.stringify(a.t));
    a.value.logits.dispose();
    model.commit([seq], [Int32Array.from(prompt.keys())]);
    // A tree with its mask: still one upload.
    const tree = { seq, tokens: Int32Array.of(1, 2, 3, 4, 5), parents: Int32Array.of(-1, 0, 0, 1, 2) };
    const b = await counted(() => model.forward([tree]));
    assert.deepStrictEqual([b.t.uploads, b.t.readbacks, b.t.blockingWaits], [1, 0, 0], JSON.stringify(b.t));
    b.value.logits.dispose();
    // Committing a path that must move (nodes 0, 2, 4) uploads its indices once, reads nothing back.
    const c = await counted(() => model.commit([seq], [Int32Array.of(0, 2, 4)]));
    assert.deepStrictEqual([c.t.uploads, c.t.readbacks], [1, 0], JSON.stringify(c.t));
    assert.strictEqual(model.sequenceLength(seq), 21 + 3);
    // A chain prefix is already in place: committing it touches no device memory at all.
    const d0 = await model.forward([{ seq, tokens: Int32Array.of(7, 8, 9) }]);
    d0.logits.dispose();
    const d = await counted(() => model.commit([seq], [Int32Array.of(0, 1)]));
    assert.deepStrictEqual([d.t.uploads, d.t.readbacks], [0, 0], JSON.stringify(d.t));
    assert.strictEqual(model.sequenceLength(seq), 26);
    // Validated on the host all the same: a node outside the forward is an error, nothing changes.
    const e0 = await model.forward([{ seq, tokens: Int32Array.of(7, 8) }]);
    e0.logits.dispose();
    assertThrowsCode(() => model.commit([seq], [Int32Array.of(0, 5)]), 'E_ARG', /outside the 2 tokens/);
    assert.strictEqual(model.sequenceLength(seq), 26);
    model.freeSequence(seq);
  });

  it('a greedy draft chain of k steps makes ONE upload (all steps planned at once) and ONE read-back (picks stay on the device)', async () => {
    const seq = model.createSequence();
    const prompt = Int32Array.of(3, 1, 4, 1, 5, 9, 2, 6);
    const free = model.kvInfo().freePages;
    for (const k of [1, 5]) {
      const a = await counted(() => model.greedyChain([{ seq, tokens: prompt }], [k]));
      assert.strictEqual(a.value[0]?.length, k);
      assert.deepStrictEqual([a.t.uploads, a.t.readbacks, a.t.blockingWaits], [1, 1, 1], `k=${k}: ${JSON.stringify(a.t)}`);
      assert.strictEqual(model.sequenceLength(seq), prompt.length + k - 1, 'the chain commits every token it fed');
      model.truncate(seq, 0);
      assert.strictEqual(model.kvInfo().freePages, free, 'every page back');
    }
    // Two sequences whose chains end at different steps (the batch shrinks): still one read-back.
    const seq2 = model.createSequence();
    const b = await counted(() => model.greedyChain([{ seq, tokens: prompt }, { seq: seq2, tokens: prompt.subarray(0, 3) }], [4, 2]));
    assert.deepStrictEqual(b.value.map((x) => x.length), [4, 2]);
    assert.deepStrictEqual([b.t.readbacks, b.t.blockingWaits], [1, 1], JSON.stringify(b.t));
    model.freeSequence(seq);
    model.freeSequence(seq2);
  });

  it('verify is one upload and one read-back, and still rejects a bad tree', async () => {
    const r = rng(testSeed + 1);
    const logits = Tensor.fromArray(Float32Array.from({ length: 4 * V }, () => r()), 'f32', [4, V]);
    const input = { mode: 'greedy' as const, nodeIndptr: Int32Array.of(0, 4), parents: Int32Array.of(-1, 0, 1, 1), tokens: Int32Array.of(1, 2, 3, 4), target: logits };
    const a = await counted(() => verify(input));
    assert.deepStrictEqual([a.t.uploads, a.t.readbacks, a.t.blockingWaits], [1, 1, 1], JSON.stringify(a.t));
    assertThrowsCode(() => verify({ ...input, parents: Int32Array.of(-1, 0, 3, 1) }), 'E_ARG', /node 2 of sequence 0 has parent 3/);
    assertThrowsCode(() => verify({ ...input, tokens: Int32Array.of(1, 2, V, 4) }), 'E_ARG', /outside the vocabulary/);
    // argmaxOf: the row argmaxes come back in the same read, equal to the argmax op's.
    const b = await counted(() => verify({ ...input, argmaxOf: logits }));
    assert.deepStrictEqual([b.t.uploads, b.t.readbacks], [1, 1], JSON.stringify(b.t));
    const ids = argmax(logits);
    assert.deepStrictEqual(Array.from(b.value.argmax ?? []), Array.from(ids.toInt32()));
    assert.deepStrictEqual(b.value.emitted, a.value.emitted);
    ids.dispose();
    logits.dispose();
  });

  it('a verified tree step is ONE upload: the forward stages the verification inputs, the commit moves K/V from the verification result', async () => {
    const r = rng(testSeed + 4);
    const prompts = [Int32Array.from({ length: 9 }, () => Math.floor(r() * V)), Int32Array.from({ length: 4 }, () => Math.floor(r() * V))];
    // Trees: sequence 0 a 5-node tree, sequence 1 a 4-node one; parents as verify() reads them.
    const parents = [Int32Array.of(-1, 0, 0, 1, 2), Int32Array.of(-1, 0, 1, 0)];
    const tokens = [Int32Array.of(prompts[0]?.[8] ?? 0, 0, 0, 0, 0), Int32Array.of(prompts[1]?.[3] ?? 0, 0, 0, 0)];
    // Two pairs of sequences with the same prompts: one steps staged, the other as before.
    const pairs = [0, 1].map(() =>
      prompts.map((p) => {
        const s = model.createSequence();
        return { seq: s, prompt: p };
      }),
    );
    for (const pair of pairs) {
      const f = await model.forward(pair.map((x) => ({ seq: x.seq, tokens: x.prompt.subarray(0, x.prompt.length - 1) })));
      f.logits.dispose();
      model.commit(pair.map((x) => x.seq), pair.map((x) => Int32Array.from({ length: x.prompt.length - 1 }, (_, i) => i)));
    }
    const inputs = (pair: { seq: number }[]): { seq: number; tokens: Int32Array; parents: Int32Array }[] =>
      pair.map((x, b) => ({ seq: x.seq, tokens: tokens[b] as Int32Array, parents: parents[b] as Int32Array }));
    const seqsOf = (pair: { seq: number }[]): number[] => pair.map((x) => x.seq);
    // Tokens that make greedy verification accept a path that must move: 0 -> 2 -> 4 in sequence 0
    // (node 1 is not the argmax at the root), 0 -> 3 in sequence 1. A node's logits depend on its
    // ancestors only, so each token is fixed from one forward before it is used.
    const pin = async (b: number, node: number, from: number, miss?: number): Promise<void> => {
      const f = await model.forward(inputs(pairs[0] as { seq: number }[]));
      const top = argmaxIds(f.logits);
      f.logits.dispose();
      const best = top[(f.indptr[b] as number) + from] as number;
      (tokens[b] as Int32Array)[node] = best;
      if (miss !== undefined) (tokens[b] as Int32Array)[miss] = (best + 1) % V;
    };
    await pin(0, 2, 0, 1);
    await pin(0, 4, 2);
    await pin(1, 3, 0, 1);
    const flatParents = Int32Array.from([...(parents[0] as Int32Array), ...(parents[1] as Int32Array)]);
    const flatTokens = Int32Array.from([...(tokens[0] as Int32Array), ...(tokens[1] as Int32Array)]);
    const nodeIndptr = Int32Array.of(0, 5, 9);

    // Staged: one upload for the whole step, one read-back (the verification result).
    const staged = await counted(async () => {
      const f = await model.forward(inputs(pairs[0] as { seq: number }[]), { stage: { parents: flatParents } });
      const st = f.staged;
      assert.ok(st, 'the forward staged the verification inputs');
      const v = verify({ mode: 'greedy', nodeIndptr, parents: flatParents, tokens: flatTokens, target: f.logits, staged: st });
      // A staged copy that is not these trees is refused, never used.
      const other = Int32Array.from(flatParents);
      other[4] = 1;
      assertThrowsCode(() => verify({ mode: 'greedy', nodeIndptr, parents: other, tokens: flatTokens, target: f.logits, staged: st }), 'E_ARG', /staged other trees/);
      assertThrowsCode(() => verify({ mode: 'greedy', nodeIndptr, parents: flatParents, tokens: flatTokens, target: f.logits, staged: st, tails: [undefined, undefined] }), 'E_ARG', /tails: not with staged/);
      // A handle is only read as what it is.
      assertThrowsCode(() => verify({ mode: 'greedy', nodeIndptr, parents: flatParents, tokens: flatTokens, target: f.logits, staged: v.paths as unknown as StagedVerify }), 'E_ARG', /another kind of handle/);
      assertThrowsCode(() => model.commit(seqsOf(pairs[0] as { seq: number }[]), v.acceptedNodes, st as unknown as VerifiedPaths), 'E_ARG', /paths: .*another kind of handle/);
      f.logits.dispose();
      model.commit(seqsOf(pairs[0] as { seq: number }[]), v.acceptedNodes, v.paths);
      return v;
    });
    assert.deepStrictEqual(staged.value.acceptedNodes.map((a) => Array.from(a)), [[0, 2, 4], [0, 3]]);
    assert.deepStrictEqual([staged.t.uploads, staged.t.readbacks, staged.t.blockingWaits], [1, 1, 1], JSON.stringify(staged.t));
    // As before: the forward, the verification and the commit upload one each.
    const plain = await counted(async () => {
      const f = await model.forward(inputs(pairs[1] as { seq: number }[]));
      const v = verify({ mode: 'greedy', nodeIndptr, parents: flatParents, tokens: flatTokens, target: f.logits });
      f.logits.dispose();
      model.commit(seqsOf(pairs[1] as { seq: number }[]), v.acceptedNodes);
      return v;
    });
    assert.deepStrictEqual([plain.t.uploads, plain.t.readbacks], [3, 1], JSON.stringify(plain.t));
    assert.deepStrictEqual(staged.value.emitted, plain.value.emitted);
    // The same caches: a probe token after each sequence gives the same logits bit for bit.
    const probe = await model.forward([...(pairs[0] as { seq: number }[]), ...(pairs[1] as { seq: number }[])].map((x) => ({ seq: x.seq, tokens: Int32Array.of(7) })));
    const rows = probe.logits.toFloat32();
    probe.logits.dispose();
    assert.deepStrictEqual(Array.from(rows.subarray(0, 2 * V)), Array.from(rows.subarray(2 * V, 4 * V)), 'caches after a staged and an unstaged step');

    // Sampled: seeds and counters staged too; the same draws as unstaged. Paths that are not the
    // accepted lists given to commit are not used (the indices are uploaded instead).
    const seeds = BigUint64Array.of(11n, 12n), offsets = BigUint64Array.of(3n, 4n);
    const draws: Int32Array[][] = [];
    for (const [i, pair] of pairs.entries()) {
      const f = await model.forward(inputs(pair), i === 0 ? { stage: { parents: flatParents, seeds, offsets } } : {});
      const probs = processLogits(f.logits, { temperature: 1.5 });
      const c = await counted(() => verify({ mode: 'rejection', nodeIndptr, parents: flatParents, tokens: flatTokens, target: probs, seeds, offsets, ...(f.staged ? { staged: f.staged } : {}) }));
      assert.strictEqual(c.t.uploads, i === 0 ? 0 : 1, JSON.stringify(c.t));
      draws.push(c.value.emitted);
      f.logits.dispose();
      probs.dispose();
      const keep = c.value.acceptedNodes.map((a) => a.subarray(0, 1));
      const m = await counted(() => model.commit(seqsOf(pair), keep, c.value.paths));
      assert.strictEqual(m.t.uploads, 0, 'root only: nothing moves');
    }
    assert.deepStrictEqual(draws[0], draws[1]);
    for (const pair of pairs) for (const x of pair) model.freeSequence(x.seq);
  });

  it('parts verified separately (an engine step with two sampling settings) take their staged arrays from the one upload, and commit from their results', async () => {
    const r = rng(testSeed + 5);
    // Two sets of three sequences with the same prompt: one steps staged, the other as before.
    const sets = [0, 1].map(() => [0, 1, 2].map(() => model.createSequence()));
    const pre = Int32Array.from({ length: 6 }, () => Math.floor(r() * V));
    for (const seqs of sets) {
      const f0 = await model.forward(seqs.map((seq) => ({ seq, tokens: pre })));
      f0.logits.dispose();
      model.commit(seqs, seqs.map(() => Int32Array.from(pre.keys())));
    }
    // Part 0: sequences 0 and 1, rejection sampling; part 1: sequence 2, greedy, whose tokens make
    // it accept nodes 0 and 2 (node 1 is not the argmax at the root): a path that moves, committed
    // from part 1's result (its sequences start at 2 in the forward).
    const trees = [
      { parents: Int32Array.of(-1, 0, 1, 1), tokens: Int32Array.of(7, 8, 9, 10) },
      { parents: Int32Array.of(-1, 0), tokens: Int32Array.of(11, 12) },
      { parents: Int32Array.of(-1, 0, 0), tokens: Int32Array.of(pre[5] as number, 0, 0) },
    ];
    const inputs = (seqs: number[]) => seqs.map((seq, b) => ({ seq, tokens: trees[b]!.tokens, parents: trees[b]!.parents }));
    {
      const f = await model.forward(inputs(sets[0]!));
      const top = argmaxIds(f.logits);
      f.logits.dispose();
      const best = top[6] as number;  // sequence 2's root row
      trees[2]!.tokens[1] = (best + 1) % V;
      trees[2]!.tokens[2] = best;
    }
    const cat = (xs: Int32Array[]): Int32Array => Int32Array.from(xs.flatMap((x) => Array.from(x)));
    const seeds = BigUint64Array.of(21n, 22n, 0n), offsets = BigUint64Array.of(5n, 6n, 0n);
    const stage = { parents: cat(trees.map((t) => t.parents)), parts: Int32Array.of(0, 2, 3), seeds, offsets };
    const part0 = { mode: 'rejection' as const, nodeIndptr: Int32Array.of(0, 4, 6), parents: cat([trees[0]!.parents, trees[1]!.parents]), tokens: cat([trees[0]!.tokens, trees[1]!.tokens]), seeds: seeds.subarray(0, 2), offsets: offsets.subarray(0, 2) };
    const part1 = { mode: 'greedy' as const, nodeIndptr: Int32Array.of(0, 3), parents: trees[2]!.parents, tokens: trees[2]!.tokens };
    const run = async (staged: boolean, seqs: number[]): Promise<{ t: TransferStats; emitted: number[][]; accepted: number[][] }> => {
      const c0 = transferCounters();
      const f = await model.forward(inputs(seqs), staged ? { stage } : {});
      const l0 = f.logits.rows(0, 6), l1 = f.logits.rows(6, 9);
      const probs = processLogits(l0, { temperature: 0.8 });
      const st = staged ? f.staged : undefined;
      if (st) {
        // A part is named exactly when the forward staged parts.
        assertThrowsCode(() => verify({ ...part1, target: l1, staged: st }), 'E_ARG', /stagedPart/);
        assertThrowsCode(() => verify({ ...part1, target: l1, staged: st, stagedPart: 2 }), 'E_ARG', /stagedPart: 2/);
        assertThrowsCode(() => verify({ ...part1, target: l1, staged: st, stagedPart: 0 }), 'E_ARG', /staged other trees/);
      }
      // Staged: both parts in one call, read back together; unstaged: one call each.
      const in0 = { ...part0, target: probs, ...(st ? { staged: st, stagedPart: 0 } : {}) };
      const in1 = { ...part1, target: l1, ...(st ? { staged: st, stagedPart: 1 } : {}) };
      const [v0, v1] = staged ? (verifyMany([in0, in1]) as [VerifyOutput, VerifyOutput]) : [verify(in0), verify(in1)];
      const accepted = [...v0.acceptedNodes, ...v1.acceptedNodes];
      if (staged) model.commit(seqs, accepted, [v0.paths, v1.paths].filter((x) => x !== undefined));
      else model.commit(seqs, accepted);
      const t = transfersSince(c0);
      for (const x of [f.logits, l0, l1, probs]) x.dispose();
      return { t, emitted: [...v0.emitted, ...v1.emitted].map((e) => Array.from(e)), accepted: accepted.map((a) => Array.from(a)) };
    };
    const a = await run(true, sets[0]!), b = await run(false, sets[1]!);
    assert.deepStrictEqual(a.emitted, b.emitted);
    assert.deepStrictEqual(a.accepted[2], [0, 2], 'sequence 2 keeps a path that moves');
    assert.deepStrictEqual([a.t.uploads, a.t.readbacks, a.t.blockingWaits], [1, 1, 1], JSON.stringify(a.t));
    assert.deepStrictEqual([b.t.uploads, b.t.readbacks], [4, 2], JSON.stringify(b.t));
    assertThrowsCode(() => verifyMany([]), 'E_ARG', /empty array/);
    // The same caches: a probe token after each sequence, bit for bit.
    const probe = await model.forward([...sets[0]!, ...sets[1]!].map((seq) => ({ seq, tokens: Int32Array.of(2) })));
    const rows = probe.logits.toFloat32();
    probe.logits.dispose();
    assert.deepStrictEqual(Array.from(rows.subarray(0, 3 * V)), Array.from(rows.subarray(3 * V)));
    for (const s of sets.flat()) model.freeSequence(s);
  });

  it('gatherRows copies rows natively (no read-back) and equals a copy made by hand', () => {
    const r = rng(testSeed + 2);
    const a = Tensor.fromArray(Float32Array.from({ length: 3 * 7 }, () => r()), 'f32', [3, 7]);
    const b = Tensor.fromArray(Float32Array.from({ length: 2 * 7 }, () => r()), 'f32', [2, 7]);
    const c0 = transferCounters();
    const g = gatherRows([{ tensor: b, row: 1 }, { tensor: a, row: 2 }, { tensor: a, row: 0 }], 7, 'cpu');
    const t = transfersSince(c0);
    assert.deepStrictEqual([t.uploads, t.readbacks], [0, 0], JSON.stringify(t));
    const ha = a.toFloat32(), hb = b.toFloat32();
    assert.deepStrictEqual(Array.from(g.toFloat32()), [...hb.subarray(7, 14), ...ha.subarray(14, 21), ...ha.subarray(0, 7)]);
    // Device ops: one copy per run of consecutive rows of one tensor (b:1 | a:2 | a:0: three runs).
    assert.strictEqual(t.deviceOps, 3, JSON.stringify(t));
    const run = transferCounters();
    const h = gatherRows([0, 1, 2].map((row) => ({ tensor: a, row })), 7, 'cpu');
    assert.strictEqual(transfersSince(run).deviceOps, 1, 'rows 0, 1, 2 of one tensor: one copy');
    assert.deepStrictEqual(Array.from(h.toFloat32()), Array.from(ha));
    h.dispose();
    assertThrowsCode(() => gatherRows([{ tensor: a, row: 3 }], 7, 'cpu'), 'E_ARG', /outside the 3 rows/);
    assertThrowsCode(() => gatherRows([{ tensor: a, row: 0 }], 6, 'cpu'), 'E_ARG', /expected rows of width 6 or narrower/);
    // Wider: each row zero-padded (a draft whose vocabulary is a prefix of the target's).
    const p = gatherRows([{ tensor: b, row: 1 }, { tensor: a, row: 2 }, { tensor: a, row: 0 }], 10, 'cpu');
    assert.deepStrictEqual(p.shape, [3, 10]);
    const z = [0, 0, 0];
    assert.deepStrictEqual(Array.from(p.toFloat32()), [...hb.subarray(7, 14), ...z, ...ha.subarray(14, 21), ...z, ...ha.subarray(0, 7), ...z]);
    for (const x of [a, b, g, p]) x.dispose();
  });
});

describe('transfers: whole decoding runs on the embedded family', function () {
  let target: LlamaModel;
  let draft: LlamaModel;
  before(async () => {
    target = await LlamaModel.load(path.join(DEFAULT, 'target'));
    draft = await LlamaModel.load(path.join(DEFAULT, 'draft'));
  });
  after(() => {
    target.dispose();
    draft.dispose();
  });
  const prompt = Int32Array.from({ length: 12 }, (_, i) => 5 + i);

  it('plain greedy decoding: one upload and one wait per chain of plain steps, a few bytes to JS', async () => {
    // The plain steps after the prefill run as native chains (lib/plain_chain.ts): counted here.
    let chains = 0;
    const orig = target.greedyChain.bind(target);
    (target as { greedyChain: LlamaModel['greedyChain'] }).greedyChain = (inputs, steps, opts) => {
      chains++;
      return orig(inputs, steps, opts);
    };
    try {
      const r = await new SpeculativeDecoder({ target }).generate(prompt, { maxNewTokens: 24 }).result;
      const t = r.stats.transfers;
      const forwards = r.stats.targetForwards;
      assert.strictEqual(forwards, 24, 'the prefill and a forward for each further token');
      assert.ok(chains >= 1 && chains < forwards - 1, `${chains} chains for ${forwards - 1} plain steps`);
      // The prefill is one upload, and so is each chain, all its steps planned at once; the
      // prefill's pick and each chain's picks are one read-back after one wait.
      assert.strictEqual(t.uploads, 1 + chains, JSON.stringify(t));
      assert.strictEqual(t.blockingWaits, 1 + chains, JSON.stringify(t));
      assert.ok(t.readbackBytes <= 8 * forwards, JSON.stringify(t));
    } finally {
      delete (target as { greedyChain?: unknown }).greedyChain;
    }
  });

  it('device ops (kernel launches on CUDA): the same count every plain decode step, a bounded number per layer', async () => {
    const seq = target.createSequence();
    try {
      const out = await target.forward([{ seq, tokens: prompt }]);
      out.logits.dispose();
      target.commit([seq], [Int32Array.from(prompt.keys())]);
      const perStep: number[] = [];
      for (let i = 0; i < 5; i++) {
        const c0 = transferCounters();
        const o = await target.forward([{ seq, tokens: Int32Array.of(7 + i) }]);
        const ids = argmax(o.logits);
        ids.toInt32();
        ids.dispose();
        o.logits.dispose();
        target.commit([seq], [Int32Array.of(0)]);
        perStep.push(transfersSince(c0).deviceOps);
      }
      const L = target.config.numLayers;
      assert.ok(perStep.every((n) => n === perStep[0]), `ops per step: ${perStep}`);
      // Per layer: 4 projection ops (q/k/v and gate/up grouped), rope of q and k with the KV append
      // (one op), attention, SiLU-mul, 2 residual adds each with the next norm (+ a copy or two);
      // around them the embedding, the first norm, the LM head and the argmax.
      assert.ok((perStep[0] as number) >= 9 * L && (perStep[0] as number) <= 20 * L + 8, `ops per step: ${perStep[0]} for ${L} layers`);
    } finally {
      target.freeSequence(seq);
    }
  });

  it('greedy draft-model steps: ONE wait each (the picks go from draft to target on the device) and at most six calls into the addon', async () => {
    const plain = await new SpeculativeDecoder({ target }).generate(prompt, { maxNewTokens: 40 }).result;
    const speculator = new DraftModelSpeculator({ draft, k: 4 });
    const r = await new SpeculativeDecoder({ target, speculator }).generate(prompt, { maxNewTokens: 40 }).result;
    assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens), 'greedy output');
    const t = r.stats.transfers;
    const forwards = r.stats.targetForwards;
    assert.ok(forwards >= 4 && r.stats.tokensPerForward > 1.5, JSON.stringify(r.stats));
    // One wait per target forward: the prefill's token, then each step's verification result.
    assert.strictEqual(t.blockingWaits, forwards, `${t.blockingWaits} waits for ${forwards} forwards`);
    assert.ok(t.napiCalls <= 6 * forwards, `${t.napiCalls} N-API calls for ${forwards} forwards`);
    assert.ok(t.readbackBytes <= 256 * forwards, `${t.readbackBytes} bytes read back for ${forwards} forwards`);
    // Step by step (no native chain) the same tokens come out, with a wait per drafted token.
    const slow = await new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: withoutFastPaths(draft), k: 4 }) }).generate(prompt, { maxNewTokens: 40 }).result;
    assert.deepStrictEqual(Array.from(slow.tokens), Array.from(plain.tokens));
    assert.ok(slow.stats.transfers.blockingWaits > 2 * forwards, JSON.stringify(slow.stats.transfers));
  });

  it('device tails are refused unless the library made the ids', async () => {
    const seq = target.createSequence();
    const fake = Tensor.fromArray(Int32Array.of(1, 2, 3), 'i32');
    await assert.rejects(target.forward([{ seq, tokens: Int32Array.of(5, 0, 0), tail: { ids: fake, offset: 0 } }]), /expected token ids made by the library/);
    const logits = Tensor.fromArray(new Float32Array(3 * target.config.vocabSize), 'f32', [3, target.config.vocabSize]);
    assertThrowsCode(
      () => verify({ mode: 'greedy', nodeIndptr: Int32Array.of(0, 3), parents: Int32Array.of(-1, 0, 1), tokens: Int32Array.of(5, 0, 0), target: logits, tails: [{ ids: fake, offset: 0 }] }),
      'E_ARG',
      /made by the library/,
    );
    // Library-made ids, but too few for the chain: E_ARG, nothing read out of bounds.
    const d = draft.createSequence();
    const ids = await draft.greedyChainOnDevice([{ seq: d, tokens: Int32Array.of(5, 6) }], [2]);
    await assert.rejects(target.forward([{ seq, tokens: Int32Array.of(5, 0, 0, 0), tail: { ids, offset: 0 } }]), /do not fit/);
    for (const x of [fake, logits, ids]) x.dispose();
    target.freeSequence(seq);
    draft.freeSequence(d);
  });

  it('sampled draft-model steps: the native sampled chain draws exactly what step-by-step drafting draws, its picks stay on the device: one wait a step', async () => {
    const sampling = { temperature: 0.9, topP: 0.95, seed: testSeed % 1000 };
    const prompts = [prompt, prompt.subarray(0, 5)];
    const run = async (d: typeof draft | ReturnType<typeof withoutFastPaths>): Promise<{ tokens: number[][]; t: TransferStats; steps: number }> => {
      const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: d, k: 4 }), sampling });
      const rs = await dec.generateBatch(prompts, { maxNewTokens: 40 });
      return { tokens: rs.map((r) => Array.from(r.tokens)), t: (rs[0] as { stats: { transfers: TransferStats } }).stats.transfers, steps: Math.max(...rs.map((r) => r.stats.targetForwards)) - 1 };
    };
    const fast = await run(draft);
    const slow = await run(withoutFastPaths(draft));
    assert.deepStrictEqual(fast.tokens, slow.tokens, 'the same draws, the same verification, the same tokens');
    // The prefill's wait, then one a step: the verification's result (the draft's picks are never read back).
    assert.ok(fast.t.blockingWaits <= fast.steps + 2, `${fast.t.blockingWaits} waits for ${fast.steps} steps`);
    assert.ok(slow.t.blockingWaits > fast.t.blockingWaits, `step by step: ${slow.t.blockingWaits} waits, native chain ${fast.t.blockingWaits}`);
  });

  it('a sampled draw without mass left on the device is E_NUMERIC at verification, never a token or a stray read', async () => {
    // A draft whose final norm is NaN: every logits row is NaN, so no row has mass and each draw is
    // kNoMass. The picks never come back to the host; the verification reports them.
    const spec = { ...specByName('llama-gqa-f32'), name: 'nan-draft', vocab: target.config.vocabSize, tokenizer: false };
    const nanDir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-nan-draft-'));
    writeCheckpoint(nanDir, spec, testSeed + 9);
    const w = randomWeights(spec, testSeed + 9);
    (w['model.norm.weight'] as { data: Float32Array }).data.fill(NaN);
    writeSafetensors(path.join(nanDir, 'model.safetensors'), w, { format: 'pt' });
    const nanDraft = await LlamaModel.load(nanDir);
    try {
      // A fixed prompt: with a prompt drawn from the test seed, about 1 in 30,000 made the target's
      // first sampled token (seed 5) EOS, which ends the run before any draft step (no rejection).
      const r = rng(10);
      const p = Int32Array.from({ length: 9 }, () => 3 + Math.floor(r() * (target.config.vocabSize - 3)));
      // The picks are kNoMass on the device, not read back.
      const d = nanDraft.createSequence();
      const chain = await counted(() => nanDraft.sampledChainOnDevice([{ seq: d, tokens: p }], [3], { temperature: 1 }, [1n], [[0n, 1n, 2n]]));
      assert.strictEqual(chain.t.readbacks, 0, JSON.stringify(chain.t));
      chain.value.ids.dispose();
      chain.value.q.dispose();
      nanDraft.freeSequence(d);
      const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: nanDraft, k: 3 }), sampling: { temperature: 1, seed: 5 } });
      await assert.rejects(dec.generate(p, { maxNewTokens: 8 }).result, (e: Error & { code?: string }) => e.code === 'E_NUMERIC' && /no probability mass/.test(e.message));
      dec.dispose();
    } finally {
      nanDraft.dispose();
      fs.rmSync(nanDir, { recursive: true, force: true });
    }
  });

  it('Medusa heads fused and run with the verification: the same candidates as apply() + topK, one wait and four calls a step', async () => {
    const heads = MedusaHeads.load(path.join(DEFAULT, 'medusa'));
    const dev = heads.device;
    try {
      assert.strictEqual(dev, target.device, 'heads and target loaded with the default device are on the same one');
      const r = rng(testSeed + 3);
      const H = heads.config.hiddenSize, R = 3, K = 5;
      const x = Tensor.fromArray(Float32Array.from({ length: R * H }, () => 2 * r() - 1), 'f32', [R, H], dev);
      const ids = heads.topKIds(x, K);
      const logits = heads.apply(x);
      logits.forEach((l, h) => {
        const t = topK(l, K);
        assert.deepStrictEqual(Array.from(ids.subarray(h * R * K, (h + 1) * R * K)), Array.from(t.ids.toInt32()), `head ${h}`);
        t.ids.dispose();
        t.values.dispose();
        l.dispose();
      });
      x.dispose();
      // Run with a verification: the candidates at each sequence's last accepted node, in the same read.
      const V = heads.config.vocabSize;
      const nodeIndptr = Int32Array.of(0, 4, 7), parents = Int32Array.of(-1, 0, 1, 0, -1, 0, 1);
      const hidden = Tensor.fromArray(Float32Array.from({ length: 7 * H }, () => 2 * r() - 1), 'f32', [7, H], dev);
      const lg = Tensor.fromArray(Float32Array.from({ length: 7 * V }, () => r()), 'f32', [7, V], dev);
      const am = argmax(lg);
      const top = am.toInt32();
      am.dispose();
      // Node tokens chosen so that sequence 0 accepts 0 -> 1 -> 2 and sequence 1 accepts 0 -> 1.
      const tokens = Int32Array.of(9, top[0] as number, top[1] as number, (((top[0] as number) + 1) % V), 9, top[4] as number, ((top[5] as number) + 1) % V);
      const c = await counted(() => verify({ mode: 'greedy', nodeIndptr, parents, tokens, target: lg, headsOnAccepted: { heads: heads.weights(), k: K, hidden } }));
      assert.deepStrictEqual(c.value.acceptedNodes.map((a) => Array.from(a)), [[0, 1, 2], [0, 1]]);
      assert.deepStrictEqual([c.t.readbacks, c.t.blockingWaits], [1, 1], JSON.stringify(c.t));
      const last = gatherRows([{ tensor: hidden, row: 2 }, { tensor: hidden, row: 5 }], H, dev);
      assert.deepStrictEqual(Array.from(c.value.headsTopK ?? []), Array.from(heads.topKIds(last, K)));
      for (const t of [hidden, lg, last]) t.dispose();
      const plain = await new SpeculativeDecoder({ target }).generate(prompt, { maxNewTokens: 40 }).result;
      // A fixed tree (the default sizes it per step by the cost model, which may decode plainly).
      const choices = MC_SIM_7B_63.filter((c) => c.length <= heads.config.numHeads);
      const res = await new SpeculativeDecoder({ target, speculator: new MedusaSpeculator({ heads, choices }) }).generate(prompt, { maxNewTokens: 40 }).result;
      assert.deepStrictEqual(Array.from(res.tokens), Array.from(plain.tokens), 'greedy output');
      const t = res.stats.transfers;
      const forwards = res.stats.targetForwards;
      // One wait per forward, plus the heads' first run after the prefill.
      assert.strictEqual(t.blockingWaits, forwards + 1, `${t.blockingWaits} waits for ${forwards} forwards`);
      // One upload per step: the verification's inputs go with the forward's, the commit reads the
      // accepted path where the verification left it.
      assert.strictEqual(t.uploads, forwards, `${t.uploads} uploads for ${forwards} forwards`);
      assert.ok(t.napiCalls <= 4 * forwards + 4, `${t.napiCalls} N-API calls for ${forwards} forwards`);
    } finally {
      heads.dispose();
    }
  });

  it('an engine step with three sampling settings (three parts): one upload and one wait, the parts staged, verified in one call and committed from their results', async () => {
    const heads = MedusaHeads.load(path.join(DEFAULT, 'medusa'));
    try {
      const choices = MC_SIM_7B_63.filter((c) => c.length <= heads.config.numHeads);
      const engine = new Engine({ model: target, speculator: new MedusaSpeculator({ heads, choices }) });
      const c0 = transferCounters();
      const f0 = engine.metrics.forwards;
      const runs = await Promise.all([
        engine.generate(prompt, { maxNewTokens: 30, sampling: { temperature: 0.7 }, seed: 1 }).result,
        engine.generate(prompt, { maxNewTokens: 30, sampling: { temperature: 1.1 }, seed: 2 }).result,
        engine.generate(prompt, { maxNewTokens: 30 }).result,
      ]);
      const t = transfersSince(c0);
      const forwards = engine.metrics.forwards - f0;
      const plain = await new SpeculativeDecoder({ target }).generate(prompt, { maxNewTokens: 30 }).result;
      assert.deepStrictEqual(Array.from(runs[2]!.tokens), Array.from(plain.tokens), 'the greedy request');
      // One upload per forward, and the two sampled requests' first draws after their prefill.
      assert.ok(forwards >= 4 && t.uploads <= forwards + 2, `${t.uploads} uploads for ${forwards} forwards`);
      // One wait per forward (the parts' verifications read back together), and each group's
      // first token after the prefill.
      assert.ok(t.blockingWaits <= forwards + 3, `${t.blockingWaits} waits for ${forwards} forwards`);
    } finally {
      heads.dispose();
    }
  });

  it('lookahead and prompt lookup steps: one wait and one upload each (lookahead gets its window argmax with the verify result)', async () => {
    const plain = await new SpeculativeDecoder({ target }).generate(prompt, { maxNewTokens: 40 }).result;
    for (const speculator of [new LookaheadSpeculator({ W: 5, N: 3, G: 5, sizing: 'fixed' }), new PromptLookupSpeculator({ maxNgram: 3, numDraft: 10 })]) {
      const r = await new SpeculativeDecoder({ target, speculator }).generate(prompt, { maxNewTokens: 40 }).result;
      assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens), `${speculator.name}: greedy output`);
      const t = r.stats.transfers;
      // One wait per target forward (the prefill's included).
      assert.strictEqual(t.blockingWaits, r.stats.targetForwards, `${speculator.name}: ${JSON.stringify(t)} for ${r.stats.targetForwards} forwards`);
      assert.strictEqual(t.uploads, r.stats.targetForwards, `${speculator.name}: ${JSON.stringify(t)} for ${r.stats.targetForwards} forwards`);
      assert.ok(t.napiCalls <= 6 * r.stats.targetForwards, `${speculator.name}: ${t.napiCalls} N-API calls`);
    }
    // Sampled: the Philox keys and counters go with the forward too. One more upload in all: the
    // prefill's draw of the first root.
    for (const speculator of [new LookaheadSpeculator({ W: 5, N: 3, G: 5, sizing: 'fixed' }), new PromptLookupSpeculator({ maxNgram: 3, numDraft: 10 })]) {
      const r = await new SpeculativeDecoder({ target, speculator, sampling: { temperature: 0.8, seed: testSeed % 997 } }).generate(prompt, { maxNewTokens: 40 }).result;
      const t = r.stats.transfers;
      assert.strictEqual(t.uploads, r.stats.targetForwards + 1, `${speculator.name}, sampled: ${JSON.stringify(t)} for ${r.stats.targetForwards} forwards`);
      assert.strictEqual(t.blockingWaits, r.stats.targetForwards, `${speculator.name}, sampled: ${JSON.stringify(t)}`);
    }
  });
});
