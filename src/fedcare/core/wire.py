"""The wire format: safetensors for arrays plus a small JSON header. Never pickle.

A message is ``MAGIC | u32 header length | JSON header | safetensors blob``. Array keys in the
blob are ``p/<name>`` for model parameters and ``a/<aux>/<name>`` for auxiliary arrays.
Decoding validates everything against what the receiver expects: a task is checked against the
model layout the site holds, an update against the layout that was sent in its task, and
every number in a header is type-checked and bounded (:mod:`fedcare.core.limits`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedcare.core.errors import ValidationError
from fedcare.core.framing import frame, unframe
from fedcare.core.limits import (
    MAX_COUNT,
    MAX_METRIC,
    MAX_ROUND,
    MAX_SECONDS,
    MAX_SEED,
    check_float,
    check_int,
)
from fedcare.core.messages import ErrorReply, Task, TaskKind, TrainConfig, Update, UpdateKind
from fedcare.core.params import Parameters, ParamSpec, check_finite

MAGIC = b"FEDC1"
MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class ArrayBlob:
    """Arrays already serialised: lets the hub encode a 1 GB model once per round, not per site."""

    blob: bytes
    order: tuple[str, ...]
    aux_order: Mapping[str, tuple[str, ...]]

    @cached_property
    def sha256(self) -> str:
        """The blob's sha256 (hex), computed once however many tasks carry the blob."""
        return hashlib.sha256(self.blob).hexdigest()


@dataclass(frozen=True)
class TaskPayload:
    """An encoded task kept as its two parts: ``head`` (magic, length and this task's JSON
    header) and the exchange's ``arrays``, one object shared by every site's task.

    ``bytes(payload)`` is the wire message. The hub keeps the parts instead: ten sites' tasks
    then hold one copy of a model instead of ten, the arrays are hashed once per exchange
    (:meth:`digest`), and the model is sent from that one copy without being concatenated.
    """

    head: bytes
    arrays: ArrayBlob

    def __bytes__(self) -> bytes:
        return b"".join((self.head, self.arrays.blob))

    def __len__(self) -> int:
        return len(self.head) + len(self.arrays.blob)

    def digest(self) -> str:
        return _digest(hashlib.sha256(self.head).hexdigest(), self.arrays.sha256)


#: The HTTP header a task payload's :func:`payload_digest` travels in (hub to node).
DIGEST_HEADER = "X-Fedcare-Payload-Digest"


def payload_digest(data: bytes | bytearray | memoryview) -> str:
    """The digest a task payload travels with: ``sha256(head):sha256(arrays)``.

    Two sha256s over the two parts of the message rather than one over all of it, so that the
    hub hashes a round's model once instead of once per site. Every byte is covered either
    way; a message that is not framed at all is hashed whole (and fails to decode later).
    """
    view = memoryview(data).cast("B")
    try:
        _, body = unframe(view, MAGIC, what="message", max_header=MAX_HEADER_BYTES)
    except ValidationError:
        return hashlib.sha256(view).hexdigest()
    split = len(view) - len(body)
    return _digest(hashlib.sha256(view[:split]).hexdigest(), hashlib.sha256(body).hexdigest())


def _digest(head_sha: str, arrays_sha: str) -> str:
    return f"{head_sha}:{arrays_sha}"


def pack_arrays(params: Parameters | None, aux: Mapping[str, Parameters]) -> ArrayBlob:
    tensors: dict[str, np.ndarray] = {}
    if params is not None:
        tensors.update({f"p/{k}": np.require(v, requirements='C') for k, v in params.items()})
    for aname, ap in aux.items():
        if "/" in aname:
            raise ValidationError(f"aux name {aname!r} must not contain '/'")
        tensors.update({f"a/{aname}/{k}": np.require(v, requirements='C') for k, v in ap.items()})
    return ArrayBlob(
        blob=st_save(tensors) if tensors else b"",
        order=tuple(params) if params is not None else (),
        aux_order={a: tuple(p) for a, p in aux.items()},
    )


def _pack(header: dict[str, Any], params: Parameters | None,
          aux: Mapping[str, Parameters], arrays: ArrayBlob | None = None) -> bytes:
    return bytes(_pack_parts(header, params, aux, arrays))


def _pack_parts(header: dict[str, Any], params: Parameters | None,
                aux: Mapping[str, Parameters], arrays: ArrayBlob | None = None) -> TaskPayload:
    """A message as (framed header, arrays); :func:`_pack` joins them for every message but
    a task, whose parts the hub keeps apart (see :class:`TaskPayload`)."""
    arrays = arrays if arrays is not None else pack_arrays(params, aux)
    header = dict(header)
    # Order is part of the model's identity; safetensors sorts keys, so we carry it ourselves.
    header["order"] = list(arrays.order)
    header["aux_order"] = {a: list(o) for a, o in arrays.aux_order.items()}
    try:
        return TaskPayload(frame(MAGIC, header), arrays)
    except ValueError as exc:
        raise ValidationError(f"message header holds a non-finite number: {exc}") from exc


@dataclass(frozen=True)
class Framed:
    """A message whose framing and JSON header were read once (:func:`read_message`): the
    decoders take it instead of bytes, so a receiver that looked at the header first (to
    route or check a message) does not parse it again."""

    header: dict[str, Any]
    body: memoryview
    size: int


def read_message(data: bytes | bytearray | memoryview | Framed) -> Framed:
    """The message's header and array body, its header parsed once."""
    if isinstance(data, Framed):
        return data
    header, body = unframe(data, MAGIC, what="message", max_header=MAX_HEADER_BYTES)
    return Framed(header, body, len(data))


def _unpack(data: bytes | Framed
            ) -> tuple[dict[str, Any], Parameters | None, dict[str, Parameters]]:
    msg = read_message(data)
    header, body = msg.header, msg.body
    try:
        tensors = st_load(bytes(body)) if len(body) else {}
    except Exception as exc:  # safetensors raises its own SafetensorError / ValueError
        raise ValidationError(f"array payload is corrupt: {exc}") from exc
    order = header.get("order", [])
    aux_order = header.get("aux_order", {})
    if (not isinstance(order, list) or not isinstance(aux_order, dict)
            or not all(isinstance(k, str) for k in order)
            or not all(isinstance(names, list) and all(isinstance(k, str) for k in names)
                       for names in aux_order.values())):
        raise ValidationError("message header has a malformed array order")
    expected = {f"p/{k}" for k in order} | {
        f"a/{a}/{k}" for a, names in aux_order.items() for k in names}
    if set(tensors) != expected:
        raise ValidationError("array payload does not match the header's array list")
    params = Parameters({k: tensors[f"p/{k}"] for k in order}) if order else None
    # Aux arrays may be integer protocol messages; a strategy's aux is still checked
    # against its float spec by the receiver.
    aux = {a: Parameters({k: tensors[f"a/{a}/{k}"] for k in names}, allow_integer=True)
           for a, names in aux_order.items()}
    return header, params, aux


def peek_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a message without touching its arrays (routing, bookkeeping)."""
    return read_message(data).header


def _require(header: Mapping[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise ValidationError(f"message header field {key!r} is missing or has the wrong type")
    return value


def _bounded_int(header: Mapping[str, Any], key: str, low: int, high: int) -> int:
    """A header integer in ``low..high`` (bounds: :mod:`fedcare.core.limits`). Every numeric
    field of every message goes through this or :func:`_bounded_float`: a site's
    ``num_examples = 10**400`` once made the hub's ``float()`` overflow and fail the study."""
    try:
        return check_int(header.get(key), f"message header field {key!r}", low, high)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _bounded_float(header: Mapping[str, Any], key: str, low: float, high: float) -> float:
    try:
        return check_float(header.get(key), f"message header field {key!r}", low, high)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _finite_metrics(raw: Any, what: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ValidationError(f"{what} must be an object")
    out: dict[str, float] = {}
    for k, v in raw.items():
        try:
            out[str(k)] = check_float(v, f"{what} {str(k)[:100]!r}", -MAX_METRIC, MAX_METRIC)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
    return out


def _check_meta_numbers(meta: Mapping[str, Any]) -> None:
    """Every number in a task's ``meta`` (protocol facts such as a DP round's site count) is
    a count in ``0..MAX_COUNT`` or a finite float within ``MAX_METRIC``; the protocols that
    read them check their exact meaning."""
    stack: list[Any] = [meta]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        else:
            try:
                if isinstance(value, int):
                    check_int(value, "a number in task header field 'meta'", 0, MAX_COUNT)
                else:
                    check_float(value, "a number in task header field 'meta'",
                                -MAX_METRIC, MAX_METRIC)
            except ValueError as exc:
                raise ValidationError(str(exc)) from None


def encode_task(task: Task, *, arrays: ArrayBlob | None = None) -> bytes:
    """Encode a task; ``arrays`` (from :func:`pack_arrays`) reuses a model serialised once."""
    return bytes(encode_task_payload(task, arrays=arrays))


def encode_task_payload(task: Task, *, arrays: ArrayBlob | None = None) -> TaskPayload:
    """Encode a task as its parts (see :class:`TaskPayload`)."""
    header = {
        "type": "task", "task_id": task.task_id, "study": task.study, "round": task.round,
        "site": task.site, "kind": task.kind.value, "train": task.train.to_json(),
        "seed": task.seed, "evaluate": task.evaluate, "strategy": task.strategy,
    }
    if task.meta:
        header["meta"] = dict(task.meta)
    return _pack_parts(header, task.parameters, task.aux, arrays)


def decode_task(data: bytes | Framed, expected: ParamSpec | None = None) -> Task:
    """Decode a task; when the site knows its model layout, check the parameters against it."""
    header, params, aux = _unpack(data)
    if header.get("type") != "task":
        raise ValidationError("message is not a task")
    try:
        kind = TaskKind(_require(header, "kind", str))
        train = TrainConfig.from_json(_require(header, "train", dict))
    except ValidationError as exc:
        raise ValidationError(f"task header is invalid: {exc.message}") from exc
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"task header is invalid: {exc}") from exc
    if kind.is_protocol_step:
        # Protocol steps carry protocol messages (validated by the protocol), no model.
        if params:
            raise ValidationError(f"a {kind.value} task must not carry model parameters")
        params = Parameters({})
    elif params is None:
        raise ValidationError("task carries no model parameters")
    elif expected is not None:
        expected.validate(params, what="task parameters")
    else:
        check_finite(params, what="task parameters")
    for a in aux.values():
        check_finite(a, what="task auxiliary arrays")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ValidationError("task header field 'meta' must be an object")
    _check_meta_numbers(meta)
    return Task(
        task_id=_require(header, "task_id", str), study=_require(header, "study", str),
        round=_bounded_int(header, "round", 0, MAX_ROUND), site=_require(header, "site", str),
        kind=kind, parameters=params, train=train, aux=aux,
        seed=_bounded_int(header, "seed", 0, MAX_SEED),
        evaluate=_require(header, "evaluate", bool), strategy=_require(header, "strategy", str),
        meta=meta,
    )


def encode_update(update: Update) -> bytes:
    header = {
        "type": "update", "task_id": update.task_id, "site": update.site,
        "round": update.round, "kind": update.kind.value, "num_examples": update.num_examples,
        "metrics": dict(update.metrics), "eval_metrics": dict(update.eval_metrics),
        "num_eval_examples": update.num_eval_examples,
        "provenance": list(update.provenance), "seconds": update.seconds,
    }
    return _pack(header, update.parameters, update.aux)


def decode_update(data: bytes | Framed, expected: ParamSpec,
                  expected_aux: Mapping[str, ParamSpec | None] | None = None,
                  site: str | None = None) -> Update:
    """Decode a site's update and validate it against the layout that was sent to it.

    An ``expected_aux`` entry of ``None`` accepts any arrays under that name: a protocol
    message whose layout varies (secure-aggregation shares, ciphertexts) and that its
    protocol validates strictly when it parses them."""
    try:
        header, params, aux = _unpack(data)
        if header.get("type") != "update":
            raise ValidationError("message is not an update")
        if params is None:
            params = Parameters({})  # an evaluation-only reply carries metrics, no arrays
        expected.validate(params, what="update parameters")
        for name, spec in (expected_aux or {}).items():
            if name not in aux:
                raise ValidationError(f"update lacks auxiliary arrays {name!r}")
            if spec is not None:
                spec.validate(aux[name], what=f"auxiliary arrays {name!r}")
        extra_aux = set(aux) - set(expected_aux or {})
        if extra_aux:
            raise ValidationError(f"update carries unexpected auxiliary arrays {sorted(extra_aux)}")
        num = _bounded_int(header, "num_examples", 0, MAX_COUNT)
        try:
            kind = UpdateKind(_require(header, "kind", str))
        except ValueError as exc:
            raise ValidationError(f"unknown update kind: {exc}") from exc
        provenance = header.get("provenance", [])
        if not isinstance(provenance, list) or not all(isinstance(p, str) for p in provenance):
            raise ValidationError("provenance must be a list of strings")
        seconds = _bounded_float({"seconds": header.get("seconds", 0.0)}, "seconds", 0.0,
                                 MAX_SECONDS)
        return Update(
            task_id=_require(header, "task_id", str), site=_require(header, "site", str),
            round=_bounded_int(header, "round", 0, MAX_ROUND), kind=kind, parameters=params,
            num_examples=num, metrics=_finite_metrics(header.get("metrics", {}), "metric"),
            eval_metrics=_finite_metrics(header.get("eval_metrics", {}), "evaluation metric"),
            num_eval_examples=_bounded_int(header, "num_eval_examples", 0, MAX_COUNT),
            aux=aux, provenance=tuple(provenance), seconds=seconds,
        )
    except ValidationError as exc:
        if site is not None and exc.site is None:
            raise ValidationError(exc.message, site=site) from exc
        raise


def encode_error(reply: ErrorReply) -> bytes:
    header = {"type": "error", "task_id": reply.task_id, "site": reply.site,
              "round": reply.round, "error_type": reply.error_type, "message": reply.message}
    return _pack(header, None, {})


def decode_reply(data: bytes | Framed, expected: ParamSpec,
                 expected_aux: Mapping[str, ParamSpec | None] | None = None,
                 site: str | None = None) -> Update | ErrorReply:
    """Decode what a site sent back: either an update or an error reply (the header says
    which; only an update's arrays are loaded, once; the header is parsed once)."""
    msg = read_message(data)
    header = msg.header
    if header.get("type") == "error":
        if len(msg.body):
            raise ValidationError("an error reply must not carry arrays", site=site)
        try:
            # Round -1: a site that could not even decode the task answers without one.
            return ErrorReply(
                task_id=_require(header, "task_id", str), site=_require(header, "site", str),
                round=_bounded_int(header, "round", -1, MAX_ROUND),
                error_type=_require(header, "error_type", str),
                message=_require(header, "message", str))
        except ValidationError as exc:
            raise ValidationError(exc.message, site=site) from exc
    return decode_update(msg, expected, expected_aux, site=site)


@dataclass(frozen=True)
class ReplyExpectation:
    """What the replies of one exchange must look like: the model layout of an update
    (``spec``; empty when only metrics or protocol messages come back) and its auxiliary
    arrays (``aux``: name -> layout, ``None`` accepting any arrays a protocol validates
    itself). Made by the round engine, which holds the layout, and handed to the transport
    with the tasks: whoever receives a reply validates it with this, nothing re-derives it."""

    spec: ParamSpec
    aux: Mapping[str, ParamSpec | None] = field(default_factory=dict)

    def decode(self, data: bytes | Framed, site: str | None = None) -> Update | ErrorReply:
        """The reply, fully validated (:func:`decode_reply`)."""
        return decode_reply(data, self.spec, self.aux, site=site)


# --- stored models and checkpoints ----------------------------------------------------------
#: Prefix of the extra arrays (e.g. a strategy's state) stored beside a model's parameters.
EXTRA_PREFIX = "__extra__/"


@dataclass(frozen=True)
class StoredParameters:
    parameters: Parameters
    extra: dict[str, np.ndarray]
    metadata: dict[str, str]


def save_parameters(params: Parameters, *, extra: Mapping[str, np.ndarray] | None = None,
                    metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file of ``params`` under their own names (loadable by any safetensors
    reader), plus ``extra`` arrays and string metadata. The parameters' order, which
    safetensors does not keep, is stored in the metadata."""
    tensors = {k: np.require(v, requirements="C") for k, v in params.items()}
    for k, v in (extra or {}).items():
        tensors[EXTRA_PREFIX + k] = np.require(v, requirements="C")
    meta = {**(metadata or {}), "order": json.dumps(list(params))}
    return bytes(st_save(tensors, metadata=meta))


def load_parameters(raw: bytes) -> StoredParameters:
    """Inverse of :func:`save_parameters`; raises :class:`ValidationError` on a bad file."""
    try:
        tensors = st_load(raw)
        # The numpy API returns only arrays; the metadata sits in the JSON header that
        # follows the 8-byte little-endian header length.
        n = int.from_bytes(raw[:8], "little")
        metadata = dict(json.loads(raw[8:8 + n]).get("__metadata__") or {})
        order = json.loads(metadata.pop("order"))
        params = Parameters({k: tensors[k] for k in order})
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ValidationError(f"stored model is unreadable: {exc}") from exc
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return StoredParameters(params, extra, metadata)
