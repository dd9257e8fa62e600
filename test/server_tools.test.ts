// `specdec serve` with tools (OpenAI's tools / tool_choice / parallel_tool_calls): a named function
// and 'required' decoded under their grammars by the embedded model (with a draft model), streamed
// and not; 'auto' read by the hermes and llama3_json parsers from scripted replies (a stand-in engine
// that writes given text, split at random, so that the server's reading is tested, not the model's
// skill); tools and tool messages through the chat template; 400s naming the field. Reasoning
// replies (--reasoning-parser): the think block as reasoning_content, scripted and with a JSON
// answer decoded after the block.
import * as assert from 'assert';
import { postJson, postStream } from '../bench/serve_client';
import { EMBEDDED } from '../lib/cli/generate';
import { parseServeFlags } from '../lib/cli/serve';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { CompletionServer } from '../lib/server/server';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import type { TextTokenizer } from '../lib/tokenizer';
import type { ToolCallFormat, ToolDefinition } from '../lib/tool_calls';
import { valid, type Schema } from './fixtures/grammar_checks';
import { byteLevelJsonTokenizer, tokenizerFrom } from './fixtures/tokenizers';
import { WEATHER_TOOLS } from './fixtures/tools';
import { assertThrowsCode, rng, testSeed } from './helpers';

// A Hermes-style template (Qwen 2.5's shape): the tools in the system turn (their names only: the
// embedded model has 256 positions), calls in <tool_call> tags, results in <tool_response>.
const TEMPLATE =
  '{%- if tools %}<|system|>{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}' +
  '{%- for m in messages %}<|{{ m.role }}|>{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}' +
  '{% elif m.role == "tool" %}<tool_response>{{ m.content }}</tool_response>{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}';

type Call = { id?: string; index?: number; type?: string; function: { name?: string; arguments: string } };
type Message = { role: string; content: string | null; tool_calls?: Call[] };
type Choice = { index: number; message: Message; finish_reason: string };
type Delta = { content?: string; role?: string; tool_calls?: Call[] };
type ChunkChoice = { index: number; delta: Delta; finish_reason: string | null };

/** A streamed chat's choices rebuilt from their deltas: content joined, calls by index (arguments joined). */
function fromDeltas(events: Record<string, unknown>[]): Map<number, { content: string; calls: Call[]; finish: string | null }> {
  const out = new Map<number, { content: string; calls: Call[]; finish: string | null }>();
  for (const e of events) {
    for (const c of (e['choices'] as ChunkChoice[] | undefined) ?? []) {
      const o = out.get(c.index) ?? { content: '', calls: [], finish: null };
      out.set(c.index, o);
      if (c.delta.content) o.content += c.delta.content;
      for (const t of c.delta.tool_calls ?? []) {
        const at = t.index as number;
        const prev = o.calls[at];
        if (!prev) o.calls[at] = { ...(t.id ? { id: t.id } : {}), type: t.type as string, function: { name: t.function.name as string, arguments: t.function.arguments } };
        else prev.function.arguments += t.function.arguments;
      }
      if (c.finish_reason) o.finish = c.finish_reason;
    }
  }
  return out;
}

function paramsOf(name: string): Schema {
  return ((WEATHER_TOOLS.find((t) => t.function.name === name) as ToolDefinition).function.parameters as Schema | undefined) ?? { type: 'object', properties: {} };
}

/** An engine stand-in whose requests write the next of `replies` (its tokens in chunks of random size). */
function scriptedEngine(tokenizer: TextTokenizer, vocabSize: number, replies: string[], r: () => number): Engine {
  return {
    model: { config: { vocabSize, maxPositions: 4096 } },
    idle: () => Promise.resolve(),
    generate: () => {
      const text = replies.shift();
      if (text === undefined) throw new Error('no scripted reply left');
      const ids = Array.from(tokenizer.encode(text, { addSpecialTokens: false }));
      const chunks: number[][] = [];
      for (let at = 0; at < ids.length; ) {
        const n = 1 + Math.floor(r() * 5);
        chunks.push(ids.slice(at, at + n));
        at += n;
      }
      return {
        result: Promise.resolve({ tokens: Int32Array.from(ids), finishReason: 'stop', stats: { cachedPromptTokens: 0 } }),
        async *[Symbol.asyncIterator]() {
          for (const c of chunks) yield Int32Array.from(c);
        },
      };
    },
  } as unknown as Engine;
}

describe('specdec serve: tool calls', function () {
  this.timeout(120000);
  let target: LlamaModel;
  let draft: LlamaModel;
  let engine: Engine;
  let tokenizer: TextTokenizer;
  let server: CompletionServer;
  let url: string;
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
  // Quotes, closers and EOS (2) raised so that replies end.
  let logit_bias: Record<number, number>;
  before(async () => {
    target = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 16 });
    draft = await LlamaModel.load(EMBEDDED.draft, { device: 'cpu', kvPages: target.kvInfo().totalPages });
    engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 3 }), maxBatch: 8 });
    tokenizer = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize), { chat_template: TEMPLATE });
    logit_bias = { [3 + 0x22]: 3, [3 + 0x7d]: 4, [3 + 0x5d]: 4, [tokenizer.tokenToId('"}') as number]: 4, 2: 30 };
    server = new CompletionServer({ engine, modelName: 'tiny', tokenizer, chat: tokenizer });
    url = `http://127.0.0.1:${(await server.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
  });
  after(async () => {
    await server?.close();
    engine?.close();
    draft?.dispose();
    target?.dispose();
  });

  it("a named function: each choice one call of it (content null), arguments valid for its parameters where it stopped; streamed as argument pieces that join to the same", async () => {
    const body = { messages, tools: WEATHER_TOOLS, tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 48, temperature: 0.7, seed: 3, n: 4, logit_bias };
    const r = await postJson(url, body);
    assert.strictEqual(r.status, 200, JSON.stringify(r.json));
    const choices = r.json['choices'] as Choice[];
    let stopped = 0;
    for (const c of choices) {
      assert.strictEqual(c.message.content, null);
      assert.strictEqual(c.message.tool_calls?.length, 1);
      const call = c.message.tool_calls[0] as Call;
      assert.strictEqual(call.type, 'function');
      assert.strictEqual(call.function.name, 'get_weather');
      assert.match(call.id as string, /^call_[0-9a-f]{24}$/);
      // (OpenAI's finish reason for a named function: 'stop'.)
      assert.ok(c.finish_reason === 'stop' || c.finish_reason === 'length', c.finish_reason);
      if (c.finish_reason === 'stop') {
        assert.ok(valid(JSON.parse(call.function.arguments), paramsOf('get_weather')), call.function.arguments);
        stopped++;
      }
    }
    assert.ok(stopped >= 1, `${stopped} of ${choices.length} calls complete`);
    const s = await postStream(url, { ...body, stream: true });
    const streamed = fromDeltas(s.events);
    for (const c of choices) {
      const got = streamed.get(c.index);
      assert.ok(got);
      assert.strictEqual(got.content, '');
      assert.strictEqual(got.calls.length, 1);
      assert.strictEqual(got.calls[0]?.function.name, 'get_weather');
      assert.match(got.calls[0]?.id as string, /^call_/);
      assert.strictEqual(got.calls[0]?.function.arguments, (c.message.tool_calls as Call[])[0]?.function.arguments);
      assert.strictEqual(got.finish, c.finish_reason);
    }
  });

  it("'required': one or more calls of the tools (finish tool_calls), each valid; one with parallel_tool_calls false; streamed alike", async () => {
    for (const parallel of [true, false]) {
      const body = { messages, tools: WEATHER_TOOLS, tool_choice: 'required', parallel_tool_calls: parallel, max_tokens: 64, temperature: 0.8, seed: 5, n: 4, logit_bias };
      const r = await postJson(url, body);
      assert.strictEqual(r.status, 200, JSON.stringify(r.json));
      const choices = r.json['choices'] as Choice[];
      let done = 0;
      for (const c of choices) {
        if (c.finish_reason === 'length') {
          // Cut short: the calls begun (the last one's arguments as far as they got), or before the first, the text.
          assert.ok(c.message.tool_calls ? c.message.content === null : typeof c.message.content === 'string');
          continue;
        }
        assert.strictEqual(c.finish_reason, 'tool_calls');
        assert.strictEqual(c.message.content, null);
        const calls = c.message.tool_calls as Call[];
        assert.ok(calls.length >= 1);
        if (!parallel) assert.strictEqual(calls.length, 1);
        for (const k of calls) assert.ok(valid(JSON.parse(k.function.arguments), paramsOf(k.function.name as string)), `${k.function.name}(${k.function.arguments})`);
        done++;
      }
      assert.ok(done >= 1, `${done} of ${choices.length} replies ended as calls`);
      const events = (await postStream(url, { ...body, stream: true })).events;
      const streamed = fromDeltas(events);
      for (const c of choices) {
        const got = streamed.get(c.index);
        assert.ok(got);
        assert.strictEqual(got.finish, c.finish_reason);
        assert.strictEqual(got.content, c.message.content ?? '');
        assert.deepStrictEqual(got.calls.map((k) => [k.function.name, k.function.arguments]), (c.message.tool_calls ?? []).map((k) => [k.function.name, k.function.arguments]));
      }
    }
  });

  it('tools and a conversation with calls and results go through the chat template (/tokenize shows the same ids); tool_choice none writes text', async () => {
    const conversation = [
      ...messages,
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
    ];
    const tools = [WEATHER_TOOLS[2] as ToolDefinition];
    const want = '<|system|>ping;<|user|>What is the weather in Paris?<|assistant|><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|tool|><tool_response>{"temp": 21}</tool_response><|assistant|>';
    const t = await postJson(url.replace('/v1/chat/completions', '/tokenize'), { messages: conversation, tools });
    assert.strictEqual(t.status, 200, JSON.stringify(t.json));
    assert.deepStrictEqual(t.json['tokens'], Array.from(tokenizer.encode(want, { addSpecialTokens: false })));
    const r = await postJson(url, { messages: conversation, tools, tool_choice: 'none', max_tokens: 6, temperature: 0 });
    assert.strictEqual(r.status, 200, JSON.stringify(r.json));
    const c = (r.json['choices'] as Choice[])[0] as Choice;
    assert.strictEqual(typeof c.message.content, 'string');
    assert.strictEqual(c.message.tool_calls, undefined);
    assert.strictEqual(c.finish_reason, 'length');
    assert.strictEqual((r.json['usage'] as { prompt_tokens: number }).prompt_tokens, (t.json['tokens'] as number[]).length);
  });

  it('bad tool requests get 400 naming the field', async () => {
    const odd = [...WEATHER_TOOLS, { type: 'function', function: { name: 'roll', parameters: { type: 'object', properties: { n: { type: 'integer', minimum: 1 } } } } }];
    for (const [b, param, msg] of [
      [{ messages, tools: WEATHER_TOOLS }, 'tool_choice', /'auto' \(the default with tools\) needs a server started with --tool-call-parser/],
      [{ messages, tools: WEATHER_TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice', /no tool named 'nope'/],
      [{ messages, tool_choice: 'required' }, 'tool_choice', /'required' needs tools/],
      [{ messages, tools: [{ type: 'function', function: { name: 'has space' } }], tool_choice: 'none' }, 'tools', /tools\[0\]\.function\.name/],
      [{ messages, tools: odd, tool_choice: 'required' }, 'tools', /tools\[3\]\.function\.parameters \('roll'\): json schema #\/properties\/n: the keyword 'minimum' is not supported/],
      [{ messages, tools: WEATHER_TOOLS, tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format', /not with tool_choice 'required'/],
      [{ messages, tools: WEATHER_TOOLS, tool_choice: 'required', parallel_tool_calls: 'yes' }, 'parallel_tool_calls', /expected true or false/],
      [{ messages: [{ role: 'assistant', content: null, tool_calls: [{ function: { name: 'x', arguments: {} } }] }] }, 'messages', /messages\[0\]\.tool_calls: expected/],
      [{ messages: [{ role: 'tool', content: 'x', tool_call_id: 7 }] }, 'messages', /messages\[0\]\.tool_call_id: expected a string/],
      [{ messages: [{ role: 'user', content: null }] }, 'messages', /messages\[0\]\.content: expected a string/],
      [{ messages, functions: [{ name: 'ping' }] }, 'functions', /functions: deprecated by OpenAI and not supported; send tools/],
      [{ messages, function_call: 'auto' }, 'function_call', /function_call: deprecated .* send tool_choice/],
    ] as const) {
      const r = await postJson(url, b);
      assert.strictEqual(r.status, 400, `${JSON.stringify(b)}: ${JSON.stringify(r.json)}`);
      const err = r.json['error'] as { param: string; message: string };
      assert.strictEqual(err.param, param, err.message);
      assert.match(err.message, msg);
    }
    const c = await postJson(url.replace('/chat/completions', '/completions'), { prompt: 'x', tools: WEATHER_TOOLS });
    assert.strictEqual(c.status, 400);
    assert.match((c.json['error'] as { message: string }).message, /tools: chat completions only/);
    assert.throws(() => new CompletionServer({ engine, modelName: 'x', toolCallParser: 'pythonic' as ToolCallFormat }), /toolCallParser: expected one of hermes, llama3_json, mistral/);
    assertThrowsCode(() => parseServeFlags(['--tool-call-parser', 'xml']), 'E_ARG', /--tool-call-parser: expected one of hermes, llama3_json, mistral, got 'xml'/);
    assert.strictEqual(parseServeFlags(['--tool-call-parser', 'hermes']).toolCallParser, 'hermes');
  });

  it("'auto' read by the server's parser (hermes, llama3_json, mistral) from replies streamed in random pieces: content and calls, finish tool_calls; text without calls stays text", async () => {
    const r = rng(testSeed + 51);
    const cases: [ToolCallFormat, string, string | null, [string, unknown][]][] = [
      ['hermes', 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', 'Let me look.\n', [['get_weather', { city: 'Paris' }]]],
      ['hermes', '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "utc"}}\n</tool_call>', null, [['ping', {}], ['get_time', { zone: 'utc' }]]],
      ['hermes', 'It is sunny, <tool_call> is a tag.', 'It is sunny, <tool_call> is a tag.', []],
      ['llama3_json', '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}', null, [['get_weather', { city: 'Paris', unit: 'c' }]]],
      ['llama3_json', 'It is sunny.', 'It is sunny.', []],
    ];
    // 'required' through the same stand-in (which writes the text whatever the grammar): each call
    // streams as it begins, its arguments in pieces, arguments as written.
    {
      const text = '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}, {"name": "ping", "parameters": {}}]';
      const scripted = new CompletionServer({ engine: scriptedEngine(tokenizer, target.config.vocabSize, [text, text], r), modelName: 'tiny', tokenizer, chat: tokenizer });
      const surl = `http://127.0.0.1:${(await scripted.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
      try {
        const body = { messages, tools: WEATHER_TOOLS, tool_choice: 'required', max_tokens: 100 };
        const whole = (await postJson(surl, body)).json['choices'] as Choice[];
        assert.deepStrictEqual(whole[0]?.message.tool_calls?.map((k) => [k.function.name, k.function.arguments]), [['get_weather', '{"city": "Paris", "unit": "c"}'], ['ping', '{}']]);
        assert.strictEqual(whole[0]?.finish_reason, 'tool_calls');
        const events = (await postStream(surl, { ...body, stream: true })).events;
        const got = fromDeltas(events).get(0);
        assert.deepStrictEqual(got?.calls.map((k) => [k.function.name, k.function.arguments]), [['get_weather', '{"city": "Paris", "unit": "c"}'], ['ping', '{}']]);
        const pieces = events.filter((e) => ((e['choices'] as ChunkChoice[] | undefined) ?? []).some((x) => x.delta.tool_calls)).length;
        assert.ok(pieces >= 3, `the calls in ${pieces} events`);
      } finally {
        await scripted.close();
      }
    }
    // mistral: its [TOOL_CALLS] (and [ARGS]) are special tokens, which the text leaves out; the reply's first token tells.
    const mistralTok = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize, [{ content: '[TOOL_CALLS]', special: true }, { content: '[ARGS]', special: true }]), { chat_template: TEMPLATE });
    for (const [text, content, calls] of [
      ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', null, [['get_weather', { city: 'Paris' }]]],
      ['[TOOL_CALLS]ping[ARGS]{}[TOOL_CALLS]get_time[ARGS]{"h24": true}', null, [['ping', {}], ['get_time', { h24: true }]]],
      ['get_weather{"city": "Paris"}', 'get_weather{"city": "Paris"}', []],
    ] as [string, string | null, [string, unknown][]][]) {
      const scripted = new CompletionServer({ engine: scriptedEngine(mistralTok, target.config.vocabSize, [text, text], r), modelName: 'tiny', tokenizer: mistralTok, chat: mistralTok, toolCallParser: 'mistral' });
      const surl = `http://127.0.0.1:${(await scripted.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
      try {
        const c = ((await postJson(surl, { messages, tools: WEATHER_TOOLS })).json['choices'] as Choice[])[0] as Choice;
        assert.strictEqual(c.message.content, content, text);
        assert.deepStrictEqual((c.message.tool_calls ?? []).map((k) => [k.function.name, JSON.parse(k.function.arguments)]), calls, text);
        const got = fromDeltas((await postStream(surl, { messages, tools: WEATHER_TOOLS, stream: true })).events).get(0);
        assert.strictEqual(got?.content, content ?? '', text);
        assert.deepStrictEqual(got?.calls.map((k) => [k.function.name, JSON.parse(k.function.arguments)]), calls, text);
        assert.strictEqual(got?.finish, c.finish_reason);
      } finally {
        await scripted.close();
      }
    }
    // Without the token in the vocabulary the parser cannot tell: refused.
    const noMarker = new CompletionServer({ engine, modelName: 'tiny', tokenizer, chat: tokenizer, toolCallParser: 'mistral' });
    const nurl = `http://127.0.0.1:${(await noMarker.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
    try {
      const bad = await postJson(nurl, { messages, tools: WEATHER_TOOLS });
      assert.strictEqual(bad.status, 400);
      assert.match((bad.json['error'] as { message: string }).message, /--tool-call-parser mistral needs the vocabulary's \[TOOL_CALLS\] token/);
    } finally {
      await noMarker.close();
    }
    for (const [format, text, content, calls] of cases) {
      const replies = [text, text];
      const scripted = new CompletionServer({ engine: scriptedEngine(tokenizer, target.config.vocabSize, replies, r), modelName: 'tiny', tokenizer, chat: tokenizer, toolCallParser: format });
      const surl = `http://127.0.0.1:${(await scripted.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
      try {
        const what = `${format}: ${JSON.stringify(text)}`;
        const whole = await postJson(surl, { messages, tools: WEATHER_TOOLS, max_tokens: 100 });
        assert.strictEqual(whole.status, 200, JSON.stringify(whole.json));
        const c = (whole.json['choices'] as Choice[])[0] as Choice;
        assert.strictEqual(c.message.content, content, what);
        assert.deepStrictEqual((c.message.tool_calls ?? []).map((k) => [k.function.name, JSON.parse(k.function.arguments)]), calls, what);
        assert.strictEqual(c.finish_reason, calls.length > 0 ? 'tool_calls' : 'stop', what);
        const s = await postStream(surl, { messages, tools: WEATHER_TOOLS, max_tokens: 100, stream: true });
        const got = fromDeltas(s.events).get(0);
        assert.ok(got);
        assert.strictEqual(got.content, content ?? '', what);
        assert.deepStrictEqual(got.calls.map((k) => [k.function.name, JSON.parse(k.function.arguments)]), calls, what);
        for (const k of got.calls) assert.match(k.id as string, /^call_/);
        assert.strictEqual(got.finish, c.finish_reason, what);
        // No piece of a call went out as content.
        for (const e of s.events) for (const ch of (e['choices'] as ChunkChoice[] | undefined) ?? []) assert.ok(!ch.delta.content?.includes('{"name"') || calls.length === 0, what);
      } finally {
        await scripted.close();
      }
    }
  });
});

describe('specdec serve: reasoning replies (--reasoning-parser)', function () {
  this.timeout(120000);
  let target: LlamaModel;
  let engine: Engine;
  before(async () => {
    target = await LlamaModel.load(EMBEDDED.target, { device: 'cpu', maxSequences: 16 });
    engine = new Engine({ model: target, maxBatch: 8 });
  });
  after(() => {
    engine?.close();
    target?.dispose();
  });
  const messages = [{ role: 'user', content: 'Weather?' }];
  type RMessage = Message & { reasoning_content: string | null };
  /** A streamed choice's reasoning, content and calls joined. */
  const joined = (events: Record<string, unknown>[]): { reasoning: string; content: string; calls: Call[]; finish: string | null } => {
    let reasoning = '';
    for (const e of events) for (const c of (e['choices'] as { delta: { reasoning_content?: string } }[] | undefined) ?? []) reasoning += c.delta.reasoning_content ?? '';
    const o = fromDeltas(events).get(0) as { content: string; calls: Call[]; finish: string | null };
    return { reasoning, ...o };
  };

  it('scripted replies: the block as reasoning_content, the answer as content or tool calls; opened by the reply or by the template; streamed alike', async () => {
    const r = rng(testSeed + 71);
    for (const opens of [false, true]) {
      // The second template opens the block at the start of the assistant's turn (DeepSeek-R1's way).
      const template = `{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>${opens ? '<think>\n' : ''}`;
      const tokenizer = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize, ['<think>', '</think>']), { chat_template: template });
      const cases: [string, string | null, string | null, [string, unknown][]][] = opens
        ? [
            ['The user asks.\n</think>\n\nIt is sunny.', 'The user asks.\n', '\n\nIt is sunny.', []],
            ['Call it.</think><tool_call>{"name": "ping", "arguments": {}}</tool_call>', 'Call it.', null, [['ping', {}]]],
            ['Still thinking when cut', 'Still thinking when cut', null, []],
          ]
        : [
            ['<think>\nThe user asks.\n</think>\n\nIt is sunny.', '\nThe user asks.\n', '\n\nIt is sunny.', []],
            ['<think>I should call.</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', 'I should call.', null, [['get_weather', { city: 'Paris' }]]],
            ['No block: it is sunny.', null, 'No block: it is sunny.', []],
          ];
      for (const [text, reasoning, content, calls] of cases) {
        const scripted = new CompletionServer({ engine: scriptedEngine(tokenizer, target.config.vocabSize, [text, text], r), modelName: 'tiny', tokenizer, chat: tokenizer, toolCallParser: 'hermes', reasoningParser: 'qwen3' });
        const surl = `http://127.0.0.1:${(await scripted.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
        try {
          const what = `${JSON.stringify(text)} (template opens: ${String(opens)})`;
          const w = await postJson(surl, { messages, tools: WEATHER_TOOLS, max_tokens: 100 });
          assert.strictEqual(w.status, 200, JSON.stringify(w.json));
          const c = (w.json['choices'] as { message: RMessage; finish_reason: string }[])[0]!;
          assert.strictEqual(c.message.reasoning_content, reasoning, what);
          assert.strictEqual(c.message.content, content, what);
          assert.deepStrictEqual((c.message.tool_calls ?? []).map((k) => [k.function.name, JSON.parse(k.function.arguments)]), calls, what);
          assert.strictEqual(c.finish_reason, calls.length > 0 ? 'tool_calls' : 'stop', what);
          const s = joined((await postStream(surl, { messages, tools: WEATHER_TOOLS, max_tokens: 100, stream: true })).events);
          assert.deepStrictEqual([s.reasoning, s.content, s.calls.map((k) => [k.function.name, JSON.parse(k.function.arguments)]), s.finish], [reasoning ?? '', content ?? '', calls, c.finish_reason], what);
        } finally {
          await scripted.close();
        }
      }
    }
  });

  it('response_format after the block: the model thinks freely, then writes a JSON object (its </think> the close token, never pieces); streamed alike', async () => {
    const template = '{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|><think>\n';
    const tokenizer = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize, ['<think>', '</think>']), { chat_template: template });
    const server = new CompletionServer({ engine, modelName: 'tiny', tokenizer, chat: tokenizer, reasoningParser: 'deepseek_r1' });
    const surl = `http://127.0.0.1:${(await server.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
    try {
      const close = tokenizer.tokenToId('</think>') as number;
      // The close token raised so that thinking ends, EOS lowered so that it does not end it instead
      // (a complete object allows EOS alone, so objects still end), quotes and closers raised.
      const logit_bias = { [close]: 8, [3 + 0x22]: 3, [3 + 0x7d]: 4, [tokenizer.tokenToId('"}') as number]: 4, 2: -30 };
      const body = { messages, max_tokens: 80, temperature: 0.8, seed: 11, n: 4, logit_bias, response_format: { type: 'json_object' } };
      const w = await postJson(surl, body);
      assert.strictEqual(w.status, 200, JSON.stringify(w.json));
      let objects = 0;
      const choices = w.json['choices'] as { index: number; message: RMessage; finish_reason: string }[];
      for (const c of choices) {
        assert.strictEqual(typeof c.message.reasoning_content, 'string');
        assert.ok(!(c.message.reasoning_content as string).includes('</think>'), c.message.reasoning_content as string);
        if (c.finish_reason !== 'stop' || c.message.content === null) continue;
        const v: unknown = JSON.parse(c.message.content);
        assert.ok(typeof v === 'object' && v !== null && !Array.isArray(v), c.message.content);
        objects++;
      }
      assert.ok(objects >= 1, `${objects} of ${choices.length} answers ended as JSON objects`);
      const events = (await postStream(surl, { ...body, stream: true })).events;
      for (const c of choices) {
        const mine = events.filter((e) => ((e['choices'] as { index: number }[] | undefined) ?? []).some((x) => x.index === c.index)).map((e) => ({ ...e, choices: (e['choices'] as { index: number }[]).filter((x) => x.index === c.index).map((x) => ({ ...x, index: 0 })) }));
        const s = joined(mine);
        assert.deepStrictEqual([s.reasoning, s.content, s.finish], [c.message.reasoning_content, c.message.content ?? '', c.finish_reason]);
      }
      // A vocabulary without the markers as tokens cannot place the grammar after the block.
      const plainTok = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize), { chat_template: template });
      const other = new CompletionServer({ engine, modelName: 'tiny', tokenizer: plainTok, chat: plainTok, reasoningParser: 'qwen3' });
      const ourl = `http://127.0.0.1:${(await other.listen(0, '127.0.0.1')).port}/v1/chat/completions`;
      try {
        const bad = await postJson(ourl, { messages, response_format: { type: 'json_object' } });
        assert.strictEqual(bad.status, 400);
        assert.match((bad.json['error'] as { message: string }).message, /response_format: with --reasoning-parser the grammar applies after the think block, which needs <think> and <\/think> to be tokens/);
      } finally {
        await other.close();
      }
    } finally {
      await server.close();
    }
    assertThrowsCode(() => parseServeFlags(['--reasoning-parser', 'r1']), 'E_ARG', /--reasoning-parser: expected one of deepseek_r1, qwen3, got 'r1'/);
    assert.throws(() => new CompletionServer({ engine, modelName: 'x', reasoningParser: 'r1' as never }), /reasoningParser: expected one of/);
  });
});
