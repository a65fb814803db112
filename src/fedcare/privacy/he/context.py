"""CKKS contexts for a study: one secret context shared by its sites, and its public twin.

CKKS (Cheon, Kim, Kim & Song 2017, "Homomorphic Encryption for Arithmetic of Approximate
Numbers") encrypts vectors of reals and adds ciphertexts without the secret key. fedcare uses it
so the hub (honest-but-curious) never reads a site's update: the sites of a study all hold the
same secret key, made by the study's first site and sealed to each other site
(:mod:`fedcare.engine.ckks_custody`); the hub holds no context at all. The public context
(public and relinearisation keys, no secret key) is enough to add but not to decrypt; a
simulation's hub uses it to check ciphertexts.

Trust assumptions (say them out loud): every site can decrypt every other site's ciphertext, so
HE protects updates from the hub and from the network, not from the other sites; and a site
that colludes with the hub reveals everything. Secure aggregation (pairwise masks) is the
mechanism that also protects sites from each other.

Parameters (measured in ``benchmarks/he.py``, see benchmarks/README.md): N = 8192 (4096 slots),
coefficient moduli [60, 40, 60], scale 2^40. The sum of 100 fresh ciphertexts decrypts to
within ~1e-7 absolute of the true sum whatever the magnitude, so precision never decides. The
moduli do: with [60, 40] (one 60-bit data prime) the encoder refuses |value| >= 2^19 and a
*sum* past that bound wraps around silently, which is reached as soon as sites pre-multiply by
their example counts (100 sites x 10,000 rows x |w| = 1). [60, 40, 60] keeps 100 data bits,
so |sum| may reach ~2^59; the price is 1.8x larger ciphertexts (~14x the float32 plaintext
instead of ~8x). Below 128-bit security SEAL refuses the parameters outright.

File formats (never pickle): ``MAGIC | u32 header length | JSON header | TenSEAL bytes``. The
public file's fingerprint is the sha256 of its bytes; every ciphertext carries it, so a
ciphertext made under another federation's key is refused instead of decrypting to garbage.
SEAL's serialisation of the same keys is not byte-for-byte reproducible, so the secret file
embeds its public twin's bytes: a site can always hand the hub exactly the public file whose
fingerprint its ciphertexts carry.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import tenseal as ts

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.framing import frame, unframe

CONTEXT_MAGIC = b"FCHEC1"
_MAX_HEADER = 1 << 16
_DEGREES = (4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class HEParams:
    """CKKS parameters; the defaults are the measured choice (module docstring).

    ``max_sites`` bounds how many ciphertexts the hub may add. With it, each site checks its
    own values against ``max_abs_value`` so that no sum of up to ``max_sites`` ciphertexts
    can overflow the data modulus: overflow is impossible by construction, not merely unlikely.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40
    max_sites: int = 1024

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.poly_modulus_degree not in _DEGREES:
            problems.append(f"poly_modulus_degree must be one of {_DEGREES}, got "
                            f"{self.poly_modulus_degree}")
        mods = self.coeff_mod_bit_sizes
        if len(mods) < 2 or any(not 20 <= b <= 60 for b in mods):
            problems.append(f"coeff_mod_bit_sizes needs >= 2 primes of 20..60 bits, got {mods}")
        if not 20 <= self.scale_bits <= 60:
            problems.append(f"scale_bits must be 20..60, got {self.scale_bits}")
        if self.max_sites < 1:
            problems.append(f"max_sites must be >= 1, got {self.max_sites}")
        if not problems and self.headroom_bits < 1:
            problems.append(f"scale 2^{self.scale_bits} leaves no room for values under data "
                            f"moduli {mods[:-1]}; lower scale_bits or add a data prime")
        if problems:
            raise ConfigError(problems, source="HE parameters")

    @property
    def slots(self) -> int:
        """Values per ciphertext (CKKS packs N/2 reals)."""
        return self.poly_modulus_degree // 2

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest |sum| the data moduli hold: data bits - scale - 2 (sign, and
        a factor 2 between a slot's value and its largest polynomial coefficient)."""
        return sum(self.coeff_mod_bit_sizes[:-1]) - self.scale_bits - 2

    @property
    def max_abs_value(self) -> float:
        """Largest |value| one site may encrypt so that ``max_sites`` of them cannot overflow."""
        return float(2.0 ** self.headroom_bits / self.max_sites)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return d

    @classmethod
    def from_json(cls, d: Any) -> HEParams:
        try:
            return cls(poly_modulus_degree=int(d["poly_modulus_degree"]),
                       coeff_mod_bit_sizes=tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
                       scale_bits=int(d["scale_bits"]), max_sites=int(d["max_sites"]))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ValidationError(f"HE context file has invalid parameters: {exc}") from exc


class HEContext:
    """A loaded CKKS context: secret (a site's, can decrypt) or public (the hub's, cannot).

    Build one with :meth:`create` (provisioning) or :meth:`load_secret` / :meth:`load_public`
    from a file made by :func:`create_federation_context`.
    """

    def __init__(self, ctx: ts.Context, params: HEParams, public_bytes: bytes) -> None:
        self._ctx = ctx
        self.params = params
        self._public_bytes = public_bytes
        #: sha256 (hex) of the public context file; stamped on every ciphertext
        self.fingerprint = hashlib.sha256(public_bytes).hexdigest()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, params: HEParams | None = None) -> HEContext:
        """A fresh secret context (new keys): a study's first site, or a simulation."""
        params = params or HEParams()
        try:
            ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                             coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
        except ValueError as exc:  # SEAL refuses parameters below 128-bit security
            raise ConfigError(f"SEAL refuses these CKKS parameters ({exc}); keep the total "
                              "modulus within the 128-bit security bound for this degree",
                              source="HE parameters") from exc
        ctx.global_scale = 2.0 ** params.scale_bits
        public = ctx.copy()
        public.make_context_public()
        public_bytes = _wrap({"kind": "public", "params": params.to_json()}, public.serialize())
        return cls(ctx, params, public_bytes)

    @classmethod
    def load_public(cls, data: bytes) -> HEContext:
        """The hub's context. Refuses a secret file: the hub must never hold the secret key."""
        header, body = _unwrap(data)
        if header.get("kind") != "public":
            raise ValidationError("this is a SECRET HE context; the hub must be given the "
                                  "public one, never a site's secret")
        ctx = _tenseal_context(body)
        if ctx.is_private():
            raise ValidationError("HE context marked public holds a secret key; refusing it")
        return cls(ctx, HEParams.from_json(header.get("params")), bytes(data))

    @classmethod
    def load_secret(cls, data: bytes) -> HEContext:
        """A site's context (can decrypt). Refuses a public file with a clear message."""
        header, body = _unwrap(data)
        if header.get("kind") != "secret":
            raise ValidationError("this is a PUBLIC HE context: it cannot decrypt; a site needs "
                                  "its study's secret context")
        sizes = header.get("sizes")
        if (not isinstance(sizes, list) or len(sizes) != 2
                or not all(isinstance(s, int) and s > 0 for s in sizes)
                or sum(sizes) != len(body)):
            raise ValidationError("secret HE context file is truncated or malformed")
        secret_raw, public_bytes = body[:sizes[0]], body[sizes[0]:]
        ctx = _tenseal_context(secret_raw)
        if not ctx.is_private():
            raise ValidationError("secret HE context file holds no secret key")
        params = HEParams.from_json(header.get("params"))
        public_header, _ = _unwrap(public_bytes)
        if public_header.get("kind") != "public":
            raise ValidationError("secret HE context file embeds a malformed public context")
        out = cls(ctx, params, public_bytes)
        if header.get("fingerprint") != out.fingerprint:
            raise ValidationError("secret HE context file's fingerprint does not match its "
                                  "embedded public context; the file is corrupt")
        return out

    # ---------------------------------------------------------------------- export
    @property
    def is_private(self) -> bool:
        """True when this context can decrypt."""
        return bool(self._ctx.is_private())

    @property
    def tenseal(self) -> ts.Context:
        """The underlying TenSEAL context (for :mod:`fedcare.privacy.he.vectors`)."""
        return self._ctx

    def public_bytes(self) -> bytes:
        """The public context file (give it to the hub)."""
        return self._public_bytes

    def secret_bytes(self) -> bytes:
        """The secret context file (sites only; store it with mode 0600)."""
        if not self.is_private:
            raise ValidationError("a public HE context has no secret to export")
        raw = self._ctx.serialize(save_secret_key=True)
        header = {"kind": "secret", "params": self.params.to_json(),
                  "fingerprint": self.fingerprint, "sizes": [len(raw), len(self._public_bytes)]}
        return _wrap(header, raw + self._public_bytes)

    def public(self) -> HEContext:
        """This context without its secret key (same fingerprint)."""
        return HEContext.load_public(self._public_bytes)

    def __repr__(self) -> str:
        kind = "secret" if self.is_private else "public"
        return f"HEContext({kind}, N={self.params.poly_modulus_degree}, {self.fingerprint[:12]})"


def create_federation_context(params: HEParams | None = None) -> tuple[bytes, bytes]:
    """``(secret_bytes, public_bytes)`` of a fresh context (simulations, tests, benchmarks; a
    networked study's first site makes its key with :meth:`HEContext.create`)."""
    ctx = HEContext.create(params)
    return ctx.secret_bytes(), ctx.public_bytes()


# --------------------------------------------------------------------------- file format
def _wrap(header: dict[str, Any], body: bytes) -> bytes:
    return frame(CONTEXT_MAGIC, header, body)


def _unwrap(data: bytes) -> tuple[dict[str, Any], bytes]:
    header, body = unframe(data, CONTEXT_MAGIC, what="HE context file",
                           max_header=_MAX_HEADER)
    return header, bytes(body)


def _tenseal_context(raw: bytes) -> ts.Context:
    try:
        return ts.context_from(raw)
    except (ValueError, RuntimeError) as exc:
        raise ValidationError(f"HE context body is corrupt: {exc}") from exc
