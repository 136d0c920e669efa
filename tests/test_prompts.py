import pytest

from sparsezip.data.prompts import build_prompt


def test_llava_v1_prompt_is_the_llava15_eval_template() -> None:
    """conv_vicuna_v1 (``--conv-mode vicuna_v1``), what LLaVA-1.5 was trained and evaluated with."""
    assert build_prompt("pope", "Is there a dog in the image?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a dog in the image?\n"
        "Answer the question using a single word or phrase. ASSISTANT:"
    )


def test_llava_v1_human_keeps_the_seeds_wording() -> None:
    """conv_llava_v1's "human" wording, the seed's prompt: only the system prompt differs."""
    human = build_prompt("pope", "Is there a dog in the image?", "llava_v1_human")
    assert human == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nIs there a dog in the image?\n"
        "Answer the question using a single word or phrase. ASSISTANT:"
    )
    default = build_prompt("pope", "Is there a dog in the image?")
    assert human.split(" USER: ")[1] == default.split(" USER: ")[1]


def test_mme_instruction_is_replaced_by_the_short_answer_suffix() -> None:
    prompt = build_prompt("mme", "Is there a cat? Please answer yes or no.")
    assert "Please answer" not in prompt and "Is there a cat?\nAnswer the question" in prompt


def test_hf_chat_uses_the_given_template_and_unknown_style_fails() -> None:
    assert build_prompt("docvqa", "Q?", "hf_chat", chat_prompt=lambda q: f"<{q}>").startswith("<Q?\n")
    with pytest.raises(ValueError, match="hf_chat"):
        build_prompt("pope", "Q?", "hf_chat")
    with pytest.raises(ValueError, match="unknown prompt_style 'x'"):
        build_prompt("pope", "Q?", "x")
