// `specdec serve` (lib/server/server.ts, lib/cli/serve.ts) on loopback with the embedded models:
// the OpenAI-shaped endpoints, 400s naming the field, the body limit, a small bounded load test
// (concurrent clients, mixed settings, cancellations; each completion equal to the same request
// alone; all KV pages free afterwards), and SIGTERM draining a running stream.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runLoad } from '../bench/serve_load';
import { completionTokens, postJson, postStream, request } from '../bench/serve_client';
import { EMBEDDED } from '../lib/cli/generate';
import { parseServeFlags, startServe } from '../lib/cli/serve';
import { knownForwardCost } from '../lib/cost_model';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { CompletionServer } from '../lib/server/server';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { TextTokenizer } from '../lib/tokenizer';
import { GrammarCursor, JsonGrammar, TokenVocabulary } from '../lib/grammar';
import { JsonSchemaGrammar } from '../lib/json_schema';
import { byteLevelJsonTokenizer, tokenizerFrom } from './fixtures/tokenizers';

describe('specdec serve', function () {
  this.timeout(120000);
  let target: LlamaModel;
  let draft: LlamaModel;
  let server: CompletionServer;
  let url: string;
  before(async () => {
    target = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 16 });
    draft = await LlamaModel.load(EMBEDDED.draft, { device: 'cpu', kvPages: target.kvInfo().totalPages });
    const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 3 }), maxBatch: 8 });
    server = new CompletionServer({ engine, modelName: 'tiny', tokenizer: TextTokenizer.load(EMBEDDED.target)!, maxBodyBytes: 4096 });
    const a = await server.listen(0, '127.0.0.1');
    url = `http://127.0.0.1:${a.port}`;
  });
  after(async () => {
    await server?.close();
    draft?.dispose();
    target?.dispose();
  });

  it('health, models, and a completion with text, token ids and usage (greedy equals the stream)', async () => {
    assert.deepStrictEqual(JSON.parse((await request(`${url}/health`, 'GET')).body), { status: 'ok' });
    const models = JSON.parse((await request(`${url}/v1/models`, 'GET')).body) as { data: { id: string; max_model_len: number }[] };
    assert.strictEqual(models.data[0]?.max_model_len, target.config.maxPositions);
    assert.strictEqual(models.data[0]?.id, 'tiny');
    const body = { model: 'tiny', prompt: 'once upon a time', max_tokens: 12, temperature: 0 };
    const r = await postJson(`${url}/v1/completions`, body);
    assert.strictEqual(r.status, 200);
    const choice = (r.json['choices'] as { text: string; finish_reason: string }[])[0]!;
    const ids = completionTokens(r);
    assert.strictEqual(ids.length, 12);
    assert.strictEqual(choice.finish_reason, 'length');
    assert.strictEqual(choice.text, TextTokenizer.load(EMBEDDED.target)!.decode(ids, { skipSpecialTokens: true }));
    const prompt = TextTokenizer.load(EMBEDDED.target)!.encode('once upon a time').length;
    assert.deepStrictEqual(r.json['usage'], { prompt_tokens: prompt, completion_tokens: 12, total_tokens: prompt + 12, prompt_tokens_details: { cached_tokens: 0 } });
    const s = await postStream(`${url}/v1/completions`, { ...body, stream: true });
    assert.ok(s.done && s.events.length >= 2, 'several events then [DONE]');
    assert.deepStrictEqual(completionTokens(s), ids);
    assert.strictEqual(s.events.map((e) => (e['choices'] as { text: string }[])[0]!.text).join(''), choice.text);
    assert.deepStrictEqual(s.events[s.events.length - 1]!['usage'], r.json['usage']);
    // Neutral values of the fields that are not implemented are accepted (clients send defaults);
    // min_p reaches the sampler: min_p 0.99 keeps only the most probable token (along this prompt's
    // greedy path the runner-up has at most 0.95 of the top probability at T 1.5), so seeded
    // sampling at T 1.5 gives the greedy tokens (without it, not: a 325-token vocabulary strays).
    const neutral = await postJson(`${url}/v1/completions`, { ...body, presence_penalty: 0, frequency_penalty: 0, repetition_penalty: 1, logit_bias: {}, logprobs: null, response_format: { type: 'text' }, tools: [], best_of: 1 });
    assert.deepStrictEqual(completionTokens(neutral), ids);
    // Penalties reach the engine: the server's tokens are plainGenerate's with the same penalties.
    const penalized = await postJson(`${url}/v1/completions`, { ...body, max_tokens: 24, presence_penalty: 0.6, frequency_penalty: 0.4, repetition_penalty: 1.2 });
    const tokenizer = TextTokenizer.load(EMBEDDED.target)!;
    const plain = await plainGenerate(server.engine.model, [tokenizer.encode(body.prompt)], { maxNewTokens: 24, penalties: { presence: 0.6, frequency: 0.4, repetition: 1.2 } });
    assert.deepStrictEqual(completionTokens(penalized), Array.from(plain.tokens[0]!));
    assert.notDeepStrictEqual(completionTokens(penalized).slice(0, 12), ids);
    // logit_bias too: the greedy path's first two tokens banned (-100) and lowered, the rest as
    // plainGenerate with the same bias.
    const logitBias = { [String(ids[0])]: -100, [String(ids[1])]: -2.5 };
    const biased = await postJson(`${url}/v1/completions`, { ...body, max_tokens: 24, presence_penalty: 0.6, logit_bias: logitBias });
    const plainBiased = await plainGenerate(server.engine.model, [tokenizer.encode(body.prompt)], { maxNewTokens: 24, penalties: { presence: 0.6, logitBias } });
    assert.deepStrictEqual(completionTokens(biased), Array.from(plainBiased.tokens[0]!));
    assert.ok(!completionTokens(biased).includes(ids[0]!), 'a token biased -100 is not emitted');
    const dog = { ...body, prompt: 'the dog ran to the park', max_tokens: 16 };
    const dogIds = completionTokens(await postJson(`${url}/v1/completions`, dog));
    const hot = { ...dog, temperature: 1.5, seed: 7 };
    assert.deepStrictEqual(completionTokens(await postJson(`${url}/v1/completions`, { ...hot, min_p: 0.99 })), dogIds);
    assert.notDeepStrictEqual(completionTokens(await postJson(`${url}/v1/completions`, hot)), dogIds);
    // ignore_eos: a completion that ends at the EOS at once goes on to max_tokens.
    const end = { prompt: 'the end.', max_tokens: 10, temperature: 0 };
    const ended = await postJson(`${url}/v1/completions`, end);
    assert.deepStrictEqual([completionTokens(ended).length, (ended.json['choices'] as { finish_reason: string }[])[0]!.finish_reason], [1, 'stop']);
    const past = await postJson(`${url}/v1/completions`, { ...end, ignore_eos: true });
    assert.deepStrictEqual([completionTokens(past).length, (past.json['choices'] as { finish_reason: string }[])[0]!.finish_reason], [10, 'length']);
    assert.strictEqual(completionTokens(past)[0], completionTokens(ended)[0]);
    // A stop string ends the text before it.
    const cut = await postJson(`${url}/v1/completions`, { ...body, max_tokens: 40, stop: [choice.text.split(' ')[3]!] });
    const cutChoice = (cut.json['choices'] as { text: string; finish_reason: string }[])[0]!;
    assert.strictEqual(cutChoice.finish_reason, 'stop');
    assert.ok(choice.text.startsWith(cutChoice.text) && cutChoice.text.length < choice.text.length);
    // min_tokens: no EOS before it (the completion that ended at once goes on: plainGenerate's
    // tokens with minTokens), and a stop string within its text does not stop (vLLM's).
    const atLeast = await postJson(`${url}/v1/completions`, { ...end, min_tokens: 6 });
    const wantMin = await plainGenerate(server.engine.model, [tokenizer.encode(end.prompt)], { maxNewTokens: 10, minTokens: 6 });
    assert.deepStrictEqual(completionTokens(atLeast), Array.from(wantMin.tokens[0]!));
    assert.ok(completionTokens(atLeast).length > 6);
    const notCut = await postJson(`${url}/v1/completions`, { ...body, stop: [choice.text.split(' ')[3]!], min_tokens: 12 });
    assert.deepStrictEqual([(notCut.json['choices'] as { text: string }[])[0]!.text, (notCut.json['choices'] as { finish_reason: string }[])[0]!.finish_reason], [choice.text, 'length']);
  });

  it('a client that hangs up mid-stream cancels its request', async () => {
    // A request that lasts: the target behind a proxy whose every call first waits 2 ms. (The whole
    // context of the embedded family, ~240 tokens, decodes in a few ms as native chains, and could end
    // within one of the loop's slices, before the hang-up is even seen.)
    const slow = new Proxy(target, {
      get(t, k) {
        const v: unknown = Reflect.get(t, k, t);
        if (typeof v !== 'function') return v;
        const f = (v as (...a: unknown[]) => unknown).bind(t);
        if (k !== 'forward' && k !== 'greedyChain' && k !== 'speculativeChain') return f;
        return async (...a: unknown[]): Promise<unknown> => {
          await new Promise((r) => setTimeout(r, 2));
          return f(...a);
        };
      },
    }) as LlamaModel;
    const engine = new Engine({ model: slow, speculator: new DraftModelSpeculator({ draft, k: 3 }), maxBatch: 2 });
    const slowServer = new CompletionServer({ engine, modelName: 'tiny', tokenizer: TextTokenizer.load(EMBEDDED.target)!, maxBodyBytes: 4096 });
    try {
      const a = await slowServer.listen(0, '127.0.0.1');
      const s = await postStream(`http://127.0.0.1:${a.port}/v1/completions`, { prompt: 'once upon a time', max_tokens: 2000, temperature: 0, stream: true }, { cancelAfter: 2 });
      assert.ok(s.cancelled);
      await engine.idle();
      assert.strictEqual(engine.metrics.aborted, 1);
      assert.ok(engine.metrics.generatedTokens < 200, 'stopped soon after the hang-up');
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages);
    } finally {
      await slowServer.close();
    }
  });

  it('startServe with a sized strategy calibrates the cost model before it listens; its prefix cache serves a chat\'s next turn', async () => {
    const running = await startServe(parseServeFlags(['--port', '0', '--draft', 'default', '--device', 'cpu', '--max-batch', '2']));
    try {
      assert.ok(knownForwardCost(running.server.engine.model), 'the target cost curve is known before the first request');
      const r = await postJson(`${running.url}/v1/completions`, { prompt: 'once upon a time', max_tokens: 6, temperature: 0 });
      assert.strictEqual(r.status, 200);
      // The prefix cache (default --max-batch sequences): a chat's next turn, sent as the whole
      // conversation, computes only what follows the last turn's tokens, with the same output.
      const turn1 = 'once upon a time there was a little girl named lily . she liked to play in the park with her dog';
      const t1 = await postJson(`${running.url}/v1/completions`, { prompt: turn1, max_tokens: 8, temperature: 0 });
      const turn2 = [...TextTokenizer.load(EMBEDDED.target)!.encode(turn1), ...completionTokens(t1), 13, 14];
      const before = running.server.engine.metrics.sharedPromptTokens;
      const t2 = await postJson(`${running.url}/v1/completions`, { prompt: turn2, max_tokens: 8, temperature: 0 });
      const shared = running.server.engine.metrics.sharedPromptTokens - before;
      assert.ok(shared >= turn2.length - 3, 'turn 2 started after turn 1');
      // The usage says so (OpenAI's prompt_tokens_details.cached_tokens); turn 1 had none cached.
      assert.deepStrictEqual((t2.json['usage'] as { prompt_tokens_details: unknown }).prompt_tokens_details, { cached_tokens: shared });
      assert.deepStrictEqual((t1.json['usage'] as { prompt_tokens_details: unknown }).prompt_tokens_details, { cached_tokens: 0 });
      // Streamed with include_usage, and n 2 of a prompt the cache holds: each choice took it from the cache.
      const s2 = await postStream(`${running.url}/v1/completions`, { prompt: turn2, max_tokens: 4, temperature: 0, n: 2, stream: true, stream_options: { include_usage: true } });
      const u2 = s2.events.find((e) => e['usage'] !== undefined)!['usage'] as { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
      assert.ok(u2.prompt_tokens_details.cached_tokens >= shared && u2.prompt_tokens_details.cached_tokens < u2.prompt_tokens, JSON.stringify(u2));
      const alone = await plainGenerate(running.server.engine.model as LlamaModel, [Int32Array.from(turn2)], { maxNewTokens: 8 });
      assert.deepStrictEqual(completionTokens(t2), Array.from(alone.tokens[0]!));
      assert.match((await request(`${running.url}/metrics`, 'GET')).body, /specdec_shared_prompt_tokens_total [1-9]/);
    } finally {
      await running.close();
    }
    assert.strictEqual(parseServeFlags([]).prefixCache, 32);
    assert.strictEqual(parseServeFlags(['--max-batch', '4']).prefixCache, 4);
    assert.strictEqual(parseServeFlags(['--prefix-cache', '0']).prefixCache, 0);
    assert.throws(() => parseServeFlags(['--prefix-cache', '-1']), /--prefix-cache/);
  });

  it('/tokenize and /detokenize (vLLM\'s): the tokenizer\'s ids and text, add_special_tokens, errors naming the field', async () => {
    const tok = TextTokenizer.load(EMBEDDED.target)!;
    const text = 'once upon a time there was a dog';
    const t = await postJson(`${url}/tokenize`, { model: 'tiny', prompt: text });
    assert.strictEqual(t.status, 200, JSON.stringify(t.json));
    const ids = Array.from(tok.encode(text));
    assert.deepStrictEqual(t.json, { tokens: ids, count: ids.length, max_model_len: target.config.maxPositions });
    const bare = await postJson(`${url}/tokenize`, { prompt: text, add_special_tokens: false });
    assert.deepStrictEqual(bare.json['tokens'], Array.from(tok.encode(text, { addSpecialTokens: false })));
    // The ids a completion of that prompt reads (its usage counts them).
    const c = await postJson(`${url}/v1/completions`, { prompt: text, max_tokens: 1, temperature: 0 });
    assert.strictEqual((c.json['usage'] as { prompt_tokens: number }).prompt_tokens, ids.length);
    const d = await postJson(`${url}/detokenize`, { tokens: ids });
    assert.deepStrictEqual(d.json, { prompt: tok.decode(ids, { skipSpecialTokens: false }) });
    assert.ok(String(d.json['prompt']).includes(text), JSON.stringify(d.json));
    for (const [route, body, field] of [
      ['/tokenize', { prompt: 5 }, 'prompt'],
      ['/tokenize', { prompt: 'a', messages: [] }, 'prompt'],
      ['/tokenize', { prompt: 'a', add_special_tokens: 'no' }, 'add_special_tokens'],
      ['/tokenize', { prompt: 'a', model: 'other' }, 'model'],
      ['/tokenize', { messages: [{ role: 'user', content: 'hi' }] }, 'messages'],
      ['/detokenize', { tokens: [1, target.config.vocabSize] }, 'tokens'],
      ['/detokenize', { tokens: 'abc' }, 'tokens'],
    ] as const) {
      const bad = await postJson(`${url}${route}`, body);
      assert.strictEqual(bad.status, 400, `${route} ${JSON.stringify(body)}`);
      assert.strictEqual((bad.json['error'] as { param: string }).param, field, `${route} ${JSON.stringify(body)}: ${JSON.stringify(bad.json)}`);
    }
    assert.strictEqual((await request(`${url}/tokenize`, 'GET')).status, 405);
  });

  it('apiKey: the API routes need Authorization: Bearer <key> (401 otherwise, OpenAI\'s error shape); /health and /metrics stay open; --api-key and $SPECDEC_API_KEY', async () => {
    const keyed = new CompletionServer({ engine: server.engine, modelName: 'tiny', tokenizer: TextTokenizer.load(EMBEDDED.target)!, apiKey: 's3cret' });
    const a = await keyed.listen(0, '127.0.0.1');
    const k = `http://127.0.0.1:${a.port}`;
    try {
      const body = JSON.stringify({ prompt: 'once upon a time', max_tokens: 3, temperature: 0 });
      for (const [headers, why] of [[{}, /missing API key/], [{ Authorization: 'Bearer nope' }, /incorrect API key/], [{ Authorization: 's3cret' }, /missing API key/], [{ Authorization: 'Bearer s3cret-and-more' }, /incorrect/]] as const) {
        const r = await request(`${k}/v1/completions`, 'POST', body, headers);
        assert.strictEqual(r.status, 401, JSON.stringify(headers));
        const err = (JSON.parse(r.body) as { error: { message: string; code: string } }).error;
        assert.match(err.message, why);
        assert.strictEqual(err.code, 'invalid_api_key');
      }
      assert.strictEqual((await request(`${k}/v1/models`, 'GET')).status, 401);
      assert.strictEqual((await request(`${k}/tokenize`, 'POST', JSON.stringify({ prompt: 'a' }))).status, 401);
      const ok = await request(`${k}/v1/completions`, 'POST', body, { Authorization: 'Bearer s3cret' });
      assert.strictEqual(ok.status, 200, ok.body);
      const plain = await postJson(`${url}/v1/completions`, JSON.parse(body));
      assert.deepStrictEqual((JSON.parse(ok.body) as { choices: { token_ids: number[] }[] }).choices[0]!.token_ids, completionTokens(plain));
      assert.strictEqual((await request(`${k}/v1/models`, 'GET', undefined, { authorization: 'bearer s3cret' })).status, 200);
      assert.strictEqual((await request(`${k}/health`, 'GET')).status, 200);
      assert.strictEqual((await request(`${k}/metrics`, 'GET')).status, 200);
    } finally {
      await keyed.close();
    }
    assert.strictEqual(parseServeFlags(['--api-key', 'abc'], {}).apiKey, 'abc');
    assert.strictEqual(parseServeFlags([], { SPECDEC_API_KEY: 'env-key' }).apiKey, 'env-key');
    assert.strictEqual(parseServeFlags(['--api-key=flag'], { SPECDEC_API_KEY: 'env-key' }).apiKey, 'flag');
    assert.strictEqual(parseServeFlags([], {}).apiKey, undefined);
    assert.throws(() => parseServeFlags(['--api-key', ' '], {}), /--api-key: empty/);
    assert.throws(() => new CompletionServer({ engine: server.engine, modelName: 'x', apiKey: '' }), /apiKey/);
  });

  it('bad requests: 400 with a JSON error naming the field; 404, 405, 413', async () => {
    const cases: [unknown, string | null][] = [
      [{ prompt: 'x', max_tokens: -1 }, 'max_tokens'],
      [{ prompt: 'x', temperature: 'hot' }, 'temperature'],
      [{ prompt: 'x', top_p: 0 }, 'top_p'],
      [{ prompt: 'x', top_k: 1.5 }, 'top_k'],
      [{ prompt: 'x', seed: -1 }, 'seed'],
      [{ prompt: 'x', stop: [''] }, 'stop'],
      [{ prompt: 'x', stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, 'stop'],
      [{ prompt: [1, 99999] }, 'prompt'],
      [{ prompt: [] }, 'prompt'],
      [{ max_tokens: 3 }, 'prompt'],
      [{ prompt: 'x', model: 'gpt-4' }, 'model'],
      [{ prompt: 'x', n: 0 }, 'n'],
      [{ prompt: 'x', n: 129 }, 'n'],
      [{ prompt: 'x', n: 1.5 }, 'n'],
      [{ prompt: 'x', stream: 'yes' }, 'stream'],
      [{ prompt: 'x', min_p: 1 }, 'min_p'],
      [{ prompt: 'x', presence_penalty: 2.5 }, 'presence_penalty'],
      [{ prompt: 'x', frequency_penalty: 'high' }, 'frequency_penalty'],
      [{ prompt: 'x', repetition_penalty: 0 }, 'repetition_penalty'],
      [{ prompt: 'x', logit_bias: { '5': 101 } }, 'logit_bias'],
      [{ prompt: 'x', logit_bias: { '5': '1' } }, 'logit_bias'],
      [{ prompt: 'x', logit_bias: { '-5': 1 } }, 'logit_bias'],
      [{ prompt: 'x', logit_bias: { '99999': 1 } }, 'logit_bias'],
      [{ prompt: 'x', logit_bias: { abc: 1 } }, 'logit_bias'],
      [{ prompt: 'x', logit_bias: [1] }, 'logit_bias'],
      [{ prompt: 'x', logprobs: 21 }, 'logprobs'],
      [{ prompt: 'x', logprobs: true }, 'logprobs'],
      [{ prompt: 'x', top_logprobs: 2 }, 'top_logprobs'],
      [{ prompt: 'x', best_of: 129 }, 'best_of'],
      [{ prompt: 'x', n: 2, best_of: 1 }, 'best_of'],
      [{ prompt: 'x', min_tokens: -1 }, 'min_tokens'],
      [{ prompt: 'x', min_tokens: 20, max_tokens: 10 }, 'min_tokens'],
      [{ prompt: 'x', ignore_eos: 'yes' }, 'ignore_eos'],
      [{ prompt: 'x', suffix: 'end' }, 'suffix'],
      // (The embedded WordPiece tokenizer's tokens have no bytes of their own: no JSON grammar.)
      [{ prompt: 'x', response_format: { type: 'json_object' } }, 'response_format'],
      [{ prompt: 'x', response_format: { type: 'json_schema', json_schema: { name: 'x', schema: {} } } }, 'response_format'],
      [{ prompt: 'x', response_format: { type: 'yaml' } }, 'response_format'],
      [{ prompt: 'x', response_format: 'json_object' }, 'response_format'],
      [{ prompt: 'x', tools: [{ type: 'function' }] }, 'tools'],
      [[1, 2], null],
    ];
    for (const [body, param] of cases) {
      const r = await postJson(`${url}/v1/completions`, body);
      assert.strictEqual(r.status, 400, JSON.stringify(body));
      const err = r.json['error'] as { param: string | null; message: string };
      assert.strictEqual(err.param, param, JSON.stringify(body));
      if (param) assert.ok(err.message.includes(param), err.message);
    }
    const bad = await request(`${url}/v1/completions`, 'POST', '{"prompt": ');
    assert.strictEqual(bad.status, 400);
    assert.match(bad.body, /not valid JSON/);
    assert.strictEqual((await request(`${url}/v2/nothing`, 'GET')).status, 404);
    assert.strictEqual((await request(`${url}/v1/completions`, 'GET')).status, 405);
    const big = await request(`${url}/v1/completions`, 'POST', JSON.stringify({ prompt: 'x'.repeat(5000) }));
    assert.strictEqual(big.status, 413);
    assert.match(big.body, /limit of 4096 bytes/);
  });

  it('response_format json_object (a byte-level tokenizer over the same ids): every choice a JSON object or its prefix, the grammar\'s tokens, streamed alike', async () => {
    const tokenizer = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize));
    const json = new CompletionServer({ engine: server.engine, modelName: 'tiny', tokenizer });
    const a = await json.listen(0, '127.0.0.1');
    const jurl = `http://127.0.0.1:${a.port}`;
    try {
      const grammar = new JsonGrammar(TokenVocabulary.fromTokenizer(tokenizer, target.config.vocabSize));
      // '"', '}' and '"}' raised so that objects close; EOS (2) raised so that a complete one ends.
      const logit_bias = { [3 + 0x22]: 3, [3 + 0x7d]: 4, [tokenizer.tokenToId('"}') as number]: 4, 2: 30 };
      type Choice = { text: string; token_ids: number[]; finish_reason: string };
      const body = { prompt: 'Give me a JSON object.', max_tokens: 60, temperature: 0.7, seed: 4, n: 4, logit_bias, response_format: { type: 'json_object' } };
      const r = await postJson(`${jurl}/v1/completions`, body);
      assert.strictEqual(r.status, 200, JSON.stringify(r.json));
      const choices = r.json['choices'] as Choice[];
      let objects = 0;
      for (const c of choices) {
        // The engine's tokens for the same request (plain constrained decoding's, with a speculator).
        const ids = c.token_ids.filter((t) => t !== 2);
        assert.strictEqual(new GrammarCursor(grammar).at(ids, 0, ids.length) !== undefined, true, `${JSON.stringify(c.text)}: a token the grammar does not allow`);
        assert.strictEqual(c.text, tokenizer.decode(c.token_ids, { skipSpecialTokens: true }));
        if (c.finish_reason === 'stop') {
          const v: unknown = JSON.parse(c.text);
          assert.ok(typeof v === 'object' && v !== null && !Array.isArray(v), c.text);
          objects++;
        } else assert.strictEqual(c.finish_reason, 'length');
      }
      assert.ok(objects >= 1, `${objects} of ${choices.length} choices ended as JSON objects`);
      const s = await postStream(`${jurl}/v1/completions`, { ...body, stream: true });
      assert.deepStrictEqual(
        choices.map((c) => c.text),
        [0, 1, 2, 3].map((i) => s.events.map((e) => (e['choices'] as { index: number; text: string }[]).filter((c) => c.index === i).map((c) => c.text).join('')).join('')),
      );
      // Without the grammar the same request writes other tokens.
      const free = await postJson(`${jurl}/v1/completions`, { ...body, response_format: { type: 'text' } });
      assert.notDeepStrictEqual((free.json['choices'] as Choice[]).map((c) => c.text), choices.map((c) => c.text));
      // json_schema: values valid for the schema (its properties in order, the required ones there).
      const schema = { type: 'object', properties: { name: { type: 'string' }, n: { type: 'integer' }, tag: { enum: ['a', 'b'] } }, required: ['name', 'tag'], additionalProperties: false };
      const sg = new JsonSchemaGrammar(TokenVocabulary.fromTokenizer(tokenizer, target.config.vocabSize), schema);
      const sr = await postJson(`${jurl}/v1/completions`, { ...body, logit_bias: { ...logit_bias, [3 + 0x2c]: 3 }, response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } } });
      assert.strictEqual(sr.status, 200, JSON.stringify(sr.json));
      let valid = 0;
      for (const c of sr.json['choices'] as Choice[]) {
        const ids = c.token_ids.filter((t) => t !== 2);
        assert.ok(new GrammarCursor(sg).at(ids, 0, ids.length), `${c.text}: a token the schema does not allow`);
        if (c.finish_reason !== 'stop') continue;
        const v = JSON.parse(c.text) as Record<string, unknown>;
        assert.deepStrictEqual(Object.keys(v).filter((k) => k !== 'n'), ['name', 'tag'], c.text);
        assert.ok(typeof v['name'] === 'string' && ['a', 'b'].includes(v['tag'] as string) && (v['n'] === undefined || Number.isInteger(v['n'])), c.text);
        valid++;
      }
      assert.ok(valid >= 1, `${valid} choices ended valid`);
      for (const [rf, msg] of [
        [{ type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', pattern: 'a+' } } }, /json_schema: json schema #: the keyword 'pattern' is not supported/],
        [{ type: 'json_schema', json_schema: { name: 'x' } }, /expected json_schema: \{ schema/],
        [{ type: 'json_schema' }, /expected json_schema: \{ schema/],
      ] as const) {
        const bad = await postJson(`${jurl}/v1/completions`, { prompt: 'x', response_format: rf });
        assert.strictEqual(bad.status, 400);
        const err = bad.json['error'] as { param: string; message: string };
        assert.strictEqual(err.param, 'response_format');
        assert.match(err.message, msg);
      }
    } finally {
      await json.close();
    }
  });

  it("prediction (OpenAI's predicted outputs): the same reply with any prediction, text or parts; a malformed one is a 400 naming it", async () => {
    const body = { prompt: 'once upon a time', max_tokens: 24, temperature: 0.8, seed: 9 };
    const base = await postJson(`${url}/v1/completions`, body);
    const text = (base.json['choices'] as { text: string }[])[0]!.text;
    for (const prediction of [{ type: 'content', content: text }, { type: 'content', content: [{ type: 'text', text: 'there was a little ' }, { type: 'text', text: 'dog' }] }, { type: 'content', content: '' }]) {
      const r = await postJson(`${url}/v1/completions`, { ...body, prediction });
      assert.strictEqual(r.status, 200, JSON.stringify(r.json));
      assert.deepStrictEqual(completionTokens(r), completionTokens(base));
    }
    for (const prediction of [{ type: 'text', content: 'x' }, { type: 'content' }, 'the text', { type: 'content', content: [{ type: 'image_url' }] }]) {
      const r = await postJson(`${url}/v1/completions`, { ...body, prediction });
      assert.strictEqual(r.status, 400);
      assert.strictEqual((r.json['error'] as { param: string }).param, 'prediction');
    }
  });

  it('n choices (each an engine request on stream (seed, i)), streamed interleaved; echo puts the prompt before each; best_of: the n of highest summed log-probability', async () => {
    type Choice = { index: number; text: string; token_ids: number[]; finish_reason: string };
    const body = { prompt: 'the dog ran to the park', max_tokens: 14, temperature: 0.9, seed: 21, n: 3 };
    const r = await postJson(`${url}/v1/completions`, body);
    assert.strictEqual(r.status, 200);
    const choices = r.json['choices'] as Choice[];
    assert.deepStrictEqual(choices.map((c) => c.index), [0, 1, 2]);
    const tokenizer = TextTokenizer.load(EMBEDDED.target)!;
    const prompt = tokenizer.encode(body.prompt);
    // Choice i is the engine's request with (seed, stream i): the same tokens, and the texts differ.
    for (const [i, c] of choices.entries()) {
      const alone = await server.engine.submit(prompt, { maxNewTokens: 14, sampling: { temperature: 0.9 }, seed: 21, stream: i });
      assert.deepStrictEqual(c.token_ids, Array.from(alone.tokens), `choice ${i}`);
      assert.strictEqual(c.text, tokenizer.decode(c.token_ids, { skipSpecialTokens: true }));
    }
    assert.strictEqual(new Set(choices.map((c) => c.token_ids.join())).size, 3, 'three different samples');
    assert.deepStrictEqual(r.json['usage'], { prompt_tokens: prompt.length, completion_tokens: choices.reduce((a, c) => a + c.token_ids.length, 0), total_tokens: prompt.length + choices.reduce((a, c) => a + c.token_ids.length, 0), prompt_tokens_details: { cached_tokens: 0 } });
    // n = 1 is choice 0.
    const one = await postJson(`${url}/v1/completions`, { ...body, n: 1 });
    assert.deepStrictEqual(completionTokens(one), choices[0]!.token_ids);
    // Streamed: each choice's chunks by index add up to its text and ids, each ends with its finish
    // reason; with include_usage, one usage chunk for all.
    const s = await postStream(`${url}/v1/completions`, { ...body, stream: true, stream_options: { include_usage: true } });
    assert.ok(s.done);
    for (const [i, c] of choices.entries()) {
      const mine = s.events.filter((e) => (e['choices'] as Choice[])[0]?.index === i).map((e) => (e['choices'] as Choice[])[0]!);
      assert.strictEqual(mine.map((x) => x.text).join(''), c.text, `stream choice ${i}`);
      assert.deepStrictEqual(mine.flatMap((x) => x.token_ids), c.token_ids);
      assert.deepStrictEqual(mine.map((x) => x.finish_reason).filter((f) => f !== null), [c.finish_reason]);
    }
    const usages = s.events.filter((e) => e['usage'] !== undefined);
    assert.strictEqual(usages.length, 1);
    assert.deepStrictEqual(usages[0]!['usage'], r.json['usage']);
    // echo: the prompt's text before each choice's (token_ids stay the completion's); streamed as a
    // first chunk of its own. Token ids are echoed as their text.
    const echoed = await postJson(`${url}/v1/completions`, { ...body, echo: true });
    (echoed.json['choices'] as Choice[]).forEach((c, i) => {
      assert.strictEqual(c.text, body.prompt + choices[i]!.text);
      assert.deepStrictEqual(c.token_ids, choices[i]!.token_ids);
    });
    const echoStream = await postStream(`${url}/v1/completions`, { ...body, n: 1, echo: true, stream: true });
    assert.strictEqual(echoStream.events.map((e) => (e['choices'] as Choice[])[0]?.text ?? '').join(''), body.prompt + choices[0]!.text);
    assert.strictEqual((echoStream.events[0]!['choices'] as Choice[])[0]!.text, body.prompt);
    const byIds = await postJson(`${url}/v1/completions`, { prompt: Array.from(prompt), max_tokens: 0, echo: true });
    assert.strictEqual((byIds.json['choices'] as Choice[])[0]!.text, tokenizer.decode(Array.from(prompt), { skipSpecialTokens: false }));
    // best_of 5, n 2: the two of streams 0..4 of highest summed log-probability, best first; usage counts all five.
    const cands = await Promise.all([0, 1, 2, 3, 4].map((i) => server.engine.submit(prompt, { maxNewTokens: 14, sampling: { temperature: 0.9 }, seed: 21, stream: i, logprobs: 0 })));
    const score = cands.map((x) => x.logprobs!.token.reduce((a, v) => a + v, 0));
    const order = [0, 1, 2, 3, 4].sort((a, b) => score[b]! - score[a]! || a - b);
    assert.notDeepStrictEqual(order.slice(0, 2), [0, 1], 'the best are not the first streams (else the test shows nothing)');
    const best = await postJson(`${url}/v1/completions`, { ...body, n: 2, best_of: 5 });
    assert.strictEqual(best.status, 200, JSON.stringify(best.json));
    assert.deepStrictEqual((best.json['choices'] as Choice[]).map((c) => c.token_ids), order.slice(0, 2).map((i) => Array.from(cands[i]!.tokens)));
    assert.deepStrictEqual((best.json['choices'] as Choice[]).map((c) => c.index), [0, 1]);
    assert.strictEqual((best.json['choices'] as { logprobs: unknown }[])[0]!.logprobs, null, 'no logprobs asked: none shown');
    assert.strictEqual((best.json['usage'] as { completion_tokens: number }).completion_tokens, cands.reduce((a, x) => a + x.tokens.length, 0));
    const bestLp = await postJson(`${url}/v1/completions`, { ...body, n: 1, best_of: 5, logprobs: 1 });
    assert.deepStrictEqual((bestLp.json['choices'] as { logprobs: { token_logprobs: number[] } }[])[0]!.logprobs.token_logprobs, Array.from(cands[order[0]!]!.logprobs!.token));
    // Refused: best_of below n, streamed, or on a chat; echo on a chat.
    for (const [b, param] of [
      [{ ...body, best_of: 2 }, 'best_of'],
      [{ ...body, best_of: 5, stream: true }, 'best_of'],
      [{ messages: [{ role: 'user', content: 'hi' }], best_of: 2 }, 'best_of'],
      [{ messages: [{ role: 'user', content: 'hi' }], echo: true }, 'echo'],
    ] as const) {
      const bad = await postJson(`${url}/v1/${'messages' in b ? 'chat/completions' : 'completions'}`, b);
      assert.strictEqual(bad.status, 400);
      assert.strictEqual((bad.json['error'] as { param: string }).param, param);
    }
    assert.strictEqual((await postJson(`${url}/v1/completions`, { ...body, best_of: 3 })).status, 200);
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'KV pages free');
  });

  it('logprobs: completions\' { tokens, token_logprobs, top_logprobs, text_offset } (the engine\'s log-probabilities), streamed per chunk; refused where not given', async () => {
    type Lp = { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] };
    const tokenizer = TextTokenizer.load(EMBEDDED.target)!;
    const body = { prompt: 'once upon a time', max_tokens: 12, temperature: 0, logprobs: 2 };
    const r = await postJson(`${url}/v1/completions`, body);
    assert.strictEqual(r.status, 200, JSON.stringify(r.json));
    const choice = (r.json['choices'] as { text: string; token_ids: number[]; logprobs: Lp }[])[0]!;
    const lp = choice.logprobs;
    const want = await server.engine.submit(tokenizer.encode(body.prompt), { maxNewTokens: 12, logprobs: 2 });
    assert.deepStrictEqual(choice.token_ids, Array.from(want.tokens));
    assert.deepStrictEqual(lp.token_logprobs, Array.from(want.logprobs!.token));
    assert.deepStrictEqual(lp.tokens, choice.token_ids.map((t) => tokenizer.decode([t], { skipSpecialTokens: false })));
    lp.top_logprobs.forEach((d, i) => {
      // The two most probable (greedy: the token itself is the first) and the token.
      const top = [0, 1].map((j) => [tokenizer.decode([want.logprobs!.topIds[2 * i + j]!], { skipSpecialTokens: false }), want.logprobs!.topLogprobs[2 * i + j]!] as const);
      assert.deepStrictEqual(d, Object.fromEntries(top[0]![0] === top[1]![0] ? [top[0]!] : top));
      assert.strictEqual(d[lp.tokens[i]!], lp.token_logprobs[i]);
    });
    assert.strictEqual(lp.text_offset[0], 0);
    lp.text_offset.forEach((o, i) => assert.ok(o <= choice.text.length && (i === 0 || o >= lp.text_offset[i - 1]!)));
    // Streamed: each chunk's own, adding up to the whole.
    const s = await postStream(`${url}/v1/completions`, { ...body, stream: true });
    const parts = s.events.map((e) => (e['choices'] as { logprobs: Lp | null }[])[0]?.logprobs).filter((x): x is Lp => x !== null && x !== undefined);
    assert.ok(parts.length > 1);
    assert.deepStrictEqual(parts.flatMap((p) => p.token_logprobs), lp.token_logprobs);
    assert.deepStrictEqual(parts.flatMap((p) => p.text_offset), lp.text_offset);
    // Without logprobs: null, as before.
    assert.strictEqual(((await postJson(`${url}/v1/completions`, { ...body, logprobs: null })).json['choices'] as { logprobs: unknown }[])[0]!.logprobs, null);
  });

  it('echo with logprobs (lm-eval\'s loglikelihood): the prompt\'s entries first (the first null), then the completion\'s; max_tokens 0; streamed in the echo chunk; every choice', async () => {
    type Lp = { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[]; text_offset: number[] };
    type Choice = { text: string; token_ids: number[]; logprobs: Lp };
    const tokenizer = TextTokenizer.load(EMBEDDED.target)!;
    const text = 'once upon a time there was';
    const ids = tokenizer.encode(text);
    const want = await plainGenerate(target, [ids], { maxNewTokens: 3, promptLogprobs: 1, logprobs: 1 });
    const wantPrompt = want.promptLogprobs![0]!;
    const name = (t: number): string => tokenizer.decode([t], { skipSpecialTokens: false });
    for (const prompt of [text, Array.from(ids)]) {
      for (const maxTokens of [0, 3]) {
        const r = await postJson(`${url}/v1/completions`, { prompt, max_tokens: maxTokens, temperature: 0, echo: true, logprobs: 1, n: 2 });
        assert.strictEqual(r.status, 200, JSON.stringify(r.json));
        for (const c of r.json['choices'] as Choice[]) {
          const lp = c.logprobs;
          assert.deepStrictEqual(c.token_ids, Array.from(want.tokens[0]!.subarray(0, maxTokens)));
          assert.strictEqual(lp.tokens.length, ids.length + maxTokens);
          assert.deepStrictEqual(lp.tokens, [...ids, ...c.token_ids].map(name));
          assert.deepStrictEqual(lp.token_logprobs, [null, ...wantPrompt.token, ...want.logprobs![0]!.token.subarray(0, maxTokens)]);
          assert.strictEqual(lp.top_logprobs[0], null);
          for (let j = 1; j < ids.length; j++) {
            const top = lp.top_logprobs[j]!;
            assert.strictEqual(top[name(wantPrompt.topIds[j - 1]!)], wantPrompt.topLogprobs[j - 1], `prompt token ${j}: the most probable`);
            assert.strictEqual(top[lp.tokens[j]!], lp.token_logprobs[j], `prompt token ${j}: itself`);
          }
          // Offsets into the prompt's text, then into the completion's past the echo.
          // (Sent as ids, the echo is their decoding with the special tokens.)
          const echo = typeof prompt === 'string' ? text : tokenizer.decode(ids, { skipSpecialTokens: false });
          assert.strictEqual(c.text.slice(0, echo.length), echo);
          lp.text_offset.forEach((o, i) => assert.ok(i === 0 || o >= lp.text_offset[i - 1]!, `offset ${i}`));
          for (let j = 1; j < ids.length; j++) assert.ok(echo.slice(lp.text_offset[j]).trimStart().startsWith(lp.tokens[j]!), `prompt token ${j} at its offset`);
          if (maxTokens > 0) assert.strictEqual(lp.text_offset[ids.length], echo.length);
        }
        // Streamed: the echo chunk carries the prompt's; the rest follow per chunk.
        const s = await postStream(`${url}/v1/completions`, { prompt, max_tokens: maxTokens, temperature: 0, echo: true, logprobs: 1, stream: true });
        const parts = s.events.map((e) => (e['choices'] as { logprobs: Lp | null }[])[0]?.logprobs).filter((x): x is Lp => x !== null && x !== undefined);
        assert.strictEqual((s.events[0]!['choices'] as Choice[])[0]!.text, (r.json['choices'] as Choice[])[0]!.text.slice(0, (s.events[0]!['choices'] as Choice[])[0]!.text.length));
        assert.deepStrictEqual(parts[0]!.token_logprobs, [null, ...wantPrompt.token]);
        assert.deepStrictEqual(parts.flatMap((p) => p.token_logprobs), (r.json['choices'] as Choice[])[0]!.logprobs.token_logprobs);
      }
    }
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'KV pages free');
  });

  it('several prompts (OpenAI\'s batch form): choice p * n + i is prompt p\'s request on stream i, as sent alone; usage counts each prompt once; token-id batches score with echo and logprobs; streamed by index', async () => {
    type Choice = { index: number; text: string; token_ids: number[]; logprobs: { token_logprobs: (number | null)[] } | null; finish_reason: string | null };
    const tokenizer = TextTokenizer.load(EMBEDDED.target)!;
    const texts = ['once upon a time', 'the dog ran to the park', 'a little bird'];
    const body = { prompt: texts, max_tokens: 8, temperature: 0.9, seed: 7, n: 2 };
    const r = await postJson(`${url}/v1/completions`, body);
    assert.strictEqual(r.status, 200, JSON.stringify(r.json));
    const choices = r.json['choices'] as Choice[];
    assert.deepStrictEqual(choices.map((c) => c.index), [0, 1, 2, 3, 4, 5]);
    for (const [p, text] of texts.entries()) {
      const alone = (await postJson(`${url}/v1/completions`, { ...body, prompt: text })).json['choices'] as Choice[];
      assert.deepStrictEqual(choices.slice(2 * p, 2 * p + 2).map((c) => c.token_ids), alone.map((c) => c.token_ids), `prompt ${p}`);
    }
    const promptTokens = texts.reduce((a, t) => a + tokenizer.encode(t).length, 0);
    const completion = choices.reduce((a, c) => a + c.token_ids.length, 0);
    assert.deepStrictEqual(r.json['usage'], { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion, prompt_tokens_details: { cached_tokens: 0 } });
    // Streamed: each index's chunks add up to its choice.
    const st = await postStream(`${url}/v1/completions`, { ...body, stream: true });
    for (const c of choices) {
      const mine = st.events.filter((e) => (e['choices'] as Choice[])[0]?.index === c.index).map((e) => (e['choices'] as Choice[])[0]!);
      assert.deepStrictEqual(mine.flatMap((x) => x.token_ids), c.token_ids, `streamed choice ${c.index}`);
    }
    // lm-evaluation-harness's batched loglikelihood: token-id prompts, echo, logprobs, max_tokens 0.
    const ids = texts.map((t) => Array.from(tokenizer.encode(t)));
    const want = await plainGenerate(target, ids.map((x) => Int32Array.from(x)), { maxNewTokens: 0, promptLogprobs: 1 });
    for (const stream of [false, true]) {
      const q = { prompt: ids, max_tokens: 0, temperature: 0, echo: true, logprobs: 1, stream };
      const got = stream
        ? (await postStream(`${url}/v1/completions`, q)).events.map((e) => (e['choices'] as Choice[])[0]).filter((c): c is Choice => c !== undefined && c.logprobs !== null)
        : ((await postJson(`${url}/v1/completions`, q)).json['choices'] as Choice[]);
      assert.deepStrictEqual(got.map((c) => c.index).sort(), [0, 1, 2]);
      for (const c of got) assert.deepStrictEqual(c.logprobs!.token_logprobs, [null, ...want.promptLogprobs![c.index]!.token], `${stream ? 'streamed ' : ''}prompt ${c.index}`);
    }
    // lm-evaluation-harness's exact payloads (lm_eval/models/openai_completions.py): loglikelihood
    // reads token_logprobs[ctxlen:-1] and checks each against max(top_logprobs) for is_greedy;
    // generate_until sends a task's whole stop list with EOS added.
    const ctxlen = 5;
    const ll = await postJson(`${url}/v1/completions`, { model: 'tiny', prompt: ids, temperature: 0, max_tokens: 1, logprobs: 1, seed: 1234, echo: true });
    assert.strictEqual(ll.status, 200, JSON.stringify(ll.json));
    const llChoices = (ll.json['choices'] as { index: number; logprobs: { token_logprobs: number[]; top_logprobs: Record<string, number>[] } }[]).sort((x, y) => x.index - y.index);
    llChoices.forEach((c, i) => {
      const tl = c.logprobs.token_logprobs.slice(ctxlen, -1);
      const expected = Array.from(want.promptLogprobs![i]!.token.subarray(ctxlen - 1));
      assert.deepStrictEqual(tl, expected, `loglikelihood ${i}`);
      const greedy = tl.every((t, j) => t === Math.max(...Object.values(c.logprobs.top_logprobs.slice(ctxlen, -1)[j]!)));
      const wantGreedy = Array.from(want.promptLogprobs![i]!.topIds.subarray(ctxlen - 1)).every((t, j) => t === ids[i]![ctxlen + j]);
      assert.strictEqual(greedy, wantGreedy, `is_greedy ${i}`);
    });
    const gen = await postJson(`${url}/v1/completions`, { model: 'tiny', prompt: ids, max_tokens: 8, temperature: 0, stop: ['\n\n', 'Question:', '</s>', 'Q:', '###', 'A:'], seed: 1234 });
    assert.strictEqual(gen.status, 200, JSON.stringify(gen.json));
    // Errors name the prompt at fault.
    for (const [prompt, msg] of [
      [['x', [1, 2], [3, 99999]], /prompt\[2\]\[1\] = 99999 is not a token id/],
      [['x', ''], /prompt\[1\]: empty/],
      [['x', 5], /prompt: expected a non-empty string/],
      [Array.from({ length: 300 }, () => 'x'), /300 prompts x 4 choices is more than 1024 requests/],
    ] as const) {
      const bad = await postJson(`${url}/v1/completions`, { prompt, n: 4 });
      assert.strictEqual(bad.status, 400);
      assert.match((bad.json['error'] as { message: string }).message, msg);
      assert.strictEqual((bad.json['error'] as { param: string }).param, 'prompt');
    }
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'KV pages free');
  });

  it('/v1/chat/completions: the chat through the template, the same tokens as its ids sent to /v1/completions; streamed deltas; errors name messages', async () => {
    // The embedded tokenizer with a chat template beside it.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-serve-chat-'));
    fs.copyFileSync(path.join(EMBEDDED.target, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
    const cfgFile = path.join(EMBEDDED.target, 'tokenizer_config.json');
    const base = fs.existsSync(cfgFile) ? (JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>) : {};
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...base, chat_template: '{% if greeting is defined %}{{ greeting }} {% endif %}{% for m in messages %}{{ m.content }} {% endfor %}{% if add_generation_prompt %}once{% endif %}' }));
    const tok = TextTokenizer.load(dir)!;
    const chatServer = new CompletionServer({ engine: server.engine, modelName: 'tiny', tokenizer: tok, chat: tok });
    const a = await chatServer.listen(0, '127.0.0.1');
    const curl = `http://127.0.0.1:${a.port}`;
    try {
      const messages = [{ role: 'system', content: 'the cat' }, { role: 'user', content: 'upon a time' }];
      const ids = Array.from(tok.encodeChat(messages));
      const r = await postJson(`${curl}/v1/chat/completions`, { model: 'tiny', messages, max_completion_tokens: 10, temperature: 0 });
      assert.strictEqual(r.status, 200, JSON.stringify(r.json));
      assert.strictEqual(r.json['object'], 'chat.completion');
      assert.match(String(r.json['id']), /^chatcmpl-/);
      const choice = (r.json['choices'] as { message: { role: string; content: string }; finish_reason: string }[])[0]!;
      assert.strictEqual(choice.message.role, 'assistant');
      assert.ok(choice.message.content.length > 0, 'a reply was written');
      const plain = await postJson(`${curl}/v1/completions`, { prompt: ids, max_tokens: 10, temperature: 0 });
      assert.strictEqual(choice.message.content, (plain.json['choices'] as { text: string }[])[0]!.text);
      // /tokenize with messages: the ids the chat was decoded from.
      const tm = await postJson(`${curl}/tokenize`, { model: 'tiny', messages });
      assert.deepStrictEqual(tm.json, { tokens: ids, count: ids.length, max_model_len: server.engine.model.config.maxPositions });
      assert.deepStrictEqual(r.json['usage'], plain.json['usage']);
      // logprobs: true, top_logprobs: 3 -- { content: [{ token, logprob, bytes, top_logprobs }] } per
      // token (greedy: the token is the most probable); streamed per chunk.
      type Entry = { token: string; logprob: number; bytes: number[]; top_logprobs: { token: string; logprob: number; bytes: number[] }[] };
      const withLp = await postJson(`${curl}/v1/chat/completions`, { messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3 });
      assert.strictEqual(withLp.status, 200, JSON.stringify(withLp.json));
      const content = (withLp.json['choices'] as { logprobs: { content: Entry[] } }[])[0]!.logprobs.content;
      assert.strictEqual(content.length, (withLp.json['usage'] as { completion_tokens: number }).completion_tokens);
      for (const e of content) {
        assert.strictEqual(e.top_logprobs.length, 3);
        assert.deepStrictEqual(e.top_logprobs[0], { token: e.token, logprob: e.logprob, bytes: e.bytes });
        assert.deepStrictEqual(e.bytes, Array.from(Buffer.from(e.token, 'utf8')));
        assert.ok(e.logprob <= 0 && e.top_logprobs[1]!.logprob <= e.logprob);
      }
      const lpStream = await postStream(`${curl}/v1/chat/completions`, { messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3, stream: true });
      assert.deepStrictEqual(lpStream.events.flatMap((e) => (e['choices'] as { logprobs?: { content: Entry[] } | null }[])[0]?.logprobs?.content ?? []), content);
      const noTop = await postJson(`${curl}/v1/chat/completions`, { messages, max_tokens: 2, logprobs: true });
      assert.ok(((noTop.json['choices'] as { logprobs: { content: Entry[] } }[])[0]!.logprobs.content).every((e) => e.top_logprobs.length === 0));
      for (const [bad, param] of [[{ top_logprobs: 2 }, 'top_logprobs'], [{ logprobs: true, top_logprobs: 21 }, 'top_logprobs'], [{ logprobs: 2 }, 'logprobs']] as const) {
        const r = await postJson(`${curl}/v1/chat/completions`, { messages, max_tokens: 2, ...bad });
        assert.strictEqual(r.status, 400, JSON.stringify(bad));
        assert.strictEqual((r.json['error'] as { param: string }).param, param);
      }
      // n choices, each with its role chunk, its deltas adding up to its message.
      const chat = await postStream(`${curl}/v1/chat/completions`, { messages, max_tokens: 6, temperature: 0.9, seed: 3, n: 2, stream: true });
      type Delta = { index: number; delta: { role?: string; content?: string } };
      const deltas = chat.events.map((e) => (e['choices'] as Delta[])[0]).filter((d): d is Delta => d !== undefined);
      assert.deepStrictEqual(deltas.filter((d) => d.delta.role === 'assistant').map((d) => d.index).sort(), [0, 1]);
      const chatJson = await postJson(`${curl}/v1/chat/completions`, { messages, max_tokens: 6, temperature: 0.9, seed: 3, n: 2 });
      const msgs = (chatJson.json['choices'] as { index: number; message: { content: string } }[]).map((c) => c.message.content);
      assert.strictEqual(msgs.length, 2);
      for (const i of [0, 1]) assert.strictEqual(deltas.filter((d) => d.index === i).map((d) => d.delta.content ?? '').join(''), msgs[i], `chat choice ${i}`);
      // Text parts join into one content.
      const parts = await postJson(`${curl}/v1/chat/completions`, { messages: [messages[0], { role: 'user', content: [{ type: 'text', text: 'upon a ' }, { type: 'text', text: 'time' }] }], max_tokens: 10, temperature: 0 });
      assert.strictEqual((parts.json['choices'] as { message: { content: string } }[])[0]!.message.content, choice.message.content);
      // chat_template_kwargs are template variables (this template greets when given one); then a bad one.
      const kw = await postJson(`${curl}/v1/chat/completions`, { messages, max_tokens: 10, temperature: 0, chat_template_kwargs: { greeting: 'hello' } });
      const greeted = tok.encodeChat(messages, { variables: { greeting: 'hello' } });
      assert.ok(greeted.length > ids.length);
      assert.strictEqual((kw.json['usage'] as { prompt_tokens: number }).prompt_tokens, greeted.length);
      const badKw = await postJson(`${curl}/v1/chat/completions`, { messages, chat_template_kwargs: [1] });
      assert.strictEqual((badKw.json['error'] as { param: string }).param, 'chat_template_kwargs');
      // Streamed: a role delta first, content deltas, a last chunk with the finish reason, [DONE].
      const s = await postStream(`${curl}/v1/chat/completions`, { messages, max_tokens: 10, temperature: 0, stream: true });
      assert.ok(s.done && s.events.length >= 3, 'role, content and finish chunks');
      type Chunk = { object: string; choices: { delta: { role?: string; content?: string }; finish_reason: string | null }[] };
      const ev = s.events as unknown as Chunk[];
      assert.ok(ev.every((e) => e.object === 'chat.completion.chunk'));
      assert.deepStrictEqual(ev[0]!.choices[0]!.delta, { role: 'assistant', content: '' });
      assert.strictEqual(ev.map((e) => e.choices[0]!.delta.content ?? '').join(''), choice.message.content);
      assert.strictEqual(ev[ev.length - 1]!.choices[0]!.finish_reason, choice.finish_reason);
      // Errors.
      const noTemplate = await postJson(`${url}/v1/chat/completions`, { messages });
      assert.strictEqual(noTemplate.status, 400);
      assert.match((noTemplate.json['error'] as { message: string }).message, /no chat template/);
      for (const bad of [{ messages: [] }, { messages: [{ role: 'user' }] }, { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }] }, { messages, max_completion_tokens: -2 }]) {
        const e = await postJson(`${curl}/v1/chat/completions`, bad);
        assert.strictEqual(e.status, 400, JSON.stringify(bad));
        const param = (e.json['error'] as { param: string }).param;
        assert.ok(param === 'messages' || param === 'max_completion_tokens', `${JSON.stringify(bad)}: ${param}`);
      }
    } finally {
      await chatServer.close();
    }
  });

  it('load: 12 clients x 3 requests, mixed lengths and sampling, 10% cancelled: 0 errors, each equal to alone, pages free', async () => {
    const before = (await request(`${url}/metrics`, 'GET')).body;
    const aborted0 = Number(/specdec_requests_total\{outcome="aborted"\} (\d+)/.exec(before)?.[1]);
    const rep = await runLoad({
      url,
      clients: 12,
      requestsPerClient: 3,
      vocab: target.config.vocabSize,
      promptLen: [1, 24],
      maxTokens: [1, 48],
      cancelFraction: 0.1,
      seed: 5,
      deadlineMs: 60000,
    });
    assert.deepStrictEqual(rep.errors, []);
    assert.strictEqual(rep.mismatches, 0);
    assert.ok(rep.cancelled > 0 && rep.completed + rep.cancelled === rep.requests, JSON.stringify(rep));
    // The server notices hang-ups at its next step; the pages come back when it has.
    const t = Date.now();
    while (server.engine.batchSize + server.engine.queued > 0 && Date.now() - t < 5000) await new Promise((r) => setTimeout(r, 10));
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'target pages');
    assert.strictEqual(draft.kvInfo().freePages, draft.kvInfo().totalPages, 'draft pages');
    const m = (await request(`${url}/metrics`, 'GET')).body;
    // A hang-up can come after the request finished: at most the cancelled ones were aborted.
    assert.ok(Number(/specdec_requests_total\{outcome="aborted"\} (\d+)/.exec(m)?.[1]) - aborted0 <= rep.cancelled);
    assert.match(m, /specdec_kv_pages_used 0\n/);
    assert.match(m, /specdec_step_seconds_bucket\{le="\+Inf"\} [1-9]/);
    assert.match(m, /specdec_queue_depth 0\n/);
    assert.match(m, /# TYPE specdec_speculation_off_total counter\nspecdec_speculation_off_total 0\n/);
  });

  it('the CLI serves until SIGTERM, which lets a running stream finish and exits 0', async () => {
    const cli = spawn(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'specdec.js'), 'serve', '--port', '0', '--prompt-lookup', '3'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    cli.stderr.setEncoding('utf8');
    const exited = new Promise<number | null>((r) => cli.on('exit', (code) => r(code)));
    const base = await new Promise<string>((resolve, reject) => {
      cli.stderr.on('data', (s: string) => {
        stderr += s;
        const m = /listening on (http:\/\/\S+)/.exec(stderr);
        if (m) resolve(m[1] as string);
      });
      cli.on('exit', () => reject(new Error(`serve exited: ${stderr}`)));
    });
    try {
      // SIGTERM once the stream has begun: it must still run to the end.
      let signalled = false;
      const s = await postStream(`${base}/v1/completions`, { prompt: 'once upon a time', max_tokens: 300, temperature: 0, stream: true }, {
        onEvent: () => {
          if (!signalled) signalled = cli.kill('SIGTERM');
        },
      });
      assert.ok(signalled);
      assert.ok(s.done, 'the stream ran to [DONE]');
      assert.ok(completionTokens(s).length > 0);
      assert.strictEqual(await exited, 0, stderr);
      assert.match(stderr, /SIGTERM: draining/);
    } finally {
      if (cli.exitCode === null) cli.kill('SIGKILL');
    }
  });
});
