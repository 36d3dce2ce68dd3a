"""Tests of lstm_scratch.checkpoint: round trips, every refusal, and atomic writes."""

from __future__ import annotations

import errno
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from lstm_scratch.errors import CheckpointError
from lstm_scratch.training import checkpoint as ckpt
from lstm_scratch.training.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    atomic_write_bytes,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)

META = {"vocab": ["a", "b", "—"], "hidden": 8, "loss": 1.25, "tags": {"ok": True, "x": None}}


def weights(dtype: type) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((4, 3)).astype(dtype),
        "b": rng.standard_normal(3).astype(dtype),
        "emb": np.array([np.finfo(dtype).tiny, -0.0, np.finfo(dtype).max], dtype=dtype),
    }


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message
    return message


def write_raw(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None) -> None:
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


def our_metadata(**header: object) -> dict[str, str]:
    base = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "role": "model"}
    base["generation"] = "g"
    base.update(header)
    return {"lstm_scratch": json.dumps(base)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path: Path, dtype: type) -> None:
    saved = weights(dtype)
    save_checkpoint(tmp_path / "ck", saved, META)
    for path in (tmp_path / "ck", tmp_path / "ck" / MODEL_FILE):
        loaded, meta = load_checkpoint(path)
        assert meta == META
        assert set(loaded) == set(saved)
        for name, array in saved.items():
            assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
            assert loaded[name].tobytes() == array.tobytes()
            assert loaded[name].flags.writeable
            loaded[name][...] = 0


def test_train_state_round_trip(tmp_path: Path) -> None:
    moments = {
        "exp_avg": np.arange(5, dtype=np.float32),
        "exp_avg_sq": np.ones(5, dtype=np.float32),
    }
    train_meta = {"step": 12, "rng": {"state": 2**70, "inc": 3}}
    save_checkpoint(tmp_path, weights(np.float32), META, moments, train_meta)
    tensors, meta = load_train_state(tmp_path)
    assert meta == train_meta
    assert {k: v.tobytes() for k, v in tensors.items()} == {
        k: v.tobytes() for k, v in moments.items()
    }
    assert all(v.flags.writeable for v in tensors.values())


def test_numpy_scalars_in_meta_are_converted(tmp_path: Path) -> None:
    meta = {"step": np.int64(3), "lr": np.float32(0.5), "shape": np.array([2, 3], dtype=np.int64)}
    meta.update(data=Path("a/b.txt"), betas=(0.9, 0.99))
    save_checkpoint(tmp_path, weights(np.float64), meta)
    assert load_checkpoint(tmp_path)[1] == {
        "step": 3,
        "lr": 0.5,
        "shape": [2, 3],
        "data": str(Path("a/b.txt")),
        "betas": [0.9, 0.99],
    }


def test_non_json_meta_is_refused(tmp_path: Path) -> None:
    for meta in ({"loss": float("nan")}, {"obj": object()}):
        with pytest.raises(CheckpointError, match="not strict JSON"):
            save_checkpoint(tmp_path, weights(np.float32), meta)
    assert not (tmp_path / MODEL_FILE).exists()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path, weights(np.float32), {"format": "x"})


def test_train_state_from_another_save(tmp_path: Path) -> None:
    w = weights(np.float32)
    save_checkpoint(tmp_path / "a", w, META, {"m": np.zeros(2, dtype=np.float32)}, {"step": 1})
    save_checkpoint(tmp_path / "b", w, META, {"m": np.zeros(2, dtype=np.float32)}, {"step": 2})
    os.replace(tmp_path / "b" / TRAIN_STATE_FILE, tmp_path / "a" / TRAIN_STATE_FILE)
    with pytest.raises(CheckpointError, match="different saves"):
        load_train_state(tmp_path / "a")
    save_checkpoint(tmp_path / "a", w, META)  # model only: the old state is now stale
    with pytest.raises(CheckpointError, match="different saves"):
        load_train_state(tmp_path / "a")


def test_missing_train_state(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, weights(np.float32), META)
    with pytest.raises(CheckpointError, match="no training state"):
        load_train_state(tmp_path)


def test_train_state_is_not_a_model(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, weights(np.float32), META, {"m": np.zeros(2, dtype=np.float32)}, {})
    assert "expected a model file" in load_error(tmp_path / TRAIN_STATE_FILE)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in load_error(tmp_path / "nope")
    assert MODEL_FILE in load_error(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(
            b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01w\x94K\x01s.", id="pickle"
        ),
        pytest.param(
            bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), id="random"
        ),
        pytest.param(struct.pack("<Q", 2**60) + b'{"a": 1}', id="huge-header"),
        pytest.param(struct.pack("<Q", 2) + b"[]", id="header-not-object"),
        pytest.param(struct.pack("<Q", 7) + b"{nope!}", id="header-not-json"),
        pytest.param(b"abc", id="tiny"),
        pytest.param(b"", id="empty"),
    ],
)
def test_not_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    message = load_error(path)
    assert message.startswith(f"cannot load {path}: not a valid safetensors file")


def test_zip_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert "not a valid safetensors file" in load_error(path)


def test_truncated_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, weights(np.float64), META)
    path = tmp_path / MODEL_FILE
    path.write_bytes(path.read_bytes()[:-5])
    assert "not a valid safetensors file" in load_error(path)


def test_foreign_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_raw(path, {"w": np.zeros(2, dtype=np.float32)}, None)
    assert "not an lstm-scratch checkpoint" in load_error(path)
    write_raw(path, {"w": np.zeros(2, dtype=np.float32)}, {"format": "pt"})
    assert "not an lstm-scratch checkpoint" in load_error(path)
    write_raw(path, {"w": np.zeros(2, dtype=np.float32)}, our_metadata(format="other"))
    assert "not an lstm-scratch checkpoint" in load_error(path)
    write_raw(path, {"w": np.zeros(2, dtype=np.float32)}, {"lstm_scratch": "{not json"})
    assert "not valid JSON" in load_error(path)


def test_other_format_version(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_raw(path, {"w": np.zeros(2, dtype=np.float32)}, our_metadata(format_version=2))
    assert load_error(path).endswith(
        "checkpoint format version 2 is not supported by this lstm-scratch (reads 1)"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(tmp_path: Path, bad: float) -> None:
    w = weights(np.float32)
    w["b"][1] = bad
    save_checkpoint(tmp_path, w, META)
    assert "tensor 'b' contains NaN or infinity" in load_error(tmp_path)


def test_atomic_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_file_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640


def test_write_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="could not write"):
        atomic_write_bytes(tmp_path / "missing" / "f.bin", b"data")


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, weights(np.float32), META)
    before = (tmp_path / MODEL_FILE).read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "fsync", no_space)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path, weights(np.float64), {"other": 1})
    assert str(err.value) == f"could not write {tmp_path / MODEL_FILE}: {os.strerror(errno.ENOSPC)}"
    assert (tmp_path / MODEL_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_FILE]


def test_failed_write_during_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    class FullDisk:
        def __init__(self, *args: object) -> None:
            pass

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *args: object) -> None:
            pass

        def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str) -> FullDisk:
        os.close(fd)
        return FullDisk()

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    with pytest.raises(CheckpointError, match="No space left on device"):
        atomic_write_bytes(path, b"new")
    monkeypatch.setattr(ckpt.os, "fdopen", real_fdopen)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_second_write_keeps_the_previous_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model file fails after the training state was written: neither may replace its
    predecessor, or the folder would hold a pair that cannot be resumed."""
    state = {"m": np.zeros(3, dtype=np.float32)}
    save_checkpoint(tmp_path, weights(np.float32), {"step": 1}, state, {"step": 1})
    real_fsync, calls = ckpt.os.fsync, []

    def second_fsync_fails(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", second_fsync_fails)
    with pytest.raises(CheckpointError, match=MODEL_FILE):
        save_checkpoint(tmp_path, weights(np.float64), {"step": 2}, state, {"step": 2})
    monkeypatch.setattr(ckpt.os, "fsync", real_fsync)
    assert load_checkpoint(tmp_path)[1]["step"] == 1
    assert load_train_state(tmp_path)[1]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MODEL_FILE, TRAIN_STATE_FILE])


@pytest.mark.skipif(os.name != "posix", reason="folders are opened and fsync'ed on POSIX")
def test_the_folder_is_fsynced_after_the_renames(tmp_path: Path, monkeypatch) -> None:
    """A rename is durable only once its folder is: after the last rename of a checkpoint, the
    run folder itself is fsync'ed (an os.fsync on a descriptor of that folder)."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd)))
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(("rename", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    state = {"m": np.zeros(3, dtype=np.float32)}
    save_checkpoint(tmp_path, weights(np.float32), {"step": 1}, state, {"step": 1})
    monkeypatch.undo()
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    folder_syncs = [
        i
        for i, (kind, stat) in enumerate(events)
        if kind == "fsync" and os.path.samestat(stat, os.stat(tmp_path))
    ]
    assert {events[i][1] for i in renames} >= {MODEL_FILE, TRAIN_STATE_FILE}
    assert folder_syncs and folder_syncs[-1] > renames[-1]
