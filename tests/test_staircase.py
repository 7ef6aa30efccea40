"""The runtime's channel block is read off measured table rows (``measure.staircase``)."""
from edgeprune.measure.lut import LayerSig, SigTable
from edgeprune.measure.staircase import channel_block


def _row(cost, ins=(8, 24, 40, 56, 64), outs=tuple(range(8, 129, 8))):
    sig = LayerSig("conv", (3, 3), (1, 1), (1, 1), (24, 24))
    return SigTable(sig, list(ins), list(outs), [[cost(i, o) for o in outs] for i in ins])


def test_a_staircase_of_16_is_found_and_a_line_is_not():
    stairs = [_row(lambda i, o: 0.001 * i * (-(-o // 16)) + 0.01)]
    line = [_row(lambda i, o: 0.0001 * i * o + 0.01)]
    found = channel_block(stairs, 8)
    assert found.block == 16, found.to_dict()
    assert "every 16 output channels" in found.summary()
    assert channel_block(line, 8).block == 8
    # a staircase of 32 is found as 32, not stopped at 16
    assert channel_block([_row(lambda i, o: 0.001 * i * (-(-o // 32)) + 0.01)], 8).block == 32


def test_flat_overhead_lines_and_thin_evidence_keep_the_grid():
    flat = [_row(lambda i, o: 0.01 + (0.0001 if (o // 8) % 2 else 0.0))]
    assert channel_block(flat, 8).block == 8  # lines that barely grow are noise, not evidence
    short = [_row(lambda i, o: 0.001 * i * (-(-o // 16)) + 0.01, ins=(8,), outs=(8, 16, 24))]
    assert channel_block(short, 8).block == 8
