"The library's surface: what `import qwen3_lib` offers, one home per error, and a core that never imports its tools."
import ast, importlib, pkgutil
from pathlib import Path
import qwen3_lib
from qwen3_lib import errors

LIB = Path(qwen3_lib.__file__).parent

def test_the_front_door_is_small_and_complete():
    assert len(qwen3_lib.__all__) <= 30
    assert len(set(qwen3_lib.__all__)) == len(qwen3_lib.__all__)
    for name in qwen3_lib.__all__:
        assert getattr(qwen3_lib, name) is not None, name
    for internal in ("check_input_ids", "attention_sdpa", "attention_explicit", "RMSNorm", "apply_rotary"):
        assert internal not in qwen3_lib.__all__

def test_each_error_class_is_defined_once():
    defined = {}
    for f in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.setdefault(node.name, []).append(f.relative_to(LIB).as_posix())
    assert defined, "no error classes found"
    assert all(where == ["errors.py"] for where in defined.values()), defined
    for mod in ("rope", "weights", "prefill", "fast", "kv_cache", "generate", "chat"):
        m = importlib.import_module(f"qwen3_lib.{mod}")
        for name in ("ContextLengthError", "CheckpointError", "MemoryBudgetError"):
            if hasattr(m, name):
                assert getattr(m, name) is getattr(errors, name), (mod, name)

def test_transformers_names_only():
    src = "\n".join(f.read_text() for f in LIB.rglob("*.py"))
    assert "keep_last" not in src and "logits_to_keep" in src

def test_no_test_doubles_in_the_package():
    for f in LIB.rglob("*.py"):
        tree = ast.parse(f.read_text())
        assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.startswith("Scripted")], f

def test_no_method_is_assigned_onto_a_class_after_its_definition():
    for f in LIB.rglob("*.py"):
        tree = ast.parse(f.read_text())
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        for n in tree.body:
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    assert not (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                and t.value.id in classes), (f.name, ast.unparse(t))

def _imports(path: Path) -> set:
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.level:
            out.add((n.module or "").split(".")[0])
    return out

def test_the_core_never_imports_its_tools_and_generation_not_the_tokenizer():
    for f in LIB.glob("*.py"):
        assert "tools" not in _imports(f), f.name
    assert "tokenizer" not in _imports(LIB / "generate.py")
