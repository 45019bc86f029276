"""Secure aggregation with the SecAgg protocol of Bonawitz et al. (CCS 2017), as Flower's SecAgg+ implements it for
deployments, built here on the `cryptography` library for the in-process simulation.

The server learns the weighted sum of the uploaded updates, and within one round nothing that singles out one update
beyond it: each upload alone is hidden by masks, keys are authenticated, every client is bound to the global state it
received and, when it passes them, to the round's training instructions (so the server cannot make the other clients'
updates zero or known by sending them another model or, e.g., `learning_rate=0`) and any survivor list needs `t`
signatures. What the sums themselves reveal is not hidden: a client whose every co-survivor colludes with the server
(the sum minus their inputs is its update), the difference of two rounds over different subsets of clients, or what a
global state or instructions crafted and sent to every client make the updates reveal; only noise added on the client
(DP-SGD) bounds those. The rounds:

1. **Advertise keys.** Every client draws two X25519 key pairs: `c` (to encrypt the secret shares it sends to peers)
   and `s` (to agree on pairwise masks). It signs both public keys and the SHA-256 digest of the global state it
   received this round and of the training instructions that came with it (`round_config`: learning rate, local steps,
   ...; [`global_state_digest`]), bound to the round id and its client id, with its long-term Ed25519 identity key
   and sends them to the server, which broadcasts them. Every client checks every signature against an
   [`IdentityDirectory`] provisioned out of band and aborts the round on any mismatch, so the server cannot substitute
   keys of its own (man in the middle of the pairwise key agreement), and aborts it when a peer signed another
   global-state digest than its own (model inconsistency, Pasquini et al., CCS 2022: a server that sends every client
   but a victim a state that makes their updates zero, e.g. an all-zero LoRA adapter, or instructions that do, e.g.
   `learning_rate=0` or zero local steps, would otherwise read the victim's update off the sum). Both checks run
   before any share leaves the client.
2. **Share keys.** Every client draws a fresh 256-bit self-mask seed `b` and splits `b` and its mask private key
   `s_sk` into Shamir shares (threshold `t`). The share for peer `v` is encrypted with AES-GCM under a key agreed
   with `v` (X25519 + HKDF-SHA256) and routed through the server, which cannot read it.
3. **Masked input.** Client `u` uploads
   `y_u = enc(w_u * x_u) + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2**62)`,
   where `s_uv` is the X25519 agreement of `u` and `v` (derived with HKDF, bound to the round), `PRG` is AES-256 in
   counter mode and `enc` is fixed point. Each `y_u` alone is uniformly distributed.
4. **Consistency check.** The server announces the survivors (the clients whose upload it received). Each survivor
   checks the list (it contains itself, only clients it masked with, at least `t`) and signs it with its identity
   key, once per round; the server relays the signatures.
5. **Unmask.** Each client that sees at least `t` valid signatures of the list it signed reveals, per peer, **either**
   its share of the peer's self-mask seed `b` (peer survived) **or** its share of the peer's `s_sk` (peer dropped),
   never both, and only once per round. With `t` shares the server removes the survivors' self masks and the dropped
   clients' pairwise masks, and the sum is exact.

Why a curious server cannot unmask one client: every masked upload also carries its self mask `PRG(b_u)`, so the
pairwise masks alone (even all of them, e.g. after falsely declaring `u` dropped) do not reveal `x_u`; the server would
need `t` shares of both `b_u` and `s_sk_u`, and with `t > n / 2` honest clients never hand out both. Against a
malicious server that lies about dropouts to different clients and is helped by up to `c` colluding clients, the
server collects at most `n + c` shares of one client's two secrets together, so clients refuse any round with
`2t <= n + c` (`max_colluders`). With that bound, the signed consistency check lets at most one survivor list reach
`t` signatures, so all honest clients unmask with the same list: the server cannot tell some clients that the peers
a victim masked with dropped while telling the victim they survived. A client remembers the last round it served
([`SecAggClientState`]) and refuses a round id it has already served, so the server cannot re-run a round over a
different subset and difference the sums.
There is no default or shared secret: every mask key is drawn fresh per round from the operating system's CSPRNG.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..utils.checks import is_int, is_real

MODULUS_BITS = 62
MODULUS = 1 << MODULUS_BITS
MAX_FRAC_BITS = 40  # fixed-point fractional bits [`encode`] accepts
_PRIME = (1 << 521) - 1  # Mersenne prime: the Shamir field, larger than any 256-bit secret


# ----------------------------------------------------------------------------------------------------------------
# primitives


def encode(x: torch.Tensor, frac_bits: int = 24, num_summands: int = 1) -> torch.Tensor:
    """Fixed-point encode a float tensor as int64 residues modulo `2**62` (two's-complement style).

    `num_summands` is how many encoded vectors will be added together: each is bounded by `2**61 / num_summands` so
    that their sum still decodes exactly (a larger value would wrap around the modulus silently). `frac_bits` must be
    an int in [0, 40] and `num_summands` an int >= 1 (a NaN count used to switch the overflow check off).
    """
    _check_frac_bits(frac_bits)
    if not is_int(num_summands) or num_summands < 1:
        raise ValueError(
            f"`num_summands` must be an int >= 1 (how many encoded vectors are summed), got {num_summands!r}."
        )
    frac_bits, num_summands = int(frac_bits), int(num_summands)
    scaled = torch.round(x.detach().to(torch.float64) * float(1 << frac_bits))
    limit = float(1 << (MODULUS_BITS - 1)) / num_summands
    if scaled.numel() and not bool(torch.isfinite(scaled).all()):
        raise ValueError("Cannot encode NaN or infinite values for secure aggregation (the update is not finite).")
    if scaled.numel() and float(scaled.abs().max()) >= limit:
        raise ValueError(
            f"Value too large for fixed-point encoding with frac_bits={frac_bits} (the sum of {num_summands} "
            "encoded updates must stay below 2**61): lower `frac_bits` or scale the update down."
        )
    return torch.remainder(scaled.to(torch.int64), MODULUS)


def _check_frac_bits(frac_bits) -> None:
    if not is_int(frac_bits) or not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise ValueError(f"`frac_bits` must be an int in [0, {MAX_FRAC_BITS}], got {frac_bits!r}.")


def decode(residues: torch.Tensor, frac_bits: int = 24) -> torch.Tensor:
    """Inverse of [`encode`] for a (possibly summed) residue tensor: values >= 2**61 are negative."""
    r = torch.remainder(residues, MODULUS)
    signed = torch.where(r >= (MODULUS >> 1), r - MODULUS, r)
    return signed.to(torch.float64) / float(1 << frac_bits)


def prg_residues(seed: bytes, numel: int) -> torch.Tensor:
    """`numel` uniform residues modulo `2**62` from AES-256-CTR keyed by the 32-byte `seed` (a cryptographic PRG:
    every bit of the seed matters)."""
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise ValueError("`seed` must be 32 bytes (an AES-256 key).")
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(b"\0" * 16)).encryptor()
    stream = enc.update(b"\0" * (8 * numel)) + enc.finalize()
    words = np.frombuffer(stream, dtype=np.uint64) & np.uint64(MODULUS - 1)
    return torch.from_numpy(words.astype(np.int64))


def _hkdf(material: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def _agree(private_key, peer_public: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return _hkdf(private_key.exchange(X25519PublicKey.from_public_bytes(peer_public)), info)


def _new_keypair():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_bytes(sk) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _private_from_bytes(raw: bytes):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(raw)


def shamir_split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shamir shares of a (<= 64-byte) secret over GF(2**521 - 1): any `threshold` of them recover it, fewer reveal
    nothing. `xs` are the distinct non-zero evaluation points (one per holder)."""
    if len(secret) > 64:
        raise ValueError("`secret` must be at most 64 bytes.")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"`threshold` must be in [1, {len(xs)}], got {threshold}.")
    if len(set(xs)) != len(xs) or any(x % _PRIME == 0 for x in xs):
        raise ValueError("Shamir evaluation points must be distinct and non-zero.")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(_PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % _PRIME
        out[x] = acc
    return out


def shamir_combine(shares: Mapping[int, int], length: int = 32) -> bytes:
    """Lagrange interpolation at 0 of the given `{x: share}` points, as a `length`-byte secret."""
    if not shares:
        raise ValueError("No shares to combine.")
    secret = 0
    xs = list(shares)
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % _PRIME
                den = den * (xi - xj) % _PRIME
        secret = (secret + shares[xi] * num * pow(den, -1, _PRIME)) % _PRIME
    if secret >= 1 << (8 * length):
        raise ValueError("Shares do not combine to a valid secret (too few or inconsistent shares).")
    return secret.to_bytes(length, "big")


def _point(node_id: int) -> int:
    return int(node_id) + 1


def _pair_info(a: int, b: int, round_index: int) -> bytes:
    lo, hi = sorted((int(a), int(b)))
    return f"hf_ext-secagg|mask|round={round_index}|{lo}|{hi}".encode()


def _flatten(update: Mapping[str, torch.Tensor]) -> tuple[list[str], list[torch.Size], int]:
    keys = sorted(update)
    shapes = [update[k].shape for k in keys]
    return keys, shapes, sum(int(torch.Size(s).numel()) for s in shapes)


def _unflatten(vec: torch.Tensor, keys: Sequence[str], shapes: Sequence[torch.Size]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for k, s in zip(keys, shapes):
        n = int(torch.Size(s).numel())
        out[k] = vec[offset : offset + n].reshape(s)
        offset += n
    return out


# ----------------------------------------------------------------------------------------------------------------
# identities, advertised keys and per-client state


class SecAggAbort(ValueError):
    """A client aborts the round: the server's messages are inconsistent with an honest run (forged or replayed keys,
    a round already served, a threshold that a malicious server could exploit). Raised before the client sends
    anything that depends on its secrets."""


class AdvertisedKeys(NamedTuple):
    """What a client advertises in a round: its two X25519 public keys, its Ed25519 signature over them and over the
    digest of the global state (and round config) it received ([`global_state_digest`]), bound to the round id and its
    client id, and that digest."""

    c_pk: bytes
    s_pk: bytes
    signature: bytes
    state_digest: bytes


def _advert_message(round_index: int, node_id: int, c_pk: bytes, s_pk: bytes, state_digest: bytes) -> bytes:
    # both keys and the digest have a fixed length (32 bytes each), so the concatenation is unambiguous
    return (
        f"hf_ext-secagg|advertise|round={int(round_index)}|client={int(node_id)}|".encode()
        + c_pk
        + s_pk
        + state_digest
    )


DIGEST_BYTES = 32  # SHA-256


def global_state_digest(state: Mapping[str, torch.Tensor], config: Mapping[str, object] | None = None) -> bytes:
    """The SHA-256 digest (32 bytes) of a global model state `{name: tensor}` and, when given, of the round's training
    instructions `config`, as a secure-aggregation client binds them into its signed advertisement.

    The hash covers, in sorted name order, each name, dtype, shape and the tensor's bytes (little-endian, whatever
    the device or the machine's byte order; a conjugate or negative view is hashed by its values), so two states have
    the same digest exactly when they hold the same names, dtypes, shapes and bit patterns. An empty mapping is a
    valid state (nothing was received).

    `config` (`{name: value}`, str names; values `int`, `float`, `bool`, `str` or `None`, exactly those built-in
    types) binds what the client was told to train with (learning rate, local steps or epochs, ...): a server that
    sends every client but a victim `learning_rate=0` or zero local steps makes their updates zero as surely as a
    zeroed model. Its encoding is canonical and unambiguous: entries in sorted name order (insertion order does not
    matter), each value tagged with its type, so `1`, `1.0` and `True` differ (a server that sends one client `1` and
    another `1.0` sent different instructions), and floats are hashed by their IEEE-754 binary64 bits (`-0.0` differs
    from `0.0`). Anything else (numpy scalars, lists, nested mappings) is refused (`TypeError`): convert it first
    (`.item()`, or a canonical string such as sorted-key JSON). `config=None` binds the model state only and gives the
    digest of earlier versions; any given config, even `{}`, gives another digest, so a client that binds its config
    and one that does not never agree.
    """
    import hashlib

    _check_global_state(state)
    if config is None:
        h = hashlib.sha256(b"hf_ext-secagg|global-state|v1|")
        _hash_state(h, state)
        return h.digest()
    encoded = _encode_round_config(config)
    h = hashlib.sha256(b"hf_ext-secagg|global-state+round-config|v1|")
    _hash_state(h, state)
    h.update(encoded)
    return h.digest()


def _check_global_state(state) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"`global_state` must be a mapping of tensor names to tensors, got {type(state).__name__}.")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"`global_state` must map tensor names (str) to tensors; entry {name!r} is "
                f"{type(name).__name__} -> {type(tensor).__name__}."
            )
        if tensor.layout != torch.strided or tensor.device.type == "meta":
            raise ValueError(f"`global_state[{name!r}]` must be a dense tensor with data to hash.")


def _hash_state(h, state: Mapping[str, torch.Tensor]) -> None:
    import sys

    h.update(len(state).to_bytes(8, "big"))
    for name in sorted(state):
        tensor = state[name]
        for part in (name.encode(), str(tensor.dtype).encode()):
            h.update(len(part).to_bytes(8, "big") + part)
        h.update(tensor.dim().to_bytes(8, "big") + b"".join(int(d).to_bytes(8, "big") for d in tensor.shape))
        # a lazy conjugate (`.conj()`) or negative view (e.g. `.conj().imag`) holds the other bits in memory: hash
        # the values it stands for
        flat = tensor.detach().cpu().resolve_conj().resolve_neg().reshape(-1)
        if flat.numel() and flat.stride(0) != 1:  # a one-element slice (`w[:1, 0]`) is "contiguous" with any stride
            flat = flat.clone(memory_format=torch.contiguous_format)
        if flat.is_complex():
            flat = torch.view_as_real(flat).reshape(-1)  # real and imaginary parts, each in the byte order below
        raw = flat.view(torch.uint8)
        if sys.byteorder == "big" and flat.element_size() > 1:
            raw = raw.reshape(-1, flat.element_size()).flip(1).reshape(-1)
        h.update(raw.numpy().tobytes())


def _encode_round_config(config) -> bytes:
    """The canonical bytes of a round config (see [`global_state_digest`]): the entry count, then per entry in sorted
    name order the length-prefixed UTF-8 name, a type tag and the length-prefixed value."""
    import struct

    if not isinstance(config, Mapping):
        raise TypeError(
            f"`round_config` must be a mapping of setting names (str) to int, float, bool, str or None values, got "
            f"{type(config).__name__}."
        )
    entries = []
    for name, value in config.items():
        if type(name) is not str:
            raise TypeError(f"`round_config` names must be str, got {name!r} ({type(name).__name__}).")
        if value is None:
            tag, raw = b"n", b""
        elif type(value) is bool:
            tag, raw = b"b", b"\x01" if value else b"\x00"
        elif type(value) is int:
            tag, raw = b"i", value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
        elif type(value) is float:
            tag, raw = b"f", struct.pack(">d", value)
        elif type(value) is str:
            tag, raw = b"s", value.encode("utf-8", "surrogatepass")
        else:
            raise TypeError(
                f"`round_config[{name!r}]` is {type(value).__module__}.{type(value).__qualname__} ({value!r}); a round "
                "config holds only int, float, bool, str or None values (exactly those types, so its digest is "
                "canonical): convert numpy scalars with `.item()` and encode lists or mappings as a string (e.g. "
                "sorted-key JSON)."
            )
        entries.append((name.encode("utf-8", "surrogatepass"), tag, raw))
    out = [len(entries).to_bytes(8, "big")]
    for key, tag, raw in sorted(entries):
        out.append(len(key).to_bytes(8, "big") + key + tag + len(raw).to_bytes(8, "big") + raw)
    return b"".join(out)


def _survivors_message(round_index: int, survivors: Sequence[int]) -> bytes:
    ids = ",".join(str(int(v)) for v in sorted(survivors))
    return f"hf_ext-secagg|survivors|round={int(round_index)}|{ids}".encode()


def generate_identity():
    """A fresh long-term Ed25519 identity key (`cryptography`'s `Ed25519PrivateKey`) for one client. Keep it on the
    client; publish its public key in the [`IdentityDirectory`]."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def identity_public_bytes(identity) -> bytes:
    """The 32 raw bytes of an Ed25519 identity's public key (private or public key object accepted)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if isinstance(identity, Ed25519PrivateKey):
        identity = identity.public_key()
    if not isinstance(identity, Ed25519PublicKey):
        raise TypeError(f"Expected an Ed25519 key from `cryptography`, got {type(identity).__name__}.")
    return identity.public_bytes(Encoding.Raw, PublicFormat.Raw)


class IdentityDirectory:
    """The clients' long-term Ed25519 identity public keys, `{client_id: 32 raw bytes}`, provisioned out of band.

    Every client must hold the same directory, obtained over a channel the aggregation server does not control (the
    federation's operator distributes it with the client software, e.g. as the JSON of [`to_json`]). Clients verify
    every advertised key against it, so a server cannot substitute keys; a server that could edit the directory
    could substitute keys, so it must not be the one distributing it.

    Args:
        keys (`Mapping[int, bytes | Ed25519PublicKey]`): client id (>= 0) -> identity public key.
    """

    def __init__(self, keys: Mapping[int, object]):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not keys:
            raise ValueError("`keys` is empty: the directory needs one identity public key per client.")
        self._keys: dict[int, Ed25519PublicKey] = {}
        for cid, key in keys.items():
            if isinstance(cid, bool) or int(cid) != cid or int(cid) < 0:
                raise ValueError(f"Directory client ids must be integers >= 0, got {cid!r}.")
            if isinstance(key, bytes | bytearray):
                if len(key) != 32:
                    raise ValueError(f"Identity key of client {cid} must be 32 raw Ed25519 bytes, got {len(key)}.")
                key = Ed25519PublicKey.from_public_bytes(bytes(key))
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError(f"Identity key of client {cid}: expected bytes or Ed25519PublicKey, got {type(key)}.")
            self._keys[int(cid)] = key
        raw = [identity_public_bytes(k) for k in self._keys.values()]
        if len(set(raw)) != len(raw):
            raise ValueError("Two clients share one identity key in the directory; give every client its own.")

    @classmethod
    def provision(cls, client_ids: Sequence[int]) -> tuple[dict[int, object], IdentityDirectory]:
        """Fresh identities for `client_ids`: `({client_id: Ed25519PrivateKey}, directory)`. For tests and in-process
        simulations, where one process plays every party; in a deployment each client generates its own key."""
        identities = {int(c): generate_identity() for c in client_ids}
        return identities, cls({c: k.public_key() for c, k in identities.items()})

    def __contains__(self, client_id: int) -> bool:
        return int(client_id) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def client_ids(self) -> list[int]:
        return sorted(self._keys)

    def public_bytes(self, client_id: int) -> bytes:
        return identity_public_bytes(self._keys[int(client_id)])

    def verify(self, client_id: int, round_index: int, keys: AdvertisedKeys) -> None:
        """Raise [`SecAggAbort`] unless `keys` (public keys and global-state digest) were signed by `client_id`'s
        identity for this round."""
        from cryptography.exceptions import InvalidSignature

        cid = int(client_id)
        if cid not in self._keys:
            raise SecAggAbort(f"Client {cid} is not in the identity directory; aborting the round.")
        try:
            self._keys[cid].verify(
                bytes(keys.signature), _advert_message(round_index, cid, keys.c_pk, keys.s_pk, keys.state_digest)
            )
        except InvalidSignature:
            raise SecAggAbort(
                f"The public keys advertised for client {cid} in round {round_index} are not signed by its identity "
                "key together with the global-state digest sent with them (forged, substituted, altered or replayed "
                "by the server); aborting the round."
            ) from None

    def verify_message(self, client_id: int, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is `client_id`'s identity signature of `message` (False for unknown clients)."""
        from cryptography.exceptions import InvalidSignature

        key = self._keys.get(int(client_id))
        if key is None:
            return False
        try:
            key.verify(bytes(signature), message)
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> str:
        """`{"client_id": "<hex public key>"}`, for distribution to every client."""
        return json.dumps({str(c): self.public_bytes(c).hex() for c in self.client_ids}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> IdentityDirectory:
        try:
            raw = json.loads(text)
            return cls({int(c): bytes.fromhex(h) for c, h in raw.items()})
        except (ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"Not an identity directory JSON ({{client_id: hex key}}): {err}") from err


@dataclass
class SecAggClientState:
    """What a client keeps between rounds: the last round id it served. A client refuses a round id <= it, so a
    server cannot re-run a round over another subset of clients and subtract the two sums. Persist it with the client
    ([`to_dict`] / [`from_dict`], JSON-safe); a client that loses it loses this protection."""

    last_round: int | None = None

    def check(self, round_index: int, client_id: int) -> None:
        if self.last_round is not None and int(round_index) <= self.last_round:
            raise SecAggAbort(
                f"Client {client_id} already served round {self.last_round}; refusing round {round_index} (a server "
                "re-running a round over another subset could subtract the two sums)."
            )

    def to_dict(self) -> dict:
        return {"last_round": self.last_round}

    @classmethod
    def from_dict(cls, d: Mapping) -> SecAggClientState:
        last = d.get("last_round")
        return cls(None if last is None else int(last))


# ----------------------------------------------------------------------------------------------------------------
# protocol parties


def default_threshold(num_clients: int, max_colluders: int = 0) -> int:
    """The smallest threshold with `2t > n + c` (and at least 2), `(n + c) // 2 + 1`: a server that lies about
    dropouts, helped by `c = max_colluders` clients, can never hold `t` shares of both secrets of one client, and up to
    `n - t` clients may drop out. Raises `ValueError` if no threshold <= n satisfies it."""
    _check_colluders(max_colluders)
    if int(num_clients) < 2:  # the threshold is at least 2: no max_colluders makes it fit fewer clients
        raise ValueError(
            f"secure aggregation needs at least 2 clients (it hides each update in a sum), got {num_clients}: add "
            "clients or turn secure aggregation off."
        )
    t = max(2, (int(num_clients) + int(max_colluders)) // 2 + 1)
    if t > num_clients:
        raise ValueError(
            f"max_colluders={max_colluders} with {num_clients} clients needs a threshold {t} above the number of "
            f"clients: lower `max_colluders` (at most {max(num_clients - 1, 0)}) or add clients."
        )
    return t


def _check_colluders(max_colluders: int) -> None:
    if isinstance(max_colluders, bool) or not isinstance(max_colluders, int) or max_colluders < 0:
        raise ValueError(f"`max_colluders` must be an integer >= 0, got {max_colluders!r}.")


def check_colluder_bound(threshold: int, num_clients: int, max_colluders: int = 0) -> None:
    """Refuse (`ValueError`) a threshold that lets a malicious server with `max_colluders` colluding clients collect
    `t` shares of both secrets of one client: needs `2 * threshold > num_clients + max_colluders`, `threshold >= 2`
    and `threshold <= num_clients` (`num_clients` counts every holder of shares, the client itself included)."""
    _check_colluders(max_colluders)
    t, n, c = int(threshold), int(num_clients), int(max_colluders)
    if not 2 * t > n + c or t < 2:
        raise ValueError(
            f"threshold={t} with {n} clients and max_colluders={c} lets a malicious server (lying about dropouts, "
            f"helped by {c} colluding clients) collect both secrets of one client, since 2t <= n + c: use a "
            f"threshold of at least {max(2, (n + c) // 2 + 1)} (`default_threshold(n, max_colluders)`), more "
            "clients, or a smaller `max_colluders`."
        )
    if t > n:
        raise ValueError(f"threshold={t} exceeds the {n} clients of the round: no unmasking would be possible.")


class SecAggClient:
    """One client's side of the protocol; everything it returns is what the server receives.

    Args:
        node_id (`int`): this client's id (>= 0), as the server and the identity directory name it.
        round_index (`int`, *optional*, defaults to 0): the round id, bound into every signature and derived key, so
            masks never repeat across rounds and a signed advertisement cannot be replayed into another round.
        frac_bits (`int`, *optional*, defaults to 24): fixed-point precision of the uploads.
        identity (`Ed25519PrivateKey`): this client's long-term identity key (`cryptography`'s ed25519); required.
        directory ([`IdentityDirectory`]): every client's identity public key, provisioned out of band; required.
            Without authenticated keys a malicious server can substitute the keys of a client's peers and unmask
            that client alone, so there is no unauthenticated mode.
        max_colluders (`int`, *optional*, defaults to 0): how many clients may collude with the server; the client
            refuses a round whose threshold `t` has `2t <= n + max_colluders`.
        state ([`SecAggClientState`], *optional*): the client's persistent state (last round served). Pass the same
            object every round; a fresh one (the default) remembers nothing.
        global_state (`Mapping[str, torch.Tensor]`): the global model state this client received from the server this
            round, the one its update is computed from (`{}` when the update does not derive from a server-sent
            state); required. Its digest ([`global_state_digest`]) is signed into the advertisement, and the client
            aborts the round ([`SecAggAbort`]) before sharing anything when a peer signed another digest: without it a
            malicious server could send every other client a state that makes its update zero or known (e.g. an
            all-zero LoRA adapter) and read this client's update off the sum (model inconsistency).
        round_config (`Mapping[str, int | float | bool | str | None]`, *optional*): the training instructions this
            client received for this round (learning rate, local steps or epochs, ...), signed into the same digest
            ([`global_state_digest`]`(global_state, round_config)`), so the round also aborts when the server sent
            another client other instructions: without it a server could send every other client the true model but
            `learning_rate=0` or zero local steps (their updates are zero) and read this client's update off the sum.
            Default `None`: the model state only is bound (as in earlier versions), which suffices only when the
            instructions do not come from the server (fixed in the client software); a client that receives its
            instructions from the server must pass them. Every client of a round must bind the same kind (all with a
            config or all without), else their digests differ and the round aborts.
    """

    def __init__(
        self,
        node_id: int,
        round_index: int = 0,
        frac_bits: int = 24,
        *,
        identity=None,
        directory: IdentityDirectory | None = None,
        max_colluders: int = 0,
        state: SecAggClientState | None = None,
        global_state: Mapping[str, torch.Tensor] | None = None,
        round_config: Mapping[str, object] | None = None,
    ):
        if int(node_id) < 0:
            raise ValueError(f"`node_id` must be >= 0, got {node_id}.")
        if identity is None or directory is None:
            raise ValueError(
                "SecAggClient needs `identity` (its Ed25519 identity key) and `directory` (an IdentityDirectory of "
                "all clients' identity public keys, provisioned out of band): without them a malicious server can "
                "substitute peers' keys and unmask one client. Use IdentityDirectory.provision(ids) for tests."
            )
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if not isinstance(identity, Ed25519PrivateKey):
            raise TypeError(
                f"`identity` must be an Ed25519PrivateKey (the client's own), got {type(identity).__name__}."
            )
        if not isinstance(directory, IdentityDirectory):
            raise TypeError(f"`directory` must be an IdentityDirectory, got {type(directory).__name__}.")
        if global_state is None:
            raise ValueError(
                "SecAggClient needs `global_state`: the global model state this client received this round (`{}` if "
                "its update does not derive from one). Its digest is signed and compared with every peer's, so a "
                "malicious server cannot send the other clients a model that makes their updates zero or known and "
                "read this client's update off the sum."
            )
        _check_colluders(max_colluders)
        self.node_id = int(node_id)
        if self.node_id not in directory or directory.public_bytes(self.node_id) != identity_public_bytes(identity):
            raise ValueError(
                f"`identity` is not the key the directory holds for client {self.node_id}: pass this client's own "
                "identity key, or fix the directory."
            )
        self.round_index = int(round_index)
        self.frac_bits = frac_bits
        self.max_colluders = int(max_colluders)
        self.state = SecAggClientState() if state is None else state
        self.state.check(self.round_index, self.node_id)
        self._identity = identity
        self._directory = directory
        self.binds_round_config = round_config is not None
        self.state_digest = global_state_digest(global_state, round_config)
        self._c_sk, self.c_pk = _new_keypair()
        self._s_sk, self.s_pk = _new_keypair()
        self._b = os.urandom(32)
        self._threshold = 0
        self._keys: dict[int, AdvertisedKeys] = {}
        self._b_shares: dict[int, int] = {}
        self._s_shares: dict[int, int] = {}
        self._masked_with: list[int] = []
        self._stage = "advertise"

    def advertise_keys(self) -> AdvertisedKeys:
        """Round 0: the two public keys `(c_pk, s_pk)`, the identity's signature over them, the digest of the global
        state this client received, this round and id, and that digest."""
        msg = _advert_message(self.round_index, self.node_id, self.c_pk, self.s_pk, self.state_digest)
        return AdvertisedKeys(self.c_pk, self.s_pk, self._identity.sign(msg), self.state_digest)

    def share_keys(self, public_keys: Mapping[int, AdvertisedKeys], threshold: int) -> dict[int, bytes]:
        """Round 1: encrypted Shamir shares of `b` and `s_sk` for every peer in `public_keys` (which includes us).

        Before sharing anything it verifies every advertisement against the identity directory, checks that every
        peer signed the digest of the same global state as this client received, checks the colluder bound
        `2 * threshold > len(public_keys) + max_colluders` and records this round as served; any failure raises
        [`SecAggAbort`] (a `ValueError`) and nothing secret leaves the client.
        """
        if self._stage != "advertise":
            raise RuntimeError(f"Client {self.node_id}: share_keys called twice or out of order; aborting.")
        keys = {}
        for k, v in public_keys.items():
            if len(v) != 4:
                raise SecAggAbort(
                    f"Client {self.node_id}: the keys of client {k} carry no signature and global-state digest; "
                    "aborting."
                )
            adv = AdvertisedKeys(bytes(v[0]), bytes(v[1]), bytes(v[2]), bytes(v[3]))
            if (len(adv.c_pk), len(adv.s_pk), len(adv.state_digest)) != (32, 32, DIGEST_BYTES):
                raise SecAggAbort(
                    f"Client {self.node_id}: the advertisement of client {k} has fields of {len(adv.c_pk)}, "
                    f"{len(adv.s_pk)} and {len(adv.state_digest)} bytes (keys and digest are 32 bytes each); aborting."
                )
            keys[int(k)] = adv
        own = keys.get(self.node_id)
        if own is None or (own.c_pk, own.s_pk) != (self.c_pk, self.s_pk):
            raise SecAggAbort(f"Client {self.node_id}: the broadcast does not hold our own public keys; aborting.")
        for v, adv in keys.items():
            self._directory.verify(v, self.round_index, adv)
        self._check_same_global_state(keys)
        flat = [pk for adv in keys.values() for pk in (adv.c_pk, adv.s_pk)]
        if len(set(flat)) != len(flat):
            raise SecAggAbort(f"Client {self.node_id}: repeated public keys in the broadcast; aborting.")
        try:
            check_colluder_bound(threshold, len(keys), self.max_colluders)
        except ValueError as err:
            raise SecAggAbort(f"Client {self.node_id}: {err}") from None
        self.state.check(self.round_index, self.node_id)  # another session of ours may have served it meanwhile
        self.state.last_round = self.round_index
        self._threshold = int(threshold)
        self._keys = keys
        xs = [_point(v) for v in keys]
        b_shares = shamir_split(self._b, threshold, xs)
        s_shares = shamir_split(_private_bytes(self._s_sk), threshold, xs)
        out = {}
        for v, adv in keys.items():
            if v == self.node_id:
                self._b_shares[v], self._s_shares[v] = b_shares[_point(v)], s_shares[_point(v)]
                continue
            out[v] = self._encrypt(v, adv.c_pk, b_shares[_point(v)], s_shares[_point(v)])
        self._stage = "shared"
        return out

    def _check_same_global_state(self, keys: Mapping[int, AdvertisedKeys]) -> None:
        """Abort unless every (authenticated) advertisement carries the digest of the global state (and round config)
        we received."""
        others: dict[bytes, list[int]] = {}
        for v, adv in sorted(keys.items()):
            if adv.state_digest != self.state_digest:
                others.setdefault(adv.state_digest, []).append(v)
        if not others:
            return
        theirs = "; ".join(f"clients {ids} signed {d.hex()[:16]}" for d, ids in others.items())
        raise SecAggAbort(
            f"Client {self.node_id}: inconsistent global state in round {self.round_index}: we received the state "
            f"{'and round config ' if self.binds_round_config else ''}with digest {self.state_digest.hex()[:16]} "
            f"(SHA-256, first 8 bytes), but {theirs}. The server sent different models or training instructions to "
            "different clients (model inconsistency: with the other clients' updates made zero or known, the sum would "
            "reveal one client's update); aborting the round before any share or masked input leaves."
        )

    def _share_key(self, v: int, c_pk: bytes) -> bytes:
        lo, hi = sorted((self.node_id, v))
        return _agree(self._c_sk, c_pk, f"hf_ext-secagg|shares|round={self.round_index}|{lo}|{hi}".encode())

    def _encrypt(self, v: int, c_pk: bytes, b_share: int, s_share: int) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        plain = b_share.to_bytes(66, "big") + s_share.to_bytes(66, "big")
        ad = f"{self.node_id}->{v}|{self.round_index}".encode()
        return nonce + AESGCM(self._share_key(v, c_pk)).encrypt(nonce, plain, ad)

    def masked_input(
        self, update: Mapping[str, torch.Tensor], weight: float, ciphertexts: Mapping[int, bytes]
    ) -> dict[str, torch.Tensor]:
        """Round 2: decrypt the shares peers sent us (`{sender: ciphertext}`, routed by the server) and upload
        `enc(weight * update)` plus the self mask and the pairwise masks with every sender."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self._stage != "shared":
            raise RuntimeError(f"Client {self.node_id}: masked_input called out of order; aborting.")
        for u, ct in ciphertexts.items():
            u = int(u)
            if u not in self._keys or u == self.node_id:
                raise ValueError(f"Client {self.node_id}: share from unknown client {u}; aborting.")
            plain = AESGCM(self._share_key(u, self._keys[u][0])).decrypt(
                ct[:12], ct[12:], f"{u}->{self.node_id}|{self.round_index}".encode()
            )
            self._b_shares[u] = int.from_bytes(plain[:66], "big")
            self._s_shares[u] = int.from_bytes(plain[66:], "big")
        peers = sorted(int(u) for u in ciphertexts)
        if len(peers) + 1 < self._threshold:
            raise ValueError(f"Client {self.node_id}: fewer live peers than the threshold; aborting.")
        keys, shapes, numel = _flatten(update)
        for k in keys:
            if not torch.is_floating_point(update[k]):
                raise TypeError(f"`update[{k!r}]` has dtype {update[k].dtype}; secure aggregation takes floats.")
        vec = torch.cat([update[k].detach().reshape(-1).to(torch.float64) for k in keys]) * float(weight)
        # every client in the round may add to the sum: bound each so that the sum of all cannot wrap around
        enc = encode(vec, self.frac_bits, num_summands=len(self._keys))
        y = torch.remainder(enc + prg_residues(self._b, numel), MODULUS)
        for v in peers:
            m = prg_residues(
                _agree(self._s_sk, self._keys[v][1], _pair_info(self.node_id, v, self.round_index)), numel
            )
            y = torch.remainder(y + m if self.node_id < v else y - m, MODULUS)
        self._masked_with = peers
        self._stage = "uploaded"
        return _unflatten(y, keys, shapes)

    def sign_survivors(self, survivors: Sequence[int]) -> bytes:
        """Round 3 (consistency check): sign the survivor list the server announces, with our identity key.

        Refuses (raises) a list that does not contain us, names a client we did not mask with (the server withheld
        that client's shares from us, so our upload's masks do not involve it), repeats ids, or has fewer clients than
        the threshold; signs at most one list per round. Honest clients thus sign one list each, so with
        `2t > n + max_colluders` at most one survivor list can gather the `t` signatures [`unmask`] requires.
        """
        if self._stage != "uploaded":
            when = "again" if self._stage in ("signed", "unmasked") else "before upload"
            raise RuntimeError(
                f"Client {self.node_id}: survivor list to sign {when}; refusing (signing two lists would let the "
                "server show different survivors to different clients)."
            )
        surv = [int(v) for v in survivors]
        if len(set(surv)) != len(surv):
            raise SecAggAbort(f"Client {self.node_id}: the survivor list repeats client ids; refusing.")
        if self.node_id not in surv:
            raise SecAggAbort(f"Client {self.node_id}: we uploaded, yet the server lists us as dropped; refusing.")
        strangers = set(surv) - set(self._masked_with) - {self.node_id}
        if strangers:
            raise SecAggAbort(
                f"Client {self.node_id}: survivors {sorted(strangers)} never sent us their shares (we did not mask "
                "with them); refusing, since our masks would then involve only clients the server calls dropped."
            )
        if len(surv) < self._threshold:
            raise SecAggAbort(
                f"Client {self.node_id}: only {len(surv)} survivors, below the threshold {self._threshold}; refusing."
            )
        self._survivors = tuple(sorted(surv))
        self._stage = "signed"
        return self._identity.sign(_survivors_message(self.round_index, self._survivors))

    def unmask(self, survivors: Sequence[int], signatures: Mapping[int, bytes]) -> dict[int, tuple[str, int]]:
        """Round 4: per peer, the share of its self-mask seed (`"b"`, survivors) or of its mask key (`"s"`, the peers
        whose shares we hold and that are not survivors: dropped).

        `survivors` must be the list we signed in [`sign_survivors`], and `signatures` (`{client: signature}`, routed
        by the server) must hold valid signatures of that same list from at least `t` of its clients, checked against
        the identity directory: then every honest client that answers uses the same list, so no client's self-mask
        seed and mask key are both revealed, and a server cannot tell different clients different dropouts.
        Refuses (raises) otherwise, and any second request in the round.
        """
        if self._stage != "signed":
            when = "again" if self._stage == "unmasked" else "before the consistency check"
            raise RuntimeError(
                f"Client {self.node_id}: unmask requested {when}; refusing (a second request could reveal both "
                "secrets of one client)."
            )
        surv = tuple(sorted(int(v) for v in survivors))
        if surv != self._survivors:
            raise SecAggAbort(
                f"Client {self.node_id}: the unmask request names survivors {list(surv)}, but we signed "
                f"{list(self._survivors)}; refusing."
            )
        valid = set()
        for signer, sig in signatures.items():
            signer = int(signer)
            if signer not in surv:
                raise SecAggAbort(f"Client {self.node_id}: a survivor-list signature from non-survivor {signer}.")
            if not self._directory.verify_message(signer, _survivors_message(self.round_index, surv), sig):
                raise SecAggAbort(
                    f"Client {self.node_id}: client {signer}'s signature does not cover this survivor list in round "
                    f"{self.round_index} (the server showed different lists to different clients); refusing."
                )
            valid.add(signer)
        if len(valid) < self._threshold:
            raise SecAggAbort(
                f"Client {self.node_id}: only {len(valid)} clients signed the survivor list, below the threshold "
                f"{self._threshold}; refusing."
            )
        self._stage = "unmasked"
        out: dict[int, tuple[str, int]] = {v: ("b", self._b_shares[v]) for v in surv}
        out.update({v: ("s", self._s_shares[v]) for v in self._masked_with if v not in surv})
        return out


@dataclass
class ServerView:
    """Everything the server receives in one round (what an attacker controlling the server sees)."""

    threshold: int = 0
    public_keys: dict[int, AdvertisedKeys] = field(default_factory=dict)
    ciphertexts: dict[int, dict[int, bytes]] = field(default_factory=dict)
    masked: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    survivor_signatures: dict[int, bytes] = field(default_factory=dict)
    unmask_shares: dict[int, dict[int, tuple[str, int]]] = field(default_factory=dict)


def unmask_sum(view: ServerView, survivors: Sequence[int], round_index: int = 0) -> dict[str, torch.Tensor]:
    """The server's last step: sum the survivors' uploads and remove their self masks and the pairwise masks they
    share with dropped clients, from the revealed shares in `view.unmask_shares`. Returns residues (see [`decode`])."""
    survivors = sorted(int(u) for u in survivors)
    if not survivors:
        raise ValueError("No client uploaded: nothing to aggregate.")
    key_set = set(view.masked[survivors[0]])
    keys, shapes, numel = _flatten(view.masked[survivors[0]])
    total = torch.zeros(numel, dtype=torch.int64)
    for u in survivors:
        if set(view.masked[u]) != key_set:
            raise ValueError("Masked uploads have different keys: clients must upload the same tensors.")
        total = torch.remainder(total + torch.cat([view.masked[u][k].reshape(-1) for k in keys]), MODULUS)
    collected: dict[tuple[str, int], dict[int, int]] = {}
    for responder, shares in view.unmask_shares.items():
        for owner, (kind, share) in shares.items():
            collected.setdefault((kind, int(owner)), {})[_point(responder)] = share
    threshold = view.threshold or default_threshold(len(view.public_keys))
    dropped = sorted(set(view.ciphertexts) - set(survivors))
    for u in survivors:
        shares = collected.get(("b", u), {})
        if len(shares) < threshold:
            raise ValueError(f"Only {len(shares)} shares of client {u}'s self mask; need {threshold}.")
        total = torch.remainder(total - prg_residues(shamir_combine(shares), numel), MODULUS)
    for d in dropped:
        shares = collected.get(("s", d), {})
        if len(shares) < threshold:
            raise ValueError(f"Only {len(shares)} shares of dropped client {d}'s mask key; need {threshold}.")
        s_sk = _private_from_bytes(shamir_combine(shares))
        for u in survivors:
            if d not in _peers_of(view, u):
                continue
            m = prg_residues(_agree(s_sk, view.public_keys[u][1], _pair_info(u, d, round_index)), numel)
            # survivor u added +m if u < d and -m otherwise: undo it
            total = torch.remainder(total - m if u < d else total + m, MODULUS)
    return _unflatten(total, keys, shapes)


def _peers_of(view: ServerView, u: int) -> set[int]:
    """The peers `u` masked with: those whose shares the server routed to `u`."""
    return {src for src, cts in view.ciphertexts.items() if u in cts}


def secure_aggregate(
    updates: Mapping[int, Mapping[str, torch.Tensor]],
    weights: Mapping[int, float],
    threshold: int | None = None,
    round_index: int = 0,
    frac_bits: int = 24,
    drop_before_upload: Sequence[int] = (),
    drop_before_unmask: Sequence[int] = (),
    *,
    max_colluders: int = 0,
    identities: Mapping[int, object] | None = None,
    directory: IdentityDirectory | None = None,
    client_states: dict[int, SecAggClientState] | None = None,
    global_states: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    round_configs: Mapping[int, Mapping[str, object]] | None = None,
) -> tuple[dict[str, torch.Tensor], float, ServerView]:
    """Run one round of the protocol in process between honest clients and an honest server relaying messages.

    Args:
        updates (`Mapping[int, Mapping[str, torch.Tensor]]`): `{node_id: update}` of the clients that start the round.
        weights (`Mapping[int, float]`): public aggregation weights (example counts).
        threshold (`int`, *optional*): Shamir threshold, default [`default_threshold`]`(n, max_colluders)`; clients
            refuse one with `2t <= n + max_colluders`.
        round_index (`int`, *optional*, defaults to 0): the round id, bound into all signatures and derived keys.
        frac_bits (`int`, *optional*, defaults to 24): fixed-point precision.
        drop_before_upload (`Sequence[int]`): clients that share keys but never upload (their masks are removed).
        drop_before_unmask (`Sequence[int]`): clients that upload but do not answer the unmask request.
        max_colluders (`int`, *optional*, defaults to 0): clients that may collude with the server (see
            [`check_colluder_bound`]).
        identities (`Mapping[int, Ed25519PrivateKey]`, *optional*): each client's long-term identity key.
        directory ([`IdentityDirectory`], *optional*): the identity public keys. Give both or neither; with neither,
            fresh identities are provisioned for this call (this function plays every party, so it is also the
            out-of-band provisioner).
        client_states (`dict[int, SecAggClientState]`, *optional*): the clients' persistent states, updated in place
            (missing clients are added; a client refuses a round id it has already served); default: fresh states
            that remember nothing.
        global_states (`Mapping[int, Mapping[str, torch.Tensor]]`, *optional*): `{node_id: state}`, the global model
            state each client received from the server this round (what its update was computed from). Each client
            signs its digest and the round aborts with [`SecAggAbort`], before any share or masked input leaves a
            client, if two clients received different states (model inconsistency). Default: the updates do not
            derive from a server-sent state (every client binds the empty state `{}`).
        round_configs (`Mapping[int, Mapping[str, int | float | bool | str | None]]`, *optional*): `{node_id:
            config}`, the training instructions each client received this round (learning rate, local steps, ...),
            bound into the same digest as its global state (see [`SecAggClient`]), so the round also aborts when the
            server sent different clients different instructions (e.g. `learning_rate=0` to all but one). Default:
            no config is bound (the model state only, as in earlier versions).

    Returns:
        `tuple[dict[str, torch.Tensor], float, ServerView]`: the weighted mean of the uploaded updates (float64), the
        total weight of the uploaders, and everything the server received.
    """
    ids = sorted(int(u) for u in updates)
    if len(ids) < 2:
        raise ValueError("Secure aggregation needs at least 2 clients.")
    if set(weights) != set(updates):
        raise ValueError("`weights` must have one entry per client in `updates`.")
    for u in ids:
        if not 0 <= _weight_value(weights[u]) < math.inf:
            raise ValueError(
                f"`weights` must be finite and non-negative (e.g. example counts), got {weights[u]!r} for client {u}: "
                "a client's weight scales its masked upload, so the server could not see a wrong sign."
            )
    # the clients that upload (a client of `drop_before_upload` never does: its update may be a placeholder)
    _check_same_layout(updates, [u for u in ids if u not in set(drop_before_upload)])
    if (identities is None) != (directory is None):
        raise ValueError("Pass both `identities` and `directory` (or neither, to provision fresh ones).")
    if identities is None:
        identities, directory = IdentityDirectory.provision(ids)
    missing = [u for u in ids if u not in identities]
    if missing:
        raise ValueError(f"`identities` has no key for clients {missing}: give every client its identity key.")
    if global_states is None:
        global_states = {u: {} for u in ids}
    elif not isinstance(global_states, Mapping) or {int(u) for u in global_states} != set(ids):
        got = sorted(global_states) if isinstance(global_states, Mapping) else type(global_states).__name__
        raise ValueError(
            f"`global_states` must map every client in `updates` ({ids}) to the global state it received, got {got}."
        )
    global_states = {int(u): g for u, g in global_states.items()}
    if round_configs is None:
        round_configs = {u: None for u in ids}
    elif not isinstance(round_configs, Mapping) or {int(u) for u in round_configs} != set(ids):
        got = sorted(round_configs) if isinstance(round_configs, Mapping) else type(round_configs).__name__
        raise ValueError(
            f"`round_configs` must map every client in `updates` ({ids}) to the training config it received, got "
            f"{got}."
        )
    round_configs = {int(u): c for u, c in round_configs.items()}
    states: dict[int, SecAggClientState] = {} if client_states is None else client_states
    if not isinstance(states, dict):
        raise TypeError("`client_states` must be a dict {client_id: SecAggClientState} (it is updated in place).")
    for u in ids:
        states.setdefault(u, SecAggClientState())
    t = default_threshold(len(ids), max_colluders) if threshold is None else int(threshold)
    clients = {
        u: SecAggClient(
            u,
            round_index,
            frac_bits,
            identity=identities[u],
            directory=directory,
            max_colluders=max_colluders,
            state=states[u],
            global_state=global_states[u],
            round_config=round_configs[u],
        )
        for u in ids
    }
    view = ServerView(threshold=t)
    view.public_keys = {u: c.advertise_keys() for u, c in clients.items()}
    for u, c in clients.items():
        view.ciphertexts[u] = c.share_keys(view.public_keys, t)
    uploaders = [u for u in ids if u not in set(drop_before_upload)]
    if len(uploaders) < t:
        raise ValueError(f"Only {len(uploaders)} clients uploaded, below the threshold {t}: the round is aborted.")
    for u in uploaders:
        routed = {src: cts[u] for src, cts in view.ciphertexts.items() if u in cts}
        view.masked[u] = clients[u].masked_input(updates[u], float(weights[u]), routed)
        view.weights[u] = float(weights[u])
    responders = [u for u in uploaders if u not in set(drop_before_unmask)]
    if len(responders) < t:
        raise ValueError(f"Only {len(responders)} clients answered the unmask request, below the threshold {t}.")
    view.survivor_signatures = {u: clients[u].sign_survivors(uploaders) for u in uploaders}
    for u in responders:
        view.unmask_shares[u] = clients[u].unmask(uploaders, view.survivor_signatures)
    residues = unmask_sum(view, uploaders, round_index)
    total = float(sum(weights[u] for u in uploaders))
    if not total > 0:
        raise ValueError("The uploaders' total weight must be > 0.")
    mean = {k: decode(v, frac_bits) / total for k, v in residues.items()}
    return mean, total, view


def _weight_value(weight) -> float:
    """A client weight as a float: a real number, numpy scalar or one-element real tensor; NaN for anything else
    (a string, a bool, a complex number), which the caller refuses."""
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1 or weight.is_complex() or weight.dtype == torch.bool:
            return math.nan
        return float(weight)
    return float(weight) if is_real(weight) else math.nan


def _check_same_layout(updates: Mapping[int, Mapping[str, torch.Tensor]], ids: Sequence[int]) -> None:
    """Raise a `ValueError` naming the client and the tensor when the clients' updates do not share one layout (the
    same keys, each a tensor of the same shape): masks and shares are per entry of one common vector."""
    if not ids:
        return
    first = ids[0]
    ref = updates[first]
    for u in ids:
        up = updates[u]
        if not isinstance(up, Mapping) or not all(isinstance(v, torch.Tensor) for v in up.values()):
            raise TypeError(f"`updates[{u}]` must be a mapping of tensor names to tensors.")
        if set(up) != set(ref):
            extra, missing = sorted(set(up) - set(ref)), sorted(set(ref) - set(up))
            raise ValueError(
                f"`updates[{u}]` has other tensors than `updates[{first}]` (extra {extra}, missing {missing}): every "
                "client must upload the same keys."
            )
        for k, v in up.items():
            if tuple(v.shape) != tuple(ref[k].shape):
                raise ValueError(
                    f"`updates[{u}][{k!r}]` has shape {tuple(v.shape)}, `updates[{first}][{k!r}]` "
                    f"{tuple(ref[k].shape)}: every client must upload tensors of the same shapes."
                )


def quantization_error_bound(num_clients: int, total_weight: float, frac_bits: int = 24) -> float:
    """Worst-case absolute error of the securely aggregated weighted mean vs. the plain one (rounding per client).

    `num_clients` must be an int >= 1, `total_weight` (the sum of the client weights; a number or a one-element
    tensor) finite and > 0, and `frac_bits` an int in [0, 40]; anything else raises `ValueError` (a negative count
    gave a negative bound).
    """
    if not is_int(num_clients) or num_clients < 1:
        raise ValueError(f"`num_clients` must be an int >= 1, got {num_clients!r}.")
    total = _weight_value(total_weight)  # a one-element tensor too, as the client weights
    if not 0 < total < math.inf:
        raise ValueError(
            f"`total_weight` must be a finite number > 0 (the sum of the client weights), got {total_weight!r}."
        )
    _check_frac_bits(frac_bits)
    return int(num_clients) * 0.5 / float(1 << int(frac_bits)) / total


# the relative L2 rounding error of a client's quantized upload above which the client warns, and above which it refuses
# (the rounding noise is then of the order of the update itself: the update is lost); the rule of both the in-process
# simulation (fixed point with `frac_bits`) and the Flower SecAgg+ path (`check_secagg_range`)
SECAGG_WARN_RELATIVE_ERROR = 1e-2
SECAGG_MAX_RELATIVE_ERROR = 0.5


def rounding_error_bound(update: Mapping[str, torch.Tensor], scale: float, step: float) -> float:
    """An upper bound on the relative L2 error of rounding `scale * update` entrywise to multiples of `step`: each
    entry's error (rounding to nearest, or unbiased stochastic rounding in RMS) is at most half a step, so over `d`
    entries the error norm is at most `sqrt(d) * step / 2`, relative to `scale * ||update||`. 0 for an all-zero update
    (nothing to lose), inf for a zero `scale` (all of it is lost)."""
    sq = sum(float((v.double() ** 2).sum()) for v in update.values() if v.numel())
    if sq == 0.0:
        return 0.0
    size = scale * math.sqrt(sq)
    numel = sum(v.numel() for v in update.values())
    return math.sqrt(numel) * step / 2 / size if size > 0 else math.inf


def check_rounding_error(
    error: float, message: str, refuse: bool = True, log=None, refusal: str | None = None
) -> None:
    """Act on a client's relative rounding error `error` ([`rounding_error_bound`]): above `SECAGG_WARN_RELATIVE_ERROR`
    warn with `message` (a `UserWarning`, and `log(message)` when given); above `SECAGG_MAX_RELATIVE_ERROR` refuse
    (`ValueError`) instead, unless `refuse=False`. `message` names the setting to change.

    `refusal`, when given, is the text of the refusal instead of `message`, which then goes to `log` only: a Flower
    client's exception text is sent to the server, and `message` holds numbers computed from the update."""
    if not error > SECAGG_WARN_RELATIVE_ERROR:
        return
    if refuse and error > SECAGG_MAX_RELATIVE_ERROR:
        if refusal is not None and log is not None:
            log(message)
        raise ValueError(
            f"{message if refusal is None else refusal} Refused: above {SECAGG_MAX_RELATIVE_ERROR:g} the rounding "
            "noise is of the order of the update."
        )
    if log is not None:
        log(message)
    warnings.warn(message, stacklevel=3)
