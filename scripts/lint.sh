#!/usr/bin/env bash
# Static checks, with the tools of .venv (scripts/test.sh or `make install` creates it):
#   ruff check, ruff format --check, mypy (strict on src/, configured in pyproject.toml),
#   and the Python 3.9 compatibility of src/myx/agent and src/myx/protocol (vermin + ast).
# Runs every check, then exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV_BIN=.venv/bin
for tool in ruff mypy vermin python; do
    if [[ ! -x "$VENV_BIN/$tool" ]]; then
        echo "lint: $VENV_BIN/$tool is missing: run 'make install' (or scripts/test.sh) first" >&2
        exit 2
    fi
done

# The directories that exist (ruff fails on a missing path; bench/ may still be empty).
lint_paths=()
for dir in src tests bench scripts; do
    if [[ -d "$dir" ]]; then lint_paths+=("$dir"); fi
done
# Code that must keep running on Python 3.9 (the agent zipapp's floor).
py39_dirs=()
for dir in src/myx/agent src/myx/protocol; do
    if [[ -d "$dir" ]]; then py39_dirs+=("$dir"); fi
done

failed=()
check() {
    local name=$1
    shift
    echo "--> lint: $name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

check "ruff check" "$VENV_BIN/ruff" check "${lint_paths[@]}"
check "ruff format --check" "$VENV_BIN/ruff" format --check "${lint_paths[@]}"
check "mypy" "$VENV_BIN/mypy"

py39_files=()
if ((${#py39_dirs[@]})); then
    mapfile -t py39_files < <(find "${py39_dirs[@]}" -name '*.py' -not -path '*/__pycache__/*' | sort)
fi
if ((${#py39_files[@]} == 0)); then
    echo "--> lint: python 3.9 compatibility: no files under src/myx/agent or src/myx/protocol yet"
else
    # vermin: -t=3.9- fails if any file needs a Python newer than 3.9 (stdlib members, kwargs, syntax
    # such as `match`); --violations lists only what breaks that target; -vvv adds line numbers.
    # --no-eval-annotations (vermin's default, spelled out): annotations are not evaluated at run
    # time, which is true because these files use `from __future__ import annotations`, so
    # `int | None` or `list[str]` in annotations are fine. The `union-types` feature stays off: it
    # would flag those annotations and also `os.O_RDONLY | os.O_CREAT`; the ast guard below catches
    # the real runtime union types instead. --no-config-file keeps the result independent of any
    # vermin.ini/setup.cfg lying around.
    check "vermin (python 3.9)" "$VENV_BIN/vermin" --no-config-file --quiet --violations -vvv \
        -t=3.9- --no-eval-annotations --no-tips --no-make-paths-absolute "${py39_files[@]}"
    check "ast (python 3.9 grammar)" "$VENV_BIN/python" - "${py39_files[@]}" <<'EOF'
"""Second guard for Python 3.9: grammar, and `X | Y` types that would be evaluated at run time."""
import ast
import sys

FUTURE_ANNOTATIONS = "annotations"


def has_future_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == FUTURE_ANNOTATIONS for alias in node.names)
        for node in tree.body
    )


def annotations(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    found.append(arg.annotation)
            if node.returns is not None:
                found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


def is_union(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)


def runtime_unions(tree: ast.AST) -> list[ast.AST]:
    """`X | None` and `isinstance(x, A | B)` outside annotations: always a 3.10+ union type."""
    in_annotation = {id(sub) for ann in annotations(tree) for sub in ast.walk(ann)}
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if id(node) in in_annotation:
            continue
        if is_union(node) and any(
            isinstance(side, ast.Constant) and side.value is None for side in (node.left, node.right)
        ):
            found.append(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
            and is_union(node.args[1])
        ):
            found.append(node)
    return found


def check(path: str) -> list[str]:
    with open(path, "rb") as fh:
        source = fh.read()
    try:
        tree = ast.parse(source, filename=path, feature_version=(3, 9))
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno}: not valid Python 3.9 syntax: {exc.msg}"]
    problems: list[str] = []
    if not has_future_annotations(tree):
        problems += [
            f"{path}:{ann.lineno}: `X | Y` in an annotation needs `from __future__ import annotations`"
            " on Python 3.9"
            for ann in annotations(tree)
            if any(is_union(sub) for sub in ast.walk(ann))
        ]
    problems += [
        f"{path}:{node.lineno}: `X | Y` type evaluated at run time needs Python 3.10 "
        "(use typing.Optional/Union or a tuple)"
        for node in runtime_unions(tree)
    ]
    return problems


problems = [problem for path in sys.argv[1:] for problem in check(path)]
for problem in problems:
    print(problem)
if problems:
    sys.exit(1)
print(f"ok: {len(sys.argv) - 1} files use Python 3.9 grammar and no run-time X | Y types")
EOF
fi

if ((${#failed[@]})); then
    printf -v joined '%s, ' "${failed[@]}"
    echo "lint: FAILED: ${joined%, }" >&2
    exit 1
fi
echo "lint: all checks passed"
