"""The embedded local network: a whole Golem network in process, behind the backend seam.

``LocalNetwork`` implements :class:`workgen.backends.base.Backend` with real market matching,
agreements, sandboxed activities, debit notes, invoices and a budget-enforcing ledger.
"""

from ...provider.agent import AgentAgreement, ProviderAgent
from ...provider.images import DEV_IMAGES_ENV, IMAGE_TAG, ImageStore
from ...provider.offer import INET, ProviderConfig, default_provider_configs
from .ledger import PLATFORM, Ledger, Payment
from .network import LocalNetwork

__all__ = [
    "AgentAgreement",
    "DEV_IMAGES_ENV",
    "IMAGE_TAG",
    "INET",
    "ImageStore",
    "Ledger",
    "LocalNetwork",
    "PLATFORM",
    "Payment",
    "ProviderAgent",
    "ProviderConfig",
    "default_provider_configs",
]
