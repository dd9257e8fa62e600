// A synthetic English-like corpus of short children's stories, generated procedurally from a
// small probabilistic grammar (written for this project: the text is ours, MIT licensed).
//
// The structure is varied but highly predictable (fixed story arc, repeated phrases, the hero's
// name and pronoun carried through the story), which is where speculative decoding shines: a
// small draft model, Medusa heads and n-gram lookups all guess the continuation well.
//
// Words are emitted directly (punctuation as separate words), so the token stream needs no
// tokenizer pass; lib/train/tokenizer_builder.ts builds the matching word-level tokenizer.json.

/** Special tokens, in id order. */
export const SPECIAL_TOKENS = ['<unk>', '<s>', '</s>'] as const;
export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;

/** Deterministic PRNG (mulberry32) so a seed always gives the same corpus. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Hero {
  readonly name: string;
  readonly he: string;
  readonly his: string;
  readonly him: string;
}

const GIRLS = ['lily', 'sue', 'mia', 'anna', 'lucy', 'emma', 'zoe', 'kim', 'ella', 'rose', 'amy', 'nina'];
const BOYS = ['tom', 'max', 'ben', 'sam', 'jack', 'tim', 'leo', 'dan', 'bob', 'joe', 'finn', 'nick'];
const ANIMALS = ['cat', 'dog', 'bird', 'fish', 'rabbit', 'mouse', 'bear', 'fox', 'frog', 'duck', 'horse', 'cow', 'pig', 'sheep', 'lion', 'owl', 'turtle', 'bee', 'puppy', 'kitten', 'goat', 'monkey'];
const PEOPLE = ['girl', 'boy', 'man', 'woman', 'king', 'queen', 'farmer', 'baker'];
const SIZES = ['little', 'big', 'small', 'tiny', 'old', 'young'];
const COLORS = ['red', 'blue', 'green', 'yellow', 'white', 'black', 'brown', 'pink', 'orange', 'purple', 'gray'];
const HOMES = ['house', 'tree', 'hole', 'nest', 'barn', 'box', 'cave', 'hut'];
const PLACES = ['park', 'forest', 'river', 'lake', 'garden', 'beach', 'hill', 'town', 'school', 'shop', 'field', 'pond', 'sea', 'mountain', 'farm', 'zoo', 'market', 'library', 'village', 'castle'];
const ACTIVITIES = [
  'play', 'run', 'jump', 'sing', 'dance', 'swim', 'read books', 'draw pictures', 'climb trees', 'fly a kite', 'play ball',
  'eat apples', 'build towers', 'look at the stars', 'help mom', 'bake cakes', 'pick flowers', 'ride a bike', 'play games', 'tell stories',
];
const PURPOSES = [
  'find food', 'play with friends', 'look for shells', 'pick flowers', 'see the ducks', 'buy some bread', 'find a friend', 'look for treasure',
  'play in the sun', 'fly a kite', 'see the big tree', 'catch a fish', 'get some water', 'visit grandma',
];
const OBJECTS = ['ball', 'kite', 'box', 'hat', 'cake', 'book', 'flower', 'apple', 'stone', 'shell', 'key', 'toy', 'boat', 'car', 'bike', 'star', 'cup', 'bell', 'ring', 'drum', 'egg', 'map', 'coin', 'bag'];
const ADJECTIVES = ['shiny', 'pretty', 'strange', 'soft', 'heavy', 'funny', 'bright', 'round', 'shiny', 'beautiful', 'dirty', 'broken', 'magic', 'new', 'old', 'big', 'little'];
const LOCATIONS = ['under a tree', 'near the water', 'in the grass', 'on a rock', 'behind a bush', 'by the road', 'in the sand', 'on the ground', 'next to a flower', 'in a hole'];
const FEELINGS_GOOD = ['happy', 'excited', 'glad', 'proud', 'surprised', 'curious'];
const FEELINGS_BAD = ['sad', 'scared', 'tired', 'angry', 'worried', 'lonely'];
const PROBLEMS = ['too high', 'too heavy', 'too far', 'stuck', 'too big', 'too small'];
const TOGETHER = [
  'played with the {obj} all day', 'took the {obj} home', 'shared the {obj}', 'laughed and played', 'had a big picnic',
  'sang a happy song', 'ran to the {place}', 'built a tower of stones', 'danced in the sun', 'ate some cake',
];
const ENDINGS = [
  'went to sleep', 'told mom about the day', 'ate a big dinner', 'smiled', 'hugged {his} mom', 'dreamed about the {obj}',
  'said good night', 'read a book in bed',
];
const MORALS = [
  'it is good to share', 'friends help each other', 'it is good to be kind', 'you should never give up', 'it is fun to try new things',
  'it is good to say thank you', 'you should always be careful',
];

/** Every word the grammar can emit (besides the special tokens), for the tokenizer's vocabulary. */
export function corpusWords(): string[] {
  const texts = [
    ...GIRLS, ...BOYS, ...ANIMALS, ...PEOPLE, ...SIZES, ...COLORS, ...HOMES, ...PLACES, ...ACTIVITIES, ...PURPOSES, ...OBJECTS,
    ...ADJECTIVES, ...LOCATIONS, ...FEELINGS_GOOD, ...FEELINGS_BAD, ...PROBLEMS, ...TOGETHER, ...ENDINGS, ...MORALS,
    ...TEMPLATE_WORDS,
  ];
  const words = new Set<string>();
  for (const t of texts) for (const w of t.split(' ')) if (w.length > 0 && !w.startsWith('{')) words.add(w);
  return [...words].sort();
}

// The fixed words of the sentence templates below (kept in sync by the test that checks every
// generated word is in the vocabulary).
const TEMPLATE_WORDS = [
  'once upon a time , there was named . lived in with mom and dad every day liked to one day went the on way saw',
  'it was very wanted but then friend came help together they at end of home after that all were said thank you',
  '! look what i found can we play asked yes of course so when got back , know is good he she his her him . ? too',
  'and so that learned lesson this story big small who loved morning sunny birds singing',
];

/** Options of a corpus. */
export interface CorpusOptions {
  readonly seed: number;
  /** Stop after at least this many tokens (whole stories). */
  readonly tokens: number;
}

/** One story as words (starting with <s>, ending with </s>). */
export function story(rand: () => number): string[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const girl = rand() < 0.5;
  const name = pick(girl ? GIRLS : BOYS);
  const hero: Hero = girl ? { name, he: 'she', his: 'her', him: 'her' } : { name, he: 'he', his: 'his', him: 'him' };
  const animal = rand() < 0.6;
  const kind = animal ? pick(ANIMALS) : pick(PEOPLE.filter((p) => (girl ? !['boy', 'man', 'king'].includes(p) : !['girl', 'woman', 'queen'].includes(p))));
  const friendGirl = rand() < 0.5;
  let friend = pick(friendGirl ? GIRLS : BOYS);
  while (friend === name) friend = pick(friendGirl ? GIRLS : BOYS);
  const friendKind = pick(ANIMALS);
  const obj = pick(OBJECTS);
  const objAdj = pick(ADJECTIVES);
  const color = pick(COLORS);
  const place = pick(PLACES);
  const fill = (s: string): string => s.replace('{obj}', obj).replace('{place}', place).replace('{his}', hero.his);

  const s: string[] = [];
  const say = (text: string): void => {
    for (const w of text.split(' ')) if (w.length > 0) s.push(w);
  };
  say('<s>');
  // Introduction.
  const size = pick(SIZES);
  say(rand() < 0.5 ? `once upon a time , there was a ${size} ${kind} named ${name} .` : `there was a ${size} ${color} ${kind} named ${name} .`);
  if (rand() < 0.7) say(`${name} lived in a ${pick(HOMES)} ${rand() < 0.5 ? 'with mom and dad' : `near the ${pick(PLACES)}`} .`);
  say(`every day , ${hero.he} liked to ${pick(ACTIVITIES)} .`);
  if (rand() < 0.4) say(`${hero.he} loved to ${pick(ACTIVITIES)} too .`);
  // The event.
  if (rand() < 0.5) say(`it was a sunny morning and the birds were singing .`);
  say(`one day , ${name} went to the ${place} to ${pick(PURPOSES)} .`);
  say(`on the way , ${hero.he} saw a ${objAdj} ${obj} ${pick(LOCATIONS)} .`);
  say(`${name} was very ${pick(FEELINGS_GOOD)} .`);
  if (rand() < 0.5) say(`${hero.he} said , look what i found !`);
  // The problem and the friend.
  if (rand() < 0.7) {
    say(`${hero.he} wanted to get the ${obj} , but it was ${pick(PROBLEMS)} .`);
    say(`${name} was ${pick(FEELINGS_BAD)} .`);
    say(`then ${hero.his} friend ${friend} the ${friendKind} came to help .`);
    say(`${friend} said , can we play with the ${obj} ?`);
    say(`${name} said , yes of course !`);
  } else {
    say(`then ${hero.his} friend ${friend} the ${friendKind} came .`);
    say(`${friend} asked , can we play ?`);
    say(`${name} said , yes !`);
  }
  say(`together they ${fill(pick(TOGETHER))} .`);
  if (rand() < 0.5) say(`they were very ${pick(FEELINGS_GOOD)} .`);
  if (rand() < 0.5) say(`${name} said thank you to ${friend} .`);
  // The end.
  say(`at the end of the day , ${name} went home and ${fill(pick(ENDINGS))} .`);
  if (rand() < 0.5) say(`${name} learned that ${pick(MORALS)} .`);
  say('the end . </s>');
  return s;
}

/** Stories as one stream of words until at least `tokens` words. */
export function corpusWordsStream(opts: CorpusOptions): string[] {
  const rand = seededRandom(opts.seed);
  const out: string[] = [];
  while (out.length < opts.tokens) for (const w of story(rand)) out.push(w);
  return out;
}

/** The corpus as token ids under `vocab` (word -> id); words outside it become <unk>. */
export function generateCorpus(opts: CorpusOptions, vocab: ReadonlyMap<string, number>): Int32Array {
  const rand = seededRandom(opts.seed);
  const ids: number[] = [];
  while (ids.length < opts.tokens) for (const w of story(rand)) ids.push(vocab.get(w) ?? UNK_ID);
  return Int32Array.from(ids);
}

/** A story as text (for samples and docs). */
export function storyText(seed: number): string {
  return story(seededRandom(seed))
    .filter((w) => w !== '<s>' && w !== '</s>')
    .join(' ');
}
