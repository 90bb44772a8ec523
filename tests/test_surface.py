"The library's surface: what `import qwen3_lib` offers, one home per error, and a core that never imports its tools."
import ast, importlib, pkgutil
from pathlib import Path
import qwen3_lib
from qwen3_lib import errors
from test_floors import library_modules, own_imports

LIB = Path(qwen3_lib.__file__).parent

def test_the_front_door_is_small_and_complete():
    assert len(qwen3_lib.__all__) <= 30
    assert len(set(qwen3_lib.__all__)) == len(qwen3_lib.__all__)
    for name in qwen3_lib.__all__:
        assert getattr(qwen3_lib, name) is not None, name
    for internal in ("check_input_ids", "attention_sdpa", "attention_explicit", "RMSNorm", "apply_rotary"):
        assert internal not in qwen3_lib.__all__

def test_the_front_door_holds_the_arithmetic_of_what_a_model_holds():
    "index.ipynb's rule: parameters and their bytes (dense, MoE, quantized) and the KV cache; no transient costs."
    sizes = {n for n in qwen3_lib.__all__ if n.endswith(("_bytes", "_counts"))}
    assert sizes == {"param_counts", "weight_bytes", "moe_param_counts", "quantized_bytes", "kv_cache_bytes"}

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

def test_the_core_never_imports_its_tools_and_generation_not_the_tokenizer():
    "Every import counts, as test_floors walks them: absolute or relative, at the top or inside a function."
    mods = library_modules()
    for name, path in mods.items():
        if name.split(".")[0] != "tools":
            assert not [t for t, line, _ in own_imports(path, mods) if t.split(".")[0] == "tools"], name
    assert "tokenizer" not in {t for t, line, _ in own_imports(mods["generate"], mods)}

def test_the_guard_sees_an_import_of_a_tool_inside_a_function(tmp_path):
    "The guard's old walk read only relative imports at the top: this one, inside a function, passed it."
    (tmp_path / "qwen3_lib" / "tools").mkdir(parents=True)
    f = tmp_path / "qwen3_lib" / "generate.py"
    f.write_text("def generate():\n    from qwen3_lib.tools.bench import run_benchmark\n")
    mods = {"generate": f, "tools.bench": tmp_path / "qwen3_lib" / "tools" / "bench.py"}
    assert own_imports(f, mods, tmp_path / "qwen3_lib") == [("tools.bench", 2, True)]
