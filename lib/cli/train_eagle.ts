// `specdec train-eagle --model DIR --data FILE --out DIR`: an EAGLE-1/2 head for a checkpoint, on
// the project's trainer (cpp/train): the base model is frozen; row j of a window reads token
// t[j + 1] with the base model's final hidden state f[j] and learns f[j + 1] (SmoothL1) and the base
// model's next distribution (cross-entropy through its LM head), as SafeAILab's trainer does,
// with uniform noise on the input features. Written in SafeAILab's layout (config.json +
// model.safetensors), ready for --eagle DIR.
import { BatchSampler, EagleTrainer, learningRate, LlamaTrainer } from '../train/trainer';
import { codedError } from '../errors';
import { parseTrainFlags, prepareTraining, relativeBase, trainLoop, trainSchedule, type TrainFlags } from './train_common';

export const TRAIN_EAGLE_USAGE = `usage: specdec train-eagle --model DIR --data FILE --out DIR [options]

Trains an EAGLE-1/2 head on a frozen Llama-family checkpoint (f32 on the CPU) and writes it in
SafeAILab's layout (config.json + model.safetensors), ready for --eagle DIR. The head has the base
model's layer sizes; its loss is SmoothL1 on the next feature plus 0.1 x cross-entropy against the
base model's next-token distribution.

  --model DIR         the base model (config.json, model.safetensors, tokenizer.json)
  --data FILE         training text (UTF-8; one document per line), or a JSON array of token-id arrays
  --out DIR           output directory
  --layers L          decoder layers in the head (default 1)
  --steps S           optimizer steps (default 300)
  --batch B           sequences per step (default 8)
  --seq-len T         rows per sequence (default 64; T + 1 must fit the model's context)
  --lr X              peak learning rate (default 3e-3; warmup, then cosine decay to lr/20)
  --noise X           uniform noise of width X on the input features (default 0.2)
  --self-distill      train on the model's own greedy continuations of the data's lines
  --seed S            initialisation, noise and batch-sampling seed (default 0)
  --threads N         trainer threads (default 2)
  --dtype D           bf16 or f32 weights on disk (default bf16)
  -h, --help          this help`;

export interface TrainEagleFlags extends TrainFlags {
  readonly noise: number;
}

export function parseTrainEagleFlags(argv: readonly string[]): TrainEagleFlags {
  const { flags, values } = parseTrainFlags(argv, 'train-eagle', ['--noise'], { lr: 3e-3 });
  const text = values.get('--noise');
  const noise = text === undefined ? 0.2 : Number(text);
  if (!(noise >= 0 && noise < 100)) throw codedError('E_ARG', `--noise: expected a number in [0, 100), got '${text}'`);
  return { ...flags, noise };
}

export async function trainEagleCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(TRAIN_EAGLE_USAGE + '\n');
    return 0;
  }
  const f = parseTrainEagleFlags(argv);
  const { config, stream } = await prepareTraining(f, { positions: f.seqLen + 1, positionsText: 'seq-len + 1', forwardTokens: f.seqLen + 1 });
  using target = LlamaTrainer.fromCheckpoint(f.model, config, { seed: f.seed, threads: f.threads });
  using head = EagleTrainer.create(EagleTrainer.configFor(config, f.layers), { seed: f.seed, threads: f.threads });
  const sampler = new BatchSampler(stream, f.seqLen + 1, f.batch, f.seed + 1);
  const schedule = trainSchedule(f);
  let last = { accuracy: 0, vLoss: 0, pLoss: 0 };
  await trainLoop('train-eagle', f, f.seqLen, async (step) => {
    const r = await head.trainStep(target, sampler.next(), f.batch, f.seqLen, {
      lr: learningRate(step, schedule),
      weightDecay: 0,
      clip: 0.5,
      noise: f.noise,
      noiseSeed: f.seed * 1_000_003 + step,
    });
    last = r;
    return r;
  });
  head.save(f.out, { dtype: f.dtype, metadata: { trainer: 'specdec train-eagle', base_model: relativeBase(f.out, f.model) } });
  process.stderr.write(
    `train-eagle: wrote ${f.out} (${f.layers} layer${f.layers === 1 ? '' : 's'}; last batch feature loss ${last.vLoss.toFixed(4)},` +
      ` token loss ${last.pLoss.toFixed(4)}, top-1 agreement with the model ${last.accuracy.toFixed(3)})\n`,
  );
  return 0;
}
