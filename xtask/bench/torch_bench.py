"""The PyTorch side of `cargo xtask bench-vs-torch`.

    torch_bench.py prepare DIR [--device cpu|cuda] [--tiny] [WORKLOAD...]
    torch_bench.py run DIR WORKLOAD [--warmup N] [--iters N] [--threads N]
                   [--device cpu|cuda] [--dtype f32|bf16|f16] [--compile [MODE]]

`prepare` writes, for each workload, DIR/WORKLOAD/ with `meta.json` (the shapes), the inputs
(`inputs.safetensors`) and the weights (`weights.safetensors`, or a diffusers model folder
`model/` written by `save_pretrained`), all f32 and seeded. The Rust binary `diffusers-bench`
reads the same files, so both sides compute on the same numbers.

`run` loads one workload, runs it `--warmup` times untimed and `--iters` times timed (eager
PyTorch under `torch.inference_mode`, `torch.set_num_threads`), and prints one JSON line in the
format `diffusers-bench` prints: `times_s`, `median_s`, `flops`, `peak_rss_bytes` (`VmHWM`).
With `--compile`, the workloads built around one module (the flux_dev ones) run it through
`torch.compile` (its warm-up runs include the compilation).

The GPU-only workloads (`matmul_ceiling`, `flux_dev_*`) make their random weights on the device
on each side instead of reading files: FLUX.1-dev's transformer is 24 GB in bf16.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ["linear_dense", "linear_nf4", "flux_double_nf4", "flux_double_lora", "flux_double_lora_fused", "matmul", "conv_64", "conv_320", "attn_flux", "attn_sd", "groupnorm", "flux_double",
             "flux_single", "unet_down", "vae_decoder", "wan_block", "wan_vae_decode", "tiny_pipeline", "flux_steps", "flux_steps_fbc",
             "load_1gb", "vae_decode_1024", "vae_decode_1024_tiled", "sd15_pipeline",
             "sd15_pipeline_offload"]
CUDA_WORKLOADS = ["matmul_ceiling", "flux_dev_step", "flux_dev_double", "flux_dev_single"]
FLUX_DEV = ROOT / "fixtures/real_configs/flux1-dev/transformer_config.json"
# `prepare --tiny`: the flux_dev workloads at a size a CPU runs in seconds (a smoke test of the
# whole comparison, torch.compile included, without a GPU).
FLUX_DEV_TINY = dict(attention_head_dim=16, num_attention_heads=2, axes_dims_rope=[4, 6, 6],
                     guidance_embeds=True, in_channels=64, joint_attention_dim=64,
                     pooled_projection_dim=32, num_layers=1, num_single_layers=1, patch_size=1)

FLUX = dict(patch_size=1, in_channels=64, num_attention_heads=24, attention_head_dim=128,
            joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=False,
            axes_dims_rope=(16, 56, 56))
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
           layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)
# Wan2.1-T2V-1.3B's block widths (text_dim only sizes the unused text projection).
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
           out_channels=16, text_dim=64, ffn_dim=8960)
UNET_DOWN = dict(channels=320, size=64, temb_channels=1280, cross_attention_dim=768, tokens=77,
                 groups=32, heads=8)


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def unet_down_block():
    from diffusers.models.unets.unet_2d_blocks import CrossAttnDownBlock2D
    m = UNET_DOWN
    return CrossAttnDownBlock2D(
        in_channels=m["channels"], out_channels=m["channels"], temb_channels=m["temb_channels"],
        num_layers=2, transformer_layers_per_block=1, resnet_eps=1e-5, resnet_act_fn="silu",
        resnet_groups=m["groups"], num_attention_heads=m["heads"],
        cross_attention_dim=m["cross_attention_dim"], downsample_padding=1, add_downsample=True)


def flux_rope(text_tokens, side):
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    txt_ids = torch.zeros(text_tokens, 3)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    ids = torch.cat([txt_ids, img_ids.reshape(-1, 3)])
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=list(FLUX["axes_dims_rope"]))(ids)
    return cos.float().contiguous(), sin.float().contiguous()


def sd15_pipeline():
    """An SD 1.5-sized pipeline with random weights: the real UNet, VAE and CLIP ViT-L/14 text
    encoder configs; the tiny SD repository's tokenizer and scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    torch.manual_seed(0)
    unet_config = json.loads((ROOT / "fixtures/real_configs/unet_configs.json").read_text())["sd15"]
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL(**{**VAE, "sample_size": 512})
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=768))
    tiny = ROOT / "fixtures/pipelines/tiny_sd"
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tiny / "tokenizer"),
        unet=unet, scheduler=PNDMScheduler.from_pretrained(tiny / "scheduler"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def prepare(out: Path, names, tiny=False):
    for name in names:
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        meta, inputs = {}, {}
        if name == "matmul":
            meta = {"n": 1024}
            inputs = {"a": torch.randn(1024, 1024), "b": torch.randn(1024, 1024)}
        elif name == "matmul_ceiling":
            meta = {"n": 256 if tiny else 8192}
        elif name in ("flux_dev_step", "flux_dev_double", "flux_dev_single"):
            # Random weights made on the device by each side (no files: 24 GB in bf16).
            config = {k: v for k, v in json.loads(FLUX_DEV.read_text()).items()
                      if not k.startswith("_")}
            meta = ({"config": FLUX_DEV_TINY, "image_tokens": 64, "text_tokens": 16} if tiny else
                    {"config": config, "image_tokens": 4096, "text_tokens": 512})
        elif name in ("conv_64", "conv_320"):
            ch = 64 if name == "conv_64" else 320
            meta = {"channels": ch, "size": 64}
            save_file(torch.nn.Conv2d(ch, ch, 3, padding=1).state_dict(), d / "weights.safetensors")
            inputs = {"x": torch.randn(1, ch, 64, 64)}
        elif name in ("attn_flux", "attn_sd"):
            shape = (1, 24, 1280, 128) if name == "attn_flux" else (2, 8, 4096, 40)
            inputs = {k: torch.randn(*shape) for k in "qkv"}
        elif name == "groupnorm":
            meta = {"channels": 320, "groups": 32, "size": 64}
            gn = torch.nn.GroupNorm(32, 320)
            torch.nn.init.normal_(gn.weight)
            torch.nn.init.normal_(gn.bias)
            save_file(gn.state_dict(), d / "weights.safetensors")
            inputs = {"x": torch.randn(1, 320, 64, 64)}
        elif name in ("linear_dense", "linear_nf4"):
            meta = {"in": 3072, "out": 12288, "rows": 512}
            inputs = {"x": torch.randn(512, 3072), "w": torch.randn(12288, 3072) * 0.02,
                      "b": torch.randn(12288) * 0.02}
        elif name in ("flux_double", "flux_single", "flux_double_nf4", "flux_double_lora",
                      "flux_double_lora_fused"):
            from diffusers import FluxTransformer2DModel
            double = name != "flux_single"
            model = FluxTransformer2DModel(**FLUX, num_layers=int(double),
                                           num_single_layers=int(not double))
            model.save_pretrained(d / "model")
            if name.startswith("flux_double_lora"):
                # A rank-16 LoRA on every Linear of the double block, in diffusers/PEFT keys
                # (no alphas: scaling 1), read by both sides.
                g = torch.Generator().manual_seed(16)
                lora = {}
                for mname, m in model.transformer_blocks[0].named_modules():
                    if isinstance(m, torch.nn.Linear):
                        key = f"transformer.transformer_blocks.0.{mname}"
                        lora[f"{key}.lora_A.weight"] = torch.randn(16, m.in_features, generator=g) * 0.02
                        lora[f"{key}.lora_B.weight"] = torch.randn(m.out_features, 16, generator=g) * 0.02
                save_file(lora, d / "lora.safetensors")
            meta = {"image_tokens": 1024, "text_tokens": 256}
            dim = FLUX["num_attention_heads"] * FLUX["attention_head_dim"]
            cos, sin = flux_rope(256, 32)
            inputs = {"x": torch.randn(1, 1024, dim), "ctx": torch.randn(1, 256, dim),
                      "temb": torch.randn(1, dim), "cos": cos, "sin": sin}
        elif name == "unet_down":
            meta = dict(UNET_DOWN)
            save_file(unet_down_block().state_dict(), d / "weights.safetensors")
            m = UNET_DOWN
            inputs = {"x": torch.randn(1, m["channels"], m["size"], m["size"]),
                      "temb": torch.randn(1, m["temb_channels"]),
                      "ctx": torch.randn(1, m["tokens"], m["cross_attention_dim"])}
        elif name == "vae_decoder":
            from diffusers import AutoencoderKL
            AutoencoderKL(**VAE).save_pretrained(d / "model")
            meta = {"latent_size": 32}
            inputs = {"z": torch.randn(1, 4, 32, 32)}
        elif name == "wan_block":
            from diffusers import WanTransformer3DModel
            from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
            WanTransformer3DModel(**WAN, num_layers=1).save_pretrained(d / "model")
            # One latent frame of a 480x832 video: 30x52 patches of 2x2.
            meta = {"image_tokens": 30 * 52, "text_tokens": 512}
            dim = WAN["num_attention_heads"] * WAN["attention_head_dim"]
            rope = WanRotaryPosEmbed(WAN["attention_head_dim"], WAN["patch_size"], 1024)
            cos, sin = rope(torch.zeros(1, 16, 1, 60, 104))
            inputs = {"x": torch.randn(1, 30 * 52, dim), "ctx": torch.randn(1, 512, dim),
                      "temb": torch.randn(1, 6, dim), "cos": cos.reshape(30 * 52, -1).float(),
                      "sin": sin.reshape(30 * 52, -1).float()}
        elif name == "wan_vae_decode":
            from diffusers import AutoencoderKLWan
            AutoencoderKLWan(base_dim=96, z_dim=16).save_pretrained(d / "model")
            meta = {"latent_frames": 2, "latent_size": 32}
            inputs = {"z": torch.randn(1, 16, 2, 32, 32)}
        elif name in ("flux_steps", "flux_steps_fbc"):
            from diffusers import FluxTransformer2DModel
            FluxTransformer2DModel(**FLUX, num_layers=1, num_single_layers=1).save_pretrained(d / "model")
            steps = 8
            meta = {"side": 8, "text_tokens": 16, "steps": steps, "threshold": 0.65}
            inputs = {"x": torch.randn(1, 64, 64), "ctx": torch.randn(1, 16, 64), "pooled": torch.randn(1, 32),
                      "sigmas": torch.tensor(torch.linspace(1.0, 1.0 / steps, steps).tolist() + [0.0])}
        elif name == "tiny_pipeline":
            meta = {"folder": str(ROOT / "fixtures/pipelines/tiny_flux"), "steps": 4}
        elif name in ("vae_decode_1024", "vae_decode_1024_tiled"):
            from diffusers import AutoencoderKL
            # SD 1.5's VAE config (tiles of sample_size 512 pixels, 64 latents).
            AutoencoderKL(**{**VAE, "sample_size": 512}).save_pretrained(d / "model")
            meta = {"latent_size": 128}
            inputs = {"z": torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0))}
        elif name in ("sd15_pipeline", "sd15_pipeline_offload"):
            folder = out / "sd15_model"
            if not (folder / "model_index.json").exists():
                sd15_pipeline().save_pretrained(folder)
            meta = {"folder": str(folder), "size": 256, "steps": 2}
        elif name == "load_1gb":
            layers, dim = 16, 4096
            meta = {"layers": layers, "dim": dim}
            g = torch.Generator().manual_seed(0)
            state = {}
            for i in range(layers):
                state[f"layers.{i}.weight"] = torch.randn(dim, dim, generator=g) * 0.02
                state[f"layers.{i}.bias"] = torch.randn(dim, generator=g) * 0.02
            save_file(state, d / "weights.safetensors")
            del state
        else:
            sys.exit(f"unknown workload {name}")
        (d / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        if inputs:
            save_file({k: v.contiguous() for k, v in inputs.items()}, d / "inputs.safetensors")
        print(f"prepared {name}", file=sys.stderr)


def build(d: Path, name: str, device, dtype):
    """Returns (run, flops): a closure running the workload once, and its FLOPs if counted."""
    meta = json.loads((d / "meta.json").read_text())
    path = d / "inputs.safetensors"
    inp = {k: v.to(device, dtype) for k, v in load_file(path).items()} if path.exists() else {}
    if name in ("matmul", "matmul_ceiling"):
        if name == "matmul":
            a, b = inp["a"], inp["b"]
        else:
            n = meta["n"]
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
        n = a.shape[0]
        return (lambda: a @ b), 2.0 * n ** 3
    if name in ("flux_dev_step", "flux_dev_double", "flux_dev_single"):
        return flux_dev(meta, name, device, dtype)
    if name in ("conv_64", "conv_320"):
        ch = meta["channels"]
        conv = torch.nn.Conv2d(ch, ch, 3, padding=1)
        conv.load_state_dict(load_file(d / "weights.safetensors"))
        conv = conv.to(device, dtype)
        x = inp["x"]
        b, _, h, w = x.shape
        return (lambda: conv(x)), 2.0 * b * ch * ch * 9 * h * w
    if name in ("attn_flux", "attn_sd"):
        q, k, v = inp["q"], inp["k"], inp["v"]
        b, h, l, dh = q.shape
        return (lambda: F.scaled_dot_product_attention(q, k, v)), 4.0 * b * h * l * l * dh
    if name == "groupnorm":
        gn = torch.nn.GroupNorm(meta["groups"], meta["channels"])
        gn.load_state_dict(load_file(d / "weights.safetensors"))
        gn = gn.to(device, dtype)
        x = inp["x"]
        return (lambda: gn(x)), None
    if name == "linear_dense":
        x, w, b = inp["x"], inp["w"], inp["b"]
        return (lambda: F.linear(x, w, b)), 2.0 * x.shape[0] * w.shape[0] * w.shape[1]
    if name == "linear_nf4":
        # What bitsandbytes' Linear4bit.forward runs: matmul_4bit on the packed weight.
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf
        x, w, b = inp["x"], inp["w"], inp["b"]
        q, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        return (lambda: bnb.matmul_4bit(x, q.t(), bias=b, quant_state=state)), \
            2.0 * x.shape[0] * w.shape[0] * w.shape[1]
    if name in ("flux_double", "flux_single", "flux_double_nf4", "flux_double_lora",
                "flux_double_lora_fused"):
        from diffusers import FluxTransformer2DModel
        kwargs = {}
        if name == "flux_double_nf4":
            from diffusers import BitsAndBytesConfig
            from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer
            # diffusers refuses 4-bit without a GPU; bitsandbytes runs it on the CPU.
            BnB4BitDiffusersQuantizer.validate_environment = lambda self, *a, **k: None
            BnB4BitDiffusersQuantizer.update_device_map = lambda self, m: m or {"": "cpu"}
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        model = FluxTransformer2DModel.from_pretrained(d / "model", dtype=dtype, **kwargs).to(device)
        model.eval()
        if name.startswith("flux_double_lora"):
            # diffusers' load_lora_adapter: PEFT layers around each Linear, unfused; fuse_lora
            # merges them into the weights.
            model.load_lora_adapter(str(d / "lora.safetensors"), prefix="transformer", adapter_name="bench")
            if name.endswith("_fused"):
                model.fuse_lora(lora_scale=1.0)
        x, ctx, temb = inp["x"], inp["ctx"], inp["temb"]
        rope = (inp["cos"], inp["sin"])
        s = x.shape[1] + ctx.shape[1]
        dim = x.shape[2]
        flops = 24.0 * dim * dim * s + 4.0 * s * s * dim
        block = (model.single_transformer_blocks if name == "flux_single"
                 else model.transformer_blocks)[0]
        return (lambda: block(hidden_states=x, encoder_hidden_states=ctx, temb=temb,
                              image_rotary_emb=rope)), flops
    if name == "unet_down":
        block = unet_down_block()
        block.load_state_dict(load_file(d / "weights.safetensors"))
        block = block.to(device, dtype).eval()
        x, temb, ctx = inp["x"], inp["temb"], inp["ctx"]
        return (lambda: block(x, temb, ctx)), None
    if name == "vae_decoder":
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(d / "model", dtype=dtype).to(device).eval()
        z = inp["z"]
        return (lambda: vae.decode(z).sample), None
    if name == "wan_block":
        from diffusers import WanTransformer3DModel
        model = WanTransformer3DModel.from_pretrained(d / "model", dtype=dtype).to(device).eval()
        x, ctx, temb = inp["x"], inp["ctx"], inp["temb"]
        s, t, dim = x.shape[1], ctx.shape[1], x.shape[2]
        rope = (inp["cos"].float().view(1, s, 1, -1), inp["sin"].float().view(1, s, 1, -1))
        ffn = WAN["ffn_dim"]
        flops = (2.0 * (6.0 * dim * dim * s + 2.0 * dim * dim * t + 2.0 * dim * ffn * s)
                 + 4.0 * s * s * dim + 4.0 * s * t * dim)
        block = model.blocks[0]
        return (lambda: block(x, ctx, temb, rope)), flops
    if name == "wan_vae_decode":
        from diffusers import AutoencoderKLWan
        vae = AutoencoderKLWan.from_pretrained(d / "model", dtype=dtype).to(device).eval()
        z = inp["z"]
        return (lambda: vae.decode(z).sample), None
    if name in ("vae_decode_1024", "vae_decode_1024_tiled"):
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(d / "model", dtype=dtype).to(device).eval()
        if name.endswith("_tiled"):
            vae.enable_tiling()
        z = inp["z"]
        return (lambda: vae.decode(z).sample), None
    if name in ("sd15_pipeline", "sd15_pipeline_offload"):
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained(meta["folder"], dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        # enable_model_cpu_offload() needs an accelerator: on the CPU the torch side of the
        # offload row runs without offloading (it has no way to free a component).
        if name.endswith("_offload") and device.type == "cuda":
            pipe.enable_model_cpu_offload()
        size, steps = meta["size"], meta["steps"]

        def call():
            return pipe("a photo of the cat", height=size, width=size, num_inference_steps=steps,
                        generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
        return call, None
    if name in ("flux_steps", "flux_steps_fbc"):
        from diffusers import FluxTransformer2DModel
        from diffusers.hooks import FirstBlockCacheConfig
        model = FluxTransformer2DModel.from_pretrained(d / "model", dtype=dtype).to(device).eval()
        if name.endswith("_fbc"):
            model.enable_cache(FirstBlockCacheConfig(threshold=meta["threshold"]))
        x0, ctx, pooled = inp["x"], inp["ctx"], inp["pooled"]
        sig = inp["sigmas"].float().tolist()
        side, txt = meta["side"], meta["text_tokens"]
        img_ids = torch.zeros(side, side, 3)
        img_ids[..., 1] = torch.arange(side)[:, None]
        img_ids[..., 2] = torch.arange(side)[None, :]
        img_ids = img_ids.reshape(-1, 3).to(device)
        txt_ids = torch.zeros(txt, 3, device=device)

        def steps():
            x = x0
            for i in range(len(sig) - 1):
                with model.cache_context("cond"):
                    v = model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                              timestep=torch.tensor([sig[i]], dtype=dtype, device=device),
                              img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
                x = x + (sig[i + 1] - sig[i]) * v
            if name.endswith("_fbc"):
                model._reset_stateful_cache()
            return x
        return steps, None
    if name == "tiny_pipeline":
        from diffusers import FluxPipeline
        pipe = FluxPipeline.from_pretrained(meta["folder"], dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        steps = meta.get("steps", 4)

        def call():
            return pipe("a photo of the cat", height=16, width=24, num_inference_steps=steps,
                        generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
        return call, None
    if name == "load_1gb":
        file = d / "weights.safetensors"

        def load():
            # load_file maps the file lazily; copying every tensor out (as `load_into` copies
            # out of its mmap) makes both sides end with the weights in process memory.
            state = load_file(file, device=str(device))
            state = {k: v.to(dtype, copy=True) for k, v in state.items()}
            del state
        return load, None
    sys.exit(f"unknown workload {name}")


def flux_dev(meta, name, device, dtype):
    """FLUX.1-dev's transformer (or one of its blocks) with random weights made on `device` in
    `dtype`, at meta's token counts: one denoising step, a double or a single block."""
    from diffusers import FluxTransformer2DModel
    cfg = dict(meta["config"])
    if name == "flux_dev_double":
        cfg.update(num_layers=1, num_single_layers=0)
    elif name == "flux_dev_single":
        cfg.update(num_layers=0, num_single_layers=1)
    img, txt = meta["image_tokens"], meta["text_tokens"]
    heads, head_dim = meta["config"]["num_attention_heads"], meta["config"]["attention_head_dim"]
    dim = heads * head_dim
    s = img + txt
    block_flops = 24.0 * dim * dim * s + 4.0 * s * s * dim
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    g = torch.Generator(device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)
    if name == "flux_dev_step":
        side = int(round(img ** 0.5))
        x, ctx = rand(1, img, cfg["in_channels"]), rand(1, txt, cfg["joint_attention_dim"])
        pooled = rand(1, cfg["pooled_projection_dim"])
        img_ids = torch.zeros(side, side, 3, device=device)
        img_ids[..., 1] = torch.arange(side, device=device)[:, None]
        img_ids[..., 2] = torch.arange(side, device=device)[None, :]
        img_ids = img_ids.reshape(-1, 3)
        txt_ids = torch.zeros(txt, 3, device=device)
        t = torch.full((1,), 0.5, device=device, dtype=dtype)
        guidance = torch.full((1,), 3.5, device=device, dtype=dtype) if cfg["guidance_embeds"] else None
        blocks = cfg["num_layers"] + cfg["num_single_layers"]
        # The blocks, x_embedder and proj_out per image token, context_embedder per text token.
        out_ch = cfg.get("out_channels") or cfg["in_channels"]
        flops = (blocks * block_flops + 2.0 * img * dim * (cfg["in_channels"] + out_ch)
                 + 2.0 * txt * cfg["joint_attention_dim"] * dim)

        def step(m):
            return m(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                     timestep=t, guidance=guidance, img_ids=img_ids, txt_ids=txt_ids,
                     return_dict=False)[0]
        return model, step, flops
    x, ctx, temb = rand(1, img, dim), rand(1, txt, dim), rand(1, dim)
    rope = (rand(s, head_dim).float(), rand(s, head_dim).float())
    if name == "flux_dev_double":
        block = model.transformer_blocks[0]
        return block, (lambda b: b(hidden_states=x, encoder_hidden_states=ctx, temb=temb,
                                   image_rotary_emb=rope)), block_flops
    block = model.single_transformer_blocks[0]
    return block, (lambda b: b(hidden_states=x, encoder_hidden_states=ctx, temb=temb,
                               image_rotary_emb=rope)), block_flops


def run(args):
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    d = Path(args.dir) / args.workload
    start = time.perf_counter()
    with torch.inference_mode():
        built = build(d, args.workload, device, dtype)
        if len(built) == 3:
            # (module, call(module), flops): the module goes through torch.compile when asked.
            module, call, flops = built
            if args.compile:
                module = torch.compile(module, mode=args.compile)
            fn = (lambda: call(module))
        else:
            if args.compile:
                sys.exit(f"--compile: {args.workload} has no module to compile")
            fn, flops = built
        sync()
        prepare_s = time.perf_counter() - start
        for _ in range(args.warmup):
            fn()
            sync()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
    med = statistics.median(times) if times else None
    record = {
        "workload": args.workload, "dtype": args.dtype,
        "impl": f"torch {torch.__version__}" + (f" compile({args.compile})" if args.compile else ""),
        "prepare_s": prepare_s, "times_s": times, "median_s": med, "flops": flops,
        "flops_per_s": flops / med if flops and med else None,
        "peak_rss_bytes": peak_rss_bytes(), "device": args.device,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        record["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(record))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("dir")
    pp.add_argument("workloads", nargs="*")
    pp.add_argument("--device", default="cpu")
    pr = sub.add_parser("run")
    pr.add_argument("dir")
    pr.add_argument("workload")
    pr.add_argument("--warmup", type=int, default=1)
    pr.add_argument("--iters", type=int, default=5)
    pr.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--dtype", default="f32")
    pr.add_argument("--compile", nargs="?", const="default", default=None,
                    help="torch.compile the workload's module (mode: default, max-autotune, ...); "
                         "warm-up runs include the compilation")
    pp.add_argument("--tiny", action="store_true",
                    help="small sizes for the GPU-only workloads (a CPU smoke test)")
    args = p.parse_args()
    if args.cmd == "prepare":
        names = args.workloads or WORKLOADS + (CUDA_WORKLOADS if args.device == "cuda" else [])
        prepare(Path(args.dir), names, tiny=args.tiny)
    else:
        run(args)


if __name__ == "__main__":
    main()
