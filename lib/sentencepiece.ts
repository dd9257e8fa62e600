// A SentencePiece BPE model (tokenizer.model: Llama 1/2, Vicuna, Mistral v0.1 ship one, sometimes with
// no tokenizer.json) as the tokenizer.json that transformers' LlamaConverter would write: the same
// vocabulary (ids = piece order), merges ordered by the merged piece's score, byte fallback, "▁" for
// spaces with a dummy prefix, control and unknown pieces as special tokens, BOS/EOS from
// tokenizer_config.json. Only what Llama-family models use is taken: BPE with the identity normalizer;
// other models (Unigram, NFKC normalization, extra-whitespace removal) are E_UNSUPPORTED by name.
import { codedError } from './errors';

/** SentencePiece piece types (sentencepiece_model.proto). */
const NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4;

interface Piece {
  piece: string;
  score: number;
  type: number;
}

interface SpmModel {
  pieces: Piece[];
  modelType: number; // 1 unigram, 2 bpe, 3 word, 4 char
  byteFallback: boolean;
  normalizer: string;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
}

/** Minimal protobuf reading: the fields of ModelProto this conversion needs. */
class Proto {
  private p = 0;
  constructor(private readonly b: Uint8Array, private readonly file: string) {}
  get done(): boolean {
    return this.p >= this.b.length;
  }
  private bad(what: string): Error {
    return codedError('E_FORMAT', `${this.file}: not a SentencePiece model (${what} at byte ${this.p})`);
  }
  varint(): number {
    let v = 0, mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.p >= this.b.length) throw this.bad('a truncated varint');
      const c = this.b[this.p++] as number;
      v += (c & 0x7f) * mul;
      if (!(c & 0x80)) return v;
      mul *= 128;
    }
    throw this.bad('a varint longer than 10 bytes');
  }
  /** The next field: [number, wire type]. */
  key(): [number, number] {
    const k = this.varint();
    return [Math.floor(k / 8), k % 8];
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (this.p + n > this.b.length) throw this.bad(`a field of ${n} bytes past the end`);
    this.p += n;
    return this.b.subarray(this.p - n, this.p);
  }
  float(): number {
    if (this.p + 4 > this.b.length) throw this.bad('a truncated float');
    const v = new DataView(this.b.buffer, this.b.byteOffset + this.p, 4).getFloat32(0, true);
    this.p += 4;
    return v;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.p += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.p += 4;
    else throw this.bad(`wire type ${wire}`);
    if (this.p > this.b.length) throw this.bad('a field past the end');
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function readModel(data: Uint8Array, file: string): SpmModel {
  const m: SpmModel = { pieces: [], modelType: 1, byteFallback: false, normalizer: 'nmt_nfkc', addDummyPrefix: true, removeExtraWhitespaces: true };
  const top = new Proto(data, file);
  const text = (b: Uint8Array): string => {
    try {
      return utf8.decode(b);
    } catch {
      throw codedError('E_FORMAT', `${file}: not a SentencePiece model (a piece that is not UTF-8)`);
    }
  };
  while (!top.done) {
    const [field, wire] = top.key();
    if (field === 1 && wire === 2) {
      const p = new Proto(top.bytes(), file);
      const piece: Piece = { piece: '', score: 0, type: NORMAL };
      while (!p.done) {
        const [f, w] = p.key();
        if (f === 1 && w === 2) piece.piece = text(p.bytes());
        else if (f === 2 && w === 5) piece.score = p.float();
        else if (f === 3 && w === 0) piece.type = p.varint();
        else p.skip(w);
      }
      m.pieces.push(piece);
    } else if (field === 2 && wire === 2) {
      const t = new Proto(top.bytes(), file);
      while (!t.done) {
        const [f, w] = t.key();
        if (f === 3 && w === 0) m.modelType = t.varint();
        else if (f === 35 && w === 0) m.byteFallback = t.varint() !== 0;
        else t.skip(w);
      }
    } else if (field === 3 && wire === 2) {
      const n = new Proto(top.bytes(), file);
      while (!n.done) {
        const [f, w] = n.key();
        if (f === 1 && w === 2) m.normalizer = text(n.bytes());
        else if (f === 3 && w === 0) m.addDummyPrefix = n.varint() !== 0;
        else if (f === 4 && w === 0) m.removeExtraWhitespaces = n.varint() !== 0;
        else n.skip(w);
      }
    } else top.skip(wire);
  }
  if (m.pieces.length === 0) throw codedError('E_FORMAT', `${file}: not a SentencePiece model (no pieces)`);
  return m;
}

/** Merges as transformers' SentencePieceExtractor orders them: by the merged piece's score, then by the parts' ids. */
function mergesOf(pieces: readonly Piece[], vocab: ReadonlyMap<string, number>): [string, string][] {
  const merges: { l: string; r: string; score: number }[] = [];
  for (const { piece, score } of pieces) {
    const cps = Array.from(piece); // code points, as Python slices
    const local: { l: string; r: string; score: number }[] = [];
    for (let i = 1; i < cps.length; i++) {
      const l = cps.slice(0, i).join(''), r = cps.slice(i).join('');
      if (vocab.has(l) && vocab.has(r)) local.push({ l, r, score });
    }
    local.sort((a, b) => (vocab.get(a.l) as number) - (vocab.get(b.l) as number) || (vocab.get(a.r) as number) - (vocab.get(b.r) as number));
    merges.push(...local);
  }
  merges.sort((a, b) => b.score - a.score); // stable: ties keep the order above
  return merges.map((m) => [m.l, m.r]);
}

/**
 * The tokenizer.json of a SentencePiece BPE model file's bytes (`config`: tokenizer_config.json, for
 * add_bos_token / add_eos_token, defaults true / false as LlamaTokenizer's; legacy, default true;
 * add_prefix_space, default the model's add_dummy_prefix).
 */
export function sentencePieceTokenizerJson(data: Uint8Array, file: string, config: Record<string, unknown> = {}): Record<string, unknown> {
  const m = readModel(data, file);
  const unsupported =
    m.modelType !== 2 ? `a ${['', 'Unigram', 'BPE', 'word', 'char'][m.modelType] ?? `type ${m.modelType}`} model (only BPE models, as Llama's, are read)`
    : m.normalizer !== 'identity' ? `the '${m.normalizer}' normalization (only 'identity', as Llama's)`
    : m.removeExtraWhitespaces ? 'extra-whitespace removal' : undefined;
  if (unsupported) throw codedError('E_UNSUPPORTED', `${file}: ${unsupported}; a tokenizer.json for this model is needed (transformers writes one: AutoTokenizer.from_pretrained(dir).save_pretrained(dir))`);
  const vocab = new Map<string, number>();
  m.pieces.forEach((p, id) => {
    if (!vocab.has(p.piece)) vocab.set(p.piece, id);
  });
  const unk = m.pieces.findIndex((p) => p.type === UNKNOWN);
  const special = (id: number): Record<string, unknown> => ({ id, content: m.pieces[id]!.piece, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const added = m.pieces.flatMap((p, id) =>
    p.type === CONTROL || p.type === UNKNOWN ? [special(id)] : p.type === USER_DEFINED ? [{ ...special(id), special: false }] : []);
  const flag = (k: string, dflt: boolean): boolean => (typeof config[k] === 'boolean' ? (config[k] as boolean) : dflt);
  const idOf = (name: string): number | undefined => {
    const v = config[name];
    const s = typeof v === 'string' ? v : v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string' ? (v as { content: string }).content : undefined;
    return s !== undefined ? vocab.get(s) : undefined;
  };
  const bos = idOf('bos_token') ?? vocab.get('<s>'), eos = idOf('eos_token') ?? vocab.get('</s>');
  const single: unknown[] = [], specials: Record<string, unknown> = {};
  const addSpecial = (id: number | undefined): void => {
    if (id === undefined) return;
    const t = m.pieces[id]!.piece;
    single.push({ SpecialToken: { id: t, type_id: 0 } });
    specials[t] = { id: t, ids: [id], tokens: [t] };
  };
  if (flag('add_bos_token', true)) addSpecial(bos);
  single.push({ Sequence: { id: 'A', type_id: 0 } });
  if (flag('add_eos_token', false)) addSpecial(eos);
  const pair = [...single, ...single.map((x) => ((x as { Sequence?: unknown }).Sequence ? { Sequence: { id: 'B', type_id: 1 } } : x))];
  // LlamaConverter's two pipelines. Legacy (the default, as LlamaTokenizer's): a normalizer that
  // prepends "▁" to every piece of text, so text after a special token written in it ("a</s>b")
  // starts a word. `legacy: false`: no normalizer; a Metaspace pre-tokenizer prepends "▁" only at
  // the text's start ("first"), and not where the text already starts with a space.
  // add_prefix_space (tokenizer_config.json) overrides the model's own add_dummy_prefix.
  const prefix = flag('add_prefix_space', m.addDummyPrefix);
  const legacy = flag('legacy', true);
  const normalizers: unknown[] = [];
  if (prefix) normalizers.push({ type: 'Prepend', prepend: '▁' });
  normalizers.push({ type: 'Replace', pattern: { String: ' ' }, content: '▁' });
  const decoders: unknown[] = [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }];
  if (m.byteFallback) decoders.push({ type: 'ByteFallback' });
  decoders.push({ type: 'Fuse' });
  if (prefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: legacy ? { type: 'Sequence', normalizers } : null,
    pre_tokenizer: legacy ? null : { type: 'Metaspace', replacement: '▁', prepend_scheme: prefix ? 'first' : 'never', split: false },
    post_processor: { type: 'TemplateProcessing', single, pair, special_tokens: specials },
    decoder: { type: 'Sequence', decoders },
    model: {
      type: 'BPE', dropout: null, unk_token: unk >= 0 ? m.pieces[unk]!.piece : null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: m.byteFallback, ignore_merges: false,
      vocab: Object.fromEntries(vocab), merges: mergesOf(m.pieces, vocab),
    },
  };
}
