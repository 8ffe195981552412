"""A tokenizer the project builds offline, so tests and the quick start need no download.

It is a real ``PreTrainedTokenizerFast`` (byte-level BPE, as GPT-2 / Llama-3 use), knows every
special token of the public chat templates in :mod:`prefalign.models.chat_templates`, and carries
one of those templates. ``bpe_merges=0`` gives a pure byte tokenizer; a positive value trains
that many merges on a fixed corpus (:func:`prefalign.data.synthetic.corpus_texts`), which gives a
*different* tokenisation of the same text (the aligned-LLM ensemble needs members whose
tokenizers disagree).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from prefalign.data.synthetic import corpus_texts
from prefalign.models.chat_templates import SPECIAL_TOKENS, get_template

_BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()


def build_tokenizer(
    template: str = "chatml", bpe_merges: int = 0, model_max_length: int = 4096
) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer speaking the chat template called ``template``.

    Args:
        template: a name from :data:`prefalign.models.chat_templates.TEMPLATES`.
        bpe_merges: number of BPE merges learned on the built-in corpus (0: one token per byte).
        model_max_length: the tokenizer's declared maximum sequence length.
    """
    chat = get_template(template)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    vocab_size = len(_BYTE_ALPHABET) + len(SPECIAL_TOKENS) + bpe_merges
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=_BYTE_ALPHABET,
        show_progress=False,
    )
    corpus = corpus_texts() if bpe_merges > 0 else [""]
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=chat.bos_token,
        eos_token=chat.eos_token,
        pad_token="<pad>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat.jinja
    return tokenizer
