#!/bin/sh
# Issue 19's measurements on a GPU machine (no Rust toolchain needed), from the repository root,
# after `cargo xtask cuda-bundle --bench` wrote .device/ (binaries) and .whl/ (diffusers' wheel):
#
#   sh .device/issue19.sh [PHASE...]      phases: start bench parity e2e compile (default: all,
#                                         in that order: the cheapest and most wanted first)
#
# Results go to $OUT (summary.txt, logs, bench JSON, our and diffusers' stage tensors) and the
# CUDA kernel cache to $OUT/kernel-cache.tar.gz: unpack it into .kernel-cache/ (git-ignored) and
# carry that folder next time, so later runs load their kernels instead of compiling them.
#
# - start:   kernel cache, cold vs warm: `diffusers generate` on the tiny Flux repository twice in
#            fresh processes, with an empty cache folder and then with the same folder (the
#            summary line's "first step done at").
# - parity:  the CUDA parity tests (f32 at TF32's tolerance, bf16, the bf16 stages written for
#            diffusers_cuda.py), burn's fusion reproduction (layers and the Flux transformer on
#            backend::CudaFused), and diffusers itself on this GPU (stages, images).
# - bench:   bench-vs-torch --device cuda: the matmul ceiling, one FLUX.1-dev double and single
#            block and one FLUX.1-dev step (4096+512 tokens, bf16) against diffusers eager.
# - compile: the same three FLUX.1-dev rows with torch.compile added (minutes of compilation).
# - e2e:     a FLUX.1-dev-sized random-weight repository (make_flux_repo.py, ~34 GB) and
#            `diffusers generate` on it, bf16, 1024x1024, 4 steps: peak device memory.
#
# PHASE_LIMIT (seconds, default 420) bounds each phase's processes. ISSUE19_DEVICE=cpu is a dry
# run of the script's plumbing without a GPU (start and bench phases, tiny sizes).
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/diffusers-out}
R=$PWD
mkdir -p "$O"
S=$O/summary.txt
LIMIT=${PHASE_LIMIT:-420}
DEV=${ISSUE19_DEVICE:-cuda}
TINY=""
[ "$DEV" = cpu ] && TINY=--tiny
PHASES=${*:-start bench parity e2e compile}
B=/tmp/diffusers-bundle/bin
if [ ! -x "$B/diffusers" ]; then
  rm -rf /tmp/diffusers-bundle && mkdir -p /tmp/diffusers-bundle
  tar xJf .device/bins.tar.xz -C /tmp/diffusers-bundle
fi
bin() { ls "$B/$1"* 2>/dev/null | head -1; } # a test binary by its target name
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export DIFFUSERS_FIXTURES=$R/fixtures PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# The kernel cache every process here shares: the CLI and the bench read DIFFUSERS_KERNEL_CACHE,
# the test binaries cubecl.toml (CubeCL reads it from the working directory up).
KC=/tmp/kernel-cache
mkdir -p $KC && [ -d .kernel-cache ] && cp -r .kernel-cache/. $KC/
export DIFFUSERS_KERNEL_CACHE=$KC
printf '[compilation.cache]\nfile = "%s/cubecl"\n\n[autotune.cache]\nfile = "%s/cubecl"\n' $KC $KC >cubecl.toml
{ date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'
} >>"$S" 2>&1
say() { echo "$*" | tee -a "$S"; }
timed() { # LOGNAME COMMAND...: COMMAND under LIMIT, output in $O/LOGNAME.log, exit status in $S
  log=$O/$1.log; shift
  s=$(date +%s)
  timeout "$LIMIT" "$@" >"$log" 2>&1
  say "== $(basename "$log" .log): exit $? after $(($(date +%s) - s)) s"
}
cli_tiny() { # LOG CACHE_DIR: the tiny Flux pipeline through the CLI, bf16
  timed "$1" env DIFFUSERS_KERNEL_CACHE="$2" "$B/diffusers" generate "a photo of the cat" \
    --model fixtures/pipelines/tiny_flux --device "$DEV" --dtype bf16 \
    --latents fixtures/pipelines/flux_prompt_latents.safetensors --output-type array \
    -o "$O/$1.safetensors" --height 16 --width 24 --steps 3 --max-sequence-length 8
  grep "^wrote" "$O/$1.log" | tee -a "$S"
}

for phase in $PHASES; do
  say "######## $phase $(date +%T)"
  case $phase in
  start)
    rm -rf /tmp/kc-fresh
    cli_tiny cli_cold /tmp/kc-fresh
    cli_tiny cli_warm /tmp/kc-fresh
    du -sh /tmp/kc-fresh | tee -a "$S"
    ;;
  parity)
    t=$(bin pipelines)
    for test in cuda_f32_end_to_end cuda_bf16_end_to_end cuda_bf16_stages_within_diffusers_bf16_spread; do
      timed "flux_pipeline.$test" env DIFFUSERS_STAGE_DUMP="$O" "$t" --exact "flux_pipeline::cuda::$test" \
        --include-ignored --test-threads 1 --nocapture &
    done
    t=$(bin transformers)
    timed transformers.cuda "$t" --include-ignored --test-threads 1 --nocapture flux::cuda &
    t=$(bin layers)
    timed layers.cuda_fused "$t" --include-ignored --test-threads 1 cuda_fused &
    timed layers.cuda_f32 "$t" --include-ignored --test-threads 1 cuda_f32 &
    timed diffusers_cuda python3 xtask/device/diffusers_cuda.py run "$O" &
    wait
    grep -h -E "^test |panicked|max abs|ours vs|diffusers .*: " "$O"/flux_pipeline.*.log \
      "$O"/transformers.cuda.log "$O"/layers.*.log "$O"/diffusers_cuda.log | tee -a "$S"
    python3 xtask/device/diffusers_cuda.py compare "$O" 2>&1 | tee -a "$S"
    ;;
  bench | compile)
    extra=""
    [ "$phase" = compile ] && extra="--compile"
    names="flux_dev_double flux_dev_single flux_dev_step"
    [ "$phase" = bench ] && names="matmul_ceiling $names"
    timed "bench_$phase" "$B/xtask" bench-vs-torch --device "$DEV" --dtype bf16 $TINY \
      --bin "$B/diffusers-bench" --python python3 --dir /tmp/bench-dir-$DEV \
      --out "$O/bench_$phase.json" $extra $names
    grep -E "^\||^machine" "$O/bench_$phase.log" | tee -a "$S"
    ;;
  e2e)
    timed make_flux_repo python3 xtask/device/make_flux_repo.py /tmp/flux1-dev-random --device cuda
    timed cli_flux_dev "$B/diffusers" generate "a photo of the cat" --model /tmp/flux1-dev-random \
      --device cuda --dtype bf16 --height 1024 --width 1024 --steps 4 --seed 0 -o "$O/flux_dev.png"
    grep -E "^wrote|rror" "$O/cli_flux_dev.log" | tee -a "$S"
    ;;
  *) say "unknown phase $phase" ;;
  esac
done
tar czf "$O/kernel-cache.tar.gz" -C $KC . && du -sh $KC | tee -a "$S"
rm -f cubecl.toml
say "done $(date +%T)"
