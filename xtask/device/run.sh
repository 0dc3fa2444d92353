#!/bin/sh
# Runs on the GPU machine from the repository root (no Rust toolchain needed): every test binary
# bundled by `cargo xtask cuda-bundle`, CUDA tests included, then the CLI on CUDA (bf16) compared
# with diffusers' images. Written into .device/ by the bundle command.
cd "$(dirname "$0")/.."
rm -rf /tmp/diffusers-bundle && mkdir -p /tmp/diffusers-bundle
tar xJf .device/bins.tar.xz -C /tmp/diffusers-bundle
export DIFFUSERS_FIXTURES=$PWD/fixtures CUBECL_AUTOTUNE_LEVEL=minimal
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
for t in /tmp/diffusers-bundle/bin/*; do
  case "$t" in */diffusers) continue ;; esac
  echo "== $t"; time "$t" --include-ignored --test-threads 1 --nocapture "$@"
done
if [ -x /tmp/diffusers-bundle/bin/diffusers ]; then
  echo "== diffusers generate --device cuda --dtype bf16"
  out=${OUT:-/tmp}/cli_cuda_bf16.safetensors
  time /tmp/diffusers-bundle/bin/diffusers generate "a photo of the cat" \
    --model fixtures/pipelines/tiny_flux --device cuda --dtype bf16 \
    --latents fixtures/pipelines/flux_prompt_latents.safetensors --output-type array -o "$out" \
    --height 16 --width 24 --steps 3 --max-sequence-length 8 \
    && python3 xtask/device/compare.py "$out" cuda-bf16
fi
