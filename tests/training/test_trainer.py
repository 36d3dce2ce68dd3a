"""What the trainer means, checked against oracles computed apart from it: the same run written
as a plain torch loop (nn.Embedding, nn.LSTM, nn.Linear with our initial weights,
clip_grad_norm_, torch.optim), the evaluation as one whole-sequence pass in torch, early stopping
against a scripted validation loss, and a stopped and resumed run against what its own
evaluations say the best step, the early stop and the skipped batches must be.

The torch loop cuts the text by hand: B contiguous rows of n = (N − 1) // B targets each, read T
characters at a time, the LSTM state carried from chunk to chunk and zero at each epoch's start.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lstm_scratch.errors import ConfigError, TrainingError
from lstm_scratch.model.charlm import CharLM
from lstm_scratch.model.data import HAMLET
from lstm_scratch.training import checkpoint
from lstm_scratch.training import train as train_module
from lstm_scratch.training.config import make_config
from lstm_scratch.training.evaluate import evaluate
from lstm_scratch.training.train import train

TEXT = HAMLET[:200]  # 199 targets: 3 rows of 66 are 10 chunks of 7 (the last one 3 long)
CHARS = sorted(set(TEXT))
IDS = torch.tensor([CHARS.index(c) for c in TEXT])  # (N,)
TINY = dict(hidden_size=6, num_layers=2, embed_size=4, dtype="float64", batch_size=3, seq_len=7)


def quiet_train(config=None, **options):
    """train() without its progress bar and notes."""
    return train(config, quiet=True, log=lambda line: None, **options)


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


TORCH_CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


class TorchCharLM(torch.nn.Module):
    """Our CharLM in torch, with the same parameter names: embedding -> LSTM (or GRU, or RNN,
    by the weights' names) -> decoder."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        vocab, hidden = weights["decoder.weight"].shape
        embed = weights["embedding.weight"].shape[1]
        self.cell = next(name.split(".")[0] for name in weights if "weight_ih_l0" in name)
        layers = sum(name.startswith(f"{self.cell}.weight_ih_l") for name in weights)
        self.embedding = torch.nn.Embedding(vocab, embed).double()
        setattr(self, self.cell, TORCH_CELLS[self.cell](embed, hidden, layers).double())
        self.decoder = torch.nn.Linear(hidden, vocab).double()
        self.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})

    def forward(self, ids, state=None):  # ids (T, B) -> logits (T, B, V), state
        y, state = getattr(self, self.cell)(self.embedding(ids), state)
        return self.decoder(y), state


def torch_scores(model: TorchCharLM, rows: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy (nats/char) and next-character accuracy of whole rows (N+1, B), each read
    in one pass from a zero state."""
    with torch.no_grad():
        logits, _ = model(rows[:-1])  # (N, B, V)
    targets = rows[1:]  # (N, B) each character's next one
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    accuracy = (logits.argmax(-1) == targets).double().mean()
    return loss.item(), accuracy.item()


def torch_optimizer(config, params):
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optimizer]
    return kind(params, config.lr, weight_decay=config.weight_decay)


def torch_training(config, weights, steps):
    """The run in plain torch: returns the final weights, each step's training loss per
    character, the validation scores after every ``eval_every`` steps (on the whole text, as
    --val-fraction 0 asks) and the largest gradient norm seen before clipping."""
    model = TorchCharLM(weights)
    optimizer = torch_optimizer(config, list(model.parameters()))
    B, T = config.batch_size, config.seq_len
    n = (len(IDS) - 1) // B  # targets per row
    rows = torch.stack([IDS[b * n : b * n + n + 1] for b in range(B)], dim=1)  # (n+1, B)
    losses, scores, largest_norm = [], {}, 0.0
    for step in range(steps):
        k = step % math.ceil(n / T)  # the chunk of this epoch
        if k == 0:
            state = None  # a zero state at every epoch's start
        window = rows[k * T : min(k * T + T, n) + 1]  # (T+1, B)
        logits, state = model(window[:-1], state)  # (T, B, V)
        # carried, no gradient across chunks: (h, c) for the LSTM, h for the others
        state = state.detach() if torch.is_tensor(state) else tuple(s.detach() for s in state)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            window[1:].reshape(-1),
            reduction=config.loss_reduction,
        )
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        largest_norm = max(largest_norm, norm.item())
        if config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), config.clip_value)
        optimizer.step()
        per_char = 1 if config.loss_reduction == "mean" else window[1:].numel()
        losses.append(loss.item() / per_char)
        if (step + 1) % config.eval_every == 0 or step + 1 == steps:
            scores[step + 1] = torch_scores(model, IDS[:, None])
    final = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return final, losses, scores, largest_norm


OPTIMIZERS = {
    "sgd, momentum, L2 decay, norm clip": dict(
        optimizer="sgd", lr=0.3, momentum=0.9, weight_decay=0.05, grad_clip=0.1
    ),
    "adamw, decoupled decay, norm clip": dict(
        optimizer="adamw", lr=0.02, weight_decay=0.1, grad_clip=0.1
    ),
    "adam, L2 decay, norm clip": dict(optimizer="adam", lr=0.02, weight_decay=0.1, grad_clip=0.1),
    "the notebook: sgd on the summed loss, entries clipped": dict(
        optimizer="sgd", lr=0.01, loss_reduction="sum", grad_clip=None, clip_value=0.05
    ),
}


CASES = {**OPTIMIZERS}
CASES.update(
    {
        f"{cell}, adamw": dict(
            optimizer="adamw", lr=0.02, weight_decay=0.1, grad_clip=0.1, cell=cell
        )
        for cell in ("gru", "rnn")
    }
)


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_training_equals_the_same_run_written_in_torch(tmp_path, options):
    """23 steps: two epochs of 10 chunks and three more, so two epoch starts; every weight, every
    reported training loss, and every evaluation as torch computes them (an LSTM with each
    optimizer, and a GRU and an RNN)."""
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    config = make_config(
        data=str(path), val_fraction=0.0, steps=23, eval_every=5, seed=4, **TINY, **options
    )
    result = quiet_train(config, out=tmp_path / "run")
    assert result.vocab.chars == CHARS
    start = CharLM(config.model_config(len(CHARS)), seed=config.seed)  # the run's first weights
    expected, losses, scores, largest_norm = torch_training(config, start.params.state_dict(), 23)
    if config.grad_clip is not None:
        assert largest_norm > 2 * config.grad_clip  # the clip was at work
    for name, value in result.model.params.state_dict().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-9, atol=1e-12, err_msg=name)
    lines = metrics(result.out)
    assert [m["step"] for m in lines] == [5, 10, 15, 20, 23]
    for m in lines:
        assert m["train_loss"] == pytest.approx(losses[m["step"] - 1], rel=1e-9)
        loss, accuracy = scores[m["step"]]
        assert m["val_loss"] == pytest.approx(loss, rel=1e-9)
        assert m["val_accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert m["epoch"] == pytest.approx(m["step"] / 10)


def fitted(weights: dict[str, np.ndarray], steps: int = 60) -> dict[str, np.ndarray]:
    """The weights after a few Adam steps on the whole text in torch: a model right about
    some next characters (a random one is right about almost none, whatever it is scored on)."""
    model = TorchCharLM(weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        logits, _ = model(IDS[:-1, None])  # (N-1, 1, V)
        optimizer.zero_grad()
        F.cross_entropy(logits[:, 0], IDS[1:]).backward()
        optimizer.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_evaluate_scores_whole_rows_with_the_state_carried():
    """evaluate() cuts B rows and reads them 5 characters at a time: the same loss and accuracy
    as reading each row whole in torch."""
    config = make_config(**TINY)
    model = CharLM(config.model_config(len(CHARS)), seed=2)
    model.params.load_state_dict(fitted(model.params.state_dict()))
    scores = evaluate(model, IDS.numpy(), batch_size=3, seq_len=5)
    n = (len(IDS) - 1) // 3  # 66 targets a row: 14 chunks, the last one 1 long
    rows = torch.stack([IDS[b * n : b * n + n + 1] for b in range(3)], dim=1)  # (n+1, 3)
    loss, accuracy = torch_scores(TorchCharLM(model.params.state_dict()), rows)
    assert scores["chars"] == 3 * n
    assert accuracy > 0.2
    assert scores["loss"] == pytest.approx(loss, rel=1e-12)
    assert scores["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert scores["bpc"] == pytest.approx(loss / math.log(2), rel=1e-12)
    assert scores["perplexity"] == pytest.approx(math.exp(loss), rel=1e-12)


def test_the_state_is_zero_at_each_epoch_s_start_and_carried_within_one(tmp_path, monkeypatch):
    """The state each training step starts from, as CharLM.loss_and_grads receives it."""
    seen = []  # (state in, state out) of each step
    real = CharLM.loss_and_grads

    def spy(self, inputs, targets, state, *args):
        loss, grads, out = real(self, inputs, targets, state, *args)
        seen.append(([a.copy() for a in state], [a.copy() for a in out]))
        return loss, grads, out

    monkeypatch.setattr(CharLM, "loss_and_grads", spy)
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    config = make_config(data=str(path), val_fraction=0.0, steps=23, eval_every=50, **TINY)
    quiet_train(config, out=tmp_path / "run")
    assert len(seen) == 23
    for step, (state_in, _) in enumerate(seen):
        if step % 10 == 0:
            assert not any(a.any() for a in state_in), step  # a new epoch
        else:
            previous_out = seen[step - 1][1]
            assert all(np.array_equal(a, b) for a, b in zip(state_in, previous_out, strict=True))
            assert all(a.any() for a in state_in), step


def scripted_evaluation(monkeypatch, losses):
    """train's evaluate() replaced by one returning ``losses`` in turn."""
    calls = iter(losses)

    def fake(model, ids, batch_size, seq_len, chars=None):
        loss = next(calls)
        return {"loss": loss, "bpc": 0.0, "perplexity": 0.0, "accuracy": 0.0, "chars": 1}

    monkeypatch.setattr(train_module, "evaluate", fake)


@pytest.mark.parametrize(
    "patience, losses, stop_at, best_at",
    [
        (2, [5.0, 4.0, 4.5, 4.2, 3.0], 4, 2),  # two evaluations worse than 4.0: stop at the 4th
        (2, [5.0, 4.0, 4.0, 4.0, 3.0], 4, 2),  # no better is no improvement
        (3, [5.0, 4.0, 4.5, 3.9, 4.0, 4.1, 4.2, 1.0], 7, 4),  # an improvement starts afresh
        (1, [5.0, 5.1, 1.0], 2, 1),
    ],
)
def test_early_stopping_after_exactly_patience_evaluations(
    tmp_path, monkeypatch, patience, losses, stop_at, best_at
):
    scripted_evaluation(monkeypatch, losses)
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    config = make_config(
        data=str(path), val_fraction=0.0, steps=100, eval_every=3, patience=patience, **TINY
    )
    result = quiet_train(config, out=tmp_path / "run")
    assert result.stopped_by == "early-stopping"
    assert result.step == 3 * stop_at
    assert [m["val_loss"] for m in metrics(result.out)] == losses[:stop_at]
    _, meta = checkpoint.load_checkpoint(result.out / "best")
    assert meta["step"] == 3 * best_at


def poison(monkeypatch, steps: set[int]) -> None:
    """CharLM.loss_and_grads returns a NaN loss at these steps, counted from the first call;
    a run resumed in the same test continues the count where the stopped one left it."""
    real, calls = CharLM.loss_and_grads, iter(range(10**6))

    def nan_at_some_steps(self, *args, **kwargs):
        loss, grads, state = real(self, *args, **kwargs)
        return (math.nan if next(calls) in steps else loss), grads, state

    monkeypatch.setattr(CharLM, "loss_and_grads", nan_at_some_steps)


def stopping_run(tmp_path, **options):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    # plain SGD at a high rate: the validation loss goes up and down, and patience runs out
    settings = dict(steps=90, eval_every=3, patience=3, optimizer="sgd", lr=2.0, grad_clip=None)
    settings.update(options)
    return make_config(data=str(path), val_fraction=0.0, on_nonfinite="skip", **TINY, **settings)


def judged(lines: list[dict]) -> tuple[int, list[int]]:
    """From the evaluations alone: the best one's step, and the evaluations without improvement
    since the best before each one (an oracle for best/ and --patience)."""
    best_loss, best_step, bad = math.inf, 0, []
    for m in lines:
        if m["val_loss"] < best_loss:
            best_loss, best_step = m["val_loss"], m["step"]
        bad.append((m["step"] - best_step) // 3)
    return best_step, bad


def test_a_stopped_run_resumes_its_patience_skips_and_clock(tmp_path, monkeypatch):
    """Stopped where two evaluations have gone without improvement and batches were skipped,
    then resumed: the same evaluations, the same best step, the same early stop and
    the same count of skipped batches as a run never stopped, and the clock goes on."""
    nan_steps = {4, 10, 11, 25}
    config = stopping_run(tmp_path)
    poison(monkeypatch, nan_steps)
    whole = quiet_train(config, out=tmp_path / "whole")
    lines = metrics(whole.out)
    best_step, bad = judged(lines)
    assert whole.stopped_by == "early-stopping" and bad[-1] == 3  # patience ran out, and no later
    assert max(bad[:-1]) < 3 and whole.step == best_step + 3 * 3
    assert checkpoint.load_checkpoint(whole.out / "best")[1]["step"] == best_step
    skipped = len([s for s in nan_steps if s < whole.step])
    assert checkpoint.load_train_state(whole.out)[1]["skipped"] == skipped

    # stop at the evaluation before the last: the second without improvement, so that both
    # the best loss and the count of bad evaluations decide what the next one does
    stop = lines[-2]["step"]
    assert bad[-2] == 2 and stop > max(nan_steps)
    poison(monkeypatch, nan_steps)
    first = quiet_train(config, out=tmp_path / "parts", stop_after=stop)
    assert first.stopped_by == "stop-after" and first.step == stop
    stopped_at = metrics(first.out)[-1]["elapsed"]
    resumed = quiet_train(resume=tmp_path / "parts")
    assert resumed.stopped_by == "early-stopping" and resumed.step == whole.step
    timing = {"elapsed", "chars_per_s"}
    parts = metrics(resumed.out)
    assert [{k: v for k, v in m.items() if k not in timing} for m in parts] == [
        {k: v for k, v in m.items() if k not in timing} for m in lines
    ]
    assert checkpoint.load_checkpoint(resumed.out / "best")[1]["step"] == best_step
    assert checkpoint.load_train_state(resumed.out)[1]["skipped"] == skipped
    after = [m["elapsed"] for m in parts if m["step"] > stop]
    assert stopped_at < after[0] and after == sorted(after)  # the clock counts the first part


def test_a_streak_of_skips_spans_a_resume(tmp_path, monkeypatch):
    """Eleven NaN batches in a row end the run at the eleventh, even when the run was stopped
    and resumed in the middle of the streak."""
    streak = set(range(5, 16))  # steps 6 … 16, counted from 1
    config = stopping_run(tmp_path, patience=None, steps=40)
    poison(monkeypatch, streak)
    with pytest.raises(TrainingError, match=r"at step 16, and at the 10 steps before it"):
        quiet_train(config, out=tmp_path / "whole")
    poison(monkeypatch, streak)
    quiet_train(config, out=tmp_path / "parts", stop_after=9)
    with pytest.raises(TrainingError, match=r"at step 16, and at the 10 steps before it"):
        quiet_train(resume=tmp_path / "parts")


def test_a_schedule_by_time_follows_the_clock_and_resumes_exactly(tmp_path, monkeypatch):
    """--schedule-by time under a clock that moves 2 s per training step: each reported rate is
    the cosine of its step's start time over the 60 s limit, written out here; a run stopped at
    step 11 and resumed ends with the same weights, bit for bit; without --steps the run lasts
    until the limit (at 0.05 s a step, past the 1,000 steps a run has by default), judges its
    last evaluation as a last step's, and a resume of it has nothing left to do."""
    steps_done = [0]
    real = CharLM.loss_and_grads

    def counted(self, *args, **kwargs):
        steps_done[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CharLM, "loss_and_grads", counted)
    tick = [2.0]  # seconds a step takes
    clock = types.SimpleNamespace(perf_counter=lambda: tick[0] * steps_done[0])
    monkeypatch.setattr(train_module, "time", clock)
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    options = dict(data=str(path), val_fraction=0.0, eval_every=8, seed=4, **TINY)
    options.update(schedule="cosine", schedule_by="time", time_limit=1.0, warmup_steps=2)
    options.update(optimizer="adamw", lr=0.02, min_lr_ratio=0.1)

    whole = quiet_train(make_config(steps=24, **options), out=tmp_path / "whole")
    for m in metrics(whole.out):  # the rate of step m - 1, which began at 2 (m - 1) s
        progress = 2.0 * (m["step"] - 1) / 60.0
        expected = 0.002 + 0.5 * (0.02 - 0.002) * (1 + math.cos(math.pi * progress))
        assert m["lr"] == pytest.approx(expected, rel=1e-12), m["step"]

    steps_done[0] = 0
    quiet_train(make_config(steps=24, **options), out=tmp_path / "parts", stop_after=11)
    assert checkpoint.load_train_state(tmp_path / "parts")[1]["step"] == 11
    parts = quiet_train(resume=tmp_path / "parts")
    assert parts.step == 24
    for name, value in whole.model.params.state_dict().items():
        assert np.array_equal(parts.model.params[name], value), name

    steps_done[0], tick[0] = 0, 0.05  # 1,200 steps in the limit: more than the default 1,000
    options.update(eval_every=500)
    unbounded = quiet_train(make_config(**options), out=tmp_path / "until")
    assert (unbounded.step, unbounded.stopped_by) == (1200, "done")
    lines = metrics(unbounded.out)
    assert [m["step"] for m in lines] == [500, 1000, 1200]
    assert lines[-1]["lr"] == pytest.approx(0.002 + 0.009 * (1 + math.cos(math.pi * 59.95 / 60)))
    record = checkpoint.load_train_state(unbounded.out)[1]
    assert record["best_val"] == min(m["val_loss"] for m in lines)  # the end is judged too
    again = quiet_train(resume=unbounded.out)  # its seconds are spent: nothing more to do
    assert (again.step, again.stopped_by) == (1200, "done")


def test_a_schedule_by_time_needs_a_time_limit_and_a_cosine():
    for options in (dict(schedule="cosine"), dict(time_limit=5.0)):
        with pytest.raises(ConfigError, match="--schedule-by time shapes a cosine"):
            make_config(schedule_by="time", **options)
