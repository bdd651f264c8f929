"""Private set intersection: fedtrust's two-party ECDH PSI against the raw primitive it is built on.

Same keys, same run. Two owners with N keys each, half of them shared.

* fedtrust: both parties' `privacy.psi.PsiParty` steps (hash to curve, shuffle,
  blind, blind again, compare, order the intersection) plus sealing and opening
  every message as nodes do (`privacy.sealed`, AES-256-GCM), with the bytes each
  message carries through the relay;
* raw: the X25519 scalar multiplications alone (four per key pair: each party
  blinds its own set and the other's), on pre-hashed points, with no shuffling,
  sealing or comparison — the floor any X25519 DH-PSI pays.

* daemons (with --daemons): the whole `fedtrust psi` job through real daemons on
  localhost — admission, three steps relayed by the coordinator over mutual TLS,
  the owners' DuckDB key reads, ledger debits, attestations, the receipt check.

Goal: fedtrust within 1.3× of raw (the protocol), the daemons within 1.5×.

    python benchmarks/psi.py                            # 20,000 keys per owner
    python benchmarks/psi.py --keys 1000000 --daemons   # about 4 × 33 s of X25519 per million keys on one core
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedtrust.privacy import psi
from fedtrust.privacy.sealed import open_sealed, seal


def run_fedtrust(a, b, ctx):
    ka, kb = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    digest = ctx.hex()
    moved = 0

    def relay(msg, sender_key, receiver_key, sender, receiver, step):
        nonlocal moved
        box = seal(sender_key, receiver_key.public_key(), job_digest=digest, sender=sender, receiver=receiver,
                   step=step, plaintext=msg)
        moved += len(box)
        return open_sealed(receiver_key, sender_key.public_key(), job_digest=digest, sender=sender,
                           receiver=receiver, step=step, sealed=box)

    pa, pb = psi.PsiParty(a, ctx, max_keys=len(a)), psi.PsiParty(b, ctx, max_keys=len(b))
    to_b = relay(pa.first_message(), ka, kb, "a", "b", "psi-1")
    to_a = relay(pb.first_message(), kb, ka, "b", "a", "psi-1")
    back_a = relay(pb.answer(to_b), kb, ka, "b", "a", "psi-2")
    back_b = relay(pa.answer(to_a), ka, kb, "a", "b", "psi-2")
    ra, _ = pa.finish(back_a), pb.finish(back_b)
    return ra.size, moved


def run_raw(points_a, points_b):
    alpha, beta = X25519PrivateKey.generate(), X25519PrivateKey.generate()

    def mul(k, pts):
        return [k.exchange(X25519PublicKey.from_public_bytes(p)) for p in pts]

    ea, eb = mul(alpha, points_a), mul(beta, points_b)
    eab, eba = mul(beta, ea), mul(alpha, eb)
    return len(set(eab) & set(eba))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=20_000, help="keys per owner (half of them shared)")
    ap.add_argument("--daemons", action="store_true", help="also run the job through real daemons (mTLS relay)")
    args = ap.parse_args()
    n = args.keys
    shared = [os.urandom(16) for _ in range(n // 2)]
    a = shared + [os.urandom(16) for _ in range(n - n // 2)]
    b = [os.urandom(16) for _ in range(n - n // 2)] + shared
    ctx = os.urandom(32)

    t0 = time.perf_counter()
    size, moved = run_fedtrust(a, b, ctx)
    t_fed = time.perf_counter() - t0
    points_a = [psi.hash_to_point(k, ctx) for k in a]
    points_b = [psi.hash_to_point(k, ctx) for k in b]
    t0 = time.perf_counter()
    raw_size = run_raw(points_a, points_b)
    t_raw = time.perf_counter() - t0
    assert size == raw_size == len(shared), (size, raw_size)
    print(f"PSI of {n:,} × {n:,} keys ({len(shared):,} shared), one core per run")
    print(f"  fedtrust (both parties, sealed messages): {t_fed:8.2f} s, {moved / 1e6:8.1f} MB relayed")
    print(f"  raw X25519 (4 mults per key pair)       : {t_raw:8.2f} s, {4 * n * 32 / 1e6:8.1f} MB of points")
    print(f"  ratio fedtrust / raw: {t_fed / t_raw:.2f}× (goal ≤ 1.3×)")
    if args.daemons:
        from fedtrust.buyer.vertical import submit_psi
        from fedtrust.demo.vertical import build_vertical_federation
        from fedtrust.trust.credentials import load_identity

        with tempfile.TemporaryDirectory(prefix="fedtrust-psi-") as tmp:
            fed = build_vertical_federation(Path(tmp), bank_rows=n, telco_rows=n, shared=n // 2, min_intersection=1,
                                            max_keys=max(n, 1))
            with fed:
                ident = load_identity(fed.buyer_dir)
                t0 = time.perf_counter()
                out = submit_psi(ident, fed.buyer_dir, fed.contract_path, fed.coordinator_address, timeout=7200)
                t_job = time.perf_counter() - t0
        assert out.intersection_size == n // 2
        print(f"  through the daemons (admit, 3 relayed steps over mTLS, attestations, receipt): {t_job:8.2f} s; "
              f"ratio to raw {t_job / t_raw:.2f}× (goal ≤ 1.5×; the two owners run in parallel here)")


if __name__ == "__main__":
    main()
