"""The real checkpoint, opt-in: these tests run only when QWEN3_WEIGHTS points at a downloaded Qwen3-0.6B or
Qwen3-0.6B-Base directory (nothing is ever downloaded), and are skipped, saying why, everywhere else.

The expected numbers are the ones transformers' own integration tests publish (huggingface/transformers,
tests/models/qwen3/test_modeling_qwen3.py, class Qwen3IntegrationTest, at commit 3e7da9f11075a6e34d572fe04d28485a3989d274).
They were computed on **Qwen/Qwen3-0.6B-Base**, in float32: they are checked only for that checkpoint, recognised by
"base" in the directory's path (the Hugging Face cache's models--Qwen--Qwen3-0.6B-Base, a --local-dir named after
it) or by QWEN3_CHECKPOINT=Qwen3-0.6B-Base. For either checkpoint our logits are compared with transformers' on
the same files. Cost: two float32 copies of the model (about 5 GB of RAM) and about a minute on 2 CPU cores."""
import os
from pathlib import Path
import pytest, torch
from conftest import max_diff

WEIGHTS = os.environ.get("QWEN3_WEIGHTS")
pytestmark = pytest.mark.skipif(not WEIGHTS, reason="QWEN3_WEIGHTS is not set: these tests need a downloaded "
                                "Qwen3-0.6B or Qwen3-0.6B-Base checkpoint directory (nothing is downloaded)")
BASE = "Qwen3-0.6B-Base"

# Qwen3IntegrationTest.test_model_600m_logits: these ids (a prompt in another model's vocabulary; any ids will do)
IDS = [1, 306, 4658, 278, 6593, 310, 2834, 338]
EXPECTED_MEAN = [-1.3789, 1.3029, 3.8262, 3.4637, 2.8796, 1.8357, 2.1290, 2.1814]            # logits.mean(-1)
EXPECTED_SLICE = [4.6905, 4.9243, 4.7101, 3.2052, 2.2683, 1.6576, 3.6529, 3.9800, 3.2605, 2.6475, 3.0468, 4.2296,
                  5.7443, 4.8940, 4.4883, 6.0323, 7.4057, 7.3710, 6.8373, 6.6323, 6.7114, 6.3069, 6.1751, 6.0416,
                  6.0793, 4.6975, 2.3286, 3.6387, 2.0757, 1.9813]                             # logits[0, 0, :30]
# Qwen3IntegrationTest.test_model_600m_generation: 20 greedy tokens, decoded with the prompt
PROMPT = "My favourite condiment is "
EXPECTED_TEXT = "My favourite condiment is 100% plain, unflavoured, and unadulterated. It is"

def _checkpoint_name() -> str:
    named = os.environ.get("QWEN3_CHECKPOINT")
    if named: return named
    return BASE if "base" in str(Path(WEIGHTS).expanduser().resolve()).lower() else "Qwen3-0.6B"

@pytest.fixture(scope="module")
def real():
    "Our model, float32, from QWEN3_WEIGHTS; skipped if the directory holds some other model."
    from qwen3_lib import Qwen3Config, load_pretrained
    cfg = Qwen3Config.from_hf(Path(WEIGHTS).expanduser())
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim")
    if any(getattr(cfg, f) != getattr(Qwen3Config(), f) for f in shape):
        pytest.skip(f"QWEN3_WEIGHTS={WEIGHTS} is not a Qwen3-0.6B-shaped checkpoint")
    return load_pretrained(WEIGHTS, dtype=torch.float32, progress=False)

@pytest.fixture(scope="module")
def base_only():
    "Skip (before loading anything) unless the checkpoint is the one the published values belong to."
    if _checkpoint_name() != BASE:
        pytest.skip(f"transformers publishes these values for {BASE} only; {WEIGHTS} is taken for "
                    f"{_checkpoint_name()} (set QWEN3_CHECKPOINT={BASE} if it holds the base model)")

def test_real_checkpoint_loads_tied_and_matches_transformers(real):
    "Either checkpoint: the published file's own lm_head.weight equals the embedding (else loading refuses it)."
    import transformers
    assert real.lm_head.weight is real.model.embed_tokens.weight
    ref = transformers.Qwen3ForCausalLM.from_pretrained(Path(WEIGHTS).expanduser(), dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    ids = torch.tensor([IDS])
    with torch.no_grad():
        ours, theirs = real(ids), ref(ids).logits
    assert max_diff(ours, theirs) <= 1e-3
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))

def test_published_logits(base_only, real):
    "The published statistics; their tolerance is 1e-4 on their GPU, ours 1e-3 for a CPU's float32 sums."
    with torch.no_grad():
        out = real(torch.tensor([IDS])).float()
    torch.testing.assert_close(out.mean(-1), torch.tensor([EXPECTED_MEAN]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out[0, 0, :30], torch.tensor(EXPECTED_SLICE), rtol=1e-3, atol=1e-3)

def test_published_greedy_continuation(base_only, real):
    from qwen3_lib import Qwen3Tokenizer, generate
    tok = Qwen3Tokenizer()
    out = generate(real, torch.tensor([tok.encode(PROMPT)]), 20)
    assert tok.decode(out[0].tolist(), skip_special_tokens=True) == EXPECTED_TEXT
