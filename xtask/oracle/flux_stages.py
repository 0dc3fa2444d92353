"""The tiny Flux pipeline's stages, each from the f32 reference's own inputs, in one dtype on one
device: where a bf16 (or CUDA) run departs from the f32 CPU reference.

Used by the oracle (stage `flux_bf16_stages`: diffusers on the CPU in bf16) and by
`xtask/device/diffusers_cuda.py` (diffusers on CUDA in bf16), so both run the same code. Each
stage starts from the committed f32 results of the stage before it (fixtures
`pipelines/flux.safetensors`, case `flux_prompt`), so an error is that stage's own:

- `prompt_embeds`, `pooled_prompt_embeds`: `encode_prompt("a photo of the cat",
  max_sequence_length=8)`;
- `step_0`, `step_1`, `step_2`, `output_latents`: the denoising loop (3 steps, guidance 3.5) from
  the f32 prompt embeddings and initial latents, the latents after each step;
- `decoded`: the VAE decode of the f32 output latents (unpacked, unscaled), as `output_type="np"`.
"""
import torch

PROMPT = "a photo of the cat"


@torch.no_grad()
def flux_stages(pipe, fx, device, dtype):
    """`pipe`: the tiny FluxPipeline already on `device` in `dtype`; `fx`: the f32 fixture dict."""
    out = {}
    pe, pp, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=8)
    out["prompt_embeds"], out["pooled_prompt_embeds"] = pe, pp

    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return kw

    def cast(key):
        return fx[f"flux_prompt.{key}"].to(device, dtype)

    latents = pipe(prompt_embeds=cast("prompt_embeds"), pooled_prompt_embeds=cast("pooled_prompt_embeds"),
                   latents=cast("latents"), height=16, width=24, num_inference_steps=3,
                   guidance_scale=3.5, output_type="latent", callback_on_step_end=record).images
    for i, s in enumerate(steps):
        out[f"step_{i}"] = s
    out["output_latents"] = latents

    z = pipe._unpack_latents(cast("output_latents"), 16, 24, pipe.vae_scale_factor)
    z = z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(z, return_dict=False)[0]
    out["decoded"] = (image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return {k: v.float().cpu().contiguous() for k, v in out.items()}


def spread(stages, fx):
    """Max abs distance of each stage from the f32 reference."""
    ref = {"decoded": fx["flux_prompt.images"]}
    return {k: (v - ref.get(k, fx.get(f"flux_prompt.{k}"))).abs().max().item()
            for k, v in stages.items()}
