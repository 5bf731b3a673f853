"""The reference side of the background-removal benchmark (benches/birefnet.rs writes the data
first, in the same call): the BiRefNet reference code (github ZhengPeng7/BiRefNet at the commit
tools/golden/requirements-github.txt pins, the model the Hub's remote code defines) on the same
weights and the same photo, fp32 on CUDA as ReconViaGen runs it, and the comparison.

    python3 benches/birefnet_reference.py --code DIR --data DIR [--json FILE]

--code: a folder with the pinned files (config.py, models/...; tools/birefnet-bench-bundle.sh
copies them from tools/golden/.cache). --data: what the Rust bench wrote (model.safetensors,
photo.png, recon_logits.safetensors, recon_alpha.png, recon_timings.json).

Timing as the Rust side: 3 warm-up calls, 7 runs of one call between synchronisations, the
median. `forward`: the network on an input already on the GPU. `view`: one view end to end as
ReconViaGen's `_get_birefnet_mask` + `preprocess_image` do it (transforms Resize((1024, 1024)) +
ToTensor + Normalize, upload, network, `[-1].sigmoid().cpu()`, ToPILImage, resize to the photo's
size, `> 128`, alpha = mask * 255). Peak memory: torch.cuda.max_memory_allocated over one view
with the model resident.

Imports the reference needs only for training or initialisation are stood in for when missing
(they do not take part in an eval forward): `dataset` (training data, cv2), `kornia` (its
laplacian feeds the training-only gradient supervision), `huggingface_hub.PyTorchModelHubMixin`
(Hub upload helpers) and `timm.layers` (DropPath, the identity in eval; to_2tuple;
trunc_normal_, an initialiser whose values the loaded weights replace). torchvision
(deform_conv2d, transforms) and einops (the decoder's image patches) must be the real ones.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import types

# REF_SITE (einops and what else the reference needs, unpacked) goes first on the path;
# REF_FALLBACK_SITE (Pillow, safetensors, torchvision) last, used only where the image lacks them.
for var, at_front in (("REF_SITE", True), ("REF_FALLBACK_SITE", False)):
    if os.environ.get(var):
        if at_front:
            sys.path.insert(0, os.environ[var])
        else:
            sys.path.append(os.environ[var])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from PIL import Image  # noqa: E402

RUNS, WARMUP = 7, 3


def stand_ins() -> list:
    """Registers stand-ins for the training/initialisation-only imports that are missing."""
    made = []
    sys.modules["dataset"] = types.SimpleNamespace(class_labels_TR_sorted=[])
    made.append("dataset")
    try:
        import kornia.filters  # noqa: F401
    except ImportError:
        kornia = types.ModuleType("kornia")
        kornia.filters = types.ModuleType("kornia.filters")
        kornia.filters.laplacian = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("training only"))
        sys.modules["kornia"], sys.modules["kornia.filters"] = kornia, kornia.filters
        made.append("kornia")
    try:
        from huggingface_hub import PyTorchModelHubMixin  # noqa: F401
    except ImportError:
        hub = types.ModuleType("huggingface_hub")

        class PyTorchModelHubMixin:
            def __init_subclass__(cls, **kwargs):
                super().__init_subclass__()

        hub.PyTorchModelHubMixin = PyTorchModelHubMixin
        sys.modules["huggingface_hub"] = hub
        made.append("huggingface_hub")
    try:
        from timm.layers import DropPath, to_2tuple, trunc_normal_  # noqa: F401
    except ImportError:
        timm = types.ModuleType("timm")
        layers = types.ModuleType("timm.layers")

        class DropPath(nn.Identity):
            def __init__(self, drop_prob=0.0):
                super().__init__()

        layers.DropPath = DropPath
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
        layers.trunc_normal_ = lambda t, std=1.0, **k: nn.init.trunc_normal_(t, std=std)
        timm.layers = layers
        sys.modules["timm"], sys.modules["timm.layers"] = timm, layers
        made.append("timm")
    return made


def median_ms(call) -> float:
    for _ in range(WARMUP):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[RUNS // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--json")
    a = ap.parse_args()
    made = stand_ins()
    from safetensors.torch import load_file
    from torchvision import transforms

    sys.path.insert(0, os.path.abspath(a.code))
    cwd = os.getcwd()
    os.chdir(tempfile.mkdtemp())  # Config() looks for a train.sh around the current folder
    try:
        from models.birefnet import BiRefNet
        model = BiRefNet(bb_pretrained=False)
    finally:
        os.chdir(cwd)
    state = load_file(os.path.join(a.data, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(("relative_position_index", "num_batches_tracked")) for k in missing), missing
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    t = time.perf_counter()
    model = model.to(device).eval()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    weights_bytes = torch.cuda.memory_allocated() - before

    photo = Image.open(os.path.join(a.data, "photo.png")).convert("RGB")
    transform = transforms.Compose([transforms.Resize((1024, 1024)), transforms.ToTensor(),
                                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x = transform(photo).unsqueeze(0).to(device)

    @torch.no_grad()
    def forward():
        return model(x)[-1]

    @torch.no_grad()
    def view():
        inputs = transform(photo).unsqueeze(0).to(device)
        preds = model(inputs)[-1].sigmoid().cpu()
        mask = np.array(transforms.ToPILImage()(preds[0].squeeze()).resize(photo.size))
        rgba = np.array(photo.convert("RGBA"))
        rgba[:, :, 3] = (mask > 128).astype(np.uint8) * 255
        return rgba

    forward_ms = median_ms(forward)
    view_ms = median_ms(view)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rgba = view()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()

    ref_logits = forward().float().cpu()
    ours = load_file(os.path.join(a.data, "recon_logits.safetensors"))["logits"].float()
    rel = float((ours - ref_logits).norm() / ref_logits.norm().clamp_min(1e-30))
    ours_alpha = np.array(Image.open(os.path.join(a.data, "recon_alpha.png")))
    agree = float((ours_alpha == rgba[:, :, 3]).mean())
    with open(os.path.join(a.data, "recon_timings.json")) as f:
        recon = json.load(f)

    mib = lambda b: b / (1 << 20)  # noqa: E731
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; stand-ins: {made or 'none'}")
    print(f"reference load {load_s:.2f} s, weights on device {mib(weights_bytes):.0f} MiB")
    print(f"{'':28s} {'reference':>12s} {'recon':>12s} {'recon/ref':>10s}")
    rows = [("forward 1024x1024 (ms)", forward_ms, recon["forward_ms"]),
            ("one view end to end (ms)", view_ms, recon["view_ms"]),
            ("peak allocated (MiB)", mib(peak), mib(recon["peak_allocated_bytes"])),
            ("weights on device (MiB)", mib(weights_bytes), mib(recon["weights_bytes"]))]
    for name, ref, ours_v in rows:
        print(f"{name:28s} {ref:12.2f} {ours_v:12.2f} {ours_v / ref:10.3f}")
    print(f"logits rel L2 recon vs reference: {rel:.3e}; alpha pixels equal: {100 * agree:.3f} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "stand_ins": made,
                       "reference": {"forward_ms": forward_ms, "view_ms": view_ms, "peak_allocated_bytes": peak,
                                     "weights_bytes": weights_bytes, "load_s": load_s},
                       "recon": recon, "logits_rel_l2": rel, "alpha_equal_fraction": agree}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
