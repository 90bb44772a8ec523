"README's numbers come from the recorded JSON: its results section is exactly what the generator writes."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_readme_results_are_generated_from_the_recorded_json():
    r = subprocess.run([sys.executable, "benchmarks/update_readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
