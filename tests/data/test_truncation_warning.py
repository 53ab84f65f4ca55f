"""A data summary warns when more than a few per cent of the rows were cut at data.max_length."""

from tunekit.data.pairs import PairStats
from tunekit.data.sft import TRUNCATION_WARNING_SHARE, TokenizeStats


def test_many_cut_rows_are_a_warning_in_the_summary():
    cut = TokenizeStats(rows=300, truncated=83).summary()
    assert "Warning: 28% of the rows were cut at data.max_length" in cut and "raise data.max_length" in cut
    pairs = PairStats(rows=100, response_truncated=20).summary()
    assert "Warning: 20% of the pairs had their responses cut at data.max_length" in pairs


def test_a_few_cut_rows_are_only_counted():
    few = int(TRUNCATION_WARNING_SHARE * 300)
    assert "Warning" not in TokenizeStats(rows=300, truncated=few).summary()
    assert "Warning" not in PairStats(rows=100, response_truncated=5, prompt_truncated=50).summary()
