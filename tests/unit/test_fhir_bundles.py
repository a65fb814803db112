"""FHIR transaction Bundles (resources without ids, references as fullUrls), unreadable optional
fields, and the RxNorm clinical drug -> ingredient roll-up (issue 14, item 10)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedcare.data.adapters import fhir
from fedcare.data.adapters.fhir import load_fhir
from fedcare.data.contract import CodeSet, parse_contract
from fedcare.data.features import build_features
from fedcare.data.harmonize.codes import (
    RXNORM_INGREDIENTS,
    SiteMapping,
    match_codes,
    normalise_codes,
)

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _bundle(tmp_path: Path, entries: list[dict[str, Any]], name: str = "tx.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction",
                                "entry": entries}, indent=1))
    return path


def _entry(full_url: str | None, resource: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"resource": resource,
                           "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url is not None:
        out["fullUrl"] = full_url
    return out


def _patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "gender": "male", "birthDate": "1955-04-02"}


def _obs(subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "subject": {"reference": subject}, "effectiveDateTime": "2019-06-01",
            "valueQuantity": {"value": 131, "unit": "mm[Hg]",
                              "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}


def _encounter(subject: str, end: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": subject},
            "period": {"start": "2020-03-04T09:00:00+01:00", "end": end}}


def _drug(subject: str, code: str) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
            "subject": {"reference": subject}, "authoredOn": "2019-01-01"}


@pytest.mark.parametrize("mode", ["all", "none"])
def test_a_transaction_bundle_without_ids_resolves_its_urn_references(tmp_path: Path,
                                                                      mode: str) -> None:
    # Arrange: what an EHR's transaction export looks like -- no resource has an id yet.
    entries = []
    for i in range(3):
        p = f"urn:uuid:00000000-0000-4000-8000-00000000000{i}"
        entries += [_entry(p, _patient()),
                    _entry(f"urn:uuid:10000000-0000-4000-8000-00000000000{i}", _obs(p)),
                    _entry(f"urn:uuid:20000000-0000-4000-8000-00000000000{i}",
                           _encounter(p, "2020-03-04T10:00:00+01:00"))]
    # Act
    rec = load_fhir([_bundle(tmp_path, entries)], validate=mode)
    # Assert: every patient and event is kept, known by its fullUrl's uuid
    assert sorted(rec.persons["person_id"]) == [
        f"00000000-0000-4000-8000-00000000000{i}" for i in range(3)]
    assert len(rec.events) == 6 and set(rec.events["person_id"]) == set(rec.persons["person_id"])
    assert sum(rec.rejects.values()) == 0


def test_an_entry_may_refer_to_a_later_one_and_urls_resolve_through_full_urls(
        tmp_path: Path) -> None:
    base = "https://ehr.example.org/fhir/"
    entries = [
        _entry(f"{base}Observation/o1", _obs("Patient/abc")),       # relative, by base URL
        _entry(f"{base}Observation/o2", _obs(f"{base}Patient/abc")),  # absolute
        _entry("urn:uuid:aa", _obs("urn:uuid:bb")),                   # to a later entry
        _entry(f"{base}Patient/abc", _patient()),                   # no id: the URL's
        _entry("urn:uuid:bb", {**_patient(), "id": "p-7"}),          # an id wins
    ]
    rec = load_fhir([_bundle(tmp_path, entries)], validate="all")
    assert sorted(rec.persons["person_id"]) == ["abc", "p-7"]
    assert sorted(rec.events["person_id"]) == ["abc", "abc", "p-7"]
    assert sum(rec.rejects.values()) == 0


def test_references_resolve_across_bundle_files(tmp_path: Path) -> None:
    """A bulk export split into several Bundles: the referenced entry may come later."""
    by_reference = _drug("urn:uuid:pat", "")
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": "urn:uuid:med"}
    first = _bundle(tmp_path, [_entry("urn:uuid:o", _obs("urn:uuid:pat")),
                               _entry(None, by_reference)], "1.json")
    second = _bundle(tmp_path, [
        _entry("urn:uuid:pat", {**_patient(), "id": "p-1"}),
        _entry("urn:uuid:med", {"resourceType": "Medication", "code": {"coding": [
            {"system": RXNORM, "code": "259255"}]}})], "2.json")
    rec = load_fhir([first, second], validate="none")
    assert list(rec.persons["person_id"]) == ["p-1"]
    assert sorted(rec.events["domain"]) == ["drug", "measurement"]
    assert set(rec.events["person_id"]) == {"p-1"} and sum(rec.rejects.values()) == 0


def test_an_unresolvable_reference_is_named_as_such(tmp_path: Path) -> None:
    entries = [_entry("urn:uuid:p", _patient()), _entry("urn:uuid:o", _obs("urn:uuid:nowhere")),
               _entry(None, _obs("Patient/unknown"))]
    rec = load_fhir([_bundle(tmp_path, entries)], validate="all")
    assert rec.rejects[fhir.UNRESOLVED_REFERENCE] == 1
    assert "reference" in fhir.UNRESOLVED_REFERENCE
    assert rec.rejects[fhir.UNKNOWN_SUBJECT] == 1  # a plain id that names no Patient


def test_a_patient_with_neither_id_nor_full_url_is_still_missing_its_id(tmp_path: Path) -> None:
    rec = load_fhir([_bundle(tmp_path, [_entry(None, _patient())])], validate="all")
    assert rec.rejects[fhir.MISSING_ID] == 1 and rec.persons.empty


@pytest.mark.parametrize("mode", ["all", "sample", "none"])
def test_an_unreadable_end_date_drops_the_end_not_the_event(tmp_path: Path, mode: str) -> None:
    entries = [_entry("urn:uuid:p", _patient()),
               _entry("urn:uuid:e1", _encounter("urn:uuid:p", "2020-13-45")),
               _entry("urn:uuid:e2", _encounter("urn:uuid:p", "2020-03-04T11:00:00+01:00")),
               _entry("urn:uuid:c1", {
                   "resourceType": "Condition", "subject": {"reference": "urn:uuid:p"},
                   "code": {"coding": [{"system": "http://snomed.info/sct",
                                        "code": "44054006"}]},
                   "onsetDateTime": "2015-06-01", "abatementDateTime": "yesterday"})]
    rec = load_fhir([_bundle(tmp_path, entries)], validate=mode)
    assert len(rec.events) == 3
    ends = rec.events.sort_values("end")["end"]
    assert ends.isna().sum() == 2  # the two unreadable ends, dropped
    assert rec.rejects == {fhir.BAD_END_DATE: 2}
    assert fhir.BAD_DATE not in rec.rejects


def test_an_unreadable_start_still_rejects_the_resource(tmp_path: Path) -> None:
    enc = _encounter("urn:uuid:p", "2020-03-05")
    enc["period"]["start"] = "2020-02-30"
    rec = load_fhir([_bundle(tmp_path, [_entry("urn:uuid:p", _patient()),
                                        _entry(None, enc)])], validate="all")
    assert rec.rejects == {fhir.BAD_DATE: 1}


# -- RxNorm clinical drug -> ingredient ------------------------------------------------------


def _match(codes: list[str], codeset: CodeSet, **kw: Any) -> list[bool]:
    systems = pd.Series(["RXNORM"] * len(codes))
    return list(match_codes(systems, normalise_codes(systems, pd.Series(codes)), codeset, **kw))


def test_a_clinical_drug_matches_the_ingredient_a_code_set_lists() -> None:
    statins = CodeSet(RXNORM=["83367", "36567", "301542"])
    # atorvastatin 80 MG Oral Tablet, simvastatin 20 MG Oral Tablet, an unknown drug
    assert _match(["259255", "312961", "999999"], statins) == [True, True, False]
    # only where the set lists the ingredient: a clinical drug is not its neighbour
    assert _match(["259255"], CodeSet(RXNORM=["36567"])) == [False]
    # and a set listing the clinical drug itself still matches it (the code is kept)
    assert _match(["259255", "617310"], CodeSet(RXNORM=["259255"])) == [True, False]


def test_the_built_in_table_maps_clinical_drugs_to_the_demo_contracts_ingredients() -> None:
    ingredients = {i for ins in RXNORM_INGREDIENTS.values() for i in ins}
    assert ingredients == {"83367", "36567", "301542"}  # what examples/contracts/cardio lists
    assert not set(RXNORM_INGREDIENTS) & ingredients


def test_a_site_adds_its_own_clinical_drugs_through_its_code_mapping(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "source_system,source_code,target_system,target_code\n"
        "RXNORM,2001266,RXNORM,36567\nRXNORM,1000001,RXNORM,83367\nRXNORM,1000001,RXNORM,"
        "36567\nLOCAL,statx,RXNORM,301542\n")
    mapping = SiteMapping.load(tmp_path / "m.csv")
    simva = CodeSet(RXNORM=["36567"])
    assert _match(["2001266", "1000001"], simva) == [False, False]  # unknown without it
    assert _match(["2001266", "1000001"], simva, rollup=mapping.rollup()) == [True, True]
    assert _match(["1000001"], CodeSet(RXNORM=["83367"]), rollup=mapping.rollup()) == [True]
    # RxNorm -> RxNorm pairs are roll-ups: they do not replace the event's code; the others do
    ev = pd.DataFrame({"system": ["RXNORM", "LOCAL"], "code": ["2001266", "STATX"]})
    out, _ = mapping.apply(ev)
    assert list(out["code"]) == ["2001266", "301542"]


_CONTRACT = """
name = "statins"
version = "1.0"
[index]
rule = "fixed_date"
date = 2020-01-01
[windows.ever]
[[features]]
name = "statin"
source = "drug"
codes = { RXNORM = ["83367", "36567", "301542"] }
window = "ever"
[label]
name = "event"
codes = { SNOMED = ["22298006"] }
days_after = 365
"""


def test_the_feature_table_counts_a_prescribed_tablet_as_its_ingredient(tmp_path: Path) -> None:
    # Arrange: a FHIR site that prescribes tablets (SCD codes), one of them known only locally
    entries = []
    for i, code in enumerate(["259255", "312961", "2001266", "999999"]):
        entries += [_entry(f"urn:uuid:p{i}", _patient()),
                    _entry(None, _drug(f"urn:uuid:p{i}", code))]
    rec = load_fhir([_bundle(tmp_path, entries)], validate="all")
    contract = parse_contract(__import__("tomllib").loads(_CONTRACT))
    (tmp_path / "m.csv").write_text("source_system,source_code,target_system,target_code\n"
                                    "RXNORM,2001266,RXNORM,36567\n")
    # Act
    plain = build_features(contract, rec)
    mapped = build_features(contract, rec, site_mapping=SiteMapping.load(tmp_path / "m.csv"))
    # Assert
    assert plain.frame["statin"].to_dict() == {"p0": 1, "p1": 1, "p2": 0, "p3": 0}
    assert mapped.frame["statin"].to_dict() == {"p0": 1, "p1": 1, "p2": 1, "p3": 0}
