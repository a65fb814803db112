"""A large model over a slow, proxied link: the transfer path has no hidden timeouts.

Each node reaches the hub only through :class:`SlowProxy` (``HTTPS_PROXY``), a CONNECT proxy
that forwards 8 MB/s per direction, and the model is a 32 MB MLP: every task download and
update upload takes seconds, far longer than a single socket read. The study must complete,
equal its simulation, and every byte must have gone through the proxy (the node honours the
proxy setting, as hospitals require). ``benchmarks/large_model.py`` runs the same path with a
500 MB model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from safetensors.numpy import load as st_load

import fedcare
from tests.integration.network import NetFederation, simulation_of, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture
from tests.integration.slow_proxy import SlowProxy

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow

HIDDEN = 800_000          # 8 features -> 800k -> 1: ~8.0 M parameters, 32 MB per message
RATE = 8 * 1024 * 1024    # bytes per second, per direction


def test_32mb_model_over_an_8mb_per_s_proxy_completes_and_equals_simulation(net: Net) -> None:
    fed = net(sites=("alpha", "beta"))
    fed.start_hub()
    with SlowProxy(rate=RATE) as proxy:
        for site in fed.sites:
            fed.start_node(site, env={"HTTPS_PROXY": proxy.url, "NO_PROXY": ""})
        fed.wait_sites(list(fed.sites))
        cfg = study_config(name="large", rounds=1, model={"name": "mlp", "hidden": [HIDDEN]},
                           train={"local_steps": 2, "batch_size": 16, "lr": 0.05},
                           run={"round_timeout": 240})
        sid = fed.submit(cfg)
        st = fed.wait_study(sid, timeout=300)
        assert st["status"] == "completed", st.get("error")
        message = 4 * 10 * HIDDEN
        # a fit task and an evaluation task down per site, one update up per site
        assert proxy.bytes_down >= 2 * len(fed.sites) * message
        assert proxy.bytes_up >= len(fed.sites) * message
        assert proxy.tunnels >= len(fed.sites)
        model = st_load(fed.artifact(sid, "model.safetensors"))
    sim = fedcare.simulate(simulation_of(cfg, fed.tables, list(fed.sites)))
    assert sim.final_parameters is not None
    for k, v in sim.final_parameters.items():
        np.testing.assert_allclose(model[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
