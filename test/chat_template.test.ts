// Chat templates (lib/tokenizer.ts): where they are read from, how they render (transformers'
// apply_chat_template with tokenize=False), how chats encode, and the errors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { TextTokenizer } from '../lib/tokenizer';
import { tokenizerJson } from './fixtures/checkpoints';
import { assertThrowsCode } from './helpers';

// ChatML, as Qwen2.5's template writes a plain conversation.
const CHATML =
  "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
// Gemma's: BOS first, 'assistant' written as 'model', other roles refused through raise_exception.
const GEMMA =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}" +
  "{% if role not in ['user', 'model'] %}{{ raise_exception('Conversation roles must be user or model') }}{% endif %}" +
  "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

function tokenizerDir(files: Record<string, unknown>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-chat-'));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson(40)));
  for (const [name, body] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), typeof body === 'string' ? body : JSON.stringify(body));
  return dir;
}

describe('chat templates', () => {
  const chat = [
    { role: 'user', content: 'hello there' },
    { role: 'assistant', content: '  hi!  ' },
    { role: 'user', content: 'the cat' },
  ];

  it('render as transformers writes them: ChatML with and without the generation prompt, Gemma with its BOS and role names', () => {
    const q = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { chat_template: CHATML } }))!;
    assert.ok(q.hasChatTemplate);
    const body = '<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n  hi!  <|im_end|>\n<|im_start|>user\nthe cat<|im_end|>\n';
    assert.strictEqual(q.applyChatTemplate(chat), body + '<|im_start|>assistant\n');
    assert.strictEqual(q.applyChatTemplate(chat, { addGenerationPrompt: false }), body);
    const g = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { bos_token: { content: '<bos>', special: true }, chat_template: GEMMA } }))!;
    assert.strictEqual(
      g.applyChatTemplate(chat),
      '<bos><start_of_turn>user\nhello there<end_of_turn>\n<start_of_turn>model\nhi!<end_of_turn>\n<start_of_turn>user\nthe cat<end_of_turn>\n<start_of_turn>model\n',
    );
  });

  it('are read from chat_template.jinja first, then chat_template.json, then tokenizer_config.json (a named "default" among several)', () => {
    const jinja = '{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}';
    const all = TextTokenizer.load(tokenizerDir({ 'chat_template.jinja': jinja, 'chat_template.json': { chat_template: CHATML }, 'tokenizer_config.json': { chat_template: GEMMA } }))!;
    assert.strictEqual(all.applyChatTemplate([{ role: 'user', content: 'x' }]), '[user]x');
    const json = TextTokenizer.load(tokenizerDir({ 'chat_template.json': { chat_template: jinja }, 'tokenizer_config.json': { chat_template: GEMMA } }))!;
    assert.strictEqual(json.applyChatTemplate([{ role: 'user', content: 'y' }]), '[user]y');
    const named = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { chat_template: [{ name: 'tool_use', template: 'no' }, { name: 'default', template: jinja }] } }))!;
    assert.strictEqual(named.applyChatTemplate([{ role: 'user', content: 'z' }]), '[user]z');
  });

  it('more template variables (Qwen3\'s enable_thinking) reach the template; they cannot replace messages or the generation prompt', () => {
    const qwen3 = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}{% endif %}";
    const t = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { chat_template: qwen3 } }))!;
    const m = [{ role: 'user', content: 'x' }];
    assert.strictEqual(t.applyChatTemplate(m), 'x<a>');
    assert.strictEqual(t.applyChatTemplate(m, { variables: { enable_thinking: false } }), 'x<a><think></think>');
    assert.strictEqual(t.applyChatTemplate(m, { variables: { enable_thinking: true } }), 'x<a>');
    assert.strictEqual(t.applyChatTemplate(m, { addGenerationPrompt: false, variables: { messages: [{ role: 'user', content: 'y' }], add_generation_prompt: true } }), 'x');
  });

  it('a chat encodes as its rendered text with no special tokens added on top (the template writes the BOS)', () => {
    const t = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { bos_token: '<s>', chat_template: '{{ bos_token }}{% for m in messages %}{{ m.content }} {% endfor %}' } }))!;
    const ids = t.encodeChat([{ role: 'user', content: 'the cat' }, { role: 'user', content: 'sat' }]);
    assert.deepStrictEqual(Array.from(ids), Array.from(t.encode('<s>the cat sat ', { addSpecialTokens: false })));
    assert.strictEqual(ids[0], 1, 'one BOS, from the template');
    assert.strictEqual(Array.from(ids).filter((x) => x === 1).length, 1);
  });

  it('text with a word a word-level vocabulary lacks, and no unk_token: E_FORMAT saying so (not a wrapped or undefined id)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-chat-'));
    const json = { version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null, model: { type: 'WordLevel', vocab: { a: 0, b: 1 } } };
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
    const t = TextTokenizer.load(dir)!;
    assert.deepStrictEqual(Array.from(t.encode('a b a')), [0, 1, 0]);
    assertThrowsCode(() => t.encode('a zz b'), 'E_FORMAT', /no token id \(not in the vocabulary, and no unk_token/);
  });

  it('errors: no template (E_UNSUPPORTED), malformed messages (E_ARG), the template\'s raise_exception (E_ARG, its message), a template that does not parse (E_FORMAT)', () => {
    const none = TextTokenizer.load(tokenizerDir({}))!;
    assert.strictEqual(none.hasChatTemplate, false);
    assertThrowsCode(() => none.applyChatTemplate(chat), 'E_UNSUPPORTED', /no chat template/);
    const g = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { bos_token: '<bos>', chat_template: GEMMA } }))!;
    assertThrowsCode(() => g.applyChatTemplate([]), 'E_ARG', /non-empty array/);
    assertThrowsCode(() => g.applyChatTemplate([{ role: 'user', content: 3 as unknown as string }]), 'E_ARG', /messages\[0\]: expected \{ role: string, content: string \}/);
    assertThrowsCode(() => g.applyChatTemplate([{ role: 'system', content: 'be brief' }]), 'E_ARG', /refused these messages \(.*Conversation roles must be user or model/);
    const broken = TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { chat_template: '{% for m in messages %}{{ m.content }' } }))!;
    assertThrowsCode(() => broken.applyChatTemplate(chat), 'E_FORMAT', /tokenizer_config\.json: the chat template does not parse/);
    assertThrowsCode(() => TextTokenizer.load(tokenizerDir({ 'tokenizer_config.json': { chat_template: [{ name: 'tool_use', template: 'x' }] } })), 'E_FORMAT', /none named 'default'/);
    assertThrowsCode(() => TextTokenizer.load(tokenizerDir({ 'chat_template.json': { template: 'x' } })), 'E_FORMAT', /chat_template\.json: expected a string 'chat_template'/);
  });
});
