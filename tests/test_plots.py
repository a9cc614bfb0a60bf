"""The notebooks' table helper."""

import pandas as pd

from gradience.plots import markdown_table


def test_pipes_inside_cells_are_escaped_so_rows_keep_their_columns():
    md = markdown_table(pd.DataFrame({"measured": ["|Δ log r| 0.3", "plain"], "verdict": ["reproduced", "x"]}))
    rows = md.splitlines()
    assert len(rows) == 4
    assert rows[2].replace("\\|", "").count("|") == 3  # two cells: three unescaped separators
    assert "\\|Δ log r\\| 0.3" in rows[2]
