"""Test doubles for the chat and the command line (not part of qwen3_lib)."""
import torch

class ScriptedModel(torch.nn.Module):
    """A model that says what a script says: it wraps a Qwen3ForCausalLM (so its cache and shapes are real) and,
    whenever a prompt ends with the generation prompt, forces the tokens of the next scripted reply and then
    <|im_end|>. For testing chat programs, tool loops included, without a trained model. Once the script is used
    up, it is the model it wraps."""
    def __init__(self, model, tokenizer, replies: list):
        super().__init__()
        self.inner, self.cfg = model, model.cfg
        eos = tokenizer.eos_token_id
        self.replies = [tokenizer.encode(r) + [eos] for r in replies]          # the script may hold control tokens
        # the generation prompt's ids, with thinking on and off (chapter 07b's template)
        self.prompts = [tokenizer.encode("<|im_start|>assistant\n"), tokenizer.encode("<think>\n\n</think>\n\n")]
        self.reply, self.pos = None, 0

    def forward(self, input_ids, kv_cache=None, logits_to_keep: int = 0, **kw):
        logits = self.inner(input_ids, kv_cache=kv_cache, logits_to_keep=logits_to_keep, **kw)
        if any(input_ids[0, -len(p):].tolist() == p for p in self.prompts):
            self.reply, self.pos = (self.replies.pop(0) if self.replies else None), 0
        else:
            self.pos += 1                                  # fed the token it chose last
        if self.reply is not None and self.pos < len(self.reply):
            logits[:, -1] = float("-inf")
            logits[:, -1, self.reply[self.pos]] = 0.0
        return logits
