"""The one way fedcare declares a settings file or section: a frozen pydantic model that
refuses unknown keys.

Every plugin (strategy, model, data source) declares its options as a subclass of
:class:`Section`, once: the declaration gives the validation, the error message, the config
reference and ``--help`` (scikit-learn's ``_parameter_constraints`` idea, with pydantic doing
the checking). The study schema (:mod:`fedcare.config`) assembles these sections; lower layers
receive the validated section itself instead of restating its rules in a second dataclass.
"""

from __future__ import annotations

import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

from fedcare.core.errors import ConfigError


class Section(BaseModel):
    """A frozen settings section: unknown keys are an error, never silently ignored."""

    # Non-finite numbers are refused in every section (audit F21: ``lr = inf`` failed late).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``Optional``), else ()."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    values: tuple[Any, ...] = ()
    for arg in typing.get_args(annotation):
        values += literal_values(arg)
    return values


_TYPE_NAMES = frozenset({"int", "float", "str", "bool", "none", "list", "dict"})


def _is_member_label(part: Any) -> bool:
    """Whether a path element names the member of a plain union a value was tried against
    ("list[str]", "literal['any']", "constrained-int", "int"): no user ever wrote it."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_NAMES
                                      or part.startswith("constrained-"))


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than",
                           "less_than_equal", "finite_number"})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The settings models an annotation holds (through Annotated, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def field_at(root: Any, loc: Sequence[Any]) -> FieldInfo | None:
    """The declaration of the key an error's ``loc`` points at, under the model ``root``
    (following nested sections, and the tag of a discriminated union); None if unknown."""
    candidates, field = _models_in(root), None
    for part in loc:
        if isinstance(part, int):
            continue
        owner = next((m for m in candidates if part in m.model_fields), None)
        if owner is not None:
            field = owner.model_fields[part]
            candidates = _models_in(field.annotation)
            continue
        tagged = [m for m in candidates if any(part in literal_values(f.annotation)
                                               for f in m.model_fields.values())]
        if not tagged:
            return field if _is_member_label(part) else None
        candidates = tagged
    return field


def valid_range(field: FieldInfo | None) -> str | None:
    """'valid range ...' of a numeric key from its declared bounds, so that an error names
    both ends, not only the one crossed."""
    if field is None:
        return None
    low = high = None
    low_open = high_open = False
    for c in field.metadata:
        if getattr(c, "ge", None) is not None:
            low = c.ge
        if getattr(c, "gt", None) is not None:
            low, low_open = c.gt, True
        if getattr(c, "le", None) is not None:
            high = c.le
        if getattr(c, "lt", None) is not None:
            high, high_open = c.lt, True
    if low is None or high is None:
        return None
    if isinstance(low, int) and isinstance(high, int) and not (low_open or high_open):
        return f"valid range {low}..{high}"
    return f"valid range {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def format_error(err: Mapping[str, Any], tags: Collection[str] = (),
                 root: Any = None) -> str:
    """One pydantic error as a line that names the key the user wrote (``strategy.mu``).

    ``tags``: the discriminator values of the schema's unions (``"fedprox"``, ``"csv"``), which
    pydantic puts in an error's path although no user ever wrote them."""
    parts = list(err["loc"])
    # The first tag in the path is the union's; a later one is a key the user wrote that
    # happens to share a tag's name (an omop source's ``omop`` key).
    first = next((i for i, p in enumerate(parts) if isinstance(p, str) and p in tags), None)
    if first is not None:
        del parts[first]
    # A plain union's member is in the path too ("list[str]", "literal['any']", "int").
    parts = [p for p in parts if not _is_member_label(p)]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts)
    loc = loc.replace(".[", "[")
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc}'"
    if kind == "missing":
        return f"missing key '{loc}'"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return (f"'{loc}.{ctx.get('discriminator', '').strip(chr(39))}': "
                f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}")
    if kind == "literal_error":
        return f"'{loc}': {err['msg']}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) else ""
    if isinstance(got, int) and abs(got) >= 10**30:
        shown = f" (got an integer of {len(str(abs(got)))} digits)"
    numeric = isinstance(got, (int, float)) and not isinstance(got, bool)
    bound = valid_range(field_at(root, err["loc"])) if root is not None else None
    if bound is not None and (kind in _RANGE_ERRORS or numeric):
        shown += f"; {bound}"
    return f"'{loc}': {msg}{shown}"


def validate_section(model: Any, data: Any, *, source: str | None = None,
                     tags: Collection[str] = ()) -> Any:
    """``model`` (a :class:`Section` or a pydantic ``TypeAdapter``) validating ``data``; every
    problem becomes one line of a :class:`~fedcare.core.errors.ConfigError`."""
    import pydantic

    try:
        if isinstance(model, pydantic.TypeAdapter):
            return model.validate_python(data)
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        root = None if isinstance(model, pydantic.TypeAdapter) else model
        problems = list(dict.fromkeys(format_error(e, tags, root) for e in exc.errors()))
        raise ConfigError(problems, source=source) from None


def load_toml(path: Path, model: Any, *, what: str, tags: Collection[str] = (),
              extra: Mapping[str, Any] | None = None) -> Any:
    """Read the TOML file ``path`` (a ``what``, for messages) into ``model``, the one way
    fedcare reads its settings files; ``extra`` adds keys the file does not hold (its
    folder, say)."""
    from fedcare.core.files import read_toml

    raw = read_toml(Path(path), what)
    return validate_section(model, {**raw, **(extra or {})}, source=str(path), tags=tags)
