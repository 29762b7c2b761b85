"""The candidate space: backbones of the registry x widths x input sizes (an architecture, what
latency and size depend on) x quantization and format (a variant, what is exported) x phase-2
depth (a candidate, what is trained). Architectures whose ImageNet weights are not available
offline are left out with a note."""
from __future__ import annotations

from dataclasses import dataclass

from edgetl import backbones
from edgetl.config import FORMATS, QUANTS, SearchOptions, parse_list, parse_numbers


@dataclass(frozen=True, order=True)
class Arch:
    backbone: str
    alpha: float | None
    size: int

    @property
    def key(self) -> str:
        a = f"-a{self.alpha:g}" if self.alpha is not None else ""
        return f"{self.backbone}{a}-s{self.size}"


@dataclass(frozen=True, order=True)
class Variant:
    """An architecture exported one way: latency, size and memory are measured per variant."""
    arch: Arch
    fmt: str
    quant: str

    @property
    def key(self) -> str:
        return f"{self.arch.key}-{self.quant}-{self.fmt}"


@dataclass(frozen=True, order=True)
class Candidate:
    """What is trained: an architecture and its phase-2 depth in blocks (0: the head only)."""
    arch: Arch
    depth: int

    @property
    def key(self) -> str:
        return f"{self.arch.key}-d{self.depth}"


@dataclass
class Space:
    archs: list[Arch]
    variants: list[Variant]
    depths: tuple[int, ...]
    notes: list[str]


def weights_note(bb: backbones.Backbone, alpha: float | None, size: int, weights: str) -> str | None:
    """Why this backbone and width can't be trained here, or None."""
    if weights != "imagenet":
        return None
    from edgetl.nets.weights import cached_weight_file, install_hint

    if cached_weight_file(bb, alpha, size) is None:
        return install_hint(bb, alpha).split(" (or")[0]
    return None


def build_space(o: SearchOptions) -> Space:
    alphas = parse_numbers(o.alphas, "alphas")
    sizes = parse_numbers(o.sizes, "sizes", int)
    quants = parse_list(o.quants, QUANTS, "quants")
    fmts = parse_list(o.formats, FORMATS, "formats")
    depths = tuple(sorted({int(s) for s in o.depths.split(",") if s.strip()}))
    archs, notes = [], []
    for name in dict.fromkeys(backbones.get(s.strip()).name for s in o.backbones.split(",") if s.strip()):
        bb = backbones.get(name)
        widths: tuple[float | None, ...] = tuple(float(a) for a in alphas) if bb.has_alpha else (None,)
        for a in widths:
            label = bb.name + (f" alpha {a:g}" if a is not None else "")
            why = weights_note(bb, a, max(sizes), o.weights)
            if why:
                notes.append(f"skipped {label}: no ImageNet weights here; {why}")
                continue
            small = [s for s in sizes if s < bb.min_size]
            if small:
                notes.append(f"skipped {label} at {','.join(map(str, small))} px: it needs at least {bb.min_size} px")
            archs += [Arch(bb.name, a, int(s)) for s in sizes if s >= bb.min_size]
    variants = [Variant(a, f, q) for a in archs for f in fmts for q in quants]
    return Space(archs, variants, depths, notes)
