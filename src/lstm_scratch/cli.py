"""The command line: ``lstm-scratch train | sample | eval | plot | export | import | bench``.

It only parses arguments and calls the library.
Every error caused by input is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from . import bench, data, distributed, interop, plot
from .config import make_config
from .errors import LstmScratchError
from .evaluate import evaluate, predictions
from .loading import load_model
from .memory import out_of_memory_message
from .sample import sample, validate_sampling
from .train import train

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; one line is enough
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


S = argparse.SUPPRESS  # training options not given stay out of the namespace: presets stand


def _train_arguments(p):
    """``train``'s flags, in the four groups --help shows."""
    _data_and_model_arguments(p)
    _optimisation_arguments(p.add_argument_group("optimisation"))
    _run_arguments(p.add_argument_group("the run"))


def _data_and_model_arguments(p):
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default=S, help="UTF-8 text file (default: the built-in Hamlet passage)"
    )
    g.add_argument(
        "--preset",
        default=S,
        help="hamlet (the default without --data) or shakespeare (give --data)",
    )
    g.add_argument("--encoding", default=S, help="text encoding (default utf-8)")
    g.add_argument("--lower", action="store_true", default=S, help="lowercase the text")
    g.add_argument("--val-fraction", type=float, default=S, help="held-out tail (default 0.1)")
    g.add_argument(
        "--max-vocab", type=int, default=S, help="keep the K-1 most frequent characters + unknown"
    )
    g = p.add_argument_group("model")
    g.add_argument("--hidden-size", type=int, default=S)
    g.add_argument("--num-layers", type=int, default=S)
    g.add_argument("--embed-size", type=int, default=S, help="0 for one-hot input")
    g.add_argument("--dropout", type=float, default=S)
    g.add_argument("--init", choices=["pytorch", "xavier"], default=S)
    g.add_argument("--forget-bias", type=float, default=S)
    g.add_argument("--dtype", choices=["float32", "float64"], default=S)
    g.add_argument(
        "--backend",
        choices=["auto", "numpy", "numba"],
        default=S,
        help="numba: compiled time loops; numpy: the reference; auto (default): by model size",
    )


def _optimisation_arguments(g):
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--seq-len", type=int, default=S, help="BPTT window")
    g.add_argument("--steps", type=int, default=S)
    g.add_argument("--epochs", type=float, default=S)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=S)
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--schedule", choices=["constant", "cosine", "step"], default=S)
    g.add_argument("--warmup-steps", type=int, default=S)
    g.add_argument("--min-lr-ratio", type=float, default=S)
    g.add_argument("--step-size", type=int, default=S)
    g.add_argument("--gamma", type=float, default=S)
    g.add_argument("--grad-clip", type=float, default=S, help="clip the global gradient norm")
    g.add_argument("--clip-value", type=float, default=S, help="clip each gradient entry")
    g.add_argument("--loss-reduction", choices=["mean", "sum"], default=S)


def _run_arguments(g):
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--eval-every", type=int, default=S)
    g.add_argument("--checkpoint-every", type=int, default=S)
    g.add_argument("--patience", type=int, default=S, help="early stopping (evaluations)")
    g.add_argument("--time-limit", type=float, default=S, help="minutes")
    g.add_argument(
        "--on-nonfinite",
        choices=["stop", "skip"],
        default=S,
        help="a NaN or inf loss or gradient: stop (default) or skip the batch",
    )
    g.add_argument("--out", default=None, help="run folder (default runs/<name>)")
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run exactly (alone, or after the run's own command line)",
    )
    g.add_argument("--stop-after", type=int, default=None, help="stop after N steps of this call")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> Parser:
    parser = Parser(prog="lstm-scratch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _train_arguments(sub.add_parser("train", help="train a character language model"))
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--prime", default="", help="text to start from")
    p.add_argument("--length", type=int, default=500)
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
        metavar="embedding=P,lstm=P,decoder=P",
        help="the parts' module names, when their shapes do not tell them apart",
    )
    p = sub.add_parser("bench", help="training and sampling speed against torch.nn.LSTM")
    p.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    p.add_argument("--configs", default="", help="a,b,c,d (default: all)")
    for name in ("hidden", "batch", "seq-len", "layers", "vocab"):
        p.add_argument(f"--{name}", type=int, default=None, help="adds a custom config")
    p.add_argument("--rounds", type=int, default=None, help="A B rounds (default 5)")
    p.add_argument("--seconds", type=float, default=None, help="timed per measurement")
    p.add_argument("--no-torch", action="store_true", help="lstm-scratch alone")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report")
    return parser


def cmd_train(args) -> int:
    options = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "out", "resume", "stop_after", "quiet")
    }
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
    ids = result.vocab.encode(data.HAMLET)
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
        result.vocab.encode(prime),
        120,
        temperature=0.5,
        seed=0,
        on_id=lambda i: print(result.vocab.decode([i]), end="", flush=True),
    )
    print()


def cmd_sample(args) -> int:
    validate_sampling(args.length, args.temperature, args.top_k, args.top_p)
    model, vocab, _ = load_model(args.checkpoint)
    if args.prime:
        prime_ids = vocab.encode(args.prime)
    else:
        prime_ids = np.random.default_rng(args.seed).integers(0, len(vocab), size=1)
    sys.stdout.write(vocab.decode(prime_ids))
    sample(
        model,
        prime_ids,
        args.length,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        on_id=lambda i: (sys.stdout.write(vocab.decode([i])), sys.stdout.flush()),
    )
    sys.stdout.write("\n")
    return 0


def cmd_eval(args) -> int:
    model, vocab, meta = load_model(args.checkpoint)
    lower = (
        args.lower if args.lower is not None else meta.get("train_config", {}).get("lower", False)
    )
    text = data.load_text(args.data, args.encoding, lower)
    ids, unknown = vocab.encode_known(text)
    if unknown:
        shown = ", ".join(repr(ch) for ch, _ in unknown.most_common(10))
        print(
            f"{sum(unknown.values())} characters not in the model's vocabulary were skipped "
            f"({len(unknown)} distinct: {shown})",
            file=sys.stderr if args.json else sys.stdout,  # stdout holds only the JSON
        )
    if len(ids) < 2:
        raise data.DataError(f"{args.data}: fewer than 2 characters of the model's vocabulary")
    m = evaluate(model, ids, args.batch_size, args.seq_len)
    if args.json:
        print(json.dumps(m))
        return 0
    print(
        f"{args.data}: loss {m['loss']:.4f} nats/char, {m['bpc']:.4f} bits/char, "
        f"perplexity {m['perplexity']:.3f}, accuracy {m['accuracy']:.2%} over {m['chars']} chars"
    )
    return 0


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


def cmd_bench(args) -> int:
    custom = {k: getattr(args, k) for k in ("hidden", "batch", "seq_len", "layers", "vocab")}
    options = bench.make_options(
        args.quick, args.configs, custom, args.rounds, args.seconds, torch=not args.no_torch
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
