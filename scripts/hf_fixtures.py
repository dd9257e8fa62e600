#!/usr/bin/env python3
"""Reference data from Hugging Face transformers for bench/hf_agreement.ts (runs on the GPU machine).

  python3 scripts/hf_fixtures.py agreement OUT   small random LlamaForCausalLM / Qwen2ForCausalLM /
        Qwen3ForCausalLM / Phi3ForCausalLM / SmolLM3ForCausalLM checkpoints (GQA, Qwen2 qkv biases,
        Qwen3 q/k norms with head_dim apart from hidden / heads, Phi-3's fused qkv_proj and gate_up_proj,
        LongRoPE, a partial rotation, SmolLM3's layers without RoPE, tied and untied embeddings, llama3
        rope scaling, f32 and bf16; the newer architectures only where this transformers has them), each saved by transformers itself into OUT/<name>/ with a reference.json: prompts
        (token ids), transformers' logits of the prompt's last positions, its greedy continuation
        (generate(do_sample=False)) and the top-2 logit margin at each generated step, and the same
        computed in float64 on the CPU from the saved weights (the ground truth both sides are
        measured against).
  python3 scripts/hf_fixtures.py throughput OUT  a random ~1.1B Llama (bf16, TinyLlama's shape) and a
        small random draft saved to OUT/target and OUT/draft, and tokens/s of transformers' plain
        generate(), assisted generation with the draft, and with the target as its own assistant
        (acceptance 1: the upper bound), written to OUT/hf_throughput.json with the prompts and
        lengths that specdec then uses on the same checkpoints.

Everything is seeded; nothing is downloaded. Fails with a one-line reason (exit 1) when torch,
transformers or (for cuda work) a GPU is missing.
"""
import argparse
import copy
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time

FORMAT = "specdec-hf-reference/1"
THROUGHPUT_FORMAT = "specdec-hf-throughput/1"


def fail(msg):
    print(f"hf_fixtures: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
except Exception as e:  # ImportError, or a broken install raising something else
    fail(f"needs torch and transformers ({type(e).__name__}: {e})")

# The reference is transformers' exact f32 arithmetic, not TF32 (torch's default is already off;
# set explicitly so a changed default or environment cannot make it 1e-3-accurate).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CLASSES = {"LlamaForCausalLM": (LlamaConfig, LlamaForCausalLM), "Qwen2ForCausalLM": (Qwen2Config, Qwen2ForCausalLM)}
try:  # transformers >= 4.51
    from transformers import Qwen3Config, Qwen3ForCausalLM
    CLASSES["Qwen3ForCausalLM"] = (Qwen3Config, Qwen3ForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.40
    from transformers import Phi3Config, Phi3ForCausalLM
    CLASSES["Phi3ForCausalLM"] = (Phi3Config, Phi3ForCausalLM)
except ImportError:
    pass
try:
    from transformers import MistralConfig, MistralForCausalLM
    CLASSES["MistralForCausalLM"] = (MistralConfig, MistralForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.42
    from transformers import Gemma2Config, Gemma2ForCausalLM
    CLASSES["Gemma2ForCausalLM"] = (Gemma2Config, Gemma2ForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.50
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    CLASSES["Gemma3ForCausalLM"] = (Gemma3TextConfig, Gemma3ForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.47
    from transformers import Olmo2Config, Olmo2ForCausalLM
    CLASSES["Olmo2ForCausalLM"] = (Olmo2Config, Olmo2ForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.54
    from transformers import Exaone4Config, Exaone4ForCausalLM
    CLASSES["Exaone4ForCausalLM"] = (Exaone4Config, Exaone4ForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.45
    from transformers import GraniteConfig, GraniteForCausalLM
    CLASSES["GraniteForCausalLM"] = (GraniteConfig, GraniteForCausalLM)
except ImportError:
    pass
try:  # transformers >= 4.53
    from transformers import SmolLM3Config, SmolLM3ForCausalLM
    CLASSES["SmolLM3ForCausalLM"] = (SmolLM3Config, SmolLM3ForCausalLM)
except ImportError:
    pass

# Small enough to run in seconds on either side, shaped like real models: head_dim 64, GQA 4:1 / 3:1.
LLAMA = dict(vocab_size=1024, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5)
QWEN2 = dict(vocab_size=1024, hidden_size=384, intermediate_size=1024, num_hidden_layers=3,
             num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
# Qwen3-0.6B's proportions: head_dim 64 with 8 heads over a hidden size of 384 (q is wider than the
# hidden state), q_norm / k_norm per head, tied embeddings.
QWEN3 = dict(vocab_size=1024, hidden_size=384, intermediate_size=1024, num_hidden_layers=3,
             num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
             rms_norm_eps=1e-6)
# Phi-3-mini's layout at a small size: fused projections, 8 heads of 64 with GQA 4:1 (Phi-4's kind).
PHI3 = dict(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5)
# Gemma 3's layer at a small size: head_dim 256 (as gemma-3-270m / 1b), one KV head, every third layer
# global (rope 1e6 with linear x8, as the 4B+ configs), the others sliding over 24 with the local base.
GEMMA3 = dict(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
              num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=4096,
              rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=24, sliding_window_pattern=3,
              rope_local_base_freq=10000.0)
# Gemma 2's layer: even layers sliding over 24, soft-capping at its defaults (attention 50, logits 30).
GEMMA2 = dict(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=4096,
              rms_norm_eps=1e-6, query_pre_attn_scalar=128, sliding_window=24, attn_logit_softcapping=50.0,
              final_logit_softcapping=30.0)
# OLMo 2's layer: no pre-norms, post-norms on both blocks, q/k norms over the whole projections (GQA 3:1).
OLMO2 = dict(vocab_size=1024, hidden_size=384, intermediate_size=1024, num_hidden_layers=3,
             num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
# EXAONE 4's layer: OLMo 2's post-norms with per-head q/k norms, every fourth layer global and without
# RoPE, the others sliding over 24.
EXAONE4 = dict(vocab_size=1024, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
               num_attention_heads=6, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
               rms_norm_eps=1e-5, sliding_window=24, sliding_window_pattern=4)
# Granite 3's multipliers (granite-3.x-2b's values), each far from 1.
GRANITE = dict(vocab_size=1024, hidden_size=512, intermediate_size=1376, num_hidden_layers=3,
               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
               embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=8.0)
PHI3_LONGROPE = dict(rope_type="longrope", short_factor=[1.0 + 0.05 * i for i in range(32)],
                     long_factor=[1.0 + 0.75 * i for i in range(32)])
PHI4MINI_LONGROPE = dict(rope_type="longrope", short_factor=[1.0 + 0.1 * i for i in range(24)],
                         long_factor=[1.0 + 1.5 * i for i in range(24)])
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=256)

FIXTURES = [
    # The architectures not yet checked against transformers on a GPU first: if the time box cuts
    # the list, the fixtures a GPU run has already passed (2026-12-04) are the ones left out.
    # Sliding windows shorter than the longer prompts + 64 new tokens: Mistral v0.1's (every layer),
    # Phi-3-mini-4k's (every layer), Qwen2's use_sliding_window from max_window_layers on.
    # Optional: Gemma 3's rope settings moved to per-layer-type rope_parameters in transformers 5.
    # YaRN as Qwen's long-context setting writes it (factor x original = max_position_embeddings).
    dict(name="qwen2-yarn-f32", arch="Qwen2ForCausalLM", dtype="float32", shape=QWEN2,
         theta=1000000.0, rope=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=1024),
         tied=False, seed=30, optional=True),
    dict(name="exaone4-hybrid-bf16", arch="Exaone4ForCausalLM", dtype="bfloat16", shape=EXAONE4,
         theta=1000000.0, rope=None, tied=False, seed=29, optional=True),
    dict(name="granite-multipliers-bf16", arch="GraniteForCausalLM", dtype="bfloat16", shape=GRANITE,
         theta=10000.0, rope=None, tied=True, seed=28, optional=True),
    dict(name="olmo2-postnorm-bf16", arch="Olmo2ForCausalLM", dtype="bfloat16", shape=OLMO2,
         theta=500000.0, rope=None, tied=False, seed=27, optional=True),
    dict(name="gemma2-softcap-f32", arch="Gemma2ForCausalLM", dtype="float32", shape=GEMMA2,
         theta=10000.0, rope=None, tied=True, seed=26, optional=True),
    dict(name="gemma3-bf16", arch="Gemma3ForCausalLM", dtype="bfloat16", shape=GEMMA3,
         theta=1000000.0, rope=dict(rope_type="linear", factor=8.0), tied=True, seed=25, optional=True),
    dict(name="mistral-swa-bf16", arch="MistralForCausalLM", dtype="bfloat16", shape=dict(LLAMA, sliding_window=24),
         theta=10000.0, rope=None, tied=False, seed=22),
    dict(name="phi3-swa-f32", arch="Phi3ForCausalLM", dtype="float32", shape=dict(PHI3, sliding_window=31),
         theta=10000.0, rope=None, tied=False, seed=23),
    dict(name="qwen2-swa-bias-f32", arch="Qwen2ForCausalLM", dtype="float32",
         shape=dict(QWEN2, use_sliding_window=True, sliding_window=20, max_window_layers=1),
         theta=1000000.0, rope=None, tied=True, seed=24),
    dict(name="qwen3-qknorm-tied-bf16", arch="Qwen3ForCausalLM", dtype="bfloat16", shape=QWEN3,
         theta=1000000.0, rope=None, tied=True, seed=16),
    # Phi-4-mini's: 3/4 of each head rotates (48 of 64), LongRoPE over those 24 pairs, tied embeddings.
    dict(name="phi4mini-partial-longrope-f32", arch="Phi3ForCausalLM", dtype="float32",
         shape=dict(PHI3, max_position_embeddings=16384, original_max_position_embeddings=4096, partial_rotary_factor=0.75),
         theta=10000.0, rope=PHI4MINI_LONGROPE, tied=True, seed=20, optional=True),
    dict(name="phi3-fused-bf16", arch="Phi3ForCausalLM", dtype="bfloat16", shape=PHI3,
         theta=250000.0, rope=None, tied=False, seed=18),
    # SmolLM3's NoPE: every fourth layer without RoPE (its config class's default), 4 layers.
    dict(name="smollm3-nope-tied-bf16", arch="SmolLM3ForCausalLM", dtype="bfloat16", shape=dict(LLAMA, num_hidden_layers=4),
         theta=5000000.0, rope=None, tied=True, seed=21),
    dict(name="qwen3-qknorm-tied-f32", arch="Qwen3ForCausalLM", dtype="float32", shape=QWEN3,
         theta=1000000.0, rope=None, tied=True, seed=15),
    # Phi-3.5-mini's LongRoPE at a small size (prompts stay within original_max_position_embeddings,
    # where transformers uses the short factors); optional: rope conventions moved between versions.
    dict(name="phi3-longrope-f32", arch="Phi3ForCausalLM", dtype="float32",
         shape=dict(PHI3, max_position_embeddings=16384, original_max_position_embeddings=4096),
         theta=10000.0, rope=PHI3_LONGROPE, tied=False, seed=19, optional=True),
    dict(name="phi3-fused-f32", arch="Phi3ForCausalLM", dtype="float32", shape=PHI3,
         theta=250000.0, rope=None, tied=False, seed=17),
    dict(name="llama-gqa-llama3rope-f32", arch="LlamaForCausalLM", dtype="float32", shape=LLAMA,
         theta=500000.0, rope=LLAMA3_ROPE, tied=False, seed=11),
    dict(name="llama-gqa-bf16", arch="LlamaForCausalLM", dtype="bfloat16", shape=LLAMA,
         theta=10000.0, rope=None, tied=False, seed=12),
    dict(name="qwen2-bias-tied-f32", arch="Qwen2ForCausalLM", dtype="float32", shape=QWEN2,
         theta=1000000.0, rope=None, tied=True, seed=13),
    dict(name="qwen2-bias-tied-bf16", arch="Qwen2ForCausalLM", dtype="bfloat16", shape=QWEN2,
         theta=1000000.0, rope=None, tied=True, seed=14),
]
PROMPT_LENGTHS = [5, 16, 33, 60]
NEW_TOKENS = 64
LOGIT_POSITIONS = 8

# The side-by-side: TinyLlama-1.1B's shape (random weights) and a small draft with its vocabulary.
TARGET_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5)
DRAFT = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5)


def versions():
    v = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
             torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
        v["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    v["tf32"] = dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32,
                     float32_matmul_precision=torch.get_float32_matmul_precision())
    return v


def make_config(arch, shape, theta, rope, tied, optional=False):
    """A config of `arch` whose effective rope settings are checked (either rope convention). With
    `optional`, None (and a printed reason) where this transformers takes neither, instead of failing."""
    config_cls = CLASSES[arch][0]
    kw = dict(shape, tie_word_embeddings=tied, hidden_act="silu", eos_token_id=None, bos_token_id=None,
              pad_token_id=None, use_cache=True)
    if arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        del kw["hidden_act"]
        kw.update(hidden_activation="gelu_pytorch_tanh", attention_bias=False)
        if arch == "Gemma3ForCausalLM":
            kw.update(attn_logit_softcapping=None, final_logit_softcapping=None)
    if arch == "LlamaForCausalLM":
        kw.update(attention_bias=False, mlp_bias=False)
    elif arch == "Qwen3ForCausalLM":
        kw.update(attention_bias=False, use_sliding_window=False)
    elif arch == "SmolLM3ForCausalLM":
        kw.update(attention_bias=False, mlp_bias=False, use_sliding_window=False)
    elif arch == "Phi3ForCausalLM":
        kw.update(resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
        kw.setdefault("sliding_window", None)
        if "original_max_position_embeddings" in shape:
            kw["original_max_position_embeddings"] = shape["original_max_position_embeddings"]
    elif arch == "MistralForCausalLM":
        kw.setdefault("sliding_window", None)
    elif arch == "Olmo2ForCausalLM":
        kw.update(attention_bias=False)
    elif arch == "GraniteForCausalLM":
        kw.update(attention_bias=False, mlp_bias=False)
    elif arch == "Exaone4ForCausalLM":
        pass  # its window settings come with the shape
    elif arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        pass
    else:
        kw.setdefault("use_sliding_window", False)
    want_type = (rope or {}).get("rope_type", "default")
    # transformers >= 5 takes rope_parameters (theta inside); older versions rope_theta + rope_scaling.
    styles = [dict(rope_parameters=dict(rope or {"rope_type": "default"}, rope_theta=theta)),
              dict(rope_theta=theta, rope_scaling=rope)]
    if "rope_parameters" not in inspect.signature(config_cls.__init__).parameters:
        styles.reverse()
    seen = []
    for style in styles:
        try:
            cfg = config_cls(**kw, **style)
        except (TypeError, ValueError) as e:
            seen.append(f"{sorted(style)}: {e}")
            continue
        got = effective_config(cfg)
        if got["rope_theta"] == theta and got["rope_type"] == want_type:
            return cfg
        seen.append(f"{sorted(style)}: config has theta {got['rope_theta']}, type {got['rope_type']}")
    msg = f"{arch}: transformers {transformers.__version__} did not take rope theta {theta}, type {want_type} ({'; '.join(seen)})"
    if optional:
        print(f"skipped: {msg}", flush=True)
        return None
    fail(msg)


def effective_config(cfg):
    """The settings transformers actually computes with (what specdec must read from config.json)."""
    rp = getattr(cfg, "rope_parameters", None) or {}
    try:
        rs = getattr(cfg, "rope_scaling", None) or {}
    except Exception:  # some versions turn the old attribute into an error
        rs = {}
    rope = dict(rs, **rp) if isinstance(rp, dict) else dict(rs)
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    heads = cfg.num_attention_heads
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=heads,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=None if theta is None else float(theta),
        rope_type=rope.get("rope_type", rope.get("type", "default")),
        rope=rope, tie_word_embeddings=bool(cfg.tie_word_embeddings),
        max_position_embeddings=cfg.max_position_embeddings,
        partial_rotary_factor=float(rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None) or 1.0)),
    )


def layer_windows(model):
    """Each decoder layer's sliding window as its attention module holds it (0: full attention), where
    every layer's module has the attribute (transformers >= 4.53 sets it per layer); else nothing."""
    attns = [layer.self_attn for layer in model.model.layers]
    if not all(hasattr(a, "sliding_window") for a in attns):
        return {}
    # EXAONE 4's attention keeps config.sliding_window in every layer and is_sliding says where it applies.
    return dict(attention_windows=[int(a.sliding_window or 0) if getattr(a, "is_sliding", True) else 0 for a in attns])


@torch.no_grad()
def randomize(model, seed, head_scale=3.0):
    """Weights that make every part of the forward matter: unit-variance (untied) embeddings, linear weights
    of std 1/sqrt(fan_in) (activations stay O(1) through the layers; HF's 0.02 init would leave the
    layers almost without effect), norm weights in [0.5, 1.5), biases in [-0.5, 0.5), and a sharper
    LM head (std 3/sqrt(hidden)) so greedy choices are rarely near ties. A tied embedding is that head:
    at std 1 a token's own embedding would dominate the final state and greedy decoding would only
    repeat the last token."""
    tied = bool(model.config.tie_word_embeddings)
    gens = {}
    for name, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
        dev = p.device
        if dev not in gens:
            gens[dev] = torch.Generator(device=dev).manual_seed(seed)
        g = gens[dev]
        shape = p.shape
        if name.endswith("norm.weight"):
            v = 0.5 + torch.rand(shape, generator=g, device=dev)
        elif name.endswith(".bias"):
            v = torch.rand(shape, generator=g, device=dev) - 0.5
        elif "embed_tokens" in name and not tied:
            v = torch.randn(shape, generator=g, device=dev)
        elif "embed_tokens" in name or name == "lm_head.weight":
            v = torch.randn(shape, generator=g, device=dev) * (head_scale / math.sqrt(shape[1]))
        elif p.dim() == 2:
            v = torch.randn(shape, generator=g, device=dev) / math.sqrt(shape[1])
        else:
            fail(f"randomize: unexpected parameter {name} {tuple(shape)}")
        p.copy_(v.to(p.dtype))


def save(model, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    except TypeError:  # a version where safetensors is the only format and the flag is gone
        model.save_pretrained(out_dir)
    if not any(f.endswith(".safetensors") for f in os.listdir(out_dir)):
        fail(f"{out_dir}: save_pretrained wrote no .safetensors file ({sorted(os.listdir(out_dir))})")


def load(model_cls, out_dir, dtype, device, attn="eager"):
    try:
        m = model_cls.from_pretrained(out_dir, dtype=dtype, attn_implementation=attn)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        m = model_cls.from_pretrained(out_dir, torch_dtype=dtype, attn_implementation=attn)
    m = m.to(device).eval()
    if m.dtype != dtype:
        fail(f"{out_dir}: loaded as {m.dtype}, wanted {dtype}")
    m.generation_config.eos_token_id = None
    return m


def greedy(model, ids, new_tokens):
    """generate(do_sample=False): the new tokens and, per step, the top-2 margin of the raw logits."""
    dev = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                         do_sample=False, num_beams=1, output_logits=True, output_scores=True,
                         return_dict_in_generate=True, pad_token_id=0)
    tokens = out.sequences[0, len(ids):].tolist()
    if len(tokens) != new_tokens:
        fail(f"generate returned {len(tokens)} new tokens, wanted {new_tokens} (an EOS stop?)")
    steps = getattr(out, "logits", None) or out.scores  # raw logits where the version returns them
    margins = []
    for s, row in enumerate(steps):
        top = torch.topk(row[0].double(), 2)
        if int(top.indices[0]) != tokens[s] and float(top.values[0] - top.values[1]) > 0:
            fail(f"generate chose {tokens[s]} at step {s} but the argmax of its logits is {int(top.indices[0])}")
        margins.append(float(top.values[0] - top.values[1]))
    return tokens, margins


@torch.no_grad()
def prompt_logits(model, ids, positions):
    dev = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    logits = model(input_ids=x).logits[0]
    return [row.double().tolist() for row in logits[-positions:]]


def agreement(out_root):
    if not torch.cuda.is_available():
        fail("agreement: no CUDA device visible to torch (transformers' reference runs on the GPU)")
    os.makedirs(out_root, exist_ok=True)
    env = versions()
    print(json.dumps(env), flush=True)
    for fx in FIXTURES:
        t0 = time.time()
        if fx["arch"] not in CLASSES:  # an architecture newer than this transformers
            print(f"{fx['name']}: skipped: transformers {transformers.__version__} has no {fx['arch']}", flush=True)
            continue
        config_cls, model_cls = CLASSES[fx["arch"]]
        dtype = DTYPES[fx["dtype"]]
        cfg = make_config(fx["arch"], fx["shape"], fx["theta"], fx["rope"], fx["tied"], optional=fx.get("optional", False))
        if cfg is None:
            continue
        torch.manual_seed(fx["seed"])
        model = model_cls(cfg)
        randomize(model, fx["seed"])
        model = model.to(dtype)
        out_dir = os.path.join(out_root, fx["name"])
        save(model, out_dir)
        del model
        # Both references come from the files specdec reads, not from the in-memory model.
        hf = load(model_cls, out_dir, dtype, "cuda")
        f64 = load(model_cls, out_dir, torch.float64, "cpu")
        g = torch.Generator().manual_seed(1000 + fx["seed"])
        prompts = []
        for n in PROMPT_LENGTHS:
            ids = torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist()
            p = min(LOGIT_POSITIONS, n)
            hf_tokens, hf_margins = greedy(hf, ids, NEW_TOKENS)
            ref_tokens, ref_margins = greedy(f64, ids, NEW_TOKENS)
            prompts.append(dict(
                ids=ids,
                hf=dict(tokens=hf_tokens, margins=hf_margins, logits=prompt_logits(hf, ids, p)),
                f64=dict(tokens=ref_tokens, margins=ref_margins, logits=prompt_logits(f64, ids, p)),
            ))
        ref = dict(
            format=FORMAT, name=fx["name"], architecture=fx["arch"], dtype=fx["dtype"],
            generator=dict(tool="transformers", device=env.get("gpu", "cuda"), reference="float64 on the CPU",
                           attn_implementation="eager", **env),
            config=dict(effective_config(hf.config), **layer_windows(hf)), newTokens=NEW_TOKENS, logitPositions=LOGIT_POSITIONS, prompts=prompts,
        )
        with open(os.path.join(out_dir, "reference.json"), "w") as f:
            json.dump(ref, f)
        low = min(min(p["hf"]["margins"]) for p in prompts)
        agree = sum(p["hf"]["tokens"] == p["f64"]["tokens"] for p in prompts)
        print(f"{fx['name']}: saved {sorted(os.listdir(out_dir))}; transformers {fx['dtype']} greedy == float64 greedy "
              f"for {agree}/{len(prompts)} prompts; smallest margin {low:.3g}; {time.time() - t0:.1f} s", flush=True)
        del hf, f64
        torch.cuda.empty_cache()


class ForwardCounter:
    """Counts forward calls of a model (target forwards per generate: tokens per forward)."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(lambda *_: self.bump())

    def bump(self):
        self.n += 1


def throughput(out_root, new_tokens, reps, prompt_len, num_prompts):
    if not torch.cuda.is_available():
        fail("throughput: no CUDA device visible to torch")
    os.makedirs(out_root, exist_ok=True)
    env = versions()
    print(json.dumps(env), flush=True)
    models = {}
    for name, shape, seed in (("target", TARGET_1B, 21), ("draft", DRAFT, 22)):
        t0 = time.time()
        cfg = make_config("LlamaForCausalLM", shape, 10000.0, None, False)
        torch.manual_seed(seed)
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg)
        randomize(m, seed)
        m = m.to(torch.bfloat16).eval()
        m.generation_config.eos_token_id = None
        save(m, os.path.join(out_root, name))
        models[name] = m
        params = sum(p.numel() for p in m.parameters())
        print(f"{name}: {params / 1e6:.0f}M parameters, saved in {time.time() - t0:.1f} s", flush=True)
    target, draft = models["target"], models["draft"]
    own = copy.deepcopy(target)  # the target as its own assistant: same weights, its own module
    counter = ForwardCounter(target)
    g = torch.Generator().manual_seed(31)
    prompts = [torch.randint(0, TARGET_1B["vocab_size"], (prompt_len,), generator=g).tolist() for _ in range(num_prompts)]
    gc = draft.generation_config
    assistant_settings = {k: getattr(gc, k, None) for k in
                          ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}

    def run(ids, n, assistant):
        x = torch.tensor([ids], dtype=torch.long, device="cuda")
        kw = dict(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                  num_beams=1, pad_token_id=0)
        if assistant is not None:
            kw["assistant_model"] = assistant
        counter.n = 0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            seq = target.generate(**kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        toks = seq[0, len(ids):].tolist()
        return dict(seconds=dt, tokens=toks, targetForwards=counter.n)

    modes = {"plain": None, "assisted (random draft)": draft, "assisted (target itself)": own}
    results = {}
    for mode, assistant in modes.items():
        run(prompts[0], 8, assistant)  # warm-up: kernels, caches, allocator
        runs = []
        for ids in prompts:
            for _ in range(reps):
                r = run(ids, new_tokens, assistant)
                if len(r["tokens"]) != new_tokens:
                    fail(f"{mode}: {len(r['tokens'])} new tokens, wanted {new_tokens}")
                runs.append(r)
        tps = [new_tokens / r["seconds"] for r in runs]
        results[mode] = dict(
            tokensPerSecond=statistics.median(tps), tokensPerSecondRuns=tps,
            tokensPerForward=statistics.median(new_tokens / max(1, r["targetForwards"]) for r in runs),
            tokens=[runs[i * reps]["tokens"] for i in range(len(prompts))],
        )
        print(f"transformers {mode}: {results[mode]['tokensPerSecond']:.1f} tok/s (median of {len(tps)}), "
              f"tokens per target forward {results[mode]['tokensPerForward']:.2f}", flush=True)
    plain_tokens = results["plain"]["tokens"]
    for mode in modes:
        results[mode]["sameTokensAsPlain"] = results[mode]["tokens"] == plain_tokens
    report = dict(
        format=THROUGHPUT_FORMAT, env=env, target=os.path.abspath(os.path.join(out_root, "target")),
        draft=os.path.abspath(os.path.join(out_root, "draft")), targetShape=TARGET_1B, draftShape=DRAFT,
        dtype="bfloat16", prompts=prompts, newTokens=new_tokens, reps=reps, attn_implementation=target.config._attn_implementation,
        assistantSettings=assistant_settings,
        note="tokens/s = new tokens / wall seconds of one generate() call (prefill included), median over prompts x reps; "
             "batch 1; greedy; target forwards counted by a forward hook",
        results=results,
    )
    with open(os.path.join(out_root, "hf_throughput.json"), "w") as f:
        json.dump(report, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["agreement", "throughput"])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--new-tokens", type=int, default=128, help="throughput: new tokens per generate (default 128)")
    ap.add_argument("--reps", type=int, default=3, help="throughput: timed runs per prompt and mode (default 3)")
    ap.add_argument("--prompt-len", type=int, default=32, help="throughput: prompt tokens (default 32)")
    ap.add_argument("--prompts", type=int, default=2, help="throughput: number of prompts (default 2)")
    a = ap.parse_args()
    t0 = time.time()
    if a.what == "agreement":
        agreement(a.out)
    else:
        throughput(a.out, a.new_tokens, a.reps, a.prompt_len, a.prompts)
    print(f"hf_fixtures {a.what}: done in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
