"""OMOP CDM v5.4 adapter: person, visit, measurement, condition and drug tables ->
:class:`CanonicalRecords`, with every row-level step done in DuckDB SQL.

Sources: a folder of CSV/Parquet exports (``person.csv``, ``measurement.csv.gz``,
``condition_occurrence.parquet``, ... any case), or a DuckDB database file holding the tables.
All columns are read as text and cast with ``TRY_CAST``, so a bad date or number is a counted
reject rather than a failed import, and the cast, the reject classification, the person join
and the union of domains run in one vectorised query per table (DuckDB; Raasveldt & Mühleisen,
*DuckDB: an embeddable analytical database*, SIGMOD 2019) -- pandas only receives the result.
Measured on this machine: see ``benchmarks/adapters_omop.py``.

Codes: ``*_concept_id`` becomes system ``OMOP`` (concept 0, "no matching concept", is not a
code). A site that knows the vocabulary of its ``*_source_value`` columns (condition source
values are ICD-10-CM codes, say) passes ``source_vocabulary={"condition": "ICD10CM"}`` and gets
an extra event in that system per row, so the contract's ICD-10 code set matches even when
the concept mapping is incomplete. Units come from ``unit_source_value`` as the site wrote
them (harmonized later). Birth dates: ``birth_datetime``, else year/month/day with a missing
month taken as 1 July and a missing day as the 15th (mid-period, halving the worst-case age
error).

Identifiers and concept ids exported through a spreadsheet come back as ``8532.0``; a trailing
``.0`` is dropped from every id before matching. Dates follow :mod:`fedcare.data.adapters.dates`
(offsets dropped -- local wall-clock time --, years 1678-2261: an out-of-range start is a
reject, an out-of-range end such as ``9999-12-31`` an open end, both counted). An event ends
before it starts only when its end *day* is before its start day: ``visit_end_date`` is
midnight, so comparing it with a ``visit_start_datetime`` would reject every same-day visit;
``*_end_datetime`` is preferred when present.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.adapters.canonical import DOMAINS, CanonicalRecords, empty_events
from fedcare.data.adapters.dates import (
    MAX_YEAR,
    MIN_YEAR,
    OFFSET_SQL,
    REASON_BAD_END,
    REASON_BIRTH_OUT_OF_RANGE,
    REASON_DATE_OUT_OF_RANGE,
    REASON_END_OUT_OF_RANGE,
)
from fedcare.data.harmonize.codes import canonical_system

if TYPE_CHECKING:
    import duckdb

TABLES = ("person", "observation_period", "visit_occurrence", "measurement",
          "condition_occurrence", "drug_exposure")
_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".tsv")

# domain -> (table, concept column, start date, start datetime, end date, end datetime,
#            value, unit, source)
_DOMAIN_SQL: dict[str, tuple[str, str, str, str | None, str | None, str | None, str | None,
                             str | None, str]] = {
    "encounter": ("visit_occurrence", "visit_concept_id", "visit_start_date",
                  "visit_start_datetime", "visit_end_date", "visit_end_datetime", None, None,
                  "visit_source_value"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date",
                    "measurement_datetime", None, None, "value_as_number", "unit_source_value",
                    "measurement_source_value"),
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date",
                  "condition_start_datetime", "condition_end_date", "condition_end_datetime",
                  None, None, "condition_source_value"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date",
             "drug_exposure_start_datetime", "drug_exposure_end_date",
             "drug_exposure_end_datetime", None, None, "drug_source_value"),
}

#: domain -> (table, column) whose code system ``source_vocabulary`` names for that domain.
SOURCE_VALUE_COLUMNS: dict[str, tuple[str, str]] = {
    domain: (spec[0], spec[8]) for domain, spec in _DOMAIN_SQL.items()}

GENDER_CONCEPTS = {"8532": "female", "8507": "male", "8521": "other", "8551": "unknown"}
REASON_UNMAPPED_GENDER = "unmapped gender (person kept, sex unknown)"


def load_omop(source: str | Path, *, source_vocabulary: Mapping[str, str] | None = None,
              threads: int | None = None) -> CanonicalRecords:
    """Read an OMOP CDM v5.4 extract (folder of CSV/Parquet files or a DuckDB file).

    A file DuckDB cannot read (cut short, bytes appended, not CSV at all) is a
    :class:`DataError` naming the file and what is wrong with it, never a DuckDB traceback:
    the CLI prints one line and a node reports the dataset as unusable and serves the rest.
    """
    import duckdb

    vocab = _vocab(source_vocabulary or {})
    src = Path(source)
    if src.is_file() and src.suffix.lower() in (".duckdb", ".db", ".ddb"):
        try:
            con = duckdb.connect(str(src), read_only=True)
        except duckdb.Error as exc:
            raise _unreadable(f"OMOP database file {src}", exc, src) from exc
        origins: dict[str, str] = {}
    elif src.is_dir():
        con = duckdb.connect(":memory:")
        origins = {}
    else:
        raise DataError(f"OMOP source {src} is neither a folder of CDM tables nor a DuckDB "
                        "file (.duckdb, .db); check the path in the site source file")
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        if src.is_dir():
            origins = _register_files(con, src)
            present = set(origins)
        else:
            present = _db_tables(con)
        if "person" not in present:
            raise DataError(f"OMOP source {src} has no person table (person.csv / .parquet or a "
                            "'person' table); it is required")
        return _load(con, present, vocab, origins)
    except duckdb.Error as exc:
        raise DataError(f"cannot read OMOP source {src}: {_problem(exc, src)} (is every table "
                        "a CDM v5.4 table with its standard columns?)") from exc
    finally:
        con.close()


def _problem(exc: Exception, path: Path) -> str:
    """DuckDB's error as one short line: the problem, without DuckDB's list of reader options
    to try, and without the row it quotes (a patient's record, which must not leave the
    site in a quality report or a log line meant for the hub)."""
    kept: list[str] = []
    lines = iter(str(exc).splitlines())
    for raw in lines:
        line = raw.strip()
        if line.startswith(("Possible fixes", "The search space", "LINE ", "file =")):
            break
        if line.startswith("Original Line"):
            if not line.removeprefix("Original Line:").strip():
                next(lines, None)  # the quoted row is on the next line
            continue
        if line:
            kept.append(line)
    text = " ".join(kept)
    for named in {str(path), str(path.absolute())}:  # the caller names the file already
        text = text.replace(f'"{named}"', "")
    text = re.sub(r"^[A-Za-z ]{0,40}Error: ", "", text)
    if "sniffing file" in text:
        text = ("its CSV layout cannot be detected (rows with different numbers of columns, "
                "stray quotes or binary bytes)")
    return " ".join(text.split())[:240] or type(exc).__name__


def _unreadable(what: str, exc: Exception, path: Path) -> DataError:
    return DataError(f"{what} cannot be read: {_problem(exc, path)}. Is the export complete "
                     "and well-formed (not cut short, nothing appended)? Export it again")


def _vocab(raw: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for domain, system in raw.items():
        if domain not in DOMAINS:
            raise ConfigError(f"source_vocabulary: unknown domain {domain!r}; use {list(DOMAINS)}")
        out[domain] = canonical_system(system)
    return out


def _find(folder: Path, table: str) -> Path | None:
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        for suf in _SUFFIXES:
            if name == table + suf:
                return p
    return None


def _register_files(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, str]:
    """A view per CDM table file found in ``folder``; returns table -> file, for errors."""
    import duckdb

    present: dict[str, str] = {}
    for table in TABLES:
        p = _find(folder, table)
        if p is None:
            continue
        lit = str(p).replace("'", "''")
        if p.name.lower().endswith((".parquet", ".pq")):
            rel = f"read_parquet('{lit}')"
        else:
            delim = "\t" if p.name.lower().endswith(".tsv") else ","
            rel = f"read_csv('{lit}', header = true, all_varchar = true, delim = '{delim}')"
        try:  # DuckDB reads the start of the file here, to detect its layout
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM {rel}")
        except duckdb.Error as exc:
            raise _unreadable(f"OMOP table {table} ({p})", exc, p) from exc
        present[table] = str(p)
    return present


def _db_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT lower(table_name) FROM information_schema.tables").fetchall()
    return {r[0] for r in rows} & set(TABLES)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0].lower() for r in con.execute(f"DESCRIBE {table}").fetchall()}


def _col(cols: set[str], name: str | None, cast: str = "VARCHAR") -> str:
    if name is None or name not in cols:
        return f"CAST(NULL AS {cast})"
    return f"NULLIF(trim(CAST({name} AS VARCHAR)), '')"


def _id(cols: set[str], name: str | None) -> str:
    """An id or concept id as text, without the ``.0`` a float export appends."""
    return f"NULLIF(regexp_replace({_col(cols, name)}, '\\.0+$', ''), '')"


def _ts(expr: str) -> str:
    """Text -> TIMESTAMP at local wall-clock time (a trailing offset is dropped), NULL when
    unparseable."""
    return f"TRY_CAST(regexp_replace({expr}, '{OFFSET_SQL}', '\\1') AS TIMESTAMP)"


def _bounded(ts: str) -> str:
    """``ts``, or NULL outside years 1678-2261 (datetime64[ns] cannot hold it)."""
    return f"CASE WHEN year({ts}) BETWEEN {MIN_YEAR} AND {MAX_YEAR} THEN {ts} END"


def _load(con: duckdb.DuckDBPyConnection, present: set[str],
          vocab: Mapping[str, str], origins: Mapping[str, str]) -> CanonicalRecords:
    import duckdb

    rejects: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for table in sorted(present):
        try:  # reads every row: a file cut short or with bytes appended fails here
            counts[table] = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        except duckdb.Error as exc:
            origin = origins.get(table)
            raise _unreadable(f"OMOP table {table}" + (f" ({origin})" if origin else ""), exc,
                              Path(origin or table)) from exc
    _persons_view(con, rejects)
    persons = con.execute("SELECT person_id, birth_date, sex FROM _persons").df()
    parts = [_domain_sql(con, d, vocab.get(d)) for d in DOMAINS if _DOMAIN_SQL[d][0] in present]
    if not parts:
        return CanonicalRecords.from_frames(persons, empty_events(), rejects=rejects,
                                            source_counts=counts)
    con.execute("CREATE TEMP TABLE _ev AS " + " UNION ALL ".join(parts))
    for reason, n in con.execute(
            "SELECT reason, count(*) FROM _ev WHERE reason IS NOT NULL GROUP BY reason"
    ).fetchall():
        rejects[reason] += int(n)
    for reason, n in con.execute(
            "SELECT end_note, count(*) FROM _ev WHERE reason IS NULL AND end_note IS NOT NULL "
            "AND (code IS NOT NULL OR (src_system IS NOT NULL AND src_code IS NOT NULL)) "
            "GROUP BY end_note").fetchall():
        rejects[reason] += int(n)
    events = con.execute("""
        SELECT person_id, domain, 'OMOP' AS system, code, value, unit, start, "end"
          FROM _ev WHERE reason IS NULL AND code IS NOT NULL
        UNION ALL
        SELECT person_id, domain, src_system, src_code, value, unit, start, "end"
          FROM _ev WHERE reason IS NULL AND src_system IS NOT NULL AND src_code IS NOT NULL
    """).df()
    return CanonicalRecords.from_frames(persons, events, rejects=rejects, source_counts=counts)


def _persons_view(con: duckdb.DuckDBPyConnection, rejects: Counter[str]) -> None:
    c = _columns(con, "person")
    if "person_id" not in c:
        raise DataError("OMOP person table has no person_id column")
    gender = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in GENDER_CONCEPTS.items())
    y = f"TRY_CAST({_col(c, 'year_of_birth')} AS INTEGER)"
    m = f"TRY_CAST({_col(c, 'month_of_birth')} AS INTEGER)"
    d = f"TRY_CAST({_col(c, 'day_of_birth')} AS INTEGER)"
    src = f"upper(COALESCE({_col(c, 'gender_source_value')}, ''))"
    con.execute(f"""
        CREATE TEMP TABLE _p0 AS SELECT
          {_id(c, 'person_id')} AS person_id,
          COALESCE({_ts(_col(c, 'birth_datetime'))},
                   TRY_CAST(TRY(make_date({y}, COALESCE({m}, 7),
                                          COALESCE({d}, CASE WHEN {m} IS NULL THEN 1 ELSE 15
                                                        END))) AS TIMESTAMP)) AS birth_any,
          CASE {_id(c, 'gender_concept_id')} {gender} ELSE
            CASE {src}
              WHEN 'F' THEN 'female' WHEN 'FEMALE' THEN 'female'
              WHEN 'M' THEN 'male' WHEN 'MALE' THEN 'male' END
          END AS sex_mapped,
          (NULLIF({_id(c, 'gender_concept_id')}, '0') IS NOT NULL OR {src} <> '') AS sex_given
        FROM person""")
    con.execute(f"""
        CREATE TEMP TABLE _p AS SELECT person_id, {_bounded('birth_any')} AS birth_date,
               birth_any, COALESCE(sex_mapped, 'unknown') AS sex,
               sex_mapped IS NULL AND sex_given AS sex_unmapped
          FROM _p0""")
    for reason, sql in (
        ("missing person id", "SELECT count(*) FROM _p WHERE person_id IS NULL"),
        ("duplicate person row", "SELECT count(*) - count(DISTINCT person_id) FROM _p "
                                 "WHERE person_id IS NOT NULL"),
        ("missing or unparseable birth date",
         "SELECT count(*) FROM _p WHERE person_id IS NOT NULL AND birth_any IS NULL"),
        (REASON_BIRTH_OUT_OF_RANGE, "SELECT count(*) FROM _p WHERE person_id IS NOT NULL "
                                    "AND birth_any IS NOT NULL AND birth_date IS NULL"),
        (REASON_UNMAPPED_GENDER,
         "SELECT count(*) FROM _p WHERE person_id IS NOT NULL AND sex_unmapped"),
    ):
        n = int(con.execute(sql).fetchone()[0])  # type: ignore[index]
        if n:
            rejects[reason] += n
    con.execute("""CREATE TEMP TABLE _persons AS
        SELECT person_id, any_value(birth_date ORDER BY birth_date NULLS LAST) AS birth_date,
               any_value(sex ORDER BY sex) AS sex
          FROM _p WHERE person_id IS NOT NULL GROUP BY person_id""")


def _domain_sql(con: duckdb.DuckDBPyConnection, domain: str, src_system: str | None) -> str:
    table, concept, sdate, sdt, edate, edt, value, unit, srcval = _DOMAIN_SQL[domain]
    c = _columns(con, table)
    if "person_id" not in c or concept not in c:
        raise DataError(f"OMOP table {table} lacks person_id or {concept}")
    raw_value = _col(c, value)
    src = f"'{src_system}'" if src_system else "CAST(NULL AS VARCHAR)"
    src_code = _col(c, srcval) if src_system else "CAST(NULL AS VARCHAR)"
    # *_datetime preferred, *_date otherwise; an out-of-range value of either is skipped
    # (``start_any``/``end_any`` keep it to tell "out of range" from "unparseable").
    sdt_ts, sdate_ts = _ts(_col(c, sdt)), _ts(_col(c, sdate))
    edt_ts, edate_ts = _ts(_col(c, edt)), _ts(_col(c, edate))
    start = f"COALESCE({_bounded(sdt_ts)}, {_bounded(sdate_ts)})"
    start_any = f"COALESCE({sdt_ts}, {sdate_ts})"
    end = f"COALESCE({_bounded(edt_ts)}, {_bounded(edate_ts)})"
    end_any = f"COALESCE({edt_ts}, {edate_ts})"
    end_raw = f"COALESCE({_col(c, edt)}, {_col(c, edate)})"
    code = f"NULLIF({_id(c, concept)}, '0')"
    return f"""
      SELECT t.person_id, '{domain}' AS domain, t.code, t.value, t.unit, t.start, t."end",
             t.src_system, t.src_code,
             CASE WHEN t.person_id IS NULL THEN 'missing person id'
                  WHEN p.person_id IS NULL THEN 'event for unknown person'
                  WHEN t.start IS NULL AND t.start_any IS NOT NULL
                    THEN '{REASON_DATE_OUT_OF_RANGE}'
                  WHEN t.start IS NULL THEN 'missing or unparseable date'
                  WHEN CAST(t."end" AS DATE) < CAST(t.start AS DATE) THEN 'end before start'
                  WHEN t.raw_value IS NOT NULL AND t.value IS NULL THEN 'value not a number'
                  WHEN t.code IS NULL AND (t.src_system IS NULL OR t.src_code IS NULL)
                    THEN 'unmapped concept (0)'
             END AS reason,
             CASE WHEN t."end" IS NULL AND t.end_any IS NOT NULL
                    THEN '{REASON_END_OUT_OF_RANGE}'
                  WHEN t.end_any IS NULL AND t.end_raw IS NOT NULL THEN '{REASON_BAD_END}'
             END AS end_note
      FROM (SELECT {_id(c, 'person_id')} AS person_id, {code} AS code,
                   {raw_value} AS raw_value, TRY_CAST({raw_value} AS DOUBLE) AS value,
                   COALESCE({_col(c, unit)}, '') AS unit, {start} AS start,
                   {start_any} AS start_any, {end} AS "end", {end_any} AS end_any,
                   {end_raw} AS end_raw, {src} AS src_system, {src_code} AS src_code
              FROM {table}) AS t
      LEFT JOIN _persons AS p ON p.person_id = t.person_id"""
