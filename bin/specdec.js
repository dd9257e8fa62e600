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

// process.exit() right after a large write to a pipe drops what is still queued (stdout to a pipe
// is asynchronous): exit only once both streams have handed everything to the OS. A write's
// callback runs after every write queued before it.
function exitAfterFlush(code) {
  process.exitCode = code;
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

// A reader that goes away (`specdec generate ... | head`) is not an error of ours: stop quietly.
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

cli.main(process.argv.slice(2)).then(exitAfterFlush, (e) => {
  cli.reportError(e);
  exitAfterFlush(1);
});
