#!/usr/bin/env python3
"""Writes test/fixtures/torch/: PyTorch checkpoints made by torch.save itself, for the reader of
lib/torch_checkpoint.ts (test/torch_checkpoint.test.ts). Needs torch (Debian: apt-get install
python3-torch; any version with the zip format, 1.6+); the files are committed, so tests need no torch.

  /usr/bin/python3 scripts/torch_fixtures.py

- mixed.pt + mixed.json: every dtype the reader takes, views (transposed, sliced with a storage
  offset, two tensors sharing one storage), a Parameter, a 0-d and an empty tensor; the JSON holds
  each tensor's dtype, shape and values as torch prints them (tolist()), the reference.
- mixed-zip64.pt, mixed-deflated.pt: mixed.pt's members rewritten with zip64 records (sizes, offsets,
  the end record) and deflated.
- module.pt: an nn.Module's state_dict() (an OrderedDict with _metadata).
- legacy.pt: the pre-1.6 format (_use_new_zipfile_serialization=False), which the reader refuses.
- object.pt: a dict holding a function beside a tensor (a pickle that calls a global it must not).
- eagle-bin/ and eagle-safetensors/: one EAGLE-1 head (f16; hidden 32, vocab 96, 4/2 heads,
  intermediate 48, q/k/v biases: test/fixtures/checkpoints.ts's llama-gqa-f32 sizes) as
  pytorch_model.bin and as model.safetensors, with the same config.json.
- medusa-pt/ and medusa-safetensors/: two Medusa heads of one ResBlock (bf16, same sizes) as
  medusa_lm_head.pt and as medusa_lm_head.safetensors.
- llama-bin/ and llama-safetensors/: a tiny Llama checkpoint (bf16, hidden 32, 2 layers, the vocabulary
  of test/fixtures/spm/bpe: 600) as two
  pytorch_model-*.bin shards with pytorch_model.bin.index.json, and as model.safetensors
  (`specdec convert`'s input and its expected output).
(legacy.pt differs on every run: the old format records storage keys by object id.)
"""
import json
import os
import struct
from collections import OrderedDict

import torch

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'torch')
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(20261207)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype)


def reference(t):
    v = t.tolist() if t.dtype != torch.int64 else [str(x) for x in t.flatten().tolist()]
    if t.dtype in (torch.float16, torch.bfloat16):
        v = t.float().tolist()  # exact: both widen to f32 exactly
    return {'dtype': str(t.dtype).replace('torch.', ''), 'shape': list(t.shape), 'values': v}


def write_safetensors(path, tensors):
    names = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16'}
    header, blobs, at = {}, [], 0
    for k, t in tensors.items():
        b = t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.contiguous().numpy().tobytes()
        header[k] = {'dtype': names[t.dtype], 'shape': list(t.shape), 'data_offsets': [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


# mixed.pt
base = randn(4, 5)
shared = randn(6)
mixed = OrderedDict()
mixed['f32'] = randn(3, 4)
mixed['f16'] = randn(5, dtype=torch.float16)
mixed['bf16'] = randn(2, 3, dtype=torch.bfloat16)
mixed['f64'] = randn(2, 2, dtype=torch.float64)
mixed['i64'] = torch.tensor([0, -1, 2 ** 40, 7], dtype=torch.int64)
mixed['i32'] = torch.tensor([[1, -2], [3, 2 ** 31 - 1]], dtype=torch.int32)
mixed['bool'] = torch.tensor([True, False, True])
mixed['u8'] = torch.tensor([0, 255, 17], dtype=torch.uint8)
mixed['transposed'] = randn(3, 4).t()
mixed['sliced'] = base[1:, 2:]
mixed['shared_all'] = shared
mixed['shared_tail'] = shared[2:]
mixed['param'] = torch.nn.Parameter(randn(2, 2))
mixed['scalar'] = torch.tensor(3.5)
mixed['empty'] = torch.zeros(0, 3)
mixed['expanded_row'] = randn(1, 3).expand(2, 3)  # stride 0 along dim 0
torch.save(mixed, os.path.join(out, 'mixed.pt'))
with open(os.path.join(out, 'mixed.json'), 'w') as f:
    json.dump({k: reference(v.detach()) for k, v in mixed.items()}, f)

# The same archive rewritten by Python's zipfile: with zip64 records (torch writes them past 4 GiB, as
# in a 7B model's 10 GB shards: zipfile's limits are lowered so that a small file has them all: zip64
# sizes and offsets in the directory, a zip64 end record), and with deflated members.
import zipfile
with zipfile.ZipFile(os.path.join(out, 'mixed.pt')) as src:
    members = [(info.filename, src.read(info.filename)) for info in src.infolist()]
for name, method, limit, count in (('mixed-zip64.pt', zipfile.ZIP_STORED, 32, 4), ('mixed-deflated.pt', zipfile.ZIP_DEFLATED, None, None)):
    saved = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    if limit is not None:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limit, count
    try:
        with zipfile.ZipFile(os.path.join(out, name), 'w', compression=method) as dst:
            for member, data in members:
                zi = zipfile.ZipInfo(member, date_time=(2026, 12, 7, 0, 0, 0))
                zi.compress_type = method
                with dst.open(zi, 'w', force_zip64=limit is not None) as f:
                    f.write(data)
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = saved

# module.pt
torch.manual_seed(7)
module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
torch.save(module.state_dict(), os.path.join(out, 'module.pt'))
with open(os.path.join(out, 'module.json'), 'w') as f:
    json.dump({k: reference(v) for k, v in module.state_dict().items()}, f)

# legacy.pt, object.pt
torch.save({'w': randn(2)}, os.path.join(out, 'legacy.pt'), _use_new_zipfile_serialization=False)
torch.save({'w': randn(2), 'f': os.getcwd}, os.path.join(out, 'object.pt'))

# EAGLE-1 head
H, V, NH, KVH, I, D = 32, 96, 4, 2, 48, 8
eagle = OrderedDict()
eagle['fc.weight'] = randn(H, 2 * H) * (3 / (2 * H)) ** 0.5
eagle['fc.bias'] = randn(H) * 0.1
p = 'layers.0.'
eagle[p + 'self_attn.q_proj.weight'] = randn(NH * D, H) * (3 / H) ** 0.5
eagle[p + 'self_attn.k_proj.weight'] = randn(KVH * D, H) * (3 / H) ** 0.5
eagle[p + 'self_attn.v_proj.weight'] = randn(KVH * D, H) * (3 / H) ** 0.5
eagle[p + 'self_attn.q_proj.bias'] = randn(NH * D) * 0.3
eagle[p + 'self_attn.k_proj.bias'] = randn(KVH * D) * 0.3
eagle[p + 'self_attn.v_proj.bias'] = randn(KVH * D) * 0.3
eagle[p + 'self_attn.o_proj.weight'] = randn(H, NH * D) * (3 / (NH * D)) ** 0.5
eagle[p + 'post_attention_layernorm.weight'] = 0.5 + torch.rand(H, generator=g)
eagle[p + 'mlp.gate_proj.weight'] = randn(I, H) * (3 / H) ** 0.5
eagle[p + 'mlp.up_proj.weight'] = randn(I, H) * (3 / H) ** 0.5
eagle[p + 'mlp.down_proj.weight'] = randn(H, I) * (3 / I) ** 0.5
eagle = OrderedDict((k, v.half()) for k, v in eagle.items())
eagle_config = {
    'architectures': ['LlamaForCausalLM'], 'hidden_size': H, 'intermediate_size': I, 'num_hidden_layers': 1,
    'num_attention_heads': NH, 'num_key_value_heads': KVH, 'max_position_embeddings': 2048, 'rms_norm_eps': 1e-5,
    'rope_theta': 10000, 'vocab_size': V, 'bias': True, 'qkv_bias': True, 'torch_dtype': 'float16',
}
for d in ('eagle-bin', 'eagle-safetensors'):
    os.makedirs(os.path.join(out, d), exist_ok=True)
    with open(os.path.join(out, d, 'config.json'), 'w') as f:
        json.dump(eagle_config, f, indent=2)
torch.save(eagle, os.path.join(out, 'eagle-bin', 'pytorch_model.bin'))
write_safetensors(os.path.join(out, 'eagle-safetensors', 'model.safetensors'), eagle)

# Medusa heads
medusa = OrderedDict()
for h in range(2):
    medusa[f'{h}.0.linear.weight'] = (randn(H, H) / H ** 0.5).bfloat16()
    medusa[f'{h}.0.linear.bias'] = (randn(H) / H ** 0.5).bfloat16()
    medusa[f'{h}.1.weight'] = randn(V, H).bfloat16()
medusa_config = {'medusa_num_heads': 2, 'medusa_num_layers': 1, 'base_model_name_or_path': 'toy'}
for d in ('medusa-pt', 'medusa-safetensors'):
    os.makedirs(os.path.join(out, d), exist_ok=True)
    with open(os.path.join(out, d, 'config.json'), 'w') as f:
        json.dump(medusa_config, f)
torch.save(medusa, os.path.join(out, 'medusa-pt', 'medusa_lm_head.pt'))
write_safetensors(os.path.join(out, 'medusa-safetensors', 'medusa_lm_head.safetensors'), medusa)
print('wrote', out, 'with torch', torch.__version__)

# A tiny Llama checkpoint (bf16) with PyTorch weights in two shards and an index, as older
# transformers saved them (e.g. Vicuna), and its safetensors twin; `specdec convert` turns the
# first into the second.
# Its vocabulary is test/fixtures/spm/bpe's (600): with that tokenizer.model it is a whole Vicuna-style
# directory (PyTorch weights, a SentencePiece tokenizer, no tokenizer.json).
L, I2, KVH2, V2 = 2, 64, 2, 600
llama = OrderedDict()
llama['model.embed_tokens.weight'] = randn(V2, H)
for i in range(L):
    p = f'model.layers.{i}.'
    llama[p + 'input_layernorm.weight'] = 0.5 + torch.rand(H, generator=g)
    llama[p + 'self_attn.q_proj.weight'] = randn(NH * D, H) / H ** 0.5
    llama[p + 'self_attn.k_proj.weight'] = randn(KVH2 * D, H) / H ** 0.5
    llama[p + 'self_attn.v_proj.weight'] = randn(KVH2 * D, H) / H ** 0.5
    llama[p + 'self_attn.o_proj.weight'] = randn(H, NH * D) / (NH * D) ** 0.5
    llama[p + 'post_attention_layernorm.weight'] = 0.5 + torch.rand(H, generator=g)
    llama[p + 'mlp.gate_proj.weight'] = randn(I2, H) / H ** 0.5
    llama[p + 'mlp.up_proj.weight'] = randn(I2, H) / H ** 0.5
    llama[p + 'mlp.down_proj.weight'] = randn(H, I2) / I2 ** 0.5
llama['model.norm.weight'] = 0.5 + torch.rand(H, generator=g)
llama['lm_head.weight'] = randn(V2, H)
llama = OrderedDict((k, v.bfloat16()) for k, v in llama.items())
# transformers < 4.31 saved each layer's rotary buffer too (Vicuna's shards hold them); the loader
# computes its own and ignores them.
for i in range(L):
    llama[f'model.layers.{i}.self_attn.rotary_emb.inv_freq'] = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
llama_config = {
    'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_size': H, 'intermediate_size': I2,
    'num_hidden_layers': L, 'num_attention_heads': NH, 'num_key_value_heads': KVH2, 'max_position_embeddings': 128,
    'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'vocab_size': V2, 'tie_word_embeddings': False,
    'torch_dtype': 'bfloat16', 'bos_token_id': 1, 'eos_token_id': 2,
}
for d in ('llama-bin', 'llama-safetensors'):
    os.makedirs(os.path.join(out, d), exist_ok=True)
    with open(os.path.join(out, d, 'config.json'), 'w') as f:
        json.dump(llama_config, f, indent=2)
names = list(llama.keys())
half = len(names) // 2
shards = {'pytorch_model-00001-of-00002.bin': names[:half], 'pytorch_model-00002-of-00002.bin': names[half:]}
for file, keys in shards.items():
    torch.save(OrderedDict((k, llama[k]) for k in keys), os.path.join(out, 'llama-bin', file))
with open(os.path.join(out, 'llama-bin', 'pytorch_model.bin.index.json'), 'w') as f:
    json.dump({'metadata': {'total_size': sum(v.numel() * v.element_size() for v in llama.values())},
               'weight_map': {k: file for file, keys in shards.items() for k in keys}}, f, indent=2)
write_safetensors(os.path.join(out, 'llama-safetensors', 'model.safetensors'), llama)
print('wrote the llama checkpoints')
