"""Site policy: what this site will build, send and decrypt, from its own flags and TOML.

The coordinator proposes; the site decides. Nothing in a task can widen this policy:
model specs that import code (``module:factory``, ``hf:``) run only when the site itself
names them, and a site decrypts only aggregates that enough pinned peers signed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class TaskRefused(Exception):
    """A site's refusal of a task; ``code`` and ``reason`` reach the operator.

    Codes: ``policy`` (the site's rules forbid it), ``pin`` (the run changed something this
    site pinned), ``verify`` (a signature, manifest or product did not check),
    ``decode`` (an aggregate did not decode), ``budget`` (privacy budget), ``model`` (its
    trainer cannot build the run's model), ``schema`` (its data differs from the run's
    schema), ``error``.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SitePolicy:
    """A site's rules. Defaults are the safe ones."""

    # Registry names this site builds; () means every built-in registry model.
    allowed_models: tuple[str, ...] = ()
    # Model specs that import code (``module:factory``, ``hf:/dir``), named by the site.
    extra_model_specs: tuple[str, ...] = ()
    # Refuse plaintext runs: this site sends updates only under encryption.
    require_secure: bool = False
    # Fewest distinct pinned sites whose signed updates an aggregate must sum before this
    # site decrypts it: with fewer, the "aggregate" reveals an individual site's update.
    min_aggregate_sites: int = 3
    # Custodians whose key statements this site accepts; () means any pinned peer.
    trusted_custodians: tuple[str, ...] = ()
    # Trust on first use for peers not pinned yet (records them; refuses a change).
    tofu: bool = False
    # Smallest Paillier key this site deals or accepts: a coordinator may not talk it into
    # a weak key. From COHORT_MIN_KEY_BITS (the test suite uses 1024-bit keys for speed).
    min_key_bits: int = field(default_factory=lambda: default_min_key_bits())
    # Privacy budget: the most ε (at ``privacy_delta``) this site spends on one dataset,
    # across every run and federation (client/ledger.py). None: no budget, and runs
    # without DP are taken; with a budget, a run without DP is refused (unbounded ε).
    privacy_budget: float | None = None
    privacy_delta: float = 1e-5
    # Secure runs: 0 takes single-key runs (every site holds the whole key, so a curious
    # site can decrypt any update it fetches); T ≥ 2 takes only t-of-n runs with t ≥ T.
    min_threshold: int = 0
    # Record-level DP: the step this site's row count is rounded up to before DP-SGD's
    # schedule is computed. The sample rate (1 / the batches of an epoch) and the steps are
    # in the site's signed ledger copies: from the exact count, a batch of 1 (or runs with
    # batches 16, 17, 18, ...) would tell the coordinator the count to the row; from the
    # rounded one it learns only which multiple of this step the count is under.
    dp_rows_step: int = 16


def default_min_key_bits() -> int:
    """2048, or the site's own ``COHORT_MIN_KEY_BITS`` (at least 1024)."""
    raw = os.environ.get("COHORT_MIN_KEY_BITS", "2048")
    try:
        bits = int(raw)
    except ValueError as exc:
        raise ValueError(f"COHORT_MIN_KEY_BITS must be a number of bits, not {raw!r}") from exc
    if bits < 1024:
        raise ValueError(f"COHORT_MIN_KEY_BITS must be at least 1024, not {bits}")
    return bits


def check_deal_bits(policy: SitePolicy, bits: int) -> None:
    """Refuse (``policy``) to deal a run key smaller than the site's ``min_key_bits``.

    Serves the single-key dealer (client/run_keys.py) and the t-of-n dealer
    (client/threshold.py).
    """
    if bits < policy.min_key_bits:
        raise TaskRefused(
            "policy",
            f"the run asks for a {bits}-bit key; this site deals keys of at least "
            f"{policy.min_key_bits} bits (COHORT_MIN_KEY_BITS)",
        )


def check_key_bits(policy: SitePolicy, modulus_bits: int) -> None:
    """Refuse (``policy``) a run key whose modulus is smaller than ``min_key_bits``.

    A Paillier modulus of two ``k/2``-bit primes may come out at ``k - 1`` bits, hence the
    one bit of slack. Serves a site opening a sealed key (client/run_keys.py) and a share
    holder opening its share (client/threshold.py).
    """
    if modulus_bits < policy.min_key_bits - 1:
        raise TaskRefused(
            "policy",
            f"the run's key has {modulus_bits} bits; this site accepts keys of "
            f"at least {policy.min_key_bits} bits (COHORT_MIN_KEY_BITS)",
        )


# Spec prefixes that import code at the site: only ever built when the site names them.
HF_PREFIX = "hf:"
SITE_PREFIX = "site:"


def is_code_spec(spec: str) -> bool:
    """True for a model spec that imports code (``hf:/dir`` or ``package.module:factory``)."""
    return spec.startswith(HF_PREFIX) or ":" in spec


def bare_spec(spec: str) -> str:
    """A run's model name without the coordinator's ``site:`` marker of site-provided models."""
    return spec[len(SITE_PREFIX) :] if spec.startswith(SITE_PREFIX) else spec


def check_model(policy: SitePolicy, spec: str, builtins: tuple[str, ...]) -> str:
    """Return the spec this site may build for a run's model name, or refuse it.

    A built-in registry name is allowed when the policy lists it (or lists no built-ins);
    anything that imports code is allowed only when the site itself named it exactly.

    Raises
    ------
    TaskRefused
        ``policy``, naming the spec and the flag that would allow it.
    """
    name = bare_spec(str(spec))
    if not name:
        raise TaskRefused("policy", "the task names no model")
    if name in policy.extra_model_specs:
        return name
    if is_code_spec(name):
        raise TaskRefused(
            "policy",
            f"model {name[:200]!r} imports code at this site and this site did not list it "
            "(`cohort client run --allow-model SPEC`)",
        )
    if name not in builtins:
        raise TaskRefused("policy", f"model {name[:200]!r} is not a built-in model")
    if policy.allowed_models and name not in policy.allowed_models:
        raise TaskRefused(
            "policy",
            f"model {name!r} is not among this site's allowed models "
            f"({', '.join(policy.allowed_models)})",
        )
    return name


def policy_from_options(
    *,
    allow_model: list[str] | tuple[str, ...] = (),
    require_secure: bool = False,
    min_aggregate_sites: int = 3,
    trust_custodian: list[str] | tuple[str, ...] = (),
    tofu: bool = False,
    privacy_budget: float | None = None,
    privacy_delta: float = 1e-5,
    min_threshold: int = 0,
    dp_rows_step: int = 16,
) -> SitePolicy:
    """Build a policy from the site's flags/TOML values, refusing nonsense precisely.

    ``--allow-model`` takes registry names and code specs alike; they are sorted apart
    here so that naming one built-in does not quietly allow a factory or the reverse.

    Raises
    ------
    ValueError
        For a blank spec, a minimum below 1, or a budget or delta out of range.
    """
    if privacy_budget is not None:
        privacy_budget = float(privacy_budget)
        if not 0.0 < privacy_budget < float("inf"):
            raise ValueError(f"--privacy-budget must be a positive epsilon, not {privacy_budget}")
    privacy_delta = float(privacy_delta)
    if not 0.0 < privacy_delta < 1e-2:
        raise ValueError(f"--delta must be in (0, 0.01), not {privacy_delta}")
    if isinstance(min_aggregate_sites, bool) or not isinstance(min_aggregate_sites, int):
        raise TypeError("min_aggregate_sites must be an integer")
    if min_aggregate_sites < 1:
        raise ValueError(f"--min-aggregate-sites must be at least 1, not {min_aggregate_sites}")
    if isinstance(min_threshold, bool) or not isinstance(min_threshold, int):
        raise TypeError("min_threshold must be an integer")
    if min_threshold < 0 or min_threshold == 1:
        raise ValueError(
            "--min-threshold must be 0 (single-key runs allowed) or at least 2, "
            f"not {min_threshold}"
        )
    if isinstance(dp_rows_step, bool) or not isinstance(dp_rows_step, int):
        raise TypeError("dp_rows_step must be an integer")
    if dp_rows_step < 1:
        raise ValueError(f"--dp-rows-step must be at least 1, not {dp_rows_step}")
    builtins: list[str] = []
    code: list[str] = []
    for raw in allow_model:
        spec = bare_spec(str(raw).strip())
        if not spec:
            raise ValueError("--allow-model needs a model name or spec, not an empty string")
        (code if is_code_spec(spec) else builtins).append(spec)
    custodians = [str(c).strip() for c in trust_custodian]
    if any(not c for c in custodians):
        raise ValueError("--trust-custodian needs a site name, not an empty string")
    return SitePolicy(
        allowed_models=tuple(dict.fromkeys(builtins)),
        extra_model_specs=tuple(dict.fromkeys(code)),
        require_secure=bool(require_secure),
        min_aggregate_sites=min_aggregate_sites,
        trusted_custodians=tuple(dict.fromkeys(custodians)),
        tofu=bool(tofu),
        privacy_budget=privacy_budget,
        privacy_delta=privacy_delta,
        min_threshold=min_threshold,
        dp_rows_step=dp_rows_step,
    )


def describe(policy: SitePolicy) -> dict[str, object]:
    """The effective policy as plain data (`cohort client policy` prints it)."""
    return {
        "allowed_models": list(policy.allowed_models) or "every built-in registry model",
        "extra_model_specs": list(policy.extra_model_specs),
        "require_secure": policy.require_secure,
        "min_aggregate_sites": policy.min_aggregate_sites,
        "trusted_custodians": list(policy.trusted_custodians) or "any pinned peer",
        "tofu": policy.tofu,
        "min_key_bits": policy.min_key_bits,
        "privacy_budget": ("none" if policy.privacy_budget is None else policy.privacy_budget),
        "privacy_delta": policy.privacy_delta,
        "min_threshold": policy.min_threshold or "none (single-key secure runs allowed)",
        "dp_rows_step": policy.dp_rows_step,
    }
