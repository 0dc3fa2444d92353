import json, struct, sys
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); base = 8 + n; out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; assert v["dtype"] == "F32", v
        out[k] = struct.unpack("<%df" % ((e - s) // 4), b[base + s:base + e])
    return out
got = load(sys.argv[1])["images"]; fx = load("fixtures/pipelines/flux.safetensors")
for key in ["flux_prompt.images", "flux_prompt_bf16.images"]:
    want = fx[key]; assert len(want) == len(got)
    print(f"CLI {sys.argv[2]} vs diffusers {key}: max abs {max(abs(a - b) for a, b in zip(got, want)):.3e}")
