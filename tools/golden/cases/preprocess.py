"""Golden case for TRELLIS's input preprocessing (`TrellisImageTo3DPipeline.preprocess_image`,
the alpha path: an RGBA input whose alpha is not 255 everywhere), run by the reference code itself
on synthetic RGBA cut-outs drawn deterministically here.

What the reference does (trellis/pipelines/trellis_image_to_3d.py):
    bbox of alpha > 0.8*255, square crop of int(1.2 * longer side) around its centre (PIL crop,
    transparent black outside the image), resize((518, 518), LANCZOS) (Pillow resamples RGBA in
    premultiplied RGBa), then RGB * alpha in float32, truncated to uint8 -> an RGB image.
    encode_image then feeds DINOv2 np.array(img.convert('RGB')) / 255 as [3, 518, 518] float32
    (its resize to 518 is a copy at that size), before the ImageNet normalisation.
And when run(..., preprocess_image=False), encode_image resizes the raw input itself:
    img.resize((518, 518), LANCZOS).convert('RGB') / 255.

Layout (harness "preprocess": tests/image_preprocess.rs reads it, golden_modules.rs skips it):
    inputs/<view>.png           8-bit RGBA inputs (lossless), drawn by draw_<view>() below
    outputs/<view>.png          the reference's preprocess_image output, 518x518 RGB uint8
    outputs/<view>.raw518.png   encode_image's resize+convert of the raw input (some views)
    windows.safetensors         <view>.tensor_window: the float32 tensor DINOv2 receives,
                                rows/cols WINDOW of [3, 518, 518] (the whole tensor is 3 MB)
Outputs are PNG because a 518x518 uint8 image is 800 KB raw; PNG is lossless.
"""
import os

import numpy as np
import torch

from generate import case, FixtureWriter
import reference_env

RESOLUTION = 518
# Rows and columns [WINDOW_START, WINDOW_START + WINDOW_SIZE) of the DINOv2 input tensor.
WINDOW_START, WINDOW_SIZE = 243, 32


def reference_preprocess_image():
    """TrellisImageTo3DPipeline.preprocess_image, imported from the installed trellis-3d-ms.

    The module imports rembg and torchvision at the top; neither is installed in the golden venv
    and neither is used on the alpha path (rembg only for inputs without alpha, torchvision only
    by _init_image_cond_model), so empty stand-ins satisfy the imports. `trellis.pipelines` is
    registered without running its __init__ (which imports the text pipeline and its deps)."""
    import importlib.util
    import sys
    import types

    reference_env.import_trellis()
    if "trellis.pipelines" not in sys.modules:
        spec = importlib.util.find_spec("trellis.pipelines")
        sys.modules["trellis.pipelines"] = importlib.util.module_from_spec(spec)
    for name in ("rembg", "torchvision"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            sys.modules[name] = stub
            if name == "torchvision":
                stub.transforms = types.ModuleType("torchvision.transforms")
                sys.modules["torchvision.transforms"] = stub.transforms
    from trellis.pipelines.trellis_image_to_3d import TrellisImageTo3DPipeline

    pipeline = TrellisImageTo3DPipeline()  # models=None: an empty shell, enough for preprocess_image
    return pipeline.preprocess_image


# --------------------------------------------------------------------------
# Synthetic RGBA inputs
# --------------------------------------------------------------------------

def grid(width: int, height: int):
    return np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))


def texture(width: int, height: int, rng, noise: int) -> np.ndarray:
    """Smooth colour waves plus seeded noise, uint8 [H, W, 3]."""
    x, y = grid(width, height)
    r = 128 + 100 * np.sin(x * 0.13 + y * 0.05)
    g = 128 + 90 * np.cos(x * 0.04 - y * 0.11)
    b = 60 + 150 * (((x // 7) + (y // 5)) % 2)
    rgb = np.stack([r, g, b], -1)
    if noise:
        rgb = rgb + rng.integers(-noise, noise + 1, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def soft_ellipse_alpha(width, height, cx, cy, rx, ry, soft) -> np.ndarray:
    """255 inside, falling linearly to 0 over `soft` pixels across the edge."""
    x, y = grid(width, height)
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    edge = (1 - d) * min(rx, ry) / soft
    return np.clip(np.round(edge * 255), 0, 255).astype(np.uint8)


def rgba(rgb: np.ndarray, alpha: np.ndarray, rng) -> np.ndarray:
    # Fully transparent pixels keep a bright colour of their own (random per 8x8 block, which
    # PNG compresses well): it must not leak into the output.
    h, w = alpha.shape
    blocks = rng.integers(0, 256, ((h + 7) // 8, (w + 7) // 8, 3), dtype=np.uint8)
    hidden_rgb = blocks.repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.dstack([np.where((alpha == 0)[..., None], hidden_rgb, rgb), alpha])


def draw_wide_soft(rng):
    """160x100, soft-edged ellipse with a half-transparent band; odd bbox sums (centre on .5)."""
    w, h = 160, 100
    alpha = soft_ellipse_alpha(w, h, 84.5, 51.0, 52, 31, 4)
    alpha[40:46, 50:120] = np.minimum(alpha[40:46, 50:120], 140)
    return rgba(texture(w, h, rng, 12), alpha, rng)


def draw_tall_border(rng):
    """90x150, hard-edged ellipse cut by the top and left borders: the crop leaves the image."""
    w, h = 90, 150
    x, y = grid(w, h)
    inside = ((x - 12) / 45) ** 2 + ((y - 25) / 72) ** 2 <= 1
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    return rgba(texture(w, h, rng, 20), alpha, rng)


def draw_tiny(rng):
    """64x48, a 6x4 opaque object with a one-pixel half-transparent halo: a 6x6 crop upscaled."""
    w, h = 64, 48
    alpha = np.zeros((h, w), np.uint8)
    alpha[19:25, 29:37] = 120
    alpha[20:24, 30:36] = 255
    return rgba(texture(w, h, rng, 30), alpha, rng)


def draw_crop518(rng):
    """480x300, a box spanning columns 24..456: crop side int(432 * 1.2) = 518, which Pillow's
    resize copies without the premultiplied round trip; the crop overhangs left and right."""
    w, h = 480, 300
    alpha = np.zeros((h, w), np.uint8)
    alpha[60:240, 24:457] = 255
    alpha[60:240, 24:30] = 230          # still above the 204 threshold at the extreme columns
    alpha[100:200, 200:300] = 90         # a semi-transparent window
    alpha[58:60, 24:457] = 200           # just under the threshold: outside the bbox
    return rgba(texture(w, h, rng, 0), alpha, rng)


def draw_tall_strip(rng):
    """100x800, a long soft object: the raw 518x518 resize shrinks the height by far more
    than the width, which Pillow 13 resamples vertically first."""
    w, h = 100, 800
    alpha = soft_ellipse_alpha(w, h, 50, 420, 38, 330, 6)
    return rgba(texture(w, h, rng, 0), alpha, rng)


VIEWS = [
    # (name, draw function, also store encode_image's resize of the raw input)
    ("wide_soft", draw_wide_soft, True),
    ("tall_border", draw_tall_border, True),
    ("tiny", draw_tiny, False),
    ("crop518", draw_crop518, False),
    ("tall_strip", draw_tall_strip, True),
]


# --------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------

def encode_image_input(img) -> torch.Tensor:
    """The tensor encode_image builds from one PIL image, before Normalize (its lines verbatim
    in effect: resize to 518 LANCZOS, convert RGB, float32 / 255, HWC -> CHW)."""
    from PIL import Image
    img = img.resize((RESOLUTION, RESOLUTION), Image.LANCZOS)
    arr = np.array(img.convert("RGB")).astype(np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1).float()


def save_png(w: FixtureWriter, rel: str, arr: np.ndarray, description: str, **extra) -> dict:
    from PIL import Image
    os.makedirs(os.path.dirname(w.path(rel)), exist_ok=True)
    Image.fromarray(arr).save(w.path(rel), optimize=True)
    rec = {"kind": "png", "shape": list(arr.shape), "dtype": "U8", "description": description}
    rec.update(extra)
    w.manifest["files"][rel] = rec
    return rec


@case("preprocess_trellis",
      "TrellisImageTo3DPipeline.preprocess_image on synthetic RGBA cut-outs (alpha path), the DINOv2 "
      "input tensor it leads to, and encode_image's resize of raw inputs")
def case_preprocess_trellis(w: FixtureWriter):
    from PIL import Image, __version__ as pillow_version

    preprocess_image = reference_preprocess_image()
    seed = 3001
    rng = np.random.default_rng(seed)
    windows = {}
    views = []
    for name, draw, with_raw in VIEWS:
        src = draw(rng)
        in_rel = f"inputs/{name}.png"
        save_png(w, in_rel, src, f"8-bit RGBA input, {src.shape[1]}x{src.shape[0]}, from draw_{name}()")
        image = Image.open(w.path(in_rel))
        assert image.mode == "RGBA" and np.array_equal(np.array(image), src)

        out = preprocess_image(image)
        out_arr = np.array(out)
        assert out.mode == "RGB" and out_arr.shape == (RESOLUTION, RESOLUTION, 3), (out.mode, out_arr.shape)
        out_rel = f"outputs/{name}.png"
        save_png(w, out_rel, out_arr, "518x518 RGB uint8 returned by preprocess_image",
                 produced_by=f"TrellisImageTo3DPipeline.preprocess_image(Image.open('{in_rel}'))")

        tensor = encode_image_input(out)
        # The DINOv2 input is exactly the returned pixels / 255.
        assert torch.equal(tensor, torch.from_numpy(out_arr).permute(2, 0, 1).float() / 255)
        win = slice(WINDOW_START, WINDOW_START + WINDOW_SIZE)
        windows[f"{name}.tensor_window"] = {
            "tensor": tensor[:, win, win].contiguous(),
            "description": f"rows/cols {WINDOW_START}..{WINDOW_START + WINDOW_SIZE} of the [3, 518, 518] "
                           "float32 image encode_image feeds DINOv2 before Normalize",
            "produced_by": "encode_image's preprocessing of [preprocess_image(input)]: resize((518, 518), "
                           "LANCZOS) (a copy), convert('RGB'), float32 / 255, permute(2, 0, 1)",
        }
        view = {"name": name, "input": in_rel, "output": out_rel, "size_wh": [src.shape[1], src.shape[0]]}
        if with_raw:
            raw = encode_image_input(image)
            raw_u8 = (raw * 255).round().to(torch.uint8)
            assert torch.equal(raw_u8.float() / 255, raw)
            raw_rel = f"outputs/{name}.raw518.png"
            save_png(w, raw_rel, raw_u8.permute(1, 2, 0).numpy(),
                     "518x518 RGB uint8: encode_image's own preprocessing of the raw input "
                     "(run(..., preprocess_image=False)); the float tensor is exactly this / 255",
                     produced_by=f"Image.open('{in_rel}').resize((518, 518), LANCZOS).convert('RGB')")
            view["raw518"] = raw_rel
        views.append(view)
    w.save_tensors("windows.safetensors", "outputs", windows)

    w.finish(
        harness="preprocess",
        variant="trellis",
        views=views,
        seed=seed,
        rng="one numpy.random.default_rng(seed), views drawn in the order listed",
        reference_call="TrellisImageTo3DPipeline().preprocess_image(PIL.Image.open(input)) from trellis-3d-ms",
        pillow=pillow_version,
        window={"start": WINDOW_START, "size": WINDOW_SIZE},
        tolerance={"max_abs_u8": 1, "note": "uint8 images: at most 1/255 per pixel; in practice exact"},
    )
