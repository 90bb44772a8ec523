import pytest, torch, transformers
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, Qwen3Tokenizer
from qwen3_lib.tools.bench import transformers_twin

transformers.logging.set_verbosity_error()

def hf_config(cfg: Qwen3Config):
    "transformers' Qwen3Config for our config, with eager attention (the reference implementation)."
    hc = transformers.Qwen3Config(**cfg.to_hf())
    hc._attn_implementation = "eager"
    return hc

def hf_twin(model, attn_implementation="eager"):
    "transformers' Qwen3ForCausalLM with model's config and weights (strictly loaded); eager attention: the reference."
    return transformers_twin(model, attn_implementation)

@pytest.fixture(scope="module")
def tok():
    "The real Qwen3 tokenizer, built once per test module."
    return Qwen3Tokenizer()

@pytest.fixture(scope="module")
def one_thread():
    "A miniature model decodes faster on one thread: its operations are too small to share between two."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def randomize_norms(module, std=0.2):
    "Non-trivial RMSNorm gains, so that parity tests exercise them."
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or name == "weight" and p.dim() == 1:
                p.normal_(1.0, std)

def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# Property-based tests (tests/test_robustness.py): the "ci" profile, loaded by default, is derandomised (the same
# examples every run, no example database written) with no per-example deadline; each test sets its own count.
# HYPOTHESIS_PROFILE=dev draws new examples on every run (and HYPOTHESIS_SCALE=k tries k times as many).
import os
from hypothesis import settings, HealthCheck
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
