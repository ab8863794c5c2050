"""Benchmark secure aggregation: packed, CRT, multi-core and precomputed Paillier vs naive phe.

Run ``python bench/secure_agg.py`` (300 000 values, the size of a LoRA adapter on
BERT-base) or ``--quick`` (20 000). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    args = parser.parse_args(argv)
    if args.quick:
        args.values = 20_000
    if args.clients < 1 or args.clients > args.max_weight:
        parser.error("--clients must be between 1 and --max-weight")
    return args


def timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
    pool = RandomnessPool(public_key, private_key)
    methods: list[tuple[str, str, Callable[[list[int]], list[int]]]] = [
        ("packed, 1 core", "public key only", lambda p: encrypt_packed(public_key, p, workers=1)),
        (
            "packed, 1 core, CRT",
            "key holder",
            lambda p: encrypt_packed(public_key, p, private_key=private_key, workers=1),
        ),
        (
            f"packed, {cores} cores, CRT",
            "key holder",
            lambda p: encrypt_packed(public_key, p, private_key=private_key),
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
            ciphertexts[client] = encrypt_packed(
                public_key, plaintexts[client], private_key=private_key
            )

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


if __name__ == "__main__":
    main()
