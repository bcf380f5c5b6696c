"""Packed-size arithmetic against hand counts, and the evaluate stage's size section against the files."""

import math

from sparsequant.eval.footprint import LayerFormat, packed_model_bytes, packed_weight_bits


def test_packed_bits_by_hand():
    shape = (8, 16)  # 128 values
    assert packed_weight_bits(shape, LayerFormat()) == 128 * 16
    # 2:4: 64 kept fp16 values + a 2-bit position for each
    assert packed_weight_bits(shape, LayerFormat(nm=(2, 4))) == 64 * 16 + 64 * 2
    # 4:8 needs 3-bit positions
    assert packed_weight_bits(shape, LayerFormat(nm=(4, 8))) == 64 * 16 + 64 * 3
    # 2:4 + 4-bit asymmetric, groups of 8 columns: 8 rows x 2 groups, each an fp16 scale and a 4-bit zero
    assert packed_weight_bits(shape, LayerFormat(nm=(2, 4), bits=4, group_size=8, symmetric=False)) == \
        64 * 4 + 64 * 2 + 16 * (16 + 4)
    # dense 8-bit symmetric per-channel: one fp16 scale per row
    assert packed_weight_bits(shape, LayerFormat(bits=8)) == 128 * 8 + 8 * 16


def test_packed_model_counts_untargeted_tensors_at_16_bits():
    shapes = {"emb.weight": (10, 4), "norm.weight": (4,), "proj.weight": (4, 8)}
    formats = {"proj.weight": LayerFormat(nm=(2, 4))}
    expected_bits = 40 * 16 + 4 * 16 + (16 * 16 + 16 * 2)
    assert packed_model_bytes(shapes, formats) == math.ceil(expected_bits / 8)
