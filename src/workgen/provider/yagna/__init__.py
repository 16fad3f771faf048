"""The provider side on a real yagna node: the agent (REST) and the execution unit (GSB).

:func:`run_provider` connects to a yagna daemon (its REST API and its GSB) and runs one
:class:`~workgen.provider.agent.ProviderAgent` on it, through a :class:`YagnaLink`, until
cancelled.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...gftp import GftpScheme
from ...gsb import open_gsb
from ..agent import ProviderAgent
from ..images import FetchPolicy, ImageResolver, ImageStore
from ..offer import ProviderConfig
from ..terms import DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT
from .agent import PLATFORM, YagnaLink
from .rest import RestClient, YagnaApiError

__all__ = ["PLATFORM", "RestClient", "YagnaApiError", "YagnaLink", "run_provider"]

log = logging.getLogger(__name__)


async def run_provider(config: ProviderConfig, *, api_url: str, appkey: str, gsb_url: str,
                       subnet: str = "public", debit_note_interval: float = 60.0,
                       work_root: Path | None = None, overcharge: float = 1.0,
                       images: ImageResolver | None = None,
                       idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                       accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT) -> None:
    """Run a provider agent on the yagna node at ``api_url``/``gsb_url`` until cancelled.

    ``images`` resolves demands' images (by default: the host image, and GVMI images fetched
    from public addresses into the default image cache)."""
    rest = RestClient(api_url, appkey)
    try:
        me = await rest.get("/me")
        node_id = me["identity"]
        async with open_gsb(gsb_url, name=f"workgen-provider-{config.name}") as bus:
            link = YagnaLink(rest, bus, config.name)
            agent = ProviderAgent(
                config, node_id, link, subnet=subnet, platform=PLATFORM,
                debit_note_interval=debit_note_interval,
                images=images or ImageResolver(ImageStore(), dev_images=False, fetch=FetchPolicy()),
                work_root=work_root, remote_schemes={"gftp": GftpScheme(bus)},
                idle_timeout=idle_timeout, accept_timeout=accept_timeout, overcharge=overcharge)
            log.info("provider %s on node %s", config.name, node_id)
            await link.run(agent)
    finally:
        await rest.aclose()
