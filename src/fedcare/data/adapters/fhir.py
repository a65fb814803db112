"""Read FHIR R4 exports (Bundles and bulk-export NDJSON) into :class:`CanonicalRecords`.

Hospitals hand out FHIR in two shapes: a ``Bundle`` JSON document (Synthea, a search result, a
transaction) and the FHIR Bulk Data Access "flat" export, one resource per NDJSON line and one
file per resource type (HL7, *FHIR Bulk Data Access IG* v2.0.0, 2021). Both are read here, with
``.gz`` compression and whole export folders accepted.

**Speed vs validation (measured on this machine, 2 shared cores; ``benchmarks/adapters_fhir.py``
on a 102,553-resource synthetic site).** Full pydantic validation with ``fhir.resources`` (R4B
models -- the 8.x top level is R5 and R4 is not shipped; R4B is R4 plus errata for the resources
read here) costs about 200 µs per resource on top of the reading: ``validate="all"`` took
24.8 s (242 µs/resource), ``"sample"`` (the default) 5.8 s (57 µs), ``"none"`` 4.6 s (45 µs).
All three are inside the one-minute budget for 100,000 resources; "all" is four times slower.
So every resource is *read* by a fast path of plain dict look-ups
that checks exactly the fields it uses (types, dates, references), and ``fhir.resources``
validates, on top:

- ``"all"``: every resource of a supported type;
- ``"sample"``: the first :data:`SAMPLE_FIRST` resources of each type, then one in
  :data:`SAMPLE_EVERY` -- enough to catch an export that is systematically off-spec (wrong
  version, a vendor's custom shape) without paying for the whole file;
- ``"none"``: nothing but the fast path.

A resource that fails validation is rejected as a whole (reason :data:`INVALID`). The fast path
decides first, so a resource's reject reason does not depend on the mode: validation can only
add rejects, never change a fast-path reason.

**Never raise for one bad resource.** Each resource that cannot become records is counted in
``rejects`` by one of the reason constants below. Only a file that does not exist, cannot be
read, or holds nothing that looks like FHIR raises :class:`DataError`.

**Mapping choices** (documented because they change counts):

- one event per resource (per component for Observations with ``component``, e.g. a blood
  pressure panel): the coding is chosen by system preference LOINC > SNOMED > ICD10CM > RXNORM
  > LOCAL, so a resource coded twice is not counted twice;
- dates keep the local wall-clock time the source wrote (the offset is dropped, not converted
  to UTC) -- a clinical day is the local day; converting would move late-evening events to the
  next day and across day-based windows; partial dates (``2020``, ``2020-05``) become the first
  day of the period;
- the unit is the UCUM ``code`` when the quantity says it is UCUM, otherwise its ``unit`` text;
- resources marked entered-in-error, refuted, cancelled or not-taken are rejected
  (:data:`RETRACTED`) rather than treated as facts;
- an end is before its start only when its *day* is (a Period with a datetime start and a
  date-only end on the same day is fine); dates outside years 1678-2261 are out of range
  (:mod:`fedcare.data.adapters.dates`): such a start rejects the resource
  (:data:`DATE_OUT_OF_RANGE`), such an end (``9999-12-31`` for "ongoing") leaves the event
  open and is counted (:data:`END_OUT_OF_RANGE`);
- a Patient without ``birthDate``, or with one that cannot be read, is kept (birth date NaT);
  an unreadable one is counted (:data:`BAD_BIRTH_DATE` / :data:`BIRTH_OUT_OF_RANGE`) and the
  rest of the Patient is still validated;
- an Observation component that has a ``valueQuantity`` but no usable code or value is counted
  (:data:`BAD_COMPONENT`) while the resource's other values are kept;
- events whose subject is not among the Patients read are rejected
  (:data:`UNKNOWN_SUBJECT`), counted once per resource; when the subject was a ``urn:``
  reference that no Bundle entry's ``fullUrl`` named, the reason says so
  (:data:`UNRESOLVED_REFERENCE`): the export, not the site's code mapping, is incomplete;
- references resolve as in a Bundle (FHIR R4 §2.36.4, "Resolving references in Bundles"):
  first through the ``fullUrl`` of every Bundle entry read (a ``urn:uuid:`` reference, an
  absolute URL, or a relative ``Patient/123`` completed with the referring entry's base URL),
  then as ``Type/id``. A resource without ``id`` -- the usual shape of a *transaction*
  Bundle, whose server assigns ids -- is known by its ``fullUrl`` (the uuid of a
  ``urn:uuid:``, the last path segment of a URL);
- an optional field that cannot be read (an end date ``2020-13-45``) is dropped and counted
  (:data:`BAD_END_DATE`); the event keeps its start. A required one (the start) still rejects
  the resource (:data:`BAD_DATE`), since an event without a date cannot be placed in a window.

Counts of things kept despite a defect (a dropped end, birth date or component) are added only
when the resource is accepted, so a resource rejected later leaves no trace.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.adapters.canonical import EVENT_COLUMNS, CanonicalRecords
from fedcare.data.adapters.dates import (
    MAX_YEAR,
    MIN_YEAR,
    REASON_BIRTH_OUT_OF_RANGE,
    REASON_DATE_OUT_OF_RANGE,
    REASON_END_OUT_OF_RANGE,
)

if TYPE_CHECKING:
    import pandas as pd

SYSTEM_NAMES: Final = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
}
_PREFERENCE: Final = {"LOINC": 0, "SNOMED": 1, "ICD10CM": 2, "RXNORM": 3, "LOCAL": 4}
_UCUM: Final = "http://unitsofmeasure.org"

SAMPLE_FIRST: Final = 200
SAMPLE_EVERY: Final = 100

# Reject reasons (keys of ``CanonicalRecords.rejects``).
MALFORMED_JSON: Final = "malformed JSON"
NOT_A_RESOURCE: Final = "not a FHIR resource"
INVALID: Final = "failed FHIR validation"
UNSUPPORTED: Final = "unsupported resource type"
MISSING_SUBJECT: Final = "missing subject"
NOT_A_PATIENT: Final = "subject is not a Patient"
UNKNOWN_SUBJECT: Final = "unknown subject"
MISSING_ID: Final = "missing patient id"
DUPLICATE_PATIENT: Final = "duplicate patient"
MISSING_CODE: Final = "missing code"
MISSING_DATE: Final = "missing date"
BAD_DATE: Final = "unparseable date"
END_BEFORE_START: Final = "end before start"
NO_VALUE: Final = "observation without value"
RETRACTED: Final = "retracted (entered-in-error, refuted, cancelled or not-taken)"
UNRESOLVED_MEDICATION: Final = "unresolved medication reference"
UNRESOLVED_REFERENCE: Final = ("unresolved subject reference (not a fullUrl of the Bundle, no "
                               "Patient with that id)")
BAD_END_DATE: Final = "unparseable end date (end dropped, event kept)"
DATE_OUT_OF_RANGE: Final = REASON_DATE_OUT_OF_RANGE
END_OUT_OF_RANGE: Final = REASON_END_OUT_OF_RANGE
BIRTH_OUT_OF_RANGE: Final = REASON_BIRTH_OUT_OF_RANGE
BAD_BIRTH_DATE: Final = "unparseable birth date (patient kept, age unknown)"
BAD_COMPONENT: Final = "observation component without usable code or value"

_SUFFIXES: Final = (".ndjson", ".json", ".ndjson.gz", ".json.gz", ".jsonl", ".jsonl.gz")
_RETRACTED_STATUS: Final = frozenset({"entered-in-error", "cancelled", "not-taken", "refuted"})
_SEXES: Final = {"female": "female", "male": "male", "other": "other", "unknown": "unknown"}
_DATE_RE: Final = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(T.+)?)?)?$")


class Validation(enum.StrEnum):
    ALL = "all"
    SAMPLE = "sample"
    NONE = "none"


_Event = tuple[str, str, str, str, float, str, datetime, datetime | None]
_Commit = Callable[[], None]


class _Reject(Exception):
    """Internal control flow: this resource cannot become records, for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def load_fhir(paths: Sequence[str | Path] | str | Path, *, validate: str = "sample",
              site: str | None = None) -> CanonicalRecords:
    """Read FHIR Bundle / NDJSON files (or folders of them) into canonical records.

    ``paths``: files ending in .json / .ndjson / .jsonl (optionally .gz), or folders whose files
    with those suffixes are read in name order. ``validate``: "sample" (default), "all" or
    "none" (see the module docstring for what each costs). Resources read: Patient,
    Observation, Condition, MedicationRequest, MedicationStatement, Medication (for references),
    Encounter; any other type is counted under :data:`UNSUPPORTED`.
    """
    try:
        mode = Validation(validate)
    except ValueError:
        raise ConfigError(f"validate={validate!r} is not one of "
                          f"{[m.value for m in Validation]}") from None
    reader = _Reader(mode, site)
    for path in _expand(paths, site):
        reader.read_file(path)
    return reader.finish()


def _expand(paths: Sequence[str | Path] | str | Path, site: str | None) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise DataError("no FHIR files given; list the site's Bundle or NDJSON files.", site=site)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))
            if not found:
                raise DataError(f"folder {p} holds no FHIR files (names ending in "
                                f"{', '.join(_SUFFIXES)}).", site=site)
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"FHIR file {p} does not exist (or is not a file); check the path "
                            "configured for this site.", site=site)
    return out


class _Reader:
    """Accumulates persons, events and counts over every file of one load."""

    def __init__(self, mode: Validation, site: str | None) -> None:
        self.mode = mode
        self.site = site
        self.persons: dict[str, tuple[datetime | None, str]] = {}
        self.events: list[_Event] = []
        self.event_resource: list[int] = []
        self.pending_meds: list[tuple[int, str, str, datetime, datetime | None]] = []
        self.medications: dict[str, tuple[str, str]] = {}
        self.urn_ids: dict[str, tuple[str, str]] = {}  # Bundle fullUrl -> (type, id)
        self.rejects: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.serial = 0
        self.notes: Counter[str] = Counter()  # counts the current resource adds if accepted
        self.full_url: str | None = None  # the current resource's Bundle entry fullUrl
        self.dropped: list[tuple[str, ...]] = []  # fields of it dropped as unreadable
        self.urn_fallback: set[int] = set()  # resources whose urn: subject no fullUrl named
        self.handlers = {
            "Patient": self._patient, "Observation": self._observation,
            "Condition": self._condition, "MedicationRequest": self._medication_use,
            "MedicationStatement": self._medication_use, "Medication": self._medication,
            "Encounter": self._encounter,
        }

    # -- files -----------------------------------------------------------------------------

    def read_file(self, path: Path) -> None:
        resources = 0
        malformed_before = self.rejects[MALFORMED_JSON]
        for item in _json_items(path, self.site):
            if item is None:
                self.rejects[MALFORMED_JSON] += 1
                continue
            if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
                self.rejects[NOT_A_RESOURCE] += 1
                continue
            resources += 1
            if item["resourceType"] == "Bundle":
                self._bundle(item)
            else:
                self.resource(item)
        if resources == 0:
            malformed = self.rejects[MALFORMED_JSON] - malformed_before
            raise DataError(f"{path} holds no FHIR resource ({malformed} malformed JSON "
                            "line(s), no JSON object with a 'resourceType'); it is not a FHIR "
                            "Bundle or bulk-export NDJSON file. Export it again.", site=self.site)

    def _bundle(self, bundle: dict[str, Any]) -> None:
        self.counts["Bundle"] += 1
        entries = bundle.get("entry")
        if entries is None:
            return
        if not isinstance(entries, list):
            self.rejects[NOT_A_RESOURCE] += 1
            return
        resources: list[tuple[dict[str, Any], str | None]] = []
        for entry in entries:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                self.rejects[NOT_A_RESOURCE] += 1
                continue
            full_url = entry.get("fullUrl")
            full_url = full_url.strip() if isinstance(full_url, str) and full_url.strip() \
                else None
            resources.append((res, full_url))
            if full_url is not None:
                rid = _own_id(res, full_url)
                if rid is not None:
                    self.urn_ids[full_url] = (res["resourceType"], rid)
        # Every fullUrl first, then the resources: an entry may refer to a later one.
        for res, full_url in resources:
            if res["resourceType"] == "Bundle":
                self._bundle(res)
            else:
                self.resource(res, full_url)

    # -- one resource ----------------------------------------------------------------------

    def resource(self, res: dict[str, Any], full_url: str | None = None) -> None:
        rtype = res["resourceType"]
        self.counts[rtype] += 1
        handler = self.handlers.get(rtype)
        if handler is None:
            self.rejects[UNSUPPORTED] += 1
            return
        self.serial += 1
        self.notes = Counter()
        self.full_url = full_url
        self.dropped = []
        try:
            commit = handler(res)
            if self._should_validate(rtype):
                _validate(rtype, _without(res, self.dropped))
        except _Reject as rej:
            self.rejects[rej.reason] += 1
            return
        self.accepted[rtype] += 1
        commit()
        self.rejects.update(self.notes)

    def _should_validate(self, rtype: str) -> bool:
        if self.mode is Validation.ALL:
            return True
        if self.mode is Validation.NONE:
            return False
        n = self.accepted[rtype]
        return n < SAMPLE_FIRST or n % SAMPLE_EVERY == 0

    # Each handler reads everything it needs (raising _Reject) and returns a commit callable,
    # so a resource that later fails validation leaves no trace.

    def _patient(self, res: dict[str, Any]) -> _Commit:
        pid = _own_id(res, self.full_url)
        if pid is None:
            raise _Reject(MISSING_ID)
        if pid in self.persons:
            raise _Reject(DUPLICATE_PATIENT)
        try:
            birth = _date(res.get("birthDate"), required=False)
        except _Reject as rej:  # kept: only the age is unknown
            birth = None
            self.notes[BIRTH_OUT_OF_RANGE if rej.reason == DATE_OUT_OF_RANGE
                       else BAD_BIRTH_DATE] += 1
            self.dropped.append(("birthDate",))
        gender = res.get("gender")
        sex = _SEXES.get(gender, "unknown") if isinstance(gender, str) else "unknown"

        def commit() -> None:
            if pid in self.persons:  # same id twice within one validated batch
                self.rejects[DUPLICATE_PATIENT] += 1
                self.notes.clear()
            else:
                self.persons[pid] = (birth, sex)
        return commit

    def _observation(self, res: dict[str, Any]) -> _Commit:
        _not_retracted(res)
        pid = self._subject(res)
        start, end = _effective(res, self.notes, self.dropped)
        events: list[_Event] = []
        if "valueQuantity" in res:
            system, code = _coding(res.get("code"))
            value, unit = _quantity(res["valueQuantity"])
            events.append((pid, "measurement", system, code, value, unit, start, end))
        components = res.get("component")
        if isinstance(components, list):
            for comp in components:
                if not isinstance(comp, dict) or "valueQuantity" not in comp:
                    continue
                try:
                    system, code = _coding(comp.get("code"))
                    value, unit = _quantity(comp["valueQuantity"])
                except _Reject:
                    self.notes[BAD_COMPONENT] += 1
                    continue
                events.append((pid, "measurement", system, code, value, unit, start, end))
        if not events:
            if "valueQuantity" not in res:
                _coding(res.get("code"))  # a missing code is the more basic problem
            raise _Reject(NO_VALUE)
        return self._committer(events)

    def _condition(self, res: dict[str, Any]) -> _Commit:
        _not_retracted(res)
        pid = self._subject(res)
        system, code = _coding(res.get("code"))
        start = _first_date(res, ("onsetDateTime", ("onsetPeriod", "start"), "recordedDate"))
        end = _end_date(res, ("abatementDateTime", ("abatementPeriod", "start")), self.notes,
                        self.dropped)
        _check_order(start, end)
        return self._committer([(pid, "condition", system, code, math.nan, "", start, end)])

    def _medication_use(self, res: dict[str, Any]) -> _Commit:
        _not_retracted(res)
        pid = self._subject(res)
        if res["resourceType"] == "MedicationRequest":
            start = _first_date(res, ("authoredOn",))
            end = None
        else:
            start, end = _effective(res, self.notes, self.dropped)
        if "medicationCodeableConcept" in res:
            system, code = _coding(res["medicationCodeableConcept"])
            return self._committer([(pid, "drug", system, code, math.nan, "", start, end)])
        ref = res.get("medicationReference")
        ref = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(ref, str) or not ref:
            raise _Reject(MISSING_CODE)
        if ref.startswith("#"):
            system, code = _contained_medication(res, ref[1:])
            return self._committer([(pid, "drug", system, code, math.nan, "", start, end)])
        hit = self._resolve(ref)
        if hit is not None:
            med_id = hit[1]
        else:
            med_id = ref.rsplit("Medication/", 1)[-1] if "Medication/" in ref else ref
        serial = self.serial

        def commit() -> None:
            self.pending_meds.append((serial, pid, med_id, start, end))
        return commit

    def _medication(self, res: dict[str, Any]) -> _Commit:
        mid = _own_id(res, self.full_url)
        if mid is None:
            raise _Reject(MISSING_ID)
        coding = _coding(res.get("code"))

        def commit() -> None:
            self.medications[mid] = coding
        return commit

    def _encounter(self, res: dict[str, Any]) -> _Commit:
        _not_retracted(res)
        pid = self._subject(res)
        start = _first_date(res, (("period", "start"),))
        end = _end_date(res, (("period", "end"),), self.notes, self.dropped)
        _check_order(start, end)
        system, code = "LOCAL", ""
        types = res.get("type")
        if isinstance(types, list) and types:
            with contextlib.suppress(_Reject):
                system, code = _coding(types[0])
        if not code:
            cls = res.get("class")
            if isinstance(cls, dict) and isinstance(cls.get("code"), str):
                code = cls["code"]
        return self._committer([(pid, "encounter", system, code, math.nan, "", start, end)])

    def _committer(self, events: list[_Event]) -> _Commit:
        serial = self.serial

        def commit() -> None:
            self.events.extend(events)
            self.event_resource.extend([serial] * len(events))
        return commit

    def _subject(self, res: dict[str, Any]) -> str:
        subject = res.get("subject")
        ref = subject.get("reference") if isinstance(subject, dict) else None
        if not isinstance(ref, str) or not ref.strip():
            raise _Reject(MISSING_SUBJECT)
        ref = ref.strip()
        hit = self._resolve(ref)
        if hit is not None:
            rtype, rid = hit
            if rtype != "Patient":
                raise _Reject(NOT_A_PATIENT)
            return rid
        if ref.startswith("urn:uuid:"):
            # Not a fullUrl read so far: perhaps a Patient whose id is the uuid (Synthea's
            # NDJSON). If none turns up, the resource is rejected as an unresolved reference.
            self.urn_fallback.add(self.serial)
            return ref[len("urn:uuid:"):]
        parts = ref.split("/")
        for i in range(len(parts) - 2, -1, -1):
            if parts[i] == "Patient" and parts[i + 1]:
                return parts[i + 1]
        raise _Reject(NOT_A_PATIENT)

    def _resolve(self, ref: str) -> tuple[str, str] | None:
        """(type, id) of the Bundle entry a reference names through its fullUrl, if any: the
        reference itself, or a relative ``Type/id`` completed with the base URL of the
        referring entry's fullUrl (FHIR R4 §2.36.4)."""
        if ref in self.urn_ids:
            return self.urn_ids[ref]
        if self.full_url and not ref.startswith(("urn:", "http://", "https://", "#")):
            base = _base_url(self.full_url)
            if base is not None:
                return self.urn_ids.get(base + ref)
        return None

    # -- result ----------------------------------------------------------------------------

    def finish(self) -> CanonicalRecords:
        import pandas as pd

        for serial, pid, med_id, start, end in self.pending_meds:
            if med_id in self.urn_ids:  # a fullUrl of a file read after the reference
                med_id = self.urn_ids[med_id][1]
            if med_id in self.medications:
                system, code = self.medications[med_id]
                self.events.append((pid, "drug", system, code, math.nan, "", start, end))
                self.event_resource.append(serial)
            else:
                self.rejects[UNRESOLVED_MEDICATION] += 1
        for i, serial in enumerate(self.event_resource):
            if serial in self.urn_fallback:  # its subject's fullUrl came in a later file
                hit = self.urn_ids.get("urn:uuid:" + self.events[i][0])
                if hit is not None and hit[0] == "Patient":
                    self.events[i] = (hit[1], *self.events[i][1:])
        persons = pd.DataFrame({
            "person_id": pd.Series(list(self.persons), dtype=object),
            "birth_date": pd.Series([b for b, _ in self.persons.values()],
                                    dtype="datetime64[ns]"),
            "sex": pd.Series([s for _, s in self.persons.values()], dtype=object),
        })
        events = self._events_frame(pd)
        return CanonicalRecords(persons, events, self.rejects, self.counts)

    def _events_frame(self, pd: Any) -> pd.DataFrame:
        known = self.persons.keys()
        keep = [i for i, ev in enumerate(self.events) if ev[0] in known]
        if len(keep) < len(self.events):
            orphans = {self.event_resource[i] for i, ev in enumerate(self.events)
                       if ev[0] not in known}
            unresolved = len(orphans & self.urn_fallback)
            if unresolved:
                self.rejects[UNRESOLVED_REFERENCE] += unresolved
            if len(orphans) > unresolved:
                self.rejects[UNKNOWN_SUBJECT] += len(orphans) - unresolved
        rows = [self.events[i] for i in keep]
        cols: list[tuple[Any, ...]] = (list(zip(*rows, strict=True)) if rows
                                       else [() for _ in EVENT_COLUMNS])
        frame = pd.DataFrame({
            "person_id": pd.Series(cols[0], dtype=object),
            "domain": pd.Series(cols[1], dtype=object),
            "system": pd.Series(cols[2], dtype=object),
            "code": pd.Series(cols[3], dtype=object),
            "value": pd.Series(cols[4], dtype="float64"),
            "unit": pd.Series(cols[5], dtype=object),
            "start": pd.Series(cols[6], dtype="datetime64[ns]"),
            "end": pd.Series(cols[7], dtype="datetime64[ns]"),
        })
        return frame


# -- reading JSON -----------------------------------------------------------------------------


def _json_items(path: Path, site: str | None) -> Iterator[Any]:
    """Yield the top-level JSON values of ``path``: one document, or one per NDJSON line.

    NDJSON is streamed line by line (bulk exports can be large); a file whose first line is not
    JSON on its own is read whole as one document (a pretty-printed Bundle), and read line by
    line after all if that fails too. ``None`` stands for a line that is not valid JSON.
    """
    try:
        first = _first_line(path)
        if first is None:
            raise DataError(f"{path} is empty; a FHIR export file holds at least one "
                            "resource.", site=site)
        try:
            json.loads(first)
        except (ValueError, RecursionError):
            with _open(path) as fh:
                data = fh.read()
            try:
                yield json.loads(data)
                return
            except (ValueError, RecursionError):
                pass  # not one document either: count it line by line
        with _open(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except (ValueError, RecursionError):
                    yield None
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); check the file "
                        "and its permissions.", site=site) from exc


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _first_line(path: Path) -> bytes | None:
    with _open(path) as fh:
        for line in fh:
            if line.strip():
                return bytes(line)
    return None


def _own_id(res: dict[str, Any], full_url: str | None) -> str | None:
    """A resource's id, or the one its Bundle entry's fullUrl gives it: the uuid of
    ``urn:uuid:<uuid>`` (also ``urn:oid:``), the id of ``<base>/<Type>/<id>``."""
    rid = res.get("id")
    if isinstance(rid, str) and rid.strip():
        return rid.strip()
    if not full_url:
        return None
    for prefix in ("urn:uuid:", "urn:oid:"):
        if full_url.startswith(prefix):
            return full_url[len(prefix):] or None
    if full_url.startswith(("http://", "https://")):
        path = full_url.split("/_history/", 1)[0].rstrip("/")
        last = path.rsplit("/", 1)[-1]
        return last or None
    return None


def _base_url(full_url: str) -> str | None:
    """``http://x/fhir/`` of ``http://x/fhir/Observation/5``; None for a ``urn:``."""
    if not full_url.startswith(("http://", "https://")):
        return None
    parts = full_url.split("/_history/", 1)[0].rstrip("/").split("/")
    if len(parts) < 5:  # scheme, '', host, Type, id
        return None
    return "/".join(parts[:-2]) + "/"


def _without(res: dict[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """``res`` without the (one- or two-level) fields in ``paths``, copied only as deep as
    needed; what validation judges once unreadable optional fields were dropped."""
    if not paths:
        return res
    out = dict(res)
    for path in paths:
        if len(path) == 1:
            out.pop(path[0], None)
        elif isinstance(out.get(path[0]), dict):
            inner = {k: v for k, v in out[path[0]].items() if k != path[1]}
            if inner:
                out[path[0]] = inner
            else:
                out.pop(path[0])
    return out


def _validate(rtype: str, res: dict[str, Any]) -> None:
    import pydantic
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(rtype).model_validate(res)
    except (pydantic.ValidationError, ValueError, TypeError, KeyError):
        raise _Reject(INVALID) from None


# -- field helpers ----------------------------------------------------------------------------


def _coding(concept: Any) -> tuple[str, str]:
    """The preferred (system name, code) of a CodeableConcept."""
    best: tuple[int, str, str] | None = None
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if isinstance(codings, list):
        for c in codings:
            if not isinstance(c, dict):
                continue
            code = c.get("code")
            if not isinstance(code, str) or not code.strip():
                continue
            system = c.get("system")
            name = SYSTEM_NAMES.get(system.rstrip("/"), "LOCAL") if isinstance(
                system, str) else "LOCAL"
            rank = _PREFERENCE[name]
            if best is None or rank < best[0]:
                best = (rank, name, code.strip())
    if best is None:
        raise _Reject(MISSING_CODE)
    return best[1], best[2]


def _contained_medication(res: dict[str, Any], local_id: str) -> tuple[str, str]:
    contained = res.get("contained")
    if isinstance(contained, list):
        for c in contained:
            if (isinstance(c, dict) and c.get("resourceType") == "Medication"
                    and c.get("id") == local_id):
                return _coding(c.get("code"))
    raise _Reject(UNRESOLVED_MEDICATION)


def _quantity(q: Any) -> tuple[float, str]:
    value = q.get("value") if isinstance(q, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject(NO_VALUE)
    value = float(value)
    if not math.isfinite(value):
        raise _Reject(NO_VALUE)
    code, text = q.get("code"), q.get("unit")
    if q.get("system") == _UCUM and isinstance(code, str) and code:
        unit = code
    elif isinstance(text, str) and text:
        unit = text
    else:
        unit = code if isinstance(code, str) else ""
    return value, unit.strip()


def _not_retracted(res: dict[str, Any]) -> None:
    status = res.get("status")
    if isinstance(status, str) and status in _RETRACTED_STATUS:
        raise _Reject(RETRACTED)
    verification = res.get("verificationStatus")
    codings = verification.get("coding") if isinstance(verification, dict) else None
    if isinstance(codings, list):
        for c in codings:
            if isinstance(c, dict) and c.get("code") in _RETRACTED_STATUS:
                raise _Reject(RETRACTED)


def _effective(res: dict[str, Any], notes: Counter[str], dropped: list[tuple[str, ...]]
               ) -> tuple[datetime, datetime | None]:
    if "effectivePeriod" in res:
        start = _first_date(res, (("effectivePeriod", "start"),))
        end = _end_date(res, (("effectivePeriod", "end"),), notes, dropped)
        _check_order(start, end)
        return start, end
    return _first_date(res, ("effectiveDateTime", "effectiveInstant")), None


def _end_date(res: dict[str, Any], fields: Sequence[str | tuple[str, str]],
              notes: Counter[str], dropped: list[tuple[str, ...]]) -> datetime | None:
    """An optional end: the first of ``fields`` present. One outside years 1678-2261
    (``9999-12-31``: ongoing) is an open end, and one that cannot be read at all is dropped
    (``dropped`` names it, so validation judges the resource without it); both are noted, and
    neither is a reason to drop the event."""
    for f in fields:
        path = f if isinstance(f, tuple) else (f,)
        outer = res.get(path[0])
        raw = outer.get(path[1]) if len(path) > 1 and isinstance(outer, dict) else (
            outer if len(path) == 1 else None)
        if raw is None:
            continue
        try:
            return _date(raw, required=True)
        except _Reject as rej:
            notes[END_OUT_OF_RANGE if rej.reason == DATE_OUT_OF_RANGE else BAD_END_DATE] += 1
            if rej.reason != DATE_OUT_OF_RANGE:
                dropped.append(path)
            return None
    return None


def _check_order(start: datetime, end: datetime | None) -> None:
    """By day: ``start 2020-03-04T10:00``, ``end 2020-03-04`` (midnight) is one day."""
    if end is not None and end.date() < start.date():
        raise _Reject(END_BEFORE_START)


def _first_date(res: dict[str, Any], fields: Sequence[str | tuple[str, str]], *,
                required: bool = True) -> Any:
    """The first of ``fields`` present (``(outer, inner)`` for a Period member), parsed."""
    for f in fields:
        if isinstance(f, tuple):
            outer = res.get(f[0])
            raw = outer.get(f[1]) if isinstance(outer, dict) else None
        else:
            raw = res.get(f)
        if raw is not None:
            return _date(raw, required=True)
    if required:
        raise _Reject(MISSING_DATE)
    return None


def _date(raw: Any, *, required: bool) -> datetime | None:
    """Parse a FHIR date/dateTime/instant; partial dates become the period's first day."""
    if raw is None:
        if required:
            raise _Reject(MISSING_DATE)
        return None
    if not isinstance(raw, str):
        raise _Reject(BAD_DATE)
    m = _DATE_RE.match(raw.strip())
    if m is None:
        raise _Reject(BAD_DATE)
    try:
        if m[4]:  # the offset is dropped: local wall-clock time, as in every adapter
            out = datetime.fromisoformat(raw.strip()).replace(tzinfo=None)
        else:
            out = datetime(int(m[1]), int(m[2] or 1), int(m[3] or 1))
    except ValueError:
        raise _Reject(BAD_DATE) from None
    if not MIN_YEAR <= out.year <= MAX_YEAR:
        raise _Reject(DATE_OUT_OF_RANGE)
    return out
