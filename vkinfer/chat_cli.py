"""`vkinfer chat`: a terminal conversation with one model session.

Each turn feeds the model only the tokens the template adds (the state is kept between turns);
snapshots after each prompt let the conversation go back when a template rewrites an earlier
turn. Ctrl-C stops an answer and keeps the program; Ctrl-D exits."""
import json
import sys


from .chat import Conversation, ReasoningFilter, stop_ids
from .errors import VkInferError
from .sampling import Sampler

HELP = """commands:
  /reset        start a new conversation
  /save FILE    save the conversation and the model state
  /load FILE    load them back
  /help         this text
  Ctrl-C stops an answer, Ctrl-D (or /quit) leaves."""
DIM, RESET = "\x1b[2m", "\x1b[0m"
KEEP_SNAPSHOTS = 4      # besides the empty conversation's: where a rewritten template can go back


class ChatRunner:
    """The conversation logic without the terminal: `turn(text, emit)` feeds the user's text,
    streams the answer through emit(text, is_reasoning) and returns the answer's text."""

    def __init__(self, model, sampling: dict, max_tokens: int = 256, system: str | None = None,
                 reasoning: str = "show"):
        self.model, self.max_tokens, self.reasoning = model, max_tokens, reasoning
        tok = model.tokenizer
        self.template = model.file.get("tokenizer.chat_template")
        piece = (lambda i: tok.decode([i]) if i is not None else "")
        self.conv = Conversation(tok, self.template, piece(tok.bos_id), piece(tok.eos_id), system=system)
        self.sampler = Sampler(n_valid=min(tok.n_tokens, model.n_vocab), **sampling)
        self.stops = set(stop_ids(tok)) | set(getattr(tok, "eog_ids", ()))
        self.session = model.session()
        self.snapshots = {0: self.session.snapshot()}

    def reset(self):
        self.conv.reset()
        self.session.restore(self.snapshots[0])
        self.snapshots = {0: self.snapshots[0]}

    def _feed_prompt(self, text: str):
        before = self.conv.state()
        ids = self.conv.add_user(text)
        checkpoint = None
        if ids is None:      # the template rewrote an earlier turn: go back to a checkpoint
            checkpoint = max(k for k in self.conv.checkpoints() if k in self.snapshots)
            ids = self.conv.rewind(checkpoint)
        start = self.session.n_past if checkpoint is None else self.snapshots[checkpoint]["n_past"]
        room = self.model.n_ctx - start
        if len(ids) + 1 > room:
            self.conv.load_state(before)
            raise VkInferError(f"this message needs {len(ids)} tokens but the context has {room} "
                               f"left of {self.model.n_ctx}; /reset, or restart with a larger -c")
        if checkpoint is not None:
            self.session.restore(self.snapshots[checkpoint])
        logits = self.session.eval(ids)
        self.snapshots[self.conv.n_fed] = self.session.snapshot()
        for old in sorted(self.snapshots)[1:-KEEP_SNAPSHOTS]:     # bound the memory they take
            del self.snapshots[old]
        return logits

    def turn(self, text: str, emit) -> str:
        """Feed the user's text, stream the answer through emit(text, is_reasoning)."""
        logits = self._feed_prompt(text)
        stream = self.model.tokenizer.stream()
        filt = ReasoningFilter(self.reasoning, in_reasoning=self.conv.prompt_opens_reasoning)
        stops = self.conv.stop_strings or ()
        start, generated, answer, shown = self.session.n_past, [], "", 0
        history = list(self.conv.fed_ids)

        def show(upto):
            nonlocal shown
            for segment, is_reasoning in filt.push(answer[shown:upto]):
                emit(segment, is_reasoning)
            shown = max(shown, upto)

        try:
            for _ in range(self.max_tokens):
                if self.session.n_past >= self.model.n_ctx:
                    emit("\n[context full: /reset to start again]", False)
                    break
                token = self.sampler.sample(logits, history)
                if token in self.stops:
                    break
                generated.append(token)
                logits = self.session.eval([token])
                history.append(token)
                answer += stream.push(token)
                cut = _find_stop(answer, stops)
                if cut is not None:
                    answer = answer[:cut]
                    break
                show(len(answer) - _partial_stop(answer, stops))
            else:
                answer += stream.flush()
        except KeyboardInterrupt:
            emit(" [stopped]", False)
        show(len(answer))
        for segment, is_reasoning in filt.flush():
            emit(segment, is_reasoning)
        # Only what the session consumed counts as fed (Ctrl-C may land between sample and eval).
        self.conv.add_assistant(answer, generated[:self.session.n_past - start])
        return answer

    def save(self, path):
        self.session.save(path, conversation=json.dumps(self.conv.state()))

    def load(self, path):
        extra = self.session.load(path)
        if "conversation" not in extra:
            raise VkInferError(f"{path}: a saved session without a conversation")
        self.conv.load_state(json.loads(str(extra["conversation"])))
        self.snapshots = {0: self.snapshots[0], self.conv.n_fed: self.session.snapshot()}


def _find_stop(text: str, stop_strings) -> int | None:
    hits = [text.find(s) for s in stop_strings or () if s in text]
    return min(hits) if hits else None


def _partial_stop(text: str, stop_strings) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    best = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def chat_loop(model, args, sampling: dict) -> int:
    try:
        runner = ChatRunner(model, sampling, args.n_predict, args.system, args.reasoning)
    except ValueError as e:
        raise VkInferError(str(e)) from None
    tty = sys.stdout.isatty()

    def emit(text, is_reasoning):
        sys.stdout.write(f"{DIM}{text}{RESET}" if is_reasoning and tty else text)
        sys.stdout.flush()

    template = "its chat template" if runner.template else "a plain User:/Assistant: format (no template)"
    print(f"vkinfer chat: {model.file.path.name} ({model.arch}) on {model.dev.name}, "
          f"{template}. /help for commands, Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(runner, line.strip()):
                return 0
            continue
        try:
            runner.turn(line, emit)
        except VkInferError as e:
            print(f"\nvkinfer: {e}", file=sys.stderr)
        print()


def _command(runner: ChatRunner, line: str) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            runner.reset()
            print("(new conversation)", file=sys.stderr)
        elif name in ("/save", "/load") and not arg:
            print(f"usage: {name} FILE", file=sys.stderr)
        elif name == "/save":
            runner.save(arg)
            print(f"(saved to {arg})", file=sys.stderr)
        elif name == "/load":
            runner.load(arg)
            print(f"(loaded {arg}: {runner.conv.n_fed} tokens of conversation)", file=sys.stderr)
        else:
            print(HELP, file=sys.stderr)
    except (VkInferError, OSError) as e:
        print(f"vkinfer: {e}", file=sys.stderr)
    return True
