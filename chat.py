"""
LLaMA-2's chat format, shared by prepare.py (conversations -> token files that say where the loss
is), generate.py --chat (the ids it feeds each turn, and which exchanges go when the context fills)
and train.py (the chat template it writes for transformers and mlx-lm).

Each exchange, a user turn and its reply, is what Meta's llama code makes of it:
    [BOS] + encode(f"[INST] {user.strip()} [/INST] {reply.strip()} ") + [EOS]
with a system prompt folded into the first user turn as "<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}".
Plain text around the BOS and EOS that every Llama tokenizer has: a base model needs no new tokens.
The loss is on each reply's tokens and the EOS that ends it. Conversations come as .jsonl rows in
mlx-lm's and Hugging Face's format: {"messages": [{"role": "system" | "user" | "assistant",
"content": "..."}, ...]}.
"""
import json
import sys

from errors import Error

ROLES = ("system", "user", "assistant")
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

# The same format in Jinja, for transformers' apply_chat_template and mlx-lm (Llama-2-chat's own
# template, with the system prompt stripped with the user's text as Meta's code strips it). Its
# "<s>" and "</s>" are the special tokens, so tokenizer_config.json says split_special_tokens false
# (hf_tokenizer.hf_tokenizer_files). A generation prompt is the user turn itself, up to "[/INST]".
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 is even) %}"
    "{{ raise_exception('roles must alternate user/assistant after an optional system') }}"
    "{% endif %}"
    "{% set content = message['content'] %}"
    "{% if loop.first and system is not none %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")


def check_conversation(messages):
    """Raise errors.Error unless messages is [system?] then user, assistant, ... ending with a
    reply, every content a string."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Error('a row must be {"messages": [{"role": ..., "content": ...}, ...]}')
    for i, m in enumerate(messages, 1):
        if m.get("role") not in ROLES:
            raise Error(f"message {i} has the unknown role {m.get('role')!r} "
                        f"(system, user or assistant)")
        if not isinstance(m.get("content"), str):
            raise Error(f"message {i} ({m['role']}): its content is not a string")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise Error("no assistant turn, so nothing to learn from")
    turns = roles[1:] if roles[0] == "system" else roles
    if turns != ["user", "assistant"] * (len(turns) // 2):
        raise Error(f"the roles go {', '.join(roles)}; after an optional system message "
                    f"they must alternate user, assistant, ..., ending with an assistant turn")


def prompt_text(user, system=None):
    """An exchange's text up to the reply. system=None: none; "" is an empty one."""
    if system is not None:
        user = B_SYS + system + E_SYS + user
    return f"[INST] {user.strip()} [/INST]"


def reply_text(reply):
    """An exchange's text after the prompt: what the loss tokens stand for (and EOS)."""
    return f" {reply.strip()} "


def turn_ids(sp, user, system=None):
    """The ids that open an exchange, BOS through " [/INST]": what the chat loop feeds before it
    samples a reply up to EOS. Given the system prompt on the first turn only, turn_ids + reply +
    [EOS] over the exchanges is render_conversation's ids."""
    return [sp.bos_id()] + sp.encode(prompt_text(user, system))


def conversation_ids(sp, exchanges, user, system=None):
    """The ids of a conversation up to the reply to `user`: each of `exchanges`, a (user text,
    reply ids) pair, as turn_ids + reply + [EOS], the system prompt folded into the first turn."""
    ids = []
    for past, reply in exchanges:
        ids += turn_ids(sp, past, system) + reply + [sp.eos_id()]
        system = None
    return ids + turn_ids(sp, user, system)


def next_turn(sp, exchanges, user, system, cached, context, max_new_tokens):
    """The ids a chat loop feeds before it samples the reply to `user`, and the exchanges that stay.

    `exchanges` is the conversation so far, (user text, reply ids) each, and a KV cache holds its
    `cached` ids. If the turn fits after them with room for the reply (max_new_tokens, at most half
    the `context`), it returns (the EOS that closes the last reply + the turn's ids, None): the
    cache carries on. Otherwise the oldest exchanges go until the rest fit, and it returns (the ids
    of the exchanges kept and of the turn, kept), for a new cache: RoPE has baked the positions
    into the old one, so it cannot slide. Raises errors.Error if the turn alone, with the system
    prompt a new cache starts with, leaves no room for a reply."""
    alone = turn_ids(sp, user, system)
    if len(alone) + 1 >= context:
        with_system = " with the system prompt" if system is not None else ""
        raise Error(f"that turn alone is {len(alone)} tokens{with_system}, the model's context "
                    f"{context}; say it in fewer words")
    feed = [sp.eos_id()] + turn_ids(sp, user) if exchanges else alone
    room = min(max_new_tokens, context // 2)  # what a reply may need at the least
    if cached + len(feed) + room <= context:
        return feed, None
    kept = exchanges
    while kept and len(conversation_ids(sp, kept, user, system)) + room > context:
        kept = kept[1:]
    return conversation_ids(sp, kept, user, system), kept


class Conversation:
    """generate.py --chat's conversation, held in one KV cache of `model` from turn to turn: its
    exchanges so far, (user text, reply ids) each, and the ids each turn feeds (next_turn's)."""

    def __init__(self, sp, system, model, max_new_tokens):
        self.sp, self.system, self.model, self.max_new_tokens = sp, system, model, max_new_tokens
        self.exchanges = []

    def turns(self, lines):
        """For each of `lines`, a user turn, yield (it, the ids to feed before its reply, the cache
        to feed them to); the caller appends (it, reply ids) to exchanges before the next. A note
        on stderr says when a turn is too long to answer (it is skipped) and, once, when the
        conversation outgrows the context (its oldest exchanges go, the rest fill a new cache)."""
        context, cache, trimmed = self.model.args.max_seq_len, self.model.make_cache(), False
        for user in lines:
            try:
                feed, kept = next_turn(self.sp, self.exchanges, user, self.system,
                                       cache[0].offset, context, self.max_new_tokens)
            except Error as e:
                print(f"note: {e}", file=sys.stderr)
                continue
            if kept is not None:
                if not trimmed:
                    print(f"note: the conversation is longer than the model's context of "
                          f"{context} tokens; its oldest exchanges go", file=sys.stderr)
                self.exchanges, cache, trimmed = kept, self.model.make_cache(), True
            yield user, feed, cache


def encode_with_offsets(sp, text):
    """text's ids and each piece's (begin, end) character offsets in text."""
    out = sp.encode(text, out_type="offset_mapping")  # sentencepiece 0.2.3; no protobuf needed
    return out["ids"], out["offsets"]


def render_conversation(sp, messages):
    """A conversation's (ids, mask): mask[i] is 1 where ids[i] is a reply's token or the EOS after
    it, 0 elsewhere (BOS, [INST] ... [/INST], the user's and the system's text).

    Each exchange is encoded whole, as any tokenizer of the text would, and a token is the reply's
    when its piece starts at or after the space that follows "[/INST]". A piece that spans that
    point (a tokenizer that merges across spaces) would leave no ids that the chat loop could feed
    before the reply, so it is an error.
    """
    check_conversation(messages)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    ids, mask = [], []
    for k in range(0, len(turns), 2):
        prompt = prompt_text(turns[k]["content"], system if k == 0 else None)
        text = prompt + reply_text(turns[k + 1]["content"])
        pieces, offsets = encode_with_offsets(sp, text)
        start = len(prompt)
        if any(begin < start < end for begin, end in offsets):
            raise Error("this tokenizer makes a piece that spans the space after [/INST], "
                        "so a reply's tokens cannot be told apart; use one whose pieces "
                        "start at spaces (SentencePiece's default)")
        ids += [sp.bos_id(), *pieces, sp.eos_id()]
        mask += [0] + [int(begin >= start) for begin, _ in offsets] + [1]
    return ids, mask


def reply_bytes(messages):
    """The UTF-8 size of the text a conversation's loss tokens stand for."""
    return sum(len(reply_text(m["content"]).encode("utf-8")) for m in messages
               if m["role"] == "assistant")


def is_chat_file(path):
    """Whether a .jsonl file holds conversations: its first row has "messages"."""
    if not path.endswith(".jsonl"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        line = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and "messages" in row


def read_conversations(path, to_messages=lambda row: row.get("messages")):
    """The conversations of a .jsonl file, a JSON object a line (blank lines skipped), each
    checked; to_messages turns a row into messages (for datasets of another shape). Raises
    errors.Error naming the file and the line."""
    i = 0
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise Error(f"not JSON ({e.msg}); .jsonl wants a JSON object a line")
                if not isinstance(row, dict):
                    raise Error("not a JSON object")
                messages = to_messages(row)
                check_conversation(messages)
                yield messages
    except UnicodeDecodeError:
        raise Error(f"{path} is not UTF-8 text") from None
    except ValueError as e:
        raise Error(f"{path}, line {i}: {e}") from None
