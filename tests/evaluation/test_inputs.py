"""Reading evaluation files: only newlines end lines; errors name the file and line."""
import pytest

from xlm_jax.errors import DataError
from xlm_jax.evaluation.inputs import check_aligned, read_lines


def test_unicode_line_separators_inside_a_sentence_do_not_split_it(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes("1\tone\u2028two\x85three\n2\tfour\r\n".encode("utf-8"))
    assert read_lines(path) == ["1\tone\u2028two\x85three", "2\tfour"]


def test_errors_name_the_file_and_the_line(tmp_path):
    with pytest.raises(DataError, match="missing.txt: test set not found"):
        read_lines(tmp_path / "missing.txt", "test set")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt: test set is empty"):
        read_lines(tmp_path / "empty.txt", "test set")
    (tmp_path / "latin1.txt").write_bytes(b"ok\nno\xe9l\n")
    with pytest.raises(DataError, match=r"latin1.txt:2: not UTF-8"):
        read_lines(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="a has 2 lines and b has 1"):
        check_aligned("a", ["x", "y"], "b", ["z"])
