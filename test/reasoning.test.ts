// Reasoning replies (lib/reasoning.ts): the <think> block split from the answer, whole and as it
// streams at random split points; AfterReasoning, the grammar of the answer after the block, its
// masks against its next() state by state, and random walks whose texts split into a block without
// a stray </think> and an answer the inner grammar accepts.
import * as assert from 'assert';
import { JsonGrammar, TokenVocabulary, type GrammarState } from '../lib/grammar';
import { AfterReasoning, promptOpensReasoning, promptOpensReasoningIds, ReasoningStream, splitReasoning } from '../lib/reasoning';
import { assertThrowsCode, rng, testSeed } from './helpers';

describe('reasoning: the think block and the answer', () => {
  const cases: [string, boolean, string | null, string | null][] = [
    ['<think>\nThe user asks.\n</think>\n\nIt is sunny.', false, '\nThe user asks.\n', '\n\nIt is sunny.'],
    ['  <think>a</think>b', false, 'a', 'b'],
    ['<think>still thinking', false, 'still thinking', null],
    ['<think>done</think>', false, 'done', null],
    ['No block here. </think> x', false, null, 'No block here. </think> x'],
    ['x <think>late</think>', false, null, 'x <think>late</think>'],
    ['<thin', false, null, '<thin'],
    ['', false, null, ''],
    ['Hmm.</think>Answer.', true, 'Hmm.', 'Answer.'],
    ['Hmm, </thi', true, 'Hmm, </thi', null],
    ['a</think>b</think>c', true, 'a', 'b</think>c'],
    ['', true, '', null],
  ];

  it('whole replies: the block (opened by the reply or by the prompt) and the answer', () => {
    for (const [text, opened, reasoning, content] of cases) assert.deepStrictEqual(splitReasoning(text, opened), { reasoning, content }, `${JSON.stringify(text)} opened ${String(opened)}`);
    assert.strictEqual(promptOpensReasoning('<|assistant|><think>\n'), true);
    assert.strictEqual(promptOpensReasoning('<|assistant|><think>\n\n</think>\n\n'), false);
    assert.strictEqual(promptOpensReasoning('<think>a</think> then <|assistant|>'), false);
    assert.strictEqual(promptOpensReasoning('plain'), false);
    // The same on token ids (markers 7 and 8): the last marker decides.
    assert.strictEqual(promptOpensReasoningIds([1, 2, 7, 3], 7, 8), true);
    assert.strictEqual(promptOpensReasoningIds([1, 7, 3, 8, 4], 7, 8), false);
    assert.strictEqual(promptOpensReasoningIds([7, 8, 1, 7], 7, 8), true);
    assert.strictEqual(promptOpensReasoningIds([1, 2, 3], 7, 8), false);
  });

  it('streamed at random split points: reasoning and answer shown as they come join to the whole reply\'s; neither shows a piece of a marker', () => {
    const r = rng(testSeed + 61);
    for (let round = 0; round < 60; round++) {
      for (const [text, opened, reasoning, content] of cases) {
        const s = new ReasoningStream(opened);
        let rs = '', cs = '';
        for (let at = 0; at < text.length; ) {
          const n = 1 + Math.floor(r() * 4);
          const o = s.push(text.slice(at, at + n));
          rs += o.reasoning;
          cs += o.content;
          at += n;
          assert.ok((reasoning ?? '').startsWith(rs) && (content ?? '').startsWith(cs), `${JSON.stringify(text)}: showed ${JSON.stringify([rs, cs])}`);
        }
        const e = s.end();
        assert.deepStrictEqual([rs + e.reasoning, cs + e.content], [reasoning ?? '', content ?? ''], JSON.stringify(text));
      }
    }
  });
});

describe('reasoning: AfterReasoning, the grammar of the answer after the block', () => {
  // The 256 bytes, then <think>, </think>, and pieces that write </think> across tokens.
  const extra = ['<think>', '</think>', '</', 'think>', 'ab</think>cd', '</think', '>', 'k>'];
  const vocab = new TokenVocabulary([...Array.from({ length: 256 }, (_, b) => Uint8Array.of(b)), ...extra.map((x) => Buffer.from(x)), null]);
  const OPEN = 256, CLOSE = 257, EOS = 256 + extra.length;
  const has = (m: Uint32Array, t: number): boolean => ((((m[t >>> 5] as number) >>> (t & 31)) & 1) === 1);
  const inner = new JsonGrammar(vocab);

  it('masks == next() state by state: inside the block all but tokens completing </think> in pieces; the close token starts the answer; before, the open token beside the answer\'s first tokens', () => {
    for (const opened of [true, false]) {
      const g = new AfterReasoning(inner, vocab, OPEN, CLOSE, opened);
      const r = rng(testSeed + 62 + (opened ? 1 : 0));
      let checked = 0;
      for (let w = 0; w < 60; w++) {
        let s: GrammarState = g.start();
        for (let step = 0; step < 30; step++) {
          const m = g.allowed(s, [EOS]);
          const ok: number[] = [];
          for (let t = 0; t < vocab.size; t++) {
            const n = t === EOS ? (g.accepts(s) ? s : undefined) : g.next(s, t);
            // (A complete answer with stops given: the stops alone.)
            assert.strictEqual(has(m, t), g.complete(s) ? t === EOS : n !== undefined, `state ${s.key}, token ${t}`);
            if (n !== undefined && t !== EOS) ok.push(t);
            checked++;
          }
          if (ok.length === 0) break;
          // Markers and their pieces often.
          const pool = r() < 0.4 ? ok.filter((t) => t >= 256) : ok;
          s = g.next(s, (pool.length > 0 ? pool : ok)[Math.floor(r() * (pool.length > 0 ? pool : ok).length)] as number) as GrammarState;
        }
      }
      assert.ok(checked > 100000);
      // Inside the block: '</' then 'think>' or '</think' then '>' would write the marker in pieces; refused.
      const t0 = g.start();
      const think = opened ? t0 : (g.next(t0, OPEN) as GrammarState);
      assert.ok(g.accepts(think) && !g.complete(think));
      assert.strictEqual(g.next(think, 256 + 4), undefined, 'ab</think>cd');
      assert.strictEqual(g.next(g.next(think, 256 + 2) as GrammarState, 256 + 3), undefined, "'</' 'think>'");
      assert.strictEqual(g.next(g.next(think, 256 + 5) as GrammarState, 256 + 6), undefined, "'</think' '>'");
      assert.ok(g.next(g.next(think, 256 + 2) as GrammarState, CLOSE), "'</' then the close token");
      // After the close token: the inner grammar's masks.
      const answer = g.next(think, CLOSE) as GrammarState;
      assert.deepStrictEqual(Array.from(g.allowed(answer)), Array.from(inner.allowed(inner.start())));
      assert.strictEqual(g.accepts(answer), false);
      if (!opened) {
        // Before the block: the answer may begin at once ('{'), or the block open; not with anything else.
        assert.ok(g.next(t0, 0x7b) && g.next(t0, OPEN));
        assert.strictEqual(g.next(t0, 0x61), undefined);
        assert.strictEqual(g.accepts(t0), false);
      }
    }
    assertThrowsCode(() => new AfterReasoning(inner, vocab, OPEN, vocab.size, true), 'E_ARG', /close token .* is not an id/);
  });

  it('random walks: texts split into a block with no </think> of its own and an answer the inner grammar accepts', () => {
    const r = rng(testSeed + 64);
    let answered = 0;
    for (const opened of [true, false]) {
      const g = new AfterReasoning(inner, vocab, OPEN, CLOSE, opened);
      for (let w = 0; w < 200; w++) {
        let s: GrammarState = g.start();
        const ids: number[] = [];
        for (let step = 0; step < 80; step++) {
          if (g.accepts(s) && r() < (s.key.startsWith('reasoning') ? 0.02 : 0.3)) break;
          const m = g.allowed(s);
          const ok: number[] = [];
          for (let t = 0; t < EOS; t++) if (has(m, t)) ok.push(t);
          const closers = ok.filter((t) => t === CLOSE || t === 0x22 || t === 0x7d || t === 0x5d);
          const pool = closers.length > 0 && r() < 0.3 ? closers : ok.filter((t) => t < 0x80 || t >= 256);
          const t = pool[Math.floor(r() * pool.length)] as number;
          s = g.next(s, t) as GrammarState;
          ids.push(t);
        }
        const text = Buffer.concat(ids.map((t) => Buffer.from(vocab.bytesOf(t) as Uint8Array))).toString('latin1');
        const split = splitReasoning(text, opened);
        // The block's text holds no </think> but the close token's; the answer is the inner grammar's.
        const closeAt = ids.indexOf(CLOSE);
        if (closeAt >= 0 && (opened || ids[0] === OPEN)) {
          assert.strictEqual(split.reasoning, Buffer.concat(ids.slice(opened ? 0 : 1, closeAt).map((t) => Buffer.from(vocab.bytesOf(t) as Uint8Array))).toString('latin1'));
          if (!g.accepts(s)) continue;
          assert.doesNotThrow(() => JSON.parse(split.content ?? ''), JSON.stringify(text));
          answered++;
        }
      }
    }
    assert.ok(answered > 20, `${answered} walks ended with an answer`);
  });
});
