"""``LearnedOptimizer``: the meta-trained LSTM as a drop-in ``torch.optim.Optimizer``.

    opt = LearnedOptimizer(model.parameters(), weights=weights_path("mnist"))  # a shipped file, or any path
    for batch in data:
        opt.zero_grad(); loss = model_loss(batch); loss.backward(); opt.step()

Each coordinate's LSTM state lives in ``opt.state[p]`` as ``h`` and ``c`` of shape
(num_layers, p.numel(), hidden) (and, for a network with moment inputs, ``m`` and ``v`` of shape
(p.numel(),)), so ``state_dict`` / ``load_state_dict`` carry it (with the parameter's ``shape``, which
the load checks).  Parameter groups may name the network that serves them (``{"params": ..., "net": "conv"}``).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Iterable

import torch
from torch import nn

from .network import INT8_STEPS, LSTMOptimizerNet, coordinate_levels, finite_square, first_rms_scale, loss_change
from .preprocessing import sanitize
from .weights import load_learned


def evaluate_closure(closure):
    """``torch.optim``'s closure protocol: re-evaluate the loss with gradients on, if given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LearnedOptimizer(torch.optim.Optimizer):
    """Coordinatewise LSTM optimizer.

    Args:
        params: parameters or parameter groups; a group's ``net`` picks the network (default
            "default", or the only network when the weights hold one).
        weights: path of a safetensors file written by ``save_learned``.
        nets: networks to use instead of ``weights`` (e.g. during meta-training).
        lr: multiplier on the learned update (None or 1.0 = as trained).
        state_dtype: storage dtype of the LSTM state; float16 or bfloat16 halves its memory (80 numbers
            per coordinate for the 2×20 LSTM: 320 B in float32, 160 B in 16 bits).  ``torch.int8``
            keeps h, which always lies in (-1, 1), in steps of 1/127 and c in float16: 120 B.
        fallback_lr: step size of the fallback used where the LSTM proposes a non-finite update:
            Adam's first step from fresh state, i.e. ``-fallback_lr · sign(g)`` (times the group's
            lr multiplier, as the learned step).
        input_scale: multiplies the gradients the LSTM sees (not the update).  For a loss whose
            gradients shrink in a known way on bigger problems (a per-pixel mean loss on a bigger
            image), it maps them back to the scale the LSTM was trained on.
    """

    def __init__(
        self,
        params: Iterable,
        weights: str | os.PathLike | None = None,
        nets: dict[str, LSTMOptimizerNet] | None = None,
        lr: float | None = None,
        state_dtype: torch.dtype = torch.float32,
        fallback_lr: float = 1e-3,
        input_scale: float = 1.0,
    ):
        if (weights is None) == (nets is None):
            raise ValueError("LearnedOptimizer needs exactly one of weights= or nets=")
        if lr is not None:
            _check_lr(lr)
        if not (_is_real(fallback_lr) and 0 < fallback_lr < math.inf):
            raise ValueError(f"fallback_lr must be positive and finite, got {fallback_lr}")
        loaded = load_learned(weights) if weights is not None else dict(nets)
        default_net = next(iter(loaded)) if len(loaded) == 1 else "default"
        super().__init__(params, dict(lr=1.0 if lr is None else float(lr), net=default_net))
        for group in self.param_groups:
            if group["net"] not in loaded:
                raise ValueError(f"parameter group asks for network {group['net']!r}; "
                                 f"the optimizer has {sorted(loaded)}")
        self.nets = nn.ModuleDict(loaded)
        if weights is not None:  # networks passed in stay the caller's: freezing them stopped meta-training
            for p in self.nets.parameters():
                p.requires_grad_(False)
        if state_dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8):
            raise ValueError(f"state_dtype must be a float dtype or torch.int8, got {state_dtype}")
        self.state_dtype = state_dtype
        self.fallback_lr = float(fallback_lr)
        if not (_is_real(input_scale) and 0 < input_scale < math.inf):
            raise ValueError(f"input_scale must be positive and finite, got {input_scale}")
        self.input_scale = float(input_scale)
        self.last_notice: str | None = None
        self.fallback_count = 0  # coordinates that needed the fallback, over the optimizer's life

    def __getstate__(self) -> dict:
        # torch's keeps only defaults, state and param_groups; a deepcopy or pickle needs the
        # networks and settings too (its hooks stay behind, as torch's do).
        # (not what shadows a method: an lr scheduler's wrapper of step, bound to the original)
        return {**super().__getstate__(), **{k: v for k, v in self.__dict__.items()
                                             if not k.startswith("_") and not hasattr(type(self), k)}}

    def add_param_group(self, param_group: dict) -> None:
        """torch's, plus checks: a group's lr multiplier must be positive and finite, and the LSTM
        works on real coordinates only."""
        if not isinstance(param_group, dict):
            return super().add_param_group(param_group)  # torch's TypeError
        if param_group.get("lr", 1.0) is None:  # as in the constructor: None is the multiplier 1 (as trained)
            param_group = {**param_group, "lr": 1.0}
        if "lr" in param_group:
            _check_lr(param_group["lr"])
            param_group = {**param_group, "lr": float(param_group["lr"])}
        params = param_group["params"]
        if not isinstance(params, (torch.Tensor, set)):  # a set is left for torch to refuse (no order)
            params = list(params)  # a generator can be read once: keep what was read
        listed = [params] if torch.is_tensor(params) else params
        if not isinstance(listed, set):  # torch takes (name, tensor) pairs too: check the tensors
            listed = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in listed]
        if any(torch.is_tensor(p) and p.is_complex() for p in listed):
            # (torch.view_as_real(p) itself is a non-leaf view, which torch refuses to optimize)
            raise ValueError("LearnedOptimizer does not support complex parameters; keep the parameter real, "
                             "p = nn.Parameter(torch.view_as_real(z)), and use torch.view_as_complex(p)")
        if any(torch.is_tensor(p) and not p.is_complex() and not p.is_floating_point() for p in listed):
            # an integer parameter can only get a .grad by hand; its update would be truncated silently
            raise ValueError("LearnedOptimizer steps floating-point parameters only, got "
                             f"{sorted({str(p.dtype) for p in listed if torch.is_tensor(p) and not p.is_floating_point()})}")
        if not isinstance(listed, set) and len({id(p) for p in listed}) != len(listed):
            # torch only warns; here the update would be applied twice and the LSTM state overwritten
            raise ValueError("a parameter appears twice in this parameter group")
        nets = getattr(self, "nets", None)  # None while __init__ adds the first groups (it checks them)
        if nets is not None and param_group.get("net", self.defaults["net"]) not in nets:
            raise ValueError(f"parameter group asks for network {param_group['net']!r}; "
                             f"the optimizer has {sorted(nets)}")
        super().add_param_group({**param_group, "params": params})

    def set_basis_levels(self, param: torch.Tensor, level_sizes: list[int]) -> None:
        """Declare ``param`` (flattened) as consecutive runs of coordinates from the levels 0, 1, ...
        of a multi-scale basis, ``level_sizes[k]`` of level k (``MultiscaleOptimizer`` does this).
        Networks with level inputs see each coordinate's level; the rest ignore it.  Parameters
        never declared are level 0."""
        if not any(param is q for g in self.param_groups for q in g["params"]):
            raise ValueError("set_basis_levels: the parameter is not optimized by this optimizer")
        sizes = [int(n) for n in level_sizes]
        if any(n < 0 for n in sizes) or sum(sizes) != param.numel():
            raise ValueError(f"set_basis_levels: level sizes {sizes} do not add up to the parameter's "
                             f"{param.numel()} coordinates")
        self.state[param]["level_sizes"] = sizes

    def state_bytes(self) -> int:
        """Bytes of optimizer state held now: every coordinate's LSTM h and c (and moments m, v)."""
        return sum(t.numel() * t.element_size() for st in self.state.values() for t in st.values()
                   if isinstance(t, torch.Tensor))

    @property
    def _c_dtype(self) -> torch.dtype:
        return torch.float16 if self.state_dtype == torch.int8 else self.state_dtype

    @property
    def _moment_dtype(self) -> torch.dtype:
        # Reduced-precision state keeps the moments in bfloat16: v (a mean of g²) needs float32's
        # exponent range, which float16 lacks.  Its 8-bit mantissa still resolves the decays of
        # 0.95 (a step moves a moment by 5% of its distance to g or g²).
        return self.state_dtype if self.state_dtype in (torch.float32, torch.float64) else torch.bfloat16

    @property
    def _storage_dtypes(self) -> tuple[tuple[str, torch.dtype], ...]:
        """Each per-coordinate state tensor's name and the dtype it is stored in."""
        return (("h", self.state_dtype), ("c", self._c_dtype), ("m", self._moment_dtype), ("v", self._moment_dtype))

    def load_state_dict(self, state_dict: dict) -> None:
        """``torch.optim``'s load, keeping the LSTM state in this optimizer's storage dtypes.

        torch casts loaded state to each parameter's dtype, which would turn an int8 h (h·127 as
        stored) into float32 values up to 127 and silently widen a 16-bit state.  The state is
        converted to this optimizer's dtypes first (rescaling int8 h), and restored to them after.
        Both happen inside torch's load, as hooks around it: after the user's load pre-hooks (so the
        checks see what they returned) and before the user's post-hooks (so these see the state as
        it will be, and what they change stays)."""
        # The basis levels describe the parameters, not the run: a state saved without them (an older
        # file, another optimizer) keeps the levels declared here.
        declared = {p: st["level_sizes"] for p, st in self.state.items() if "level_sizes" in st}
        matched: list[tuple[object, torch.Tensor]] = []  # (saved id, parameter), as torch pairs them
        converted: dict = {}

        def convert(_, state_dict: dict) -> dict:
            nonlocal converted
            state_dict = dict(state_dict)
            if any("net" not in g for g in state_dict.get("param_groups", [])):
                # e.g. torch.optim.Adam's: say so, rather than that it asks for a network None
                raise ValueError("the state dict's parameter groups name no network: it was not saved by a "
                                 "LearnedOptimizer")
            unknown = sorted({g.get("net") for g in state_dict.get("param_groups", [])} - set(self.nets))
            if unknown:  # e.g. an MNIST optimizer's state loaded into a CIFAR one: fail now, not at step()
                raise ValueError(f"the state dict's parameter groups use network(s) {unknown}; "
                                 f"this optimizer has {sorted(self.nets)}")
            converted = {
                key: {**st, **{name: _convert_state(st[name], dtype) for name, dtype
                              in self._storage_dtypes if isinstance(st.get(name), torch.Tensor)}}
                for key, st in state_dict["state"].items()}
            state_dict["state"] = converted
            saved_groups = state_dict.get("param_groups", [])
            if [len(g["params"]) for g in saved_groups] == [len(g["params"]) for g in self.param_groups]:
                matched[:] = [(i, p) for sg, g in zip(saved_groups, self.param_groups)
                              for i, p in zip(sg["params"], g["params"])]
                nets = [self.nets[g["net"]] for sg, g in zip(saved_groups, self.param_groups) for _ in g["params"]]
                for k, ((i, p), net) in enumerate(zip(matched, nets)):
                    # torch would take any shape and the LSTM states would mix
                    _check_state_fits(converted.get(i, {}), p, k, net)
            # (otherwise torch's own load refuses the groups, with its message)
            return state_dict

        def restore(_) -> None:
            # torch cast every floating-point tensor to its parameter's dtype: a float32 h rounded to
            # float16, and a first_rms grad_scale of 1e5 overflowed to inf.  Put back the saved tensors
            # as they were (in this optimizer's storage dtypes), on the parameter's device.
            for i, p in matched:
                for name, value in converted.get(i, {}).items():
                    if torch.is_tensor(value) and name != "step":
                        self.state[p][name] = value.to(device=p.device, copy=True)
            for p, sizes in declared.items():
                self.state[p].setdefault("level_sizes", sizes)

        handles = [self.register_load_state_dict_pre_hook(convert),  # appended: after the user's
                   self.register_load_state_dict_post_hook(restore, prepend=True)]
        try:
            super().load_state_dict(state_dict)
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One learned update of every parameter that has a gradient (``closure``: re-evaluates the
        loss first, as in ``torch.optim``; its loss is returned).  ``last_notice`` says whether the
        non-finite guard had to step in.

        Networks with loss inputs need the loss at the current parameters: from ``closure``, or
        given as ``loss`` by a caller that computed it already."""
        loss = evaluate_closure(closure) if closure is not None else loss
        value = None  # read only where a network needs it: on a GPU, float() waits for the device
        if any(self.nets[g["net"]].config.loss_inputs for g in self.param_groups):
            if loss is None:
                raise ValueError("this learned optimizer's network takes loss inputs: call step(closure) "
                                 "or step(loss=<the loss at the current parameters>)")
            value = float(loss.detach() if torch.is_tensor(loss) else loss)
        self.last_notice = None
        devices = {p.device for g in self.param_groups for p in g["params"] if p.grad is not None}
        # Checked before anything moves: the networks follow the parameters to their device.
        if any(d.type == "meta" for d in devices):
            raise ValueError("LearnedOptimizer cannot step parameters on the meta device: they hold no values")
        if len(devices) > 1:
            raise ValueError(f"LearnedOptimizer steps parameters on one device at a time, got "
                             f"{sorted(map(str, devices))}: use one optimizer per device")
        if any(p.grad is not None and p.grad.is_sparse for g in self.param_groups for p in g["params"]):
            raise RuntimeError("LearnedOptimizer does not support sparse gradients (e.g. nn.Embedding(sparse=True))")
        # Batch every coordinate served by the same network into one LSTM call, whatever its group's
        # lr (which scales only the step: it must not change what the network sees, such as a shared
        # first_rms scale); a network with time inputs also batches by the steps each parameter has
        # taken (one for all, usually).
        batches: dict[tuple[str, int | None], list[tuple[torch.Tensor, float]]] = {}
        for group in self.param_groups:
            timed = self.nets[group["net"]].config.time_inputs
            for p in group["params"]:
                if p.grad is not None:
                    step = self.state[p].get("step", 0) if timed else None
                    batches.setdefault((group["net"], step), []).append((p, group["lr"]))
        nonfinite, overflowed = 0, {}
        for (net_name, step), members in batches.items():
            bad, over = self._step_batch(self.nets[net_name], [p for p, _ in members], [lr for _, lr in members],
                                         step, value)
            nonfinite += bad
            for dtype, n in over.items():
                overflowed[dtype] = overflowed.get(dtype, 0) + n
        # One notice for the whole step, counting every batch's coordinates.
        notices = [f"learned optimizer: non-finite gradient or update at {nonfinite} coordinate(s); used an Adam "
                   "step (or no step) there and reset their LSTM state"] if nonfinite else []
        notices += [f"learned optimizer: the update would overflow {dtype} at {n} coordinate(s); left them as they were"
                    for dtype, n in overflowed.items() if n]
        self.last_notice = "; ".join(notices) or None
        return loss

    def _step_batch(self, net: LSTMOptimizerNet, params: list[torch.Tensor], lrs: list[float],
                    step: int | None = None, loss: float | None = None) -> tuple[int, dict[torch.dtype, int]]:
        """Step ``params`` (each with its group's lr) through ``net`` in one call.  Returns the number of
        coordinates the non-finite guard handled and, per parameter dtype, those an update would have
        overflowed."""
        net_device = next(net.parameters()).device
        device = params[0].device
        if net_device != device:
            net.to(device)
        grads = [p.grad.reshape(-1) for p in params]
        flat = grads[0] if len(grads) == 1 else torch.cat(grads)
        h_list, c_list = [], []
        for p in params:
            st = self.state[p]
            if "h" not in st:
                st["h"], st["c"] = net.init_state(p.numel(), device=device, dtype=self._c_dtype)
                st["h"] = st["h"].to(self.state_dtype)
                # h and c have one row per coordinate whatever p's shape: kept so that a state saved
                # for another parameter of as many coordinates is refused on load
                st["shape"] = list(p.shape)
            h_list.append(st["h"])
            c_list.append(st["c"])
        h = h_list[0] if len(params) == 1 else torch.cat(h_list, dim=1)
        c = c_list[0] if len(params) == 1 else torch.cat(c_list, dim=1)

        # Which gradients are finite is decided before any scaling: a finite gradient that a scale
        # pushes past its dtype's range is a large gradient (the LSTM's inputs saturate), not a
        # non-finite one that must leave its coordinate unchanged.
        grad_ok = torch.isfinite(flat)
        first_rms = net.config.grad_normalization == "first_rms"
        if (self.input_scale != 1.0 or first_rms) and flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # scaled in float16, a large finite gradient would overflow
        if self.input_scale != 1.0:
            flat = flat * self.input_scale
        if first_rms:
            # One scale for the whole batch, fixed by the first gradients seen: a parameter whose
            # first gradient comes later joins it rather than resetting it for everyone.
            scale = next((self.state[p]["grad_scale"] for p in params
                          if self.state[p].get("grad_scale") is not None), None)
            if scale is None:
                scale = first_rms_scale(flat)
            for p in params:
                self.state[p]["grad_scale"] = scale
            if scale is not None:
                flat = flat * scale

        moments = None
        if net.config.moment_inputs:
            # A parameter without moments yet (its first step, or added later) starts from its
            # gradient: m = g, v = g², which the update leaves as they are.
            fresh = any("m" not in self.state[p] for p in params)
            g = sanitize(flat.float()) if fresh else None  # only then: this runs every step
            ms, vs, offset = [], [], 0
            for p in params:
                st, n = self.state[p], p.numel()
                ms.append(st["m"] if "m" in st else g[offset : offset + n])
                vs.append(st["v"] if "v" in st else finite_square(g[offset : offset + n]))
                offset += n
            moments = net.update_moments(flat, (torch.cat([m.float() for m in ms]), torch.cat([v.float() for v in vs])))

        level = None
        if net.config.level_inputs and any("level_sizes" in self.state[p] for p in params):
            # rebuilt each step (1 byte per coordinate, next to the LSTM's 13k FLOPs) rather than kept
            # as state
            sizes = [n for p in params for n in self.state[p].get("level_sizes", [p.numel()])]
            ks = [k for p in params for k in range(len(self.state[p].get("level_sizes", [0])))]
            level = coordinate_levels(ks, sizes, device)

        change = None
        if net.config.loss_inputs:
            # the previous loss any parameter of this batch saw (none on the first step: a change of 0)
            change = loss_change(next((self.state[p]["loss"] for p in params if "loss" in self.state[p]), None), loss)

        update, (h, c) = net(flat, (h, c), moments, step, level, change)
        multiplier: torch.Tensor | float = lrs[0]
        if len(set(lrs)) > 1:  # groups with different multipliers in one batch: one per coordinate
            counts = torch.tensor([p.numel() for p in params], device=device)
            multiplier = torch.repeat_interleave(torch.tensor(lrs, dtype=update.dtype, device=device), counts)
        if len(set(lrs)) > 1 or multiplier != 1.0:
            update = update * multiplier

        # Non-finite guard: never write NaN/Inf into a parameter.
        update_ok = torch.isfinite(update)
        bad = ~(grad_ok & update_ok)
        n_bad = 0
        if bool(bad.any()):
            n_bad = int(bad.sum())
            self.fallback_count += n_bad
            # Finite gradient but broken LSTM output: take Adam's first step there, scaled by the
            # group's lr like the learned step (a schedule down to 0 stopped all but these); a
            # non-finite gradient carries no usable direction, so those coordinates stay put.
            step_size = multiplier * self.fallback_lr
            fallback = torch.where(grad_ok, -step_size * torch.sign(sanitize(flat)), torch.zeros_like(flat))
            update = torch.where(bad, fallback.to(update.dtype), update)
            h = torch.where(bad.view(1, -1, 1), torch.zeros_like(h), h)
            c = torch.where(bad.view(1, -1, 1), torch.zeros_like(c), c)
            if moments is not None:
                moments = tuple(torch.where(bad, torch.zeros_like(t), t) for t in moments)

        offset, overflowed = 0, {}
        for p in params:
            n = p.numel()
            new = p + update[offset : offset + n].view_as(p).to(p.dtype)
            # A finite update can still overflow the parameter's dtype (float16 tops out at 65504).
            nonfinite = ~torch.isfinite(new)
            if bool(nonfinite.any()):  # rare: only then look at which were finite before
                lost = nonfinite & torch.isfinite(p)
                overflowed[p.dtype] = overflowed.get(p.dtype, 0) + int(lost.sum())
                new = torch.where(lost, p, new)
            p.copy_(new)
            st = self.state[p]
            st["h"], st["c"] = h[:, offset : offset + n], c[:, offset : offset + n]
            if len(params) > 1:  # don't keep the concatenated buffer alive through views
                st["h"], st["c"] = st["h"].clone(), st["c"].clone()
            if moments is not None:
                st["m"], st["v"] = (t[offset : offset + n].to(self._moment_dtype, copy=True) for t in moments)
            if step is not None:
                st["step"] = step + 1
            if change is not None:
                st["loss"] = loss
            offset += n
        self.fallback_count += sum(overflowed.values())
        return n_bad, overflowed


def _check_state_fits(st: dict, p: torch.Tensor, index: int, net: LSTMOptimizerNet) -> None:
    """ValueError unless a loaded state has one LSTM state (and moment) per coordinate of ``p``, and
    was saved for a parameter of ``p``'s shape (where the state says; older ones do not) and for a
    network of ``net``'s layers and units."""
    for name, dim in (("h", 1), ("c", 1), ("m", 0), ("v", 0)):
        t = st.get(name)
        if torch.is_tensor(t) and (t.dim() <= dim or t.shape[dim] != p.numel()):
            raise ValueError(f"the state dict's parameter {index} has {name} of shape {tuple(t.shape)}, which does "
                             f"not fit a parameter of {p.numel()} coordinate(s): it was saved for another model "
                             "or another order of parameters")
    layers, units = net.config.num_layers, net.config.hidden_size
    for name in ("h", "c"):
        t = st.get(name)
        if torch.is_tensor(t) and (t.dim() != 3 or t.shape[0] != layers or t.shape[2] != units):
            raise ValueError(f"the state dict's parameter {index} has LSTM state {name} of shape {tuple(t.shape)}, "
                             f"saved by a network of other layers or units than this optimizer's ({layers} layers "
                             f"x {units} units)")
    shape = st.get("shape")
    if shape is not None and tuple(shape) != tuple(p.shape):
        raise ValueError(f"the state dict's parameter {index} was saved for a parameter of shape {tuple(shape)}, "
                         f"not {tuple(p.shape)}: it was saved for another model or another order of parameters")


def _is_real(x) -> bool:
    """A real number (int, float, numpy's scalars), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_lr(lr) -> None:
    if not _is_real(lr) or not 0 < lr < math.inf:
        raise ValueError(f"lr multiplier must be a positive, finite number, got {lr!r}")


def _convert_state(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LSTM state in another storage dtype; int8 holds h·INT8_STEPS (see network.INT8_STEPS)."""
    if t.dtype == dtype:
        return t
    if t.dtype == torch.int8:
        t = t.float() / INT8_STEPS
    if dtype == torch.int8:
        return (t.float() * INT8_STEPS).round().clamp(-INT8_STEPS, INT8_STEPS).to(torch.int8)
    return t.to(dtype)
