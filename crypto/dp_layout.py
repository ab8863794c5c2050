"""Site-level DP in secure aggregation: clipped updates plus distributed discrete Gaussian noise.

Here, in ``crypto``, because both faces need the same layout: each site encodes with it
(client/dp_site_scheme.py) and the coordinator sizes the ciphertexts it accepts from it
(coordinator/schemes.py, :class:`SiteDPScheme`); neither may import the other.

Each site clips its whole update to L2 norm ``clip`` (the plan's ``max_grad_norm``),
quantises it on a grid fine enough that no value is clipped again (every value of a
vector of norm ``clip`` lies in ``[-clip, clip]``), adds its share of discrete Gaussian
noise to the integers, and only then packs and encrypts them. The coordinator adds
ciphertexts; the key holders decrypt only the sum, which carries the noise of every
contributing site: no party, the sites included, ever sees another site's un-noised
update. This is the distributed discrete Gaussian mechanism of Kairouz, Liu and Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation" (ICML 2021), without their random rotation (so the L2 sensitivity bound
below pays ``sqrt(d)`` for stochastic rounding instead of their conditional rounding).

Sampling: Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy"
(NeurIPS 2020), Algorithm 3 (rejection from a discrete Laplace), vectorised as in
TensorFlow Privacy's ``discrete_gaussian_utils``. Like that implementation it uses
floating point for the acceptance test, from a generator seeded by OS entropy.

Accounting (KLS21, Theorem 1/2): the sum of ``n`` independent discrete Gaussians of
scale ``sigma`` on integer vectors of L2 sensitivity ``D`` in dimension ``d`` is
``rho``-zCDP with ``rho = eps^2 / 2``, ``eps = sqrt(D^2 / (n sigma^2) + tau d / 2)``,
``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))`` (the first branch of their
minimum: an upper bound). It is composed over rounds with ``dp_accounting``'s
``ZCDpEvent``. Dropped sites: the noise is calibrated for ``quorum`` sites alone; every
further site adds noise, so the stated ε is an upper bound for every sum decrypted: the
coordinator cannot close a round with fewer than the run's quorum (which run creation
checks is at least the plan's), and no site decrypts, or publishes a partial decryption
of, a sum of fewer than the plan's quorum (client/dp_site_scheme.py). Honest-but-curious
sites are assumed for the noise of the others, as in KLS21. Sites are weighted equally
(weight 1): site-level DP bounds what the sum reveals about one SITE, so a weight from
its example count would both leak that count and scale its sensitivity.

Slots: a site's value ``q + z`` is kept in ``[-(L + K), L + K]``, ``L = 2^(bits-1) - 1``,
``K = TAIL * sigma`` (the chance that one draw passes ``TAIL = 20`` scales is below
1e-86; such a draw is refused, not truncated, and the update is not sent), offset by
``L + K`` so that a slot sums non-negative numbers: a slot of ``width(L + K) +
ceil(log2(max_sites))`` bits cannot carry into its neighbour. For the tabular MLP (4,258
values), 16-bit quantisation, ε = 8 over 3 rounds and a quorum of 3, calibration gives
σ ≈ 2.1e4 levels a site and 23-bit slots against the plaintext codec's 20 (89 slots per
2048-bit plaintext instead of 102: ~15% more ciphertexts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from crypto.packing import MAX_SLOT_BITS, pack_slots, unpack_slots
from crypto.quantise import dequantise, quantise

TAIL = 20.0
SITE_BITS = 16  # quantisation of a clipped update: 32,767 levels each side of zero
DEFAULT_MAX_SITES = 64
# The RDP orders of every site's ledger (client/ledger.py composes with the same ones):
# Opacus's defaults from 2 up (fractional orders below 2 do not converge for large sample
# rates in dp-accounting and only help at very small ε), plus high ones.
ORDERS = [1 + x / 10.0 for x in range(10, 100)] + list(range(11, 64)) + [128, 256, 512]
MECHANISM_SITE = (
    "distributed discrete Gaussian (KLS21): whole-update L2 clipping, integer noise shares "
    "inside the encrypted sum"
)


def sample_discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of the discrete Gaussian of scale ``sigma`` (CKS20, Algorithm 3)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    t = math.floor(sigma) + 1
    out = np.empty(0, dtype=np.int64)
    p = 1.0 - math.exp(-1.0 / t)
    while out.size < size:
        want = max(64, 2 * (size - out.size))
        y = rng.geometric(p, want).astype(np.int64) - rng.geometric(p, want).astype(np.int64)
        accept = rng.random(want) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        out = np.concatenate([out, y[accept]])
    return out[:size]


def clip_update(update: np.ndarray, clip: float) -> np.ndarray:
    """The whole update scaled to L2 norm at most ``clip`` (site-level sensitivity)."""
    norm = float(np.linalg.norm(update))
    return update * min(1.0, clip / norm) if norm > 0 else update.astype(np.float64)


def tau(sigma: float, sites: int) -> float:
    """The τ term of Kairouz, Liu & Steinke (2021, Thm. 1) for a sum of ``sites`` draws."""
    return 10.0 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, sites))


@dataclass(frozen=True)
class SiteNoise:
    """One run's site-level layout and noise: every site and the decoder derive the same."""

    clip: float
    bits: int
    dimension: int
    quorum: int
    max_sites: int
    sigma: float  # each site's discrete Gaussian scale, in quantisation levels
    key_bits: int

    @property
    def levels(self) -> int:
        """Quantisation levels each side of zero for a clipped update."""
        return int(2 ** (self.bits - 1) - 1)

    @property
    def sensitivity(self) -> float:
        """L2 norm of a site's integer vector: ``clip`` is ``levels``; rounding adds <= sqrt(d)."""
        return self.levels + math.sqrt(self.dimension)

    @property
    def tail(self) -> int:
        """Headroom for noise: a draw past ``TAIL`` scales is refused, never truncated."""
        return int(math.ceil(TAIL * self.sigma))

    @property
    def offset(self) -> int:
        """What makes every slot value non-negative: levels plus the noise headroom."""
        return self.levels + self.tail

    @property
    def slot_bits(self) -> int:
        """Bits a slot needs so the sum of ``max_sites`` offset values never carries."""
        return (2 * self.offset).bit_length() + (self.max_sites - 1).bit_length()

    @property
    def slots_per_plaintext(self) -> int:
        """Slots one Paillier plaintext holds (lowest slot first, as crypto/codec.py packs)."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def num_plaintexts(self) -> int:
        """Plaintexts (hence ciphertexts) one update of ``dimension`` values takes."""
        return -(-self.dimension // self.slots_per_plaintext)

    def as_dict(self) -> dict[str, Any]:
        """The layout as plain JSON values (what a site's ledger pins for the run)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteNoise:
        """A layout pinned by :meth:`as_dict` (ValueError when it does not read)."""
        try:
            noise = cls(
                clip=float(data["clip"]),
                bits=int(data["bits"]),
                dimension=int(data["dimension"]),
                quorum=int(data["quorum"]),
                max_sites=int(data["max_sites"]),
                sigma=float(data["sigma"]),
                key_bits=int(data["key_bits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a site-level DP layout does not read: {exc}") from exc
        noise.check()
        return noise

    def check(self) -> None:
        """ValueError when the layout is meaningless or its slots do not fit the key."""
        if not (
            2 <= self.bits <= 24
            and self.quorum >= 1
            and self.max_sites >= self.quorum
            and self.dimension >= 1
            and math.isfinite(self.sigma)
            and self.sigma > 0
            and math.isfinite(self.clip)
            and self.clip > 0
        ):
            raise ValueError(f"site-level DP layout does not make sense: {self}")
        if self.slot_bits > MAX_SLOT_BITS or self.slots_per_plaintext < 1:
            raise ValueError(
                f"site-level DP needs {self.slot_bits}-bit slots: too wide for "
                f"{self.key_bits}-bit keys (lower bits or noise)"
            )

    def rho(self) -> float:
        """The zCDP ρ of one round's decrypted sum over ``quorum`` sites (module docstring)."""
        epsilon_sq = (
            self.sensitivity**2 / (self.quorum * self.sigma**2)
            + 0.5 * tau(self.sigma, self.quorum) * self.dimension
        )
        return epsilon_sq / 2

    def event(self, rounds: int) -> dict[str, float | int | str]:
        """The ledger's description of ``rounds`` rounds."""
        return {"kind": "zcdp", "rho": self.rho(), "count": rounds}

    def encode(self, update: np.ndarray, rng: np.random.Generator) -> list[int]:
        """Clip, quantise, add this site's noise share, offset and pack (weight 1 per site).

        Raises
        ------
        OverflowError
            On a noise draw past ``TAIL`` scales (refused, never truncated).
        """
        flat = clip_update(np.ravel(update).astype(np.float64), self.clip)
        q = quantise(flat, self.clip, self.bits, rng).astype(np.int64)
        noise = sample_discrete_gaussian(self.sigma, q.size, rng)
        if np.abs(noise).max(initial=0) > self.tail:
            raise OverflowError("a noise draw passed the slot's tail bound; update not sent")
        values = (q + noise + self.offset).astype(np.uint64)
        return pack_slots(values, self.slot_bits, self.slots_per_plaintext)

    def decode_sum(self, plaintext_sums: list[int], sites: int) -> np.ndarray:
        """The decrypted sum of ``sites`` sites' updates (noise included), as floats.

        Raises
        ------
        ValueError
            Fewer sites than the quorum the noise is calibrated for (their sum would carry
            too little noise: it is not decoded), or more than the slots hold.
        OverflowError
            A slot above ``sites`` times the largest value one site can send: a
            contribution did not come from :meth:`encode`.
        """
        if not self.quorum <= sites <= self.max_sites:
            raise ValueError(
                f"{sites} sites: outside the run's {self.quorum}..{self.max_sites} (the noise "
                f"is calibrated for a sum of at least {self.quorum} sites)"
            )
        slots = unpack_slots(
            plaintext_sums, self.slot_bits, self.slots_per_plaintext, self.dimension
        )
        limit = 2 * self.offset * sites
        if slots.size and int(slots.max()) > limit:
            raise OverflowError(
                f"a slot holds {int(slots.max())}, above {limit}, the most {sites} sites can send"
            )
        centred = slots.astype(np.int64) - np.int64(self.offset * sites)
        return dequantise(centred, self.clip, self.bits)


def zcdp_epsilon(rho: float, count: int, delta: float) -> float:
    """ε at ``delta`` of ``count`` rounds of ``rho``-zCDP, through dp-accounting's RDP
    accountant at :data:`ORDERS` (what client/ledger.py ``compose`` gives for the event)."""
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant(ORDERS)
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(float(rho)), int(count))
    )
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def calibrate(
    epsilon: float,
    delta: float,
    rounds: int,
    *,
    clip: float,
    bits: int,
    dimension: int,
    quorum: int,
    max_sites: int,
    key_bits: int,
) -> SiteNoise:
    """The smallest per-site scale whose ``rounds`` rounds, over ``quorum`` sites, meet (ε, δ).

    Deterministic in its arguments: every site and the coordinator derive the same layout
    from the run's plan, its rounds, the model's size and the key's (cached: the
    coordinator sizes every update of a run with it).
    """

    def layout(sigma: float) -> SiteNoise:
        return SiteNoise(clip, bits, dimension, quorum, max_sites, sigma, key_bits)

    def spent(sigma: float) -> float:
        return zcdp_epsilon(layout(sigma).rho(), rounds, delta)

    low, high = 0.5, 1.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e12:
            raise ValueError(f"no noise reaches epsilon {epsilon:g}")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if spent(middle) > epsilon:
            low = middle
        else:
            high = middle
    noise = layout(high)
    noise.check()
    return noise
