// Where the embedded default model family (models/default, trained by scripts/train-default.js)
// lies inside the installed package, so programs need no path relative to the repository.
import * as path from 'path';
import { packageRoot } from './native';

export interface DefaultModelPaths {
  /** The target model directory (config.json, model.safetensors, tokenizer.json). */
  readonly target: string;
  /** A 1-layer draft model with the target's tokenizer. */
  readonly draft: string;
  /** Medusa heads for the target (FasterDecoding layout). */
  readonly medusa: string;
  /** An EAGLE-1/2 head for the target (SafeAILab layout). */
  readonly eagle: string;
  /** An EAGLE-3 head for the target (SafeAILab layout, a draft vocabulary of the corpus's 256 most frequent tokens). */
  readonly eagle3: string;
}

/** Absolute paths of the embedded default family: `LlamaModel.load(defaultModelPaths().target)`. */
export function defaultModelPaths(): DefaultModelPaths {
  const dir = path.join(packageRoot, 'models', 'default');
  return { target: path.join(dir, 'target'), draft: path.join(dir, 'draft'), medusa: path.join(dir, 'medusa'), eagle: path.join(dir, 'eagle'), eagle3: path.join(dir, 'eagle3') };
}
