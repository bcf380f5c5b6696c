"""Text sources -> token blocks: the built-in corpus, file and dataset sources, packing, sampling.

Importing this package imports torch (for the block tensors) but not transformers or datasets.
"""

from sparsequant.data.blocks import (
    BlockStream,
    calibration_batches,
    pack_token_blocks,
    split_documents,
    token_stream,
)
from sparsequant.data.builtin import builtin_corpus, builtin_corpus_info
from sparsequant.data.cache import user_cache_dir
from sparsequant.data.sources import DataConfig, load_chat_records, load_text, split_train_heldout

__all__ = [
    "BlockStream",
    "DataConfig",
    "builtin_corpus",
    "builtin_corpus_info",
    "calibration_batches",
    "load_chat_records",
    "load_text",
    "pack_token_blocks",
    "split_documents",
    "split_train_heldout",
    "token_stream",
    "user_cache_dir",
]
