"""The provider side on a real yagna node: the agent (REST) and the execution unit (GSB).

:func:`run_provider` connects to a yagna daemon (its REST API and its GSB) and runs one
:class:`ProviderAgent` until cancelled.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...gsb import open_gsb
from ..images import ImageResolver
from ..offer import ProviderConfig
from ..terms import DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT
from .agent import PLATFORM, ProviderAgent
from .rest import RestClient, YagnaApiError

__all__ = ["PLATFORM", "ProviderAgent", "RestClient", "YagnaApiError", "run_provider"]

log = logging.getLogger(__name__)


async def run_provider(config: ProviderConfig, *, api_url: str, appkey: str, gsb_url: str,
                       subnet: str = "public", debit_note_interval: float = 60.0,
                       work_root: Path | None = None, overcharge: float = 1.0,
                       images: ImageResolver | None = None,
                       idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                       accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT) -> None:
    """Run a provider agent on the yagna node at ``api_url``/``gsb_url`` until cancelled.

    ``images`` resolves demands' images (by default only the host image is offered)."""
    rest = RestClient(api_url, appkey)
    try:
        me = await rest.get("/me")
        node_id = me["identity"]
        async with open_gsb(gsb_url, name=f"workgen-provider-{config.name}") as bus:
            agent = ProviderAgent(config, rest, bus, node_id, subnet=subnet,
                                  debit_note_interval=debit_note_interval, work_root=work_root,
                                  overcharge=overcharge, images=images,
                                  idle_timeout=idle_timeout, accept_timeout=accept_timeout)
            log.info("provider %s on node %s", config.name, node_id)
            await agent.run()
    finally:
        await rest.aclose()
