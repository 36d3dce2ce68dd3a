"""Export to PyTorch's names and import back: torch's own modules give our logits."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from lstm_scratch.checkpoint import load_checkpoint, save_checkpoint
from lstm_scratch.cli import main
from lstm_scratch.data import Vocab
from lstm_scratch.loading import load_model
from lstm_scratch.model import CharLM, ModelConfig

VOCAB = Vocab(list("abcdefghij"))


def saved_model(folder, embed_size, dtype="float64"):
    config = ModelConfig(10, hidden_size=7, num_layers=2, embed_size=embed_size, dtype=dtype)
    model = CharLM(config, seed=3)
    rng = np.random.default_rng(1)  # random non-zero biases, including bias_hh
    model.params.load_state_dict(
        {k: rng.normal(0, 0.8, v.shape) for k, v in model.params.state_dict().items()}
    )
    meta = {"model": config.__dict__, "vocab": VOCAB.to_json(), "step": 0, "metrics": {}}
    save_checkpoint(folder, model.params.state_dict(), meta)
    return model


def torch_logits(path, ids):
    """The README's loading code: nn.Embedding (or one-hot) + nn.LSTM + nn.Linear."""
    from safetensors.torch import load_file

    weights = load_file(str(path))
    vocab_size, hidden = weights["decoder.weight"].shape
    layers = sum(name.startswith("lstm.weight_ih_l") for name in weights)
    embedding = None
    if "embedding.weight" in weights:
        embedding = torch.nn.Embedding(*weights["embedding.weight"].shape).double()
        embedding.load_state_dict({"weight": weights["embedding.weight"]})
        input_size = weights["embedding.weight"].shape[1]
    else:
        input_size = vocab_size
    lstm = torch.nn.LSTM(input_size, hidden, layers).double()
    lstm.load_state_dict({k.removeprefix("lstm."): v for k, v in weights.items() if "lstm." in k})
    decoder = torch.nn.Linear(hidden, vocab_size).double()
    decoder.load_state_dict({"weight": weights["decoder.weight"], "bias": weights["decoder.bias"]})
    x = torch.from_numpy(ids)
    inputs = embedding(x) if embedding else torch.nn.functional.one_hot(x, vocab_size).double()
    with torch.no_grad():
        return decoder(lstm(inputs)[0]).numpy()


@pytest.mark.parametrize("embed_size", [0, 5])
def test_exported_weights_give_torch_our_logits(tmp_path, capsys, embed_size):
    model = saved_model(tmp_path / "run", embed_size)
    assert main(["export", str(tmp_path / "run"), "--to", "torch", str(tmp_path / "w.st")]) == 0
    ids = np.random.default_rng(0).integers(0, 10, (9, 3))  # (T, B)
    ours, _, _ = model.forward(ids)
    theirs = torch_logits(tmp_path / "w.st", ids)
    assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()


def test_import_round_trip_and_torch_made_file(tmp_path, capsys):
    model = saved_model(tmp_path / "run", 4)
    main(["export", str(tmp_path / "run"), "--to", "torch", str(tmp_path / "w.st")])
    assert main(["import", str(tmp_path / "w.st"), "--out", str(tmp_path / "back")]) == 0
    back, vocab, _ = load_model(tmp_path / "back")
    assert vocab.to_json() == VOCAB.to_json()
    np.testing.assert_array_equal(back.params.flat, model.params.flat)
    # a file made by torch itself, with no vocabulary: the text supplies it
    torch.manual_seed(0)
    modules = {"embedding": torch.nn.Embedding(10, 4), "lstm": torch.nn.LSTM(4, 6, 1),
               "decoder": torch.nn.Linear(6, 10)}  # fmt: skip
    weights = {f"{m}.{k}": v.detach().numpy() for m, mod in modules.items()
               for k, v in mod.state_dict().items()}  # fmt: skip
    save_file(weights, str(tmp_path / "torch.st"))
    (tmp_path / "text.txt").write_text("jihgfedcba" * 3, encoding="utf-8")
    code = main(["import", str(tmp_path / "torch.st"), "--out", str(tmp_path / "t"),
                 "--vocab-from", str(tmp_path / "text.txt")])  # fmt: skip
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
