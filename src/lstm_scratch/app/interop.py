"""Weights to and from PyTorch: safetensors files with torch's tensor names, never a pickle.

Export writes CharLM's weights under torch's module names: ``embedding.weight`` of
``torch.nn.Embedding`` (absent for one-hot input), ``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``,
``lstm.bias_ih_l0``, … of ``torch.nn.LSTM`` (``gru.…`` of ``torch.nn.GRU``, ``rnn.…`` of
``torch.nn.RNN``), and ``decoder.weight``, ``decoder.bias`` of ``torch.nn.Linear``, with the
model's config and vocabulary as JSON in the file's metadata.

Import reads the state dict of any torch character model of that shape, whatever its modules are
called: the recurrent layers are the one prefix holding torch's ``weight_ih_l{k}``, … tensors
(an LSTM, GRU or RNN by the rows of ``weight_hh_l0``: 4H, 3H or H; an nn.RNN is read as tanh,
its default), the decoder the (V, H) weight with a (V,) bias (or, failing one, the (V, H) weight
without), the embedding the (V, E) table without a bias whose E is the layers' input size (none
for one-hot input); ``--names`` says where the parts are when the shapes do not. Biases torch
was told to leave out (bias=False) are zeros. What CharLM cannot compute (bidirectional layers,
a projected LSTM, a tensor in none of the parts) is refused in one line, and so is a
``torch.save`` file, which is never unpickled. The vocabulary comes from a JSON ``itos`` list,
the training text, or an export's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lstm_scratch.errors import CheckpointError, ConfigError, DataError
from lstm_scratch.model.charlm import CELLS, CharLM, ModelConfig
from lstm_scratch.model.data import Vocab
from lstm_scratch.model.recurrent import parameter_shapes
from lstm_scratch.model.tokens import TokenVocab, vocab_from_json
from lstm_scratch.training import checkpoint
from lstm_scratch.training.loading import load_model

EXPORT_FORMAT = "lstm-scratch-torch-export"
PARTS = ("embedding", "lstm", "gru", "rnn", "decoder")  # lstm, gru, rnn: the recurrent layers
LAYER_KEYS = ("lstm", "gru", "rnn")
CELL_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
CELL_BY_GATES = {gates: cell for cell, gates in CELLS.items()}  # 4 -> lstm, 3 -> gru, 1 -> rnn
NAMES_HINT = "name the parts with --names embedding=P,{cell}=P,decoder=P"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAVE_HINT = (
    "Write safetensors instead: from safetensors.torch import save_file; "
    'save_file(model.state_dict(), "model.safetensors")'
)
FLOAT_HINT = "lstm-scratch reads float32 or float64: save model.float().state_dict()"
_LAYER_TENSOR = re.compile(
    r"(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>\d+)(?P<reverse>_reverse)?"
)


def export_torch(checkpoint_path: str | Path, out: str | Path) -> Path:
    """Write the weights of a checkpoint (folder or model file) to ``out`` with torch's names."""
    model, vocab, _ = load_model(checkpoint_path)
    metadata = {
        "format": EXPORT_FORMAT,
        "model": json.dumps(dataclasses.asdict(model.config)),
        "vocab": json.dumps(vocab.to_json()),
    }
    tensors = {name: np.ascontiguousarray(w) for name, w in model.params.state_dict().items()}
    out = Path(out)
    try:
        save_file(tensors, str(out), metadata=metadata)
    except OSError as err:
        raise CheckpointError(f"could not write {out}: {err.strerror or err}") from None
    return out


@dataclasses.dataclass(frozen=True)
class LayersPart:
    """An nn.LSTM, nn.GRU or nn.RNN found in a file: its cell, its tensors' prefix, sizes and
    tensor names."""

    cell: str
    prefix: str
    layers: int
    hidden: int
    input_size: int
    names: tuple[str, ...]  # the four per layer, or two per layer for bias=False

    def describe(self) -> str:
        return (
            f"the {CELL_NAMES[self.cell]} {self.prefix!r} ({self.layers} "
            f"layer{'s' * (self.layers > 1)}, hidden {self.hidden}, input {self.input_size})"
        )


@dataclasses.dataclass(frozen=True)
class Parts:
    """Where a file keeps CharLM's three parts; ``embedding`` None means one-hot input."""

    layers: LayersPart
    decoder: str
    vocab_size: int
    embedding: str | None

    def config(self, dtype: str) -> ModelConfig:
        layers = self.layers
        embed = layers.input_size if self.embedding is not None else 0
        return ModelConfig(
            self.vocab_size, layers.hidden, layers.layers, embed, dtype=dtype, cell=layers.cell
        )


def parse_names(text: str) -> dict[str, str]:
    """``embedding=emb,lstm=rnn,decoder=fc`` (any subset) -> {part: tensor-name prefix}; the
    recurrent layers are named ``lstm=``, ``gru=`` or ``rnn=``, whichever they are.

    A module name gets its dot (``rnn`` -> ``rnn.``); an empty one means no prefix (the tensors
    of a bare ``nn.LSTM`` state dict).
    """
    names: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in PARTS:
            raise ConfigError(
                f"--names: {item.strip()!r} is not PART=MODULE with PART one of {', '.join(PARTS)}"
            )
        if key in names:
            raise ConfigError(f"--names: {key} is given twice")
        if key in LAYER_KEYS and set(LAYER_KEYS) & set(names):
            raise ConfigError("--names: the recurrent layers are named twice")
        names[key] = value if not value or value.endswith(".") else value + "."
    return names


def _quoted(names, limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _listed(items: list[str]) -> str:
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _layer_groups(shapes: dict[str, tuple]) -> dict[str, list[re.Match]]:
    """Tensors named as nn.LSTM, nn.GRU and nn.RNN name them, by prefix (``''`` for a bare
    module's state dict)."""
    groups: dict[str, list[re.Match]] = {}
    for name in shapes:
        if match := _LAYER_TENSOR.fullmatch(name):
            groups.setdefault(match["prefix"], []).append(match)
    return groups


def _layers_part(prefix: str, matches: list[re.Match], shapes: dict[str, tuple]) -> LayersPart:
    """The recurrent layers at ``prefix``, or a CheckpointError saying why CharLM cannot run
    them."""
    for m in matches:
        if m["kind"] == "weight_hr":
            raise CheckpointError(
                f"the LSTM {prefix!r} has proj_size ({m[0]!r}): CharLM's LSTM has none"
            )
    layers = sorted({int(m["layer"]) for m in matches})
    cell, hidden = _cell_and_hidden(prefix, layers[0], shapes)
    where = f"the {CELL_NAMES[cell]} {prefix!r}"
    for m in matches:
        if m["reverse"]:
            raise CheckpointError(
                f"{where} is bidirectional ({m[0]!r}): CharLM's layers run forward"
            )
    if layers != list(range(len(layers))):
        gap = min(set(range(layers[-1] + 1)) - set(layers))
        raise CheckpointError(f"{where} has layers {layers}: layer {gap} is missing")
    input_shape = shapes.get(f"{prefix}weight_ih_l0", ())
    if len(input_shape) != 2:
        raise CheckpointError(f"{where}: {prefix}weight_ih_l0 is {input_shape}, not (G·H, input)")
    input_size = input_shape[1]
    biased = any(m["kind"].startswith("bias") for m in matches)
    every = parameter_shapes(CELLS[cell], input_size, hidden, len(layers), True, 1)
    expected = {
        prefix + name: shape
        for name, shape in every.items()
        if biased or not name.startswith("bias")
    }
    for name, shape in expected.items():
        if name not in shapes:
            raise CheckpointError(f"{where} has no {name!r}: it needs {_quoted(expected, 4)}")
        if shapes[name] != shape:
            raise CheckpointError(
                f"{where}: {name!r} is {shapes[name]}, not {shape} as hidden {hidden} and "
                f"input {input_size} make it"
            )
    return LayersPart(cell, prefix, len(layers), hidden, input_size, tuple(expected))


def _cell_and_hidden(prefix: str, layer: int, shapes: dict[str, tuple]) -> tuple[str, int]:
    """The cell and H of the layers at ``prefix``, told by the shape (G·H, H) of ``layer``'s
    weight_hh."""
    name = f"{prefix}weight_hh_l{layer}"
    shape = shapes.get(name, ())
    gates = shape[0] // shape[1] if len(shape) == 2 and shape[1] and not shape[0] % shape[1] else 0
    if gates not in CELL_BY_GATES:
        raise CheckpointError(
            f"the recurrent layers {prefix!r}: {name} is {shape}, not (4H, H), "
            "(3H, H) or (H, H) as nn.LSTM, nn.GRU and nn.RNN make it"
        )
    return CELL_BY_GATES[gates], shape[1]


def _find_layers(shapes: dict[str, tuple], names: dict[str, str]) -> LayersPart:
    """The one nn.LSTM, nn.GRU or nn.RNN of the file, or the one ``--names`` names."""
    groups = _layer_groups(shapes)
    key = next((key for key in LAYER_KEYS if key in names), None)
    if key is not None:
        named = names[key]
        if named not in groups:
            raise ConfigError(f"--names {key}={named}: no {named}weight_ih_l0, … in the file")
        part = _layers_part(named, groups[named], shapes)
        if part.cell != key:
            raise ConfigError(f"--names {key}={named}: {part.describe()} is not a {key}")
        return part
    if not groups:
        raise CheckpointError(
            "not a character model: no tensor is named as nn.LSTM, nn.GRU and nn.RNN name them "
            f"(weight_ih_l0, …) among {_quoted(shapes)}"
        )
    if len(groups) > 1:
        raise CheckpointError(
            f"found {len(groups)} recurrent modules {_quoted(groups)}; CharLM has one (of any "
            "number of layers), so this model cannot be imported"
        )
    prefix, matches = groups.popitem()
    return _layers_part(prefix, matches, shapes)


def _tables(shapes: dict[str, tuple], taken: set[str]) -> dict[str, tuple]:
    """``prefix: shape`` of every 2-D ``P.weight`` not ``taken``."""
    return {
        name[: -len("weight")]: shape
        for name, shape in shapes.items()
        if name not in taken and len(shape) == 2 and (name == "weight" or name.endswith(".weight"))
    }


def _check_named(part: str, prefix: str, shapes: dict[str, tuple], shape: tuple) -> None:
    """``--names PART=prefix`` must name a ``prefix.weight`` of ``shape`` (None: any size)."""
    found = shapes.get(prefix + "weight")
    if found is None:
        raise ConfigError(f"--names {part}={prefix}: the file has no {prefix}weight")
    if len(found) != 2 or any(
        want not in (None, got) for want, got in zip(shape, found, strict=True)
    ):
        raise ConfigError(
            f"--names {part}={prefix}: {prefix}weight is {found}, not "
            f"({', '.join('V' if n is None else str(n) for n in shape)})"
        )
    bias = shapes.get(prefix + "bias")
    if part == "decoder" and bias is not None and bias != found[:1]:
        raise ConfigError(f"--names decoder={prefix}: {prefix}bias is {bias}, not {found[:1]}")


def _part_error(found, part: str, candidates: dict, what: str, cell: str, nameable: bool = True):
    """One line: what was found, which part is missing or ambiguous, and how to name it (or,
    when naming one candidate would leave the others over, that the model cannot be imported)."""
    if candidates:
        listed = ", ".join(f"{p!r} {shape}" for p, shape in candidates.items())
        problem = f"{len(candidates)} tensors could be the {part}: {listed} (each a {what})"
    else:
        problem = f"no {part}: no {what}"
    hint = NAMES_HINT.format(cell=cell)
    hint = hint if nameable else f"CharLM has one {part}, so this model cannot be imported"
    return CheckpointError(f"found {_listed(found)}; {problem}; {hint}")


def _find_decoder(shapes, layers: LayersPart, taken: set[str], names: dict, found: list[str]):
    """The decoder's prefix and V: the (V, H) weight with a (V,) bias (failing that, the one
    (V, H) weight without a bias), or the one ``--names decoder=`` names.

    Two bias-free (V, H) tables, when E = H and no embedding is named, are the embedding and the
    decoder in some order: the one ambiguity that naming settles.
    """
    hidden, named, embedding_named = layers.hidden, names.get("decoder"), "embedding" in names
    if named is not None:
        _check_named("decoder", named, shapes, (None, hidden))
        prefix = named
    else:
        tables = {p: s for p, s in _tables(shapes, taken).items() if s[1] == hidden}
        biased = {p: s for p, s in tables.items() if shapes.get(p + "bias") == s[:1]}
        bare = {p: s for p, s in tables.items() if p + "bias" not in shapes}
        if len(biased) != 1 and (biased or len(bare) != 1):
            bias = "without a bias" if bare and not biased else "with a (V,) bias"
            pair = not biased and len(bare) == 2 and layers.input_size == hidden
            nameable = not (biased or bare) or (pair and not embedding_named)
            what = f"(V, {hidden}) weight {bias}"
            raise _part_error(found, "decoder", biased or bare, what, layers.cell, nameable)
        prefix = next(iter(biased or bare))
    vocab_size = shapes[prefix + "weight"][0]
    no_bias = "" if prefix + "bias" in shapes else " without a bias"
    found.append(f"the decoder {prefix!r} ({vocab_size}, {hidden}){no_bias}")
    return prefix, vocab_size


def _find_embedding(shapes, layers: LayersPart, vocab_size: int, taken: set[str], found: list[str]):
    """The prefix of the one (V, E) table without a bias, E the layers' input size; None for
    one-hot input (no such table, and the layers' input size is V)."""
    shape = (vocab_size, layers.input_size)
    tables = _tables(shapes, taken)
    tables = {p: s for p, s in tables.items() if s == shape and p + "bias" not in shapes}
    if len(tables) == 1:
        prefix = next(iter(tables))
        found.append(f"the embedding {prefix!r} {shape}")
        return prefix
    if not tables and layers.input_size == vocab_size:
        found.append("one-hot input (no embedding)")
        return None
    what = f"{shape} table without a bias"
    raise _part_error(found, "embedding", tables, what, layers.cell, not tables)


def find_parts(shapes: dict[str, tuple], names: dict[str, str] | None = None) -> Parts:
    """Where a file's tensors keep CharLM's embedding, recurrent layers and decoder, found by
    their names' torch suffixes and their shapes; ``names`` (from ``parse_names``) fixes any of
    the three.

    A part that is missing or ambiguous, or a tensor that belongs to none of them, is a one-line
    error naming what was found.
    """
    names = names or {}
    layers = _find_layers(shapes, names)
    found, taken = [layers.describe()], set(layers.names)
    embedding = names.get("embedding")
    if embedding is not None:
        _check_named("embedding", embedding, shapes, (None, layers.input_size))
        taken.add(embedding + "weight")
    decoder, vocab_size = _find_decoder(shapes, layers, taken, names, found)
    taken |= {decoder + "weight", decoder + "bias"} & set(shapes)
    if embedding is not None:
        _check_named("embedding", embedding, shapes, (vocab_size, layers.input_size))
        found.append(f"the embedding {embedding!r} ({vocab_size}, {layers.input_size})")
    else:
        embedding = _find_embedding(shapes, layers, vocab_size, taken, found)
        taken |= {embedding + "weight"} if embedding is not None else set()
    left = [name for name in shapes if name not in taken]
    if left:
        raise CheckpointError(
            f"found {_listed(found)}, but {_quoted(left)} belong{'s' * (len(left) == 1)} "
            "to none of them: that model computes something else than embedding -> recurrent "
            "layers -> linear"
        )
    return Parts(layers, decoder, vocab_size, embedding)


def infer_config(shapes: dict[str, tuple], dtype: str, names: dict | None = None) -> ModelConfig:
    """The ModelConfig of a torch character model with tensors of these names and shapes."""
    return find_parts(shapes, names).config(dtype)


def _torch_pickle_kind(path: Path) -> str | None:
    """What torch.save format ``path`` holds, judged by its first bytes and its name; None when
    it is something else. A file that starts as safetensors does is safetensors, whatever its
    name (its 8-byte header length can begin with the bytes of a pickle's protocol)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(9)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a PyTorch pickle (torch.save)"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save's format: a pickle inside)"
    if path.suffix.lower() in TORCH_SUFFIXES:
        return f"a {path.suffix} file, the extension of torch.save's pickles"
    return None


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a safetensors file; torch.save files are refused unread.

    Tied weights that safetensors' ``save_model`` stored once (the dropped name mapped to the
    kept one in the metadata) come back under both names.
    """
    kind = _torch_pickle_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}; lstm-scratch never unpickles. {SAVE_HINT}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except TypeError as err:  # a dtype numpy lacks (bfloat16)
        raise CheckpointError(f"cannot load {path}: {err}; {FLOAT_HINT}") from None
    except (OSError, SafetensorError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot load {path}: not a safetensors file ({reason})") from None
    for alias, name in metadata.items():
        if name in tensors and alias not in tensors:
            tensors[alias] = tensors[name]
    return tensors, metadata


def load_vocab_file(path: str | Path) -> Vocab | TokenVocab:
    """The vocabulary in a JSON file: a list of the characters in id order (an ``itos``), or a
    word or bpe tokenizer as a checkpoint keeps it (``{"tokenizer": "bpe", "json": …}``)."""
    path = Path(path)
    try:
        chars = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not JSON ({err.msg}, line {err.lineno} column {err.colno}); --vocab "
            'wants the characters in id order, e.g. ["\\n", " ", "a"]'
        ) from None
    if isinstance(chars, dict) and "tokenizer" in chars:
        try:
            return TokenVocab.from_json(chars)
        except CheckpointError as err:
            raise DataError(f"{path}: {err}") from None
    if not isinstance(chars, list):
        raise DataError(
            f"{path}: --vocab wants a JSON list of characters (or a checkpoint's tokenizer "
            f'object, {{"tokenizer": …}}), got {type(chars).__name__}'
        )
    try:
        return Vocab(chars)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None


def _vocabulary(path: Path, metadata: dict, text: str | None, vocab_file, size: int):
    """``--vocab``'s list, else ``--vocab-from``'s text, else the file's metadata; V characters."""
    if vocab_file is not None:
        vocab, source = load_vocab_file(vocab_file), f"{vocab_file}"
    elif text is not None:
        vocab, source = Vocab.from_text(text), "the text's"
    elif "vocab" in metadata:
        try:
            vocab = vocab_from_json(json.loads(metadata["vocab"]))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: the vocabulary in its metadata is not JSON") from None
        source = "the file's"
    else:
        raise DataError(
            f"{path} holds no vocabulary: give it with --vocab FILE.json (the characters in id "
            "order) or --vocab-from TEXT (the training text)"
        )
    if len(vocab) != size:
        raise DataError(f"the vocabulary ({source}) has {len(vocab)} entries, the decoder {size}")
    return vocab


def _charlm_weights(tensors: dict[str, np.ndarray], parts: Parts) -> dict[str, np.ndarray]:
    """The file's tensors under CharLM's names; absent biases (torch's bias=False) are zeros."""
    layers = parts.layers
    weights = {}
    if parts.embedding is not None:
        weights["embedding.weight"] = tensors[parts.embedding + "weight"]
    every = parameter_shapes(
        CELLS[layers.cell], layers.input_size, layers.hidden, layers.layers, True, 1
    )
    for name, shape in every.items():
        weights[f"{layers.cell}.{name}"] = tensors.get(layers.prefix + name, np.zeros(shape))
    weights["decoder.weight"] = tensors[parts.decoder + "weight"]
    weights["decoder.bias"] = tensors.get(parts.decoder + "bias", np.zeros(parts.vocab_size))
    return weights


def import_torch(
    path: str | Path,
    out: str | Path,
    vocab_text: str | None = None,
    names: dict[str, str] | None = None,
    vocab_file: str | Path | None = None,
) -> Path:
    """Read a torch character model's safetensors file into a checkpoint folder ``out``.

    The parts are found by ``find_parts`` (``names`` overrides it); the vocabulary comes from
    ``vocab_file`` (a JSON list of characters in id order), else ``vocab_text`` (its sorted
    characters, as lstm-scratch builds one), else the file's metadata (an export's). Every check
    runs before ``out`` is written.
    """
    path = Path(path)
    if vocab_text is not None and vocab_file is not None:
        raise ConfigError("give the vocabulary once: --vocab or --vocab-from, not both")
    tensors, metadata = _read_tensors(path)
    parts = find_parts({name: tuple(t.shape) for name, t in tensors.items()}, names)
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    if dtypes not in (["float32"], ["float64"]):
        raise CheckpointError(f"{path}: the tensors are {dtypes}; {FLOAT_HINT}")
    vocab = _vocabulary(path, metadata, vocab_text, vocab_file, parts.vocab_size)
    config = parts.config(dtypes[0])
    model = CharLM(config)
    model.params.load_state_dict(_charlm_weights(tensors, parts))
    meta = {
        "model": dataclasses.asdict(config),
        "vocab": vocab.to_json(),
        "step": 0,
        "metrics": {},
        "imported_from": str(path),
    }
    checkpoint.save_checkpoint(out, model.params.state_dict(), meta)
    return Path(out)
