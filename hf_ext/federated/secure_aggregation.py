"""Secure aggregation by pairwise additive masks (Bonawitz et al. 2017, without the secret-sharing layer).

Every pair of clients `(i, j)` shares a seed `s_ij`. Client `i` uploads

    y_i = enc(w_i * x_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2**62)

where `enc` is a fixed-point encoding with `frac_bits` fractional bits. The masks cancel in the sum over all clients,
so the server recovers `sum_i w_i x_i` (hence the weighted mean, because the weights are public example counts)
while each `y_i` on its own is uniformly distributed and carries no information about `x_i`.

Dropout: if client `d` never uploads, the surviving clients' masks with `d` do not cancel. Survivors then reveal
their seeds `s_id` for the dropped peers and the server removes those masks ([`remove_dropped_masks`]). Revealing is
safe only for a client whose upload will never be used: the full protocol adds a second, self mask and Shamir shares
to survive late arrivals; that layer is not implemented here. In a deployment the pairwise seeds come from a
Diffie-Hellman key agreement; [`pairwise_seeds`] derives them from a shared secret for simulations and tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

MODULUS_BITS = 62
MODULUS = 1 << MODULUS_BITS


def pairwise_seeds(client_ids: Sequence[int], secret: str | bytes, round_index: int = 0) -> dict[tuple[int, int], int]:
    """Derive one 63-bit seed per unordered client pair `(i, j)`, `i < j`, from a shared secret and the round.

    Args:
        client_ids (`Sequence[int]`): distinct integer ids of the participating clients.
        secret (`str` or `bytes`): the shared secret (stands in for a pairwise key agreement).
        round_index (`int`, *optional*, defaults to 0): mixed into every seed so masks change every round.

    Returns:
        `dict[tuple[int, int], int]`: seeds keyed by the sorted pair.
    """
    ids = [int(i) for i in client_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"`client_ids` must be distinct, got {list(client_ids)}.")
    if len(ids) < 2:
        raise ValueError("Secure aggregation needs at least 2 clients (`client_ids` has fewer).")
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    seeds = {}
    for a in ids:
        for b in ids:
            if a < b:
                digest = hashlib.sha256(key + f"|{round_index}|{a}|{b}".encode()).digest()
                seeds[(a, b)] = int.from_bytes(digest[:8], "little") >> 1
    return seeds


def _prg(seed: int, shape: torch.Size) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, MODULUS, tuple(shape), generator=gen, dtype=torch.int64)


def encode(x: torch.Tensor, frac_bits: int = 24) -> torch.Tensor:
    """Fixed-point encode a float tensor as int64 residues modulo `2**62` (two's-complement style)."""
    if not 0 <= frac_bits <= 40:
        raise ValueError(f"`frac_bits` must be in [0, 40], got {frac_bits}.")
    scaled = torch.round(x.detach().to(torch.float64) * float(1 << frac_bits))
    limit = float(1 << (MODULUS_BITS - 2))
    if scaled.numel() and float(scaled.abs().max()) >= limit:
        raise ValueError(
            f"Value too large for fixed-point encoding with frac_bits={frac_bits}: lower `frac_bits` or scale the "
            "update down."
        )
    return torch.remainder(scaled.to(torch.int64), MODULUS)


def decode(residues: torch.Tensor, frac_bits: int = 24) -> torch.Tensor:
    """Inverse of [`encode`] for a (possibly summed) residue tensor: values >= 2**61 are negative."""
    r = torch.remainder(residues, MODULUS)
    signed = torch.where(r >= (MODULUS >> 1), r - MODULUS, r)
    return signed.to(torch.float64) / float(1 << frac_bits)


def mask_update(
    update: Mapping[str, torch.Tensor],
    client_id: int,
    seeds: Mapping[tuple[int, int], int],
    weight: float = 1.0,
    frac_bits: int = 24,
) -> dict[str, torch.Tensor]:
    """Encode `weight * update` and add the client's pairwise masks; this is all the server ever sees.

    Args:
        update (`Mapping[str, torch.Tensor]`): the client's floating state (or update) to aggregate.
        client_id (`int`): this client's id, as used in `seeds`.
        seeds (`Mapping[tuple[int, int], int]`): pairwise seeds from [`pairwise_seeds`].
        weight (`float`, *optional*, defaults to 1.0): aggregation weight (e.g. number of examples, public).
        frac_bits (`int`, *optional*, defaults to 24): fixed-point precision.

    Returns:
        `dict[str, torch.Tensor]`: int64 residues modulo `2**62`, keyed like `update`.
    """
    peers = [pair for pair in seeds if client_id in pair]
    if not peers:
        raise ValueError(f"`client_id`={client_id} appears in no pair of `seeds`: it is not a participant.")
    out = {}
    for offset, key in enumerate(sorted(update)):
        value = update[key]
        if not torch.is_floating_point(value):
            raise TypeError(f"`update[{key!r}]` has dtype {value.dtype}; secure aggregation takes floating tensors.")
        y = encode(value * weight, frac_bits)
        for a, b in peers:
            # a different stream per tensor: the seed is offset by the tensor's position in sorted key order
            m = _prg((seeds[(a, b)] + offset) % (1 << 63), value.shape)
            y = torch.remainder(y + m, MODULUS) if client_id == a else torch.remainder(y - m, MODULUS)
        out[key] = y
    return out


def sum_masked(masked: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Sum masked uploads modulo `2**62` (what the server computes)."""
    if not masked:
        raise ValueError("`masked` is empty: no client uploaded anything.")
    keys = set(masked[0])
    out = {}
    for k in sorted(keys):
        acc = torch.zeros_like(masked[0][k])
        for m in masked:
            if set(m) != keys:
                raise ValueError("Masked uploads have different keys: clients must upload the same tensors.")
            acc = torch.remainder(acc + m[k], MODULUS)
        out[k] = acc
    return out


def remove_dropped_masks(
    masked_sum: Mapping[str, torch.Tensor],
    survivors: Sequence[int],
    dropped: Sequence[int],
    seeds: Mapping[tuple[int, int], int],
) -> dict[str, torch.Tensor]:
    """Cancel the masks that surviving clients share with dropped ones, from the survivors' revealed seeds.

    Args:
        masked_sum (`Mapping[str, torch.Tensor]`): [`sum_masked`] over the survivors' uploads.
        survivors (`Sequence[int]`): ids of the clients whose uploads are in `masked_sum`.
        dropped (`Sequence[int]`): ids of clients that were given masks but did not upload.
        seeds (`Mapping[tuple[int, int], int]`): the seeds revealed for the `(survivor, dropped)` pairs.

    Returns:
        `dict[str, torch.Tensor]`: residues whose [`decode`] is the survivors' weighted sum.
    """
    if set(survivors) & set(dropped):
        raise ValueError("A client cannot be both in `survivors` and in `dropped`.")
    out = dict(masked_sum)
    for offset, key in enumerate(sorted(masked_sum)):
        y = out[key]
        for s in survivors:
            for d in dropped:
                pair = (min(s, d), max(s, d))
                if pair not in seeds:
                    raise ValueError(f"No seed for pair {pair}: survivor {s} must reveal its seed with {d}.")
                m = _prg((seeds[pair] + offset) % (1 << 63), y.shape)
                # survivor s added +m if s < d, -m otherwise: undo it
                y = torch.remainder(y - m, MODULUS) if s < d else torch.remainder(y + m, MODULUS)
        out[key] = y
    return out


def secure_weighted_mean(
    masked_sum: Mapping[str, torch.Tensor],
    total_weight: float,
    frac_bits: int = 24,
    like: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Decode an unmasked sum of `weight * x` residues and divide by the (public) total weight.

    Args:
        masked_sum (`Mapping[str, torch.Tensor]`): residues after [`sum_masked`] (and [`remove_dropped_masks`]).
        total_weight (`float`): the sum of the participating clients' weights (> 0).
        frac_bits (`int`, *optional*, defaults to 24): the precision used by the clients.
        like (`Mapping[str, torch.Tensor]`, *optional*): tensors whose dtypes the result takes.
    """
    if not total_weight > 0:
        raise ValueError(f"`total_weight` must be > 0, got {total_weight}.")
    out = {}
    for k, r in masked_sum.items():
        v = decode(r, frac_bits) / total_weight
        out[k] = v.to(like[k].dtype) if like is not None else v.to(torch.float32)
    return out


def quantization_error_bound(num_clients: int, total_weight: float, frac_bits: int = 24) -> float:
    """Worst-case absolute error of [`secure_weighted_mean`] vs. the plain weighted mean (rounding per client)."""
    return num_clients * 0.5 / float(1 << frac_bits) / total_weight
