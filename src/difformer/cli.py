"""The `difformer` command: prepare, train, distill, generate, evaluate, analyze, quickstart.

Argument names follow fairseq where a fairseq habit exists (--source-lang, --trainpref, --destdir,
--max-tokens). Every user error is a DifformerError, printed as one line with exit code 2. A training run
stopped by SIGINT/SIGTERM saves a checkpoint and exits 130/143 (128 + signal), so that `train && evaluate`
does not go on with an unfinished model; see docs/robustness.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from difformer.errors import DifformerError


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="learn a joint subword vocabulary and binarise a parallel corpus",
        description="Read plain-text parallel files PREF.SRC / PREF.TGT for each split, learn one joint "
        "sentencepiece vocabulary (or reuse --tokenizer), and write memory-mappable token arrays, the "
        "tokenizer and dataset.json to --destdir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source-lang", "-s", required=True, help="source suffix, e.g. de or src")
    p.add_argument("--target-lang", "-t", required=True, help="target suffix, e.g. en or tgt")
    p.add_argument("--trainpref", required=True, help="training files prefix (reads PREF.SRC and PREF.TGT)")
    p.add_argument("--validpref", help="validation files prefix")
    p.add_argument("--testpref", help="test files prefix")
    p.add_argument("--destdir", required=True, help="output directory (must not exist unless --force)")
    p.add_argument("--vocab-size", type=int, default=8000, help="joint subword vocabulary size")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="sentencepiece model type")
    p.add_argument("--tokenizer", help="reuse this sentencepiece .model instead of learning one")
    p.add_argument("--max-len", type=int, help="maximum subword tokens per side of a training pair (without BOS/EOS); "
                   "valid and test are kept whole")
    p.add_argument("--long", choices=["drop", "truncate"], default="drop",
                   help="what --max-len does to a longer training pair")
    p.add_argument("--lowercase", action="store_true", help="lowercase both sides before everything")
    p.add_argument("--force", action="store_true", help="replace an existing --destdir")
    p.add_argument("--seed", type=int, default=1, help="seed for the tokenizer's sentence sampling")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from difformer.data.prepare import prepare, format_summary

    info = prepare(
        source_lang=args.source_lang, target_lang=args.target_lang,
        trainpref=args.trainpref, validpref=args.validpref, testpref=args.testpref,
        destdir=args.destdir, vocab_size=args.vocab_size, model_type=args.model_type,
        tokenizer=args.tokenizer, max_len=args.max_len, long=args.long,
        lowercase=args.lowercase, force=args.force, seed=args.seed,
    )
    print(format_summary(info))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a Difformer (or the autoregressive teacher) from a prepared corpus",
        description="Train from a YAML config (a file, or a preset name: quickstart, multi30k, iwslt14, "
        "wmt14, aeslc, and the autoregressive multi30k-ar, quickstart-ar, aeslc-ar) with section.key=value "
        "overrides, e.g. "
        "`difformer train multi30k train.data=data/m30k train.save_dir=runs/m30k train.max_minutes=25`. "
        "Checkpoints (safetensors + JSON) go to SAVE_DIR/checkpoints; the average of the best checkpoints by "
        "train.valid_metric (validation BLEU by default) becomes the model directory SAVE_DIR/model. "
        "SIGINT/SIGTERM save a checkpoint; --resume continues exactly. Data parallel: "
        "`torchrun --nproc_per_node N -m difformer.cli train ...` (or --nproc N on one machine).")
    p.add_argument("config", help="YAML config file or preset name")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in train.save_dir")
    p.add_argument("--nproc", type=int, help="train with N processes on this machine (starts torchrun; "
                   "on a CPU each process gets cores / N threads)")
    p.add_argument("--dist-timeout", type=float, default=30.0, metavar="MINUTES",
                   help="under torchrun: how long a process waits for the others (rank 0 validates meanwhile) "
                   "before it gives up on them (30)")
    _add_device(p)
    _add_threads(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import signal

    from difformer.config import load_config
    from difformer.train import Trainer

    cfg = load_config(args.config, args.overrides)
    if not cfg.train.data or not cfg.train.save_dir:
        raise DifformerError("set train.data (a prepared directory) and train.save_dir, "
                             "e.g. train.data=data/m30k train.save_dir=runs/m30k")
    if args.dist_timeout <= 0:
        raise DifformerError("--dist-timeout must be positive")
    if args.nproc is not None:
        return _torchrun(args)
    from difformer import distributed

    trainer = None
    try:
        trainer = Trainer(cfg, resume=args.resume, device=args.device, timeout_minutes=args.dist_timeout)
        out = trainer.train()
    finally:
        if trainer is not None:
            trainer.release()
        distributed.teardown()
    if trainer.stopped_by is not None:  # checkpoint saved and the resume command printed by rank 0
        return 128 + signal.Signals[trainer.stopped_by].value
    if trainer.ranks.main:
        print(f"model directory: {out}")
    return 0


def _torchrun(args: argparse.Namespace) -> int:
    """`train --nproc N`: the same command under torchrun on this machine. SIGINT/SIGTERM to this process
    go to torchrun, which passes them to the ranks and waits for them to save (up to --dist-timeout);
    the exit status is then 130/143 as for one process, else torchrun's."""
    import os
    import signal
    import subprocess

    if args.nproc < 1:
        raise DifformerError(f"--nproc must be >= 1, got {args.nproc}")
    if "RANK" in os.environ:
        raise DifformerError("--nproc starts torchrun; under torchrun already, leave it out")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.nproc)
    grace = str(int(args.dist_timeout * 60))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               f"--shutdown-timeout={grace}", "-m", "difformer.cli", "train", args.config, *args.overrides,
               "--device", args.device, "--dist-timeout", str(args.dist_timeout), "--threads", str(threads)]
    if args.resume:
        command.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    # its own session: a Ctrl-C in the terminal reaches torchrun once, through this process
    child = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(sig, frame) -> None:
        if not received:
            received.append(sig)
            child.send_signal(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + received[0] if received else code


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="replace a prepared corpus's training targets by an autoregressive teacher's outputs",
        description="Sequence-level knowledge distillation: decode every training source of --data with the "
        "--teacher (beam search) and write --destdir, a prepared directory with the teacher's outputs as "
        "training targets; valid and test keep their references, the tokenizer is the same. dataset.json "
        "records the teacher, the decoding options and the teacher's BLEU against the training references. "
        "Decoded in chunks kept beside --destdir: run the same command again after a kill to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", required=True, help="autoregressive model directory (same tokenizer as --data)")
    p.add_argument("--data", required=True, help="prepared directory (difformer prepare)")
    p.add_argument("--destdir", required=True, help="output directory (must not exist unless --force)")
    p.add_argument("--beam", type=int, default=4, help="beam size; 1 is greedy")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty")
    p.add_argument("--max-len-a", type=float, help="at most a * source length + b tokens (teacher's config)")
    p.add_argument("--max-len-b", type=int, help="see --max-len-a (teacher's config)")
    p.add_argument("--max-tokens", type=int, help="decoding batch size in tokens, beams included")
    p.add_argument("--chunk-size", type=int, default=2000, help="sources per resumable chunk")
    p.add_argument("--force", action="store_true", help="replace an existing --destdir")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    _add_device(p)
    _add_threads(p)
    p.set_defaults(func=_run_distill)


def _run_distill(args: argparse.Namespace) -> None:
    from difformer.distill import distill

    info = distill(args.teacher, args.data, args.destdir, beam=args.beam, lenpen=args.lenpen,
                   max_len_a=args.max_len_a, max_len_b=args.max_len_b, max_tokens=args.max_tokens,
                   chunk_size=args.chunk_size, device=args.device, precision=args.precision, force=args.force)
    d = info["distilled"]
    print(f"{args.destdir}: {info['splits']['train']['pairs']:,} training targets from the teacher in "
          f"{d['seconds']:.0f}s ({d['decoding']}); teacher BLEU against the training references "
          f"{d['teacher_bleu_vs_references']}; {d['empty_outputs_kept_reference']} empty outputs kept their "
          "reference")


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (defaults come from the model's config)")
    g.add_argument("--beam", type=int, help="autoregressive model: beam size; 1 is greedy (4)")
    g.add_argument("--lenpen", type=float, help="autoregressive model: rank hypotheses by log-prob / "
                   "length ** lenpen (1.0); a Difformer with --selection ar: the reranker ranks the candidates so")
    g.add_argument("--max-len-a", type=float, help="autoregressive model: at most a * source length + b "
                   "tokens (1.2)")
    g.add_argument("--max-len-b", type=int, help="autoregressive model: see --max-len-a (10)")
    g.add_argument("--steps", type=int, help="sampling steps K over the T-step schedule (20)")
    g.add_argument("--min-t", type=float, help="spread the steps over [T-1, min_t T] instead of [T-1, 0]: "
                   "a model trained with diffusion.min_t never saw less noise (0)")
    g.add_argument("--early-stop", type=int, help="stop after this many steps and output its z0 prediction; 0: off")
    g.add_argument("--length-beam", type=int, help="candidate lengths around the predicted one")
    g.add_argument("--noise-beam", type=int, help="independent noise samples per length")
    g.add_argument("--selection", choices=["score", "mbr", "ar"], help="pick the candidate by the model's mean "
                   "token log-probability (score), by BLEU-MBR among the candidates (mbr), or by the "
                   "length-normalised log-probability of the --reranker (ar)")
    g.add_argument("--reranker", help="autoregressive model directory (same tokenizer) that scores the "
                   "candidates for --selection ar")
    g.add_argument("--sampler", choices=["ddpm", "ddim"], help="ancestral DDPM or deterministic DDIM")
    g.add_argument("--clamp", action=argparse.BooleanOptionalAction, default=None,
                   help="replace z0_hat by its nearest word embedding at every step")
    g.add_argument("--cond-enhance", action=argparse.BooleanOptionalAction, default=None,
                   help="tell the network t = T-1 at every step, so it leans on the source (DINOISER)")
    g.add_argument("--seed", type=int, help="noise seed")
    g.add_argument("--max-tokens", type=int, help="decoding batch size in target tokens, candidates included")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast where the hardware is fast at it (auto), or force one")
    _add_device(g)
    _add_threads(g)


def _add_device(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present, else CPU), cpu, cuda")


def _add_threads(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: one per core); give each "
                   "job its share when several run on one machine, or they slow each other down many times")


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    if n < 1:
        raise DifformerError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)


def _decoding_options(args: argparse.Namespace) -> dict:
    names = ["steps", "min_t", "early_stop", "length_beam", "noise_beam", "selection", "sampler", "clamp",
             "cond_enhance", "seed", "max_tokens", "beam", "lenpen", "max_len_a", "max_len_b"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="decode inputs with a trained model, one output line per input line",
        description="Read one input per line from --input (or stdin) and write exactly one output line per "
        "input line, in order, to --output (or stdout). Empty lines give empty lines. Speed goes to stderr.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--input", "-i", default="-", help="input file, - for stdin")
    p.add_argument("--output", "-o", help="output file (written to a temporary file, then renamed)")
    _add_decoding_args(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    import time

    from difformer.generate import check_reranker_used, load, read_lines
    from difformer.files import check_writable
    from difformer.precision import allow_tf32

    if args.output:
        check_writable(args.output)  # before loading and decoding, not after
    pipe = load(args.model, device=args.device, precision=args.precision,
                reranker=args.reranker)  # before stdin: fail fast
    allow_tf32(pipe.device, pipe.precision)
    options = _decoding_options(args)
    cfg = pipe.decode_config(**options)
    check_reranker_used(args.reranker, cfg)
    lines, bad = read_lines(args.input)
    if bad:
        print(f"warning: {args.input}: invalid UTF-8 replaced on line(s) {_ranges(bad)}", file=sys.stderr)
    start = time.perf_counter()
    outputs = pipe.generate(lines, **options)
    seconds = time.perf_counter() - start
    if pipe.truncated:
        print(f"warning: {len(pipe.truncated)} input(s) cut to {pipe.config.model.max_positions - 1} tokens, "
              f"line(s) {_ranges([i + 1 for i in pipe.truncated])}", file=sys.stderr)
    _write_lines(outputs, args.output)
    print(f"{len(lines)} sentences in {seconds:.2f}s ({len(lines) / max(seconds, 1e-9):.1f} sentences/s); "
          f"{pipe.describe(cfg)} precision={pipe.precision} device={pipe.device}", file=sys.stderr)


def _write_lines(outputs: list[str], path: str | None) -> None:
    """One line per output, whatever the outputs hold: line breaks inside an output become spaces (with a
    warning), so that line N of the output always belongs to line N of the input, for every tool."""
    from difformer.generate import one_line
    from difformer.files import write_atomic

    lines = [one_line(o) for o in outputs]
    broken = [i + 1 for i, (a, b) in enumerate(zip(outputs, lines)) if a != b]
    if broken:
        print(f"warning: line breaks inside output line(s) {_ranges(broken)} replaced by spaces", file=sys.stderr)
    text = "".join(line + "\n" for line in lines)
    if path:
        try:
            write_atomic(Path(path), lambda p: p.write_text(text, encoding="utf-8"))
        except OSError as e:
            raise DifformerError(f"{path}: cannot write ({e.strerror or e})") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _ranges(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score hypotheses (sacreBLEU, tokenized BLEU, ROUGE) or decode and score a split",
        description="Either score --hyp against one or more --ref files, or decode a prepared split with "
        "--model DIR --data DIR --split test and score it. Every score line carries its signature.")
    p.add_argument("--hyp", help="hypothesis file, one line per reference line")
    p.add_argument("--ref", action="append", help="reference file (repeat for several references)")
    p.add_argument("--model", help="model directory, to decode --split of --data")
    p.add_argument("--data", help="prepared directory (default: the data the model was trained on)")
    p.add_argument("--split", default="test", help="split of --data to decode")
    p.add_argument("--output", "-o", help="with --model: also write the hypotheses here")
    p.add_argument("--metric", action="append", choices=["bleu", "tok-bleu", "rouge"],
                   help="metrics to report (repeatable; default: bleu)")
    p.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU")
    _add_decoding_args(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from difformer.evaluate import decode_split, read_references, score

    if args.model:
        if args.hyp or args.ref:
            raise DifformerError("with --model the references are --data's prepared targets; --hyp and --ref "
                                 "score a file of outputs instead")
        if args.output:
            from difformer.files import check_writable

            check_writable(args.output)  # before decoding a whole split
        hyps, refs, info = decode_split(args.model, args.data, args.split, args.precision, args.device,
                                        _decoding_options(args), None, args.reranker)
        print(info, file=sys.stderr)
        if args.output:
            _write_lines(hyps, args.output)
    else:
        if not args.hyp or not args.ref:
            raise DifformerError("give --hyp and --ref (or --model DIR --split NAME)")
        hyps, refs = read_references(args.hyp, args.ref)
    for line in score(hyps, refs, args.metric or ["bleu"], args.lowercase):
        print(line)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="plot the paper's embedding-space analysis of a trained model (PNG + HTML report)",
        description="Write to --out: embedding_norms.png (norm against token frequency, before and after the "
        "embedding norm), training_curves.png (MSE, anchor loss and embedding norm over updates from the "
        "training log(s); compare runs by giving several --log), trajectory.png (BLEU and token change rate "
        "of the z0 prediction at every sampling step on --split), analysis.json and report.html (with the "
        "tokens read off z0_hat at each step for a few sentences).")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--out", required=True, help="output directory (files in it are replaced)")
    p.add_argument("--data", help="prepared directory (default: the data the model was trained on)")
    p.add_argument("--split", default="valid", help="split of --data to trace the decoding on")
    p.add_argument("--log", action="append", help="training log.jsonl (repeatable; default: the one beside "
                   "the model directory)")
    p.add_argument("--sentences", type=int, default=200, help="sentences of --split to decode")
    p.add_argument("--show", type=int, default=5, help="sentences whose per-step tokens the report shows")
    _add_decoding_args(p)
    p.set_defaults(func=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> None:
    from difformer.analyze import analyze

    if args.sentences < 1 or args.show < 0:
        raise DifformerError("--sentences must be >= 1 and --show >= 0")
    options = _decoding_options(args)
    if args.reranker:
        options["reranker"] = args.reranker  # refused below with the other options that do not apply
    fixed = sorted({"length_beam", "noise_beam", "early_stop", "selection", "reranker"} & set(options))
    if fixed:
        raise DifformerError(f"analyze traces one candidate per sentence through every step; "
                             f"{', '.join('--' + f.replace('_', '-') for f in fixed)} do not apply")
    summary = analyze(args.model, args.out, args.data, args.log, args.split, args.sentences, args.show,
                      args.precision, args.device, **options)
    if "trajectory" in summary:
        t = summary["trajectory"]
        print(f"trajectory: BLEU per step {t['bleu']}; within 0.5 of the final from step {t['settle_step']}")
    print(f"report: {Path(args.out) / 'report.html'}")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over HTTP: generate with dynamic batching, and a page at / that shows "
        "a sentence being denoised",
        description="POST /v1/generate {\"inputs\": [...], decoding options}, POST /v1/trace {\"input\": ...}, "
        "GET /v1/model, GET /healthz, and the page at /. Concurrent requests with the same decoding options are "
        "decoded together. Needs the serve extra: pip install 'difformer[serve]'.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--reranker", help="autoregressive model directory for selection ar")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; "
                   "there is no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (printed)")
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="source tokens x candidates decoded together at most")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a request may wait for others to join its batch")
    p.add_argument("--no-batching", action="store_true", help="decode one request at a time")
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per request at most")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    _add_device(p)
    _add_threads(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (a graceful shutdown: requests in flight are answered), then exit 130/143."""
    import signal
    import socket

    try:
        import uvicorn

        from difformer.serve.app import Limits, make_app
    except ImportError as e:
        raise DifformerError(f"serve needs the serve extra ({e.name} is missing): pip install 'difformer[serve]'")
    from difformer.generate import load
    from difformer.precision import allow_tf32

    for name in ("max_batch_tokens", "max_inputs"):
        if getattr(args, name) < 1:
            raise DifformerError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_wait_ms < 0:
        raise DifformerError("--max-wait-ms must be >= 0")
    pipe = load(args.model, device=args.device, precision=args.precision, reranker=args.reranker)
    allow_tf32(pipe.device, pipe.precision)
    app = make_app(pipe, args.max_batch_tokens, args.max_wait_ms, not args.no_batching,
                   Limits(max_inputs=args.max_inputs))
    try:
        sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host
                                    else socket.AF_INET)
    except (OSError, OverflowError) as e:
        raise DifformerError(f"cannot listen on {args.host}:{args.port} ({getattr(e, 'strerror', None) or e})")
    host, port = sock.getsockname()[:2]
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: listening on {host}, not loopback: anyone who can reach it can use the model",
              file=sys.stderr)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"serving {args.model} ({pipe.arch}, {pipe.device}, {pipe.precision}) at {url}/ "
          f"(API: /v1/generate, /v1/trace, /v1/model, /healthz)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    stopped: list[int] = []  # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again

    def on_signal(sig, frame) -> None:  # before uvicorn takes the signals over, and after it gives them back
        stopped.append(sig)
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    if not stopped:
        server.run(sockets=[sock])
    if stopped:
        print(f"difformer serve: stopped by {signal.Signals(stopped[0]).name}", file=sys.stderr)
        return 128 + stopped[0]
    return 0


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="generate a toy translation task, train a small Difformer on it, and score it",
        description="French number words -> English number words, generated locally (no download): "
        "prepare, train configs/quickstart.yaml for at most --minutes (on CUDA when present), print a few "
        "examples and the test BLEU on the last line.")
    p.add_argument("--workdir", default="quickstart", help="where the corpus, data and run go")
    p.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget")
    p.add_argument("--seed", type=int, default=1)
    _add_threads(p)
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args: argparse.Namespace) -> None:
    from difformer.quickstart import quickstart

    quickstart(args.workdir, minutes=args.minutes, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difformer",
        description="Embedding diffusion Transformers (Difformer) for conditional text generation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub)
    _add_distill(sub)
    _add_generate(sub)
    _add_evaluate(sub)
    _add_analyze(sub)
    _add_serve(sub)
    _add_quickstart(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit codes: 0 done, 2 user error (one line), 130/143 stopped by SIGINT/SIGTERM,
    141 output pipe closed by the reader (as `| head` does)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in x and not x.startswith("-") for x in extra):
        args.overrides += extra  # `train CONFIG --resume section.key=value`: overrides after a flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        _set_threads(getattr(args, "threads", None))
        return args.func(args) or 0
    except DifformerError as e:
        print(f"difformer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"difformer {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


if __name__ == "__main__":
    sys.exit(main())
