// Mocha root hooks (.mocharc.json `require`): a failed test names the seed of the run's fresh random
// inputs, so that the failure can be replayed with SPECDEC_TEST_SEED.
import { testSeed } from './helpers';

export const mochaHooks = {
  afterEach(this: Mocha.Context): void {
    if (this.currentTest?.state === 'failed') console.log(`      replay: SPECDEC_TEST_SEED=${testSeed}`);
  },
};
