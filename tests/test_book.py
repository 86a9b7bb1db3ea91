"""Tests of metalib.book.table: the Markdown a chapter's result table becomes, and its errors."""

from __future__ import annotations

import pytest

from metalib.book import table


def test_table_aligns_the_first_column_left_and_the_rest_right():
    md = table(["method", "1 shot", "5 shots"], [["MAML", "85.4%", 0.91], ("Reptile", 1, 2)])
    assert md.data.splitlines() == [
        "| method | 1 shot | 5 shots |",
        "| --- | ---: | ---: |",
        "| MAML | 85.4% | 0.91 |",
        "| Reptile | 1 | 2 |",
    ]


def test_table_escapes_pipes_and_accepts_no_rows():
    assert table(["a"], [["x|y"]]).data.splitlines()[-1] == "| x\\|y |"
    assert table(["a", "b"], []).data.count("\n") == 1


def test_table_rejects_rows_of_the_wrong_length_and_no_columns():
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        table(["a", "b"], [["x", "y"], ["z"]])
    with pytest.raises(ValueError, match="at least one column"):
        table([], [])
