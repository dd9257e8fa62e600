// config.json as transformers 4 and 5 write it: the same model must parse to the same settings
// (transformers 5 moved rope_theta and rope_scaling into rope_parameters and torch_dtype to dtype).
import * as assert from 'assert';

import { parseLlamaConfig } from '../lib/models/config';
import { assertThrowsCode } from './helpers';

const base = {
  architectures: ['LlamaForCausalLM'],
  vocab_size: 64,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 128,
};
const llama3 = { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };

describe('config.json from transformers 4 and 5', () => {
  it('rope_parameters (v5) gives what rope_theta + rope_scaling (v4) give, and dtype what torch_dtype gives', () => {
    const v4 = parseLlamaConfig({ ...base, rope_theta: 500000, rope_scaling: { rope_type: 'llama3', ...llama3 }, torch_dtype: 'bfloat16' });
    const v5 = parseLlamaConfig({ ...base, rope_parameters: { rope_type: 'llama3', rope_theta: 500000, ...llama3 }, dtype: 'bfloat16' });
    assert.deepStrictEqual(v5, v4);
    assert.strictEqual(v5.ropeTheta, 500000);
    assert.strictEqual(v5.ropeScaling?.type, 'llama3');
    assert.strictEqual(v5.torchDtype, 'bfloat16');
    // Default rope in v5: just a theta.
    const plain = parseLlamaConfig({ ...base, rope_parameters: { rope_type: 'default', rope_theta: 1000000 } });
    assert.strictEqual(plain.ropeTheta, 1000000);
    assert.strictEqual(plain.ropeScaling, undefined);
    // Nothing given: Llama's default theta.
    assert.strictEqual(parseLlamaConfig(base).ropeTheta, 10000);
  });

  it('names a bad or contradictory rope_parameters', () => {
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_parameters: { rope_type: 'dynamic', rope_theta: 1e4, factor: 4 } }), 'E_FORMAT', /rope_parameters type "dynamic" is not supported/);
    // transformers 5 writes YaRN inside rope_parameters too.
    const y = parseLlamaConfig({ ...base, rope_parameters: { rope_type: 'yarn', rope_theta: 1e4, factor: 4 } });
    assert.deepStrictEqual([y.ropeTheta, (y.ropeScaling as { type: string }).type, (y.ropeScaling as { factor: number }).factor], [1e4, 'yarn', 4]);
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_parameters: { rope_theta: -1 } }), 'E_FORMAT', /rope_parameters.rope_theta must be a positive number/);
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_theta: 1e4, rope_parameters: { rope_theta: 1e6 } }), 'E_FORMAT', /disagree/);
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_parameters: [1] }), 'E_FORMAT', /'rope_parameters' must be an object/);
  });

  // The published configs of the families users pair for speculation (as on the Hub, long factor
  // lists shortened to the head's width where they are synthetic here).
  it('Qwen3-0.6B and Phi-4-mini as their config.json is published: every setting transformers computes with', () => {
    const qwen3 = parseLlamaConfig({
      architectures: ['Qwen3ForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151645,
      head_dim: 128, hidden_act: 'silu', hidden_size: 1024, initializer_range: 0.02, intermediate_size: 3072, max_position_embeddings: 40960,
      max_window_layers: 28, model_type: 'qwen3', num_attention_heads: 16, num_hidden_layers: 28, num_key_value_heads: 8, rms_norm_eps: 1e-6,
      rope_scaling: null, rope_theta: 1000000, sliding_window: null, tie_word_embeddings: true, torch_dtype: 'bfloat16',
      transformers_version: '4.51.0', use_cache: true, use_sliding_window: false, vocab_size: 151936,
    });
    assert.deepStrictEqual(
      [qwen3.architecture, qwen3.headDim, qwen3.ropeDim, qwen3.numHeads * qwen3.headDim, qwen3.qkNorm, qwen3.qkvBias, qwen3.oBias, qwen3.maxPositions, qwen3.tieWordEmbeddings, qwen3.ropeTheta, qwen3.ropeScaling],
      ['Qwen3ForCausalLM', 128, 128, 2048, true, false, false, 40960, true, 1000000, undefined],
    );
    const factors = (a: number, b: number): number[] => Array.from({ length: 48 }, (_, i) => a + b * i);
    const phi4mini = parseLlamaConfig({
      architectures: ['Phi3ForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 199999, embd_pdrop: 0.0, eos_token_id: 199999,
      full_attn_mod: 1, hidden_act: 'silu', hidden_size: 3072, initializer_range: 0.02, intermediate_size: 8192, interpolate_factor: 1,
      lm_head_bias: false, max_position_embeddings: 131072, mlp_bias: false, model_type: 'phi3', num_attention_heads: 24, num_hidden_layers: 32,
      num_key_value_heads: 8, original_max_position_embeddings: 4096, pad_token_id: 199999, partial_rotary_factor: 0.75, resid_pdrop: 0.0,
      rms_norm_eps: 1e-5, rope_scaling: { long_factor: factors(1, 0.8), short_factor: factors(1, 0.05), type: 'longrope' }, rope_theta: 10000.0,
      sliding_window: 262144, tie_word_embeddings: true, torch_dtype: 'bfloat16', use_cache: true, vocab_size: 200064,
    });
    assert.deepStrictEqual(
      [phi4mini.architecture, phi4mini.headDim, phi4mini.ropeDim, phi4mini.fusedProjections, phi4mini.maxPositions, phi4mini.tieWordEmbeddings, phi4mini.ropeScaling?.type],
      ['Phi3ForCausalLM', 128, 96, true, 4096, true, 'longrope'],
    );
    assert.ok(phi4mini.ropeScaling?.type === 'longrope');
    // transformers: sqrt(1 + ln(131072 / 4096) / ln(4096))
    assert.ok(Math.abs(phi4mini.ropeScaling.attentionFactor - Math.sqrt(1 + Math.log(32) / Math.log(4096))) < 1e-12);
  });
});
