"""The coordinatewise LSTM optimizer network m(∇f, h; φ).

One small LSTM, shared by every coordinate: the coordinates of all parameters form the batch
dimension, so each coordinate keeps its own hidden state while φ stays tiny (a few thousand
numbers).  The update is ``output_scale · Linear(h)``; θ ← θ + update.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .preprocessing import preprocess_gradients, sanitize

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, N, hidden_size)
Moments = tuple[torch.Tensor, torch.Tensor]  # (m, v), each (N,): running means of g and g²
# An int8 h (it always lies in (-1, 1)) is stored in steps of 1/INT8_STEPS.
INT8_STEPS = 127
GRAD_NORMALIZATIONS = ("none", "first_rms")
# Time inputs: tanh(t / s) for these s, t the number of steps taken before this one.  Saturating, so
# a run longer than the training horizon sees values close to those it was trained on.
TIME_SCALES = (3.0, 10.0, 30.0, 100.0)
# Level inputs: a one-hot of the coordinate's level in the multi-scale image basis (0: pixels,
# k: 2^k times coarser), levels from LEVEL_INPUTS - 1 up sharing the last entry.  Level k means the
# same neighbourhood (2^k px) at every image size, so levels 0-3 are those of the 64 px training
# crops wherever they appear; the coarser ones of large images count as the coarsest seen.
LEVEL_INPUTS = 4
# Loss inputs: tanh(s · log(f_t / f_{t-1})) for these s, the same for every coordinate.  The
# per-coordinate LSTM otherwise cannot tell whether the last step raised the loss (an overshoot) or
# how fast it is still falling; the ratio is free of the loss's scale, so it means the same at
# every image size and style.  The scales resolve early drops of ~25% per step and late ones of 0.1%.
LOSS_SCALES = (1.0, 10.0, 100.0)


def loss_change(previous: float | None, now: float | None) -> float:
    """log(now / previous), or 0 where either is missing, non-finite or not positive (the first
    step; a loss that cannot be compared this way)."""
    if previous is None or now is None:
        return 0.0
    previous, now = float(previous), float(now)
    if not (math.isfinite(previous) and math.isfinite(now) and previous > 0 and now > 0):
        return 0.0
    return math.log(now / previous)


def first_rms_scale(grad: torch.Tensor) -> torch.Tensor | None:
    """1 / RMS of a gradient, or None while the gradient is (numerically) zero."""
    g = grad.detach().float()
    g = g[torch.isfinite(g)]
    if g.numel() == 0:
        return None
    rms = g.pow(2).mean().sqrt()
    if not (1e-30 < float(rms) < float("inf")):
        return None
    return 1.0 / rms


def finite_square(g: torch.Tensor) -> torch.Tensor:
    """g², capped where it would overflow (|g| > 1.8e19 in float32), at a value bfloat16 holds too:
    an infinite v would meet another in the running mean's lerp and give NaN."""
    return g.square().clamp_max_(torch.finfo(torch.bfloat16).max)  # (in place: no second tensor)


@dataclass(frozen=True)
class LSTMOptimizerConfig:
    hidden_size: int = 20
    num_layers: int = 2
    preprocess: bool = True  # Appendix-A log/sign preprocessing; False feeds the raw gradient
    p: float = 10.0
    output_scale: float = 0.1
    # "none": the LSTM sees raw gradients (the paper).  "first_rms": gradients are divided by the
    # root-mean-square of the first gradient of the run, making the optimizer invariant to the
    # loss's scale (new styles, other resolutions) while keeping how gradients shrink over time.
    grad_normalization: str = "none"
    # Two more inputs besides the preprocessed gradient (as in RNNprop, Lv et al. 2017): m/√v and
    # g/√v from running means m of g and v of g² (decays beta1, beta2; they start at g and g², so
    # no bias correction).  Both are scale-free and bounded, and they give the LSTM Adam's
    # per-coordinate normalisation for 2 stored numbers per coordinate instead of 80 of its state.
    moment_inputs: bool = False
    beta1: float = 0.95
    beta2: float = 0.95
    # Inputs that tell the LSTM how many steps it has taken (``TIME_SCALES``), the same for every
    # coordinate: a step-dependent schedule without having to count in its state.
    time_inputs: bool = False
    # Inputs that tell the LSTM which level of the multi-scale basis a coordinate belongs to
    # (``LEVEL_INPUTS``): a coarse coefficient moves a whole neighbourhood, so it may want other
    # step sizes and momentum than a pixel.  Coordinates outside a basis count as level 0.
    level_inputs: bool = False
    # Inputs that tell every coordinate how the loss changed over the last step (``LOSS_SCALES``):
    # global feedback a coordinatewise optimizer lacks, e.g. to back off after an overshoot.
    loss_inputs: bool = False
    # The output layer.  0: the paper's linear map from the top layer's h.  K > 0: a K-unit ReLU layer
    # that reads the top h and, past the recurrence, the LSTM's own inputs, then a linear map.  It
    # stores nothing (the state stays 80 numbers per coordinate) and costs about 2·K·(H + inputs)
    # FLOPs per coordinate next to the LSTM's 13k; it lets the update use m/√v and the gradient
    # directly instead of through the bounded, int8-stored h.
    head_hidden: int = 0
    # Global averaging cells (the paper's section 3.2, "LSTM-GAC"): the last ``global_cells`` units of
    # each layer carry into the next step the mean of their h over every coordinate the network
    # steps together, so coordinates can share e.g. the overall gradient scale.  The mean replaces
    # the carried h only; the unit's own h still feeds the next layer and the output at its step, so
    # the no-grad path stays one pass over the coordinates, plus a cheap fix-up at the end.
    global_cells: int = 0

    def __post_init__(self):
        # Checked here, not where the value is first used: a config read from a weights file with a
        # mistyped value (the string "false" for preprocess is truthy; a string output_scale fails
        # only at the first step) is refused when the file loads, naming the field.
        for name in ("hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("preprocess", "moment_inputs", "time_inputs", "level_inputs", "loss_inputs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("p", "output_scale", "beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not self.p > 0:
            raise ValueError(f"p must be positive, got {self.p!r}")
        if self.grad_normalization not in GRAD_NORMALIZATIONS:
            raise ValueError(f"grad_normalization must be one of {GRAD_NORMALIZATIONS}, got {self.grad_normalization!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if isinstance(self.head_hidden, bool) or not isinstance(self.head_hidden, int) or self.head_hidden < 0:
            raise ValueError(f"head_hidden must be a whole number >= 0, got {self.head_hidden!r}")
        if (isinstance(self.global_cells, bool) or not isinstance(self.global_cells, int)
                or not 0 <= self.global_cells <= self.hidden_size):
            raise ValueError(f"global_cells must be a whole number from 0 to hidden_size ({self.hidden_size}), "
                             f"got {self.global_cells!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LSTMOptimizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown learned-optimizer config keys: {sorted(unknown)} (written by a newer "
                             "version of artopt?)")
        return cls(**d)


# Coordinates per chunk of the inference path.  CPU: about 1.3 MB of fp32 gates, which stay in
# cache.  GPU: large enough that the ~20 kernel launches per chunk cost nothing, small enough
# (320 MB of gates) that a 4096 px image fits on a small card.
CPU_CHUNK = 4096
GPU_CHUNK = 1 << 20
# Coordinates whose inputs (``features``) are computed in one go before their chunks run.  The ~20
# small element-wise ops of the inputs cost about as much per call on a 4096-coordinate chunk as on
# a large slice, and below torch's grain size (32768 elements) they run on one core: on a large
# slice they run once per 64 chunks, on every core.  A block's inputs (4 MB at 4 inputs) stay small.
FEATURE_BLOCK = 1 << 18


class LSTMOptimizerNet(nn.Module):
    def __init__(self, config: LSTMOptimizerConfig | None = None, **overrides):
        super().__init__()
        config = config or LSTMOptimizerConfig()
        if overrides:
            config = LSTMOptimizerConfig(**{**config.to_dict(), **overrides})
        self.config = config
        in_features = ((2 if config.preprocess else 1) + (2 if config.moment_inputs else 0)
                       + (len(TIME_SCALES) if config.time_inputs else 0)
                       + (LEVEL_INPUTS if config.level_inputs else 0)
                       + (len(LOSS_SCALES) if config.loss_inputs else 0))
        self.lstm = nn.LSTM(in_features, config.hidden_size, config.num_layers)
        if config.head_hidden:
            self.head = nn.Sequential(nn.Linear(config.hidden_size + in_features, config.head_hidden), nn.ReLU(),
                                      nn.Linear(config.head_hidden, 1))
        else:
            self.head = nn.Linear(config.hidden_size, 1)

    @property
    def state_numbers_per_coordinate(self) -> int:
        return 2 * self.config.num_layers * self.config.hidden_size

    def init_state(self, n: int, device=None, dtype=torch.float32) -> State:
        shape = (self.config.num_layers, n, self.config.hidden_size)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def update_moments(self, grad: torch.Tensor, moments: Moments | None) -> Moments:
        """The running means after this gradient, in float32 (``moments``: the previous ones, in any
        float dtype, or None on the first step).  They do not depend on φ: meta-training never
        differentiates through them."""
        g = sanitize(grad.detach().float())
        if moments is None:
            return g.clone(), finite_square(g)
        m, v = moments
        b1, b2 = self.config.beta1, self.config.beta2
        return torch.lerp(g, m.float(), b1), torch.lerp(finite_square(g), v.float(), b2)

    def features(self, grad: torch.Tensor, moments: Moments | None = None, step: int | None = None,
                 level: torch.Tensor | None = None, change: float | None = None) -> torch.Tensor:
        x = preprocess_gradients(grad, self.config.p) if self.config.preprocess else sanitize(grad.float()).unsqueeze(-1)
        parts = [x]
        if self.config.moment_inputs:
            if moments is None:
                raise ValueError("this network takes moment inputs: pass the moments from update_moments")
            m, v = moments
            g = sanitize(grad.float())
            # 1e-30: a coordinate whose gradient has always been 0 gets inputs 0, not NaN.
            rms = v.float().sqrt().clamp_min(1e-30)
            parts.append(torch.stack((m.float() / rms, g / rms), dim=-1))
        if self.config.time_inputs:
            if step is None:
                raise ValueError("this network takes time inputs: pass the number of steps taken so far")
            tf = torch.tanh(torch.tensor([step / s for s in TIME_SCALES], device=x.device, dtype=x.dtype))
            parts.append(tf.expand(x.shape[0], -1))
        if self.config.level_inputs:
            idx = (torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if level is None
                   else level.to(device=x.device, dtype=torch.long).clamp(0, LEVEL_INPUTS - 1))
            parts.append(torch.nn.functional.one_hot(idx, LEVEL_INPUTS).to(x.dtype))
        if self.config.loss_inputs:
            if change is None:
                raise ValueError("this network takes loss inputs: pass loss_change(previous loss, this loss)")
            lf = torch.tanh(torch.tensor([change * s for s in LOSS_SCALES], device=x.device, dtype=x.dtype))
            parts.append(lf.expand(x.shape[0], -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, grad: torch.Tensor, state: State, moments: Moments | None = None,
                step: int | None = None, level: torch.Tensor | None = None,
                change: float | None = None) -> tuple[torch.Tensor, State]:
        """grad: (N,) flattened gradients (treated as constants); returns (update (N,), new state).
        ``moments``: for a network with moment inputs, ``update_moments`` of this gradient.
        ``step``: for a network with time inputs, the number of steps taken before this one.
        ``level``: for a network with level inputs, each coordinate's basis level ((N,) integers;
        None: all 0).  ``change``: for a network with loss inputs, ``loss_change`` from the previous
        loss to the loss at the parameters this gradient was taken at.

        Differentiable (meta-training) calls take ``_differentiable``; inference takes a chunked,
        fused path that computes the same function several times faster on large images (it keeps
        each chunk of coordinates in cache instead of streaming 80 gate values per coordinate through
        memory).  Either way the LSTM costs about 13k FLOPs per coordinate per step, several times
        what a small loss network spends per pixel: that, not Python, bounds its speed.
        """
        if torch.is_grad_enabled() and self.lstm.weight_ih_l0.requires_grad:
            return self._differentiable(grad, state, moments, step, level, change)
        with torch.no_grad():
            return self._inference(grad, state, moments=moments, step=step, level=level, change=change)

    def _check_call(self, grad: torch.Tensor, state: State, moments: Moments | None,
                    level: torch.Tensor | None) -> None:
        """ValueError unless ``grad`` is (N,) and the state, moments and levels are N coordinates' worth
        on its device.  A state with more coordinates than the gradient used to come back from the
        inference path with its extra rows uninitialised (torch.empty) instead of an error."""
        if not torch.is_tensor(grad) or grad.dim() != 1:
            raise ValueError(f"the learned optimizer takes a flat gradient of shape (N,), got "
                             f"{tuple(grad.shape) if torch.is_tensor(grad) else type(grad).__name__}")
        n = grad.numel()
        if not (isinstance(state, (tuple, list)) and len(state) == 2 and all(map(torch.is_tensor, state))):
            raise ValueError("the LSTM state must be a pair of tensors (h, c)")
        want = (self.config.num_layers, n, self.config.hidden_size)
        for name, t in zip("hc", state):
            if tuple(t.shape) != want:
                raise ValueError(f"LSTM state {name} has shape {tuple(t.shape)}; a gradient of {n} coordinate(s) "
                                 f"needs (num_layers, N, hidden_size) = {want}")
            if t.device != grad.device:
                raise ValueError(f"LSTM state {name} is on {t.device}, the gradient on {grad.device}")
        if not (state[0].is_floating_point() or state[0].dtype == torch.int8) or not state[1].is_floating_point():
            raise ValueError(f"LSTM state dtypes must be float (h may be int8), got h {state[0].dtype}, "
                             f"c {state[1].dtype}")
        extra = [] if moments is None else [("moment m", moments[0]), ("moment v", moments[1])]
        extra += [] if level is None else [("level", level)]
        for name, t in extra:
            if tuple(t.shape) != (n,):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, the gradient has {n} coordinate(s)")

    def _differentiable(self, grad: torch.Tensor, state: State, moments: Moments | None = None,
                        step: int | None = None, level: torch.Tensor | None = None,
                        change: float | None = None,
                        global_mean: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """One LSTM step written out with plain tensor ops: the same function as ``nn.LSTM`` on
        this module's weights, but forward+backward runs about 2x faster on CPU for the small,
        single-step batches of meta-training (oneDNN's RNN kernel is tuned for long sequences).

        ``global_mean`` (num_layers, global_cells): for a subset of a larger batch, the global cells'
        mean over the whole batch; the carried value is that, with the gradient of the subset's own
        mean (an unbiased estimate of the whole mean's, the subset being drawn at random)."""
        self._check_call(grad, state, moments, level)
        x = inputs = self.features(grad.detach(), moments, step, level, change)
        h_in, c_in = state
        hs, cs = [], []
        for layer in range(self.config.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            b = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            h_prev = h_in[layer].to(x.dtype)
            if h_in.dtype == torch.int8:
                h_prev = h_prev / INT8_STEPS
            gates = torch.addmm(b, x, w_ih.t()) + h_prev @ w_hh.t()
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c_in[layer].to(x.dtype) + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            hs.append(self._carried_h(x, None if global_mean is None else global_mean[layer]))
            cs.append(c)
        if self.config.head_hidden:
            x = torch.cat((x, inputs), dim=-1)
        update = self.head(x).squeeze(-1) * self.config.output_scale
        return update, (torch.stack(hs), torch.stack(cs))

    def _carried_h(self, h: torch.Tensor, whole_mean: torch.Tensor | None = None) -> torch.Tensor:
        """h as carried to the next step: the global cells (the last ``global_cells`` units) replaced by
        their mean over the coordinates (``whole_mean``: the value to carry instead, see
        ``_differentiable``)."""
        k = self.config.global_cells
        if not k or h.shape[0] == 0:
            return h
        mean = h[:, -k:].mean(0)
        if whole_mean is not None:
            mean = whole_mean.to(mean.dtype) + (mean - mean.detach())
        return torch.cat((h[:, :-k], mean.expand(h.shape[0], k)), dim=1)

    def global_means(self, h: torch.Tensor) -> torch.Tensor | None:
        """(num_layers, global_cells) float32: the global cells' values in a carried state h (the same
        at every coordinate), or None without global cells or coordinates."""
        k = self.config.global_cells
        if not k or h.shape[1] == 0:
            return None
        row = h[:, 0, -k:].float()
        return row / INT8_STEPS if h.dtype == torch.int8 else row

    def _packed_weights(self, h_scale: float = 1.0):
        """Per layer (W_ih^T, W_hh^T, b) with the cell-candidate rows doubled: tanh(x) = 2σ(2x) - 1
        lets one in-place sigmoid serve all four gates.  ``h_scale`` is folded into W_hh (an int8 h
        enters the matmul as stored, 1/127 lives in the weights)."""
        H = self.config.hidden_size
        packed = []
        for layer in range(self.config.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}").detach().clone()
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}").detach().clone() * h_scale
            b = (getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")).detach().clone()
            for t in (w_ih, w_hh, b):
                t[2 * H : 3 * H] *= 2
            packed.append((w_ih.t().contiguous(), w_hh.t().contiguous(), b))
        return packed

    def _inference(self, grad: torch.Tensor, state: State, chunk: int | None = None,
                   moments: Moments | None = None, step: int | None = None,
                   level: torch.Tensor | None = None, change: float | None = None) -> tuple[torch.Tensor, State]:
        """The no-grad step.  The new state has the dtypes of ``state``: fp32, fp16/bf16, or (h only)
        int8.  Each chunk converts its slice of the state to fp32 and rounds the result back, so a
        reduced-precision state never exists in fp32 as a whole (that copying cost more than the
        LSTM itself on large images)."""
        self._check_call(grad, state, moments, level)
        H = self.config.hidden_size
        h_in, c_in = state
        n = grad.numel()
        if chunk is None:
            chunk = CPU_CHUNK if grad.device.type == "cpu" else GPU_CHUNK
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            # 0 failed with a ZeroDivisionError; a negative chunk ran no chunk and returned torch.empty
            raise ValueError(f"chunk must be a whole number >= 1, got {chunk!r}")
        h_out, c_out = torch.empty_like(h_in), torch.empty_like(c_in)
        int8_h = h_in.dtype == torch.int8
        fp32_h, fp32_c = h_out.dtype == torch.float32, c_out.dtype == torch.float32
        update = torch.empty(n, device=grad.device, dtype=torch.float32)
        packed = self._packed_weights(1.0 / INT8_STEPS if int8_h else 1.0)
        scale = self.config.output_scale
        if self.config.head_hidden:
            hidden, out = self.head[0], self.head[2]
            # (W_h^T, W_x^T, b): the hidden layer reads [h, inputs] as two matrix products, no concatenation
            w_top = hidden.weight.detach()[:, :H].t().contiguous()
            w_inputs = hidden.weight.detach()[:, H:].t().contiguous()
            b_hidden = hidden.bias.detach()
            head_w, head_b = out.weight[0].detach() * scale, out.bias.detach() * scale
        else:
            head_w, head_b = self.head.weight[0].detach() * scale, self.head.bias.detach() * scale
        scratch = None
        block = max(chunk, FEATURE_BLOCK // chunk * chunk)  # whole chunks per block
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            if scratch is None or scratch.shape[1] != e - s:
                scratch = torch.empty(3, e - s, H, device=grad.device)
            if s % block == 0:
                b0, b1 = s, min(n, s + block)
                features = self.features(grad[b0:b1], None if moments is None else (moments[0][b0:b1], moments[1][b0:b1]),
                                         step, None if level is None else level[b0:b1], change)
            x = inputs = features[s - b0 : e - b0]
            for layer, (w_ih, w_hh, b) in enumerate(packed):
                gates = torch.addmm(b, x, w_ih)
                h_prev = h_in[layer, s:e]
                gates.addmm_(h_prev if fp32_h else h_prev.float(), w_hh)
                gates.sigmoid_()
                i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
                g.mul_(2).sub_(1)
                # fp32 state: c and h are computed straight into the output state; otherwise in fp32
                # scratch, rounded once on the way out.  (h of layer 0 feeds layer 1, so it gets its
                # own scratch row.)
                c_new = c_out[layer, s:e] if fp32_c else scratch[0]
                h_new = h_out[layer, s:e] if fp32_h else scratch[1 + layer % 2]
                torch.mul(f, c_in[layer, s:e], out=c_new).addcmul_(i, g)
                # tanh(c) = 2σ(2c) - 1: this CPU build's sigmoid is about 3x faster than its tanh.
                torch.mul(c_new, 2, out=h_new).sigmoid_().mul_(2).sub_(1).mul_(o)
                if not fp32_c:
                    c_out[layer, s:e] = c_new
                if int8_h:
                    # |h| < 1, so the rounded value lies in [-127, 127]; gates is free scratch now.
                    h_out[layer, s:e] = torch.mul(h_new, INT8_STEPS, out=f).round_()
                elif not fp32_h:
                    h_out[layer, s:e] = h_new
                x = h_new
            if self.config.head_hidden:
                x = torch.addmm(b_hidden, x, w_top).addmm_(inputs, w_inputs).relu_()
            torch.add(head_b, x @ head_w, out=update[s:e])
        k = self.config.global_cells
        if k and n:
            # The global cells' carried h: their mean over all coordinates, known only after the last
            # chunk.  An int8 h is averaged as stored (steps of 1/127) and rounded back.
            carried = h_out[:, :, -k:]
            mean = carried.float().mean(1, keepdim=True)
            carried.copy_((mean.round() if int8_h else mean).expand_as(carried))
        return update, (h_out, c_out)


def coordinate_levels(levels: list[int], sizes: list[int], device=None) -> torch.Tensor:
    """Each coordinate's basis level (uint8, for ``forward``'s ``level``): ``sizes[i]`` coordinates
    of level ``levels[i]``, one run after the other."""
    return torch.repeat_interleave(torch.tensor(levels, dtype=torch.uint8, device=device),
                                   torch.tensor(sizes, device=device), output_size=sum(sizes))


def learned_update(
    nets: nn.ModuleDict | dict,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    groups: list[str],
    states: dict[str, State],
    meta_fraction: float = 1.0,
    generator: torch.Generator | None = None,
    levels: list[int] | None = None,
    loss: float | None = None,
) -> tuple[list[torch.Tensor], dict[str, State]]:
    """One functional optimizer step θ ← θ + m(∇f) for meta-training (differentiable w.r.t. φ).

    All coordinates served by one network go through it as a single batch, in parameter order;
    ``states[group]`` holds their hidden states in that same order (and ``states[group + "/grad_scale"]``
    the gradient normalization, ``states[group + "/moments"]`` the running moments,
    ``states[group + "/step"]`` the steps taken and ``states[group + "/level"]`` each coordinate's
    basis level, ``states[group + "/loss"]`` the loss of the previous step, for networks that use
    them).  ``levels``: the multi-scale basis level of each parameter (``Problem.levels``; None:
    all 0).  ``loss``: f at ``params`` (the point ``grads`` were taken at), for networks with loss
    inputs.

    ``meta_fraction < 1`` (with gradients enabled) backpropagates through a random subset of the
    coordinates only, drawn once per run from ``generator``; the others take the same update
    through the fast no-grad path.  With second derivatives dropped, the meta-gradient is a sum of
    independent per-coordinate terms, so the subset's sum scaled by N / |subset| is an unbiased
    estimate of it, at a fraction of the cost on models with many parameters.
    """
    new_params = list(params)
    new_states = dict(states)
    for group in dict.fromkeys(groups):  # unique, in order
        idx = [i for i, g in enumerate(groups) if g == group]
        flat = torch.cat([grads[i].reshape(-1) for i in idx])
        if group not in new_states:
            new_states[group] = nets[group].init_state(flat.numel(), device=flat.device)
        if nets[group].config.grad_normalization == "first_rms":
            key = f"{group}/grad_scale"
            if new_states.get(key) is None:
                new_states[key] = first_rms_scale(flat)
            if new_states[key] is not None:
                flat = flat * new_states[key]
        moments = None
        if nets[group].config.moment_inputs:
            key = f"{group}/moments"
            moments = new_states[key] = nets[group].update_moments(flat, new_states.get(key))
        step = None
        if nets[group].config.time_inputs:
            key = f"{group}/step"
            step = new_states.get(key, 0)
            new_states[key] = step + 1
        level = None
        if nets[group].config.level_inputs and levels is not None:
            key = f"{group}/level"
            if new_states.get(key) is None:
                new_states[key] = coordinate_levels([levels[i] for i in idx], [grads[i].numel() for i in idx],
                                                    flat.device)
            level = new_states[key]
        change = None
        if nets[group].config.loss_inputs:
            if loss is None:
                raise ValueError("this network takes loss inputs: pass the loss at params")
            key = f"{group}/loss"
            change = loss_change(new_states.get(key), loss)
            new_states[key] = float(loss)
        if meta_fraction < 1.0 and torch.is_grad_enabled():
            update = _subset_update(nets[group], group, flat, new_states, meta_fraction, generator, moments, step,
                                    level, change)
        else:
            update, new_states[group] = nets[group](flat, new_states[group], moments, step, level, change)
        offset = 0
        for i in idx:
            n = params[i].numel()
            new_params[i] = params[i] + update[offset : offset + n].view_as(params[i]).to(params[i].dtype)
            offset += n
    return new_params, new_states


def _subset_update(net: LSTMOptimizerNet, group: str, flat: torch.Tensor, states: dict, fraction: float,
                   generator: torch.Generator | None, moments: Moments | None = None,
                   step: int | None = None, level: torch.Tensor | None = None,
                   change: float | None = None) -> torch.Tensor:
    """The update of all coordinates, differentiable through a fixed random subset of them only."""
    n = flat.numel()
    key_idx, key_state = f"{group}/meta_idx", f"{group}/meta_state"
    if states.get(key_idx) is None:
        k = min(n, max(1, round(fraction * n)))  # (the same for n >= 1; an empty group gets an empty subset)
        states[key_idx] = torch.randperm(n, generator=generator)[:k].sort().values.to(flat.device)
        states[key_state] = net.init_state(k, device=flat.device)
    idx = states[key_idx]
    with torch.no_grad():
        update, states[group] = net._inference(flat, states[group], moments=moments, step=step, level=level,
                                               change=change)
    if idx.numel() == 0:  # an empty group: nothing to backpropagate through (and n / 0 below)
        return update
    sub_moments = None if moments is None else (moments[0][idx], moments[1][idx])
    # Global cells carry the mean over all coordinates (from the no-grad pass), not the subset's.
    sub_update, states[key_state] = net._differentiable(flat[idx], states[key_state], sub_moments, step,
                                                        None if level is None else level[idx], change,
                                                        global_mean=net.global_means(states[group][0]))
    # Same values as the no-grad path; the gradient is scaled so the estimate stays unbiased.
    scale = n / idx.numel()
    sub_update = sub_update.detach() + (sub_update - sub_update.detach()) * scale
    return update.index_put((idx,), sub_update)
