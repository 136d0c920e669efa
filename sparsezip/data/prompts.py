"""Prompts: the LLaVA-1.5 evaluation protocol (``llava_v1``) or the checkpoint's own chat template.

The ``llava_v1`` template is the conversation format LLaVA-1.5's own eval scripts use (conv_vicuna_v1 with
the short-answer suffix); the embedded tiny model is trained on exactly these strings.
"""

from __future__ import annotations

from collections.abc import Callable

IMAGE_PLACEHOLDER = "<image>"
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
MME_SUFFIX = " Please answer yes or no."
CAPTION_QUESTION = "Provide a one-sentence caption for the provided image."
PROMPT_STYLES = ("llava_v1", "hf_chat")
# Datasets whose answers are short; the caption task asks for a sentence and gets no suffix.
_SHORT_ANSWER_DATASETS = ("pope", "mme", "docvqa")


def dataset_question(dataset: str, question: str) -> str:
    """The question text as the model sees it: MME's own yes/no instruction is stripped (the short-answer
    suffix replaces it), every other dataset's question is used bare."""
    if dataset == "mme" and question.endswith(MME_SUFFIX):
        return question[: -len(MME_SUFFIX)]
    return question


def llava_v1_prompt(question: str, short_answer: bool = True) -> str:
    """``SYSTEM USER: <image>\\n{question}\\n{suffix} ASSISTANT:`` (LLaVA-1.5's vicuna_v1 template)."""
    body = f"{question}\n{SHORT_ANSWER_SUFFIX}" if short_answer else question
    return f"{LLAVA_V1_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{body} ASSISTANT:"


def build_prompt(
    dataset: str,
    question: str,
    style: str = "llava_v1",
    chat_prompt: Callable[[str], str] | None = None,
) -> str:
    """The full prompt for one sample of ``dataset`` (family name: pope, mme, docvqa, coco_captions).

    ``style="hf_chat"`` needs ``chat_prompt`` (e.g. ``VisionLanguageModel.chat_prompt``), which applies the
    checkpoint's own chat template to the (suffixed) question.
    """
    family = dataset.split("-")[0]
    short = family in _SHORT_ANSWER_DATASETS
    text = dataset_question(family, question)
    if style == "llava_v1":
        return llava_v1_prompt(text, short_answer=short)
    if style == "hf_chat":
        if chat_prompt is None:
            raise ValueError("prompt_style 'hf_chat' needs the model's chat template (chat_prompt=None given)")
        return chat_prompt(f"{text}\n{SHORT_ANSWER_SUFFIX}" if short else text)
    raise ValueError(f"unknown prompt_style {style!r}; choose one of {PROMPT_STYLES}")
