"""`python -m qwen3_lib` with its model wrapped in tests/doubles.py's ScriptedModel, for driving the chat end to end:
    python tests/scripted_cli.py SCRIPT.json chat --weights DIR ...
SCRIPT.json holds the list of replies to force. The package itself has no such flag."""
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from doubles import ScriptedModel
import qwen3_lib.__main__ as cli

def main(script: str, argv: list) -> int:
    replies, load = json.loads(Path(script).read_text()), cli._load
    def scripted_load(args):
        model, tok, gen = load(args)
        return ScriptedModel(model, tok, replies), tok, gen
    cli._load = scripted_load
    return cli.main(argv)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
