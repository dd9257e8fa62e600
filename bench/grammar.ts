// What constrained output (GenerateOptions.grammar, JsonGrammar) costs.
// A: the masks on a 128,256-id vocabulary (the 256 bytes and random pieces of English and JSON
//    text, 1-8 bytes, as a byte-level BPE vocabulary's): the trie's build, a state's first mask (a
//    walk of the trie's accepted branches) per kind of state (free JSON, a schema, a tool reply),
//    and a cached one.
// B: decoding on the embedded family with a JSON grammar over its ids (test/fixtures' byte-level
//    JSON vocabulary: each id stands for a piece of JSON text), tokens/s with and without the
//    grammar, plainly and with two strategies, greedy, runs interleaved, median kept. The outputs
//    differ (the grammar changes them): a cost per token, and the drafts accepted under the mask.
//
// Run: node dist/bench/grammar.js [--quick]
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { JsonGrammar, TokenVocabulary, type GrammarState, type TokenGrammar } from '../lib/grammar';
import { JsonSchemaGrammar } from '../lib/json_schema';
import { LlamaModel } from '../lib/models/llama';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import type { Speculator } from '../lib/strategies/speculator';
import { toolCallGrammar } from '../lib/tool_calls';
import { byteLevelJsonTokenizer, tokenizerFrom } from '../test/fixtures/tokenizers';
import { WEATHER_TOOLS } from '../test/fixtures/tools';

function masks(quick: boolean): void {
  let x = 12345;
  const r = (): number => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const common = ' etaoinshrdlucmfwypvbgkjqxz';
  const rare = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}[]":,.-_\n\t\\/\'';
  const V = 128256;
  const bytes: Uint8Array[] = [];
  for (let i = 0; i < V; i++) {
    if (i < 256) {
      bytes.push(Uint8Array.of(i));
      continue;
    }
    let s = '';
    for (let n = 1 + Math.floor(r() * 8); n > 0; n--) s += r() < 0.85 ? common[Math.floor(r() * common.length)] : rare[Math.floor(r() * rare.length)];
    bytes.push(Buffer.from(s, 'utf8'));
  }
  let t0 = performance.now();
  const vocab = new TokenVocabulary(bytes);
  void vocab.tree;
  const tTrie = performance.now() - t0;
  t0 = performance.now();
  void vocab.stringTokens;
  console.log(`A. masks, a ${V}-id vocabulary: trie built in ${tTrie.toFixed(0)} ms, the string split in ${(performance.now() - t0).toFixed(0)} ms (once per vocabulary)`);
  const reps = quick ? 3 : 10;
  const states: [string, string][] = [
    ['start (before the object)', ''],
    ['after "{" (a key or "}")', '{'],
    ['inside a key string', '{"na'],
    ['after a key (":")', '{"name"'],
    ['inside a value string', '{"name": "Ada L'],
    ['inside a number', '{"age": 3'],
    ['after a value ("," or "}")', '{"age": 36'],
    ['inside an array, depth 3', '{"a": [[1, 2], ['],
  ];
  for (const [name, text] of states) firstMask(name, text, () => new JsonGrammar(vocab), reps);
  // A JSON Schema's states: its key text is forced, its values typed.
  const schema = { type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer' }, role: { enum: ['admin', 'user', 'guest'] }, tags: { type: 'array', items: { type: 'string' } } }, required: ['name', 'role'] };
  for (const [name, text] of [
    ['schema: start', ''],
    ['schema: inside a key (forced)', '{"na'],
    ['schema: inside a string value', '{"name": "Ada L'],
    ['schema: an integer', '{"name": "A", "age": 3'],
    ['schema: an enum', '{"name": "A", "role": "ad'],
  ] as const) firstMask(name, text, () => new JsonSchemaGrammar(vocab, schema), reps);
  // A tool reply (tool_choice 'required', three tools): the tool's name picks its arguments' schema.
  for (const [name, text] of [
    ['tools: start', ''],
    ['tools: inside a name (tag)', '[{"name": "get_w'],
    ['tools: a call\'s arguments', '[{"name": "get_weather", "parameters": {"ci'],
  ] as const) firstMask(name, text, () => toolCallGrammar(vocab, WEATHER_TOOLS, 'required'), reps);
  const g = new JsonGrammar(vocab);
  let s: GrammarState = g.start();
  for (const b of Buffer.from('{"name": "Ada L', 'utf8')) s = g.next(s, b) as GrammarState;
  g.allowed(s);
  t0 = performance.now();
  for (let k = 0; k < 1000; k++) g.allowed(s);
  console.log(`  a cached mask: ${((performance.now() - t0) / 1000 * 1000).toFixed(2)} us`);
}

/** The median time of the first mask (a fresh grammar each time: no cache) of the state after `text`. */
function firstMask(name: string, text: string, make: () => TokenGrammar, reps: number): void {
  const times: number[] = [];
  let allowed = 0;
  for (let k = 0; k < reps; k++) {
    const g = make();
    let s: GrammarState = g.start();
    for (const b of Buffer.from(text, 'utf8')) s = g.next(s, b) as GrammarState;
    const t0 = performance.now();
    const m = g.allowed(s);
    times.push(performance.now() - t0);
    allowed = m.reduce((a, w) => a + popcount(w), 0);
  }
  times.sort((a, b) => a - b);
  console.log(`  ${name.padEnd(30)} first mask ${(times[Math.floor(reps / 2)] as number).toFixed(2)} ms   ${allowed} ids allowed`);
}

function popcount(w: number): number {
  let c = 0;
  for (; w !== 0; w &= w - 1) c++;
  return c;
}

async function decoding(quick: boolean): Promise<void> {
  const N = quick ? 48 : 128, reps = quick ? 2 : 5;
  const P = defaultModelPaths();
  const target = await LlamaModel.load(P.target, { device: 'cpu', maxSequences: 16 });
  const draft = await LlamaModel.load(P.draft, { device: 'cpu', maxSequences: 16 });
  const eagle = EagleHead.load(P.eagle, { device: 'cpu' });
  const tokenizer = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize));
  const grammar = new JsonGrammar(TokenVocabulary.fromTokenizer(tokenizer, target.config.vocabSize));
  const prompts = [[1, 50, 60, 70, 80], [1, 12, 13, 14], [1, 200, 201, 7, 9, 11], [1, 99, 98]].map((p) => Int32Array.from(p));
  const cases: [string, () => Speculator | undefined][] = [
    ['plain (no speculator)', () => undefined],
    ['draft model k=4', () => new DraftModelSpeculator({ draft, k: 4 })],
    ['draft model, cost-sized', () => new DraftModelSpeculator({ draft, k: 4, adaptive: 'cost' })],
    ['EAGLE, sized', () => new EagleSpeculator({ head: eagle })],
  ];
  console.log(`B. decoding, embedded family, CPU, ${prompts.length} prompts x ${N} tokens (ignoreEos), median of ${reps}`);
  for (const [name, make] of cases) {
    const spec = make();
    const dec = new SpeculativeDecoder({ target, ...(spec ? { speculator: spec } : {}) });
    await dec.generateBatch(prompts, { maxNewTokens: 8, ignoreEos: true, grammar });  // warm-up (and the first masks)
    const times: Record<'off' | 'on', number[]> = { off: [], on: [] };
    const forwards = { off: 0, on: 0 };
    const accepted = { off: 0, on: 0 };
    for (let k = 0; k < reps; k++) {
      for (const mode of ['off', 'on'] as const) {
        const t0 = performance.now();
        const rs = await dec.generateBatch(prompts, { maxNewTokens: N, ignoreEos: true, ...(mode === 'on' ? { grammar } : {}) });
        times[mode].push((performance.now() - t0) / 1000);
        forwards[mode] = rs.reduce((a, q) => a + q.stats.targetForwards, 0);
        accepted[mode] = rs.reduce((a, q) => a + q.stats.acceptedDraftTokens, 0);
      }
    }
    const med = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)] as number;
    const tps = (m: 'off' | 'on'): number => (prompts.length * N) / med(times[m]);
    console.log(
      `  ${name.padEnd(22)} free: ${tps('off').toFixed(0)} tok/s (${forwards.off} forwards, ${accepted.off} drafts accepted)   JSON: ${tps('on').toFixed(0)} tok/s (${forwards.on} forwards, ${accepted.on} accepted)   ratio ${(tps('on') / tps('off')).toFixed(3)}`,
    );
    dec.dispose();
  }
  eagle.dispose();
  draft.dispose();
  target.dispose();
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  masks(quick);
  await decoding(quick);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
