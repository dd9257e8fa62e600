// `specdec train-eagle --model DIR --data FILE --out DIR`: an EAGLE head for a checkpoint, on the
// project's trainer (cpp/train); the base model is frozen. EAGLE-1/2 (default): row j of a window
// reads token t[j + 1] with the base model's final hidden state f[j] and learns f[j + 1] (SmoothL1)
// and the base model's next distribution (cross-entropy through its LM head), with uniform noise on
// the input features. EAGLE-3 (--version 3): three of the base model's residual streams in, its own
// LM head over the data's most frequent tokens, trained by training-time test (each unrolled step
// reads the previous step's output, as drafting does). Written in SafeAILab's layouts (config.json +
// model.safetensors), ready for --eagle DIR.
import { BatchSampler, defaultAuxLayers, Eagle3Trainer, EagleTrainer, frequentIds, learningRate, LlamaTrainer } from '../train/trainer';
import { codedError } from '../errors';
import { intFlag, parseTrainFlags, prepareTraining, relativeBase, trainLoop, trainSchedule, type TrainFlags } from './train_common';

export const TRAIN_EAGLE_USAGE = `usage: specdec train-eagle --model DIR --data FILE --out DIR [options]

Trains an EAGLE head on a frozen Llama-family checkpoint (f32 on the CPU) and writes it in
SafeAILab's layout (config.json + model.safetensors), ready for --eagle DIR. The head has the base
model's layer sizes. EAGLE-1/2 (default): its loss is SmoothL1 on the next feature plus 0.1 x
cross-entropy against the base model's next-token distribution. EAGLE-3 (--version 3): fc over
three residual streams of the base model, one layer, its own LM head over a draft vocabulary;
trained by training-time test, the cross-entropy of each unrolled step weighted 0.8^step.

  --model DIR         the base model (config.json, model.safetensors, tokenizer.json)
  --data FILE         training text (UTF-8; one document per line), or a JSON array of token-id arrays
  --out DIR           output directory
  --layers L          decoder layers in the head (default 1)
  --steps S           optimizer steps (default 300)
  --batch B           sequences per step (default 8)
  --seq-len T         rows per sequence (default 64; T + 1 must fit the model's context)
  --lr X              peak learning rate (default 3e-3; warmup, then cosine decay to lr/20)
  --noise X           uniform noise of width X on the input features (default 0.2; EAGLE-1/2)
  --version V         1 (EAGLE-1/2, default) or 3 (EAGLE-3)
  --draft-vocab N     EAGLE-3: the N most frequent tokens of the data are draftable (default
                      min(vocabulary, 32000))
  --aux-layers A,B,C  EAGLE-3: the base model layers whose inputs are the features (default 2, L/2,
                      L-3 as SafeAILab's; the last three for models of fewer than 7 layers)
  --ttt-steps K       EAGLE-3: unrolled steps of training-time test (default 7)
  --self-distill      train on the model's own greedy continuations of the data's lines
  --seed S            initialisation, noise and batch-sampling seed (default 0)
  --threads N         trainer threads (default 2)
  --dtype D           bf16 or f32 weights on disk (default bf16)
  -h, --help          this help`;

export interface TrainEagleFlags extends TrainFlags {
  readonly noise: number;
  readonly version: 1 | 3;
  readonly draftVocab: number | undefined;
  readonly auxLayers: [number, number, number] | undefined;
  readonly tttSteps: number;
}

export function parseTrainEagleFlags(argv: readonly string[]): TrainEagleFlags {
  const { flags, values } = parseTrainFlags(argv, 'train-eagle', ['--noise', '--version', '--draft-vocab', '--aux-layers', '--ttt-steps'], { lr: 3e-3 });
  const text = values.get('--noise');
  const noise = text === undefined ? 0.2 : Number(text);
  if (!(noise >= 0 && noise < 100)) throw codedError('E_ARG', `--noise: expected a number in [0, 100), got '${text}'`);
  const v = values.get('--version') ?? '1';
  if (v !== '1' && v !== '2' && v !== '3') throw codedError('E_ARG', `--version: expected 1 (EAGLE-1/2) or 3 (EAGLE-3), got '${v}'`);
  const version = v === '3' ? 3 : 1;
  if (version === 1) {
    for (const flag of ['--draft-vocab', '--aux-layers', '--ttt-steps']) if (values.has(flag)) throw codedError('E_ARG', `${flag} is an EAGLE-3 flag: add --version 3`);
  } else {
    if (values.has('--noise')) throw codedError('E_ARG', '--noise: EAGLE-3 trains without feature noise (training-time test feeds the head its own outputs)');
    if (values.has('--layers') && flags.layers !== 1) throw codedError('E_ARG', `--layers ${flags.layers}: an EAGLE-3 head has one layer`);
  }
  let auxLayers: [number, number, number] | undefined;
  const aux = values.get('--aux-layers');
  if (aux !== undefined) {
    const ids = aux.split(',').map((x) => (/^\d+$/.test(x.trim()) ? Number(x) : NaN));
    if (ids.length !== 3 || ids.some((x) => !Number.isSafeInteger(x)) || !((ids[0] as number) < (ids[1] as number) && (ids[1] as number) < (ids[2] as number))) {
      throw codedError('E_ARG', `--aux-layers: expected three ascending layer indices (e.g. 2,16,29), got '${aux}'`);
    }
    auxLayers = ids as [number, number, number];
  }
  const dv = values.get('--draft-vocab');
  return {
    ...flags,
    noise,
    version,
    draftVocab: dv === undefined ? undefined : intFlag('--draft-vocab', dv, 0, 1),
    auxLayers,
    tttSteps: intFlag('--ttt-steps', values.get('--ttt-steps'), 7, 1),
  };
}

export async function trainEagleCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(TRAIN_EAGLE_USAGE + '\n');
    return 0;
  }
  const f = parseTrainEagleFlags(argv);
  const { config, stream } = await prepareTraining(f, { positions: f.seqLen + 1, positionsText: 'seq-len + 1', forwardTokens: f.seqLen + 1 });
  using target = LlamaTrainer.fromCheckpoint(f.model, config, { seed: f.seed, threads: f.threads });
  if (f.version === 3) return await trainEagle3(f, config, stream, target); // awaited: `using` disposes the target on return
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

/** train-eagle --version 3: an EAGLE-3 head by training-time test. */
async function trainEagle3(f: TrainEagleFlags, config: Parameters<typeof LlamaTrainer.fromCheckpoint>[1], stream: Int32Array, target: LlamaTrainer): Promise<number> {
  const L = config.numLayers;
  const aux = f.auxLayers ?? defaultAuxLayers(L);
  if (aux[2] >= L) throw codedError('E_ARG', `--aux-layers ${aux.join(',')}: the model has ${L} layers (indices 0..${L - 1})`);
  const nDraft = f.draftVocab ?? Math.min(config.vocabSize, 32000);
  if (nDraft > config.vocabSize) throw codedError('E_ARG', `--draft-vocab ${nDraft}: the model's vocabulary has ${config.vocabSize} tokens`);
  // SafeAILab's draft vocabulary: the data's most frequent tokens (then sorted by id).
  const draftIds = frequentIds(stream, config.vocabSize, nDraft);
  using head = Eagle3Trainer.create(Eagle3Trainer.configFor(config, draftIds, aux), { seed: f.seed, threads: f.threads });
  const sampler = new BatchSampler(stream, f.seqLen + 1, f.batch, f.seed + 1);
  const schedule = trainSchedule(f);
  let last: number[] = [];
  await trainLoop('train-eagle', f, f.seqLen, async (step) => {
    const r = await head.trainStep(target, sampler.next(), f.batch, f.seqLen, { lr: learningRate(step, schedule), weightDecay: 0, clip: 0.5, steps: f.tttSteps });
    last = r.stepAccuracy;
    return r;
  });
  head.save(f.out, { dtype: f.dtype, metadata: { trainer: 'specdec train-eagle --version 3', base_model: relativeBase(f.out, f.model) } });
  process.stderr.write(
    `train-eagle: wrote ${f.out} (EAGLE-3, features of layers ${aux.join(', ')}, ${nDraft} draftable tokens; last batch top-1 agreement with the model by step ${last.map((a) => a.toFixed(2)).join(' ')})\n`,
  );
  return 0;
}
