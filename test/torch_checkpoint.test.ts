// PyTorch checkpoints (torch.save's zip format) read without Python (lib/torch_checkpoint.ts), checked
// against files torch itself wrote (test/fixtures/torch/, made by scripts/torch_fixtures.py): every
// dtype, views (transposed, sliced, shared and expanded storages), Parameters and a module's state
// dict give torch's own values; the legacy format and pickles that call other globals are refused
// with coded errors; damaged files never throw anything else; EAGLE and Medusa heads published as
// pytorch_model.bin / medusa_lm_head.pt decode exactly as their safetensors twins; a sharded
// pytorch_model-*.bin checkpoint converts (`specdec convert`) to its safetensors twin's tensors.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { convertTorchWeights } from '../lib/convert';
import { SpeculativeDecoder } from '../lib/decoder';
import { LlamaModel } from '../lib/models/llama';
import { bf16BitsToF32, f16BitsToF32, openSafetensors } from '../lib/safetensors';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { openTorchCheckpoint } from '../lib/torch_checkpoint';
import { makeCheckpoint, specByName } from './fixtures/checkpoints';
import { assertThrowsCode, rng, testSeed } from './helpers';

const fixtures = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'torch');
const DTYPES: Record<string, string> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', float64: 'F64', int64: 'I64', int32: 'I32', bool: 'BOOL', uint8: 'U8' };

interface Reference {
  dtype: string;
  shape: number[];
  values: unknown;
}

/** The raw bytes of a tensor as the flat list torch's tolist() gives (int64 as decimal strings). */
function decode(dtype: string, bytes: Uint8Array): (number | string | boolean)[] {
  const b = Buffer.from(bytes);
  const n = (size: number): number => b.length / size;
  const out: (number | string | boolean)[] = [];
  for (let i = 0; i < n(dtype === 'F32' || dtype === 'I32' ? 4 : dtype === 'F64' || dtype === 'I64' ? 8 : dtype === 'F16' || dtype === 'BF16' ? 2 : 1); i++) {
    switch (dtype) {
      case 'F32': out.push(b.readFloatLE(4 * i)); break;
      case 'F64': out.push(b.readDoubleLE(8 * i)); break;
      case 'F16': out.push(f16BitsToF32(b.readUInt16LE(2 * i))); break;
      case 'BF16': out.push(bf16BitsToF32(b.readUInt16LE(2 * i))); break;
      case 'I64': out.push(b.readBigInt64LE(8 * i).toString()); break;
      case 'I32': out.push(b.readInt32LE(4 * i)); break;
      case 'BOOL': out.push(b[i] !== 0); break;
      case 'U8': out.push(b[i] as number); break;
      default: throw new Error(`dtype ${dtype}`);
    }
  }
  return out;
}

const flat = (v: unknown): unknown[] => (Array.isArray(v) ? v.flatMap(flat) : [v]);

function checkAgainst(file: string, json: string): void {
  const want = JSON.parse(fs.readFileSync(path.join(fixtures, json), 'utf8')) as Record<string, Reference>;
  const f = openTorchCheckpoint(path.join(fixtures, file));
  try {
    assert.deepStrictEqual(f.names(), Object.keys(want).sort());
    for (const [name, ref] of Object.entries(want)) {
      const info = f.info(name);
      assert.strictEqual(info.dtype, DTYPES[ref.dtype], `${name}: dtype`);
      assert.deepStrictEqual(info.shape, ref.shape, `${name}: shape`);
      const raw = f.raw(name);
      assert.deepStrictEqual(decode(raw.dtype, raw.bytes), flat(ref.values), `${name}: values`);
      if (['F32', 'F16', 'BF16', 'F64'].includes(info.dtype)) {
        const t = f.load(name);
        try {
          assert.deepStrictEqual(t.shape, ref.shape, `${name}: loaded shape`);
          const got = info.dtype === 'F64' ? Array.from(t.toArray() as Float64Array) : Array.from(t.toFloat32());
          assert.deepStrictEqual(got, flat(ref.values), `${name}: loaded values`);
        } finally {
          t.dispose();
        }
      }
    }
  } finally {
    f.close();
  }
}

function sameTensors(a: string, b: string): void {
  const fa = openTorchCheckpoint(a), fb = openSafetensors(b);
  try {
    assert.deepStrictEqual(fa.names(), fb.names());
    for (const n of fa.names()) {
      const ra = fa.raw(n), rb = fb.raw(n);
      assert.deepStrictEqual([ra.dtype, ra.shape], [rb.dtype, rb.shape], n);
      assert.ok(Buffer.from(ra.bytes).equals(Buffer.from(rb.bytes)), `${n}: bytes differ`);
    }
  } finally {
    fa.close();
    fb.close();
  }
}

describe('PyTorch checkpoints (torch.save zip format, read without Python)', function () {
  this.timeout(120000);

  it("every dtype and view of a torch-written state dict reads as torch's own values (mixed.pt)", () => {
    checkAgainst('mixed.pt', 'mixed.json');
  });

  it('the same archive with zip64 records (sizes, offsets, the end record: 10 GB shards have them) and with deflated members', () => {
    checkAgainst('mixed-zip64.pt', 'mixed.json');
    checkAgainst('mixed-deflated.pt', 'mixed.json');
  });

  it("an nn.Module's state_dict() (an OrderedDict with _metadata) reads as torch's values", () => {
    checkAgainst('module.pt', 'module.json');
  });

  it('refuses the legacy format and pickles that call other globals, with coded errors naming them', () => {
    assertThrowsCode(() => openTorchCheckpoint(path.join(fixtures, 'legacy.pt')), 'E_UNSUPPORTED', /legacy \(pre-1\.6\) format.*torch\.save\(torch\.load/);
    assertThrowsCode(() => openTorchCheckpoint(path.join(fixtures, 'object.pt')), 'E_FORMAT', /object\.pt: the pickle refers to posix\.getcwd, which is not read/);
    assertThrowsCode(() => openTorchCheckpoint(path.join(fixtures, 'no-such.pt')), 'E_IO', /no-such\.pt/);
    const f = openTorchCheckpoint(path.join(fixtures, 'mixed.pt'));
    try {
      assertThrowsCode(() => f.info('nope'), 'E_FORMAT', /no tensor 'nope'/);
      assertThrowsCode(() => f.load('i64'), 'E_UNSUPPORTED', /'i64' is I64/);
    } finally {
      f.close();
    }
  });

  it('damaged files (truncated, bytes changed) give coded errors or valid tensors, never another exception', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-torch-'));
    const r = rng(testSeed);
    try {
      const sources = ['mixed.pt', 'module.pt', path.join('eagle-bin', 'pytorch_model.bin')].map((f) => fs.readFileSync(path.join(fixtures, f)));
      let opened = 0, refused = 0;
      for (let k = 0; k < 400; k++) {
        const src = sources[k % sources.length] as Buffer;
        let b = Buffer.from(src);
        if (k % 4 === 0) b = b.subarray(0, Math.floor(r() * b.length));
        else for (let j = 1 + Math.floor(r() * 4); j > 0; j--) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
        const file = path.join(tmp, `m${k}.pt`);
        fs.writeFileSync(file, b);
        try {
          const f = openTorchCheckpoint(file);
          try {
            for (const n of f.names()) {
              try {
                const raw = f.raw(n);
                const info = f.info(n);
                assert.strictEqual(raw.bytes.length, info.shape.reduce((a, d) => a * d, 1) * ({ F32: 4, F64: 8, I64: 8, I32: 4, F16: 2, BF16: 2, I16: 2 } as Record<string, number>)[info.dtype]! || raw.bytes.length);
              } catch (e) {
                assert.ok((e as { code?: string }).code, `mutant ${k}, tensor ${n}: uncoded ${(e as Error).stack}`);
              }
            }
            opened++;
          } finally {
            f.close();
          }
        } catch (e) {
          assert.ok(['E_FORMAT', 'E_UNSUPPORTED', 'E_IO'].includes((e as { code?: string }).code ?? ''), `mutant ${k}: ${(e as Error).stack}`);
          refused++;
        }
      }
      assert.ok(opened > 20 && refused > 20, `opened ${opened}, refused ${refused}`);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  describe('published head layouts', () => {
    let target: LlamaModel;
    before(async () => {
      target = await LlamaModel.load(makeCheckpoint(specByName('llama-gqa-f32'), testSeed), { device: 'cpu', maxSequences: 2 });
    });
    after(() => target?.dispose());
    const prompts = [Int32Array.of(5, 17, 3), Int32Array.of(40, 41, 42, 43)];


    it('an EAGLE head as pytorch_model.bin decodes exactly as its model.safetensors twin (and as plain greedy)', async () => {
      sameTensors(path.join(fixtures, 'eagle-bin', 'pytorch_model.bin'), path.join(fixtures, 'eagle-safetensors', 'model.safetensors'));
      const plain = await new SpeculativeDecoder({ target }).generateBatch(prompts, { maxNewTokens: 20 });
      const runs = [];
      for (const dir of ['eagle-bin', 'eagle-safetensors']) {
        const head = EagleHead.load(path.join(fixtures, dir), { device: 'cpu' });
        const speculator = new EagleSpeculator({ head, topK: 3, depth: 3, totalTokens: 10 });
        try {
          runs.push(await new SpeculativeDecoder({ target, speculator }).generateBatch(prompts, { maxNewTokens: 20 }));
        } finally {
          speculator.dispose();
          head.dispose();
        }
      }
      const [bin, st] = runs as [typeof plain, typeof plain];
      bin.forEach((g, i) => {
        assert.deepStrictEqual(Array.from(g.tokens), Array.from(st[i]!.tokens), `prompt ${i}: .bin vs .safetensors`);
        assert.deepStrictEqual(g.stats.acceptedPerPosition, st[i]!.stats.acceptedPerPosition, `prompt ${i}: the same trees accepted the same way`);
        assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain[i]!.tokens), `prompt ${i}: lossless`);
      });
    });

    it('Medusa heads as medusa_lm_head.pt decode exactly as their medusa_lm_head.safetensors twin', async () => {
      sameTensors(path.join(fixtures, 'medusa-pt', 'medusa_lm_head.pt'), path.join(fixtures, 'medusa-safetensors', 'medusa_lm_head.safetensors'));
      const runs = [];
      for (const dir of ['medusa-pt', 'medusa-safetensors']) {
        const heads = MedusaHeads.load(path.join(fixtures, dir), { device: 'cpu' });
        const speculator = new MedusaSpeculator({ heads, choices: [[0], [1], [0, 0], [0, 1], [1, 0]] });
        runs.push(await new SpeculativeDecoder({ target, speculator }).generateBatch(prompts, { maxNewTokens: 20 }));
        heads.dispose();
      }
      const [pt, st] = runs as [Awaited<ReturnType<SpeculativeDecoder['generateBatch']>>, Awaited<ReturnType<SpeculativeDecoder['generateBatch']>>];
      pt.forEach((g, i) => {
        assert.deepStrictEqual(Array.from(g.tokens), Array.from(st[i]!.tokens), `prompt ${i}`);
        assert.deepStrictEqual(g.stats.acceptedPerPosition, st[i]!.stats.acceptedPerPosition, `prompt ${i}`);
      });
      assertThrowsCode(() => MedusaHeads.load(fixtures, { device: 'cpu' }), 'E_IO', /config\.json|tried medusa_lm_head\.safetensors, medusa_lm_head\.pt/);
    });
  });
  describe('specdec convert: a PyTorch-only checkpoint to safetensors', () => {
    const copyDir = (from: string): string => {
      const to = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-convert-'));
      for (const f of fs.readdirSync(from)) fs.copyFileSync(path.join(from, f), path.join(to, f));
      return to;
    };

    it("converts sharded pytorch_model-*.bin to safetensors shards and an index holding the twin's tensors; the model then decodes as the twin", async () => {
      const dir = copyDir(path.join(fixtures, 'llama-bin'));
      try {
        // Before: the loader says what to run.
        await assert.rejects(LlamaModel.load(dir, { device: 'cpu' }), (e: Error & { code?: string }) =>
          e.code === 'E_FORMAT' && /only pytorch_model\.bin\.index\.json; convert it once with: npx specdec convert/.test(e.message));
        const r = convertTorchWeights(dir);
        assert.deepStrictEqual(r.files.map((f) => path.basename(f)), ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
        const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
        const twin = openSafetensors(path.join(fixtures, 'llama-safetensors', 'model.safetensors'));
        try {
          assert.deepStrictEqual(Object.keys(index.weight_map).sort(), twin.names());
          assert.strictEqual(r.tensors, twin.names().length);
          for (const n of twin.names()) {
            const shard = openSafetensors(path.join(dir, index.weight_map[n] as string));
            try {
              const a = shard.raw(n), b = twin.raw(n);
              assert.deepStrictEqual([a.dtype, a.shape], [b.dtype, b.shape], n);
              assert.ok(Buffer.from(a.bytes).equals(Buffer.from(b.bytes)), `${n}: bytes differ`);
            } finally {
              shard.close();
            }
          }
        } finally {
          twin.close();
        }
        // Converting again is refused unless forced.
        assertThrowsCode(() => convertTorchWeights(dir), 'E_ARG', /model-00001-of-00002\.safetensors.*exist/);
        assert.strictEqual(convertTorchWeights(dir, { force: true }).tensors, r.tensors);
        const decode = async (d: string): Promise<number[][]> => {
          const m = await LlamaModel.load(d, { device: 'cpu', maxSequences: 2 });
          try {
            return (await new SpeculativeDecoder({ target: m }).generateBatch([Int32Array.of(5, 6, 7), Int32Array.of(9)], { maxNewTokens: 12, stopTokens: [] })).map((g) => Array.from(g.tokens));
          } finally {
            m.dispose();
          }
        };
        assert.deepStrictEqual(await decode(dir), await decode(path.join(fixtures, 'llama-safetensors')));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('a Vicuna-style directory (PyTorch shards, a SentencePiece tokenizer.model, no tokenizer.json): generate says to convert; then text in and out, as the safetensors twin', () => {
      const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');
      const spm = path.resolve(fixtures, '..', 'spm', 'bpe');
      const run = (args: string[]): { status: number | null; stdout: string; stderr: string } =>
        spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, SPECDEC_BACKEND: 'cpu' } });
      const withTokenizer = (from: string): string => {
        const d = copyDir(from);
        for (const f of ['tokenizer.model', 'tokenizer_config.json']) fs.copyFileSync(path.join(spm, f), path.join(d, f));
        return d;
      };
      const vicuna = withTokenizer(path.join(fixtures, 'llama-bin'));
      const twin = withTokenizer(path.join(fixtures, 'llama-safetensors'));
      try {
        const gen = ['--prompt', 'once upon a time', '--max-new-tokens', '10', '--json'];
        const before = run(['generate', '--model', vicuna, ...gen]);
        assert.strictEqual(before.status, 1);
        assert.match(before.stderr, /only pytorch_model\.bin\.index\.json; convert it once with: npx specdec convert .*\[E_FORMAT\]\n$/);
        // `info --model` says the same without loading anything, and exits 1 while part will not load.
        const info = run(['info', '--model', vicuna]);
        assert.strictEqual(info.status, 1);
        assert.match(info.stdout, /config: +LlamaForCausalLM, 2 layers, hidden 32, 4\/2 heads, vocabulary 600, 128 positions, stop tokens 2\n/);
        assert.match(info.stdout, /weights: +.*convert it once with: npx specdec convert .*\[E_FORMAT\]\n/);
        assert.match(info.stdout, /tokenizer: +tokenizer\.model, no chat template\n/);
        assert.strictEqual(run(['convert', vicuna]).status, 0);
        const after = run(['info', '--model', vicuna, '--json']);
        assert.strictEqual(after.status, 0, after.stderr);
        const shards = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
        // (A tokenizer.model is read as LlamaTokenizer: no clean-up of tokenization spaces.)
        assert.deepStrictEqual((JSON.parse(after.stdout) as { model: { tokenizer: unknown } }).model.tokenizer, { file: 'tokenizer.model', chatTemplate: false, cleansUpSpaces: false });
        assert.deepStrictEqual((JSON.parse(after.stdout) as { model: { weights: unknown } }).model.weights,
          { files: shards, dtypes: ['BF16', 'F32'], bytes: shards.reduce((a, f) => a + fs.statSync(path.join(vicuna, f)).size, 0) });
        const outs = [[vicuna], [twin], [vicuna, '--prompt-lookup', '2']].map(([d, ...extra]) => {
          const r = run(['generate', '--model', d as string, ...gen, ...extra]);
          assert.strictEqual(r.status, 0, r.stderr);
          const { tokens, text } = JSON.parse(r.stdout) as { tokens: number[]; text: string };
          return { tokens, text };
        });
        assert.strictEqual(outs[0]!.tokens.length, 10);
        assert.ok(outs[0]!.text.length > 0, 'decoded text');
        assert.deepStrictEqual(outs[1], outs[0], 'the converted checkpoint decodes as its safetensors twin');
        assert.deepStrictEqual(outs[2]!.tokens, outs[0]!.tokens, 'prompt lookup: the same tokens');
      } finally {
        fs.rmSync(vicuna, { recursive: true, force: true });
        fs.rmSync(twin, { recursive: true, force: true });
      }
    });

    it('the CLI converts a single pytorch_model.bin, and names the problem in one line when it cannot', () => {
      const bin = path.resolve(__dirname, '..', '..', 'bin', 'specdec.js');
      const run = (args: string[]): { status: number | null; stderr: string } => spawnSync(process.execPath, [bin, 'convert', ...args], { encoding: 'utf8' });
      const dir = copyDir(path.join(fixtures, 'eagle-bin'));
      try {
        const ok = run([dir]);
        assert.strictEqual(ok.status, 0, ok.stderr);
        assert.match(ok.stderr, /wrote model\.safetensors \(13 tensors/);
        sameTensors(path.join(dir, 'pytorch_model.bin'), path.join(dir, 'model.safetensors'));
        const again = run([dir]);
        assert.strictEqual(again.status, 1);
        assert.match(again.stderr, /^specdec: model\.safetensors exist in .* \(force replaces them\) \[E_ARG\]\n$/);
        const none = run([path.join(fixtures, 'llama-safetensors')]);
        assert.match(none.stderr, /^specdec: .*llama-safetensors: no pytorch_model\.bin or pytorch_model\.bin\.index\.json to convert \[E_ARG\]\n$/);
        fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), fs.readFileSync(path.join(fixtures, 'object.pt')));
        const evil = run([dir, '--force']);
        assert.strictEqual(evil.status, 1);
        assert.match(evil.stderr, /posix\.getcwd, which is not read .*\[E_FORMAT\]/);
        assert.strictEqual(run([]).status, 2);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
