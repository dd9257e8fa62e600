#!/usr/bin/env bash
# The GPU session's one command (issue 9): the whole test suite with CUDA mandatory, the benchmarks on
# CUDA (plus the matmul bench on the CUDA-core path for comparison), agreement with Hugging Face
# transformers on checkpoints transformers made, and tokens/s side by side with transformers' own
# generate() and assisted generation. Every step is time-boxed, so a hang costs its box, not the lease.
#
#   here, on the CPU machine (after the full CUDA build and tsc):  bash scripts/gpu-check.sh --pack
#       packs the node binary, dist/, build/Release/specdec.node and the runtime node_modules into
#       .device/ (git-ignored; carry it), and prints its size against the 64 MiB limit.
#   there, on the GPU machine, from the repo root:                 bash scripts/gpu-check.sh "$OUT"
#       unpacks .device/ when needed, runs the steps, and leaves in the folder given ($1, else $OUT):
#       summary.txt (each step's status and the lines that matter), mocha.log, results.tar (every
#       results JSON, rewritten after each step), hf_agreement.json, hf_throughput.json, logs.tar.gz
#       (every log, specdec info, nvidia-smi, the reference.json files): 6 files (a call brings back 8).
# The suite leaves out test/cuda_emu.test.ts (the kernels' host emulation: CPU only, run by CI) and
# test/package_tarball.test.ts (needs npm; CI runs it), and runs its files in parallel (SUITE_JOBS=6).
# STEPS names the step groups in the order to run them (default "suite bench hf graphs"; also matmul,
# the tensor-core matmul bench alone, suitegraphs, the suite with SPECDEC_CUDA_GRAPHS=1, attn, the
# tensor-core attention tests and the attention bench with both kernels, and extras, the opt-in paths' runs). With a lease running out,
# order them by value and set DEADLINE_S (seconds from the start): later boxes shrink to fit it.
# Time boxes (seconds; override by environment): T_SUITE=210, T_BENCH_EACH=40 per bench or T_BENCH_<name> (BENCHES=
# "attention verify sampling plain_decode speculative eagle": EAGLE-1/2 and EAGLE-3 heads on CUDA, last), T_SIMT=40 T_ATTN_TC=45 T_ATTN_BENCH=45 (x2) T_ATTN_TC_BENCH=45 T_TORCH_REF=60
# T_SAMPLING_BLOCK=40, T_HF=80 (HF_REPS=2) T_AGREE=140 (eleven fixtures on two devices), T_GRAPHS=60 T_GRAPHS_BENCH=50 (x2), and
# T_PROFILE=50, T_FIXTURES=300 in the background (eleven fixtures; four took 111 s on the H200 host). Worst case over one call's 10 minutes: split it into two calls.
# Exit 0 when every step passed, 1 otherwise, 2 when the machine is not prepared.
set -uo pipefail
cd "$(dirname "$0")/.."

pack() {
  set -e
  command -v node >/dev/null || { echo "gpu-check --pack: node not found" >&2; return 2; }
  node -e 'const j = JSON.parse(require("child_process").execFileSync(process.execPath, ["bin/specdec.js", "info", "--json"]));
    if (!j.backends.compiled.includes("cuda")) { console.error("gpu-check --pack: build/Release/specdec.node has no CUDA backend: run npm run build:native (with nvcc) first"); process.exit(2); }'
  echo "compiling TypeScript (dist/)..." >&2
  npx tsc -p tsconfig.json
  mkdir -p .device
  local node_bin
  node_bin=$(readlink -f "$(command -v node)")
  if [ ! -s .device/node.xz ] || [ "$node_bin" -nt .device/node.xz ]; then
    echo "compressing $(node --version) (about a minute)..." >&2
    strip -o .device/node.tmp "$node_bin" 2>/dev/null || cp "$node_bin" .device/node.tmp
    xz -T2 -6 -c .device/node.tmp > .device/node.xz
    rm -f .device/node.tmp
  fi
  # The compiler, type packages and the build tools are not needed to run tests and benches.
  local mods
  mods=$(cd node_modules && ls -A | grep -vxE 'typescript|@types|cmake-js|node-addon-api|\.bin|\.package-lock\.json' | sed 's|^|node_modules/|')
  # shellcheck disable=SC2086
  # The device's copy of the tree may have no git: the commit travels in the payload.
  echo "$(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' +uncommitted changes')" > .device/commit.txt
  tar -cf - dist build/Release/specdec.node $mods | xz -T2 -6 > .device/payload.tar.xz
  local tracked
  tracked=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | awk '{print $1}')
  du -k .device/node.xz .device/payload.tar.xz | awk -v t="$tracked" '{s += $1; printf "  %-26s %6.1f MiB\n", $2, $1 / 1024}
    END {printf "  %-26s %6.1f MiB\n  %-26s %6.1f MiB (limit 64)\n", "tracked files", t / 1024, "total", (s + t) / 1024}'
  echo "carry .device; on the GPU machine: bash scripts/gpu-check.sh \"\$OUT\"" >&2
}

if [ "${1:-}" = "--pack" ]; then
  pack
  exit $?
fi

out=${1:-${OUT:-}}
[ -n "$out" ] || { echo "usage: bash scripts/gpu-check.sh OUTDIR (default \$OUT) | --pack" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=${SPECDEC_GPU_WORK:-/tmp/specdec-gpu-check}
rm -rf "$work" && mkdir -p "$work/logs" "$work/results"
logs=$work/logs
res=$work/results
summary=$out/summary.txt
: > "$summary"
t_start=$(date +%s)
failures=0
say() { printf '%s\n' "$*" | tee -a "$summary"; }
want() { [[ " ${STEPS:-suite bench hf graphs} " == *" $1 "* ]]; }

# step NAME LIMIT CMD...: CMD under `timeout`, its output in logs/NAME.log, one line in the summary.
step() {
  local name=$1 limit=$2 t0 rc dt status
  shift 2
  t0=$(date +%s)
  # DEADLINE_S (seconds from the start; default none): a box is cut to what is left of it, less 20 s
  # for the wrap-up, so the summary and logs come back even when the lease would end first.
  if [ -n "${DEADLINE_S:-}" ]; then
    local left=$(( t_start + DEADLINE_S - 20 - t0 ))
    if [ "$left" -lt 5 ]; then say "$(printf 'step %-11s SKIPPED         (DEADLINE_S=%d reached)' "$name" "$DEADLINE_S")"; failures=$((failures + 1)); return 1; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  timeout -k 10 "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in 0) status=ok ;; 124 | 137) status="TIMED OUT" ;; *) status="FAILED (rc $rc)" ;; esac
  [ "$rc" -eq 0 ] || failures=$((failures + 1))
  say "$(printf 'step %-11s %-15s %4d s (box %d s)' "$name" "$status" "$dt" "$limit")"
  return "$rc"
}

# ---- the carried payload and node ---------------------------------------------------------------
untar() {
  if command -v xz >/dev/null 2>&1; then tar -xJf "$1"
  else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(".")' "$1"
  fi
}
# Always unpacked: build outputs left on the machine by an earlier call may be stale.
if [ -f .device/payload.tar.xz ]; then untar .device/payload.tar.xz; fi
if ! command -v node >/dev/null 2>&1; then
  nodedir=/tmp/specdec-node/bin
  if [ ! -x "$nodedir/node" ] && [ -f .device/node.xz ]; then
    mkdir -p "$nodedir"
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .device/node.xz "$nodedir/node"
    chmod +x "$nodedir/node"
  fi
  export PATH="$nodedir:$PATH"
fi
for f in dist/bench/run.js dist/bench/hf_agreement.js node_modules/mocha/bin/mocha.js build/Release/specdec.node; do
  command -v node >/dev/null 2>&1 && [ -e "$f" ] && continue
  say "not prepared: $( command -v node >/dev/null 2>&1 || echo 'no node; ')$f missing. On the CPU machine: bash scripts/gpu-check.sh --pack, then carry .device"
  exit 2
done

# ---- what ran where ---------------------------------------------------------------------------------
say "specdec gpu-check  $(date -u +%FT%TZ)  commit $(cat .device/commit.txt 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
  nvidia-smi -q > "$logs/nvidia-smi-q.txt" 2>&1
  say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader 2>&1 | head -1)"
else
  echo "nvidia-smi not found" > "$logs/nvidia-smi.txt"
  say "gpu: none found (no nvidia-smi)"
fi
say "driver's CUDA: $(grep -o 'CUDA Version: [0-9.]*' "$logs/nvidia-smi.txt" | head -1)   nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none)"
say "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo), $(uname -r)"
say "node $(node --version)   $(python3 -c 'import platform, torch, transformers; print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}")' 2>&1 | tail -1)"
node bin/specdec.js info --json > "$res/specdec-info.json" 2> "$logs/specdec-info.err"
say "specdec: $(node -e 'const j = require(process.argv[1]); console.log(`compiled ${j.backends.compiled}, usable ${j.backends.available}, CUDA runtime ${j.cuda.runtimeVersion}, driver API ${j.cuda.driverVersion}, archs ${j.cuda.architectures}, gpus ${JSON.stringify(j.cuda.gpus)}${j.cuda.notUsedBecause ? `, CUDA NOT USED: ${j.cuda.notUsedBecause}` : ""}`)' "$res/specdec-info.json" 2>&1)"

# ---- the step groups, run in the order STEPS names them ------------------------------------------------
# The fixtures need no timing, so they are made in the background from the start, sharing the GPU with
# the suite; the timed steps run alone.
fixtures_t0=$(date +%s)
fixtures_pid=
if want hf; then
  (
    timeout -k 10 "${T_FIXTURES:-300}" env PYTHONUNBUFFERED=1 python3 scripts/hf_fixtures.py agreement "$work/fixtures" > "$logs/hf-fixtures.log" 2>&1
    echo "$? $(date +%s)" > "$work/fixtures.done"
  ) &
  fixtures_pid=$!
fi

# The suite once more with CUDA graphs on (issue 11: graphs become the default once this is green).
run_suitegraphs() {
  SUITE_NAME=suite-graphs SUITE_ENV=SPECDEC_CUDA_GRAPHS=1 run_suite
}

run_suite() {
  # The host emulation of the kernels (8 sanitizer builds; minutes of CPU, no GPU) runs in CI, not on
  # the lease, and so does the tarball test (it needs npm, which the GPU machine lacks): SUITE_IGNORE=''
  # brings them back.
  local ignore=() par=() counts
  for f in ${SUITE_IGNORE-dist/test/cuda_emu.test.js dist/test/package_tarball.test.js}; do ignore+=(--ignore "$f"); done
  # In parallel files (SUITE_JOBS, default 6; 1 = serially): the GPU machine has 16 cores, and the
  # serial suite took 134 s of the first run's lease.
  [ "${SUITE_JOBS:-6}" -gt 1 ] && par=(--parallel --jobs "${SUITE_JOBS:-6}")
  local name=${SUITE_NAME:-suite}
  step "$name" "${T_SUITE:-210}" env SPECDEC_REQUIRE_CUDA=1 ${SUITE_ENV:-} node node_modules/mocha/bin/mocha.js "${par[@]}" "${ignore[@]}"
  cp "$logs/$name.log" "$out/mocha$([ "$name" = suite ] || echo "-$name").log"
  counts=$(grep -E '^ +[0-9]+ (passing|failing|pending)' "$logs/$name.log" | sed 's/ *(.*//; s/^ *//' | paste -sd, -)
  say "     $name: ${counts:-no mocha summary line (see the mocha log)}"
  grep -qE '^ +[0-9]+ pending' "$logs/$name.log" && say "     $name: pending tests (with SPECDEC_REQUIRE_CUDA=1 no [cuda] suite may skip; the no-GPU checks may): $(grep -E '^ +- ' "$logs/$name.log" | sed 's/^ *- //' | paste -sd '|' -)"
  grep -E '^ +[0-9]+\) ' "$logs/$name.log" | head -20 | sed 's/^/     failing: /' | tee -a "$summary"
}

# Every results file so far, as one file in the output folder (a call brings back at most 8 files; the
# third run lost two JSON files to that), rewritten after each step so a cut-off run keeps them.
save_results() { tar -cf "$out/results.tar" -C "$res" . 2>/dev/null; }

# One step per bench, each in its own box with its own results file, saved at once: a bench past its
# box costs only itself (the first run lost four to one 90 s box).
bench_one() {
  # The speculative bench's 9 rounds of every strategy ran past a 35 s box: 3 rounds here.
  # A box per bench: T_BENCH_<name> (e.g. T_BENCH_verify=70: its 20 timings of 512 x 128256 rows
  # ran past 35 s on the H200), else T_BENCH_EACH.
  local box_var="T_BENCH_$1"
  step "bench-$1" "${!box_var:-${T_BENCH_EACH:-40}}" env SPECDEC_BENCH_ROUNDS="${SPECDEC_BENCH_ROUNDS:-3}" node dist/bench/run.js --device cuda --only "$1" --out "$res/bench-$1.json"
  save_results
}
run_matmul() {
  bench_one matmul
  # The same shapes on the warp-loaded tensor-core kernel for every row count (the same bits): the
  # streaming kernel's gain at 1-16 rows, in one lease.
  step matmul-tc-warp "${T_TC_WARP:-40}" env SPECDEC_CUDA_MATMUL=tc-warp node dist/bench/matmul.bench.js --device cuda --out "$res/matmul-tc-warp.json"
  save_results
  local f
  for f in bench-matmul matmul-tc-warp; do
    grep -h -E '^  = .*N=(1|16|64|512):' "$logs/$f.log" 2>/dev/null | head -20 | sed "s/^  = /     $f: /" | tee -a "$summary"
  done
}
run_bench() {
  local b
  for b in ${BENCHES:-attention verify sampling plain_decode speculative eagle}; do bench_one "$b"; done
}
# The opt-in paths against their defaults: CUDA-core matmul, tensor-core attention (its tests, then
# its speed), one block per row for the logits ops.
run_extras() {
  step matmul-simt "${T_SIMT:-40}" env SPECDEC_CUDA_MATMUL=simt node dist/bench/matmul.bench.js --device cuda --out "$res/matmul-simt.json"
  step attention-tc "${T_ATTN_TC:-45}" env SPECDEC_REQUIRE_CUDA=1 SPECDEC_CUDA_ATTENTION=tc node node_modules/mocha/bin/mocha.js --no-config --timeout 120000 dist/test/attention.test.js
  step attn-tc-bench "${T_ATTN_TC_BENCH:-45}" env SPECDEC_CUDA_ATTENTION=tc node dist/bench/attention.bench.js --device cuda --out "$res/attention-tc.json"
  step sampling-block "${T_SAMPLING_BLOCK:-40}" env SPECDEC_CUDA_SLICES=0 node dist/bench/sampling.bench.js --device cuda --out "$res/sampling-block.json"
  save_results
}

# Attention (issue 10): the tensor-core kernels' tests (attention_mma.cuh for bf16 caches with head
# dims 64 / 128, attention_tc.cuh for the rest; SPECDEC_CUDA_ATTENTION=tc), then the attention bench
# with the default CUDA-core kernel and with them (f16 rows, and the bf16 goal shapes: tree 64, decode
# 1, decode batch 32, tree 64 x 8, over 4096 slots).
run_attn() {
  step attention-tc "${T_ATTN_TC:-45}" env SPECDEC_REQUIRE_CUDA=1 SPECDEC_CUDA_ATTENTION=tc node node_modules/mocha/bin/mocha.js --no-config --timeout 120000 dist/test/attention.test.js
  step attn-bench "${T_ATTN_BENCH:-45}" node dist/bench/attention.bench.js --device cuda --out "$res/attention.json"
  # The CUDA-core kernel with its former two K/V buffers (four is the default where two CTAs fit an
  # SM; the same bits): the deeper pipeline's gain, in one lease.
  step attn-bench-2st "${T_ATTN_BENCH:-45}" env SPECDEC_CUDA_ATTENTION_STAGES=2 node dist/bench/attention.bench.js --device cuda --out "$res/attention-2stages.json"
  step attn-tc-bench "${T_ATTN_TC_BENCH:-45}" env SPECDEC_CUDA_ATTENTION=tc node dist/bench/attention.bench.js --device cuda --out "$res/attention-tc.json"
  # PyTorch's eager references for the same goal shapes (SDPA on gathered K/V; the verify bench's
  # batch 32 x chain-8 verification), the issue's ">= 3x PyTorch" comparisons, in the same lease.
  step torch-ref "${T_TORCH_REF:-60}" python3 scripts/torch_reference.py "$res/torch_reference.json"
  save_results
  # Each row as the bench logged it (wall time per call, then the GPU kernels' own time and roofline).
  local f
  for f in attn-bench attn-bench-2st attn-tc-bench; do
    grep -h -E '^  = .*(tree|decode|goal|kvCommit)' "$logs/$f.log" 2>/dev/null | head -12 | sed "s/^  = /     $f: /" | tee -a "$summary"
  done
  grep -h 'torch_reference:' "$logs/torch-ref.log" 2>/dev/null | sed 's/^/     /' | tee -a "$summary"
}

# CUDA graphs (SPECDEC_CUDA_GRAPHS=1, opt-in until this passes): graphs on == graphs off bit for bit
# (and really replayed), then a decode step of the random ~1B bf16 Llama without and with graphs
# (ms/step, device ops and graph launches per forward), with graphs and the warp-loaded matmul, then
# once more with its kernels timed.
run_graphs() {
  step graphs-test "${T_GRAPHS:-60}" env SPECDEC_REQUIRE_CUDA=1 node node_modules/mocha/bin/mocha.js --no-config --timeout 300000 --require dist/test/root_hooks.js dist/test/cuda_graphs.test.js
  step graphs-off "${T_GRAPHS_BENCH:-50}" env SPECDEC_BENCH_PLAIN_MODEL=1b SPECDEC_CUDA_GRAPHS=0 node dist/bench/plain_decode.bench.js --device cuda --out "$res/decode-1b-graphs-off.json"
  step graphs-on "${T_GRAPHS_BENCH:-50}" env SPECDEC_BENCH_PLAIN_MODEL=1b SPECDEC_CUDA_GRAPHS=1 node dist/bench/plain_decode.bench.js --device cuda --out "$res/decode-1b-graphs-on.json"
  # The same with the warp-loaded matmul for every row count (before the streaming kernel; same bits).
  step graphs-on-tc-warp "${T_GRAPHS_BENCH:-50}" env SPECDEC_BENCH_PLAIN_MODEL=1b SPECDEC_CUDA_GRAPHS=1 SPECDEC_CUDA_MATMUL=tc-warp node dist/bench/plain_decode.bench.js --device cuda --out "$res/decode-1b-graphs-on-tc-warp.json"
  # The same decode step with every kernel timed (SPECDEC_CUDA_PROFILE=1, graphs off): where its time goes.
  step profile "${T_PROFILE:-50}" env SPECDEC_BENCH_PLAIN_MODEL=1b SPECDEC_CUDA_GRAPHS=0 SPECDEC_CUDA_PROFILE=1 node dist/bench/plain_decode.bench.js --device cuda --out "$res/decode-1b-profile.json"
  save_results
  grep -h 'batch 1' "$logs/graphs-off.log" "$logs/graphs-on.log" "$logs/graphs-on-tc-warp.log" 2>/dev/null | sed 's/^/     /' | tee -a "$summary"
  grep -h -A13 'profile (batch' "$logs/profile.log" 2>/dev/null | sed 's/^/     /' | tee -a "$summary"
}

# transformers: the fixtures (from the background), its generate() timings, then specdec against both.
run_hf() {
  local rc fixtures_t1 fstatus agree_args=()
  if [ -n "$fixtures_pid" ]; then wait "$fixtures_pid"; fi
  read -r rc fixtures_t1 < "$work/fixtures.done" || { rc=1; fixtures_t1=$(date +%s); }
  case $rc in 0) fstatus=ok ;; 124 | 137) fstatus="TIMED OUT" ;; *) fstatus="FAILED (rc $rc)" ;; esac
  [ "$rc" -eq 0 ] || failures=$((failures + 1))
  say "$(printf 'step %-11s %-15s %4d s (box %d s, in the background)' hf-fixtures "$fstatus" "$((fixtures_t1 - fixtures_t0))" "${T_FIXTURES:-300}")"
  step hf-generate "${T_HF:-80}" env PYTHONUNBUFFERED=1 python3 scripts/hf_fixtures.py throughput "$work/hf" --reps "${HF_REPS:-2}"
  ls "$work"/fixtures/*/reference.json > /dev/null 2>&1 && agree_args+=(--fixtures "$work/fixtures")
  [ -f "$work/hf/hf_throughput.json" ] && agree_args+=(--throughput "$work/hf/hf_throughput.json") && cp "$work/hf/hf_throughput.json" "$res/" && cp "$work/hf/hf_throughput.json" "$out/"
  if [ ${#agree_args[@]} -gt 0 ]; then
    step agreement "${T_AGREE:-140}" node dist/bench/hf_agreement.js "${agree_args[@]}" --devices cuda,cpu --out "$res/hf_agreement.json"
    [ -f "$res/hf_agreement.json" ] && cp "$res/hf_agreement.json" "$out/"
    grep -E '^(FAIL|ok) |side by side|tok/s|hf agreement' "$logs/agreement.log" 2>/dev/null | grep -vE '^ok ' | head -30 | sed 's/^/     /' | tee -a "$summary"
  else
    say "step agreement   SKIPPED         (no fixtures and no timings from transformers: see hf-fixtures.log, hf-generate.log)"
    failures=$((failures + 1))
  fi
}

for g in ${STEPS:-suite bench hf graphs}; do
  case $g in
    suite | suitegraphs | matmul | bench | extras | graphs | hf | attn) "run_$g" ;;
    *) say "unknown step group '$g' (have: suite suitegraphs matmul bench extras graphs hf)"; failures=$((failures + 1)) ;;
  esac
done

# ---- results -------------------------------------------------------------------------------------------
mkdir -p "$work/logs/references"
for d in "$work"/fixtures/*/; do [ -f "$d/reference.json" ] && cp "$d/reference.json" "$work/logs/references/$(basename "$d").json"; done
cp "$res/specdec-info.json" "$logs/"
cp "$res"/*.json "$logs/" 2>/dev/null
say "total $(( $(date +%s) - t_start )) s, $failures step(s) not ok"
{
  echo
  for f in "$logs"/bench-*.log; do [ -f "$f" ] && { echo "== $(basename "$f") (tail)"; tail -n 25 "$f"; echo; }; done
  echo "== hf-generate (tail)"; tail -n 12 "$logs/hf-generate.log" 2>/dev/null
  echo; echo "== hf agreement + side by side"; tail -n 60 "$logs/agreement.log" 2>/dev/null
} >> "$summary" 2>/dev/null
tar -czf "$out/logs.tar.gz" -C "$work" logs
cat "$summary"
[ "$failures" -eq 0 ]
