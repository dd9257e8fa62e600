#!/usr/bin/env node
'use strict';
// The CLI lives in the compiled TypeScript (dist/). See lib/cli/main.ts.
let cli;
try {
  cli = require('../dist/lib/cli/main.js');
} catch (e) {
  process.stderr.write(`specdec: cannot load the compiled CLI (${e.message.split('\n')[0]}); run 'npm run build:ts'\n`);
  process.exit(1);
}
cli.main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    cli.reportError(e);
    process.exit(1);
  },
);
