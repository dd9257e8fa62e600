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
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_parameters: { rope_type: 'yarn', rope_theta: 1e4, factor: 4 } }), 'E_FORMAT', /rope_parameters type "yarn" is not supported/);
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_parameters: { rope_theta: -1 } }), 'E_FORMAT', /rope_parameters.rope_theta must be a positive number/);
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_theta: 1e4, rope_parameters: { rope_theta: 1e6 } }), 'E_FORMAT', /disagree/);
    assertThrowsCode(() => parseLlamaConfig({ ...base, rope_parameters: [1] }), 'E_FORMAT', /'rope_parameters' must be an object/);
  });
});
