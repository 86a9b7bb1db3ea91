"""tools/make_exercises.py: stubs, dropped cells, marker errors, --check, determinism."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import ROOT

TOOL = ROOT / "tools" / "make_exercises.py"
_spec = importlib.util.spec_from_file_location("make_exercises", TOOL)
mx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mx)

STUB = f'raise NotImplementedError("{mx.DEFAULT_HINT}")'


def write_solution(tmp_path: Path, *cells, name="00_demo.ipynb", metadata=None) -> Path:
    """Write a solution notebook under tmp_path/solutions and return its path."""
    nb = new_notebook(cells=list(cells))
    nb.metadata = (
        metadata
        if metadata is not None
        else {"workbook": {"exercise": "00_demo", "role": "solution"}}
    )
    path = tmp_path / "solutions" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return path


def exercise_cells(tmp_path: Path, *cells) -> list:
    path = write_solution(tmp_path, *cells)
    return nbformat.reads(mx.render(path), as_version=4).cells


def stub(source: str) -> str:
    return mx.stub_source(source, "nb, cell 0")[0]


def test_single_block():
    src = "x = 1\n# BEGIN SOLUTION\ny = x + 1\n# END SOLUTION\nprint(y)"
    assert stub(src) == f"x = 1\n{STUB}\nprint(y)"
    assert mx.stub_source(src, "nb")[1] == 1


def test_block_in_function_keeps_indentation_and_compiles():
    src = (
        "def f(x):\n"
        '    """Doc."""\n'
        "    # BEGIN SOLUTION\n"
        "    y = x * 2\n"
        "    return y\n"
        "    # END SOLUTION\n"
        "\n"
        "g = 1"
    )
    out = stub(src)
    assert out == f'def f(x):\n    """Doc."""\n    {STUB}\n\ng = 1'
    namespace = {}
    exec(compile(out, "<cell>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match="write your answer here"):
        namespace["f"](3)


def test_two_blocks_in_one_cell_and_tab_indent_trailing_spaces():
    src = (
        "def f():\n\t# BEGIN SOLUTION   \n\treturn 1\n\t# END SOLUTION\t\n"
        "def g():\n        # BEGIN SOLUTION\n        return 2\n  # END SOLUTION"
    )
    out, n = mx.stub_source(src, "nb")
    assert n == 2
    assert out == f"def f():\n\t{STUB}\ndef g():\n        {STUB}"
    ast.parse(out)


def test_hint_line_kept_as_comment_and_used_as_message():
    src = 'def f():\n    # BEGIN SOLUTION\n    #   HINT:  use "sorted" \\ twice  \n    return 1\n'
    src += "    # END SOLUTION"
    out = stub(src)
    first, second = out.split("\n")[1:]
    assert first == '    # HINT: use "sorted" \\ twice'
    assert second.startswith("    raise NotImplementedError(")
    message = ast.literal_eval(second.strip()[len("raise NotImplementedError(") : -1])
    assert message == 'use "sorted" \\ twice'


def test_long_hint_gets_the_multi_line_layout_of_ruff_format():
    hint = "x" * 80
    out = stub(
        f"def f():\n    # BEGIN SOLUTION\n    # HINT: {hint}\n    return 1\n    # END SOLUTION"
    )
    lines = out.split("\n")
    assert lines[2:] == ["    raise NotImplementedError(", f'        "{hint}"', "    )"]
    assert max(len(line) for line in lines) <= mx.MAX_LINE
    namespace = {}
    exec(compile(out, "<cell>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=hint):
        namespace["f"]()


def test_empty_hint_falls_back_to_default():
    out = stub("# BEGIN SOLUTION\n# HINT:\nx = 1\n# END SOLUTION")
    assert out == f"# HINT:\n{STUB}"


def test_hint_only_counts_right_after_begin():
    out = stub("# BEGIN SOLUTION\nx = 1\n# HINT: late\n# END SOLUTION\n# HINT: outside")
    assert out == f"{STUB}\n# HINT: outside"


@pytest.mark.parametrize(
    ("source", "line", "what"),
    [
        ("a\n# BEGIN SOLUTION\nb\n  # BEGIN SOLUTION\nc\n# END SOLUTION", 4, "nested"),
        ("a\nb\n# END SOLUTION", 3, "without a '# BEGIN SOLUTION'"),
        ("# BEGIN SOLUTION\nx\n# END SOLUTION\n# END SOLUTION", 4, "without"),
        ("a\n    # BEGIN SOLUTION\nb", 2, "never closed"),
        ("### BEGIN SOLUTION\nb\n### END SOLUTION", 1, "looks like a solution marker"),
        ("# BEGIN SOLUTION\nb\n#END SOLUTION", 3, "looks like a solution marker"),
        ("# begin solution\nb", 1, "looks like a solution marker"),
        ("# BEGIN SOLUTION  # the answer\nb", 1, "looks like a solution marker"),
    ],
)
def test_marker_errors_name_cell_and_line(source, line, what):
    with pytest.raises(ValueError, match=f"nb, cell 0, line {line}: .*{what}"):
        stub(source)


def test_error_names_notebook_and_cell_index(tmp_path):
    path = write_solution(
        tmp_path,
        new_markdown_cell("# Intro"),
        new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION"),
        new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1"),
    )
    with pytest.raises(ValueError, match=r"00_demo\.ipynb, cell 2, line 2: .*never closed"):
        mx.render(path)


def test_cli_reports_errors_with_exit_2(tmp_path):
    path = write_solution(tmp_path, new_code_cell("# BEGIN SOLUTION\nx\n# BEGIN SOLUTION"))
    proc = subprocess.run(
        [sys.executable, str(TOOL), str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "00_demo.ipynb, cell 0, line 3: nested" in proc.stderr
    assert not (tmp_path / "exercises").exists()


def test_markdown_mentions_ignored_and_copied(tmp_path):
    prose = "Put your code between `# BEGIN SOLUTION` and\n# END SOLUTION\nlines."
    cells = exercise_cells(
        tmp_path,
        new_markdown_cell(prose),
        new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION"),
    )
    assert cells[0].source == prose
    assert cells[1].source == STUB


def test_notebook_without_blocks_is_an_error(tmp_path):
    path = write_solution(tmp_path, new_code_cell("x = 1"))
    with pytest.raises(ValueError, match="no '# BEGIN SOLUTION'"):
        mx.render(path)


def test_solution_only_cells_dropped_outputs_and_metadata_stripped(tmp_path):
    demo = new_code_cell("# BEGIN SOLUTION\nbroken(", metadata={"tags": ["solution-only"]})
    answer = new_code_cell(
        "def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION",
        execution_count=3,
        outputs=[new_output("stream", text="1\n")],
        metadata={
            "tags": ["keep-me"],
            "collapsed": True,
            "execution": {"iopub.status.busy": "2024-01-01"},
        },
    )
    check = new_code_cell('check("q1", f)', execution_count=4, outputs=[new_output("stream")])
    metadata = {
        "workbook": {"exercise": "00_demo", "role": "solution"},
        "language_info": {"name": "python", "version": "3.11.2"},
        "widgets": {"state": {}},
    }
    path = write_solution(
        tmp_path, new_markdown_cell("## Q1"), demo, answer, check, metadata=metadata
    )
    nb = nbformat.reads(mx.render(path), as_version=4)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[1].source == f"def f():\n    {STUB}"
    assert nb.cells[1].metadata == {"tags": ["keep-me"]}
    assert nb.cells[2].source == 'check("q1", f)'
    for cell in nb.cells[1:]:
        assert cell.outputs == [] and cell.execution_count is None
    assert nb.metadata["workbook"] == {"exercise": "00_demo", "role": "exercise"}
    assert nb.metadata["language_info"] == {"name": "python"}
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata
    assert [c.id for c in nb.cells] == [nbformat.read(path, 4).cells[i].id for i in (0, 2, 3)]


def test_role_added_without_requiring_one(tmp_path):
    path = write_solution(tmp_path, new_code_cell("# BEGIN SOLUTION\n# END SOLUTION"), metadata={})
    nb = nbformat.reads(mx.render(path), as_version=4)
    assert nb.metadata["workbook"] == {"role": "exercise"}
    assert nb.cells[0].source == STUB


def test_generated_file_is_a_fixed_point_of_strip(tmp_path):
    """`make strip` must leave generated exercises alone, or it would create drift."""
    strip_spec = importlib.util.spec_from_file_location(
        "strip_nb", ROOT / "tools/strip_notebooks.py"
    )
    strip_mod = importlib.util.module_from_spec(strip_spec)
    strip_spec.loader.exec_module(strip_mod)
    path = write_solution(
        tmp_path,
        new_code_cell("# BEGIN SOLUTION\nx = 'é → θ'\n# END SOLUTION", execution_count=1),
        metadata={"workbook": {"exercise": "00_demo"}, "language_info": {"version": "3"}},
    )
    assert mx.main([str(path)]) == 0
    target = tmp_path / "exercises" / "00_demo.ipynb"
    assert strip_mod.strip(target) is False


def test_deterministic_even_without_cell_ids(tmp_path):
    path = write_solution(tmp_path, new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION"))
    data = json.loads(path.read_text())
    del data["cells"][0]["id"]
    path.write_text(json.dumps(data))
    first, second = mx.render(path), mx.render(path)
    assert first == second and first.endswith("}\n") and not first.endswith("\n\n")
    assert json.loads(first)["cells"][0]["id"] == "cell-0"


def test_write_then_check_then_drift(tmp_path, capsys):
    a = write_solution(tmp_path, new_code_cell("# BEGIN SOLUTION\na = 1\n# END SOLUTION"))
    b = write_solution(
        tmp_path, new_code_cell("# BEGIN SOLUTION\nb = 1\n# END SOLUTION"), name="01_b.ipynb"
    )
    ex_a, ex_b = tmp_path / "exercises" / a.name, tmp_path / "exercises" / b.name
    assert mx.main(["--check"], root=tmp_path) == 1  # nothing generated yet
    assert "00_demo.ipynb is missing" in capsys.readouterr().err
    assert not ex_a.exists()

    assert mx.main([], root=tmp_path) == 0
    written = ex_a.read_bytes(), ex_b.read_bytes()
    assert "2 exercise(s) written" in capsys.readouterr().out
    assert mx.main([], root=tmp_path) == 0  # idempotent: nothing rewritten
    assert "0 exercise(s) written, 2 unchanged" in capsys.readouterr().out
    assert (ex_a.read_bytes(), ex_b.read_bytes()) == written
    assert mx.main(["--check"], root=tmp_path) == 0

    ex_b.write_text(ex_b.read_text().replace("raise NotImplementedError", "b = 1  #"))
    assert mx.main(["--check"], root=tmp_path) == 1
    err = capsys.readouterr().err
    assert "01_b.ipynb differs" in err and "00_demo" not in err
    assert mx.main(["--check", str(a)]) == 0  # explicit paths: only those are checked

    ex_b.write_bytes(written[1])
    (tmp_path / "exercises" / "99_old.ipynb").write_text("{}")
    assert mx.main(["--check"], root=tmp_path) == 1
    assert "99_old.ipynb has no solution" in capsys.readouterr().err


def test_cli_check_exit_codes(tmp_path):
    path = write_solution(tmp_path, new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION"))

    def run(*args):
        cmd = [sys.executable, str(TOOL), *args, str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    assert run("--check").returncode == 1
    assert run().returncode == 0
    proc = run("--check")
    assert (proc.returncode, proc.stderr) == (0, "")


def test_path_outside_solutions_folder_is_an_error(tmp_path, capsys):
    stray = tmp_path / "x.ipynb"
    stray.write_text(nbformat.writes(new_notebook()))
    assert mx.main([str(stray)]) == 2
    assert "inside a 'solutions' folder" in capsys.readouterr().err


LINE = st.one_of(
    st.text(alphabet="abc xyz=()#:\t\r", max_size=12),
    st.sampled_from(["# HINT: use x", "#HINT:", '    # HINT:  a "q" \\ ']),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(LINE, max_size=6), st.lists(LINE, max_size=6), st.lists(LINE, max_size=6))
def test_outside_blocks_copied_unchanged(before, inside, after):
    src = "\n".join([*before, "  # BEGIN SOLUTION", *inside, "# END SOLUTION", *after])
    out, n = mx.stub_source(src, "nb")
    hint = mx.HINT.match(inside[0]) if inside else None
    middle = ["  # HINT: " + hint.group(1).strip()] if hint else []
    message = hint.group(1).strip() if hint else ""
    stub_line = f"  raise NotImplementedError({mx._literal(message or mx.DEFAULT_HINT)})"
    assert n == 1
    assert out.split("\n") == [*before, *[m.rstrip() for m in middle], stub_line, *after]
    no_marker = "\n".join(before + after)
    assert mx.stub_source(no_marker, "nb") == (no_marker, 0)


def test_repo_solutions_in_sync():
    if not sorted((ROOT / "solutions").glob("*.ipynb")):
        pytest.skip("no solutions/*.ipynb yet")
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"exercises drifted; run `make exercises`\n{proc.stderr}"
