"""Choose metric backends by name (config / CLI) and bundle them as a `BackendSet`.

A spec is `"<name>"` or `"<name>:<path>[,<path>]"` for backends that load local checkpoints, e.g.
`subject="dino_vitb16:/ckpt/dino_vitbase16_pretrain.pth"`,
`aesthetic="clip_vitl14_laion:/ckpt/ViT-L-14.pt,/ckpt/sa_0_4_vit_l_14_linear.pth"`,
`flow="raft_large:/ckpt/raft-things.pth"` (or a torchvision `raft_large_*.pth` / `raft_small_*.pth`
with `raft_small:`), `imaging="musiq_spaq:/ckpt/musiq_spaq_ckpt-358bb6af.pth"`.
`"unavailable"` disables a metric: it is then reported as NaN under `<metric>@unavailable`, never
faked. Not supported (no loader): AMT-S (motion smoothness; README "Evaluation" says why).

Two sets of defaults, each the backends that pass `benchmarks/metric_validity.py` in its domain
(README "Evaluation"): `DEFAULT_SPECS` for the embedded renderer's videos (the training callbacks)
and `FOOTAGE_SPECS` for real footage (`python -m eval`). `DOMAINS` says where each backend was
validated; a backend valid in one domain only is never the default in the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from eval.backends.base import FeatureBackend, FlowBackend, InterpolationBackend, ScoreBackend

__all__ = [
    "DEFAULT_SPECS",
    "DOMAINS",
    "FOOTAGE_SPECS",
    "ROLES",
    "BackendSet",
    "build_backend",
    "build_backends",
    "domain_of",
]

UNAVAILABLE = "unavailable"
# role -> default spec on the embedded renderer's videos (training callbacks). Weight-free or
# package-bundled, fast on CPU; see README / module docs.
DEFAULT_SPECS: dict[str, str] = {
    "subject": "effnet_lite0",  # semantic features: bundled ImageNet weights
    "background": "pixel",  # scene layout / colour correlation, weight-free
    "aesthetic": "colorfulness",  # proxy, NOT the LAION predictor
    "imaging": "niqe_synthetic",  # NIQE, pristine model fitted on the embedded renderer
    "flow": "opencv_dis_verified",  # stands in for RAFT; counts only flow that explains the change
    "interpolation": "opencv_dis",  # flow-warped midpoint, stands in for AMT-S
}
ROLES = tuple(DEFAULT_SPECS)
# role -> default spec on real footage (`python -m eval`). Differences from DEFAULT_SPECS: NIQE
# with the published natural-image model, and no weight-free aesthetic proxy (colorfulness rises
# with noise on real clips; pass `aesthetic=clip_vitl14_laion:...` for the real predictor).
FOOTAGE_SPECS: dict[str, str] = DEFAULT_SPECS | {"imaging": "niqe", "aesthetic": UNAVAILABLE}
# backend name -> where `benchmarks/metric_validity.py` found it valid (README validity table).
DOMAINS: dict[str, str] = {
    "effnet_lite0": "renders + real footage (blind to blocky noise)",
    "pixel": "renders + real footage (blind to a global colour drift)",
    "colorfulness": "renders only for colour loss; rises with noise in both domains",
    "laplacian": "neither (rises with noise)",
    "niqe_synthetic": "renders only (rates blur, JPEG and H.264 up on real footage)",
    "niqe": "real footage only (rates noise, blur, JPEG and H.264 up on flat renders)",
    "opencv_dis_verified": "renders + real footage (misses motion under sigma-40 noise on tiny renders)",
    "opencv_farneback_verified": "not measured",
    "opencv_dis": "renders + real footage for smoothness; counts flicker as motion",
    "opencv_farneback": "not measured; counts flicker as motion",
    "dino_vitb16": "VBench network (needs local weights; not measured here)",
    "clip_vitb32": "VBench network (needs local weights; not measured here)",
    "clip_vitl14_laion": "VBench network (needs local weights; not measured here)",
    "raft_large": "VBench network (needs local weights; not measured here)",
    "raft_small": "torchvision network (needs local weights; not measured here)",
    "musiq_spaq": "VBench network (needs local weights; not measured here)",
    UNAVAILABLE: "metric off (NaN)",
}
# Longer side the OpenCV flow backends work at unless the spec names one (`opencv_dis:<side>`).
FLOW_MAX_SIDE = 512


def domain_of(name: str) -> str:
    """Where backend `name` was validated (DOMAINS), or 'not measured'."""
    return DOMAINS.get(name, "not measured")


_NOT_SUPPORTED = {"amt_s", "amt"}


@dataclass
class BackendSet:
    """One backend (or None = unavailable) per metric role."""

    subject: FeatureBackend | None = None
    background: FeatureBackend | None = None
    aesthetic: ScoreBackend | None = None
    imaging: ScoreBackend | None = None
    flow: FlowBackend | None = None
    interpolation: InterpolationBackend | None = None

    def to(self, device: str | torch.device) -> BackendSet:
        """Move torch backends to `device` (those that can move; CLIP archives load in place)."""
        for f in fields(self):
            backend = getattr(self, f.name)
            if backend is not None and hasattr(backend, "to"):
                try:
                    backend.to(device)
                except RuntimeError:
                    pass  # a TorchScript archive stays where it was loaded; it still runs there
        return self

    def names(self) -> dict[str, str]:
        """role -> backend name (`unavailable` for None)."""
        return {f.name: _name(getattr(self, f.name)) for f in fields(self)}


def _name(backend: object | None) -> str:
    return UNAVAILABLE if backend is None else str(backend.name)


def _paths(name: str, arg: str | None, count: int) -> list[str]:
    parts = [p for p in (arg or "").split(",") if p]
    if len(parts) != count:
        raise ValueError(
            f"backend {name!r} needs {count} local path(s) as '{name}:<path>', got {arg!r}"
        )
    return parts


def build_backend(role: str, spec: str, device: str | torch.device | None = None) -> object | None:
    """Build the backend for `role` from a spec string; imports happen here, never at import time."""
    if role not in ROLES:
        raise ValueError(f"unknown metric role {role!r}; expected one of {ROLES}")
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name in (UNAVAILABLE, "none"):
        return None
    if name in _NOT_SUPPORTED:
        raise ValueError(
            f'backend {name!r} is not supported (no loader; README "Evaluation" says why)'
        )
    kind = {"subject": "feature", "background": "feature", "aesthetic": "score"}.get(role, role)
    kind = "score" if role == "imaging" else kind
    if kind == "feature":
        if name == "pixel":
            from eval.backends.pixel import PixelFeatures

            return PixelFeatures(size=int(arg) if arg else 32)
        if name == "effnet_lite0":
            from eval.backends.effnet_lite import EffNetLiteFeatures

            return EffNetLiteFeatures(
                checkpoint=arg or None, crop=role == "background", device=device
            )
        if name == "dino_vitb16":
            from eval.backends.dino import DinoFeatures

            return DinoFeatures(_paths(name, arg, 1)[0], device=device)
        if name in ("clip_vitb32", "clip"):
            from eval.backends.clip import ClipFeatures

            return ClipFeatures(_paths(name, arg, 1)[0], device=device, name="clip_vitb32")
    elif kind == "score":
        if name == "laplacian":
            from eval.backends.image_stats import LaplacianSharpness

            return LaplacianSharpness()
        if name == "colorfulness":
            from eval.backends.image_stats import Colorfulness

            return Colorfulness()
        if name in ("musiq_spaq", "musiq") and role == "imaging":
            from eval.backends.musiq import MusiqQuality

            return MusiqQuality(_paths(name, arg, 1)[0], device=device)
        if name in ("niqe", "niqe_synthetic") and role == "imaging":
            from eval.backends.niqe import NiqeQuality

            return NiqeQuality(model="live" if name == "niqe" else "synthetic")
        if name == "clip_vitl14_laion" and role == "aesthetic":
            from eval.backends.clip import ClipAesthetic

            clip_path, head_path = _paths(name, arg, 2)
            return ClipAesthetic(clip_path, head_path, device=device)
    elif role == "flow" and name in ("raft", "raft_large", "raft_small"):
        from eval.backends.raft import RaftFlow

        size = "small" if name == "raft_small" else "large"
        return RaftFlow(_paths(name, arg, 1)[0], size=size, device=device)
    elif name in ("opencv_dis", "opencv_farneback") or (
        role == "flow" and name in ("opencv_dis_verified", "opencv_farneback_verified")
    ):
        from eval.backends.opencv_flow import OpenCVFlow

        method = name.removeprefix("opencv_").removesuffix("_verified")
        return OpenCVFlow(
            method=method,
            max_side=int(arg) if arg else FLOW_MAX_SIDE,
            verified=name.endswith("_verified"),
        )
    raise ValueError(f"unknown backend {spec!r} for metric role {role!r}")


def build_backends(
    specs: Mapping[str, str] | None = None,
    device: str | torch.device | None = None,
    defaults: Mapping[str, str] = DEFAULT_SPECS,
) -> BackendSet:
    """`defaults` (the renderer's; `FOOTAGE_SPECS` for real footage) overridden by `specs`
    (role -> spec); one shared instance per identical spec."""
    if set(defaults) != set(ROLES):
        raise ValueError(
            f"build_backends: defaults must name every role {ROLES}, got {list(defaults)}"
        )
    merged = dict(defaults)
    for role, spec in (specs or {}).items():
        if role not in ROLES:
            raise ValueError(f"unknown metric role {role!r}; expected one of {ROLES}")
        merged[role] = spec
    built: dict[tuple[str, str], object | None] = {}
    out = {}
    for role, spec in merged.items():
        # Flow and interpolation share one OpenCV object; other roles get their own instance.
        key = ("opencv", spec) if role in ("flow", "interpolation") else (role, spec)
        if key not in built:
            built[key] = build_backend(role, spec, device)
        out[role] = built[key]
    return BackendSet(**out)
