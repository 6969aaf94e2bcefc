"""`tilesim generate MODEL --draft DRAFT --speculate K`: speculative decoding, the draft
model on its own cores of the same device preset (`--draft-tp`), the tokens as the target
alone would give them, and the acceptance rate and each model's time."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from tilesim.api import load, open_source
from tilesim.cli.context import derived_context_words
from tilesim.cli.flags import within_device
from tilesim.device import Device
from tilesim.errors import ConfigError, GenerationError, ShardingError
from tilesim.runtime.checks import whole
from tilesim.runtime.speculative import check_vocabularies, speculative_generate
from tilesim.runtime.timing import context_for
from tilesim.units import fmt_time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft", default=None, metavar="MODEL", help="speculative decoding: the draft model")
    p.add_argument("--speculate", type=int, default=None, metavar="K",
                   help="tokens the draft proposes per round (default: 4)")  # fmt: skip
    p.add_argument("--draft-tp", type=int, default=None, help="the draft's tensor-parallel degree (default: 1)")


@dataclass(frozen=True)
class Draft:
    """The draft as `prepare` checked it: its opened checkpoint, KV context, device, and the
    positions the prompt and new tokens need."""

    source: object
    context: int
    device: Device
    needed: int


def prepare(args: argparse.Namespace, checkpoint, prompts: list[list[int]]) -> Draft:
    """What the draft's run needs, checked before the target loads (a mistake about the draft
    must not wait for the target's weights)."""
    if args.timing_only:
        raise ConfigError("--draft needs the tokens: speculative decoding cannot run --timing-only")
    if len(prompts) != 1:
        raise ConfigError("--draft runs one prompt; give one --prompt (and no --batch)")
    whole("k", args.speculate, 1, GenerationError)
    whole("draft_tp", args.draft_tp, 1, ShardingError)  # before the device: a degree of 0 is not a core count
    within_device(args.device, args.draft_tp, f"--draft-tp {args.draft_tp} needs {args.draft_tp} cores")
    device = Device(args.device, cores=args.draft_tp)
    if not args.draft.strip():
        raise ConfigError(f"--draft {args.draft!r}: give the draft model (a folder, a .gguf file or a short name)")
    source = open_source(args.draft)
    check_vocabularies(checkpoint.graph, source.graph)
    needed = len(prompts[0]) + args.max_new_tokens  # a round proposes no more than is still wanted
    try:  # the draft's own context: its positions may be fewer than the target's bucket
        context = context_for(source.graph, needed, args.max_context)
    except GenerationError as exc:
        raise GenerationError(f"the draft {args.draft}: {exc}") from None
    return Draft(source, context, device, needed)


def run(args: argparse.Namespace, target, prompts: list[list[int]], tokenizer, prepared: Draft) -> int:
    words = "in the draft, the prompt and new tokens"
    with derived_context_words(prepared.source.graph, prepared.needed, args.max_context, words):
        draft = load(prepared.source, prepared.device, args.draft_tp, max_context=prepared.context)
    out = speculative_generate(
        target, draft, prompts[0], args.max_new_tokens, k=args.speculate, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )  # fmt: skip
    text = tokenizer.decode(out.tokens.tolist(), skip_special_tokens=True) if tokenizer else None
    if args.json:
        print(json.dumps({"tokens": out.tokens.tolist(), "text": text, "report": out.report}, indent=2))
        return 0
    print(text if text is not None else f"new token ids: {','.join(map(str, out.tokens.tolist()))}")
    r = out.report
    rate = "n/a" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}"
    print(f"\n# speculative decoding: {r['draft']} proposes {r['speculate']} tokens, {r['target']} checks them")
    print(f"simulated time to first token  {fmt_time(r['ttft_s'])}")
    print(f"simulated time per token       {fmt_time(r['tpot_s'])}")
    per_step = r["tokens_per_target_step"]
    print(f"acceptance rate                {rate} ({per_step:.2f} tokens per target step)" if per_step else "")
    print(
        f"time in the target             {fmt_time(r['target_s'])} ({r['target_steps']} steps); "
        f"in the draft {fmt_time(r['draft_s'])} ({r['draft_steps']} steps)"
    )
    return 0
