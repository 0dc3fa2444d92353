#!/bin/sh
# Runs on the GPU machine from the repository root (no Rust toolchain needed). Written into .device/
# by `cargo xtask cuda-bundle`. Every `#[ignore]`d CUDA test of the bundled binaries, each in its
# own process and all at once (NVRTC compiles each process's kernels on one CPU core, so running
# them one after another took longer than a device call may last), then the CLI on CUDA in f32 and
# bf16, and diffusers itself on CUDA (xtask/device/diffusers_cuda.py, when its wheels were carried
# in .whl/) as the yardstick. Logs go to $OUT/tests.log; LIMIT (seconds) bounds each process.
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/diffusers-out}
mkdir -p "$O" /tmp/diffusers-logs
rm -rf /tmp/diffusers-bundle /tmp/diffusers-logs/* && mkdir -p /tmp/diffusers-bundle
tar xJf .device/bins.tar.xz -C /tmp/diffusers-bundle
B=/tmp/diffusers-bundle/bin
L=/tmp/diffusers-logs
LIMIT=${LIMIT:-420}
export DIFFUSERS_FIXTURES=$PWD/fixtures CUBECL_AUTOTUNE_LEVEL=minimal
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

timed() { # LOGNAME COMMAND...: runs COMMAND under LIMIT, its output and exit status in $L/LOGNAME
  log=$L/$1; shift
  s=$(date +%s)
  timeout "$LIMIT" "$@" >"$log" 2>&1
  echo "== exit $? after $(($(date +%s) - s)) s: $*" >>"$log"
}

for t in "$B"/*; do
  case "$t" in */diffusers | */diffusers-bench | */xtask) continue ;; esac
  name=$(basename "$t" | sed 's/-[0-9a-f]*$//')
  if [ "$name" = layers ]; then
    # Many small CUDA tests (the layers): one process, those matching MANY_FILTER.
    timed "$name.all" "$t" --ignored --test-threads 1 --nocapture "${MANY_FILTER:-cuda_bf16}" &
    continue
  fi
  for test in $("$t" --list --ignored 2>/dev/null | sed -n 's/: test$//p'); do
    timed "$name.$test" \
      "$t" --exact "$test" --include-ignored --test-threads 1 --nocapture &
  done
done
if [ -x "$B/diffusers" ]; then
  for dtype in f32 bf16; do
    timed "cli.$dtype" "$B/diffusers" generate "a photo of the cat" \
      --model fixtures/pipelines/tiny_flux --device cuda --dtype $dtype \
      --latents fixtures/pipelines/flux_prompt_latents.safetensors --output-type array \
      -o "$O/cli_cuda_$dtype.safetensors" \
      --height 16 --width 24 --steps 3 --max-sequence-length 8 --quiet &
  done
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  PYTHONUNBUFFERED=1 timed "diffusers_cuda" python3 xtask/device/diffusers_cuda.py run "$O" &
fi
wait
for f in "$L"/*; do echo "######## $(basename "$f")"; grep -v -E "Warning|warn\(|^\s*$" "$f"; done >"$O/tests.log"
# diffusers' CUDA images from this run, or from an earlier one copied into .device/.
T=$O/torch_cuda.safetensors
[ -f "$T" ] || T=.device/torch_cuda.safetensors
python3 xtask/device/diffusers_cuda.py compare "$O" "$T" >>"$O/tests.log" 2>&1
# The summary: every error line, every result line.
grep -E "^(########|== exit|test .* \.\.\.|.*max abs|.*panicked|torch |diffusers |our CLI|.*rror)" "$O/tests.log"
