"""Export to PyTorch's names and import back: torch's own modules give our logits.

Import takes torch character models trained here under the names found in the wild, and must
score a text as torch does; what CharLM cannot represent is refused in one line.
"""

import dataclasses
import json
import pickle

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

from lstm_scratch.app.cli import main
from lstm_scratch.model.charlm import CharLM, ModelConfig
from lstm_scratch.model.data import HAMLET, Vocab
from lstm_scratch.training.checkpoint import load_checkpoint, save_checkpoint
from lstm_scratch.training.loading import load_model

VOCAB = Vocab(list("abcdefghij"))


TORCH_CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def saved_model(folder, embed_size, dtype="float64", cell="lstm"):
    config = ModelConfig(10, 7, 2, embed_size, dtype=dtype, cell=cell)
    model = CharLM(config, seed=3)
    rng = np.random.default_rng(1)  # random non-zero biases, including bias_hh
    model.params.load_state_dict(
        {k: rng.normal(0, 0.8, v.shape) for k, v in model.params.state_dict().items()}
    )
    meta = {"model": config.__dict__, "vocab": VOCAB.to_json(), "step": 0, "metrics": {}}
    save_checkpoint(folder, model.params.state_dict(), meta)
    return model


def torch_logits(path, ids):
    """docs/cli.md's loading code: nn.Embedding (or one-hot) + nn.LSTM (nn.GRU, nn.RNN, by the
    file's config) + nn.Linear."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        cell = json.loads(f.metadata()["model"]).get("cell", "lstm")
    vocab_size, hidden = weights["decoder.weight"].shape
    layers = sum(name.startswith(f"{cell}.weight_ih_l") for name in weights)
    embedding = None
    if "embedding.weight" in weights:
        embedding = torch.nn.Embedding(*weights["embedding.weight"].shape).double()
        embedding.load_state_dict({"weight": weights["embedding.weight"]})
        input_size = weights["embedding.weight"].shape[1]
    else:
        input_size = vocab_size
    layers = TORCH_CELLS[cell](input_size, hidden, layers).double()
    prefix = f"{cell}."
    layers.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items() if prefix in k})
    decoder = torch.nn.Linear(hidden, vocab_size).double()
    decoder.load_state_dict({"weight": weights["decoder.weight"], "bias": weights["decoder.bias"]})
    x = torch.from_numpy(ids)
    inputs = embedding(x) if embedding else torch.nn.functional.one_hot(x, vocab_size).double()
    with torch.no_grad():
        return decoder(layers(inputs)[0]).numpy()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embed_size", [0, 5])
def test_exported_weights_give_torch_our_logits(tmp_path, capsys, embed_size, cell):
    model = saved_model(tmp_path / "run", embed_size, cell=cell)
    assert main(["export", str(tmp_path / "run"), "--to", "torch", str(tmp_path / "w.st")]) == 0
    ids = np.random.default_rng(0).integers(0, 10, (9, 3))  # (T, B)
    ours, _, _ = model.forward(ids)
    theirs = torch_logits(tmp_path / "w.st", ids)
    assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_import_round_trip(tmp_path, capsys, cell):
    model = saved_model(tmp_path / "run", 4, cell=cell)
    main(["export", str(tmp_path / "run"), "--to", "torch", str(tmp_path / "w.st")])
    assert main(["import", str(tmp_path / "w.st"), "--out", str(tmp_path / "back")]) == 0
    back, vocab, _ = load_model(tmp_path / "back")
    assert vocab.to_json() == VOCAB.to_json()
    assert back.config == model.config
    assert back.params.state_dict().keys() == model.params.state_dict().keys()
    np.testing.assert_array_equal(back.params.flat, model.params.flat)


def test_import_of_a_torch_made_file(tmp_path, capsys):
    # a file made by torch itself, with no vocabulary: the text supplies it
    torch.manual_seed(0)
    modules = {
        "embedding": torch.nn.Embedding(10, 4),
        "lstm": torch.nn.LSTM(4, 6, 1),
        "decoder": torch.nn.Linear(6, 10),
    }
    weights = {
        f"{m}.{k}": v.detach().numpy()
        for m, mod in modules.items()
        for k, v in mod.state_dict().items()
    }
    save_file(weights, str(tmp_path / "torch.st"))
    (tmp_path / "text.txt").write_text("jihgfedcba" * 3, encoding="utf-8")
    code = main(
        [
            "import",
            str(tmp_path / "torch.st"),
            "--out",
            str(tmp_path / "t"),
            "--vocab-from",
            str(tmp_path / "text.txt"),
        ]
    )
    assert code == 0
    imported, _, _ = load_model(tmp_path / "t")
    assert imported.config.hidden_size == 6 and imported.config.embed_size == 4
    np.testing.assert_array_equal(imported.params["lstm.bias_hh_l0"], weights["lstm.bias_hh_l0"])


def test_import_errors_are_one_line(tmp_path, capsys):
    save_file({"decoder.weight": np.zeros((3, 2), np.float32)}, str(tmp_path / "bad.st"))
    (tmp_path / "junk.st").write_bytes(b"not a safetensors file at all")
    for args, fragment in [
        (["import", str(tmp_path / "bad.st"), "--out", str(tmp_path / "o")], "not a character"),
        (["import", str(tmp_path / "junk.st"), "--out", str(tmp_path / "o")], "cannot load"),
        (["import", str(tmp_path / "none.st"), "--out", str(tmp_path / "o")], "no such file"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "o").exists()


def test_import_without_vocabulary_says_how_to_give_one(tmp_path, capsys):
    saved_model(tmp_path / "run", 0)
    weights, _ = load_checkpoint(tmp_path / "run")
    save_file(weights, str(tmp_path / "novocab.st"))  # torch names, no metadata
    assert main(["import", str(tmp_path / "novocab.st"), "--out", str(tmp_path / "o")]) == 2
    assert "--vocab-from" in capsys.readouterr().err


# --- torch character models under the names found in the wild --------------------------------

TEXT = HAMLET[:300]
SORTED = sorted(set(TEXT))  # the ids --vocab-from gives
FIRST_SEEN = list(dict.fromkeys(TEXT))  # another order, as a torch script's itos may hold


class TorchCharModel(torch.nn.Module):
    """nn.Embedding (or one-hot) -> nn.LSTM (or nn.GRU, nn.RNN) -> nn.Linear, under the given
    attribute names."""

    def __init__(
        self,
        names,
        embed=8,
        hidden=12,
        batch_first=False,
        lstm_bias=True,
        decoder_bias=True,
        cell="lstm",
    ):
        super().__init__()
        self.names, self.batch_first, V = names, batch_first, len(SORTED)
        emb, rnn, dec = names
        if emb:
            setattr(self, emb, torch.nn.Embedding(V, embed))
        layers = TORCH_CELLS[cell](
            embed if emb else V, hidden, 2, bias=lstm_bias, batch_first=batch_first
        )
        setattr(self, rnn, layers)
        setattr(self, dec, torch.nn.Linear(hidden, V, bias=decoder_bias))

    def forward(self, ids):  # (T,) -> (T, V)
        emb, rnn, dec = (getattr(self, n) if n else None for n in self.names)
        x = emb(ids) if emb else F.one_hot(ids, len(SORTED)).float()  # (T, E)
        y, _ = rnn(x[None] if self.batch_first else x[:, None])  # one sequence, batch 1
        return dec(y.reshape(len(ids), -1))


class Nested(torch.nn.Module):
    """The model one level down: its tensors are named ``model.rnn.weight_ih_l0``, …"""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = TorchCharModel(**kwargs)

    def forward(self, ids):
        return self.model(ids)


def trained(itos, steps=30, nested=False, tied=False, **kwargs):
    """A torch model fitted to TEXT for a few Adam steps; its cross-entropy over the text."""
    torch.manual_seed(0)
    model = Nested(**kwargs) if nested else TorchCharModel(**kwargs)
    if tied:  # word_language_model's --tied
        model.decoder.weight = model.encoder.weight
    ids = torch.tensor([itos.index(c) for c in TEXT])
    params = list(model.parameters())
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for t in range(1, steps + 1):  # Adam, lr 0.02, by hand: torch.optim's first use costs 2 s
        F.cross_entropy(model(ids[:-1]), ids[1:]).backward()
        with torch.no_grad():
            for p, (m, v) in zip(params, moments, strict=True):
                m.mul_(0.9).add_(p.grad, alpha=0.1)
                v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                p -= 0.02 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
                p.grad = None
    with torch.no_grad():
        loss = F.cross_entropy(model(ids[:-1]), ids[1:]).item()
    assert loss < np.log(len(itos)) - 0.5  # it learnt: a wrong mapping would not score as well
    return model, loss


def write_inputs(tmp_path, itos):
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "itos.json").write_text(json.dumps(itos), encoding="utf-8")
    return str(tmp_path / "text.txt"), str(tmp_path / "itos.json")


def our_loss(run, text, capsys):
    """`lstm-scratch eval --json` with batch 1: the state carried through the whole text."""
    capsys.readouterr()
    assert (
        main(["eval", run, "--data", text, "--batch-size", "1", "--seq-len", "64", "--json"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["chars"] == len(TEXT) - 1
    return metrics["loss"]


def one_line_error(args, capsys, *fragments):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err
    return err


@dataclasses.dataclass
class Case:
    names: tuple
    vocab: str = "--vocab"  # or "--vocab-from"
    embed: int = 8
    batch_first: bool = False
    lstm_bias: bool = True
    nested: bool = False
    tied: bool = False
    cell: str = "lstm"


CASES = {
    "word_language_model": Case(("encoder", "rnn", "decoder")),
    "embed-lstm-fc": Case(("embed", "lstm", "fc"), "--vocab-from"),
    "emb-rnn-linear": Case(("emb", "rnn", "linear")),
    "embedding-lstm-head": Case(("embedding", "lstm", "head"), "--vocab-from"),
    "one-hot-rnn-out": Case((None, "rnn", "out")),
    "batch-first": Case(("embed", "rnn", "fc"), "--vocab-from", batch_first=True),
    "lstm-bias-false": Case(("emb", "lstm", "fc"), lstm_bias=False),
    "nested-model.rnn": Case(("encoder", "rnn", "decoder"), "--vocab-from", nested=True),
    "tied-save_model": Case(("encoder", "rnn", "decoder"), embed=12, tied=True),
    "gru": Case(("embed", "gru", "fc"), "--vocab-from", cell="gru"),
    "gru-nested-batch-first": Case(
        ("encoder", "rnn", "decoder"), nested=True, batch_first=True, cell="gru"
    ),
    "rnn-one-hot-bias-false": Case((None, "rnn", "out"), lstm_bias=False, cell="rnn"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_torch_models_import_and_score_as_torch_does(tmp_path, capsys, case):
    itos = FIRST_SEEN if case.vocab == "--vocab" else SORTED
    model, torch_loss = trained(
        itos,
        names=case.names,
        embed=case.embed,
        batch_first=case.batch_first,
        lstm_bias=case.lstm_bias,
        nested=case.nested,
        tied=case.tied,
        cell=case.cell,
    )
    weights = str(tmp_path / "model.safetensors")
    if case.tied:  # save_file refuses shared tensors; save_model keeps one, names both
        safetensors.torch.save_model(model, weights)
    else:
        safetensors.torch.save_file(model.state_dict(), weights)
    text, itos_file = write_inputs(tmp_path, itos)
    vocab_args = [case.vocab, itos_file if case.vocab == "--vocab" else text]
    assert main(["import", weights, "--out", str(tmp_path / "run"), *vocab_args]) == 0
    assert load_model(tmp_path / "run")[0].config.cell == case.cell
    assert abs(our_loss(str(tmp_path / "run"), text, capsys) - torch_loss) <= 1e-5


def test_names_settle_what_the_shapes_leave_open(tmp_path, capsys):
    # embedding size = hidden size and a decoder without a bias: two bias-free (V, 12) tables
    model, torch_loss = trained(SORTED, names=("emb", "rnn", "fc"), embed=12, decoder_bias=False)
    weights = str(tmp_path / "model.safetensors")
    safetensors.torch.save_file(model.state_dict(), weights)
    text, _ = write_inputs(tmp_path, SORTED)
    run = str(tmp_path / "run")
    args = ["import", weights, "--out", run, "--vocab-from", text]
    ambiguous = "2 tensors could be the decoder: 'emb.' (30, 12), 'fc.' (30, 12)"
    found = "found the LSTM 'rnn.' (2 layers, hidden 12, input 12); "
    one_line_error(args, capsys, found + ambiguous, "--names embedding=P,lstm=P,decoder=P")
    assert not (tmp_path / "run").exists()
    for names in ["decoder=fc", "embedding=emb", "embedding=emb.,lstm=rnn,decoder=fc"]:
        assert main([*args, "--names", names]) == 0
        assert abs(our_loss(run, text, capsys) - torch_loss) <= 1e-5, names
    for names, fragment in [
        ("encoder=emb", "'encoder=emb' is not PART=MODULE"),
        ("decoder", "'decoder' is not PART=MODULE"),
        ("lstm=fc", "--names lstm=fc.: no fc.weight_ih_l0"),
        ("decoder=rnn", "the file has no rnn.weight"),
        ("decoder=fc,decoder=emb", "decoder is given twice"),
        ("lstm=rnn,gru=rnn", "the recurrent layers are named twice"),
        (
            "gru=rnn",
            "--names gru=rnn.: the LSTM 'rnn.' (2 layers, hidden 12, input 12) is not a gru",
        ),
    ]:
        one_line_error([*args, "--names", names], capsys, fragment)


def lstm_tensors(prefix="rnn.", module=torch.nn.LSTM, **kwargs):
    torch.manual_seed(0)
    lstm = module(**{"input_size": 8, "hidden_size": 12, "num_layers": 2, **kwargs})
    return {prefix + k: v.detach().numpy() for k, v in lstm.state_dict().items()}


def test_missing_parts_are_named_with_what_was_found(tmp_path, capsys):
    rng = np.random.default_rng(0)
    head = {"fc.weight": rng.normal(size=(30, 12)), "fc.bias": rng.normal(size=30)}
    head = {k: v.astype(np.float32) for k, v in head.items()}
    files = {
        "no-embedding": (
            {**lstm_tensors(), **head},
            "found the LSTM 'rnn.' (2 layers, hidden "
            "12, input 8) and the decoder 'fc.' (30, 12); no embedding: no (30, 8) "
            "table without a bias; name the parts with --names",
        ),
        "bare-lstm": (
            lstm_tensors(""),
            "found the LSTM '' (2 layers, hidden 12, input 8); "
            "no decoder: no (V, 12) weight with a (V,) bias",
        ),
        "no-lstm": (
            head,
            "not a character model: no tensor is named as nn.LSTM, nn.GRU and nn.RNN name them",
        ),
    }
    for name, (tensors, message) in files.items():
        save_file(tensors, str(tmp_path / f"{name}.st"))
        args = ["import", str(tmp_path / f"{name}.st"), "--out", str(tmp_path / "o")]
        one_line_error(args, capsys, message)
    assert not (tmp_path / "o").exists()


def test_what_charlm_cannot_compute_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rest = {
        "emb.weight": rng.normal(size=(30, 8)).astype(np.float32),
        "fc.weight": rng.normal(size=(30, 12)).astype(np.float32),
        "fc.bias": rng.normal(size=30).astype(np.float32),
    }
    three = lstm_tensors(num_layers=3)
    files = {
        "layernorm": (
            {
                **lstm_tensors(),
                **rest,
                "norm.weight": np.ones(12, np.float32),
                "norm.bias": np.zeros(12, np.float32),
            },
            "'emb.' (30, 8), but 'norm.bias', 'norm.weight' belong to none of them",
        ),
        "two-heads": (
            {
                **lstm_tensors(),
                **rest,
                "aux.weight": rest["fc.weight"],
                "aux.bias": rest["fc.bias"],
            },
            "2 tensors could be the decoder: 'aux.' (30, 12), 'fc.' (30, 12) (each "
            "a (V, 12) weight with a (V,) bias); CharLM has one decoder, so this model "
            "cannot be imported",
        ),
        "linear-to-V": (
            {
                **lstm_tensors(),
                **rest,
                "aux.weight": rest["emb.weight"],
                "aux.bias": rest["fc.bias"],
            },  # (V, E) but with a bias: no embedding
            "'emb.' (30, 8), but 'aux.bias', 'aux.weight' belong to none of them",
        ),
        "two-lstms": (
            {**lstm_tensors(), **lstm_tensors("rnn2."), **rest},
            "found 2 recurrent modules 'rnn.', 'rnn2.'; CharLM has one",
        ),
        "float16": (
            {k: v.astype(np.float16) for k, v in (lstm_tensors() | rest).items()},
            "the tensors are ['float16']; lstm-scratch reads float32 or float64",
        ),
        "bidirectional": ({**lstm_tensors(bidirectional=True), **rest}, "is bidirectional"),
        "bidirectional-gru": (
            {**lstm_tensors(bidirectional=True, module=torch.nn.GRU), **rest},
            "the GRU 'rnn.' is bidirectional",
        ),
        "two-gates": (
            {
                **{k: v[:24] for k, v in lstm_tensors(num_layers=1).items()},
                **{k: v for k, v in rest.items() if k != "emb.weight"},
            },
            "rnn.weight_hh_l0 is (24, 12), not (4H, H), (3H, H) or (H, H)",
        ),
        "proj_size": ({**lstm_tensors(proj_size=6), **rest}, "has proj_size"),
        "missing-layer": (
            {k: v for k, v in three.items() if "_l1" not in k} | rest,
            "has layers [0, 2]: layer 1 is missing",
        ),
        "bad-shape": (
            {**lstm_tensors(), **rest, "rnn.weight_hh_l1": np.zeros((48, 11), np.float32)},
            "'rnn.weight_hh_l1' is (48, 11), not (48, 12)",
        ),
        "scalar-weight": (
            {**lstm_tensors(), **rest, "rnn.weight_ih_l0": np.zeros((), np.float32)},
            "the LSTM 'rnn.': rnn.weight_ih_l0 is (), not (G·H, input)",
        ),
        "half-biases": (
            {k: v for k, v in lstm_tensors().items() if k != "rnn.bias_hh_l1"} | rest,
            "has no 'rnn.bias_hh_l1'",
        ),
    }
    for name, (tensors, message) in files.items():
        save_file(tensors, str(tmp_path / f"{name}.st"))
        args = ["import", str(tmp_path / f"{name}.st"), "--out", str(tmp_path / "o")]
        one_line_error(args, capsys, message)
    bf16 = {k: torch.from_numpy(v).bfloat16() for k, v in (lstm_tensors() | rest).items()}
    safetensors.torch.save_file(bf16, str(tmp_path / "bf16.st"))
    args = ["import", str(tmp_path / "bf16.st"), "--out", str(tmp_path / "o")]
    one_line_error(args, capsys, "'bfloat16'", "save model.float().state_dict()")
    # naming one head leaves the other over
    args = [
        "import",
        str(tmp_path / "two-heads.st"),
        "--out",
        str(tmp_path / "o"),
        "--names",
        "decoder=fc",
    ]
    one_line_error(args, capsys, "'aux.bias', 'aux.weight' belong to none of them")
    assert not (tmp_path / "o").exists()


def test_torch_save_files_are_refused_and_never_unpickled(tmp_path, capsys, monkeypatch):
    model = TorchCharModel(("emb", "rnn", "fc"))
    torch.save(model.state_dict(), tmp_path / "model.pt")  # a zip with a pickle inside
    torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.pt").read_bytes())
    (tmp_path / "legacy.safetensors").write_bytes((tmp_path / "legacy.pth").read_bytes())
    (tmp_path / "junk.bin").write_bytes(b"neither pickle nor zip")

    def unpickling(*args, **kwargs):
        raise AssertionError("the file was unpickled")

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(module, name, unpickling)
    for name, kind in [
        ("model.pt", "zip archive"),
        ("model.safetensors", "zip archive"),
        ("legacy.pth", "PyTorch pickle"),
        ("legacy.safetensors", "PyTorch pickle"),
        ("junk.bin", "a .bin file"),
    ]:
        args = ["import", str(tmp_path / name), "--out", str(tmp_path / "o")]
        hint = "from safetensors.torch import save_file; save_file(model.state_dict(), "
        one_line_error(args, capsys, kind, "never unpickles", hint)
    assert not (tmp_path / "o").exists()


def test_a_safetensors_header_that_starts_like_a_pickle_is_read(tmp_path, capsys):
    """A header of 0x10280 bytes starts the file with b"\\x80\\x02", as a pickle starts."""
    model, torch_loss = trained(SORTED, names=("emb", "rnn", "fc"))
    path, pad = tmp_path / "model.safetensors", 0
    for _ in range(20):
        safetensors.torch.save_file(model.state_dict(), str(path), metadata={"pad": "x" * pad})
        header = int.from_bytes(path.read_bytes()[:8], "little")
        if header == 0x10280:
            break
        pad += 0x10280 - header if header < 0x10280 - 8 else 1
    assert path.read_bytes()[:3] == b"\x80\x02\x01"
    text, _ = write_inputs(tmp_path, SORTED)
    run = str(tmp_path / "run")
    assert main(["import", str(path), "--out", run, "--vocab-from", text]) == 0
    assert abs(our_loss(run, text, capsys) - torch_loss) <= 1e-5


def test_bad_vocab_files_are_one_line(tmp_path, capsys):
    tensors = {
        **lstm_tensors(input_size=5),
        "fc.weight": np.zeros((5, 12), np.float32),
        "fc.bias": np.zeros(5, np.float32),
    }
    save_file(tensors, str(tmp_path / "m.st"))
    (tmp_path / "text.txt").write_text("abcde", encoding="utf-8")
    vocabs = {
        "not-json.json": ("['a', 'b']", "is not JSON"),
        "dict.json": (
            '{"a": 0}',
            "wants a JSON list of characters (or a checkpoint's tokenizer object",
        ),
        "eos.json": ('["<eos>", "a", "b", "c", "d"]', "1-character strings, got '<eos>'"),
        "dupes.json": ('["a", "a", "b", "c", "d"]', "duplicate characters 'a'"),
        "short.json": ('["a", "b", "c"]', "has 3 entries, the decoder 5"),
        "empty.json": ("[]", "it is empty"),
    }
    base = ["import", str(tmp_path / "m.st"), "--out", str(tmp_path / "o")]
    for name, (content, fragment) in vocabs.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        one_line_error([*base, "--vocab", str(tmp_path / name)], capsys, name, fragment)
    one_line_error([*base, "--vocab", str(tmp_path / "none.json")], capsys, "no such file")
    one_line_error(
        [*base, "--vocab", str(tmp_path / "eos.json"), "--vocab-from", str(tmp_path / "text.txt")],
        capsys,
        "not allowed with",
    )
    assert not (tmp_path / "o").exists()
    (tmp_path / "good.json").write_text('["e", "d", "c", "b", "a"]', encoding="utf-8")
    assert main([*base, "--vocab", str(tmp_path / "good.json")]) == 0
    assert load_model(tmp_path / "o")[1].chars == list("edcba")


def test_a_bpe_model_exports_to_torch_and_imports_with_its_tokenizer(tmp_path, capsys):
    from lstm_scratch.model.tokens import TokenVocab

    vocab = TokenVocab.train("bpe", HAMLET, 60)
    config = ModelConfig(len(vocab), 7, 2, 5, dtype="float64")
    model = CharLM(config, seed=3)
    meta = {"model": config.__dict__, "vocab": vocab.to_json(), "step": 0, "metrics": {}}
    save_checkpoint(tmp_path / "run", model.params.state_dict(), meta)
    assert main(["export", str(tmp_path / "run"), "--to", "torch", str(tmp_path / "w.st")]) == 0
    ids = vocab.encode(HAMLET[:200]).reshape(-1, 1)  # (T, 1) token ids
    ours = model.forward(ids)[0]
    theirs = torch_logits(tmp_path / "w.st", ids)
    assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()
    assert main(["import", str(tmp_path / "w.st"), "--out", str(tmp_path / "back")]) == 0
    assert load_model(tmp_path / "back")[1] == vocab  # the tokenizer travels in the metadata
    (tmp_path / "tok.json").write_text(json.dumps(vocab.to_json()), encoding="utf-8")
    args = ["import", str(tmp_path / "w.st"), "--out", str(tmp_path / "given")]
    assert main([*args, "--vocab", str(tmp_path / "tok.json")]) == 0
    assert load_model(tmp_path / "given")[1] == vocab
    (tmp_path / "bad.json").write_text('{"tokenizer": "bpe", "json": 7}', encoding="utf-8")
    one_line_error([*args, "--vocab", str(tmp_path / "bad.json")], capsys, "invalid tokenizer")
