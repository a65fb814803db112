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
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fedcare.core.errors import ConfigError


class Section(BaseModel):
    """A frozen settings section: unknown keys are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``Optional``), else ()."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    values: tuple[Any, ...] = ()
    for arg in typing.get_args(annotation):
        values += literal_values(arg)
    return values


def allowed(annotation: Any, description: str) -> str:
    """A choice's description with every allowed value, unless it lists them already."""
    values = [str(v) for v in literal_values(annotation)]
    if len(values) < 2 or all(v in description for v in values):
        return description
    return f"{description} One of: {', '.join(values)}."


#: One row of a settings file's reference: (key as the user writes it, default, meaning).
ReferenceRow = tuple[str, str, str]


def reference_rows(model: type[BaseModel], prefix: str = "", *,
                   recurse: bool = True) -> list[ReferenceRow]:
    """Every key of ``model`` (a settings file or section), with its default and its
    description (choices list their allowed values): the generated reference of a file.

    With ``recurse``, the keys of nested tables follow their parent's row, spelled as the
    user writes them: ``index.start``, ``columns[].unit`` (an array of tables),
    ``windows.<name>.days_before`` (a table of tables), ``features[source=age].range`` (one
    member of a union chosen by its tag). A field validated from a plain value (a string
    parsed into a model) is one key, not a table. Fields marked ``exclude`` are not keys
    the user writes, so they are left out."""
    rows: list[ReferenceRow] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}.{name}" if prefix else name
        required = field.is_required() or field.default_factory is not None
        rows.append((key, "" if required else _default(field.default),
                     allowed(field.annotation, field.description or "")))
        if recurse and not _parsed_from_value(field.metadata):
            for sub, suffix in _tables(field.annotation):
                rows += reference_rows(sub, key + suffix)
    return rows


def _default(value: Any) -> str:
    import enum

    return repr(value.value if isinstance(value, enum.Enum) else value)


def _parsed_from_value(metadata: list[Any]) -> bool:
    from pydantic.functional_validators import BeforeValidator, PlainValidator

    return any(isinstance(m, (BeforeValidator, PlainValidator)) for m in metadata)


def _tables(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """The models a field's value holds, each with how its keys continue the parent key."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    if origin is typing.Annotated:
        if _parsed_from_value(list(args[1:])):
            return []
        return _tables(args[0])
    if origin in (list, tuple, set, frozenset):
        # ``features[source=age]``: the tag says it is one of an array's tables already
        return [(m, s if s.startswith("[") else "[]" + s)
                for a in args if a is not Ellipsis for m, s in _tables(a)]
    if origin is dict:
        return [(m, ".<name>" + s) for m, s in _tables(args[1])]
    members = [m for a in args for m, s in _tables(a) if not s]
    if len(members) < 2:
        return [(m, s) for a in args for m, s in _tables(a)]
    tag = _tag(members)
    if tag is None:
        return [(m, "") for m in members]
    return [(m, f"[{tag}={'|'.join(map(str, literal_values(m.model_fields[tag].annotation)))}]")
            for m in members]


def _tag(members: list[type[BaseModel]]) -> str | None:
    """The field whose single literal value tells the union's members apart."""
    for name in members[0].model_fields:
        values = [literal_values(m.model_fields[name].annotation) if name in m.model_fields
                  else () for m in members]
        if all(len(v) >= 1 for v in values) and len({v[0] for v in values}) == len(members):
            return name
    return None


_TYPE_NAMES = frozenset({"int", "float", "str", "bool", "none", "list", "dict"})


def format_error(err: Mapping[str, Any], tags: Collection[str] = ()) -> str:
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
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p in _TYPE_NAMES))]
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
        problems = list(dict.fromkeys(format_error(e, tags) for e in exc.errors()))
        raise ConfigError(problems, source=source) from None


def load_toml(path: Path, model: Any, *, what: str, tags: Collection[str] = (),
              extra: Mapping[str, Any] | None = None) -> Any:
    """Read the TOML file ``path`` (a ``what``, for messages) into ``model``, the one way
    fedcare reads its settings files; ``extra`` adds keys the file does not hold (its
    folder, say)."""
    from fedcare.core.files import read_toml

    raw = read_toml(Path(path), what)
    return validate_section(model, {**raw, **(extra or {})}, source=str(path), tags=tags)
