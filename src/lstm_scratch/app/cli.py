"""The command line of lstm-scratch: train, sample, eval, plot, export, import, show and bench.

It only parses arguments and calls the library. The train command's flags are built from the
fields of TrainConfig (training/config.py), which hold each setting's default, help and choices.
Every error caused by input is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
from pathlib import Path

import numpy as np

from lstm_scratch.app import interop, plot, show
from lstm_scratch.errors import LstmScratchError
from lstm_scratch.model import data
from lstm_scratch.model.memory import out_of_memory_message
from lstm_scratch.model.tokens import UNKNOWN as UNK
from lstm_scratch.model.tokens import TokenVocab
from lstm_scratch.training import distributed
from lstm_scratch.training.config import GROUPS, RESUME_OVERRIDABLE, TrainConfig, make_config
from lstm_scratch.training.evaluate import evaluate, predictions
from lstm_scratch.training.loading import load_model
from lstm_scratch.training.sample import sample, validate_sampling
from lstm_scratch.training.train import train

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; one line is enough
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


TRAIN_HELP = """Train a character language model. Each flag's default is TrainConfig's; a preset
(hamlet, the default without --data) replaces some of them, and a flag given replaces the
preset's value."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _train_arguments(parser) -> None:
    """``train``'s flags in the groups --help shows: one per TrainConfig field, from its type,
    default and metadata (training/config.py), then those of this call (--out, --resume, …)."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    types = typing.get_type_hints(TrainConfig)
    for option in dataclasses.fields(TrainConfig):
        group = groups[option.metadata["group"]]
        group.add_argument(_flag(option.name), **_config_argument(option, types[option.name]))
    _call_arguments(groups["the run"])


def _config_argument(option: dataclasses.Field, hint) -> dict:
    """add_argument's keywords for a TrainConfig field. A flag not given stays out of the
    namespace (argparse.SUPPRESS), so that a preset's value stands and a resume sees which
    settings were given."""
    meta = option.metadata
    shown = meta["shown"] or ("off" if option.default is False else option.default)
    help_text = f"{meta['help']} (default: {shown})".replace("%", "%%")
    kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    if kind is bool:
        return {"action": "store_true", "default": argparse.SUPPRESS, "help": help_text}
    metavar = meta["metavar"] or {int: "N", float: "X"}.get(kind, "TEXT")
    return {
        "type": kind,
        "default": argparse.SUPPRESS,
        "choices": meta["choices"],
        "metavar": None if meta["choices"] else metavar,
        "help": help_text,
    }


def _call_arguments(group) -> None:
    """The flags of one call of train, which are not settings of the run."""
    group.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="the run folder (default: runs/<preset or text name>, numbered past existing ones)",
    )
    *others, last = (_flag(name) for name in RESUME_OVERRIDABLE)
    changeable = f"{', '.join(others)} and {last}"
    group.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run exactly, given alone or after the run's own command line; of its "
        f"settings only {changeable} may change (default: a new run)",
    )
    group.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop, with a checkpoint, after N steps of this call (default: no such stop)",
    )
    group.add_argument(
        "--quiet", action="store_true", help="hide the progress bar (default: shown)"
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="lstm-scratch",
        description=__doc__.splitlines()[0],
        epilog="lstm-scratch COMMAND --help lists a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train_parser = sub.add_parser(
        "train", help="train a character language model", description=TRAIN_HELP
    )
    _train_arguments(train_parser)
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--prime", default="", help="text to start from")
    p.add_argument(
        "--length",
        type=int,
        default=500,
        help="characters to write after the prime, whatever the tokens",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p = sub.add_parser("eval", help="loss, bits/char, perplexity and accuracy on a text")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--lower", action="store_true", default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p = sub.add_parser("plot", help="loss curves of a run as RUN_DIR/loss.png")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="another PNG path")
    p = sub.add_parser("export", help="weights with PyTorch's names, for nn.LSTM and friends")
    p.add_argument("checkpoint")
    p.add_argument("--to", choices=["torch"], required=True)
    p.add_argument("out", help="the .safetensors file to write")
    p = sub.add_parser("import", help="a checkpoint from a torch character model's weights")
    p.add_argument("file", help="a .safetensors file: an export, or a torch model's state_dict")
    p.add_argument("--out", required=True, help="the checkpoint folder to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab-from", metavar="TEXT", help="the training text (its sorted chars)")
    g.add_argument("--vocab", metavar="FILE.json", help="a JSON list of the chars in id order")
    p.add_argument(
        "--names",
        default=None,
        metavar="embedding=P,lstm|gru|rnn=P,decoder=P",
        help="the parts' module names, when their shapes do not tell them apart",
    )
    p = sub.add_parser("show", help="an HTML page of what the units do along a text")
    p.add_argument("checkpoint")
    p.add_argument("--text", required=True, metavar="FILE", help="the text to run the model on")
    p.add_argument("--out", default=None, help="the page to write (default: RUN/show.html)")
    p.add_argument("--max-chars", type=int, default=show.MAX_CHARS, help="show at most N chars")
    p.add_argument("--encoding", default="utf-8")
    _bench_arguments(sub.add_parser("bench", help="speed against torch.nn.LSTM"))
    return parser


def _bench_arguments(p: Parser) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    p.add_argument(
        "--engine",
        action="store_true",
        help="the LSTM alone, forward + backward, dense input and ids, in both import orders",
    )
    p.add_argument(
        "--cell",
        default="lstm",
        help="with --engine: the layer timed, lstm, gru or rnn (default lstm)",
    )
    p.add_argument("--configs", default="", help="a,b,c,d (default: all)")
    for name in ("hidden", "batch", "seq-len", "layers", "vocab"):
        p.add_argument(f"--{name}", type=int, default=None, help="adds a custom config")
    p.add_argument("--rounds", type=int, default=None, help="A B rounds (default 5)")
    p.add_argument("--seconds", type=float, default=None, help="timed per measurement")
    p.add_argument("--no-torch", action="store_true", help="lstm-scratch alone")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report")


def cmd_train(args) -> int:
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {k: v for k, v in vars(args).items() if k in settings}  # given, in the given order
    if args.resume:
        result = train(
            resume=args.resume,
            out=args.out,
            overrides=options,
            quiet=args.quiet,
            stop_after=args.stop_after,
        )
    else:
        preset = options.pop("preset", None) or ("hamlet" if "data" not in options else None)
        config = make_config(preset, **options)
        result = train(config, out=args.out, quiet=args.quiet, stop_after=args.stop_after)
    if result.rank != 0:  # under mpiexec, rank 0 reports for all
        return EXIT_CODES.get(result.stopped_by, 0)
    m = result.metrics
    if m:
        print(
            f"step {m['step']}: val loss {m['val_loss']:.4f} nats/char, "
            f"{m['val_bpc']:.4f} bits/char, perplexity {m['val_perplexity']:.3f}, "
            f"accuracy {m['val_accuracy']:.2%} ({result.stopped_by})"
        )
    print(f"checkpoint: {result.out} (step {result.step}, {result.stopped_by})")
    _plot_if_possible(result.out)
    if result.stopped_by in EXIT_CODES:
        return EXIT_CODES[result.stopped_by]
    if result.config.data is None:  # the built-in passage: report as the notebook did
        _memorisation_report(result)
    return 0


def _plot_if_possible(run_dir) -> None:
    """The loss curves beside the checkpoint; a note instead when matplotlib is missing."""
    try:
        print(f"loss curves: {plot.plot_run(run_dir)}")
    except LstmScratchError as error:
        print(f"no loss curves: {error}")


def _memorisation_report(result) -> None:
    """What the original notebook printed: ground truth, predictions, accuracy; then a sample.

    The figures are for the final model and, when it is another step, for the best checkpoint
    (lowest loss on the passage, kept in best/): plain SGD at this rate sometimes jumps out of a
    minimum late in a run, so the last step is not always the best. The predictions and the
    sample come from the best checkpoint, the model a user would keep.
    """
    ids = _ids_of(result.vocab, data.HAMLET)
    truth = ids[1:]
    models = [("final model", result.step, result.model)]
    best_dir = result.out / "best"
    if (best_dir / "model.safetensors").exists():
        best_model, _, meta = load_model(best_dir)
        if meta["step"] != result.step:
            models.append((f"best checkpoint ({best_dir})", meta["step"], best_model))
    lines = []
    for name, step, model in models:
        argmax_ids, sampled_ids = predictions(model, ids, np.random.default_rng(0))
        lines.append(
            f"Accuracy, {name}, step {step}: {np.mean(argmax_ids == truth):.2%} teacher-forced "
            f"argmax, {np.mean(sampled_ids == truth):.2%} sampled as the notebook did"
        )
    model = models[-1][2]
    print("\nGround truth:\n" + result.vocab.decode(truth))
    print(f"\nPredictions of the {models[-1][0]} (teacher-forced argmax):")
    print(result.vocab.decode(argmax_ids))
    print(f"\n(hidden {model.config.hidden_size})\n" + "\n".join(lines))
    prime = "to be, or not"
    print(f"\nSample (temperature 0.5): {prime}", end="")
    sample(
        model,
        _ids_of(result.vocab, prime),
        120,
        temperature=0.5,
        seed=0,
        on_id=lambda i: print(result.vocab.decode([i]), end="", flush=True),
    )
    print()


def _ids_of(vocab, text: str) -> np.ndarray:
    """The ids of a text of the training passage (a small word vocabulary may lack some words:
    they are [UNK] here)."""
    return vocab.encode_counted(text)[0] if isinstance(vocab, TokenVocab) else vocab.encode(text)


def cmd_sample(args) -> int:
    validate_sampling(args.length, args.temperature, args.top_k, args.top_p)
    model, vocab, meta = load_model(args.checkpoint)
    lower = meta.get("train_config", {}).get("lower", False)
    never = vocab.unknown_id if isinstance(vocab, TokenVocab) else None  # [UNK] is not text
    if args.prime:
        prime_ids = vocab.encode(args.prime.lower() if lower else args.prime)
    elif never is not None:
        choices = np.delete(np.arange(len(vocab)), never)
        prime_ids = np.random.default_rng(args.seed).choice(choices, size=1)
    else:
        prime_ids = np.random.default_rng(args.seed).integers(0, len(vocab), size=1)
    sys.stdout.write(vocab.decode(prime_ids))
    written = 0

    def write(token_id: int) -> bool:  # True once --length characters are out
        nonlocal written
        piece = vocab.decode([token_id])[: args.length - written]
        sys.stdout.write(piece)
        sys.stdout.flush()
        written += len(piece)
        return written >= args.length

    if args.length > 0:  # each token writes one character or more: --length draws are enough
        sample(
            model,
            prime_ids,
            args.length,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            write,
            never,
        )
    sys.stdout.write("\n")
    return 0


def cmd_eval(args) -> int:
    model, vocab, meta = load_model(args.checkpoint)
    lower = (
        args.lower if args.lower is not None else meta.get("train_config", {}).get("lower", False)
    )
    text = data.load_text(args.data, args.encoding, lower)
    ids, chars, unknown, what = _scored_ids(vocab, text)
    if unknown:
        shown = ", ".join(repr(ch) for ch, _ in unknown.most_common(10))
        print(
            f"{sum(unknown.values())} {what} ({len(unknown)} distinct: {shown})",
            file=sys.stderr if args.json else sys.stdout,  # stdout holds only the JSON
        )
    if len(ids) < 2:
        raise data.DataError(f"{args.data}: fewer than 2 tokens of the model's vocabulary")
    m = evaluate(model, ids, args.batch_size, args.seq_len, chars)
    if args.json:
        print(json.dumps(m))
        return 0
    line = (
        f"{args.data}: loss {m['loss']:.4f} nats/char, {m['bpc']:.4f} bits/char, "
        f"perplexity {m['perplexity']:.3f}, accuracy {m['accuracy']:.2%} over {m['chars']} chars"
    )
    if isinstance(vocab, TokenVocab):
        line += (
            f" (per token: loss {m['token_loss']:.4f} nats, perplexity "
            f"{math.exp(min(m['token_loss'], 700)):.3f}, over {m['tokens']} {vocab.kind} tokens)"
        )
    print(line)
    return 0


def _scored_ids(vocab, text: str) -> tuple:
    """(ids, characters per id or None, a Counter of what is unknown, what was done with it)."""
    if isinstance(vocab, TokenVocab):
        ids, chars, unknown = vocab.encode_known(text)
        if vocab.kind == "word":
            share = float(np.mean(ids == vocab.unknown_id)) if len(ids) else 0.0
            what = (
                f"words not in the model's vocabulary were scored as {UNK}, {share:.1%} of the "
                "tokens; each scores as one token, not as its word's characters"
            )
            return ids, chars, unknown, what
        return ids, chars, unknown, "characters not in the model's vocabulary were skipped"
    ids, unknown = vocab.encode_known(text)
    return ids, None, unknown, "characters not in the model's vocabulary were skipped"


def cmd_plot(args) -> int:
    print(f"wrote {plot.plot_run(args.run_dir, args.out)}")
    return 0


def cmd_export(args) -> int:
    print(f"wrote {interop.export_torch(args.checkpoint, args.out)} (PyTorch names)")
    return 0


def cmd_import(args) -> int:
    names = interop.parse_names(args.names) if args.names is not None else None
    text = data.load_text(args.vocab_from) if args.vocab_from else None
    out = interop.import_torch(args.file, args.out, text, names=names, vocab_file=args.vocab)
    print(f"wrote {out}")
    return 0


def cmd_show(args) -> int:
    if args.max_chars < 1:
        raise data.DataError(f"--max-chars must be >= 1, got {args.max_chars}")
    model, vocab, meta = load_model(args.checkpoint)
    if isinstance(vocab, TokenVocab):
        raise data.DataError(
            f"show colours the text a character at a time: {args.checkpoint} reads "
            f"{vocab.kind} tokens (show reads character models)"
        )
    lower = meta.get("train_config", {}).get("lower", False)
    text = data.load_text(args.text, args.encoding, lower)
    if len(text) > args.max_chars:
        print(f"showing the first {args.max_chars:,} of {len(text):,} characters (--max-chars)")
        text = text[: args.max_chars]
    unknown = int((~vocab.known(text)).sum())
    if unknown:
        print(f"{unknown} characters not in the model's vocabulary are shown grey, unread")
    config = model.config
    about = (
        f"{config.cell.upper()}, {config.num_layers} × {config.hidden_size} units, step "
        f"{meta.get('step', '?')} of {args.checkpoint}; {len(text):,} characters of {args.text}"
    )
    folder = Path(args.checkpoint)
    out = args.out or (folder if folder.is_dir() else folder.parent) / "show.html"
    print(f"wrote {show.write_page(model, vocab, text, out, about)}")
    return 0


def cmd_bench(args) -> int:
    from lstm_scratch.bench import harness as bench  # torch and the bench stay out of the rest

    custom = {k: getattr(args, k) for k in ("hidden", "batch", "seq_len", "layers", "vocab")}
    options = bench.make_options(
        args.quick,
        args.configs,
        custom,
        args.rounds,
        args.seconds,
        torch=not args.no_torch,
        engine=args.engine,
        cell=args.cell,
    )
    report = bench.run_bench(options, log=lambda line: print(line, file=sys.stderr))
    print(bench.format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)
    return 0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a one-line usage error (code 2)
        return int(exit_.code or 0)
    command = {
        "train": cmd_train,
        "sample": cmd_sample,
        "eval": cmd_eval,
        "plot": cmd_plot,
        "export": cmd_export,
        "import": cmd_import,
        "show": cmd_show,
        "bench": cmd_bench,
    }[args.command]
    try:
        return command(args)
    except LstmScratchError as error:
        print(f"lstm-scratch {args.command}: error: {error}", file=sys.stderr)
        distributed.abort_peers(2)  # under mpiexec: the other ranks would wait for ever
        return 2
    except MemoryError as error:  # an allocation the estimate let through (memory.py)
        message = out_of_memory_message(error)
        print(f"lstm-scratch {args.command}: error: {message}", file=sys.stderr)
        distributed.abort_peers(2)
        return 2
    except BrokenPipeError:  # the reader went away (`lstm-scratch sample ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    except KeyboardInterrupt:  # outside training (which saves and stops on its own)
        print(f"lstm-scratch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        distributed.abort_peers(1)
        raise


if __name__ == "__main__":
    sys.exit(main())
