// Tool calls (lib/tool_calls.ts): the tools and tool_choice checked, the constrained grammars
// ('required': a tagged union of the tools; a named function: its parameters) walked at random and
// every completed reply read back as valid calls, the hermes / llama3_json parsers, the streaming
// reader against the whole-text one at random split points, the chat template's tool variables, and
// decoding with a tool grammar lossless for a speculator.
import * as assert from 'assert';
import { Engine } from '../lib/engine/engine';
import { TokenVocabulary, type GrammarState, type TokenGrammar } from '../lib/grammar';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { MedusaSpeculator } from '../lib/strategies/medusa';
import { checkToolChoice, checkTools, constrainedToolCalls, parseToolCalls, RequiredCallsReader, toolCallGrammar, ToolCallStream, type ToolCallFormat, type ToolDefinition } from '../lib/tool_calls';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { valid, walkMasks, type Schema } from './fixtures/grammar_checks';
import { byteLevelJsonTokenizer, byteLevelTokenizer, tokenizerFrom } from './fixtures/tokenizers';
import { WEATHER_TOOLS } from './fixtures/tools';
import { assertThrowsCode, rng, testSeed } from './helpers';

const BYTES = new TokenVocabulary(Array.from({ length: 256 }, (_, b) => Uint8Array.of(b)));


/** A random walk through a grammar's masks over the 256 bytes; the text if it completed. */
function walk(g: TokenGrammar, r: () => number): string | undefined {
  const w = walkMasks(g, r, 0.4, 400);
  return w.complete ? w.text : undefined;
}

function params(t: ToolDefinition): Schema {
  return (t.function.parameters as Schema | undefined) ?? { type: 'object', properties: {} };
}

describe('tool calls: tools, tool_choice and the constrained grammars', () => {
  it('tools and tool_choice are checked, each error naming its field', () => {
    assert.strictEqual(checkTools(WEATHER_TOOLS).length, 3);
    assert.strictEqual(checkToolChoice(undefined, WEATHER_TOOLS), 'auto');
    assert.strictEqual(checkToolChoice(undefined, []), 'none');
    assert.deepStrictEqual(checkToolChoice({ type: 'function', function: { name: 'ping' } }, WEATHER_TOOLS), { type: 'function', function: { name: 'ping' } });
    for (const [tools, msg] of [
      [{}, /tools: expected an array/],
      [[{ type: 'retrieval' }], /tools\[0\]: expected \{ type: 'function'/],
      [[{ type: 'function', function: { name: 'a b' } }], /tools\[0\]\.function\.name: expected 1-64 of/],
      [[{ type: 'function', function: { name: 'x'.repeat(65) } }], /tools\[0\]\.function\.name/],
      [[{ type: 'function', function: { name: 'a' } }, { type: 'function', function: { name: 'a' } }], /tools\[1\]\.function\.name: 'a' is given twice/],
      [[{ type: 'function', function: { name: 'a', parameters: [] } }], /tools\[0\]\.function\.parameters: expected a JSON Schema object/],
      [[{ type: 'function', function: { name: 'a', description: 3 } }], /tools\[0\]\.function\.description/],
    ] as const) assertThrowsCode(() => checkTools(tools), 'E_ARG', msg);
    for (const [choice, tools, msg] of [
      ['required', [], /'required' needs tools/],
      ['auto', [], /'auto' needs tools/],
      ['any', WEATHER_TOOLS, /tool_choice: expected 'none', 'auto', 'required' or/],
      [{ type: 'function', function: { name: 'nope' } }, WEATHER_TOOLS, /no tool named 'nope'/],
      [{ type: 'function' }, WEATHER_TOOLS, /tool_choice: expected/],
    ] as const) assertThrowsCode(() => checkToolChoice(choice, tools), 'E_ARG', msg);
    // Parameters outside the schema subset: the tool is named, and only where a grammar needs them.
    const odd: ToolDefinition[] = [...WEATHER_TOOLS, { type: 'function', function: { name: 'roll', parameters: { type: 'object', properties: { n: { type: 'integer', minimum: 1 } } } } }];
    assertThrowsCode(() => toolCallGrammar(BYTES, odd, 'required'), 'E_ARG', /tools\[3\]\.function\.parameters \('roll'\): json schema #\/properties\/n: the keyword 'minimum' is not supported/);
    assert.ok(toolCallGrammar(BYTES, odd, { function: { name: 'get_time' } }));
  });

  it("'required': random walks end in one or more calls of the tools, each call's arguments valid for its parameters; one at most without parallel calls", () => {
    const r = rng(testSeed + 31);
    for (const parallel of [true, false]) {
      const g = toolCallGrammar(BYTES, WEATHER_TOOLS, 'required', { parallel, maxWhitespace: 2 });
      let completed = 0;
      const names = new Set<string>();
      for (let k = 0; k < 300; k++) {
        const text = walk(g, r);
        if (text === undefined) continue;
        const calls = constrainedToolCalls(text, 'required');
        assert.ok(calls && calls.length >= 1, `${JSON.stringify(text)}: not calls`);
        if (!parallel) assert.strictEqual(calls.length, 1, text);
        for (const c of calls) {
          const t = WEATHER_TOOLS.find((x) => x.function.name === c.function.name);
          assert.ok(t, `${text}: a call of ${c.function.name}`);
          assert.ok(valid(JSON.parse(c.function.arguments), params(t)), `${text}: arguments not valid for ${c.function.name}`);
          assert.match(c.id, /^call_[0-9a-f]{24}$/);
          names.add(c.function.name);
        }
        completed++;
      }
      assert.ok(completed > 100, `${completed} walks completed`);
      assert.strictEqual(names.size, 3, `every tool called in some walk: ${[...names].join(', ')}`);
    }
    // Texts: a call's arguments are its own tool's; the name picks them.
    const g = toolCallGrammar(BYTES, WEATHER_TOOLS, 'required');
    const read = (text: string): string => {
      let s: GrammarState | undefined = g.start();
      for (const b of Buffer.from(text)) if (!(s = g.next(s, b))) return 'reject';
      return g.accepts(s) ? 'complete' : 'prefix';
    };
    for (const [t, want] of [
      ['[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}]', 'complete'],
      ['[{"name": "ping", "parameters": {}}, {"name": "get_time", "parameters": {"h24": true}}]', 'complete'],
      ['[{"name": "get_time", "parameters": {"city": "Paris"}}]', 'reject'],
      ['[{"name": "get_weather", "parameters": {}}]', 'reject'],
      ['[{"name": "pin", "parameters": {}}]', 'reject'],
      ['[{"parameters": {}, "name": "ping"}]', 'reject'],
      ['[]', 'reject'],
      ['[{"name": "get_', 'prefix'],
    ] as const) assert.strictEqual(read(t), want, t);
  });

  it('a named function: walks end in its arguments, valid for its parameters; constrainedToolCalls keeps the text as written', () => {
    const r = rng(testSeed + 32);
    const g = toolCallGrammar(BYTES, WEATHER_TOOLS, { function: { name: 'get_weather' } }, { maxWhitespace: 2 });
    let completed = 0;
    for (let k = 0; k < 200; k++) {
      const text = walk(g, r);
      if (text === undefined) continue;
      const calls = constrainedToolCalls(text, { function: { name: 'get_weather' } });
      assert.ok(calls && calls.length === 1 && calls[0]?.function.name === 'get_weather');
      assert.strictEqual(calls[0]?.function.arguments, text);
      assert.ok(valid(JSON.parse(text), params(WEATHER_TOOLS[0] as ToolDefinition)), text);
      completed++;
    }
    assert.ok(completed > 50, `${completed} walks completed`);
    assert.strictEqual(constrainedToolCalls('{"city": "Par', { function: { name: 'get_weather' } }), undefined);
    assert.strictEqual(constrainedToolCalls('[{"name": "ping", "parameters": {}', 'required'), undefined);
    // A function without parameters takes {} alone.
    const ping = toolCallGrammar(BYTES, WEATHER_TOOLS, { function: { name: 'ping' } });
    let s: GrammarState | undefined = ping.start();
    for (const b of Buffer.from('{}')) s = s && ping.next(s, b);
    assert.ok(s && ping.complete?.(s));
    assert.strictEqual(ping.next(ping.next(ping.start(), 0x7b) as GrammarState, 0x22), undefined);
  });
});

describe('tool calls: reading replies (hermes, llama3_json), whole and streamed', () => {
  const hermes: [string, string | null, [string, unknown][]][] = [
    ['Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', 'Let me check.\n', [['get_weather', { city: 'Paris' }]]],
    ['<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "</tool_call>"}}\n</tool_call>', null, [['ping', {}], ['get_time', { zone: '</tool_call>' }]]],
    ['\n\n<tool_call>{"name": "ping"}', null, [['ping', {}]]],  // the last call left open; no arguments: {}
    ['<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"utc\\"}"}</tool_call>', null, [['get_time', { zone: 'utc' }]]],  // arguments as JSON text
    ['<tool_call>{"name": "get_time", "parameters": {"h24": false}}</tool_call>', null, [['get_time', { h24: false }]]],
    ['It is sunny in Paris.', 'It is sunny in Paris.', []],
    ['Use <tool_call> tags like <tool_', 'Use <tool_call> tags like <tool_', []],  // not a call: content, whole
    ['<tool_call>{"name": "ping", "arguments": {}</tool_call>', '<tool_call>{"name": "ping", "arguments": {}</tool_call>', []],
    ['<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []],
    ['<tool_call>{"name": "ping", "arguments": [1]}</tool_call>', '<tool_call>{"name": "ping", "arguments": [1]}</tool_call>', []],
    ['<tool_call>{"name": "ping"}</tool_call><tool_call>oops</tool_call>', '<tool_call>{"name": "ping"}</tool_call><tool_call>oops</tool_call>', []],
    ['', '', []],
  ];
  const llama: [string, string | null, [string, unknown][]][] = [
    ['{"name": "get_weather", "parameters": {"city": "Paris"}}', null, [['get_weather', { city: 'Paris' }]]],
    ['<|python_tag|>{"name": "ping", "parameters": {}}; {"name": "get_time", "arguments": {"zone": "a;b}"}}', null, [['ping', {}], ['get_time', { zone: 'a;b}' }]]],
    ['  {"name": "ping", "parameters": {}} ', null, [['ping', {}]]],
    ['It is sunny.', 'It is sunny.', []],
    ['{"name": "ping", "parameters": {}} and more', '{"name": "ping", "parameters": {}} and more', []],
    ['{"name": "ping", "parameters": {}};', '{"name": "ping", "parameters": {}};', []],
    ['{"city": "Paris"}', '{"city": "Paris"}', []],
    ['{"name": "ping", "parameters": {', '{"name": "ping", "parameters": {', []],
  ];
  // (The server puts [TOOL_CALLS] before the text where the reply's first token was that special token.)
  const mistral: [string, string | null, [string, unknown][]][] = [
    ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', null, [['get_weather', { city: 'Paris' }]]],
    ['[TOOL_CALLS][{"name": "ping", "arguments": {}}, {"name": "get_time", "arguments": {"zone": "]"}}]', null, [['ping', {}], ['get_time', { zone: ']' }]]],
    ['[TOOL_CALLS]get_weather{"city": "Paris"}', null, [['get_weather', { city: 'Paris' }]]],  // v11: [ARGS] decoded away
    ['[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]ping[ARGS]{}', null, [['get_weather', { city: 'Paris' }], ['ping', {}]]],
    ['[TOOL_CALLS]get_time{}ping{}', null, [['get_time', {}], ['ping', {}]]],
    ['get_weather{"city": "Paris"}', 'get_weather{"city": "Paris"}', []],  // no marker: text
    ['[TOOL_CALLS] [{"name": "ping"', '[TOOL_CALLS] [{"name": "ping"', []],
    ['[TOOL_CALLS] []', '[TOOL_CALLS] []', []],
    ['[TOOL_CALLS]ping{} and more', '[TOOL_CALLS]ping{} and more', []],
    ['It is sunny.', 'It is sunny.', []],
    ['[TOOL', '[TOOL', []],
  ];
  const cases: [ToolCallFormat, typeof hermes][] = [['hermes', hermes], ['llama3_json', llama], ['mistral', mistral]];

  it('whole replies: content, calls (name, arguments as JSON text), and text that does not parse as calls kept whole as content', () => {
    for (const [format, list] of cases) {
      for (const [text, content, calls] of list) {
        const r = parseToolCalls(text, format);
        assert.strictEqual(r.content, content, `${format}: ${JSON.stringify(text)}`);
        assert.deepStrictEqual(r.calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]), calls, `${format}: ${JSON.stringify(text)}`);
        for (const c of r.calls) assert.strictEqual(c.type, 'function');
      }
    }
    assertThrowsCode(() => parseToolCalls('x', 'pythonic' as ToolCallFormat), 'E_ARG', /expected one of hermes, llama3_json, mistral/);
  });

  it('streamed at random split points: the content shown as it comes and at the end is the whole reply\'s, calls the same; nothing of a call is shown early', () => {
    const r = rng(testSeed + 33);
    for (let round = 0; round < 40; round++) {
      const all = cases.flatMap(([f, list]) => list.map(([t, c, k]) => [f, t, c, k] as [ToolCallFormat, string, string | null, [string, unknown][]]));
      for (const [format, text, content, calls] of all) {
        const s = new ToolCallStream(format);
        let shown = '';
        for (let at = 0; at < text.length; ) {
          const n = 1 + Math.floor(r() * 6);
          shown += s.push(text.slice(at, at + n));
          at += n;
          // What is shown is content whatever follows: never a piece of a call.
          assert.ok((content ?? '').startsWith(shown), `${format}: ${JSON.stringify(text)}: showed ${JSON.stringify(shown)}`);
        }
        const end = s.end();
        assert.strictEqual(shown + end.content, content ?? '', `${format}: ${JSON.stringify(text)}`);
        assert.deepStrictEqual(end.calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]), calls);
      }
    }
    // Content before a call is shown before the call is complete (as it comes).
    const s = new ToolCallStream('hermes');
    assert.strictEqual(s.push('Checking the weather'), 'Checking the weather');
    assert.strictEqual(s.push(' now <tool'), ' now ');
    assert.strictEqual(s.push('_call>{"name"'), '');
  });
});

describe("tool calls: reading a 'required' reply as it grows (RequiredCallsReader)", () => {
  it('random replies of the grammar at random split points: calls as their names are written, arguments as written; joined, the whole text\'s; cut short, the calls begun', () => {
    const r = rng(testSeed + 34);
    const g = toolCallGrammar(BYTES, WEATHER_TOOLS, 'required', { maxWhitespace: 3 });
    let complete = 0, cut = 0;
    for (let k = 0; k < 300; k++) {
      const w = walkMasks(g, r, 0.4, 400);
      const text = w.text;
      const whole = new RequiredCallsReader();
      whole.push(text);
      // Pieces: the events joined give the same calls, ids aside.
      const reader = new RequiredCallsReader();
      const got: { name: string; args: string }[] = [];
      for (let at = 0; at < text.length; ) {
        const n = 1 + Math.floor(r() * 7);
        for (const e of reader.push(text.slice(at, at + n))) {
          if (e.kind === 'call') {
            assert.strictEqual(e.index, got.length);
            assert.match(e.id, /^call_/);
            got.push({ name: e.name, args: '' });
          } else (got[e.index] as { args: string }).args += e.text;
        }
        at += n;
      }
      const want = whole.calls.map((c) => ({ name: c.function.name, args: c.function.arguments }));
      assert.deepStrictEqual(got, want, JSON.stringify(text));
      assert.strictEqual(reader.done, whole.done);
      if (!w.complete) continue;
      // A complete reply: its calls are JSON.parse's, each argument text as written.
      const v = JSON.parse(text) as { name: string; parameters: unknown }[];
      assert.ok(whole.done);
      assert.deepStrictEqual(want.map((c) => [c.name, JSON.parse(c.args)]), v.map((c) => [c.name, c.parameters]));
      assert.deepStrictEqual(constrainedToolCalls(text, 'required')?.map((c) => c.function.arguments), want.map((c) => c.args));
      complete++;
      // Cut short anywhere: the calls begun, each argument text a prefix of the whole's (all but the last whole).
      const part = text.slice(0, Math.floor(r() * text.length));
      const p = new RequiredCallsReader();
      p.push(part);
      const pc = p.calls;
      // (Done only where the cut took trailing whitespace alone.)
      assert.ok(pc.length <= want.length && (!p.done || text.slice(part.length).trim() === ''));
      pc.forEach((c, i) => {
        const full = want[i] as { name: string; args: string };
        assert.strictEqual(c.function.name, full.name);
        if (i < pc.length - 1) assert.strictEqual(c.function.arguments, full.args);
        else assert.ok(full.args.startsWith(c.function.arguments), `${JSON.stringify(part)}: ${c.function.arguments}`);
      });
      if (!p.done) assert.strictEqual(constrainedToolCalls(part, 'required'), undefined);
      cut++;
    }
    assert.ok(complete > 100, `${complete} complete replies, ${cut} cut`);
    const cutText = '[{"name": "get_weather", "parameters": {"city": "Pa';
    const c = new RequiredCallsReader();
    c.push(cutText);
    assert.deepStrictEqual(c.calls.map((x) => [x.function.name, x.function.arguments]), [['get_weather', '{"city": "Pa']]);
  });
});

describe('tool calls: chat templates and decoding', function () {
  this.timeout(300000);

  it("the template's tools and messages: tool definitions, an assistant's calls (arguments as objects), tool results", () => {
    const template =
      '{%- if tools %}<|system|>Tools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n{% endif %}' +
      '{%- for m in messages %}<|{{ m.role }}|>{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}' +
      '{% elif m.role == "tool" %}<tool_response id="{{ m.tool_call_id }}">{{ m.content }}</tool_response>{% else %}{{ m.content }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}';
    const tok = tokenizerFrom(byteLevelTokenizer(), { chat_template: template });
    const text = tok.applyChatTemplate(
      [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', content: '{"temp": 21}', tool_call_id: 'call_1' },
      ],
      { tools: [WEATHER_TOOLS[2] as ToolDefinition] },
    );
    assert.strictEqual(
      text,
      // (Chat templates render with trim_blocks, as transformers': a newline after a block tag is dropped.)
      '<|system|>Tools:{"type": "function", "function": {"name": "ping"}}<|user|>Weather in Paris?<|assistant|><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' +
        '<|tool|><tool_response id="call_1">{"temp": 21}</tool_response><|assistant|>',
    );
    // Without tools the template sees none.
    assert.ok(!tok.applyChatTemplate([{ role: 'user', content: 'hi' }]).includes('Tools'));
    assertThrowsCode(() => tok.applyChatTemplate([{ role: 'assistant', content: '', tool_calls: [{ function: { name: 'x' } }] } as never]), 'E_ARG', /messages\[0\]\.tool_calls: expected/);
    assertThrowsCode(() => tok.applyChatTemplate([{ role: 'tool', content: 'x', tool_call_id: 3 } as never]), 'E_ARG', /messages\[0\]\.tool_call_id: expected a string/);
  });

  describe('decoding (embedded family, a byte-level JSON vocabulary over its ids)', () => {
    let family: EmbeddedFamily;
    before(async () => {
      family = await loadEmbeddedFamily(16);
    });
    after(() => family.dispose());

    it("'required' and a named function: a draft model and Medusa give plain constrained decoding's tokens; outputs that stop are valid calls", async () => {
      const { target } = family;
      const tokenizer = tokenizerFrom(byteLevelJsonTokenizer(target.config.vocabSize));
      const vocabulary = TokenVocabulary.fromTokenizer(tokenizer, target.config.vocabSize);
      const r = rng(41);
      const prompts = Array.from({ length: 4 }, (_, i) => Int32Array.from({ length: 6 + i }, () => 3 + Math.floor(r() * 290)));
      // Quotes, closers and EOS raised so that replies end.
      const penalties = { logitBias: { [3 + 0x22]: 3, [3 + 0x7d]: 3, [3 + 0x5d]: 3, 2: 30 } };
      let stopped = 0;
      for (const choice of ['required', { function: { name: 'get_weather' } }] as const) {
        const grammar = toolCallGrammar(vocabulary, WEATHER_TOOLS, choice);
        const plain = await plainGenerate(target, prompts, { maxNewTokens: 48, grammar, penalties });
        for (const make of [() => new DraftModelSpeculator({ draft: family.draft, k: 4 }), () => new MedusaSpeculator({ heads: family.heads, choices: 'small_8' })]) {
          const engine = new Engine({ model: target, speculator: make() });
          try {
            const got = await Promise.all(prompts.map((p) => engine.submit(p, { maxNewTokens: 48, grammar, penalties })));
            got.forEach((g, i) => {
              assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain.tokens[i] as Int32Array), `request ${i}`);
              if (g.finishReason !== 'stop') return;
              const calls = constrainedToolCalls(tokenizer.decode(g.tokens, { skipSpecialTokens: true }), choice);
              assert.ok(calls && calls.length > 0);
              for (const c of calls) assert.ok(valid(JSON.parse(c.function.arguments), params(WEATHER_TOOLS.find((t) => t.function.name === c.function.name) as ToolDefinition)));
              stopped++;
            });
          } finally {
            engine.close();
          }
        }
      }
      assert.ok(stopped >= 2, `${stopped} replies ended as calls`);
    });
  });
});
