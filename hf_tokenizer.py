"""
The tokenizer files that other tools read beside tokenizer.model, made from the SentencePiece model
alone (no transformers needed): Hugging Face's tokenizer.json & co. for transformers and mlx-lm,
and the checks that export.py's GGUF needs for llama.cpp. train.py writes them with every
checkpoint (files.RunFolder.save); export.py too.
"""
import json

import sentencepiece as spm

from errors import Error


def check_normalization(sp, tool):
    # SentencePiece may rewrite text before splitting it (NFKC, collapsing spaces); the tokenizers
    # written here only add the dummy-prefix space and escape spaces as "▁", which is
    # SentencePiece's "identity" rule with remove_extra_whitespaces=False, the rule prepare.py
    # trains with (code needs its spaces and symbols as they are).
    probe = "a  b\tﬁ① "
    if sp.normalize(probe).lstrip("▁") != probe.replace(" ", "▁"):
        raise Error(f"this tokenizer.model normalizes text "
                    f"(normalize({probe!r}) = {sp.normalize(probe)!r}), "
                    f"which {tool} would not reproduce; "
                    f"train it with normalization_rule_name='identity' and "
                    f"remove_extra_whitespaces=False")


# whether SentencePiece puts a space in front of every text, as Llama 2's tokenizer does
def adds_dummy_prefix(sp):
    return sp.normalize("a").startswith("▁")


def hf_tokenizer_json(sp):
    """A SentencePiece BPE model as a Hugging Face `tokenizers` tokenizer.json: the pipeline of
    Llama 2's own tokenizer.json (transformers' LlamaConverter, legacy mode): "▁" in front if
    SentencePiece adds a dummy prefix, spaces to "▁", BPE with byte fallback, <s> first."""
    n = sp.vocab_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {p for p, i in vocab.items()
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    # SentencePiece's BPE merges the adjacent pair whose union is the highest-scoring piece, and its
    # pieces are stored best score first, so a merge's rank is the id of the piece it makes; pairs
    # that make the same piece are ordered by the ids of their parts (as transformers'
    # generate_merges does).
    merges = []
    for piece, i in vocab.items():
        if piece in normal and len(piece) > 1:
            pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                     if piece[:k] in normal and piece[k:] in normal]
            merges += sorted(pairs, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    specials = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    bos = sp.id_to_piece(sp.bos_id())
    prefix = adds_dummy_prefix(sp)
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    decoders = ([{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                 {"type": "ByteFallback"}, {"type": "Fuse"}]
                + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else []))
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": sp.id_to_piece(i), "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                         for i in specials],
        "normalizer": {"type": "Sequence",
                       "normalizers": ([{"type": "Prepend", "prepend": "▁"}] if prefix else [])
                       + [replace]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [sp.bos_id()], "tokens": [bos]}},
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": sp.id_to_piece(sp.unk_id()),
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [list(m) for m in merges]},
    }


def hf_tokenizer_files(tokenizer_model, model_max_length=None, chat_template=None):
    """{name: bytes} of the files that transformers' AutoTokenizer and mlx-lm read beside
    tokenizer.model, made from the SentencePiece model alone (no transformers needed):
    tokenizer.json, tokenizer_config.json (with chat_template, given one: chat.CHAT_TEMPLATE),
    special_tokens_map.json and generation_config.json. Raises errors.Error for a tokenizer they
    cannot reproduce."""
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    check_normalization(sp, "transformers")
    if sp.bos_id() < 0:
        raise Error("the tokenizer.model has no BOS token (<s>), "
                    "which the model's text starts with")
    special = {"bos_token": sp.id_to_piece(sp.bos_id()), "unk_token": sp.id_to_piece(sp.unk_id())}
    if sp.eos_id() >= 0:
        special["eos_token"] = sp.id_to_piece(sp.eos_id())
    # PreTrainedTokenizerFast runs tokenizer.json exactly as written. transformers 5's
    # LlamaTokenizer would rebuild the pipeline around the vocabulary and prepend "▁" only when
    # the text does not already start with a space, so " x" would not encode as SentencePiece
    # encodes it.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              # "<s>" typed in the text is text, as in SentencePiece; but a chat template's "<s>"
              # and "</s>" must be BOS and EOS, as in Llama-2-chat's files (transformers'
              # sanitize_control_tokens=True still keeps them text inside the messages)
              "split_special_tokens": chat_template is None,
              **({"chat_template": chat_template} if chat_template else {}),
              "model_max_length": model_max_length or 1_000_000_000,
              "added_tokens_decoder": {str(i): {"content": sp.id_to_piece(i), "lstrip": False,
                                                "normalized": False, "rstrip": False,
                                                "single_word": False, "special": True}
                                       for i in range(sp.vocab_size())
                                       if sp.is_control(i) or sp.is_unknown(i)}}
    generation = {"bos_token_id": sp.bos_id(),
                  **({"eos_token_id": sp.eos_id()} if sp.eos_id() >= 0 else {})}
    files = {"tokenizer.json": hf_tokenizer_json(sp), "tokenizer_config.json": config,
             "special_tokens_map.json": special, "generation_config.json": generation}
    return {name: json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")
            for name, obj in files.items()}
