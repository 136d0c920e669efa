"""Prompts: the LLaVA-1.5 evaluation protocol (``llava_v1``) or the checkpoint's own chat template.

The ``llava_v1`` template is the conversation format LLaVA-1.5 was trained and evaluated with
(``--conv-mode vicuna_v1``: conv_vicuna_v1's system prompt, with the short-answer suffix); the embedded tiny
model is trained on exactly these strings. ``llava_v1_human`` is the same template with conv_llava_v1's
"human" wording, which this suite used before: kept only to reproduce the seed's runs.
"""

from __future__ import annotations

from collections.abc import Callable

from sparsezip.data.coco import CAPTION_QUESTION  # noqa: F401  (re-exported: the captions row's question)
from sparsezip.data.registry import dataset_spec

IMAGE_PLACEHOLDER = "<image>"
LLAVA_V1_SYSTEM = (  # conv_vicuna_v1: what LLaVA-1.5 was trained and evaluated with
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_HUMAN_SYSTEM = (  # conv_llava_v1's wording: the seed's prompt (style "llava_v1_human")
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
PROMPT_STYLES = ("llava_v1", "llava_v1_human", "hf_chat")


def dataset_question(dataset: str, question: str) -> str:
    """The question text as the model sees it: the dataset row's own instruction suffix stripped (MME's
    " Please answer yes or no.": the short-answer suffix replaces it); other questions are used bare."""
    return dataset_spec(dataset).question(question)


def llava_v1_prompt(question: str, short_answer: bool = True, system: str = LLAVA_V1_SYSTEM) -> str:
    """``SYSTEM USER: <image>\\n{question}\\n{suffix} ASSISTANT:`` (LLaVA-1.5's vicuna_v1 template; ``system``
    defaults to conv_vicuna_v1's system prompt)."""
    body = f"{question}\n{SHORT_ANSWER_SUFFIX}" if short_answer else question
    return f"{system} USER: {IMAGE_PLACEHOLDER}\n{body} ASSISTANT:"


def build_prompt(
    dataset: str,
    question: str,
    style: str = "llava_v1",
    chat_prompt: Callable[[str], str] | None = None,
) -> str:
    """The full prompt for one sample of ``dataset`` (a family or benchmark name: pope, mme-..., docvqa).

    The row decides: its question suffix is stripped, and short-answer datasets get the single-word
    suffix (captions do not). ``style="hf_chat"`` needs ``chat_prompt`` (e.g.
    ``VisionLanguageModel.chat_prompt``), which applies the checkpoint's own chat template to the
    (suffixed) question.
    """
    spec = dataset_spec(dataset)
    short = spec.short_answer
    text = spec.question(question)
    if style == "llava_v1":
        return llava_v1_prompt(text, short_answer=short)
    if style == "llava_v1_human":
        return llava_v1_prompt(text, short_answer=short, system=LLAVA_V1_HUMAN_SYSTEM)
    if style == "hf_chat":
        if chat_prompt is None:
            raise ValueError("prompt_style 'hf_chat' needs the model's chat template (chat_prompt=None given)")
        return chat_prompt(f"{text}\n{SHORT_ANSWER_SUFFIX}" if short else text)
    raise ValueError(f"unknown prompt_style {style!r}; choose one of {PROMPT_STYLES}")
