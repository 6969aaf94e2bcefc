"""Faults to inject into the fabric: lost messages, flipped bits, slow links, dead links.

A `FaultSpec` says what may go wrong; a `FaultInjector` (seeded) decides, per message and
per link crossed, whether it does. Decisions are drawn in the deterministic order of the
simulation, so the same seed gives the same faults and the same outcome.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from tilesim.errors import ConfigError


def link_end(core: int) -> str:
    """A link's end as faults name it (`dead=switch-3`): a core's number, or the switch (-1)."""
    return "switch" if core < 0 else str(core)


LinkKey = tuple[int, int]  # (src core, dst core); -1 is the switch
# A message that fails every attempt (corrupt=1) is simulated once per attempt: 10^8 retries was a
# run that never ended. No transport retries this often (InfiniBand's retry count is 3 bits: 7).
MAX_RETRIES = 100


@dataclass(frozen=True)
class FaultSpec:
    """What may go wrong on the fabric.

    `drop` and `corrupt` are probabilities per message per link crossed; `slow` maps a link
    (or `None` for every link) to the factor its bandwidth is divided by; `dead` links lose
    every message. A lost or corrupted message is sent again up to `max_retries` times.
    """

    drop: float = 0.0
    corrupt: float = 0.0
    slow: Mapping[LinkKey | None, float] = field(default_factory=lambda: MappingProxyType({}))
    dead: frozenset[LinkKey] = frozenset()
    seed: int = 0
    max_retries: int = 3

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise ConfigError(f"fault {name}={p!r}: a probability must be between 0 and 1")
        if not isinstance(self.slow, Mapping):
            raise ConfigError(f"fault slow={self.slow!r}: give a mapping of links (SRC, DST), or None, to factors")
        if isinstance(self.dead, str | bytes) or not isinstance(self.dead, set | frozenset | list | tuple):
            raise ConfigError(f"fault dead={self.dead!r}: give a set of links (SRC, DST)")
        for link in [*self.dead, *(k for k in self.slow if k is not None)]:
            if not (isinstance(link, tuple) and len(link) == 2 and all(type(c) is int for c in link)):
                raise ConfigError(f"fault link {link!r}: a link is a pair (SRC, DST) of cores, -1 for the switch")
        for link, factor in self.slow.items():
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1.0 <= factor < math.inf:
                where = "every link" if link is None else f"link {link_end(link[0])}-{link_end(link[1])}"
                raise ConfigError(
                    f"fault slow={factor} on {where}: the slow-down factor must be a finite number >= 1 "
                    "(a link that carries nothing is dead=A-B)"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"fault seed={self.seed!r}: a seed is a whole number of at least 0")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise ConfigError(f"fault retries={retries!r}: the retries must be a whole number from 0 to {MAX_RETRIES}")

    @property
    def active(self) -> bool:
        return bool(self.drop or self.corrupt or self.slow or self.dead)

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """From command-line text: `corrupt=0.01,drop=0.001,dead=2-3,slow=0-1:4,seed=3,retries=5`.

        `slow=4` slows every link four times; `slow=0-1:4` only the link from core 0 to 1;
        links are `SRC-DST` with `switch` for the switch of a switch fabric.
        """
        try:
            return cls._parsed(text)
        except ConfigError as exc:  # every word of it is the spec's own syntax
            exc.verbatim = True
            raise

    @classmethod
    def _parsed(cls, text: str) -> FaultSpec:
        kwargs: dict = {"slow": {}, "dead": set()}
        given: set = set()
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            name = "retries" if key == "max_retries" else key
            # a link may be slowed or killed once each; the last of two values would silently win
            link = value.rpartition(":")[0]
            once = (f"slow={link}" if link else "slow=F") if key == "slow" else item if key == "dead" else name
            if once in given:
                raise ConfigError(f"fault {text!r} gives {once} twice")
            given.add(once)
            try:
                if key in ("drop", "corrupt"):
                    kwargs[key] = float(value)
                elif key == "seed":
                    kwargs["seed"] = int(value)
                elif key in ("retries", "max_retries"):
                    kwargs["max_retries"] = int(value)
                elif key == "dead":
                    kwargs["dead"].add(_parse_link(value))
                elif key == "slow":
                    link_text, _, factor = value.rpartition(":")
                    kwargs["slow"][_parse_link(link_text) if link_text else None] = float(factor)
                else:
                    raise ConfigError(
                        f"unknown fault {key!r}; use drop=P, corrupt=P, dead=A-B, slow=[A-B:]F, seed=N, retries=N"
                    )
            except ValueError:
                raise ConfigError(f"cannot read fault {item!r}") from None
        if not ({"drop", "corrupt"} & kwargs.keys() or kwargs["slow"] or kwargs["dead"]):
            raise ConfigError(
                f"fault {text!r} injects nothing; give at least one of drop=P, corrupt=P, dead=A-B, slow=[A-B:]F"
            )
        kwargs["slow"] = MappingProxyType(kwargs["slow"])
        kwargs["dead"] = frozenset(kwargs["dead"])
        return cls(**kwargs)


def _parse_link(text: str) -> LinkKey:
    match = re.fullmatch(r"\s*(\d+|switch)\s*-\s*(\d+|switch)\s*", text)
    if not match:
        raise ConfigError(f"cannot read link {text!r}; write it as SRC-DST, e.g. 2-3")
    a, b = (-1 if s == "switch" else int(s) for s in match.groups())
    return a, b


class FaultInjector:
    """Seeded decisions for one simulation run of a `FaultSpec`."""

    def __init__(self, spec: FaultSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.injected: list[tuple[str, LinkKey, str]] = []  # (kind, link, message tag)

    def slow_factor(self, link: LinkKey) -> float:
        return self.spec.slow.get(link, self.spec.slow.get(None, 1.0))

    def is_dead(self, link: LinkKey) -> bool:
        return link in self.spec.dead

    def lost_on(self, link: LinkKey, tag: str) -> bool:
        if self.is_dead(link) or (self.spec.drop and self.rng.random() < self.spec.drop):
            self.injected.append(("drop" if not self.is_dead(link) else "dead", link, tag))
            return True
        return False

    def corrupt(self, link: LinkKey, payload: np.ndarray, tag: str) -> np.ndarray:
        """`payload`, or a copy with one bit flipped when the dice say this crossing corrupts."""
        if not self.spec.corrupt or payload is None or payload.nbytes == 0:
            return payload
        if self.rng.random() >= self.spec.corrupt:
            return payload
        raw = np.ascontiguousarray(payload).copy()
        flat = raw.view(np.uint8).reshape(-1)
        bit = int(self.rng.integers(flat.size * 8))
        flat[bit // 8] ^= np.uint8(1 << (bit % 8))
        self.injected.append(("corrupt", link, tag))
        return raw
