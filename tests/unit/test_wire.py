"""The wire format: round trips, and every malformed input is refused with a clear error."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.core import Parameters, Task, TrainConfig, Update, UpdateKind, ValidationError
from fedcare.core.messages import ErrorReply, TaskKind
from fedcare.core.wire import (
    decode_reply,
    decode_task,
    decode_update,
    encode_error,
    encode_task,
    encode_task_payload,
    encode_update,
    pack_arrays,
    payload_digest,
)


def _params() -> Parameters:
    return Parameters({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                       "b": np.zeros(2, np.float32)})


def _update(params: Parameters, **kw: object) -> Update:
    base = {"task_id": "t", "site": "a", "round": 1, "kind": UpdateKind.FULL, "parameters": params,
                "num_examples": 10, "metrics": {"train_loss": 0.5}}
    base.update(kw)
    return Update(**base)  # type: ignore[arg-type]


def test_task_round_trip_keeps_order_and_config() -> None:
    p = _params()
    task = Task("t1", "s", 3, "site-a", TaskKind.FIT, p, TrainConfig(lr=0.5, batch_size=7),
                aux={"c": p}, seed=9, evaluate=False, strategy="scaffold")
    back = decode_task(encode_task(task), p.spec)
    assert list(back.parameters) == ["w", "b"]
    assert back.parameters.allclose(p) and back.aux["c"].allclose(p)
    assert back.train == task.train and back.seed == 9 and back.evaluate is False
    assert back.strategy == "scaffold" and back.round == 3


def test_encode_task_with_shared_array_blob_equals_plain_encoding() -> None:
    p = _params()
    task = Task("t1", "s", 1, "a", TaskKind.FIT, p)
    assert encode_task(task, arrays=pack_arrays(p, {})) == encode_task(task)


def test_task_payload_parts_are_the_message_and_share_one_array_blob() -> None:
    p = _params()
    arrays = pack_arrays(p, {})
    parts = {site: encode_task_payload(Task(f"s/r1/fit/{site}", "s", 1, site, TaskKind.FIT, p),
                                       arrays=arrays) for site in ("a", "b")}
    for site, part in parts.items():
        whole = encode_task(Task(f"s/r1/fit/{site}", "s", 1, site, TaskKind.FIT, p))
        assert bytes(part) == whole and len(part) == len(whole)
        assert part.digest() == payload_digest(whole)
        assert decode_task(bytes(part), p.spec).site == site
    assert parts["a"].arrays.blob is parts["b"].arrays.blob  # one copy of the model


@given(st.data())
def test_payload_digest_changes_with_any_byte(data: st.DataObject) -> None:
    whole = encode_task(Task("t", "s", 1, "a", TaskKind.FIT, _params()))
    at = data.draw(st.integers(0, len(whole) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(whole)
    changed[at] ^= flip
    assert payload_digest(bytes(changed)) != payload_digest(whole)


def test_payload_digest_of_bytes_that_are_no_message_hashes_them_whole() -> None:
    import hashlib

    assert payload_digest(b"not a message") == hashlib.sha256(b"not a message").hexdigest()


def test_update_round_trip() -> None:
    p = _params()
    back = decode_update(encode_update(_update(p)), p.spec)
    assert back.parameters.allclose(p) and back.metrics == {"train_loss": 0.5}


@pytest.mark.parametrize("bad, message", [
    ({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "shape"),
    ({"w": np.zeros((2, 3), np.float64), "b": np.zeros(2, np.float32)}, "dtype"),
    ({"w": np.zeros((2, 3), np.float32)}, "missing"),
    ({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32),
      "x": np.zeros(1, np.float32)}, "unexpected"),
    ({"w": np.full((2, 3), np.nan, np.float32), "b": np.zeros(2, np.float32)}, "NaN"),
    ({"w": np.full((2, 3), np.inf, np.float32), "b": np.zeros(2, np.float32)}, "Inf"),
])
def test_update_with_wrong_layout_or_non_finite_values_is_rejected(bad: dict, message: str
                                                                   ) -> None:
    data = encode_update(_update(Parameters(bad)))
    with pytest.raises(ValidationError, match=message) as info:
        decode_update(data, _params().spec, site="hospital-b")
    assert info.value.site == "hospital-b"


def test_truncated_and_garbage_messages_are_rejected() -> None:
    data = encode_update(_update(_params()))
    for broken in (data[:3], data[:20], data[:-5], b"garbage" * 10, b""):
        with pytest.raises(ValidationError):
            decode_update(broken, _params().spec)


def test_non_finite_metric_is_rejected_on_both_sides() -> None:
    p = _params()
    with pytest.raises(ValidationError, match="non-finite"):
        encode_update(_update(p, metrics={"train_loss": float("nan")}))
    data = encode_update(_update(p, metrics={"train_loss": 12345.0}))
    forged = data.replace(b"12345.0", b"NaN    ")  # JSON parsers accept NaN; we must not
    with pytest.raises(ValidationError, match="finite"):
        decode_update(forged, p.spec)


def test_error_reply_round_trip() -> None:
    reply = ErrorReply("t", "a", 2, "DataError", "no rows")
    back = decode_reply(encode_error(reply), _params().spec)
    assert back == reply
    with pytest.raises(ValidationError, match="must not carry arrays"):
        decode_reply(encode_error(reply) + b"\0" * 16, _params().spec)


def test_task_is_not_an_update() -> None:
    p = _params()
    with pytest.raises(ValidationError, match="not an update"):
        decode_update(encode_task(Task("t", "s", 1, "a", TaskKind.FIT, p)), p.spec)


@given(st.binary(max_size=400))
def test_decoder_never_crashes_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ValidationError):
        decode_reply(data, _params().spec)


@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_decoder_never_crashes_on_corrupted_valid_messages(pos: int, junk: bytes) -> None:
    data = bytearray(encode_update(_update(_params())))
    pos = pos % len(data)
    data[pos:pos + len(junk)] = junk
    with contextlib.suppress(ValidationError):
        decode_update(bytes(data), _params().spec)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
                  elements=st.floats(-1e6, 1e6, width=32)))
def test_any_finite_array_round_trips_exactly(arr: np.ndarray) -> None:
    p = Parameters({"x": arr})
    back = decode_update(encode_update(_update(p)), p.spec)
    assert back.parameters["x"].shape == arr.shape
    np.testing.assert_array_equal(back.parameters["x"], arr)
