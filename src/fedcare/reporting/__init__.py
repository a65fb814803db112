"""Self-contained HTML reports of a federated study's ``history.json``.

Importing this package does not import matplotlib; figures are drawn only when a report is
rendered, so site nodes that never report stay light.
"""

from fedcare.reporting.html import render_report, write_report

__all__ = ["render_report", "write_report"]
