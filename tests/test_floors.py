"""The library's floors: every module imports only modules on lower floors, at the top of its file. The walk sees
every import of the library's own modules (absolute or relative, at the top level or inside a function)."""
import ast, json
from pathlib import Path
import pytest
import qwen3_lib

LIB = Path(qwen3_lib.__file__).parent
ROOT = LIB.parent

# The floors, lowest first: the book's order, with each appendix's module just below the chapter that first needs it
# (A1's errors below everything, A5's kernels below attention, A2's checkpoint below weights, ...). Appendix A1's
# checks are no module of their own: each is exported into the module it checks (check_config into config,
# check_input_ids into model, ...), as transformers keeps a check with what raises it. Three chapters sit below a
# chapter that comes before them in the book, because it calls them, and each says so where it is imported:
# batching (08e) below the model (06), whose forward takes an attention mask, and chat (08d) below the command line
# (08c), whose chat command runs it; and quantization (14) below training (12) and LoRA (13), whose QLoRA adapters
# wrap its quantized layers.
FLOORS = """
errors config norm rope kernels attention block batching model checkpoint weights tokenizer_scale tokenizer
kv_cache generate chat_checks chat __main__ prefill fast moe quant_checks quant train lora
qwen3_lib tools tools.memory tools.records tools.bench
""".split()

def module_name(path: Path, lib: Path = LIB) -> str:
    "qwen3_lib/tools/bench.py -> 'tools.bench'; qwen3_lib/__init__.py -> 'qwen3_lib' (the package itself)."
    parts = path.relative_to(lib).with_suffix("").parts
    if parts[-1] == "__init__": parts = parts[:-1]
    return ".".join(parts) or "qwen3_lib"

def library_modules(lib: Path = LIB) -> dict:
    "{module name: path} for every .py file of the package (nbdev's generated index _modidx.py is data, not code)."
    return {module_name(p, lib): p for p in sorted(lib.rglob("*.py")) if p.name != "_modidx.py"}

def own_imports(path: Path, known, lib: Path = LIB) -> list:
    """Every import of the library's own modules in the file at `path`: (module, line, inside a function?), whatever
    its form: `import qwen3_lib.x`, `from qwen3_lib import x`, `from qwen3_lib.x import y`, `from .x import y`,
    `from .. import y` (a name that is a module of `known` counts as that module, any other as its package)."""
    name = module_name(path, lib)
    package = name.split(".") if path.name == "__init__.py" and name != "qwen3_lib" else name.split(".")[:-1]
    if name == "qwen3_lib": package = []
    def resolve(dotted):                                   # 'qwen3_lib.x.y' or 'x.y' -> the module it names
        dotted = dotted.removeprefix("qwen3_lib").lstrip(".") or "qwen3_lib"
        while dotted not in known and "." in dotted: dotted = dotted.rsplit(".", 1)[0]
        return dotted
    out = []
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((resolve(a.name), child.lineno, in_function) for a in child.names
                           if a.name == "qwen3_lib" or a.name.startswith("qwen3_lib."))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    if child.level - 1 > len(package): raise ValueError(f"{path}: an import above the package")
                    base = ".".join(package[:len(package) - child.level + 1] + ([child.module] if child.module else []))
                elif (child.module or "").split(".")[0] == "qwen3_lib":
                    base = child.module.removeprefix("qwen3_lib").lstrip(".")
                else:
                    continue
                for a in child.names:                       # `from pkg import module` imports that module
                    sub = f"{base}.{a.name}".lstrip(".")
                    out.append((sub if sub in known else resolve(base), child.lineno, in_function))
            visit(child, inner)
    visit(ast.parse(path.read_text()), False)
    return out

def floor_problems(lib: Path = LIB, floors=FLOORS) -> list:
    "Every breach of the floors in the package at `lib`, as sentences; [] when there is none."
    mods = library_modules(lib)
    problems = [f"{m} is not in FLOORS: give it a floor" for m in mods if m not in floors]
    problems += [f"FLOORS names {m}, which is not a module" for m in floors if m not in mods]
    if len(set(floors)) != len(floors): problems.append("FLOORS names a module twice")
    level = {m: i for i, m in enumerate(floors)}
    graph = {}
    for m, p in mods.items():
        for target, line, inner in own_imports(p, mods, lib):
            where = f"{p.relative_to(lib.parent)}:{line}"
            if inner:
                problems.append(f"{where}: {m} imports {target} inside a function; import it at the top")
            if target == m: continue                        # `from . import x` in a package's own __init__
            graph.setdefault(m, set()).add(target)
            if m in level and target in level and level[target] >= level[m]:
                problems.append(f"{where}: {m} imports {target}, which is not on a lower floor")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return list(dict.fromkeys(problems))                   # `from .x import a, b` is one breach, not two

def cycles(graph: dict) -> list:
    "One cycle (a list of modules, first repeated at the end) through each strongly connected part of `graph`."
    found, state = [], {}
    def dfs(m, stack):
        state[m] = "open"; stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open": found.append(stack[stack.index(t):] + [t])
            elif t not in state: dfs(t, stack)
        stack.pop(); state[m] = "done"
    for m in sorted(graph):
        if m not in state: dfs(m, [])
    return found

def test_each_module_imports_only_modules_on_lower_floors():
    problems = floor_problems()
    assert not problems, "\n".join(problems)

def test_the_walk_sees_every_kind_of_breach(tmp_path):
    "A package with an upward import, one inside a function, a cycle and a module without a floor: each is named."
    pkg = tmp_path / "qwen3_lib"
    (pkg / "tools").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .b import f\n")
    (pkg / "a.py").write_text("import torch\nfrom qwen3_lib.b import g   # upward\n")
    (pkg / "b.py").write_text("from . import a\ndef f():\n    from qwen3_lib.tools import bench\n"
                              "    import gguf              # a third-party package may wait for its caller\n")
    (pkg / "tools" / "__init__.py").write_text("")
    (pkg / "tools" / "bench.py").write_text("from .. import b\nfrom ..a import x\n")
    (pkg / "c.py").write_text("")
    problems = "\n".join(floor_problems(pkg, ["a", "b", "qwen3_lib", "tools", "tools.bench"]))
    assert "c is not in FLOORS" in problems
    assert "qwen3_lib/a.py:2: a imports b, which is not on a lower floor" in problems
    assert "qwen3_lib/b.py:3: b imports tools.bench inside a function" in problems
    assert "b imports tools.bench, which is not on a lower floor" in problems
    assert "import cycle: a -> b -> a" in problems
    assert "gguf" not in problems and "tools.bench imports" not in problems and "qwen3_lib/__init__" not in problems

# -- the chapters' budgets ------------------------------------------------------------------------------------------
CHAPTERS = ["00", "01", "02", "03", "04", "05", "06", "07a", "07b", "08a", "08b", "08c", "08d", "08e", "09a", "09b",
            "10a", "10b", "11"]

def exported_lines(nb_path: Path) -> int:
    "Lines of a notebook's `#| export` cells, the `#| export` line itself not counted."
    cells = json.loads(nb_path.read_text())["cells"]
    return sum(len("".join(c["source"]).splitlines()) - 1 for c in cells
               if c["cell_type"] == "code" and "".join(c["source"]).startswith("#| export"))

def test_chapters_00_to_11_export_at_most_1800_lines():
    "The book's budget for the model and its inference: a reader can hold chapters 00-11's library in a week."
    notebooks = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if p.name.split("_")[0] in CHAPTERS]
    assert len(notebooks) == len(CHAPTERS)
    counts = {p.name: exported_lines(p) for p in notebooks}
    assert sum(counts.values()) <= 1800, counts
