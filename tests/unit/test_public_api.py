"""The public API surface (after httpx's ``tests/test_exported_members.py``): what a script
or notebook may import from fedcare, pinned. A name added or removed here is an API change,
made on purpose.

For each module: ``__all__`` is the pinned list (in ruff's RUF022 order), every name in it
exists, and every public class or function the module defines is in it (nothing public is
left unexported).
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

PUBLIC = {
    "fedcare": ["__version__", "load_model", "simulate"],
    "fedcare.client": ["ARTIFACTS", "FINAL_STATES", "OPTIONAL_ARTIFACTS", "TOKEN_ENV",
                       "HubClient", "watch"],
    "fedcare.hub.schemas": [
        "DatasetQuality", "DecisionName", "DecisionRecorded", "DeclaredDataset", "ErrorBody",
        "Event", "ExportDecisionInfo", "ExportInfo", "ExportState", "Health", "HelloAck",
        "LedgerHeadAck", "ModelSummary", "NewUserRequest", "NodeStudy", "PendingStudy",
        "ReplyAccepted", "Response", "Resumed", "RoleName", "RoundRecord", "SiteApproval",
        "SiteInfo", "SiteKeyCert", "StudyState", "StudyStatus", "StudySummary", "Submitted",
        "UserCreated", "UserSummary"],
}


def _defined_here(module: ModuleType) -> set[str]:
    """Public classes and functions written in ``module`` itself (not imported into it)."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", None) == module.__name__}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_the_pinned_public_surface(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)

    assert exported == PUBLIC[name]
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names {member!r}, which is missing"
    assert _defined_here(module) <= set(exported), (
        f"{name} defines public names not in __all__: {_defined_here(module) - set(exported)}")


def test_the_hub_schemas_are_what_the_api_declares() -> None:
    """Every response model is frozen and documented; the schemas import nothing of fedcare
    (the researcher's client reads them without importing the hub)."""
    from fedcare.hub import schemas

    source = inspect.getsource(schemas)
    assert "import fedcare" not in source and "from fedcare" not in source
    for name in schemas.__all__:
        value = getattr(schemas, name)
        if inspect.isclass(value):
            assert value.model_config.get("frozen"), name
            assert (value.__doc__ or "").strip(), f"{name} has no docstring"
