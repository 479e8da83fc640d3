from __future__ import annotations

import pytest

from kdtool.errors import PluginError, RecipeError
from kdtool.registry import Registry


def test_duplicate_names_both_owners() -> None:
    reg: Registry[int] = Registry("loss")
    reg.register("kl", 1, owner="alpha")
    with pytest.raises(PluginError) as info:
        reg.register("kl", 2, owner="beta")
    assert "'alpha'" in str(info.value) and "'beta'" in str(info.value)


def test_unknown_name_suggests_close_match() -> None:
    reg: Registry[int] = Registry("task", RecipeError)
    reg.register("facial_landmarks", 1, owner="x")
    with pytest.raises(RecipeError, match="did you mean 'facial_landmarks'"):
        reg.get("facial_landmark")
    assert reg.owner("facial_landmarks") == "x"
    assert reg.by_owner("x") == ["facial_landmarks"]
