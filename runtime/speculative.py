"""Speculative decoding: a draft model proposes `k` tokens, one step of the target checks
them all, and the target's own rule decides which stay (Leviathan et al. 2023, Chen et
al. 2023; transformers-neuronx's `speculative_sampling`).

A round, with the sequence's last token not yet in either cache ("pending"):
1. the draft feeds what it has not seen (the pending token, and a token the target added
   last round if the draft never saw it) and proposes d1; then k - 1 single-token steps
   propose d2..dk, each from the draft's warped distribution q (its argmax when greedy);
2. the target feeds [pending, d1..dk] as one step of k + 1 tokens over its cache and gets
   its distribution p at every one of those positions;
3. greedy: d_i is kept while it is the target's argmax; the first miss is replaced by the
   target's argmax, and if all k are kept the target's next token follows (k + 1 tokens).
   Sampling: d_i is kept with probability min(1, p(d_i) / q(d_i)); at the first rejection
   a token is drawn from max(0, p - q) renormalised; if all are kept, one from p after dk.
   Either way the tokens are distributed exactly as the target's alone.
Cache positions beyond the kept tokens hold rejected keys; they are never read (attention
sees positions up to its own) and are overwritten by the next round.

Time: each model's steps from its own step timer (the draft's decode and catch-up steps;
the target's check as a prefill of k + 1 tokens over its cache, every position's logits
gathered); both prefills make the time to first token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tilesim.errors import GenerationError, NumericalError
from tilesim.runtime.checks import whole
from tilesim.runtime.exclusive import one_run_at_a_time
from tilesim.runtime.program import StepInputs
from tilesim.runtime.sampling import SamplingParams, _softmax, warp

if TYPE_CHECKING:
    from tilesim.runtime.model import Model


@dataclass
class SpeculativeOutput:
    tokens: np.ndarray  # the new ids (up to and with an end-of-sequence id)
    report: dict
    rounds: list[tuple[int, int]] = field(default_factory=list)  # (proposed, kept) per round


def accept(p: np.ndarray, q: np.ndarray, proposals: np.ndarray, rng: np.random.Generator) -> list[int]:
    """The standard rule: `p` (k + 1, V) the target's probabilities at each proposal and
    after the last, `q` (k, V) the draft's, `proposals` (k,) the draft's tokens. Returns the
    tokens emitted this round (the kept proposals, then one from the target)."""
    out = []
    for i, token in enumerate(proposals):
        if rng.random() < min(1.0, p[i, token] / q[i, token]):
            out.append(int(token))
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        total = residual.sum()
        out.append(int(rng.choice(len(residual), p=residual / total)) if total > 0 else int(np.argmax(p[i])))
        return out
    out.append(int(rng.choice(p.shape[1], p=p[-1])))
    return out


def accept_greedy(target_best: np.ndarray, proposals: np.ndarray) -> list[int]:
    """Greedy: proposals kept while they are the target's argmax, then the target's token."""
    out = []
    for i, token in enumerate(proposals):
        if token != target_best[i]:
            break
        out.append(int(token))
    out.append(int(target_best[len(out)]))
    return out


class _Runner:
    """One model's cache of one sequence: feeds tokens, times its steps."""

    def __init__(self, model: Model, all_logits: bool, gathered: str):
        if model.batch != 1 or model.prefill_batch != 1 or model.all_logits != all_logits:
            model.session(1, all_logits, prefill_batch=1)
        self.model, self.all_logits, self.gathered = model, all_logits, gathered
        self.cached = 0
        self.seconds = 0.0
        self.steps = 0

    def prefill(self, ids: list[int]) -> np.ndarray | None:
        """The prompt, in windows of the largest prefill bucket if it is longer (as `generate`)."""
        logits = None
        for lo, hi in self.model.buckets.windows(len(ids)):
            logits = self.feed(ids[lo:hi])
        return logits

    def feed(self, ids: list[int], every_row: bool = False) -> np.ndarray | None:
        n, lo = len(ids), self.cached
        inputs = StepInputs(
            np.asarray(ids, np.int64), np.arange(lo, lo + n, dtype=np.int64), np.array([lo]), np.array([n]), 1, n,
            all_logits=every_row,
        )  # fmt: skip
        b = self.model.buckets
        gathered = "all" if every_row else self.gathered
        if lo == 0:
            shape = b.prefill_shape(1, n, gathered)
        elif n == 1 and not every_row:
            shape = b.decode_shape(1, lo + 1, gathered)
        else:
            shape = b.chunk_shape(1, n, lo, gathered)
        timing = self.model.timer.time(shape)
        self.seconds += timing.latency
        self.steps += 1
        logits = self.model.executor.step(inputs)
        self.cached += n
        if logits is not None and not np.isfinite(logits).all():
            raise NumericalError(f"the logits of {self.model.checkpoint.name} hold NaN or infinity")
        return logits


def check_vocabularies(target_graph, draft_graph) -> None:
    """A draft proposes token ids of the target's vocabulary, or it cannot serve it."""
    if draft_graph.vocab_size != target_graph.vocab_size:
        raise GenerationError(
            f"the draft's vocabulary ({draft_graph.vocab_size} ids) is not the target's ({target_graph.vocab_size})"
        )


@one_run_at_a_time("target", "draft")
def speculative_generate(
    target: Model,
    draft: Model,
    prompt,
    max_new_tokens: int = 32,
    *,
    k: int = 4,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_id: int | object | None = ...,
) -> SpeculativeOutput:
    """Generate up to `max_new_tokens` for one prompt with `draft` proposing `k` tokens per round."""
    from tilesim.runtime.generate import check_prompts, stop_ids

    whole("k", k, 1, GenerationError)
    whole("max_new_tokens", max_new_tokens, 1, GenerationError)
    for name, model in (("target", target), ("draft", draft)):
        if not hasattr(model, "graph") or not hasattr(model, "timing_only"):
            raise GenerationError(f"{name}={model!r:.60} must be a model from tilesim.load")
    if draft is target:  # one KV cache cannot hold both the target's positions and the draft's
        raise GenerationError("the draft must be a model of its own: load it again (it may be the same checkpoint)")
    if target.timing_only or draft.timing_only:
        raise GenerationError("speculative decoding needs the tokens: load both models with their weights")
    check_vocabularies(target.graph, draft.graph)
    [ids] = check_prompts(target, [prompt], max_new_tokens)
    check_prompts(draft, [ids], max_new_tokens)
    params = SamplingParams(temperature, top_k, top_p, seed)
    eos = stop_ids(target, eos_token_id, given=eos_token_id is not ...)
    rng = np.random.default_rng(seed)
    big, small = _Runner(target, True, params.gathered), _Runner(draft, False, params.gathered)
    draft.check_host(len(ids) + max_new_tokens)
    target.check_host(len(ids) + max_new_tokens, beside=draft)  # both are in memory at once
    first = big.prefill(ids)
    small.prefill(ids)
    ttft = big.seconds + small.seconds
    new = [_choose(first[0], params, rng)]
    rounds = []
    while len(new) < max_new_tokens and new[-1] not in eos:
        sequence = ids + new
        # no more proposals than tokens still wanted after the target's own: a round emits up
        # to proposals + 1, and the positions stay within the prompt and max_new_tokens
        ask = min(k, max_new_tokens - len(new) - 1)
        proposals, q_rows = [], []
        logits = small.feed(sequence[small.cached :]) if ask else None
        for i in range(ask):
            row = logits[0]
            q = _softmax(warp(row[None, :], params))[0] if not params.greedy else None
            token = int(np.argmax(row)) if params.greedy else int(rng.choice(len(q), p=q))
            proposals.append(token)
            q_rows.append(q)
            if i < ask - 1:
                logits = small.feed([token])
        checked = big.feed([sequence[-1], *proposals], every_row=bool(proposals))  # none: a decode step
        if params.greedy:
            emitted = accept_greedy(np.argmax(checked, axis=-1), np.array(proposals))
        else:
            p = _softmax(warp(checked, params))
            q = np.array(q_rows) if q_rows else np.zeros((0, p.shape[1]))
            emitted = accept(p, q, np.array(proposals, np.int64), rng)
        kept = len(emitted) - 1
        if ask:
            rounds.append((ask, kept))
        big.cached -= ask - kept  # the rejected positions are stale: the next round overwrites them
        small.cached = min(small.cached, len(sequence) + kept)  # it fed the pending token and d1..d(ask-1)
        for token in emitted:
            if len(new) == max_new_tokens or new[-1] in eos:
                break
            new.append(token)
    total = big.seconds + small.seconds
    proposed = sum(r[0] for r in rounds)
    report = {
        "ttft_s": ttft,
        "tpot_s": (total - ttft) / (len(new) - 1) if len(new) > 1 else None,
        "sim_total_s": total,
        "speculate": k,
        "rounds": len(rounds),
        "acceptance_rate": sum(r[1] for r in rounds) / proposed if proposed else None,
        "tokens_per_target_step": (len(new) - 1) / len(rounds) if rounds else None,
        "target_s": big.seconds,
        "draft_s": small.seconds,
        "target_steps": big.steps,
        "draft_steps": small.steps,
        "target": target.checkpoint.name,
        "draft": draft.checkpoint.name,
    }
    return SpeculativeOutput(np.array(new, dtype=np.int64), report, rounds)


def _choose(row: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    if params.greedy:
        return int(np.argmax(row))
    p = _softmax(warp(row[None, :], params))[0]
    return int(rng.choice(len(p), p=p))
