"""The `ann` selector: approximate nearest-neighbour key selection through a Faiss index.
`index.py` holds the selector and its index cache, `sparse_search` (and its compiled loop,
`ivf_kernel`) the search of sparse query rows; Faiss is imported only when an index is built."""

from sdattn.selectors.ann.index import AnnSelector

__all__ = ["AnnSelector"]
