"""Row layout of block-diagonal segments: the row count of least padding-plus-attention work."""

import types

from alignlab.data.layout import DEFAULT_ATTENTION_WIDTH, attention_width, cheapest_rows, spread


def test_spread_puts_the_longest_first_on_the_least_filled_row():
    assert spread([200, 190, 60, 50], 2) == [[0, 3], [1, 2]]  # 250 and 250 columns
    assert spread([200, 190, 60, 50], 3) == [[0], [1], [2, 3]]
    assert spread([5, 5], 4) == [[0], [1]]  # no empty rows


def test_cheapest_rows_by_hand():
    # cost R·T·(1 + T/c), c = 2048: one row 500·1.244 = 622; two rows 2·250·1.122 = 561;
    # three 3·200·1.098 = 659; four 4·200·1.098 = 878
    assert cheapest_rows([200, 190, 60, 50], 2048.0) == [[0, 3], [1, 2]]
    # attention nearly free: one row wins where two would pad (410 columns against 2 · 210)
    assert cheapest_rows([200, 150, 60], 1e9) == [[0, 1, 2]]
    # equal lengths: a row each (no padding, least attention)
    assert cheapest_rows([100, 100, 100], 2048.0) == [[0], [1], [2]]
    # attention dear (c = 10): three rows of 200 (12,600) beat two of 250 (13,000) and four (16,800)
    assert cheapest_rows([200, 190, 60, 50], 10.0) == [[0], [1], [2, 3]]


def test_attention_width_of_smollm2_is_2048_and_a_bare_config_gets_the_default():
    smollm2 = types.SimpleNamespace(
        hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536
    )
    # per layer: q 576·576 + k, v 2·576·192 + o 576·576 + MLP 3·576·1536 = 3,538,944 weights;
    # / (2 · 576) = 3072 columns in FLOPs, / 1.5 for CPU attention's lower rate
    assert attention_width(smollm2) == 2048.0
    assert attention_width(types.SimpleNamespace()) == DEFAULT_ATTENTION_WIDTH
