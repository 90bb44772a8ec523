"""`python -m qwen3_lib` with its model wrapped in tests/doubles.py's ScriptedModel, for driving the chat end to end:
    python tests/scripted_cli.py SCRIPT.json chat --weights DIR ...
SCRIPT.json holds the list of replies to force. A reply written {"text": "...", "wait": true} is forced up to its
end and then never ends by itself: the model blocks before its last token until Ctrl-C (KeyboardInterrupt) stops
it, or for at most WAIT_S seconds. So a test can interrupt a reply that is certainly still running, however fast
or loaded the machine. The package itself has no such flag."""
import json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from doubles import ScriptedModel
import qwen3_lib.__main__ as cli

WAIT_S = 120

class WaitingModel(torch.nn.Module):
    "A ScriptedModel whose replies numbered in `waits` block before their closing <|im_end|>."
    def __init__(self, scripted: ScriptedModel, waits: set):
        super().__init__()
        self.scripted, self.cfg, self.waits, self.number = scripted, scripted.cfg, waits, -1

    def forward(self, input_ids, **kw):
        s, left = self.scripted, len(self.scripted.replies)
        logits = s(input_ids, **kw)
        if len(s.replies) < left: self.number += 1          # a generation prompt: the next reply has begun
        if self.number in self.waits and s.reply is not None and s.pos == len(s.reply) - 1:
            time.sleep(WAIT_S)                              # its text is on the screen; Ctrl-C ends the wait
        return logits

def main(script: str, argv: list) -> int:
    entries, load = json.loads(Path(script).read_text()), cli._load
    replies = [e["text"] if isinstance(e, dict) else e for e in entries]
    waits = {i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("wait")}
    def scripted_load(args):
        model, tok, gen = load(args)
        return WaitingModel(ScriptedModel(model, tok, replies), waits), tok, gen
    cli._load = scripted_load
    return cli.main(argv)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
