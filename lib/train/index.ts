// The project's own trainer: corpus, tokenizer builder, training driver, default-family recipe.
export * from './corpus';
export * from './tokenizer_builder';
export * from './trainer';
export * from './default_family';
export * from './self_distill';
