"""Tests of lstm_scratch.optim against torch.optim and torch.nn.utils."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lstm_scratch.errors import CheckpointError, ConfigError
from lstm_scratch.training import optim
from lstm_scratch.training.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from lstm_scratch.training.config import make_config
from lstm_scratch.training.optim import (
    OptimizerConfig,
    ScheduleConfig,
    clip_grad_norm_,
    clip_grad_value_,
    lr_at,
    make_optimizer,
)

N = 257
STEPS = 10
LRS = [0.01 * (1 + 0.3 * math.sin(i)) for i in range(STEPS)]

CASES = {
    "sgd": (OptimizerConfig("sgd"), lambda p, c: torch.optim.SGD([p], lr=0.1)),
    "sgd-momentum-wd": (
        OptimizerConfig("sgd", momentum=0.9, weight_decay=0.01),
        lambda p, c: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01),
    ),
    "sgd-momentum": (
        OptimizerConfig("sgd", momentum=0.5),
        lambda p, c: torch.optim.SGD([p], lr=0.1, momentum=0.5),
    ),
    "sgd-wd": (
        OptimizerConfig("sgd", weight_decay=0.05),
        lambda p, c: torch.optim.SGD([p], lr=0.1, weight_decay=0.05),
    ),
    "adam-wd": (
        OptimizerConfig("adam", betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02),
        lambda p, c: torch.optim.Adam([p], lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02),
    ),
    "adamw": (
        OptimizerConfig("adamw", weight_decay=0.1),
        lambda p, c: torch.optim.AdamW([p], lr=0.1, weight_decay=0.1),
    ),
}


def random_problem(dtype: type, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(N).astype(dtype)
    grads = [rng.standard_normal(N).astype(dtype) for _ in range(STEPS)]
    return params, grads


@pytest.fixture(params=["compiled", "numpy"])
def adam_path(request, monkeypatch):
    """Adam runs as one compiled pass when numba is there; "numpy" forces the NumPy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(optim, "adam_kernel", lambda: None)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch(case: str, adam_path) -> None:
    config, make_torch = CASES[case]
    params, grads = random_problem(np.float64)
    tparam = torch.nn.Parameter(torch.from_numpy(params.copy()))
    topt = make_torch(tparam, config)
    opt = make_optimizer(config, N, np.float64)
    for lr, grad in zip(LRS, grads, strict=True):
        before = grad.copy()
        opt.step(params, grad, lr)
        assert np.array_equal(grad, before)
        for group in topt.param_groups:
            group["lr"] = lr
        tparam.grad = torch.from_numpy(grad.copy())
        topt.step()
        np.testing.assert_allclose(params, tparam.detach().numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_keeps_dtype(case: str, adam_path) -> None:
    config, _ = CASES[case]
    params, grads = random_problem(np.float32)
    reference = params.astype(np.float64)
    opt = make_optimizer(config, N, np.float32)
    opt64 = make_optimizer(config, N, np.float64)
    for lr, grad in zip(LRS, grads, strict=True):
        opt.step(params, grad, np.float64(lr))
        opt64.step(reference, grad.astype(np.float64), lr)
    assert params.dtype == np.float32
    assert all(t.dtype == np.float32 for t in opt.state_tensors().values())
    np.testing.assert_allclose(params, reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        opt.step(params, grads[0].astype(np.float64), 0.1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_round_trip_continues_bitwise(case: str) -> None:
    config, _ = CASES[case]
    params, grads = random_problem(np.float64, seed=3)
    straight = params.copy()
    opt = make_optimizer(config, N, np.float64)
    for lr, grad in zip(LRS, grads, strict=True):
        opt.step(straight, grad, lr)

    first = make_optimizer(config, N, np.float64)
    for lr, grad in zip(LRS[:4], grads[:4], strict=True):
        first.step(params, grad, lr)
    resumed = make_optimizer(config, N, np.float64)
    resumed.load_state(first.state_tensors(), first.state_meta())
    for lr, grad in zip(LRS[4:], grads[4:], strict=True):
        resumed.step(params, grad, lr)
    assert params.tobytes() == straight.tobytes()


def test_resume_through_checkpoint_files(tmp_path: Path) -> None:
    config = OptimizerConfig("adamw", weight_decay=0.01)
    params, grads = random_problem(np.float32, seed=4)
    straight = params.copy()
    opt = make_optimizer(config, N, np.float32)
    for lr, grad in zip(LRS, grads, strict=True):
        opt.step(straight, grad, lr)

    first = make_optimizer(config, N, np.float32)
    for lr, grad in zip(LRS[:6], grads[:6], strict=True):
        first.step(params, grad, lr)
    save_checkpoint(tmp_path, {"params": params}, {}, first.state_tensors(), first.state_meta())
    weights, _ = load_checkpoint(tmp_path)
    resumed = make_optimizer(config, N, np.float32)
    resumed.load_state(*load_train_state(tmp_path))
    params = weights["params"]
    for lr, grad in zip(LRS[6:], grads[6:], strict=True):
        resumed.step(params, grad, lr)
    assert params.tobytes() == straight.tobytes()


def test_load_state_refuses_mismatch() -> None:
    adam = make_optimizer(OptimizerConfig("adam"), N, np.float64)
    adamw = make_optimizer(OptimizerConfig("adamw"), N, np.float64)
    small = make_optimizer(OptimizerConfig("adam"), N - 1, np.float64)
    with pytest.raises(CheckpointError, match="'adam', not 'adamw'"):
        adamw.load_state(adam.state_tensors(), adam.state_meta())
    with pytest.raises(CheckpointError, match="shape"):
        small.load_state(adam.state_tensors(), adam.state_meta())
    with pytest.raises(CheckpointError, match="invalid step count"):
        adam.load_state(adam.state_tensors(), {"name": "adam", "step": -1})
    with pytest.raises(CheckpointError, match="tensors"):
        adam.load_state({}, adam.state_meta())


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="sgd, adam, adamw") as err:
        make_optimizer(OptimizerConfig("rmsprop"), N, np.float64)
    assert "\n" not in str(err.value)
    for config in (
        OptimizerConfig(lr=0.0),
        OptimizerConfig(betas=(0.9, 1.0)),
        OptimizerConfig(eps=0.0),
        OptimizerConfig(weight_decay=-1.0),
        OptimizerConfig(momentum=-0.5),
    ):
        with pytest.raises(ConfigError):
            make_optimizer(config, N, np.float64)
    with pytest.raises(ConfigError):
        make_optimizer(OptimizerConfig(), 0, np.float64)
    with pytest.raises(ConfigError):
        make_optimizer(OptimizerConfig(), N, np.int32)


def test_constant_schedule_with_warmup() -> None:
    schedule = ScheduleConfig("constant", warmup_steps=3)
    assert [lr_at(s, 1.0, schedule) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_at(10**6, 0.5, ScheduleConfig()) == 0.5


def test_cosine_schedule() -> None:
    schedule = ScheduleConfig("cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, 1.0, schedule) == pytest.approx(1 / 11)
    assert lr_at(9, 1.0, schedule) == pytest.approx(10 / 11)
    assert lr_at(10, 1.0, schedule) == pytest.approx(1.0)
    assert lr_at(60, 1.0, schedule) == pytest.approx(0.55)
    assert lr_at(110, 1.0, schedule) == pytest.approx(0.1)
    assert lr_at(500, 2.0, schedule) == pytest.approx(0.2)
    values = [lr_at(s, 1.0, schedule) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_step_schedule() -> None:
    schedule = ScheduleConfig("step", step_size=10, gamma=0.5)
    assert [lr_at(s, 1.0, schedule) for s in (0, 9, 10, 19, 20, 35)] == [
        1.0,
        1.0,
        0.5,
        0.5,
        0.25,
        0.125,
    ]
    warm = ScheduleConfig("step", warmup_steps=4, step_size=10, gamma=0.1)
    assert lr_at(1, 1.0, warm) == pytest.approx(0.4)
    assert lr_at(12, 1.0, warm) == pytest.approx(0.1)


def test_the_optimizer_and_schedule_take_the_train_config_s_settings_by_name() -> None:
    config = make_config(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=0.01,
        schedule="step",
        warmup_steps=2,
        step_size=5,
        gamma=0.3,
        min_lr_ratio=0.2,
    )
    assert config.pick(OptimizerConfig) == OptimizerConfig(
        "sgd", lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, momentum=0.9
    )
    assert config.pick(ScheduleConfig, total_steps=50) == ScheduleConfig(
        "step", warmup_steps=2, total_steps=50, min_lr_ratio=0.2, step_size=5, gamma=0.3
    )


@pytest.mark.parametrize(
    "schedule",
    [
        ScheduleConfig("linear"),
        ScheduleConfig("cosine"),
        ScheduleConfig("cosine", warmup_steps=5, total_steps=5),
        ScheduleConfig("cosine", total_steps=5, min_lr_ratio=2.0),
        ScheduleConfig("step"),
        ScheduleConfig("step", step_size=3, gamma=0.0),
        ScheduleConfig(warmup_steps=-1),
    ],
)
def test_bad_schedules(schedule: ScheduleConfig) -> None:
    with pytest.raises(ConfigError) as err:
        lr_at(0, 1.0, schedule)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("max_norm", [0.5, 5.0, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(max_norm: float, dtype: type) -> None:
    grads = np.random.default_rng(5).standard_normal(N).astype(dtype)
    tgrad = torch.nn.Parameter(torch.zeros(N, dtype=torch.from_numpy(grads).dtype))
    tgrad.grad = torch.from_numpy(grads.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_([tgrad], max_norm)
    norm = clip_grad_norm_(grads, max_norm)
    assert isinstance(norm, float)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert norm == pytest.approx(float(expected_norm), rel=rtol)
    assert grads.dtype == dtype
    np.testing.assert_allclose(grads, tgrad.grad.numpy(), rtol=rtol, atol=0)


def test_clip_grad_norm_non_finite_leaves_grads() -> None:
    grads = np.array([1.0, np.inf, 2.0], dtype=np.float64)
    assert clip_grad_norm_(grads, 1.0) == math.inf
    assert grads[0] == 1.0 and grads[2] == 2.0
    with pytest.raises(ConfigError):
        clip_grad_norm_(grads, 0.0)


def test_clip_grad_value_matches_torch() -> None:
    grads = np.random.default_rng(6).standard_normal(N).astype(np.float32) * 3
    tgrad = torch.nn.Parameter(torch.zeros(N, dtype=torch.float32))
    tgrad.grad = torch.from_numpy(grads.copy())
    torch.nn.utils.clip_grad_value_([tgrad], 1.5)
    clip_grad_value_(grads, 1.5)
    assert grads.dtype == np.float32
    assert np.array_equal(grads, tgrad.grad.numpy())
    with pytest.raises(ConfigError):
        clip_grad_value_(grads, -1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["adam-wd", "adamw"])
def test_compiled_adam_is_the_numpy_adam_bit_for_bit(case, dtype):
    config, _ = CASES[case]
    results = []
    for compiled in (True, False):
        params, grads = random_problem(dtype, seed=7)
        opt = make_optimizer(config, N, dtype, compiled=compiled)
        for lr, grad in zip(LRS, grads, strict=True):
            opt.step(params, grad, lr)
        results.append(params)
    np.testing.assert_array_equal(results[0], results[1])
