"""BFV homomorphic encryption of the secure aggregate query (TenSEAL / SEAL).

Role
----
- The buyer creates a BFV key pair (`BuyerKeys.generate`), keeps the secret
  context, and publishes the public context; its sha256 is the
  `HeParams.context_digest` that the buyer signs into the job spec.
- Each node encrypts its *masked* integer vector under that public context
  (`encrypt_isolated`).
- The coordinator relays every node's ciphertexts unchanged; it holds no
  secret key and adds nothing.
- The buyer checks each node's ciphertexts against that node's signed
  digests, adds them slot-wise itself (`Adder`, `add_isolated`: they crossed
  the network, so they are parsed in a worker) and decrypts the sum (`decrypt`);
  the pairwise masks cancel there.

Security reasoning
------------------
- Exactness: the plaintext modulus t is a 59-bit prime ≡ 1 (mod 2·8192), so
  batching packs 8192 slots per ciphertext and slot-wise addition is exact
  arithmetic mod t. Values are always handed over already reduced to [0, t).
- The public context and every ciphertext come from another party. They are
  parsed only inside a throw-away worker process (`fedtrust.isolate`), so a
  malformed or malicious blob can at worst kill that worker; the daemon gets
  an `InvalidInput`.
- The context is checked before anything is encrypted under it: size limit,
  sha256 equal to the digest the buyer signed (so the coordinator cannot
  swap in a context of its own), BFV, N = 8192, t = PLAIN_MODULUS, at most
  the 128-bit-security coefficient modulus for N, batching on, a public key
  present and *no secret key* (a context carrying its secret key would let
  whoever relays it decrypt). Plain modulus and degree are read from SEAL's
  own context data, not from any field an attacker could set independently:
  TenSEAL does not expose `seal::Modulus`, so t is recovered from
  `plain_upper_half_threshold` = (t+1)/2 and confirmed by `using_batching`
  (which SEAL only enables for a prime t ≡ 1 mod 2N — this rules out the
  only other candidate, t+1, which is even).
- Ciphertexts are checked for size (bytes), for parsing against the checked
  context, for being one fresh-size (2-polynomial), non-transparent
  ciphertext at the context's first level, and for a slot count that fits a
  ciphertext: TenSEAL trusts the serialized size field, so an unchecked one
  would make decryption read past the plaintext.
- Size of the modulus: the buyer's key pair uses three 60-bit primes
  (`COEFF_MOD_BIT_SIZES`, 180 bits, under the 218 that 128-bit security
  allows at N = 8192), so ciphertexts live at a 120-bit level: a sum only
  needs a few bits of noise budget per doubling of the participants (sums of
  2,000 ciphertexts of t − 1 decrypt exactly), and ciphertexts are ~260 KB
  instead of ~430 KB with SEAL's default five primes. A smaller modulus is
  harder, not easier, to attack; nodes accept any modulus up to the bound
  (older buyers' default contexts keep working).
- Encryption itself hides nothing from a buyer who colludes with the
  coordinator (the buyer holds the secret key); that protection comes from
  the pairwise masks added before encryption (`fedtrust.privacy.masking`).
  BFV keeps everything from parties that do not hold the key.
- Error messages name the broken rule and, at most, positions (party i,
  ciphertext j) — never a value.
"""
from __future__ import annotations

import array
import hashlib
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import tenseal as ts

if TYPE_CHECKING:
    import numpy as np

from fedtrust import isolate
from fedtrust.errors import InvalidInput
from fedtrust.privacy.params import (
    MAX_CIPHERTEXT_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_QUERY_CIPHERTEXTS,
    PLAIN_MODULUS,
    POLY_MODULUS_DEGREE,
    SLOTS,
    HeParams,
)

__all__ = [
    "PLAIN_MODULUS",
    "POLY_MODULUS_DEGREE",
    "SLOTS",
    "MAX_CONTEXT_BYTES",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_CIPHERTEXTS",
    "BuyerKeys",
    "ciphertext_count",
    "decrypt",
    "encrypt_isolated",
    "add_isolated",
    "Adder",
    "start_add",
    "ciphertext_digest",
]

#: Most ciphertexts in one vector (8 388 608 slots, ~440 MB).
MAX_CIPHERTEXTS = 1024
#: SEAL's largest total coefficient-modulus size for N=8192 at 128-bit security.
MAX_COEFF_MODULUS_BITS = 218
#: the buyer's primes: a 120-bit ciphertext level (two primes; the third is SEAL's special prime)
COEFF_MOD_BIT_SIZES = (60, 60, 60)

# Worker limits: generous, but bounded, so hostile input cannot exhaust the host.
_BASE_TIMEOUT = 30.0
_BASE_MEMORY = 1024 * 1024 * 1024

# Let the fork server import TenSEAL once, so that each worker starts warm.
isolate.preload("fedtrust.privacy.he")


def ciphertext_count(length: int) -> int:
    """Number of ciphertexts (of up to SLOTS slots each) for a vector of `length` values."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise InvalidInput("an encrypted vector needs a positive integer length")
    return -(-length // SLOTS)


def _chunk_sizes(length: int) -> list[int]:
    n = ciphertext_count(length)
    return [SLOTS] * (n - 1) + [length - SLOTS * (n - 1)]


def ciphertext_digest(ciphertext: bytes) -> str:
    """sha256 hex of one serialized ciphertext (what attestations list as outputs)."""
    return hashlib.sha256(ciphertext).hexdigest()


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class BuyerKeys:
    """The buyer's BFV key pair, as serialized TenSEAL contexts."""

    public_bytes: bytes = field(repr=False)
    secret_bytes: bytes = field(repr=False)
    params: HeParams

    @classmethod
    def generate(cls) -> "BuyerKeys":
        """Create a fresh key pair with fedtrust's fixed parameters (runs in-process: the buyer's own CLI)."""
        ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=POLY_MODULUS_DEGREE, plain_modulus=PLAIN_MODULUS,
                         coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
        public = ctx.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        secret = ctx.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
        return cls(public, secret, HeParams(context_digest=hashlib.sha256(public).hexdigest()))

    @classmethod
    def from_bytes(cls, public_bytes: bytes, secret_bytes: bytes) -> "BuyerKeys":
        """Rebuild from the two saved blobs (e.g. to fetch a result again); checks the secret one."""
        _load_secret_context(secret_bytes)
        return cls(bytes(public_bytes), bytes(secret_bytes),
                   HeParams(context_digest=hashlib.sha256(public_bytes).hexdigest()))

    def __repr__(self) -> str:
        return f"BuyerKeys(params={self.params!r}, secret=<hidden>)"


# --------------------------------------------------------------------------- context checks


def _plain_modulus_and_degree(ctx: Any) -> tuple[Any, int, int, bool, int]:
    """(scheme, N, t, batching, key-level coeff-modulus bits) as SEAL itself sees them."""
    seal = ctx.seal_context().data
    if not seal.parameters_set():
        raise InvalidInput("its encryption parameters are not valid for SEAL at 128-bit security")
    key_data = seal.key_context_data()
    first = seal.first_context_data()
    parms = first.parms()
    # TenSEAL cannot return seal::Modulus; SEAL stores (t + 1) >> 1 for the centred decoding.
    t = 2 * int(first.plain_upper_half_threshold()) - 1
    return (
        parms.scheme(),
        int(parms.poly_modulus_degree()),
        t,
        bool(first.qualifiers().using_batching),
        int(key_data.total_coeff_modulus_bit_count()),
    )


def _check_params(ctx: Any, degree: int, plain_modulus: int) -> None:
    scheme, n, t, batching, bits = _plain_modulus_and_degree(ctx)
    if scheme != ts.SCHEME_TYPE.BFV.value:
        raise InvalidInput("it is not a BFV context; create it with fedtrust.privacy.he.BuyerKeys")
    if n != degree:
        raise InvalidInput(f"its polynomial modulus degree differs from the job's ({degree})")
    if t != plain_modulus or not batching:
        raise InvalidInput(f"its plain modulus differs from the job's ({plain_modulus})")
    if bits > MAX_COEFF_MODULUS_BITS:
        raise InvalidInput("its coefficient modulus is larger than 128-bit security allows")


def _load_public_context(public_bytes: bytes, digest: str, degree: int, plain_modulus: int) -> Any:
    """Parse and check a public context (worker side; also usable in-process)."""
    if not isinstance(public_bytes, (bytes, bytearray)) or len(public_bytes) == 0:
        raise InvalidInput("the public HE context is empty")
    if len(public_bytes) > MAX_CONTEXT_BYTES:
        raise InvalidInput(f"the public HE context is larger than {MAX_CONTEXT_BYTES} bytes")
    if hashlib.sha256(public_bytes).hexdigest() != digest:
        raise InvalidInput("the public HE context does not match the digest the job spec names")
    try:
        ctx = ts.context_from(bytes(public_bytes), n_threads=1)
    except Exception:  # noqa: BLE001 - TenSEAL raises ValueError/RuntimeError on garbage
        raise InvalidInput("the HE context does not parse as a TenSEAL context") from None
    if ctx.has_secret_key() or not ctx.is_public():
        raise InvalidInput("the HE context contains a secret key; only a public context may be shared")
    if not ctx.has_public_key():
        raise InvalidInput("the HE context has no public key")
    try:
        _check_params(ctx, degree, plain_modulus)
    except InvalidInput as e:
        raise InvalidInput(f"the HE context is unacceptable: {e}") from None
    return ctx


def _load_secret_context(secret_bytes: bytes) -> Any:
    if not isinstance(secret_bytes, (bytes, bytearray)) or not 0 < len(secret_bytes) <= 2 * MAX_CONTEXT_BYTES:
        raise InvalidInput("the secret HE context is empty or too large")
    try:
        ctx = ts.context_from(bytes(secret_bytes))
    except Exception:  # noqa: BLE001
        raise InvalidInput("the secret HE context does not parse as a TenSEAL context") from None
    if not ctx.has_secret_key():
        raise InvalidInput("the HE context has no secret key; decrypt with the buyer's saved secret context")
    try:
        _check_params(ctx, POLY_MODULUS_DEGREE, PLAIN_MODULUS)
    except InvalidInput as e:
        raise InvalidInput(f"the secret HE context is unacceptable: {e}") from None
    return ctx


def _load_ciphertext(ctx: Any, data: bytes, where: str, expected_size: int | None) -> Any:
    """Parse one ciphertext against a checked context; `where` names its position."""
    if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
        raise InvalidInput(f"{where} is empty")
    if len(data) > MAX_CIPHERTEXT_BYTES:
        raise InvalidInput(f"{where} is larger than {MAX_CIPHERTEXT_BYTES} bytes")
    try:
        vec = ts.bfv_vector_from(ctx, bytes(data))
        size = int(vec.size())
        cts = vec.ciphertext()
    except Exception:  # noqa: BLE001
        raise InvalidInput(f"{where} does not parse as a BFV vector of this context") from None
    if len(cts) != 1:
        raise InvalidInput(f"{where} must hold exactly one ciphertext")
    ct = cts[0]
    first_parms = list(ctx.seal_context().data.first_parms_id())
    if (
        int(ct.size()) != 2
        or bool(ct.is_transparent())
        or bool(ct.is_ntt_form())
        or int(ct.poly_modulus_degree()) != POLY_MODULUS_DEGREE
        or list(ct.parms_id()) != first_parms
    ):
        raise InvalidInput(f"{where} is not a fresh BFV ciphertext at this context's first level")
    if not 1 <= size <= SLOTS:
        raise InvalidInput(f"{where} claims a slot count outside 1..{SLOTS}")
    if expected_size is not None and size != expected_size:
        raise InvalidInput(f"{where} holds a different number of slots than expected")
    return vec


# --------------------------------------------------------------------------- worker bodies


def _encrypt_worker(public_bytes: bytes, digest: str, degree: int, plain_modulus: int, packed: bytes) -> list[bytes]:
    return _encrypt_with(_load_public_context(public_bytes, digest, degree, plain_modulus), packed, plain_modulus)


def _encrypt_with(ctx: Any, packed: bytes, plain_modulus: int) -> list[bytes]:
    values = array.array("Q")
    if values.itemsize != 8 or len(packed) % 8:  # pragma: no cover - every 64-bit platform
        raise InvalidInput("the packed vector is not a whole number of 64-bit words")
    values.frombytes(packed)
    if sys.byteorder != "little":  # pragma: no cover
        values.byteswap()
    out: list[bytes] = []
    for start in range(0, len(values), SLOTS):
        chunk = values[start:start + SLOTS].tolist()
        if max(chunk) >= plain_modulus:
            raise InvalidInput("a value is not reduced modulo the plain modulus")
        out.append(ts.bfv_vector(ctx, chunk).serialize())
    return out


def _add_worker(
    public_bytes: bytes, digest: str, degree: int, plain_modulus: int,
    per_party: list[list[bytes]], sizes: list[int] | None,
) -> list[bytes]:
    return _add_with(_load_public_context(public_bytes, digest, degree, plain_modulus), per_party, sizes)


def _add_with(ctx: Any, per_party: list[list[bytes]], sizes: list[int] | None) -> list[bytes]:
    count = len(per_party[0])
    out: list[bytes] = []
    for j in range(count):
        expected = sizes[j] if sizes is not None else None
        acc = _load_ciphertext(ctx, per_party[0][j], f"ciphertext {j} of party 0", expected)
        if expected is None:
            expected = int(acc.size())
            if j < count - 1 and expected != SLOTS:
                raise InvalidInput(f"ciphertext {j} of party 0 is not full although more follow")
        for p in range(1, len(per_party)):
            vec = _load_ciphertext(ctx, per_party[p][j], f"ciphertext {j} of party {p}", expected)
            try:
                acc.add_(vec)
            except Exception:  # noqa: BLE001
                raise InvalidInput(f"ciphertext {j} of party {p} cannot be added to the others") from None
        out.append(acc.serialize())
    return out


# --------------------------------------------------------------------------- public API


def _check_public_args(public_bytes: bytes, params: HeParams) -> None:
    if not isinstance(params, HeParams):
        raise InvalidInput("HE parameters are missing")
    params.check_supported()
    if not isinstance(public_bytes, (bytes, bytearray)):
        raise InvalidInput("the public HE context must be bytes")
    if len(public_bytes) > MAX_CONTEXT_BYTES:
        raise InvalidInput(f"the public HE context is larger than {MAX_CONTEXT_BYTES} bytes")
    if _digest(public_bytes) != params.context_digest:
        raise InvalidInput("the public HE context does not match the digest the job spec names")


#: the digests of the last few contexts checked, with the very objects hashed (bounded)
_DIGESTS_SIZE = 8
_digests: "OrderedDict[int, tuple[bytes, str]]" = OrderedDict()
_digests_lock = threading.Lock()


def _digest(blob: bytes | bytearray) -> str:
    """sha256 hex of `blob`; an immutable `bytes` object hashed before (a node's kept copy of a buyer's context,
    the buyer's own) is not hashed again: the entry holds that object, so its id cannot name another meanwhile."""
    if type(blob) is not bytes:
        return hashlib.sha256(blob).hexdigest()
    with _digests_lock:
        hit = _digests.get(id(blob))
        if hit is not None and hit[0] is blob:
            _digests.move_to_end(id(blob))
            return hit[1]
    digest = hashlib.sha256(blob).hexdigest()
    with _digests_lock:
        _digests[id(blob)] = (blob, digest)
        while len(_digests) > _DIGESTS_SIZE:
            _digests.popitem(last=False)
    return digest


#: what may be encrypted: integers in [0, t), as a sequence or a flat numpy array
Vector = Union[Sequence[int], "np.ndarray"]


def _pack_vector(vector: Vector, modulus: int) -> bytes:
    """Validate `vector` (ints in [0, modulus)) and pack it as little-endian uint64."""
    import numpy as np

    try:
        arr = np.asarray(vector)
    except Exception:  # noqa: BLE001
        raise InvalidInput("the vector to encrypt must be a sequence of integers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInput("the vector to encrypt must be a non-empty flat sequence of integers")
    if arr.size > MAX_CIPHERTEXTS * SLOTS:
        raise InvalidInput(f"the vector to encrypt has more than {MAX_CIPHERTEXTS * SLOTS} values")
    if arr.dtype.kind == "O":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in arr.tolist()):
            raise InvalidInput("the vector to encrypt must hold integers only")
        if any(v < 0 or v >= modulus for v in arr.tolist()):
            raise InvalidInput("every value to encrypt must lie in [0, plain modulus)")
        return np.array(arr.tolist(), dtype="<u8").tobytes()
    if arr.dtype.kind not in "iu":
        raise InvalidInput("the vector to encrypt must hold integers only")
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise InvalidInput("every value to encrypt must lie in [0, plain modulus)")
    if int(arr.max()) >= modulus:
        raise InvalidInput("every value to encrypt must lie in [0, plain modulus)")
    return arr.astype("<u8").tobytes()


def encrypt_isolated(public_bytes: bytes, params: HeParams, vector: Vector,
                     session: tuple[str, ...] | None = None) -> list[bytes]:
    """Encrypt `vector` (ints in [0, t)) under the buyer's public context, in a worker process.

    Returns `ciphertext_count(len(vector))` serialized ciphertexts of SLOTS
    slots each (the last one holds the rest). InvalidInput when the context
    fails any check (see the module docstring) or the vector is out of range.

    With `session` (a node passes its name and the contract digest), the worker
    that parsed and checked this context is kept for the next job under the
    same (session, context digest) — `isolate.run_in_session` — so a buyer's
    context is parsed once per contract, not once per job. What that worker
    sees is the buyer's own context and vectors the buyer may decrypt anyway
    (each masked with the job's fresh pairwise masks).
    """
    _check_public_args(public_bytes, params)
    packed = _pack_vector(vector, params.plain_modulus)
    n = len(packed) // 8
    if session is not None:
        return isolate.run_in_session(
            ("encrypt", *map(str, session), params.context_digest), _load_public_context,
            (bytes(public_bytes), params.context_digest, params.poly_modulus_degree, params.plain_modulus),
            _encrypt_with, packed, params.plain_modulus,
            timeout=_BASE_TIMEOUT + 0.5 * ciphertext_count(n),
            what="the buyer's HE context",
            memory_limit=_BASE_MEMORY + 4 * MAX_CIPHERTEXT_BYTES * MAX_QUERY_CIPHERTEXTS + 16 * MAX_QUERY_CIPHERTEXTS * SLOTS,
        )
    return isolate.run_isolated(
        _encrypt_worker, bytes(public_bytes), params.context_digest, params.poly_modulus_degree,
        params.plain_modulus, packed,
        timeout=_BASE_TIMEOUT + 0.5 * ciphertext_count(n),
        what="the buyer's HE context",
        memory_limit=_BASE_MEMORY + 4 * MAX_CIPHERTEXT_BYTES * ciphertext_count(n) + 16 * n,
    )


def _check_parties(per_party: Any) -> tuple[int, int]:
    """(ciphertexts per party, bytes in all) of well-formed ciphertext lists; InvalidInput naming the party at fault."""
    if not isinstance(per_party, (list, tuple)) or len(per_party) == 0:
        raise InvalidInput("there are no ciphertexts to add")
    count: int | None = None
    total = 0
    for p, cts in enumerate(per_party):
        if not isinstance(cts, (list, tuple)) or len(cts) == 0:
            raise InvalidInput(f"party {p} sent no ciphertexts")
        if count is None:
            count = len(cts)
        elif len(cts) != count:
            raise InvalidInput(f"party {p} sent a different number of ciphertexts than party 0")
        for j, ct in enumerate(cts):
            if not isinstance(ct, (bytes, bytearray)):
                raise InvalidInput(f"ciphertext {j} of party {p} is not bytes")
            if len(ct) > MAX_CIPHERTEXT_BYTES:
                raise InvalidInput(f"ciphertext {j} of party {p} is larger than {MAX_CIPHERTEXT_BYTES} bytes")
            total += len(ct)
    assert count is not None
    if count > MAX_CIPHERTEXTS:
        raise InvalidInput(f"a vector has more than {MAX_CIPHERTEXTS} ciphertexts")
    return count, total


def add_isolated(
    public_bytes: bytes, params: HeParams, per_party: list[list[bytes]], length: int | None = None,
) -> list[bytes]:
    """Sum the parties' ciphertext vectors position-wise, in a worker process.

    `per_party[i]` is party i's list of serialized ciphertexts; every party
    must send the same number, each ≤ MAX_CIPHERTEXT_BYTES, parsing to a
    fresh BFV ciphertext of this context with the same slot count as the
    others at that position (all full but the last). With `length`, the
    layout must be exactly that of a `length`-value vector. Returns the
    serialized sums. InvalidInput names the party and position at fault.
    """
    _check_public_args(public_bytes, params)
    count, total = _check_parties(per_party)
    sizes: list[int] | None = None
    if length is not None:
        sizes = _chunk_sizes(length)
        if len(sizes) != count:
            raise InvalidInput("the number of ciphertexts does not fit the vector length")
    plain = [[bytes(ct) for ct in cts] for cts in per_party]
    return isolate.run_isolated(
        _add_worker, bytes(public_bytes), params.context_digest, params.poly_modulus_degree,
        params.plain_modulus, plain, sizes,
        timeout=_BASE_TIMEOUT + 0.2 * count * len(per_party),
        what="the aggregation input",
        memory_limit=_BASE_MEMORY + 8 * total + 4 * MAX_CIPHERTEXT_BYTES * count,
    )


def _add_memory(parties: int) -> int:
    """Address-space cap of an add worker prepared before the ciphertexts' sizes are known (their maximum)."""
    return _BASE_MEMORY + (8 * parties + 4) * MAX_CIPHERTEXT_BYTES * MAX_QUERY_CIPHERTEXTS


def _add_init(public_bytes: bytes, digest: str, degree: int, plain_modulus: int) -> dict[str, Any]:
    """Worker state of an `Adder`: the buyer's checked context and the running sums."""
    return {"ctx": _load_public_context(public_bytes, digest, degree, plain_modulus), "sums": None, "parties": 0}


def _add_party(state: dict[str, Any], cts: list[bytes], sizes: list[int]) -> None:
    """Worker side of `Adder.feed`: parse one party's ciphertexts and add them to the running sums."""
    p, ctx = state["parties"], state["ctx"]
    vecs = [_load_ciphertext(ctx, ct, f"ciphertext {j} of party {p}", sizes[j]) for j, ct in enumerate(cts)]
    if state["sums"] is None:
        state["sums"] = vecs
    else:
        for j, vec in enumerate(vecs):
            try:
                state["sums"][j].add_(vec)
            except Exception:  # noqa: BLE001
                raise InvalidInput(f"ciphertext {j} of party {p} cannot be added to the others") from None
    state["parties"] = p + 1


def _add_sums(state: dict[str, Any]) -> list[bytes]:
    return [v.serialize() for v in state["sums"]]


class Adder:
    """The buyer's sum of the relayed ciphertexts, added in its prepared worker while they arrive.

    When the first release arrives it takes the worker in which the buyer's
    context was parsed ahead of time (`isolate.take_prepared`, keyed by the
    contract and the context digest: it has seen nothing untrusted, and it
    serves this job only). `feed` hands it each party's ciphertexts as the
    coordinator relays them,
    so parsing and adding overlap the rest of the stream and the receipt's
    verification. `total` returns the sum only for exactly the ciphertexts
    the caller verified (compared byte for byte with what was fed); for
    anything else — a party fed twice or never, a malformed release, a worker
    that failed — it adds the verified ones again with `add_isolated`, so the
    result and every refusal are the same as without the head start.
    """

    def __init__(self, public_bytes: bytes, params: HeParams, prepared: tuple[str, ...], length: int,
                 parties: int) -> None:
        _check_public_args(public_bytes, params)
        self.public_bytes, self.params, self.length = public_bytes, params, length
        self.sizes = _chunk_sizes(length)
        self.fed: list[tuple[bytes, ...]] = []
        self.usable = True
        self._take = (("add", *map(str, prepared), params.context_digest), _add_init,
                      (bytes(public_bytes), params.context_digest, params.poly_modulus_degree, params.plain_modulus),
                      _add_memory(parties))
        self._worker: isolate.PreparedWorker | None = None
        isolate.prepare(*self._take)  # parses the context now, unless a worker for it waits or is on its way

    @property
    def worker(self) -> isolate.PreparedWorker:
        """The prepared worker, taken when the first release arrives (by then the one `prepare` started is ready)."""
        if self._worker is None:
            self._worker = isolate.take_prepared(*self._take)
        return self._worker

    def feed(self, ciphertexts: Sequence[bytes]) -> None:
        """One party's ciphertexts, as relayed (unverified); never raises: what is wrong shows in `total`."""
        cts = tuple(ciphertexts)
        if not self.usable:
            return
        if len(cts) != len(self.sizes) or not all(isinstance(c, bytes) and 0 < len(c) <= MAX_CIPHERTEXT_BYTES
                                                   for c in cts):
            self.usable = False  # `total` adds the verified ciphertexts with `add_isolated`, which words the refusal
            return
        self.fed.append(cts)
        self.worker.send(_add_party, list(cts), self.sizes)

    def total(self, per_party: list[list[bytes]]) -> list[bytes]:
        """The serialized sums of `per_party` (the verified ciphertexts, one list per party); as `add_isolated`."""
        if self.usable and sorted(self.fed) == sorted(tuple(cts) for cts in per_party):
            try:
                return self.worker.finish(_add_sums, timeout=_BASE_TIMEOUT + 0.2 * len(self.sizes) * len(per_party),
                                          what="the aggregation input")
            except InvalidInput:
                pass  # added again below, so that the refusal names the party in the caller's order
        self.close()
        return add_isolated(self.public_bytes, self.params, per_party, self.length)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()


def start_add(public_bytes: bytes, params: HeParams, prepared: tuple[str, ...], length: int,
              parties: int) -> Adder:
    """An `Adder` for a `length`-value vector from `parties` parties, keyed by `prepared` (the contract digest).

    Its worker parses the buyer's *own* context before any release exists
    (`isolate.prepare`); the relayed ciphertexts (untrusted) reach it only
    through this `Adder`, which serves one job. Closing it starts the next
    one, so a buyer that submits jobs one after another finds it ready.
    """
    return Adder(public_bytes, params, prepared, length, parties)


def decrypt(secret_bytes: bytes, ciphertexts: list[bytes], length: int | None = None) -> list[int]:
    """Decrypt with the buyer's secret context; values reduced to [0, t).

    Returns the slots of all ciphertexts concatenated, cut to `length` when
    given (then the layout must be exactly that of a `length`-value vector).
    Runs in-process: it is the buyer's own CLI; the ciphertexts are still
    size- and shape-checked before SEAL touches them.
    """
    ctx, ctx_lock = _secret_context(secret_bytes)
    with ctx_lock:
        return _decrypt(ctx, ciphertexts, length)


#: parsed secret contexts of this process, keyed by the digest of the secret bytes (bounded)
_SECRET_CACHE_SIZE = 4
_secret_cache: "OrderedDict[str, tuple[Any, threading.Lock]]" = OrderedDict()
_secret_cache_lock = threading.Lock()


def _secret_context(secret_bytes: bytes) -> tuple[Any, threading.Lock]:
    """The parsed secret context (parsing costs ≈20 ms; a buyer reuses its pair per contract)."""
    if not isinstance(secret_bytes, (bytes, bytearray)):
        raise InvalidInput("the secret HE context is empty or too large")
    key = _digest(secret_bytes)
    with _secret_cache_lock:
        hit = _secret_cache.get(key)
        if hit is not None:
            _secret_cache.move_to_end(key)
            return hit
    entry = (_load_secret_context(secret_bytes), threading.Lock())
    with _secret_cache_lock:
        _secret_cache[key] = entry
        while len(_secret_cache) > _SECRET_CACHE_SIZE:
            _secret_cache.popitem(last=False)
    return entry


def _decrypt(ctx: Any, ciphertexts: list[bytes], length: int | None) -> list[int]:
    if not isinstance(ciphertexts, (list, tuple)) or len(ciphertexts) == 0:
        raise InvalidInput("there are no ciphertexts to decrypt")
    if len(ciphertexts) > MAX_CIPHERTEXTS:
        raise InvalidInput(f"a vector has more than {MAX_CIPHERTEXTS} ciphertexts")
    sizes: list[int | None] = [None] * len(ciphertexts)
    if length is not None:
        expected = _chunk_sizes(length)
        if len(expected) != len(ciphertexts):
            raise InvalidInput("the number of ciphertexts does not fit the result length")
        sizes = list(expected)
    t = PLAIN_MODULUS
    out: list[int] = []
    for j, data in enumerate(ciphertexts):
        vec = _load_ciphertext(ctx, data, f"result ciphertext {j}", sizes[j])
        try:
            values = vec.decrypt()
        except Exception:  # noqa: BLE001
            raise InvalidInput(f"result ciphertext {j} does not decrypt with this key") from None
        out.extend(int(v) % t for v in values)
    return out
