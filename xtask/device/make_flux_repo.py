"""A FLUX.1-dev-sized repository with random weights, in the diffusers layout.

    python3 xtask/device/make_flux_repo.py OUT_DIR [--device cuda|cpu] [--blocks D,S]

Every component has FLUX.1-dev's real config (`fixtures/real_configs/flux1-dev/`: the
transformer, AutoencoderKL, CLIP ViT-L/14 text encoder, T5-v1.1-XXL encoder, the scheduler and
model_index.json); the tokenizers are the tiny repository's (`fixtures/pipelines/tiny_flux`),
whose ids all fall inside the real vocabularies. Weights are bf16 (as the published repository),
made on `--device` (fast on a GPU), saved by diffusers' and transformers' own `save_pretrained`
(their shard sizes and index files). About 34 GB; `--blocks 1,1` keeps one double and one
single transformer block (a CPU dry run of this script).

Values: N(0, 0.02) for matrices and embeddings, ones for norm scales, zeros for biases, so a
forward pass stays finite; an image's time and memory do not depend on them.
"""
import argparse
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "fixtures/real_configs/flux1-dev"
TINY = ROOT / "fixtures/pipelines/tiny_flux"


def config(name):
    return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items()
            if k not in ("_name_or_path", "_diffusers_version", "transformers_version")}


@torch.no_grad()
def randomize(model, device):
    """Materializes a model built on the meta device on `device` in bf16, with values that keep a
    forward pass finite."""
    model = model.to_empty(device=device).to(torch.bfloat16)
    g = torch.Generator(device).manual_seed(0)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 0.02, generator=g)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    for name, b in model.named_buffers():
        # to_empty left the buffers unset: CLIP's position ids are 0..76 (the only integer one).
        if name.endswith("position_ids"):
            b.copy_(torch.arange(b.shape[-1], device=b.device).expand_as(b))
        elif b.is_floating_point():
            b.zero_()
        else:
            raise SystemExit(f"make_flux_repo: no rule for buffer {name}")
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--blocks", default=None, help="D,S: double and single transformer blocks")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    (out / "model_index.json").write_text((CONFIGS / "model_index.json").read_text())
    FlowMatchEulerDiscreteScheduler.from_config(config("scheduler_config.json")).save_pretrained(
        out / "scheduler")
    for t in ("tokenizer", "tokenizer_2"):
        shutil.copytree(TINY / t, out / t)

    tcfg = config("transformer_config.json")
    if args.blocks:
        d, s = (int(x) for x in args.blocks.split(","))
        tcfg.update(num_layers=d, num_single_layers=s)
    parts = [
        ("transformer", lambda: FluxTransformer2DModel.from_config(tcfg)),
        ("vae", lambda: AutoencoderKL.from_config(config("vae_config.json"))),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**config("text_encoder_config.json")))),
        ("text_encoder_2", lambda: T5EncoderModel(T5Config(**config("text_encoder_2_config.json")))),
    ]
    for folder, build in parts:
        with torch.device("meta"):
            model = build()
        model = randomize(model, args.device)
        model.save_pretrained(out / folder)
        n = sum(p.numel() for p in model.parameters())
        print(f"make_flux_repo: {folder} {n / 1e9:.2f} B parameters", flush=True)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print(f"make_flux_repo: wrote {out}")


if __name__ == "__main__":
    main()
