// The native fast paths of the Llama runner that cut per-step overhead: tiny forwards on the
// calling thread (syncForwardMaxMacs), reused activation buffers, and greedyChain (k greedy draft
// steps in one native call). Each must give bit for bit what the plain path gives.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SpeculativeDecoder } from '../lib/decoder';
import type { CausalLM, SequenceInput } from '../lib/models/causal_lm';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { argmax } from '../lib/sampling';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import type { Device } from '../lib/tensor';
import { specByName, writeCheckpoint, type CheckpointSpec } from './fixtures/checkpoints';
import { describeCuda, rng, testSeed } from './helpers';
import { withoutFastPaths } from './fixtures/without_fast_paths';

// No EOS (generation runs its full length); 512 positions so a forward can exceed the scratch rows.
const TARGET: CheckpointSpec = { name: 'perf-target', architecture: 'LlamaForCausalLM', vocab: 96, hidden: 32, intermediate: 64, layers: 2, heads: 4, kvHeads: 2, maxPositions: 512, dtype: 'F32' };
const DRAFT: CheckpointSpec = { ...specByName('llama-mqa-bf16'), name: 'perf-draft', layers: 1 };

function sameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.strictEqual(a.length, b.length, `${what}: length`);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) assert.fail(`${what}: element ${i} differs (${a[i]} vs ${b[i]})`);
}

async function logitsOf(m: CausalLM, inputs: readonly SequenceInput[], hidden = false): Promise<{ logits: Float32Array; hidden?: Float32Array }> {
  const out = await m.forward(inputs, { hidden });
  const r: { logits: Float32Array; hidden?: Float32Array } = { logits: out.logits.toFloat32() };
  if (out.hidden) r.hidden = out.hidden.toFloat32();
  out.logits.dispose();
  out.hidden?.dispose();
  return r;
}

/** greedyChain through forward + argmax + commit, one step at a time (the reference semantics). */
async function stepwiseChain(m: CausalLM, inputs: readonly SequenceInput[], steps: readonly number[]): Promise<Int32Array[]> {
  const out: number[][] = inputs.map(() => []);
  let active = inputs.map((_, b) => b);
  const feed = inputs.map((i) => i.tokens);
  while (active.length > 0) {
    const fw = await m.forward(active.map((b) => ({ seq: inputs[b]!.seq, tokens: feed[b]! })));
    m.commit(
      active.map((b) => inputs[b]!.seq),
      active.map((b) => Int32Array.from(feed[b]!, (_, j) => j)),
    );
    const ids = argmax(fw.logits);
    const all = ids.toInt32();
    ids.dispose();
    fw.logits.dispose();
    const next: number[] = [];
    active.forEach((b, i) => {
      const t = all[fw.indptr[i + 1]! - 1]!;
      out[b]!.push(t);
      if (out[b]!.length < steps[b]!) {
        feed[b] = Int32Array.of(t);
        next.push(b);
      }
    });
    active = next;
  }
  return out.map((o) => Int32Array.from(o));
}

async function expectCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error & { code?: string }) => {
    assert.strictEqual(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    if (message) assert.match(e.message, message);
    return true;
  });
}

function suite(device: Device): void {
  let root: string;
  let targetDir: string;
  let draftDir: string;
  const r = rng(testSeed ^ 0x5eed);
  const randomTokens = (n: number, vocab: number): Int32Array => Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
  const load = (dir: string, syncForwardMaxMacs?: number): Promise<LlamaModel> =>
    LlamaModel.load(dir, { device, maxSequences: 4, ...(syncForwardMaxMacs !== undefined ? { syncForwardMaxMacs } : {}) });

  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-perf-test-'));
    targetDir = path.join(root, 'target');
    draftDir = path.join(root, 'draft');
    writeCheckpoint(targetDir, TARGET, 0x1001);
    writeCheckpoint(draftDir, DRAFT, 0x2002);
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('forwards on the calling thread equal forwards on the pool, bit for bit', async () => {
    const onPool = await load(targetDir, 0);
    const here = await load(targetDir, Number.MAX_VALUE);
    try {
      const a = onPool.createSequence();
      const b = here.createSequence();
      const prompt = randomTokens(9, TARGET.vocab);
      for (let step = 0; step < 4; step++) {
        const toks = step === 0 ? prompt : randomTokens(1 + step, TARGET.vocab);
        const x = await logitsOf(onPool, [{ seq: a, tokens: toks }], true);
        // A setImmediate queued before the forward has not run when a calling-thread forward
        // resolves: the event loop was not entered.
        let turned = false;
        setImmediate(() => (turned = true));
        const y = await logitsOf(here, [{ seq: b, tokens: toks }], true);
        assert.strictEqual(turned, false, 'syncForwardMaxMacs = MAX_VALUE: the forward went through the event loop');
        sameBits(y.logits, x.logits, `step ${step} logits`);
        sameBits(y.hidden!, x.hidden!, `step ${step} hidden`);
        onPool.commit([a], [Int32Array.from(toks, (_, j) => j)]);
        here.commit([b], [Int32Array.from(toks, (_, j) => j)]);
      }
      // Errors still reject the promise (never a synchronous throw from a settled-promise path).
      await expectCode(here.forward([{ seq: b, tokens: Int32Array.of(TARGET.vocab) }]), 'E_ARG', /outside the vocabulary/);
    } finally {
      onPool.dispose();
      here.dispose();
    }
  });

  it('a long run of calling-thread forwards still lets the event loop turn (timers, abort signals)', async () => {
    const here = await load(targetDir, Number.MAX_VALUE);
    try {
      const seq = here.createSequence();
      const tok = Int32Array.of(1);
      let turned = false;
      setImmediate(() => (turned = true));
      let n = 0;
      // Each forward is committed and cut back, so the context never fills.
      for (; n < 20000 && !turned; n++) {
        const out = await here.forward([{ seq, tokens: tok }]);
        out.logits.dispose();
        here.commit([seq], [Int32Array.of(0)]);
        here.truncate(seq, 0);
      }
      assert.ok(turned, `the event loop never turned during ${n} forwards`);
      assert.ok(n > 1, 'the first forwards ran on the calling thread');
    } finally {
      here.dispose();
    }
  });

  it('an abort from the event loop stops a long run of calling-thread forwards and greedy chains at their next turn', async () => {
    const here = await load(targetDir, Number.MAX_VALUE);
    try {
      const seq = here.createSequence();
      const tok = Int32Array.of(1);
      for (const chains of [false, true]) {
        // One call first: a kernel's first launch on CUDA loads its module (milliseconds), and a first
        // call longer than the time slice would let the abort in after it alone.
        if (chains) await here.greedyChain([{ seq, tokens: tok }], [2]);
        else {
          const out = await here.forward([{ seq, tokens: tok }]);
          out.logits.dispose();
          here.commit([seq], [Int32Array.of(0)]);
        }
        here.truncate(seq, 0);
        // A loop turn first: it closes the slice the warm-up call opened (on a loaded machine that call
        // alone can outlast the 4 ms slice, and the loop's first call would then yield at once).
        await new Promise<void>((resolve) => setImmediate(resolve));
        const ac = new AbortController();
        setImmediate(() => ac.abort());
        let n = 0;
        const t0 = performance.now();
        await assert.rejects(
          (async () => {
            // Each call is committed and cut back, so the context never fills.
            for (; n < 200000; n++) {
              if (chains) {
                await here.greedyChain([{ seq, tokens: tok }], [2], { signal: ac.signal });
              } else {
                const out = await here.forward([{ seq, tokens: tok }], { signal: ac.signal });
                out.logits.dispose();
                here.commit([seq], [Int32Array.of(0)]);
              }
              here.truncate(seq, 0);
            }
          })(),
          (e: Error) => e.name === 'AbortError',
        );
        // The abort lands at the first turn, a slice of forwards in (not before the first call, not
        // after the loop's end).
        assert.ok(n >= 1 && n < 200000, `${chains ? 'chains' : 'forwards'}: stopped after ${n} calls`);
        assert.ok(performance.now() - t0 < 5000, `${chains ? 'chains' : 'forwards'}: ${performance.now() - t0} ms to stop`);
        assert.strictEqual(here.sequenceLength(seq), 0, 'nothing of an aborted call stays committed');
      }
    } finally {
      here.dispose();
    }
  });

  it('rejects a bad syncForwardMaxMacs', async () => {
    await expectCode(LlamaModel.load(targetDir, { device, syncForwardMaxMacs: -1 }), 'E_ARG', /syncForwardMaxMacs/);
  });

  it('reused activation buffers: forwards of varying sizes equal a fresh model, returned hidden states stay intact', async () => {
    const reused = await load(targetDir);
    try {
      const seq = reused.createSequence();
      // Sizes that grow the scratch (1 -> 5 -> 40), exceed it (300: temporaries) and shrink again.
      const sizes = [1, 5, 40, 300, 3, 1];
      let committed = 0;
      const history: number[] = [];
      const kept: { hidden: Float32Array; tensor: import('../lib/tensor').Tensor }[] = [];
      for (const n of sizes) {
        const toks = randomTokens(n, TARGET.vocab);
        // Reference: a fresh model (fresh buffers) fed the same committed history, then toks.
        const fresh = await load(targetDir);
        let want: { logits: Float32Array; hidden?: Float32Array };
        try {
          const s = fresh.createSequence();
          if (committed > 0) {
            // Recompute the prefix in the fresh model from the reused one's history.
            const hist = history.slice(0, committed);
            const f = await fresh.forward([{ seq: s, tokens: Int32Array.from(hist) }]);
            f.logits.dispose();
            fresh.commit([s], [Int32Array.from(hist, (_, j) => j)]);
          }
          want = await logitsOf(fresh, [{ seq: s, tokens: toks }], true);
        } finally {
          fresh.dispose();
        }
        const out = await reused.forward([{ seq, tokens: toks }], { hidden: true });
        const got = out.logits.toFloat32();
        out.logits.dispose();
        sameBits(got, want.logits, `n = ${n}: logits`);
        kept.push({ hidden: want.hidden!, tensor: out.hidden! });
        reused.commit([seq], [Int32Array.from(toks, (_, j) => j)]);
        history.push(...toks);
        committed += n;
      }
      // Every hidden tensor handed out is its own buffer: later forwards did not overwrite it.
      kept.forEach((k, i) => {
        sameBits(k.tensor.toFloat32(), k.hidden, `hidden of forward ${i} after later forwards`);
        k.tensor.dispose();
      });
    } finally {
      reused.dispose();
    }
  });
  it('greedyChain gives exactly the tokens and cache state of k single steps (ragged batch)', async () => {
    const a = await load(draftDir);
    const b = await load(draftDir);
    try {
      const feeds = [randomTokens(7, DRAFT.vocab), randomTokens(1, DRAFT.vocab), randomTokens(3, DRAFT.vocab)];
      for (const steps of [
        [4, 1, 6],
        [1, 1, 1],
        [3, 5, 2],
      ]) {
        const sa = feeds.map(() => a.createSequence());
        const sb = feeds.map(() => b.createSequence());
        const got = await a.greedyChain(
          feeds.map((t, i) => ({ seq: sa[i]!, tokens: t })),
          steps,
        );
        const want = await stepwiseChain(
          b,
          feeds.map((t, i) => ({ seq: sb[i]!, tokens: t })),
          steps,
        );
        assert.deepStrictEqual(got.map((t) => Array.from(t)), want.map((t) => Array.from(t)), `steps ${steps}`);
        feeds.forEach((f, i) => {
          assert.strictEqual(got[i]!.length, steps[i]);
          // Fed and committed: the input, then every picked token but the last.
          assert.strictEqual(a.sequenceLength(sa[i]!), f.length + steps[i]! - 1);
          assert.strictEqual(a.sequenceLength(sa[i]!), b.sequenceLength(sb[i]!));
        });
        // The caches hold the same K/V: the next forward gives the same logits bit for bit.
        const next = feeds.map((_, i) => ({ tok: got[i]![got[i]!.length - 1]! , i }));
        const la = await logitsOf(a, next.map(({ tok, i }) => ({ seq: sa[i]!, tokens: Int32Array.of(tok) })));
        const lb = await logitsOf(b, next.map(({ tok, i }) => ({ seq: sb[i]!, tokens: Int32Array.of(tok) })));
        sameBits(la.logits, lb.logits, `logits after steps ${steps}`);
        for (const s of sa) a.freeSequence(s);
        for (const s of sb) b.freeSequence(s);
      }
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('greedyChain on forked sequences (the shared last page is copied first) equals single steps and leaves the parent as it was', async () => {
    // pageSize 4: the parent's 6 tokens end inside its second page, which both forks share. The
    // chain plans every step's pages up front (one upload), so the copy-on-write must happen there.
    const a = await LlamaModel.load(draftDir, { device, maxSequences: 4, pageSize: 4 });
    const b = await LlamaModel.load(draftDir, { device, maxSequences: 4, pageSize: 4 });
    try {
      const pre = randomTokens(6, DRAFT.vocab);
      const feeds = [randomTokens(2, DRAFT.vocab), randomTokens(1, DRAFT.vocab)];
      const setup = async (m: LlamaModel): Promise<{ parent: number; kids: number[] }> => {
        const parent = m.createSequence();
        const f = await m.forward([{ seq: parent, tokens: pre }]);
        f.logits.dispose();
        m.commit([parent], [Int32Array.from(pre, (_, j) => j)]);
        return { parent, kids: feeds.map(() => m.forkSequence(parent)) };
      };
      const sa = await setup(a), sb = await setup(b);
      const steps = [5, 3];
      const got = await a.greedyChain(feeds.map((t, i) => ({ seq: sa.kids[i]!, tokens: t })), steps);
      const want = await stepwiseChain(b, feeds.map((t, i) => ({ seq: sb.kids[i]!, tokens: t })), steps);
      assert.deepStrictEqual(got.map((t) => Array.from(t)), want.map((t) => Array.from(t)));
      // The parent and both forks hold the same K/V in both models.
      const probe = (s: { parent: number; kids: number[] }, picks: Int32Array[]) => [
        { seq: s.parent, tokens: Int32Array.of(1) },
        ...s.kids.map((k, i) => ({ seq: k, tokens: Int32Array.of(picks[i]![picks[i]!.length - 1]!) })),
      ];
      const la = await logitsOf(a, probe(sa, got));
      const lb = await logitsOf(b, probe(sb, want));
      sameBits(la.logits, lb.logits, 'logits of the parent and the forks');
      assert.strictEqual(a.sequenceLength(sa.parent), 6);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('greedyChain on the pool (syncForwardMaxMacs 0) equals greedyChain on the calling thread', async () => {
    const a = await load(draftDir, 0);
    const b = await load(draftDir, Number.MAX_VALUE);
    try {
      const feed = randomTokens(5, DRAFT.vocab);
      const x = await a.greedyChain([{ seq: a.createSequence(), tokens: feed }], [6]);
      const y = await b.greedyChain([{ seq: b.createSequence(), tokens: feed }], [6]);
      assert.deepStrictEqual(Array.from(x[0]!), Array.from(y[0]!));
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('greedyChain: bad input is a coded error, and a failure mid-chain leaves nothing committed', async () => {
    const m = await load(draftDir);
    try {
      const s = m.createSequence();
      const t = s + 1000;
      await expectCode(m.greedyChain([{ seq: s, tokens: Int32Array.of(1) }], [0]), 'E_ARG', /steps\[0\]/);
      await expectCode(m.greedyChain([{ seq: s, tokens: Int32Array.of(1) }], [1, 2]), 'E_ARG', /steps/);
      await expectCode(m.greedyChain([{ seq: s, tokens: Int32Array.of(1, 2), parents: Int32Array.of(-1, 0) }], [2]), 'E_ARG', /chains/);
      await expectCode(m.greedyChain([{ seq: t, tokens: Int32Array.of(1) }], [2]), 'E_ARG', /does not exist/);
      // A bad token in the second input fails the chain's first forward, after its pages were reserved:
      // they all come back.
      const free = m.kvInfo().freePages;
      const u = m.createSequence();
      await expectCode(m.greedyChain([{ seq: u, tokens: randomTokens(40, DRAFT.vocab) }, { seq: s, tokens: Int32Array.of(DRAFT.vocab) }], [9, 2]), 'E_ARG', /outside the vocabulary/);
      assert.strictEqual(m.kvInfo().freePages, free, 'the reserved pages are free again');
      assert.strictEqual(m.sequenceLength(s), 0);
      assert.strictEqual(m.sequenceLength(u), 0);
      m.freeSequence(u);
      // 120 committed tokens; 1 fed + 20 steps would need position 140 > maxPositions 128: the
      // chain fails at a later step, after earlier steps were committed, and rolls them back.
      const pre = randomTokens(120, DRAFT.vocab);
      const f = await m.forward([{ seq: s, tokens: pre }]);
      f.logits.dispose();
      m.commit([s], [Int32Array.from(pre, (_, j) => j)]);
      const other = m.createSequence();
      await expectCode(
        m.greedyChain(
          [
            { seq: other, tokens: Int32Array.of(3) },
            { seq: s, tokens: Int32Array.of(4) },
          ],
          [3, 20],
        ),
        'E_ARG',
        /position/,
      );
      assert.strictEqual(m.sequenceLength(s), 120);
      assert.strictEqual(m.sequenceLength(other), 0);
      // The model is usable afterwards, and the same call within the context succeeds.
      const ok = await m.greedyChain([{ seq: s, tokens: Int32Array.of(4) }], [5]);
      assert.strictEqual(ok[0]!.length, 5);
      assert.strictEqual(m.sequenceLength(s), 125);
    } finally {
      m.dispose();
    }
  });

  it('the draft-model speculator with greedyChain: same proposals, k trace and output as step by step', async () => {
    // The unrelated random draft (acceptance ~0) and the target as its own draft (acceptance 1:
    // long accepted chains, the heuristic grows k).
    for (const dDir of [draftDir, targetDir]) {
      const target = await load(targetDir);
      const draftFast = await load(dDir);
      const draftSlow = await load(dDir);
      try {
        const prompts = [randomTokens(6, TARGET.vocab), randomTokens(11, TARGET.vocab)];
        const plain = await plainGenerate(target, prompts, { maxNewTokens: 40 });
        for (const adaptive of ['fixed', 'heuristic'] as const) {
          const what = `${path.basename(dDir)}, ${adaptive}`;
          const fast = new DraftModelSpeculator({ draft: draftFast, k: 3, adaptive });
          const slow = new DraftModelSpeculator({ draft: withoutFastPaths(draftSlow), k: 3, adaptive });
          const rf = await new SpeculativeDecoder({ target, speculator: fast }).generateBatch(prompts, { maxNewTokens: 40 });
          const rs = await new SpeculativeDecoder({ target, speculator: slow }).generateBatch(prompts, { maxNewTokens: 40 });
          rf.forEach((res, i) => {
            assert.deepStrictEqual(Array.from(res.tokens), Array.from(plain.tokens[i]!), `${what}: prompt ${i} != plain`);
            assert.deepStrictEqual(Array.from(res.tokens), Array.from(rs[i]!.tokens), `${what}: prompt ${i} fast != slow`);
            assert.strictEqual(res.stats.targetForwards, rs[i]!.stats.targetForwards, `${what}: target forwards`);
            assert.deepStrictEqual(res.stats.acceptedPerPosition, rs[i]!.stats.acceptedPerPosition, `${what}: acceptance`);
          });
          assert.deepStrictEqual([...fast.trace.values()], [...slow.trace.values()], `${what}: k trace`);
          assert.ok([...fast.trace.values()].flat().some((t) => t.drafted > 1), `${what}: some steps drafted several tokens`);
          if (dDir === targetDir) assert.ok(rf.every((res) => res.stats.acceptanceRate === 1), `${what}: the target as its own draft accepts everything`);
          fast.dispose();
          slow.dispose();
        }
      } finally {
        target.dispose();
        draftFast.dispose();
        draftSlow.dispose();
      }
    }
  });
}

describe('native per-step fast paths (cpu)', function () {
  this.timeout(120000);
  suite('cpu');
});

describeCuda('native per-step fast paths', function () {
  this.timeout(120000);
  suite('cuda');
});
