"""Textual inversion against diffusers' load_textual_inversion on a tiny CLIP tokenizer and text encoder."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from depth2img.adapters import TextualInversionLoaderMixin
from model_pairs import CONFIGS, jitter_vectors

WIDTH = 32  # the tiny text encoder's hidden size


class Host(TextualInversionLoaderMixin):
    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder


def _tokenizer():
    from transformers import CLIPTokenizer

    # A fresh one each time: deepcopy loses the decode fix-up CLIPTokenizer attaches to its backend.
    return CLIPTokenizer.from_pretrained(str(CONFIGS / "tiny" / "tokenizer"))


def _components():
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(CONFIGS / "tiny" / "text_encoder")))
    return _tokenizer(), jitter_vectors(text_encoder).eval()


@pytest.fixture
def components():
    return _components()


def _reference(diffusers, components):
    """diffusers' mixin on copies of the same tokenizer and text encoder."""

    class Reference(diffusers.loaders.TextualInversionLoaderMixin):
        hf_device_map = None

        def __init__(self, tokenizer, text_encoder) -> None:
            self.tokenizer, self.text_encoder = tokenizer, text_encoder

        @property
        def components(self):
            return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}

    return Reference(_tokenizer(), copy.deepcopy(components[1]))


def _ours(components) -> Host:
    return Host(_tokenizer(), copy.deepcopy(components[1]))


@torch.no_grad()
def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What encode_prompt does: expand multi-vector tokens, tokenize to 77, run the text encoder."""
    prompts = pipe.maybe_convert_prompt(prompts, pipe.tokenizer)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return ids, pipe.text_encoder(ids)[0]


def _assert_same_encoding(ours, reference, prompts):
    our_ids, our_embeds = _encode(ours, prompts)
    ref_ids, ref_embeds = _encode(reference, prompts)
    assert torch.equal(our_ids, ref_ids)
    assert torch.equal(our_embeds, ref_embeds)


def _vectors(count: int, seed: int, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


PROMPTS = ["a photo of <cat-toy>", "<style> painting of a <cat-toy> and a <cat-toy>", "nothing special"]


def test_diffusers_files_single_and_multi_vector_match_reference(diffusers, components, tmp_path):
    from safetensors.torch import save_file

    torch.save({"<cat-toy>": _vectors(1, 0)[0]}, tmp_path / "learned_embeds.bin")  # one vector, shape (dim,)
    (tmp_path / "style").mkdir()
    save_file({"<style>": _vectors(3, 1)}, tmp_path / "style" / "learned_embeds.safetensors")  # three vectors

    ours, reference = _ours(components), _reference(diffusers, components)
    for pipe in (ours, reference):
        pipe.load_textual_inversion(str(tmp_path))  # the folder: learned_embeds.bin found by name
        pipe.load_textual_inversion(str(tmp_path / "style"))
    assert ours.tokenizer.tokenize("<style>") == ["<style>"]
    assert ours.maybe_convert_prompt("a <style> cat") == "a <style> <style>_1 <style>_2 cat"
    _assert_same_encoding(ours, reference, PROMPTS)
    table = ours.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ours.tokenizer.convert_tokens_to_ids("<style>_2")], _vectors(3, 1)[2])


def test_a1111_files_match_reference(diffusers, components, tmp_path):
    from safetensors.torch import save_file

    # A1111 .pt as the webui writes it: a name, the vectors under string_to_param["*"] and plain bookkeeping.
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _vectors(2, 2)},
        "name": "charturner",
        "step": 1500,
        "sd_checkpoint": "4bdfc29c",
        "sd_checkpoint_name": "512-depth-ema",
    }
    torch.save(a1111, tmp_path / "charturner.pt")
    save_file({"emb_params": _vectors(4, 3)}, tmp_path / "bad-hands.safetensors")

    ours, reference = _ours(components), _reference(diffusers, components)
    added = ours.load_textual_inversion(str(tmp_path / "charturner.pt"))
    assert added == ["charturner", "charturner_1"]
    reference.load_textual_inversion(str(tmp_path / "charturner.pt"))
    # A1111 names a .safetensors embedding after its file; diffusers needs the token spelled out.
    assert ours.load_textual_inversion(str(tmp_path / "bad-hands.safetensors"))[0] == "bad-hands"
    reference.load_textual_inversion(str(tmp_path / "bad-hands.safetensors"), token="bad-hands")
    _assert_same_encoding(ours, reference, ["charturner, a knight", "a knight, bad-hands", "bad-hands charturner"])


def test_several_at_once_and_a_tensor_split_into_tokens(diffusers, components):
    ours, reference = _ours(components), _reference(diffusers, components)
    sources = [{"<a>": _vectors(1, 4)}, {"<ignored-name>": _vectors(2, 5)}]
    for pipe in (ours, reference):
        pipe.load_textual_inversion(sources, token=["<a>", "<b>"])
        pipe.load_textual_inversion(_vectors(2, 6), token=["<c>", "<d>"])
    _assert_same_encoding(ours, reference, ["<a> with <b>", "<c> <d> <b>"])
    assert ours.tokenizer.convert_tokens_to_ids(["<a>", "<b>", "<b>_1", "<c>", "<d>"]) == list(range(1000, 1005))
    # A None in the token list takes the name stored in that file (diffusers mishandles a leading None).
    again = _ours(components)
    assert again.load_textual_inversion(sources, token=[None, "<b>"]) == ["<a>", "<b>", "<b>_1"]


def test_unload_all_restores_the_original_tokenizer_and_embeddings(components):
    ours = _ours(components)
    before_ids, before_embeds = _encode(ours, PROMPTS)
    before_text = ours.tokenizer.decode(before_ids[0], skip_special_tokens=True)
    table = ours.text_encoder.get_input_embeddings().weight.detach().clone()
    ours.load_textual_inversion([{"<cat-toy>": _vectors(1, 0)}, {"<style>": _vectors(3, 1)}])
    assert len(ours.tokenizer) == 1004

    assert ours.unload_textual_inversion() == ["<cat-toy>", "<style>", "<style>_1", "<style>_2"]
    assert len(ours.tokenizer) == 1000 and ours.text_encoder.config.vocab_size == 1000
    assert torch.equal(ours.text_encoder.get_input_embeddings().weight, table)
    after_ids, after_embeds = _encode(ours, PROMPTS)
    assert torch.equal(after_ids, before_ids) and torch.equal(after_embeds, before_embeds)
    assert ours.tokenizer.decode(after_ids[0], skip_special_tokens=True) == before_text  # CLIP's decode fix-up kept


def test_unload_one_multi_vector_token_keeps_the_others_working(diffusers, components):
    ours = _ours(components)
    ours.load_textual_inversion([{"<style>": _vectors(3, 1)}, {"<cat-toy>": _vectors(1, 0)}])
    _, cat_before = _encode(ours, ["a <cat-toy>"])
    assert ours.unload_textual_inversion("<style>") == ["<style>", "<style>_1", "<style>_2"]
    assert ours.tokenizer.convert_tokens_to_ids("<cat-toy>") == 1000  # renumbered after the removed tokens
    _, cat_after = _encode(ours, ["a <cat-toy>"])
    assert torch.equal(cat_after, cat_before)

    reference = _reference(diffusers, components)  # the same result as loading only <cat-toy> in the reference
    reference.load_textual_inversion({"<cat-toy>": _vectors(1, 0)})
    _assert_same_encoding(ours, reference, ["a <cat-toy>", "a <style>"])


class _NotATensor:
    pass


@pytest.mark.parametrize(
    ("source", "token", "message"),
    [
        ({"a</w>": _vectors(1, 0)}, None, "token 'a</w>' is already in the tokenizer's vocabulary"),
        ({"<x>": _vectors(1, 0)}, "!", "token '!' is already in the tokenizer's vocabulary"),
        ({"<x>": _vectors(1, 0, width=768)}, None, "width 768 but this text encoder's is 32"),
        ([{"<x>": _vectors(1, 0)}, {"<y>": _vectors(1, 1)}], ["<x>"], "token lists 1 tokens for 2 embeddings"),
        (_vectors(3, 0), ["<x>", "<y>"], "token lists 2 tokens but the tensor holds 3 embeddings"),
        ([{"<x>": _vectors(1, 0)}, {"<y>": _vectors(1, 1)}], ["<x>", "<x>"], "token contains duplicates"),
        ({"clip_l": _vectors(1, 0), "clip_g": _vectors(1, 0)}, None, "SDXL embedding"),
        (_vectors(1, 0), None, "pass token="),
        ({"a": _vectors(1, 0), "b": _vectors(1, 0)}, None, "unrecognised textual inversion file"),
    ],
)
def test_bad_input_gets_one_clear_error_and_changes_nothing(components, source, token, message):
    ours = _ours(components)
    with pytest.raises(ValueError, match=message):
        ours.load_textual_inversion(source, token=token)
    assert len(ours.tokenizer) == 1000 and ours.text_encoder.get_input_embeddings().weight.shape[0] == 1000


def test_loading_a_token_twice_and_unsafe_pickles_are_refused(components, tmp_path):
    ours = _ours(components)
    ours.load_textual_inversion({"<x>": _vectors(2, 0)})
    with pytest.raises(ValueError, match="token '<x>' is already in the tokenizer's vocabulary"):
        ours.load_textual_inversion({"<x>": _vectors(1, 0)})
    with pytest.raises(ValueError, match=r"token\(s\) \['<nope>'\] were not added"):
        ours.unload_textual_inversion("<nope>")

    with open(tmp_path / "evil.pt", "wb") as file:
        pickle.dump({"<y>": _NotATensor()}, file)
    with pytest.raises(ValueError, match="weights_only=True"):
        ours.load_textual_inversion(str(tmp_path / "evil.pt"))
    with pytest.raises(FileNotFoundError, match="no textual inversion file"):
        ours.load_textual_inversion(str(tmp_path))
    with pytest.raises(ValueError, match="needs a tokenizer and a text_encoder"):
        Host(None, nn.Linear(1, 1)).load_textual_inversion({"<z>": _vectors(1, 0)})


def test_pipeline_prompts_with_tokens_match_reference(diffusers, tmp_path):
    """End to end: Depth2ImgPipeline and diffusers' pipeline with the same embeddings give the same images."""
    from pipeline_tiny import load_ours, load_reference, max_diff, random_pil, seeded, tiny_folder

    folder = tiny_folder()
    reference, ours = load_reference(folder), load_ours(folder)
    torch.save({"string_to_param": {"*": _vectors(3, 7)}, "name": "<style>"}, tmp_path / "style.pt")
    for pipe in (reference, ours):
        pipe.load_textual_inversion(
            [str(tmp_path / "style.pt"), {"<cat-toy>": _vectors(1, 8)}], token=["<style>", None]
        )

    embeds = [
        pipe.encode_prompt("a <cat-toy>, <style>", torch.device("cpu"), 1, True, negative_prompt="<style> blur")
        for pipe in (reference, ours)
    ]
    assert all(torch.equal(r, o) for r, o in zip(*embeds))
    kwargs = {"image": random_pil(), "num_inference_steps": 2, "output_type": "np", "negative_prompt": "<style>"}
    expected = reference("a <cat-toy> in <style>", generator=seeded(0), **kwargs).images
    actual = ours("a <cat-toy> in <style>", generator=seeded(0), **kwargs).images
    assert max_diff(expected, actual) <= 1e-4
    spelled_out = load_ours(folder)("a <cat-toy> in <style>", generator=seeded(0), **kwargs).images  # no TI loaded
    assert max_diff(actual, spelled_out) > 1e-3
