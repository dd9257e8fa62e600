// On the CPU the Llama runner reads its weights in place from the memory-mapped checkpoint (no
// copy at load), and a zeroed KV cache costs only the pages in use. Checked by memory, in a fresh
// child process: loading grows the resident set by far less than the weight bytes (a copy would
// add them all), and loading plus a few decode steps peaks near 1x the weight bytes. Correctness
// of the mapped weights is what every model test checks.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { peakRss } from '../bench/memory.bench';
import { backends } from '../lib/backend';
import { LlamaModel } from '../lib/models/llama';
import { writeCheckpoint, type CheckpointSpec } from './fixtures/checkpoints';

// ~14M bf16 parameters (~27 MB): big enough to stand out of the runtime's own memory.
const SPEC: CheckpointSpec = { name: 'in-place', architecture: 'LlamaForCausalLM', vocab: 8000, hidden: 384, intermediate: 1024, layers: 6, heads: 6, kvHeads: 2, maxPositions: 1024, dtype: 'BF16' };

interface Report {
  readonly rssStart: number;
  readonly rssLoaded: number;
  readonly maxRss: number;
}

async function child(dir: string): Promise<Report> {
  // Settle the runtime's own memory first so that the growth measured is the model's: the addon
  // and, on a GPU machine, the CUDA driver that its backend probe initializes (about 100 MB on an H200 machine; load
  // probes the backends even for device 'cpu', to check the request).
  backends();
  const rssStart = process.memoryUsage().rss;
  const model = await LlamaModel.load(dir, { device: 'cpu', maxSequences: 4 });
  const rssLoaded = process.memoryUsage().rss;
  const seq = model.createSequence();
  let tokens = Int32Array.from({ length: 8 }, (_, i) => i + 1);
  for (let step = 0; step < 3; step++) {
    const out = await model.forward([{ seq, tokens }]);
    out.logits.dispose();
    model.commit([seq], [Int32Array.from(tokens, (_, j) => j)]);
    tokens = Int32Array.of(step + 5);
  }
  model.dispose();
  return { rssStart, rssLoaded, maxRss: peakRss() };
}

if (process.argv[2] === '--child') {
  void child(process.argv[3] as string).then((r) => process.stdout.write(JSON.stringify(r)));
} else {
  describe('cpu weights in place (memory-mapped checkpoint)', function () {
    this.timeout(60000);
    let root: string;
    let report: Report;
    let WEIGHT_BYTES: number; // the checkpoint file (its JSON header is a few kB)
    before(() => {
      root = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-inplace-'));
      writeCheckpoint(root, SPEC, 0x77);
      WEIGHT_BYTES = fs.statSync(path.join(root, 'model.safetensors')).size;
      const r = spawnSync(process.execPath, [__filename, '--child', root], { encoding: 'utf8', timeout: 60000 });
      assert.strictEqual(r.status, 0, `child failed: ${r.stderr}`);
      report = JSON.parse(r.stdout) as Report;
    });
    after(() => fs.rmSync(root, { recursive: true, force: true }));

    it('loading copies no weights: the resident set grows by far less than the weight bytes', () => {
      const grew = report.rssLoaded - report.rssStart;
      assert.ok(grew < 0.25 * WEIGHT_BYTES, `RSS grew ${grew} bytes at load for ${WEIGHT_BYTES} bytes of weights`);
    });

    it('loading and decoding peak within 1.1x the weight bytes over the runtime', () => {
      // The runtime (node, V8, the addon) is what the process held before loading; activations,
      // KV pages in use and allocator slack get the 0.1x plus 8 MB.
      const extra = report.maxRss - report.rssStart;
      assert.ok(extra <= 1.1 * WEIGHT_BYTES + 8e6, `peak RSS ${report.maxRss} = start ${report.rssStart} + ${extra} for ${WEIGHT_BYTES} bytes of weights`);
    });
  });
}
