"""No function or method in tf_simclr/ is longer than MAX_LINES lines, so a reader can hold
each in mind.

A function's length is its body without the docstring: from the first statement after the
docstring to the function's last line (comments and blank lines in between count). The
signature and a long docstring are not counted, so documenting a function well is never
punished. A nested function counts towards the function around it and is also checked by
itself. The functions are read from the source with ``ast``; nothing is imported."""

import ast
import os
import textwrap

import tf_simclr

PACKAGE = os.path.dirname(os.path.abspath(tf_simclr.__file__))
MAX_LINES = 80

# Functions allowed to stay longer than MAX_LINES for a stated reason, as
# "<path under tf_simclr/>:<qualified name>": none today. test_allowed_long_functions_are_still_long
# fails as soon as an entry is short or gone, so the list cannot go stale.
ALLOWED_LONG: set[str] = set()


def body_length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of `node`'s body without its docstring (0 for a function that is only one)."""
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body:
        return 0
    return node.end_lineno - body[0].lineno + 1


def function_lengths(source: str, filename: str = "<source>") -> dict[str, int]:
    """{qualified name: body_length} of every function and method in `source`."""
    found = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found[name] = body_length(child)
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=filename), "")
    return found


def package_function_lengths() -> dict[str, int]:
    """{"<path under tf_simclr/>:<qualified name>": body_length} over the whole package."""
    lengths = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                source = f.read()
            for qualname, n in function_lengths(source, path).items():
                lengths[f"{relative}:{qualname}"] = n
    return lengths


def test_body_length_counts_the_body_without_the_docstring():
    # Hand-counted: a 30-line docstring, then 3 statements on 4 lines; a one-line docstring
    # only; no docstring, with a comment and a blank line between statements; a method and a
    # function nested in it.
    long_docstring = '    """' + "\n    ".join(["Line."] * 30) + '"""\n'
    source = (
        "def documented(x):\n"
        + long_docstring
        + textwrap.dedent(
            """\
                y = x + 1
                if y:
                    return y
                return 0

            def only_docstring():
                \"\"\"Nothing else.\"\"\"

            async def plain(x):
                y = x
                # a comment between statements counts

                return y

            class Outer:
                def method(self):
                    def inner():
                        return 1
                    return inner()
            """
        )
    )
    assert function_lengths(source) == {
        "documented": 4,
        "only_docstring": 0,
        "plain": 4,
        "Outer.method": 3,
        "Outer.method.inner": 1,
    }


def test_the_package_is_read():
    lengths = package_function_lengths()
    # Known functions at known places: a miscounted or unread package would pass vacuously.
    assert "network/resnet.py:build_resnet" in lengths
    assert "data/pipelines.py:build_dataset" in lengths
    assert len(lengths) > 500


def test_no_function_is_longer_than_max_lines():
    lengths = package_function_lengths()
    offenders = sorted(
        (n, name) for name, n in lengths.items() if n > MAX_LINES and name not in ALLOWED_LONG
    )
    assert not offenders, (
        f"{len(offenders)} function(s) in tf_simclr/ have bodies (without docstring) longer "
        f"than {MAX_LINES} lines; split them into well-named pieces:\n"
        + "\n".join(f"  {name}: {n} lines" for n, name in reversed(offenders))
    )


def test_allowed_long_functions_are_still_long():
    lengths = package_function_lengths()
    stale = []
    for name in sorted(ALLOWED_LONG):
        if name not in lengths:
            stale.append(f"  {name} no longer exists: remove it from ALLOWED_LONG.")
        elif lengths[name] <= MAX_LINES:
            stale.append(
                f"  {name} is {lengths[name]} lines now (<= {MAX_LINES}): remove it from "
                "ALLOWED_LONG so it stays short."
            )
    assert not stale, "ALLOWED_LONG in tests/test_function_length.py is stale:\n" + "\n".join(stale)
