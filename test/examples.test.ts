// The README's TypeScript example (examples/strategies.ts) runs on the embedded default family,
// and every greedy strategy reproduces the plain text.
import * as assert from 'assert';
import { main } from '../examples/strategies';

describe('examples/strategies.ts (README)', () => {
  it('runs each strategy on the embedded models; greedy texts all equal the plain one', async () => {
    const lines: string[] = [];
    const texts = await main(24, (s) => lines.push(s));
    assert.ok((texts['plain'] ?? '').length > 20, `plain text: ${texts['plain']}`);
    for (const [name, text] of Object.entries(texts)) assert.strictEqual(text, texts['plain'], `${name} differs from plain`);
    assert.strictEqual(lines.length, Object.keys(texts).length + 1);
  });
});
