"""Site-level DP in secure aggregation: clipped updates plus distributed discrete Gaussian noise.

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
further site adds noise, so the stated ε is an upper bound whenever the round completes
(the coordinator cannot finish a round with fewer than its quorum). Honest-but-curious
sites are assumed for the noise of the others, as in KLS21.

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
from dataclasses import dataclass

import numpy as np

from crypto.packing import MAX_SLOT_BITS, pack_slots, unpack_slots
from crypto.quantise import dequantise, quantise

TAIL = 20.0
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

    def check(self) -> None:
        """ValueError when the layout is meaningless or its slots do not fit the key."""
        if not (2 <= self.bits <= 24 and self.quorum >= 1 and self.max_sites >= self.quorum):
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
        """The decrypted sum of ``sites`` sites' updates (noise included), as floats."""
        if not self.quorum <= sites <= self.max_sites:
            raise ValueError(f"{sites} sites: outside the run's quorum..max ({self.quorum}..)")
        slots = unpack_slots(
            plaintext_sums, self.slot_bits, self.slots_per_plaintext, self.dimension
        )
        centred = slots.astype(np.int64) - np.int64(self.offset * sites)
        return dequantise(centred, self.clip, self.bits)


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
    """The smallest per-site scale whose ``rounds`` rounds, over ``quorum`` sites, meet (ε, δ)."""
    from client.ledger import compose

    def layout(sigma: float) -> SiteNoise:
        return SiteNoise(clip, bits, dimension, quorum, max_sites, sigma, key_bits)

    def spent(sigma: float) -> float:
        return compose([layout(sigma).event(rounds)], delta)

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
