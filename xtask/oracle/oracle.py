"""The diffusers oracle: ground truth for diffusers-rs tests.

Runs the pinned torch/diffusers/transformers (requirements.txt) on tiny random modules and
writes small, byte-reproducible fixtures (safetensors + sorted JSON) under fixtures/.
Invoked by `cargo xtask fixtures`; CI never runs it, the committed fixtures are the contract.

Usage: python oracle.py OUT_DIR [stage ...]   (stages: nn, loading; default all)
"""

import json
import math
import os
import shutil
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from diffusers import ConfigMixin, ModelMixin  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402
from diffusers.models.activations import GEGLU, GELU  # noqa: E402
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d  # noqa: E402
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d  # noqa: E402
from diffusers.models.embeddings import (  # noqa: E402
    apply_rotary_emb,
    get_1d_rotary_pos_embed,
    get_timestep_embedding,
)
from diffusers.models.normalization import RMSNorm  # noqa: E402
from diffusers.models.transformers.transformer_flux import FluxPosEmbed  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.activations import QuickGELUActivation  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def versions():
    return {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


class Cases:
    """Collects named cases: config in JSON, inputs/outputs/params in one safetensors file."""

    def __init__(self):
        self.cases = {}
        self.tensors = {}

    def add(self, name, kind, cfg, inputs, outputs, module=None):
        assert name not in self.cases, name
        self.cases[name] = {"kind": kind, **cfg}
        for k, v in {**inputs, **outputs}.items():
            self.tensors[f"{name}.{k}"] = v.detach().to(torch.float32).contiguous().clone()
        if module is not None:
            for k, v in module.state_dict().items():
                self.tensors[f"{name}.params.{k}"] = v.detach().contiguous().clone()

    def save(self, out: Path, stem: str):
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(out / f"{stem}.safetensors"))
        write_json(out / f"{stem}.json", {"cases": self.cases, "versions": versions()})


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


@torch.no_grad()
def stage_nn(out: Path):
    c = Cases()
    torch.manual_seed(0)

    # Linear
    for name, bias in [("linear_bias", True), ("linear_nobias", False)]:
        m = torch.nn.Linear(8, 16, bias=bias)
        x = randn(2, 3, 8)
        c.add(name, "linear", {"in_features": 8, "out_features": 16, "bias": bias}, {"input": x}, {"output": m(x)}, m)

    # Conv2d
    for name, (cin, cout, k, s, p) in {
        "conv2d_k3": (4, 6, 3, 1, 1),
        "conv2d_k3_s2": (4, 6, 3, 2, 1),
        "conv2d_k1": (4, 6, 1, 1, 0),
    }.items():
        m = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
        x = randn(2, cin, 9, 8)
        cfg = {"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": s, "padding": p}
        c.add(name, "conv2d", cfg, {"input": x}, {"output": m(x)}, m)

    # Conv3d: plain, Wan's causal (zero) and HunyuanVideo's causal (replicate)
    m = torch.nn.Conv3d(3, 5, 3, stride=1, padding=1)
    x = randn(1, 3, 4, 6, 5)
    c.add("conv3d_k3", "conv3d", {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "stride": 1,
                                  "padding": [1, 1, 1, 1, 1, 1], "pad_mode": "zeros"}, {"input": x}, {"output": m(x)}, m)
    m = WanCausalConv3d(3, 5, 3, stride=1, padding=1)
    c.add("conv3d_causal_wan", "conv3d", {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "stride": 1,
                                          "padding": list(m._padding), "pad_mode": "zeros"},
          {"input": x}, {"output": m(x)}, m)
    m = HunyuanVideoCausalConv3d(3, 5, 3, stride=1, pad_mode="replicate")
    c.add("conv3d_causal_hunyuan", "conv3d", {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "stride": 1,
                                              "padding": list(m.time_causal_padding), "pad_mode": "replicate",
                                              "params_prefix": "conv."},
          {"input": x}, {"output": m(x)}, m)
    m = torch.nn.Conv3d(3, 5, (3, 1, 1), stride=(2, 1, 1), padding=0)
    c.add("conv3d_t3_s2", "conv3d", {"in_channels": 3, "out_channels": 5, "kernel_size": [3, 1, 1],
                                     "stride": [2, 1, 1], "padding": [0, 0, 0, 0, 0, 0], "pad_mode": "zeros"},
          {"input": x}, {"output": m(x)}, m)

    # GroupNorm
    m = torch.nn.GroupNorm(4, 16, eps=1e-6)
    m.weight.copy_(randn(16))
    m.bias.copy_(randn(16))
    x = randn(2, 16, 5, 6) * 3 + 1
    c.add("group_norm", "group_norm", {"num_groups": 4, "num_channels": 16, "eps": 1e-6, "affine": True},
          {"input": x}, {"output": m(x)}, m)
    m = torch.nn.GroupNorm(2, 8, eps=1e-5, affine=False)
    x5 = randn(1, 8, 3, 4, 4)
    c.add("group_norm_5d_noaffine", "group_norm", {"num_groups": 2, "num_channels": 8, "eps": 1e-5, "affine": False},
          {"input": x5}, {"output": m(x5)}, m)

    # LayerNorm
    m = torch.nn.LayerNorm(12, eps=1e-6)
    m.weight.copy_(randn(12))
    m.bias.copy_(randn(12))
    x = randn(2, 7, 12) * 2 + 0.5
    c.add("layer_norm", "layer_norm", {"dim": 12, "eps": 1e-6, "elementwise_affine": True, "bias": True},
          {"input": x}, {"output": m(x)}, m)
    m = torch.nn.LayerNorm(12, eps=1e-6, elementwise_affine=False)
    c.add("layer_norm_noaffine", "layer_norm", {"dim": 12, "eps": 1e-6, "elementwise_affine": False, "bias": False},
          {"input": x}, {"output": m(x)}, m)

    # RMSNorm (diffusers)
    m = RMSNorm(12, eps=1e-6, elementwise_affine=True)
    m.weight.copy_(randn(12))
    c.add("rms_norm", "rms_norm", {"dim": 12, "eps": 1e-6, "elementwise_affine": True}, {"input": x}, {"output": m(x)}, m)
    m = RMSNorm(12, eps=1e-5, elementwise_affine=False)
    c.add("rms_norm_noaffine", "rms_norm", {"dim": 12, "eps": 1e-5, "elementwise_affine": False},
          {"input": x}, {"output": m(x)}, m)

    # Activations
    x = randn(3, 20) * 4
    c.add("act_silu", "activation", {"fn": "silu"}, {"input": x}, {"output": F.silu(x)})
    c.add("act_gelu", "activation", {"fn": "gelu"}, {"input": x}, {"output": F.gelu(x)})
    c.add("act_gelu_tanh", "activation", {"fn": "gelu_tanh"}, {"input": x}, {"output": F.gelu(x, approximate="tanh")})
    c.add("act_quick_gelu", "activation", {"fn": "quick_gelu"}, {"input": x}, {"output": QuickGELUActivation()(x)})
    m = GELU(8, 16, approximate="tanh")
    xa = randn(2, 5, 8)
    c.add("gelu_proj_tanh", "gelu_proj", {"dim_in": 8, "dim_out": 16, "approximate": "tanh"},
          {"input": xa}, {"output": m(xa)}, m)
    m = GEGLU(8, 16)
    c.add("geglu", "geglu", {"dim_in": 8, "dim_out": 16}, {"input": xa}, {"output": m(xa)}, m)

    # Scaled dot-product attention
    q, k, v = randn(2, 3, 7, 16), randn(2, 3, 9, 16), randn(2, 3, 9, 16)
    c.add("sdpa", "attention", {"mask": "none", "causal": False}, {"q": q, "k": k, "v": v},
          {"output": F.scaled_dot_product_attention(q, k, v)})
    c.add("sdpa_scale", "attention", {"mask": "none", "causal": False, "scale": 0.3}, {"q": q, "k": k, "v": v},
          {"output": F.scaled_dot_product_attention(q, k, v, scale=0.3)})
    keep = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    keep[0, :, :, 6:] = False
    keep[1, :, :, 3:] = False
    c.add("sdpa_bool_mask", "attention", {"mask": "bool", "causal": False},
          {"q": q, "k": k, "v": v, "mask": keep.float()},
          {"output": F.scaled_dot_product_attention(q, k, v, attn_mask=keep)})
    bias = randn(2, 3, 7, 9)
    c.add("sdpa_additive_mask", "attention", {"mask": "additive", "causal": False},
          {"q": q, "k": k, "v": v, "mask": bias},
          {"output": F.scaled_dot_product_attention(q, k, v, attn_mask=bias)})
    kc, vc = randn(2, 3, 7, 16), randn(2, 3, 7, 16)
    c.add("sdpa_causal", "attention", {"mask": "none", "causal": True}, {"q": q, "k": kc, "v": vc},
          {"output": F.scaled_dot_product_attention(q, kc, vc, is_causal=True)})

    # Timestep embeddings
    t = torch.tensor([0.0, 1.0, 250.5, 999.0])
    for name, kw in {
        "temb_default": {},
        "temb_sd": {"flip_sin_to_cos": True, "downscale_freq_shift": 0},
        "temb_flux": {"flip_sin_to_cos": True, "downscale_freq_shift": 0, "scale": 1000},
        "temb_odd": {"downscale_freq_shift": 1, "max_period": 5000},
    }.items():
        dim = 33 if name == "temb_odd" else 32
        tt = t if name != "temb_flux" else t / 1000
        # Pipelines in bf16 hand the embedding bf16 timesteps; diffusers computes in f32 from them.
        c.add(name, "timestep_embedding", {"embedding_dim": dim, **kw}, {"timesteps": t},
              {"output": get_timestep_embedding(tt, dim, **kw),
               "output_from_bf16": get_timestep_embedding(tt.to(torch.bfloat16), dim, **kw)})

    # Rotary embeddings
    pos = torch.arange(0, 24, dtype=torch.float32) * 1.5
    for name, kw in {
        "rope_interleave": {"use_real": True, "repeat_interleave_real": True},
        "rope_concat": {"use_real": True, "repeat_interleave_real": False},
        "rope_ntk_linear": {"use_real": True, "repeat_interleave_real": True, "theta": 500.0,
                            "linear_factor": 2.0, "ntk_factor": 3.0},
        "rope_f64": {"use_real": True, "repeat_interleave_real": True, "freqs_dtype": "float64"},
    }.items():
        kw2 = dict(kw)
        if "freqs_dtype" in kw2:
            kw2["freqs_dtype"] = torch.float64
        cos, sin = get_1d_rotary_pos_embed(16, pos, **kw2)
        c.add(name, "rope_1d", {"dim": 16, **kw}, {"pos": pos}, {"cos": cos, "sin": sin})
    ids = torch.stack(
        [torch.zeros(20), torch.arange(20) // 5, torch.arange(20) % 5], dim=-1
    ).float()
    cos, sin = FluxPosEmbed(10000, [4, 6, 6])(ids)
    c.add("rope_flux", "rope_multi_axis", {"theta": 10000, "axes_dim": [4, 6, 6]}, {"ids": ids},
          {"cos": cos, "sin": sin})
    xq = randn(1, 2, 20, 16)
    c.add("rope_apply_flux", "rope_apply", {"use_real_unbind_dim": -1}, {"x": xq, "cos": cos, "sin": sin},
          {"output": apply_rotary_emb(xq, (cos, sin), use_real_unbind_dim=-1)})
    cos2, sin2 = get_1d_rotary_pos_embed(16, torch.arange(20).float(), use_real=True, repeat_interleave_real=False)
    c.add("rope_apply_unbind2", "rope_apply", {"use_real_unbind_dim": -2}, {"x": xq, "cos": cos2, "sin": sin2},
          {"output": apply_rotary_emb(xq, (cos2, sin2), use_real_unbind_dim=-2)})

    c.save(out / "nn", "layers")


class Evil:
    """Not a tensor: a pickle holding it must be refused."""

    def __reduce__(self):
        return (print, ("this would run on unpickling",))


def deterministic_torch_save(obj, path: Path):
    torch.save(obj, str(path))
    normalize_zip(path)


def normalize_zip(path: Path):
    """Rewrites a torch zip checkpoint with fixed timestamps so the bytes are reproducible."""
    tmp = path.with_suffix(".tmp")
    path.rename(tmp)
    with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            ni = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            ni.compress_type = zipfile.ZIP_STORED
            dst.writestr(ni, data)
    tmp.unlink()


class TinyModel(ModelMixin, ConfigMixin):
    """A tiny diffusers model (real ModelMixin/ConfigMixin), for loader fixtures."""

    @register_to_config
    def __init__(self, in_channels: int = 4, hidden: int = 8, num_blocks: int = 2, future_option: bool = True):
        super().__init__()
        self.proj_in = torch.nn.Linear(in_channels, hidden)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden) for _ in range(num_blocks)])
        self.norm = torch.nn.LayerNorm(hidden)
        self.proj_out = torch.nn.Linear(hidden, in_channels, bias=False)


@torch.no_grad()
def stage_loading(out: Path):
    """One component saved by diffusers' own save_pretrained in every form it writes and reads:
    safetensors, a bf16 variant, a sharded fp16 variant, and a PyTorch pickle."""
    torch.manual_seed(1)
    root = out / "loading"
    comp = root / "tiny"
    if comp.exists():
        for f in comp.iterdir():
            f.unlink()
    m = TinyModel()
    sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
    m.save_pretrained(comp, safe_serialization=False)
    m.save_pretrained(comp)
    m.to(torch.bfloat16).save_pretrained(comp, variant="bf16")
    m.to(torch.float32).load_state_dict(sd)
    m.to(torch.float16).save_pretrained(comp, variant="fp16", max_shard_size=400)
    # diffusers reloads every form it wrote, with the values it saved.
    for variant, dtype in [(None, torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]:
        r = TinyModel.from_pretrained(comp, variant=variant, torch_dtype=dtype)
        for k, v in r.state_dict().items():
            assert torch.equal(v, sd[k].to(dtype)), (variant, k)
    r = TinyModel.from_pretrained(comp, use_safetensors=False)
    assert all(torch.equal(v, sd[k]) for k, v in r.state_dict().items())
    normalize_zip(comp / "diffusion_pytorch_model.bin")
    # A pickle checkpoint holding more than tensors.
    deterministic_torch_save({"proj_in.weight": sd["proj_in.weight"], "evil": Evil()}, root / "evil.bin")
    # Reference values for the reader tests.
    save_file({f"expected.{k}": v for k, v in sd.items()}, str(root / "expected.safetensors"))
    write_json(root / "versions.json", versions())



@torch.no_grad()
def stage_random(out: Path):
    """torch.randn from torch.Generator("cpu").manual_seed(seed), and diffusers' randn_tensor."""
    from diffusers.utils.torch_utils import randn_tensor

    c = Cases()
    for seed in [0, 1, 42, 1234, 2**32 + 5]:
        for shape in [(1,), (5,), (15,), (16,), (17,), (37,), (1, 4, 8, 8), (2, 16, 3)]:
            for dtype in [torch.float32, torch.float64]:
                g = torch.Generator("cpu").manual_seed(seed)
                name = f"randn_{seed}_{'x'.join(map(str, shape))}_{str(dtype).split('.')[-1]}"
                first = torch.randn(shape, generator=g, dtype=dtype)
                # A second draw from the same generator continues its stream (and its cached normal).
                second = torch.randn((3,), generator=g, dtype=dtype)
                c.add(name, "randn", {"seed": seed, "shape": list(shape), "dtype": str(dtype).split(".")[-1]},
                      {}, {"first": first, "second": second})
    for seed in [0, 42]:
        for shape in [(5,), (16,), (37,), (1, 4, 8, 8)]:
            for dtype in [torch.bfloat16, torch.float16]:
                g = torch.Generator("cpu").manual_seed(seed)
                name = f"randn_{seed}_{'x'.join(map(str, shape))}_{str(dtype).split('.')[-1]}"
                first = torch.randn(shape, generator=g, dtype=dtype)
                second = torch.randn((3,), generator=g, dtype=dtype)
                c.add(name, "randn", {"seed": seed, "shape": list(shape), "dtype": str(dtype).split(".")[-1]},
                      {}, {"first": first, "second": second})
    gens = [torch.Generator("cpu").manual_seed(s) for s in (7, 8)]
    c.add("randn_tensor_per_sample", "randn_tensor", {"seeds": [7, 8], "shape": [2, 4, 3, 3]}, {},
          {"output": randn_tensor((2, 4, 3, 3), generator=gens, dtype=torch.float32)})
    gens = [torch.Generator("cpu").manual_seed(s) for s in (7, 8)]
    c.add("randn_tensor_per_sample_bf16", "randn_tensor", {"seeds": [7, 8], "shape": [2, 4, 3, 3]}, {},
          {"output": randn_tensor((2, 4, 3, 3), generator=gens, dtype=torch.bfloat16)})
    c.add("randn_tensor_single", "randn_tensor", {"seeds": [9], "shape": [2, 4, 3, 3]}, {},
          {"output": randn_tensor((2, 4, 3, 3), generator=torch.Generator("cpu").manual_seed(9), dtype=torch.float32)})
    c.save(out / "schedulers", "random")


def run_scheduler(c, name, cls, config, set_kwargs, steps_seed=0, shape=(1, 4, 4, 4), step_kwargs=None, gen_seed=None,
                  extra=None):
    """Records set_timesteps and a whole denoising loop with fixed samples and model outputs."""
    sched = cls(**config)
    sched.set_timesteps(**set_kwargs)
    g = torch.Generator("cpu").manual_seed(steps_seed)
    init_sigma = float(getattr(sched, "init_noise_sigma", 1.0))
    sample = torch.randn(shape, generator=g) * init_sigma
    outputs = {"timesteps": sched.timesteps.to(torch.float64)}
    if getattr(sched, "sigmas", None) is not None:
        outputs["sigmas"] = torch.as_tensor(sched.sigmas).to(torch.float64)
    inputs = {"sample": sample}
    g_noise = torch.Generator("cpu").manual_seed(steps_seed + 1000)
    # add_noise (scale_noise for flow matching) of a clean sample at the second timestep.
    clean, noise = torch.randn(shape, generator=g_noise), torch.randn(shape, generator=g_noise)
    t1 = sched.timesteps[min(1, len(sched.timesteps) - 1)]
    if hasattr(sched, "add_noise"):
        inputs.update({"clean": clean, "noise": noise})
        outputs["add_noise"] = sched.add_noise(clean, noise, t1.reshape(1))
    elif hasattr(sched, "scale_noise"):
        inputs.update({"clean": clean, "noise": noise})
        outputs["add_noise"] = sched.scale_noise(clean, t1.reshape(1), noise)
    step_gen = torch.Generator("cpu").manual_seed(gen_seed) if gen_seed is not None else None
    # Record every noise draw a stochastic step makes (diffusers' randn_tensor in the module).
    module = sys.modules[cls.__module__]
    draws = []
    original_randn = getattr(module, "randn_tensor", None)
    if original_randn is not None:
        def recording_randn(*args, **kwargs):
            out = original_randn(*args, **kwargs)
            draws.append(out.detach().clone())
            return out
        module.randn_tensor = recording_randn
    try:
        run_loop(sched, sample, g, shape, inputs, outputs, step_kwargs, step_gen)
    finally:
        if original_randn is not None:
            module.randn_tensor = original_randn
    for k, d in enumerate(draws):
        inputs[f"noise_draw_{k}"] = d
    cfg = {"class": cls.__name__, "config": dict(sched.config), "set_timesteps": set_kwargs,
           "init_noise_sigma": init_sigma, "order": getattr(sched, "order", 1), "gen_seed": gen_seed,
           "steps": len(sched.timesteps), "noise_draws": len(draws)}
    # Non-finite values (lambda_min_clipped's -inf default) are written as Python's json writes
    # them (`-Infinity`), as diffusers' save_config does: the tests read them like any config.
    cfg["config"] = {k: v for k, v in cfg["config"].items() if not k.startswith("_")}
    cfg.update(extra or {})
    c.add(name, "scheduler", json.loads(json.dumps(cfg, default=float)), inputs, outputs)


def run_loop(sched, sample, g, shape, inputs, outputs, step_kwargs, step_gen):
    for i, t in enumerate(sched.timesteps):
        model_output = torch.randn(shape, generator=g)
        inputs[f"model_output_{i}"] = model_output
        if hasattr(sched, "scale_model_input"):
            outputs[f"scaled_{i}"] = sched.scale_model_input(sample, t)
        kw = dict(step_kwargs or {})
        if step_gen is not None:
            kw["generator"] = step_gen
        sample = sched.step(model_output, t, sample, **kw).prev_sample
        outputs[f"prev_{i}"] = sample


@torch.no_grad()
def stage_schedulers(out: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler as FM

    c = Cases()
    flux_dev = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    n = 8
    flux_sigmas = [float(x) for x in np.linspace(1.0, 1 / n, n)]
    run_scheduler(c, "fm_default", FM, {}, {"num_inference_steps": n})
    run_scheduler(c, "fm_sd3", FM, {"shift": 3.0}, {"num_inference_steps": n})
    run_scheduler(c, "fm_flux_dev", FM, flux_dev, {"sigmas": flux_sigmas, "mu": 0.8})
    run_scheduler(c, "fm_flux_linear", FM, {**flux_dev, "time_shift_type": "linear"},
                  {"sigmas": flux_sigmas, "mu": 1.1})
    run_scheduler(c, "fm_terminal", FM, {"shift": 2.0, "shift_terminal": 0.1}, {"num_inference_steps": n})
    run_scheduler(c, "fm_karras", FM, {"shift": 3.0, "use_karras_sigmas": True}, {"num_inference_steps": n})
    run_scheduler(c, "fm_exponential", FM, {"use_exponential_sigmas": True}, {"num_inference_steps": n})
    run_scheduler(c, "fm_invert", FM, {"invert_sigmas": True}, {"num_inference_steps": n})
    run_scheduler(c, "fm_custom_timesteps", FM, {"shift": 3.0},
                  {"sigmas": [1.0, 0.75, 0.5, 0.25], "timesteps": [999.0, 750.0, 500.0, 250.0]})
    run_scheduler(c, "fm_stochastic", FM, {"stochastic_sampling": True}, {"num_inference_steps": n}, gen_seed=5)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for seq in [256, 1024, 4096, 4608, 77]:
        mu = calculate_shift(seq, 256, 4096, 0.5, 1.15)
        c.cases[f"calculate_shift_{seq}"] = {"kind": "calculate_shift", "image_seq_len": seq, "base_seq_len": 256,
                                            "max_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15, "mu": mu}
    c.save(out / "schedulers", "flow_match")



@torch.no_grad()
def stage_discrete_schedulers(out: Path):
    """DDPM-family schedulers over SD-style configs (beta schedules, spacings, predictions)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
    from diffusers import FlowMatchEulerDiscreteScheduler as FM

    c = Cases()
    sd = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    n = 6
    run_scheduler(c, "ddim_sd", DDIMScheduler, {**sd, "clip_sample": False, "set_alpha_to_one": False,
                                                 "steps_offset": 1}, {"num_inference_steps": n})
    run_scheduler(c, "ddim_linear_clip", DDIMScheduler, {}, {"num_inference_steps": n})
    run_scheduler(c, "ddim_vpred_trailing_zsnr", DDIMScheduler,
                  {**sd, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                   "rescale_betas_zero_snr": True, "clip_sample": False}, {"num_inference_steps": n})
    run_scheduler(c, "ddim_cos_linspace_sample", DDIMScheduler,
                  {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "prediction_type": "sample"},
                  {"num_inference_steps": n})
    run_scheduler(c, "ddim_eta", DDIMScheduler, {**sd, "clip_sample": False}, {"num_inference_steps": n},
                  step_kwargs={"eta": 0.7}, gen_seed=3)
    run_scheduler(c, "euler_sd", EulerDiscreteScheduler, {**sd, "steps_offset": 1, "timestep_spacing": "leading"},
                  {"num_inference_steps": n})
    run_scheduler(c, "euler_linspace", EulerDiscreteScheduler, sd, {"num_inference_steps": n})
    run_scheduler(c, "euler_trailing_vpred", EulerDiscreteScheduler,
                  {**sd, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, {"num_inference_steps": n})
    run_scheduler(c, "euler_karras", EulerDiscreteScheduler, {**sd, "use_karras_sigmas": True},
                  {"num_inference_steps": n})
    run_scheduler(c, "euler_exponential_sigma_min", EulerDiscreteScheduler,
                  {**sd, "use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}, {"num_inference_steps": n})
    run_scheduler(c, "euler_continuous_vpred", EulerDiscreteScheduler,
                  {**sd, "timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True},
                  {"num_inference_steps": n})
    run_scheduler(c, "euler_a_sd", EulerAncestralDiscreteScheduler, {**sd, "steps_offset": 1,
                                                                      "timestep_spacing": "leading"},
                  {"num_inference_steps": n}, gen_seed=4)
    run_scheduler(c, "euler_a_trailing_vpred", EulerAncestralDiscreteScheduler,
                  {**sd, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
                  {"num_inference_steps": n}, gen_seed=6)
    c.save(out / "schedulers", "discrete")

    from diffusers import DPMSolverMultistepScheduler as DPM

    c = Cases()
    n = 8
    sd_lead = {**sd, "steps_offset": 1, "timestep_spacing": "leading"}
    run_scheduler(c, "dpm_2m_sd", DPM, sd_lead, {"num_inference_steps": n})
    run_scheduler(c, "dpm_2m_karras", DPM, {**sd, "use_karras_sigmas": True}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_3m", DPM, {**sd, "solver_order": 3}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_3m_20", DPM, {**sd, "solver_order": 3}, {"num_inference_steps": 20})
    run_scheduler(c, "dpm_2m_heun_trailing_vpred", DPM,
                  {**sd, "solver_type": "heun", "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
                  {"num_inference_steps": n})
    run_scheduler(c, "dpm_1", DPM, {**sd, "solver_order": 1}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_sde_2m", DPM, {**sd, "algorithm_type": "sde-dpmsolver++"}, {"num_inference_steps": n},
                  gen_seed=11)
    run_scheduler(c, "dpm_sde_3m_karras", DPM, {**sd, "algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                                "use_karras_sigmas": True}, {"num_inference_steps": n}, gen_seed=12)
    run_scheduler(c, "dpm_lu", DPM, {**sd, "use_lu_lambdas": True}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_exponential", DPM, {**sd, "use_exponential_sigmas": True}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_flow", DPM, {"use_flow_sigmas": True, "flow_shift": 3.0,
                                       "prediction_type": "flow_prediction"}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_dpmsolver_sigma_min", DPM, {**sd, "algorithm_type": "dpmsolver",
                                                      "final_sigmas_type": "sigma_min"}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_cos_clip_sample", DPM, {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1,
                                                  "prediction_type": "sample"}, {"num_inference_steps": n})
    run_scheduler(c, "dpm_euler_at_final", DPM, {**sd, "euler_at_final": True, "lower_order_final": False,
                                                 "final_sigmas_type": "sigma_min"}, {"num_inference_steps": 16})
    saved_scheduler(c, out, "dpm_saved", DPM, {**sd_lead, "algorithm_type": "sde-dpmsolver++"},
                    {"num_inference_steps": n}, gen_seed=13)
    c.save(out / "schedulers", "dpmsolver_multistep")

    from diffusers import PNDMScheduler

    c = Cases()
    run_scheduler(c, "pndm_sd", PNDMScheduler, {**sd, "skip_prk_steps": True, "steps_offset": 1,
                                                 "set_alpha_to_one": False}, {"num_inference_steps": 8})
    run_scheduler(c, "pndm_prk", PNDMScheduler, {}, {"num_inference_steps": 8})
    run_scheduler(c, "pndm_prk_vpred_linspace", PNDMScheduler, {**sd, "prediction_type": "v_prediction",
                                                                 "timestep_spacing": "linspace"}, {"num_inference_steps": 6})
    run_scheduler(c, "pndm_trailing", PNDMScheduler, {**sd, "skip_prk_steps": True, "timestep_spacing": "trailing"},
                  {"num_inference_steps": 7})
    c.save(out / "schedulers", "pndm")

    from diffusers import DDPMScheduler

    c = Cases()
    run_scheduler(c, "ddpm_default", DDPMScheduler, {}, {"num_inference_steps": 6}, gen_seed=21)
    run_scheduler(c, "ddpm_sd_small_log_vpred", DDPMScheduler,
                  {**sd, "variance_type": "fixed_small_log", "prediction_type": "v_prediction", "clip_sample": False},
                  {"num_inference_steps": 6}, gen_seed=22)
    run_scheduler(c, "ddpm_large_trailing", DDPMScheduler, {**sd, "variance_type": "fixed_large",
                                                             "timestep_spacing": "trailing"},
                  {"num_inference_steps": 6}, gen_seed=23)
    run_scheduler(c, "ddpm_custom_sample", DDPMScheduler, {"prediction_type": "sample"},
                  {"timesteps": [900, 600, 300, 0]}, gen_seed=24)
    c.save(out / "schedulers", "ddpm")

    from diffusers import HeunDiscreteScheduler

    c = Cases()
    run_scheduler(c, "heun_sd", HeunDiscreteScheduler, sd, {"num_inference_steps": 5})
    run_scheduler(c, "heun_karras_vpred", HeunDiscreteScheduler, {**sd, "use_karras_sigmas": True,
                                                                   "prediction_type": "v_prediction"},
                  {"num_inference_steps": 5})
    run_scheduler(c, "heun_leading_clip_sample", HeunDiscreteScheduler,
                  {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": True, "prediction_type": "sample"},
                  {"num_inference_steps": 5})
    run_scheduler(c, "heun_exp_exponential", HeunDiscreteScheduler, {"beta_schedule": "exp",
                                                                      "use_exponential_sigmas": True},
                  {"num_inference_steps": 5})
    c.save(out / "schedulers", "heun")

    from diffusers import LCMScheduler

    c = Cases()
    run_scheduler(c, "lcm_4", LCMScheduler, {}, {"num_inference_steps": 4}, gen_seed=31)
    run_scheduler(c, "lcm_img2img_strength", LCMScheduler, {"set_alpha_to_one": False},
                  {"num_inference_steps": 3, "strength": 0.6}, gen_seed=32)
    run_scheduler(c, "lcm_custom_vpred", LCMScheduler, {"prediction_type": "v_prediction", "clip_sample": True},
                  {"timesteps": [999, 759, 499, 259]}, gen_seed=33)
    c.save(out / "schedulers", "lcm")

    from diffusers import TCDScheduler

    c = Cases()
    run_scheduler(c, "tcd_4", TCDScheduler, {}, {"num_inference_steps": 4}, gen_seed=41)
    run_scheduler(c, "tcd_strength_vpred", TCDScheduler, {"prediction_type": "v_prediction", "set_alpha_to_one": False},
                  {"num_inference_steps": 3, "strength": 0.7}, gen_seed=42)
    c.save(out / "schedulers", "tcd")

    from diffusers import LMSDiscreteScheduler as LMS

    c = Cases()
    run_scheduler(c, "lms_sd", LMS, sd, {"num_inference_steps": 8})
    run_scheduler(c, "lms_karras_vpred", LMS, {**sd, "use_karras_sigmas": True, "prediction_type": "v_prediction"},
                  {"num_inference_steps": 8})
    run_scheduler(c, "lms_leading_exponential", LMS, {**sd, "timestep_spacing": "leading", "steps_offset": 1,
                                                      "use_exponential_sigmas": True}, {"num_inference_steps": 6})
    c.save(out / "schedulers", "lms")

    from diffusers import KDPM2AncestralDiscreteScheduler as KA
    from diffusers import KDPM2DiscreteScheduler as K2

    c = Cases()
    run_scheduler(c, "kdpm2_sd", K2, sd, {"num_inference_steps": 5})
    run_scheduler(c, "kdpm2_karras_vpred", K2, {**sd, "use_karras_sigmas": True, "prediction_type": "v_prediction"},
                  {"num_inference_steps": 5})
    run_scheduler(c, "kdpm2_leading", K2, {**sd, "timestep_spacing": "leading", "steps_offset": 1},
                  {"num_inference_steps": 5})
    run_scheduler(c, "kdpm2a_sd", KA, sd, {"num_inference_steps": 5}, gen_seed=51)
    run_scheduler(c, "kdpm2a_karras_trailing", KA, {**sd, "use_karras_sigmas": True, "timestep_spacing": "trailing"},
                  {"num_inference_steps": 5}, gen_seed=52)
    c.save(out / "schedulers", "kdpm2")


    from diffusers import UniPCMultistepScheduler as UniPC

    c = Cases()
    n = 8
    run_scheduler(c, "unipc_sd", UniPC, sd, {"num_inference_steps": n})
    # bh1 with a zero final sigma gives NaN in diffusers (B_h = -inf times a zero residual);
    # the fixture uses the valid sigma_min ending.
    run_scheduler(c, "unipc_order3_bh1_leading", UniPC, {**sd, "solver_order": 3, "solver_type": "bh1",
                                                          "timestep_spacing": "leading", "steps_offset": 1,
                                                          "final_sigmas_type": "sigma_min"},
                  {"num_inference_steps": n})
    run_scheduler(c, "unipc_order3_20", UniPC, {**sd, "solver_order": 3}, {"num_inference_steps": 20})
    run_scheduler(c, "unipc_karras_vpred", UniPC, {**sd, "use_karras_sigmas": True, "prediction_type": "v_prediction"},
                  {"num_inference_steps": n})
    run_scheduler(c, "unipc_noise_pred_trailing", UniPC, {**sd, "predict_x0": False, "timestep_spacing": "trailing",
                                                           "final_sigmas_type": "sigma_min"},
                  {"num_inference_steps": n})
    run_scheduler(c, "unipc_wan", UniPC, {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                          "flow_shift": 3.0, "solver_order": 2, "predict_x0": True},
                  {"num_inference_steps": n})
    run_scheduler(c, "unipc_flow_dynamic_terminal", UniPC,
                  {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "use_dynamic_shifting": True,
                   "shift_terminal": 0.05, "disable_corrector": [2]}, {"num_inference_steps": n, "mu": 0.9})
    run_scheduler(c, "unipc_exponential", UniPC, {**sd, "use_exponential_sigmas": True}, {"num_inference_steps": n})
    c.save(out / "schedulers", "unipc")

    # Dynamic thresholding (sample values large enough for the quantile to exceed 1).
    c = Cases()
    thr = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
    run_scheduler(c, "thr_ddim", DDIMScheduler, {**thr, "clip_sample": False}, {"num_inference_steps": 5})
    run_scheduler(c, "thr_ddpm", DDPMScheduler, thr, {"num_inference_steps": 5}, gen_seed=61)
    run_scheduler(c, "thr_dpm_pp", DPM, {**thr, "solver_order": 2}, {"num_inference_steps": 6})
    run_scheduler(c, "thr_dpm_noise", DPM, {**thr, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
                  {"num_inference_steps": 6})
    run_scheduler(c, "thr_unipc", UniPC, thr, {"num_inference_steps": 6})
    run_scheduler(c, "thr_lcm", LCMScheduler, thr, {"num_inference_steps": 4}, gen_seed=62)
    c.save(out / "schedulers", "thresholding")

    # Beta sigmas (scipy.stats.beta.ppf) in every scheduler that offers them.
    c = Cases()
    run_scheduler(c, "beta_flow_match", FM, {"use_beta_sigmas": True, "shift": 3.0}, {"num_inference_steps": 6})
    run_scheduler(c, "beta_euler", EulerDiscreteScheduler, {**sd, "use_beta_sigmas": True}, {"num_inference_steps": 6})
    run_scheduler(c, "beta_dpm", DPM, {**sd, "use_beta_sigmas": True}, {"num_inference_steps": 6})
    run_scheduler(c, "beta_heun", HeunDiscreteScheduler, {**sd, "use_beta_sigmas": True}, {"num_inference_steps": 4})
    run_scheduler(c, "beta_lms", LMS, {**sd, "use_beta_sigmas": True}, {"num_inference_steps": 6})
    run_scheduler(c, "beta_kdpm2", K2, {**sd, "use_beta_sigmas": True}, {"num_inference_steps": 4})
    run_scheduler(c, "beta_unipc", UniPC, {**sd, "use_beta_sigmas": True}, {"num_inference_steps": 6})
    c.save(out / "schedulers", "beta_sigmas")

    from diffusers import DEISMultistepScheduler as DEIS

    c = Cases()
    run_scheduler(c, "deis_sd", DEIS, sd, {"num_inference_steps": 8})
    run_scheduler(c, "deis_order3_20", DEIS, {**sd, "solver_order": 3}, {"num_inference_steps": 20})
    run_scheduler(c, "deis_order3_vpred_leading", DEIS, {**sd, "solver_order": 3, "prediction_type": "v_prediction",
                                                         "timestep_spacing": "leading", "steps_offset": 1},
                  {"num_inference_steps": 8})
    run_scheduler(c, "deis_karras", DEIS, {**sd, "use_karras_sigmas": True}, {"num_inference_steps": 8})
    run_scheduler(c, "deis_flow", DEIS, {"use_flow_sigmas": True, "flow_shift": 3.0,
                                         "prediction_type": "flow_prediction"}, {"num_inference_steps": 8})
    # The same 20-step third-order run with correctly rounded float32 logs in place of numpy's
    # SIMD float32 log: DEIS's third-order coefficients cancel, so the log's last bit shows.
    import diffusers.schedulers.scheduling_deis_multistep as deis_module

    class ExactLogNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def log(x):
            return np.float32(np.log(np.float64(x)))

    deis_module.np = ExactLogNumpy()
    try:
        run_scheduler(c, "deis_order3_20_exact_log", DEIS, {**sd, "solver_order": 3}, {"num_inference_steps": 20})
    finally:
        deis_module.np = np
    c.save(out / "schedulers", "deis")

    from diffusers import DPMSolverSinglestepScheduler as DPMS

    c = Cases()
    run_scheduler(c, "dpms_2", DPMS, sd, {"num_inference_steps": 8})
    run_scheduler(c, "dpms_3_sigma_min", DPMS, {**sd, "solver_order": 3, "final_sigmas_type": "sigma_min"},
                  {"num_inference_steps": 9})
    run_scheduler(c, "dpms_3_heun_karras", DPMS, {**sd, "solver_order": 3, "solver_type": "heun",
                                                  "use_karras_sigmas": True}, {"num_inference_steps": 8})
    run_scheduler(c, "dpms_dpmsolver_vpred", DPMS, {**sd, "algorithm_type": "dpmsolver",
                                                    "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
                  {"num_inference_steps": 7})
    run_scheduler(c, "dpms_sde_2", DPMS, {**sd, "algorithm_type": "sde-dpmsolver++"}, {"num_inference_steps": 6},
                  gen_seed=71)
    run_scheduler(c, "dpms_flow", DPMS, {"use_flow_sigmas": True, "flow_shift": 3.0,
                                         "prediction_type": "flow_prediction"}, {"num_inference_steps": 6})
    saved_scheduler(c, out, "dpms_saved", DPMS, {**sd, "use_karras_sigmas": True}, {"num_inference_steps": 8})
    c.save(out / "schedulers", "dpmsolver_singlestep")


def saved_scheduler(c, out: Path, name, cls, config, set_kwargs, **kw):
    """A scheduler written by diffusers' save_config (Python's json: lambda_min_clipped's default
    is `-Infinity`) to schedulers/saved/CLASS/scheduler_config.json, read back by from_pretrained,
    and its loop recorded; the case names the folder, and the test loads the scheduler from it."""
    folder = out / "schedulers" / "saved" / cls.__name__
    if folder.exists():
        shutil.rmtree(folder)
    cls(**config).save_config(folder)
    text = (folder / "scheduler_config.json").read_text()
    assert '"lambda_min_clipped": -Infinity' in text, text
    loaded = cls.from_pretrained(folder)
    assert math.isinf(loaded.config.lambda_min_clipped)
    run_scheduler(c, name, cls, {k: v for k, v in loaded.config.items() if not k.startswith("_")}, set_kwargs,
                  extra={"saved": f"schedulers/saved/{cls.__name__}"}, **kw)


@torch.no_grad()
def stage_text_encoders(out: Path):
    """Tiny CLIP text encoders saved in the hub layout, with their outputs for fixed token ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    c = Cases()
    root = out / "text_encoders"
    variants = {
        # SD 1.x style: quick_gelu, eos id at the end of the vocabulary (first-eos pooling).
        "clip_quick_gelu": dict(hidden_act="quick_gelu", eos_token_id=99, with_projection=False),
        # SD 2.x / SDXL OpenCLIP style: gelu, projection, legacy eos id 2 (argmax pooling).
        "clip_gelu_projection": dict(hidden_act="gelu", eos_token_id=2, with_projection=True),
    }
    for name, v in variants.items():
        torch.manual_seed(3)
        cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, projection_dim=24,
                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                             hidden_act=v["hidden_act"], layer_norm_eps=1e-5, bos_token_id=98,
                             eos_token_id=v["eos_token_id"], pad_token_id=1)
        cls = CLIPTextModelWithProjection if v["with_projection"] else CLIPTextModel
        model = cls(cfg).eval()
        folder = root / name
        model.save_pretrained(folder)
        model = cls.from_pretrained(folder).eval()
        ids = torch.tensor([[98, 5, 17, 42, 99, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                            [98, 63, 2, 8, 23, 77, 11, 99, 99, 1, 1, 1, 1, 1, 1, 1]])
        if v["eos_token_id"] == 2:
            ids = torch.tensor([[98, 5, 17, 42, 97, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                                [98, 63, 3, 8, 23, 77, 11, 97, 0, 0, 0, 0, 0, 0, 0, 0]])
        if not v["with_projection"]:
            # The layout transformers 4.x wrote (and real SD repositories have): keys under `text_model.`.
            legacy = root / f"{name}_text_model_prefix"
            legacy.mkdir(parents=True, exist_ok=True)
            save_file({f"text_model.{k}": t.contiguous() for k, t in model.state_dict().items()},
                      str(legacy / "model.safetensors"), metadata={"format": "pt"})
            (legacy / "config.json").write_text((folder / "config.json").read_text())
        res = model(input_ids=ids, output_hidden_states=True)
        outputs = {"last_hidden_state": res.last_hidden_state}
        for i, h in enumerate(res.hidden_states):
            outputs[f"hidden_states_{i}"] = h
        if v["with_projection"]:
            outputs["text_embeds"] = res.text_embeds
        else:
            outputs["pooler_output"] = res.pooler_output
        c.add(name, "clip_text", {"class": cls.__name__, "folder": f"text_encoders/{name}",
                                  "with_projection": v["with_projection"]},
              {"input_ids": ids.float()}, outputs)
    c.save(root, "clip")

    from transformers import T5Config, T5EncoderModel

    c = Cases()
    for name, ff in {"t5_gated_gelu": "gated-gelu", "t5_relu": "relu"}.items():
        torch.manual_seed(4)
        cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=8, relative_attention_max_distance=20,
                       feed_forward_proj=ff, layer_norm_epsilon=1e-6)
        model = T5EncoderModel(cfg).eval()
        folder = root / name
        model.save_pretrained(folder)
        model = T5EncoderModel.from_pretrained(folder).eval()
        ids = torch.tensor([[5, 17, 42, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                            [63, 2, 8, 23, 77, 11, 31, 64, 3, 88, 12, 6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                             0, 0, 0, 0]])
        out = model(input_ids=ids).last_hidden_state
        c.add(name, "t5_encoder", {"folder": f"text_encoders/{name}", "feed_forward_proj": ff},
              {"input_ids": ids.float()}, {"last_hidden_state": out})
    c.save(root, "t5")


@torch.no_grad()
def stage_umt5(out: Path):
    """A tiny UMT5EncoderModel (Wan's text encoder: unlike T5, every layer has its own relative
    attention bias) saved in the hub layout, with its outputs for fixed ids without and with the
    attention mask (Wan's pipeline passes the tokenizer's mask)."""
    from transformers import UMT5Config, UMT5EncoderModel

    c = Cases()
    root = out / "text_encoders"
    torch.manual_seed(5)
    cfg = UMT5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=40, num_layers=3, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=20,
                     feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
    model = UMT5EncoderModel(cfg).eval()
    folder = root / "umt5"
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    model = UMT5EncoderModel.from_pretrained(folder).eval()
    ids = torch.tensor([[5, 17, 42, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        [63, 2, 8, 23, 77, 11, 31, 64, 3, 88, 12, 6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    mask = (ids > 0).long()
    plain = model(input_ids=ids).last_hidden_state
    masked = model(input_ids=ids, attention_mask=mask).last_hidden_state
    c.add("umt5", "umt5_encoder", {"folder": "text_encoders/umt5"},
          {"input_ids": ids.float(), "attention_mask": mask.float()},
          {"last_hidden_state": plain, "last_hidden_state_masked": masked})
    c.save(root, "umt5")


# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B and of HunyuanVideo's tokenizer).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("o", "n"), ("Ġ", "a"), ("r", "e"),
                ("a", "t"), ("Ġ", "c"), ("Ġc", "at"), ("e", "n"), ("Ġ", "s"), ("o", "r"), ("Ġ", "o"), ("Ġo", "f"),
                ("n", "d"), ("Ġa", "nd"), ("t", "i"), ("ti", "on"), ("Ċ", "Ċ"), ("Ġ", "m"), ("e", "s")]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<pad>"]


def make_llama_tokenizer(folder: Path):
    """A tiny tokenizer in Llama 3's layout (HunyuanVideo's text tokenizer): byte-level BPE with
    ignore_merges, Llama 3's split regex, `<|begin_of_text|>` prepended by a TemplateProcessing
    post-processor, the header/eot special tokens, and a `<pad>` token padding on the right. Saved by
    transformers 5 (tokenizer.json + tokenizer_config.json) and read back with AutoTokenizer, which keeps
    a byte-level tokenizer.json as written (transformers 5's LlamaTokenizerFast.from_pretrained would
    rebuild it with a Metaspace pre-tokenizer and pad on the left)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bu = bytes_to_unicode()
    vocab = {bu[b]: b for b in range(256)}
    for a, b in LLAMA_MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=LLAMA_MERGES, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", padding_side="right")
    if folder.exists():
        shutil.rmtree(folder)
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def stage_llama(out: Path):
    """HunyuanVideo's text encoder at tiny size: a random LlamaModel (GQA: 4 heads, 2 key/value
    heads, an explicit head_dim; rope_theta 500000 as HunyuanVideo's) saved by transformers 5 (keys without a prefix), the
    same weights as a LlamaForCausalLM in sharded files (`model.` prefixes, an lm_head), and a tiny
    Llama 3-style tokenizer. Records every hidden state for tokenized prompts with and without the
    padding mask, and HunyuanVideoPipeline._get_llama_prompt_embeds (called unbound on an object
    holding the tokenizer and encoder) for a short template and for DEFAULT_PROMPT_TEMPLATE, with the
    given crop_start and with crop_start computed from the template."""
    import types

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE, HunyuanVideoPipeline
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    root = out / "text_encoders"
    tok = make_llama_tokenizer(root / "llama_tokenizer")
    torch.manual_seed(12)
    # head_dim given (8, where hidden_size / heads would be 4): q/o project 16 <-> 32.
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                      rms_norm_eps=1e-5,
                      rope_theta=500000.0, initializer_range=0.3, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaModel(cfg).eval()
    # The RMS norms start at weight 1: move them off 1 so that the test sees the weights used.
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape))
    folder = root / "llama"
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    model = LlamaModel.from_pretrained(folder).eval()
    causal = LlamaForCausalLM(cfg).eval()
    causal.model = model
    causal_folder = root / "llama_causal_lm"
    if causal_folder.exists():
        shutil.rmtree(causal_folder)
    causal.save_pretrained(causal_folder, max_shard_size="30KB")
    (causal_folder / "generation_config.json").unlink(missing_ok=True)

    c = Cases()
    prompts = ["a cat on the mat", "A cat walks on the grass, realistic\n\nin the style of an oil painting",
               "café ☕ 42"]
    enc = tok(prompts, max_length=12, padding="max_length", truncation=True, return_tensors="pt")
    masked = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    plain = model(input_ids=enc.input_ids, output_hidden_states=True)
    outputs = {f"hidden_states_{i}": h for i, h in enumerate(masked.hidden_states)}
    outputs["last_hidden_state"] = masked.last_hidden_state
    outputs["last_hidden_state_unmasked"] = plain.last_hidden_state
    c.add("hidden", "llama_model", {"folder": "text_encoders/llama", "prompts": prompts, "max_length": 12,
                                    "ids": enc.input_ids.tolist(), "attention_mask": enc.attention_mask.tolist()},
          {"input_ids": enc.input_ids.float(), "attention_mask": enc.attention_mask.float()}, outputs)

    short = {"template": "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video.<|eot_id|>"
                         "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"}
    pipe = types.SimpleNamespace(tokenizer=tok, text_encoder=model, _execution_device=torch.device("cpu"))
    templates = {
        # (template, max_sequence_length, num_hidden_layers_to_skip)
        "short": (short, 8, 0),
        "default": (DEFAULT_PROMPT_TEMPLATE, 16, 2),
        "default_computed": ({"template": DEFAULT_PROMPT_TEMPLATE["template"]}, 16, 1),
    }
    for name, (template, max_len, skip) in templates.items():
        embeds, mask = HunyuanVideoPipeline._get_llama_prompt_embeds(
            pipe, prompts, template, device=torch.device("cpu"), dtype=torch.float32, max_sequence_length=max_len,
            num_hidden_layers_to_skip=skip)
        # The crop_start and token ids _get_llama_prompt_embeds computes (its lines, repeated here).
        crop_start = template.get("crop_start")
        if crop_start is None:
            crop_start = tok(template["template"], padding="max_length", return_tensors="pt").input_ids.shape[-1] - 2
        ids = tok([template["template"].format(p) for p in prompts], max_length=max_len + crop_start,
                  padding="max_length", truncation=True)
        c.add(name, "llama_prompt_embeds",
              {"template": template["template"], "crop_start": template.get("crop_start"),
               "crop_start_used": crop_start, "max_sequence_length": max_len, "num_hidden_layers_to_skip": skip,
               "prompts": prompts, "ids": ids.input_ids, "attention_mask": ids.attention_mask},
              {}, {"prompt_embeds": embeds, "prompt_attention_mask": mask})
    c.save(root, "llama")


@torch.no_grad()
def stage_vae(out: Path):
    """A tiny AutoencoderKL (two blocks, mid attention, quant convs) and a Flux-style one
    (no quant convs, shift factor), saved in the hub layout, with encode and decode outputs."""
    from diffusers import AutoencoderKL

    c = Cases()
    root = out / "vae"
    variants = {
        "sd_style": dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
        "flux_style": dict(block_out_channels=(8, 16, 16), layers_per_block=2, latent_channels=16, norm_num_groups=4,
                           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                           use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                           scaling_factor=0.3611),
    }
    for name, kw in variants.items():
        torch.manual_seed(5)
        vae = AutoencoderKL(**kw).eval()
        folder = root / name
        vae.save_pretrained(folder)
        vae = AutoencoderKL.from_pretrained(folder).eval()
        factor = 2 ** (len(kw["block_out_channels"]) - 1)
        image = torch.rand(1, 3, 4 * factor, 6 * factor) * 2 - 1
        posterior = vae.encode(image).latent_dist
        latents = torch.randn(1, kw["latent_channels"], 4, 6)
        decoded = vae.decode(latents).sample
        c.add(name, "autoencoder_kl", {"folder": f"vae/{name}"}, {"image": image, "latents": latents},
              {"mean": posterior.mean, "logvar": posterior.logvar, "decoded": decoded})
    c.save(root, "autoencoder_kl")


WAN21_VAE_CONFIG = {  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, vae/config.json
    "_class_name": "AutoencoderKLWan", "_diffusers_version": "0.33.0.dev0", "attn_scales": [], "base_dim": 96,
    "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                     -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                    1.6382, 1.1253, 2.8251, 1.916],
    "num_res_blocks": 2, "temperal_downsample": [False, True, True], "z_dim": 16,
}


@torch.no_grad()
def stage_wan_vae(out: Path):
    """A tiny AutoencoderKLWan (Wan 2.1's causal video VAE: four levels, temporal downsampling in
    the last two, mid attention) saved in the hub layout, with encode of a 9-frame video (chunks of
    1, 4, 4 frames through the feature cache) and decodes of 3 latent frames and of 1; and the
    parameter layout of the real Wan2.1-T2V-1.3B VAE, built on the meta device."""
    from diffusers import AutoencoderKLWan

    c = Cases()
    root = out / "vae"
    torch.manual_seed(11)
    z = 4
    vae = AutoencoderKLWan(base_dim=4, z_dim=z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[round(float(v), 4) for v in torch.randn(z)],
                           latents_std=[round(float(v), 4) for v in torch.rand(z) + 0.5]).eval()
    # The RMS norms start at gamma = 1: move them off 1 so that the test sees gamma used.
    for name, p in vae.named_parameters():
        if name.endswith("gamma"):
            p.copy_(1 + 0.2 * torch.randn(p.shape))
    folder = root / "wan_tiny"
    if folder.exists():
        shutil.rmtree(folder)
    vae.save_pretrained(folder)
    vae = AutoencoderKLWan.from_pretrained(folder).eval()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    posterior = vae.encode(video).latent_dist
    latents = torch.randn(1, z, 3, 2, 2)
    decoded = vae.decode(latents).sample
    latents1 = torch.randn(1, z, 1, 2, 2)
    decoded1 = vae.decode(latents1).sample
    # WanPipeline's step before vae.decode, as pipeline_wan.py writes it.
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.dtype)
    latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.dtype)
    denormalized = latents / latents_std + latents_mean
    c.add("wan_tiny", "autoencoder_kl_wan", {"folder": "vae/wan_tiny"},
          {"video": video, "latents": latents, "latents_one_frame": latents1},
          {"mean": posterior.mean, "logvar": posterior.logvar, "decoded": decoded,
           "decoded_one_frame": decoded1, "denormalized": denormalized})
    c.save(root, "autoencoder_kl_wan")

    real = out / "real_configs"
    cfg_dir = real / "wan2.1-t2v-1.3b" / "vae"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg_dir / "config.json", WAN21_VAE_CONFIG)
    kwargs = {k: v for k, v in WAN21_VAE_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = AutoencoderKLWan(**kwargs)
    write_json(real / "wan_vae_params.json",
               {"wan2.1-t2v-1.3b": {"params": {k: list(v.shape) for k, v in model.state_dict().items()}}})


HUNYUAN_VIDEO_VAE_CONFIG = {  # hunyuanvideo-community/HunyuanVideo, vae/config.json
    "_class_name": "AutoencoderKLHunyuanVideo", "_diffusers_version": "0.32.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D",
                         "HunyuanVideoDownBlock3D"],
    "in_channels": 3, "latent_channels": 16, "layers_per_block": 2, "mid_block_add_attention": True,
    "norm_num_groups": 32, "out_channels": 3, "scaling_factor": 0.476986, "spatial_compression_ratio": 8,
    "temporal_compression_ratio": 4,
    "up_block_types": ["HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D",
                       "HunyuanVideoUpBlock3D"],
}


@torch.no_grad()
def stage_hunyuan_video_vae(out: Path):
    """A tiny AutoencoderKLHunyuanVideo (HunyuanVideo's causal video VAE: four levels, spatial
    downsampling in the first three, temporal in the middle two, a channel change with shortcut
    convs, mid attention with the causal frame mask) saved in the hub layout, with encode of a
    9-frame video and decodes of 3 latent frames and of 1, in f32 and in bf16 (the bf16 outputs
    kept to measure diffusers' own bf16 error); and the parameter layout of the real HunyuanVideo
    VAE, built on the meta device. At these sizes diffusers' _encode/_decode are a single pass
    (use_tiling is off by default; framewise encoding/decoding starts above 16 frames / 4 latent
    frames), so no tiling switch is needed."""
    from diffusers import AutoencoderKLHunyuanVideo

    c = Cases()
    root = out / "vae"
    torch.manual_seed(23)
    z = 4
    vae = AutoencoderKLHunyuanVideo(block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                                    latent_channels=z, temporal_compression_ratio=4,
                                    spatial_compression_ratio=8).eval()
    # The group norms start at weight 1, bias 0: move them off so that the test sees them used.
    for name, p in vae.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape))
        elif "norm" in name and name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape))
    folder = root / "hunyuan_video_tiny"
    if folder.exists():
        shutil.rmtree(folder)
    vae.save_pretrained(folder)
    vae = AutoencoderKLHunyuanVideo.from_pretrained(folder).eval()
    assert not vae.use_tiling and not vae.use_slicing
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    posterior = vae.encode(video).latent_dist
    latents = torch.randn(1, z, 3, 2, 2)
    decoded = vae.decode(latents).sample
    latents1 = torch.randn(1, z, 1, 2, 2)
    decoded1 = vae.decode(latents1).sample
    vae16 = AutoencoderKLHunyuanVideo.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    posterior16 = vae16.encode(video.to(torch.bfloat16)).latent_dist
    decoded16 = vae16.decode(latents.to(torch.bfloat16)).sample
    c.add("hunyuan_video_tiny", "autoencoder_kl_hunyuan_video", {"folder": "vae/hunyuan_video_tiny"},
          {"video": video, "latents": latents, "latents_one_frame": latents1},
          {"mean": posterior.mean, "logvar": posterior.logvar, "decoded": decoded,
           "decoded_one_frame": decoded1, "mean_bf16": posterior16.mean, "decoded_bf16": decoded16})
    c.save(root, "autoencoder_kl_hunyuan_video")

    real = out / "real_configs"
    cfg_dir = real / "hunyuanvideo" / "vae"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg_dir / "config.json", HUNYUAN_VIDEO_VAE_CONFIG)
    kwargs = {k: v for k, v in HUNYUAN_VIDEO_VAE_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = AutoencoderKLHunyuanVideo(**kwargs)
    write_json(real / "hunyuan_video_vae_params.json",
               {"hunyuanvideo": {"params": {k: list(v.shape) for k, v in model.state_dict().items()}}})


@torch.no_grad()
def stage_hunyuan_video_vae_tiling(out: Path):
    """The tiny HunyuanVideo VAE of stage hunyuan_video_vae (loaded from its committed folder)
    past the sizes where diffusers splits the work: framewise decoding of 7 latent frames
    (above 4: windows of 5 latent frames every 3, the last one a single frame) and framewise
    encoding of 25 frames (above 16: windows of 17 frames every 12, the last a single frame), both
    on by default; and after enable_tiling with tiles of 16x16 pixels every 8 (2x2 latent pixels
    every 1), spatially tiled decode and encode of one frame, and a decode both framewise and
    tiled."""
    from diffusers import AutoencoderKLHunyuanVideo

    c = Cases()
    root = out / "vae"
    vae = AutoencoderKLHunyuanVideo.from_pretrained(root / "hunyuan_video_tiny").eval()
    assert vae.use_framewise_decoding and vae.use_framewise_encoding and not vae.use_tiling
    torch.manual_seed(29)
    z = vae.config.latent_channels
    latents_long = torch.randn(1, z, 7, 2, 2)
    decoded_long = vae.decode(latents_long).sample
    video_long = torch.rand(1, 3, 25, 8, 8) * 2 - 1
    mean_long = vae.encode(video_long).latent_dist.mean
    vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8,
                      tile_sample_stride_width=8)
    latents_wide = torch.randn(1, z, 1, 4, 3)
    decoded_wide = vae.decode(latents_wide).sample
    video_wide = torch.rand(1, 3, 1, 32, 24) * 2 - 1
    mean_wide = vae.encode(video_wide).latent_dist.mean
    latents_both = torch.randn(1, z, 5, 3, 2)
    decoded_both = vae.decode(latents_both).sample
    c.add("hunyuan_video_tiny", "autoencoder_kl_hunyuan_video_tiling",
          {"folder": "vae/hunyuan_video_tiny", "tile_sample_min_height": 16, "tile_sample_min_width": 16,
           "tile_sample_stride_height": 8, "tile_sample_stride_width": 8},
          {"latents_long": latents_long, "video_long": video_long, "latents_wide": latents_wide,
           "video_wide": video_wide, "latents_both": latents_both},
          {"decoded_long": decoded_long, "mean_long": mean_long, "decoded_wide": decoded_wide,
           "mean_wide": mean_wide, "decoded_both": decoded_both})
    c.save(root, "autoencoder_kl_hunyuan_video_tiling")


@torch.no_grad()
def stage_wan_vae_tiling(out: Path):
    """The tiny AutoencoderKLWan of stage wan_vae (loaded from its committed folder) after
    enable_tiling with tiles of 16x16 pixels every 8 (scale_factor_spatial 8: 2x2 latent pixels
    every 1): the decode of 3 latent frames of 4x3 latents (9 frames of 32x24 pixels; 4 x 3 tiles,
    each through its own feature cache, the last row and column one latent pixel) and the
    posterior of a 5-frame 32x24 video (4 x 3 tiles of chunks 1 + 4 frames), both through
    diffusers' tiled paths; and the same decode and encode without tiling, whose distance from
    the tiled outputs is recorded so that the test knows the tiled path is what it compares."""
    from diffusers import AutoencoderKLWan

    c = Cases()
    root = out / "vae"
    vae = AutoencoderKLWan.from_pretrained(root / "wan_tiny").eval()
    torch.manual_seed(37)
    z = vae.config.z_dim
    latents = torch.randn(1, z, 3, 4, 3)
    video = torch.rand(1, 3, 5, 32, 24) * 2 - 1
    untiled_decoded = vae.decode(latents).sample
    untiled_mean = vae.encode(video).latent_dist.mean
    vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8,
                      tile_sample_stride_width=8)
    assert vae.use_tiling and not vae.use_slicing
    decoded = vae.decode(latents).sample
    posterior = vae.encode(video).latent_dist
    c.add("wan_tiny", "autoencoder_kl_wan_tiling",
          {"folder": "vae/wan_tiny", "tile_sample_min_height": 16, "tile_sample_min_width": 16,
           "tile_sample_stride_height": 8, "tile_sample_stride_width": 8,
           "untiled_decoded_max_abs_diff": float((decoded - untiled_decoded).abs().max()),
           "untiled_mean_max_abs_diff": float((posterior.mean - untiled_mean).abs().max())},
          {"latents": latents, "video": video},
          {"decoded": decoded, "mean": posterior.mean, "logvar": posterior.logvar})
    c.save(root, "autoencoder_kl_wan_tiling")


@torch.no_grad()
def stage_vae_tiling(out: Path):
    """The tiny AutoencoderKLs of stage vae (loaded from their committed folders) after
    enable_tiling with the tile sizes diffusers derives from their config (sample_size 32: tiles
    of 32 pixels, 32 / 2**(levels - 1) latent pixels, overlap factor 0.25): the decode of latents
    for a 48x80 image (2 x 4 tiles, the last row and column partial, the last column no wider than
    the blend) and the posterior of a 48x80 image, both through diffusers' tiled paths."""
    from diffusers import AutoencoderKL

    c = Cases()
    root = out / "vae"
    for name in ["sd_style", "flux_style"]:
        vae = AutoencoderKL.from_pretrained(root / name).eval()
        vae.enable_tiling()
        assert vae.use_tiling and not vae.use_slicing
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        torch.manual_seed(31)
        latents = torch.randn(1, vae.config.latent_channels, 48 // factor, 80 // factor)
        decoded = vae.decode(latents).sample
        image = torch.rand(1, 3, 48, 80) * 2 - 1
        posterior = vae.encode(image).latent_dist
        c.add(name, "autoencoder_kl_tiling",
              {"folder": f"vae/{name}", "tile_sample_min_size": vae.tile_sample_min_size,
               "tile_latent_min_size": vae.tile_latent_min_size, "tile_overlap_factor": vae.tile_overlap_factor},
              {"latents": latents, "image": image},
              {"decoded": decoded, "mean": posterior.mean, "logvar": posterior.logvar})
    c.save(root, "autoencoder_kl_tiling")


@torch.no_grad()
def stage_transformers(out: Path):
    """Tiny FluxTransformer2DModels (FLUX.1-dev style with guidance, schnell style without),
    saved in the hub layout, and one denoiser call each."""
    from diffusers import FluxTransformer2DModel

    c = Cases()
    root = out / "transformers"
    for name, guidance in {"flux_dev": True, "flux_schnell": False}.items():
        torch.manual_seed(6)
        model = FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=12,
                                       pooled_projection_dim=10, guidance_embeds=guidance,
                                       axes_dims_rope=(4, 6, 6)).eval()
        folder = root / name
        model.save_pretrained(folder)
        model = FluxTransformer2DModel.from_pretrained(folder).eval()
        h, w = 2, 3
        img_ids = torch.zeros(h, w, 3)
        img_ids[..., 1] = torch.arange(h)[:, None]
        img_ids[..., 2] = torch.arange(w)[None, :]
        img_ids = img_ids.reshape(h * w, 3)
        txt_ids = torch.zeros(5, 3)
        inputs = {
            "hidden_states": torch.randn(2, h * w, 8),
            "encoder_hidden_states": torch.randn(2, 5, 12),
            "pooled_projections": torch.randn(2, 10),
            "timestep": torch.tensor([0.6, 0.25]),
        }
        kwargs = dict(inputs)
        if guidance:
            kwargs["guidance"] = torch.tensor([3.5, 3.5])
            inputs["guidance"] = kwargs["guidance"]
        output = model(**kwargs, img_ids=img_ids, txt_ids=txt_ids).sample
        inputs.update({"img_ids": img_ids, "txt_ids": txt_ids})
        c.add(name, "flux_transformer", {"folder": f"transformers/{name}", "guidance": guidance}, inputs,
              {"output": output})
    c.save(root, "flux")


@torch.no_grad()
def stage_wan_transformer(out: Path):
    """Tiny WanTransformer3DModels (Wan 2.1 text-to-video) saved in the hub layout, one denoiser
    call each: the real layout (patch 1x2x2, affine cross-attention norm) and one with a
    2x2x2 patch and no cross-attention norm. Norm weights are perturbed so that loading them
    matters."""
    from diffusers import WanTransformer3DModel

    c = Cases()
    root = out / "transformers"
    variants = {
        "wan_t2v": (dict(patch_size=(1, 2, 2), cross_attn_norm=True), (2, 4, 3, 4, 6)),
        "wan_patch2_no_cross_norm": (dict(patch_size=(2, 2, 2), cross_attn_norm=False, out_channels=6),
                                     (1, 4, 4, 4, 2)),
    }
    for name, (kw, shape) in variants.items():
        torch.manual_seed(8)
        model = WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                      text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                      rope_max_seq_len=32, **kw).eval()
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
        folder = root / name
        model.save_pretrained(folder)
        model = WanTransformer3DModel.from_pretrained(folder).eval()
        b = shape[0]
        inputs = {
            "hidden_states": torch.randn(*shape),
            # UniPC/FlowMatch timesteps: integers in [0, 1000).
            "timestep": torch.tensor([999.0, 500.0][:b]),
            "encoder_hidden_states": torch.randn(b, 7, 16),
        }
        output = model(**inputs).sample
        # diffusers in bf16 as users load it (its _keep_in_fp32_modules stay f32): the yardstick
        # for our bf16 tolerance.
        model = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
        bf16 = model(**{k: v.to(torch.bfloat16) for k, v in inputs.items()}).sample
        print(f"{name}: diffusers' own bf16 call differs from f32 by {(bf16.float() - output).abs().max():.3e}")
        c.add(name, "wan_transformer", {"folder": f"transformers/{name}"}, inputs,
              {"output": output, "output_bf16": bf16})
    c.save(root, "wan")


def tiny_wan_pipeline(folder: Path):
    """A tiny Wan 2.1 text-to-video pipeline (UMT5 encoder and T5 tokenizer, WanTransformer3DModel,
    AutoencoderKLWan with temporal compression 4 and spatial 8, UniPC with flow sigmas and
    flow_shift 3 as the Wan2.1-T2V repositories configure it), saved and reloaded."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(12)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=4, out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32,
                                        num_layers=2, rope_max_seq_len=32).eval()
    vae = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.05], latents_std=[1.5, 0.8, 1.2, 2.0]).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    tmp = folder.parent / (folder.name + "_tok")
    tokenizer = make_small_t5_tokenizer(tmp / "tokenizer")
    torch.manual_seed(13)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu")).eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(folder)
    shutil.rmtree(tmp)
    return WanPipeline.from_pretrained(folder)


@torch.no_grad()
def stage_wan_pipeline(out: Path):
    """The tiny Wan pipeline run end to end: from explicit latents with classifier-free guidance
    and a negative prompt (frames, and the latents before decoding), from a seed without guidance,
    two prompts, and diffusers' own bf16 run from the same latents (the yardstick for our bf16
    tolerance)."""
    c = Cases()
    root = out / "pipelines"
    folder = root / "tiny_wan"
    pipe = tiny_wan_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    base = {"folder": "pipelines/tiny_wan", "height": 32, "width": 32, "num_frames": 5,
            "num_inference_steps": 3, "max_sequence_length": 16}
    kw = {k: v for k, v in base.items() if k != "folder"}
    prompt, negative = "a red dog in the snow", "the cat with a hat"
    latents = torch.randn(1, 4, 2, 4, 4)
    # The same latents as `diffusers generate --latents` takes them (one tensor `latents`).
    save_file({"latents": latents.contiguous()}, str(root / "wan_latents.safetensors"))
    frames = pipe(prompt=prompt, negative_prompt=negative, guidance_scale=5.0, latents=latents.clone(),
                  output_type="np", **kw).frames
    final = pipe(prompt=prompt, negative_prompt=negative, guidance_scale=5.0, latents=latents.clone(),
                 output_type="latent", **kw).frames
    embeds = pipe.encode_prompt(prompt=prompt, negative_prompt=negative, do_classifier_free_guidance=True,
                                max_sequence_length=16)
    c.add("wan_cfg", "wan_pipeline", {**base, "prompt": prompt, "negative_prompt": negative,
                                      "guidance_scale": 5.0},
          {"latents": latents},
          {"frames": torch.from_numpy(frames), "final_latents": final,
           "prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]})
    prompts = ["the dog on a red hat", "  a cat &amp; a dog\n in   the snow "]
    frames = pipe(prompt=prompts, guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(5),
                  output_type="np", **kw).frames
    c.add("wan_seed", "wan_pipeline", {**base, "prompt": prompts, "guidance_scale": 1.0, "seed": 5}, {},
          {"frames": torch.from_numpy(frames)})
    bf16 = WanPipeline_from(folder, torch.bfloat16)
    frames16 = bf16(prompt=prompt, negative_prompt=negative, guidance_scale=5.0, latents=latents.clone(),
                    output_type="np", **kw).frames
    c.add("wan_cfg_bf16", "wan_pipeline", {**base, "prompt": prompt, "negative_prompt": negative,
                                           "guidance_scale": 5.0, "dtype": "bf16"},
          {}, {"frames": torch.from_numpy(frames16)})
    c.save(root, "wan")


def WanPipeline_from(folder: Path, dtype):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


HV_TEST_TEMPLATE = ("<|start_header_id|>system<|end_header_id|>\n\nDescribe the video: <|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>")


def tiny_hunyuan_video_pipeline(folder: Path):
    """A tiny HunyuanVideo pipeline (Llama 3-style byte-level tokenizer and a random LlamaModel, a
    CLIP tokenizer and text model for the pooled embedding, HunyuanVideoTransformer3DModel with
    guidance embedding, AutoencoderKLHunyuanVideo with temporal compression 4 and spatial 8,
    FlowMatchEuler with shift 7 as the real repository), saved and reloaded."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(14)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=10,
        rope_theta=256.0, rope_axes_dim=(4, 6, 6)).eval()
    vae = AutoencoderKLHunyuanVideo(block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                                    latent_channels=4, temporal_compression_ratio=4,
                                    spatial_compression_ratio=8).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    tmp = folder.parent / (folder.name + "_tok")
    tokenizer = make_llama_tokenizer(tmp / "tokenizer")
    tokenizer_2 = make_clip_tokenizer(tmp / "tokenizer_2", model_max_length=77)
    torch.manual_seed(15)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
        rope_theta=500000.0, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=10, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
        eos_token_id=2, pad_token_id=1, projection_dim=10)).eval()
    pipe = HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(folder)
    shutil.rmtree(tmp)
    pipe = HunyuanVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def stage_hunyuan_video_pipeline(out: Path):
    """The tiny HunyuanVideo pipeline run end to end: a short prompt template (written as the
    `--prompt-template` JSON file) with explicit latents and embedded guidance; the default template
    (crop_start 95) from a seed with a negative prompt and true CFG; diffusers' bf16 run from the
    latents."""
    c = Cases()
    root = out / "pipelines"
    folder = root / "tiny_hunyuan_video"
    pipe = tiny_hunyuan_video_pipeline(folder)
    prefix = HV_TEST_TEMPLATE.split("{}")[0]
    template = {"template": HV_TEST_TEMPLATE, "crop_start": len(pipe.tokenizer(prefix).input_ids)}
    write_json(root / "hunyuan_video_template.json", template)
    base = {"folder": "pipelines/tiny_hunyuan_video", "height": 32, "width": 32, "num_frames": 5,
            "num_inference_steps": 3, "max_sequence_length": 8}
    kw = {k: v for k, v in base.items() if k != "folder"}
    prompt = "a red dog in the snow"
    latents = torch.randn(1, 4, 2, 4, 4)
    save_file({"latents": latents.contiguous()}, str(root / "hunyuan_video_latents.safetensors"))
    frames = pipe(prompt=prompt, prompt_template=template, guidance_scale=6.0, latents=latents.clone(),
                  output_type="np", **kw).frames
    final = pipe(prompt=prompt, prompt_template=template, guidance_scale=6.0, latents=latents.clone(),
                 output_type="latent", **kw).frames
    embeds, pooled, mask = pipe.encode_prompt(prompt=prompt, prompt_template=template, max_sequence_length=8)
    c.add("hv_latents", "hunyuan_video_pipeline",
          {**base, "prompt": prompt, "guidance_scale": 6.0, "template": template}, {"latents": latents},
          {"frames": torch.from_numpy(frames), "final_latents": final, "prompt_embeds": embeds,
           "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask.float()})
    negative = "the cat with a hat"
    frames = pipe(prompt=prompt, negative_prompt=negative, true_cfg_scale=2.0, guidance_scale=4.0,
                  generator=torch.Generator("cpu").manual_seed(5), output_type="np", **kw).frames
    c.add("hv_seed_true_cfg", "hunyuan_video_pipeline",
          {**base, "prompt": prompt, "negative_prompt": negative, "true_cfg_scale": 2.0, "guidance_scale": 4.0,
           "seed": 5}, {}, {"frames": torch.from_numpy(frames)})
    from diffusers import HunyuanVideoPipeline
    bf16 = HunyuanVideoPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    bf16.set_progress_bar_config(disable=True)
    frames16 = bf16(prompt=prompt, prompt_template=template, guidance_scale=6.0, latents=latents.clone(),
                    output_type="np", **kw).frames
    c.add("hv_latents_bf16", "hunyuan_video_pipeline",
          {**base, "prompt": prompt, "guidance_scale": 6.0, "template": template, "dtype": "bf16"}, {},
          {"frames": torch.from_numpy(frames16)})
    c.save(root, "hunyuan_video")


@torch.no_grad()
def stage_real_configs(out: Path):
    """Parameter names and shapes of diffusers models built from real repositories' configs
    (fixtures/real_configs), with fewer blocks, on the meta device (no memory)."""
    from diffusers import FluxTransformer2DModel

    # The real configs are committed inputs; the parameter layouts are outputs.
    inputs = Path(__file__).resolve().parents[2] / "fixtures" / "real_configs"
    root = out / "real_configs"
    root.mkdir(parents=True, exist_ok=True)
    result = {}
    for repo in ["flux1-dev", "flux1-schnell"]:
        cfg = json.loads((inputs / repo / "transformer_config.json").read_text())
        kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
        kwargs.update(num_layers=1, num_single_layers=1)
        with torch.device("meta"):
            model = FluxTransformer2DModel(**kwargs)
        result[repo] = {"reduced": {"num_layers": 1, "num_single_layers": 1},
                        "params": {k: list(v.shape) for k, v in model.state_dict().items()}}
    write_json(root / "flux_params.json", result)

    from diffusers import WanTransformer3DModel

    result = {}
    for repo in ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"]:
        cfg = json.loads((inputs / repo / "transformer_config.json").read_text())
        kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
        kwargs.update(num_layers=1)
        with torch.device("meta"):
            model = WanTransformer3DModel(**kwargs)
        result[repo] = {"reduced": {"num_layers": 1},
                        "params": {k: list(v.shape) for k, v in model.state_dict().items()}}
    write_json(root / "wan_params.json", result)


@torch.no_grad()
def stage_hunyuan_video_transformer(out: Path):
    """Tiny HunyuanVideoTransformer3DModels (HunyuanVideo text-to-video) saved in the hub layout,
    one denoiser call each as the pipeline makes it (timesteps in [0, 1000], guidance scale * 1000,
    a text mask whose second row is padded), in f32 and in bf16 (the yardstick for our bf16
    tolerance); and the parameter layout of the real config (fixtures/real_configs/hunyuanvideo)
    with one block of each kind, built on the meta device. Norm weights are perturbed so that
    loading them matters."""
    from diffusers import HunyuanVideoTransformer3DModel

    c = Cases()
    root = out / "transformers"
    common = dict(in_channels=4, num_attention_heads=2, num_layers=1, num_single_layers=1, num_refiner_layers=1,
                  mlp_ratio=2.0, text_embed_dim=16, pooled_projection_dim=8)
    variants = {
        # The real layout (patch 1x2x2, guidance embedding); batch 2, text row 2 padded after 4 tokens.
        "hunyuan_video_t2v": (dict(out_channels=4, patch_size=2, patch_size_t=1, guidance_embeds=True,
                                   attention_head_dim=16, rope_axes_dim=(4, 6, 6)),
                              (2, 4, 3, 4, 4), [7, 4]),
        # No guidance embedding, a 2x1x1 patch, other output channels, narrower heads, no padding.
        "hunyuan_video_pt2_no_guidance": (dict(out_channels=6, patch_size=1, patch_size_t=2,
                                               guidance_embeds=False, attention_head_dim=8,
                                               rope_axes_dim=(2, 2, 4)), (1, 4, 4, 2, 3), [5]),
    }
    for name, (kw, shape, lengths) in variants.items():
        torch.manual_seed(9)
        model = HunyuanVideoTransformer3DModel(**common, **kw).eval()
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
        folder = root / name
        model.save_pretrained(folder)
        model = HunyuanVideoTransformer3DModel.from_pretrained(folder).eval()
        b = shape[0]
        text_len = max(lengths)
        mask = torch.zeros(b, text_len)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1.0
        inputs = {
            "hidden_states": torch.randn(*shape),
            "timestep": torch.tensor([999.0, 500.0][:b]),
            "encoder_hidden_states": torch.randn(b, text_len, 16),
            "encoder_attention_mask": mask,
            "pooled_projections": torch.randn(b, 8),
        }
        if kw["guidance_embeds"]:
            # The pipeline's guidance: torch.tensor([guidance_scale] * batch) * 1000.0.
            inputs["guidance"] = torch.tensor([6.0] * b) * 1000.0
        output = model(**inputs).sample
        # diffusers in bf16 as the pipeline calls it: the timestep stays f32 (the latents' dtype),
        # everything else in the transformer's dtype.
        model = HunyuanVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
        bf16 = model(**{k: v if k == "timestep" else v.to(torch.bfloat16) for k, v in inputs.items()}).sample
        print(f"{name}: diffusers' own bf16 call differs from f32 by {(bf16.float() - output).abs().max():.3e}"
              f" (outputs up to {output.abs().max():.2f})")
        c.add(name, "hunyuan_video_transformer", {"folder": f"transformers/{name}"}, inputs,
              {"output": output, "output_bf16": bf16})
    c.save(root, "hunyuan_video")

    real = Path(__file__).resolve().parents[2] / "fixtures" / "real_configs"
    cfg = json.loads((real / "hunyuanvideo" / "transformer_config.json").read_text())
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    kwargs.update(num_layers=1, num_single_layers=1)
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**kwargs)
    (out / "real_configs").mkdir(parents=True, exist_ok=True)
    write_json(out / "real_configs" / "hunyuan_video_params.json",
               {"hunyuanvideo": {"reduced": {"num_layers": 1, "num_single_layers": 1},
                                 "params": {k: list(v.shape) for k, v in model.state_dict().items()}}})


T5_WORDS = ["a", "photo", "of", "the", "cat", "dog", "red", "on", "in", "snow", "with", "hat"]


def make_small_t5_tokenizer(folder: Path):
    """A tiny T5 unigram tokenizer built from a vocabulary list (T5's layout: <pad>, </s>, <unk>
    first) and saved by transformers (tokenizer.json + tokenizer_config.json)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0 - 0.1 * i) for i, w in enumerate(T5_WORDS)]
    vocab += [(ch, -6.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.!?"]
    vocab += [("▁" + ch, -7.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    tok.save_pretrained(folder)
    return tok


def tiny_flux_pipeline(folder: Path):
    """A tiny FLUX.1-dev-style pipeline with every component (CLIP and T5 text encoders and their
    tokenizers as real FLUX.1 repositories ship them), saved by save_pretrained and reloaded."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(7)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=12,
                                         pooled_projection_dim=10, guidance_embeds=True,
                                         axes_dims_rope=(4, 6, 6)).eval()
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                        scaling_factor=0.3611).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    tmp = folder.parent / (folder.name + "_tok")
    tokenizer = make_clip_tokenizer(tmp / "tokenizer", model_max_length=77)
    tokenizer_2 = make_small_t5_tokenizer(tmp / "tokenizer_2")
    torch.manual_seed(8)
    # As openai/clip-vit-large-patch14: legacy eos id 2 (pooling at the highest id, <|endoftext|>).
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=10, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
        eos_token_id=2, pad_token_id=1, projection_dim=10)).eval()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=12, d_kv=6, d_ff=20, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu")).eval()
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(folder)
    # Real FLUX.1 repositories ship CLIP's tokenizer as vocab.json + merges.txt (no tokenizer.json).
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(tmp / "tokenizer" / f, folder / "tokenizer" / f)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    shutil.rmtree(tmp)
    reloaded = FluxPipeline.from_pretrained(folder)
    for p in ["a photo of the cat", "the red dog with a hat in the snow on the cat"]:
        assert reloaded.tokenizer(p).input_ids == tokenizer(p).input_ids, p
        assert reloaded.tokenizer_2(p).input_ids == tokenizer_2(p).input_ids, p
    return reloaded


@torch.no_grad()
def stage_pipelines(out: Path):
    """The tiny FLUX.1-dev-style pipeline run from prompt embeddings and from prompts, with explicit
    latents (each step's latents recorded) and with a seed, several prompts and images per prompt."""
    folder = out / "pipelines" / "tiny_flux"
    if folder.exists():
        shutil.rmtree(folder)
    pipe = tiny_flux_pipeline(folder)
    c = Cases()
    prompt_embeds, pooled = torch.randn(1, 5, 12), torch.randn(1, 10)
    common = dict(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, height=16, width=24,
                  num_inference_steps=3, guidance_scale=3.5)
    latents = torch.randn(1, 24, 16)
    image = pipe(**common, latents=latents.clone(), output_type="np").images
    out_latents = pipe(**common, latents=latents.clone(), output_type="latent").images
    seeded = pipe(**common, generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
    cfg = {"folder": "pipelines/tiny_flux", "height": 16, "width": 24, "num_inference_steps": 3,
           "guidance_scale": 3.5, "seed": 42}
    c.add("flux_latents", "flux_pipeline", cfg,
          {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "latents": latents},
          {"images": torch.from_numpy(image), "output_latents": out_latents})
    c.add("flux_seed", "flux_pipeline", cfg, {}, {"images": torch.from_numpy(seeded)})

    # From a prompt, explicit latents: the encoders' outputs, each step's latents, the image.
    prompt = "a photo of the cat"
    pe, pp, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=8)
    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return kw

    latents = torch.randn(1, 24, 16)
    args = dict(prompt=prompt, height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                max_sequence_length=8)
    image = pipe(**args, latents=latents.clone(), output_type="np", callback_on_step_end=record).images
    pil = pipe(**args, latents=latents.clone(), output_type="pil").images[0]
    out_latents = pipe(**args, latents=latents.clone(), output_type="latent").images
    outputs = {"prompt_embeds": pe, "pooled_prompt_embeds": pp, "images": torch.from_numpy(image),
               "image_u8": torch.from_numpy(np.array(pil)), "output_latents": out_latents}
    for i, s in enumerate(steps):
        outputs[f"step_{i}"] = s
    c.add("flux_prompt", "flux_pipeline", {**cfg, "prompt": prompt, "max_sequence_length": 8},
          {"latents": latents}, outputs)
    save_file({"latents": latents.contiguous()}, str(out / "pipelines" / "flux_prompt_latents.safetensors"))

    # Several prompts (the second one truncated by T5 at 8 tokens), two images each, a seed.
    prompts = ["a photo of the cat", "the red dog with a hat in the snow on the cat"]
    images = pipe(prompt=prompts, height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                  max_sequence_length=8, num_images_per_prompt=2,
                  generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
    pe, pp, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=8, num_images_per_prompt=2)
    c.add("flux_prompts_seed", "flux_pipeline",
          {**cfg, "prompts": prompts, "max_sequence_length": 8, "num_images_per_prompt": 2},
          {}, {"images": torch.from_numpy(images), "prompt_embeds": pe, "pooled_prompt_embeds": pp})

    # What `diffusers generate "a photo of the cat" --seed 42 --num-images 2` runs.
    images = pipe(prompt=prompt, height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                  max_sequence_length=8, num_images_per_prompt=2,
                  generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
    c.add("flux_cli_seed", "flux_pipeline",
          {**cfg, "prompt": prompt, "max_sequence_length": 8, "num_images_per_prompt": 2},
          {}, {"images": torch.from_numpy(images)})

    # True CFG with a negative prompt (a second transformer call per step).
    image = pipe(**args, latents=latents.clone(), negative_prompt="a red dog", true_cfg_scale=2.5,
                 output_type="np").images
    c.add("flux_true_cfg", "flux_pipeline",
          {**cfg, "prompt": prompt, "negative_prompt": "a red dog", "true_cfg_scale": 2.5},
          {}, {"images": torch.from_numpy(image)})

    # Image to image from a PNG (the components of the same pipeline), seeded: the generator draws
    # the posterior sample, then the noise.
    from diffusers import FluxImg2ImgPipeline
    from PIL import Image

    g = torch.Generator("cpu").manual_seed(3)
    pixels = torch.randint(0, 256, (16, 24, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(out / "pipelines" / "flux_img2img_input.png")
    init = Image.open(out / "pipelines" / "flux_img2img_input.png")
    i2i = FluxImg2ImgPipeline.from_pipe(pipe)
    steps = []
    image = i2i(prompt=prompt, image=init, height=16, width=24, num_inference_steps=4, strength=0.6,
                guidance_scale=3.5, max_sequence_length=8, num_images_per_prompt=2,
                generator=torch.Generator("cpu").manual_seed(11), output_type="np",
                callback_on_step_end=record).images
    outputs = {"images": torch.from_numpy(image)}
    for i, st in enumerate(steps):
        outputs[f"step_{i}"] = st
    c.add("flux_img2img", "flux_img2img_pipeline",
          {**cfg, "prompt": prompt, "strength": 0.6, "num_inference_steps": 4, "seed": 11,
           "num_images_per_prompt": 2, "image": "pipelines/flux_img2img_input.png"},
          {"image": torch.from_numpy(pixels).float()}, outputs)

    # diffusers itself in bf16 (weights and activations), from the same f32 latents: how far bf16
    # lands from the f32 image is the yardstick for our bf16 tolerance.
    pipe.to(torch.bfloat16)
    image = pipe(**args, latents=latents.to(torch.bfloat16), output_type="np").images
    c.add("flux_prompt_bf16", "flux_pipeline", {**cfg, "prompt": prompt, "max_sequence_length": 8},
          {}, {"images": torch.from_numpy(image)})
    c.save(out / "pipelines", "flux")

@torch.no_grad()
def stage_flux_bf16_stages(out: Path):
    """diffusers' tiny Flux pipeline in bf16 on the CPU, stage by stage, each stage from the f32
    reference's own inputs (flux_stages.py): the yardstick for where our bf16 runs (CPU and
    CUDA) depart from f32, and by how much diffusers' own bf16 does. Reads the committed
    tiny_flux folder and the f32 fixture (stage pipelines) without changing them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from diffusers import FluxPipeline
    from flux_stages import flux_stages, spread

    fx = load_file(str(out / "pipelines" / "flux.safetensors"))
    def load():
        return FluxPipeline.from_pretrained(out / "pipelines" / "tiny_flux")
    stages = flux_stages(load().to(torch.bfloat16), fx, "cpu", torch.bfloat16)
    # The same code in f32 gives the f32 reference back: the stages' inputs are what they say.
    f32 = spread(flux_stages(load(), fx, "cpu", torch.float32), fx)
    assert max(f32.values()) < 1e-5, f32
    c = Cases()
    c.add("flux_bf16_stages", "flux_pipeline_stages",
          {"folder": "pipelines/tiny_flux", "prompt": "a photo of the cat", "dtype": "bfloat16",
           "device": "cpu", "bf16_vs_f32": spread(stages, fx), "f32_vs_f32": f32},
          {}, stages)
    c.save(out / "pipelines", "flux_bf16_stages")


def bnb_4bit_on_cpu():
    """diffusers 0.42.1 refuses bitsandbytes 4-bit loading without a GPU (validate_environment raises
    "No GPU found", update_device_map asks torch.cuda for the current device), although bitsandbytes
    0.50.2 runs NF4/FP4 on the CPU. These two environment checks, and nothing else, are bypassed
    here: the weights are quantized by bitsandbytes' own CPU kernels and diffusers' replace/load code."""
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    BnB4BitDiffusersQuantizer.validate_environment = lambda self, *a, **k: None
    BnB4BitDiffusersQuantizer.update_device_map = lambda self, device_map: device_map or {"": "cpu"}


@torch.no_grad()
def stage_quantization(out: Path):
    """Quantizers (bitsandbytes' quantize_4bit/dequantize_4bit on CPU for NF4/FP4 with and without
    double quantization; int8 and fp8 by their documented formulas) and the tiny FLUX.1-dev-style
    pipeline with its transformer quantized by diffusers + bitsandbytes (f32 compute), its images
    and the quantized transformer saved by save_pretrained (a pre-quantized checkpoint)."""
    import bitsandbytes
    import bitsandbytes.functional as F
    from diffusers import BitsAndBytesConfig, FluxPipeline, FluxTransformer2DModel

    bnb_4bit_on_cpu()
    folder = out / "quantization"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(21)
    w = torch.randn(16, 128) * torch.linspace(0.01, 3.0, 16).unsqueeze(1)
    w[3] = 0.0                      # an all-zero block
    w[5, :64] = torch.randn(64) * 1e-3
    w[5, 10:20] = 0.0               # exact zeros next to tiny values (FP4 has +0 and -0)
    odd = torch.randn(3, 40)        # 120 values: a last block of 56
    tensors, cases = {}, {}
    for name, x in [("w", w), ("odd", odd)]:
        tensors[f"{name}.input"] = x.contiguous()
        for qt in ["nf4", "fp4"]:
            for dq in [False, True]:
                c = f"{name}.{qt}{'_dq' if dq else ''}"
                q, st = F.quantize_4bit(x, blocksize=64, quant_type=qt, compress_statistics=dq)
                tensors[f"{c}.packed"] = q.reshape(-1).contiguous()
                tensors[f"{c}.dequantized"] = F.dequantize_4bit(q, st).float().contiguous()
                for k, v in st.as_dict(packed=True).items():
                    if not k.startswith("quant_state"):
                        tensors[f"{c}.{k}"] = v.contiguous()
                cases[c] = {"input": f"{name}.input", "quant_type": qt, "double_quant": dq, "blocksize": 64,
                            "offset": float(st.offset) if dq else None}
        # int8, torchao's int8_weight_only formula (symmetric per row, quant range [-128, 127]).
        amax = torch.maximum(-x.amin(1).clamp(max=0), x.amax(1).clamp(min=0))
        scale = torch.clamp(amax / 127.5, min=torch.finfo(torch.float32).eps)
        q = torch.clamp(torch.round(x * (1.0 / scale.unsqueeze(1))), -128, 127).to(torch.int8)
        tensors[f"{name}.int8.q"] = q.contiguous()
        tensors[f"{name}.int8.scale"] = scale.contiguous()
        tensors[f"{name}.int8.dequantized"] = (q.float() * scale.unsqueeze(1)).contiguous()
        # fp8 e4m3fn, per row and per tensor: PyTorch's own float8 conversion.
        for g, am in [("row", x.abs().amax(1, keepdim=True)), ("tensor", x.abs().amax().reshape(1, 1))]:
            s = torch.clamp(am / 448.0, min=torch.finfo(torch.float32).eps)
            q8 = (x / s).to(torch.float8_e4m3fn)
            tensors[f"{name}.fp8_{g}.q"] = q8.view(torch.uint8).contiguous()
            tensors[f"{name}.fp8_{g}.scale"] = s.reshape(-1).contiguous()
            tensors[f"{name}.fp8_{g}.dequantized"] = (q8.float() * s).contiguous()
    tensors["code.nf4"] = F.get_4bit_type("nf4", device="cpu")
    tensors["code.fp4"] = F.get_4bit_type("fp4", device="cpu")
    save_file(tensors, str(folder / "quantizers.safetensors"))
    write_json(folder / "quantizers.json", {"cases": cases, "versions": {**versions(),
               "bitsandbytes": bitsandbytes.__version__}})

    # The tiny Flux pipeline (fixtures/pipelines/tiny_flux) with a 4-bit transformer.
    repo = out / "pipelines" / "tiny_flux"
    prompt, latents = "a photo of the cat", torch.randn(1, 24, 16)
    args = dict(prompt=prompt, height=16, width=24, num_inference_steps=3, guidance_scale=3.5, max_sequence_length=8)
    images, pcases = {"latents": latents.contiguous()}, {}
    for qt, dq in [("nf4", False), ("fp4", True), ("nf4", True)]:
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=dq,
                                bnb_4bit_compute_dtype=torch.float32)
        t = FluxTransformer2DModel.from_pretrained(repo, subfolder="transformer", quantization_config=qc,
                                                   torch_dtype=torch.float32)
        pipe = FluxPipeline.from_pretrained(repo, transformer=t)
        name = f"{qt}{'_dq' if dq else ''}"
        images[f"{name}.images"] = torch.from_numpy(pipe(**args, latents=latents.clone(), output_type="np").images).contiguous()
        pcases[name] = {"quant_type": qt, "double_quant": dq, "compute_dtype": "float32", **args}
        if (qt, dq) == ("nf4", True):
            saved = folder / "tiny_flux_transformer_nf4_dq"
            if saved.exists():
                shutil.rmtree(saved)
            t.save_pretrained(saved)
    dense = FluxPipeline.from_pretrained(repo)
    images["dense.images"] = torch.from_numpy(dense(**args, latents=latents.clone(), output_type="np").images).contiguous()
    save_file(images, str(folder / "flux_pipeline.safetensors"))
    write_json(folder / "flux_pipeline.json", {"cases": pcases, "versions": {**versions(),
               "bitsandbytes": bitsandbytes.__version__}})


@torch.no_grad()
def stage_lora_quantized(out: Path):
    """A LoRA on a quantized base, unfused (issue 16 with issue 15): the tiny Flux pipeline with its
    transformer quantized to NF4 while loading (bitsandbytes 0.50.2 on CPU, compute dtype f32, as
    stage quantization) and fixtures/lora/flux_peft.safetensors loaded with load_lora_weights
    (PEFT wraps bitsandbytes' Linear4bit: base output from the packed weight plus the unfused LoRA
    update), run with stage lora's Flux arguments and latents."""
    from diffusers import BitsAndBytesConfig, FluxPipeline, FluxTransformer2DModel
    import transformers.integrations.peft as tpeft
    from safetensors.torch import load_file

    bnb_4bit_on_cpu()
    # As in stage lora: only transformers' peft >= 0.22 version check is bypassed.
    tpeft.check_peft_version = lambda *a, **k: None
    repo = out / "pipelines" / "tiny_flux"
    latents = load_file(str(out / "lora" / "lora.safetensors"))["flux_base.latents"]
    args = dict(prompt="a photo of the cat", height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                max_sequence_length=8)
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    t = FluxTransformer2DModel.from_pretrained(repo, subfolder="transformer", quantization_config=qc,
                                               torch_dtype=torch.float32)
    pipe = FluxPipeline.from_pretrained(repo, transformer=t)
    base = pipe(**args, latents=latents.clone(), output_type="np").images
    pipe.load_lora_weights(str(out / "lora" / "flux_peft.safetensors"), adapter_name="q")
    kinds = {type(m).__name__ for m in pipe.transformer.modules() if hasattr(m, "lora_A")}
    assert kinds == {"Linear4bit"}, kinds
    image = pipe(**args, latents=latents.clone(), output_type="np").images
    c = Cases()
    c.add("flux_nf4", "lora_quantized", {"quant_type": "nf4", "lora": "lora/flux_peft.safetensors",
                                         "peft_layer": sorted(kinds), **args},
          {"latents": latents}, {"base_image": torch.from_numpy(base), "image": torch.from_numpy(image)})
    c.save(out / "lora", "lora_quantized")


@torch.no_grad()
def stage_lora_video(out: Path):
    """LoRA on the video pipelines (issue 15): a PEFT adapter (r=2, lora_alpha=3: scaling 1.5,
    random lora_A and lora_B) on the attention and feed-forward Linears of the tiny Wan and
    HunyuanVideo transformers, saved with save_lora_weights and its metadata
    (fixtures/lora/{wan,hunyuan_video}_peft.safetensors), then loaded into a fresh pipeline with
    load_lora_weights and run from the committed latents with stage wan_pipeline's and
    hunyuan_video_pipeline's arguments; with each base video for reference."""
    from diffusers import HunyuanVideoPipeline, WanPipeline
    from peft import LoraConfig
    from safetensors.torch import load_file

    c = Cases()
    folder = out / "lora"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator("cpu").manual_seed(1616)
    pipes = out / "pipelines"
    kw = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 3}
    hv_template = json.loads((pipes / "hunyuan_video_template.json").read_text())
    for name, cls, repo, lat, targets, args in [
        ("wan_peft", WanPipeline, "tiny_wan", "wan_latents.safetensors",
         ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
         dict(prompt="a red dog in the snow", negative_prompt="the cat with a hat", guidance_scale=5.0,
              max_sequence_length=16, **kw)),
        ("hunyuan_video_peft", HunyuanVideoPipeline, "tiny_hunyuan_video", "hunyuan_video_latents.safetensors",
         ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
          "proj_mlp"],
         dict(prompt="a red dog in the snow", prompt_template=hv_template, guidance_scale=6.0,
              max_sequence_length=8, **kw)),
    ]:
        latents = load_file(str(pipes / lat))["latents"]
        pipe = cls.from_pretrained(pipes / repo)
        pipe.set_progress_bar_config(disable=True)
        base = pipe(**args, latents=latents.clone(), output_type="np").frames
        sd, meta = random_peft_lora(pipe.transformer, LoraConfig(r=2, lora_alpha=3, target_modules=targets,
                                                                 init_lora_weights=False), g, 0.3, 0.3)
        cls.save_lora_weights(folder, transformer_lora_layers=sd, weight_name=f"{name}.safetensors",
                              transformer_lora_adapter_metadata=meta)
        pipe = cls.from_pretrained(pipes / repo)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(folder / f"{name}.safetensors"), adapter_name=name)
        layers = sum(1 for m in pipe.transformer.modules() if hasattr(m, "lora_A") and name in m.lora_A)
        frames = pipe(**args, latents=latents.clone(), output_type="np").frames
        change = float(abs(torch.from_numpy(frames) - torch.from_numpy(base)).max())
        assert change > 1e-2, change
        c.add(name, "lora_video", {"repo": f"pipelines/{repo}", "layers": layers, "max_abs_change_vs_base": change,
                                   "latents": f"pipelines/{lat}"},
              {}, {"frames": torch.from_numpy(frames), "base_frames": torch.from_numpy(base)})
    c.save(folder, "lora_video")


class CacheRecorder:
    """Logs, for every transformer call of a pipeline run (one `cache_context`), which cache-hooked
    modules ran their own forward: the hooks' forward and original_forward references are wrapped
    after enable_cache, so a module logs "C" when its real forward ran and "S" when the hook
    returned something else (a cached residual, a Taylor prediction, a reused attention output)."""

    def __init__(self, transformer):
        self.calls = []
        self.hooked = {}
        enter = transformer.cache_context

        def cache_context(name, **kwargs):
            self.calls.append({"context": name, "ran": {}})
            return enter(name, **kwargs)

        transformer.cache_context = cache_context
        for mname, m in transformer.named_modules():
            reg = getattr(m, "_diffusers_hook", None)
            if reg is None:
                continue
            for hname, ref in zip(reg._hook_order, reg._fn_refs):
                key = mname or "<root>"
                self.hooked[key] = hname
                if ref.original_forward is None:  # pre/post_forward only (SeaCache's root hook)
                    continue
                ref.forward = self._entered(key, ref.forward)
                ref.original_forward = self._ran(key, ref.original_forward)

    def _entered(self, key, f):
        def w(*a, **k):
            self.calls[-1]["ran"].setdefault(key, []).append(False)
            return f(*a, **k)
        return w

    def _ran(self, key, f):
        def w(*a, **k):
            # After disable_cache the module's forward is this wrapper alone (the hook's
            # original_forward): nothing to mark.
            ran = self.calls[-1]["ran"].get(key) if self.calls else None
            if ran:
                ran[-1] = True
            return f(*a, **k)
        return w

    def summary(self):
        """schedules[module][context]: one C/S per call in that context; full_calls: calls where
        every hooked block/attention module (not the root) ran its forward."""
        schedules = {}
        for c in self.calls:
            for key, ran in c["ran"].items():
                s = schedules.setdefault(key, {}).setdefault(c["context"], "")
                schedules[key][c["context"]] = s + "".join("C" if r else "S" for r in ran)
        full = sum(1 for c in self.calls if all(all(r) for k, r in c["ran"].items() if k != "<root>"))
        distinct = {}
        for key, per in schedules.items():
            distinct.setdefault(json.dumps(per, sort_keys=True), []).append(key)
        return {"calls": len(self.calls), "contexts": [c["context"] for c in self.calls], "full_calls": full,
                "hooked": self.hooked, "schedules": schedules,
                "distinct_schedules": [{"modules": v, "schedule": json.loads(k)} for k, v in distinct.items()]}


def first_line_of_error(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001 (the oracle records what diffusers raises)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


@torch.no_grad()
def stage_cache(out: Path):
    """diffusers' step caches (issue 18) on the tiny Flux, Wan and HunyuanVideo pipelines, 10 steps
    from the committed latents (f32, CPU), each case on a freshly loaded pipeline: the output (Flux:
    image and final latents; video: final latents, output_type "latent", to keep fixtures small), the
    per-call decisions (CacheRecorder: which hooked modules ran their forward in each call and context;
    first-block cache: each relative diff and decision from FBCHeadBlockHook._should_compute_remaining_blocks;
    MagCache: step index, accumulated ratio/error and decision after the head hook), the number of
    transformer calls computed fully and the largest change from the uncached run. Flux's SeaCache and
    TextKVCache cases are no-ops in 0.42.1 (FluxPipeline's cache_context carries no step/sigma, so SeaCache
    runs fail-open; TextKVCache only hooks NucleusMoE blocks), as is TaylorSeer's default on Wan (its
    patterns `^blocks.*attn` fullmatch no Wan module: attn1/attn2); they are recorded as such. `errors`
    lists what enable_cache, the configs and the hooks raise for bad input."""
    from diffusers import FluxPipeline, HunyuanVideoPipeline, WanPipeline
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, SeaCacheConfig, TaylorSeerCacheConfig,
                                 TextKVCacheConfig)
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS, MagCacheBlockHook, MagCacheHeadHook
    from safetensors.torch import load_file

    c = Cases()
    pipes = out / "pipelines"
    steps = 10
    # Chosen from the recorded diffs so that decisions are mixed (some calls skip, some compute).
    flux_fbc_thresholds = (0.2, 0.25, 0.35)
    flux_fbc_cfg = 0.2
    video_fbc = {"wan": 0.1, "hunyuan_video": 0.3}
    flux_mag_threshold = 0.06
    wan_sea_threshold = 0.25
    fbc_log, mag_log, cal_log = [], [], []
    fbc_decide = FBCHeadBlockHook._should_compute_remaining_blocks
    mag_forward = MagCacheHeadHook.new_forward
    mag_calibrate = MagCacheBlockHook._perform_calibration_step

    def cal_logged(self, state, residual):
        mag_calibrate(self, state, residual)
        cal_log.append(state.calibration_ratios[-1])

    def fbc_logged(self, residual):
        prev = self.state_manager.get_state().head_block_residual
        diff = None if prev is None else float(((residual - prev).abs().mean() / prev.abs().mean()).item())
        decision = fbc_decide(self, residual)
        fbc_log.append({"context": self.state_manager.context.name, "diff": diff, "compute": decision})
        return decision

    def mag_logged(self, module, *args, **kwargs):
        output = mag_forward(self, module, *args, **kwargs)
        s = self.state_manager.get_state()
        mag_log.append({"context": self.state_manager.context.name, "step_index": s.step_index,
                        "accumulated_err": float(s.accumulated_err), "accumulated_ratio": float(s.accumulated_ratio),
                        "accumulated_steps": s.accumulated_steps, "compute": s.should_compute})
        return output

    FBCHeadBlockHook._should_compute_remaining_blocks = fbc_logged
    MagCacheHeadHook.new_forward = mag_logged
    MagCacheBlockHook._perform_calibration_step = cal_logged
    hv_template = json.loads((pipes / "hunyuan_video_template.json").read_text())
    flux_latents = load_file(str(pipes / "flux_prompt_latents.safetensors"))["latents"]
    flux_args = dict(prompt="a photo of the cat", height=16, width=24, num_inference_steps=steps,
                     guidance_scale=3.5, max_sequence_length=8)
    video = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": steps}
    models = {
        "flux": (FluxPipeline, "tiny_flux", "flux_prompt_latents.safetensors", flux_args),
        "wan": (WanPipeline, "tiny_wan", "wan_latents.safetensors",
                dict(prompt="a red dog in the snow", negative_prompt="the cat with a hat", guidance_scale=5.0,
                     max_sequence_length=16, **video)),
        "hunyuan_video": (HunyuanVideoPipeline, "tiny_hunyuan_video", "hunyuan_video_latents.safetensors",
                          dict(prompt="a red dog in the snow", prompt_template=hv_template, guidance_scale=6.0,
                               max_sequence_length=8, **video)),
    }
    base = {}

    def run(name, model, make_config, config_json, extra_args=None):
        cls, repo, lat_file, args = models[model]
        args = {**args, **(extra_args or {})}
        latents = load_file(str(pipes / lat_file))["latents"]
        pipe = cls.from_pretrained(pipes / repo)
        pipe.set_progress_bar_config(disable=True)
        if make_config is not None:
            pipe.transformer.enable_cache(make_config(pipe))
        rec = CacheRecorder(pipe.transformer)
        fbc_log.clear()
        mag_log.clear()
        cal_log.clear()
        outputs = {}
        if model == "flux":
            r = pipe(**args, latents=latents.clone(), output_type="np")
            outputs["image"] = torch.from_numpy(r.images)
            # The same run again from the same pipeline: maybe_free_model_hooks resets the hooks' state,
            # so the second call must repeat the first exactly.
            first = (rec.summary() if make_config is not None else None, list(fbc_log), list(mag_log),
                     list(cal_log))
            rec.calls.clear()
            fbc_log.clear()
            mag_log.clear()
            cal_log.clear()
            outputs["latents"] = pipe(**args, latents=latents.clone(), output_type="latent").images
            again = (rec.summary() if make_config is not None else None, list(fbc_log), list(mag_log),
                     list(cal_log))
            assert first == again, name
        else:
            outputs["latents"] = pipe(**args, latents=latents.clone(), output_type="latent").frames
        cfg = {"model": model, "folder": f"pipelines/{repo}", "latents": f"pipelines/{lat_file}",
               "cache": config_json, **{k: v for k, v in args.items() if k != "prompt_template"}}
        if model == "hunyuan_video":
            cfg["prompt_template"] = "pipelines/hunyuan_video_template.json"
        if make_config is not None:
            cfg.update(rec.summary())
            if fbc_log:
                cfg["fbc_decisions"] = list(fbc_log)
            if mag_log:
                cfg["mag_decisions"] = list(mag_log)
            if cal_log:
                cfg["calibration_ratios"] = list(cal_log)
        key = (model, json.dumps(extra_args or {}, sort_keys=True))
        if make_config is None:
            base[key] = outputs
            cfg["calls"] = len(rec.calls)
        else:
            b = base[key]
            cfg["max_abs_diff_vs_base"] = {k: float((v - b[k]).abs().max()) for k, v in outputs.items()}
        c.add(name, "cache", cfg, {}, outputs)
        print(f"cache: {name}: full {cfg.get('full_calls')}/{cfg['calls']} diff {cfg.get('max_abs_diff_vs_base')}")
        return pipe, cfg

    def ts(**kw):
        return lambda p: TaylorSeerCacheConfig(**kw)

    def ts_json(**kw):
        return {"method": "TaylorSeerCacheConfig",
                **{k: (str(v).replace("torch.", "") if isinstance(v, torch.dtype) else v) for k, v in kw.items()}}

    cfg_args = dict(negative_prompt="a red dog", true_cfg_scale=2.0)
    try:
        run("flux_base", "flux", None, None)
        run("flux_base_true_cfg", "flux", None, None, cfg_args)
        for t in flux_fbc_thresholds:
            run(f"flux_fbc_{t}", "flux", lambda p, t=t: FirstBlockCacheConfig(threshold=t),
                {"method": "FirstBlockCacheConfig", "threshold": t})
        run(f"flux_fbc_true_cfg_{flux_fbc_cfg}", "flux", lambda p: FirstBlockCacheConfig(threshold=flux_fbc_cfg),
            {"method": "FirstBlockCacheConfig", "threshold": flux_fbc_cfg}, cfg_args)
        run("flux_taylorseer", "flux", ts(), ts_json())
        for dt in (torch.float32, torch.bfloat16):
            kw = dict(cache_interval=4, disable_cache_before_step=2, max_order=2, taylor_factors_dtype=dt)
            run(f"flux_taylorseer_i4_b2_o2_{str(dt)[6:]}", "flux", ts(**kw), ts_json(**kw))
        run("flux_taylorseer_lite", "flux", ts(use_lite_mode=True), ts_json(use_lite_mode=True))
        run("flux_taylorseer_true_cfg", "flux", ts(), ts_json(), cfg_args)
        # MagCache: calibrate first (never skips; the per-step ratios are what diffusers prints), then
        # run with those ratios, and with FLUX_MAG_RATIOS (28 values nearest-interpolated to 10).
        _, cal = run("flux_magcache_calibrate", "flux",
                     lambda p: MagCacheConfig(calibrate=True, num_inference_steps=steps),
                     {"method": "MagCacheConfig", "calibrate": True, "num_inference_steps": steps})
        ratios = cal["calibration_ratios"]
        mag = dict(threshold=flux_mag_threshold, max_skip_steps=3, retention_ratio=0.2, num_inference_steps=steps)
        run("flux_magcache", "flux", lambda p: MagCacheConfig(mag_ratios=list(ratios), **mag),
            {"method": "MagCacheConfig", "mag_ratios": list(ratios), **mag})
        run("flux_magcache_flux_ratios", "flux",
            lambda p: MagCacheConfig(mag_ratios=FLUX_MAG_RATIOS, num_inference_steps=steps),
            {"method": "MagCacheConfig", "mag_ratios": [float(x) for x in FLUX_MAG_RATIOS], "num_inference_steps": steps,
             "interpolated_mag_ratios": [float(x) for x in MagCacheConfig(
                 mag_ratios=FLUX_MAG_RATIOS, num_inference_steps=steps).mag_ratios]})
        run("flux_pab", "flux",
            lambda p: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                      spatial_attention_timestep_skip_range=(100, 800),
                                                      current_timestep_callback=lambda: p.current_timestep),
            {"method": "PyramidAttentionBroadcastConfig", "spatial_attention_block_skip_range": 2,
             "spatial_attention_timestep_skip_range": [100, 800], "current_timestep_callback": "pipe.current_timestep"})
        run("flux_faster_cache", "flux",
            lambda p: FasterCacheConfig(is_guidance_distilled=True, current_timestep_callback=lambda: p.current_timestep),
            {"method": "FasterCacheConfig", "is_guidance_distilled": True,
             "current_timestep_callback": "pipe.current_timestep"})
        # disable_cache removes every hook (and the state they hold): TaylorSeer enabled after a
        # first-block-cache run on the same pipeline gives the fresh pipeline's output bit for bit.
        reused, _ = run("flux_fbc_then_disable", "flux", lambda p: FirstBlockCacheConfig(threshold=0.25),
                        {"method": "FirstBlockCacheConfig", "threshold": 0.25})
        reused.transformer.disable_cache()
        reused.transformer.enable_cache(TaylorSeerCacheConfig())
        again = reused(**flux_args, latents=flux_latents.clone(), output_type="latent").images
        assert torch.equal(again, c.tensors["flux_taylorseer.latents"])
        del c.cases["flux_fbc_then_disable"], c.tensors["flux_fbc_then_disable.image"]
        del c.tensors["flux_fbc_then_disable.latents"]
        run("flux_sea_cache", "flux", lambda p: SeaCacheConfig(), {"method": "SeaCacheConfig"})
        run("flux_text_kv_cache", "flux", lambda p: TextKVCacheConfig(), {"method": "TextKVCacheConfig"})
        for model in ("wan", "hunyuan_video"):
            run(f"{model}_base", model, None, None)
            run(f"{model}_fbc_{video_fbc[model]}", model, lambda p, t=video_fbc[model]: FirstBlockCacheConfig(threshold=t),
                {"method": "FirstBlockCacheConfig", "threshold": video_fbc[model]})
            run(f"{model}_taylorseer", model, ts(), ts_json())
            run(f"{model}_taylorseer_lite", model, ts(use_lite_mode=True), ts_json(use_lite_mode=True))
        run("wan_sea_cache", "wan", lambda p: SeaCacheConfig(threshold=wan_sea_threshold),
            {"method": "SeaCacheConfig", "threshold": wan_sea_threshold})
    finally:
        FBCHeadBlockHook._should_compute_remaining_blocks = fbc_decide
        MagCacheHeadHook.new_forward = mag_forward
        MagCacheBlockHook._perform_calibration_step = mag_calibrate
    c.cases["errors"] = {"kind": "cache_errors", "errors": cache_errors(pipes)}
    c.save(out / "cache", "cache")


@torch.no_grad()
def stage_cache_hv_pab(out: Path):
    """Pyramid Attention Broadcast on the tiny HunyuanVideo pipeline (issue 18), as stage `cache`
    records its cases (10 steps from the committed latents, f32, CPU): diffusers hooks the block
    attentions and also the text token refiner's (`context_embedder.token_refiner.refiner_blocks.i.attn`);
    the final latents, the uncached latents of the same run for the change, and the per-module
    compute/skip schedules (CacheRecorder)."""
    from diffusers import HunyuanVideoPipeline
    from diffusers.hooks import PyramidAttentionBroadcastConfig
    from safetensors.torch import load_file

    c = Cases()
    pipes = out / "pipelines"
    template = json.loads((pipes / "hunyuan_video_template.json").read_text())
    args = dict(prompt="a red dog in the snow", prompt_template=template, guidance_scale=6.0,
                max_sequence_length=8, height=32, width=32, num_frames=5, num_inference_steps=10)
    latents = load_file(str(pipes / "hunyuan_video_latents.safetensors"))["latents"]
    outputs = {}
    for name, pab in (("hunyuan_video_base", False), ("hunyuan_video_pab", True)):
        pipe = HunyuanVideoPipeline.from_pretrained(pipes / "tiny_hunyuan_video")
        pipe.set_progress_bar_config(disable=True)
        if pab:
            pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800),
                current_timestep_callback=lambda: pipe.current_timestep))
        rec = CacheRecorder(pipe.transformer)
        outputs[name] = pipe(**args, latents=latents.clone(), output_type="latent").frames
        cfg = {"model": "hunyuan_video", "folder": "pipelines/tiny_hunyuan_video",
               "latents": "pipelines/hunyuan_video_latents.safetensors",
               "prompt_template": "pipelines/hunyuan_video_template.json",
               **{k: v for k, v in args.items() if k != "prompt_template"}}
        if pab:
            cfg["cache"] = {"method": "PyramidAttentionBroadcastConfig", "spatial_attention_block_skip_range": 2,
                            "spatial_attention_timestep_skip_range": [100, 800],
                            "current_timestep_callback": "pipe.current_timestep"}
            cfg.update(rec.summary())
            cfg["max_abs_diff_vs_base"] = {
                "latents": float((outputs[name] - outputs["hunyuan_video_base"]).abs().max())}
            assert any(k.startswith("context_embedder.") for k in cfg["hooked"]), cfg["hooked"]
            print(f"cache_hv_pab: full {cfg['full_calls']}/{cfg['calls']} diff {cfg['max_abs_diff_vs_base']}")
            c.add(name, "cache", cfg, {}, {"latents": outputs[name]})
    c.save(out / "cache", "cache_hv_pab")


@torch.no_grad()
def cache_errors(pipes):
    """What diffusers 0.42.1 raises for bad cache input (type and first line of the message; None where
    it accepts the input), on the tiny Flux transformer."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, SeaCacheConfig, TaylorSeerCacheConfig)
    from diffusers.hooks.first_block_cache import apply_first_block_cache

    def fresh():
        return FluxPipeline.from_pretrained(pipes / "tiny_flux")

    def call(t):
        # One direct transformer call (no cache_context) with the tiny shapes.
        g = torch.Generator("cpu").manual_seed(0)
        return t(hidden_states=torch.randn(1, 24, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 12, generator=g),
                 pooled_projections=torch.randn(1, 10, generator=g), timestep=torch.tensor([0.5]),
                 img_ids=torch.zeros(24, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]), return_dict=False)

    def in_context(t, n=6):
        for i in range(n):
            with t.cache_context("cond"):
                call(t)

    def twice():
        t = fresh().transformer
        t.enable_cache(FirstBlockCacheConfig())
        t.enable_cache(TaylorSeerCacheConfig())

    def enabled(config, then=None):
        def f():
            t = fresh().transformer
            t.enable_cache(config() if callable(config) else config)
            if then is not None:
                then(t)
        return f

    def single_block_fbc():
        torch.manual_seed(0)
        t = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=0,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=12,
                                   pooled_projection_dim=10, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        t.enable_cache(FirstBlockCacheConfig())

    errors = [
        ("enable_cache twice (FirstBlockCache, then TaylorSeer)", twice),
        ("enable_cache with a dict", enabled({"threshold": 0.1})),
        ("first-block cache on a module without blocks (the VAE)",
         lambda: apply_first_block_cache(fresh().vae, FirstBlockCacheConfig())),
        ("first-block cache on a transformer with one block", single_block_fbc),
        ("first-block cache called without cache_context", enabled(FirstBlockCacheConfig(), call)),
        ("first-block cache threshold -1 (6 calls)", enabled(FirstBlockCacheConfig(threshold=-1.0), in_context)),
        ("first-block cache threshold NaN (6 calls)", enabled(FirstBlockCacheConfig(threshold=float("nan")), in_context)),
        ("TaylorSeer called without cache_context", enabled(TaylorSeerCacheConfig(), call)),
        ("TaylorSeer cache_interval 0 (6 calls)", enabled(TaylorSeerCacheConfig(cache_interval=0), in_context)),
        ("TaylorSeer taylor_factors_dtype None (6 calls)",
         enabled(TaylorSeerCacheConfig(taylor_factors_dtype=None), in_context)),
        ("TaylorSeer max_order 0 (6 calls)", enabled(TaylorSeerCacheConfig(max_order=0), in_context)),
        ("MagCacheConfig() without mag_ratios", lambda: MagCacheConfig()),
        ("MagCacheConfig threshold -1", lambda: MagCacheConfig(mag_ratios=[1.0] * 28, threshold=-1.0)),
        ("MagCache called without cache_context", enabled(lambda: MagCacheConfig(mag_ratios=[1.0] * 28), call)),
        ("PyramidAttentionBroadcastConfig without current_timestep_callback",
         enabled(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2))),
        ("FasterCacheConfig tensor_format BSC",
         enabled(lambda: FasterCacheConfig(tensor_format="BSC", current_timestep_callback=lambda: 500))),
        ("FasterCache not guidance-distilled, batch 1 per call (Flux's separate cond/uncond calls)",
         enabled(lambda: FasterCacheConfig(current_timestep_callback=lambda: 500), call)),
        ("SeaCacheConfig threshold -1", lambda: SeaCacheConfig(threshold=-1.0)),
        ("SeaCacheConfig threshold NaN", lambda: SeaCacheConfig(threshold=float("nan"))),
        ("SeaCacheConfig threshold inf", lambda: SeaCacheConfig(threshold=float("inf"))),
        ("SeaCacheConfig residual_order 2", lambda: SeaCacheConfig(residual_order=2)),
        ("SeaCacheConfig retention_steps -1", lambda: SeaCacheConfig(retention_steps=-1)),
        ("SeaCacheConfig cache_end_steps -1", lambda: SeaCacheConfig(cache_end_steps=-1)),
        ("SeaCacheConfig max_consecutive_cached -1", lambda: SeaCacheConfig(max_consecutive_cached=-1)),
        ("SeaCacheConfig max_consecutive_cached True", lambda: SeaCacheConfig(max_consecutive_cached=True)),
        ("SeaCacheConfig power_exp 0", lambda: SeaCacheConfig(power_exp=0.0)),
        ("SeaCache on a module without blocks (the VAE)",
         lambda: __import__("diffusers.hooks.sea_cache", fromlist=["apply_sea_cache"]).apply_sea_cache(
             fresh().vae, SeaCacheConfig())),
        ("SeaCache called without cache_context", enabled(SeaCacheConfig(), call)),
    ]
    return [{"what": what, "raises": first_line_of_error(f)} for what, f in errors]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b); cs.append(2**8 + n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


CLIP_MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "o n</w>", "r e", "e d</w>", "s i",
               "p h", "ph o", "pho t", "phot o</w>", "o f</w>"]


def make_clip_tokenizer(folder: Path, model_max_length=None):
    """A tiny CLIP BPE tokenizer (byte-level vocabulary, a few merges) written as real repositories
    ship it (vocab.json, merges.txt); returns transformers' CLIPTokenizer built from those files."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bu = bytes_to_unicode()
    chars = [bu[b] for b in range(256)]
    vocab_list = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in CLIP_MERGES]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    write_json(folder / "vocab.json", {t: i for i, t in enumerate(vocab_list)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(CLIP_MERGES) + "\n")
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), **kwargs)


@torch.no_grad()
def stage_tokenizers(out: Path):
    """A tiny CLIP BPE tokenizer saved as real repositories ship it (vocab.json, merges.txt) and as
    transformers 5 saves it (tokenizer.json), with the ids diffusers' pipelines get
    (padding="max_length", truncation) for several prompts."""
    folder = out / "text_encoders" / "clip_tokenizer"
    tok = make_clip_tokenizer(folder)
    prompts = ["a photo of the cat", "A  Photo of THE dog!", "red cat, 42 dogs; café ☕",
               "the cat on the red dog on the cat of the photo of the dog", ""]
    cases = {}
    for i, p in enumerate(prompts):
        ids = tok(p, padding="max_length", max_length=16, truncation=True).input_ids
        full = tok(p, padding="longest").input_ids
        cases[f"prompt_{i}"] = {"prompt": p, "ids": ids, "untruncated_len": len(full)}
    tok.save_pretrained(folder)
    write_json(out / "text_encoders" / "clip_tokenizer.json",
               {"cases": cases, "max_length": 16, "versions": versions()})


T5_CORPUS = [
    "a photo of a cat sitting on a red chair",
    "a painting of a dog running in the park at sunset",
    "the quick brown fox jumps over the lazy dog",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit on a wooden table, still life",
    "portrait of an old man with a long white beard",
    "a small house in the mountains covered with snow",
    "the city skyline at night with bright lights",
    "a cup of coffee and a croissant in a cafe",
    "two cats playing with a ball of yarn",
    "a watercolor painting of flowers in a vase",
    "a robot reading a book in a library",
    "a beautiful landscape with a river and green hills",
    "a photograph of the ocean with waves and rocks",
    "children playing football in the street",
    "a futuristic car driving through a neon city",
    "a castle on a hill under a cloudy sky",
    "a plate of pasta with tomato sauce and basil",
    "a close up photo of a butterfly on a leaf",
    "an oil painting of a ship in a storm",
    "Photo, 4k, highly detailed, sharp focus, 35mm film",
    "The year 2024: 3 cats, 12 dogs and 100 birds!",
    "A Photo Of The Quick Brown Fox. (Yes) 50% OFF - Hello World",
    "NEW YORK, PARIS; TOKYO & LONDON: 3.14 [draft] #1 @home",
]


def make_t5_tokenizer(folder: Path):
    """Trains a tiny SentencePiece unigram model as T5's (pad=0, eos=1, unk=2, no bos, NFKC
    charsmap) on T5_CORPUS, deterministically, and writes a complete T5 tokenizer folder as real
    repositories ship it: spiece.model and the tokenizer_config.json that T5Tokenizer writes
    (model_max_length 512), without tokenizer.json."""
    import io

    import sentencepiece as spm
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(0)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_CORPUS), model_writer=buf, vocab_size=160, model_type="unigram",
        normalization_rule_name="nmt_nfkc", num_threads=1, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    (folder / "spiece.model").write_bytes(buf.getvalue())
    tok = T5Tokenizer.from_pretrained(folder, model_max_length=512)
    tok.save_pretrained(folder)
    for extra in ["tokenizer.json", "special_tokens_map.json"]:
        (folder / extra).unlink(missing_ok=True)


def stage_t5_tokenizer(out: Path):
    """A tiny T5 tokenizer from spiece.model alone (as FLUX.1/T5 repositories ship it) and as
    transformers saves it (tokenizer.json), with the ids FluxPipeline's tokenizer_2 gives
    (padding="max_length", max_length=16, truncation) for prompts NFKC and whitespace handling
    change."""
    import shutil

    from transformers import T5Tokenizer

    base = out / "text_encoders"
    spiece = base / "t5_tokenizer"
    if spiece.exists():
        shutil.rmtree(spiece)
    make_t5_tokenizer(spiece)
    tok = T5Tokenizer.from_pretrained(spiece)
    saved = base / "t5_tokenizer_json"
    if saved.exists():
        shutil.rmtree(saved)
    tok.save_pretrained(saved)
    assert (saved / "tokenizer.json").exists()
    tok_json = T5Tokenizer.from_pretrained(saved)
    prompts = [
        "a photo of a cat",
        "A Photo Of THE Quick Brown FOX",
        "café naïve ﬁne ＦＵＬＬ ｗｉｄｔｈ ① ™",
        "two  spaces   and\ttab\nnewline\u00a0nbsp\u3000ideographic",
        "  leading and trailing  ",
        "hello, world! (yes) 42 cats; 3.14 - 100%",
        "a snowman ☃ and 漢字",
        "",
        "a cat </s> a dog <pad>",
        "an astronaut riding a horse on the moon, digital art, a castle on a hill under a cloudy sky",
    ]
    cases = {}
    for i, p in enumerate(prompts):
        ids = tok(p, padding="max_length", max_length=16, truncation=True).input_ids
        assert ids == tok_json(p, padding="max_length", max_length=16, truncation=True).input_ids
        full = tok(p).input_ids
        cases[f"prompt_{i}"] = {"prompt": p, "ids": ids, "untruncated_len": len(full),
                                "tokens": tok.convert_ids_to_tokens(full)}
    write_json(base / "t5_tokenizer.json",
               {"cases": cases, "max_length": 16, "pad_token": str(tok.pad_token), "vocab_size": len(tok),
                "versions": versions()})


# The real UNet configs (config.json of each repository's `unet/` folder), for the layout test.
REAL_UNET_CONFIGS = {
    "sd15": {  # runwayml/stable-diffusion-v1-5
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
        "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "sd21": {  # stabilityai/stable-diffusion-2-1
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False, "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
        "sample_size": 96,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "use_linear_projection": True, "upcast_attention": True,
    },
    "sdxl_base": {  # stabilityai/stable-diffusion-xl-base-1.0
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "act_fn": "silu",
        "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
        "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
        "cross_attention_dim": 2048, "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
        "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
        "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
        "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
        "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
        "use_linear_projection": True,
    },
}


@torch.no_grad()
def stage_unets(out: Path):
    """Tiny UNet2DConditionModels in the styles of SD 1.x (conv projections, one head count), SD 2.x
    (linear projections, head counts per block, upcast_attention), SDXL (DownBlock2D first,
    transformer_layers_per_block, text_time embedding) and LCM (time_cond_proj_dim), saved in the
    hub layout, one call each (and an odd sample size); plus the parameter layout of the real SD 1.5,
    SD 2.1 and SDXL-base configs, built on the meta device (fixtures/real_configs)."""
    from diffusers import UNet2DConditionModel

    c = Cases()
    root = out / "unets"
    sd15 = dict(block_out_channels=(8, 8, 16), layers_per_block=(1, 2, 1), norm_num_groups=4, cross_attention_dim=12,
                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), sample_size=8)
    two_blocks = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=12,
                      sample_size=8)
    variants = {
        "sd15": sd15,
        "sd2": dict(two_blocks, attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        "sdxl": dict(two_blocks, attention_head_dim=[2, 4], use_linear_projection=True,
                     transformer_layers_per_block=[1, 2], addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=10 + 6 * 4,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        "lcm": dict(two_blocks, block_out_channels=(8, 8), attention_head_dim=2, time_cond_proj_dim=8,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    }
    for name, kw in variants.items():
        torch.manual_seed(9)
        model = UNet2DConditionModel(**kw).eval()
        folder = root / name
        model.save_pretrained(folder)
        model = UNet2DConditionModel.from_pretrained(folder).eval()
        shapes = [(2, 8, 8)] + ([(1, 7, 10)] if name == "sd15" else [])
        for batch, h, w in shapes:
            case = name if (h, w) == (8, 8) else f"{name}_odd_size"
            inputs = {
                "sample": torch.randn(batch, 4, h, w),
                "timestep": torch.tensor([999.0, 421.0][:batch]),
                "encoder_hidden_states": torch.randn(batch, 5, kw["cross_attention_dim"]),
            }
            kwargs = dict(inputs)
            if name == "sdxl":
                inputs["text_embeds"] = torch.randn(batch, 10)
                inputs["time_ids"] = torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0], [16.0, 12.0, 2.0, 1.0, 8.0, 8.0]])
                kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
            if name == "lcm":
                inputs["timestep_cond"] = torch.randn(batch, 8)
                kwargs["timestep_cond"] = inputs["timestep_cond"]
            output = model(**kwargs).sample
            c.add(case, "unet_2d_condition", {"folder": f"unets/{name}", "added_cond": name == "sdxl",
                                              "timestep_cond": name == "lcm"}, inputs, {"output": output})
    c.save(root, "unet_2d_condition")

    configs_dir = out / "real_configs"
    configs_dir.mkdir(parents=True, exist_ok=True)
    params = {}
    for name, cfg in REAL_UNET_CONFIGS.items():
        kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
        with torch.device("meta"):
            model = UNet2DConditionModel(**kwargs)
        params[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    write_json(configs_dir / "unet_configs.json", REAL_UNET_CONFIGS)
    # One line: SDXL alone has ~1700 parameters.
    (configs_dir / "unet_params.json").write_text(json.dumps(params, sort_keys=True, separators=(",", ":")) + "\n")


def tiny_sd_pipeline(folder: Path, kind: str):
    """A tiny SD 1.x ("sd": conv projections, epsilon, PNDM), SD 2.x ("sd2": linear projections,
    upcast_attention, v_prediction, DDIM) or SDXL ("sdxl": two text encoders, text_time, Euler)
    pipeline, saved by save_pretrained with the CLIP tokenizers as vocab.json + merges.txt, reloaded."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler,
                           StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tmp = folder.parent / (folder.name + "_tok")
    tokenizer = make_clip_tokenizer(tmp / "tokenizer", model_max_length=77)

    def clip(cls, hidden, act, **kw):
        return cls(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, hidden_act=act, bos_token_id=0,
            eos_token_id=2, pad_token_id=1, **kw)).eval()

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    unet_common = dict(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2, sample_size=8)
    torch.manual_seed(11)
    vae = AutoencoderKL(block_out_channels=(4, 8), layers_per_block=1, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        scaling_factor=0.18215).eval()
    if kind in ("sd", "sd2"):
        if kind == "sd":
            unet = UNet2DConditionModel(**unet_common, cross_attention_dim=16, attention_head_dim=2,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
            scheduler = PNDMScheduler(**betas, skip_prk_steps=True, set_alpha_to_one=False)
            text_encoder = clip(CLIPTextModel, 16, "quick_gelu")
        else:
            unet = UNet2DConditionModel(**unet_common, cross_attention_dim=16, attention_head_dim=[2, 4],
                                        use_linear_projection=True, upcast_attention=True,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
            scheduler = DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False,
                                      prediction_type="v_prediction")
            text_encoder = clip(CLIPTextModel, 16, "gelu")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        cls = StableDiffusionPipeline
        toks = ["tokenizer"]
    else:
        tokenizer_2 = make_clip_tokenizer(tmp / "tokenizer_2", model_max_length=77)
        tokenizer_2.pad_token = "!"  # as SDXL's tokenizer_2
        unet = UNet2DConditionModel(**unet_common, cross_attention_dim=16, attention_head_dim=[2, 4],
                                    use_linear_projection=True, transformer_layers_per_block=[1, 2],
                                    addition_embed_type="text_time", addition_time_embed_dim=4,
                                    projection_class_embeddings_input_dim=10 + 6 * 4,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
        scheduler = EulerDiscreteScheduler(**betas, timestep_spacing="leading")
        text_encoder = clip(CLIPTextModel, 8, "quick_gelu")
        text_encoder_2 = clip(CLIPTextModelWithProjection, 8, "gelu", projection_dim=10)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                         scheduler=scheduler, add_watermarker=False)
        cls = StableDiffusionXLPipeline
        toks = ["tokenizer", "tokenizer_2"]
    pipe.save_pretrained(folder)
    # Real SD repositories ship CLIP's tokenizers as vocab.json + merges.txt (no tokenizer.json).
    for t in toks:
        for f in ["vocab.json", "merges.txt"]:
            shutil.copy(tmp / t / f, folder / t / f)
        (folder / t / "tokenizer.json").unlink()
    shutil.rmtree(tmp)
    kw = {"add_watermarker": False} if kind == "sdxl" else {}
    reloaded = cls.from_pretrained(folder, **kw)
    for t in toks:
        for p in ["a photo of the cat", "the red dog"]:
            assert getattr(reloaded, t)(p).input_ids == getattr(pipe, t)(p).input_ids, p
    if kind == "sdxl":
        assert reloaded.tokenizer_2.pad_token == "!"
    return reloaded


def drop_name_or_path(folder: Path):
    """Components taken from a loaded pipeline record where they came from (an absolute path) in
    their config; drop it so the fixtures do not depend on the output folder."""
    for comp in ["vae", "unet"]:
        cfg_path = folder / comp / "config.json"
        conf = json.loads(cfg_path.read_text())
        conf.pop("_name_or_path", None)
        cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def stage_sd_pipelines(out: Path):
    """Tiny SD 1.x, SD 2.x (v_prediction) and SDXL pipelines: prompt encodings, explicit-latents CFG
    runs (each step's latents) with DDIM, Euler and DPM++ 2M swapped in by from_config, a seeded
    two-images-per-prompt Euler-ancestral run, guidance_rescale, img2img (SD and SDXL) and SD in bf16."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionXLImg2ImgPipeline)

    root = out / "pipelines"
    root.mkdir(parents=True, exist_ok=True)
    c = Cases()
    prompt, negative = "a photo of the cat", "the red dog"
    height, width, steps = 16, 24, 3
    swaps = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm": DPMSolverMultistepScheduler}
    torch.manual_seed(12)
    # The img2img input: 8-bit pixels, so that the PNG and the array are the same image.
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    from PIL import Image
    Image.fromarray(pixels.numpy()).save(root / "img2img_input.png")
    init_image = (pixels.float() / 255.0).permute(2, 0, 1).unsqueeze(0)
    pipes = {}
    for kind in ["sd", "sd2", "sdxl"]:
        folder = root / f"tiny_{kind}"
        if folder.exists():
            shutil.rmtree(folder)
        pipe = tiny_sd_pipeline(folder, kind)
        pipes[kind] = pipe
        default_sched = pipe.scheduler
        cfg = {"folder": f"pipelines/tiny_{kind}", "prompt": prompt, "negative_prompt": negative,
               "height": height, "width": width, "num_inference_steps": steps, "guidance_scale": 7.5}
        xl = kind == "sdxl"

        # Prompt encodings (with and without a negative prompt; clip_skip=1 for SD).
        outputs = {}
        if xl:
            pe, npe, pp, npp = pipe.encode_prompt(prompt, negative_prompt=negative)
            outputs.update(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=pp,
                           negative_pooled_prompt_embeds=npp)
            _, npe0, _, npp0 = pipe.encode_prompt(prompt)
            outputs.update(negative_prompt_embeds_none=npe0, negative_pooled_prompt_embeds_none=npp0)
            pe1, _, _, _ = pipe.encode_prompt(prompt, negative_prompt=negative, clip_skip=1)
            outputs["prompt_embeds_clip_skip_1"] = pe1
        else:
            pe, npe = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
            outputs.update(prompt_embeds=pe, negative_prompt_embeds=npe)
            _, npe0 = pipe.encode_prompt(prompt, "cpu", 1, True)
            outputs["negative_prompt_embeds_none"] = npe0
            # diffusers 0.42.1's clip_skip branch calls `text_encoder.text_model.final_layer_norm`,
            # which transformers 5's CLIPTextModel no longer has: its computation, done here.
            ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            hs = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
            outputs["prompt_embeds_clip_skip_1"] = pipe.text_encoder.final_layer_norm(hs[-(1 + 1)])
        c.add(f"{kind}_encode", "sd_encode", cfg, {}, outputs)

        # Explicit latents, CFG with a negative prompt, the default scheduler and swapped ones.
        latents = torch.randn(1, 4, height // 2, width // 2)
        runs = {"default": None, **swaps}
        for sname, scls in runs.items():
            pipe.scheduler = default_sched if scls is None else scls.from_config(default_sched.config)
            recorded = []

            def record(p, i, t, kw):
                recorded.append(kw["latents"].clone())
                return kw

            args = dict(prompt=prompt, negative_prompt=negative, height=height, width=width,
                        num_inference_steps=steps, guidance_scale=7.5, latents=latents.clone())
            image = pipe(**args, output_type="np", callback_on_step_end=record).images
            outputs = {"images": torch.from_numpy(image)}
            for i, s in enumerate(recorded):
                outputs[f"step_{i}"] = s
            if sname == "default":
                outputs["output_latents"] = pipe(**args, output_type="latent").images
            c.add(f"{kind}_{sname}", "sd_pipeline",
                  {**cfg, "scheduler": type(pipe.scheduler).__name__}, {"latents": latents}, outputs)

        # A seed, two images per prompt, a stochastic scheduler (the generator is shared with the steps).
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(default_sched.config)
        image = pipe(prompt=prompt, negative_prompt=negative, height=height, width=width,
                     num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=2,
                     generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
        c.add(f"{kind}_seed_ancestral", "sd_pipeline",
              {**cfg, "scheduler": "EulerAncestralDiscreteScheduler", "seed": 42, "num_images_per_prompt": 2},
              {}, {"images": torch.from_numpy(image)})
        pipe.scheduler = default_sched

        if kind == "sd":
            # Every other scheduler of the library, swapped in by from_config, seeded (the
            # stochastic ones draw their step noise from the same generator).
            import diffusers as d
            for sname in ["DDPMScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                          "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
                          "DPMSolverSinglestepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
                          "LCMScheduler", "TCDScheduler"]:
                pipe.scheduler = getattr(d, sname).from_config(default_sched.config)
                image = pipe(prompt=prompt, negative_prompt=negative, height=height, width=width,
                             num_inference_steps=steps, guidance_scale=7.5,
                             generator=torch.Generator("cpu").manual_seed(5), output_type="np").images
                c.add(f"sd_swap_{sname}", "sd_pipeline", {**cfg, "scheduler": sname, "seed": 5}, {},
                      {"images": torch.from_numpy(image)})
            pipe.scheduler = default_sched

            # An LCM-distilled UNet (`time_cond_proj_dim`: the guidance scale as an embedding, no
            # CFG batch) with the LCM scheduler, as a repository of its own.
            from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
            torch.manual_seed(13)
            lcm_unet = UNet2DConditionModel.from_config({**pipe.unet.config, "time_cond_proj_dim": 8}).eval()
            lcm = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                          unet=lcm_unet, scheduler=LCMScheduler.from_config(default_sched.config),
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
            lcm_folder = root / "tiny_sd_lcm"
            if lcm_folder.exists():
                shutil.rmtree(lcm_folder)
            lcm.save_pretrained(lcm_folder)
            drop_name_or_path(lcm_folder)
            for f in ["vocab.json", "merges.txt"]:
                shutil.copy(folder / "tokenizer" / f, lcm_folder / "tokenizer" / f)
            (lcm_folder / "tokenizer" / "tokenizer.json").unlink()
            lcm = StableDiffusionPipeline.from_pretrained(lcm_folder)
            image = lcm(prompt=prompt, height=height, width=width, num_inference_steps=4, guidance_scale=7.5,
                        generator=torch.Generator("cpu").manual_seed(5), output_type="np").images
            c.add("sd_lcm", "sd_pipeline", {**cfg, "folder": "pipelines/tiny_sd_lcm", "scheduler": "LCMScheduler",
                                            "seed": 5, "num_inference_steps": 4}, {},
                  {"images": torch.from_numpy(image)})

            # Repositories saved by diffusers with a DPM-Solver scheduler: save_config writes
            # lambda_min_clipped's default as Python's `-Infinity`, which strict JSON lacks. Loaded
            # back from disk and run seeded (the singlestep one with its SDE form: step noise too).
            from diffusers import DPMSolverSinglestepScheduler, StableDiffusionPipeline
            for sname, sched in [
                ("dpm", DPMSolverMultistepScheduler.from_config(default_sched.config)),
                ("dpm_single", DPMSolverSinglestepScheduler.from_config(default_sched.config,
                                                                        algorithm_type="sde-dpmsolver++")),
            ]:
                saved = root / f"tiny_sd_{sname}"
                if saved.exists():
                    shutil.rmtree(saved)
                pipe.scheduler = sched
                pipe.save_pretrained(saved)
                pipe.scheduler = default_sched
                text = (saved / "scheduler" / "scheduler_config.json").read_text()
                assert '"lambda_min_clipped": -Infinity' in text, text
                drop_name_or_path(saved)
                for f in ["vocab.json", "merges.txt"]:
                    shutil.copy(folder / "tokenizer" / f, saved / "tokenizer" / f)
                (saved / "tokenizer" / "tokenizer.json").unlink()
                loaded = StableDiffusionPipeline.from_pretrained(saved)
                assert type(loaded.scheduler) is type(sched)
                image = loaded(prompt=prompt, negative_prompt=negative, height=height, width=width,
                               num_inference_steps=steps, guidance_scale=7.5,
                               generator=torch.Generator("cpu").manual_seed(5), output_type="np").images
                c.add(f"sd_saved_{sname}", "sd_pipeline",
                      {**cfg, "folder": f"pipelines/tiny_sd_{sname}", "scheduler": type(sched).__name__, "seed": 5},
                      {}, {"images": torch.from_numpy(image)})

        if kind == "sd2":
            image = pipe(prompt=prompt, negative_prompt=negative, height=height, width=width,
                         num_inference_steps=steps, guidance_scale=7.5, guidance_rescale=0.7,
                         latents=latents.clone(), output_type="np").images
            c.add("sd2_rescale", "sd_pipeline", {**cfg, "guidance_rescale": 0.7}, {"latents": latents},
                  {"images": torch.from_numpy(image)})
        if kind in ("sd", "sdxl"):
            i2i_cls = StableDiffusionXLImg2ImgPipeline if xl else StableDiffusionImg2ImgPipeline
            kw = {"add_watermarker": False} if xl else {}
            i2i = i2i_cls(**pipe.components, **kw)
            image = i2i(prompt=prompt, negative_prompt=negative, image=init_image.clone(), strength=0.6,
                        num_inference_steps=4, guidance_scale=7.5,
                        generator=torch.Generator("cpu").manual_seed(7), output_type="np").images
            c.add(f"{kind}_img2img", "sd_img2img",
                  {**cfg, "num_inference_steps": 4, "strength": 0.6, "seed": 7, "image": "pipelines/img2img_input.png"},
                  {"image": init_image}, {"images": torch.from_numpy(image)})
        if kind == "sd":
            # diffusers itself in bf16 from the same f32 latents: the yardstick for our bf16 tolerance.
            pipe.to(torch.bfloat16)
            image = pipe(prompt=prompt, negative_prompt=negative, height=height, width=width,
                         num_inference_steps=steps, guidance_scale=7.5, latents=latents.to(torch.bfloat16),
                         output_type="np").images
            c.add("sd_bf16", "sd_pipeline", cfg, {}, {"images": torch.from_numpy(image)})
            pipe.to(torch.float32)
    c.save(root, "sd")


def lora_layers(pipe, adapter):
    """Every PEFT LoRA layer the pipeline's components hold for `adapter`: lora_A, lora_B and the
    scaling PEFT computed (lora_alpha / r per module), keyed `{component}.{module}`."""
    from peft.tuners.lora import LoraLayer

    tensors, scalings = {}, {}
    for comp in ["transformer", "unet", "text_encoder", "text_encoder_2"]:
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
                # transformers 5's CLIPTextModel has no `text_model` wrapper (diffusers strips the
                # prefix before loading); the names are recorded as LoRA files and real CLIP
                # checkpoints spell them.
                if comp.startswith("text_encoder") and not name.startswith("text_model."):
                    name = f"text_model.{name}"
                key = f"{comp}.{name}"
                tensors[f"{key}.lora_A.weight"] = mod.lora_A[adapter].weight
                tensors[f"{key}.lora_B.weight"] = mod.lora_B[adapter].weight
                scalings[key] = float(mod.scaling[adapter])
    return tensors, scalings


class DiffusersWarnings:
    """Collects what diffusers (and PEFT / transformers) log at WARNING or above while loading."""

    def __enter__(self):
        import logging
        import warnings

        self.records = []
        outer = self

        class H(logging.Handler):
            def emit(self, record):
                outer.records.append(record.getMessage())

        self.handler = H(level=logging.WARNING)
        self.loggers = [logging.getLogger(n) for n in ["diffusers", "peft", "transformers"]]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        self.catch = warnings.catch_warnings(record=True)
        self.warned = self.catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        self.catch.__exit__(*exc)
        self.records += [str(w.message) for w in self.warned]
        return False


def random_peft_lora(model, config, g, std_a, std_b, key_prefix=""):
    """Injects `config` into `model` with its add_adapter, fills lora_A and lora_B with random values
    (PEFT initialises lora_B to zero) and returns the PEFT state dict (keys prefixed with `key_prefix`)
    and the config's dict."""
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    model.add_adapter(config)
    for name, mod in sorted(model.named_modules()):
        if isinstance(mod, LoraLayer):
            for lin, std in [(mod.lora_A["default"], std_a), (mod.lora_B["default"], std_b)]:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)
    sd = {key_prefix + k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    meta = model.peft_config["default"].to_dict()
    meta.pop("base_model_name_or_path", None)  # an absolute path on the machine that ran the stage
    return sd, meta


def kohya_pair(sd, g, name, out_f, in_f, r, alpha, std=0.3, conv=False):
    """sd-scripts' three keys for one layer: lora_down [r, in], lora_up [out, r] (1x1 Conv2d: 4-D),
    alpha (a 0-d float tensor, as sd-scripts saves it; None: no alpha key)."""
    down = torch.randn(r, in_f, generator=g) * std
    up = torch.randn(out_f, r, generator=g) * std
    if conv:
        down, up = down.reshape(r, in_f, 1, 1), up.reshape(out_f, r, 1, 1)
    sd[f"{name}.lora_down.weight"] = down.contiguous()
    sd[f"{name}.lora_up.weight"] = up.contiguous()
    if alpha is not None:
        sd[f"{name}.alpha"] = torch.tensor(float(alpha))


@torch.no_grad()
def stage_lora(out: Path):
    """Tiny LoRA files in every layout diffusers 0.42.1 reads for Flux, SD 1.x and SDXL (written into
    fixtures/lora/), what diffusers converts each to (the lora_A/lora_B/scaling PEFT ends up with in
    each layer after load_lora_weights, which is the ground truth for our conversion) and the
    pipelines' images with the adapters loaded, mixed, fused and unfused.

    What diffusers 0.42.1 (+ peft 0.21.2) does with each layout:
    - diffusers/PEFT (`transformer.…lora_A.weight`, `text_encoder.…`, `unet.…`): the header's
      `lora_adapter_metadata` JSON (the LoraConfig dict per component prefix) gives r, lora_alpha,
      rank_pattern, alpha_pattern; PEFT's scaling is lora_alpha / r per module (patterns matched on
      the module name's suffix). Without metadata: get_peft_kwargs (most common rank and alpha, the
      others as patterns).
    - kohya Flux (`lora_unet_double_blocks_N_…lora_down/lora_up/alpha`, `lora_te1_…`):
      _convert_kohya_flux_lora_to_diffusers folds alpha / rank into lora_A and lora_B (scale_down and
      scale_up, whose product is alpha / rank) and drops the alphas, so PEFT's scaling is 1; fused
      img/txt qkv are split into q, k, v (lora_A copied, lora_B split by rows; diffusers' "sparse"
      branch only fires when lora_B is block-diagonal, which random weights are not).
      `single_blocks_N_linear1` is split with FLUX.1-dev's hard-coded dims [3072, 3072, 3072, 12288]
      (an AssertionError on any other size), so the tiny model's kohya/BFL files leave it out.
    - BFL/ComfyUI Flux (`diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`): renamed to
      the kohya names (`diffusion_model.` -> `lora_unet_`, dots -> underscores) and converted as kohya.
    - XLabs Flux (`double_blocks.0.processor.qkv_lora1.down.weight`): qkv split as above, no alphas
      (scaling 1).
    - kohya SD/SDXL (`lora_unet_…`, `lora_te_`/`lora_te1_`/`lora_te2_`; SDXL's SGM block names are
      renumbered by _maybe_map_sgm_blocks_to_diffusers with the UNet's layers_per_block): the alphas
      go to get_peft_kwargs as network_alphas; the most common alpha becomes lora_alpha and the
      others an alpha_pattern whose keys diffusers derives from the old-format names
      (`…attn1.processor.to_q_lora.down.weight`, `…self_attn` for the text encoders), which match no
      module: every attention / text-encoder layer gets the most common alpha (recorded as measured
      in `scalings`); only names with a `.lora.` part (proj_in/proj_out, ff) keep their own alpha.
    - DoRA (`dora_scale`, `lora_magnitude_vector`): diffusers drops `dora_scale` keys with a warning
      (and a `lora_magnitude_vector` without use_dora in the metadata is an unexpected key); no
      diffusers run is recorded for flux_dora.safetensors.
    """
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig
    import transformers.integrations.peft as tpeft

    # transformers 5.24's PEFT integration (the text encoders' add_adapter/load_adapter) asks for
    # peft >= 0.22.0, which is not released (PyPI's newest is 0.21.2, pinned here): that version
    # check, and nothing else, is bypassed; the text encoders' LoRA layers are PEFT 0.21.2's.
    tpeft.check_peft_version = lambda *a, **k: None
    folder = out / "lora"
    folder.mkdir(parents=True, exist_ok=True)
    flux_repo = str(out / "pipelines" / "tiny_flux")
    sd_repo, sdxl_repo = str(out / "pipelines" / "tiny_sd"), str(out / "pipelines" / "tiny_sdxl")
    g = torch.Generator("cpu").manual_seed(1515)

    # --- Flux files --------------------------------------------------------------------------
    pipe = FluxPipeline.from_pretrained(flux_repo)
    d = "transformer_blocks.0"
    s = "single_transformer_blocks.0"
    targets = [f"{d}.attn.{m}" for m in ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                         "add_v_proj", "to_add_out"]]
    targets += [f"{d}.ff.net.0.proj", f"{d}.ff.net.2", f"{d}.ff_context.net.0.proj", f"{d}.ff_context.net.2",
                f"{d}.norm1.linear", f"{d}.norm1_context.linear"]
    targets += [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp", f"{s}.proj_out",
                f"{s}.norm.linear"]
    tl, tmeta = random_peft_lora(pipe.transformer, LoraConfig(r=4, lora_alpha=6, target_modules=targets,
                                                              init_lora_weights=False), g, 0.3, 0.3)
    # Text encoder LoRA keys as files written with transformers 4 have them (`text_model.encoder…`).
    el, emeta = random_peft_lora(pipe.text_encoder, LoraConfig(
        r=2, lora_alpha=3, target_modules=[f"encoder.layers.0.self_attn.{m}" for m in ["q_proj", "k_proj", "v_proj", "out_proj"]],
        init_lora_weights=False), g, 0.5, 0.5, key_prefix="text_model.")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=tl, text_encoder_lora_layers=el,
                                   weight_name="flux_peft.safetensors", transformer_lora_adapter_metadata=tmeta,
                                   text_encoder_lora_adapter_metadata=emeta)
    pipe = FluxPipeline.from_pretrained(flux_repo)
    tl_b, tmeta_b = random_peft_lora(pipe.transformer, LoraConfig(
        r=2, lora_alpha=3, rank_pattern={f"{s}.proj_mlp": 3}, alpha_pattern={f"{s}.proj_mlp": 1.5},
        target_modules=[f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.ff_context.net.0.proj", f"{s}.attn.to_q",
                        f"{s}.proj_mlp", f"{s}.norm.linear"], init_lora_weights=False), g, 0.4, 0.4)
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=tl_b, weight_name="flux_peft_b.safetensors",
                                   transformer_lora_adapter_metadata=tmeta_b)
    # DoRA: flux_peft with a PEFT DoRA magnitude vector and a kohya-style dora_scale added.
    from safetensors.torch import load_file
    from safetensors import safe_open
    with safe_open(str(folder / "flux_peft.safetensors"), "pt") as f:
        peft_meta = f.metadata()
    dora = load_file(str(folder / "flux_peft.safetensors"))
    dora[f"transformer.{d}.attn.to_q.lora_magnitude_vector"] = torch.rand(32, generator=g) + 0.5
    dora[f"transformer.{d}.attn.to_k.dora_scale"] = torch.rand(1, 32, generator=g) + 0.5
    save_file(dora, str(folder / "flux_dora.safetensors"), metadata=peft_meta)

    # kohya (sd-scripts) Flux: no single_blocks_0_linear1 (see the docstring).
    ko = {}
    dims = {"img_attn_qkv": (96, 32), "img_attn_proj": (32, 32), "img_mlp_0": (128, 32), "img_mlp_2": (32, 128),
            "img_mod_lin": (192, 32)}
    dims.update({k.replace("img", "txt"): v for k, v in dims.items()})
    alphas = {"img_attn_qkv": 2.0, "img_attn_proj": 4.0, "img_mlp_0": 1.0, "img_mlp_2": 8.0, "img_mod_lin": 3.0,
              "txt_attn_qkv": 16.0, "txt_attn_proj": None, "txt_mlp_0": 2.0, "txt_mlp_2": 0.5, "txt_mod_lin": 4.0}
    for k, (o, i) in dims.items():
        kohya_pair(ko, g, f"lora_unet_double_blocks_0_{k}", o, i, 4, alphas[k])
    kohya_pair(ko, g, "lora_unet_single_blocks_0_linear2", 32, 160, 4, 2.0)
    kohya_pair(ko, g, "lora_unet_single_blocks_0_modulation_lin", 96, 32, 4, 6.0)
    for m, (o, i), a in [("self_attn_q_proj", (10, 10), 1.0), ("self_attn_k_proj", (10, 10), 2.0),
                         ("self_attn_v_proj", (10, 10), 4.0), ("self_attn_out_proj", (10, 10), None),
                         ("mlp_fc1", (16, 10), 3.0)]:
        kohya_pair(ko, g, f"lora_te1_text_model_encoder_layers_0_{m}", o, i, 2, a, std=0.5)
    save_file(ko, str(folder / "flux_kohya.safetensors"))

    # BFL / ComfyUI Flux: the same layers under diffusion_model.<BFL name> (fresh values).
    bfl = {}
    for k, (o, i) in dims.items():
        head, tail = k.rsplit("_", 1)  # img_attn_qkv -> img_attn.qkv, img_mlp_0 -> img_mlp.0
        kohya_pair(bfl, g, f"diffusion_model.double_blocks.0.{head}.{tail}", o, i, 3, alphas[k])
    kohya_pair(bfl, g, "diffusion_model.single_blocks.0.linear2", 32, 160, 3, 1.5)
    kohya_pair(bfl, g, "diffusion_model.single_blocks.0.modulation.lin", 96, 32, 3, 3.0)
    # (diffusers recognises the old-format text encoder names only when an out_proj is among them:
    # without one, q_proj's keys stay unconverted and are unexpected keys.)
    for m, (o, i), a in [("self_attn.q_proj", (10, 10), 2.0), ("self_attn.out_proj", (10, 10), 1.0),
                         ("mlp.fc2", (10, 16), 1.0)]:
        kohya_pair(bfl, g, f"text_encoders.clip_l.transformer.text_model.encoder.layers.0.{m}", o, i, 2, a, std=0.5)
    save_file(bfl, str(folder / "flux_bfl.safetensors"))

    # XLabs Flux (no alphas).
    xl = {}
    for name, (o, i) in [("double_blocks.0.processor.qkv_lora1", (96, 32)), ("double_blocks.0.processor.qkv_lora2", (96, 32)),
                         ("double_blocks.0.processor.proj_lora1", (32, 32)), ("double_blocks.0.processor.proj_lora2", (32, 32)),
                         ("single_blocks.0.processor.qkv_lora", (96, 32)), ("single_blocks.0.processor.proj_lora", (32, 160))]:
        xl[f"{name}.down.weight"] = (torch.randn(4, i, generator=g) * 0.3).contiguous()
        xl[f"{name}.up.weight"] = (torch.randn(o, 4, generator=g) * 0.3).contiguous()
    save_file(xl, str(folder / "flux_xlabs.safetensors"))

    # --- SD files ----------------------------------------------------------------------------
    pipe = StableDiffusionPipeline.from_pretrained(sd_repo)
    ul, umeta = random_peft_lora(pipe.unet, LoraConfig(
        r=2, lora_alpha=3, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
        init_lora_weights=False), g, 0.5, 0.5)
    el, emeta = random_peft_lora(pipe.text_encoder, LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], init_lora_weights=False),
        g, 0.5, 0.5, key_prefix="text_model.")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=ul, text_encoder_lora_layers=el,
                                              weight_name="sd_peft.safetensors", unet_lora_adapter_metadata=umeta,
                                              text_encoder_lora_adapter_metadata=emeta)
    sk = {}
    blk = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"
    # Attention and text-encoder alphas are one value per component: diffusers derives their
    # alpha_pattern keys from old-format names that match no module (PEFT warns "alpha_pattern keys
    # did not match any targeted module and were ignored"); ff and proj_in/proj_out alphas may differ.
    for m, (o, i), a in [("attn1_to_q", (4, 4), 1.0), ("attn1_to_k", (4, 4), 1.0), ("attn1_to_v", (4, 4), 1.0),
                         ("attn1_to_out_0", (4, 4), 1.0), ("attn2_to_q", (4, 4), 1.0), ("attn2_to_k", (4, 16), 1.0),
                         ("attn2_to_v", (4, 16), 1.0), ("ff_net_0_proj", (32, 4), 0.5), ("ff_net_2", (4, 16), 1.0)]:
        kohya_pair(sk, g, f"{blk}_{m}", o, i, 2, a, std=0.6)
    kohya_pair(sk, g, "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", 8, 8, 2, 1.0, std=0.6)
    kohya_pair(sk, g, "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_v", 4, 16, 2, 1.0, std=0.6)
    kohya_pair(sk, g, "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_2", 4, 16, 2, 2.0, std=0.6)
    for m, (o, i), a in [("self_attn_q_proj", (16, 16), 1.0), ("self_attn_k_proj", (16, 16), 1.0),
                         ("self_attn_v_proj", (16, 16), 1.0), ("self_attn_out_proj", (16, 16), 1.0),
                         ("mlp_fc1", (32, 16), 1.0), ("mlp_fc2", (16, 32), 1.0)]:
        kohya_pair(sk, g, f"lora_te_text_model_encoder_layers_1_{m}", o, i, 2, a, std=0.5)
    save_file(sk, str(folder / "sd_kohya.safetensors"))
    skc = dict(sk)
    for name, ch, a in [("lora_unet_down_blocks_0_attentions_0_proj_in", 4, 1.0),
                        ("lora_unet_down_blocks_0_attentions_0_proj_out", 4, 2.0),
                        ("lora_unet_mid_block_attentions_0_proj_in", 8, 1.0),
                        ("lora_unet_up_blocks_1_attentions_0_proj_out", 4, 1.0)]:
        kohya_pair(skc, g, name, ch, ch, 2, a, std=0.6, conv=True)
    save_file(skc, str(folder / "sd_kohya_conv.safetensors"))

    # SDXL kohya in SGM names (layers_per_block 1: input_blocks 3 = down_blocks.1 layer 0, its
    # attentions at inner index 1; middle_block 1 = mid_block.attentions.0; output_blocks 0/1 =
    # up_blocks.0 layers 0/1).
    xk = {}
    for name, (o, i), a in [
            ("lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", (8, 8), 1.0),
            ("lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k", (8, 16), 1.0),
            ("lora_unet_input_blocks_3_1_transformer_blocks_0_ff_net_2", (8, 32), 2.0),
            ("lora_unet_input_blocks_3_1_proj_in", (8, 8), 1.0),
            ("lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0", (8, 8), 1.0),
            ("lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_v", (8, 16), 1.0),
            ("lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_k", (8, 8), 1.0),
            ("lora_unet_output_blocks_1_1_proj_out", (8, 8), 1.0)]:
        kohya_pair(xk, g, name, o, i, 2, a, std=0.6)
    for p, a in [("lora_te1", 1.0), ("lora_te2", 2.0)]:
        for m, (o, i) in [("self_attn_q_proj", (8, 8)), ("self_attn_v_proj", (8, 8)), ("self_attn_out_proj", (8, 8)),
                          ("mlp_fc1", (16, 8))]:
            kohya_pair(xk, g, f"{p}_text_model_encoder_layers_1_{m}", o, i, 2, a, std=0.5)
    save_file(xk, str(folder / "sdxl_kohya.safetensors"))

    # --- diffusers' conversion and images ------------------------------------------------------
    c = Cases()
    flux_latents = load_file(str(out / "quantization" / "flux_pipeline.safetensors"))["latents"]
    flux_args = dict(prompt="a photo of the cat", height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                     max_sequence_length=8)
    torch.manual_seed(1516)
    sd_latents = torch.randn(1, 4, 8, 12)
    sd_args = dict(prompt="a photo of the cat", negative_prompt="the red dog", height=16, width=24,
                   num_inference_steps=3, guidance_scale=7.5)
    pipes = {
        "flux": (lambda: FluxPipeline.from_pretrained(flux_repo), flux_args, flux_latents, "pipelines/tiny_flux"),
        "sd": (lambda: StableDiffusionPipeline.from_pretrained(sd_repo), sd_args, sd_latents, "pipelines/tiny_sd"),
        "sdxl": (lambda: StableDiffusionXLPipeline.from_pretrained(sdxl_repo, add_watermarker=False), sd_args,
                 sd_latents, "pipelines/tiny_sdxl"),
    }

    def run(kind, p):
        _, args, lat, _ = pipes[kind]
        return torch.from_numpy(p(**args, latents=lat.clone(), output_type="np").images)

    base = {}
    for kind, (make, args, lat, repo) in pipes.items():
        base[kind] = run(kind, make())
        c.add(f"{kind}_base", "lora_base", {"pipeline": kind, "folder": repo, **args}, {"latents": lat},
              {"image": base[kind]})

    files = [("flux_peft", "flux", "peft"), ("flux_peft_b", "flux", "peft"), ("flux_kohya", "flux", "kohya_flux"),
             ("flux_bfl", "flux", "bfl_flux"), ("flux_xlabs", "flux", "xlabs_flux"), ("sd_peft", "sd", "peft"),
             ("sd_kohya", "sd", "kohya"), ("sd_kohya_conv", "sd", "kohya"), ("sdxl_kohya", "sdxl", "kohya")]
    for case, kind, fmt in files:
        make, args, lat, repo = pipes[kind]
        p = make()
        path = str(folder / f"{case}.safetensors")
        kw = {"unet_config": p.unet.config} if kind == "sdxl" else {}
        if kind == "flux":
            sd, alphas = type(p).lora_state_dict(path, return_alphas=True)
        else:
            sd, alphas = type(p).lora_state_dict(path, **kw)
        with DiffusersWarnings() as w:
            p.load_lora_weights(path, adapter_name=case)
        # A transformer-only file makes diffusers say the text encoder got no keys ("safe to
        # ignore"); anything else (unexpected or missing keys, dropped layers) fails the stage.
        warned = [r for r in w.records if not r.startswith("No LoRA keys associated to")]
        assert not warned, (case, warned)
        layers, scalings = lora_layers(p, case)
        image = run(kind, p)
        change = float((image - base[kind]).abs().max())
        assert change >= 1e-2, (case, change)
        c.add(case, "lora_file", {"pipeline": kind, "folder": repo, "file": f"lora/{case}.safetensors",
                                  "format": fmt, "state_dict_keys": sorted(sd),
                                  "alphas": {k: float(v) for k, v in (alphas or {}).items()},
                                  "scalings": scalings, "max_abs_change_vs_base": change, **args},
              {}, {"image": image, **{f"layers.{k}": v for k, v in layers.items()}})
        print(f"lora: {case}: {len(scalings)} layers, image change {change:.3g}")

    # Two adapters at once with weights.
    p = pipes["flux"][0]()
    p.load_lora_weights(str(folder / "flux_peft.safetensors"), adapter_name="a")
    p.load_lora_weights(str(folder / "flux_kohya.safetensors"), adapter_name="b")
    p.set_adapters(["a", "b"], adapter_weights=[0.7, 0.5])
    c.add("flux_two", "lora_mix", {"pipeline": "flux", "folder": "pipelines/tiny_flux",
                                   "adapters": {"a": "lora/flux_peft.safetensors", "b": "lora/flux_kohya.safetensors"},
                                   "adapter_weights": {"a": 0.7, "b": 0.5}, **flux_args},
          {}, {"image": run("flux", p)})
    # Per-component weights.
    p = pipes["sd"][0]()
    p.load_lora_weights(str(folder / "sd_peft.safetensors"), adapter_name="sd_peft")
    p.set_adapters(["sd_peft"], adapter_weights=[{"unet": 0.6, "text_encoder": 1.2}])
    c.add("sd_component_weights", "lora_mix",
          {"pipeline": "sd", "folder": "pipelines/tiny_sd", "adapters": {"sd_peft": "lora/sd_peft.safetensors"},
           "adapter_weights": {"sd_peft": {"unet": 0.6, "text_encoder": 1.2}}, **sd_args},
          {}, {"image": run("sd", p)})
    # Fuse at 0.8 (FluxLoraLoaderMixin.fuse_lora's default components: the transformer only; the
    # text encoder's adapter stays unfused at weight 1), unfuse (diffusers subtracts the delta again:
    # the residue per weight is recorded), unload (the image then differs from the base image by
    # what that residue does).
    p = pipes["flux"][0]()
    original = {k: v.clone() for k, v in p.transformer.state_dict().items()}
    p.load_lora_weights(str(folder / "flux_peft.safetensors"), adapter_name="flux_peft")
    p.fuse_lora(lora_scale=0.8)
    fused = run("flux", p)
    p.unfuse_lora()
    residue = {}
    for k, v in p.transformer.state_dict().items():
        if "lora_" in k:
            continue
        name = k.replace(".base_layer", "")
        diff = float((v - original[name]).abs().max())
        if ".base_layer" in k and name.endswith(".weight"):
            residue[f"transformer.{name}"] = diff
        else:
            assert diff == 0.0, (name, diff)
    p.unload_lora_weights()
    unloaded = run("flux", p)
    c.add("flux_fused", "lora_fuse", {"pipeline": "flux", "folder": "pipelines/tiny_flux",
                                      "file": "lora/flux_peft.safetensors", "lora_scale": 0.8,
                                      "fused_components": ["transformer"],
                                      "unfuse_max_abs_residue": residue,
                                      "unloaded_max_abs_vs_base": float((unloaded - base["flux"]).abs().max()),
                                      **flux_args},
          {}, {"image": fused, "unloaded_image": unloaded})
    c.cases["flux_dora"] = {"kind": "lora_dora", "file": "lora/flux_dora.safetensors",
                            "dora_keys": [f"transformer.{d}.attn.to_k.dora_scale",
                                          f"transformer.{d}.attn.to_q.lora_magnitude_vector"],
                            "diffusers": "lora_state_dict drops every `dora_scale` key with a warning; a "
                                         "`lora_magnitude_vector` without use_dora in the metadata is reported "
                                         "as an unexpected key. Not loaded here; our loader refuses the file."}
    c.save(folder, "lora")
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 1_000_000, f"fixtures/lora is {size} bytes"
    print(f"lora: fixtures/lora is {size} bytes")


def stage_export_quantize(out: Path):
    """8-bit quantization of [0, 1] frames as diffusers' export functions see them: export_to_video's
    `(frame * 255).astype(np.uint8)` (truncation; the expression copied from utils/export_utils.py,
    which needs imageio/ffmpeg to run) and VaeImageProcessor.numpy_to_pil (the PIL frames
    export_to_gif takes: round half to even). Values: edges, k/255 and (k + 0.5)/255 with their f32
    neighbours, uniform draws."""
    from diffusers.image_processor import VaeImageProcessor

    rng = np.random.default_rng(0)
    k = np.arange(256, dtype=np.float64)
    exact = (k / 255).astype(np.float32)
    half = ((k[:-1] + 0.5) / 255).astype(np.float32)
    values = np.concatenate([
        np.array([0.0, 1.0, 0.5, 1e-8, 1 - 1e-7], dtype=np.float32),
        exact, np.nextafter(exact, np.float32(0)), np.nextafter(exact, np.float32(1)),
        half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1)),
        rng.random(1003, dtype=np.float32),
    ]).astype(np.float32)
    values = np.clip(values, 0, 1)
    values = values[: len(values) // 3 * 3]
    frame = values.reshape(1, 1, -1, 3)
    truncate = (frame[0] * 255).astype(np.uint8)
    rounded = np.array(VaeImageProcessor.numpy_to_pil(frame)[0])
    c = Cases()
    c.add("quantize", "export_quantize", {}, {"values": torch.from_numpy(values)},
          {"truncate": torch.from_numpy(truncate.reshape(-1).astype(np.float32)),
           "round": torch.from_numpy(rounded.reshape(-1).astype(np.float32))})
    c.save(out / "pipelines", "export_quantize")

GGUF_DEQUANT_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# Byte offsets of each K-quant block's f16 scales (d, and dmin where the type has one).
GGUF_K_SCALES = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def gguf_random_blocks(rng, qtype, rows, cols):
    """Random K-quant blocks (gguf-py has no quantizer for them): random bytes with the f16 scale
    fields set to finite values in [1e-3, 1e-1], so every dequantized value is finite."""
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
    for off in GGUF_K_SCALES[qtype.name]:
        scale = rng.uniform(1e-3, 1e-1, size=blocks.shape[0]).astype(np.float16)
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // block_size * type_size)


def gguf_quantized(rng, qtype, rows, cols):
    """A [rows, cols] tensor in `qtype`'s bytes: gguf.quants.quantize of normal draws where gguf-py
    has a quantizer, random blocks with sane scales for the K-quants."""
    import gguf

    if qtype.name in GGUF_K_SCALES:
        return gguf_random_blocks(rng, qtype, rows, cols)
    data = rng.standard_normal((rows, cols)).astype(np.float32)
    return np.ascontiguousarray(gguf.quants.quantize(data, qtype)).view(np.uint8)


def stage_gguf(out: Path):
    """GGML's block formats and the .gguf container through gguf-py (llama.cpp's Python package):
    for each type, a [2, 256] tensor's raw bytes (stored as f32 byte values) and
    gguf.quants.dequantize's float32 output; and tiny .gguf files written by GGUFWriter (metadata of
    several value types, F32/F16/Q8_0/Q4_K/Q4_0 tensors; one with general.alignment 64) read back by
    GGUFReader: shapes in torch order, types, dequantized values."""
    import gguf

    rng = np.random.default_rng(0)
    folder = out / "quantization"
    folder.mkdir(parents=True, exist_ok=True)
    c = Cases()
    rows, cols = 2, 256
    for name in GGUF_DEQUANT_TYPES:
        qtype = gguf.GGMLQuantizationType[name]
        raw = gguf_quantized(rng, qtype, rows, cols)
        deq = gguf.quants.dequantize(raw, qtype)
        assert deq.dtype == np.float32 and deq.shape == (rows, cols) and np.isfinite(deq).all(), name
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        c.add(name, "gguf_dequantize",
              {"type": name, "type_id": int(qtype), "shape": [rows, cols], "block_size": block_size,
               "type_size": type_size},
              {"bytes": torch.from_numpy(raw.astype(np.float32))},
              {"dequantized": torch.from_numpy(np.ascontiguousarray(deq))})

    def tiny(path: Path, alignment=None):
        w = gguf.GGUFWriter(path, arch="tiny")
        if alignment is not None:
            w.add_custom_alignment(alignment)
        w.add_string("general.name", "tiny test model")
        w.add_uint32("tiny.block_count", 3)
        w.add_int8("tiny.int8", -5)
        w.add_uint16("tiny.uint16", 65535)
        w.add_int16("tiny.int16", -300)
        w.add_int32("tiny.int32", -70000)
        w.add_int64("tiny.int64", -(2**40))
        w.add_uint64("tiny.uint64", 2**63 + 5)
        w.add_uint8("tiny.uint8", 200)
        w.add_float32("tiny.eps", 1e-6)
        w.add_float64("tiny.theta", 10000.5)
        w.add_bool("tiny.causal", True)
        w.add_array("tiny.dims", [3, 64, 256])
        w.add_array("tiny.labels", ["alpha", "béta", ""])
        w.add_array("tiny.scales", [0.5, -1.25])
        w.add_tensor("linear.weight", rng.standard_normal((4, 8)).astype(np.float32))
        w.add_tensor("norm.bias", rng.standard_normal(5).astype(np.float16))
        q8 = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor("blocks.0.q8.weight", gguf_quantized(rng, q8, 3, 64), raw_dtype=q8)
        q4k = gguf.GGMLQuantizationType.Q4_K
        w.add_tensor("blocks.0.q4k.weight", gguf_quantized(rng, q4k, 2, 256), raw_dtype=q4k)
        q40 = gguf.GGMLQuantizationType.Q4_0
        w.add_tensor("conv.weight", gguf_quantized(rng, q40, 2 * 3, 32).reshape(2, 3, 18), raw_dtype=q40)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    files = {}
    for stem, alignment in [("tiny", None), ("tiny_aligned", 64)]:
        path = folder / f"{stem}.gguf"
        tiny(path, alignment)
        reader = gguf.GGUFReader(path)
        metadata = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue  # the reader's own header pseudo-fields
            entry = {"type": field.types[0].name, "value": field.contents()}
            if field.types[0] == gguf.GGUFValueType.ARRAY:
                entry["sub_type"] = field.types[-1].name
            metadata[key] = entry
        tensors = {}
        for t in reader.tensors:
            deq = gguf.quants.dequantize(t.data, t.tensor_type)
            shape = [int(d) for d in reversed(t.shape.tolist())]
            tensors[t.name] = {"type": t.tensor_type.name, "shape": shape, "n_bytes": int(t.n_bytes),
                               "data_offset": int(t.data_offset)}
            c.tensors[f"{stem}.{t.name}"] = torch.from_numpy(np.ascontiguousarray(deq).astype(np.float32).reshape(shape))
        files[stem] = {"alignment": int(reader.alignment), "data_offset": int(reader.data_offset),
                       "version": int(reader.fields["GGUF.version"].contents()),
                       "metadata": metadata, "tensors": tensors,
                       "tensor_order": [t.name for t in reader.tensors]}
    c.cases["files"] = files
    c.save(folder, "gguf")

def flux_to_bfl(sd, dim):
    """The inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers: a
    FluxTransformer2DModel state dict in the BFL / ComfyUI layout (fused img_attn.qkv and
    single-block linear1, final_layer.adaLN_modulation.1 as [shift; scale])."""
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    out = {}
    for bfl, dif in [("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                     ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                     ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                     ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                     ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                     ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                     ("txt_in", "context_embedder"), ("img_in", "x_embedder"),
                     ("final_layer.linear", "proj_out")]:
        for p in ["weight", "bias"]:
            out[f"{bfl}.{p}"] = sd.pop(f"{dif}.{p}")
    for p in ["weight", "bias"]:
        w = sd.pop(f"norm_out.linear.{p}")
        scale, shift = w.chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale]).contiguous()
    i = 0
    while f"transformer_blocks.{i}.norm1.linear.weight" in sd:
        b, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for bfl, dif in [("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
                         ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                         ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
                         ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out")]:
            for p in ["weight", "bias"]:
                out[f"{d}{bfl}.{p}"] = sd.pop(f"{b}{dif}.{p}")
        for p in ["weight", "bias"]:
            out[f"{d}img_attn.qkv.{p}"] = torch.cat([sd.pop(f"{b}attn.to_{x}.{p}") for x in "qkv"]).contiguous()
            out[f"{d}txt_attn.qkv.{p}"] = torch.cat([sd.pop(f"{b}attn.add_{x}_proj.{p}") for x in "qkv"]).contiguous()
        for bfl, dif in [("img_attn.norm.query_norm", "norm_q"), ("img_attn.norm.key_norm", "norm_k"),
                         ("txt_attn.norm.query_norm", "norm_added_q"), ("txt_attn.norm.key_norm", "norm_added_k")]:
            out[f"{d}{bfl}.scale"] = sd.pop(f"{b}attn.{dif}.weight")
        i += 1
    i = 0
    while f"single_transformer_blocks.{i}.norm.linear.weight" in sd:
        b, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ["weight", "bias"]:
            out[f"{d}modulation.lin.{p}"] = sd.pop(f"{b}norm.linear.{p}")
            out[f"{d}linear2.{p}"] = sd.pop(f"{b}proj_out.{p}")
            out[f"{d}linear1.{p}"] = torch.cat([sd.pop(f"{b}attn.to_{x}.{p}") for x in "qkv"]
                                               + [sd.pop(f"{b}proj_mlp.{p}")]).contiguous()
        out[f"{d}norm.query_norm.scale"] = sd.pop(f"{b}attn.norm_q.weight")
        out[f"{d}norm.key_norm.scale"] = sd.pop(f"{b}attn.norm_k.weight")
        i += 1
    assert not sd, f"keys left unconverted: {sorted(sd)}"
    return out


def stage_gguf_flux(out: Path):
    """The tiny Flux pipeline's transformer (fixtures/pipelines/tiny_flux) written as a single-file
    GGUF in the BFL / ComfyUI layout (as city96's FLUX.1 GGUFs are: fused qkv and linear1, the final
    layer's [shift; scale], 2-D weights Q8_0 / Q4_0 / F16, the rest F32), loaded back by diffusers'
    FluxTransformer2DModel.from_single_file with GGUFQuantizationConfig (f32 compute) and run in the
    tiny pipeline with the prompt, latents and arguments of stage `quantization`.

    diffusers' convert_flux_transformer_checkpoint_to_diffusers hard-codes FLUX.1's inner_dim 3072
    (the single blocks' linear1 split); for the tiny model (inner dim 32) the function is recompiled
    from its own source with that one constant replaced, and put in place of the original while
    loading. Nothing else of the conversion changes."""
    import importlib.metadata
    import inspect

    import gguf
    from safetensors.torch import load_file
    from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.loaders import single_file_model, single_file_utils

    folder = out / "quantization"
    repo = out / "pipelines" / "tiny_flux"
    dense = FluxTransformer2DModel.from_pretrained(repo, subfolder="transformer", torch_dtype=torch.float32)
    dim = dense.config.num_attention_heads * dense.config.attention_head_dim
    bfl = flux_to_bfl(dense.state_dict(), dim)
    Q8, Q4, F16 = (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0,
                   gguf.GGMLQuantizationType.F16)
    # img_in, vector_in.in_layer (rows of 16 and 10, not whole Q8_0 blocks), the final
    # layer's linear and the image attention's output projection stay F32, txt_in is F16.
    types = {"time_in.in_layer.weight": Q4, "time_in.out_layer.weight": Q8, "guidance_in.in_layer.weight": Q8,
             "guidance_in.out_layer.weight": Q8, "vector_in.out_layer.weight": Q8,
             "double_blocks.0.img_attn.qkv.weight": Q8, "double_blocks.0.txt_attn.qkv.weight": Q8,
             "double_blocks.0.txt_attn.proj.weight": Q8, "double_blocks.0.img_mlp.0.weight": Q8,
             "double_blocks.0.img_mlp.2.weight": Q8, "double_blocks.0.txt_mlp.0.weight": Q8,
             "double_blocks.0.txt_mlp.2.weight": Q4, "double_blocks.0.img_mod.lin.weight": Q8,
             "double_blocks.0.txt_mod.lin.weight": Q8, "final_layer.adaLN_modulation.1.weight": Q8,
             "single_blocks.0.linear1.weight": Q4, "single_blocks.0.linear2.weight": Q4,
             "single_blocks.0.modulation.lin.weight": Q4, "txt_in.weight": F16}
    path = folder / "tiny_flux_transformer.gguf"
    w = gguf.GGUFWriter(path, arch="flux")
    for name, t in bfl.items():
        a = t.numpy().astype(np.float32)
        ty = types.get(name)
        if ty == F16:
            w.add_tensor(name, a.astype(np.float16))
        elif ty is not None:
            assert a.ndim == 2 and a.shape[1] % 32 == 0, name
            w.add_tensor(name, gguf.quants.quantize(a, ty), raw_dtype=ty)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    original = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers
    src = inspect.getsource(original).replace("inner_dim = 3072", f"inner_dim = {dim}")
    assert f"inner_dim = {dim}" in src
    scope = dict(vars(single_file_utils))
    exec(compile(src, single_file_utils.__file__, "exec"), scope)
    entry = single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    entry["checkpoint_mapping_fn"] = scope["convert_flux_transformer_checkpoint_to_diffusers"]
    try:
        t = FluxTransformer2DModel.from_single_file(
            str(path), config=str(repo), subfolder="transformer",
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), torch_dtype=torch.float32)
    finally:
        entry["checkpoint_mapping_fn"] = original
    packed = sorted(n for n, m in t.named_modules() if type(m).__name__ == "GGUFLinear")
    pipe = FluxPipeline.from_pretrained(repo, transformer=t)
    latents = load_file(str(folder / "flux_pipeline.safetensors"))["latents"]
    args = dict(prompt="a photo of the cat", height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                max_sequence_length=8)
    image = torch.from_numpy(pipe(**args, latents=latents.clone(), output_type="np").images).contiguous()
    reader = gguf.GGUFReader(path)
    save_file({"gguf.images": image}, str(folder / "gguf_flux.safetensors"))
    write_json(folder / "gguf_flux.json", {
        "cases": {"gguf": {**args, "file": path.name, "compute_dtype": "float32", "packed_modules": packed,
                           "tensor_types": {tt.name: tt.tensor_type.name for tt in reader.tensors}}},
        "versions": {**versions(), "gguf": importlib.metadata.version("gguf")}})
    size = sum(p.stat().st_size for p in [path, folder / "gguf_flux.safetensors", folder / "gguf_flux.json"])
    assert size < 100_000, f"gguf_flux fixtures are {size} bytes"


STAGES = {"nn": stage_nn, "loading": stage_loading, "random": stage_random, "schedulers": stage_schedulers, "discrete": stage_discrete_schedulers,
          "text_encoders": stage_text_encoders, "umt5": stage_umt5, "vae": stage_vae,
          "llama": stage_llama,
          "wan_vae": stage_wan_vae,
          "hunyuan_video_vae": stage_hunyuan_video_vae,
          "hunyuan_video_vae_tiling": stage_hunyuan_video_vae_tiling,
          "lora_quantized": stage_lora_quantized,
          "lora_video": stage_lora_video,
          "cache": stage_cache, "cache_hv_pab": stage_cache_hv_pab,
          "vae_tiling": stage_vae_tiling,
          "wan_vae_tiling": stage_wan_vae_tiling,
          "transformers": stage_transformers, "wan_transformer": stage_wan_transformer,
          "wan_pipeline": stage_wan_pipeline,
          "hunyuan_video_pipeline": stage_hunyuan_video_pipeline,
          "real_configs": stage_real_configs,
          "hunyuan_video_transformer": stage_hunyuan_video_transformer,
          "pipelines": stage_pipelines,
          "flux_bf16_stages": stage_flux_bf16_stages,
          "gguf": stage_gguf,
          "gguf_flux": stage_gguf_flux,
          "tokenizers": stage_tokenizers,
          "t5_tokenizer": stage_t5_tokenizer,
          "unets": stage_unets,
          "sd_pipelines": stage_sd_pipelines,
          "lora": stage_lora,
          "quantization": stage_quantization,
          "export_quantize": stage_export_quantize}


def main():
    out = Path(sys.argv[1])
    stages = sys.argv[2:] or list(STAGES)
    for s in stages:
        STAGES[s](out)
        print(f"oracle: wrote stage {s}")


if __name__ == "__main__":
    main()
