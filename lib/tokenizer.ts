// Text <-> token ids through the model directory's tokenizer.json (HF tokenizers format), using the
// maintained @huggingface/tokenizers library, and chat templates (Jinja, as transformers'
// apply_chat_template renders them) through @huggingface/jinja. A model without tokenizer.json works
// with ids only.
import * as fs from 'fs';
import * as path from 'path';
import type { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { pathArg } from './errors';
import { codedError } from './models/config';
import { sentencePieceTokenizerJson } from './sentencepiece';
import type { ToolDefinition } from './tool_calls';

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw codedError('E_FORMAT', `${file}: ${(e as Error).message.split('\n')[0]}`);
  }
}

/**
 * One message of a chat (role 'system', 'user', 'assistant', 'tool', ... as the model's template
 * knows them). The tool fields keep OpenAI's spelling, which chat templates read: an assistant's
 * `tool_calls` (their arguments JSON text, given to the template as the object it encodes, as
 * transformers and vLLM do), a tool result's `tool_call_id`, and `name`.
 */
export interface ChatMessage {
  readonly role: string;
  /** The text ('' for an assistant's message that only calls tools: OpenAI's content null). */
  readonly content: string;
  readonly tool_calls?: readonly { readonly id?: string; readonly type?: 'function'; readonly function: { readonly name: string; readonly arguments: string } }[];
  readonly tool_call_id?: string;
  readonly name?: string;
}

export interface ChatTemplateOptions {
  /** End with the header of the assistant's turn, so that generation writes its reply. Default true. */
  readonly addGenerationPrompt?: boolean;
  /**
   * More variables for the template (transformers' apply_chat_template **kwargs), e.g. Qwen3's
   * `{ enable_thinking: false }`. They cannot replace messages or add_generation_prompt.
   */
  readonly variables?: Readonly<Record<string, unknown>>;
  /** The tools the model may call (the template's `tools`; OpenAI's definitions). Default none. */
  readonly tools?: readonly ToolDefinition[];
}

/** A message as templates read it: tool calls' arguments as objects (Qwen's and Llama's templates write them with tojson). */
function templateMessage(m: ChatMessage): Record<string, unknown> {
  const out: Record<string, unknown> = { role: m.role, content: m.content };
  if (m.tool_calls) {
    out['tool_calls'] = m.tool_calls.map((c) => {
      let args: unknown = c.function.arguments;
      try {
        args = JSON.parse(c.function.arguments);
      } catch {
        // (Not JSON: the text as sent.)
      }
      return { ...(c.id !== undefined ? { id: c.id } : {}), type: 'function', function: { name: c.function.name, arguments: args } };
    });
  }
  if (m.tool_call_id !== undefined) out['tool_call_id'] = m.tool_call_id;
  if (m.name !== undefined) out['name'] = m.name;
  return out;
}

/** A special token of tokenizer_config.json (a string, or an AddedToken object with its content). */
function specialToken(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/**
 * The chat template of a model directory, where transformers keeps it: chat_template.jinja (saved so
 * since transformers 4.5x), chat_template.json, or tokenizer_config.json's chat_template (a string,
 * or named templates of which 'default' is used).
 */
function readChatTemplate(dir: string, config: unknown): { template: string; file: string } | undefined {
  const jinja = path.join(dir, 'chat_template.jinja');
  if (fs.existsSync(jinja)) return { template: fs.readFileSync(jinja, 'utf8'), file: jinja };
  const json = path.join(dir, 'chat_template.json');
  if (fs.existsSync(json)) {
    const t = (readJson(json) as { chat_template?: unknown } | null)?.chat_template;
    if (typeof t !== 'string') throw codedError('E_FORMAT', `${json}: expected a string 'chat_template'`);
    return { template: t, file: json };
  }
  const t = (config as { chat_template?: unknown } | null)?.chat_template;
  const file = path.join(dir, 'tokenizer_config.json');
  if (typeof t === 'string') return { template: t, file };
  if (Array.isArray(t)) {
    const named = t.find((e) => (e as { name?: unknown })?.name === 'default') as { template?: unknown } | undefined;
    if (typeof named?.template === 'string') return { template: named.template, file };
    throw codedError('E_FORMAT', `${file}: chat_template lists named templates but none named 'default'`);
  }
  if (t !== undefined && t !== null) throw codedError('E_FORMAT', `${file}: chat_template must be a string or a list of named templates`);
  return undefined;
}

export class TextTokenizer {
  private constructor(
    private readonly tok: HfTokenizer,
    readonly file: string,
    private readonly config: Record<string, unknown> = {},
    private readonly chat?: { readonly template: string; readonly file: string },
    /**
     * Whether decode() cleans up tokenization spaces (transformers' clean_up_tokenization_spaces:
     * " ." -> ".", " ' " -> "'", " n't" -> "n't", ...). Streaming decodes without it and cleans up
     * only text that later tokens cannot change (lib/text.ts SettledText).
     */
    readonly cleansUpSpaces = false,
    /** What tokenBytes() reads of tokenizer.json: its vocabulary, added tokens and decoder (not the merges). */
    private readonly vocabJson: unknown = {},
  ) {}

  private parsed: import('@huggingface/jinja').Template | undefined;

  /** Whether the directory has a chat template (applyChatTemplate needs one). */
  get hasChatTemplate(): boolean {
    return this.chat !== undefined;
  }

  /**
   * The text of a chat as the model's template writes it (transformers' apply_chat_template with
   * tokenize=False): messages, add_generation_prompt and the special tokens of
   * tokenizer_config.json (bos_token, eos_token, ...) are the template's variables. E_UNSUPPORTED
   * without a template; E_ARG for malformed messages or a template's raise_exception.
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!this.chat) throw codedError('E_UNSUPPORTED', `${path.dirname(this.file)}: no chat template (no chat_template.jinja, chat_template.json or chat_template in tokenizer_config.json)`);
    if (!Array.isArray(messages) || messages.length === 0) throw codedError('E_ARG', 'messages: expected a non-empty array of { role, content }');
    messages.forEach((m, i) => {
      if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string') {
        throw codedError('E_ARG', `messages[${i}]: expected { role: string, content: string }`);
      }
      if (m.tool_calls !== undefined && (!Array.isArray(m.tool_calls) || !(m.tool_calls as readonly unknown[]).every((c) => typeof (c as { function?: { name?: unknown } } | null)?.function?.name === 'string' && typeof (c as { function: { arguments?: unknown } }).function.arguments === 'string'))) {
        throw codedError('E_ARG', `messages[${i}].tool_calls: expected [{ id, type: 'function', function: { name, arguments: JSON text } }]`);
      }
      for (const k of ['tool_call_id', 'name'] as const) if (m[k] !== undefined && typeof m[k] !== 'string') throw codedError('E_ARG', `messages[${i}].${k}: expected a string`);
    });
    // Parsed once per tokenizer (a server renders one per chat request).
    if (!this.parsed) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { Template } = require('@huggingface/jinja') as typeof import('@huggingface/jinja');
      try {
        this.parsed = new Template(this.chat.template);
      } catch (e) {
        throw codedError('E_FORMAT', `${this.chat.file}: the chat template does not parse (${(e as Error).message.split('\n')[0]})`);
      }
    }
    const template = this.parsed;
    const specials: Record<string, string> = {};
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const v = specialToken(this.config[k]);
      if (v !== undefined) specials[k] = v;
    }
    try {
      return template.render({
        ...specials,
        ...(options.variables ?? {}),
        messages: messages.map(templateMessage),
        ...(options.tools && options.tools.length > 0 ? { tools: options.tools } : {}),
        add_generation_prompt: options.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw codedError('E_ARG', `${this.chat.file}: the chat template refused these messages (${(e as Error).message.split('\n')[0]})`);
    }
  }

  /** Token ids of a chat (the template writes any BOS itself, so none is added on top). */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): Int32Array {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }

  /** The tokenizer of a model directory (tokenizer.json, else a SentencePiece BPE tokenizer.model), or undefined when it has neither. */
  static load(dir: string): TextTokenizer | undefined {
    pathArg(dir, 'TextTokenizer.load: dir');
    let file = path.join(dir, 'tokenizer.json');
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const config = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    let json: unknown;
    if (fs.existsSync(file)) json = readJson(file);
    else {
      // Older Llama-family checkpoints (Llama 1/2, Vicuna) may ship only the SentencePiece model.
      const spmFile = path.join(dir, 'tokenizer.model');
      if (!fs.existsSync(spmFile)) return undefined;
      let data: Buffer;
      try {
        data = fs.readFileSync(spmFile);
      } catch (e) {
        throw codedError('E_IO', `cannot read ${spmFile}: ${(e as Error).message}`);
      }
      json = sentencePieceTokenizerJson(data, spmFile, (config ?? {}) as Record<string, unknown>);
      file = spmFile;
    }
    // Loaded on demand: a model used with ids only never pays for it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { Tokenizer } = require('@huggingface/tokenizers') as typeof import('@huggingface/tokenizers');
    const chat = readChatTemplate(dir, config);
    // Decoding's clean-up of tokenization spaces (" ." -> ".", " n't" -> "n't"): as the config says;
    // unsaid, off for Llama's tokenizer classes (and a tokenizer.model, read as LlamaTokenizer), whose
    // defaults in transformers are off, else on (the tokenizers library's default).
    const cfg = (config ?? {}) as Record<string, unknown>;
    const llamaClass = file === path.join(dir, 'tokenizer.model') || cfg['tokenizer_class'] === 'LlamaTokenizer' || cfg['tokenizer_class'] === 'LlamaTokenizerFast';
    const cleanUp = typeof cfg['clean_up_tokenization_spaces'] === 'boolean' ? (cfg['clean_up_tokenization_spaces'] as boolean) : !llamaClass;
    try {
      const j = json as { model?: { vocab?: unknown }; added_tokens?: unknown; decoder?: unknown } | null;
      const vocabJson = { model: { vocab: j?.model?.vocab }, added_tokens: j?.added_tokens, decoder: j?.decoder };
      return new TextTokenizer(new Tokenizer(json as object, { ...cfg, clean_up_tokenization_spaces: cleanUp }), file, cfg, chat, cleanUp, vocabJson);
    } catch (e) {
      throw codedError('E_FORMAT', `${file}: unsupported or malformed tokenizer (${(e as Error).message.split('\n')[0]})`);
    }
  }

  /** Token ids of `text` (special tokens such as BOS added as the tokenizer's post-processor says). */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): Int32Array {
    return this.guard(() => {
      const ids = this.tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
      // Ids come from the file's vocabulary: a damaged one (2^31, -1, 1.5) must not wrap in an Int32Array.
      for (const id of ids) {
        // A word-level vocabulary without the word and without an unk_token leaves a hole (HF's
        // tokenizers refuse such a vocabulary outright: a format problem).
        if (id === undefined || id === null) throw codedError('E_FORMAT', `${this.file}: a piece of the text has no token id (not in the vocabulary, and no unk_token to stand for it)`);
        if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) throw codedError('E_FORMAT', `${this.file}: the vocabulary maps a token to ${String(id)}, not a token id`);
      }
      return Int32Array.from(ids);
    });
  }

  /** Text of `ids`; `cleanUpSpaces` (default: cleansUpSpaces) overrides the clean-up of tokenization spaces. */
  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean } = {}): string {
    // (The library refuses an empty list.)
    if (ids.length === 0) return '';
    return this.guard(() =>
      this.tok.decode(Array.from(ids), { skip_special_tokens: options.skipSpecialTokens ?? false, clean_up_tokenization_spaces: options.cleanUpSpaces ?? this.cleansUpSpaces }));
  }

  /** The library builds parts of a tokenizer lazily: a malformed tokenizer.json can fail on first use. */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (typeof (e as { code?: unknown }).code === 'string') throw e;
      throw codedError('E_FORMAT', `${this.file}: unsupported or malformed tokenizer (${(e as Error).message.split('\n')[0]})`);
    }
  }

  private bytesCache?: (Uint8Array | null)[];

  /**
   * Each id's bytes as it decodes inside text, for ids 0 .. vocabSize - 1 (null: a special token,
   * or no token of this tokenizer): what a grammar (lib/grammar.ts) matches. Byte-level decoders
   * (GPT-2, Llama 3, Qwen) and SentencePiece pieces (▁ for a space, <0xNN> byte fallback); other
   * decoders (WordPiece, word-level) join tokens with spaces, and are E_UNSUPPORTED.
   */
  tokenBytes(vocabSize: number): (Uint8Array | null)[] {
    this.bytesCache ??= vocabularyBytes(this.vocabJson, this.file);
    const c = this.bytesCache;
    return Array.from({ length: vocabSize }, (_, i) => c[i] ?? null);
  }

  /** Id of a token string (e.g. '</s>'), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}

/** The decoders of a tokenizer.json's decoder (a Sequence's, flattened), by type. */
function decoderTypes(d: unknown, out: string[] = []): string[] {
  const o = d as { type?: unknown; decoders?: unknown } | null;
  if (typeof o?.type === 'string') out.push(o.type);
  if (Array.isArray(o?.decoders)) for (const x of o.decoders) decoderTypes(x, out);
  return out;
}

/** GPT-2's byte -> printable character map (ByteLevel): entry b is byte b's character in vocabularies. */
export function byteLevelChars(): string[] {
  const bs: number[] = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = bs.slice();
  for (let b = 0, n = 0; b < 256; b++) if (!bs.includes(b)) (bs.push(b), cs.push(256 + n++));
  const out = new Array<string>(256);
  bs.forEach((b, i) => (out[b] = String.fromCharCode(cs[i] as number)));
  return out;
}

/** The inverse of byteLevelChars: character code -> byte. */
function byteLevelDecoding(): Map<number, number> {
  return new Map(byteLevelChars().map((c, b) => [c.charCodeAt(0), b]));
}

/** Each token id's bytes in text (TextTokenizer.tokenBytes), from a tokenizer.json. */
function vocabularyBytes(json: unknown, file: string): (Uint8Array | null)[] {
  const types = decoderTypes((json as { decoder?: unknown } | null)?.decoder);
  const byteLevel = types.includes('ByteLevel');
  const pieces = !byteLevel && (types.includes('ByteFallback') || types.includes('Metaspace') || types.includes('Replace'));
  if (!byteLevel && !pieces) {
    throw codedError('E_UNSUPPORTED', `${file}: constrained output needs a byte-level or SentencePiece tokenizer; this one's decoder (${types.join(', ') || 'none'}) joins tokens with spaces, so a token has no text of its own`);
  }
  const out: (Uint8Array | null)[] = [];
  const enc = new TextEncoder();
  const map = byteLevel ? byteLevelDecoding() : undefined;
  const specials = new Set<number>();
  const added = (json as { added_tokens?: unknown } | null)?.added_tokens;
  if (Array.isArray(added)) for (const t of added as { id?: unknown; special?: unknown }[]) if (typeof t.id === 'number' && t.special === true) specials.add(t.id);
  for (const [id, tok] of idToToken(json)) {
    if (!Number.isSafeInteger(id) || id < 0 || id > 0x7fffffff) continue;
    if (specials.has(id)) {
      out[id] = null;
      continue;
    }
    if (map) {
      const b = new Uint8Array(tok.length);
      let ok = true;
      for (let i = 0; i < tok.length; i++) {
        const v = map.get(tok.charCodeAt(i));
        if (v === undefined) ok = false;
        else b[i] = v;
      }
      // (An added token's content is plain text, not byte-level characters.)
      out[id] = ok ? b : enc.encode(tok);
    } else {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(tok);
      out[id] = m ? Uint8Array.of(parseInt(m[1] as string, 16)) : enc.encode(tok.replace(/\u2581/g, ' '));
    }
  }
  return out;
}

/** id -> token string of a tokenizer.json's vocabulary (BPE / WordPiece maps, Unigram lists) and added tokens. */
function idToToken(json: unknown): Map<number, string> {
  const out = new Map<number, string>();
  const o = json as { model?: { vocab?: unknown }; added_tokens?: unknown } | null;
  const vocab = o?.model?.vocab;
  if (Array.isArray(vocab)) {
    vocab.forEach((e, id) => {
      if (Array.isArray(e) && typeof e[0] === 'string') out.set(id, e[0]);
    });
  } else if (typeof vocab === 'object' && vocab !== null) {
    for (const [tok, id] of Object.entries(vocab as Record<string, unknown>)) if (typeof id === 'number') out.set(id, tok);
  }
  if (Array.isArray(o?.added_tokens)) {
    for (const t of o.added_tokens as { id?: unknown; content?: unknown }[]) if (typeof t.id === 'number' && typeof t.content === 'string') out.set(t.id, t.content);
  }
  return out;
}

/**
 * Where a draft's tokenizer disagrees with its target's on the draft's ids (ids below draftVocab that
 * both tokenizer.json files name, mapped to different tokens): a sentence naming how many and the
 * first, or undefined when they agree or either directory has no tokenizer (tokenizer.json or tokenizer.model). Speculation stays
 * lossless with any draft; one that speaks another vocabulary only wastes its drafts.
 */
export function tokenizerMismatch(targetDir: string, draftDir: string, draftVocab: number): string | undefined {
  // A directory's vocabulary: tokenizer.json's, else its SentencePiece model's (the tokenizer.json it reads as).
  const vocabOf = (dir: string): Map<number, string> | undefined => {
    const json = path.join(dir, 'tokenizer.json'), spm = path.join(dir, 'tokenizer.model');
    if (fs.existsSync(json)) return idToToken(readJson(json));
    if (!fs.existsSync(spm)) return undefined;
    try {
      return idToToken(sentencePieceTokenizerJson(fs.readFileSync(spm), spm));
    } catch {
      return undefined; // a model the tokenizer refuses is reported when text goes through it
    }
  };
  const t = vocabOf(targetDir), d = vocabOf(draftDir);
  if (!t || !d) return undefined;
  let differ = 0;
  let shared = 0;
  let first: string | undefined;
  for (let id = 0; id < draftVocab; id++) {
    const tok = d.get(id);
    const other = t.get(id);
    if (tok === undefined || other === undefined) continue;
    shared++;
    if (other !== tok) {
      differ++;
      first ??= `id ${id} is ${JSON.stringify(tok)} for the draft, ${JSON.stringify(other)} for the target`;
    }
  }
  return differ === 0 ? undefined : `the draft's tokenizer differs from the target's at ${differ} of ${shared} ids (${first})`;
}
