import json
import warnings

import pytest

from depth2img.configuration import ConfigMixin, FrozenConfig, load_json


class Thing(ConfigMixin):
    def __init__(self, width: int = 4, names: tuple = ("a", "b"), scale: float = 1.0):
        self.width = width


def test_config_records_defaults_and_arguments():
    thing = Thing(width=8)
    assert thing.config == {"width": 8, "names": ["a", "b"], "scale": 1.0}
    assert thing.config.width == 8


def test_config_is_read_only():
    thing = Thing()
    with pytest.raises(TypeError, match="read-only"):
        thing.config["width"] = 3
    with pytest.raises(AttributeError):
        _ = thing.config.missing


def test_from_config_warns_once_on_unknown_keys_and_ignores_meta_keys():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = Thing.from_config({"width": 2, "brand_new_key": 1, "_class_name": "Thing", "_diffusers_version": "0"})
        Thing.from_config({"width": 2, "brand_new_key": 1})
    assert a.config.width == 2
    messages = [str(w.message) for w in caught]
    assert sum("brand_new_key" in m for m in messages) == 1
    assert not any("_class_name" in m for m in messages)


def test_save_config_round_trip(tmp_path):
    thing = Thing(width=5, scale=0.5)
    path = thing.save_config(tmp_path)
    data = json.loads(path.read_text())
    assert data["_class_name"] == "Thing"
    again = Thing.from_config(load_json(path))
    assert again.config == thing.config
    assert isinstance(again.config, FrozenConfig)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_load_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_json(bad)
