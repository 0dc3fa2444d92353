"""diffusers itself on the GPU machine: the yardstick for our CUDA numbers.

Runs the oracle's `flux_prompt` case (the committed tiny Flux folder and latents) and the oracle's
one-call Flux transformer cases with diffusers on CUDA, in f32 (TF32 off, PyTorch's default for
matmul) and in bf16 (weights and activations), and prints how far each lands from the committed
CPU f32 fixtures: how much of our CUDA error is the device and dtype rather than our code.

    python3 xtask/device/diffusers_cuda.py run OUT_DIR
        diffusers on CUDA; writes OUT_DIR/torch_cuda.safetensors (the images).
    python3 xtask/device/diffusers_cuda.py compare OUT_DIR [TORCH_IMAGES]
        our CLI's CUDA images (OUT_DIR/cli_cuda_{f32,bf16}.safetensors, `images`) against
        diffusers' on the same device and dtype (TORCH_IMAGES, by default the file `run`
        wrote), and against the CPU f32 fixture.

`run` also writes diffusers' bf16 pipeline stages on this GPU (OUT_DIR/torch_stages_cuda_bf16,
xtask/oracle/flux_stages.py), and `compare` sets our CUDA bf16 stages (written by the test
`cuda_bf16_stages_within_diffusers_bf16_spread` with DIFFUSERS_STAGE_DUMP=OUT_DIR) beside them
and beside diffusers' CPU bf16 stages (fixture flux_bf16_stages): where ours departs first.

diffusers is not installed on the GPU machine: carry its wheel (see .device/run.sh).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))

import torch
from safetensors.torch import load_file, save_file

FX = load_file("fixtures/pipelines/flux.safetensors")
WANT = FX["flux_prompt.images"].float()
WANT_BF16 = FX["flux_prompt_bf16.images"].float()
# Another device for a dry run of this script on a machine without a GPU.
CUDA = os.environ.get("DIFFUSERS_TORCH_DEVICE", "cuda")


def err(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


@torch.no_grad()
def run(out: Path):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    latents = load_file("fixtures/pipelines/flux_prompt_latents.safetensors")["latents"]
    args = dict(prompt="a photo of the cat", height=16, width=24, num_inference_steps=3,
                guidance_scale=3.5, max_sequence_length=8, output_type="np")
    images = {}
    for dev, dtype in [("cpu", torch.float32), (CUDA, torch.float32), (CUDA, torch.bfloat16)]:
        pipe = FluxPipeline.from_pretrained("fixtures/pipelines/tiny_flux").to(dev, dtype)
        img = torch.from_numpy(pipe(**args, latents=latents.to(dev, dtype)).images)
        name = f"{dev}_{str(dtype).split('.')[-1]}"
        images[name] = img.float().contiguous()
        print(f"torch {torch.__version__} diffusers FluxPipeline {name}: max abs vs fixture f32 "
              f"{err(img, WANT):.3e}, vs fixture bf16 (CPU) {err(img, WANT_BF16):.3e}", flush=True)
    save_file(images, str(out / "torch_cuda.safetensors"))

    from flux_stages import flux_stages, spread
    pipe = FluxPipeline.from_pretrained("fixtures/pipelines/tiny_flux").to(CUDA, torch.bfloat16)
    stages = flux_stages(pipe, FX, CUDA, torch.bfloat16)
    save_file(stages, str(out / "torch_stages_cuda_bf16.safetensors"))
    for k, v in spread(stages, FX).items():
        print(f"diffusers bf16 stage {k} on {CUDA}: max abs vs f32 CPU {v:.3e}", flush=True)

    fx = load_file("fixtures/transformers/flux.safetensors")
    for case in ["flux_dev", "flux_schnell"]:
        for dtype in [torch.float32, torch.bfloat16]:
            m = FluxTransformer2DModel.from_pretrained(f"fixtures/transformers/{case}")
            m = m.to(CUDA, dtype).eval()
            kw = {k: fx[f"{case}.{k}"].to(CUDA) for k in
                  ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"]}
            for k in ["hidden_states", "encoder_hidden_states", "pooled_projections"]:
                kw[k] = kw[k].to(dtype)
            if f"{case}.guidance" in fx:
                kw["guidance"] = fx[f"{case}.guidance"].to(CUDA)
            y = m(**kw, img_ids=fx[f"{case}.img_ids"].to(CUDA),
                  txt_ids=fx[f"{case}.txt_ids"].to(CUDA)).sample
            want = fx[f"{case}.output"]
            print(f"diffusers FluxTransformer2DModel {case} cuda {str(dtype).split('.')[-1]}: "
                  f"max abs vs fixture f32 {err(y, want):.3e} (max |out| "
                  f"{want.abs().max().item():.2f})", flush=True)


def compare_stages(out: Path):
    """Per stage, each from the f32 reference's inputs: how far ours and diffusers' bf16 runs land
    from the f32 CPU reference, and from each other."""
    from flux_stages import spread
    cpu = {k.split(".", 1)[1]: v for k, v in
           load_file("fixtures/pipelines/flux_bf16_stages.safetensors").items()}
    files = {"ours cuda": out / "ours_cuda_bf16.safetensors",
             "diffusers cuda": out / "torch_stages_cuda_bf16.safetensors"}
    runs = {"diffusers cpu": cpu}
    runs.update({k: load_file(str(f)) for k, f in files.items() if f.exists()})
    spreads = {k: spread(v, FX) for k, v in runs.items()}
    names = list(cpu)
    print("bf16 stage | " + " | ".join(f"{k} vs f32" for k in runs) + " | ours cuda vs diffusers cuda")
    for n in names:
        row = [f"{spreads[k].get(n, float('nan')):.3e}" for k in runs]
        if "ours cuda" in runs and "diffusers cuda" in runs:
            row.append(f"{err(runs['ours cuda'][n], runs['diffusers cuda'][n]):.3e}")
        print(f"{n} | " + " | ".join(row))


def compare(out: Path, torch_images: Path):
    compare_stages(out)
    theirs = load_file(str(torch_images)) if torch_images.exists() else {}
    for dtype in ["f32", "bf16"]:
        f = out / f"cli_cuda_{dtype}.safetensors"
        if not f.exists():
            print(f"no {f}")
            continue
        ours = load_file(str(f))["images"]
        line = f"our CLI cuda {dtype}: max abs vs fixture f32 {err(ours, WANT):.3e}, " \
               f"vs fixture bf16 (CPU) {err(ours, WANT_BF16):.3e}"
        key = {"f32": "cuda_float32", "bf16": "cuda_bfloat16"}[dtype]
        if key in theirs:
            line += f", vs diffusers {key} {err(ours, theirs[key]):.3e}"
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(Path(sys.argv[2]))
    else:
        out = Path(sys.argv[2])
        compare(out, Path(sys.argv[3]) if len(sys.argv) > 3 else out / "torch_cuda.safetensors")
