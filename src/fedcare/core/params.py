"""Model parameters as an ordered mapping name -> numpy array, and their expected layout.

Frameworks (PyTorch, scikit-learn) are converted at the learner boundary so that strategies,
privacy filters and transports only ever see numpy. A :class:`ParamSpec` is what a receiver
expects (names, shapes, dtypes, in order); every decode is validated against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcare.core.errors import ValidationError

#: dtypes a parameter may have. Floating only: aggregation averages, and an integer buffer
#: (e.g. BatchNorm's step counter) has no meaningful federated average.
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64"})
_NP_DTYPES = {np.dtype(name): name for name in ALLOWED_DTYPES}
#: Extra dtypes an auxiliary array may have: protocol messages (secure-aggregation masks in
#: Z_2^k, key bytes, ciphertexts) are integers, and are never averaged as a model.
_INTEGER_DTYPES = frozenset(np.dtype(n) for n in ("uint8", "uint32", "uint64", "int32",
                                                  "int64"))


def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)`` is slow (~10 us); names of the allowed dtypes are looked up instead."""
    return _NP_DTYPES.get(dtype) or str(dtype)


@dataclass(frozen=True)
class ArraySpec:
    """Expected shape and dtype of one named array."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class ParamSpec(Mapping[str, ArraySpec]):
    """Ordered expected layout of a set of parameters."""

    def __init__(self, items: Mapping[str, ArraySpec]) -> None:
        self._items = dict(items)

    @classmethod
    def of(cls, params: Mapping[str, np.ndarray]) -> ParamSpec:
        return cls({k: ArraySpec(tuple(v.shape), _dtype_name(v.dtype)) for k, v in params.items()})

    def __getitem__(self, key: str) -> ArraySpec:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSpec) and list(self._items.items()) == list(
            other._items.items()
        )

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    @property
    def total_size(self) -> int:
        return sum(s.size for s in self._items.values())

    @property
    def nbytes(self) -> int:
        return sum(s.size * np.dtype(s.dtype).itemsize for s in self._items.values())

    def to_json(self) -> dict[str, list[object]]:
        return {k: [list(s.shape), s.dtype] for k, s in self._items.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParamSpec:
        return cls({k: ArraySpec(tuple(int(d) for d in v[0]), str(v[1])) for k, v in data.items()})

    def validate(self, arrays: Mapping[str, np.ndarray], *, what: str = "parameters",
                 site: str | None = None) -> None:
        """Raise :class:`ValidationError` naming every mismatch against this spec."""
        problems: list[str] = []
        missing = [k for k in self._items if k not in arrays]
        extra = [k for k in arrays if k not in self._items]
        if missing:
            problems.append(f"missing {missing}")
        if extra:
            problems.append(f"unexpected {extra}")
        for name, spec in self._items.items():
            arr = arrays.get(name)
            if arr is None:
                continue
            if tuple(arr.shape) != spec.shape:
                problems.append(f"{name!r} has shape {tuple(arr.shape)}, expected {spec.shape}")
            if _dtype_name(arr.dtype) != spec.dtype:
                problems.append(f"{name!r} has dtype {arr.dtype}, expected {spec.dtype}")
        if problems:
            raise ValidationError(f"{what} do not match the expected layout: "
                                  + "; ".join(problems), site=site)
        check_finite(arrays, what=what, site=site)


def check_finite(arrays: Mapping[str, np.ndarray], *, what: str = "parameters",
                 site: str | None = None) -> None:
    """Reject NaN/Inf: one non-finite value from one site would poison the global model."""
    bad = [k for k, v in arrays.items() if v.size and not np.isfinite(v).all()]
    if bad:
        raise ValidationError(f"{what} contain NaN or Inf in {bad}", site=site)


class Parameters(Mapping[str, np.ndarray]):
    """Immutable ordered mapping of parameter name -> numpy array.

    Arrays are made read-only so that nobody (a strategy, a filter) mutates a model another
    party still holds; produce new Parameters instead.
    """

    __slots__ = ("_arrays",)

    def __init__(self, arrays: Mapping[str, np.ndarray], *, allow_integer: bool = False
                 ) -> None:
        items: dict[str, np.ndarray] = {}
        for name, value in arrays.items():
            if not isinstance(name, str) or not name:
                raise ValidationError(f"parameter names must be non-empty strings, got {name!r}")
            arr = np.asarray(value)
            if arr.dtype not in _NP_DTYPES and not (allow_integer
                                                    and arr.dtype in _INTEGER_DTYPES):
                raise ValidationError(
                    f"parameter {name!r} has dtype {arr.dtype}; only {sorted(ALLOWED_DTYPES)} "
                    "are supported")
            if arr.flags.writeable:
                arr = arr.view()
                arr.flags.writeable = False
            items[name] = arr
        self._arrays = items

    def __getitem__(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return f"Parameters({len(self)} arrays, {self.spec.total_size} values)"

    @property
    def spec(self) -> ParamSpec:
        return ParamSpec.of(self._arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def copy(self) -> Parameters:
        return Parameters({k: v.copy() for k, v in self._arrays.items()})

    def allclose(self, other: Mapping[str, np.ndarray], *, rtol: float = 1e-5,
                 atol: float = 1e-7) -> bool:
        return list(self) == list(other) and all(
            np.allclose(self[k], other[k], rtol=rtol, atol=atol) for k in self)

    def flatten(self, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Concatenate all arrays into one 1-D vector (in order)."""
        dt = np.dtype(dtype) if dtype is not None else np.result_type(*self._arrays.values())
        out = np.empty(self.spec.total_size, dtype=dt)
        pos = 0
        for arr in self._arrays.values():
            out[pos:pos + arr.size] = arr.reshape(-1)
            pos += arr.size
        return out

    @classmethod
    def unflatten(cls, flat: np.ndarray, spec: ParamSpec) -> Parameters:
        """Split a 1-D vector back into named arrays (views when the dtype already matches)."""
        if flat.ndim != 1 or flat.size != spec.total_size:
            raise ValidationError(
                f"flat vector has {flat.size} values, layout expects {spec.total_size}")
        out: dict[str, np.ndarray] = {}
        pos = 0
        for name, s in spec.items():
            piece = flat[pos:pos + s.size].reshape(s.shape)
            out[name] = piece if str(piece.dtype) == s.dtype else piece.astype(s.dtype)
            pos += s.size
        return cls(out)
