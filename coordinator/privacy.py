"""A run's differential-privacy plan as the coordinator checks, stores and relays it.

The plan only proposes: each site derives its own noise from it and its data size, checks
the spend against its own budget and ledger (client/ledger.py) and may refuse. The sites'
signed ledger entries, and the report's facts drawn from them, are
coordinator/ledger_copies.py.
"""

from __future__ import annotations

import math
from typing import Any

import crypto
from coordinator.errors import InvalidArgument
from coordinator.schema import Run
from crypto.dp_layout import DEFAULT_MAX_SITES, SITE_BITS, SiteNoise, calibrate
from protos import common_pb2

MODES = ("record", "site")
ACCOUNTANTS = ("rdp", "prv")
MAX_EPSILON = 100.0
MAX_DELTA = 1e-2
PRIVACY_KEY = "privacy"
MAX_SITES = 1024


def plan_from_proto(
    plan: common_pb2.PrivacyPlan, secure: str, *, run_quorum: int = 2, max_clients: int = 0
) -> dict[str, Any] | None:
    """The validated plan as plain data, ``None`` for a run without DP.

    ``run_quorum`` is the number of updates that closes one of the run's rounds (its
    ``quorum`` setting, else ``min_clients``) and ``max_clients`` its cap (0: none); site
    mode calibrates its noise for the quorum and sizes its slots for the cap.

    Raises
    ------
    InvalidArgument
        Naming the field (``privacy.epsilon`` …) that is out of range.
    """
    if not plan.mode:
        if plan.epsilon or plan.delta or plan.noise_multiplier or plan.max_grad_norm:
            raise InvalidArgument(
                "privacy.mode must be 'record' or 'site' when DP settings are given"
            )
        return None
    if plan.mode not in MODES:
        raise InvalidArgument(f"privacy.mode must be one of {', '.join(MODES)}, not {plan.mode!r}")
    for name in ("epsilon", "delta", "noise_multiplier", "max_grad_norm"):
        value = getattr(plan, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"privacy.{name} must be a finite number >= 0, not {value}")
    if not 0.0 < plan.delta <= MAX_DELTA:
        raise InvalidArgument(f"privacy.delta must be in (0, {MAX_DELTA}], not {plan.delta}")
    if plan.epsilon and plan.noise_multiplier:
        raise InvalidArgument("privacy: give epsilon or noise_multiplier, not both")
    if not plan.epsilon and not plan.noise_multiplier:
        raise InvalidArgument("privacy.epsilon must be > 0 (or give a noise_multiplier)")
    if plan.epsilon > MAX_EPSILON:
        raise InvalidArgument(f"privacy.epsilon must be at most {MAX_EPSILON}, not {plan.epsilon}")
    if plan.noise_multiplier and not 0.1 <= plan.noise_multiplier <= 100:
        raise InvalidArgument(
            f"privacy.noise_multiplier must be in [0.1, 100], not {plan.noise_multiplier}"
        )
    accountant = plan.accountant or "rdp"
    if accountant not in ACCOUNTANTS:
        raise InvalidArgument(
            f"privacy.accountant must be one of {', '.join(ACCOUNTANTS)}, not {accountant!r}"
        )
    clip = plan.max_grad_norm or 1.0
    if clip > 1e3:
        raise InvalidArgument(f"privacy.max_grad_norm must be in (0, 1000], not {clip}")
    if plan.mode != "site" and (plan.quorum or plan.max_sites):
        raise InvalidArgument("privacy.quorum and privacy.max_sites are for mode 'site' only")
    stored = {
        "mode": plan.mode,
        "epsilon": float(plan.epsilon),
        "delta": float(plan.delta),
        "noise_multiplier": float(plan.noise_multiplier),
        "max_grad_norm": float(clip),
        "accountant": accountant,
    }
    if plan.mode == "site":
        stored.update(_site_fields(plan, secure, run_quorum, max_clients))
    return stored


def _site_fields(
    plan: common_pb2.PrivacyPlan, secure: str, run_quorum: int, max_clients: int
) -> dict[str, int]:
    """Site mode's quorum and slot cap, checked against the run (crypto/dp_layout.py).

    Raises
    ------
    InvalidArgument
        A run that is not secure (the noise shares are only private inside an encrypted
        sum), a noise multiplier instead of ε, or a quorum the run's rounds may not reach.
    """
    if secure != "paillier":
        raise InvalidArgument(
            "privacy.mode 'site' needs a secure run (--secure paillier): each site's noise "
            "share only protects it inside the encrypted sum"
        )
    if plan.noise_multiplier or not plan.epsilon:
        raise InvalidArgument("privacy.mode 'site' takes an epsilon, not a noise_multiplier")
    quorum = int(plan.quorum or run_quorum)
    if not 1 <= quorum <= run_quorum:
        raise InvalidArgument(
            f"privacy.quorum {quorum} must be in 1..{run_quorum} (the updates that close a "
            "round of this run): the noise is calibrated for at least that many sites"
        )
    max_sites = int(plan.max_sites or max(DEFAULT_MAX_SITES, max_clients, quorum))
    if not max(quorum, max_clients) <= max_sites <= MAX_SITES:
        raise InvalidArgument(
            f"privacy.max_sites {max_sites} must be in {max(quorum, max_clients)}..{MAX_SITES} "
            "(at least the quorum and the run's max_clients)"
        )
    return {"quorum": quorum, "max_sites": max_sites}


def site_layout(run: Run) -> SiteNoise | None:
    """The site-level DP layout every site of ``run`` encodes with (None: not such a run).

    Derived as each site derives it (client/dp_site_scheme.py): from the plan, the run's
    rounds, the model's size and the key's. ValueError when it cannot be (no key yet).
    """
    plan = run.config.get(PRIVACY_KEY)
    if not isinstance(plan, dict) or plan.get("mode") != "site" or not run.public_key:
        return None
    key_bits = crypto.public_key_from_bytes(run.public_key).n.bit_length()
    return calibrate(
        float(plan["epsilon"]),
        float(plan["delta"]),
        int(run.rounds),
        clip=float(plan["max_grad_norm"]),
        bits=SITE_BITS,
        dimension=run.value_count(),
        quorum=int(plan["quorum"]),
        max_sites=int(plan["max_sites"]),
        key_bits=key_bits,
    )


def plan_to_proto(config: dict[str, Any]) -> common_pb2.PrivacyPlan | None:
    """The stored plan of a run's config as the proto a task carries."""
    plan = config.get(PRIVACY_KEY)
    if not isinstance(plan, dict) or not plan.get("mode"):
        return None
    return common_pb2.PrivacyPlan(
        mode=str(plan["mode"]),
        epsilon=float(plan.get("epsilon", 0.0)),
        delta=float(plan.get("delta", 0.0)),
        noise_multiplier=float(plan.get("noise_multiplier", 0.0)),
        max_grad_norm=float(plan.get("max_grad_norm", 1.0)),
        accountant=str(plan.get("accountant", "rdp")),
        quorum=int(plan.get("quorum", 0)),
        max_sites=int(plan.get("max_sites", 0)),
    )


def withholds_counts(run: Run) -> bool:
    """Whether ``run``'s sites withhold their example counts and metrics (a DP run).

    A site of a DP run sends its training updates with ``num_examples`` 0, weight 1 and
    only its privacy accounting as metrics (client/tasks.py ``withheld``): an exact count
    or score of its data would be a release no ε covers.
    """
    return plan_to_proto(run.config) is not None
