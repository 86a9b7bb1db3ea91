"""Tests of metalib.source: the exact text shown for functions and classes with and without their
docstrings, and the errors for objects that have no source."""

from __future__ import annotations

import inspect

import pytest
from IPython.display import Code

import metalib.source
from metalib.source import show, source


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


def test_show_returns_highlighted_code():
    code = show(one_line_doc)
    assert isinstance(code, Code)
    assert code.data == source(one_line_doc)
    assert "python" in code._repr_html_() or "highlight" in code._repr_html_()


def test_show_joins_several_objects():
    code = show(one_line_doc, multi_line_doc, docstring=False)
    assert code.data == (
        source(one_line_doc, docstring=False) + "\n\n" + source(multi_line_doc, docstring=False)
    )
    assert '"""' not in code.data
    with pytest.raises(ValueError, match="no source available"):
        show(one_line_doc, len)
