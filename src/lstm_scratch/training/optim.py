"""Optimizers, learning-rate schedules and gradient clipping over ONE flat parameter buffer.

Every optimizer updates a 1-D parameter array in place from a gradient array of the same
shape and dtype (float32 or float64). State arrays have the parameters' dtype, and each step
works in one scratch buffer allocated once, so nothing is upcast and nothing large is
allocated per step. The update rules follow ``torch.optim`` (SGD with dampening 0 and no
Nesterov, Adam and AdamW without amsgrad). The gradient array is never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lstm_scratch.errors import CheckpointError, ConfigError
from lstm_scratch.model.backend import adam_kernel

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class OptimizerConfig:
    """Optimizer choice and hyper-parameters (``lr`` is the base rate fed to the schedule).

    The fields that TrainConfig also has carry the same names: ``TrainConfig.pick`` fills them.
    """

    optimizer: str = "adamw"
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0


def _require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with the one-line ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def validate_optimizer_config(config: OptimizerConfig) -> None:
    """Raise :class:`ConfigError` (one line) if the configuration cannot work."""
    valid = ", ".join(OPTIMIZERS)
    name = config.optimizer
    _require(name in OPTIMIZERS, f"unknown optimizer {name!r} (valid: {valid})")
    _require(config.lr > 0, f"learning rate must be positive, got {config.lr}")
    betas_ok = len(config.betas) == 2 and all(0.0 <= b < 1.0 for b in config.betas)
    _require(betas_ok, f"betas must be two numbers in [0, 1), got {config.betas}")
    _require(config.eps > 0, f"eps must be positive, got {config.eps}")
    _require(config.weight_decay >= 0, f"weight decay must be >= 0, got {config.weight_decay}")
    _require(config.momentum >= 0, f"momentum must be >= 0, got {config.momentum}")


class FlatOptimizer:
    """Base of the optimizers: shape/dtype checks, the scratch buffer, state save and load.

    Subclasses implement ``step(params, grads, lr)``, updating ``params`` in place.
    """

    _state_names: tuple[str, ...] = ()

    compiled = True  # use compiled kernels where there are any (numba installed)

    def __init__(self, config: OptimizerConfig, num_params: int, dtype: np.dtype) -> None:
        self.config = config
        self.num_params = num_params
        self.dtype = np.dtype(dtype)
        self.t = 0
        self._scratch = np.zeros(num_params, dtype=self.dtype)
        self._state = {n: np.zeros(num_params, dtype=self.dtype) for n in self._state_names}

    def _check(self, params: np.ndarray, grads: np.ndarray) -> None:
        for what, a in (("params", params), ("grads", grads)):
            if a.shape != (self.num_params,) or a.dtype != self.dtype:
                raise ValueError(
                    f"{what} must have shape ({self.num_params},) and dtype {self.dtype}, "
                    f"got {a.shape} {a.dtype}"
                )

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Copies of the state arrays (e.g. Adam moments)."""
        return {name: a.copy() for name, a in self._state.items()}

    def state_meta(self) -> dict:
        """Plain-JSON state: optimizer name and number of steps taken."""
        return {"name": self.config.optimizer, "step": self.t}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict) -> None:
        """Restore what :meth:`state_tensors` / :meth:`state_meta` returned.

        Raises :class:`CheckpointError` if the saved state does not fit this optimizer.
        """
        name, step, want = meta.get("name"), meta.get("step"), (self.num_params,)
        problem = None
        if name != self.config.optimizer:
            problem = f"it is for {name!r}, not {self.config.optimizer!r}"
        elif not isinstance(step, int) or isinstance(step, bool) or step < 0:
            problem = f"invalid step count {step!r}"
        elif set(tensors) != set(self._state):
            problem = f"tensors {sorted(tensors)}, expected {sorted(self._state)}"
        elif any(a.shape != want or a.dtype != self.dtype for a in tensors.values()):
            problem = f"tensors must have shape {want} and dtype {self.dtype}"
        if problem is not None:
            raise CheckpointError(f"cannot restore the optimizer state: {problem}")
        for key, a in tensors.items():
            np.copyto(self._state[key], a)
        self.t = step

    def _grad_with_l2(self, params: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """The scratch buffer filled with ``grads + weight_decay * params``."""
        s = self._scratch
        wd = self.config.weight_decay
        if wd != 0:
            np.multiply(params, wd, out=s)
            s += grads
        else:
            np.copyto(s, grads)
        return s


class SGD(FlatOptimizer):
    """torch.optim.SGD (dampening 0, nesterov False); weight decay is L2 added to the grad."""

    def __init__(self, config: OptimizerConfig, num_params: int, dtype: np.dtype) -> None:
        self._state_names = ("momentum_buffer",) if config.momentum != 0 else ()
        super().__init__(config, num_params, dtype)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """One in-place update of ``params`` with learning rate ``lr``."""
        self._check(params, grads)
        g = self._grad_with_l2(params, grads)
        if self.config.momentum != 0:
            buf = self._state["momentum_buffer"]
            if self.t == 0:
                np.copyto(buf, g)
            else:
                buf *= self.config.momentum
                buf += g
            np.multiply(buf, float(lr), out=g)
        else:
            g *= float(lr)
        params -= g
        self.t += 1


class Adam(FlatOptimizer):
    """torch.optim.Adam (amsgrad False); weight decay is L2 added to the grad."""

    _state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """One in-place update of ``params`` with learning rate ``lr``."""
        self._check(params, grads)
        lr = float(lr)
        beta1, beta2 = self.config.betas
        wd = self.config.weight_decay
        m, v = self._state["exp_avg"], self._state["exp_avg_sq"]
        self.t += 1
        kernel = adam_kernel() if self.compiled else None
        if kernel is not None:  # the same update in one compiled pass
            scalar = self.dtype.type
            kernel(
                params,
                grads,
                m,
                v,
                scalar(beta1),
                scalar(beta2),
                scalar(self.config.eps),
                scalar(wd),
                self.decoupled,
                scalar(1.0 - lr * wd),
                scalar(1.0 - beta2),
                scalar(math.sqrt(1.0 - beta2**self.t)),
                scalar(lr / (1.0 - beta1**self.t)),
            )
            return
        if self.decoupled:
            if wd != 0:
                params *= 1.0 - lr * wd
            np.copyto(self._scratch, grads)
            s = self._scratch
        else:
            s = self._grad_with_l2(params, grads)
        # m = beta1 * m + (1 - beta1) * g, written as g + beta1 * (m - g) to stay in place.
        m -= s
        m *= beta1
        m += s
        # v = beta2 * v + (1 - beta2) * g * g; the scratch gradient is not needed after this.
        np.multiply(s, s, out=s)
        s *= 1.0 - beta2
        v *= beta2
        v += s
        bias_correction1 = 1.0 - beta1**self.t
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**self.t)
        np.sqrt(v, out=s)
        s /= bias_correction2_sqrt
        s += self.config.eps
        np.divide(m, s, out=s)
        s *= lr / bias_correction1
        params -= s


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay ``params *= 1 - lr * weight_decay``."""

    decoupled = True


_CLASSES: dict[str, type[FlatOptimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(
    config: OptimizerConfig, num_params: int, dtype: np.dtype, compiled: bool = True
) -> FlatOptimizer:
    """Build the optimizer named by ``config`` for ``num_params`` parameters of ``dtype``;
    ``compiled=False`` keeps to the NumPy path (the reference backend)."""
    validate_optimizer_config(config)
    _require(num_params >= 1, f"the number of parameters must be positive, got {num_params}")
    dtype = np.dtype(dtype)
    _require(dtype in _DTYPES, f"parameters must be float32 or float64, got {dtype}")
    optimizer = _CLASSES[config.optimizer](config, num_params, dtype)
    optimizer.compiled = compiled
    return optimizer


@dataclass
class ScheduleConfig:
    """Learning-rate schedule. ``total_steps`` is needed by "cosine" (or ``total_seconds``, for a
    cosine that follows elapsed time), ``step_size`` by "step".

    The fields that TrainConfig also has carry the same names: ``TrainConfig.pick`` fills them.
    """

    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    total_seconds: float | None = None  # a cosine over elapsed time, not steps
    min_lr_ratio: float = 0.1
    step_size: int | None = None
    gamma: float = 0.5


def validate_schedule(schedule: ScheduleConfig) -> None:
    """Raise :class:`ConfigError` (one line) if the schedule cannot work."""
    kind, warmup, total = schedule.schedule, schedule.warmup_steps, schedule.total_steps
    valid = ", ".join(SCHEDULES)
    _require(kind in SCHEDULES, f"unknown learning-rate schedule {kind!r} (valid: {valid})")
    _require(warmup >= 0, f"warmup steps must be >= 0, got {warmup}")
    if kind == "cosine" and schedule.total_seconds is not None:
        seconds = schedule.total_seconds
        _require(seconds > 0, f"a cosine over time needs a positive duration, got {seconds}")
    elif kind == "cosine":
        total_ok = total is not None and total > warmup
        _require(total_ok, f"cosine needs total steps ({total}) > warmup steps ({warmup})")
    if kind == "cosine":
        ratio = schedule.min_lr_ratio
        _require(0.0 <= ratio <= 1.0, f"min lr ratio must be in [0, 1], got {ratio}")
    if kind == "step":
        size = schedule.step_size
        _require(size is not None and size >= 1, f"step schedule needs step size >= 1, got {size}")
        _require(schedule.gamma > 0, f"step schedule gamma must be positive, got {schedule.gamma}")


def lr_at(step: int, base_lr: float, schedule: ScheduleConfig, elapsed: float = 0.0) -> float:
    """The learning rate for ``step`` (counted from 0), which begins ``elapsed`` seconds into
    the run.

    Warmup (any kind): ``base_lr * (step + 1) / (warmup_steps + 1)`` for step < warmup_steps.
    Then "constant": ``base_lr``; "cosine": cosine from ``base_lr`` at the end of warmup down
    to ``min_lr_ratio * base_lr`` at ``total_steps``, constant after (with ``total_seconds``:
    from ``base_lr`` at 0 s down to the same floor at ``total_seconds`` of ``elapsed``); "step":
    ``base_lr * gamma ** (step // step_size)``.
    """
    validate_schedule(schedule)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < schedule.warmup_steps:
        return base_lr * (step + 1) / (schedule.warmup_steps + 1)
    if schedule.schedule == "cosine":
        progress = _cosine_progress(step, elapsed, schedule)  # 0 -> 1
        min_lr = schedule.min_lr_ratio * base_lr
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule.schedule == "step":
        assert schedule.step_size is not None
        return base_lr * schedule.gamma ** (step // schedule.step_size)
    return float(base_lr)


def _cosine_progress(step: int, elapsed: float, schedule: ScheduleConfig) -> float:
    """How far along the cosine is, from 0 to 1: by elapsed time, or by steps after warmup."""
    if schedule.total_seconds is not None:
        return min(1.0, max(elapsed, 0.0) / schedule.total_seconds)
    assert schedule.total_steps is not None
    span = schedule.total_steps - schedule.warmup_steps
    return min(1.0, (step - schedule.warmup_steps) / span)


def clip_grad_norm_(grads: np.ndarray, max_norm: float) -> float:
    """Scale ``grads`` in place so its global L2 norm is at most ``max_norm``; return the norm.

    As torch.nn.utils.clip_grad_norm_: the factor is ``max_norm / (norm + 1e-6)`` when that
    is below 1. Unlike torch, a non-finite norm leaves ``grads`` untouched; the caller should
    check the returned norm and skip the step.
    """
    _require(max_norm > 0, f"gradient clipping norm must be positive, got {max_norm}")
    norm = float(np.linalg.norm(grads))
    if math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            grads *= coef
    return norm


def clip_grad_value_(grads: np.ndarray, clip: float) -> None:
    """Clamp every gradient into ``[-clip, clip]`` in place (NaN stays NaN)."""
    _require(clip > 0, f"gradient clipping value must be positive, got {clip}")
    np.clip(grads, -clip, clip, out=grads)
