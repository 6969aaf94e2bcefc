"""`tilesim generate` and `tilesim profile`: run a model on an emulated device.

`generate` streams the text as it comes and ends with the simulated latency and memory;
`profile` is the same run with the report (and any trace or plots) as the point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm import tqdm

from tilesim.api import load, open_source
from tilesim.cli import speculate
from tilesim.cli.context import derived_context_words
from tilesim.cli.flags import apart, fill, int_list, only_with, within_device
from tilesim.cli.report_text import print_report
from tilesim.device import Device
from tilesim.errors import ConfigError, GenerationError, ShardingError
from tilesim.models.checkpoint import named_configs
from tilesim.profiler.output import writable_file, writable_folder
from tilesim.runtime.checks import whole
from tilesim.runtime.generate import check_request
from tilesim.runtime.pipeline import stage_count
from tilesim.runtime.sampling import SamplingParams
from tilesim.runtime.timing import context_for
from tilesim.units import fmt_bytes


def add_parser(subparsers) -> None:
    for name, help_text in (
        ("generate", "generate text with a model on an emulated device"),
        ("profile", "like generate, but the report, trace and plots are the point"),
    ):
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        add_run_arguments(p)
        p.set_defaults(run=run, profile=name == "profile")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="HF checkpoint folder, .gguf file, short name (smollm2), or with --timing-only a named config "
        f"({', '.join(named_configs())})",
    )
    p.add_argument("--device", default="trn1", help="device preset (see `tilesim devices`)")
    p.add_argument("--cores", type=int, default=None, help="cores of the device (default: the TP degree)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    add_pipeline_arguments(p)
    p.add_argument(
        "--ray", default=None, metavar="auto|ADDRESS",
        help="host the emulated cores on Ray actors (docs/distributed.md); auto: the cluster Ray finds, or a local one",
    )  # fmt: skip
    p.add_argument("--cores-per-actor", type=int, default=None, metavar="N",
                   help="with --ray: cores per actor (default: one actor per host)")  # fmt: skip
    p.add_argument("--actor-memory", default=None, metavar="SIZE",
                   help="with --ray: each actor's memory budget, e.g. 1GiB (its cores' planned bytes)")  # fmt: skip
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    p.add_argument("--prompt-ids", action="append", default=[], help="a prompt as token ids, e.g. 1,2,3")
    p.add_argument("--prompt-len", type=int, default=None, help="timing-only: a prompt of N tokens")
    p.add_argument("--batch", type=int, default=1, help="run the prompts this many times over, as one batch")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-context", type=int, default=None, help="positions in the KV cache (default: fits the run)")
    p.add_argument(
        "--dtype",
        default=None,
        help="weights: fp32, fp16, bf16, fp8, fp8_e5m2, int8, int4, native "
        "(default: as the checkpoint stores them; native for GGUF)",
    )
    p.add_argument(
        "--act-dtype",
        default=None,
        help="activations: fp32, fp16, bf16, or int8 (the inputs of block-quantized products) "
        "(default: follows --dtype)",
    )
    p.add_argument(
        "--kv-dtype",
        default=None,
        help="KV cache: fp32, fp16, bf16, fp8, int8 (default: the activations', fp32 for int8)",
    )
    p.add_argument(
        "--algo", default="auto",
        help="all-reduce algorithm (default: chosen by size); the other collectives take it where it can do them",
    )  # fmt: skip
    p.add_argument("--timing-only", action="store_true", help="time the run without weights or arithmetic")
    p.add_argument(
        "--pad-heads",
        action="store_true",
        help="pad attention heads with zero heads when they do not divide by --tp (on with --timing-only)",
    )
    add_bucket_arguments(p)
    speculate.add_arguments(p)
    p.add_argument("--moe", default="tp", choices=("tp", "ep"),
                   help="mixture of experts: every expert split over the cores by width (tp), or whole experts "
                   "on cores, tokens exchanged by all-to-all (ep)")  # fmt: skip
    p.add_argument("--moe-imbalance", type=float, default=None, metavar="F",
                   help="timing-only mixture of experts: the busiest expert-parallel core gets F times its uniform "
                   "share of the tokens (default 1: uniform)")  # fmt: skip
    p.add_argument("--trace", default=None, metavar="PATH", help="write a Chrome/Perfetto trace (JSON)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write timeline, memory, roofline, breakdown PNGs")
    p.add_argument("--report", action="store_true", help="print the latency and memory report")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pp", type=int, default=None, help="pipeline stages: layers split over N groups of --tp cores")
    p.add_argument(
        "--layers-per-stage", default=None, metavar="N,N,...",
        help="each pipeline stage's layers, as PopTransformer's layer_per_ipu (instead of --pp)",
    )  # fmt: skip
    p.add_argument(
        "--micro-batches", type=int, default=None, metavar="M",
        help="cut a batch into M micro-batches that flow through the stages (default 1: stages in turn)",
    )  # fmt: skip


def pipeline_cores(args: argparse.Namespace) -> int:
    """The cores --tp, --pp and --layers-per-stage ask for."""
    return args.tp * stage_count(args.pp, args.layers_per_stage)


def needed_cores(args: argparse.Namespace, cores: int) -> str:
    """Which options ask for `cores` cores, for an error that names them."""
    stages = f" with --pp {args.pp}" if args.pp else ""
    if args.layers_per_stage:
        stages = f" with --layers-per-stage {args.layers_per_stage}"
    return f"--tp {args.tp}{stages} needs {cores} cores"


def add_bucket_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prefill-buckets", default=None, metavar="N,N,...",
        help="compiled prompt lengths, as context_length_estimate (default: powers of two from 16); "
        "a longer prompt runs in windows of the largest",
    )  # fmt: skip
    p.add_argument(
        "--decode-buckets", default=None, metavar="N,N,...",
        help="compiled KV lengths, as n_positions (default: powers of two from 128)",
    )  # fmt: skip


def bucket_lists(args: argparse.Namespace) -> dict:
    """`load`'s bucket arguments from --prefill-buckets and --decode-buckets."""
    out = {}
    for name in ("prefill_buckets", "decode_buckets"):
        text = getattr(args, name)
        if text is None:
            continue
        out[name] = int_list(text, "--" + name.replace("_", "-"), "token counts, e.g. 128,512,2048")
    return out


def _prompts(args: argparse.Namespace, checkpoint) -> tuple[list[list[int]], object]:
    tokenizer = None
    prompts: list[list[int]] = []
    for text in args.prompt_ids:
        prompts.append(int_list(text, "--prompt-ids", "integers, e.g. 1,2,3") if text.strip() else [])
    if args.prompt:
        tokenizer = checkpoint.tokenizer()
        if tokenizer is None:
            raise ConfigError(f"{checkpoint.name} has no tokenizer; give --prompt-ids instead of --prompt")
        for text in args.prompt:
            if args.chat:
                prompts.append(tokenizer.chat_ids([{"role": "user", "content": text}]))
            else:
                prompts.append(tokenizer.encode(text))
    if args.prompt_len is not None:
        whole("prompt_len", args.prompt_len, 1, ConfigError)
        prompts.append([0] * args.prompt_len)
    whole("batch", args.batch, 1, ConfigError)
    prompts = prompts * args.batch
    if not prompts:
        raise ConfigError("give a prompt: --prompt TEXT, --prompt-ids 1,2,3, or --prompt-len N with --timing-only")
    return prompts, tokenizer


def _check_flags(args: argparse.Namespace) -> None:
    """Options given where they would do nothing are refused; the others get their defaults."""
    pipelined = args.pp is not None or args.layers_per_stage is not None
    ray, draft = "runs on Ray actors (--ray)", "speculative decoding (--draft)"
    only_with(args, {
        "micro_batches": (pipelined, "pipelined runs (--pp or --layers-per-stage)"),
        "ray": (not args.timing_only, "runs with weights: a --timing-only run has no weights or arithmetic to host "
                "and runs in this process"),
        "cores_per_actor": (args.ray is not None, ray),
        "actor_memory": (args.ray is not None, ray),
        "speculate": (args.draft is not None, draft),
        "draft_tp": (args.draft is not None, draft),
        "moe_imbalance": (args.timing_only or args.draft is not None,
                          "--timing-only runs: a run with weights times the routing its router produced"),
        "chat": (bool(args.prompt), "--prompt text: it wraps the text in the model's chat template"),
    })  # fmt: skip
    fill(args, {"micro_batches": 1, "speculate": 4, "draft_tp": 1, "moe_imbalance": 1.0})
    apart(args, "trace", "plots")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_flags(args)
    # before the load: a mistyped --temperature must not wait for a model's weights and kernels
    SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    if args.trace is not None:  # before the run: a long run must not fail at its end for want of a place to write
        writable_file(args.trace, "--trace")
    if args.plots is not None:
        writable_folder(args.plots, "--plots")
    checkpoint = open_source(args.model, args.timing_only)
    prompts, tokenizer = _prompts(args, checkpoint)
    if args.prompt_len and not args.timing_only:
        raise ConfigError("--prompt-len is for --timing-only runs; give --prompt or --prompt-ids to run the numbers")
    longest = max(len(p) for p in prompts)
    whole("tp", args.tp, 1, ShardingError)  # before the device: a degree of 0 is not a core count
    whole("max_new_tokens", args.max_new_tokens, 1, GenerationError)  # before the context it sizes
    needed = longest + args.max_new_tokens
    whole("max_context", args.max_context, 1, ConfigError, optional=True)
    max_context = context_for(checkpoint.graph, needed, args.max_context)
    check_request(prompts, args.max_new_tokens, checkpoint.graph.vocab_size, max_context)  # before the load
    draft = speculate.prepare(args, checkpoint, prompts) if args.draft is not None else None
    whole("pp", args.pp, 1, ShardingError, optional=True)
    cores = args.cores if args.cores is not None else pipeline_cores(args)
    within_device(args.device, cores, None if args.cores is not None else needed_cores(args, cores))
    device = Device(args.device, cores=cores, backed=not args.timing_only)
    quiet = args.json or not sys.stderr.isatty()
    bar = tqdm(total=0, desc="loading", unit="tensor", disable=quiet, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    with derived_context_words(checkpoint.graph, needed, args.max_context, "the prompt and new tokens"):
        model = load(
            args.model if args.ray is not None else checkpoint,  # each actor opens the checkpoint itself
            device,
            args.tp,
            dtype=args.dtype,
            act_dtype=args.act_dtype,
            kv_dtype=args.kv_dtype,
            max_context=max_context,
            batch=len(prompts),
            algo=args.algo,
            timing_only=args.timing_only,
            pad_heads=args.pad_heads or args.timing_only,
            progress=progress,
            moe=args.moe,
            moe_imbalance=args.moe_imbalance,
            pp=args.pp,
            layers_per_stage=args.layers_per_stage,
            micro_batches=args.micro_batches,
            cluster=args.ray,
            cores_per_actor=args.cores_per_actor,
            actor_memory=args.actor_memory,
            **bucket_lists(args),
        )
    bar.close()
    try:
        return _run(args, model, prompts, tokenizer, started, draft)
    finally:
        model.close()


def _run(args: argparse.Namespace, model, prompts, tokenizer, started: float, draft: speculate.Draft | None) -> int:
    if draft is not None:
        return speculate.run(args, model, prompts, tokenizer, draft)
    stream = _Streamer(tokenizer, len(prompts)) if tokenizer and not args.json and not args.timing_only else None
    out = model.generate(
        prompts,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        on_token=stream,
    )
    if stream:
        stream.finish()
    out.trace.wall["total_s"] = time.perf_counter() - started
    _write_artifacts(args, out)
    if args.json:
        print(json.dumps(_as_json(out, tokenizer), indent=2))
        return 0
    if not stream and not args.timing_only:
        for i, tokens in enumerate(out.tokens):
            print(f"[{i}] new token ids: {','.join(map(str, tokens.tolist()))}")
    for i, (done, tokens) in enumerate(zip(out.finished, out.tokens, strict=True)):
        if done and not args.timing_only:
            print(f"[{i}] stopped at the end-of-sequence token after {len(tokens)} new tokens")
    print_report(out.report, out.trace, full=args.report or args.profile)
    return 0


def _write_artifacts(args: argparse.Namespace, out) -> None:
    if args.trace:
        from tilesim.profiler.chrome import MAX_EVENTS, detailed, write_chrome_trace

        steps, kept = len(out.trace.steps), detailed(out.trace)
        if steps > 200:
            print(f"writing the trace of {steps} steps to {args.trace} ...", file=sys.stderr)
        path = write_chrome_trace(out.trace, args.trace)
        print(f"wrote {path} ({fmt_bytes(path.stat().st_size)})", file=sys.stderr)
        if not all(kept):
            first = kept.index(False)
            print(
                f"the trace holds the kernels of the first {first} steps and of the first step of every other bucket "
                f"({sum(kept)} of {steps}; about {MAX_EVENTS:,} events, what a viewer opens); every step is on its "
                "steps lane, and a later step of a bucket runs the same kernels",
                file=sys.stderr,
            )
    if args.plots:
        from tilesim.profiler.plots import write_plots

        paths = write_plots(out.trace, out.report, args.plots)
        print(f"wrote {', '.join(p.name for p in paths)} in {args.plots}", file=sys.stderr)


def _as_json(out, tokenizer) -> dict:
    outputs = []
    for prompt, tokens, done in zip(out.prompt_tokens, out.tokens, out.finished, strict=True):
        entry = {"prompt_tokens": prompt.tolist(), "tokens": tokens.tolist(), "stopped_at_eos": bool(done)}
        entry["text"] = tokenizer.decode(tokens.tolist(), skip_special_tokens=True) if tokenizer else None
        outputs.append(entry)
    return {"outputs": outputs, "report": out.report, "wall": out.trace.wall}


class _Streamer:
    """Prints each prompt's text as its tokens arrive (one prompt live; a batch at the end)."""

    def __init__(self, tokenizer, batch: int):
        self.tokenizer, self.batch = tokenizer, batch
        self.ids: list[list[int]] = [[] for _ in range(batch)]
        self.shown = [""] * batch

    def __call__(self, index: int, token: int) -> None:
        self.ids[index].append(token)
        if self.batch == 1:
            text = self.tokenizer.decode(self.ids[0], skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                sys.stdout.write(text[len(self.shown[0]) :])
                sys.stdout.flush()
                self.shown[0] = text

    def finish(self) -> None:
        if self.batch == 1:
            print()
            return
        for i, ids in enumerate(self.ids):
            print(f"[{i}] {self.tokenizer.decode(ids, skip_special_tokens=True)}")
