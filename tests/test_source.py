"""Tests of metalib.source: the exact text shown for functions and classes with and without their
docstrings, the summaries ``show`` prints and the full docstrings it folds, the errors for objects
that have no source, and that every ``show`` of a chapter fits the book's 77-column code block."""

from __future__ import annotations

import ast
import html
import inspect
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import metalib.source
from metalib.source import COLUMN, Shown, show, source, summarize

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


def multi_line_doc(x):
    """Add one to ``x``.

    Args:
        x: a number.
    """
    y = x + 1  # the body stays
    return y


def one_line_doc(x):
    """Double ``x``."""
    return 2 * x


def no_doc(x):
    text = """a triple-quoted string in the body
    is code, not a docstring"""
    return text + str(x)


def raw_doc(x):
    r"""A raw docstring with a backslash: \alpha."""
    return x


def quote_on_its_own_line(x):
    """
    The summary sits on the next line.
    """
    return -x


class Documented:
    """A class whose methods have docstrings of their own."""

    def method(self):
        """Kept: only the class docstring goes."""
        return 1


class Base:
    """The base class's docstring."""


class Undocumented(Base):
    def method(self):
        """The method's docstring, which belongs to the method."""
        return 1


def long_summary(x):
    """A summary sentence that runs on for much longer than the book's column allows, so show has
    to wrap it again before the code is displayed.

    Details that only the fold shows.
    """
    return x


class Model:
    """A model with documented methods.

    Args:
        size: how big.
    """

    def forward(self, x):
        """Run the model on ``x``.

        Returns:
            ``x`` unchanged.
        """
        return x

    def plain(self):
        return 0


def test_source_with_docstring_is_the_exact_text():
    assert source(one_line_doc) == (
        'def one_line_doc(x):\n    """Double ``x``."""\n    return 2 * x\n'
    )
    assert source(multi_line_doc) == inspect.getsource(multi_line_doc)
    assert source(multi_line_doc, docstring=True).startswith("def multi_line_doc(x):\n")


def test_source_without_a_multi_line_docstring():
    assert source(multi_line_doc, docstring=False) == (
        "def multi_line_doc(x):\n    y = x + 1  # the body stays\n    return y\n"
    )


def test_source_without_a_one_line_docstring():
    assert source(one_line_doc, docstring=False) == "def one_line_doc(x):\n    return 2 * x\n"


def test_source_without_docstring_keeps_strings_in_the_body():
    expected = inspect.getsource(no_doc)
    assert source(no_doc, docstring=False) == expected
    assert '"""a triple-quoted string' in expected


def test_source_without_raw_and_split_docstrings():
    assert source(raw_doc, docstring=False) == "def raw_doc(x):\n    return x\n"
    assert source(quote_on_its_own_line, docstring=False) == (
        "def quote_on_its_own_line(x):\n    return -x\n"
    )


def test_source_of_a_class_removes_only_its_own_docstring():
    text = source(Documented, docstring=False)
    assert text == (
        "class Documented:\n"
        "\n"
        "    def method(self):\n"
        '        """Kept: only the class docstring goes."""\n'
        "        return 1\n"
    )


def test_source_of_a_module():
    full = source(metalib.source)
    bare = source(metalib.source, docstring=False)
    assert full.startswith('"""') and metalib.source.__doc__.splitlines()[0] in full
    assert metalib.source.__doc__.splitlines()[0] not in bare
    assert full.endswith(bare) and "def source(" in bare and not bare.lstrip().startswith('"""')


def test_source_of_a_class_without_docstring_keeps_method_docstrings():
    assert source(Undocumented, docstring=False) == inspect.getsource(Undocumented)


@pytest.mark.parametrize("obj", [len, 3, "text", print])
def test_source_errors_for_objects_without_source(obj):
    with pytest.raises(ValueError, match="no source available for .*pass a function, class or"):
        source(obj)


def test_show_cuts_the_docstring_to_its_summary():
    shown = show(multi_line_doc)
    assert isinstance(shown, Shown)
    assert shown.data == (
        "def multi_line_doc(x):\n"
        '    """Add one to ``x``."""\n'
        "    y = x + 1  # the body stays\n"
        "    return y\n"
    )
    assert repr(shown) == shown.data


def test_show_folds_the_full_docstring_below_the_code():
    page = show(multi_line_doc)._repr_html_()
    code, fold = page.split("<details", 1)
    assert '<div class="highlight"><pre>' in code and "Args:" not in code
    assert "<summary>Full docstring of test_source.multi_line_doc</summary>" in fold
    text = re.search(r"<pre[^>]*>(.*)</pre>", fold, re.S)
    assert text and html.unescape(text.group(1)) == inspect.getdoc(multi_line_doc)
    assert "white-space: pre-wrap" in fold


def test_show_keeps_the_highlighted_code_of_ipython():
    from IPython.display import Code

    shown = show(one_line_doc)
    assert shown.data == source(one_line_doc)  # a one-line docstring is its own summary
    assert shown._repr_html_().startswith(Code(shown.data, language="python")._repr_html_())


def test_show_cuts_raw_and_split_docstrings():
    assert show(raw_doc).data == source(raw_doc)
    assert show(quote_on_its_own_line).data == (
        'def quote_on_its_own_line(x):\n    """The summary sits on the next line."""\n'
        "    return -x\n"
    )


def test_show_cuts_the_docstrings_of_a_class_and_its_methods():
    shown = show(Model)
    assert shown.data == (
        "class Model:\n"
        '    """A model with documented methods."""\n'
        "\n"
        "    def forward(self, x):\n"
        '        """Run the model on ``x``."""\n'
        "        return x\n"
        "\n"
        "    def plain(self):\n"
        "        return 0\n"
    )
    page = shown._repr_html_()
    assert page.count("<details") == 1
    assert "Full docstrings of test_source.Model</summary>" in page
    assert "size: how big." in page and "``x`` unchanged." in page
    assert page.index("test_source.Model</code>") < page.index("test_source.Model.forward</code>")


def test_show_of_a_method_is_dedented():
    shown = show(Model.forward)
    assert shown.data.startswith("def forward(self, x):\n")
    assert "Full docstring of test_source.Model.forward<" in shown._repr_html_()


def test_show_rewraps_a_long_summary_to_the_column():
    code, docs = summarize(long_summary)
    lines = code.splitlines()
    assert lines[1] == '    """A summary sentence that runs on for much longer than the book\'s'
    assert max(len(line) for line in lines) <= COLUMN
    end = next(i for i, line in enumerate(lines) if line.endswith('"""'))
    assert end > 1 and lines[end + 1] == "    return x"
    summary = " ".join(line.strip().strip('"') for line in lines[1 : end + 1])
    assert summary == (
        "A summary sentence that runs on for much longer than the book's column allows, "
        "so show has to wrap it again before the code is displayed."
    )
    assert "Details that only the fold shows." not in code
    assert docs == [("test_source.long_summary", inspect.getdoc(long_summary))]
    narrow, _ = summarize(long_summary, width=50)
    assert max(len(line) for line in narrow.splitlines()) <= 50


def test_show_has_no_fold_for_an_undocumented_function():
    shown = show(no_doc)
    assert shown.data == source(no_doc)  # the string in its body is not a docstring
    assert "<details" not in shown._repr_html_()
    assert summarize(no_doc)[1] == []


def test_show_folds_method_docstrings_of_an_undocumented_class():
    shown = show(Undocumented)
    assert '"""The method\'s docstring, which belongs to the method."""' in shown.data
    page = shown._repr_html_()
    assert "<summary>Full docstring of test_source.Undocumented.method</summary>" in page


class _Tags(HTMLParser):
    """Checks that every tag opened is closed, in order; counts the tags by name."""

    VOID = {"br", "hr", "img", "meta", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.counts, self.errors = [], {}, []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_show_joins_several_objects_with_one_fold_per_documented_object():
    shown = show(one_line_doc, no_doc, multi_line_doc, Model)
    assert shown.data == "\n\n".join(
        summarize(o)[0] for o in (one_line_doc, no_doc, multi_line_doc, Model)
    )
    tags = _Tags()
    tags.feed(shown._repr_html_())
    tags.close()
    assert not tags.errors and not tags.stack
    assert tags.counts["details"] == tags.counts["summary"] == 3
    assert tags.counts["div"] == 1  # one highlighted block of code


def test_show_escapes_the_docstring():
    def tagged():
        """Compare ``a < b`` & ``c > d``.

        <script>alert(1)</script>
        """

    page = show(tagged)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize("obj", [len, 3, "text", print])
def test_show_errors_for_objects_without_source(obj):
    with pytest.raises(ValueError, match="no source available for .*pass a function, class or"):
        show(obj)
    with pytest.raises(ValueError, match="no source available"):
        show(one_line_doc, obj)


def _shown_objects(notebook: Path) -> list[tuple[str, object]]:
    """Every argument of a ``show(...)`` call of ``notebook``, by its expression, evaluated in a
    namespace that ran every import statement of the notebook."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    calls, namespace = [], {}
    for cell in cells:
        code = "\n".join(
            line
            for line in "".join(cell["source"]).splitlines()
            if not line.lstrip().startswith(("%", "!"))
        )
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), str(notebook), "exec"), namespace)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "show"
            ):
                calls.append(node)
    return [
        (ast.unparse(arg), eval(compile(ast.Expression(arg), str(notebook), "eval"), namespace))
        for call in calls
        for arg in call.args
    ]


@pytest.mark.parametrize("notebook", sorted(CHAPTERS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_chapters_shown_code_fits_the_column(notebook):
    too_long = [
        f"{name}: {len(line)} > {COLUMN} characters: {line.strip()}"
        for name, obj in _shown_objects(notebook)
        for line in show(obj).data.splitlines()
        if len(line) > COLUMN
    ]
    assert not too_long, "shown code wider than the book's column:\n" + "\n".join(too_long)
