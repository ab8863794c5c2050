"""Benchmark secure aggregation: packed, DJN, multi-core and precomputed Paillier vs naive phe.

Run ``python bench/secure_agg.py`` (300 000 values, the size of a LoRA adapter on
BERT-base) or ``--quick`` (20 000). The last line printed is one JSON object.

``--verify`` runs the sovereign-site section instead: what a site pays to check an
aggregate before decrypting it (the manifest's Ed25519 signatures, the payload hashes and
the recomputed ciphertext product, client/verify.py) for 3 and 10 sites, at the demo's
size (66 ciphertexts) and at 300 000 values, as a fraction of decrypting that aggregate.
It ends with its own JSON object (``verify_fraction_of_decrypt``: the worst case; goal
≤ 0.10).

``--defaults`` runs the section on the encoding a user gets without asking (per-tensor
clip bounds, 8-bit values, 20-bit slots; coordinator/runs.py DEFAULT_ENCODING): real
Paillier payload bytes per update over float32 for the tabular demo model, the
multimodal scenario's exchanged (LoRA) tensors and a CNN of Flower's quickstart-pytorch
shape, then the tabular demo's federated test accuracy next to the old default (clip 16,
20 bits), seeds 0-2. Accuracy runs the demo's sites, data split, trainers, rounds and
test set in one process with the codec's plaintext sums (exactly what Paillier's
homomorphic sum decrypts to) instead of gRPC. It ends with its own JSON object
(``expansion_vs_fp32_defaults``: the worst of the three models; goal ≤ 1.3). The main
section's JSON carries the same key, computed from the codec's ciphertext count.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from phe import PaillierPublicKey

from crypto import (
    RandomnessPool,
    SlotCodec,
    add_encrypted,
    ciphertext_width,
    ciphertexts_to_bytes,
    decrypt_packed,
    encrypt_packed,
    generate_keypair,
    validate_ciphertexts,
)
from crypto.obfuscators import draw_units, obfuscators_for_units

NAIVE_SAMPLE = 200


@dataclass(frozen=True)
class EncryptRow:
    """One way of encrypting a client's update, and how fast it went."""

    method: str
    seconds: float
    values: int
    note: str

    @property
    def values_per_second(self) -> float:
        return self.values / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=300_000, help="values per client update")
    parser.add_argument("--quick", action="store_true", help="use 20000 values")
    parser.add_argument("--key-bits", type=int, default=2048, help="Paillier modulus size")
    parser.add_argument("--clients", type=int, default=3, help="clients in the aggregate")
    parser.add_argument("--bits", type=int, default=8, help="quantisation bits")
    parser.add_argument("--max-weight", type=int, default=4096, help="bound on the sum of weights")
    parser.add_argument("--clip", type=float, default=0.05, help="clipping bound C")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--verify", action="store_true", help="only the site's aggregate-verification cost"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="--verify: best of this many timings"
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="only bytes and accuracy at the default (per-tensor, 8-bit) encoding",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="--defaults: tabular accuracy over this many seeds"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.values = 20_000
    if args.clients < 1 or args.clients > args.max_weight:
        parser.error("--clients must be between 1 and --max-weight")
    return args


def _classic(
    public_key: PaillierPublicKey, plaintexts: list[int], factors: tuple[int, int] | None = None
) -> list[int]:
    """Packed encryption with classic ``r^n`` for uniform ``r`` (the path DJN replaced)."""
    n = public_key.n
    units = draw_units(n, len(plaintexts))
    obfuscators = obfuscators_for_units(units, n, *(factors or (None, None)))
    return [
        (m * n + 1) * r % public_key.nsquare for m, r in zip(plaintexts, obfuscators, strict=True)
    ]


def timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.verify:
        verification_section(args)
        return
    if args.defaults:
        defaults_section(args)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    public_key, private_key = generate_keypair(
        args.key_bits, insecure_test_size=args.key_bits < 2048
    )
    codec = SlotCodec.for_public_key(
        public_key, clip=args.clip, bits=args.bits, max_weight=args.max_weight
    )
    rng = np.random.default_rng(args.seed)
    updates = [rng.normal(0.0, args.clip / 2, args.values) for _ in range(args.clients)]
    weights = [int(w) for w in rng.integers(1, args.max_weight // args.clients + 1, args.clients)]
    encode_s, plaintexts = timed(
        lambda: [codec.encode(u, w, rng) for u, w in zip(updates, weights, strict=True)]
    )
    assert isinstance(plaintexts, list)
    count_ct = codec.num_plaintexts(args.values)

    # Baseline: phe's own API, one ciphertext per value. Timed on a sample, extrapolated.
    sample = updates[0][:NAIVE_SAMPLE]
    naive_s, _ = timed(lambda: [public_key.encrypt(float(v)) for v in sample])
    rows = [
        EncryptRow(
            "naive phe encrypt(float)",
            naive_s * args.values / sample.size,
            args.values,
            f"extrapolated from {sample.size} values",
        )
    ]

    # Each method encrypts the next client's plaintexts; the last one per client aggregates.
    ciphertexts: dict[int, list[int]] = {}
    pool = RandomnessPool(public_key)
    factors = (private_key.p, private_key.q)
    methods: list[tuple[str, str, Callable[[list[int]], list[int]]]] = [
        ("packed, 1 core, classic r^n", "public key only", lambda p: _classic(public_key, p)),
        (
            "packed, 1 core, classic r^n by CRT",
            "key holder",
            lambda p: _classic(public_key, p, factors),
        ),
        (
            "packed, 1 core, DJN fixed base",
            "any site; table built in the call",
            lambda p: encrypt_packed(public_key, p, workers=1),
        ),
        (
            f"packed, {cores} cores, DJN fixed base",
            "any site",
            lambda p: encrypt_packed(public_key, p),
        ),
    ]
    for index, (name, note, encrypt) in enumerate(methods):
        client = index % args.clients
        started = time.perf_counter()
        ciphertexts[client] = encrypt(plaintexts[client])
        rows.append(EncryptRow(name, time.perf_counter() - started, args.values, note))

    started = time.perf_counter()
    pool.start(count_ct)
    pool.wait_available(count_ct)
    fill_s = time.perf_counter() - started
    client = len(methods) % args.clients
    seconds, result = timed(lambda: encrypt_packed(public_key, plaintexts[client], pool=pool))
    pool.close()
    assert isinstance(result, list)
    ciphertexts[client] = result
    rows.append(
        EncryptRow(
            "packed, precomputed r^n",
            seconds,
            args.values,
            f"encrypt step only; pool filled in {fill_s:.2f} s on {cores} cores during training",
        )
    )
    for client in range(args.clients):
        if client not in ciphertexts:
            ciphertexts[client] = encrypt_packed(public_key, plaintexts[client])

    vectors = [ciphertexts[c] for c in range(args.clients)]
    started = time.perf_counter()
    for vector in vectors:
        validate_ciphertexts(vector, public_key)
    validate_s = time.perf_counter() - started
    aggregate_s, aggregate = timed(lambda: add_encrypted(vectors, public_key))
    assert isinstance(aggregate, list)
    decrypt_s, sums = timed(lambda: decrypt_packed(private_key, aggregate))
    assert isinstance(sums, list)
    decode_s, decoded = timed(lambda: codec.decode(sums, sum(weights), args.values))
    assert isinstance(decoded, np.ndarray)
    clipped = [np.clip(u, -args.clip, args.clip) for u in updates]
    expected = sum(w * c for w, c in zip(weights, clipped, strict=True)) / sum(weights)
    max_error = float(np.abs(decoded - expected).max())
    wire_bytes = len(ciphertexts_to_bytes(vectors[0], ciphertext_width(public_key)))
    expansion = wire_bytes / (4 * args.values)

    naive_vps = rows[0].values_per_second
    best = max(rows[1:], key=lambda r: r.values_per_second)
    best_without_pool = max(rows[1:4], key=lambda r: r.values_per_second)
    figures = {
        "values": args.values,
        "key_bits": args.key_bits,
        "clients": args.clients,
        "cores": cores,
        "quantisation_bits": args.bits,
        "max_weight": args.max_weight,
        "slot_bits": codec.slot_bits,
        "slots_per_ciphertext": codec.slots_per_plaintext,
        "ciphertexts_per_client": count_ct,
        "encode_s_per_client": encode_s / args.clients,
        "naive_phe_values_per_s": naive_vps,
        "naive_phe_extrapolated_from": int(sample.size),
        **{_key(r.method): r.values_per_second for r in rows[1:]},
        "pool_fill_s": fill_s,
        "best_method": best.method,
        "speedup_vs_naive_phe": best.values_per_second / naive_vps,
        "speedup_vs_naive_phe_without_precompute": best_without_pool.values_per_second / naive_vps,
        "validate_s": validate_s,
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        "decode_s": decode_s,
        "wire_bytes_per_client": wire_bytes,
        "fp32_bytes_per_client": 4 * args.values,
        "expansion_vs_fp32": expansion,
        "max_abs_error": max_error,
        "error_bound_step": codec.step,
        "expansion_vs_fp32_defaults": _repo_packages_first()
        or max(_default_expansion(public_key, count) for count in _default_model_sizes().values()),
    }
    _print_tables(args, codec, rows, figures)
    print(json.dumps(figures))


def _key(method: str) -> str:
    words = method.replace(",", "").replace("^", "").split()
    return "_".join(words).lower() + "_values_per_s"


def _print_tables(
    args: argparse.Namespace, codec: SlotCodec, rows: list[EncryptRow], figures: dict[str, object]
) -> None:
    naive = rows[0].values_per_second
    title = (
        f"Encrypting {args.values:,} values, {args.key_bits}-bit key, {codec.bits}-bit "
        f"quantisation, {codec.slots_per_plaintext} x {codec.slot_bits}-bit slots per ciphertext"
    )
    header = ["method", "encrypt s", "values/s", "vs naive", "note"]
    table = [
        [
            r.method,
            f"{r.seconds:,.2f}",
            f"{r.values_per_second:,.0f}",
            f"{r.values_per_second / naive:,.0f}x",
            r.note,
        ]
        for r in rows
    ]
    summary = [
        [f"validate {args.clients} uploads", f"{figures['validate_s']:.3f} s"],
        [f"aggregate {args.clients} clients", f"{figures['aggregate_s']:.3f} s"],
        ["decrypt aggregate (all cores)", f"{figures['decrypt_s']:.3f} s"],
        ["decode", f"{figures['decode_s']:.3f} s"],
        [
            "bytes on the wire per client",
            f"{figures['wire_bytes_per_client']:,} vs fp32 {figures['fp32_bytes_per_client']:,}"
            f" = {figures['expansion_vs_fp32']:.3f}x",
        ],
        [
            "max |decoded - weighted mean|",
            f"{figures['max_abs_error']:.2e} (bound: step {figures['error_bound_step']:.2e})",
        ],
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for line in [header, *table]:
            print(" | ".join(line))
        for line in summary:
            print(": ".join(line))
        return
    console = Console(width=150)
    encrypt_table = Table(*header, title=title)
    for line in table:
        encrypt_table.add_row(*line)
    console.print(encrypt_table)
    summary_table = Table("step", "result", title="Aggregation")
    for line in summary:
        summary_table.add_row(*line)
    console.print(summary_table)


# -- sovereign sites: checking an aggregate before decrypting it -------------------------

DEMO_CIPHERTEXTS = 66  # the demo's breast-cancer MLP under its encoding


def verification_section(args: argparse.Namespace) -> dict[str, object]:
    """Time client/verify.py against decrypting the same aggregate, for 3 and 10 sites.

    The sites' ciphertexts are uniform units modulo n², which is exactly how Paillier
    encryptions of uniform plaintexts are distributed; the product and the hashing cost
    the same either way, and it saves encrypting 10 x 3,000 ciphertexts first. Fetching
    the updates (network) is not counted: it overlaps nothing and depends on the link.
    """
    import hashlib

    import gmpy2

    from client.verify import Entry, Signer, check_manifest, verify_aggregate
    from crypto import identity

    public_key, private_key = generate_keypair(
        args.key_bits, insecure_test_size=args.key_bits < 2048
    )
    codec = SlotCodec.for_public_key(
        public_key, clip=args.clip, bits=args.bits, max_weight=args.max_weight
    )
    width = ciphertext_width(public_key)
    n_square = public_key.nsquare
    state = gmpy2.random_state(args.seed)
    # The agent's decryption pool lives across rounds: start it before timing anything.
    decrypt_packed(private_key, [int(gmpy2.mpz_random(state, n_square - 1)) + 1] * 8)
    sizes = [
        ("demo", DEMO_CIPHERTEXTS),
        (f"{args.values:,} values", codec.num_plaintexts(args.values)),
    ]
    rows: list[dict[str, object]] = []
    for label, count in sizes:
        for sites in (3, 10):
            vectors = [
                [int(gmpy2.mpz_random(state, n_square - 1)) + 1 for _ in range(count)]
                for _ in range(sites)
            ]
            payloads = [ciphertexts_to_bytes(v, width) for v in vectors]
            aggregate = ciphertexts_to_bytes(add_encrypted(vectors, public_key), width)
            blobs = {hashlib.sha256(p).hexdigest(): p for p in payloads}
            signers: dict[str, Signer] = {}
            entries: list[Entry] = []
            for index, payload in enumerate(payloads):
                site = f"site-{index}"
                private, public = identity.generate_ed25519()
                signers[site] = Signer(site, identity.fingerprint(public), public)
                sha = hashlib.sha256(payload).hexdigest()
                statement = identity.update_statement(
                    run_id="bench",
                    round_number=1,
                    site_name=site,
                    payload_sha256=sha,
                    weight=1,
                    key_id="k",
                    encoding="paillier",
                )
                entries.append(
                    Entry(
                        f"node-{index}",
                        site,
                        sha,
                        1,
                        len(payload),
                        identity.sign(private, statement),
                    )
                )

            def signatures(entries: list[Entry] = entries, signers: dict = signers) -> None:
                check_manifest(
                    entries,
                    run_id="bench",
                    round_number=1,
                    total_weight=len(entries),
                    key_id="k",
                    encoding="paillier",
                    signers=signers,
                    min_sites=3,
                    payload_size=entries[0].payload_size,
                )

            def product(
                entries: list[Entry] = entries, aggregate: bytes = aggregate, blobs: dict = blobs
            ) -> None:
                verify_aggregate(
                    entries, aggregate, blobs.__getitem__, width=width, n_square=n_square
                )

            sig_s = min(timed(signatures)[0] for _ in range(args.repeats))
            prod_s = min(timed(product)[0] for _ in range(args.repeats))
            ciphertexts = [int(c) for c in crypto_ints(aggregate, width)]
            decrypt_s = min(
                timed(lambda c=ciphertexts: decrypt_packed(private_key, c))[0]
                for _ in range(max(1, args.repeats - 1))
            )
            rows.append(
                {
                    "size": label,
                    "ciphertexts": count,
                    "sites": sites,
                    "signatures_s": sig_s,
                    "product_and_hashes_s": prod_s,
                    "verify_s": sig_s + prod_s,
                    "decrypt_s": decrypt_s,
                    "fraction": (sig_s + prod_s) / decrypt_s,
                }
            )
    worst = max(float(r["fraction"]) for r in rows)  # type: ignore[arg-type]
    figures = {
        "key_bits": args.key_bits,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "rows": rows,
        "verify_fraction_of_decrypt": worst,
        "verify_goal": 0.10,
    }
    title = f"A site checks an aggregate before decrypting it ({args.key_bits}-bit key)"
    header = (
        "size | ciphertexts | sites | signatures s | product+hashes s | verify s | decrypt s"
        " | verify/decrypt"
    )
    print(title)
    print(header)
    for r in rows:
        print(
            f"{r['size']} | {r['ciphertexts']} | {r['sites']} | {r['signatures_s']:.4f} | "
            f"{r['product_and_hashes_s']:.4f} | {r['verify_s']:.4f} | {r['decrypt_s']:.4f} | "
            f"{r['fraction']:.3f}"
        )
    print(json.dumps(figures))
    return figures


def crypto_ints(payload: bytes, width: int) -> list[int]:
    from crypto import ciphertexts_from_bytes

    return ciphertexts_from_bytes(payload, width)


# -- defaults: what a user gets without choosing an encoding --------------------------------

OLD_DEFAULT = {"clip": 16.0, "bits": 20}
"""The secure default before per-tensor clipping (one clip for every tensor)."""


def quickstart_cnn():  # type: ignore[no-untyped-def]
    """Flower's quickstart-pytorch CNN (CIFAR-10): 62,006 parameters."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def _default_model_tensors(with_multimodal: bool = True) -> dict[str, list[np.ndarray]]:
    """The exchanged tensors of the three models, as a site would send them."""
    import tempfile
    from pathlib import Path

    import models
    from cli.demo import DemoSettings
    from cli.scenarios import MultimodalScenario

    tensors = {
        "tabular demo (tabular_mlp)": models.get_weights(
            models.build_model("tabular_mlp", in_features=30)
        ),
        "quickstart-pytorch CNN": [
            p.detach().numpy().astype(np.float64) for p in quickstart_cnn().state_dict().values()
        ],
    }
    if with_multimodal:
        with tempfile.TemporaryDirectory() as workdir:
            scenario = MultimodalScenario(
                DemoSettings(scenario="multimodal", data_dir=Path(workdir)), Path(workdir)
            )
            first = next(iter(scenario.trainers.values()))
            tensors["multimodal LoRA (exchanged)"] = first.get_parameters({})
    return tensors


def _default_model_sizes() -> dict[str, int]:
    """Value counts of the three models (the multimodal one as the demo reports it)."""
    return {name: int(sum(t.size for t in ts)) for name, ts in _default_model_tensors().items()}


def _default_codec(public_key) -> SlotCodec:  # type: ignore[no-untyped-def]
    from coordinator.runs import DEFAULT_ENCODING

    return SlotCodec.for_public_key(
        public_key,
        clip=float(DEFAULT_ENCODING["clip"]),
        bits=int(DEFAULT_ENCODING["bits"]),
        max_weight=int(DEFAULT_ENCODING["max_weight"]),
    )


def _default_expansion(public_key, count: int) -> float:  # type: ignore[no-untyped-def]
    return (
        _default_codec(public_key).num_plaintexts(count)
        * ciphertext_width(public_key)
        / (4 * count)
    )


def _emulated_tabular_accuracy(encoding: dict[str, float], seed: int) -> dict[str, float]:
    """The tabular demo's run (sites, split, trainers, rounds, test set) in one process.

    Each site's update is encoded as the agent encodes it; the codec's plaintext sums are
    what Paillier's homomorphic sum decrypts to, so decoding them is the aggregate.
    """
    import tempfile
    from pathlib import Path

    from cli.demo import DemoSettings
    from cli.scenarios import TabularScenario
    from client.schemes.paillier import clip_metrics
    from client.schemes.paillier_model import SecureModelState, ServerOptimiser, flatten

    settings = DemoSettings(seed=seed)
    with tempfile.TemporaryDirectory() as workdir:
        scenario = TabularScenario(settings, Path(workdir))
    trainers = list(scenario.trainers.values())
    initial = trainers[0].get_parameters({})
    state = SecureModelState(flatten(initial), initial, ServerOptimiser())
    codec = SlotCodec(
        clip=float(encoding["clip"]), bits=int(encoding["bits"]), max_weight=4096, key_bits=2048
    )
    cap = 4096 // len(trainers)  # coordinator/federation.py weight_cap
    config = {"local_epochs": settings.local_epochs, "lr": scenario.default_lr}
    rng = np.random.default_rng(seed)
    clipped: list[float] = []
    for _ in range(settings.rounds):
        weights = state.arrays()
        clip = state.clip_for(codec)
        sums: list[int] | None = None
        total = 0
        for trainer in trainers:
            new, examples, _ = trainer.fit([w.copy() for w in weights], config)
            delta = flatten(new) - state.weights
            weight = max(1, min(int(examples), cap))
            clipped.append(clip_metrics(delta, codec, clip)["clipped_fraction"])
            packed = codec.encode(delta, weight, rng, clip)
            sums = packed if sums is None else [a + b for a, b in zip(sums, packed, strict=True)]
            total += weight
        assert sums is not None
        mean = codec.decode(sums, total, state.weights.size, clip)
        state.weights = state.optimiser.step(state.weights, mean)
        state.carry_bounds(mean, codec)
    scores = scenario.evaluate(state.arrays())
    return {**scores, "clipped_fraction_max": max(clipped)}


def _repo_packages_first() -> None:
    """``python bench/secure_agg.py`` puts bench/ first on sys.path, whose models.py is a
    benchmark script: the repository's ``models`` package must win."""
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    if "models" in sys.modules and not hasattr(sys.modules["models"], "build_model"):
        del sys.modules["models"]


def defaults_section(args: argparse.Namespace) -> None:
    """Bytes per update at the default encoding, and the tabular demo's accuracy."""
    _repo_packages_first()
    from client.schemes.paillier import encrypt_update
    from client.schemes.paillier_model import SecureModelState, ServerOptimiser, flatten
    from coordinator.runs import DEFAULT_ENCODING

    public_key, private_key = generate_keypair(2048)
    codec = _default_codec(public_key)
    old = SlotCodec.for_public_key(public_key, max_weight=4096, **OLD_DEFAULT)  # type: ignore[arg-type]
    rng = np.random.default_rng(args.seed)
    byte_rows = []
    for name, tensors in _default_model_tensors().items():
        state = SecureModelState(flatten(tensors), tensors, ServerOptimiser())
        # A real update's size does not depend on its values: encrypt small noise.
        delta = rng.normal(0.0, 1e-3, state.weights.size)
        payload = encrypt_update(delta, 100, codec, public_key, rng, clip=state.clip_for(codec))
        fp32 = 4 * state.weights.size
        old_bytes = old.num_plaintexts(state.weights.size) * ciphertext_width(public_key)
        byte_rows.append(
            {
                "model": name,
                "values": int(state.weights.size),
                "tensors": len(tensors),
                "fp32_bytes": fp32,
                "default_bytes": len(payload),
                "default_expansion": len(payload) / fp32,
                "old_default_bytes": old_bytes,
                "old_default_expansion": old_bytes / fp32,
            }
        )
    accuracy_rows = []
    for seed in range(args.seeds):
        per_tensor = _emulated_tabular_accuracy(DEFAULT_ENCODING, seed)  # type: ignore[arg-type]
        global_clip = _emulated_tabular_accuracy(OLD_DEFAULT, seed)
        accuracy_rows.append({"seed": seed, "default": per_tensor, "old_default": global_clip})
    mean_default = float(np.mean([r["default"]["accuracy"] for r in accuracy_rows]))
    mean_old = float(np.mean([r["old_default"]["accuracy"] for r in accuracy_rows]))
    worst = max(r["default_expansion"] for r in byte_rows)
    print(
        f"\ndefault encoding: clip {DEFAULT_ENCODING['clip']} (per tensor), "
        f"{codec.bits} bits, {codec.slot_bits}-bit slots, {codec.slots_per_plaintext} per "
        f"2048-bit plaintext; old default: clip 16, 20 bits, {old.slot_bits}-bit slots, "
        f"{old.slots_per_plaintext} per plaintext\n"
    )
    print("model | values | tensors | fp32 bytes | default bytes | x fp32 | old bytes | x fp32")
    print("--- | ---: | ---: | ---: | ---: | ---: | ---: | ---:")
    for r in byte_rows:
        print(
            f"{r['model']} | {r['values']:,} | {r['tensors']} | {r['fp32_bytes']:,} | "
            f"{r['default_bytes']:,} | {r['default_expansion']:.3f} | "
            f"{r['old_default_bytes']:,} | {r['old_default_expansion']:.3f}"
        )
    print("\ntabular demo (5 rounds x 5 epochs, 3 hospitals), federated test accuracy\n")
    print("seed | default acc | default AUC | max clipped | old default acc | old AUC")
    print("---: | ---: | ---: | ---: | ---: | ---:")
    for r in accuracy_rows:
        d, o = r["default"], r["old_default"]
        print(
            f"{r['seed']} | {d['accuracy']:.4f} | {d['roc_auc']:.4f} | "
            f"{d['clipped_fraction_max']:.4f} | {o['accuracy']:.4f} | {o['roc_auc']:.4f}"
        )
    print(f"mean | {mean_default:.4f} | | | {mean_old:.4f} |")
    figures = {
        "encoding": dict(DEFAULT_ENCODING),
        "models": byte_rows,
        "tabular_accuracy": accuracy_rows,
        "tabular_accuracy_default_mean": mean_default,
        "tabular_accuracy_old_default_mean": mean_old,
        "accuracy_points_vs_old_default": 100 * (mean_default - mean_old),
        "multimodal_accuracy": "not measured (bytes only)",
        "expansion_vs_fp32_defaults": worst,
        "expansion_goal": 1.3,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
