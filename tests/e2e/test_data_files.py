"""Data files as owners have them: GB18030/GBK CSVs from Chinese systems, `NA`/`NULL` from R, Excel and pandas."""
from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

from fedtrust.config import load_node_config
from fedtrust.errors import ConfigError
from fedtrust.query.dataset import Dataset, file_digest
from fedtrust.trust.schema import Column, Schema

SCHEMA = Schema((
    Column("region", "category", values=("华北", "华南", "西部")),
    Column("income", "float", 0.0, 1000.0),
    Column("age", "int", 18, 100),
))
ROWS = "region,income,age\n华北,120.5,30\n华南,80,41\n西部,55.25,67\n华北,,25\n"


def _write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def _columns(ds: Dataset) -> dict:
    cols = ds.columns(("region", "income", "age"))
    return {k: [None if v is None else (v if isinstance(v, str) else float(v)) for v in cols[k].tolist()]
            for k in cols}


def test_a_gbk_csv_is_named_with_its_fix_and_reads_the_same_with_its_encoding_declared(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    utf8 = _write(tmp_path, "loans.csv", ROWS)
    gbk = _write(tmp_path, "loans-gbk.csv", ROWS, "gbk")
    with pytest.raises(ConfigError) as e:
        Dataset.open(gbk, SCHEMA)
    msg = str(e.value)
    assert "is not UTF-8" in msg and "GB18030" in msg
    assert "iconv -f GB18030 -t UTF-8 loans-gbk.csv" in msg and 'encoding = "gb18030"' in msg
    assert "华" not in msg  # a data value never appears in an error
    with Dataset.open(utf8, SCHEMA) as a, Dataset.open(gbk, SCHEMA, encoding="gb18030") as b:
        assert _columns(a) == _columns(b) and _columns(b)["region"][:2] == ["华北", "华南"]
    assert list(scratch.iterdir()) == []  # the UTF-8 copy is gone once the rows are loaded
    with pytest.raises(ConfigError, match="is not valid utf-16"):  # a wrong declaration is named too
        Dataset.open(gbk, SCHEMA, encoding="utf-16")


def test_na_markers_are_refused_with_the_declaration_to_make_and_read_as_missing_once_declared(tmp_path):
    na = _write(tmp_path, "na.csv", "region,income,age\n华北,NA,30\n华南,80,NULL\n西部,55.25,67\n")
    with pytest.raises(ConfigError, match=r"column `income` .* not float .* declare null_values = \[\"\", \"NA\"\]"):
        Dataset.open(na, SCHEMA)
    bad = _write(tmp_path, "bad.csv", "region,income,age\n华北,12x,30\n")
    with pytest.raises(ConfigError) as e:  # a value that is no missing-value marker is not quoted
        Dataset.open(bad, SCHEMA)
    assert "null_values" not in str(e.value) and "12x" not in str(e.value)
    with Dataset.open(na, SCHEMA, null_values=("", "NA", "NULL")) as ds:
        cols = _columns(ds)
    assert cols["income"] == [None, 80.0, 55.25] and cols["age"] == [30.0, None, 67.0]


def test_node_config_declares_encoding_and_null_values_per_dataset(tmp_path):
    base = '[node]\nname = "a"\nlisten = "127.0.0.1:0"\ncredentials = "c"\nstate = "s"\n'
    cfg = tmp_path / "node.toml"
    cfg.write_text(base + '[[datasets]]\nproduct = "p.json"\npath = "d.csv"\nencoding = "GBK"\n'
                   'null_values = ["", "NA", "NULL"]\n[[datasets]]\nproduct = "q.json"\npath = "e.csv"\n')
    a, b = load_node_config(cfg).datasets
    assert (a.encoding, a.null_values) == ("gbk", ("", "NA", "NULL"))
    assert (b.encoding, b.null_values) == ("utf-8", ("",))
    for bad, match in [('encoding = "klingon"', "encoding must name a text encoding"),
                       ("null_values = [1]", "null_values must be a list")]:
        cfg.write_text(base + f'[[datasets]]\nproduct = "p.json"\npath = "d.csv"\n{bad}\n')
        with pytest.raises(ConfigError, match=match):
            load_node_config(cfg)


def test_node_digest_commits_to_the_bytes_and_notes_a_non_utf8_file(tmp_path):
    gbk = _write(tmp_path, "loans-gbk.csv", ROWS, "gbk")
    p = subprocess.run([sys.executable, "-m", "fedtrust.cli.main", "node", "digest", str(gbk)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == file_digest(gbk)
    assert "not UTF-8" in p.stderr and "iconv -f GB18030" in p.stderr
