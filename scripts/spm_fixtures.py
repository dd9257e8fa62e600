#!/usr/bin/env python3
"""Writes test/fixtures/spm/: SentencePiece models trained by the sentencepiece library itself, and its
own encodings of test strings, for lib/sentencepiece.ts (test/text.test.ts). Needs the sentencepiece
Python package (Debian: apt-get install python3-sentencepiece); the files are committed.

  /usr/bin/python3 scripts/spm_fixtures.py

- bpe/: tokenizer.model trained as Llama's was (BPE, byte fallback, identity normalization, no
  extra-whitespace removal, a dummy prefix, split digits) on this repository's README and CHANGELOG,
  with a tokenizer_config.json as Llama checkpoints ship it and no tokenizer.json; expected.json holds
  each test string's ids (sentencepiece's encode, BOS not included) and sentencepiece's decode of them.
- unigram.model: a Unigram model (T5's kind), which the converter refuses.
"""
import io
import json
import os

import sentencepiece as spm

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
out = os.path.join(root, 'test', 'fixtures', 'spm')
os.makedirs(os.path.join(out, 'bpe'), exist_ok=True)
lines = []
for f in ('README.md', 'CHANGELOG.md'):
    with open(os.path.join(root, f), encoding='utf-8') as fh:
        lines += [l.rstrip('\n') for l in fh if l.strip()]
corpus = '\n'.join(lines[:3000])


def train(**kw):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus.split('\n')), model_writer=model, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=2, **kw)
    return model.getvalue()


bpe = train(model_type='bpe', vocab_size=600, byte_fallback=True, normalization_rule_name='identity', remove_extra_whitespaces=False,
            add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995)
with open(os.path.join(out, 'bpe', 'tokenizer.model'), 'wb') as f:
    f.write(bpe)
with open(os.path.join(out, 'bpe', 'tokenizer_config.json'), 'w') as f:
    json.dump({'add_bos_token': True, 'add_eos_token': False, 'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>',
               'legacy': True, 'tokenizer_class': 'LlamaTokenizer'}, f, indent=2)
sp = spm.SentencePieceProcessor(model_proto=bpe)
tests = [
    'Speculative decoding for Node.js.',
    'once upon a time, there was a model',
    '  two leading spaces, three   inside and a trailing one ',
    'tabs\tand\nnewlines\n\nkept',
    'digits 1234567890 and 3.14159',
    'unicode: café naïve Ünïcödé, 日本語のテキスト, emoji 🚀🎉, ﬁ ligature',
    'CUDA kernels: tree_attention<<<grid, block>>>(q, kv);',
    'x',
    '',
    ' ',
    '▁already▁has▁the▁meta▁symbol',
]
# (Special tokens written in the text, 'a</s>b', are not compared: sentencepiece reads them as
# characters, transformers' LlamaTokenizer as the special tokens, and so does specdec.)
expected = [{'text': t, 'ids': sp.encode(t), 'decoded': sp.decode(sp.encode(t))} for t in tests]
with open(os.path.join(out, 'bpe', 'expected.json'), 'w') as f:
    json.dump({'vocab_size': sp.get_piece_size(), 'cases': expected}, f, ensure_ascii=False, indent=1)
with open(os.path.join(out, 'unigram.model'), 'wb') as f:
    f.write(train(model_type='unigram', vocab_size=300, normalization_rule_name='identity'))
print('wrote', out, 'with sentencepiece', spm.__version__)
