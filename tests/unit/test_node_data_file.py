"""The site's node data file (site.toml): every kind of dataset, approvals and the privacy
policy, read through the one settings loader; bad keys are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.core.errors import ConfigError
from fedcare.node.local_config import load_node_data


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_every_kind_of_dataset_and_the_policy(tmp_path: Path) -> None:
    node = load_node_data(_write(tmp_path, """
[datasets.breast]
path = "breast.csv"
[datasets.cardio]
source = "source.toml"
contract = "cardio.toml"
[datasets.xray]
images = "img/"
labels = "labels.csv"
[approval]
studies = ["abc"]
[privacy]
policy = "privacy.toml"
"""))
    assert node.datasets["breast"] == tmp_path / "breast.csv"
    assert node.clinical["cardio"].contract == tmp_path / "cardio.toml"
    assert node.images["xray"].folder == tmp_path / "img"
    assert node.approves("abc") and not node.approves("abd") and not node.approve_any
    assert node.privacy_policy == tmp_path / "privacy.toml"


def test_any_approves_everything_and_no_approval_approves_nothing(tmp_path: Path) -> None:
    assert load_node_data(_write(tmp_path, '[datasets.a]\npath = "a.csv"\n[approval]\n'
                                           'studies = "any"')).approves("x")
    assert not load_node_data(_write(tmp_path, '[datasets.a]\npath = "a.csv"')).approves("x")


@pytest.mark.parametrize(("text", "message"), [
    ('[datasets.a]\npath = "a.csv"\n[aproval]\nstudies = []', "unknown key 'aproval'"),
    ('[datasets.a]\npath = "a.csv"\nsep = ";"', "unknown key 'datasets.a.sep'"),
    ('[datasets.a]\nimages = "img/"', "missing key 'datasets.a.labels'"),
    ('[datasets.a]\nsource = "s.toml"', "missing key 'datasets.a.contract'"),
    ('[datasets.a]\npath = 3', "'datasets.a.path'"),
    ('[datasets]', "'datasets'"),
    ('[approval]\nstudies = []', "missing key 'datasets'"),
    ('[datasets.a]\npath = "a.csv"\n[approval]\nstudies = "all"', "'approval.studies'"),
    ('[datasets.a]\npath = "a.csv"\n[privacy]\npolicy = "p.toml"\nmax_epsilon = 3',
     "unknown key 'privacy.max_epsilon'"),
])
def test_a_bad_key_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_node_data(_write(tmp_path, text))
    assert message in str(err.value) and "site.toml" in str(err.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_data(tmp_path / "nope.toml")
