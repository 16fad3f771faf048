"""Golem VM images (GVMI): the file format, building them, the local image store and a registry
server for it. Providers fetch and unpack images in :mod:`workgen.provider.images`."""

from .build import BuildError, BuiltImage, DebianRecipe, RecipeFile, build_image, load_recipe
from .gvmi import GvmiError, GvmiInfo, ImageMetadata, read_gvmi, sha3_224_file
from .store import ImageFiles, StoreError, StoredImage, default_store_dir

__all__ = [
    "BuildError", "BuiltImage", "DebianRecipe", "GvmiError", "GvmiInfo", "ImageFiles",
    "ImageMetadata", "StoreError", "StoredImage", "build_image", "default_store_dir",
    "RecipeFile", "load_recipe", "read_gvmi", "sha3_224_file",
]
