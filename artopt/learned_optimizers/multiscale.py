"""A multi-scale image basis for the learned optimizer.

The image is written as x = x₀ + Σ_k up(z_k): z_0 has the image's resolution, z_k is 2^k times
coarser and bilinearly upsampled to the image's size.  The coordinatewise optimizer runs on the
coefficients z (their gradients are upᵀ ∇f), and each step maps its update back to pixels.

Why: in pixel space a coordinatewise optimizer moves every pixel on its own, so a broad change (a
region's colour, a large brush stroke) takes many small steps; one coefficient of a coarse level
moves a whole 2^k × 2^k neighbourhood at once.  The basis is a fixed linear map, so any optimizer can
run in it; the LSTM is meta-trained in it (``multiscale_problem``) and used in it
(``MultiscaleOptimizer``).  The two are the same algorithm: the coefficients themselves never matter,
only their updates, because the optimizer sees gradients only.

The levels add a third to the coordinates (1 + 1/4 + 1/16 + ...), and with it to the optimizer's state
(the engine stores h in int8 to stay under 500 B per pixel).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..tasks.base import Problem
from .torch_optimizer import LearnedOptimizer, evaluate_closure

COARSEST = 8  # px: levels stop where the coarsest one would have fewer pixels across than this


def auto_levels(height: int, width: int, coarsest: int = COARSEST) -> int:
    """Levels for an image: halve until the short side would drop below ``coarsest`` (64 px: 4)."""
    if isinstance(coarsest, bool) or not isinstance(coarsest, numbers.Real) or not 0 < coarsest < math.inf:
        # 0, negative and infinite values failed inside math.log2 with no word about which argument
        raise ValueError(f"coarsest must be a positive number of pixels, got {coarsest!r}")
    short = min(height, width)
    return min(max_levels(height, width), 1 + max(0, int(math.floor(math.log2(max(short, 1) / coarsest)))))


def max_levels(height: int, width: int) -> int:
    """Levels an image has until the coarsest is 1 x 1; more would each move the whole image again."""
    return 1 + max(0, math.ceil(math.log2(max(height, width, 1))))


def level_shapes(shape: torch.Size | tuple, levels: int) -> list[tuple[int, ...]]:
    """Shapes of z_0 .. z_{levels-1} for an image (or batch of images) of ``shape`` (..., H, W).  Levels
    past the one that is 1 x 1 (``max_levels``) stay 1 x 1, each moving the whole image once more: so a
    fixed level count serves images of every size."""
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 1:
        raise ValueError(f"levels must be a whole number, at least 1, got {levels!r}")
    *lead, h, w = shape
    return [(*lead, -(-h // 2**k), -(-w // 2**k)) for k in range(int(levels))]


def synthesize(zs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Σ_k up(z_k) at ``size`` (H, W): the pixel-space image of the coefficients ``zs``."""
    out = zs[0]
    for z in zs[1:]:
        lead = z.shape[:-2]
        up = F.interpolate(z.reshape(-1, 1, *z.shape[-2:]), size=size, mode="bilinear", align_corners=False)
        out = out + up.reshape(*lead, *size)
    return out


def adjoint(grad: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The coefficients' gradients (upᵀ ∇f) for a pixel gradient ``grad``."""
    zs = [torch.zeros(s, dtype=grad.dtype, device=grad.device, requires_grad=True) for s in shapes]
    with torch.enable_grad():
        return list(torch.autograd.grad(synthesize(zs, tuple(grad.shape[-2:])), zs, grad))


class MultiscaleOptimizer(torch.optim.Optimizer):
    """Runs ``inner`` (a factory: list of coefficient tensors -> optimizer) in the multi-scale basis of
    each image parameter (shape (..., H, W)).  ``levels=None`` picks ``auto_levels`` per image, down
    to ``coarsest`` px.

    Each image's coefficients live in one flat tensor (z_0, z_1, ... in order; ``coefficients``
    holds their views), and the inner optimizer sees that tensor: one parameter per image, so it
    never concatenates or splits its state per level.  The order is the one ``multiscale_problem``
    and meta-training use.

    ``last_notice`` and ``fallback_count`` pass through from the inner optimizer (the learned
    optimizer's non-finite guard), so callers see its warnings as before.

    The learning rate lives in the inner optimizer's groups: give a ``torch.optim.lr_scheduler``
    ``opt.inner`` (this optimizer's own groups hold the images and no ``lr``).
    """

    def __init__(self, params: Iterable[torch.Tensor], inner: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                 levels: int | None = None, coarsest: int = COARSEST):
        super().__init__(params, {})
        self.images = [p for g in self.param_groups for p in g["params"]]
        if len({id(p) for p in self.images}) != len(self.images):  # each copy would get its own step
            raise ValueError("an image is listed more than once")
        options = sorted({k for g in self.param_groups for k in g} - {"params", "param_names"})
        if options:  # they would be ignored: the inner optimizer steps
            raise ValueError(f"MultiscaleOptimizer's groups hold images only; give {', '.join(options)} to the "
                             "inner optimizer (the factory's groups, or opt.inner.param_groups)")
        self.flat: list[torch.Tensor] = []
        self.coefficients: list[list[torch.Tensor]] = []
        for p in self.images:
            if p.dim() < 2:
                raise ValueError("MultiscaleOptimizer optimizes images: parameters of shape (..., H, W)")
            shapes = level_shapes(p.shape, levels if levels is not None else auto_levels(*p.shape[-2:], coarsest))
            sizes = [math.prod(s) for s in shapes]
            flat = torch.zeros(sum(sizes), dtype=p.dtype, device=p.device, requires_grad=True)
            # views of the detached tensor: same memory, no autograd history to trip over
            self.coefficients.append([v.view(s) for v, s in zip(flat.detach().split(sizes), shapes)])
            self.flat.append(flat)
        self.inner = inner(self.flat)
        if isinstance(self.inner, torch.optim.LBFGS):
            raise ValueError("L-BFGS cannot run in the multi-scale basis: its line search needs a closure of the "
                             "coefficients, which this optimizer does not pass on")
        if hasattr(self.inner, "set_basis_levels"):  # a learned optimizer may take each coordinate's level
            for flat, zs in zip(self.flat, self.coefficients):
                self.inner.set_basis_levels(flat, [z.numel() for z in zs])

    def __getstate__(self) -> dict:
        # (torch's lost the coefficients and the inner optimizer)
        return _with_attributes(self, super().__getstate__())

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # The coefficients must stay views of the copied flat tensors (step writes through them).
        self.coefficients = [[v.view(z.shape) for v, z in zip(flat.detach().split([z.numel() for z in zs]), zs)]
                             for flat, zs in zip(self.flat, self.coefficients)]

    @property
    def last_notice(self) -> str | None:
        return getattr(self.inner, "last_notice", None)

    @property
    def fallback_count(self) -> int:
        return getattr(self.inner, "fallback_count", 0)

    def state_bytes(self) -> int:
        """The inner optimizer's state (see ``LearnedOptimizer.state_bytes``); 0 if it cannot tell."""
        return self.inner.state_bytes() if hasattr(self.inner, "state_bytes") else 0

    @property
    def coordinates(self) -> int:
        """Coordinates the inner optimizer keeps state for (about 4/3 of the pixels)."""
        return sum(f.numel() for f in self.flat)

    def state_dict(self) -> dict:
        """torch's, plus the inner optimizer's (all the state there is: the learned optimizer's LSTM
        state, Adam's moments).  Without it a saved and reloaded run restarted the inner optimizer."""
        return {**super().state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "inner" not in state_dict:
            raise ValueError("this state dict holds no inner optimizer state ('inner'): it was not saved by a "
                             "MultiscaleOptimizer")
        state_dict = dict(state_dict)
        inner = state_dict.pop("inner")
        super().load_state_dict(state_dict)
        self.inner.load_state_dict(inner)

    @torch.no_grad()
    def carry_state_from(self, coarser: "MultiscaleOptimizer") -> int:
        """Start this optimizer's learned state from ``coarser``'s, an optimizer of the same images at
        half the size (a coarse-to-fine run's previous scale): level k there covers what level k + 1
        covers here, so each level's LSTM state (h, c) moves up one level, resampled (nearest) where
        rounding made the shapes differ by a pixel; the new finest level starts fresh, and the
        moments restart from the next gradient.  Returns the coordinates given a carried state (0
        where either inner optimizer is not a learned one or holds no state)."""
        if not (isinstance(self.inner, LearnedOptimizer) and isinstance(coarser.inner, LearnedOptimizer)):
            return 0
        carried = 0
        for flat, zs, old_flat, old_zs in zip(self.flat, self.coefficients, coarser.flat, coarser.coefficients):
            old = coarser.inner.state.get(old_flat, {})
            if "h" not in old:
                continue
            new = {}
            for name in ("h", "c"):
                layers, _, units = old[name].shape
                new[name] = torch.zeros((layers, flat.numel(), units), dtype=old[name].dtype, device=flat.device)
                start = zs[0].numel()  # (the new finest level stays zero)
                for k, piece in enumerate(old[name].split([z.numel() for z in old_zs], dim=1)[: len(zs) - 1]):
                    n = zs[k + 1].numel()
                    new[name][:, start:start + n] = _moved_level(piece, old_zs[k].shape, zs[k + 1].shape)
                    start += n
            carried += sum(z.numel() for z in zs[1:len(old_zs) + 1])
            state = self.inner.state[flat]
            state["h"], state["c"], state["shape"] = new["h"], new["c"], list(flat.shape)
        return carried

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "inner"):  # an image added later would get no coefficients and never move
            raise NotImplementedError("MultiscaleOptimizer takes its images when it is made; make a new one")
        super().add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.inner.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """As the inner optimizer's step; ``loss`` (f at the current images, when no closure gives
        it) passes on to a learned optimizer, whose network may take loss inputs."""
        loss = evaluate_closure(closure) if closure is not None else loss
        active = []
        for p, flat, zs in zip(self.images, self.flat, self.coefficients):
            if p.grad is None:
                # An image without a gradient takes no step: its coefficients must not either (their
                # gradient from an earlier step would still be there without a zero_grad).
                flat.grad = None
                continue
            flat.zero_()  # after the inner step, the coefficients hold the update alone
            flat.grad = torch.cat([g.reshape(-1) for g in adjoint(p.grad, [z.shape for z in zs])])
            active.append((p, zs))
        if loss is not None and isinstance(self.inner, (LearnedOptimizer, LevelSplit)):
            self.inner.step(loss=loss)
        else:
            self.inner.step()
        for p, zs in active:
            p.add_(synthesize(zs, tuple(p.shape[-2:])))
        return loss


def _with_attributes(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """torch's optimizer ``state`` for a deepcopy or pickle (defaults, state and param_groups only) plus the
    optimizer's own attributes, but what shadows a method (an lr scheduler's wrapper of step, bound to the
    original)."""
    return {**state, **{k: v for k, v in vars(optimizer).items() if not k.startswith("_") and not hasattr(type(optimizer), k)}}


def level_sizes(shape: torch.Size | tuple, levels: int | None = None, coarsest: int = COARSEST) -> list[int]:
    """Coefficients per level (z_0 first) of an image of ``shape`` (..., H, W), as ``MultiscaleOptimizer``
    lays them out: ``levels`` levels, or ``auto_levels`` down to ``coarsest`` px."""
    n = levels if levels is not None else auto_levels(*shape[-2:], coarsest)
    return [math.prod(s) for s in level_shapes(shape, n)]


class LevelSplit(torch.optim.Optimizer):
    """The inner optimizer of a ``MultiscaleOptimizer`` that runs two optimizers: ``finest`` (a factory,
    e.g. Adam's) on the ``levels`` finest levels of each image's coefficients and ``rest`` (e.g. the
    learned optimizer's) on the coarser ones.

    Why: level 0 holds 3/4 of the coefficients, so at large sizes it is most of a learned update's
    cost, while the coarse levels, where one coefficient moves a neighbourhood, are where the learned
    optimizer gains most over Adam (bench/adam_levels.py).  ``level_sizes`` gives each flat coefficient
    tensor's sizes per level (``level_sizes()``).  Each optimizer gets tensors of its own (an
    optimizer's state is per tensor); a learned ``rest`` is told their levels, counted from the image's
    finest.  Notices, fallbacks and the learned rate (``rest.param_groups``) are ``rest``'s."""

    def __init__(self, flats: list[torch.Tensor], level_sizes: list[list[int]], levels: int,
                 finest: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                 rest: Callable[[list[torch.Tensor]], torch.optim.Optimizer]):
        if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 1:
            raise ValueError(f"levels must be a whole number, at least 1, got {levels!r}")
        if len(level_sizes) != len(flats):
            raise ValueError(f"level_sizes has {len(level_sizes)} entries for {len(flats)} coefficient tensors")
        for flat, sizes in zip(flats, level_sizes):
            if sum(sizes) != flat.numel():
                raise ValueError(f"level sizes {sizes} do not add up to the {flat.numel()} coefficients")
            if len(sizes) <= levels:  # the other optimizer would get nothing to step
                raise ValueError(f"{levels} finest level(s) of {len(sizes)} leave no coarser level for the other optimizer")
        super().__init__(flats, {})
        self.flats, self.levels = list(flats), int(levels)
        self.n_finest = [sum(sizes[:levels]) for sizes in level_sizes]
        self.parts = [(torch.zeros(n, dtype=f.dtype, device=f.device, requires_grad=True),
                       torch.zeros(f.numel() - n, dtype=f.dtype, device=f.device, requires_grad=True))
                      for f, n in zip(self.flats, self.n_finest)]
        self.finest = finest([a for a, _ in self.parts])
        self.rest = rest([b for _, b in self.parts])
        if hasattr(self.rest, "set_basis_levels"):
            for (_, b), sizes in zip(self.parts, level_sizes):
                self.rest.set_basis_levels(b, [0] * levels + list(sizes[levels:]))

    def __getstate__(self) -> dict:
        # (torch's lost the two optimizers and their tensors: a deep copy of a MultiscaleOptimizer failed)
        return _with_attributes(self, super().__getstate__())

    @property
    def last_notice(self) -> str | None:
        return getattr(self.rest, "last_notice", None)

    @property
    def fallback_count(self) -> int:
        return getattr(self.rest, "fallback_count", 0)

    def state_bytes(self) -> int:
        """Both optimizers' per-coordinate state (tensors only)."""
        def held(opt):
            return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                       if isinstance(t, torch.Tensor) and t.dim() > 0)
        return held(self.finest) + (self.rest.state_bytes() if hasattr(self.rest, "state_bytes") else held(self.rest))

    def state_dict(self) -> dict:
        return {"finest": self.finest.state_dict(), "rest": self.rest.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"finest", "rest"}:
            raise ValueError("this state dict was not saved by a LevelSplit (it needs 'finest' and 'rest')")
        self.finest.load_state_dict(state_dict["finest"])
        self.rest.load_state_dict(state_dict["rest"])

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        loss = evaluate_closure(closure) if closure is not None else loss
        for f, n, (a, b) in zip(self.flats, self.n_finest, self.parts):
            a.zero_()  # after the steps they hold the updates alone, as MultiscaleOptimizer's coefficients do
            b.zero_()
            a.grad, b.grad = (None, None) if f.grad is None else (f.grad[:n].clone(), f.grad[n:].clone())
        self.finest.step()
        if loss is not None and isinstance(self.rest, LearnedOptimizer):
            self.rest.step(loss=loss)
        else:
            self.rest.step()
        for f, n, (a, b) in zip(self.flats, self.n_finest, self.parts):
            f[:n] += a
            f[n:] += b
        return loss


def _moved_level(state: torch.Tensor, shape: torch.Size, to: torch.Size) -> torch.Tensor:
    """One level's state (layers, coordinates, units), its coordinates of ``shape`` (..., H, W), as the
    state of coordinates of ``to`` (same leading dims): the same where the shapes agree, else nearest."""
    if tuple(shape) == tuple(to):
        return state
    layers, _, units = state.shape
    *lead, h, w = shape
    grid = state.reshape(layers, -1, h, w, units).permute(0, 1, 4, 2, 3).reshape(1, -1, h, w)
    grid = F.interpolate(grid.float(), size=tuple(to[-2:]), mode="nearest").to(state.dtype)
    return grid.reshape(layers, -1, units, *to[-2:]).permute(0, 1, 3, 4, 2).reshape(layers, -1, units)


def multiscale_problem(problem: Problem, levels: int | None = None, coarsest: int = COARSEST) -> Problem:
    """The same problem with image parameters replaced by multi-scale coefficients (for meta-training).

    The coefficients start at zero (x = x₀) and the loss is f(x₀ + Σ_k up(z_k)).  The problem's
    projection (e.g. clamping to [0, 1]) is applied to the image, and what it changed is folded into
    z_0 (full resolution), so the image follows exactly the path ``MultiscaleOptimizer`` takes.
    """
    x0 = [p.detach() for p in problem.params]
    counts, shapes, params = [], [], []
    for x in x0:
        s = level_shapes(x.shape, levels if levels is not None else auto_levels(*x.shape[-2:], coarsest))
        counts.append(len(s))
        shapes.append(s)
        params += [torch.zeros(shape, dtype=x.dtype, device=x.device) for shape in s]  # (was always on the CPU)
    bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]

    def images(zs):
        return [x + synthesize(list(zs[a:b]), tuple(x.shape[-2:])) for x, a, b in zip(x0, bounds, bounds[1:])]

    def loss(zs, t):
        return problem.loss(images(zs), t)

    project = None
    if problem.project is not None:
        def project(zs):
            xs = images(zs)
            out = list(zs)
            for x, q, a in zip(xs, problem.project(xs), bounds):
                out[a] = zs[a] + (q - x)
            return out

    groups = [g for g, n in zip(problem.groups, counts) for _ in range(n)]
    levels = [k for n in counts for k in range(n)]
    return Problem(params, loss, groups=groups, project=project, info={**problem.info, "levels": counts},
                   count=problem.count, levels=levels)
