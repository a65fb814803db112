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
    if kind == "extra_forbidden" and root is not None:
        owners = declared_by(root, err["loc"])
        if owners:
            where = " or ".join([", ".join(owners[:-1]), owners[-1]] if len(owners) > 1
                                else owners)
            return f"unknown key '{loc}': {parts[-1]} only applies to {where}"
    if kind == "extra_forbidden":
        return f"unknown key '{loc}'"
    if kind == "missing":
        return f"missing key '{loc}'"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        tag = ctx.get("tag")
        return (f"'{loc}.{ctx.get('discriminator', '').strip(chr(39))}': "
                f"{tag!r} is not one of {ctx.get('expected_tags')}"
                + did_you_mean(tag, _quoted(str(ctx.get("expected_tags", "")))))
    if kind == "literal_error":
        return (f"'{loc}': {err['msg']}"
                + did_you_mean(err.get("input"), _quoted(str((err.get("ctx") or {})
                                                             .get("expected", "")))))
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


def _quoted(text: str) -> list[str]:
    """The quoted values of pydantic's "'a', 'b' or 'c'" listing."""
    import re

    return re.findall(r"'([^']*)'", text)


def did_you_mean(given: Any, choices: Sequence[str]) -> str:
    """``"; did you mean 'fedprox'?"`` for a misspelt choice, or "" when none is close."""
    import difflib

    if not isinstance(given, str) or not choices:
        return ""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(given.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def declared_by(root: Any, loc: Sequence[Any]) -> list[str]:
    """For an unknown key at ``loc`` inside a member of a tagged union (``strategy.mu`` under
    ``name = "fedavg"``): the tags of the union's other members that declare that key
    (``["fedprox"]``), so the error can say where the key belongs."""
    *path, key = list(loc)
    candidates: list[type[BaseModel]] = _models_in(root)
    union: list[type[BaseModel]] = []
    for part in path:
        if isinstance(part, int):
            continue
        owner = next((m for m in candidates if part in m.model_fields), None)
        if owner is not None:
            candidates = _models_in(owner.model_fields[part].annotation)
            continue
        tagged = [m for m in candidates if any(part in literal_values(f.annotation)
                                               for f in m.model_fields.values())]
        if not tagged:
            return []
        union, candidates = candidates, tagged
    if len(union) < 2 or (tag := _tag(union)) is None:
        return []
    return [str(literal_values(m.model_fields[tag].annotation)[0]) for m in union
            if key in m.model_fields and m not in candidates]


def fold_choice(value: Any, choices: Collection[Any]) -> Any:
    """``value`` spelt as the one choice it equals ignoring case ("FedProx" -> "fedprox"),
    else unchanged (validation then names the choices)."""
    if not isinstance(value, str) or value in choices:
        return value
    matches = [c for c in choices if isinstance(c, str) and c.lower() == value.lower()]
    return matches[0] if len(matches) == 1 else value


def _dict_values(annotation: Any) -> Any:
    """The value type of a ``dict[str, X]`` annotation (also inside Optional/Annotated)."""
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is dict:
            return typing.get_args(arg)[1]
    return None


def fold_choices(annotation: Any, value: Any) -> Any:
    """``value`` (raw settings for ``annotation``) with every choice - a union's tag such as
    ``strategy.name``, a ``Literal`` key such as ``train.optimizer`` - spelt as declared when
    it differs only in case, so ``name = "FedProx"`` means ``"fedprox"``. Done before
    validation: the validated settings, and so content hashes, are the same either way."""
    if isinstance(value, list):
        return [fold_choices(annotation, v) for v in value]
    mapped = _dict_values(annotation)
    if mapped is not None and isinstance(value, Mapping):  # a table of tables
        return {k: fold_choices(mapped, v) for k, v in value.items()}
    models = _models_in(annotation)
    if not isinstance(value, Mapping) or not models:
        return value
    out = dict(value)
    if len(models) > 1:
        tag = _tag(models)
        if tag is None or tag not in out:
            return out
        by_tag = {literal_values(m.model_fields[tag].annotation)[0]: m for m in models}
        out[tag] = fold_choice(out[tag], list(by_tag))
        if out[tag] not in by_tag:
            return out
        models = [by_tag[out[tag]]]
    for name, field in models[0].model_fields.items():
        if name not in out:
            continue
        choices = literal_values(field.annotation)
        if choices:
            out[name] = fold_choice(out[name], choices)
        elif not _parsed_from_value(field.metadata):
            out[name] = fold_choices(field.annotation, out[name])
    return out


def validate_section(model: Any, data: Any, *, source: str | None = None,
                     tags: Collection[str] = ()) -> Any:
    """``model`` (a :class:`Section` or a pydantic ``TypeAdapter``) validating ``data``; every
    problem becomes one line of a :class:`~fedcare.core.errors.ConfigError`. Choices are
    matched ignoring case (:func:`fold_choices`) and a misspelt one gets a suggestion."""
    import pydantic

    try:
        if isinstance(model, pydantic.TypeAdapter):
            return model.validate_python(data)
        return model.model_validate(fold_choices(model, data))
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
