"""Every numeric field of every wire message is bounded (audit F1).

A site's reply with ``num_examples = 10**400`` (a valid JSON integer) used to pass the decoder
and make the hub's ``float()`` raise ``OverflowError``, failing the whole study. These property
tests put out-of-range, huge, negative, non-finite, bool and wrong-typed values into each
numeric header field of a task, an update, an error reply and a task's training config, and
check the decoder answers with :class:`ValidationError` - never another exception - while
every in-range value still decodes. A fuzz of random header JSON checks the same contract.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcare.core import Parameters, Task, TrainConfig, Update, UpdateKind, ValidationError
from fedcare.core.framing import unframe
from fedcare.core.limits import (
    MAX_BATCH_SIZE,
    MAX_COUNT,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_LR,
    MAX_METRIC,
    MAX_PROXIMAL_MU,
    MAX_ROUND,
    MAX_SECONDS,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
)
from fedcare.core.messages import ErrorReply, TaskKind
from fedcare.core.wire import (
    MAGIC,
    decode_reply,
    decode_task,
    decode_update,
    encode_error,
    encode_task,
    encode_update,
)

PARAMS = Parameters({"w": np.arange(3, dtype=np.float32)})
SPEC = PARAMS.spec


@dataclass(frozen=True)
class Field:
    """A numeric header field: where it is (a path into the header) and its valid range."""

    message: str  # "task", "update" or "error"
    path: tuple[str, ...]
    kind: str  # "int" or "float"
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    #: False for ``meta``: any JSON value may sit there (its protocol checks the type), but
    #: every number in it is bounded.
    typed: bool = True

    @property
    def name(self) -> str:
        return f"{self.message}:{'.'.join(self.path)}"


FIELDS = [
    Field("task", ("round",), "int", 0, MAX_ROUND),
    Field("task", ("seed",), "int", 0, MAX_SEED),
    Field("task", ("train", "local_epochs"), "int", 0, MAX_LOCAL_EPOCHS),
    Field("task", ("train", "local_steps"), "int", 0, MAX_LOCAL_STEPS),
    Field("task", ("train", "batch_size"), "int", 1, MAX_BATCH_SIZE),
    Field("task", ("train", "lr"), "float", 0, MAX_LR, low_open=True),
    Field("task", ("train", "momentum"), "float", 0, 1, high_open=True),
    Field("task", ("train", "weight_decay"), "float", 0, MAX_WEIGHT_DECAY),
    Field("task", ("train", "proximal_mu"), "float", 0, MAX_PROXIMAL_MU),
    Field("task", ("meta", "dp_sites"), "int", 0, MAX_COUNT, typed=False),
    Field("update", ("round",), "int", 0, MAX_ROUND),
    Field("update", ("num_examples",), "int", 0, MAX_COUNT),
    Field("update", ("num_eval_examples",), "int", 0, MAX_COUNT),
    Field("update", ("seconds",), "float", 0, MAX_SECONDS),
    Field("update", ("metrics", "train_loss"), "float", -MAX_METRIC, MAX_METRIC),
    Field("update", ("eval_metrics", "accuracy"), "float", -MAX_METRIC, MAX_METRIC),
    Field("error", ("round",), "int", -1, MAX_ROUND),
]


def _task(kind: TaskKind = TaskKind.FIT) -> bytes:
    return encode_task(Task(task_id="s/r1/fit/a", study="s", round=1, site="a", kind=kind,
                            parameters=PARAMS, train=TrainConfig(local_steps=2), seed=7,
                            meta={"dp_sites": 2}))


def _update() -> bytes:
    return encode_update(Update(task_id="s/r1/fit/a", site="a", round=1, kind=UpdateKind.FULL,
                                parameters=PARAMS, num_examples=10,
                                metrics={"train_loss": 0.5}, eval_metrics={"accuracy": 0.9},
                                num_eval_examples=4, seconds=1.5))


def _error() -> bytes:
    return encode_error(ErrorReply("s/r1/fit/a", "a", 1, "Refused", "no"))


BASE = {"task": _task(), "update": _update(), "error": _error()}


def _reframe(data: bytes, header: dict[str, Any]) -> bytes:
    """``data`` with its JSON header replaced (non-finite numbers written as JSON extensions
    ``NaN``/``Infinity``, which Python's and most parsers read)."""
    _, body = unframe(data, MAGIC, what="message", max_header=1 << 20)
    hb = json.dumps(header, allow_nan=True).encode()
    return MAGIC + struct.pack("<I", len(hb)) + hb + bytes(body)


def _with(field: Field, value: Any) -> bytes:
    data = BASE[field.message]
    header, _ = unframe(data, MAGIC, what="message", max_header=1 << 20)
    node = header
    for key in field.path[:-1]:
        node = node[key]
    node[field.path[-1]] = value
    return _reframe(data, header)


def _decoder(message: str) -> Callable[[bytes], Any]:
    if message == "task":
        return lambda b: decode_task(b, SPEC)
    if message == "update":
        return lambda b: decode_update(b, SPEC, site="a")
    return lambda b: decode_reply(b, SPEC, site="a")


def _read(decoded: Any, field: Field) -> Any:
    node: Any = decoded
    for key in field.path:
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    return node


# -- out-of-range values -------------------------------------------------------------------
_WRONG_TYPES = st.one_of(
    st.booleans(), st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
_HUGE = st.sampled_from([10**400, -(10**400), 10**40, -(10**40)])  # beyond every range


def bad_values(field: Field) -> st.SearchStrategy[Any]:
    """Values a decoder must refuse in ``field``."""
    low, high = field.low, field.high
    if not field.typed:
        return st.one_of(_NON_FINITE, _HUGE, st.integers(max_value=int(low) - 1),
                         st.integers(min_value=int(high) + 1))
    if field.kind == "int":
        return st.one_of(
            _WRONG_TYPES, _NON_FINITE, _HUGE,
            st.floats(allow_nan=True, allow_infinity=True),  # a float is not a count
            st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1))
    below = st.floats(max_value=low, exclude_max=not field.low_open, allow_nan=False)
    above = st.floats(min_value=high, exclude_min=not field.high_open, allow_nan=False)
    return st.one_of(_WRONG_TYPES, _NON_FINITE, _HUGE, below, above,
                     st.integers(max_value=math.floor(low) - 1),
                     st.integers(min_value=math.ceil(high) + 1))


def good_values(field: Field) -> st.SearchStrategy[Any]:
    if field.kind == "int":
        return st.integers(int(field.low), int(field.high))
    return st.floats(field.low, field.high, exclude_min=field.low_open,
                     exclude_max=field.high_open, allow_nan=False)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_numeric_field_refuses_out_of_range_values_with_a_validation_error(
        field: Field, data: st.DataObject) -> None:
    value = data.draw(bad_values(field), label=field.name)
    message = _with(field, value)
    with pytest.raises(ValidationError) as caught:
        _decoder(field.message)(message)
    assert field.path[-1] in caught.value.message or field.path[0] in caught.value.message


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
@settings(max_examples=30)
@given(data=st.data())
def test_every_numeric_field_accepts_its_whole_range(field: Field,
                                                     data: st.DataObject) -> None:
    # the bounds refuse nonsense only: any in-range value decodes and keeps its value
    value = data.draw(good_values(field), label=field.name)
    decoded = _decoder(field.message)(_with(field, value))
    assert _read(decoded, field) == value


def test_the_audit_repro_num_examples_10_pow_400_is_refused_not_an_overflow() -> None:
    # expD2.py: gamma's unchanged model with "num_examples": 10**400
    body = _with(Field("update", ("num_examples",), "int", 0, MAX_COUNT), 10**400)
    with pytest.raises(ValidationError, match=r"num_examples.*0\.\.1099511627776"):
        decode_reply(body, SPEC, site="gamma")


@pytest.mark.parametrize("bad", [{"lr": math.inf}, {"lr": 1e999}, {"lr": 10**400},
                                 {"local_epochs": 10**9}, {"local_epochs": 10**400},
                                 {"batch_size": True}, {"momentum": math.nan},
                                 {"weight_decay": -1.0}, {"proximal_mu": "0.1"},
                                 {"local_steps": 2.0}, {"optimizer": "lbfgs"}])
def test_train_config_from_json_refuses_huge_and_non_finite_values(bad: dict[str, Any]
                                                                   ) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        TrainConfig.from_json(bad)


def test_train_config_turns_integral_floats_fields_into_floats() -> None:
    cfg = TrainConfig.from_json({"lr": 1, "momentum": 0})
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and isinstance(cfg.momentum, float)


# -- fuzz: random header JSON --------------------------------------------------------------
_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12)
_KEYS = ["type", "task_id", "study", "round", "site", "kind", "train", "seed", "evaluate",
         "strategy", "meta", "num_examples", "metrics", "eval_metrics", "num_eval_examples",
         "provenance", "seconds", "error_type", "message", "order", "aux_order"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASE)),
       changes=st.dictionaries(st.sampled_from(_KEYS), _JSON, min_size=1, max_size=4),
       drop=st.lists(st.sampled_from(_KEYS), max_size=2))
def test_random_header_json_gives_a_message_or_a_validation_error(
        base: str, changes: dict[str, Any], drop: list[str]) -> None:
    header, _ = unframe(BASE[base], MAGIC, what="message", max_header=1 << 20)
    header.update(changes)
    for key in drop:
        header.pop(key, None)
    message = _reframe(BASE[base], header)
    for decode in (lambda b: decode_task(b, SPEC), lambda b: decode_task(b),
                   lambda b: decode_update(b, SPEC), lambda b: decode_reply(b, SPEC)):
        try:
            decoded = decode(message)
        except ValidationError:
            continue
        _assert_bounded(decoded)


@settings(max_examples=200)
@given(raw=st.binary(max_size=64), hlen=st.integers(0, 2**32 - 1))
def test_random_bytes_give_a_validation_error(raw: bytes, hlen: int) -> None:
    for message in (raw, MAGIC + raw, MAGIC + struct.pack("<I", hlen) + raw):
        for decode in (lambda b: decode_task(b, SPEC), lambda b: decode_reply(b, SPEC)):
            with pytest.raises(ValidationError):
                decode(message)


def test_a_deeply_nested_header_is_a_validation_error() -> None:
    hb = b"[" * 200_000
    with pytest.raises(ValidationError, match="nested too deeply"):
        decode_reply(MAGIC + struct.pack("<I", len(hb)) + hb, SPEC)


def _assert_bounded(decoded: Task | Update | ErrorReply) -> None:
    """Whatever decodes holds only in-range numbers (so the engine can do arithmetic)."""
    if isinstance(decoded, Task):
        assert 0 <= decoded.round <= MAX_ROUND and 0 <= decoded.seed <= MAX_SEED
        assert 0 < decoded.train.lr <= MAX_LR
        return
    assert -1 <= decoded.round <= MAX_ROUND
    if isinstance(decoded, Update):
        assert 0 <= decoded.num_examples <= MAX_COUNT
        assert 0 <= decoded.num_eval_examples <= MAX_COUNT
        assert 0 <= decoded.seconds <= MAX_SECONDS
        for v in [*decoded.metrics.values(), *decoded.eval_metrics.values()]:
            assert math.isfinite(v) and abs(v) <= MAX_METRIC
        float(decoded.num_examples)  # the conversion that overflowed (F1)
