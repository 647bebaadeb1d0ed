"""Retrieval in practice: an image index of a folder (embeddings, incremental updates, FAISS at archive
scale; or of large scenes, window by window), searched by text or by image from the command line
(``rsitr-search``), a web page (``rsitr-app``) and result grids (``rsitr-visualize``)."""

from ..evaluation.inference import ModelIdentity, RetrievalModel, load_adapter
from .ann import ANNConfig, ANNIndex
from .cli import main
from .errors import SearchError
from .index import ImageIndex, list_images, model_mismatch, open_index, read_image
from .query import Hit, hits_geojson, nearest_images, search_captions, search_images, similar_images
from .scenes import SceneInfo, Tiling
from .update import IndexUpdate, build_index, compact

__all__ = [
    "ANNConfig",
    "ANNIndex",
    "Hit",
    "ImageIndex",
    "IndexUpdate",
    "SceneInfo",
    "ModelIdentity",
    "RetrievalModel",
    "SearchError",
    "Tiling",
    "build_index",
    "compact",
    "hits_geojson",
    "list_images",
    "load_adapter",
    "main",
    "model_mismatch",
    "nearest_images",
    "open_index",
    "read_image",
    "search_captions",
    "search_images",
    "similar_images",
]
