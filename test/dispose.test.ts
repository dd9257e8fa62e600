// `using` / `await using` release what specdec's objects hold: speculators and heads (dispose()),
// the engine (close()), the server (close(): drained, no longer listening).
import * as assert from 'assert';
import { defaultModelPaths } from '../lib/default_models';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { CompletionServer } from '../lib/server/server';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';

const EMBEDDED = defaultModelPaths();

/** Counts x.dispose() calls (the Symbol.dispose method must go through it). */
function counted<T extends { dispose(): void }>(x: T): { x: T; calls: () => number } {
  let n = 0;
  const d = x.dispose.bind(x);
  x.dispose = (): void => {
    n++;
    d();
  };
  return { x, calls: () => n };
}

describe('using: Symbol.dispose / Symbol.asyncDispose', () => {
  it('speculators, heads, the engine and the server are released at the end of their block', async () => {
    const target = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 2 });
    const draft = await LlamaModel.load(EMBEDDED.draft, { device: 'cpu', maxSequences: 2 });
    try {
      const heads = counted(MedusaHeads.load(EMBEDDED.medusa, { device: 'cpu' }));
      const eagle = counted(EagleHead.load(EMBEDDED.eagle, { device: 'cpu' }));
      const all = [
        counted(new DraftModelSpeculator({ draft, k: 2 })),
        counted(new MedusaSpeculator({ heads: heads.x })),
        counted(new EagleSpeculator({ head: eagle.x })),
        counted(new LookaheadSpeculator({ W: 3, N: 3, G: 3 })),
        counted(new PromptLookupSpeculator({ maxNgram: 2 })),
        counted(new HybridSpeculator({ draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }) })),
      ];
      for (const s of all) {
        {
          using u = s.x;
          assert.ok(u.name);
        }
        assert.strictEqual(s.calls(), 1, s.x.name);
      }
      for (const h of [heads, eagle]) {
        {
          using u = h.x;
          assert.ok(u);
        }
        assert.strictEqual(h.calls(), 1);
      }
      let engine: Engine;
      {
        using e = new Engine({ model: target });
        engine = e;
        assert.strictEqual((await e.submit(Int32Array.of(1, 2), { maxNewTokens: 2 })).tokens.length, 2);
      }
      await assert.rejects(engine.submit(Int32Array.of(1, 2), { maxNewTokens: 2 }), (e: Error & { code?: string }) => e.code === 'E_CLOSED');
      let server: CompletionServer;
      {
        await using s = new CompletionServer({ engine: new Engine({ model: target }), modelName: 'tiny' });
        server = s;
        await s.listen(0, '127.0.0.1');
        assert.ok(s.http.listening);
      }
      assert.strictEqual(server.http.listening, false);
    } finally {
      target.dispose();
      draft.dispose();
    }
  });
});
