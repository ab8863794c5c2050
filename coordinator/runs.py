"""Run specifications: what an operator may ask for, checked before anything is stored.

:class:`RunSpec` is the request; :class:`RunConfig` its JSON config, typed (quorum,
Paillier :class:`Encoding`, server learning rate, quantisation, audit settings), parsed
once when the run is created and read by the coordinator through ``Run.settings()``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import cast

from coordinator.aggregation import STRATEGIES, check_strategy
from protos.serde import SchemeName

SECURE_SCHEMES = tuple(SchemeName)
KEY_SIZES = (1024, 2048, 3072)


# BatchCrypt-style encoding defaults (Jiang et al., USENIX ATC 2020): per-tensor clipping
# (clip 0 means per tensor; crypto/codec.py) with 8-bit values. One clip for every tensor
# either starves some tensors (a tabular model's input normaliser moves its running means
# by ~8 in round one) or wastes bits on the rest, which is why the old default needed clip
# 16 at 20 bits (32-bit slots, 63 per 2048-bit plaintext, ~2x fp32). Each site derives
# round one's bounds per tensor from the public initial model, later ones per value from
# the previous round's decrypted mean update, so no bound travels. 8 bits plus 12 bits
# of weight headroom (up to 2^12 total weight) pack 102 slots of 20 bits: ~1.25x fp32 on
# the wire. An explicit positive clip (e.g. {"clip": 16, "bits": 20}) still clips every value there.
@dataclass(frozen=True)
class Encoding:
    """A secure run's Paillier encoding (crypto.SlotCodec's parameters and the key size)."""

    clip: float = 0.0
    bits: int = 8
    max_weight: int = 4096
    key_bits: int = 2048

    @classmethod
    def parse(cls, given: object) -> Encoding:
        """The defaults overridden by ``given``'s known keys; keys it does not know are dropped.

        Raises ValueError (or TypeError) naming the first value that is out of range.
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in given.items() if k in known} if isinstance(given, dict) else {}
        clip = values.get("clip", cls.clip)
        if isinstance(clip, bool) or not isinstance(clip, int | float):
            raise ValueError(f"encoding clip must be a number, not {clip!r}")
        encoding = cls(
            clip=float(clip),
            bits=int(values.get("bits", cls.bits)),
            max_weight=int(values.get("max_weight", cls.max_weight)),
            key_bits=int(values.get("key_bits", cls.key_bits)),
        )
        if encoding.key_bits not in KEY_SIZES:
            raise ValueError(f"key_bits must be one of {KEY_SIZES}, not {encoding.key_bits}")
        if not 2 <= encoding.bits <= 32:
            raise ValueError(f"encoding bits must be 2 to 32, not {encoding.bits}")
        if not 0 <= encoding.clip < float("inf"):
            raise ValueError(
                "encoding clip must be 0 (per-tensor bounds, the default) or a positive "
                f"finite number, not {clip}"
            )
        return encoding

    def as_dict(self) -> dict[str, float | int]:
        """The encoding as the run's stored config holds it."""
        return asdict(self)


DEFAULT_ENCODING = Encoding().as_dict()
# How long a run waits for its sites' SHAP audits once training ends; after it the run
# completes and names the sites whose are missing.
AUDIT_DEADLINE_SECONDS = 600.0
# How long a pending run waits for enough sites before it gives up with a reason.
START_DEADLINE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class RunConfig:
    """A run's settings from its JSON config, typed: parsed when the run is created.

    The coordinator reads a stored run's through ``Run.settings()``; sites receive them in
    the task (the encoding in ``EncodingParams``, the rest in ``config_json``).
    """

    quorum: int
    encoding: Encoding
    server_lr: float
    update_bits: int | None  # plaintext runs' update quantisation (protos.wire)
    audit: bool  # ask each trained site for a SHAP audit of the final model
    audit_deadline: float  # seconds the run waits for those audits
    start_deadline: float  # seconds a pending run waits for enough sites

    @classmethod
    def parse(cls, config: Mapping[str, object], min_clients: int, secure: bool) -> RunConfig:
        """Read ``config``; ValueError or TypeError naming the first bad value.

        Plaintext runs have no encoding: theirs is the default, whatever the config says.
        """
        from protos.wire import update_quantisation

        return cls(
            quorum=int(cast("int | float | str", config.get("quorum", min_clients))),
            encoding=Encoding.parse(config.get("encoding")) if secure else Encoding(),
            server_lr=float(cast("float | str", config.get("server_lr", 1.0))),
            update_bits=update_quantisation(config),
            audit=bool(config.get("audit", True)),
            audit_deadline=_seconds(config, "audit_deadline_seconds", AUDIT_DEADLINE_SECONDS),
            start_deadline=_seconds(config, "start_deadline_seconds", START_DEADLINE_SECONDS),
        )


def _seconds(config: Mapping[str, object], key: str, default: float) -> float:
    """A positive, finite number of seconds; ``default`` for anything else (never refused)."""
    try:
        seconds = float(cast("float | str", config.get(key, default)))
    except (TypeError, ValueError):
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default


# Fewest sites a secure run may aggregate: sites refuse smaller aggregates by default.
SECURE_MIN_SITES = 3


def check_threshold(
    threshold: int,
    secure: str,
    min_clients: int,
    sites: object,
    *,
    fraction: float = 1.0,
    max_clients: int = 0,
) -> None:
    """2 <= t <= N, where N (the run's fixed participants) is at least ``min_clients``.

    A secure run fixes its N sites when it starts: every online site with an identity (or
    those of ``config["sites"]``), at least ``min_clients`` of them. So ``t <= min_clients``
    (and ``<=`` the named sites) guarantees ``t <= N`` before anyone is online.

    A threshold run asks every holder every round (no ``fraction`` below 1, no
    ``max_clients``): a holder echoes the round's aggregate only when it has the round's
    task, and partials are released only after a quorum of the N holders echoed
    (client/threshold_echo.py), so a sample smaller than the quorum could never decrypt.
    """
    if not threshold:
        return
    if fraction < 1.0 or max_clients:
        raise ValueError(
            "a threshold run asks every key holder every round: fraction must be 1 and "
            "max_clients unset (a sampled round could not gather the holders' echo quorum)"
        )
    if secure != SchemeName.PAILLIER:
        raise ValueError("threshold is for secure runs (--secure paillier) only")
    if threshold < 2:
        raise ValueError(
            f"threshold must be at least 2 (1 would let any one site decrypt), not {threshold}"
        )
    if threshold > min_clients:
        raise ValueError(
            f"threshold {threshold} exceeds min_clients {min_clients}: a run may start with "
            f"only {min_clients} sites, and t of N needs t <= N"
        )
    if isinstance(sites, list) and threshold > len(sites):
        raise ValueError(f"threshold {threshold} exceeds the {len(sites)} sites the run names")
    from crypto.threshold import MAX_PARTIES

    if threshold > MAX_PARTIES:
        raise ValueError(f"threshold must be at most {MAX_PARTIES}, not {threshold}")


@dataclass(frozen=True)
class RunSpec:
    """Everything an operator chooses when starting a run."""

    model: str
    rounds: int = 5
    min_clients: int = 2
    max_clients: int = 0
    fraction: float = 1.0
    round_deadline: float = 300.0
    local_epochs: int = 1
    lr: float = 0.01
    secure: str = SchemeName.NONE
    custodian: str = ""
    strategy: str = "fedavg"
    name: str = ""
    created_by: str = ""
    config: dict[str, object] = field(default_factory=dict)
    # Secure runs below 3 sites let each site subtract its own update from the aggregate
    # and read the other's: allowed only when the operator says so explicitly.
    allow_two_site_secure: bool = False
    # Secure runs: t-of-N threshold decryption (0: every site holds the whole key).
    threshold: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        for field_name, limit in (("model", 256), ("name", 128), ("custodian", 128)):
            text = getattr(self, field_name)
            if len(text) > limit or "\x00" in text:
                raise ValueError(f"{field_name} must be at most {limit} characters, without NUL")
        if not self.model.strip():
            raise ValueError("model must be named (e.g. tabular_mlp)")
        if not 1 <= self.rounds <= 10_000:
            raise ValueError(f"rounds must be between 1 and 10000, not {self.rounds}")
        if self.min_clients < 1:
            raise ValueError(f"min_clients must be at least 1, not {self.min_clients}")
        if self.max_clients and self.max_clients < self.min_clients:
            raise ValueError(
                f"max_clients ({self.max_clients}) is below min_clients ({self.min_clients})"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], not {self.fraction}")
        if not 1.0 <= self.round_deadline <= 7 * 86400:
            raise ValueError(f"round deadline must be 1 s to 7 days, not {self.round_deadline}")
        if not 1 <= self.local_epochs <= 1000:
            raise ValueError(f"local_epochs must be between 1 and 1000, not {self.local_epochs}")
        if not 0.0 < self.lr <= 10.0:
            raise ValueError(f"lr must be in (0, 10], not {self.lr}")
        if self.secure not in SECURE_SCHEMES:
            raise ValueError(
                f"secure must be one of {', '.join(SECURE_SCHEMES)}, not {self.secure!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        check_strategy(self.strategy, self.secure != SchemeName.NONE)
        settings = self.settings()
        if settings.update_bits and self.secure != SchemeName.NONE:
            raise ValueError(
                "update_quantisation is for plaintext runs; secure runs quantise "
                "inside the Paillier codec"
            )
        quorum = settings.quorum
        if not 1 <= quorum <= max(self.min_clients, 1):
            raise ValueError(f"quorum must be between 1 and min_clients, not {quorum}")
        too_few = self.min_clients < SECURE_MIN_SITES or quorum < SECURE_MIN_SITES
        if self.secure != SchemeName.NONE and too_few and not self.allow_two_site_secure:
            raise ValueError(
                f"a secure run needs min_clients and quorum of at least {SECURE_MIN_SITES} "
                f"(got {self.min_clients} and {quorum}): with fewer, an aggregate reveals "
                "a site's update to the others; sites refuse to decrypt it anyway. Pass "
                "allow_two_site_secure only for tests and demos that accept this"
            )
        if self.secure == SchemeName.PAILLIER and settings.encoding.max_weight < self.min_clients:
            raise ValueError("max_weight must allow at least one unit of weight per site")
        if "threshold" in self.config:
            raise ValueError("threshold is set by CreateRunRequest.threshold, not in config_json")
        check_threshold(
            self.threshold,
            self.secure,
            self.min_clients,
            self.config.get("sites"),
            fraction=self.fraction,
            max_clients=self.max_clients,
        )

    def settings(self) -> RunConfig:
        """The run's config, typed (ValueError or TypeError when a value is out of range)."""
        return RunConfig.parse(self.config, self.min_clients, self.secure == SchemeName.PAILLIER)

    def trainer_config(self) -> dict[str, object]:
        """The JSON a site's trainer receives with each task."""
        return {
            **self.config,
            "model": self.model,
            "local_epochs": self.local_epochs,
            "lr": self.lr,
            "strategy": self.strategy,
        }

    def config_sha256(self) -> str:
        """sha256 of the whole spec: the ``run.created`` audit row pins what was asked."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()
