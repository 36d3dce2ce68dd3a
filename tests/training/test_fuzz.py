"""Hostile checkpoint files, generated: whatever the bytes, loading either works or raises one
CheckpointError; it never runs code, never fails another way, and allocates no more memory than
the file's size justifies. Over 1,000 generated files per run."""

import io
import json
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_scratch.app.cli import main
from lstm_scratch.errors import CheckpointError
from lstm_scratch.model.charlm import CharLM, ModelConfig
from lstm_scratch.training.checkpoint import save_checkpoint
from lstm_scratch.training.loading import load_model

CONFIG = ModelConfig(vocab_size=5, hidden_size=4, num_layers=1, embed_size=3)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    model = CharLM(CONFIG)
    meta = {"model": CONFIG.__dict__, "vocab": list("abcde"), "step": 3, "metrics": {}}
    save_checkpoint(folder, model.params.state_dict(), meta)
    return (folder / "model.safetensors").read_bytes()


def load_or_refuse(path):
    """Load ``path``; a CheckpointError is a refusal. Returns the peak bytes allocated."""
    tracemalloc.start()
    try:
        load_model(path)
    except CheckpointError as error:
        assert "\n" not in str(error)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def check(tmp_path, data: bytes):
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    peak = load_or_refuse(path)
    assert peak <= 8 * len(data) + 2**20, (peak, len(data))  # proportionate to the file


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("header-length"), st.integers(0, 2**64 - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


def mutate(data: bytes, how) -> bytes:
    kind, position, value = how
    position %= len(data)
    if kind == "flip":
        return data[:position] + bytes([data[position] ^ value]) + data[position + 1 :]
    if kind == "truncate":
        return data[:position]
    if kind == "insert":
        return data[:position] + bytes([value]) + data[position:]
    return struct.pack("<Q", position if position else value) + data[8:]


@settings(
    max_examples=700, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(mutations, min_size=1, max_size=3))
def test_mutated_checkpoints_load_or_are_refused(tmp_path, valid_bytes, hows):
    data = valid_bytes
    for how in hows:
        data = mutate(data, how) or b"\0"
    check(tmp_path, data)


header_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(st.sampled_from(["w", "__metadata__", "x"]), header_values, max_size=3),
    st.binary(max_size=64),
)
def test_arbitrary_headers_load_or_are_refused(tmp_path, header, payload):
    """Headers claiming any dtype, shape or offsets, over a few bytes of data."""
    raw = json.dumps(header).encode()
    check(tmp_path, struct.pack("<Q", len(raw)) + raw + payload)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=256))
def test_random_bytes_are_refused(tmp_path, data):
    check(tmp_path, data or b"\0")


class Boom:
    def __reduce__(self):  # would run code if unpickled
        return (exec, ("raise SystemExit('pickle executed')",))


def other_kinds():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.pkl", pickle.dumps(Boom()))
    return {"pickle": pickle.dumps(Boom()), "zip (torch.save)": buffer.getvalue()}


@pytest.mark.parametrize("kind", sorted(other_kinds()))
def test_files_of_another_kind_are_one_line_errors_and_run_nothing(tmp_path, capsys, kind):
    (tmp_path / "model.safetensors").write_bytes(other_kinds()[kind])
    assert main(["sample", str(tmp_path), "--length", "3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a valid safetensors file" in err


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda w, m: w.update({"decoder.weight": np.zeros((5, 9), np.float32)}), "shape"),
        (lambda w, m: w.update({"decoder.bias": np.full(5, np.nan, np.float32)}), "NaN"),
        (lambda w, m: m.update(vocab=list("abc")), "vocabulary has 3 entries"),
        (lambda w, m: w.pop("decoder.bias"), "missing"),
        (lambda w, m: w.update({"decoder.bias": np.zeros(5, np.int32)}), "int32, not float32"),
        (lambda w, m: w.update({"decoder.bias": np.zeros(5, np.float64)}), "float64, not"),
    ],
)
def test_poisoned_contents_are_named(tmp_path, change, fragment):
    model = CharLM(CONFIG)
    weights = model.params.state_dict()
    meta = {"model": CONFIG.__dict__, "vocab": list("abcde"), "step": 0, "metrics": {}}
    change(weights, meta)
    save_checkpoint(tmp_path, weights, meta)
    with pytest.raises(CheckpointError, match=fragment):
        load_model(tmp_path)
