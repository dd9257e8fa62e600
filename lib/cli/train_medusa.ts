// `specdec train-medusa --model DIR --data FILE --heads N --out DIR`: Medusa-1 heads for a
// checkpoint, on the project's trainer (cpp/train): the base model is frozen, head h learns the
// token h + 2 ahead from the base model's last hidden state; FasterDecoding's initialisation (LM
// heads copied from the model's, ResBlocks zero) and layout on disk. With --self-distill the heads
// learn from text the model itself generates from the data's lines (Medusa-1 self-distillation),
// so they match the model's distribution rather than the data's.
// Progress: a bar on a terminal (loss, tokens/s, ETA), plain lines otherwise.
import { BatchSampler, learningRate, LlamaTrainer, MedusaTrainer } from '../train/trainer';
import { intFlag, parseTrainFlags, prepareTraining, progressLine as commonProgressLine, relativeBase, requireFlag, trainLoop, trainSchedule, type TrainFlags } from './train_common';

export const TRAIN_MEDUSA_USAGE = `usage: specdec train-medusa --model DIR --data FILE --heads N --out DIR [options]

Trains Medusa-1 heads on a frozen Llama-family checkpoint (f32 on the CPU) and writes them in the
FasterDecoding layout (config.json + medusa_lm_head.safetensors), ready for --medusa DIR.

  --model DIR         the base model (config.json, model.safetensors, tokenizer.json)
  --data FILE         training text (UTF-8; one document per line), or a JSON array of token-id arrays
  --heads N           Medusa heads; head h predicts the token h + 2 ahead
  --out DIR           output directory
  --layers L          ResBlocks per head (default 1)
  --steps S           optimizer steps (default 300)
  --batch B           sequences per step (default 8)
  --seq-len T         tokens per sequence (default 64, at most the model's context)
  --lr X              peak learning rate (default 4e-3; warmup, then cosine decay to lr/20)
  --self-distill      train on the model's own greedy continuations of the data's lines
  --seed S            initialisation and batch-sampling seed (default 0)
  --threads N         trainer threads (default 2)
  --dtype D           bf16 or f32 weights on disk (default bf16)
  -h, --help          this help`;

export interface TrainMedusaFlags extends TrainFlags {
  readonly heads: number;
}

export function parseTrainMedusaFlags(argv: readonly string[]): TrainMedusaFlags {
  const { flags, values } = parseTrainFlags(argv, 'train-medusa', ['--heads'], { lr: 4e-3 });
  return { ...flags, heads: intFlag('--heads', requireFlag(values, '--heads', 'train-medusa'), 0, 1) };
}

/** One progress line of train-medusa: a bar on a terminal, a plain line otherwise. */
export function progressLine(p: { step: number; steps: number; loss: number; tokensPerSecond: number; seconds: number }, bar: boolean): string {
  return commonProgressLine('train-medusa', p, bar);
}

export async function trainMedusaCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(TRAIN_MEDUSA_USAGE + '\n');
    return 0;
  }
  const f = parseTrainMedusaFlags(argv);
  const { config, stream } = await prepareTraining(f, { positions: f.seqLen + f.heads + 1, positionsText: 'seq-len + heads + 1', forwardTokens: f.seqLen });
  using target = LlamaTrainer.fromCheckpoint(f.model, config, { seed: f.seed, threads: f.threads });
  using heads = MedusaTrainer.create({ numHeads: f.heads, numLayers: f.layers, hiddenSize: config.hiddenSize, vocabSize: config.vocabSize }, { seed: f.seed, threads: f.threads });
  heads.initFromTarget(target);
  const sampler = new BatchSampler(stream, f.seqLen, f.batch, f.seed + 1);
  const schedule = trainSchedule(f);
  let last: { headLoss: number[]; headAccuracy: number[] } = { headLoss: [], headAccuracy: [] };
  await trainLoop('train-medusa', f, f.seqLen, async (step) => {
    const r = await heads.trainStep(target, sampler.next(), f.batch, f.seqLen, { lr: learningRate(step, schedule), weightDecay: 0, clip: 1.0 });
    last = r;
    return r;
  });
  heads.save(f.out, { dtype: f.dtype, baseModel: relativeBase(f.out, f.model) });
  process.stderr.write(
    `train-medusa: wrote ${f.out} (${f.heads} heads; last batch loss per head [${last.headLoss.map((x) => x.toFixed(3)).join(', ')}],` +
      ` top-1 [${last.headAccuracy.map((x) => x.toFixed(3)).join(', ')}])\n`,
  );
  return 0;
}
