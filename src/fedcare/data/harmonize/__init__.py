"""Harmonization: units (pint, with analyte molar masses) and code sets (prefix matching, site
mappings), so that values from every site mean the same before they become features."""

from __future__ import annotations
