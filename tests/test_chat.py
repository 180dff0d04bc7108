"""chat.py: LLaMA-2's chat format. The loss mask is exactly the replies and their EOS, the ids the
chat loop feeds rebuild a rendered conversation, and transformers' and mlx-lm's apply_chat_template
give the same ids (those skip without the interop extras). Tokenizers of both kinds: ours (no
dummy prefix, whitespace-only pieces) and one made as Llama 2's was (a space in front)."""
import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import chat  # noqa: E402
import corpus  # noqa: E402
import errors  # noqa: E402
import hf_tokenizer  # noqa: E402

LINES = [f"{w} the cat sat on a mat  and [INST] said: what {i} is it? [/INST] a dog ran far 🦙"
         for i, w in enumerate(("def", "  if", "return", "\tclass", "import") * 40)]
SYSTEM = "Be brief.\nAnswer in  English."
CONVERSATION = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": " What did the cat do?\n"},
                {"role": "assistant", "content": "It sat on a mat.  "},
                {"role": "user", "content": "And the dog, señor?"},
                {"role": "assistant", "content": "\n It ran  far away: café 😀"}]
BARE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""},
        {"role": "user", "content": "what is it"}, {"role": "assistant", "content": "a dog"}]


@pytest.fixture(scope="module", params=["ours", "llama-style"])
def sp_path(request, tmp_path_factory):
    """A tokenizer.model of each kind, in a folder of its own."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "ours":
        (folder / "tokenizer.model").write_bytes(corpus.train_tokenizer(iter(LINES), 320, 1))
    else:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(LINES), model_prefix=str(folder / "tokenizer"),
            model_type="bpe", vocab_size=320, byte_fallback=True, add_dummy_prefix=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, num_threads=1,
            minloglevel=2)
    return folder / "tokenizer.model"


@pytest.fixture(scope="module")
def sp(sp_path):
    return spm.SentencePieceProcessor(model_file=str(sp_path))


def exchanges(messages):
    """(prompt text, reply text) of each exchange, the system prompt folded into the first."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    return [(chat.prompt_text(turns[k]["content"], system if k == 0 else None),
             chat.reply_text(turns[k + 1]["content"])) for k in range(0, len(turns), 2)]


@pytest.mark.parametrize("messages", [CONVERSATION, BARE])
def test_mask_is_the_replies_and_their_eos_exactly(sp, messages):
    ids, mask = chat.render_conversation(sp, messages)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    texts = exchanges(messages)
    if messages is CONVERSATION:  # Meta's rendering, spelled out
        assert texts[0] == ("[INST] <<SYS>>\nBe brief.\nAnswer in  English.\n<</SYS>>\n\n "
                            "What did the cat do? [/INST]", " It sat on a mat. ")
        assert texts[1] == ("[INST] And the dog, señor? [/INST]", " It ran  far away: café 😀 ")
    starts = [i for i, t in enumerate(ids) if t == sp.bos_id()] + [len(ids)]
    assert len(starts) - 1 == len(texts) and starts[0] == 0
    for (prompt, reply), a, b in zip(texts, starts, starts[1:]):
        part, flags = ids[a:b], mask[a:b]
        n_prompt = flags.index(1)
        # BOS and the prompt off, then the reply and its EOS on: one run each
        assert flags == [0] * n_prompt + [1] * (b - a - n_prompt) and part[-1] == sp.eos_id()
        prompt_ids, reply_ids = part[1:n_prompt], part[n_prompt:-1]
        assert sp.eos_id() not in part[:-1] and sp.bos_id() not in part[1:]
        # the ids are the exchange's text encoded whole, and the cut between them is the reply's
        assert prompt_ids + reply_ids == sp.encode(prompt + reply)
        assert sp.decode(prompt_ids) == prompt
        assert sp.decode(prompt_ids + reply_ids) == prompt + reply
    assert sum(mask) == len(ids) - sum(len(sp.encode(p)) + 1 for p, _ in texts)
    assert chat.reply_bytes(messages) == sum(len(r.encode()) for _, r in texts)


def sampled(sp, messages):
    """A conversation's exchanges as the chat loop holds them: (user text, reply ids), the replies
    as it would sample them, up to EOS."""
    ids, mask = chat.render_conversation(sp, messages)
    users = [m["content"] for m in messages if m["role"] == "user"]
    replies = [ids[i:ids.index(sp.eos_id(), i)] for i in range(1, len(ids))
               if mask[i] and not mask[i - 1]]
    assert len(replies) == len(users)
    return list(zip(users, replies))


@pytest.mark.parametrize("messages", [CONVERSATION, BARE])
def test_turn_ids_then_each_reply_and_eos_rebuild_the_rendering(sp, messages):
    ids, _ = chat.render_conversation(sp, messages)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    fed = []
    for k, (user, reply) in enumerate(sampled(sp, messages)):
        fed += chat.turn_ids(sp, user, system if k == 0 else None) + reply + [sp.eos_id()]
    assert fed == ids
    # conversation_ids builds the same, and the next turn after it, as the chat loop feeds it
    asking = messages + [{"role": "user", "content": "and the bird?"}]
    assert (chat.conversation_ids(sp, sampled(sp, messages), "and the bird?", system)
            == chat_loop_feed(sp, asking) == ids + chat.turn_ids(sp, "and the bird?"))
    assert chat.conversation_ids(sp, [], "hi", system) == chat.turn_ids(sp, "hi", system)


def test_next_turn_continues_the_cache_while_the_conversation_fits(sp):
    ids, _ = chat.render_conversation(sp, CONVERSATION)
    held, done = [], []  # what the KV cache holds, and the exchanges in it
    for user, reply in sampled(sp, CONVERSATION):
        feed, kept = chat.next_turn(sp, done, user, SYSTEM, len(held), len(ids) + 8, 8)
        assert kept is None
        held += feed + reply
        done.append((user, reply))
    assert held + [sp.eos_id()] == ids  # the turns fed and the replies: the whole conversation


def test_next_turn_drops_the_fewest_oldest_exchanges_and_encodes_the_rest_afresh(sp):
    messages = [CONVERSATION[0]] + CONVERSATION[1:] * 3  # six exchanges, a system prompt
    exchanges, user = sampled(sp, messages), "And the bird?"
    held = len(chat.render_conversation(sp, messages)[0]) - 1  # the cache: all but the last EOS
    turn = [sp.eos_id()] + chat.turn_ids(sp, user)
    seen = set()
    for context in range(len(chat.turn_ids(sp, user, SYSTEM)) + 2, held + len(turn) + 20):
        room = min(8, context // 2)
        feed, kept = chat.next_turn(sp, exchanges, user, SYSTEM, held, context, 8)
        if held + len(turn) + room <= context:
            assert (feed, kept) == (turn, None)
            seen.add("continued")
            continue
        n = len(exchanges) - len(kept)
        assert kept == exchanges[n:] and n > 0  # the oldest go, and the cache starts afresh
        # the system prompt moves into the first exchange that stays
        assert feed == chat.conversation_ids(sp, kept, user, SYSTEM)
        assert len(feed) + room <= context or not kept
        # one more exchange would not have fit
        assert len(chat.conversation_ids(sp, exchanges[n - 1:], user, SYSTEM)) + room > context
        seen.add("some kept" if kept else "none kept")
    assert seen == {"continued", "some kept", "none kept"}
    # the reply's room is max_new_tokens, or half the context if less: a first turn continues
    first = chat.turn_ids(sp, user, SYSTEM)
    assert chat.next_turn(sp, [], user, SYSTEM, 0, 3 * len(first), 10**6) == (first, None)


def test_a_turn_too_long_for_the_context_alone_is_refused(sp):
    # the system prompt counts on every turn: a new cache starts with it when no exchange fits
    for system, says in ((SYSTEM, " with the system prompt"), (None, "")):
        n = len(chat.turn_ids(sp, "what is it", system))
        for done in (sampled(sp, CONVERSATION), []):
            with pytest.raises(errors.Error, match=f"that turn alone is {n} tokens{says}, the "
                                                   f"model's context {n + 1}; say it in fewer"):
                chat.next_turn(sp, done, "what is it", system, 0, n + 1, 8)
            for cached in (0, n):  # room for one reply token, in the cache or in a new one
                feed, _ = chat.next_turn(sp, done, "what is it", system, cached, n + 2, 8)
                assert len(feed) <= n + 1


class CountingModel:
    """What a Conversation uses of a model: its context, and KV caches that count their ids."""

    def __init__(self, context):
        self.args = SimpleNamespace(max_seq_len=context)

    def make_cache(self):
        return [SimpleNamespace(offset=0)]


def test_the_chat_loop_skips_a_turn_too_long_and_says_once_that_old_exchanges_go(sp, capsys):
    context = len(chat.turn_ids(sp, "what is it", SYSTEM)) + 40
    conversation = chat.Conversation(sp, SYSTEM, CountingModel(context), 8)
    reply = sp.encode(" a dog")
    lines = ["what is it", "what " * context] + [f"and thing {i}?" for i in range(12)]
    answered, caches = [], 0
    for user, feed, cache in conversation.turns(lines):
        if cache[0].offset:  # the cache carries on: the EOS that ends the last reply, the turn
            assert feed == [sp.eos_id()] + chat.turn_ids(sp, user)
        else:  # a new cache: the exchanges kept, then the turn
            assert feed == chat.conversation_ids(sp, conversation.exchanges, user, SYSTEM)
            caches += 1
        cache[0].offset += len(feed) + len(reply)  # as sampling.generate leaves it
        conversation.exchanges.append((user, reply))
        answered.append(user)
    assert answered == lines[:1] + lines[2:]  # the long turn is skipped
    assert caches > 2 and len(conversation.exchanges) < len(answered)  # trimmed, twice or more
    notes = capsys.readouterr().err.splitlines()
    assert notes[0].startswith("note: that turn alone is") and notes[1:] == [
        f"note: the conversation is longer than the model's context of {context} tokens; its "
        "oldest exchanges go"]


def decoded(sp, ids):
    """ids as text, BOS and EOS spelled <s> and </s> as the chat template spells them."""
    text, run = "", []
    for t in ids + [sp.bos_id()]:
        if t in (sp.bos_id(), sp.eos_id()):
            text += sp.decode(run) + ("<s>" if t == sp.bos_id() else "</s>")
            run = []
        else:
            run.append(t)
    return text[:-3]


@pytest.mark.parametrize("messages", [CONVERSATION, BARE])
def test_template_round_trip_decodes_to_the_text(sp, messages):
    text = decoded(sp, chat.render_conversation(sp, messages)[0])
    assert text == "".join(f"<s>{p}{r}</s>" for p, r in exchanges(messages))
    assert text.startswith("<s>[INST] ") and text.count(" [/INST] ") == len(messages) // 2


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "system", "content": "x"}], "no assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["yo"]}],
     "message 2 (assistant): its content is not a string"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], "not a string"),
    ([{"role": "assistant", "content": "yo"}, {"role": "user", "content": "hi"}],
     "the roles go assistant, user"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
      {"role": "user", "content": "c"}], "ending with an assistant turn"),
    ({"role": "user"}, 'a row must be {"messages"'),
])
def test_bad_conversations_say_what_is_wrong(sp, messages, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        chat.render_conversation(sp, messages)


def test_a_tokenizer_that_merges_across_the_reply_start_is_refused(tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["[INST] hi there [/INST] yes sure"] * 100),
        model_prefix=str(tmp_path / "suffix"), model_type="bpe", vocab_size=300,
        byte_fallback=True, treat_whitespace_as_suffix=True, add_dummy_prefix=False,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "suffix.model"))
    assert "]▁" in sp.encode("[/INST] yes", out_type=str)
    with pytest.raises(ValueError, match="spans the space after"):
        chat.render_conversation(sp, BARE[2:])


def hf_folder(sp_path, tmp_path):
    """A folder with the tokenizer files train.py writes for a chat fine-tune."""
    shutil.copy(sp_path, tmp_path / "tokenizer.model")
    for name, blob in hf_tokenizer.hf_tokenizer_files(str(sp_path),
                                               chat_template=chat.CHAT_TEMPLATE).items():
        (tmp_path / name).write_bytes(blob)
    return tmp_path


def chat_loop_feed(sp, messages):
    """The ids generate.py --chat has fed when it is about to answer the last user turn."""
    history, _ = chat.render_conversation(sp, messages[:-1]) if len(messages) > 2 else ([], [])
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    return history + chat.turn_ids(sp, messages[-1]["content"], system if not history else None)


@pytest.mark.parametrize("messages", [CONVERSATION, BARE, CONVERSATION[1:3]])
def test_transformers_chat_template_gives_our_ids(sp, sp_path, tmp_path, messages):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(hf_folder(sp_path, tmp_path))
    assert tok.chat_template == chat.CHAT_TEMPLATE
    ids, _ = chat.render_conversation(sp, messages)
    assert tok.apply_chat_template(messages, tokenize=True)["input_ids"] == ids
    assert tok.apply_chat_template(messages, tokenize=False) == decoded(sp, ids)
    asking = messages[:-1]
    assert (tok.apply_chat_template(asking, add_generation_prompt=True, return_dict=False)
            == chat_loop_feed(sp, asking))
    # a turn may itself say "</s>": sanitize_control_tokens=True keeps it text, as SentencePiece
    typed = [{"role": "user", "content": "is </s> or <s> a token?"},
             {"role": "assistant", "content": "no: <s> is text"}]
    assert (tok.apply_chat_template(typed, sanitize_control_tokens=True)["input_ids"]
            == chat.render_conversation(sp, typed)[0])
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template(messages[:-1] + messages[-2:-1])


def test_mlx_lm_reads_the_chat_template(sp, sp_path, tmp_path):
    pytest.importorskip("transformers")
    utils = pytest.importorskip("mlx_lm.utils")
    tok = utils.load_tokenizer(hf_folder(sp_path, tmp_path))
    assert tok.has_chat_template
    for k in (2, 4):  # mlx_lm.chat sends the turn alone, the history being in its cache
        assert (tok.apply_chat_template(CONVERSATION[:k], add_generation_prompt=True)
                == chat_loop_feed(sp, CONVERSATION[:k]))
    assert (tok.apply_chat_template([CONVERSATION[3]], add_generation_prompt=True)
            == chat.turn_ids(sp, CONVERSATION[3]["content"]))
