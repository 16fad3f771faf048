"""Images on the provider's side: which root an activity runs on, fetching and unpacking GVMI
images, and the cache they are unpacked into."""

from .cache import DEFAULT_MAX_CACHE_BYTES, ImageCache, ImageLease, ImageUnavailable, PreparedImage
from .fetch import DEFAULT_MAX_IMAGE_BYTES, FetchError, FetchPolicy
from .source import (
    DEV_IMAGES_ENV, IMAGE_TAG, GvmiImage, Image, ImageRequest, ImageResolver, ImageStore,
)

__all__ = [
    "DEFAULT_MAX_CACHE_BYTES", "DEFAULT_MAX_IMAGE_BYTES", "DEV_IMAGES_ENV", "IMAGE_TAG",
    "FetchError", "FetchPolicy", "GvmiImage", "Image", "ImageCache", "ImageLease",
    "ImageRequest", "ImageResolver", "ImageStore", "ImageUnavailable", "PreparedImage",
]
