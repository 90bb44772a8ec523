"Chapter 08e: a batch of prompts of different lengths, left-padded: each row exactly what it would be alone."
import pytest, torch, transformers
from qwen3_lib import Qwen3Config, Qwen3ForCausalLM, generate, FastQwen3, ContextLengthError
from qwen3_lib.batching import padding_positions, left_pad
from qwen3_lib.tokenizer import ENDOFTEXT_ID
from conftest import hf_twin, randomize_norms, max_diff

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(Qwen3Config.tiny()).eval()
    m.reset_parameters(std=0.05); randomize_norms(m)                  # varied tokens: a stronger test
    return m

def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 1000, (n,), generator=g).tolist() for n in lengths]

def test_positions_and_mask_of_a_padded_batch():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    pos, allowed = padding_positions(mask, (2, 4))
    assert pos.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert allowed.shape == (2, 1, 4, 4)
    assert allowed[0, 0].tolist() == [[True, False, False, False], [False, True, False, False],
                                      [False, False, True, False], [False, False, True, True]]
    pos, allowed = padding_positions(torch.tensor([[0, 1, 1, 1]]), (1, 1), past=3)      # a decode step after a cache
    assert pos.tolist() == [[2]] and allowed[0, 0].tolist() == [[False, True, True, True]]

def test_each_row_equals_generating_it_alone(tiny):
    "Lengths 1 ... 200 mixed, greedy, float32: every row's tokens are those of the prompt alone."
    ps = prompts([1, 200, 7, 64, 2, 133])
    batched = generate(tiny, ps, 12, stop_token_ids=())
    for p, got in zip(ps, batched):
        alone = generate(tiny, torch.tensor([p]), 12, stop_token_ids=())[0]
        assert torch.equal(got, alone), len(p)

def test_padded_logits_equal_each_row_alone(tiny):
    ps = prompts([3, 11, 8], seed=1)
    ids, mask = left_pad(ps, ENDOFTEXT_ID % 1000)
    with torch.no_grad():
        out = tiny(ids, attention_mask=mask)
        for i, p in enumerate(ps):
            alone = tiny(torch.tensor([p]))[0]
            assert max_diff(out[i, -len(p):], alone) <= 1e-5

def test_equals_transformers_generate_with_left_padding(tiny):
    ps = prompts([4, 17, 9, 1], seed=2)
    ids, mask = left_pad(ps, 0)
    ours = generate(tiny, ids, 10, attention_mask=mask, stop_token_ids=(), pad_token_id=0)
    with torch.no_grad():
        theirs = hf_twin(tiny).generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                                        min_new_tokens=10, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours[:, ids.shape[1]:], theirs[:, ids.shape[1]:])

def test_padding_never_leaks(tiny):
    "Changing only the padding ids changes nothing that is returned for real tokens."
    ps = prompts([2, 9, 5], seed=3)
    ids, mask = left_pad(ps, 0)
    other = torch.where(mask.bool(), ids, torch.randint(0, 1000, ids.shape))
    with torch.no_grad():
        a, b = tiny(ids, attention_mask=mask), tiny(other, attention_mask=mask)
    assert max_diff(a[mask.bool()], b[mask.bool()]) == 0
    assert torch.equal(generate(tiny, ids, 8, attention_mask=mask, stop_token_ids=())[:, ids.shape[1]:],
                       generate(tiny, other, 8, attention_mask=mask, stop_token_ids=())[:, other.shape[1]:])

def test_sampling_per_row_is_reproducible_and_equals_alone(tiny):
    ps = prompts([5, 12, 3], seed=4)
    kw = dict(temperature=0.9, top_k=50, stop_token_ids=())
    a = generate(tiny, ps, 8, seed=[1, 2, 3], **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, generate(tiny, ps, 8, seed=[1, 2, 3], **kw)))
    for p, row, s in zip(ps, a, (1, 2, 3)):
        assert torch.equal(row, generate(tiny, torch.tensor([p]), 8, seed=s, **kw)[0])
    with pytest.raises(ValueError, match="one per row"):
        generate(tiny, ps, 4, seed=[1, 2], **kw)

def test_stop_tokens_per_row(tiny):
    ps = prompts([4, 9], seed=5)
    alone = [generate(tiny, torch.tensor([p]), 6, stop_token_ids=())[0, len(p):].tolist() for p in ps]
    stop = alone[0][2]                                                   # row 0 stops by its third new token
    out = generate(tiny, ps, 6, stop_token_ids=(stop,))
    for p, a, row in zip(ps, alone, out):                               # each row ends at its own first stop
        n = next((i + 1 for i, t in enumerate(a) if t == stop), 6)
        assert row.tolist() == p + a[:n]
    assert len(out[0]) <= len(ps[0]) + 3

def test_errors_name_the_problem(tiny):
    ids, mask = left_pad(prompts([2, 5]), 0)
    with pytest.raises(ValueError, match="shape"):
        generate(tiny, ids, 2, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="1 for tokens"):
        generate(tiny, ids, 2, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="all padding"):
        generate(tiny, ids, 2, attention_mask=torch.stack([torch.zeros(5, dtype=torch.long), mask[1]]))
    with pytest.raises(ValueError, match="pad on the left"):
        generate(tiny, ids, 2, attention_mask=mask.flip(1))
    bad = prompts([2, 5]); bad[1][3] = 5000
    with pytest.raises(ValueError, match="5000"):
        generate(tiny, bad, 2)
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny, [[1, 2], []], 2)
    small = Qwen3ForCausalLM(Qwen3Config.tiny(max_position_embeddings=16)).eval()
    with pytest.raises(ContextLengthError):
        generate(small, [[1] * 3, [2] * 10], 8)
    with pytest.raises(ValueError, match="qwen3_lib.generate"):
        FastQwen3(tiny, 32, 2).generate(ids, 2, attention_mask=mask)
    with pytest.raises(ValueError, match="qwen3_lib.generate"):
        FastQwen3(tiny, 32, 2).generate(prompts([2, 5]), 2)

def test_context_overflow_names_the_longest_row():
    small = Qwen3ForCausalLM(Qwen3Config.tiny(max_position_embeddings=16)).eval()
    with pytest.raises(ContextLengthError, match="row 1"):
        generate(small, [[1] * 3, [2] * 10, [3] * 4], 8)
