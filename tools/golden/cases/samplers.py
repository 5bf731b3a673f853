"""Golden cases for the flow-Euler samplers (trellis/pipelines/samplers/flow_euler.py) and the
multi-image modes (TrellisImageTo3DPipeline.inject_sampler_multi_image).

The reference samplers run unchanged on a deterministic toy velocity model that records
every call: its inputs (x_t, the float32 timestep tensor, which condition) and its output.
A Rust test replays the calls (checking each input, returning the recorded output) and
compares the final sample and the trajectory. The toy model's arithmetic does not matter to
the replay; it only has to depend on x_t, t and the condition so that any divergence in
what the sampler feeds it shows up.

Each case folder holds:
    manifest.json        harness "sampler"; the sampler entry in pipeline.json form
                         ({name, args, params}); multi_image mode; latent layout
    inputs.safetensors   noise (dense [B,C,R,R,R] or sparse feats [N,C] + coords [N,4] int32),
                         cond.<k> (one per view; a single-condition case has cond.0 only),
                         neg_cond
    outputs.safetensors  t_seq (float64), samples, pred_x_t / pred_x_0 ([steps, ...]),
                         model_calls.{x_t, t, cond, out} in call order
                         (cond: the view index, -1 for neg_cond)
"""
import importlib
import importlib.util
import math
import sys
import types
from typing import Dict, List, Optional

import torch

from generate import case, FixtureWriter, REL_L2_TOL


SIGMA_MIN = 1e-5
REFERENCE_FILE = "trellis/pipelines/samplers/flow_euler.py (+ classifier_free_guidance_mixin.py, guidance_interval_mixin.py)"


# --------------------------------------------------------------------------
# Importing the reference sampler code
# --------------------------------------------------------------------------

def _register_package_without_init(name: str) -> None:
    """Make `name` importable as a package without running its __init__.py.

    trellis/pipelines/__init__.py imports both pipelines, which pull in torchvision,
    rembg and transformers; the samplers and inject_sampler_multi_image need none of them."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot find package {name}")
    sys.modules[name] = importlib.util.module_from_spec(spec)


def reference_samplers():
    _register_package_without_init("trellis.pipelines")
    return importlib.import_module("trellis.pipelines.samplers")


def reference_image_pipeline_class():
    """TrellisImageTo3DPipeline, imported with throwaway stand-ins for torchvision and rembg
    when they are not installed: the module imports them at the top, but
    inject_sampler_multi_image (the only method used here) touches neither."""
    reference_samplers()
    stubs = {}
    for missing in ("torchvision", "rembg"):
        try:
            importlib.import_module(missing)
        except ImportError:
            stubs[missing] = types.ModuleType(missing)
    if "torchvision" in stubs:
        stubs["torchvision"].transforms = types.ModuleType("torchvision.transforms")
        stubs["torchvision.transforms"] = stubs["torchvision"].transforms
    sys.modules.update(stubs)
    try:
        module = importlib.import_module("trellis.pipelines.trellis_image_to_3d")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return module.TrellisImageTo3DPipeline


# --------------------------------------------------------------------------
# The recording toy velocity model
# --------------------------------------------------------------------------

class RecordingToyFlow:
    """v = tanh((x · mix) * scale + proj(mean_tokens(cond))) + 0.05 * (t / 1000) * x, per sample.

    Works on dense latents [B, C, *spatial] and on SparseTensor latents (feats [N, C], the
    batch index in coords[:, 0]). Records every call; identifies the condition it was given
    among `known` (view index, or -1 for the negative condition), allowing for the
    reference's repeat of a batch-1 condition to the latent's batch."""

    def __init__(self, gen: torch.Generator, channels: int, cond_channels: int,
                 known: Dict[int, torch.Tensor]):
        self.mix = torch.randn(channels, channels, generator=gen) / channels ** 0.5
        self.scale = 0.8 + 0.4 * torch.rand(channels, generator=gen)
        self.proj = torch.randn(cond_channels, channels, generator=gen) / cond_channels ** 0.5
        self.known = known
        self.calls: List[dict] = []

    def identify(self, cond: torch.Tensor) -> int:
        for index, ref in self.known.items():
            if ref.shape == cond.shape and torch.equal(ref, cond):
                return index
            if ref.shape[0] == 1 and ref.shape[1:] == cond.shape[1:] and torch.equal(
                    ref.expand_as(cond), cond):
                return index
        raise AssertionError(f"model called with an unknown condition of shape {list(cond.shape)}")

    def velocity(self, feats: torch.Tensor, t_rows: torch.Tensor, emb_rows: torch.Tensor) -> torch.Tensor:
        # feats [M, C]; t_rows [M]; emb_rows [M, C]
        h = feats @ self.mix * self.scale + emb_rows
        return torch.tanh(h) + 0.05 * (t_rows / 1000.0)[:, None] * feats

    def __call__(self, x, t: torch.Tensor, cond: torch.Tensor, **kwargs):
        assert not kwargs, f"unexpected model kwargs {sorted(kwargs)}"
        assert t.dtype == torch.float32 and t.dim() == 1
        emb = cond.mean(dim=1) @ self.proj  # [B, C]
        if isinstance(x, torch.Tensor):
            b, c = x.shape[:2]
            assert t.shape[0] == b and cond.shape[0] == b
            rows = x.movedim(1, -1).reshape(-1, c)
            per = rows.shape[0] // b
            batch = torch.arange(b).repeat_interleave(per)
            out = self.velocity(rows, t[batch], emb[batch]).reshape(*x.movedim(1, -1).shape).movedim(-1, 1)
            x_record = x
        else:  # SparseTensor
            batch = x.coords[:, 0].long()
            assert t.shape[0] == x.shape[0] and cond.shape[0] == x.shape[0]
            feats = self.velocity(x.feats, t[batch], emb[batch])
            out = x.replace(feats)
            x_record = x.feats
        out_tensor = out if isinstance(out, torch.Tensor) else out.feats
        self.calls.append({"x_t": x_record.detach().clone(), "t": t.detach().clone(),
                           "cond": self.identify(cond), "out": out_tensor.detach().clone()})
        return out


# --------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------

def schedule(steps: int, rescale_t: float):
    """The reference's t_seq (numpy float64), for choosing interval bounds that hit it exactly."""
    import numpy as np
    t_seq = np.linspace(1, 0, steps + 1)
    return rescale_t * t_seq / (1 + (rescale_t - 1) * t_seq)


def make_latent(gen: torch.Generator, layout: dict, channels: int):
    """Noise and, for a sparse layout, coords (batch-contiguous, sorted, unique) and the SparseTensor."""
    if layout["kind"] == "dense":
        noise = torch.randn([layout["batch"], channels] + [layout["resolution"]] * 3, generator=gen)
        return noise, None, noise
    from trellis.modules import sparse as sp
    res = layout["resolution"]
    coords = []
    for b, n in enumerate(layout["voxels_per_sample"]):
        flat = torch.randperm(res ** 3, generator=gen)[:n].sort().values
        xyz = torch.stack([flat // (res * res), (flat // res) % res, flat % res], dim=1)
        coords.append(torch.cat([torch.full((n, 1), b), xyz], dim=1))
    coords = torch.cat(coords).int()
    feats = torch.randn(coords.shape[0], channels, generator=gen)
    return feats, coords, sp.SparseTensor(feats=feats, coords=coords)


def sampler_golden(w: FixtureWriter, *, sampler: dict, layout: dict, channels: int, cond_shape: List[int],
                   num_views: int, multi_image: Optional[str], seed: int, neg: str = "random",
                   notes: str = "") -> None:
    samplers = reference_samplers()
    gen = torch.Generator().manual_seed(seed)

    noise, coords, x0 = make_latent(gen, layout, channels)
    conds = [torch.randn(cond_shape, generator=gen) for _ in range(num_views)]
    neg_cond = torch.zeros_like(conds[0][:1]) if neg == "zeros" else torch.randn(cond_shape, generator=gen)
    known = {k: c for k, c in enumerate(conds)}
    known[-1] = neg_cond
    model = RecordingToyFlow(gen, channels, cond_shape[-1], known)

    sampler_obj = getattr(samplers, sampler["name"])(**sampler["args"])
    params = dict(sampler["params"])
    uses_neg = sampler["name"] != "FlowEulerSampler"
    kwargs = {"neg_cond": neg_cond} if uses_neg else {}

    if multi_image is None:
        assert num_views == 1
        cond_arg = conds[0]
        call = f"{sampler['name']}(**args).sample(model, noise, cond, {'neg_cond, ' if uses_neg else ''}**params, verbose=False)"
        ret = sampler_obj.sample(model, x0, cond_arg, **kwargs, **params, verbose=False)
    else:
        # run_multi_image: cond is the views stacked along the batch; the sampler is wrapped by the
        # pipeline's own context manager, on a pipeline object built without models.
        Pipeline = reference_image_pipeline_class()
        pipe = Pipeline()
        pipe.sparse_structure_sampler = sampler_obj
        cond_arg = torch.cat(conds, dim=0)
        with pipe.inject_sampler_multi_image("sparse_structure_sampler", num_views, params["steps"],
                                             mode=multi_image):
            ret = sampler_obj.sample(model, x0, cond_arg, **kwargs, **params, verbose=False)
        assert not hasattr(sampler_obj, "_old_inference_model")
        call = (f"with TrellisImageTo3DPipeline().inject_sampler_multi_image('sparse_structure_sampler', "
                f"{num_views}, steps, mode='{multi_image}'): {sampler['name']}(**args).sample(model, noise, "
                f"cat(cond.0..cond.{num_views - 1}), neg_cond, **params, verbose=False)")

    as_tensor = (lambda v: v) if coords is None else (lambda v: v.feats)
    samples = as_tensor(ret.samples)
    pred_x_t = torch.stack([as_tensor(v) for v in ret.pred_x_t])
    pred_x_0 = torch.stack([as_tensor(v) for v in ret.pred_x_0])
    t_seq = torch.from_numpy(schedule(params["steps"], params.get("rescale_t", 1.0)).copy())
    calls = model.calls
    steps = params["steps"]
    assert len(ret.pred_x_t) == steps

    # The calls of each step (consecutive calls share the step's timestep), for the manifest.
    per_step: List[List[int]] = []
    for i, c in enumerate(calls):
        if i == 0 or not torch.equal(c["t"], calls[i - 1]["t"]):
            per_step.append([])
        per_step[-1].append(c["cond"])
    assert len(per_step) == steps, "could not split the calls into steps"

    inputs = {"noise": {"tensor": noise, "description": (
        "initial noise: dense latent [B, C, R, R, R]" if coords is None else "initial noise: sparse latent features [N, C]")}}
    if coords is not None:
        inputs["coords"] = {"tensor": coords, "description": "[N, 4] int32 (batch, x, y, z) of the sparse latent, batch-contiguous"}
    for k, c in enumerate(conds):
        inputs[f"cond.{k}"] = {"tensor": c, "description": f"condition of view {k} [b, T, C_cond] "
                               "(b = 1 is repeated to the latent's batch by the sampler)"}
    inputs["neg_cond"] = {"tensor": neg_cond, "description": "negative condition" + (
        " (zeros_like(cond[:1]), as run_multi_image passes it)" if neg == "zeros" else "" if uses_neg else
        " (unused: FlowEulerSampler has no guidance)")}
    w.save_tensors("inputs.safetensors", "inputs", inputs)

    w.save_tensors("outputs.safetensors", "outputs", {
        "t_seq": {"tensor": t_seq, "description": "[steps+1] float64 time grid",
                  "produced_by": "np.linspace(1, 0, steps+1); rescale_t*t/(1+(rescale_t-1)*t)"},
        "samples": {"tensor": samples, "description": "final sample", "produced_by": "sample(...).samples"},
        "pred_x_t": {"tensor": pred_x_t, "description": "[steps, ...] x after each Euler step",
                     "produced_by": "stack(sample(...).pred_x_t)"},
        "pred_x_0": {"tensor": pred_x_0, "description": "[steps, ...] x0 predicted from each step's (guided) velocity",
                     "produced_by": "stack(sample(...).pred_x_0)"},
        "model_calls.x_t": {"tensor": torch.stack([c["x_t"] for c in calls]),
                            "description": "[calls, ...] x_t passed to the model (sparse: feats)",
                            "produced_by": "recorded in the toy model"},
        "model_calls.t": {"tensor": torch.stack([c["t"] for c in calls]),
                          "description": "[calls, B] float32 timestep tensor passed to the model (1000 t)",
                          "produced_by": "recorded in the toy model"},
        "model_calls.cond": {"tensor": torch.tensor([c["cond"] for c in calls], dtype=torch.int32),
                             "description": "[calls] which condition: view index k, or -1 for neg_cond",
                             "produced_by": "recorded in the toy model"},
        "model_calls.out": {"tensor": torch.stack([c["out"] for c in calls]),
                            "description": "[calls, ...] the model's raw output (velocity)",
                            "produced_by": "recorded in the toy model"},
    })

    w.finish(
        harness="sampler",
        sampler=sampler,
        multi_image=None if multi_image is None else {"mode": multi_image, "num_views": num_views},
        layout=layout,
        channels=channels,
        seed=seed,
        reference=REFERENCE_FILE + ("" if multi_image is None else
                                    " + trellis/pipelines/trellis_image_to_3d.py inject_sampler_multi_image"),
        reference_call=call,
        toy_model=RecordingToyFlow.__doc__.split("\n")[0].strip(),
        calls_per_step=per_step,
        num_model_calls=len(calls),
        t_seq=[float(v) for v in t_seq],
        notes=notes,
        tolerance={"rel_l2": REL_L2_TOL, "note": "fp32 CPU: model inputs, samples and trajectories"},
    )


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def sampler_entry(name: str, **params) -> dict:
    return {"name": name, "args": {"sigma_min": SIGMA_MIN}, "params": params}


DENSE_B2 = {"kind": "dense", "batch": 2, "resolution": 3}
DENSE_B1 = {"kind": "dense", "batch": 1, "resolution": 3}


@case("samplers_euler", "FlowEulerSampler (no guidance), 5 steps, rescale_t 2, dense batch 2 with a batch-1 cond")
def case_samplers_euler(w: FixtureWriter):
    sampler_golden(w, sampler=sampler_entry("FlowEulerSampler", steps=5, rescale_t=2.0),
                   layout=DENSE_B2, channels=4, cond_shape=[1, 5, 6], num_views=1, multi_image=None,
                   seed=3101)


@case("samplers_cfg", "FlowEulerCfgSampler, 4 steps, rescale_t 3, cfg 2.5, dense batch 1")
def case_samplers_cfg(w: FixtureWriter):
    sampler_golden(w, sampler=sampler_entry("FlowEulerCfgSampler", steps=4, rescale_t=3.0, cfg_strength=2.5),
                   layout=DENSE_B1, channels=4, cond_shape=[1, 5, 6], num_views=1, multi_image=None,
                   seed=3102)


@case("samplers_interval", "FlowEulerGuidanceIntervalSampler, 6 steps, rescale_t 3, cfg 7.5, interval "
      "bounds equal to t_seq[4] and t_seq[1] (inclusive test; steps 0 and 5 unguided), dense batch 2 "
      "with per-sample conds")
def case_samplers_interval(w: FixtureWriter):
    t = schedule(6, 3.0)
    sampler_golden(w, sampler=sampler_entry("FlowEulerGuidanceIntervalSampler", steps=6, rescale_t=3.0,
                                            cfg_strength=7.5, cfg_interval=[float(t[4]), float(t[1])]),
                   layout=DENSE_B2, channels=4, cond_shape=[2, 5, 6], num_views=1, multi_image=None,
                   seed=3103, notes="the interval bounds are exactly t_seq[4] and t_seq[1]: a port must "
                   "compute t_seq bit-exactly and test both ends inclusively")


@case("samplers_interval_sparse", "FlowEulerGuidanceIntervalSampler on a sparse latent (SparseTensor, "
      "batch 2, 13+9 voxels), 5 steps, rescale_t 3, cfg 3, interval [0.5, 1.0]")
def case_samplers_interval_sparse(w: FixtureWriter):
    sampler_golden(w, sampler=sampler_entry("FlowEulerGuidanceIntervalSampler", steps=5, rescale_t=3.0,
                                            cfg_strength=3.0, cfg_interval=[0.5, 1.0]),
                   layout={"kind": "sparse", "resolution": 6, "voxels_per_sample": [13, 9]},
                   channels=3, cond_shape=[1, 4, 5], num_views=1, multi_image=None, seed=3104,
                   notes="the model's timestep tensor has one entry per batch item (SparseTensor.shape[0]), "
                   "not per voxel")


@case("samplers_stochastic", "run_multi_image mode 'stochastic': 3 views over 5 steps (views 0,1,2,0,1), "
      "FlowEulerGuidanceIntervalSampler cfg 3, interval [0.5, 1.0], rescale_t 3, dense batch 2")
def case_samplers_stochastic(w: FixtureWriter):
    sampler_golden(w, sampler=sampler_entry("FlowEulerGuidanceIntervalSampler", steps=5, rescale_t=3.0,
                                            cfg_strength=3.0, cfg_interval=[0.5, 1.0]),
                   layout=DENSE_B2, channels=4, cond_shape=[1, 5, 6], num_views=3,
                   multi_image="stochastic", seed=3105, neg="zeros")


@case("samplers_multidiffusion", "run_multi_image mode 'multidiffusion': 2 views, "
      "FlowEulerGuidanceIntervalSampler 4 steps, cfg 5, interval [0.4, 0.9] (step 0 unguided), "
      "rescale_t 2.5, dense batch 1")
def case_samplers_multidiffusion(w: FixtureWriter):
    sampler_golden(w, sampler=sampler_entry("FlowEulerGuidanceIntervalSampler", steps=4, rescale_t=2.5,
                                            cfg_strength=5.0, cfg_interval=[0.4, 0.9]),
                   layout=DENSE_B1, channels=4, cond_shape=[1, 5, 6], num_views=2,
                   multi_image="multidiffusion", seed=3106, neg="zeros",
                   notes="guided steps: (1+s)*mean_k(v_k) - s*v_neg (the mean of the conditional "
                   "predictions is guided, not the mean of per-view guided velocities)")


@case("samplers_multidiffusion_sparse", "run_multi_image mode 'multidiffusion' on a sparse latent: "
      "3 views, batch 2 (7+11 voxels), FlowEulerGuidanceIntervalSampler 5 steps, cfg 3, "
      "interval [0.5, 0.95], rescale_t 3")
def case_samplers_multidiffusion_sparse(w: FixtureWriter):
    sampler_golden(w, sampler=sampler_entry("FlowEulerGuidanceIntervalSampler", steps=5, rescale_t=3.0,
                                            cfg_strength=3.0, cfg_interval=[0.5, 0.95]),
                   layout={"kind": "sparse", "resolution": 5, "voxels_per_sample": [7, 11]},
                   channels=3, cond_shape=[1, 4, 5], num_views=3, multi_image="multidiffusion",
                   seed=3107, neg="zeros")
