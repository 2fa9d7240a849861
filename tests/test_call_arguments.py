"""The call's arguments are gathered once (call_checks.CallArguments) and checked in one place (check_call)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from depth2img import Depth2ImgPipeline
from depth2img.call_checks import CallArguments, CallPlan
from pipeline_tiny import load_ours, random_pil, tiny_folder

# Parameters of __call__ that are not checked arguments, and the deprecated keywords it takes through **kwargs.
NOT_CHECKED = {"self", "return_dict", "kwargs"}
DEPRECATED = {"callback", "callback_steps"}


def test_the_fields_are_the_calls_parameters():
    parameters = set(inspect.signature(Depth2ImgPipeline.__call__).parameters)
    assert {f.name for f in dataclasses.fields(CallArguments)} == parameters - NOT_CHECKED | DEPRECATED


def test_check_inputs_takes_the_arguments_as_keywords():
    pipe = load_ours(tiny_folder())
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(Depth2ImgPipeline.__call__).parameters.items()
        if name not in NOT_CHECKED
    }
    plan = pipe.check_inputs(**{**defaults, "prompt": ["a", "b"], "image": random_pil(), "num_images_per_prompt": 2})
    assert isinstance(plan, CallPlan) and (plan.batch_size, plan.total, plan.depth) == (2, 4, None)
    with pytest.raises(ValueError, match="strength must be a number in"):
        pipe.check_inputs(**{**defaults, "prompt": "a", "image": random_pil(), "strength": 2})
