"""An image study over the network: each node maps the dataset to its own DICOM/NIfTI folder
and label file; the hub never sees an image."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.network import NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture
from tests.unit.test_image_folder_study import write_site

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow


def test_image_folders_at_two_nodes_train_a_cnn(net: Net) -> None:
    fed = net(sites=("alpha", "beta"))
    for i, site in enumerate(fed.sites):
        folder, labels = write_site(fed.root / "images" / site, 40, i, nifti=bool(i))
        conf = fed.node_configs[site]
        conf.write_text(conf.read_text().replace(
            "[approval]", f'[datasets.xray]\nimages = "{folder}"\nlabels = "{labels}"\n\n'
                          "[approval]"))
    fed.start()
    sites = {s["name"]: s for s in fed.call("GET", "/v1/sites").json()}
    assert {d["name"]: d["rows"] for d in sites["alpha"]["datasets"]}["xray"] == 40
    cfg = study_config(name="xray", rounds=4,
                       data={"dataset": "xray", "features": [], "image_size": 16,
                             "standardize": False},
                       model={"name": "cnn", "channels": [4]},
                       train={"lr": 0.1, "batch_size": 8, "local_epochs": 2})
    cfg["data"].pop("label", None)
    cfg["data"]["label"] = "label"
    st = fed.run_study(cfg, timeout=120)
    assert st["rounds"][-1]["sites_completed"] == ["alpha", "beta"]
    import json

    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    assert history["final"]["global_metrics"]["accuracy"] >= 0.8
