"""The generate loop: prefill, then one decode step per new token, each step run on the
cores (its numbers) and timed from its static shape (its time), with sampling on the host.
`Model.generate` is this function.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tilesim.errors import GenerationError, NumericalError
from tilesim.profiler.events import StepRecord, Trace
from tilesim.profiler.report import build_report
from tilesim.runtime.checks import function, whole
from tilesim.runtime.exclusive import one_run_at_a_time
from tilesim.runtime.program import StepInputs
from tilesim.runtime.reporting import device_info, memory_snapshot, model_info
from tilesim.runtime.sampling import SamplingParams, choose

if TYPE_CHECKING:
    from tilesim.runtime.model import Model

DEFAULT = object()  # eos_token_id not given: the model's own


@dataclass
class GenerateOutput:
    """What `generate` returns: new ids per prompt (up to and with EOS), report, trace."""

    tokens: list[np.ndarray]
    prompt_tokens: list[np.ndarray]
    report: dict
    trace: Trace
    logits: list[np.ndarray] | None = None
    finished: list[bool] = field(default_factory=list)

    def sequences(self, pad: int = 0) -> np.ndarray:
        """The new tokens as one (batch, longest) array, shorter rows padded with `pad`."""
        width = max((len(t) for t in self.tokens), default=0)
        out = np.full((len(self.tokens), width), pad, dtype=np.int64)
        for i, t in enumerate(self.tokens):
            out[i, : len(t)] = t
        return out


@one_run_at_a_time("model")
def generate(
    model: Model,
    prompts: Sequence[Sequence[int]] | np.ndarray,
    max_new_tokens: int = 32,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | object | None = DEFAULT,
    on_token: Callable[[int, int], None] | None = None,
    return_logits: bool | str = False,
) -> GenerateOutput:
    """Generate up to `max_new_tokens` for each prompt (a list of id lists, or a 1-D/2-D array).

    Greedy unless `temperature`, `top_k` or `top_p` is given. A sequence stops after an
    EOS id (the model's unless `eos_token_id` says otherwise; None never stops).
    `on_token(prompt_index, id)` sees tokens as they come. `return_logits=True` keeps
    each step's logits of the last position, `"all"` also every prefill position.
    """
    if return_logits not in (False, True, "all"):
        raise GenerationError(f"return_logits={return_logits!r} must be False, True or 'all'")
    prompts = check_prompts(model, prompts, max_new_tokens)
    params = SamplingParams(temperature, top_k, top_p, seed)
    function("on_token", on_token, GenerationError, "(prompt_index, token_id)", takes=2)
    eos = stop_ids(model, eos_token_id, given=eos_token_id is not DEFAULT)
    b = len(prompts)
    group = model.prefill_group(b)  # sequences per prefill program, as the device's runtime prefills them
    if b != model.batch or group != model.prefill_batch or (return_logits == "all") != model.all_logits:
        model.session(b, return_logits == "all")
    model.check_host(max(len(p) for p in prompts) + max_new_tokens)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)
    new: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    trace = Trace(device=device_info(model), model=model_info(model))
    kept_logits: list[np.ndarray] = []
    every_row = return_logits == "all"
    gathered = "all" if every_row else params.gathered
    t_prefill = int(lengths.max())
    ids = np.zeros((b, t_prefill), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    inputs = _window(ids, lengths, 0, t_prefill, every_row)  # the whole prompt
    buckets = model.buckets
    windows = buckets.windows(t_prefill)  # one, unless the prompt is longer than the largest prefill bucket
    shape = buckets.prefill_shape(b, windows[0][1], gathered)
    runs = [(shape, inputs)]
    if len(windows) > 1:
        runs = [
            (buckets.chunk_shape(b, hi - lo, lo, gathered) if lo else shape, _window(ids, lengths, lo, hi, every_row))
            for lo, hi in windows
        ]
    wall_decode, decode_steps = 0.0, 0
    clock = 0.0
    for counts in model.executor.routing.values():  # this run's routing only
        counts[:] = 0
    for step in range(max_new_tokens):
        t0 = time.perf_counter()
        active = sum(not d for d in done)
        outs = []
        for k, (run_shape, run_inputs) in enumerate(runs):
            out, routed = _in_groups(model.executor, run_inputs, group if run_shape.phase == "prefill" else b)
            outs.append(out)
            t_timer = time.perf_counter()
            timing = model.timer.time(run_shape, routed)
            t0 += time.perf_counter() - t_timer  # the wall time is the emulator's, not the timing model's
            detail = timing.messages if step < 2 else []  # fabric messages: prefill and the first decode step
            made = active if k == len(runs) - 1 else 0  # a window before the last makes no token
            record = StepRecord(step, run_shape.phase, clock, timing.latency, vars(run_shape).copy(), timing.spans)
            record.messages, record.tokens = detail, made
            trace.steps.append(record)
            clock += timing.latency
        logits = outs[0] if len(runs) == 1 else _merged(outs, runs, lengths, b, t_prefill)
        if logits is not None:
            if return_logits:
                kept_logits.append(logits.copy())
            if inputs.all_logits:
                logits = logits[inputs.last_rows]
            if not np.isfinite(logits).all():  # IEEE propagation (docs/numerics.md) makes this visible
                raise NumericalError(
                    f"the logits of step {step} ({run_shape.phase}) hold NaN or infinity: an activation overflowed "
                    "or the checkpoint holds such values; check its weights, or try a wider dtype"
                )
            chosen = choose(logits, params, rng)
        else:
            chosen = np.zeros(b, dtype=np.int64)
        for i in range(b):
            if done[i]:
                continue
            token = int(chosen[i])
            if logits is not None:
                new[i].append(token)
                if on_token:
                    on_token(i, token)
            if logits is not None and token in eos:  # timing-only makes no tokens: it runs them all
                done[i] = True
        lengths += 1
        if step > 0:
            wall_decode += time.perf_counter() - t0
            decode_steps += 1
        if all(done) or step == max_new_tokens - 1:
            break
        context = int(lengths.max())
        inputs = StepInputs(chosen.astype(np.int64), lengths - 1, lengths - 1, np.ones(b, np.int64), b, 1)
        runs = [(model.buckets.decode_shape(b, context, params.gathered), inputs)]
    trace.memory = memory_snapshot(model)
    trace.wall = {
        **model.wall,
        "decode_s": wall_decode,
        "decode_tokens_per_s": (decode_steps * b / wall_decode) if wall_decode > 0 else 0.0,
    }
    report = build_report(trace)
    if model.graph.meta.get("experts"):
        processed = sum(len(p) for p in prompts) + sum(s.tokens for s in trace.steps if s.phase == "decode")
        report["experts"] = experts_report(model, processed)
    return GenerateOutput(
        tokens=[np.array(t, dtype=np.int64) for t in new],
        prompt_tokens=[np.array(p, dtype=np.int64) for p in prompts],
        report=report,
        trace=trace,
        logits=kept_logits if return_logits else None,
        finished=done,
    )


def _in_groups(executor, inputs: StepInputs, group: int) -> tuple[np.ndarray | None, dict | None]:
    """Run a step `group` sequences at a time, each group in its own KV cache slots: its
    logits in sequence order (None when timing-only: the Program bound nothing) and the rows
    routed to each expert (mixtures of experts; summed over the groups)."""
    if group >= inputs.batch:
        out = executor.step(inputs)
        return out, (executor.step_routing if out is not None else None)
    t, outs, routed = inputs.tokens, [], {}
    for lo in range(0, inputs.batch, group):
        n = min(group, inputs.batch - lo)
        rows = slice(lo * t, (lo + n) * t)
        part = StepInputs(
            inputs.ids[rows], inputs.positions[rows], inputs.start[lo : lo + n], inputs.valid[lo : lo + n], n, t,
            inputs.all_logits, first_slot=lo,
        )  # fmt: skip
        out = executor.step(part)
        if out is None:
            return None, None
        outs.append(out)
        for layer, counts in executor.step_routing.items():
            routed[layer] = routed.get(layer, 0) + counts
    return np.concatenate(outs), routed


def _window(ids: np.ndarray, lengths: np.ndarray, lo: int, hi: int, all_logits: bool) -> StepInputs:
    """The inputs of a prefill of positions lo..hi-1: each sequence's prompt tokens there
    (none if its prompt ended before lo), after the lo positions already cached."""
    b, n = ids.shape[0], hi - lo
    return StepInputs(
        np.ascontiguousarray(ids[:, lo:hi]).reshape(-1),
        np.tile(np.arange(lo, hi, dtype=np.int64), b),
        np.full(b, lo, np.int64),
        np.clip(lengths - lo, 0, n),
        b,
        n,
        all_logits,
    )


def _merged(outs: list, runs: list, lengths: np.ndarray, b: int, tokens: int) -> np.ndarray | None:
    """The logits of a prompt prefilled in windows as one prefill gives them: every position's
    rows in order (all logits), else each sequence's from the window that holds its last token."""
    if outs[0] is None:
        return None
    vocab = outs[0].shape[-1]
    if runs[0][1].all_logits:
        rows = np.concatenate([out.reshape(b, -1, vocab) for out in outs], axis=1)
        return rows.reshape(b * tokens, vocab)
    merged = np.empty((b, vocab), outs[0].dtype)
    for out, (_, window) in zip(outs, runs, strict=True):
        lo = int(window.start[0])
        last = (lengths - 1 >= lo) & (lengths - 1 < lo + window.tokens)
        merged[last] = out[last]
    return merged


def experts_report(model: Model, tokens: int) -> dict:
    """Tokens per expert: as the data routed them (functional runs, whose steps are timed with
    that routing), and under uniform routing (what timing-only assumes, with the busiest
    expert-parallel core `moe_imbalance` times its share)."""
    n, k = model.graph.meta["experts"]
    routed = model.executor.routing
    if not model.timing_only:
        assumes = "the routing of each step"
    elif model.moe_imbalance == 1.0 or model.moe != "ep":
        assumes = "uniform routing"
    else:
        assumes = f"uniform routing, the busiest core {model.moe_imbalance:g}x its share"
    out = {
        "experts": n,
        "per_token": k,
        "sharding": model.moe,
        "timing_assumes": assumes,
        "uniform_tokens_per_expert": tokens * k / n,  # per layer
    }
    if routed and not model.timing_only:
        per_layer = [routed[layer].tolist() for layer in sorted(routed)]
        out["tokens_per_expert"] = per_layer
        total = np.sum(per_layer, axis=0)
        out["imbalance"] = float(total.max() / total.mean()) if total.mean() else None
    return out


def check_prompts(model: Model, prompts, max_new_tokens: int) -> list[list[int]]:
    """The prompts as lists of ints, or one GenerationError saying what is wrong with them."""
    prompts = check_request(prompts, max_new_tokens, model.graph.vocab_size, model.max_context)
    longest = max(len(p) for p in prompts)
    model.buckets.decode_for(longest + max_new_tokens - 1)  # a longer prompt than any prefill bucket runs in windows
    return prompts


def check_request(prompts, max_new_tokens: int, vocab: int, max_context: int) -> list[list[int]]:
    """`check_prompts` against a model's vocabulary and KV context before it is loaded: a
    command line refuses such a request without waiting for the weights."""
    whole("max_new_tokens", max_new_tokens, 1, GenerationError)
    prompts = _id_lists(prompts)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token")
    for p in prompts:
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the vocabulary of {vocab} ids")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_context:
        raise GenerationError(
            f"a prompt of {longest} token{'s' if longest != 1 else ''} plus {max_new_tokens} new "
            f"{'ones' if max_new_tokens != 1 else 'one'} needs {longest + max_new_tokens} positions, but the model was "
            f"compiled for max_context={max_context}; load it with a larger `max_context`"
        )
    return prompts


def _id_lists(prompts) -> list[list[int]]:
    """A list of id lists (or a 1-D / 2-D integer array) as lists of ints."""
    if isinstance(prompts, np.ndarray):
        if prompts.dtype.kind not in "iu" or prompts.ndim not in (1, 2):
            raise GenerationError(
                f"prompts must be token ids: a 1-D or 2-D integer array, not {prompts.ndim}-D {prompts.dtype}"
            )
        return [prompts.tolist()] if prompts.ndim == 1 else prompts.tolist()
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise GenerationError(
            "prompts must be a list of token-id lists (text goes through the tokenizer first), "
            f"not {type(prompts).__name__}"
        )
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, numbers.Integral):
            raise GenerationError(f"prompts must be a list of token-id lists; wrap one prompt as [[{p}, ...]]")
        if isinstance(p, np.ndarray) and p.dtype.kind in "iu" and p.ndim == 1:
            out.append(p.tolist())
            continue
        if isinstance(p, str | bytes) or not isinstance(p, Sequence):
            raise GenerationError(f"prompt {i} must be a list of token ids, not {type(p).__name__}")
        bad = next((t for t in p if isinstance(t, bool) or not isinstance(t, numbers.Integral)), None)
        if bad is not None:
            raise GenerationError(f"prompt {i} holds {bad!r}; token ids are whole numbers")
        out.append([int(t) for t in p])
    return out


def stop_ids(model: Model, eos_token_id: int | Sequence[int] | object | None, *, given: bool) -> set[int]:
    """The ids that end a sequence: the model's own EOS ids, or `eos_token_id` when `given`
    (None: nothing stops), each a token of the model's vocabulary."""
    if not given:
        return set(model.graph.meta.get("eos_token_ids", ()))
    eos = _as_set(eos_token_id)
    if outside := sorted(t for t in eos if not 0 <= t < model.graph.vocab_size):
        raise GenerationError(
            f"eos_token_id {outside[0]} is outside the vocabulary of {model.graph.vocab_size} ids: no step can "
            "produce it, so it would never stop a sequence"
        )
    return eos


def _as_set(eos) -> set[int]:
    if isinstance(eos, np.ndarray) and eos.ndim == 1:
        eos = eos.tolist()
    if eos is None:
        return set()
    if isinstance(eos, numbers.Integral) and not isinstance(eos, bool):
        return {int(eos)}
    if isinstance(eos, Sequence | set | frozenset) and all(
        isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in eos
    ):
        return {int(e) for e in eos}
    raise GenerationError(f"eos_token_id={eos!r} must be a token id, a list of them, or None")
