#!/usr/bin/env node
// Lists the CUDA code embedded in a binary by reading its fatbin containers:
// kind 'sass' (machine code, cubin) or 'ptx', per architecture. Usage: cuda-archs.js FILE [--json]
'use strict';
const fs = require('fs');

const MAGIC = Buffer.from([0x50, 0xed, 0x55, 0xba]);  // 0xBA55ED50, little endian

function cudaArchs(file) {
  const b = fs.readFileSync(file);
  const found = new Set();
  for (let i = b.indexOf(MAGIC); i >= 0; i = b.indexOf(MAGIC, i + 4)) {
    if (i + 16 > b.length) break;
    const headerSize = b.readUInt16LE(i + 6);
    const fatSize = Number(b.readBigUInt64LE(i + 8));
    let p = i + headerSize;
    const end = Math.min(p + fatSize, b.length);
    while (p + 32 <= end) {
      const kind = b.readUInt16LE(p);            // 1 = PTX, 2 = ELF (SASS)
      const entryHeader = b.readUInt32LE(p + 4);
      const size = Number(b.readBigUInt64LE(p + 8));
      const arch = b.readUInt32LE(p + 28);
      if ((kind === 1 || kind === 2) && arch > 0 && arch < 1000) found.add(`${kind === 2 ? 'sm' : 'compute'}_${arch}`);
      if (entryHeader === 0) break;
      p += entryHeader + size;
    }
  }
  return [...found].sort();
}

if (require.main === module) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: cuda-archs.js FILE\n');
    process.exit(2);
  }
  process.stdout.write(cudaArchs(file).join('\n') + '\n');
}
module.exports = { cudaArchs };
