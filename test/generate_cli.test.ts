// `specdec generate` end to end: spawns bin/specdec.js (the real entry point) on random checkpoints
// and checks the tokens against the float64 reference's greedy continuation, the batch file, the
// RNG-stream contract, and that bad input exits non-zero with one line on stderr.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GENERATE_FLAGS, GENERATE_USAGE, generateCommand, parseGenerateFlags } from '../lib/cli/generate';
import { strategyHook } from '../lib/cli/strategy_flags';
import { LlamaModel } from '../lib/models/llama';
import { settledText } from '../lib/text';
import { TextTokenizer } from '../lib/tokenizer';
import { GrammarCursor, JsonGrammar, TokenVocabulary } from '../lib/grammar';
import { JsonSchemaGrammar } from '../lib/json_schema';
import { byteLevelJsonTokenizer } from './fixtures/tokenizers';
import { configJson, specByName, writeCheckpoint } from './fixtures/checkpoints';
import { rng, testSeed } from './helpers';
import { LlamaReference } from './reference/llama_ref';

const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Run {
  const r = spawnSync(process.execPath, [bin, 'generate', ...args], { encoding: 'utf8', env: { ...process.env, SPECDEC_BACKEND: 'cpu' } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

interface Record {
  tokens: number[];
  text: string;
  finishReason: string;
  stats: { targetForwards: number; tokensPerForward: number; acceptanceRate: number; acceptedPerPosition: number[]; seconds: number; tokensPerSecond: number };
}

/** Greedy tokens equal the reference's, up to a step where its top-2 logits are too close to call. */
function assertSameGreedy(got: readonly number[], ref: { tokens: number[]; gaps: number[] }, what: string): void {
  for (let s = 0; s < ref.tokens.length; s++) {
    if (got[s] !== ref.tokens[s]) {
      assert.ok(ref.gaps[s]! < 1e-3, `${what}: step ${s}: got ${got[s]}, reference ${ref.tokens[s]} (gap ${ref.gaps[s]})`);
      return;
    }
  }
  assert.strictEqual(got.length, ref.tokens.length, `${what}: length`);
}

function assertOneLineError(r: Run, re: RegExp): void {
  assert.notStrictEqual(r.code, 0, `expected a failure, got exit 0 (stdout ${r.stdout})`);
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  assert.strictEqual(lines.length, 1, `expected one stderr line, got:\n${r.stderr}`);
  assert.match(lines[0]!, re);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.strictEqual(r.stdout, '');
}

describe('specdec generate (cli)', function () {
  this.timeout(60000);
  let root: string;
  let dir: string; // llama-gqa-f32: tokenizer.json, EOS = 2
  let bare: string; // mistral-bf16: no tokenizer
  let ref: LlamaReference;
  let bareRef: LlamaReference;
  const r = rng(testSeed + 99);
  const ids = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(r() * 90));

  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-cli-test-'));
    dir = path.join(root, 'llama');
    bare = path.join(root, 'mistral');
    writeCheckpoint(dir, specByName('llama-gqa-f32'), testSeed + 1);
    writeCheckpoint(bare, specByName('mistral-bf16'), testSeed + 2);
    ref = new LlamaReference(dir);
    bareRef = new LlamaReference(bare);
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('--prompt-ids --json: the greedy continuation of the float64 reference, with the stats fields', () => {
    const prompt = ids(12);
    const res = cli(['--model', bare, '--prompt-ids', prompt.join(','), '--max-new-tokens', '8', '--json', '--device', 'cpu']);
    assert.strictEqual(res.code, 0, res.stderr);
    const rec = JSON.parse(res.stdout) as Record;
    assertSameGreedy(rec.tokens, bareRef.greedy(prompt, 8), 'prompt-ids');
    assert.strictEqual(rec.text, '', 'no tokenizer: empty text');
    assert.strictEqual(rec.stats.targetForwards, rec.tokens.length);
    assert.strictEqual(rec.stats.tokensPerForward, 1);
    assert.strictEqual(rec.stats.acceptanceRate, 0);
    assert.deepStrictEqual(rec.stats.acceptedPerPosition, []);
    assert.ok(rec.stats.seconds > 0 && rec.stats.tokensPerSecond > 0);
    assert.strictEqual(res.stdout.trim().split('\n').length, 1, 'one JSON document');
  });

  it('--prompt TEXT goes through tokenizer.json; text is the decoded continuation; stops at EOS', () => {
    const text = 'The big red cat sat on the mat';
    const res = cli(['--model', dir, '--prompt', text, '--max-new-tokens', '8', '--json']);
    assert.strictEqual(res.code, 0, res.stderr);
    const rec = JSON.parse(res.stdout) as Record;
    const tok = TextTokenizer.load(dir)!;
    const promptIds = Array.from(tok.encode(text));
    assert.strictEqual(promptIds[0], 1, 'BOS first');
    assertSameGreedy(rec.tokens, ref.greedy(promptIds, 8, [2]), 'prompt');
    assert.strictEqual(rec.text, tok.decode(rec.tokens, { skipSpecialTokens: true }));
    // Without --json: the text on stdout, a stats line on stderr.
    const plain = cli(['--model', dir, '--prompt', text, '--max-new-tokens', '8']);
    assert.strictEqual(plain.code, 0, plain.stderr);
    assert.strictEqual(plain.stdout, rec.text + '\n');
    assert.match(plain.stderr, /tokens in .* s/);
  });

  it('--batch-file: strings and id arrays run as one batch, results in input order', () => {
    const a = ids(5);
    const b = ids(17);
    const file = path.join(root, 'batch.json');
    fs.writeFileSync(file, JSON.stringify([a, 'hello world', b]));
    const res = cli(['--model', dir, '--batch-file', file, '--max-new-tokens', '6', '--json']);
    assert.strictEqual(res.code, 0, res.stderr);
    const recs = JSON.parse(res.stdout) as Record[];
    assert.strictEqual(recs.length, 3);
    const hello = Array.from(TextTokenizer.load(dir)!.encode('hello world'));
    assertSameGreedy(recs[0]!.tokens, ref.greedy(a, 6, [2]), 'item 0');
    assertSameGreedy(recs[1]!.tokens, ref.greedy(hello, 6, [2]), 'item 1');
    assertSameGreedy(recs[2]!.tokens, ref.greedy(b, 6, [2]), 'item 2');
  });

  it('sampling: sequence i of a batch draws from stream (seed, i), so item 0 equals the prompt run alone', () => {
    const a = ids(6);
    const file = path.join(root, 'batch2.json');
    fs.writeFileSync(file, JSON.stringify([a, ids(9)]));
    const common = ['--model', bare, '--max-new-tokens', '10', '--temperature', '1.3', '--top-k', '40', '--top-p', '0.95', '--seed', '77', '--json'];
    const batch = JSON.parse(cli([...common, '--batch-file', file]).stdout) as Record[];
    const alone = JSON.parse(cli([...common, '--prompt-ids', a.join(',')]).stdout) as Record;
    assert.deepStrictEqual(batch[0]!.tokens, alone.tokens);
    const other = JSON.parse(cli([...common.slice(0, -3), '--seed', '78', '--json', '--prompt-ids', a.join(',')]).stdout) as Record;
    assert.strictEqual(other.tokens.length, 10);
  });

  it('--response-format json_object and --json-schema FILE: the tokens follow the grammar, plainly and with a strategy alike; refused for a WordPiece tokenizer and an unsupported schema', () => {
    const jdir = path.join(root, 'json');
    writeCheckpoint(jdir, { ...specByName('llama-gqa-f32'), vocab: 325, tokenizer: false }, testSeed + 3);
    const tokenizer = byteLevelJsonTokenizer(325);
    fs.writeFileSync(path.join(jdir, 'tokenizer.json'), JSON.stringify(tokenizer));
    const grammar = new JsonGrammar(new TokenVocabulary(TextTokenizer.load(jdir)!.tokenBytes(325)));
    const args = ['--model', jdir, '--prompt', 'JSON: ', '--max-new-tokens', '24', '--json', '--device', 'cpu', '--response-format', 'json_object'];
    const plain = cli(args);
    assert.strictEqual(plain.code, 0, plain.stderr);
    const rec = JSON.parse(plain.stdout) as Record;
    // 24 tokens, or fewer ending with EOS (2) where the object is complete.
    const text = rec.tokens.filter((t) => t !== 2);
    if (rec.finishReason === 'stop') {
      assert.strictEqual(rec.tokens[rec.tokens.length - 1], 2);
      assert.ok(typeof JSON.parse(rec.text) === 'object', rec.text);
    } else assert.strictEqual(rec.tokens.length, 24);
    assert.ok(new GrammarCursor(grammar).at(text, 0, text.length), `${rec.text}: a token the grammar does not allow`);
    // (Random weights may spend the tokens on the whitespace JSON allows before the object.)
    assert.match(rec.text, /^\s*(\{|$)/, rec.text);
    const free = JSON.parse(cli(args.slice(0, -2)).stdout) as Record;
    assert.notDeepStrictEqual(free.tokens, rec.tokens, 'without the grammar: other tokens');
    const spec = cli([...args, '--prompt-lookup', '2']);
    assert.strictEqual(spec.code, 0, spec.stderr);
    assert.deepStrictEqual((JSON.parse(spec.stdout) as Record).tokens, rec.tokens);
    const wp = cli(['--model', dir, '--prompt', 'a b', '--response-format', 'json_object']);
    assert.notStrictEqual(wp.code, 0);
    assert.match(wp.stderr, /--response-format json_object: .*WordPiece/);
    const bad = cli(['--model', dir, '--prompt', 'a b', '--response-format', 'yaml']);
    assert.notStrictEqual(bad.code, 0);
    assert.match(bad.stderr, /--response-format: expected text or json_object .*got 'yaml'/);
    // --json-schema FILE: the tokens follow the schema's grammar (here: an enum, so the output is one of its values).
    const schemaFile = path.join(root, 'schema.json');
    fs.writeFileSync(schemaFile, JSON.stringify({ type: 'object', properties: { pick: { enum: ['yes', 'no'] }, n: { type: 'integer' } }, required: ['pick'] }));
    const sargs = ['--model', jdir, '--prompt', 'JSON: ', '--max-new-tokens', '40', '--json', '--device', 'cpu', '--json-schema', schemaFile, '--logit-bias', `${3 + 0x7d}=5,2=30`];
    const sres = cli(sargs);
    assert.strictEqual(sres.code, 0, sres.stderr);
    const srec = JSON.parse(sres.stdout) as Record;
    const sg = new JsonSchemaGrammar(new TokenVocabulary(TextTokenizer.load(jdir)!.tokenBytes(325)), JSON.parse(fs.readFileSync(schemaFile, 'utf8')));
    const body = srec.tokens.filter((t) => t !== 2);
    assert.ok(new GrammarCursor(sg).at(body, 0, body.length), `${srec.text}: a token the schema does not allow`);
    if (srec.finishReason === 'stop') assert.ok(['yes', 'no'].includes((JSON.parse(srec.text) as { pick: string }).pick), srec.text);
    assert.deepStrictEqual((JSON.parse(cli([...sargs, '--draft', jdir, '--draft-k', '3']).stdout) as Record).tokens, srec.tokens, 'a draft model: the same tokens');
    fs.writeFileSync(schemaFile, JSON.stringify({ type: 'string', minLength: 3 }));
    const refused = cli(sargs);
    assert.notStrictEqual(refused.code, 0);
    assert.match(refused.stderr, /--json-schema: json schema #: the keyword 'minLength' is not supported/);
  });

  it('bad input exits non-zero with one line on stderr', () => {
    assertOneLineError(cli(['--model', root, '--prompt', 'hello']), /config\.json/);
    assertOneLineError(cli(['--model', path.join(root, 'nope'), '--prompt-ids', '1,2']), /nope\/config\.json: not found/);
    const broken = path.join(root, 'broken');
    fs.mkdirSync(broken);
    fs.writeFileSync(path.join(broken, 'config.json'), JSON.stringify({ ...configJson(specByName('llama-gqa-f32')), architectures: ['BertModel'] }));
    assertOneLineError(cli(['--model', broken, '--prompt-ids', '1,2']), /unsupported architecture.*\[E_FORMAT\]/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1,96']), /token id 96 is outside the vocabulary \[0, 96\).*\[E_ARG\]/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1,x']), /--prompt-ids: expected comma-separated token ids/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--frobnicate']), /unknown flag '--frobnicate'/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--max-new-tokens', '-3']), /--max-new-tokens: expected an integer >= 1/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--temperature', 'hot']), /--temperature: expected a number >= 0/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--device', 'tpu']), /--device: expected cpu, cuda or auto/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', Array.from({ length: 130 }, () => 5).join(',')]), /130 tokens do not fit the context of 128/);
    assertOneLineError(cli(['--model', bare, '--prompt', 'hello']), /has no tokenizer\.json/);
    assertOneLineError(cli(['--model', bare, '--prompt', 'a', '--prompt-ids', '1']), /exactly one of --prompt, --prompt-ids or --batch-file/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--lookahead', '4,3']), /--lookahead: expected W,N,G/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--draft-k', '3']), /--draft-k needs --draft/);
    const badBatch = path.join(root, 'bad-batch.json');
    fs.writeFileSync(badBatch, JSON.stringify([[1, 2], { text: 'x' }]));
    assertOneLineError(cli(['--model', bare, '--batch-file', badBatch]), /item 1 must be a string, a non-empty array of token ids or a chat/);
  });

  it('--chat [--system]: the prompt is written through the chat template (the same run as its ids); chats in a batch file; errors named', async () => {
    // A copy of the checkpoint whose tokenizer_config.json carries a chat template.
    const chatDir = path.join(root, 'llama-chat');
    fs.mkdirSync(chatDir);
    for (const f of fs.readdirSync(dir)) fs.copyFileSync(path.join(dir, f), path.join(chatDir, f));
    const template = "{{ bos_token }}{% if greeting is defined %}{{ greeting }} {% endif %}{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}{% if add_generation_prompt %}assistant{% endif %}";
    fs.writeFileSync(path.join(chatDir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', chat_template: template }));
    const run = async (args: string[]): Promise<{ code: number; out: string; err: string }> => {
      let out = '';
      let err = '';
      const code = await generateCommand([...args, '--json', '--device', 'cpu', '--max-new-tokens', '6'], { stdout: (s) => (out += s), stderr: (s) => (err += s) });
      return { code, out, err };
    };
    const tok = TextTokenizer.load(chatDir)!;
    const ids = tok.encodeChat([{ role: 'system', content: 'be brief' }, { role: 'user', content: 'the cat' }]);
    assert.strictEqual(tok.applyChatTemplate([{ role: 'system', content: 'be brief' }, { role: 'user', content: 'the cat' }]), '<s>system be brief user the cat assistant');
    const viaChat = await run(['--model', chatDir, '--chat', '--system', 'be brief', '--prompt', 'the cat']);
    assert.strictEqual(viaChat.code, 0, viaChat.err);
    const viaIds = await run(['--model', chatDir, '--prompt-ids', Array.from(ids).join(',')]);
    assert.deepStrictEqual((JSON.parse(viaChat.out) as Record).tokens, (JSON.parse(viaIds.out) as Record).tokens);
    // --chat-vars: template variables (this template greets when given one).
    const greeted = tok.encodeChat([{ role: 'user', content: 'the cat' }], { variables: { greeting: 'hello' } });
    assert.ok(greeted.length > tok.encodeChat([{ role: 'user', content: 'the cat' }]).length);
    const viaVars = await run(['--model', chatDir, '--chat', '--chat-vars', '{"greeting":"hello"}', '--prompt', 'the cat']);
    const viaGreetedIds = await run(['--model', chatDir, '--prompt-ids', Array.from(greeted).join(',')]);
    assert.deepStrictEqual((JSON.parse(viaVars.out) as Record).tokens, (JSON.parse(viaGreetedIds.out) as Record).tokens);
    // A batch: a chat item (whatever --chat says) beside a text item written as a user message.
    const batch = path.join(root, 'chat-batch.json');
    fs.writeFileSync(batch, JSON.stringify([[{ role: 'system', content: 'be brief' }, { role: 'user', content: 'the cat' }], 'the cat']));
    const b = await run(['--model', chatDir, '--chat', '--system', 'be brief', '--batch-file', batch]);
    assert.strictEqual(b.code, 0, b.err);
    const recs = JSON.parse(b.out) as Record[];
    assert.deepStrictEqual(recs[0]!.tokens, recs[1]!.tokens);
    assert.deepStrictEqual(recs[0]!.tokens, (JSON.parse(viaIds.out) as Record).tokens);
    // Errors.
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--system', 's']), /--system needs --chat/);
    assert.throws(() => parseGenerateFlags(['--prompt-ids', '1', '--chat']), /--chat .* not --prompt-ids/);
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--chat=yes']), /--chat takes no value/);
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--chat-vars', '{}']), /--chat-vars needs --chat/);
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--chat', '--chat-vars', '[1]']), /--chat-vars: expected a JSON object/);
    assert.throws(() => parseGenerateFlags(['--prompt', 'x', '--chat', '--chat-vars', '{x']), /--chat-vars: not valid JSON/);
    assert.deepStrictEqual(parseGenerateFlags(['--prompt', 'x', '--chat', '--chat-vars', '{"enable_thinking":false}']).chatVars, { enable_thinking: false });
    assertOneLineError(cli(['--model', dir, '--chat', '--prompt', 'the cat']), /has no chat template .*drop --chat/);
    fs.writeFileSync(batch, JSON.stringify([[{ role: 'user' }]]));
    assertOneLineError(cli(['--model', chatDir, '--batch-file', batch]), /item 0: a chat's messages are \{ role: string, content: string \}/);
  });

  it('in process: parses every DESIGN §6 flag; a strategy hook receives the flags and the target', async () => {
    const f = parseGenerateFlags(['--model', 'm', '--lookahead=5,3,2', '--prompt-ids', '4,5', '--max-new-tokens', '3', '--temperature', '0.5', '--top-k', '3', '--top-p', '0.9', '--seed', '9', '--device', 'cpu', '--json']);
    assert.deepStrictEqual(f.strategy, { lookahead: [5, 3, 2] });
    assert.deepStrictEqual(Array.from(f.promptIds!), [4, 5]);
    assert.strictEqual(f.topP, 0.9);
    assert.throws(() => parseGenerateFlags(['--medusa', 'b', '--prompt-lookup', '3', '--prompt-ids', '1']), /exclusive/);
    assert.deepStrictEqual(parseGenerateFlags(['--draft', 'a', '--prompt-lookup', '3', '--prompt-ids', '1']).strategy, { draft: 'a', promptLookup: 3 });
    let out = '';
    let seen: string | undefined;
    const code = await generateCommand(['--model', bare, '--draft', 'somewhere', '--prompt-ids', '3,4', '--json', '--device', 'cpu'], {
      stdout: (s) => (out += s),
      stderr: (s) => assert.fail(s),
      strategyHook: async ({ flags, target, prompts }) => {
        seen = flags.strategy.draft;
        assert.strictEqual(target.config.vocabSize, 96);
        return prompts.map(() => ({ tokens: [7], text: '', finishReason: 'length' as const, stats: { targetForwards: 1, tokensPerForward: 1, acceptanceRate: 0.5, acceptedPerPosition: [1], seconds: 1, tokensPerSecond: 1 } }));
      },
    });
    assert.strictEqual(code, 0);
    assert.strictEqual(seen, 'somewhere');
    assert.deepStrictEqual((JSON.parse(out) as Record).tokens, [7]);

  });
  it('a 3000-prompt --json batch through a pipe arrives whole (stdout drains before exit)', () => {
    // Before the fix bin/specdec.js exited with stdout still queued: the pipe got 64 KiB.
    const file = path.join(root, 'batch3000.json');
    fs.writeFileSync(file, JSON.stringify(Array.from({ length: 3000 }, (_, i) => [3 + (i % 90), 4 + (i % 7)])));
    const res = cli(['--model', bare, '--batch-file', file, '--max-new-tokens', '1', '--json']);
    assert.strictEqual(res.code, 0, res.stderr);
    assert.ok(res.stdout.length > 65536, `only ${res.stdout.length} bytes`);
    const recs = JSON.parse(res.stdout) as Record[];
    assert.strictEqual(recs.length, 3000);
    for (const r of recs) {
      assert.strictEqual(r.tokens.length, 1);
      assert.strictEqual(r.finishReason, 'length');
      assert.strictEqual(r.stats.tokensPerForward, 1);
    }
  });

  it("finishReason: 'length' at --max-new-tokens, 'context' when prompt + output fill the context (not silent)", () => {
    const p = ids(10);
    const length = JSON.parse(cli(['--model', bare, '--prompt-ids', p.join(','), '--max-new-tokens', '3', '--json']).stdout) as Record;
    assert.strictEqual(length.finishReason, 'length');
    assert.strictEqual(length.tokens.length, 3);
    // --max-context 16: a 10-token prompt has room for 6 new tokens, whatever --max-new-tokens says.
    const ctx = cli(['--model', bare, '--prompt-ids', p.join(','), '--max-new-tokens', '64', '--max-context', '16', '--json']);
    assert.strictEqual(ctx.code, 0, ctx.stderr);
    const rec = JSON.parse(ctx.stdout) as Record;
    assert.strictEqual(rec.finishReason, 'context');
    assert.strictEqual(rec.tokens.length, 6);
    assert.deepStrictEqual(rec.tokens, length.tokens.concat(rec.tokens.slice(3)), 'the same greedy prefix');
    // The model's own limit (128 positions, the default context): 125 + 3; text mode says so on stderr.
    const full = cli(['--model', bare, '--prompt-ids', ids(125).join(','), '--max-new-tokens', '64']);
    assert.strictEqual(full.code, 0, full.stderr);
    assert.strictEqual(full.stdout.trim().split(' ').length, 3);
    assert.match(full.stderr, /3 tokens in .* tokens\/forward.*finish: context \(the context of 128 positions is full/);
    // Speculative runs report it too.
    const spec = JSON.parse(cli(['--model', bare, '--prompt-ids', p.join(','), '--max-new-tokens', '64', '--max-context', '16', '--prompt-lookup', '2', '--json']).stdout) as Record;
    assert.deepStrictEqual(spec.tokens, rec.tokens);
    assert.strictEqual(spec.finishReason, 'context');
  });

  it('--max-context sizes the KV cache and must fit the model', async () => {
    const m = await LlamaModel.load(bare, { device: 'cpu', maxSequences: 1, maxContext: 16 });
    const full = await LlamaModel.load(bare, { device: 'cpu', maxSequences: 1 });
    try {
      assert.strictEqual(m.config.maxPositions, 16);
      assert.ok(m.kvInfo().totalPages < full.kvInfo().totalPages, `${m.kvInfo().totalPages} vs ${full.kvInfo().totalPages}`);
    } finally {
      m.dispose();
      full.dispose();
    }
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--max-context', '129']), /--max-context: 129 is more than the 128 positions of .*mistral/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--max-context', 'x']), /--max-context: expected an integer/);
  });

  it('a reader that closes early (| head) ends the run quietly, no stack trace', async () => {
    const { spawn } = await import('child_process');
    const child = spawn(process.execPath, [bin, 'generate', '--model', dir, '--prompt', 'The big red cat', '--max-new-tokens', '100'], {
      env: { ...process.env, SPECDEC_BACKEND: 'cpu' },
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.once('data', () => child.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    assert.strictEqual(code, 0, err);
    assert.doesNotMatch(err, /EPIPE|\n\s+at /);
  });

  it('text streams to stdout step by step, and equals the --json text', async () => {
    // The same model without an EOS id: random weights whose greedy output starts with EOS (seed
    // 279679588) would end the run after one token and leave nothing to stream.
    const { eos: _eos, ...spec } = specByName('llama-gqa-f32');
    const dir = path.join(root, 'llama-no-eos');
    writeCheckpoint(dir, spec, testSeed + 1);
    const writes: string[] = [];
    let summary = '';
    const code = await generateCommand(['--model', dir, '--prompt', 'The big red cat', '--max-new-tokens', '12', '--device', 'cpu'], {
      stdout: (s) => writes.push(s),
      stderr: (s) => (summary += s),
    });
    assert.strictEqual(code, 0, summary);
    const json = JSON.parse(cli(['--model', dir, '--prompt', 'The big red cat', '--max-new-tokens', '12', '--json']).stdout) as Record;
    // As many writes as the text could show apart (the settled text of each prefix of the output:
    // this tokenizer cleans up spaces, so a run of one-letter words settles only at its end; seed
    // 700530963 wrote "f r f r f r ...": 3 writes where 2 texts could show), at least 4 where it can.
    const tok = TextTokenizer.load(dir) as TextTokenizer;
    const shown = new Set<string>();
    for (let k = 1; k <= json.tokens.length; k++) shown.add(settledText(tok.decode(json.tokens.slice(0, k), { skipSpecialTokens: true, cleanUpSpaces: false }), tok.cleansUpSpaces));
    shown.delete('');
    assert.ok(writes.length > Math.min(3, shown.size), `only ${writes.length} writes where ${shown.size} texts could show`);
    assert.strictEqual(writes.join(''), json.text + '\n');
    assert.match(summary, new RegExp(`${json.tokens.length} tokens in .* 1\\.00 tokens/forward, cpu\\); finish: ${json.finishReason}`));
  });

  it("an interrupted run keeps what it generated: finishReason 'abort', exit 130", async () => {
    // Plain, text mode: stopped from the stream after the third token.
    const stop = new AbortController();
    const writes: string[] = [];
    let err = '';
    const code = await generateCommand(['--model', bare, '--prompt-ids', '3,4,5', '--max-new-tokens', '100', '--device', 'cpu'], {
      stdout: (s) => {
        writes.push(s);
        if (writes.length === 3) stop.abort();
      },
      stderr: (s) => (err += s),
      signal: stop.signal,
    });
    assert.strictEqual(code, 130, err);
    assert.match(err, /finish: abort/);
    const shown = writes.join('').trim().split(' ');
    assert.ok(shown.length >= 3 && shown.length < 100, `${shown.length} tokens shown`);
    // Speculative, --json: the record holds the tokens emitted before the stop.
    const stop2 = new AbortController();
    let out = '';
    const code2 = await generateCommand(['--model', bare, '--prompt-ids', '3,4,5', '--max-new-tokens', '100', '--prompt-lookup', '2', '--device', 'cpu', '--json'], {
      stdout: (s) => (out += s),
      stderr: (s) => assert.fail(s),
      signal: stop2.signal,
      strategyHook: (ctx) => {
        let steps = 0;
        return strategyHook()({ ...ctx, onTokens: (i, t) => (ctx.onTokens?.(i, t), ++steps === 3 && stop2.abort()) });
      },
    });
    assert.strictEqual(code2, 130);
    const rec = JSON.parse(out) as Record;
    assert.strictEqual(rec.finishReason, 'abort');
    // The third step's tokens reach onTokens once the fourth forward has started (the engine hands
    // a step's tokens to consumers while the next forward runs), so that forward still counts.
    assert.strictEqual(rec.stats.targetForwards, 4);
    assert.ok(rec.tokens.length >= 3 && rec.tokens.length < 100, `${rec.tokens.length} tokens`);
    assert.strictEqual(rec.stats.acceptanceRate, null);
  });

  it('flags: ids out of range, a flag as a value, the model a mismatch names, every flag in --help', () => {
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1,4294967301']), /--prompt-ids: 4294967301 is not a token id/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1,2147483648']), /2147483648 is not a token id/);
    assertOneLineError(cli(['--model', bare, '--prompt', '--json']), /--prompt needs a value, got the flag '--json'/);
    assertOneLineError(cli(['--model', bare, '--prompt-ids', '1', '--draft', '--json']), /--draft: missing value \(got the flag '--json'\)/);
    assert.strictEqual(parseGenerateFlags(['--prompt=--json']).prompt, '--json');
    // The embedded heads (hidden 128) on the embedded draft (hidden 64): the draft is named, not the target.
    assertOneLineError(cli(['--draft', 'default', '--medusa', 'default', '--prompt-ids', '1,2']), /heads have hidden size 128 but the draft model \(default\) has 64/);
    const help = spawnSync(process.execPath, [bin, 'generate', '--help'], { encoding: 'utf8' });
    assert.strictEqual(help.status, 0);
    for (const flag of GENERATE_FLAGS) assert.match(help.stdout, new RegExp(`^\\s+${flag}\\b`, 'm'), `${flag} not in --help`);
    assert.strictEqual(help.stdout.trim(), GENERATE_USAGE.trim());
  });
});
