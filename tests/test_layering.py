"""Library modules never import entry points (modules with a `__main__` block).

Entry points (train, eval, infer, export, convert, quickstart, aot, ...) may
import the library and each other; the library imports none of them, so an
entry point's private helpers cannot become a library dependency (as
`experiments/base.py` once used `quickstart._base_dir`). Read with `ast`,
without importing anything. One deliberate, dynamic exception is not an
import statement and so not seen here: `launch.register_configurables`
imports the gin-configured entry points by name before gin parses a file
(gin needs every configurable registered first).
"""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mode_jax")


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module under mode_jax/."""
  out = {}
  root = os.path.dirname(PACKAGE)
  for d, _, names in os.walk(PACKAGE):
    for n in names:
      if n.endswith(".py"):
        path = os.path.join(d, n)
        rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
  return out


def _is_entry(tree: ast.Module) -> bool:
  """Whether the module has a top-level `if __name__ == "__main__":`."""
  for node in tree.body:
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
      parts = [node.test.left, *node.test.comparators]
      if any(isinstance(p, ast.Name) and p.id == "__name__" for p in parts) and any(
          isinstance(p, ast.Constant) and p.value == "__main__" for p in parts):
        return True
  return False


def _imports(name: str, tree: ast.Module, known: set) -> set:
  """Modules of `known` that `name` imports (anywhere in the file, also lazily)."""
  package = name.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      out.add(base)
      out |= {f"{base}.{a.name}" for a in node.names}
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant)):
      out.add(node.args[0].value)
  return out & known


def _graph():
  mods = _modules()
  trees = {m: ast.parse(open(p).read(), p) for m, p in mods.items()}
  entries = {m for m, t in trees.items() if _is_entry(t)}
  return trees, entries


def test_entry_points_are_found():
  _, entries = _graph()
  assert {"mode_jax.train", "mode_jax.eval", "mode_jax.infer", "mode_jax.export",
          "mode_jax.quickstart", "mode_jax.aot"} <= entries


def test_no_library_module_imports_an_entry_point():
  trees, entries = _graph()
  bad = []
  for m, tree in sorted(trees.items()):
    if m in entries:
      continue
    for imported in sorted(_imports(m, tree, set(trees)) & entries):
      bad.append(f"{m} imports entry point {imported}")
  assert not bad, "; ".join(bad)


def test_the_check_sees_a_violation(tmp_path):
  """The walk is not vacuous: an import of an entry point is found."""
  tree = ast.parse("def f():\n  from mode_jax import quickstart\n  quickstart.main()\n")
  known = {"mode_jax.quickstart", "mode_jax.trainer"}
  assert _imports("mode_jax.experiments.base", tree, known) == {"mode_jax.quickstart"}
  tree = ast.parse("from . import train\nimport mode_jax.trainer\n")
  assert _imports("mode_jax.x", tree, known | {"mode_jax.train"}) == {"mode_jax.train",
                                                                        "mode_jax.trainer"}
