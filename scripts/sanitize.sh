#!/usr/bin/env bash
# The test suite against an addon built with AddressSanitizer + UndefinedBehaviorSanitizer: the N-API
# glue, the CPU kernels (each SIMD path the tests force), the model runner, the KV cache and the
# engine, exercised end to end by the same tests `npm test` runs. The fuzz targets (fuzz/) and the
# CUDA kernels' host emulation (test/emu) are sanitized on their own; this covers what they do not
# reach. CPU backend only. Not part of `npm test` (the sanitized build takes ~5 min on 2 cores).
#
#   bash scripts/sanitize.sh [mocha args...]      e.g. bash scripts/sanitize.sh --grep EAGLE
#
# Builds into build-asan/ (kept, rebuilt incrementally), then runs mocha with the addon from there
# (SPECDEC_BINARY) and the sanitizer runtime preloaded into node (node itself is not instrumented).
# UB aborts the process (-fno-sanitize-recover), so a report fails the run rather than scrolling by.
# Leak detection is off: V8 and Node keep allocations alive until exit by design.
# Left out: test/cuda_emu.test.ts and test/fuzz_replay.test.ts (their programs are sanitized builds
# already) and test/package_tarball.test.ts (runs npm). SPECDEC_TEST_SEED works as with npm test.
set -euo pipefail
cd "$(dirname "$0")/.."

cxx=${CXX:-c++}
asan=$("$cxx" -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "sanitize: $cxx has no AddressSanitizer runtime (libasan.so); install gcc's libasan (Debian: libgcc-12-dev)" >&2; exit 2; }
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g1"

echo "== building the sanitized addon into build-asan/ (CPU backend; log: build-asan/build.log)" >&2
mkdir -p build-asan
node node_modules/cmake-js/bin/cmake-js build --out build-asan --parallel "$(nproc)" --CDSPECDEC_CUDA=OFF \
  --CDCMAKE_CXX_FLAGS="$flags" --CDCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >build-asan/build.log 2>&1 ||
  { tail -30 build-asan/build.log >&2; echo "sanitize: the build failed (build-asan/build.log)" >&2; exit 2; }
npx tsc -p tsconfig.json

# A config of its own: files named on the command line would be added to .mocharc.json's glob.
node -e 'const fs = require("fs");
  const spec = fs.readdirSync("dist/test").filter((f) => f.endsWith(".test.js") && !/cuda_emu|fuzz_replay|package_tarball/.test(f)).map((f) => "dist/test/" + f);
  fs.writeFileSync("build-asan/mocharc.json", JSON.stringify({ spec, timeout: 1800000, reporter: "spec", require: ["dist/test/root_hooks.js"] }));
  console.error(`== mocha on ${spec.length} files with build-asan/Release/specdec.node`);'
SPECDEC_BINARY=$PWD/build-asan/Release/specdec.node LD_PRELOAD=$asan \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  npx mocha --config build-asan/mocharc.json "$@"
