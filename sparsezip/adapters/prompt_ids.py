"""Prompt token ids built the way LLaVA's own code builds them (``llava.mm_utils.tokenizer_image_token``).

LLaVA-1.5 was trained and evaluated with the text on each side of ``<image>`` tokenized *on its own* (each chunk
with the tokenizer's special tokens, the BOS of every chunk after the first dropped) and the image spliced in
between. The HF ``LlavaProcessor`` instead expands ``<image>`` and tokenizes the whole prompt at once. With a
Llama SentencePiece tokenizer the two differ right after the image: a chunk tokenized alone starts with the
dummy-prefix ``▁``, so LLaVA feeds ``<image> ▁ <0x0A> ...`` for ``<image>\\n``, while transformers 5 loads
llava-1.5-7b-hf's tokenizer (``tokenizer_class: LlamaTokenizer``, ``legacy: false``) with a Metaspace
pre-tokenizer that prefixes ``▁`` only at the start of the string: ``<image> <0x0A> ...``, one token off what the
model was trained on, in every prompt. Tokenizers whose pre-tokenization starts afresh after a special token
anyway (a byte-level BPE such as the embedded model's, or a Llama tokenizer with ``legacy: true``) give the same
ids both ways. ``tests/test_prompt_ids.py`` pins these ids to the output of LLaVA's function on a locally built
Llama-style tokenizer (``fixtures/golden/tokenization``).

Fidelity note: LLaVA drops the first id of every later chunk unconditionally (it assumes it is the BOS); here it
is dropped only if it is the BOS, which is the same for every tokenizer that adds one to each chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.nn.utils.rnn import pad_sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def llava_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, image_token: str, image_token_id: int, run_length: int
) -> list[int]:
    """``prompt``'s ids as LLaVA's ``tokenizer_image_token`` builds them, with each ``image_token`` written as a
    run of ``run_length`` ``image_token_id`` placeholders (the form the adapter later shortens per image).

    Raises:
        ValueError: ``run_length < 1``, or a chunk's own ids contain ``image_token_id`` (the placeholder spelled
            some other way in the text).
    """
    if run_length < 1:
        raise ValueError(f"run_length must be >= 1, got {run_length}")
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(image_token)]
    bos = tokenizer.bos_token_id
    leading_bos = bool(chunks[0]) and bos is not None and chunks[0][0] == bos
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [image_token_id] * run_length
        ids += chunk[1:] if leading_bos and chunk[:1] == [bos] else chunk
    if ids.count(image_token_id) != run_length * (len(chunks) - 1):
        raise ValueError(f"prompt {prompt[:60]!r}... encodes image token id {image_token_id} outside its "
                         f"{len(chunks) - 1} {image_token!r} placeholder(s)")
    return ids


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    image_token: str,
    image_token_id: int,
    run_length: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of :func:`llava_prompt_ids`: ``input_ids [B, S]`` (pad = ``pad_token_id``) and
    ``attention_mask [B, S]`` (1 = real token), both int64."""
    if not prompts:
        raise ValueError("encode_prompts needs at least one prompt")
    rows = [llava_prompt_ids(tokenizer, p, image_token=image_token, image_token_id=image_token_id,
                             run_length=run_length) for p in prompts]
    # Right-pad the reversed rows, then flip: left padding without a loop over rows.
    flipped = pad_sequence([torch.tensor(row[::-1], dtype=torch.long) for row in rows], batch_first=True,
                           padding_value=pad_token_id)
    input_ids = flipped.flip(1)
    lengths = torch.tensor([len(row) for row in rows])
    width = input_ids.shape[1]
    attention_mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    return input_ids, attention_mask
