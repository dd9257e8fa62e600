#!/usr/bin/env python3
"""PyTorch eager references for the kernel goals of issue 10 (runs on the GPU machine).

  python3 scripts/torch_reference.py OUT.json

Times, on CUDA in bf16 with Llama-7B-like heads (32 query / 8 KV heads, head dim 128, pages of 16
slots), what a PyTorch user would run for the shapes the attention bench measures as "bf16 goal
shape" rows: scaled_dot_product_attention over K/V gathered from a paged cache (the gather timed
with it, and SDPA alone), with an explicit boolean mask for trees (a random tree of 64 tokens over
4096 cached slots: the prefix, then each node's ancestors) and none for decode rows. And the
verification the verify bench measures at its goal shape (batch 32, a chain of 8 drafts, vocabulary
128256, f32 logits): greedy (argmax, compare, accepted prefix, bonus token) and rejection sampling
with draft probabilities (ratio test, residual max(p - q, 0) of the first rejected row, one draw),
each ending with its results on the host, as specdec's verify() does. Medians of 20 timings after 3
warm-ups; microseconds. Everything is seeded; nothing is downloaded.
"""
import json
import statistics
import sys
import time


def fail(msg):
    print(f"torch_reference: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    fail(f"PyTorch is not installed ({e})")

if len(sys.argv) != 2:
    fail("usage: torch_reference.py OUT.json")
if not torch.cuda.is_available():
    fail("no CUDA device")

dev = torch.device("cuda")
torch.manual_seed(20261204)
HQ, HKV, D, PAGE, PREFIX = 32, 8, 128, 16, 4096


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts)


def sdpa(q, k, v, mask):
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:  # torch < 2.5: no enable_gqa
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)


def attention_case(batch, n):
    """batch sequences of PREFIX cached slots plus n new tokens (a random tree when n > 1)."""
    per = (PREFIX + n + PAGE - 1) // PAGE
    L = PREFIX + n
    kv = torch.randn(batch * per, 2, PAGE, HKV, D, device=dev, dtype=torch.bfloat16) * 0.5
    table = torch.randperm(batch * per, device=dev).view(batch, per)
    q = torch.randn(batch, HQ, n, D, device=dev, dtype=torch.bfloat16) * 0.5
    mask = None
    if n > 1:
        mask = torch.zeros(batch, 1, n, L, dtype=torch.bool, device=dev)
        mask[:, :, :, :PREFIX] = True
        for b in range(batch):
            parents = [-1] + [int(torch.randint(0, i, (1,))) for i in range(1, n)]
            for i in range(n):
                j = i
                while j >= 0:
                    mask[b, 0, i, PREFIX + j] = True
                    j = parents[j]

    def gather():
        g = kv[table]  # [B, per, 2, PAGE, HKV, D]
        k = g[:, :, 0].reshape(batch, per * PAGE, HKV, D)[:, :L].transpose(1, 2)
        v = g[:, :, 1].reshape(batch, per * PAGE, HKV, D)[:, :L].transpose(1, 2)
        return k, v

    k, v = gather()
    k, v = k.contiguous(), v.contiguous()
    full = timed(lambda: sdpa(q, *gather(), mask))
    alone = timed(lambda: sdpa(q, k, v, mask))
    return full, alone


def verify_case(batch=32, drafts=8, V=128256):
    logits = torch.rand(batch, drafts + 1, V, device=dev) * 2 - 1
    draft_logits = torch.rand(batch, drafts, V, device=dev) * 2 - 1
    tokens = torch.randint(0, V, (batch, drafts), device=dev)
    # Plant the drafts as the target's argmax (greedy accepts them all: the most rows read).
    logits[:, :drafts].scatter_(2, tokens.unsqueeze(2), 8.0)
    draft_logits.scatter_(2, tokens.unsqueeze(2), 8.0)
    p = torch.softmax(logits, -1)
    q = torch.softmax(draft_logits, -1)
    gen = torch.Generator(device=dev)
    gen.manual_seed(7)

    def greedy():
        pred = logits.argmax(-1)
        acc = torch.cumprod((pred[:, :drafts] == tokens).int(), 1).sum(1)
        bonus = pred.gather(1, acc.unsqueeze(1)).squeeze(1)
        return acc.tolist(), bonus.tolist()

    def rejection():
        px = p[:, :drafts].gather(2, tokens.unsqueeze(2)).squeeze(2)
        qx = q.gather(2, tokens.unsqueeze(2)).squeeze(2)
        u = torch.rand(batch, drafts, device=dev, generator=gen)
        acc = torch.cumprod((u * qx < px).int(), 1).sum(1)
        resid = torch.cat([torch.clamp(p[:, :drafts] - q, min=0), p[:, drafts:]], 1)  # all accepted: p's last row
        row = resid.gather(1, acc.view(batch, 1, 1).expand(batch, 1, V)).squeeze(1)
        pick = torch.multinomial(row / row.sum(-1, keepdim=True), 1, generator=gen).squeeze(1)
        return acc.tolist(), pick.tolist()

    return timed(greedy), timed(rejection)


rows = []
for name, batch, n in [("tree 64 tokens", 1, 64), ("decode 1 token", 1, 1), ("decode batch 32", 32, 1), ("tree 64 tokens x batch 8", 8, 64)]:
    full, alone = attention_case(batch, n)
    rows.append({"name": f"attention {name} / prefix {PREFIX}: gather + SDPA", "us": full})
    rows.append({"name": f"attention {name} / prefix {PREFIX}: SDPA on gathered K/V", "us": alone})
    print(f"torch_reference: {rows[-2]['name']}: {full:.1f} us; SDPA alone {alone:.1f} us", flush=True)
g, r = verify_case()
rows.append({"name": "verify greedy, batch 32, chain-8 (eager)", "us": g})
rows.append({"name": "verify rejection+draft, batch 32, chain-8 (eager)", "us": r})
print(f"torch_reference: verify batch 32 x chain-8: greedy {g:.1f} us, rejection+draft {r:.1f} us", flush=True)

with open(sys.argv[1], "w") as f:
    json.dump({"format": "specdec-torch-reference/1", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cuda": torch.version.cuda, "shape": {"hq": HQ, "hkv": HKV, "d": D, "page": PAGE, "prefix": PREFIX},
               "rows": rows}, f, indent=1)
