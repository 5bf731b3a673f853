"""Golden case for BiRefNet, the background-removal network ReconViaGen runs on inputs without a
useful alpha channel (`AutoModelForImageSegmentation.from_pretrained('ZhengPeng7/BiRefNet',
trust_remote_code=True)`), and for the pixel steps around it.

The reference is the BiRefNet code itself (github ZhengPeng7/BiRefNet at the commit pinned in
requirements-github.txt; the Hub's remote code `birefnet.py` is the same model in one file):
`birefnet_dir()` fetches the pinned files into tools/golden/.cache/ (git-ignored) and checks each
sha256; offline, BIREFNET_TARBALL (the commit's GitHub tarball) or BIREFNET_GIT_DIR (a git
directory holding the commit, read with `git archive`) is the source. Nothing of it is committed.

The network is the published architecture (Swin backbone run on the image and on its half-size
copy, features concatenated, the three context features, one squeeze BasicDecBlk, the decoder
with its image-patch inputs, gradient-attention gates, BatchNorm everywhere, deformable ASPP)
at a small configuration: the backbone is a SwinTransformer of the reference's own class, 8 wide,
depths [2, 1, 3, 2], heads [1, 2, 2, 4], window 3 (padding and shifted windows at every stage),
injected as the config's `bb`; `lateral_channels_in_collection` and `cxt` follow from its widths
exactly as Config derives them for the published backbones. The decoder's widths (64 inside each
block, 256 in the ASPP branches, 16 in the gradient gates) are fixed in the reference code and
stay as published. The input is a batch of 2 images of 128x96 (not square; sizes must be
multiples of 32 for the reference's image patches).

Weights: the ASPP branches alone hold ~8M parameters (32 MB), far over a fixture's size, so the
checkpoint is not stored. Every float tensor is drawn from recon's own seeded generator
(`recon::nn::layout::write_random_checkpoint` / `seeded_normal`: SplitMix64 + Box-Muller in
float32, per-tensor stream from the tensor name; `splitmix_normal` below is its port), with the
mean and std recorded per tensor in the manifest (`weights.init`); the Rust test writes the same
checkpoint from our layout and loads it through the real loader. Rule: conv/linear weights
N(0, 1/fan_in) (offset convs 2/sqrt(fan_in), so samples land between pixels and outside the
map), biases N(0, 0.1^2) (offset and modulator biases 0.5), norm weights 1 + N(0, 0.1^2), norm
biases and BN running means N(0, 0.1^2), BN running variances 1 + N(0, 0.1^2), relative position
bias tables N(0, 0.5^2). int64 buffers (relative_position_index, num_batches_tracked) keep the
values the reference computes.

Outputs (outputs.safetensors): `logits` (the last prediction, before the sigmoid) and
intermediates: `bb.full.x{1..4}` / `bb.half.x{1..4}` (backbone outputs on the image and on the
half-size image), `enc.x{1..4}` (forward_enc's features: concatenated, x4 with the context),
`squeeze` (squeeze_module), `dec.block{4..1}` (decoder_block outputs), `dec.gdt_attn{4..2}`
(the sigmoid gates). Also:
  * `deform.*`: torchvision.ops.deform_conv2d on its own (stride 2, padding (2, 1), dilation
    (2, 1), 2 offset groups, mask), inputs and output;
  * `pre.*`: the reference's input transform, transforms.Compose([Resize((S, S)), ToTensor(),
    Normalize(ImageNet)]) on RGB images (down and up), at S = 40 (the pipeline uses 1024);
  * `mask.*`: its output side: sigmoid, ToPILImage(), PIL resize to the image size (BICUBIC,
    Pillow's default), then ReconViaGen's `(mask > 128)` and TRELLIS.2's plain mask;
  * `downscale`: the pipelines' pre-removal size rule `int(w * min(1, 1024 / max(w, h)))`.

Layout (harness "birefnet": tests/birefnet.rs reads it, golden_modules.rs skips it):
    manifest.json          config (recon's BiRefNetConfig JSON), weights (seed, init), versions
    inputs.safetensors     image [2, 3, 128, 96] (ImageNet-normalised), deform/pre/mask inputs
    outputs.safetensors    logits and intermediates as above
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile
import types
from typing import Dict

import numpy as np
import torch
from PIL import Image

from generate import HERE, REL_L2_TOL, FixtureWriter, case
from stage2 import github_pins, pinned_github_dir

BIREFNET_REPO = "ZhengPeng7/BiRefNet"
SEED = 1010
BATCH, HEIGHT, WIDTH = 2, 128, 96
SWIN = {"embed_dim": 8, "depths": [2, 1, 3, 2], "num_heads": [1, 2, 2, 4], "window_size": 3}
# The reference config's name for our small backbone (injected into build_backbone's namespace).
BB_NAME = "swin_v1_golden"
PRE_SIZE = 40

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# --------------------------------------------------------------------------
# The pinned reference code
# --------------------------------------------------------------------------

def birefnet_dir() -> str:
    """tools/golden/.cache/BiRefNet-<commit>/ holding the pinned files, fetched once (sources as
    for FlexiCubes in cases/stage2.py: BIREFNET_TARBALL, BIREFNET_GIT_DIR, else codeload)."""
    return pinned_github_dir(BIREFNET_REPO, "BIREFNET")


def swin_channels(embed_dim: int, stages: int) -> list:
    """Config.lateral_channels_in_collection for a Swin of this width: the stage widths from the
    deepest, doubled by mul_scl_ipt == 'cat' (as Config computes them for swin_v1_*)."""
    return [embed_dim * 2 ** i * 2 for i in reversed(range(stages))]


@contextlib.contextmanager
def reference_modules():
    """Imports the pinned BiRefNet code with the small backbone as its config's `bb`.

    The code imports top-level `config`, `models.*` and `dataset`; its folder goes first on
    sys.path while the case runs and the modules are dropped afterwards. `dataset` (cv2, the
    training data) is only read for `class_labels_TR_sorted`, used by the auxiliary classifier,
    which the config turns off: a stand-in with an empty list replaces it. Config() lists the
    current and parent folders for a train.sh; it is built in an empty temporary folder.
    Config.__init__ is wrapped to set bb = BB_NAME and derive lateral_channels_in_collection
    and cxt from the small Swin as its own code does for the published ones; every other
    setting is the pinned config's (batch_size 8 > 1: BatchNorm; ms_supervision and out_ref on;
    mul_scl_ipt 'cat'; cxt_num 3; dec_att ASPPDeformable; squeeze BasicDecBlk_x1; dec_ipt and
    dec_ipt_split on; SDPA on)."""
    root = birefnet_dir()
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    names = ("config", "dataset", "models")
    shadowed = {n: m for n, m in sys.modules.items() if n in names or n.startswith("models.")}
    for n in shadowed:
        del sys.modules[n]
    workdir = tempfile.mkdtemp()
    try:
        os.chdir(os.path.join(workdir))
        sys.path.insert(0, root)
        dataset = types.ModuleType("dataset")
        dataset.class_labels_TR_sorted = []
        sys.modules["dataset"] = dataset
        import config as config_module
        original_init = config_module.Config.__init__

        def init(self):
            original_init(self)
            self.bb = BB_NAME
            self.freeze_bb = False
            self.lateral_channels_in_collection = swin_channels(SWIN["embed_dim"], len(SWIN["depths"]))
            self.cxt = self.lateral_channels_in_collection[1:][::-1][-self.cxt_num:] if self.cxt_num else []

        config_module.Config.__init__ = init
        import models.backbones.build_backbone as build_backbone
        from models.backbones.swin_v1 import SwinTransformer
        setattr(build_backbone, BB_NAME, lambda: SwinTransformer(**SWIN))
        import models.birefnet as birefnet
        import models.modules.deform_conv as deform_conv
        yield types.SimpleNamespace(BiRefNet=birefnet.BiRefNet, Config=config_module.Config,
                                    deform_conv2d=deform_conv.deform_conv2d)
    finally:
        os.chdir(saved_cwd)
        shutil.rmtree(workdir, ignore_errors=True)
        sys.path[:] = saved_path
        for n in [n for n in sys.modules if n in names or n.startswith("models.")]:
            del sys.modules[n]
        sys.modules.update(shadowed)


def recon_config(cfg) -> dict:
    """recon's BiRefNetConfig (src/models/birefnet/birefnet.rs) for the reference Config."""
    return {
        "bb": dict(SWIN, patch_size=4, mlp_ratio=4.0),
        "mul_scl_ipt": cfg.mul_scl_ipt,
        "cxt_num": cfg.cxt_num,
        "squeeze_block": cfg.squeeze_block,
        "dec_blk": cfg.dec_blk,
        "dec_att": cfg.dec_att,
        "dec_ipt": cfg.dec_ipt,
        "dec_ipt_split": cfg.dec_ipt_split,
        "dec_channels_inter": cfg.dec_channels_inter,
        "batch_norm": cfg.batch_size > 1,
        "ms_supervision": cfg.ms_supervision,
        "out_ref": cfg.out_ref,
    }


# --------------------------------------------------------------------------
# recon's seeded generator (src/nn/layout.rs), ported
# --------------------------------------------------------------------------

MASK64 = (1 << 64) - 1
CHUNK = 1 << 20


def _mix_int(a: int, b: int) -> int:
    """SplitMix64's finaliser of a ^ rotl(b * golden, 31) (layout.rs `mix`)."""
    r = (b * 0x9E3779B97F4A7C15) & MASK64
    r = ((r << 31) | (r >> 33)) & MASK64
    z = a ^ r
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    """`mix(z, 0)` elementwise on uint64 (wrapping products, as Rust's wrapping_mul)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def splitmix_normal(seed: int, n: int, mean: float, std: float) -> np.ndarray:
    """layout.rs `seeded_normal`: n draws of N(mean, std^2) in float32 (cos then sin of each
    Box-Muller pair). Float32 maths as in Rust; libm and numpy may differ by an ulp."""
    pairs = (n + 1) // 2
    with np.errstate(over="ignore"):
        states = np.uint64(seed) + np.arange(1, pairs + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    bits = _mix_array(states)
    u1 = ((bits >> np.uint64(40)).astype(np.float32) + np.float32(1.0)) * np.float32(1.0 / (1 << 24))
    u2 = ((bits >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(1.0 / (1 << 24))
    radius = np.sqrt(np.float32(-2.0) * np.log(u1))
    angle = np.float32(2 * np.pi) * u2
    mean32, std32 = np.float32(mean), np.float32(std)
    scaled = std32 * radius
    out = np.empty(2 * pairs, dtype=np.float32)
    out[0::2] = mean32 + scaled * np.cos(angle)
    out[1::2] = mean32 + scaled * np.sin(angle)
    return out[:n]


def seeded_tensor(seed: int, name: str, shape, mean: float, std: float) -> torch.Tensor:
    """The values `write_random_checkpoint` writes for tensor `name` (Fill::Normal)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    stream = _mix_int(seed, h)
    numel = int(np.prod(shape)) if len(shape) else 1
    chunks = [splitmix_normal(_mix_int(stream, c), min(CHUNK, numel - c * CHUNK), mean, std)
              for c in range((numel + CHUNK - 1) // CHUNK)]
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return torch.from_numpy(values.copy()).reshape(shape)


def init_rule(name: str, shape) -> tuple:
    """(mean, std) of one float tensor of the state dict (see the module docs)."""
    leaf = name.rsplit(".", 1)[-1]
    is_norm = ".norm" in name or ".bn" in name or name.startswith("bb.norm") \
        or ".global_avg_pool.2." in name or ".gdt_convs_" in name and name.split(".")[-2] == "1"
    if leaf == "relative_position_bias_table":
        return 0.0, 0.5
    if leaf == "running_mean":
        return 0.0, 0.1
    if leaf == "running_var":
        return 1.0, 0.1
    if is_norm and leaf == "weight":
        return 1.0, 0.1
    if is_norm and leaf == "bias":
        return 0.0, 0.1
    deform_head = ".offset_conv." in name or ".modulator_conv." in name
    if leaf == "weight":
        fan_in = int(np.prod(shape[1:]))
        return 0.0, (2.0 if ".offset_conv." in name else 1.0) / fan_in ** 0.5
    if leaf == "bias":
        return 0.0, 0.5 if deform_head else 0.1
    raise NotImplementedError(f"no init rule for {name}")


# --------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------

FIXTURE_README = """# birefnet: golden data for BiRefNet (background removal)

Written by `tools/golden/cases/birefnet.py` (`tools/golden/generate.py --only birefnet`; its
docstring has the details); read by `tests/birefnet.rs`. Do not edit by hand.

- Reference: the BiRefNet code of github `ZhengPeng7/BiRefNet` at commit {commit} (the model the
  Hub's `ZhengPeng7/BiRefNet` remote code defines), fetched at generation time and checked
  against the sha256 pins in `tools/golden/requirements-github.txt`; not committed. torch 2.11.0
  on CPU, one thread, torchvision 0.26.0 (deform_conv2d, transforms), Pillow 13.0.0.
- Network: the published architecture with a small Swin backbone (8 wide, depths [2, 1, 3, 2],
  heads [1, 2, 2, 4], window 3) and the published decoder widths; batch of 2 at 128x96.
- Weights: not stored (the decoder alone is ~8M parameters). Every float tensor is drawn from
  recon's seeded generator (`recon::nn::layout::write_random_checkpoint`, seed and per-tensor
  mean/std in `manifest.json` under `weights`); the test writes the same checkpoint and loads it
  through the real loader.
- `outputs.safetensors`: `logits` (mask logits before the sigmoid) and the intermediates the test
  compares at relative L2 <= 1e-4; `deform.output` (torchvision.ops.deform_conv2d); `pre.*`
  (torchvision's Resize + ToTensor + Normalize at 40x40); `mask.*` (sigmoid -> ToPILImage ->
  PIL BICUBIC resize, and ReconViaGen's `> 128` threshold), compared exactly.
"""

def pil_rgb(width: int, height: int, rng) -> Image.Image:
    """A smooth colour pattern with seeded noise (so every resampling tap matters)."""
    x, y = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rgb = np.stack([128 + 100 * np.sin(x * 0.31 + y * 0.07), 128 + 90 * np.cos(x * 0.05 - y * 0.23),
                    60 + 150 * (((x // 3) + (y // 2)) % 2)], -1)
    rgb = rgb + rng.integers(-20, 21, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@case("birefnet", "BiRefNet (ZhengPeng7/BiRefNet code): small Swin, published decoder, B=2 at 128x96; "
      "deform_conv2d; the mask pipeline's resizes and thresholds")
def case_birefnet(w: FixtureWriter):
    import torchvision
    from torchvision import transforms
    from torchvision.ops import deform_conv2d

    commit, files = github_pins(BIREFNET_REPO)
    with reference_modules() as ref:
        cfg = ref.Config()
        model = ref.BiRefNet(bb_pretrained=False)
    model.eval()
    state = model.state_dict()
    init = {}
    values = {}
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        mean, std = init_rule(name, list(t.shape))
        init[name] = [mean, std]
        values[name] = seeded_tensor(SEED, name, list(t.shape), mean, std)
    state.update(values)
    model.load_state_dict(state, strict=True)
    buffers = sorted(n for n, t in state.items() if not t.is_floating_point())

    gen = torch.Generator().manual_seed(SEED)
    image01 = torch.rand(BATCH, 3, HEIGHT, WIDTH, generator=gen)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    image = (image01 - mean) / std

    taps = {"squeeze": model.squeeze_module}
    for k in (4, 3, 2, 1):
        taps[f"dec.block{k}"] = getattr(model.decoder, f"decoder_block{k}")
    for k in (4, 3, 2):
        taps[f"dec.gdt_attn{k}"] = getattr(model.decoder, f"gdt_convs_attn_{k}")
    seen: Dict[str, torch.Tensor] = {}
    bb_calls = []
    enc_out = []
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach().clone()))
               for n, m in taps.items()]
    handles.append(model.bb.register_forward_hook(lambda _m, _i, out: bb_calls.append([o.clone() for o in out])))
    original_enc = model.forward_enc

    def forward_enc(x):
        out = original_enc(x)
        enc_out.append([o.clone() for o in out[0]])
        return out

    model.forward_enc = forward_enc
    try:
        with torch.no_grad():
            logits = model(image)[-1]
    finally:
        for h in handles:
            h.remove()
        del model.forward_enc
    assert len(bb_calls) == 2 and len(enc_out) == 1, (len(bb_calls), len(enc_out))
    for k in (4, 3, 2):  # the gates enter the decoder through a sigmoid
        seen[f"dec.gdt_attn{k}"] = seen[f"dec.gdt_attn{k}"].sigmoid()

    outputs = {"logits": {"tensor": logits, "description": "model(image)[-1]: the mask logits [B, 1, H, W]",
                          "produced_by": "BiRefNet.forward (eval)"}}
    for which, call in (("full", bb_calls[0]), ("half", bb_calls[1])):
        for i, t in enumerate(call):
            outputs[f"bb.{which}.x{i + 1}"] = {"tensor": t, "description": f"backbone output {i + 1} on the "
                                               f"{'image' if which == 'full' else 'half-size image'}",
                                               "produced_by": "model.bb forward hook"}
    for i, t in enumerate(enc_out[0]):
        outputs[f"enc.x{i + 1}"] = {"tensor": t, "description": f"forward_enc feature x{i + 1}",
                                    "produced_by": "BiRefNet.forward_enc"}
    for n, t in seen.items():
        outputs[n] = {"tensor": t, "description": f"output of {taps[n].__class__.__name__} ({n})",
                      "produced_by": "forward hook"}

    # deform_conv2d alone: every option the op has except weight groups.
    dgen = torch.Generator().manual_seed(SEED + 1)
    d_in = torch.randn(2, 6, 9, 7, generator=dgen)
    d_weight = torch.randn(5, 6, 3, 2, generator=dgen) / 6
    d_bias = torch.randn(5, generator=dgen)
    stride, padding, dilation, groups = (2, 1), (2, 1), (2, 1), 2
    ho = (9 + 2 * padding[0] - dilation[0] * 2 - 1) // stride[0] + 1
    wo = (7 + 2 * padding[1] - dilation[1] * 1 - 1) // stride[1] + 1
    d_offset = torch.randn(2, 2 * groups * 6, ho, wo, generator=dgen) * 2.0
    d_mask = torch.rand(2, groups * 6, ho, wo, generator=dgen) * 2.0
    d_out = deform_conv2d(d_in, d_offset, d_weight, d_bias, stride=stride, padding=padding,
                          dilation=dilation, mask=d_mask)

    # The pipeline's pixel steps.
    rng = np.random.default_rng(SEED)
    pre_images = {"down": pil_rgb(70, 50, rng), "up": pil_rgb(23, 31, rng)}
    pre = transforms.Compose([transforms.Resize((PRE_SIZE, PRE_SIZE)), transforms.ToTensor(),
                              transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    mask_logits = torch.randn(1, 1, PRE_SIZE, PRE_SIZE, generator=dgen) * 3.0
    pred = mask_logits.sigmoid()[0].squeeze()
    mask_inputs, mask_outputs = {}, {}
    for n, (mw, mh) in {"down": (70, 50), "up": (23, 31), "mixed": (57, 13)}.items():
        mask = np.array(transforms.ToPILImage()(pred).resize((mw, mh)))
        mask_outputs[f"mask.{n}.l8"] = {"tensor": torch.from_numpy(mask),
                                        "description": f"ToPILImage()(sigmoid(logits)).resize(({mw}, {mh})): "
                                                       "TRELLIS.2's alpha (uint8 [H, W])",
                                        "produced_by": "torchvision ToPILImage + PIL Image.resize (BICUBIC)"}
        mask_outputs[f"mask.{n}.binary"] = {"tensor": torch.from_numpy((mask > 128).astype(np.uint8) * 255),
                                            "description": "ReconViaGen's alpha: (mask > 128) * 255",
                                            "produced_by": "_get_birefnet_mask + preprocess_image"}
    downscale = []
    for (dw, dh) in [(3000, 2000), (1025, 1024), (1024, 1024), (4000, 3000), (777, 2049), (1023, 5),
                     (4032, 3024), (3024, 4032), (1920, 1080), (2048, 1365), (99, 100)]:
        scale = min(1, 1024 / max(dw, dh))
        downscale.append([dw, dh, int(dw * scale), int(dh * scale)] if scale < 1 else [dw, dh, dw, dh])

    inputs = {
        "image": {"tensor": image, "description": "ImageNet-normalised input [2, 3, 128, 96]"},
        "deform.input": {"tensor": d_in, "description": "deform_conv2d input [2, 6, 9, 7]"},
        "deform.offset": {"tensor": d_offset, "description": "offsets [2, 2*2*6, Ho, Wo] (2 offset groups)"},
        "deform.mask": {"tensor": d_mask, "description": "modulation [2, 2*6, Ho, Wo]"},
        "deform.weight": {"tensor": d_weight, "description": "weight [5, 6, 3, 2]"},
        "deform.bias": {"tensor": d_bias, "description": "bias [5]"},
        "mask.logits": {"tensor": mask_logits, "description": f"mask logits [1, 1, {PRE_SIZE}, {PRE_SIZE}]"},
        "downscale": {"tensor": torch.tensor(downscale, dtype=torch.int64),
                      "description": "rows (w, h, w', h'): the pre-removal LANCZOS target size"},
    }
    for n, img in pre_images.items():
        inputs[f"pre.{n}.rgb"] = {"tensor": torch.from_numpy(np.array(img)), "description": f"RGB uint8 {img.size}"}
        outputs[f"pre.{n}"] = {"tensor": pre(img), "description": f"Resize(({PRE_SIZE}, {PRE_SIZE})) + ToTensor + "
                                                                  "Normalize(ImageNet) of pre.{n}.rgb",
                               "produced_by": "torchvision.transforms (PIL BILINEAR resize)"}
    outputs["deform.output"] = {"tensor": d_out, "produced_by": "torchvision.ops.deform_conv2d",
                                "description": f"stride {stride}, padding {padding}, dilation {dilation}"}
    outputs.update(mask_outputs)
    with open(w.path("README.md"), "w") as f:
        f.write(FIXTURE_README.format(commit=commit))
    w.save_tensors("inputs.safetensors", "inputs", inputs)
    w.save_tensors("outputs.safetensors", "outputs", outputs)
    w.finish(
        harness="birefnet",
        module={"class": "models.birefnet.BiRefNet", "reference": {"repo": BIREFNET_REPO, "commit": commit,
                                                                  "files_sha256": files},
                "config": recon_config(cfg), "reference_config_bb": {"name": BB_NAME, "SwinTransformer": SWIN}},
        weights={"generator": "recon::nn::layout::write_random_checkpoint (Fill::Normal per tensor)",
                 "seed": SEED, "stored": "F32", "init": init, "int64_buffers_as_built": buffers},
        deform={"stride": list(stride), "padding": list(padding), "dilation": list(dilation),
                "offset_groups": groups},
        pre_size=PRE_SIZE,
        precision="float32 on CPU, single thread",
        reference_call="BiRefNet(bb_pretrained=False).eval()(image)[-1]",
        extra_versions={"torchvision": torchvision.__version__, "pillow": Image.__version__},
        tolerance={"rel_l2": REL_L2_TOL, "integers": "exact"},
    )
