// Plain (non-speculative) decode throughput of a ~100M-parameter random Llama model: the baseline the
// speculative benches divide by. Generates the checkpoint on the fly into a temp dir (bf16,
// hidden 768, 12 layers, vocab 32000, tied embeddings), then times plainGenerate.
// Prints one JSON object on stdout. Usage:
//   node dist/bench/plain_decode.bench.js [--device cpu|cuda|auto] [--batch 1] [--new-tokens 32] [--prompt 32]
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends } from '../lib/backend';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { f32ToBf16Bits, writeSafetensors, type SafetensorsEntry } from '../lib/safetensors';
import type { Device } from '../lib/tensor';

const CONFIG = {
  architectures: ['LlamaForCausalLM'],
  vocab_size: 32000,
  hidden_size: 768,
  intermediate_size: 2048,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  num_key_value_heads: 4,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
};

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

/** Random bf16 bits, uniform in [-a, a] (xorshift: fast and good enough for weights). */
function randomBf16(n: number, a: number, state: { s: number }): Uint16Array {
  const out = new Uint16Array(n);
  let s = state.s;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = f32ToBf16Bits(((s >>> 0) / 4294967296 - 0.5) * 2 * a);
  }
  state.s = s;
  return out;
}

/** Writes the checkpoint as one shard per layer (keeps peak memory low). Returns the parameter count. */
function writeModel(dir: string): number {
  const H = CONFIG.hidden_size;
  const I = CONFIG.intermediate_size;
  const D = H / CONFIG.num_attention_heads;
  const KV = CONFIG.num_key_value_heads * D;
  const st = { s: 0x9e3779b9 | 0 };
  const weightMap: Record<string, string> = {};
  let params = 0;
  const shard = (file: string, tensors: Record<string, [number, number] | [number]>): void => {
    const entries: Record<string, SafetensorsEntry> = {};
    for (const [name, shape] of Object.entries(tensors)) {
      const n = shape.reduce((x, y) => x * y, 1);
      const norm = shape.length === 1;
      const data = norm ? new Uint16Array(n).fill(f32ToBf16Bits(1)) : randomBf16(n, Math.sqrt(3 / shape[shape.length - 1]!), st);
      entries[name] = { dtype: 'BF16', shape: [...shape], data };
      weightMap[name] = file;
      params += n;
    }
    writeSafetensors(path.join(dir, file), entries);
  };
  shard('embed.safetensors', { 'model.embed_tokens.weight': [CONFIG.vocab_size, H], 'model.norm.weight': [H] });
  for (let l = 0; l < CONFIG.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    shard(`layer-${l}.safetensors`, {
      [p + 'input_layernorm.weight']: [H],
      [p + 'self_attn.q_proj.weight']: [H, H],
      [p + 'self_attn.k_proj.weight']: [KV, H],
      [p + 'self_attn.v_proj.weight']: [KV, H],
      [p + 'self_attn.o_proj.weight']: [H, H],
      [p + 'post_attention_layernorm.weight']: [H],
      [p + 'mlp.gate_proj.weight']: [I, H],
      [p + 'mlp.up_proj.weight']: [I, H],
      [p + 'mlp.down_proj.weight']: [H, I],
    });
  }
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(CONFIG));
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return params;
}

async function main(): Promise<void> {
  const device = arg('--device', 'auto') as Device | 'auto';
  const batch = Number(arg('--batch', '1'));
  const newTokens = Number(arg('--new-tokens', '32'));
  const promptLen = Number(arg('--prompt', '32'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-bench-plain-'));
  try {
    let t = performance.now();
    const params = writeModel(dir);
    const writeSeconds = (performance.now() - t) / 1000;
    t = performance.now();
    const model = await LlamaModel.load(dir, { device, maxSequences: batch });
    const loadSeconds = (performance.now() - t) / 1000;
    try {
      const prompts = Array.from({ length: batch }, (_, b) => Int32Array.from({ length: promptLen }, (_, i) => (i * 7919 + b * 104729) % CONFIG.vocab_size));
      // Warm-up (allocator, thread pool, CUDA context), then the timed run.
      await plainGenerate(model, prompts, { maxNewTokens: 2 });
      const res = await plainGenerate(model, prompts, { maxNewTokens: newTokens, stopTokens: [] });
      const b = backends();
      process.stdout.write(
        JSON.stringify(
          {
            bench: 'plain_decode',
            model: { params, dtype: 'bf16', hidden: CONFIG.hidden_size, layers: CONFIG.num_hidden_layers, vocab: CONFIG.vocab_size },
            device: model.device,
            gpu: model.device === 'cuda' ? (b.gpus[0]?.name ?? null) : null,
            cudaRuntime: b.cudaRuntimeVersion ?? null,
            cudaDriver: b.cudaDriverVersion ?? null,
            cpus: os.cpus().length,
            cpuModel: os.cpus()[0]?.model ?? null,
            batch,
            promptTokens: promptLen,
            newTokensPerSequence: newTokens,
            targetForwards: res.stats.targetForwards,
            seconds: res.stats.seconds,
            tokensPerSecond: res.stats.tokensPerSecond,
            msPerStep: (1000 * res.stats.seconds) / res.stats.targetForwards,
            writeSeconds,
            loadSeconds,
          },
          null,
          2,
        ) + '\n',
      );
    } finally {
      model.dispose();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  const err = e as Error & { code?: string };
  process.stderr.write(`plain_decode bench: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
  process.exitCode = 1;
});
