"""Benchmark the proof of plaintext knowledge (crypto.plaintext_proof) beside encryption.

Run ``python bench/plaintext_proof.py`` (2048-bit key; the demo's 66 ciphertexts and 300)
or ``--quick`` (66 only). Per update, a site encrypts (a DJN obfuscator for every
ciphertext, the baseline; beside it the classic ``r^n`` by CRT that it replaced) and
proves once; every site verifies every contribution of an aggregate before it decrypts
(baseline: decrypting the aggregate with the private key, CRT). One process, one core,
all figures measured here; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phe import paillier

from crypto import decrypt_packed, encrypt_packed
from crypto import plaintext_proof as pp
from crypto.fixed_base import tables_for
from crypto.obfuscators import draw_units, obfuscators_for_units


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(public, private, count: int) -> dict[str, float]:
    plaintexts = [secrets.randbelow(public.n) for _ in range(count)]
    where = {"run_id": "bench", "round_number": 1, "site": "a"}
    exponents: list[int] = []
    tables_for(public.n)  # the key's DJN table, built once per process (outside the clock)

    def enc() -> list[int]:
        exponents.clear()
        return encrypt_packed(public, plaintexts, workers=1, exponents_out=exponents)

    units = draw_units(public.n, count)
    t_crt, _ = timed(lambda: obfuscators_for_units(units, public.n, private.p, private.q), 1)
    t_enc, cts = timed(enc, 1)
    t_prove, proof = timed(
        lambda: pp.prove_exponents(public.n, cts, plaintexts, exponents, **where)
    )
    t_verify, _ = timed(lambda: pp.verify(public.n, cts, proof, **where))
    t_dec, _ = timed(lambda: decrypt_packed(private, cts, workers=1), 1)
    return {
        "ciphertexts": count,
        "encrypt_s": t_enc,
        "classic_crt_obfuscators_s": t_crt,
        "prove_s": t_prove,
        "verify_s": t_verify,
        "decrypt_s": t_dec,
        "proof_bytes": len(proof.to_bytes(public.n)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--key-bits", type=int, default=2048)
    args = parser.parse_args()
    public, private = paillier.generate_paillier_keypair(n_length=args.key_bits)
    rows = [measure(public, private, c) for c in ((66,) if args.quick else (66, 300))]
    print(f"{args.key_bits}-bit key, one core")
    print(
        f"{'cts':>5} {'encrypt s':>10} {'prove s':>9} {'prove/enc':>9} "
        f"{'verify s':>9} {'decrypt s':>10} {'verify/dec':>10} {'bytes':>6}"
    )
    for r in rows:
        print(
            f"{r['ciphertexts']:>5} {r['encrypt_s']:>10.3f} {r['prove_s']:>9.3f} "
            f"{r['prove_s'] / r['encrypt_s']:>9.2f} {r['verify_s']:>9.3f} "
            f"{r['decrypt_s']:>10.3f} {r['verify_s'] / r['decrypt_s']:>10.2f} "
            f"{r['proof_bytes']:>6}"
        )
    print(json.dumps({"bench": "plaintext_proof", "key_bits": args.key_bits, "rows": rows}))


if __name__ == "__main__":
    main()
